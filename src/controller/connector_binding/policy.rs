//! Which addresses the operator may probe (the SSRF guard): a binding's health check is a
//! request from the operator's pod to a URL a namespace user chose, so the host is resolved
//! first, every address it resolves to is checked, and the probe then connects to exactly
//! those addresses (no second resolution, so DNS rebinding cannot swap them). Refused: the
//! API server's addresses, loopback, link-local (cloud metadata at 169.254.169.254),
//! unspecified, multicast and broadcast, the cluster's Service ranges (read from its
//! ServiceCIDR objects), the nodes' Pod ranges and addresses (read from the Nodes) and
//! whatever the operator is configured to deny;
//! an allow list exempts ranges for local development (the demo's simulators on loopback).
//! A refusal says which rule refused, never the address, a DNS answer or a network error:
//! otherwise status would be an oracle for the cluster's network.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::Client;
use kube::api::Api;

use super::status::ProbeOutcome;

/// The probe policy of the operator (flags or environment; the chart's `ssrf` values).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ProbePolicyConfig {
    /// CIDRs health probes may reach even inside a refused range (comma-separated), e.g.
    /// 127.0.0.0/8 for simulators on loopback in local development. The API server's own
    /// ports stay refused.
    #[arg(
        long = "probe-allow-cidrs",
        env = "FLOWPLANE_PROBE_ALLOW_CIDRS",
        value_delimiter = ','
    )]
    pub allow_cidrs: Vec<IpNet>,
    /// CIDRs health probes never reach, besides the built-in ones (comma-separated): the
    /// cluster's Pod ranges, node networks, anything internal.
    #[arg(
        long = "probe-deny-cidrs",
        env = "FLOWPLANE_PROBE_DENY_CIDRS",
        value_delimiter = ','
    )]
    pub deny_cidrs: Vec<IpNet>,
    /// Least time between two probes of one binding (seconds), whatever wakes it.
    #[arg(
        long = "probe-min-interval-seconds",
        env = "FLOWPLANE_PROBE_MIN_INTERVAL_SECONDS",
        default_value_t = 10
    )]
    pub min_interval_seconds: u64,
    /// URLs the operator reaches the API server at (its client configuration); filled in by
    /// the process, not a flag.
    #[arg(skip)]
    pub api_server_urls: Vec<String>,
}

/// Longest time one probe attempt may take, whatever the binding asks for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an address is refused: the rule, as shown in status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    ApiServer,
    Loopback,
    LinkLocal,
    Unspecified,
    NotUnicast,
    ServiceRange,
    NodeRange,
    Denied,
}

impl Refusal {
    pub fn describe(self) -> &'static str {
        match self {
            Refusal::ApiServer => "the host is the Kubernetes API server",
            Refusal::Loopback => "the host is a loopback address",
            Refusal::LinkLocal => "the host is a link-local address (cloud metadata lives there)",
            Refusal::Unspecified => "the host is an unspecified address",
            Refusal::NotUnicast => "the host is not a unicast address",
            Refusal::ServiceRange => "the host is in the cluster's Service range",
            Refusal::NodeRange => "the host is a node or in the cluster's Pod range",
            Refusal::Denied => "the host is in a range the operator is configured to deny",
        }
    }
}

/// What the policy knows about the cluster when it decides.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cluster {
    /// Every address:port the API server is reached at.
    pub api_server: Vec<SocketAddr>,
    pub service_ranges: Vec<IpNet>,
    /// The nodes' Pod ranges and their own addresses (kubelets listen there).
    pub node_ranges: Vec<IpNet>,
}

