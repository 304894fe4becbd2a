//! APIs the operator uses when they are installed: KEDA's ScaledObject, the Prometheus
//! Operator's PrometheusRule and ServiceMonitor, and the external metrics API an HPA reads.
//! Which ones exist decides which children a flow gets; a watch on the CRDs and a periodic
//! probe of the metrics API re-reconcile every flow when that changes.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::Api;

pub const KEDA_SCALED_OBJECTS: &str = "scaledobjects.keda.sh";
pub const PROMETHEUS_RULES: &str = "prometheusrules.monitoring.coreos.com";
pub const SERVICE_MONITORS: &str = "servicemonitors.monitoring.coreos.com";
/// The API an HPA's External metrics are read from (a metrics adapter, or KEDA's metrics
/// server, registers it as an APIService).
pub const EXTERNAL_METRICS: &str = "external.metrics.k8s.io/v1beta1";

/// Which optional APIs are installed right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Installed {
    pub keda: bool,
    pub prometheus_operator: bool,
    /// `external.metrics.k8s.io` is served, not merely registered.
    pub external_metrics: bool,
}

pub struct OptionalApis {
    client: Client,
    crds: Api<CustomResourceDefinition>,
    current: std::sync::RwLock<Installed>,
}

impl OptionalApis {
    pub fn new(client: Client) -> Self {
        OptionalApis {
            crds: Api::all(client.clone()),
            client,
            current: Default::default(),
        }
    }

    /// The last probed state; reconciles read this instead of asking the apiserver each time.
    pub fn installed(&self) -> Installed {
        *self
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Probes again; true when the answer changed (every flow must then be reconciled).
    pub async fn refresh(&self) -> Result<bool, kube::Error> {
        let now = self.probe().await?;
        let mut current = self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let changed = *current != now;
        *current = now;
        Ok(changed)
    }

    /// Asks the apiserver which optional CRDs are established.
    async fn probe(&self) -> Result<Installed, kube::Error> {
        Ok(Installed {
            keda: self.established(KEDA_SCALED_OBJECTS).await?,
            prometheus_operator: self.established(PROMETHEUS_RULES).await?
                && self.established(SERVICE_MONITORS).await?,
            external_metrics: self.served(EXTERNAL_METRICS).await?,
        })
    }

    /// API discovery of one group version: one GET. An APIService whose backend is missing or
    /// down answers 503, one not registered 404; both mean an HPA could not read it.
    async fn served(&self, group_version: &str) -> Result<bool, kube::Error> {
        match self.client.list_api_group_resources(group_version).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if matches!(status.code, 404 | 503) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn established(&self, name: &str) -> Result<bool, kube::Error> {
        Ok(self.crds.get_opt(name).await?.is_some_and(|crd| {
            crd.status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        }))
    }
}
