//! `flowplane dlq list|redrive`: a flow's dead letters from a terminal.

use clap::{Args, Subcommand};

use super::identity::NatsAccess;
use super::{QueueNames, list_dead_letters, redrive};

/// Which flow's queue a terminal command (`dlq`, `review`) works on.
#[derive(Args, Debug)]
pub struct FlowQueueArgs {
    /// NATS server of the flow.
    #[arg(
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        global = true
    )]
    pub nats_url: String,
    /// NATS credentials: the flow's own (`user.creds` of its `<flow>-nats` Secret) or an
    /// administrator's.
    #[arg(long, env = "NATS_CREDS", global = true)]
    pub nats_creds: Option<std::path::PathBuf>,
    /// CA bundle that signed the NATS server's certificate (TLS is then required).
    #[arg(long, env = "NATS_CA", global = true)]
    pub nats_ca: Option<std::path::PathBuf>,
    /// Namespace of the flow.
    #[arg(long, short = 'n', default_value = "default", global = true)]
    pub namespace: String,
    /// Name of the IntegrationFlow.
    #[arg(long, global = true)]
    pub flow: Option<String>,
}

impl FlowQueueArgs {
    /// Connects to NATS and names the flow's queue resources.
    pub async fn connect(&self) -> anyhow::Result<(async_nats::jetstream::Context, QueueNames)> {
        let flow = self
            .flow
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("--flow is required"))?;
        let names = QueueNames::for_flow(&self.namespace, flow);
        let client = NatsAccess {
            url: self.nats_url.clone(),
            creds_file: self.nats_creds.clone(),
            ca_file: self.nats_ca.clone(),
            // The flow's user may receive replies only under the flow's prefix.
            inbox_prefix: Some(names.inbox_prefix()),
        }
        .connect()
        .await?;
        Ok((async_nats::jetstream::new(client), names))
    }
}

/// `flowplane dlq ...`
#[derive(Args, Debug)]
pub struct DlqArgs {
    #[command(subcommand)]
    pub command: DlqCommand,
    #[command(flatten)]
    pub queue: FlowQueueArgs,
    /// Only dead letters with this reason (e.g. UnmappedCode).
    #[arg(long, global = true)]
    pub reason: Option<String>,
}

/// What to do with the dead letters.
#[derive(Subcommand, Debug)]
pub enum DlqCommand {
    /// Print the dead letters as JSON lines.
    List,
    /// Move the dead letters back to the flow's stream.
    Redrive,
}

/// Runs the command.
pub fn run(args: DlqArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let (js, names) = args.queue.connect().await?;
        match args.command {
            DlqCommand::List => {
                for letter in list_dead_letters(&js, &names, args.reason.as_deref()).await? {
                    println!("{}", serde_json::to_string(&letter)?);
                }
            }
            DlqCommand::Redrive => {
                let report = redrive(&js, &names, args.reason.as_deref()).await?;
                println!("{}", serde_json::to_string(&report)?);
            }
        }
        Ok(())
    })
}