/// The decision for one resolved address (pure).
pub fn check(
    address: SocketAddr,
    config: &ProbePolicyConfig,
    cluster: &Cluster,
) -> Result<(), Refusal> {
    // ::ffff:127.0.0.1 is 127.0.0.1 on the wire.
    let ip = address.ip().to_canonical();
    let allowed = config.allow_cidrs.iter().any(|net| net.contains(&ip));
    let api_host = cluster
        .api_server
        .iter()
        .any(|a| a.ip().to_canonical() == ip);
    let api_port = cluster
        .api_server
        .iter()
        .any(|a| a.ip().to_canonical() == ip && a.port() == address.port());
    if api_port || (api_host && !allowed) {
        return Err(Refusal::ApiServer);
    }
    if allowed {
        return Ok(());
    }
    let refusal = match ip {
        IpAddr::V4(v4) if v4.is_loopback() => Some(Refusal::Loopback),
        IpAddr::V6(v6) if v6.is_loopback() => Some(Refusal::Loopback),
        IpAddr::V4(v4) if v4.is_link_local() => Some(Refusal::LinkLocal),
        IpAddr::V6(v6) if v6.is_unicast_link_local() => Some(Refusal::LinkLocal),
        // 0.0.0.0/8 ("this network") reaches the local host on Linux.
        IpAddr::V4(v4) if v4.octets()[0] == 0 => Some(Refusal::Unspecified),
        IpAddr::V6(v6) if v6.is_unspecified() => Some(Refusal::Unspecified),
        IpAddr::V4(v4) if v4.is_multicast() || v4.is_broadcast() => Some(Refusal::NotUnicast),
        IpAddr::V6(v6) if v6.is_multicast() => Some(Refusal::NotUnicast),
        _ if cluster.service_ranges.iter().any(|n| n.contains(&ip)) => Some(Refusal::ServiceRange),
        _ if cluster.node_ranges.iter().any(|n| n.contains(&ip)) => Some(Refusal::NodeRange),
        _ if config.deny_cidrs.iter().any(|n| n.contains(&ip)) => Some(Refusal::Denied),
        _ => None,
    };
    refusal.map_or(Ok(()), Err)
}

/// A probe target that passed the policy: the host and the addresses to connect to.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// The host name to pin (None when the URL names an IP address).
    pub domain: Option<String>,
    pub addresses: Vec<SocketAddr>,
}

/// Why a URL is not probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotProbed {
    /// Refused by the policy (the message says which rule, not the address).
    Refused(String),
    /// The host does not resolve (no DNS detail is echoed).
    Unresolved,
    /// Not an http(s) URL with a host.
    Unusable,
}

/// Resolves `url`'s host once and checks every address; all must pass.
pub async fn resolve(
    url: &reqwest::Url,
    config: &ProbePolicyConfig,
    cluster: &Cluster,
) -> Result<Target, NotProbed> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(NotProbed::Unusable);
    }
    let port = url.port_or_known_default().ok_or(NotProbed::Unusable)?;
    let host = url.host_str().ok_or(NotProbed::Unusable)?;
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    let (domain, addresses) = match literal.parse::<IpAddr>() {
        Ok(ip) => (None, vec![SocketAddr::new(ip, port)]),
        Err(_) => {
            let found: Vec<SocketAddr> =
                tokio::time::timeout(MAX_TIMEOUT, tokio::net::lookup_host((host, port)))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map(Iterator::collect)
                    .unwrap_or_default();
            if found.is_empty() {
                return Err(NotProbed::Unresolved);
            }
            (Some(host.to_string()), found)
        }
    };
    for address in &addresses {
        check(*address, config, cluster)
            .map_err(|refusal| NotProbed::Refused(refusal.describe().to_string()))?;
    }
    Ok(Target { domain, addresses })
}

/// The API server's addresses, the Service ranges and the nodes, read from the cluster: the
/// client configuration's URL, the `default/kubernetes` Service and its EndpointSlice, the
/// ServiceCIDR objects, and each Node's Pod ranges and addresses. Whatever cannot be read is left out (and the configured deny list
/// still applies); refreshed at most once a minute.
pub struct ClusterAddresses {
    cached: tokio::sync::Mutex<Option<(Instant, Cluster)>>,
}

const CLUSTER_REFRESH: Duration = Duration::from_secs(60);

impl ClusterAddresses {
    pub fn new() -> ClusterAddresses {
        ClusterAddresses {
            cached: tokio::sync::Mutex::new(None),
        }
    }

    pub async fn get(&self, client: &Client, config: &ProbePolicyConfig) -> Cluster {
        let mut cached = self.cached.lock().await;
        if let Some((at, cluster)) = cached.as_ref()
            && at.elapsed() < CLUSTER_REFRESH
        {
            return cluster.clone();
        }
        let cluster = discover(client, config).await;
        *cached = Some((Instant::now(), cluster.clone()));
        cluster
    }
}

impl Default for ClusterAddresses {
    fn default() -> Self {
        Self::new()
    }
}

