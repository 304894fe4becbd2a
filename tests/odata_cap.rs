//! Interop tier: the OData connector against SAP CAP, SAP's own OData v4 server (the service in
//! tests/cap, started with the `cds-serve` launcher that scripts/install-tools.sh installs),
//! rather than against our simulator. CAP pages with relative `@odata.nextLink`s, serves its
//! services below S/4HANA-style paths, refuses updates without `If-Match` (428) or with a
//! stale one (412), has no PATCH-upsert, and sits behind SAP's CSRF check (tests/cap/server.js).
//! Source tests run CAP -> worker (in-process) -> NATS -> forecasting simulator, target tests
//! CAP -> worker -> CAP, and the 428 / CSRF refresh test drives the target directly.

mod e2e_support;
mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e_support::*;
use flowplane::api::connector_binding::{Protocol, System};
use flowplane::api::integration_flow::WriteMode;
use flowplane::queue::{CURSOR_KEY, QueueNames, list_dead_letters};
use flowplane::sim::erp::ErpSeed;
use flowplane::worker::connectors::target::{Outgoing, Target};
use flowplane::worker::metrics::Metrics;
use flowplane::worker::sample;
use flowplane::worker_config::{TargetConfig, WorkerConfig};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(120);
/// What a binding above the services points at (S/4HANA Cloud's OData v4 prefix).
const PREFIX: &str = "/sap/opu/odata4/sap";
const SALES_ORDERS: &str = "api_salesorder/srvd_a2x/sap/salesorder/0001";
const HISTORY: &str = "api_saleshistory/srvd_a2x/sap/saleshistory/0001";

/// The CAP service on a free loopback port; killed on drop.
struct Cap {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl Cap {
    fn start() -> Cap {
        flowplane::worker::http::install_crypto_provider();
        let mut child = Command::new(support::tool("cds-serve"))
            .args(["all", "--in-memory", "--port", "0"])
            .current_dir(support::repo_root().join("tests/cap"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start cds-serve (scripts/install-tools.sh installs it)");
        // server.js prints the port it listens on; the rest of the output is drained.
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line.strip_prefix("FLOWPLANE_CAP_LISTENING ") {
                    let _ = port_tx.send(port.trim().parse::<u16>().ok());
                }
            }
        });
        let errors = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn({
            let errors = errors.clone();
            move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    errors.lock().unwrap().push(line);
                }
            }
        });
        let port = port_rx
            .recv_timeout(Duration::from_secs(60))
            .ok()
            .flatten()
            .unwrap_or_else(|| {
                panic!(
                    "CAP did not start in 60s:\n{}",
                    errors.lock().unwrap().join("\n")
                )
            });
        Cap {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let response = self.http.post(self.url(path)).json(&body).send().await;
        let response = response.unwrap().error_for_status().unwrap();
        response.json().await.unwrap()
    }

    /// What the service logged (tests/cap/server.js): CSRF fetches and refusals, writes with
    /// their preconditions, refused requests with their status, armed races, held pages.
    async fn log(&self) -> Vec<Value> {
        let response = self.http.get(self.url("/test/log")).send().await.unwrap();
        response.json().await.unwrap()
    }

    async fn count(&self, matches: impl Fn(&Value) -> bool) -> usize {
        self.log().await.iter().filter(|e| matches(e)).count()
    }

    /// SalesHistory by `salesOrder/salesOrderItem`, read through the OData service.
    async fn history(&self) -> BTreeMap<String, Value> {
        let url = self.url(&format!("{PREFIX}/{HISTORY}/SalesHistory?$top=1000"));
        let response = self.http.get(url).send().await.unwrap();
        let body: Value = response.error_for_status().unwrap().json().await.unwrap();
        body["value"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| {
                let key = format!(
                    "{}/{}",
                    row["salesOrder"].as_str().unwrap(),
                    row["salesOrderItem"].as_str().unwrap()
                );
                (key, row.clone())
            })
            .collect()
    }
}

