//! A realistic flow for tests, benchmarks and the demo: S/4HANA-style sales order lines from
//! the ERP simulator into the forecasting simulator, with a plant -> location code map. The
//! simulator's entity set and change field are written out, not imported: nothing outside
//! `sim` depends on a simulator, and the end-to-end tests fail if the two drift apart.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::api::common::{CircuitBreaker, RetryPolicy};
use crate::api::connector_binding::{AuthType, Protocol, System};
use crate::api::data_contract::{QualityRule, RecordSchema};
use crate::api::integration_flow::{OnUnmapped, SyncMode, WriteMode};
use crate::queue::DeliveryConfig;
use crate::queue::QueueNames;
use crate::worker_config::{
    CodeTable, ContractConfig, EndpointConfig, FieldMappingConfig, MappingConfig, ResilienceConfig,
    SourceConfig, TargetConfig, WorkerConfig,
};

/// The canonical sales-order-line contract (1.1.0 of the examples, plus location and source).
pub fn contract() -> ContractConfig {
    let schema: RecordSchema = serde_json::from_value(json!({
        "primaryKey": ["salesOrder", "salesOrderItem"],
        "additionalFields": "Ignore",
        "fields": [
            {"name": "salesOrder", "type": "String", "required": true, "maxLength": 10, "pattern": "^[0-9]{1,10}$"},
            {"name": "salesOrderItem", "type": "String", "required": true, "maxLength": 6, "pattern": "^[0-9]{1,6}$"},
            {"name": "sku", "type": "String", "required": true, "maxLength": 40},
            {"name": "location", "type": "String", "required": true, "maxLength": 20},
            {"name": "orderedQuantity", "type": "Int", "required": true, "minimum": 0.0},
            {"name": "unit", "type": "Enum", "values": ["EA", "PC", "CS"], "default": "EA"},
            {"name": "netAmount", "type": "Decimal", "nullable": true, "precision": 15, "scale": 2},
            {"name": "currency", "type": "String", "pattern": "^[A-Z]{3}$"},
            {"name": "itemCategory", "type": "Enum", "values": ["Standard", "FreeOfCharge", "Return"], "default": "Standard"},
            {"name": "customer", "type": "String", "maxLength": 10},
            {"name": "orderDate", "type": "Date", "required": true},
            {"name": "changedAt", "type": "Timestamp", "required": true},
            {"name": "source", "type": "String"}
        ]
    }))
    .unwrap_or_else(|e| unreachable!("the sample schema is valid: {e}"));
    let quality: Vec<QualityRule> = serde_json::from_value(json!([
        {"name": "sane-quantity", "check": "Range", "field": "orderedQuantity", "min": 0.0, "max": 100000.0, "action": "DeadLetter"}
    ]))
    .unwrap_or_else(|e| unreachable!("the sample rules are valid: {e}"));
    ContractConfig {
        name: "sales-order-lines".into(),
        version: "1.1.0".into(),
        schema_hash: crate::contract::schema_hash(&schema),
        schema,
        quality,
    }
}

fn field(to: &str, from: &str, code_map: Option<&str>) -> FieldMappingConfig {
    FieldMappingConfig {
        to: to.into(),
        from: Some(from.into()),
        value: None,
        code_map: code_map.map(str::to_string),
    }
}

