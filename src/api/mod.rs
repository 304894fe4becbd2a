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
    vec![
        ConnectorBinding::crd(),
        DataContract::crd(),
        IntegrationFlow::crd(),
    ]
}
