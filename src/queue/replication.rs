//! Health of a flow's replicated stream, from what the NATS cluster reports about its
//! replication group: which server leads it and how each follower keeps up. Pure, so the
//! operator's status is a function of what it read.

use std::time::Duration;

use async_nats::jetstream::stream;

/// How long a follower may go unheard before it counts as lost (QueueReady=False). Long
/// enough that a follower catching up after a burst, a leader election or a rolling restart
/// of one server is not reported; short enough that a dead server is.
pub const REPLICA_LOST_AFTER: Duration = Duration::from_secs(15);

/// A follower replica as the stream's leader sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ReplicaState {
    /// Up to date with the leader.
    Current,
    /// Catching up, or not heard from for less than [`REPLICA_LOST_AFTER`].
    Behind,
    /// Offline or not heard from for [`REPLICA_LOST_AFTER`] or more.
    Lost,
}

impl ReplicaState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaState::Current => "Current",
            ReplicaState::Behind => "Behind",
            ReplicaState::Lost => "Lost",
        }
    }
}

/// The replication state of one stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamHealth {
    /// Replicas configured.
    pub replicas: usize,
    /// Server leading the group; none on a single server or while electing.
    pub leader: Option<String>,
    /// Followers by server name, sorted.
    pub followers: Vec<(String, ReplicaState)>,
}

impl StreamHealth {
    /// Names of the followers counted as lost.
    pub fn lost(&self) -> Vec<&str> {
        self.followers
            .iter()
            .filter(|(_, state)| *state == ReplicaState::Lost)
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// Why the stream cannot be counted on, if it cannot: no leader (no majority of its
    /// replicas up: it takes no writes), or a follower lost for long.
    pub fn problem(&self) -> Option<String> {
        if self.replicas > 1 && self.leader.is_none() {
            return Some(format!(
                "the stream has no leader: fewer than a majority of its {} replicas are up",
                self.replicas
            ));
        }
        let lost = self.lost();
        (!lost.is_empty()).then(|| {
            format!(
                "replica on {} lost (unreachable for {}s or more); {} of {} replicas up",
                lost.join(", "),
                REPLICA_LOST_AFTER.as_secs(),
                self.replicas - lost.len(),
                self.replicas
            )
        })
    }
}

/// The health of a stream from its info (the leader's view of its followers).
pub fn stream_health(info: &stream::Info) -> StreamHealth {
    health_of(info.config.num_replicas, info.cluster.as_ref())
}

fn health_of(replicas: usize, cluster: Option<&stream::ClusterInfo>) -> StreamHealth {
    let replicas = replicas.max(1);
    let Some(cluster) = cluster else {
        return StreamHealth {
            replicas,
            ..StreamHealth::default()
        };
    };
    let mut followers: Vec<(String, ReplicaState)> = cluster
        .replicas
        .iter()
        .map(|peer| {
            let state = if peer.offline || (!peer.current && peer.active >= REPLICA_LOST_AFTER) {
                ReplicaState::Lost
            } else if peer.current {
                ReplicaState::Current
            } else {
                ReplicaState::Behind
            };
            (peer.name.clone(), state)
        })
        .collect();
    followers.sort();
    StreamHealth {
        replicas,
        leader: cluster.leader.clone().filter(|l| !l.is_empty()),
        followers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(leader: Option<&str>, peers: serde_json::Value) -> stream::ClusterInfo {
        serde_json::from_value(
            serde_json::json!({"name": "c", "leader": leader, "replicas": peers}),
        )
        .unwrap()
    }

    #[test]
    fn a_follower_unheard_for_long_or_offline_is_lost_a_short_gap_is_not() {
        let health = health_of(
            3,
            Some(&cluster(
                Some("n0"),
                serde_json::json!([
                    {"name": "n2", "current": false, "active": 2_000_000_000u64},
                    {"name": "n1", "current": true, "active": 1_000_000u64},
                ]),
            )),
        );
        assert_eq!(health.leader.as_deref(), Some("n0"));
        assert_eq!(
            health.followers,
            [
                ("n1".into(), ReplicaState::Current),
                ("n2".into(), ReplicaState::Behind)
            ]
        );
        assert_eq!(health.problem(), None);

        let health = health_of(
            3,
            Some(&cluster(
                Some("n0"),
                serde_json::json!([
                    {"name": "n1", "current": true, "active": 1_000_000u64},
                    {"name": "n2", "current": false, "active": 16_000_000_000u64},
                ]),
            )),
        );
        assert_eq!(health.lost(), ["n2"]);
        let problem = health.problem().unwrap();
        assert!(problem.contains("replica on n2 lost"), "{problem}");
        assert!(problem.contains("2 of 3 replicas up"), "{problem}");

        let health = health_of(
            3,
            Some(&cluster(
                Some("n0"),
                serde_json::json!([
                    {"name": "n1", "current": false, "active": 0u64, "offline": true},
                    {"name": "n2", "current": true, "active": 0u64},
                ]),
            )),
        );
        assert_eq!(health.lost(), ["n1"]);
    }

    #[test]
    fn no_leader_in_a_replicated_stream_is_a_problem_a_single_server_is_not() {
        let health = health_of(3, Some(&cluster(None, serde_json::json!([]))));
        assert!(health.problem().unwrap().contains("no leader"));
        assert_eq!(health_of(1, None).problem(), None);
    }
}
