//! One binding's HTTP client: rate limit (token bucket), bounded concurrency, credentials from
//! mounted Secret files, timeouts, retries with full-jitter backoff, `Retry-After` on 429/503,
//! and a circuit breaker. Connectors build requests; this decides when and how often to send.

use std::future::Future;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::{RequestBuilder, Response, StatusCode};
use std::time::Instant;
use tokio::sync::{Mutex, Semaphore};

use super::metrics::Metrics;
use super::quota::SharedQuota;
use super::resilience::{Backoff, Breaker};
use crate::api::common::parse_duration;
use crate::api::connector_binding::{AuthType, ClientAuthentication};
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
    /// A request, link or redirect to another origin (scheme, host, port) than the binding's,
    /// refused before anything was sent there: the source's answer is wrong or hostile, not a
    /// record. The pass fails with this reason; nothing is dead-lettered.
    #[error("{0}")]
    OffOrigin(String),
    /// The binding's shared quota is used up for the day, or its endpoint asked every worker
    /// to wait longer than a call waits (`Retry-After`): nothing was sent. Callers hold their
    /// records and ask again, and never dead-letter a record for it.
    #[error("{0}")]
    OverQuota(String),
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
    Basic { username: String, password: String },
    Bearer(String),
    OAuth2(Box<OAuth2>),
}

/// OAuth2 client credentials (RFC 6749 section 4.4) through the `oauth2` crate: the token
/// request is a form body, the client authenticates by HTTP Basic or in the body as the binding
/// says, with scopes and audience. The crate's own reqwest support is built on reqwest 0.12;
/// the token request goes through this binding's reqwest 0.13 client instead (its CA bundle and
/// timeouts), by the crate's closure-as-HTTP-client hook.
struct OAuth2 {
    token_url: oauth2::TokenUrl,
    client_id: String,
    client_secret: String,
    scopes: Vec<String>,
    audience: Option<String>,
    client_authentication: ClientAuthentication,
    /// The access token and when to fetch the next one (before it expires).
    token: Mutex<Option<(String, Instant)>>,
}

/// A failed token request at the transport level (the message names no credential).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TokenTransport(String);

/// This binding's client as the `oauth2` crate's HTTP client.
struct TokenClient<'a>(&'a reqwest::Client);

impl<'c> oauth2::AsyncHttpClient<'c> for TokenClient<'_> {
    type Error = TokenTransport;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<oauth2::HttpResponse, TokenTransport>> + Send + 'c>,
    >;

    fn call(&'c self, request: oauth2::HttpRequest) -> Self::Future {
        Box::pin(async move {
            let request = reqwest::Request::try_from(request)
                .map_err(|e| TokenTransport(format!("token request: {e}")))?;
            let response = self
                .0
                .execute(request)
                .await
                .map_err(|e| TokenTransport(format!("token request: {e}")))?;
            let mut answer = http::Response::builder().status(response.status());
            for (name, value) in response.headers() {
                answer = answer.header(name, value);
            }
            let body = response
                .bytes()
                .await
                .map_err(|e| TokenTransport(format!("token response: {e}")))?;
            answer
                .body(body.to_vec())
                .map_err(|e| TokenTransport(format!("token response: {e}")))
        })
    }
}

impl OAuth2 {
    /// The cached token, or a new one from the token endpoint.
    async fn access_token(&self, client: &reqwest::Client) -> Result<String, CallError> {
        let mut cached = self.token.lock().await;
        if let Some((token, refresh_at)) = cached.as_ref()
            && *refresh_at > Instant::now()
        {
            return Ok(token.clone());
        }
        *cached = None;
        let oauth = oauth2::basic::BasicClient::new(oauth2::ClientId::new(self.client_id.clone()))
            .set_client_secret(oauth2::ClientSecret::new(self.client_secret.clone()))
            .set_token_uri(self.token_url.clone())
            .set_auth_type(match self.client_authentication {
                ClientAuthentication::ClientSecretBasic => oauth2::AuthType::BasicAuth,
                ClientAuthentication::ClientSecretPost => oauth2::AuthType::RequestBody,
            });
        let mut request = oauth
            .exchange_client_credentials()
            .add_scopes(self.scopes.iter().cloned().map(oauth2::Scope::new));
        if let Some(audience) = &self.audience {
            request = request.add_extra_param("audience", audience.clone());
        }
        let send = TokenClient(client);
        use oauth2::TokenResponse;
        let response = request.request_async(&send).await.map_err(|e| {
            // Never the response body: it may hold a token.
            CallError::Transient(match e {
                oauth2::RequestTokenError::ServerResponse(refusal) => {
                    format!("token endpoint refused the request: {}", refusal.error())
                }
                oauth2::RequestTokenError::Request(e) => e.to_string(),
                oauth2::RequestTokenError::Parse(..) => {
                    "token endpoint answered no token response".to_string()
                }
                oauth2::RequestTokenError::Other(what) => format!("token endpoint: {what}"),
            })
        })?;
        let lifetime = response.expires_in().unwrap_or(Duration::from_secs(300));
        // Refresh before it expires: 30 s early, or a quarter early for short-lived tokens.
        let refresh_at = Instant::now() + lifetime - (lifetime / 4).min(Duration::from_secs(30));
        let token = response.access_token().secret().clone();
        *cached = Some((token.clone(), refresh_at));
        Ok(token)
    }

