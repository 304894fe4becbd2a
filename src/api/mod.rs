//! The `flowplane.io/v1alpha1` API: three namespaced kinds and the types they share.
// kube's derive repeats `type_ = "string"` across printcolumns, which clippy mistakes for
// duplicated attributes.
#![allow(clippy::duplicated_attributes)]

pub mod common;
pub mod connector_binding;
pub mod data_contract;
pub mod integration_flow;

pub use connector_binding::{ConnectorBinding, ConnectorBindingSpec, ConnectorBindingStatus};
pub use data_contract::{DataContract, DataContractSpec, DataContractStatus};
pub use integration_flow::{IntegrationFlow, IntegrationFlowSpec, IntegrationFlowStatus};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// Every CRD of the API, in the order they are installed.
pub fn crds() -> Vec<CustomResourceDefinition> {
    [
        ConnectorBinding::crd(),
        DataContract::crd(),
        IntegrationFlow::crd(),
    ]
    .into_iter()
    .map(without_unsigned_formats)
    .map(with_unjudged_status)
    .collect()
}

/// An object the operator has not judged yet reads `status: {observedGeneration: 0}` (a
/// structural default, applied by the API server on every read until the operator writes a
/// status), so kstatus, Argo CD and `kubectl wait` see generation 1 not yet observed, instead of
/// an object without status, which kstatus takes for Current.
fn with_unjudged_status(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    for version in &mut crd.spec.versions {
        let status = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            .and_then(|s| s.properties.as_mut())
            .and_then(|p| p.get_mut("status"));
        if let Some(status) = status {
            status.default = Some(
                k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSON(
                    serde_json::json!({"observedGeneration": 0}),
                ),
            );
        }
    }
    crd
}

/// schemars marks unsigned integers `format: uint32`, which the apiserver does not know and
/// warns about on every apply; the ranges already say what the format would.
fn without_unsigned_formats(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    fn strip(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                if map
                    .get("format")
                    .and_then(|f| f.as_str())
                    .is_some_and(|f| f.starts_with("uint"))
                {
                    map.remove("format");
                }
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let Ok(mut value) = serde_json::to_value(&crd) else {
        return crd;
    };
    strip(&mut value);
    serde_json::from_value(value).unwrap_or(crd)
}
