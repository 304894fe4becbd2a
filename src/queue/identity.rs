//! One NATS identity per flow: what each flow's user may publish and subscribe to on NATS,
//! derived from the same names the queue uses ([`QueueNames`]), the user credentials the
//! operator issues with them, and the one way every process (worker, CLI, operator) connects.
//!
//! Why decentralized JWT auth and not auth callout: the server checks a user JWT offline
//! against the account JWT it already holds, so no service of ours sits in the path of every
//! connection (a callout service down means no worker connects), and what a flow may do is
//! written into its credentials, where `nats-server` enforces it, rather than decided per
//! connection by code of ours. The operator holds only the account's signing key (not the
//! account's identity key nor the operator key): it can issue users of the flowplane account,
//! nothing else, and rotating that key (re-signing the account JWT) revokes every user it issued.
//!
//! Every allow-list names exact streams, consumers and buckets: no `$JS.API.>`, so a flow's
//! user cannot list, read, purge or delete another flow's stream, consumer, dead letters or
//! bucket, and its replies come to an inbox prefix of its own ([`QueueNames::inbox_prefix`]),
//! which no other flow may subscribe to.

use std::path::{Path, PathBuf};

use nats_jwt_rs::Claims;
use nats_jwt_rs::account::{Account, JetStreamLimits, OperatorLimits};
use nats_jwt_rs::operator::Operator;
use nats_jwt_rs::types::{Permission, Permissions, ResponsePermission, SigningKey};
use nats_jwt_rs::user::User;
use nkeys::KeyPair;

use super::QueueNames;
use super::dead_letter_requests::{DEAD_LETTER_REQUESTS, request_subject};

/// First token of every flow subject (`flowplane.<flow id>.records.<partition>`, `.dead`).
pub const FLOW_SUBJECT_ROOT: &str = "flowplane";
/// Inbox prefix of the operator's own connection.
pub const OPERATOR_INBOX_PREFIX: &str = "_INBOX.flowplane-operator";

/// Subject prefixes that belong to the platform: flow subjects, the JetStream and key-value
/// APIs, reply inboxes, the system account. An event source may not read any of them.
pub const RESERVED_SUBJECT_ROOTS: [&str; 5] = [FLOW_SUBJECT_ROOT, "$JS", "$KV", "_INBOX", "$SYS"];

/// Why an event source's subject may not be read by a flow, or None when it may. A subject
/// whose first token is a wildcard covers the platform's subjects too.
pub fn reserved_subject(subject: &str) -> Option<String> {
    let first = subject.split('.').next().unwrap_or_default();
    if subject.is_empty() || subject.split('.').any(str::is_empty) {
        return Some(format!("{subject:?} is not a valid NATS subject"));
    }
    if subject.contains(char::is_whitespace) {
        return Some(format!("{subject:?} is not a valid NATS subject"));
    }
    if first == "*" || first == ">" {
        return Some(format!(
            "subject {subject:?} starts with a wildcard and so covers the platform's own subjects"
        ));
    }
    RESERVED_SUBJECT_ROOTS
        .iter()
        .find(|root| first == **root || (root.starts_with('_') && first.starts_with(**root)))
        .map(|root| format!("subject {subject:?} is under {root}.>, reserved for the platform"))
}

/// Whether two NATS URLs name the same server (host and port; `nats://` and `tls://` alike):
/// an event source on the platform's own server is read as the flow's user.
pub fn same_server(a: &str, b: &str) -> bool {
    let authority = |url: &str| {
        let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
        rest.trim_end_matches('/').to_ascii_lowercase()
    };
    authority(a) == authority(b)
}

/// What one NATS user may publish and subscribe to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubjectPermissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    /// May answer each request it receives once, on the request's reply subject, which no
    /// publish permission needs to name (the requester's inbox).
    pub respond: bool,
}