impl Drop for Cap {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kind(entry: &Value, kind: &str) -> bool {
    entry["kind"] == kind
}

/// `2024-03-01T12:00:00.<ms>Z`: the change timestamps of the seeds.
fn at(ms: u32) -> String {
    format!("2024-03-01T12:00:00.{ms:03}Z")
}

fn order(i: u32) -> String {
    (1_000_000 + i / 10).to_string()
}

fn item(i: u32) -> String {
    ((i % 10 + 1) * 10).to_string()
}

fn key(i: u32) -> String {
    format!("{}/{}", order(i), item(i))
}

/// Sales order line `i` as CAP stores it.
fn line(i: u32, changed: &str) -> Value {
    let plant = ["1010", "1020", "1030", "1040"][i as usize % 4];
    json!({
        "SalesOrder": order(i),
        "SalesOrderItem": item(i),
        "Material": format!("MAT-{:05}", i % 50),
        "Plant": plant,
        "RequestedQuantity": i % 100 + 1,
        "RequestedQuantityUnit": "EA",
        "NetAmount": "12.50",
        "TransactionCurrency": "EUR",
        "SalesOrderItemCategory": "TAN",
        "SoldToParty": "C000017",
        "CreationDate": "2024-03-01",
        "LastChangeDateTime": changed,
    })
}

/// The sample sales order flow, reading CAP's A_SalesOrderItem through `binding` + `entity`
/// (CAP's lines carry the header's sold-to party and order date flat).
fn cap_flow(nats: &str, binding: &str, entity: &str, target_url: &str) -> WorkerConfig {
    let flow = unique_flow("cap");
    let mut config = sample::sales_order_flow("cap", &flow, nats, binding, target_url);
    config.source.entity = entity.into();
    for field in &mut config.mapping.fields {
        match field.to.as_str() {
            "customer" => field.from = Some("SoldToParty".into()),
            "orderDate" => field.from = Some("CreationDate".into()),
            _ => {}
        }
    }
    config
}

async fn forecast_sims() -> Sims {
    start_sims(ErpSeed::empty()).await
}

async fn stored_cursor(js: &async_nats::jetstream::Context, names: &QueueNames) -> Option<String> {
    let bucket = flowplane::queue::jetstream::bucket(js, names).await.ok()?;
    let value = bucket.get(CURSOR_KEY).await.ok()??;
    String::from_utf8(value.to_vec()).ok()
}

/// Waits until the forecasting simulator applied `count` records of `entity` and the flow
/// counts as many read and delivered; then lets a few more polls pass (each re-reads the rows
/// of the cursor's timestamp) and checks nothing changes: every key applied `once` times
/// except `twice` keys, no duplicate writes, no dead letters.
async fn settled_exactly(
    sims: &Sims,
    js: &async_nats::jetstream::Context,
    config: &WorkerConfig,
    count: u64,
) {
    let entity = config.target.entity.clone();
    let names = config.queue.clone();
    eventually(TIMEOUT, &format!("{count} records at {entity}"), || {
        let report = sims.forecast.received(&entity);
        let js = js.clone();
        let names = names.clone();
        async move {
            let p = progress(&js, &names).await;
            (report.applied() == count && p.read == count && p.delivered == count).then_some(())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = sims.forecast.received(&entity);
    let p = progress(js, &names).await;
    assert_eq!(report.applied(), count, "{entity}: no record applied twice");
    assert_eq!(report.duplicates(), 0, "{entity}: no record written twice");
    assert_eq!((p.read, p.delivered, p.dead_lettered), (count, count, 0));
    assert!(
        list_dead_letters(js, &names, None)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_of_a_paged_collection_arrives_once_with_the_binding_above_or_at_the_service_root()
 {
    let cap = Cap::start();
    let nats = PrivateNats::start();
    let sims = forecast_sims().await;
    let js = jetstream(&nats.url()).await;
    // 1,050 lines, pages of 100: 400 share one change timestamp, 350 the next, 300 the last.
    let lines: Vec<Value> = (0..1050)
        .map(|i| line(i, &at(1 + u32::from(i >= 400) + u32::from(i >= 750))))
        .collect();
    cap.post("/test/SalesOrderItems", Value::Array(lines)).await;

    // As examples/base lays it out: the binding at /sap/opu/odata4/sap, the service path in
    // the entity. And a binding at the service root itself.
    let above = cap_flow(
        &nats.url(),
        &cap.url(PREFIX),
        &format!("{SALES_ORDERS}/A_SalesOrderItem"),
        &sims.forecast_url,
    );
    let mut root = cap_flow(
        &nats.url(),
        &cap.url(&format!("{PREFIX}/{SALES_ORDERS}")),
        "A_SalesOrderItem",
        &sims.forecast_url,
    );
    root.target.entity = "sales-order-lines-at-root".into();
    let _workers = [
        InProcessWorker::start(above.clone(), "cap-above"),
        InProcessWorker::start(root.clone(), "cap-root"),
    ];
    for config in [&above, &root] {
        settled_exactly(&sims, &js, config, 1050).await;
        let report = sims.forecast.received(&config.target.entity);
        assert_eq!(report.keys.len(), 1050);
        assert!(report.keys.values().all(|k| k.applied_versions.len() == 1));
        let arrived = &report.keys[&key(417)];
        assert_eq!(arrived.value["changedAt"], at(2).as_str());
        assert_eq!(arrived.value["orderedQuantity"], 18);
        assert_eq!(arrived.value["location"], "DC-SOUTH");
        assert_eq!(arrived.value["customer"], "C000017");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_killed_between_pages_loses_no_row_and_changed_rows_flow_again_alone() {
    let cap = Cap::start();
    let nats = PrivateNats::start();
    let sims = forecast_sims().await;
    let js = jetstream(&nats.url()).await;
    // 150 lines changed at .001, then 350 at .002: the second timestamp spans pages 2 to 5.
    let lines: Vec<Value> = (0..500)
        .map(|i| line(i, &at(if i < 150 { 1 } else { 2 })))
        .collect();
    cap.post("/test/SalesOrderItems", Value::Array(lines)).await;
    let config = cap_flow(
        &nats.url(),
        &cap.url(PREFIX),
        &format!("{SALES_ORDERS}/A_SalesOrderItem"),
        &sims.forecast_url,
    );
    let entity = config.target.entity.clone();
    let names = config.queue.clone();

    // The third page is held: the worker stores the cursor after page 2 (the newest change
    // on it, .002) and waits for page 3; it is killed there.
    cap.post("/test/hold", json!({"skiptoken": "200"})).await;
    let worker = InProcessWorker::start(config.clone(), "cap-killed");
    eventually(TIMEOUT, "two pages delivered, the third held", || {
        let report = sims.forecast.received(&entity);
        let (cap, js, names) = (&cap, js.clone(), names.clone());
        async move {
            let held = cap.count(|e| kind(e, "held")).await > 0;
            let cursor = stored_cursor(&js, &names).await;
            let p = progress(&js, &names).await;
            (held && report.applied() == 200 && p.delivered == 200 && cursor == Some(at(2)))
                .then_some(())
        }
    })
    .await;
    drop(worker);
    cap.post("/test/release", json!({})).await;

    // A new worker resumes from .002, inclusively: the 300 lines of .002 the killed pass never
    // read arrive, the 50 it did are dropped as repeats.
    let _worker = InProcessWorker::start(config.clone(), "cap-resumed");
    settled_exactly(&sims, &js, &config, 500).await;
    let report = sims.forecast.received(&entity);
    assert_eq!(report.keys.len(), 500);
    assert!(report.keys.values().all(|k| k.applied_versions.len() == 1));

    // Seven lines change (at one new timestamp): they flow again, and only they.
    let changed: Vec<u32> = vec![3, 149, 150, 151, 333, 480, 499];
    let keys: Vec<[String; 2]> = changed.iter().map(|&i| [order(i), item(i)]).collect();
    let set = json!({"RequestedQuantity": 77, "LastChangeDateTime": at(900)});
    let updated = cap
        .post(
            "/test/SalesOrderItems/update",
            json!({"keys": keys, "set": set}),
        )
        .await;
    assert_eq!(updated["updated"], 7);
    settled_exactly(&sims, &js, &config, 507).await;
    let report = sims.forecast.received(&entity);
    for (k, arrived) in &report.keys {
        let i = changed.iter().find(|&&i| &key(i) == k);
        let expected = if i.is_some() { 2 } else { 1 };
        assert_eq!(arrived.applied_versions.len(), expected, "{k}");
        if i.is_some() {
            assert_eq!(arrived.value["orderedQuantity"], 77, "{k}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_keys_are_created_by_post_and_a_stale_etag_never_overwrites_newer_data() {
    let cap = Cap::start();
    let nats = PrivateNats::start();
    let sims = forecast_sims().await;
    let js = jetstream(&nats.url()).await;
    let lines: Vec<Value> = (0..200).map(|i| line(i, &at(5))).collect();
    cap.post("/test/SalesOrderItems", Value::Array(lines)).await;
    // The target already holds lines 0-19 at an older version and line 20 at a newer one.
    let stored = |i: u32, changed: &str, quantity: u32, source: &str| {
        json!({"salesOrder": order(i), "salesOrderItem": item(i), "sku": "MAT-OLD",
               "location": "DC-NORTH", "orderedQuantity": quantity, "unit": "EA",
               "currency": "EUR", "itemCategory": "Standard", "customer": "C000017",
               "orderDate": "2024-03-01", "changedAt": changed, "source": source})
    };
    let mut history: Vec<Value> = (0..20)
        .map(|i| stored(i, "2024-01-01T00:00:00.000Z", 1, "old"))
        .collect();
    history.push(stored(20, "2025-01-01T00:00:00.000Z", 4242, "newer"));
    cap.post("/test/SalesHistory", Value::Array(history)).await;
    // Someone else writes line 7 right after the worker read its ETag.
    let other = json!({"orderedQuantity": 9999, "source": "other",
                       "changedAt": "2025-06-01T00:00:00.000Z"});
    cap.post(
        "/test/race",
        json!({"salesOrder": order(7), "salesOrderItem": item(7), "set": other}),
    )
    .await;
    // And someone else creates line 150, at an older version, right after the worker found
    // no such key: the worker's POST is refused (CAP answers 500 on sqlite, 400
    // ENTITY_ALREADY_EXISTS on HANA, not 409), and the worker reads the row and updates it.
    let first = stored(150, "2024-01-01T00:00:00.000Z", 1, "other-create");
    cap.post(
        "/test/race",
        json!({"salesOrder": order(150), "salesOrderItem": item(150), "set": first}),
    )
    .await;

    let mut config = cap_flow(
        &nats.url(),
        &cap.url(PREFIX),
        &format!("{SALES_ORDERS}/A_SalesOrderItem"),
        &sims.forecast_url,
    );
    config.target = TargetConfig {
        endpoint: sample::endpoint(
            "cap-history",
            System::Erp,
            Protocol::OData,
            &cap.url(PREFIX),
        ),
        entity: format!("{HISTORY}/SalesHistory"),
        write_mode: WriteMode::Upsert,
        batch_size: 50,
        rest: None,
        files: None,
    };
    let names = config.queue.clone();
    let _worker = InProcessWorker::start(config, "cap-writer");
    let rows = eventually(TIMEOUT, "200 lines at CAP's SalesHistory", || {
        let (cap, js, names) = (&cap, js.clone(), names.clone());
        async move {
            let p = progress(&js, &names).await;
            let rows = cap.history().await;
            let written = rows.values().filter(|r| r["source"] == "s4").count();
            (p.delivered == 200 && rows.len() == 200 && written == 198).then_some(rows)
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(cap.history().await, rows, "nothing changes after delivery");

    // The write with the ETag read before the other writer's change was refused (412), and
    // the re-read found a newer version: line 7 keeps the other writer's data.
    assert_eq!(rows[&key(7)]["orderedQuantity"], 9999);
    assert_eq!(rows[&key(7)]["source"], "other");
    assert_eq!(
        rows[&key(20)]["orderedQuantity"],
        4242,
        "a newer version stays"
    );
    assert_eq!(rows[&key(19)]["orderedQuantity"], 20);
    assert_eq!(rows[&key(150)]["orderedQuantity"], 51);
    let log = cap.log().await;
    let count = |matches: &dyn Fn(&Value) -> bool| log.iter().filter(|e| matches(e)).count();
    assert_eq!(count(&|e| kind(e, "race")), 2);
    assert_eq!(
        count(&|e| kind(e, "refused") && e["status"] != 404 && e["status"] != 412),
        1,
        "the lost race to create line 150: {:?}",
        log.iter()
            .filter(|e| kind(e, "refused") && e["status"] != 404)
            .collect::<Vec<_>>()
    );
    assert_eq!(rows[&key(150)]["source"], "s4");
    assert_eq!(
        count(&|e| kind(e, "refused") && e["status"] == 412),
        1,
        "the stale ETag is refused: {:?}",
        log.iter()
            .filter(|e| kind(e, "refused") && e["status"] != 404)
            .collect::<Vec<_>>()
    );
    // Every new key created by POST (CAP has no PATCH-upsert), every update conditional.
    assert_eq!(count(&|e| kind(e, "write") && e["event"] == "CREATE"), 178);
    assert_eq!(
        count(&|e| kind(e, "write") && e["event"] == "UPDATE" && e["ifMatch"].is_string()),
        20
    );
    assert_eq!(
        count(&|e| kind(e, "write") && e["ifMatch"].is_null() && e["event"] == "UPDATE"),
        0
    );
    assert_eq!(count(&|e| kind(e, "refused") && e["status"] == 428), 0);
    // One CSRF token, fetched before the first $batch, and never refused.
    assert_eq!(count(&|e| kind(e, "csrf-fetch")), 1);
    assert_eq!(count(&|e| kind(e, "csrf-refused")), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_version_field_a_428_is_answered_with_if_match_and_an_expired_csrf_token_is_fetched_again()
 {
    let cap = Cap::start();
    let record = |i: u32, quantity: u32| {
        json!({"salesOrder": order(i), "salesOrderItem": item(i), "sku": "MAT-1",
               "location": "DC-NORTH", "orderedQuantity": quantity, "unit": "EA",
               "currency": "EUR", "itemCategory": "Standard", "customer": "C000017",
               "orderDate": "2024-03-01", "changedAt": at(1), "source": "s4"})
    };
    cap.post("/test/SalesHistory", json!([record(1, 1)])).await;
    let config = TargetConfig {
        endpoint: sample::endpoint(
            "cap-history",
            System::Erp,
            Protocol::OData,
            &cap.url(PREFIX),
        ),
        entity: format!("{HISTORY}/SalesHistory"),
        write_mode: WriteMode::Upsert,
        batch_size: 10,
        rest: None,
        files: None,
    };
    let key_fields = ["salesOrder".to_string(), "salesOrderItem".to_string()];
    // No version field: writes are unconditional until the service asks for more.
    let target = Target::new(&config, &key_fields, Metrics::new("cap", "direct")).unwrap();
    let send = |records: Vec<Value>| {
        let target = &target;
        async move {
            let bodies: Vec<Vec<u8>> = records
                .iter()
                .map(|r| serde_json::to_vec(r).unwrap())
                .collect();
            let outgoing: Vec<Outgoing> = bodies
                .iter()
                .map(|data| Outgoing {
                    key: "",
                    version: 1,
                    data,
                })
                .collect();
            let outcome = target.deliver(&outgoing).await.unwrap();
            assert!(outcome.rejected.is_empty(), "{:?}", outcome.rejected);
            assert!(outcome.retry.is_empty(), "{:?}", outcome.retry);
        }
    };

    // Line 1 exists, line 2 is new: both PATCHes get 428; line 1's ETag is read and it is
    // updated with If-Match, line 2's read finds nothing and it is created with POST.
    send(vec![record(1, 2), record(2, 5)]).await;
    let log = cap.log().await;
    let count =
        |log: &[Value], matches: &dyn Fn(&Value) -> bool| log.iter().filter(|e| matches(e)).count();
    assert_eq!(
        count(&log, &|e| kind(e, "refused") && e["status"] == 428),
        2
    );
    assert_eq!(
        count(&log, &|e| kind(e, "write")
            && e["event"] == "UPDATE"
            && e["ifMatch"].is_string()),
        1
    );
    assert_eq!(
        count(&log, &|e| kind(e, "write") && e["event"] == "CREATE"),
        1
    );
    assert_eq!(count(&log, &|e| kind(e, "csrf-fetch")), 1);
    let rows = cap.history().await;
    assert_eq!(rows[&key(1)]["orderedQuantity"], 2);
    assert_eq!(rows[&key(2)]["orderedQuantity"], 5);

    // The CSRF session ends (the token expires): the next $batch is refused with 403 and
    // `X-CSRF-Token: Required`, a new token is fetched and the batch goes through. The target
    // now reads ETags first, so no 428 either.
    cap.post("/test/csrf/rotate", json!({})).await;
    send(vec![record(1, 3)]).await;
    let log = cap.log().await;
    assert_eq!(count(&log, &|e| kind(e, "csrf-refused")), 1);
    assert_eq!(count(&log, &|e| kind(e, "csrf-fetch")), 2);
    assert_eq!(
        count(&log, &|e| kind(e, "refused") && e["status"] == 428),
        2
    );
    assert_eq!(cap.history().await[&key(1)]["orderedQuantity"], 3);
}
