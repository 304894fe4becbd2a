//! The generated alert rules in a real Prometheus (the local environment's, Debian's build),
//! scraping real worker processes on the real nats-server: a quiet flow whose worker is
//! replaced stays silent (the new worker reports the last delivery its flow's progress record
//! holds, not 0), and a flow whose last delivery is older than its SLA fires
//! FlowplaneFlowStale, after its worker was replaced too, and FlowplaneDeadLetterAged for the
//! dead letters it keeps; and a flow with freshness per location whose one warehouse stops
//! sending while the others go on fires FlowplaneKeyStale for that location only, across a
//! worker restart. Read through Prometheus' HTTP API.

mod e2e_support;
mod support;

use std::time::Duration;

use e2e_support::*;
use flowplane::api::IntegrationFlow;
use flowplane::queue::jetstream::{bucket, update_progress};
use flowplane::render::ResolvedContract;
use flowplane::render::alerts::{rule_file, rule_groups};
use flowplane::sim::erp::ErpSeed;
use flowplane::worker::sample;
use flowplane::worker_config::{FreshnessByConfig, WorkerConfig};
use serde_json::{Value, json};
use support::nats_cluster::free_port;

const NAMESPACE: &str = "e2e";
const RECORDS: u64 = 20;
/// The stale flow's source has every 10th record bad: 2 dead letters.
const DEAD: u64 = 2;

fn flow(name: &str, freshness: &str) -> IntegrationFlow {
    flow_with(name, freshness, "")
}

/// The flow with `extra` appended to its spec (indented by two spaces).
fn flow_with(name: &str, freshness: &str, extra: &str) -> IntegrationFlow {
    serde_yaml::from_str(&format!(
        r#"
apiVersion: flowplane.io/v1alpha1
kind: IntegrationFlow
metadata: {{name: {name}, namespace: {NAMESPACE}}}
spec:
  source: {{bindingRef: erp, entity: A_SalesOrderItem, syncMode: Incremental}}
  target: {{bindingRef: forecasting, entity: sales-order-lines}}
  contract: {{name: sales-order-lines}}
  # Dead letters alone do not fire here (FlowplaneDeadLetters, FlowplaneErrorRatioHigh): the
  # test is about freshness and the dead letters' age.
  sla: {{freshness: {freshness}, maxErrorRatio: 1, maxDeadLetters: 100}}
{extra}"#
    ))
    .unwrap()
}

/// The example contract the sample flow validates with.
fn contract() -> ResolvedContract {
    support::example_contract("sales-order-lines.yaml")
}

/// One flow as Prometheus sees it: its rule file, its worker process, its scrape target.
struct Watched {
    name: String,
    config: WorkerConfig,
    dir: TempDir,
    worker: Option<WorkerProcess>,
    port: u16,
}

impl Watched {
    fn new(name: String, freshness: &str, config: WorkerConfig) -> Watched {
        Watched::with_flow(flow(&name, freshness), config)
    }

    fn with_flow(spec: IntegrationFlow, config: WorkerConfig) -> Watched {
        let env = support::local_env();
        let name = spec.metadata.name.clone().unwrap();
        let groups = rule_groups(&spec, &contract());
        write_atomically(
            &env.prometheus_rules,
            &format!("{name}.yaml"),
            &rule_file(&groups),
        );
        Watched {
            dir: TempDir::new(&name),
            name,
            config,
            worker: None,
            port: 0,
        }
    }

    /// Starts a worker process (a new one: SIGKILLs the old) and points Prometheus at it.
    fn start_worker(&mut self, id: &str) {
        if let Some(mut old) = self.worker.take() {
            old.kill();
        }
        self.port = free_port();
        let log = self.dir.0.join(format!("{id}.log"));
        self.worker = Some(WorkerProcess::start_logging(
            &self.config,
            &self.dir.0,
            id,
            "warn",
            &log,
            format!("127.0.0.1:{}", self.port).parse().unwrap(),
        ));
        let target = json!([{
            "targets": [format!("127.0.0.1:{}", self.port)],
            "labels": {"namespace": NAMESPACE, "service": format!("{}-worker", self.name)},
        }]);
        write_atomically(
            &support::local_env().prometheus_targets,
            &format!("{}.json", self.name),
            &target.to_string(),
        );
    }