/// JetStream API subjects exactly as async-nats sends them for what each of a flow's streams is
/// used for: `STREAM.<op>.<stream>`, `CONSUMER.<op>.<stream>[.<consumer>[.<filter>]]`,
/// `CONSUMER.MSG.NEXT.<stream>.<consumer>`, `DIRECT.GET.<stream>[.<subject>]`, and the
/// acknowledgement (`$JS.ACK`) and flow-control (`$JS.FC`) subjects of its consumers. Each
/// stream gets only what the flow does with it, which also keeps the user JWT under
/// nats-server's default 4 KiB control line (the client sends it in CONNECT).
///
/// Never `STREAM.CREATE`/`UPDATE`: a stream's subjects are in the request's body, where no
/// subject permission reaches, so a user allowed to create its own stream could make it capture
/// another flow's subjects or reply inboxes. The operator creates every stream.
fn stream_api(names: &QueueNames, publish: &mut Vec<String>) {
    let (records, consumer, dead) = (&names.stream, &names.consumer, &names.dead_letter_stream);
    publish.extend([
        // Records: the workers' shared pull consumer (the operator makes it).
        format!("$JS.API.STREAM.INFO.{records}"),
        format!("$JS.API.CONSUMER.INFO.{records}.{consumer}"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{records}.{consumer}"),
        format!("$JS.ACK.{records}.{consumer}.>"),
        // Dead letters: read and removed one by one (list, redrive).
        format!("$JS.API.STREAM.INFO.{dead}"),
        format!("$JS.API.STREAM.MSG.GET.{dead}"),
        format!("$JS.API.STREAM.MSG.DELETE.{dead}"),
    ]);
    state_api(names, publish);
}

/// The flow's own keys in its namespace's bucket, which every flow of the namespace shares:
/// only API subjects that name the key. Reads by direct get with the key's subject in the API
/// subject (`DIRECT.GET.<stream>.$KV.<bucket>.<token>.>`), writes and deletes of a key by
/// publishing to `$KV.<bucket>.<token>.<key>` (rollup headers, which could drop other keys,
/// are refused by the bucket itself: `jetstream::ensure_state_bucket`).
///
/// Never `STREAM.MSG.GET` (the key is in the request body: any flow's record could be read),
/// `STREAM.PURGE` (its filter is in the body: any flow's keys could be purged; a flow removes
/// a key with an expiring delete marker instead) nor `CONSUMER.CREATE` (see [`bucket_api`]).
/// `STREAM.INFO` is needed to open the bucket (async-nats reads its configuration) and to list
/// the flow's keys by subject; its subject filter is in the body too, so a flow's user can see
/// the *names* of its neighbours' keys in the namespace (flow names, review, backfill and
/// replay ids: nothing of a record's value) and their counts, never a value
/// (docs/security.md).
fn state_api(names: &QueueNames, publish: &mut Vec<String>) {
    let stream = format!("KV_{}", names.state_bucket);
    let keys = names.state_key_prefix();
    publish.extend([
        format!("$JS.API.STREAM.INFO.{stream}"),
        format!("$JS.API.DIRECT.GET.{stream}.{keys}>"),
        format!("{keys}>"),
        // Whether its bucket of the per-flow layout is still to be moved (the workers wait).
        format!("$JS.API.STREAM.INFO.KV_{}", names.legacy_state_bucket()),
    ]);
}

/// A key-value bucket whose every key the flow may use (a binding's quota bucket): reads by direct get, writes to
/// `$KV.<bucket>.<key>`, key listings by the stream's subjects (`STREAM.INFO` with a filter).
///
/// Never `CONSUMER.CREATE` (so no `keys()`/`watch()`, whose ordered consumers need it): a
/// consumer's deliver subject is in the request body, and nats-server 2.15 accepts a push
/// consumer delivering to a subject its creator may not publish to, which would write this
/// flow's entries into another flow's stream (`tests/nats_identity.rs` shows it).
fn bucket_api(stream: &str, bucket: &str, publish: &mut Vec<String>) {
    publish.extend([
        format!("$JS.API.STREAM.INFO.{stream}"),
        format!("$JS.API.STREAM.MSG.GET.{stream}"),
        format!("$JS.API.DIRECT.GET.{stream}.>"),
        format!("$KV.{bucket}.>"),
    ]);
}

/// The permissions of one flow's user: its own stream, dead-letter stream, consumer and keys
/// in its namespace's state bucket, the quota buckets of the bindings it uses, and, for an event flow whose
/// source is this NATS server, its consumer on its capture stream, whose filter is exactly the
/// source subject (the operator creates both, see [`super::jetstream::ensure_capture`]).
pub fn flow_permissions(
    names: &QueueNames,
    event_subject: Option<&str>,
    quota_buckets: &[String],
) -> SubjectPermissions {
    let mut publish = vec![
        format!("{}.>", names.subject),
        names.dead_letter_subject.clone(),
        // Asking the operator for its dead-letter stream, made on demand.
        request_subject(names),
    ];
    stream_api(names, &mut publish);
    for bucket in quota_buckets {
        bucket_api(&format!("KV_{bucket}"), bucket, &mut publish);
    }
    if event_subject.is_some_and(|s| reserved_subject(s).is_none()) {
        let capture = names.capture_stream();
        let consumer = names.capture_consumer();
        publish.extend([
            format!("$JS.API.STREAM.INFO.{capture}"),
            format!("$JS.API.CONSUMER.INFO.{capture}.{consumer}"),
            format!("$JS.API.CONSUMER.MSG.NEXT.{capture}.{consumer}"),
            format!("$JS.ACK.{capture}.{consumer}.>"),
        ]);
    }
    SubjectPermissions {
        publish,
        subscribe: vec![format!("{}.>", names.inbox_prefix())],
        respond: false,
    }
}

/// The operator's own user: the JetStream API of the account (it creates, updates and deletes
/// every flow's queue), the key-value buckets and flow subjects (progress, cursor reset,
/// redrive), its own inbox, and the workers' requests for dead-letter streams, which it
/// answers.
pub fn operator_permissions() -> SubjectPermissions {
    SubjectPermissions {
        publish: vec![
            "$JS.API.>".into(),
            "$JS.ACK.>".into(),
            "$JS.FC.>".into(),
            "$KV.>".into(),
            format!("{FLOW_SUBJECT_ROOT}.>"),
        ],
        subscribe: vec![
            format!("{OPERATOR_INBOX_PREFIX}.>"),
            DEAD_LETTER_REQUESTS.into(),
        ],
        respond: true,
    }
}

/// The account signing key the operator issues users with, and the account they belong to.
pub struct AccountSigner {
    key: KeyPair,
    account: String,
}

/// Keys in the operator's signer Secret (and files of `nats-bootstrap`).
pub const SIGNER_SEED_KEY: &str = "account-signer.nk";
pub const ACCOUNT_KEY: &str = "account.pub";

/// Keys in each flow's credentials Secret.
pub const CREDS_KEY: &str = "user.creds";
pub const CA_KEY: &str = "ca.crt";

impl AccountSigner {
    /// From the signer's seed (`SA...`) and the account's public key (`A...`).
    pub fn new(seed: &str, account: &str) -> anyhow::Result<AccountSigner> {
        let key = KeyPair::from_seed(seed.trim())
            .map_err(|_| anyhow::anyhow!("the NATS account signing key is not an nkey seed"))?;
        let account = account.trim().to_string();
        if KeyPair::from_public_key(&account).is_err() || !account.starts_with('A') {
            anyhow::bail!("{account:?} is not a NATS account public key");
        }
        Ok(AccountSigner { key, account })
    }

    /// The account's public key (`A...`): the account its users' streams live in.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// From a directory holding [`SIGNER_SEED_KEY`] and [`ACCOUNT_KEY`] (a mounted Secret).
    pub fn load(dir: &Path) -> anyhow::Result<AccountSigner> {
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .map_err(|e| anyhow::anyhow!("reading {name} in {}: {e}", dir.display()))
        };
        AccountSigner::new(&read(SIGNER_SEED_KEY)?, &read(ACCOUNT_KEY)?)
    }

    /// Credentials (a `.creds` file's text) of a new user `name` with `permissions`.
    pub fn issue(&self, name: &str, permissions: &SubjectPermissions) -> anyhow::Result<String> {
        let user = KeyPair::new_user();
        let mut claims = User::new_claims(name.to_string(), user.public_key());
        claims.nats.issuer_account = Some(self.account.clone());
        claims.nats.permissions.permissions = jwt_permissions(permissions);
        let jwt = claims.encode(&self.key)?;
        let seed = user
            .seed()
            .map_err(|_| anyhow::anyhow!("encoding the user's seed"))?;
        Ok(creds_file(&jwt, &seed))
    }

    /// Whether `creds` were issued by this signer for `name` with exactly `permissions`, so an
    /// operator leaves a flow's Secret alone while nothing about it changed.
    pub fn issued(&self, creds: &str, name: &str, permissions: &SubjectPermissions) -> bool {
        let Some(jwt) = creds_jwt(creds) else {
            return false;
        };
        match Claims::<User>::decode(jwt) {
            Ok(claims) => {
                claims.iss == self.key.public_key()
                    && claims.name.as_deref() == Some(name)
                    && claims.nats.issuer_account.as_deref() == Some(self.account.as_str())
                    && claims.nats.permissions.permissions == jwt_permissions(permissions)
            }
            Err(_) => false,
        }
    }
}

