//! A drop directory, where file drops are read and written: a local directory (`file://`, on a
//! volume the flow mounts) or a directory on an SFTP server (`sftp://host[:port]/dir`). Over
//! SFTP the worker is an SSH client (russh, pure Rust on ring; SFTP by russh-sftp) that
//! accepts only the host keys the binding names (`endpoint.sshHostKeys`, as in known_hosts)
//! and logs in with the key or password of the binding's Secret. Files are written under a
//! temporary name and renamed, so a reader never sees half a file.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use russh::keys::{PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh_sftp::client::SftpSession;
use russh_sftp::protocol::OpenFlags;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use crate::api::connector_binding::AuthType;
use crate::worker::http::CallError;
use crate::worker_config::EndpointConfig;

/// Where a connector's files are.
pub enum DropDir {
    /// A directory of this pod's file system.
    Local(PathBuf),
    /// A directory on an SFTP server.
    Sftp(Box<SftpDir>),
}

/// A directory on an SFTP server, with the session kept open between calls (opened again
/// after a failure).
pub struct SftpDir {
    endpoint: EndpointConfig,
    host: String,
    port: u16,
    dir: String,
    host_keys: Vec<PublicKey>,
    session: Mutex<Option<Session>>,
}

struct Session {
    sftp: SftpSession,
    _ssh: russh::client::Handle<KnownHosts>,
}

/// The SSH client's handler: accepts the server only when it presents one of the host keys
/// of the binding.
struct KnownHosts(Vec<PublicKey>);

impl russh::client::Handler for KnownHosts {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(match server_public_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => self
                .0
                .iter()
                .any(|known| known.key_data() == key.key_data()),
            // Host certificates need a CA the binding does not name: refused.
            PublicKeyOrCertificate::Certificate(_) => false,
        })
    }
}

impl DropDir {
    /// The directory of `endpoint.url` (file:// or sftp://).
    pub fn new(endpoint: &EndpointConfig) -> anyhow::Result<DropDir> {
        if let Some(path) = endpoint.url.strip_prefix("file://") {
            return Ok(DropDir::Local(PathBuf::from(path)));
        }
        let url = reqwest::Url::parse(&endpoint.url)
            .map_err(|e| anyhow::anyhow!("binding {}: URL: {e}", endpoint.binding))?;
        if url.scheme() != "sftp" {
            anyhow::bail!("a Files binding needs a file:// or sftp:// URL");
        }
        let host_keys = endpoint
            .ssh_host_keys
            .iter()
            .map(|line| PublicKey::from_openssh(line.trim()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("binding {}: sshHostKeys: {e}", endpoint.binding))?;
        if host_keys.is_empty() {
            anyhow::bail!(
                "binding {}: an sftp:// endpoint needs sshHostKeys (the server is never trusted blindly)",
                endpoint.binding
            );
        }
        let dir = percent_encoding::percent_decode_str(url.path())
            .decode_utf8()
            .map_err(|e| anyhow::anyhow!("binding {}: path: {e}", endpoint.binding))?
            .into_owned();
        Ok(DropDir::Sftp(Box::new(SftpDir {
            endpoint: endpoint.clone(),
            host: url.host_str().unwrap_or_default().to_string(),
            port: url.port().unwrap_or(22),
            dir: if dir.is_empty() { "/".into() } else { dir },
            host_keys,
            session: Mutex::new(None),
        })))
    }

    /// Names of the files in the directory.
    pub async fn list(&self) -> Result<Vec<String>, CallError> {
        match self {
            DropDir::Local(dir) => {
                let mut entries = tokio::fs::read_dir(dir)
                    .await
                    .map_err(|e| transient("listing", &dir.display().to_string(), e))?;
                let mut names = Vec::new();
                while let Ok(Some(entry)) = entries.next_entry().await {
                    if entry.file_type().await.is_ok_and(|t| t.is_file())
                        && let Ok(name) = entry.file_name().into_string()
                    {
                        names.push(name);
                    }
                }
                Ok(names)
            }
            DropDir::Sftp(sftp) => {
                sftp.call(async |s, dir| {
                    let entries = s.read_dir(dir).await?;
                    Ok(entries
                        .filter(|e| e.file_type().is_file())
                        .map(|e| e.file_name())
                        .collect())
                })
                .await
            }
        }
    }

    /// The content of `name`, None when there is no such file.
    pub async fn read(&self, name: &str) -> Result<Option<Vec<u8>>, CallError> {
        match self {
            DropDir::Local(dir) => match tokio::fs::read(dir.join(name)).await {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(transient("reading", name, e)),
            },
            DropDir::Sftp(sftp) => {
                sftp.call(async |s, dir| {
                    let path = format!("{dir}/{name}");
                    if !s.try_exists(path.clone()).await? {
                        return Ok(None);
                    }
                    Ok(Some(s.read(path).await?))
                })
                .await
            }
        }
    }

    /// Writes `name` whole: under a temporary name first, then renamed.
    pub async fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<(), CallError> {
        let part = format!(".{name}.part");
        match self {
            DropDir::Local(dir) => {
                tokio::fs::write(dir.join(&part), bytes)
                    .await
                    .map_err(|e| transient("writing", &part, e))?;
                tokio::fs::rename(dir.join(&part), dir.join(name))
                    .await
                    .map_err(|e| transient("renaming", name, e))
            }
            DropDir::Sftp(sftp) => {
                sftp.call(async |s, dir| {
                    let part = format!("{dir}/{part}");
                    let mut file = s
                        .open_with_flags(
                            part.clone(),
                            OpenFlags::CREATE | OpenFlags::TRUNCATE | OpenFlags::WRITE,
                        )
                        .await?;
                    file.write_all(bytes).await?;
                    file.shutdown().await?;
                    s.rename(part, format!("{dir}/{name}")).await
                })
                .await
            }
        }
    }
}

fn transient(what: &str, name: &str, e: impl std::fmt::Display) -> CallError {
    CallError::Transient(format!("{what} {name}: {e}"))
}

impl SftpDir {
    /// Runs `op` on the open session (opening it first), with the directory; a failed
    /// operation closes the session, so the next call opens a fresh one.
    async fn call<T>(
        &self,
        op: impl AsyncFnOnce(&SftpSession, String) -> Result<T, russh_sftp::client::error::Error>,
    ) -> Result<T, CallError> {
        let mut session = self.session.lock().await;
        let open = match session.take() {
            Some(open) => open,
            None => self.connect().await?,
        };
        let outcome = op(&open.sftp, self.dir.trim_end_matches('/').to_string()).await;
        match outcome {
            Ok(value) => {
                *session = Some(open);
                Ok(value)
            }
            Err(e) => {
                // The session is dropped: the next call opens a fresh one.
                Err(CallError::Transient(format!(
                    "SFTP {}:{}: {e}",
                    self.host, self.port
                )))
            }
        }
    }

