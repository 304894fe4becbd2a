//! Same-origin links: a source's paging links (`@odata.nextLink`, `@odata.deltaLink`, a REST
//! next link) and redirects that lead to another origin (scheme, host, port) are refused with
//! a clear error before anything is sent there, so the binding's credentials never leave its
//! host. Each test runs the source against a small server of its own and a second listener
//! ("elsewhere", another port on the same address: another origin) that counts every request
//! it gets, which must stay zero. Relative links keep resolving against the service root. The
//! last test runs a whole worker (real nats-server) and reads the refusal from the flow's
//! progress record, where the flow's status shows it.

mod e2e_support;
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use flowplane::api::connector_binding::{AuthType, Protocol, System};
use flowplane::api::integration_flow::SyncMode;
use flowplane::worker::connectors::odata::ODataSource;
use flowplane::worker::connectors::rest::RestSource;
use flowplane::worker::http::{CallError, HttpClient};
use flowplane::worker::metrics::Metrics;
use flowplane::worker::sample;
use flowplane::worker_config::{EndpointConfig, SourceConfig};
use serde_json::json;

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

/// Another origin that counts the requests it receives (and would answer every one).
async fn elsewhere() -> (String, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    let url = serve(Router::new().fallback(move || {
        counted.fetch_add(1, Ordering::SeqCst);
        async { axum::Json(json!({"value": [{"id": 99}], "items": [{"id": 99}]})) }
    }))
    .await;
    (url, count)
}

/// A binding with a bearer token (what must never reach another origin).
fn endpoint(url: &str, protocol: Protocol, dir: &std::path::Path) -> EndpointConfig {
    std::fs::write(dir.join("token"), "binding-token-never-elsewhere").unwrap();
    let mut endpoint = sample::endpoint("source", System::Erp, protocol, url);
    endpoint.auth = AuthType::Bearer;
    endpoint.secret_dir = Some(dir.display().to_string());
    endpoint
}