fn jwt_permissions(permissions: &SubjectPermissions) -> Permissions {
    Permissions {
        publish: Permission {
            allow: permissions.publish.clone(),
            deny: Vec::new(),
        },
        subscribe: Permission {
            allow: permissions.subscribe.clone(),
            deny: Vec::new(),
        },
        // One answer per request, within nats-server's default two minutes.
        resp: permissions.respond.then_some(ResponsePermission {
            max_messages: 1,
            ttl: std::time::Duration::ZERO,
        }),
    }
}

/// The decorated `.creds` layout nats-server's tools write and every NATS client reads.
fn creds_file(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n"
    )
}

fn creds_jwt(creds: &str) -> Option<&str> {
    let mut lines = creds.lines().map(str::trim);
    lines.find(|l| l.starts_with("-----BEGIN NATS USER JWT"))?;
    lines.next().filter(|l| !l.is_empty())
}

/// How a process reaches NATS: the URL, and for a server with auth and TLS the credentials
/// file and the CA that signed the server's certificate. One way for every process.
#[derive(Clone, Debug, Default)]
pub struct NatsAccess {
    pub url: String,
    /// `.creds` file (mounted from the flow's Secret in pods).
    pub creds_file: Option<PathBuf>,
    /// CA bundle that verifies the server (TLS is then required).
    pub ca_file: Option<PathBuf>,
    /// Inbox prefix the user may subscribe to.
    pub inbox_prefix: Option<String>,
}

