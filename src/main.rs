use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// flowplane: declarative ERP <-> demand-forecasting data flows on Kubernetes.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start-up and consumed at once: the size of the largest variant (the
// operator's settings) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Write the CustomResourceDefinitions generated from the Rust types, and the API reference
    /// generated from them.
    Crdgen {
        /// Directory to write into.
        #[arg(long, default_value = "crds")]
        out: PathBuf,
        /// Where to write the API reference (markdown); `-` for none.
        #[arg(long, default_value = flowplane::crdgen::API_REFERENCE)]
        api_reference: PathBuf,
    },
    /// Run the operator (reconciles IntegrationFlows, DataContracts and ConnectorBindings).
    Controller(flowplane::controller::cli::ControllerArgs),
    /// Print the objects the operator would apply for the given manifests (offline).
    Render(flowplane::render::cli::RenderArgs),
    /// Work with DataContract manifests offline (compatibility checks for CI).
    Contract(flowplane::contract::cli::ContractArgs),
    /// Run a simulated ERP (OData v4) or forecasting platform, for tests and the demo.
    Sim(flowplane::sim::SimArgs),
    /// Run the sync worker of one flow (the data plane).
    Worker(flowplane::worker::WorkerArgs),
    /// List or redrive a flow's dead letters.
    Dlq(flowplane::queue::cli::DlqArgs),
    /// Replay a flow's records from a time (writes the flowplane.io/replay annotation).
    Replay(flowplane::controller::operations_cli::ReplayArgs),
    /// Re-read a window of a flow's source without moving its cursor (flowplane.io/backfill).
    Backfill(flowplane::controller::operations_cli::BackfillArgs),
    /// Set a flow's source cursor to an explicit value (flowplane.io/cursor).
    Cursor(flowplane::controller::operations_cli::CursorArgs),
    /// List, approve or reject a flow's forecast deltas parked for review.
    Review(flowplane::worker::approval::ReviewArgs),
    /// Make the NATS operator, accounts and signing key of an installation, and the
    /// nats-server auth configuration (kept when the directory already holds them).
    NatsBootstrap(flowplane::queue::identity::BootstrapArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crdgen { out, api_reference } => {
            for path in flowplane::crdgen::write(&out)? {
                println!("wrote {}", path.display());
            }
            if api_reference.as_os_str() != "-" {
                let path = flowplane::crdgen::write_api_reference(&api_reference)?;
                println!("wrote {}", path.display());
            }
        }
        Command::Controller(args) => flowplane::controller::cli::main(args)?,
        Command::Render(args) => print!("{}", flowplane::render::cli::render(&args)?),
        Command::Contract(args) => std::process::exit(flowplane::contract::cli::run(args)),
        Command::Sim(args) => flowplane::sim::run(args)?,
        Command::Worker(args) => flowplane::worker::run_cli(args)?,
        Command::Dlq(args) => flowplane::queue::cli::run(args)?,
        Command::Replay(args) => flowplane::controller::operations_cli::run(
            flowplane::controller::operations_cli::Request::Replay(args),
        )?,
        Command::Backfill(args) => flowplane::controller::operations_cli::run(
            flowplane::controller::operations_cli::Request::Backfill(args),
        )?,
        Command::Cursor(args) => flowplane::controller::operations_cli::run(
            flowplane::controller::operations_cli::Request::Cursor(args),
        )?,
        Command::Review(args) => flowplane::worker::approval::run_cli(args)?,
        Command::NatsBootstrap(args) => {
            flowplane::queue::identity::bootstrap(&args.dir)?;
            println!("{}", args.dir.display());
        }
    }
    Ok(())
}
