//! REST tier: the REST connector against json-server (npm `json-server` 0.17, a REST API
//! server others wrote; scripts/install-tools.sh installs it, tests start it through
//! `support::tool("json-server")`) and against small recording servers of the test's own where
//! what matters is what went over the wire (envelopes, idempotency keys, the OAuth2 token
//! request). The end-to-end test runs json-server -> worker -> NATS -> the forecasting
//! simulator's bulk-upsert route, named explicitly as the demo overlay names it.

mod e2e_support;
mod support;

use std::net::TcpListener as StdListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use e2e_support::*;
use flowplane::api::connector_binding::AuthType;
use flowplane::api::connector_binding::{
    BodyEnvelope, ClientAuthentication, Protocol, RestRead, RestWrite, System, WriteMethod,
};
use flowplane::api::integration_flow::{SyncMode, WriteMode};
use flowplane::queue::list_dead_letters;
use flowplane::sim::erp::ErpSeed;
use flowplane::worker::connectors::rest::RestSource;
use flowplane::worker::connectors::target::{Outgoing, Target, idempotency_key};
use flowplane::worker::http::{CallError, HttpClient};
use flowplane::worker::metrics::Metrics;
use flowplane::worker::sample;
use flowplane::worker_config::{EndpointConfig, SourceConfig, TargetConfig};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(90);
const LINES: u32 = 1050;

/// json-server on a free loopback port, serving `db` (a JSON file); killed on drop.
struct JsonServer {
    child: Child,
    url: String,
    _dir: TempDir,
}

impl JsonServer {
    async fn start(db: &Value) -> JsonServer {
        let dir = TempDir::new("json-server");
        let file = dir.0.join("db.json");
        std::fs::write(&file, serde_json::to_vec(db).unwrap()).unwrap();
        let port = StdListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(support::tool("json-server"))
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--quiet",
            ])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start json-server (scripts/install-tools.sh installs it)");
        let url = format!("http://127.0.0.1:{port}");
        let server = JsonServer {
            child,
            url,
            _dir: dir,
        };
        let client = reqwest::Client::new();
        let probe = format!("{}/db", server.url);
        eventually(Duration::from_secs(30), "json-server to answer", || {
            let request = client.get(&probe).send();
            async move { request.await.ok().filter(|r| r.status().is_success()) }
        })
        .await;
        server
    }
}

impl Drop for JsonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `LINES` sales order lines as the ERP simulator shapes them, with a json-server id and a
/// numeric sequence `seq`.
fn order_lines() -> Value {
    let lines: Vec<Value> = (0..LINES)
        .map(|i| {
            let mut line = sample::order_line("1010", &(i % 90 + 1).to_string());
            line["id"] = json!(i + 1);
            line["seq"] = json!(i);
            line["SalesOrder"] = json!((3_000_000 + i).to_string());
            line
        })
        .collect();
    json!({ "lines": lines })
}

fn rest_read(value: Value) -> RestRead {
    serde_json::from_value(value).unwrap()
}

fn source(url: &str, entity: &str, read: RestRead) -> SourceConfig {
    SourceConfig {
        endpoint: sample::endpoint("json-server", System::Other, Protocol::Rest, url),
        entity: entity.into(),
        sync_mode: SyncMode::FullRefresh,
        cursor_field: None,
        select: vec![],
        poll_interval: "200ms".into(),
        rest: Some(read),
    }
}

/// Reads one whole pass; returns each page's record count and every record's `seq`.
async fn read_pass(config: SourceConfig, cursor: Option<&str>) -> (Vec<usize>, Vec<u64>) {
    let http = HttpClient::new(&config.endpoint, Metrics::new("rest", "pass")).unwrap();
    let mut source = RestSource::new(config, http);
    source.begin(cursor);
    let (mut pages, mut seqs) = (Vec::new(), Vec::new());
    while let Some(page) = source.next_page().await.unwrap() {
        let flowplane::worker::connectors::Records::Json(records) = page.records else {
            panic!("REST pages are JSON records");
        };
        pages.push(records.len());
        for record in records {
            let record: Value = serde_json::from_slice(&record.text).unwrap();
            seqs.push(record["seq"].as_u64().unwrap());
        }
        assert!(pages.len() < 100, "the pass does not end");
    }
    (pages, seqs)
}