async fn discover(client: &Client, config: &ProbePolicyConfig) -> Cluster {
    let mut cluster = Cluster::default();
    for url in &config.api_server_urls {
        let Ok(url) = reqwest::Url::parse(url) else {
            continue;
        };
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            continue;
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(found) = tokio::net::lookup_host((host, port)).await {
            cluster.api_server.extend(found);
        }
    }
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    if let Ok(Some(service)) = services.get_opt("kubernetes").await {
        let spec = service.spec.unwrap_or_default();
        let ports: Vec<u16> = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| u16::try_from(p.port).ok())
            .collect();
        for ip in spec.cluster_ips.iter().flatten() {
            if let Ok(ip) = ip.parse::<IpAddr>() {
                cluster
                    .api_server
                    .extend(ports.iter().map(|port| SocketAddr::new(ip, *port)));
            }
        }
    }
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    if let Ok(Some(slice)) = slices.get_opt("kubernetes").await {
        let ports: Vec<u16> = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| p.port.and_then(|p| u16::try_from(p).ok()))
            .collect();
        for endpoint in slice.endpoints.iter().flatten() {
            for ip in endpoint
                .addresses
                .iter()
                .filter_map(|a| a.parse::<IpAddr>().ok())
            {
                cluster
                    .api_server
                    .extend(ports.iter().map(|port| SocketAddr::new(ip, *port)));
            }
        }
    }
    let ranges: Api<ServiceCIDR> = Api::all(client.clone());
    if let Ok(list) = ranges.list(&Default::default()).await {
        cluster.service_ranges = list
            .items
            .iter()
            .filter_map(|r| r.spec.as_ref())
            .flat_map(|s| s.cidrs.iter().flatten())
            .filter_map(|c| c.parse().ok())
            .collect();
    }
    let nodes: Api<Node> = Api::all(client.clone());
    if let Ok(list) = nodes.list(&Default::default()).await {
        for node in list.items {
            let spec = node.spec.unwrap_or_default();
            let ranges = spec.pod_cidrs.into_iter().flatten().chain(spec.pod_cidr);
            cluster
                .node_ranges
                .extend(ranges.filter_map(|c| c.parse::<IpNet>().ok()));
            let addresses = node.status.and_then(|s| s.addresses).unwrap_or_default();
            cluster.node_ranges.extend(
                addresses
                    .iter()
                    .filter_map(|a| a.address.parse::<IpAddr>().ok())
                    .map(IpNet::from),
            );
        }
    }
    cluster.node_ranges.sort();
    cluster.node_ranges.dedup();
    cluster.api_server.sort();
    cluster.api_server.dedup();
    cluster
}

/// The last probe of each binding, so that one binding is probed at most once per minimum
/// interval, however often it is reconciled (an edit loop, a Secret flapping).
#[derive(Default)]
pub struct RecentProbes {
    last: Mutex<HashMap<String, (Instant, String, ProbeOutcome)>>,
}

/// What the minimum interval allows now.
pub enum Recent {
    /// Probe now.
    Probe,
    /// The same URL was probed within the interval: its outcome stands.
    Reuse(ProbeOutcome),
    /// Another URL was probed within the interval: wait this long.
    Wait(Duration),
}

impl RecentProbes {
    pub fn check(&self, binding: &str, url: &str, min_interval: Duration) -> Recent {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match last.get(binding) {
            Some((at, _, _)) if at.elapsed() >= min_interval => Recent::Probe,
            Some((_, probed, outcome)) if probed == url => Recent::Reuse(outcome.clone()),
            Some((at, _, _)) => Recent::Wait(min_interval - at.elapsed()),
            None => Recent::Probe,
        }
    }

