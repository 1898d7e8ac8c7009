//! The JSON records stored under the key schema. Field names are snake_case and values are
//! compact JSON, so `etcdctl get --prefix /quiver/` is readable by hand. Unknown fields are
//! ignored on read, so a newer writer can add fields without breaking older readers.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::{Error, Result};

/// `searchers/<id>`: a live Searcher, under its lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearcherRecord {
    pub id: String,
    /// Where its gRPC server listens, `http://host:port`.
    pub address: String,
    pub version: String,
    /// RFC 3339.
    pub started_at: String,
    pub capacity: Capacity,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Capacity {
    pub cpus: u32,
    pub memory_bytes: u64,
}

/// `collections/<name>`: a collection's configuration; persistent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionRecord {
    pub name: String,
    pub dimension: u32,
    pub metric: quiver_index::Metric,
    pub num_shards: u32,
    pub replication_factor: u32,
    /// The text form of a `quiver_index::IndexSpec`, e.g. `flat`.
    pub index_spec: String,
    /// RFC 3339.
    pub created_at: String,
    /// Payload indexes, declared at creation or later, in the order they were declared.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub payload_indexes: Vec<quiver_payload::PayloadIndexSpec>,
}

/// `assignments/<collection>/<shard>`: the desired replica set of one shard; persistent.
///
/// `replicas` are the voting copies: their acknowledgements count towards a write's quorum.
/// `learners` are copies being built by a rebalance; they follow the primary but do not
/// vote until the placement controller moves them into `replicas`. `epoch` grows by one on
/// every change of primary, so a replica can refuse records of a primary it has outlived;
/// etcd transactions guard every change, so one epoch never has two primaries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssignmentRecord {
    /// Searcher ids, primary first.
    pub replicas: Vec<String>,
    /// The Searcher whose replica orders the shard's writes; empty in records written before
    /// primaries were recorded, which means the first of `replicas`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub primary: String,
    #[serde(default)]
    pub epoch: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub learners: Vec<String>,
}

impl AssignmentRecord {
    /// A new shard's assignment: the first replica is the primary, in epoch 1.
    pub fn new(replicas: Vec<String>) -> AssignmentRecord {
        AssignmentRecord {
            primary: replicas.first().cloned().unwrap_or_default(),
            replicas,
            epoch: 1,
            learners: Vec::new(),
        }
    }

    /// The primary's Searcher id (see [`AssignmentRecord::primary`]).
    pub fn primary(&self) -> &str {
        if self.primary.is_empty() {
            self.replicas.first().map(String::as_str).unwrap_or("")
        } else {
            &self.primary
        }
    }

    /// Voting replicas and learners: every Searcher that should host the shard.
    pub fn members(&self) -> impl Iterator<Item = &String> {
        self.replicas.iter().chain(self.learners.iter())
    }

    pub fn role_of(&self, searcher: &str) -> Option<ReplicaRole> {
        if self.primary() == searcher && self.replicas.iter().any(|id| id == searcher) {
            Some(ReplicaRole::Primary)
        } else if self.replicas.iter().any(|id| id == searcher) {
            Some(ReplicaRole::Follower)
        } else if self.learners.iter().any(|id| id == searcher) {
            Some(ReplicaRole::Learner)
        } else {
            None
        }
    }

    /// Acknowledgements a write needs under `quorum`, for `replication_factor` copies.
    pub fn majority(replication_factor: u32) -> u32 {
        replication_factor / 2 + 1
    }
}

/// What a replica does for its shard (see [`AssignmentRecord`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReplicaRole {
    Primary,
    Follower,
    Learner,
}

/// Where a replica is in its life, as its Searcher reports it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReplicaPhase {
    /// Loading or building its index, or catching up with its primary; not yet searchable.
    #[default]
    Booting,
    /// Serving searches.
    Active,
    /// Going away; finishing in-flight work only.
    Draining,
    /// Its files could not be opened (see `ReplicaRecord::error`); not serving.
    Failed,
}

impl ReplicaRole {
    /// The name etcd's JSON and the metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaRole::Primary => "PRIMARY",
            ReplicaRole::Follower => "FOLLOWER",
            ReplicaRole::Learner => "LEARNER",
        }
    }
}

impl ReplicaPhase {
    pub const ALL: [ReplicaPhase; 4] = [
        ReplicaPhase::Booting,
        ReplicaPhase::Active,
        ReplicaPhase::Draining,
        ReplicaPhase::Failed,
    ];

    /// The name etcd's JSON and the metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaPhase::Booting => "BOOTING",
            ReplicaPhase::Active => "ACTIVE",
            ReplicaPhase::Draining => "DRAINING",
            ReplicaPhase::Failed => "FAILED",
        }
    }
}

/// `replicas/<collection>/<shard>/<searcher>`: one replica's reported status, under its
/// Searcher's lease.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ReplicaRecord {
    pub state: ReplicaPhase,
    pub point_count: u64,
    pub applied_seq: u64,
    /// The primary epoch the replica follows (or leads).
    #[serde(default)]
    pub epoch: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<ReplicaRole>,
    /// Published by a primary: the learners that hold every write it acknowledged and that
    /// its writes now wait for. The placement controller switches a learner in only once
    /// the shard's primary lists it here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub learners_in_sync: Vec<String>,
    /// Why the replica is FAILED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `controller/leader`: the Merger whose placement controller acts, under its lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaderRecord {
    /// The candidate id, e.g. the Merger's id.
    pub id: String,
    /// When it became leader, RFC 3339.
    pub since: String,
}

