//! Test harness: a real control plane and nats-server (started once per machine by
//! `scripts/local-env.sh up`, reused while alive), a client, and throwaway namespaces.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config};

/// The running local environment.
pub struct LocalEnv {
    pub kubeconfig: PathBuf,
    pub nats_url: String,
    pub bin_dir: PathBuf,
}

pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Starts (or finds) the local control plane and NATS; once per test process.
pub fn local_env() -> &'static LocalEnv {
    static ENV: OnceLock<LocalEnv> = OnceLock::new();
    ENV.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/local-env.sh"))
            .arg("up")
            .output()
            .expect("run scripts/local-env.sh");
        assert!(
            out.status.success(),
            "scripts/local-env.sh up failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env_file = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let vars = read_env_file(Path::new(&env_file));
        let kubeconfig = PathBuf::from(&vars["KUBECONFIG"]);
        LocalEnv {
            bin_dir: kubeconfig_dir_bin(),
            kubeconfig,
            nats_url: vars["NATS_URL"].clone(),
        }
    })
}

fn kubeconfig_dir_bin() -> PathBuf {
    let cache = std::env::var("FLOWPLANE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/flowplane"));
    cache.join("bin")
}

fn read_env_file(path: &Path) -> HashMap<String, String> {
    let text = std::fs::read_to_string(path).expect("read env file");
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

/// A client for the local control plane, with the flowplane CRDs installed and Established.
pub async fn client() -> Client {
    let env = local_env();
    let kubeconfig = Kubeconfig::read_from(&env.kubeconfig).expect("read kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig to config");
    let client = Client::try_from(config).expect("client");
    install_crds(&client).await;
    client
}

/// Applies the generated CRDs (server-side apply) and waits until each is Established.
pub async fn install_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply("flowplane-tests").force();
    for crd in flowplane::api::crds() {
        let name = crd.metadata.name.clone().unwrap();
        api.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .unwrap_or_else(|e| panic!("apply CRD {name}: {e}"));
        tokio::time::timeout(
            Duration::from_secs(30),
            await_condition(api.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .unwrap_or_else(|_| panic!("CRD {name} not Established in 30s"))
        .unwrap();
    }
}

/// A namespace of its own for one test, deleted (by the namespace controller) on drop.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    pub async fn new(client: &Client, prefix: &str) -> TestNamespace {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!(
            "{prefix}-{:x}{:x}{}",
            std::process::id() % 0xffff,
            nanos % 0xfffff,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let api: Api<Namespace> = Api::all(client.clone());
        let mut ns = Namespace::default();
        ns.metadata.name = Some(name.clone());
        ns.metadata.labels = Some([("flowplane.io/test".to_string(), "true".to_string())].into());
        api.create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        TestNamespace { name }
    }
}

impl Drop for TestNamespace {
    // Drop is synchronous and the client's connection task lives on the test's runtime, which
    // is blocked here; kubectl deletes without it. The namespace controller finishes the job.
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "namespace", &self.name, "--wait=false"], None);
    }
}

/// Runs kubectl against the local control plane; returns (success, stdout, stderr).
pub fn kubectl(args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    use std::io::Write;
    let env = local_env();
    let mut cmd = Command::new(env.bin_dir.join("kubectl"));
    cmd.arg("--kubeconfig").arg(&env.kubeconfig).args(args);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn kubectl");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().expect("kubectl output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
