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
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crdgen { out } => {
            for path in flowplane::crdgen::write(&out)? {
                println!("wrote {}", path.display());
            }
        }
    }
    Ok(())
}