    /// Forgets `token` (the API refused it with 401), unless a newer one replaced it already.
    async fn drop_token(&self, token: &str) {
        let mut cached = self.token.lock().await;
        if cached.as_ref().is_some_and(|(t, _)| t == token) {
            *cached = None;
        }
    }
}

/// A resilient client for one binding.
pub struct HttpClient {
    client: reqwest::Client,
    /// The binding's quota shared by every worker in the cluster (see [`HttpClient::share_quota`]).
    quota: std::sync::OnceLock<Arc<SharedQuota>>,
    /// The rate limit of a client with no shared quota (one not run by a worker: tests,
    /// `flowplane` commands), in this process only.
    limiter: Option<DefaultDirectRateLimiter>,
    in_flight: Semaphore,
    /// Swapped for freshly read ones when the endpoint refuses them (a rotated Secret).
    credentials: std::sync::RwLock<Arc<Credentials>>,
    /// Set when the endpoint refused the credentials: the next call reads them again first.
    credentials_stale: std::sync::atomic::AtomicBool,
    endpoint: EndpointConfig,
    /// Scheme, host and port of the binding URL: credentials go to this origin only.
    origin: (String, String, Option<u16>),
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
        // An SSH key logs in to an SFTP server (`connectors::drops`), never over HTTP.
        AuthType::SshKey => Credentials::None,
        AuthType::OAuth2ClientCredentials => Credentials::OAuth2(Box::new(OAuth2 {
            token_url: oauth2::TokenUrl::new(
                endpoint
                    .token_url
                    .clone()
                    .ok_or_else(|| anyhow::anyhow!("OAuth2ClientCredentials needs a tokenUrl"))?,
            )
            .map_err(|e| anyhow::anyhow!("tokenUrl: {e}"))?,
            client_id: read_secret(secret_dir, "clientId")?,
            client_secret: read_secret(secret_dir, "clientSecret")?,
            scopes: endpoint.scopes.clone(),
            audience: endpoint.audience.clone(),
            client_authentication: endpoint.client_authentication,
            token: Mutex::new(None),
        })),
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
        let binding_url = reqwest::Url::parse(&endpoint.url)
            .map_err(|e| anyhow::anyhow!("binding {} has no valid URL: {e}", endpoint.binding))?;
        let own = origin(&binding_url);
        // Redirects stay on the binding's origin: one elsewhere is refused before it is sent.
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if origin(attempt.url()) != own {
                let refusal = off_origin(attempt.url(), "a redirect");
                attempt.error(refusal)
            } else if attempt.previous().len() >= 10 {
                attempt.error("more than 10 redirects")
            } else {
                attempt.follow()
            }
        });
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .redirect(redirects)
            .pool_max_idle_per_host(32);
        if let Some(ca_file) = &endpoint.ca_file {
            let pem = std::fs::read(ca_file)
                .map_err(|e| anyhow::anyhow!("reading CA bundle {ca_file}: {e}"))?;
            for certificate in reqwest::Certificate::from_pem_bundle(&pem)? {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let credentials = load_credentials(endpoint)?;
        let origin = origin(&binding_url);
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
            quota: std::sync::OnceLock::new(),
            limiter,
            in_flight: Semaphore::new(concurrency),
            credentials: std::sync::RwLock::new(Arc::new(credentials)),
            credentials_stale: std::sync::atomic::AtomicBool::new(false),
            endpoint: endpoint.clone(),
            origin,
            backoff: Backoff::new(&endpoint.resilience.retry),
            breaker: Breaker::new(&endpoint.resilience.circuit_breaker),
            max_body_bytes: std::sync::atomic::AtomicUsize::new(DEFAULT_MAX_BODY_BYTES),
            metrics,
        })
    }

    /// Takes every request from the binding's quota shared across the cluster instead of
    /// this process's limiter.
    pub fn share_quota(&self, quota: Arc<SharedQuota>) {
        let _ = self.quota.set(quota);
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
        // The refusal names the limit before any colon: the log keeps only that part.
        read_limited(response, max, false)
            .await
            .map_err(CallError::Transient)
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

    /// Whether `url` is on the binding's own origin (scheme, host, port), the only place its
    /// credentials are sent to.
    pub fn same_origin(&self, url: &reqwest::Url) -> bool {
        origin(url) == self.origin
    }

    /// `url` when it is on the binding's origin, else the refusal naming `what` and the other
    /// origin's host and port (not the URL: its query may carry a token).
    pub fn check_origin(&self, url: &reqwest::Url, what: &str) -> Result<(), CallError> {
        if self.same_origin(url) {
            return Ok(());
        }
        Err(CallError::OffOrigin(off_origin(url, what)))
    }

    /// The credentials in force (swapped when the endpoint refused them).
    fn credentials(&self) -> Arc<Credentials> {
        self.credentials
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Adds the binding's credentials to a request for its own origin; a request elsewhere is
    /// refused unsent (connectors check links first and say which one; this is the last line).
    /// Returns the OAuth2 token used, if any.
    async fn authorize(
        &self,
        request: RequestBuilder,
    ) -> Result<(RequestBuilder, Option<String>), CallError> {
        let (client, request) = request.build_split();
        let request = request.map_err(|e| CallError::Transient(format!("bad request: {e}")))?;
        self.check_origin(request.url(), "the request")?;
        let request = RequestBuilder::from_parts(client, request);
        Ok(match &*self.credentials() {
            Credentials::None => (request, None),
            Credentials::Basic { username, password } => {
                (request.basic_auth(username, Some(password)), None)
            }
            Credentials::Bearer(token) => (request.bearer_auth(token), None),
            Credentials::OAuth2(oauth) => {
                let token = oauth.access_token(&self.client).await?;
                (request.bearer_auth(&token), Some(token))
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
        let mut token_refused = false;
        let mut attempt = 0;
        while attempt < self.backoff.max_attempts {
            if attempt > 0 {
                self.metrics.retried.inc();
            }
            if let Err(wait) = self.breaker.admit() {
                return Err(CallError::Transient(format!(
                    "circuit open for another {}ms after repeated failures ({last_error})",
                    wait.as_millis()
                )));
            }
            if let Some(quota) = self.quota.get() {
                quota.acquire().await?;
            } else if let Some(limiter) = &self.limiter
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
            let (request, token) = self.authorize(build(&self.client)).await?;
            let outcome = request.send().await;
            drop(permit);
            // An OAuth2 token the API refuses (revoked, or expired early): drop it, fetch a new
            // one and send once more, without counting an attempt.
            if let (Ok(response), Some(token), Credentials::OAuth2(oauth)) =
                (&outcome, &token, &*self.credentials())
                && response.status() == StatusCode::UNAUTHORIZED
                && !token_refused
            {
                token_refused = true;
                oauth.drop_token(token).await;
                continue;
            }
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
                    // Every worker of the binding waits, not only this call.
                    if let (Some(after), Some(quota)) = (retry_after, self.quota.get())
                        && matches!(
                            status,
                            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
                        )
                    {
                        quota.pause(after).await;
                    }
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
                // A redirect elsewhere was refused by the redirect policy: retrying would only
                // be refused again.
                Err(e) if e.is_redirect() => {
                    let why = std::error::Error::source(&e)
                        .map(|cause| cause.to_string())
                        .unwrap_or_else(|| "redirect refused".into());
                    return Err(CallError::OffOrigin(why));
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
            attempt += 1;
        }
        Err(CallError::Transient(last_error))
    }
}

/// Why a request to `url` is refused: `what` leads to another origin than the binding's.
pub fn off_origin(url: &reqwest::Url, what: &str) -> String {
    format!(
        "{what} leads to another origin ({}:{}) than the binding's; not followed, so its credentials stay on its host",
        url.host_str().unwrap_or("?"),
        url.port_or_known_default().unwrap_or(0)
    )
}

/// Scheme, host and port (the scheme's default when the URL names none).
fn origin(url: &reqwest::Url) -> (String, String, Option<u16>) {
    (
        url.scheme().to_string(),
        url.host_str().unwrap_or_default().to_ascii_lowercase(),
        url.port_or_known_default(),
    )
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
            "the response body is {length} bytes, more than limits.maxResponseBytes ({max})"
        ));
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("reading the response: {e}"))?
    {
        if body.len() + chunk.len() > max {
            if cut {
                body.extend_from_slice(&chunk[..max - body.len()]);
                break;
            }
            return Err(format!(
                "the response body is more than limits.maxResponseBytes ({max})"
            ));
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
