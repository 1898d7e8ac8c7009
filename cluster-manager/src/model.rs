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
}

/// `assignments/<collection>/<shard>`: the desired replica set of one shard; persistent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssignmentRecord {
    /// Searcher ids, primary first.
    pub replicas: Vec<String>,
}

/// Where a replica is in its life, as its Searcher reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReplicaPhase {
    /// Loading or building its index; not yet searchable.
    Booting,
    /// Serving searches.
    Active,
    /// Going away; finishing in-flight work only.
    Draining,
}

/// `replicas/<collection>/<shard>/<searcher>`: one replica's reported status, under its
/// Searcher's lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaRecord {
    pub state: ReplicaPhase,
    pub point_count: u64,
    pub applied_seq: u64,
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
        };
        let text = String::from_utf8(encode(&replica)).unwrap();
        assert_eq!(
            text,
            r#"{"state":"ACTIVE","point_count":10,"applied_seq":3}"#
        );
        assert_eq!(
            decode::<ReplicaRecord>("/k", text.as_bytes()).unwrap(),
            replica
        );

        let assignment = AssignmentRecord {
            replicas: vec!["s2".into(), "s1".into()],
        };
        assert_eq!(
            String::from_utf8(encode(&assignment)).unwrap(),
            r#"{"replicas":["s2","s1"]}"#
        );
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
