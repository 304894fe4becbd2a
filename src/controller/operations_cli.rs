//! `flowplane replay`, `flowplane backfill` and `flowplane cursor set`: write the flow's
//! operation annotation (or print the merge patch, `--print`) after the checks the operator
//! makes, so a request that would be refused is refused at the terminal with the same reason.

use std::time::Duration;

use clap::{Args, Subcommand};
use jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};

use super::integration_flow::operations::{
    BACKFILL_ANNOTATION, CURSOR_ANNOTATION, REPLAY_ANNOTATION, Refusal, SourceFacts,
    check_backfill, check_cursor, check_replay,
};
use crate::api::IntegrationFlow;
use crate::api::common::parse_duration;
use crate::api::integration_flow::DEFAULT_MAX_BACKFILL_WINDOW;

/// The flow a request is for.
#[derive(Args, Debug)]
pub struct FlowRef {
    /// Namespace of the flow.
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
    /// Name of the IntegrationFlow.
    #[arg(long)]
    pub flow: String,
    /// Request id (one run per id); a new one from the time now when unset.
    #[arg(long)]
    pub id: Option<String>,
    /// Print the merge patch instead of applying it (for `kubectl patch --type merge` or Git);
    /// only the request's own form is checked then, not the flow's retention or cursor.
    #[arg(long)]
    pub print: bool,
}

/// `flowplane replay`
#[derive(Args, Debug)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub flow: FlowRef,
    /// Replay the records the flow's stream stored at or after this time (RFC 3339).
    #[arg(long)]
    pub from: String,
}

/// `flowplane backfill`
#[derive(Args, Debug)]
pub struct BackfillArgs {
    #[command(flatten)]
    pub flow: FlowRef,
    /// Window start, inclusive (RFC 3339).
    #[arg(long)]
    pub from: String,
    /// Window end, exclusive (RFC 3339).
    #[arg(long)]
    pub to: String,
}

/// `flowplane cursor`
#[derive(Args, Debug)]
pub struct CursorArgs {
    #[command(subcommand)]
    pub command: CursorCommand,
}

/// What to do with the cursor.
#[derive(Subcommand, Debug)]
pub enum CursorCommand {
    /// Set the source cursor to an explicit value (a value of source.cursorField).
    Set {
        #[command(flatten)]
        flow: FlowRef,
        /// The cursor value.
        value: String,
    },
}

/// One of the three requests.
pub enum Request {
    Replay(ReplayArgs),
    Backfill(BackfillArgs),
    Cursor(CursorArgs),
}

fn default_id(prefix: &str) -> String {
    format!("{prefix}-{}", Timestamp::now().as_second())
}

fn refused(annotation: &str, refusal: Refusal) -> anyhow::Error {
    anyhow::anyhow!(
        "{annotation} refused ({}): {}",
        refusal.reason,
        refusal.message
    )
}