    async fn connect(&self) -> Result<Session, CallError> {
        let config = russh::client::Config {
            inactivity_timeout: Some(Duration::from_secs(300)),
            ..Default::default()
        };
        let mut ssh = russh::client::connect(
            Arc::new(config),
            (self.host.as_str(), self.port),
            KnownHosts(self.host_keys.clone()),
        )
        .await
        .map_err(|e| match e {
            russh::Error::UnknownKey => CallError::Refused {
                status: 0,
                reason: format!(
                    "the SFTP server {}:{} presented a host key the binding does not name (sshHostKeys)",
                    self.host, self.port
                ),
            },
            e => CallError::Transient(format!("SSH {}:{}: {e}", self.host, self.port)),
        })?;
        let secret_dir = self.endpoint.secret_dir.as_deref();
        let secret = |key: &str| -> Result<String, CallError> {
            let dir = secret_dir.ok_or_else(|| refused("no credentials are mounted".into()))?;
            // The error names the file, never its content.
            std::fs::read_to_string(std::path::Path::new(dir).join(key))
                .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
                .map_err(|e| refused(format!("reading credential file {key}: {e}")))
        };
        let user = secret("username")?;
        let outcome = match self.endpoint.auth {
            AuthType::SshKey => {
                let key = russh::keys::decode_secret_key(&secret("privateKey")?, None)
                    .map_err(|e| refused(format!("privateKey is not a usable key: {e}")))?;
                let hash = ssh.best_supported_rsa_hash().await.ok().flatten().flatten();
                ssh.authenticate_publickey(user, PrivateKeyWithHashAlg::new(Arc::new(key), hash))
                    .await
            }
            AuthType::Basic => ssh.authenticate_password(user, secret("password")?).await,
            other => {
                return Err(refused(format!(
                    "auth type {other:?} cannot log in to an SFTP server (SshKey or Basic)"
                )));
            }
        }
        .map_err(|e| CallError::Transient(format!("SSH authentication: {e}")))?;
        if !outcome.success() {
            return Err(refused(
                "the SFTP server refuses the binding's credentials (check its Secret)".into(),
            ));
        }
        let channel = ssh
            .channel_open_session()
            .await
            .map_err(|e| CallError::Transient(format!("SSH channel: {e}")))?;
        channel
            .request_subsystem(true, "sftp")
            .await
            .map_err(|e| CallError::Transient(format!("SFTP subsystem: {e}")))?;
        let sftp = SftpSession::new(channel.into_stream())
            .await
            .map_err(|e| CallError::Transient(format!("SFTP session: {e}")))?;
        Ok(Session { sftp, _ssh: ssh })
    }
}

fn refused(reason: String) -> CallError {
    CallError::Refused { status: 0, reason }
}
