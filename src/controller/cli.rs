//! `flowplane controller`: process setup around [`super::run`].

use kube::Client;

use super::{Context, OperatorConfig};

pub fn main(config: OperatorConfig) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let client = Client::try_default().await?;
            let ctx = Context::new(client, config).await?;
            tracing::info!(region = ?ctx.config.region, "flowplane operator starting");
            super::run(ctx).await
        })
}
