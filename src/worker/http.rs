//! One binding's HTTP client: rate limit (token bucket), bounded concurrency, credentials from
//! mounted Secret files, timeouts, retries with full-jitter backoff, `Retry-After` on 429/503,
//! and a circuit breaker. Connectors build requests; this decides when and how often to send.

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::{RequestBuilder, Response, StatusCode};
use tokio::sync::{Mutex, Semaphore};

use super::metrics::Metrics;
use super::resilience::{Backoff, Breaker};
use crate::api::common::parse_duration;
use crate::api::connector_binding::AuthType;
use crate::worker_config::EndpointConfig;

/// Why a call gave up.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Worth trying again later (timeouts, connection errors, 5xx, 429, open breaker).
    #[error("{0}")]
    Transient(String),
    /// The request itself is wrong (4xx other than 408/429): retrying cannot help.
    #[error("HTTP {status}: {body}")]
    Permanent { status: u16, body: String },
    /// The endpoint refuses the binding (401, 403) or does not know what it addresses (404 of
    /// a whole request: the collection, entity set or service): the binding's credentials or
    /// configuration are wrong, not the records. The breaker is open and the Secret files are
    /// read again; callers wait and retry, and never dead-letter a record for it.
    #[error("HTTP {status}: {reason}")]
    Refused { status: u16, reason: String },
}

impl CallError {
    /// True for 401, 403 and 404 of a whole request (see [`CallError::Refused`]).
    pub fn refuses_access(status: StatusCode) -> bool {
        matches!(
            status,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND
        )
    }
}

enum Credentials {
    None,
    Basic {
        username: String,
        password: String,
    },
    Bearer(String),
    OAuth2 {
        token_url: String,
        client_id: String,
        client_secret: String,
        scopes: Vec<String>,
        token: Mutex<Option<(String, std::time::Instant)>>,
    },
}

/// A resilient client for one binding.
pub struct HttpClient {
    client: reqwest::Client,
    limiter: Option<DefaultDirectRateLimiter>,
    in_flight: Semaphore,
    /// Swapped for freshly read ones when the endpoint refuses them (a rotated Secret).
    credentials: std::sync::RwLock<Arc<Credentials>>,
    /// Set when the endpoint refused the credentials: the next call reads them again first.
    credentials_stale: std::sync::atomic::AtomicBool,
    endpoint: EndpointConfig,
    backoff: Backoff,
    /// Shared with the consume loop, which stops fetching while it is open.
    pub breaker: Breaker,
    /// Largest response body [`HttpClient::read_body`] reads (the flow's
    /// `limits.maxResponseBytes`).
    max_body_bytes: std::sync::atomic::AtomicUsize,
    metrics: Arc<Metrics>,
}

fn read_secret(dir: Option<&str>, key: &str) -> anyhow::Result<String> {
    let dir = dir.ok_or_else(|| anyhow::anyhow!("auth needs a mounted secret directory"))?;
    let path = Path::new(dir).join(key);
    // The error names the file, never its content.
    std::fs::read_to_string(&path)
        .map(|s| s.trim().to_string())
        .map_err(|e| anyhow::anyhow!("reading credential file {}: {e}", path.display()))
}

/// The binding's credentials, read from its mounted Secret files.
fn load_credentials(endpoint: &EndpointConfig) -> anyhow::Result<Credentials> {
    let secret_dir = endpoint.secret_dir.as_deref();
    Ok(match endpoint.auth {
        AuthType::None => Credentials::None,
        AuthType::Basic => Credentials::Basic {
            username: read_secret(secret_dir, "username")?,
            password: read_secret(secret_dir, "password")?,
        },
        AuthType::Bearer => Credentials::Bearer(read_secret(secret_dir, "token")?),
        AuthType::OAuth2ClientCredentials => Credentials::OAuth2 {
            token_url: endpoint
                .token_url
                .clone()
                .ok_or_else(|| anyhow::anyhow!("OAuth2ClientCredentials needs a tokenUrl"))?,
            client_id: read_secret(secret_dir, "clientId")?,
            client_secret: read_secret(secret_dir, "clientSecret")?,
            scopes: endpoint.scopes.clone(),
            token: Mutex::new(None),
        },
    })
}

