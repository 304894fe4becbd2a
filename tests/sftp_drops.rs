//! File drops over SFTP against OpenSSH's own server: `sshd` from Debian's openssh-server
//! (scripts/install-tools.sh unpacks it into the cache; the test starts it through
//! `support::tool("sshd")`), run unprivileged on a loopback port with a host key of the test's
//! own, serving SFTP with its internal-sftp. The planning platform is simulated the way such
//! platforms answer: it waits for a batch's manifest, checks it against the batch file, and
//! writes a reject file (`key,reason`) or an acknowledgement into the drop directory.

mod e2e_support;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e_support::*;
use flowplane::api::connector_binding::{AuthType, Protocol, System};
use flowplane::api::integration_flow::{FilesWrite, SyncMode, WriteMode};
use flowplane::queue::list_dead_letters;
use flowplane::sim::erp::ErpSeed;
use flowplane::worker::connectors::Records;
use flowplane::worker::connectors::files::FileSource;
use flowplane::worker::http::CallError;
use flowplane::worker::sample;
use flowplane::worker_config::{EndpointConfig, SourceConfig, TargetConfig};
use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::{Ed25519Keypair, PrivateKey};
use serde_json::Value;
use sha2::{Digest, Sha256};

const TIMEOUT: Duration = Duration::from_secs(120);
const LINES: u32 = 120;

/// An ed25519 key unique to this run and `label` (no RNG needed: a hash of time and pid).
fn key(label: &str) -> PrivateKey {
    let seed: [u8; 32] = Sha256::digest(format!(
        "{label}-{}-{:?}",
        std::process::id(),
        std::time::SystemTime::now()
    ))
    .into();
    PrivateKey::from(Ed25519Keypair::from_seed(&seed))
}

/// OpenSSH's sshd on a free loopback port, serving SFTP to one user with one key.
struct Sshd {
    child: Child,
    port: u16,
    dir: TempDir,
    /// The directory files are dropped in (on this machine's disk, as the platform sees it).
    drop: PathBuf,
    /// Who logs in: sshd run unprivileged serves only its own user (nobody when the test runs
    /// as root: the launcher drops to nobody).
    user: String,
    host_key: String,
    client_key: String,
}

impl Sshd {
    fn start() -> Sshd {
        let dir = TempDir::new("sshd");
        let drop = dir.0.join("drop");
        std::fs::create_dir(&drop).unwrap();
        let root = unsafe_uid() == 0;
        let (user, uid) = if root {
            ("nobody".to_string(), 65534)
        } else {
            (std::env::var("USER").unwrap_or_default(), unsafe_uid())
        };
        let host = key("host");
        let client = key("client");
        let host_file = dir.0.join("host_ed25519");
        std::fs::write(
            &host_file,
            host.to_openssh(LineEnding::LF).unwrap().as_bytes(),
        )
        .unwrap();
        let authorized = dir.0.join("authorized_keys");
        std::fs::write(&authorized, client.public_key().to_openssh().unwrap()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&host_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&drop, std::fs::Permissions::from_mode(0o777)).unwrap();
        if root {
            // sshd reads its host key only when it owns it.
            std::os::unix::fs::chown(&host_file, Some(uid), Some(uid)).unwrap();
        }
        let port = StdListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.0.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1\nPort {port}\nHostKey {}\nPidFile none\n\
                 AuthorizedKeysFile {}\nStrictModes no\nUsePAM yes\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 Subsystem sftp internal-sftp\n",
                host_file.display(),
                authorized.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.0.join("sshd.log")).unwrap();
        let child = Command::new(support::tool("sshd"))
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start sshd (scripts/install-tools.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sshd did not start in 30s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Sshd {
            child,
            port,
            drop,
            user,
            host_key: host.public_key().to_openssh().unwrap(),
            client_key: client.to_openssh(LineEnding::LF).unwrap().to_string(),
            dir,
        }
    }

    /// A Files binding on the drop directory with the client key in its (mounted) Secret.
    fn endpoint(&self, secrets: &Path) -> EndpointConfig {
        std::fs::write(secrets.join("username"), &self.user).unwrap();
        std::fs::write(secrets.join("privateKey"), &self.client_key).unwrap();
        let url = format!("sftp://127.0.0.1:{}{}", self.port, self.drop.display());
        let mut endpoint = sample::endpoint("planner", System::Forecasting, Protocol::Files, &url);
        endpoint.auth = AuthType::SshKey;
        endpoint.secret_dir = Some(secrets.display().to_string());
        endpoint.ssh_host_keys = vec![self.host_key.clone()];
        endpoint
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// This process's user id, from the owner of /proc/self.
fn unsafe_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0)
}