/// The plant -> location table, optionally knowing the simulator's unknown plant 9999.
pub fn plant_to_location(knows_9999: bool) -> CodeTable {
    let mut entries: BTreeMap<String, String> = [
        ("1010", "DC-NORTH"),
        ("1020", "DC-SOUTH"),
        ("1030", "DC-EAST"),
        ("1040", "DC-WEST"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    if knows_9999 {
        entries.insert("9999".into(), "DC-OVERFLOW".into());
    }
    CodeTable {
        on_unmapped: OnUnmapped::DeadLetter,
        default: None,
        entries,
    }
}

/// Mapping from the ERP's A_SalesOrderItem to the contract.
pub fn mapping() -> MappingConfig {
    let category = CodeTable {
        on_unmapped: OnUnmapped::Default,
        default: Some("Standard".into()),
        entries: [
            ("TAN", "Standard"),
            ("TANN", "FreeOfCharge"),
            ("REN", "Return"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    };
    MappingConfig {
        fields: vec![
            field("salesOrder", "SalesOrder", None),
            field("salesOrderItem", "SalesOrderItem", None),
            field("sku", "Material", None),
            field("location", "Plant", Some("plant-to-location")),
            field("orderedQuantity", "RequestedQuantity", None),
            field("unit", "RequestedQuantityUnit", None),
            field("netAmount", "NetAmount", None),
            field("currency", "TransactionCurrency", None),
            field(
                "itemCategory",
                "SalesOrderItemCategory",
                Some("item-category"),
            ),
            field("customer", "to_SalesOrder.SoldToParty", None),
            field("orderDate", "to_SalesOrder.CreationDate", None),
            field("changedAt", "LastChangeDateTime", None),
            FieldMappingConfig {
                to: "source".into(),
                from: None,
                value: Some("s4".into()),
                code_map: None,
            },
        ],
        code_maps: [
            ("plant-to-location".to_string(), plant_to_location(false)),
            ("item-category".to_string(), category),
        ]
        .into_iter()
        .collect(),
    }
}

/// A sales order line as the ERP simulator serves it.
pub fn order_line(plant: &str, quantity: &str) -> Value {
    json!({
        "@odata.etag": "W/\"20240301120000\"",
        "SalesOrder": "1000001",
        "SalesOrderItem": "10",
        "Material": "MAT-00017",
        "Plant": plant,
        "RequestedQuantity": quantity,
        "RequestedQuantityUnit": "EA",
        "NetAmount": "123.45",
        "TransactionCurrency": "EUR",
        "SalesOrderItemCategory": "TAN",
        "LastChangeDateTime": "2024-03-01T12:00:00.001Z",
        "to_SalesOrder": {"SoldToParty": "C000017", "CreationDate": "2024-03-01"}
    })
}

/// An endpoint with quick resilience settings (tests should not wait minutes).
pub fn endpoint(binding: &str, system: System, protocol: Protocol, url: &str) -> EndpointConfig {
    EndpointConfig {
        binding: binding.into(),
        system,
        protocol,
        url: url.into(),
        ca_file: None,
        auth: AuthType::None,
        secret_dir: None,
        token_url: None,
        scopes: vec![],
        audience: None,
        client_authentication: Default::default(),
        rate_limit: None,
        ssh_host_keys: vec![],
        resilience: ResilienceConfig {
            timeout: "10s".into(),
            retry: RetryPolicy {
                max_attempts: 3,
                initial_backoff: "50ms".into(),
                max_backoff: "500ms".into(),
            },
            circuit_breaker: CircuitBreaker {
                failure_threshold: 5,
                open_for: "1s".into(),
            },
        },
    }
}

/// The whole flow: ERP simulator at `erp_url` -> forecast simulator at `forecast_url`.
pub fn sales_order_flow(
    namespace: &str,
    flow: &str,
    nats_url: &str,
    erp_url: &str,
    forecast_url: &str,
) -> WorkerConfig {
    WorkerConfig {
        format: crate::worker_config::FORMAT,
        namespace: namespace.into(),
        flow: flow.into(),
        nats_url: nats_url.into(),
        nats_creds_file: None,
        nats_ca_file: None,
        queue: QueueNames::for_flow(namespace, flow),
        source: SourceConfig {
            endpoint: endpoint("erp", System::Erp, Protocol::OData, erp_url),
            entity: "A_SalesOrderItem".into(),
            sync_mode: SyncMode::Incremental,
            cursor_field: Some("LastChangeDateTime".into()),
            select: vec![],
            poll_interval: "200ms".into(),
            rest: None,
        },
        target: TargetConfig {
            endpoint: endpoint(
                "forecasting",
                System::Forecasting,
                Protocol::Rest,
                forecast_url,
            ),
            entity: "sales-order-lines".into(),
            write_mode: WriteMode::Upsert,
            batch_size: 200,
            // No REST settings: the earlier releases' route, the forecasting simulator's bulk
            // upsert (what a worker.json of those releases asks for; tests/rest_interop.rs
            // names the route explicitly).
            rest: None,
            files: None,
        },
        contract: contract(),
        mapping: mapping(),
        delivery: DeliveryConfig {
            max_deliver: 50,
            ack_wait: "5s".into(),
            retry: RetryPolicy {
                max_attempts: 50,
                initial_backoff: "100ms".into(),
                max_backoff: "1s".into(),
            },
            max_ack_pending: 2000,
            retention: "168h".into(),
            dead_letter_retention: "336h".into(),
            dedupe_window: "2m".into(),
            replicas: 1,
            max_bytes: 1 << 30,
            discard: Default::default(),
            placement: None,
        },
        approval: None,
        limits: Default::default(),
        freshness_by: None,
    }
}