fn every_line_once(mut seqs: Vec<u64>) {
    seqs.sort_unstable();
    assert_eq!(seqs, (0..u64::from(LINES)).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_server_collections_are_read_by_link_header_page_and_offset_exactly_once() {
    flowplane::worker::http::install_crypto_provider();
    let server = JsonServer::start(&order_lines()).await;
    let pages_of_100 = [vec![100; 10], vec![50]].concat();

    // RFC 8288 Link headers (json-server writes absolute links with rel first/next/last).
    let link =
        rest_read(json!({"pagination": "LinkHeader", "limitParam": "_limit", "pageSize": 100}));
    let (pages, seqs) = read_pass(source(&server.url, "/lines?_page=1", link), None).await;
    assert_eq!(pages, pages_of_100);
    every_line_once(seqs);

    // Page numbers from 1.
    let page = rest_read(json!({
        "pagination": "Page", "pageParam": "_page", "limitParam": "_limit", "pageSize": 100
    }));
    let (pages, seqs) = read_pass(source(&server.url, "lines", page), None).await;
    assert_eq!(pages, pages_of_100);
    every_line_once(seqs);

    // An API that caps the page size below what was asked (here the entity's own _limit=100
    // wins over pageSize 500): the pass does not end after the first short page.
    let capped = rest_read(json!({
        "pagination": "Page", "pageParam": "_page", "limitParam": "_ignored", "pageSize": 500
    }));
    let (pages, seqs) = read_pass(source(&server.url, "lines?_limit=100", capped), None).await;
    assert_eq!(pages, pages_of_100);
    every_line_once(seqs);

    // Record offsets from 0; a page size that divides the collection ends on an empty page.
    let offset = rest_read(json!({
        "pagination": "Offset", "offsetParam": "_start", "limitParam": "_limit", "pageSize": 150
    }));
    let (pages, seqs) = read_pass(source(&server.url, "lines", offset), None).await;
    assert_eq!(pages, [vec![150; 7], vec![0]].concat());
    every_line_once(seqs);

    // Incremental: the cursor goes out as the since parameter (json-server's `_gte` filter).
    let mut incremental = source(
        &server.url,
        "/lines?_page=1",
        rest_read(json!({
            "pagination": "LinkHeader", "limitParam": "_limit", "pageSize": 100,
            "sinceParam": "seq_gte"
        })),
    );
    incremental.sync_mode = SyncMode::Incremental;
    incremental.cursor_field = Some("seq".into());
    let (pages, seqs) = read_pass(incremental, Some("900")).await;
    assert_eq!(pages, [100, 50]);
    assert_eq!(seqs, (900..u64::from(LINES)).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_server_lines_reach_the_forecasting_simulator_route_exactly_once() {
    let server = JsonServer::start(&order_lines()).await;
    let nats = PrivateNats::start();
    let sims = start_sims(ErpSeed::empty()).await;
    let js = jetstream(&nats.url()).await;
    let flow = unique_flow("rest");
    let mut config =
        sample::sales_order_flow("e2e", &flow, &nats.url(), "unused", &sims.forecast_url);
    config.source = source(
        &server.url,
        "/lines?_page=1",
        rest_read(json!({"pagination": "LinkHeader", "limitParam": "_limit", "pageSize": 100})),
    );
    config.source.cursor_field = Some("LastChangeDateTime".into());
    // The simulator's route, named as examples/overlays/demo names it.
    config.target.entity = "/api/v1/json-lines/bulk-upsert".into();
    config.target.rest = Some(RestWrite {
        method: WriteMethod::Post,
        body: BodyEnvelope::VersionedUpsert,
        records_key: None,
        idempotency_key_header: Some("Idempotency-Key".into()),
    });
    let _cleanup = QueueCleanup {
        url: nats.url(),
        names: config.queue.clone(),
    };
    let names = config.queue.clone();
    let worker = InProcessWorker::start(config, "rest-1");
    eventually(TIMEOUT, "1,050 lines at the simulator", || {
        let report = sims.forecast.received("json-lines");
        let js = js.clone();
        let names = names.clone();
        async move {
            let p = progress(&js, &names).await;
            let total = u64::from(LINES);
            (report.applied() == total && p.read == total && p.delivered == total).then_some(())
        }
    })
    .await;
    // Full refreshes keep re-reading every page; nothing arrives twice.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = sims.forecast.received("json-lines");
    let p = progress(&js, &names).await;
    assert_eq!(report.applied(), u64::from(LINES));
    assert_eq!(report.keys.len(), LINES as usize);
    assert_eq!(report.duplicates(), 0);
    assert_eq!((p.read, p.delivered, p.dead_lettered), (1050, 1050, 0));
    assert!(
        list_dead_letters(&js, &names, None)
            .await
            .unwrap()
            .is_empty()
    );
    worker.stop().await.unwrap();
}

/// What a recording server saw: method, path and query, headers, body.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    uri: String,
    headers: HeaderMap,
    body: String,
}

type Log = Arc<Mutex<Vec<Seen>>>;

async fn record(log: &Log, request: Request) -> Seen {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    let seen = Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    log.lock().unwrap().push(seen.clone());
    seen
}

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

fn header(seen: &Seen, name: &str) -> String {
    seen.headers
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

fn bearer_endpoint(url: &str, dir: &Path) -> EndpointConfig {
    std::fs::write(dir.join("token"), "api-token-never-logged").unwrap();
    let mut endpoint = sample::endpoint("api", System::Other, Protocol::Rest, url);
    endpoint.auth = AuthType::Bearer;
    endpoint.secret_dir = Some(dir.display().to_string());
    endpoint
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_links_resolve_against_the_request_and_never_leave_the_binding_host() {
    flowplane::worker::http::install_crypto_provider();
    // Another host (another origin: same address, other port) that would take the token.
    let elsewhere: Log = Log::default();
    let other = serve(Router::new().fallback({
        let log = elsewhere.clone();
        move |request: Request| async move {
            record(&log, request).await;
            axum::Json(json!({"items": [{"seq": 99}]}))
        }
    }))
    .await;
    // The API: page 1 links to page 2 relatively ("page2?..", below /v1/items/), page 2 links
    // with a "../" path, page 3 to the other host.
    let seen: Log = Log::default();
    let api = serve(Router::new().fallback({
        let log = seen.clone();
        let other = other.clone();
        move |request: Request| {
            let log = log.clone();
            let other = other.clone();
            async move {
                let seen = record(&log, request).await;
                let (items, next) = match seen.uri.as_str() {
                    "/v1/items/?size=2" => (json!([{"seq": 0}, {"seq": 1}]), json!("page2?size=2")),
                    "/v1/items/page2?size=2" => (
                        json!([{"seq": 2}, {"seq": 3}]),
                        json!("../items/page3?size=2"),
                    ),
                    "/v1/items/page3?size=2" => (
                        json!([{"seq": 4}]),
                        json!(format!("{other}/v1/items/page4")),
                    ),
                    _ => return StatusCode::NOT_FOUND.into_response(),
                };
                axum::Json(json!({"result": {"items": items}, "paging": {"next": next}}))
                    .into_response()
            }
        }
    }))
    .await;
    let dir = TempDir::new("rest-secret");
    let mut config = source(
        &api,
        "/v1/items/",
        rest_read(json!({
            "pagination": "NextLink", "records": "/result/items", "nextLink": "/paging/next",
            "limitParam": "size", "pageSize": 2
        })),
    );
    config.endpoint = bearer_endpoint(&api, &dir.0);
    let http = HttpClient::new(&config.endpoint, Metrics::new("rest", "links")).unwrap();
    let mut source = RestSource::new(config, http);
    source.begin(None);
    let mut read = 0;
    for _ in 0..3 {
        read += source.next_page().await.unwrap().unwrap().records.len();
    }
    assert_eq!(read, 5);
    let error = match source.next_page().await {
        Err(CallError::OffOrigin(error)) => error,
        other => panic!(
            "the off-host link is refused, got {:?}",
            other.map(|p| p.is_some())
        ),
    };
    assert!(error.contains("another origin (127.0.0.1:"), "{error}");
    assert!(
        !error.contains("page4"),
        "the link itself is not echoed: {error}"
    );
    let seen = seen.lock().unwrap().clone();
    let uris: Vec<&str> = seen.iter().map(|s| s.uri.as_str()).collect();
    assert_eq!(
        uris,
        [
            "/v1/items/?size=2",
            "/v1/items/page2?size=2",
            "/v1/items/page3?size=2"
        ]
    );
    assert!(
        seen.iter()
            .all(|s| header(s, "authorization") == "Bearer api-token-never-logged")
    );
    assert!(
        elsewhere.lock().unwrap().is_empty(),
        "nothing went to the other host"
    );
}

fn records() -> Vec<Outgoing<'static>> {
    vec![
        Outgoing {
            key: "1/10",
            version: 7,
            data: br#"{"salesOrder":"1","salesOrderItem":"10","qty":5}"#,
        },
        Outgoing {
            key: "2/10",
            version: 8,
            data: br#"{"salesOrder":"2","salesOrderItem":"10","qty":6}"#,
        },
        Outgoing {
            key: "3/10",
            version: 9,
            data: br#"{"salesOrder":"3","salesOrderItem":"10","qty":7}"#,
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_batch_carries_the_same_idempotency_key_in_the_configured_envelope() {
    flowplane::worker::http::install_crypto_provider();
    // The first request of each batch fails with 503; the retry succeeds.
    let seen: Log = Log::default();
    let api = serve(Router::new().fallback({
        let log = seen.clone();
        move |request: Request| {
            let log = log.clone();
            async move {
                let count = {
                    record(&log, request).await;
                    log.lock().unwrap().len()
                };
                if count % 2 == 1 {
                    StatusCode::SERVICE_UNAVAILABLE.into_response()
                } else {
                    axum::Json(json!({"rejected": [{"index": 1, "reason": "qty too high"}]}))
                        .into_response()
                }
            }
        }
    }))
    .await;
    let key = ["salesOrder".to_string(), "salesOrderItem".to_string()];
    let target = |entity: &str, rest: RestWrite| TargetConfig {
        endpoint: sample::endpoint("api", System::Forecasting, Protocol::Rest, &api),
        entity: entity.into(),
        write_mode: WriteMode::Upsert,
        batch_size: 3,
        rest: Some(rest),
        files: None,
    };
    let put_object = target(
        "/v2/ingest/lines?tenant=eu",
        RestWrite {
            method: WriteMethod::Put,
            body: BodyEnvelope::Object,
            records_key: Some("items".into()),
            idempotency_key_header: Some("Idempotency-Key".into()),
        },
    );
    let put = Target::new(&put_object, &key, Metrics::new("rest", "put")).unwrap();
    let outcome = put.deliver(&records()).await.unwrap();
    assert_eq!(outcome.rejected.len(), 1);
    assert_eq!(outcome.rejected[0].index, 1);

    let ndjson = target(
        "/v2/ingest/lines.ndjson",
        RestWrite {
            method: WriteMethod::Patch,
            body: BodyEnvelope::Ndjson,
            records_key: None,
            idempotency_key_header: Some("X-Request-Key".into()),
        },
    );
    let patch = Target::new(&ndjson, &key, Metrics::new("rest", "ndjson")).unwrap();
    patch.deliver(&records()[..2]).await.unwrap();

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4, "two batches, each sent twice");
    let (first, retry) = (&seen[0], &seen[1]);
    assert_eq!(
        (first.method.as_str(), first.uri.as_str()),
        ("PUT", "/v2/ingest/lines?tenant=eu")
    );
    assert_eq!(header(first, "content-type"), "application/json");
    let body: Value = serde_json::from_str(&first.body).unwrap();
    assert_eq!(body["items"].as_array().unwrap().len(), 3);
    assert_eq!(body["items"][2]["qty"], 7);
    let key_sent = header(first, "idempotency-key");
    assert_eq!(key_sent, idempotency_key(&records()));
    assert_eq!(
        header(retry, "idempotency-key"),
        key_sent,
        "the retry sends the same key"
    );
    assert_eq!(retry.body, first.body);

    let (first, retry) = (&seen[2], &seen[3]);
    assert_eq!(
        (first.method.as_str(), first.uri.as_str()),
        ("PATCH", "/v2/ingest/lines.ndjson")
    );
    assert_eq!(header(first, "content-type"), "application/x-ndjson");
    assert_eq!(first.body.lines().count(), 2);
    assert_eq!(
        serde_json::from_str::<Value>(first.body.lines().nth(1).unwrap()).unwrap()["salesOrder"],
        "2"
    );
    assert!(!header(first, "x-request-key").is_empty());
    assert_ne!(
        header(first, "x-request-key"),
        key_sent,
        "another batch, another key"
    );
    assert_eq!(
        header(retry, "x-request-key"),
        header(first, "x-request-key")
    );
}

/// A token endpoint recording what it got (form body, Authorization) and handing out tokens
/// t1, t2, ... valid for `lifetime` seconds; an API that takes a token unless it is in
/// `refused`.
struct OAuthServer {
    url: String,
    token_requests: Log,
    api_requests: Log,
    refused: Arc<Mutex<Vec<String>>>,
}

async fn oauth_server(lifetime: u64) -> OAuthServer {
    let token_requests: Log = Log::default();
    let api_requests: Log = Log::default();
    let refused: Arc<Mutex<Vec<String>>> = Arc::default();
    let token = {
        let log = token_requests.clone();
        move |request: Request| {
            let log = log.clone();
            async move {
                record(&log, request).await;
                let n = log.lock().unwrap().len();
                axum::Json(json!({
                    "access_token": format!("t{n}"), "token_type": "Bearer", "expires_in": lifetime
                }))
            }
        }
    };
    let api = {
        let log = api_requests.clone();
        move |State(refused): State<Arc<Mutex<Vec<String>>>>, request: Request| {
            let log = log.clone();
            async move {
                let seen = record(&log, request).await;
                let token = header(&seen, "authorization").replace("Bearer ", "");
                if token.is_empty() || refused.lock().unwrap().contains(&token) {
                    return (StatusCode::UNAUTHORIZED, "invalid_token").into_response();
                }
                axum::Json(json!([{"seq": 1}])).into_response()
            }
        }
    };
    let router = Router::new()
        .route("/oauth2/token", axum::routing::post(token))
        .route("/v1/items", axum::routing::get(api))
        .with_state(refused.clone());
    OAuthServer {
        url: serve(router).await,
        token_requests,
        api_requests,
        refused,
    }
}

fn oauth_endpoint(server: &OAuthServer, dir: &Path, auth: ClientAuthentication) -> EndpointConfig {
    // A secret with characters the form encoding (and Basic's encoding of it) must escape.
    std::fs::write(dir.join("clientId"), "flowplane worker").unwrap();
    std::fs::write(dir.join("clientSecret"), "s3cr3t&=+/never-logged").unwrap();
    let mut endpoint = sample::endpoint("api", System::Forecasting, Protocol::Rest, &server.url);
    endpoint.auth = AuthType::OAuth2ClientCredentials;
    endpoint.secret_dir = Some(dir.display().to_string());
    endpoint.token_url = Some(format!("{}/oauth2/token", server.url));
    endpoint.scopes = vec!["ingest.write".into(), "forecasts.read".into()];
    endpoint.audience = Some("https://api.forecast.example.io".into());
    endpoint.client_authentication = auth;
    endpoint
}

fn form(seen: &Seen) -> Vec<(String, String)> {
    url::form_urlencoded::parse(seen.body.as_bytes())
        .into_owned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_token_requests_are_form_bodies_with_basic_or_body_client_authentication() {
    flowplane::worker::http::install_crypto_provider();
    let dir = TempDir::new("oauth");
    for auth in [
        ClientAuthentication::ClientSecretBasic,
        ClientAuthentication::ClientSecretPost,
    ] {
        let server = oauth_server(3600).await;
        let endpoint = oauth_endpoint(&server, &dir.0, auth);
        let http = HttpClient::new(&endpoint, Metrics::new("rest", "oauth")).unwrap();
        let items = format!("{}/v1/items", server.url);
        for _ in 0..3 {
            http.send(|client| client.get(&items)).await.unwrap();
        }
        let tokens = server.token_requests.lock().unwrap().clone();
        assert_eq!(tokens.len(), 1, "{auth:?}: one token for three calls");
        let request = &tokens[0];
        assert_eq!(request.method, "POST");
        assert_eq!(request.uri, "/oauth2/token", "nothing in the query string");
        assert_eq!(
            header(request, "content-type"),
            "application/x-www-form-urlencoded"
        );
        let mut form = form(request);
        form.sort();
        let basic = header(request, "authorization");
        match auth {
            ClientAuthentication::ClientSecretBasic => {
                assert_eq!(
                    form,
                    [
                        ("audience".into(), "https://api.forecast.example.io".into()),
                        ("grant_type".into(), "client_credentials".into()),
                        ("scope".into(), "ingest.write forecasts.read".into()),
                    ]
                );
                // RFC 6749 2.3.1: id and secret form-encoded, then Basic.
                use base64::Engine;
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(basic.strip_prefix("Basic ").unwrap())
                    .unwrap();
                assert_eq!(
                    String::from_utf8(decoded).unwrap(),
                    "flowplane+worker:s3cr3t%26%3D%2B%2Fnever-logged"
                );
            }
            ClientAuthentication::ClientSecretPost => {
                assert!(basic.is_empty(), "no Basic with client_secret_post");
                assert_eq!(
                    form,
                    [
                        ("audience".into(), "https://api.forecast.example.io".into()),
                        ("client_id".into(), "flowplane worker".into()),
                        ("client_secret".into(), "s3cr3t&=+/never-logged".into()),
                        ("grant_type".into(), "client_credentials".into()),
                        ("scope".into(), "ingest.write forecasts.read".into()),
                    ]
                );
            }
        }
        let api = server.api_requests.lock().unwrap().clone();
        assert_eq!(api.len(), 3);
        assert!(
            api.iter()
                .all(|s| header(s, "authorization") == "Bearer t1")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_tokens_are_refreshed_before_expiry_and_once_on_a_401() {
    flowplane::worker::http::install_crypto_provider();
    let dir = TempDir::new("oauth");
    // Tokens live 2 s: fetched again after 1.5 s, before the API would refuse them.
    let server = oauth_server(2).await;
    let endpoint = oauth_endpoint(&server, &dir.0, ClientAuthentication::ClientSecretBasic);
    let http = HttpClient::new(&endpoint, Metrics::new("rest", "refresh")).unwrap();
    let items = format!("{}/v1/items", server.url);
    http.send(|client| client.get(&items)).await.unwrap();
    http.send(|client| client.get(&items)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1600)).await;
    http.send(|client| client.get(&items)).await.unwrap();
    let used = |server: &OAuthServer| -> Vec<String> {
        server
            .api_requests
            .lock()
            .unwrap()
            .iter()
            .map(|s| header(s, "authorization"))
            .collect()
    };
    assert_eq!(used(&server), ["Bearer t1", "Bearer t1", "Bearer t2"]);
    assert_eq!(server.token_requests.lock().unwrap().len(), 2);

    // The API revokes t2: the client drops it, fetches t3 and sends once more.
    server.refused.lock().unwrap().push("t2".into());
    http.send(|client| client.get(&items)).await.unwrap();
    assert_eq!(used(&server)[3..], ["Bearer t2", "Bearer t3"]);
    assert_eq!(server.token_requests.lock().unwrap().len(), 3);

    // An API that refuses every token: one new token and one more try, then the 401 stands,
    // as refused access (the breaker opens; no record is dead-lettered for it).
    server
        .refused
        .lock()
        .unwrap()
        .extend(["t3".into(), "t4".into()]);
    let error = http.send(|client| client.get(&items)).await.unwrap_err();
    assert!(
        matches!(error, CallError::Refused { status: 401, .. }),
        "{error}"
    );
    assert_eq!(used(&server)[5..], ["Bearer t3", "Bearer t4"]);
    assert_eq!(server.token_requests.lock().unwrap().len(), 4);
    let text = error.to_string();
    assert!(
        !text.contains("never-logged") && !text.contains("t4"),
        "{text}"
    );
}
