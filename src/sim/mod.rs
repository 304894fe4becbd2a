//! Simulators of the systems a flow connects, for tests, the demo and benchmarks: an ERP
//! speaking OData v4, a forecasting platform with a bulk-ingest REST API that also publishes
//! replenishment proposals and forecasts, and a supplier-collaboration portal. Each runs
//! in-process (`serve(listener, state)`) or as `flowplane sim erp|forecast|portal`.

pub mod batch;
pub mod erp;
pub mod erp_write;
pub mod faults;
pub mod forecast;
pub mod planning;
pub mod portal;

use clap::{Args, Subcommand};

/// `flowplane sim ...`
#[derive(Args, Debug)]
pub struct SimArgs {
    #[command(subcommand)]
    pub system: SimSystem,
}

/// Which simulator to run.
#[derive(Subcommand, Debug)]
pub enum SimSystem {
    /// OData v4 ERP with sales order lines, inventory and returns to read, and `$batch`
    /// upserts into other entity sets (e.g. A_PlndIndepRqmtItem), reported at
    /// /admin/received/{set}.
    Erp {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: String,
        /// Sales order lines to start with.
        #[arg(long, default_value_t = 1000)]
        order_lines: u32,
        /// Inventory positions to start with.
        #[arg(long, default_value_t = 100)]
        inventory: u32,
        /// Return lines to start with.
        #[arg(long, default_value_t = 50)]
        returns: u32,
        /// Every n-th order line is bad (unknown plant or invalid quantity); 0 for none.
        #[arg(long, default_value_t = 0)]
        bad_every: u32,
        /// Server page size.
        #[arg(long, default_value_t = 100)]
        page_size: usize,
    },
    /// Forecasting platform with a bulk upsert API and a report of what it received; it
    /// publishes replenishment proposals and a forecast.
    Forecast {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8082")]
        listen: String,
        /// Replenishment proposals published at the start (more by POST /admin/proposals).
        #[arg(long, default_value_t = 0)]
        proposals: u64,
    },
    /// Supplier-collaboration portal: takes forecasts and escalated replenishment changes
    /// (Bearer token required) and reports them at /admin/received/{collection}.
    Portal {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8083")]
        listen: String,
    },
}

/// Runs a simulator until interrupted.
pub fn run(args: SimArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        match args.system {
            SimSystem::Erp {
                listen,
                order_lines,
                inventory,
                returns,
                bad_every,
                page_size,
            } => {
                let state = erp::ErpState::new(&erp::ErpSeed {
                    order_lines,
                    inventory,
                    returns,
                    bad_every,
                    page_size,
                });
                let listener = tokio::net::TcpListener::bind(&listen).await?;
                eprintln!(
                    "ERP simulator (OData v4) on http://{}/odata",
                    listener.local_addr()?
                );
                tokio::select! {
                    served = erp::serve(listener, state) => served?,
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            SimSystem::Forecast { listen, proposals } => {
                let listener = tokio::net::TcpListener::bind(&listen).await?;
                eprintln!(
                    "forecast simulator on http://{}/api/v1",
                    listener.local_addr()?
                );
                let state = forecast::ForecastState::new();
                state.proposals.publish(proposals);
                tokio::select! {
                    served = forecast::serve(listener, state) => served?,
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            SimSystem::Portal { listen } => {
                let listener = tokio::net::TcpListener::bind(&listen).await?;
                eprintln!(
                    "supplier portal simulator on http://{}",
                    listener.local_addr()?
                );
                tokio::select! {
                    served = portal::serve(listener, portal::PortalState::new()) => served?,
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
        }
        Ok(())
    })
}