    pub fn record(&self, binding: String, url: String, outcome: ProbeOutcome) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        // Deleted bindings are never reconciled again: their entries age out here (an hour
        // is longer than any minimum interval the chart accepts).
        last.retain(|_, (at, _, _)| at.elapsed() < Duration::from_secs(3600));
        last.insert(binding, (Instant::now(), url, outcome));
    }

    pub fn forget(&self, binding: &str) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.remove(binding);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(allow: &[&str], deny: &[&str]) -> ProbePolicyConfig {
        ProbePolicyConfig {
            allow_cidrs: allow.iter().map(|c| c.parse().unwrap()).collect(),
            deny_cidrs: deny.iter().map(|c| c.parse().unwrap()).collect(),
            ..Default::default()
        }
    }

    fn cluster() -> Cluster {
        Cluster {
            api_server: vec![
                "127.0.0.1:6443".parse().unwrap(),
                "10.96.0.1:443".parse().unwrap(),
            ],
            service_ranges: vec!["10.96.0.0/16".parse().unwrap()],
            node_ranges: vec![
                "10.244.1.0/24".parse().unwrap(),
                "192.168.5.10/32".parse().unwrap(),
            ],
        }
    }

    fn verdict(address: &str, config: &ProbePolicyConfig) -> Result<(), Refusal> {
        check(address.parse().unwrap(), config, &cluster())
    }

    #[test]
    fn internal_addresses_are_refused_by_rule() {
        let none = config(&[], &["10.244.0.0/16"]);
        for (address, refusal) in [
            ("127.0.0.1:6443", Refusal::ApiServer),
            ("10.96.0.1:443", Refusal::ApiServer),
            ("127.0.0.1:8080", Refusal::ApiServer),
            ("127.0.0.2:80", Refusal::Loopback),
            ("[::1]:80", Refusal::Loopback),
            ("[::ffff:127.0.0.5]:80", Refusal::Loopback),
            ("169.254.169.254:80", Refusal::LinkLocal),
            ("[fe80::1]:80", Refusal::LinkLocal),
            ("0.0.0.0:80", Refusal::Unspecified),
            ("[::]:80", Refusal::Unspecified),
            ("224.0.0.1:80", Refusal::NotUnicast),
            ("255.255.255.255:80", Refusal::NotUnicast),
            ("10.96.12.7:80", Refusal::ServiceRange),
            ("10.244.1.9:8080", Refusal::NodeRange),
            ("192.168.5.10:10250", Refusal::NodeRange),
            ("10.244.3.4:8080", Refusal::Denied),
        ] {
            assert_eq!(verdict(address, &none), Err(refusal), "{address}");
        }
        assert_eq!(verdict("203.0.113.7:443", &none), Ok(()));
        assert_eq!(verdict("10.1.2.3:443", &none), Ok(()));
    }

    #[test]
    fn an_allowed_range_is_probed_but_never_the_api_servers_port() {
        let loopback = config(&["127.0.0.0/8"], &[]);
        assert_eq!(verdict("127.0.0.1:18081", &loopback), Ok(()));
        assert_eq!(verdict("127.0.0.2:80", &loopback), Ok(()));
        assert_eq!(
            verdict("127.0.0.1:6443", &loopback),
            Err(Refusal::ApiServer)
        );
        // The API server's host outside the allowed range: every port.
        assert_eq!(verdict("10.96.0.1:80", &loopback), Err(Refusal::ApiServer));
    }

    #[tokio::test]
    async fn refusals_name_the_rule_and_never_resolve_an_ip_literal() {
        let none = config(&[], &[]);
        let url = reqwest::Url::parse("http://169.254.169.254/latest/meta-data").unwrap();
        assert_eq!(
            resolve(&url, &none, &cluster()).await,
            Err(NotProbed::Refused(Refusal::LinkLocal.describe().into()))
        );
        // A name is resolved and its addresses checked (no API server at 127.0.0.1 here).
        let url = reqwest::Url::parse("http://localhost:9/").unwrap();
        assert_eq!(
            resolve(&url, &none, &Cluster::default()).await,
            Err(NotProbed::Refused(Refusal::Loopback.describe().into()))
        );
        let url = reqwest::Url::parse("http://203.0.113.7:8443/").unwrap();
        assert_eq!(
            resolve(&url, &none, &cluster()).await,
            Ok(Target {
                domain: None,
                addresses: vec!["203.0.113.7:8443".parse().unwrap()]
            })
        );
    }

    #[test]
    fn one_binding_is_probed_at_most_once_per_interval() {
        let recent = RecentProbes::default();
        let outcome = ProbeOutcome {
            reachable: true,
            status_code: Some(200),
            message: "ok".into(),
        };
        let interval = Duration::from_secs(60);
        assert!(matches!(
            recent.check("n/b", "http://a/", interval),
            Recent::Probe
        ));
        recent.record("n/b".into(), "http://a/".into(), outcome.clone());
        assert!(
            matches!(recent.check("n/b", "http://a/", interval), Recent::Reuse(o) if o == outcome)
        );
        assert!(matches!(
            recent.check("n/b", "http://b/", interval),
            Recent::Wait(_)
        ));
        assert!(matches!(
            recent.check("n/b", "http://a/", Duration::ZERO),
            Recent::Probe
        ));
        assert!(matches!(
            recent.check("n/c", "http://a/", interval),
            Recent::Probe
        ));
    }
}
