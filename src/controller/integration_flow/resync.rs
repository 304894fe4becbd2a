//! The periodic re-reconcile of settled flows (it re-evaluates the Fresh condition), paced so
//! that its total rate stays within a budget whatever the number of flows, and held back while
//! event-driven passes keep the controller busy.
//!
//! Why not `Action::requeue`: kube-runtime's scheduler (5.0) moves every request that falls due
//! while all reconcile slots are busy into a `HashSet` and hands them out in that set's hash
//! order, not in the order they fell due. With thousands of resyncs due at once, a new flow's
//! first pass waits behind them, and a flow whose hash sorts late can wait for as long as the
//! set stays non-empty. Here resyncs wait in our own queue, in due order, and reach kube's
//! scheduler only while few reconciles are running, so its pending set holds events only.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use futures::Stream;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::api::IntegrationFlow;

/// How long a resync handed to kube's scheduler counts as outstanding without its pass having
/// started (a flow deleted meanwhile never starts one).
const OUTSTANDING_EXPIRY: Duration = Duration::from_secs(60);

/// The time until a flow's next resync: at least `minimum`, and long enough that `flows` flows
/// resynced this often ask for at most `budget_per_second` passes a second; stretched by up to
/// half by `jitter` (0 to 1) so that flows reconciled together do not fall due together.
pub fn period(minimum: Duration, flows: usize, budget_per_second: f64, jitter: f64) -> Duration {
    let spread = if budget_per_second > 0.0 {
        Duration::from_secs_f64(flows as f64 / budget_per_second)
    } else {
        Duration::ZERO
    };
    minimum
        .max(spread)
        .mul_f64(1.0 + jitter.clamp(0.0, 1.0) / 2.0)
}

/// The resyncs of one controller: when each flow falls due, and how many passes are running.
pub struct Resyncs {
    state: Mutex<State>,
    changed: Notify,
    /// Resyncs (and the reconciles already running) allowed at once: the other slots stay free
    /// for event-driven passes.
    slots: usize,
}

#[derive(Default)]
struct State {
    /// Due time (with a sequence number, so equal times stay distinct) -> flow.
    due: BTreeMap<(Instant, u64), ObjectRef<IntegrationFlow>>,
    by_flow: HashMap<ObjectRef<IntegrationFlow>, (Instant, u64)>,
    /// Resyncs handed to kube's scheduler whose pass has not started, and since when.
    outstanding: HashMap<ObjectRef<IntegrationFlow>, Instant>,
    running: usize,
    sequence: u64,
}

/// What the resync stream does next.
enum Next {
    Emit(ObjectRef<IntegrationFlow>),
    SleepUntil(Instant),
    Wait,
}

/// Marks one reconcile as running until dropped.
pub struct Running<'a>(&'a Resyncs);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.state.lock().expect("resync state").running -= 1;
        self.0.changed.notify_one();
    }
}

impl Resyncs {
    pub fn new(slots: usize) -> Self {
        Resyncs {
            state: Mutex::default(),
            changed: Notify::new(),
            slots,
        }
    }

    /// Schedules `flow`'s next resync `after` from now, replacing the one it had.
    pub fn after(&self, flow: ObjectRef<IntegrationFlow>, after: Duration) {
        let mut state = self.state.lock().expect("resync state");
        state.sequence += 1;
        let key = (Instant::now() + after, state.sequence);
        if let Some(old) = state.by_flow.insert(flow.clone(), key) {
            state.due.remove(&old);
        }
        state.due.insert(key, flow);
        drop(state);
        self.changed.notify_one();
    }

    /// Marks a pass of `flow` (resync or not) as started; it counts as running until the guard
    /// is dropped.
    pub fn started(&self, flow: &ObjectRef<IntegrationFlow>) -> Running<'_> {
        let mut state = self.state.lock().expect("resync state");
        state.outstanding.remove(flow);
        state.running += 1;
        Running(self)
    }

    fn next(&self, flows: &Store<IntegrationFlow>) -> Next {
        let mut state = self.state.lock().expect("resync state");
        let now = Instant::now();
        state
            .outstanding
            .retain(|_, since| now.duration_since(*since) < OUTSTANDING_EXPIRY);
        loop {
            if state.running + state.outstanding.len() >= self.slots {
                return Next::Wait;
            }
            let Some((&key, _)) = state.due.first_key_value() else {
                return Next::Wait;
            };
            if key.0 > now {
                return Next::SleepUntil(key.0);
            }
            let flow = state.due.remove(&key).expect("first key");
            state.by_flow.remove(&flow);
            // A flow deleted since its last pass has nothing to re-evaluate.
            if flows.get(&flow).is_some() {
                state.outstanding.insert(flow.clone(), now);
                return Next::Emit(flow);
            }
        }
    }

    /// The flows whose resync is due, in due order, released only while fewer than `slots`
    /// reconciles run or wait to start.
    pub fn due(
        self: std::sync::Arc<Self>,
        flows: Store<IntegrationFlow>,
    ) -> impl Stream<Item = ObjectRef<IntegrationFlow>> + Send + 'static {
        futures::stream::unfold((self, flows), |(resyncs, flows)| async move {
            loop {
                match resyncs.next(&flows) {
                    Next::Emit(flow) => return Some((flow, (resyncs, flows))),
                    Next::SleepUntil(at) => {
                        tokio::select! {
                            () = tokio::time::sleep_until(at) => {},
                            () = resyncs.changed.notified() => {},
                        }
                    }
                    Next::Wait => resyncs.changed.notified().await,
                }
            }
        })
    }
}