    fn kill_worker(&mut self) {
        if let Some(mut old) = self.worker.take() {
            old.kill();
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let env = support::local_env();
        let _ = std::fs::remove_file(env.prometheus_targets.join(format!("{}.json", self.name)));
        let _ = std::fs::remove_file(env.prometheus_rules.join(format!("{}.yaml", self.name)));
        support::reload_prometheus_rules();
    }
}

async fn api(path: &str, query: &[(&str, &str)]) -> Value {
    let url = format!("{}{path}", support::local_env().prometheus_url);
    let body: Value = reqwest::Client::new()
        .get(&url)
        .query(query)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .json()
        .await
        .unwrap();
    assert_eq!(body["status"], "success", "{url}: {body}");
    body["data"].clone()
}

/// The active (pending or firing) alerts of a flow: (alertname, state).
async fn alerts_of(flow: &str) -> Vec<(String, String)> {
    alerts_with_key(flow)
        .await
        .into_iter()
        .map(|(alert, state, _)| (alert, state))
        .collect()
}

/// The active alerts of a flow with their `key` label: (alertname, state, key or "").
async fn alerts_with_key(flow: &str) -> Vec<(String, String, String)> {
    let data = api("/api/v1/alerts", &[]).await;
    let mut alerts: Vec<(String, String, String)> = data["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["labels"]["flow"] == flow)
        .map(|a| {
            (
                a["labels"]["alertname"].as_str().unwrap().to_string(),
                a["state"].as_str().unwrap().to_string(),
                a["labels"]["key"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    alerts.sort();
    alerts
}

/// A gauge of the worker on `port` as Prometheus scraped it, by PromQL label matchers.
async fn scraped(metric: &str, matchers: &str, port: u16) -> Option<i64> {
    let query = format!(r#"{metric}{{{matchers},instance="127.0.0.1:{port}"}}"#);
    let data = api("/api/v1/query", &[("query", &query)]).await;
    data["result"].as_array()?.first()?["value"][1]
        .as_str()?
        .parse::<f64>()
        .ok()
        .map(|v| v as i64)
}

/// The freshness metric as Prometheus scraped it from the worker on `port`.
async fn scraped_last_success(flow: &str, port: u16) -> Option<i64> {
    let query = format!(
        r#"flowplane_worker_last_success_timestamp_seconds{{flow="{flow}",instance="127.0.0.1:{port}"}}"#
    );
    let data = api("/api/v1/query", &[("query", &query)]).await;
    data["result"].as_array()?.first()?["value"][1]
        .as_str()?
        .parse::<f64>()
        .ok()
        .map(|v| v as i64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_flow_stays_silent_across_a_restart_and_a_stale_one_fires() {
    let env = support::local_env();
    let nats_url = env.nats_url.clone();
    let seed = |bad_every| ErpSeed {
        order_lines: RECORDS as u32,
        inventory: 0,
        returns: 0,
        bad_every,
        page_size: 100,
    };
    let sims = [start_sims(seed(0)).await, start_sims(seed(10)).await];
    let js = jetstream(&nats_url).await;
    let mut flows = Vec::new();
    let mut cleanups = Vec::new();
    for ((prefix, freshness), sims) in [("quiet", "1h"), ("stale", "1m")].into_iter().zip(&sims) {
        let name = unique_flow(&format!("prom-{prefix}"));
        let config = sample::sales_order_flow(
            NAMESPACE,
            &name,
            &nats_url,
            &sims.erp_url,
            &sims.forecast_url,
        );
        cleanups.push(QueueCleanup {
            url: nats_url.clone(),
            names: config.queue.clone(),
        });
        flows.push(Watched::new(name, freshness, config));
    }
    support::reload_prometheus_rules();
    for flow in &mut flows {
        flow.start_worker("w1");
    }
    let rules = eventually(
        Duration::from_secs(30),
        "Prometheus loads both rule groups",
        || async {
            let data = api("/api/v1/rules", &[]).await;
            let names: Vec<String> = data["groups"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| g["name"].as_str().unwrap().to_string())
                .collect();
            flows
                .iter()
                .all(|f| names.contains(&format!("flowplane-{NAMESPACE}-{}", f.name)))
                .then_some(names)
        },
    )
    .await;
    println!("rule groups loaded: {}", rules.len());

    // Both flows deliver their records (the stale one dead-letters two), then have nothing
    // more to do.
    for (flow, dead) in flows.iter().zip([0, DEAD]) {
        eventually(
            Duration::from_secs(120),
            "every record delivered or dead-lettered",
            || {
                let js = js.clone();
                let names = flow.config.queue.clone();
                async move {
                    let p = progress(&js, &names).await;
                    (p.delivered == RECORDS - dead && p.dead_lettered == dead).then_some(())
                }
            },
        )
        .await;
    }

    // The stale flow's last delivery becomes two hours old (as if it had been quiet that
    // long while its source stopped sending), with no worker running.
    flows[1].kill_worker();
    let two_hours_ago = jiff::Timestamp::now().as_second() - 7200;
    let store = bucket(&js, &flows[1].config.queue).await.unwrap();
    update_progress(&store, |p| p.last_success_unix = Some(two_hours_ago))
        .await
        .unwrap();

    // A rollout: every worker replaced by a new process, which delivers nothing new.
    for flow in &mut flows {
        flow.start_worker("w2");
    }
    for flow in &flows {
        let recorded = progress(&js, &flow.config.queue)
            .await
            .last_success_unix
            .expect("a delivery is recorded");
        let port = flow.port;
        let name = flow.name.clone();
        eventually(
            Duration::from_secs(60),
            &format!("Prometheus scrapes {name}'s new worker reporting the recorded last delivery {recorded}"),
            || {
                let name = name.clone();
                async move { (scraped_last_success(&name, port).await == Some(recorded)).then_some(()) }
            },
        )
        .await;
    }

    // The age of the exception queue: the time the oldest dead letter was stored, 0 for none.
    let mut dead_letters = js
        .get_stream(&flows[1].config.queue.dead_letter_stream)
        .await
        .unwrap();
    let oldest = dead_letters
        .info()
        .await
        .unwrap()
        .state
        .first_timestamp
        .unix_timestamp();
    for (flow, expected) in flows.iter().zip([0, oldest]) {
        let query = format!(
            r#"flowplane_worker_oldest_dead_letter_timestamp_seconds{{flow="{}",instance="127.0.0.1:{}"}}"#,
            flow.name, flow.port
        );
        eventually(
            Duration::from_secs(30),
            &format!("{query} == {expected}"),
            || async {
                let data = api("/api/v1/query", &[("query", &query)]).await;
                let value = data["result"][0]["value"][1]
                    .as_str()?
                    .parse::<f64>()
                    .ok()?;
                (value as i64 == expected).then_some(())
            },
        )
        .await;
    }

    let (quiet, stale) = (&flows[0].name, &flows[1].name);
    let firing = |alert: &str| (alert.to_string(), "firing".to_string());
    let started = std::time::Instant::now();
    eventually(
        Duration::from_secs(180),
        "FlowplaneFlowStale and FlowplaneDeadLetterAged firing for the stale flow",
        || async {
            let alerts = alerts_of(stale).await;
            (alerts.contains(&firing("FlowplaneFlowStale"))
                && alerts.contains(&firing("FlowplaneDeadLetterAged")))
            .then_some(())
        },
    )
    .await;
    println!(
        "FlowplaneFlowStale and FlowplaneDeadLetterAged firing {:.0}s after the new worker was scraped (rules: for 1m)",
        started.elapsed().as_secs_f64()
    );
    // By now the quiet flow's new worker has been scraped for over a minute: nothing is
    // pending or firing for it. The stale flow's data is also older than its contract's
    // warnAfter (30m) and errorAfter (2h): those fire too, and nothing else.
    assert_eq!(alerts_of(quiet).await, vec![], "alerts of the quiet flow");
    assert_eq!(
        alerts_of(stale).await,
        vec![
            firing("FlowplaneContractFreshnessBreached"),
            firing("FlowplaneContractFreshnessWarning"),
            firing("FlowplaneDeadLetterAged"),
            firing("FlowplaneFlowStale"),
        ],
        "alerts of the stale flow"
    );
    // Quiet indeed: read = delivered + dead-lettered, nothing twice.
    for (flow, dead) in flows.iter().zip([0, DEAD]) {
        let p = progress(&js, &flow.config.queue).await;
        assert_eq!(
            (p.read, p.delivered, p.dead_lettered),
            (RECORDS, RECORDS - dead, dead),
            "{}",
            flow.name
        );
    }
}

/// Records the target took: applied, or ignored as older than what it holds.
fn taken(received: &flowplane::sim::forecast::EntityReport) -> u64 {
    received.applied() + received.keys.values().map(|k| k.stale).sum::<u64>()
}

/// Lines of the seed whose plant is 1010, 1020 and 1030 (DC-NORTH, DC-SOUTH, DC-EAST): the
/// warehouses that keep sending. 1040 (DC-WEST) is line 3, which stops.
const SENDING: [&str; 3] = ["1000000/10", "1000000/20", "1000000/30"];
const LOCATIONS: [&str; 4] = ["DC-EAST", "DC-NORTH", "DC-SOUTH", "DC-WEST"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_warehouse_that_stops_fires_its_key_stale_alert_and_no_other() {
    let env = support::local_env();
    let nats_url = env.nats_url.clone();
    let sims = start_sims(ErpSeed {
        order_lines: RECORDS as u32,
        inventory: 0,
        returns: 0,
        bad_every: 0,
        page_size: 100,
    })
    .await;
    let js = jetstream(&nats_url).await;
    let name = unique_flow("prom-keys");
    let spec = flow_with(
        &name,
        "1m",
        "  observability: {freshnessBy: {field: location, maxValues: 10}}\n",
    );
    let mut config = sample::sales_order_flow(
        NAMESPACE,
        &name,
        &nats_url,
        &sims.erp_url,
        &sims.forecast_url,
    );
    // What the operator renders for this flow: the values of the code map that translates
    // `location` (tests/flow_controller.rs checks the rendering itself).
    config.freshness_by = Some(FreshnessByConfig {
        field: "location".into(),
        codes: sample::plant_to_location(false)
            .entries
            .into_values()
            .collect(),
        max_values: 10,
    });
    let _cleanup = QueueCleanup {
        url: nats_url.clone(),
        names: config.queue.clone(),
    };
    let mut watched = Watched::with_flow(spec, config);
    support::reload_prometheus_rules();
    watched.start_worker("w1");
    eventually(
        Duration::from_secs(30),
        "Prometheus loads the rule group",
        || async {
            let data = api("/api/v1/rules", &[]).await;
            data["groups"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g["name"] == format!("flowplane-{NAMESPACE}-{name}"))
                .then_some(())
        },
    )
    .await;
    settled(
        &js,
        &watched.config.queue,
        RECORDS,
        Duration::from_secs(120),
    )
    .await;

    // A rollout (every record settled, so none is in flight): the new worker has delivered
    // nothing of DC-WEST itself and must still report its last delivery, from the progress
    // record, or DC-WEST's alert could never fire.
    watched.start_worker("w2");
    let west = eventually(
        Duration::from_secs(30),
        "DC-WEST's last delivery in the progress record",
        || async {
            progress(&js, &watched.config.queue)
                .await
                .last_success_by
                .get("DC-WEST")
                .copied()
        },
    )
    .await;
    let port = watched.port;
    eventually(
        Duration::from_secs(60),
        &format!("Prometheus scrapes the new worker reporting DC-WEST's last delivery {west}"),
        || async {
            (scraped(
                "flowplane_worker_key_last_success_timestamp_seconds",
                &format!(r#"flow="{name}",key_field="location",key="DC-WEST""#),
                port,
            )
            .await
                == Some(west))
            .then_some(())
        },
    )
    .await;

    // Three warehouses keep sending (one change each every 2 s); DC-WEST sends nothing more.
    let erp = sims.erp.clone();
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let feeder = tokio::spawn(async move {
        let mut changes = 0u64;
        while !*stopped.borrow() {
            for key in SENDING {
                let quantity = json!({"RequestedQuantity": format!("{}", 1 + changes % 40)});
                erp.update(
                    flowplane::sim::erp::SALES_ORDER_LINES,
                    key,
                    quantity.as_object().unwrap().clone(),
                )
                .expect("seeded line");
                changes += 1;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = stopped.changed() => {}
            }
        }
        changes
    });

    let started = std::time::Instant::now();
    let firing = |key: &str| {
        (
            "FlowplaneKeyStale".to_string(),
            "firing".to_string(),
            key.to_string(),
        )
    };
    eventually(
        Duration::from_secs(240),
        "FlowplaneKeyStale firing for DC-WEST",
        || async {
            alerts_with_key(&name)
                .await
                .contains(&firing("DC-WEST"))
                .then_some(())
        },
    )
    .await;
    println!(
        "FlowplaneKeyStale{{key=DC-WEST}} firing {:.0}s after the new worker was scraped (SLA 1m, for: 1m)",
        started.elapsed().as_secs_f64()
    );
    // The others are fresh: nothing else pending or firing for the flow, not even
    // FlowplaneFlowStale (the flow as a whole delivers).
    assert_eq!(
        alerts_with_key(&name).await,
        vec![firing("DC-WEST")],
        "alerts of the flow"
    );
    for key in LOCATIONS {
        let age = jiff::Timestamp::now().as_second()
            - scraped(
                "flowplane_worker_key_last_success_timestamp_seconds",
                &format!(r#"flow="{name}",key="{key}""#),
                port,
            )
            .await
            .unwrap_or(0);
        println!("{key}: last delivery {age}s ago");
        assert_eq!(age > 60, key == "DC-WEST", "{key}: {age}s");
    }

    let _ = stop.send(true);
    let changes = feeder.await.unwrap();
    // Exact: every change the worker read was delivered once, nothing dead-lettered, nothing
    // twice at the target; and every line's last change arrived. (A line changed twice while
    // no worker held the extractor lease - the replaced worker's lease runs out first - is
    // read once, at its current state: OData serves records, not every change, so read is at
    // most RECORDS + changes.)
    let erp = sims.erp.clone();
    let forecast = sims.forecast.clone();
    let p = eventually(
        Duration::from_secs(60),
        "every line's last change delivered and the progress record caught up",
        || {
            let (js, names, erp, forecast) = (
                js.clone(),
                watched.config.queue.clone(),
                erp.clone(),
                forecast.clone(),
            );
            async move {
                let received = forecast.received("sales-order-lines");
                // Each sending line's current change (its version: the change time in ns)
                // is the last version applied to one of the target's keys.
                let arrived = SENDING.iter().all(|key| {
                    let line = erp
                        .get(flowplane::sim::erp::SALES_ORDER_LINES, key)
                        .unwrap();
                    let stamp: jiff::Timestamp = line["LastChangeDateTime"]
                        .as_str()
                        .unwrap()
                        .parse()
                        .unwrap();
                    let version = stamp.as_nanosecond() as u64;
                    received
                        .keys
                        .values()
                        .any(|k| k.applied_versions.last() == Some(&version))
                });
                let p = progress(&js, &names).await;
                (arrived && p.delivered == taken(&received)).then_some((p, received))
            }
        },
    )
    .await;
    let (p, received) = p;
    println!(
        "{changes} changes made, {} read, {} applied at the forecasting simulator",
        p.read,
        received.applied()
    );
    assert_eq!(
        (p.read, p.delivered, p.dead_lettered, received.duplicates()),
        (taken(&received), taken(&received), 0, 0),
        "read = delivered = what the target took, nothing twice, nothing dead-lettered: {p:?}"
    );
    assert!(p.read > RECORDS && p.read <= RECORDS + changes, "{p:?}");
    let mut keys: Vec<&str> = p.last_success_by.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, LOCATIONS, "one entry per location, no _other");
}