/// What the simulated planning platform saw: every batch's rows by key, the keys it refused,
/// and any manifest that did not match its batch.
#[derive(Default)]
struct Platform {
    rows: BTreeMap<String, u32>,
    rejected: BTreeSet<String>,
    batches: usize,
    bad_manifests: Vec<String>,
}

/// Answers each batch once its manifest is there: checks the manifest (name, record count,
/// SHA-256), refuses every fifth row (reason with a comma, so it is quoted), acknowledges a
/// batch it refuses nothing of.
async fn platform(drop: PathBuf, seen: Arc<Mutex<Platform>>) {
    let mut answered = BTreeSet::new();
    loop {
        let mut names: Vec<String> = std::fs::read_dir(&drop)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".manifest.json"))
            .collect();
        names.sort();
        for manifest_name in names {
            if !answered.insert(manifest_name.clone()) {
                continue;
            }
            let manifest: Value =
                serde_json::from_slice(&std::fs::read(drop.join(&manifest_name)).unwrap()).unwrap();
            let batch = manifest["file"].as_str().unwrap().to_string();
            let bytes = std::fs::read(drop.join(&batch)).unwrap();
            let mut reader = csv::Reader::from_reader(&bytes[..]);
            let header = reader.headers().unwrap().clone();
            let keys: Vec<String> = reader
                .records()
                .map(|r| r.unwrap().get(0).unwrap().to_string())
                .collect();
            let mut seen = seen.lock().unwrap();
            let digest: String = Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            if manifest_name != format!("{batch}.manifest.json")
                || manifest["records"] != keys.len()
                || manifest["sha256"] != digest.as_str()
                || &header[0] != "recordKey"
            {
                seen.bad_manifests.push(manifest_name.clone());
            }
            seen.batches += 1;
            let mut rejects = csv::Writer::from_writer(Vec::new());
            rejects.write_record(["key", "reason"]).unwrap();
            let mut any = false;
            for (i, key) in keys.iter().enumerate() {
                *seen.rows.entry(key.clone()).or_default() += 1;
                if i % 5 == 0 {
                    rejects
                        .write_record([key.as_str(), "unknown location, not planned"])
                        .unwrap();
                    seen.rejected.insert(key.clone());
                    any = true;
                }
            }
            // Written whole, then renamed, as the worker writes.
            let (answer, content) = if any {
                (format!("{batch}.reject.csv"), rejects.into_inner().unwrap())
            } else {
                (format!("{batch}.ack"), Vec::new())
            };
            std::fs::write(drop.join(".answer.tmp"), content).unwrap();
            std::fs::rename(drop.join(".answer.tmp"), drop.join(answer)).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_and_manifests_reach_sftp_and_rejects_dead_letter_exactly_those_records() {
    let sshd = Sshd::start();
    let secrets = TempDir::new("sftp-secret");
    let nats = PrivateNats::start();
    let sims = start_sims(ErpSeed {
        order_lines: LINES,
        inventory: 0,
        returns: 0,
        bad_every: 0,
        page_size: 100,
    })
    .await;
    let js = jetstream(&nats.url()).await;
    let flow = unique_flow("sftp");
    let mut config = sample::sales_order_flow("e2e", &flow, &nats.url(), &sims.erp_url, "unused");
    config.target = TargetConfig {
        endpoint: sshd.endpoint(&secrets.0),
        entity: "sales-order-lines".into(),
        write_mode: WriteMode::Upsert,
        batch_size: 25,
        rest: None,
        files: Some(FilesWrite {
            answer_timeout: "30s".into(),
        }),
    };
    config.delivery.ack_wait = "60s".into();
    let _cleanup = QueueCleanup {
        url: nats.url(),
        names: config.queue.clone(),
    };
    let seen = Arc::new(Mutex::new(Platform::default()));
    let answering = tokio::spawn(platform(sshd.drop.clone(), seen.clone()));
    let names = config.queue.clone();
    let worker = InProcessWorker::start(config, "sftp-1");
    let p = eventually(TIMEOUT, "every line delivered or dead-lettered", || {
        let js = js.clone();
        let names = names.clone();
        async move {
            let p = progress(&js, &names).await;
            (p.read == u64::from(LINES) && p.delivered + p.dead_lettered == u64::from(LINES))
                .then_some(p)
        }
    })
    .await;
    worker.stop().await.unwrap();
    answering.abort();
    let dead = list_dead_letters(&js, &names, None).await.unwrap();
    let seen = seen.lock().unwrap();
    println!(
        "{} batches over SFTP, {} rows, {} refused by the platform",
        seen.batches,
        seen.rows.len(),
        seen.rejected.len()
    );
    assert!(seen.bad_manifests.is_empty(), "{:?}", seen.bad_manifests);
    assert_eq!(
        seen.rows.len(),
        LINES as usize,
        "every line in a batch file"
    );
    assert!(seen.rows.values().all(|n| *n == 1), "no line twice");
    let dead_keys: BTreeSet<String> = dead.iter().map(|d| d.key.clone()).collect();
    assert_eq!(dead_keys, seen.rejected, "exactly the refused records");
    assert_eq!(dead.len(), seen.rejected.len());
    assert!(
        dead.iter()
            .all(|d| d.detail.contains("unknown location, not planned")),
        "{:?}",
        dead.first().map(|d| &d.detail)
    );
    assert_eq!(
        (p.delivered, p.dead_lettered),
        (
            u64::from(LINES) - seen.rejected.len() as u64,
            seen.rejected.len() as u64
        )
    );
    // Nothing half-written is left behind.
    let leftovers: Vec<String> = std::fs::read_dir(&sshd.drop)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(sshd.log().contains("Accepted publickey"), "{}", sshd.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_files_source_reads_drops_over_sftp_and_refuses_an_unknown_host_key() {
    let sshd = Sshd::start();
    let secrets = TempDir::new("sftp-secret");
    // RFC 4180: a quoted comma, a doubled quote, a line break inside quotes, CRLF endings.
    std::fs::write(
        sshd.drop.join("orders-001.csv"),
        "id,note\r\n1,\"a, b\"\r\n2,\"say \"\"hi\"\"\"\r\n3,\"two\nlines\"\r\n",
    )
    .unwrap();
    std::fs::write(sshd.drop.join("orders-002.csv"), "id,note\n4,x\n").unwrap();
    std::fs::write(sshd.drop.join(".orders-003.csv.part"), "id,note\n5,half\n").unwrap();
    std::fs::write(sshd.drop.join("returns-001.csv"), "id\n9\n").unwrap();
    let config = SourceConfig {
        endpoint: sshd.endpoint(&secrets.0),
        entity: "orders-*.csv".into(),
        sync_mode: SyncMode::Incremental,
        cursor_field: None,
        select: vec![],
        poll_interval: "1s".into(),
        rest: None,
    };
    let mut source = FileSource::new(&config).unwrap();
    source.begin(None);
    let mut pages = Vec::new();
    while let Some(page) = source.next_page().await.unwrap() {
        let Records::Values(records) = page.records else {
            panic!("file pages are parsed records");
        };
        pages.push((page.cursor.unwrap(), records));
    }
    assert_eq!(pages.len(), 2);
    assert_eq!(pages[0].0, "orders-001.csv");
    let notes: Vec<&str> = pages[0]
        .1
        .iter()
        .map(|r| r["note"].as_str().unwrap())
        .collect();
    assert_eq!(notes, ["a, b", "say \"hi\"", "two\nlines"]);
    assert_eq!(pages[1].1[0]["id"], "4");
    // Resumed after the cursor: nothing new.
    source.begin(Some("orders-002.csv"));
    assert!(source.next_page().await.unwrap().is_none());

    // A server presenting another host key is refused before any credential is sent.
    let mut wrong = config.clone();
    wrong.endpoint.ssh_host_keys = vec![key("other").public_key().to_openssh().unwrap()];
    let mut source = FileSource::new(&wrong).unwrap();
    source.begin(None);
    match source.next_page().await {
        Err(CallError::Refused { reason, .. }) => assert!(reason.contains("host key"), "{reason}"),
        other => panic!("expected a refusal, got {:?}", other.map(|p| p.is_some())),
    }
}