/// Checks the request against `flow` (or against nothing but its form when `flow` is None)
/// and returns the annotation and its value.
fn annotation(
    request: &Request,
    flow: Option<&IntegrationFlow>,
    now: Timestamp,
) -> anyhow::Result<(&'static str, String)> {
    let cursor = flow
        .and_then(|f| f.status.as_ref())
        .and_then(|s| s.sync.as_ref())
        .and_then(|s| s.cursor.clone());
    let facts = |flow: &IntegrationFlow| SourceFacts {
        sync_mode: flow.spec.source.sync_mode,
        has_cursor_field: flow.spec.source.cursor_field.is_some(),
        // The binding's protocol is the operator's to check.
        protocol: None,
        cursor: cursor.as_deref(),
        cursor_is_time: None,
    };
    match request {
        Request::Replay(args) => {
            let value = format!(
                "id={},from={}",
                args.flow.id.clone().unwrap_or_else(|| default_id("replay")),
                args.from
            );
            let retention = flow
                .and_then(|f| parse_duration(&f.spec.delivery.retention).ok())
                .unwrap_or(Duration::MAX);
            check_replay(&value, now, retention).map_err(|r| refused(REPLAY_ANNOTATION, r))?;
            Ok((REPLAY_ANNOTATION, value))
        }
        Request::Backfill(args) => {
            let value = format!(
                "id={},from={},to={}",
                args.flow
                    .id
                    .clone()
                    .unwrap_or_else(|| default_id("backfill")),
                args.from,
                args.to
            );
            if let Some(flow) = flow {
                let max = flow
                    .spec
                    .source
                    .max_backfill_window
                    .as_deref()
                    .unwrap_or(DEFAULT_MAX_BACKFILL_WINDOW);
                let max = parse_duration(max).unwrap_or(Duration::ZERO);
                let facts = SourceFacts {
                    protocol: Some(crate::api::connector_binding::Protocol::OData),
                    ..facts(flow)
                };
                check_backfill(&value, now, max, facts)
                    .map_err(|r| refused(BACKFILL_ANNOTATION, r))?;
            }
            Ok((BACKFILL_ANNOTATION, value))
        }
        Request::Cursor(CursorArgs {
            command: CursorCommand::Set { flow: args, value },
        }) => {
            let value = format!(
                "id={},value={value}",
                args.id.clone().unwrap_or_else(|| default_id("cursor"))
            );
            if let Some(flow) = flow {
                check_cursor(&value, now, facts(flow))
                    .map_err(|r| refused(CURSOR_ANNOTATION, r))?;
            }
            Ok((CURSOR_ANNOTATION, value))
        }
    }
}

fn flow_ref(request: &Request) -> &FlowRef {
    match request {
        Request::Replay(args) => &args.flow,
        Request::Backfill(args) => &args.flow,
        Request::Cursor(CursorArgs {
            command: CursorCommand::Set { flow, .. },
        }) => flow,
    }
}

/// Runs the command: prints the patch, or applies it and prints the annotation written.
pub fn run(request: Request) -> anyhow::Result<()> {
    let target = flow_ref(&request);
    if target.print {
        let (key, value) = annotation(&request, None, Timestamp::now())?;
        let patch = serde_json::json!({"metadata": {"annotations": {key: value}}});
        println!("{patch}");
        return Ok(());
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let client = kube::Client::try_default().await?;
        let flows: Api<IntegrationFlow> = Api::namespaced(client, &target.namespace);
        let flow = flows.get(&target.flow).await?;
        let (key, value) = annotation(&request, Some(&flow), Timestamp::now())?;
        let patch = serde_json::json!({"metadata": {"annotations": {key: value}}});
        flows
            .patch(&target.flow, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        println!("{key}={value}");
        println!(
            "follow it: kubectl -n {} get iflow {} -o jsonpath='{{.status.{}}}'",
            target.namespace,
            target.flow,
            match key {
                REPLAY_ANNOTATION => "replay",
                BACKFILL_ANNOTATION => "backfill",
                _ => "cursorChange",
            }
        );
        anyhow::Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow_ref(print: bool) -> FlowRef {
        FlowRef {
            namespace: "n".into(),
            flow: "orders".into(),
            id: Some("r1".into()),
            print,
        }
    }

    #[test]
    fn the_cli_writes_the_annotation_the_operator_reads_and_refuses_what_it_refuses() {
        let now: Timestamp = "2026-11-30T12:00:00Z".parse().unwrap();
        let replay = Request::Replay(ReplayArgs {
            flow: flow_ref(true),
            from: "2026-11-30T08:00:00Z".into(),
        });
        assert_eq!(
            annotation(&replay, None, now).unwrap(),
            (
                REPLAY_ANNOTATION,
                "id=r1,from=2026-11-30T08:00:00Z".to_string()
            )
        );
        let future = Request::Replay(ReplayArgs {
            flow: flow_ref(true),
            from: "2999-01-01T00:00:00Z".into(),
        });
        let error = annotation(&future, None, now).unwrap_err().to_string();
        assert!(error.contains("(ReplayFromInFuture)"), "{error}");
        let cursor = Request::Cursor(CursorArgs {
            command: CursorCommand::Set {
                flow: flow_ref(true),
                value: "2024-01-01T00:00:00Z".into(),
            },
        });
        assert_eq!(
            annotation(&cursor, None, now).unwrap().1,
            "id=r1,value=2024-01-01T00:00:00Z"
        );
    }
}