fn source(endpoint: EndpointConfig, entity: &str, sync_mode: SyncMode) -> SourceConfig {
    SourceConfig {
        endpoint,
        entity: entity.into(),
        sync_mode,
        cursor_field: None,
        select: vec![],
        poll_interval: "1s".into(),
        rest: None,
    }
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("flowplane-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn off_origin(result: Result<Option<flowplane::worker::connectors::Page>, CallError>) -> String {
    match result {
        Err(CallError::OffOrigin(message)) => message,
        Err(other) => panic!("expected an off-origin refusal, got {other:?}"),
        Ok(page) => panic!(
            "expected an off-origin refusal, got a page: {:?}",
            page.is_some()
        ),
    }
}

#[tokio::test]
async fn odata_next_and_delta_links_to_another_origin_are_refused_unsent() {
    flowplane::worker::http::install_crypto_provider();
    let (other, requests_elsewhere) = elsewhere().await;
    // Page 1 links relatively (kept: resolved against the service root), page 2 to the other
    // origin; the delta link of the incremental pass also points there.
    let service = serve(Router::new().fallback({
        let other = other.clone();
        move |request: Request| {
            let other = other.clone();
            async move {
                let uri = request.uri().to_string();
                let body = match uri.as_str() {
                    "/odata/Orders" => json!({
                        "value": [{"id": 1}], "@odata.nextLink": "Orders?$skiptoken=1"
                    }),
                    "/odata/Orders?$skiptoken=1" => json!({
                        "value": [{"id": 2}], "@odata.nextLink": format!("{other}/odata/Orders?$skiptoken=2")
                    }),
                    "/odata/Deltas" => json!({
                        "value": [{"id": 3}], "@odata.deltaLink": format!("{other}/odata/Deltas?$deltatoken=9")
                    }),
                    _ => return StatusCode::NOT_FOUND.into_response(),
                };
                axum::Json(body).into_response()
            }
        }
    }))
    .await;
    let dir = temp_dir("odata-origin");
    let endpoint = endpoint(&format!("{service}/odata"), Protocol::OData, &dir);

    let http = HttpClient::new(&endpoint, Metrics::new("odata", "origin")).unwrap();
    let mut pass = ODataSource::new(
        source(endpoint.clone(), "Orders", SyncMode::FullRefresh),
        http,
    );
    pass.begin(None);
    assert_eq!(pass.next_page().await.unwrap().unwrap().records.len(), 1);
    assert_eq!(pass.next_page().await.unwrap().unwrap().records.len(), 1);
    let message = off_origin(pass.next_page().await);
    assert!(
        message.starts_with("@odata.nextLink leads to another origin (127.0.0.1:"),
        "{message}"
    );
    assert!(
        !message.contains("skiptoken"),
        "the link is not echoed: {message}"
    );

    let http = HttpClient::new(&endpoint, Metrics::new("odata", "delta")).unwrap();
    let mut pass = ODataSource::new(source(endpoint, "Deltas", SyncMode::Incremental), http);
    pass.begin(None);
    let page = pass.next_page().await.unwrap().unwrap();
    assert_eq!(page.records.len(), 1);
    assert!(
        page.cursor
            .as_deref()
            .is_none_or(|c| !c.contains("deltatoken")),
        "an off-origin delta link never becomes the cursor: {:?}",
        page.cursor
    );
    let message = off_origin(pass.next_page().await);
    assert!(
        message.starts_with("@odata.deltaLink leads to another origin"),
        "{message}"
    );

    assert_eq!(requests_elsewhere.load(Ordering::SeqCst), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_rest_next_link_or_a_redirect_to_another_origin_is_refused_unsent() {
    flowplane::worker::http::install_crypto_provider();
    let (other, requests_elsewhere) = elsewhere().await;
    let api = serve(Router::new().fallback({
        let other = other.clone();
        move |request: Request| {
            let other = other.clone();
            async move {
                match request.uri().path() {
                    // The default REST conventions: {"items": [...], "next": url}.
                    "/api/orders" => axum::Json(json!({
                        "items": [{"id": 1}], "next": format!("{other}/api/orders?page=2")
                    }))
                    .into_response(),
                    "/api/moved" => (
                        StatusCode::FOUND,
                        [(header::LOCATION, format!("{other}/api/orders"))],
                    )
                        .into_response(),
                    _ => StatusCode::NOT_FOUND.into_response(),
                }
            }
        }
    }))
    .await;
    let dir = temp_dir("rest-origin");
    let endpoint = endpoint(&format!("{api}/api"), Protocol::Rest, &dir);

    let http = HttpClient::new(&endpoint, Metrics::new("rest", "origin")).unwrap();
    let mut pass = RestSource::new(
        source(endpoint.clone(), "orders", SyncMode::FullRefresh),
        http,
    );
    pass.begin(None);
    assert_eq!(pass.next_page().await.unwrap().unwrap().records.len(), 1);
    let message = off_origin(pass.next_page().await);
    assert!(
        message.starts_with("the next page's link leads to another origin (127.0.0.1:"),
        "{message}"
    );

    // A redirect elsewhere: refused by the client before it follows, whatever the connector.
    let http = HttpClient::new(&endpoint, Metrics::new("rest", "redirect")).unwrap();
    let mut pass = RestSource::new(source(endpoint, "moved", SyncMode::FullRefresh), http);
    pass.begin(None);
    let message = off_origin(pass.next_page().await);
    assert!(
        message.starts_with("a redirect leads to another origin (127.0.0.1:"),
        "{message}"
    );

    assert_eq!(requests_elsewhere.load(Ordering::SeqCst), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A whole worker against a source whose page links to another origin: the pass fails, the
/// flow's progress record (status.sync.blocked) says why, nothing is read twice or
/// dead-lettered, and the other origin gets no request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_refusing_an_off_origin_link_says_so_in_the_flows_progress() {
    use e2e_support::{InProcessWorker, PrivateNats, eventually, jetstream, progress, unique_flow};
    flowplane::worker::http::install_crypto_provider();
    let nats = PrivateNats::start();
    let (other, requests_elsewhere) = elsewhere().await;
    let service = serve(Router::new().fallback({
        let other = other.clone();
        move || {
            let other = other.clone();
            async move {
                axum::Json(json!({
                    "value": [], "@odata.nextLink": format!("{other}/odata/A_SalesOrderItem?$skiptoken=1")
                }))
            }
        }
    }))
    .await;
    let flow = unique_flow("origin");
    let config = sample::sales_order_flow(
        "e2e",
        &flow,
        &nats.url(),
        &format!("{service}/odata"),
        "http://127.0.0.1:9",
    );
    let names = config.queue.clone();
    let js = jetstream(&nats.url()).await;
    let worker = InProcessWorker::start(config, "origin-a");
    let blocked = eventually(
        std::time::Duration::from_secs(60),
        "the refusal in the flow's progress",
        || {
            let js = js.clone();
            let names = names.clone();
            async move { progress(&js, &names).await.blocked }
        },
    )
    .await;
    assert!(
        blocked.starts_with(
            "source link refused: @odata.nextLink leads to another origin (127.0.0.1:"
        ),
        "{blocked}"
    );
    let seen = progress(&js, &names).await;
    assert_eq!((seen.read, seen.dead_lettered), (0, 0));
    worker.stop().await.unwrap();
    assert_eq!(requests_elsewhere.load(Ordering::SeqCst), 0);
}
