//! A real 3-node NATS cluster: three nats-server processes on loopback with routes and
//! JetStream. The cluster tier (tests/nats_cluster.rs) runs it in the local environment's
//! operator/JWT mode with TLS for clients and routes; the worker benchmark
//! (benches/worker_e2e.rs) runs it plain (no auth, no TLS), so that it needs no control plane.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use flowplane::queue::identity::{NatsAccess, OPERATOR_INBOX_PREFIX};

pub const NODES: usize = 3;

/// Three nats-servers forming one JetStream cluster; each node can be killed and restarted on
/// the same ports and store. Every process is killed, and the store removed, on drop.
pub struct NatsCluster {
    /// The nodes' configuration, logs and stores.
    pub dir: PathBuf,
    pub nodes: Vec<Node>,
    /// The local environment's trust chain, when the cluster runs with its auth and TLS.
    trust: Option<PathBuf>,
}

pub struct Node {
    pub name: String,
    pub client_port: u16,
    child: Option<Child>,
}

/// A port free on loopback now (another process may take it before it is bound).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl NatsCluster {
    /// With the local environment's auth and TLS (the trust chain `scripts/local-env.sh`
    /// made in `trust`): writes each node's configuration (the environment's auth.conf, its
    /// server certificate for clients, its route certificate for the routes) and starts the
    /// three nodes.
    pub fn start(trust: &Path) -> NatsCluster {
        for file in [
            "auth.conf",
            "server.crt",
            "server.key",
            "route.crt",
            "ca.crt",
        ] {
            assert!(
                trust.join(file).exists(),
                "{} is missing: restart the local environment (scripts/local-env.sh down; up) \
                 so it makes the cluster's route certificate",
                trust.join(file).display()
            );
        }
        Self::start_with(Some(trust))
    }

    /// Anonymous clients, plain routes: for the benchmark, which compares against raw
    /// JetStream on the same cluster and needs no control plane.
    pub fn start_plain() -> NatsCluster {
        Self::start_with(None)
    }

    fn start_with(trust: Option<&Path>) -> NatsCluster {
        let dir = std::env::temp_dir().join(format!(
            "flowplane-nats-cluster-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        if let Some(trust) = trust {
            std::fs::copy(trust.join("auth.conf"), dir.join("auth.conf")).unwrap();
        }
        let route_ports: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
        let routes: Vec<String> = route_ports
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect();
        let mut nodes = Vec::new();
        for (i, route_port) in route_ports.iter().enumerate() {
            let name = format!("n{i}");
            let client_port = free_port();
            let (client_tls, route_tls, auth) = match trust {
                Some(trust) => {
                    let file = |name: &str| trust.join(name).display().to_string();
                    (
                        format!(
                            r#"tls {{ cert_file: "{}", key_file: "{}", timeout: 5 }}"#,
                            file("server.crt"),
                            file("server.key")
                        ),
                        format!(
                            r#"tls {{ cert_file: "{}", key_file: "{}", ca_file: "{}", timeout: 5 }}"#,
                            file("route.crt"),
                            file("route.key"),
                            file("ca.crt")
                        ),
                        "include auth.conf",
                    )
                }
                None => (String::new(), String::new(), ""),
            };
            let config = format!(
                r#"server_name: {name}
listen: 127.0.0.1:{client_port}
max_control_line: 32768
jetstream {{ store_dir: "{store}" }}
{client_tls}
cluster {{
  name: flowplane-test
  listen: 127.0.0.1:{route_port}
  routes: [{routes}]
  {route_tls}
}}
{auth}
"#,
                store = dir.join(&name).display(),
                routes = routes.join(", "),
            );
            std::fs::write(dir.join(format!("{name}.conf")), config).unwrap();
            nodes.push(Node {
                name,
                client_port,
                child: None,
            });
        }
        let mut cluster = NatsCluster {
            dir,
            nodes,
            trust: trust.map(Path::to_path_buf),
        };
        for i in 0..NODES {
            cluster.start_node(i);
        }
        cluster
    }

    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client_port)
    }

    pub fn index(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// The process id of node `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(Child::id)
    }

    pub fn start_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        assert!(node.child.is_none(), "{} runs already", node.name);
        let log = std::fs::File::create(self.dir.join(format!("{}.log", node.name))).unwrap();
        let child = Command::new(super::tool("nats-server"))
            .arg("-c")
            .arg(self.dir.join(format!("{}.conf", node.name)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        node.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", node.client_port)).is_err() {
            assert!(Instant::now() < deadline, "{} did not start", node.name);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the node at once (SIGKILL): no goodbye to its peers, as when a machine dies.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The NATS trust chain (operator, account signing key) the cluster runs with.
    pub fn trust(&self) -> &Path {
        self.trust
            .as_deref()
            .expect("a cluster started with the local environment's trust chain")
    }

    /// An administrator's connection to node `i` (the client learns the others from it): the
    /// local environment's admin credentials and CA, or anonymous on a plain cluster.
    pub async fn admin(&self, i: usize) -> jetstream::Context {
        let access = match self.trust {
            Some(_) => {
                let env = super::local_env();
                NatsAccess {
                    url: self.url(i),
                    creds_file: Some(env.nats_creds.clone()),
                    ca_file: Some(env.nats_ca.clone()),
                    inbox_prefix: Some(OPERATOR_INBOX_PREFIX.into()),
                }
            }
            None => NatsAccess {
                url: self.url(i),
                ..Default::default()
            },
        };
        jetstream::new(access.connect().await.expect("connect to the cluster"))
    }

    /// Waits until the JetStream API answers, i.e. the cluster has elected its meta leader.
    pub async fn wait_for_jetstream(&self) {
        let js = self.admin(0).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while js.query_account().await.is_err() {
            assert!(
                Instant::now() < deadline,
                "the cluster's JetStream meta leader was not elected in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..NODES {
            self.kill_node(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