/// `controller/rebalance`: the latest change of target placement the controller planned,
/// and how far it got; persistent, rewritten by each new plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RebalanceRecord {
    /// RFC 3339, as every timestamp here.
    pub started_at: String,
    pub updated_at: String,
    /// What changed the target placement, e.g. `searcher searcher-4 joined`.
    pub trigger: String,
    /// The Searchers the target placement is computed over, sorted.
    pub searchers: Vec<String>,
    /// Replicas to move, at most [`RebalanceRecord::MAX_MOVES`] of them (see
    /// `moves_omitted`).
    pub moves: Vec<crate::rebalance::Move>,
    /// Moves not listed in `moves`, to keep the value far below etcd's request size limit.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub moves_omitted: u64,
    pub moved_replicas: u64,
    pub total_replicas: u64,
    pub moved_fraction: f64,
    /// Shards whose voting replicas are not yet their target, or that still have learners.
    pub pending_shards: u64,
    /// Set once `pending_shards` reached 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

impl RebalanceRecord {
    /// Moves listed in one record; about 100 bytes each.
    pub const MAX_MOVES: usize = 2000;
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// The current time in RFC 3339 (UTC, millisecond precision), as records store it.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// Decodes the JSON value stored at `key`; `MalformedValue` names the key and the reason.
pub fn decode<T: DeserializeOwned>(key: &str, value: &[u8]) -> Result<T> {
    serde_json::from_slice(value).map_err(|error| Error::MalformedValue {
        key: key.to_string(),
        reason: error.to_string(),
    })
}

/// Encodes a record as compact JSON.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising these plain records (strings, numbers, enums, string-keyed maps) cannot
    // fail; a failure would be a programming error in a record type.
    serde_json::to_vec(value).expect("records serialise to JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_read_as_documented() {
        let searcher = SearcherRecord {
            id: "s1".into(),
            address: "http://127.0.0.1:7001".into(),
            version: "0.1.0".into(),
            started_at: now_rfc3339(),
            capacity: Capacity {
                cpus: 4,
                memory_bytes: 8 << 30,
            },
        };
        let bytes = encode(&searcher);
        assert_eq!(decode::<SearcherRecord>("/k", &bytes).unwrap(), searcher);

        let collection = CollectionRecord {
            name: "docs".into(),
            dimension: 128,
            metric: quiver_index::Metric::Cosine,
            num_shards: 4,
            replication_factor: 2,
            index_spec: "flat".into(),
            created_at: "2024-05-01T10:00:00.000Z".into(),
            payload_indexes: Vec::new(),
        };
        let text = String::from_utf8(encode(&collection)).unwrap();
        assert_eq!(
            text,
            r#"{"name":"docs","dimension":128,"metric":"cosine","num_shards":4,"replication_factor":2,"index_spec":"flat","created_at":"2024-05-01T10:00:00.000Z"}"#
        );
        assert_eq!(
            decode::<CollectionRecord>("/k", text.as_bytes()).unwrap(),
            collection
        );

        let replica = ReplicaRecord {
            state: ReplicaPhase::Active,
            point_count: 10,
            applied_seq: 3,
            ..Default::default()
        };
        let text = String::from_utf8(encode(&replica)).unwrap();
        assert_eq!(
            text,
            r#"{"state":"ACTIVE","point_count":10,"applied_seq":3,"epoch":0}"#
        );
        assert_eq!(
            decode::<ReplicaRecord>("/k", text.as_bytes()).unwrap(),
            replica
        );

        let assignment = AssignmentRecord::new(vec!["s2".into(), "s1".into()]);
        assert_eq!(
            String::from_utf8(encode(&assignment)).unwrap(),
            r#"{"replicas":["s2","s1"],"primary":"s2","epoch":1}"#
        );
        // Records written before primaries were recorded still read, primary first.
        let old: AssignmentRecord = decode("/k", br#"{"replicas":["s2","s1"]}"#).unwrap();
        assert_eq!(old.primary(), "s2");
        assert_eq!(old.role_of("s1"), Some(ReplicaRole::Follower));
    }

    #[test]
    fn malformed_values_name_the_key() {
        let error = decode::<ReplicaRecord>("/quiver/replicas/c/0/s1", b"{\"state\":\"SLEEPING\"}")
            .unwrap_err();
        match error {
            Error::MalformedValue { key, reason } => {
                assert_eq!(key, "/quiver/replicas/c/0/s1");
                assert!(reason.contains("SLEEPING"), "{reason}");
            }
            other => panic!("unexpected error {other:?}"),
        }
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let stamp = now_rfc3339();
        humantime::parse_rfc3339(&stamp).unwrap();
        assert!(stamp.ends_with('Z'), "{stamp}");
    }
}

#[cfg(test)]
mod phase_name_tests {
    use super::*;

    #[test]
    fn phase_and_role_names_match_their_json() {
        for phase in ReplicaPhase::ALL {
            assert_eq!(
                encode(&phase),
                format!("\"{}\"", phase.as_str()).into_bytes()
            );
        }
        for role in [
            ReplicaRole::Primary,
            ReplicaRole::Follower,
            ReplicaRole::Learner,
        ] {
            assert_eq!(encode(&role), format!("\"{}\"", role.as_str()).into_bytes());
        }
    }
}