impl NatsAccess {
    /// Connect options for this access; credentials and CA are read now.
    pub async fn options(&self) -> anyhow::Result<async_nats::ConnectOptions> {
        let mut options = async_nats::ConnectOptions::new();
        if let Some(creds) = &self.creds_file {
            options = options.credentials_file(creds).await.map_err(|e| {
                anyhow::anyhow!("reading NATS credentials {}: {e}", creds.display())
            })?;
        }
        if let Some(ca) = &self.ca_file {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let Some(prefix) = &self.inbox_prefix {
            options = options.custom_inbox_prefix(prefix);
        }
        Ok(options)
    }

    /// Connects once (no retry): for terminal commands and tests.
    pub async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        let options = self.options().await?;
        options
            .connect(self.url.as_str())
            .await
            .map_err(|e| anyhow::anyhow!("connecting to NATS at {}: {e}", self.url))
    }
}

/// Files `flowplane nats-bootstrap` writes (see [`bootstrap`]).
pub const OPERATOR_JWT_FILE: &str = "operator.jwt";
pub const SERVER_CONFIG_FILE: &str = "auth.conf";
pub const ADMIN_CREDS_FILE: &str = "admin.creds";

/// Makes the NATS trust chain of an installation in `dir`, keeping what is already there:
/// an operator (its seed stays in `dir`, for re-signing accounts offline), a system account,
/// the flowplane account with JetStream and one signing key, the signer files the operator's
/// Secret holds ([`SIGNER_SEED_KEY`], [`ACCOUNT_KEY`]), `auth.conf` for nats-server (operator,
/// system account, memory resolver preloaded with both accounts: include it from the server's
/// configuration) and `admin.creds`, a user with every right in the flowplane account, for a
/// platform engineer or tests.
pub fn bootstrap(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let key = |name: &str, new: fn() -> KeyPair| -> anyhow::Result<KeyPair> {
        let path = dir.join(name);
        if let Ok(seed) = std::fs::read_to_string(&path) {
            return KeyPair::from_seed(seed.trim())
                .map_err(|_| anyhow::anyhow!("{} is not an nkey seed", path.display()));
        }
        let pair = new();
        let seed = pair
            .seed()
            .map_err(|_| anyhow::anyhow!("encoding a seed"))?;
        write_private(&path, &seed)?;
        Ok(pair)
    };
    let operator = key("operator.nk", KeyPair::new_operator)?;
    let system = key("system-account.nk", KeyPair::new_account)?;
    let account = key("account.nk", KeyPair::new_account)?;
    let signer = key(SIGNER_SEED_KEY, KeyPair::new_account)?;

    let mut operator_claims = Operator::new_claims("flowplane".into(), operator.public_key());
    operator_claims.nats.system_account = Some(system.public_key());
    let operator_jwt = operator_claims.encode(&operator)?;

    let system_jwt = Account::new_claims("SYS".into(), system.public_key()).encode(&operator)?;
    let mut account_claims = Account::new_claims("flowplane".into(), account.public_key());
    account_claims.nats.signing_keys = Some(
        [SigningKey {
            key: signer.public_key(),
            scope: None,
        }]
        .into_iter()
        .collect(),
    );
    // JetStream is enabled for an account by giving it storage; unlimited here, the server's
    // own limits (max_file_store) bound it.
    account_claims.nats.limits = Some(OperatorLimits {
        jetstream: Some(JetStreamLimits {
            memory_storage: Some(-1),
            disk_storage: Some(-1),
            streams: Some(-1),
            consumer: Some(-1),
            ..Default::default()
        }),
        ..Default::default()
    });
    let account_jwt = account_claims.encode(&operator)?;

    std::fs::write(dir.join(OPERATOR_JWT_FILE), &operator_jwt)?;
    std::fs::write(dir.join(ACCOUNT_KEY), account.public_key())?;
    let conf = format!(
        "# Written by flowplane nats-bootstrap: decentralized JWT auth, anonymous clients refused.\n\
         operator: {operator_jwt}\n\
         system_account: {system}\n\
         resolver: MEMORY\n\
         resolver_preload: {{\n  {system}: {system_jwt}\n  {account}: {account_jwt}\n}}\n",
        system = system.public_key(),
        account = account.public_key(),
    );
    std::fs::write(dir.join(SERVER_CONFIG_FILE), conf)?;
    let signer = AccountSigner {
        key: signer,
        account: account.public_key(),
    };
    // Everything in the flowplane account (no allow-list): for a platform engineer and tests.
    let admin = signer.issue("flowplane-admin", &SubjectPermissions::default())?;
    write_private(&dir.join(ADMIN_CREDS_FILE), &admin)?;
    Ok(())
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// `flowplane nats-bootstrap`
#[derive(clap::Args, Debug)]
pub struct BootstrapArgs {
    /// Directory for the keys, JWTs and server configuration (kept when present).
    #[arg(long)]
    pub dir: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::binding_quota_bucket;

    #[test]
    fn quota_buckets_are_per_namespace_and_binding_and_never_a_flow_bucket() {
        let bucket = binding_quota_bucket("team-eu", "erp.prod");
        assert_eq!(bucket, "FP_QUOTA_team-eu_erp_prod");
        assert_ne!(bucket, binding_quota_bucket("team-us", "erp.prod"));
        assert!(kv_name_ok(&bucket));
    }

    fn kv_name_ok(name: &str) -> bool {
        name.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    }

    #[test]
    fn the_platform_server_is_recognised_by_host_and_port() {
        assert!(same_server("nats://NATS.x:4222", "tls://nats.x:4222/"));
        assert!(!same_server("nats://nats.x:4223", "nats://nats.x:4222"));
        assert!(!same_server(
            "nats://evil.example:4222",
            "nats://nats.x:4222"
        ));
    }

    #[test]
    fn platform_subjects_are_reserved() {
        for subject in [
            "flowplane.x.records.1",
            "$JS.API.STREAM.PURGE.FP_a_b",
            "$KV.FP_STATE_a.b.cursor",
            "_INBOX.FP_a_b.x",
            "_INBOX_other.x",
            "$SYS.REQ.SERVER.PING",
            ">",
            "*.records.>",
            "",
            "a..b",
        ] {
            assert!(reserved_subject(subject).is_some(), "{subject}");
        }
        for subject in ["wms.stock.adjusted", "erp.orders.>", "flowplanes.x"] {
            assert_eq!(reserved_subject(subject), None, "{subject}");
        }
    }

    #[test]
    fn a_flow_may_touch_only_its_own_names() {
        let names = QueueNames::for_flow("team-a", "orders");
        let p = flow_permissions(&names, Some("wms.stock"), &[]);
        assert!(p.publish.iter().all(|s| !s.contains("$JS.API.>")
            && !s.starts_with("$JS.API.STREAM.PURGE")
            && !s.starts_with("$JS.API.STREAM.MSG.GET.KV_")
            && !s.starts_with("$JS.API.STREAM.DELETE")
            && !s.starts_with("$JS.API.STREAM.NAMES")
            && !s.starts_with("$JS.API.STREAM.LIST")));
        assert!(p.publish.iter().all(|s| !s.contains('>')
            || s.contains("FP_team-a_orders")
            || s.starts_with("flowplane.team-a_orders.")
            || s.ends_with("$KV.FP_STATE_team-a.orders.>")));
        // In the namespace's bucket: its own keys, by subject, nothing else.
        assert!(p.publish.contains(&"$KV.FP_STATE_team-a.orders.>".into()));
        assert!(p.publish.contains(
            &"$JS.API.DIRECT.GET.KV_FP_STATE_team-a.$KV.FP_STATE_team-a.orders.>".into()
        ));
        let state: Vec<&String> = p.publish.iter().filter(|s| s.contains("STATE")).collect();
        assert_eq!(state.len(), 4, "{state:?}");
        assert!(
            p.publish
                .contains(&"$JS.API.STREAM.INFO.KV_FP_team-a_orders_STATE".into())
        );
        assert_eq!(p.subscribe, vec!["_INBOX.FP_team-a_orders.>".to_string()]);
        assert!(p.publish.contains(
            &"$JS.API.CONSUMER.MSG.NEXT.FP_team-a_orders_CAPTURE.FP_team-a_orders".into()
        ));
        assert!(p.publish.iter().all(|s| !s.contains("CONSUMER.CREATE")));
        // A reserved source subject gets no capture rights at all.
        let p = flow_permissions(&names, Some("$KV.>"), &[]);
        assert!(p.publish.iter().all(|s| !s.contains("CAPTURE")));
    }

    #[test]
    fn credentials_of_the_longest_names_fit_the_documented_control_line() {
        let signer_key = KeyPair::new_account();
        let account = KeyPair::new_account();
        let signer =
            AccountSigner::new(&signer_key.seed().unwrap(), &account.public_key()).unwrap();
        // A 63-character namespace, a 253-character flow, two bindings with quotas.
        let (ns, flow) = ("n".repeat(63), "f".repeat(253));
        let names = QueueNames::for_flow(&ns, &flow);
        let quota = [
            binding_quota_bucket(&ns, &"b".repeat(253)),
            binding_quota_bucket(&ns, &"c".repeat(253)),
        ];
        let permissions = flow_permissions(&names, Some(&"s".repeat(200)), &quota);
        let creds = signer.issue(&format!("{ns}/{flow}"), &permissions).unwrap();
        // CONNECT carries the JWT, its nonce signature and a few hundred bytes of options;
        // nats-server must run with `max_control_line: 32768` (docs/install.md).
        let jwt = creds_jwt(&creds).unwrap();
        assert!(jwt.len() + 1024 < 32768, "{} bytes", jwt.len());
    }

    #[test]
    fn issued_credentials_carry_the_permissions_and_are_recognised() {
        let signer_key = KeyPair::new_account();
        let account = KeyPair::new_account();
        let signer =
            AccountSigner::new(&signer_key.seed().unwrap(), &account.public_key()).unwrap();
        let names = QueueNames::for_flow("team-a", "orders");
        let permissions = flow_permissions(&names, None, &[]);
        let creds = signer.issue("team-a/orders", &permissions).unwrap();
        assert!(signer.issued(&creds, "team-a/orders", &permissions));
        assert!(!signer.issued(&creds, "team-b/orders", &permissions));
        let other = flow_permissions(&QueueNames::for_flow("team-b", "orders"), None, &[]);
        assert!(!signer.issued(&creds, "team-a/orders", &other));
        let claims = Claims::<User>::decode(creds_jwt(&creds).unwrap()).unwrap();
        assert_eq!(claims.nats.issuer_account, Some(account.public_key()));
        assert!(AccountSigner::new("not a seed", &account.public_key()).is_err());
    }
}