/// The number of flows this process watches, across its watch scopes (the resync budget is
/// the whole operator's).
#[derive(Default)]
pub struct WatchedFlows {
    scopes: Mutex<Vec<Store<IntegrationFlow>>>,
}

impl WatchedFlows {
    pub fn add(&self, flows: Store<IntegrationFlow>) {
        self.scopes.lock().expect("watched flows").push(flows);
    }

    pub fn count(&self) -> usize {
        let scopes = self.scopes.lock().expect("watched flows");
        scopes.iter().map(Store::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn few_flows_resync_at_the_minimum() {
        assert_eq!(period(MINUTE, 100, 10.0, 0.0), MINUTE);
        assert_eq!(period(MINUTE, 600, 10.0, 0.0), MINUTE);
    }

    #[test]
    fn many_flows_stretch_the_period_to_the_budget() {
        assert_eq!(period(MINUTE, 10_000, 10.0, 0.0), Duration::from_secs(1000));
        assert_eq!(period(MINUTE, 1_000, 5.0, 0.0), Duration::from_secs(200));
    }

    #[test]
    fn jitter_stretches_by_up_to_half() {
        assert_eq!(period(MINUTE, 10, 10.0, 1.0), Duration::from_secs(90));
        assert_eq!(period(MINUTE, 10_000, 10.0, 0.5), Duration::from_secs(1250));
        // Out-of-range jitter is clamped, never shortens the period.
        assert_eq!(period(MINUTE, 10, 10.0, -3.0), MINUTE);
        assert_eq!(period(MINUTE, 10, 10.0, 7.0), Duration::from_secs(90));
    }

    #[test]
    fn no_budget_means_the_minimum() {
        assert_eq!(period(MINUTE, 10_000, 0.0, 0.0), MINUTE);
    }

    fn stored(names: &[&str]) -> Store<IntegrationFlow> {
        let (store, mut writer) = kube::runtime::reflector::store();
        for name in names {
            let flow: IntegrationFlow = serde_yaml::from_str(&format!(
                "apiVersion: flowplane.io/v1alpha1\nkind: IntegrationFlow\nmetadata: {{name: {name}, namespace: n}}\nspec:\n  source: {{bindingRef: a, entity: x, syncMode: FullRefresh}}\n  target: {{bindingRef: b, entity: y}}\n  contract: {{name: c}}\n"
            ))
            .unwrap();
            writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(flow));
        }
        store
    }

    fn named(name: &str) -> ObjectRef<IntegrationFlow> {
        ObjectRef::new(name).within("n")
    }

    #[tokio::test(start_paused = true)]
    async fn resyncs_come_in_due_order_skip_deleted_flows_and_wait_for_free_slots() {
        use futures::{FutureExt, StreamExt};
        let resyncs = std::sync::Arc::new(Resyncs::new(1));
        resyncs.after(named("late"), Duration::from_secs(20));
        resyncs.after(named("early"), Duration::from_secs(10));
        resyncs.after(named("deleted"), Duration::from_secs(5));
        // Rescheduling replaces the earlier due time.
        resyncs.after(named("late"), Duration::from_secs(30));
        let mut due = Box::pin(resyncs.clone().due(stored(&["early", "late"])));

        assert!(due.next().now_or_never().is_none(), "nothing is due yet");
        assert_eq!(due.next().await, Some(named("early")));
        // One slot, taken by the resync of `early` until its pass has run.
        tokio::time::sleep(Duration::from_secs(40)).await;
        assert!(due.next().now_or_never().is_none(), "the slot is taken");
        drop(resyncs.started(&named("early")));
        assert_eq!(due.next().await, Some(named("late")));
        // A pass running for another reason also takes the slot.
        resyncs.after(named("early"), Duration::ZERO);
        let running = resyncs.started(&named("late"));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(due.next().now_or_never().is_none(), "a pass is running");
        drop(running);
        assert_eq!(due.next().await, Some(named("early")));
    }
}
