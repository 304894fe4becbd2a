use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// flowplane: declarative ERP <-> demand-forecasting data flows on Kubernetes.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the CustomResourceDefinitions generated from the Rust types.
    Crdgen {
        /// Directory to write into.
        #[arg(long, default_value = "crds")]
        out: PathBuf,
    },
    /// Work with DataContract manifests offline (compatibility checks for CI).
    Contract(flowplane::contract::cli::ContractArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crdgen { out } => {
            for path in flowplane::crdgen::write(&out)? {
                println!("wrote {}", path.display());
            }
        }
        Command::Contract(args) => std::process::exit(flowplane::contract::cli::run(args)),
    }
    Ok(())
}
