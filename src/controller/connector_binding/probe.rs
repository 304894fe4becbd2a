//! The HTTP health probe of a binding: GET endpoint.url + healthCheck.path with the binding's
//! CA bundle and timeout, retried with exponential backoff and full jitter. Any answer below
//! 500 proves the endpoint is there (401 and 404 included: credentials and paths are the
//! workers' business); timeouts, connection failures and 5xx do not.

use std::time::Duration;

use rand::Rng;

use super::policy::{MAX_TIMEOUT, Target};
use super::status::ProbeOutcome;

/// Attempts per probe, the first one included.
const ATTEMPTS: u32 = 3;
const INITIAL_BACKOFF: Duration = Duration::from_millis(300);

/// The probed URL: the endpoint URL joined with the path.
pub fn probe_url(endpoint: &str, path: &str) -> String {
    format!(
        "{}/{}",
        endpoint.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

/// The URL as shown in status and events: without user info or query (which could carry
/// credentials someone put in the URL despite the auth block).
pub fn display_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => "(unparsable URL)".to_string(),
    }
}

fn client(
    timeout: Duration,
    ca_pem: Option<&[u8]>,
    target: &Target,
) -> Result<reqwest::Client, String> {
    // reqwest is built without a crypto provider; the process uses ring (never aws-lc-rs).
    // Installing twice is refused harmlessly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        // A proxy would resolve the host again, elsewhere.
        .no_proxy()
        .user_agent("flowplane-operator/health-probe");
    if let Some(domain) = &target.domain {
        // Connect to the addresses the policy checked, not to a second DNS answer.
        builder = builder.resolve_to_addrs(domain, &target.addresses);
    }
    if let Some(pem) = ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| format!("the CA bundle is not PEM: {}", e.without_url()))?;
        if certs.is_empty() {
            return Err("the CA bundle holds no certificate".into());
        }
        builder = builder.tls_certs_only(certs);
    }
    builder
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {}", e.without_url()))
}

/// Describes a failed request without the URL (reqwest puts it in its message) and with the
/// root cause, which is what a platform engineer needs ("Connection refused", "timed out").
fn describe(error: reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut cause: Option<&dyn std::error::Error> = std::error::Error::source(&error);
    let mut root = None;
    while let Some(c) = cause {
        root = Some(c.to_string());
        cause = c.source();
    }
    match root {
        Some(root) => format!("{kind}: {root}"),
        None => kind.to_string(),
    }
}

/// Probes `url` (see [`probe_url`]) at the addresses of `target`, which the policy checked
/// ([`super::policy::resolve`]); the message never contains credentials.
pub async fn probe(
    url: &str,
    timeout: Duration,
    ca_pem: Option<&[u8]>,
    target: &Target,
) -> ProbeOutcome {
    let shown = display_url(url);
    let timeout = timeout.clamp(Duration::from_secs(1), MAX_TIMEOUT);
    let client = match client(timeout, ca_pem, target) {
        Ok(c) => c,
        Err(message) => {
            return ProbeOutcome {
                reachable: false,
                status_code: None,
                message: format!("cannot probe {shown}: {message}"),
            };
        }
    };
    let mut backoff = INITIAL_BACKOFF;
    let mut last = None;
    for attempt in 1..=ATTEMPTS {
        let outcome = match client.get(url).send().await {
            Ok(response) => {
                let code = response.status().as_u16();
                ProbeOutcome {
                    reachable: code < 500,
                    status_code: Some(code),
                    message: format!("GET {shown} answered HTTP {code}"),
                }
            }
            Err(e) => ProbeOutcome {
                reachable: false,
                status_code: None,
                message: format!("GET {shown}: {}", describe(e)),
            },
        };
        if outcome.reachable {
            return outcome;
        }
        last = Some(outcome);
        if attempt < ATTEMPTS {
            // Full jitter: anywhere between zero and the current backoff.
            let millis = rand::thread_rng().gen_range(0..=backoff.as_millis() as u64);
            tokio::time::sleep(Duration::from_millis(millis)).await;
            backoff *= 2;
        }
    }
    let mut outcome = last.expect("at least one attempt");
    outcome.message = format!("{} (after {ATTEMPTS} attempts)", outcome.message);
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback(port: u16) -> Target {
        Target {
            domain: None,
            addresses: vec![std::net::SocketAddr::from(([127, 0, 0, 1], port))],
        }
    }

    #[test]
    fn urls_join_and_hide_credentials() {
        assert_eq!(
            probe_url("https://erp.example.com/odata/", "/$metadata"),
            "https://erp.example.com/odata/$metadata"
        );
        assert_eq!(probe_url("http://h:8080", "/"), "http://h:8080/");
        assert_eq!(
            display_url("https://user:secret@erp.example.com/x?token=abc"),
            "https://erp.example.com/x"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_unreachable_and_says_so() {
        let outcome = probe(
            "http://127.0.0.1:1/",
            Duration::from_secs(1),
            None,
            &loopback(1),
        )
        .await;
        assert!(!outcome.reachable);
        assert_eq!(outcome.status_code, None);
        assert!(
            outcome.message.contains("connection failed"),
            "{}",
            outcome.message
        );
    }

    /// The probe connects to the address the policy checked, never to a second DNS answer:
    /// a name that resolves nowhere (`.invalid`) still reaches the pinned listener.
    #[tokio::test]
    async fn the_probe_connects_to_the_checked_address_only() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buffer = [0u8; 1024];
            let _ = socket.read(&mut buffer).await;
            let _ = socket
                .write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                .await;
        });
        let target = Target {
            domain: Some("erp.flowplane.invalid".into()),
            addresses: vec![std::net::SocketAddr::from(([127, 0, 0, 1], port))],
        };
        let url = format!("http://erp.flowplane.invalid:{port}/health");
        let outcome = probe(&url, Duration::from_secs(2), None, &target).await;
        assert_eq!(outcome.status_code, Some(204), "{}", outcome.message);
    }

    #[tokio::test]
    async fn a_ca_bundle_that_is_not_pem_is_reported() {
        let outcome = probe(
            "https://127.0.0.1:1/",
            Duration::from_secs(1),
            Some(b"not a certificate"),
            &loopback(1),
        )
        .await;
        assert!(!outcome.reachable);
        assert!(outcome.message.contains("CA bundle"), "{}", outcome.message);
    }
}
