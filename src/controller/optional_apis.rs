//! APIs the operator uses when they are installed: KEDA's ScaledObject and the Prometheus
//! Operator's PrometheusRule and ServiceMonitor. Which ones exist decides which children a
//! flow gets; a watch on their CRDs re-reconciles every flow when that changes.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::Api;

pub const KEDA_SCALED_OBJECTS: &str = "scaledobjects.keda.sh";
pub const PROMETHEUS_RULES: &str = "prometheusrules.monitoring.coreos.com";
pub const SERVICE_MONITORS: &str = "servicemonitors.monitoring.coreos.com";

/// Which optional APIs are installed right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Installed {
    pub keda: bool,
    pub prometheus_operator: bool,
}

pub struct OptionalApis {
    crds: Api<CustomResourceDefinition>,
    current: std::sync::RwLock<Installed>,
}

impl OptionalApis {
    pub fn new(client: Client) -> Self {
        OptionalApis {
            crds: Api::all(client),
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
        })
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