/// Installs rustls' ring provider once per process (reqwest is built without a provider so
/// the tree carries no aws-lc).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl HttpClient {
    /// A client for `endpoint`, reading its credential files now.
    pub fn new(endpoint: &EndpointConfig, metrics: Arc<Metrics>) -> anyhow::Result<HttpClient> {
        install_crypto_provider();
        let timeout =
            parse_duration(&endpoint.resilience.timeout).unwrap_or(Duration::from_secs(30));
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(32);
        if let Some(ca_file) = &endpoint.ca_file {
            let pem = std::fs::read(ca_file)
                .map_err(|e| anyhow::anyhow!("reading CA bundle {ca_file}: {e}"))?;
            for certificate in reqwest::Certificate::from_pem_bundle(&pem)? {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let credentials = load_credentials(endpoint)?;
        let limiter = endpoint.rate_limit.as_ref().and_then(|limit| {
            let rate = NonZeroU32::new(limit.requests_per_second)?;
            let burst = NonZeroU32::new(limit.burst).unwrap_or(rate);
            Some(RateLimiter::direct(
                Quota::per_second(rate).allow_burst(burst),
            ))
        });
        let concurrency = endpoint
            .rate_limit
            .as_ref()
            .map(|l| l.max_concurrent as usize)
            .unwrap_or(16)
            .max(1);
        Ok(HttpClient {
            client: builder.build()?,
            limiter,
            in_flight: Semaphore::new(concurrency),
            credentials: std::sync::RwLock::new(Arc::new(credentials)),
            credentials_stale: std::sync::atomic::AtomicBool::new(false),
            endpoint: endpoint.clone(),
            backoff: Backoff::new(&endpoint.resilience.retry),
            breaker: Breaker::new(&endpoint.resilience.circuit_breaker),
            max_body_bytes: std::sync::atomic::AtomicUsize::new(DEFAULT_MAX_BODY_BYTES),
            metrics,
        })
    }

    /// Bounds the response bodies [`HttpClient::read_body`] reads to `max` bytes.
    pub fn limit_bodies(&self, max: usize) {
        self.max_body_bytes
            .store(max, std::sync::atomic::Ordering::Relaxed);
    }

    /// The body of `response`, refused (as transient: the system may answer smaller pages
    /// later, and it is never a record's fault) when it is larger than the flow allows, before
    /// more than that is held in memory.
    pub async fn read_body(&self, response: Response) -> Result<Bytes, CallError> {
        let max = self
            .max_body_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        read_limited(response, max, false)
            .await
            .map_err(|e| CallError::Transient(format!("reading the response: {e}")))
    }

    /// The underlying client, to build requests with.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Reads the Secret files again (the Secret may have been rotated; the kubelet updates
    /// mounted files within a minute); done before the first call after the endpoint refused
    /// the credentials. This is also the hook that drops a cached OAuth2 token: the fresh
    /// credentials start without one. Unreadable
    /// files keep the old credentials; the error names the file, never its content.
    pub fn credentials_refused(&self) {
        match load_credentials(&self.endpoint) {
            Ok(fresh) => {
                *self.credentials.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
            }
            Err(e) => {
                tracing::warn!(binding = %self.endpoint.binding, error = %e, "credentials not read again")
            }
        }
    }

    async fn authorize(&self, request: RequestBuilder) -> Result<RequestBuilder, CallError> {
        let credentials = self
            .credentials
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Ok(match &*credentials {
            Credentials::None => request,
            Credentials::Basic { username, password } => {
                request.basic_auth(username, Some(password))
            }
            Credentials::Bearer(token) => request.bearer_auth(token),
            Credentials::OAuth2 {
                token_url,
                client_id,
                client_secret,
                scopes,
                token,
            } => {
                let mut cached = token.lock().await;
                let fresh = cached
                    .as_ref()
                    .filter(|(_, expires)| *expires > std::time::Instant::now());
                let access = match fresh {
                    Some((access, _)) => access.clone(),
                    None => {
                        let mut form = vec![("grant_type", "client_credentials".to_string())];
                        if !scopes.is_empty() {
                            form.push(("scope", scopes.join(" ")));
                        }
                        let response = self
                            .client
                            .post(token_url)
                            .basic_auth(client_id, Some(client_secret))
                            .query(&form)
                            .send()
                            .await
                            .map_err(|e| CallError::Transient(format!("token request: {e}")))?;
                        if !response.status().is_success() {
                            return Err(CallError::Transient(format!(
                                "token endpoint answered {}",
                                response.status()
                            )));
                        }
                        let body: serde_json::Value = response
                            .json()
                            .await
                            .map_err(|e| CallError::Transient(format!("token response: {e}")))?;
                        let access = body["access_token"]
                            .as_str()
                            .ok_or_else(|| {
                                CallError::Transient("token response has no access_token".into())
                            })?
                            .to_string();
                        let lifetime = body["expires_in"]
                            .as_u64()
                            .unwrap_or(300)
                            .saturating_sub(30);
                        *cached = Some((
                            access.clone(),
                            std::time::Instant::now() + Duration::from_secs(lifetime),
                        ));
                        access
                    }
                };
                request.bearer_auth(access)
            }
        })
    }

    /// Sends the request `build` makes, retrying transient failures per the binding's policy.
    /// Returns the successful (2xx) response.
    pub async fn send(
        &self,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<Response, CallError> {
        self.send_keeping(build, |_| false).await
    }

    /// Like [`HttpClient::send`], but a 4xx answer that `keep` accepts comes back as the
    /// response rather than as an error, for a caller that acts on its headers (SAP's
    /// `X-CSRF-Token: Required` on a 403).
    pub async fn send_keeping(
        &self,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
        keep: impl Fn(&Response) -> bool,
    ) -> Result<Response, CallError> {
        let mut last_error = String::new();
        for attempt in 0..self.backoff.max_attempts {
            if attempt > 0 {
                self.metrics.retried.inc();
            }
            if let Err(wait) = self.breaker.admit() {
                return Err(CallError::Transient(format!(
                    "circuit open for another {}ms after repeated failures ({last_error})",
                    wait.as_millis()
                )));
            }
            if let Some(limiter) = &self.limiter
                && limiter.check().is_err()
            {
                self.metrics.throttled.inc();
                limiter.until_ready().await;
            }
            if self
                .credentials_stale
                .swap(false, std::sync::atomic::Ordering::Relaxed)
            {
                self.credentials_refused();
            }
            let permit = self.in_flight.acquire().await;
            let request = self.authorize(build(&self.client)).await?;
            let outcome = request.send().await;
            drop(permit);
            let delay = match outcome {
                Ok(response) if response.status().is_success() => {
                    self.breaker.succeeded();
                    return Ok(response);
                }
                Ok(response) if response.status().is_client_error() && keep(&response) => {
                    self.breaker.succeeded();
                    return Ok(response);
                }
                Ok(response) => {
                    let status = response.status();
                    let retry_after = retry_after(&response);
                    // Only the start of an error body is kept: it may be anything in any size.
                    let body = read_limited(response, ERROR_BODY_BYTES, true).await;
                    let body = String::from_utf8_lossy(&body.unwrap_or_default()).into_owned();
                    let body: String = body.chars().take(300).collect();
                    match status {
                        StatusCode::TOO_MANY_REQUESTS => {
                            // The system is alive and asks us to slow down: that closes the
                            // breaker (and ends a trial call) rather than counting as a failure.
                            self.breaker.succeeded();
                            self.metrics.throttled.inc();
                            last_error = format!("HTTP 429 {body}");
                            retry_after.unwrap_or_else(|| self.backoff.delay(attempt))
                        }
                        s if CallError::refuses_access(s) => {
                            // Not worth the binding's retries: open the breaker now, so no
                            // loop sends anything until the trial call, and read the
                            // credentials again for that call (the Secret may be rotated by
                            // then).
                            self.breaker.trip();
                            self.credentials_stale
                                .store(true, std::sync::atomic::Ordering::Relaxed);
                            let reason = if s == StatusCode::NOT_FOUND {
                                "the endpoint does not know the collection or service (check the binding's URL and the flow's entity)"
                            } else {
                                "the endpoint refuses the binding's credentials (check its Secret)"
                            };
                            return Err(CallError::Refused {
                                status: s.as_u16(),
                                reason: reason.to_string(),
                            });
                        }
                        s if s.is_server_error() || s == StatusCode::REQUEST_TIMEOUT => {
                            self.breaker.failed();
                            last_error = format!("HTTP {} {body}", s.as_u16());
                            retry_after.unwrap_or_else(|| self.backoff.delay(attempt))
                        }
                        s => {
                            self.breaker.succeeded();
                            return Err(CallError::Permanent {
                                status: s.as_u16(),
                                body,
                            });
                        }
                    }
                }
                Err(e) => {
                    self.breaker.failed();
                    last_error = format!("request failed: {e}");
                    self.backoff.delay(attempt)
                }
            };
            if attempt + 1 < self.backoff.max_attempts {
                tokio::time::sleep(delay.min(Duration::from_secs(300))).await;
            }
        }
        Err(CallError::Transient(last_error))
    }
}

/// Response bodies a client reads at most unless the flow says otherwise
/// (`limits.maxResponseBytes`).
pub const DEFAULT_MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// How much of an error answer's body is read (its first 300 characters are kept).
const ERROR_BODY_BYTES: usize = 4096;

/// Reads `response`'s body up to `max` bytes: a larger declared length is refused before
/// reading, a longer body as soon as it passes `max`; with `cut`, the first `max` bytes are
/// kept instead (error answers).
async fn read_limited(mut response: Response, max: usize, cut: bool) -> Result<Bytes, String> {
    if !cut
        && let Some(length) = response.content_length()
        && length > max as u64
    {
        return Err(format!(
            "the body is {length} bytes, more than the limit of {max}"
        ));
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > max {
            if cut {
                body.extend_from_slice(&chunk[..max - body.len()]);
                break;
            }
            return Err(format!("the body is more than the limit of {max} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// `Retry-After` in seconds (the HTTP-date form is rare from APIs; it falls back to backoff).
fn retry_after(response: &Response) -> Option<Duration> {
    response
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}
