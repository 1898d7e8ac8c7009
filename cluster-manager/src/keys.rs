//! The etcd key schema: where every record lives, and the way back from a key to what it
//! names.
//!
//! ```text
//! <prefix>searchers/<id>
//! <prefix>collections/<name>
//! <prefix>assignments/<collection>/<shard>
//! <prefix>replicas/<collection>/<shard>/<searcher>
//! <prefix>controller/leader
//! <prefix>controller/rebalance
//! ```
//!
//! Shard numbers are plain decimal without padding. Collection names and searcher ids never
//! contain `/` (see [`validate_name`]), so every segment is unambiguous.

use crate::{Error, Result};

const SEARCHERS: &str = "searchers";
const COLLECTIONS: &str = "collections";
const ASSIGNMENTS: &str = "assignments";
const REPLICAS: &str = "replicas";
const CONTROLLER: &str = "controller";

/// The longest collection name or searcher id accepted.
pub const MAX_NAME_LEN: usize = 64;

/// Builds and parses the keys of one Quiver cluster under a configurable prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySchema {
    /// Always starts and ends with `/`.
    prefix: String,
}

/// What a key under the schema's prefix names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    Searcher {
        id: String,
    },
    Collection {
        name: String,
    },
    Assignment {
        collection: String,
        shard: u32,
    },
    Replica {
        collection: String,
        shard: u32,
        searcher: String,
    },
}

impl Default for KeySchema {
    fn default() -> Self {
        KeySchema::new("/quiver/")
    }
}

impl KeySchema {
    /// `prefix` may be given with or without its leading and trailing `/`: `quiver`,
    /// `/quiver` and `/quiver/` are the same schema. An empty prefix means the root, `/`.
    pub fn new(prefix: &str) -> Self {
        let inner = prefix.trim().trim_matches('/');
        let prefix = if inner.is_empty() {
            "/".to_string()
        } else {
            format!("/{inner}/")
        };
        KeySchema { prefix }
    }

    /// The normalised prefix, starting and ending with `/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn searcher(&self, id: &str) -> String {
        format!("{}{SEARCHERS}/{id}", self.prefix)
    }

    pub fn searchers_prefix(&self) -> String {
        format!("{}{SEARCHERS}/", self.prefix)
    }

    pub fn collection(&self, name: &str) -> String {
        format!("{}{COLLECTIONS}/{name}", self.prefix)
    }

    pub fn collections_prefix(&self) -> String {
        format!("{}{COLLECTIONS}/", self.prefix)
    }

    pub fn assignment(&self, collection: &str, shard: u32) -> String {
        format!("{}{ASSIGNMENTS}/{collection}/{shard}", self.prefix)
    }

    /// `<prefix>assignments/<collection>/`: every assignment of one collection.
    pub fn assignments_prefix(&self, collection: &str) -> String {
        format!("{}{ASSIGNMENTS}/{collection}/", self.prefix)
    }

    pub fn replica(&self, collection: &str, shard: u32, searcher: &str) -> String {
        format!("{}{REPLICAS}/{collection}/{shard}/{searcher}", self.prefix)
    }

    /// `<prefix>replicas/<collection>/`: every replica status of one collection.
    pub fn replicas_prefix(&self, collection: &str) -> String {
        format!("{}{REPLICAS}/{collection}/", self.prefix)
    }

    /// `<prefix>assignments/`: every assignment of every collection.
    pub fn all_assignments_prefix(&self) -> String {
        format!("{}{ASSIGNMENTS}/", self.prefix)
    }

    /// `<prefix>controller/leader`: the placement controller's leader, under its lease.
    pub fn controller_leader(&self) -> String {
        format!("{}{CONTROLLER}/leader", self.prefix)
    }

    /// `<prefix>controller/rebalance`: the latest rebalance the controller planned;
    /// persistent.
    pub fn controller_rebalance(&self) -> String {
        format!("{}{CONTROLLER}/rebalance", self.prefix)
    }

    /// What `key` names, or `None` for a key outside the prefix or not of the schema's
    /// shape (unknown kind, missing or extra segments, a shard that is not canonical
    /// decimal). Callers skip such keys rather than fail: another tool may share the prefix.
    /// The controller's keys parse to `None` too: they describe no part of the cluster state,
    /// and their readers fetch them by name.
    pub fn parse(&self, key: &str) -> Option<Key> {
        let rest = key.strip_prefix(self.prefix.as_str())?;
        let segments: Vec<&str> = rest.split('/').collect();
        if segments.iter().any(|segment| segment.is_empty()) {
            return None;
        }
        match segments.as_slice() {
            [SEARCHERS, id] => Some(Key::Searcher { id: id.to_string() }),
            [COLLECTIONS, name] => Some(Key::Collection {
                name: name.to_string(),
            }),
            [ASSIGNMENTS, collection, shard] => Some(Key::Assignment {
                collection: collection.to_string(),
                shard: parse_shard(shard)?,
            }),
            [REPLICAS, collection, shard, searcher] => Some(Key::Replica {
                collection: collection.to_string(),
                shard: parse_shard(shard)?,
                searcher: searcher.to_string(),
            }),
            _ => None,
        }
    }
}

/// Accepts only the canonical form the schema writes (`0`, `17`; not `+1`, `007`, ` 1`), so
/// every shard has exactly one key.
fn parse_shard(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    if text.len() > 1 && text.starts_with('0') {
        return None;
    }
    text.parse().ok()
}

/// Checks a collection name or searcher id: 1 to 64 characters of `[A-Za-z0-9_-]`, starting
/// with a letter or digit. `kind` names what is checked in the error ("collection",
/// "searcher").
pub fn validate_name(kind: &str, name: &str) -> Result<()> {
    let rule = "names are 1 to 64 characters of letters, digits, '_' or '-', starting with a letter or digit";
    if name.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{kind} name must not be empty: {rule}"
        )));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Error::InvalidArgument(format!(
            "{kind} name {name:?} is {} characters long: {rule}",
            name.chars().count()
        )));
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(Error::InvalidArgument(format!(
            "{kind} name {name:?} must start with a letter or digit: {rule}"
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|character| !(character.is_ascii_alphanumeric() || matches!(character, '_' | '-')))
    {
        return Err(Error::InvalidArgument(format!(
            "{kind} name {name:?} contains {bad:?}: {rule}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_prefix_builds_the_documented_keys() {
        let schema = KeySchema::default();
        assert_eq!(schema.prefix(), "/quiver/");
        assert_eq!(schema.searcher("s-1"), "/quiver/searchers/s-1");
        assert_eq!(schema.searchers_prefix(), "/quiver/searchers/");
        assert_eq!(schema.collection("docs"), "/quiver/collections/docs");
        assert_eq!(schema.collections_prefix(), "/quiver/collections/");
        assert_eq!(schema.assignment("docs", 12), "/quiver/assignments/docs/12");
        assert_eq!(
            schema.assignments_prefix("docs"),
            "/quiver/assignments/docs/"
        );
        assert_eq!(
            schema.replica("docs", 0, "s-1"),
            "/quiver/replicas/docs/0/s-1"
        );
        assert_eq!(schema.replicas_prefix("docs"), "/quiver/replicas/docs/");
        assert_eq!(schema.all_assignments_prefix(), "/quiver/assignments/");
        assert_eq!(schema.controller_leader(), "/quiver/controller/leader");
        assert_eq!(
            schema.controller_rebalance(),
            "/quiver/controller/rebalance"
        );
    }

    #[test]
    fn every_key_round_trips_through_parse() {
        let schema = KeySchema::default();
        let cases = [
            (schema.searcher("s-1"), Key::Searcher { id: "s-1".into() }),
            (
                schema.collection("docs"),
                Key::Collection {
                    name: "docs".into(),
                },
            ),
            (
                schema.assignment("docs", 0),
                Key::Assignment {
                    collection: "docs".into(),
                    shard: 0,
                },
            ),
            (
                schema.assignment("docs", u32::MAX),
                Key::Assignment {
                    collection: "docs".into(),
                    shard: u32::MAX,
                },
            ),
            (
                schema.replica("docs", 1023, "searcher_7"),
                Key::Replica {
                    collection: "docs".into(),
                    shard: 1023,
                    searcher: "searcher_7".into(),
                },
            ),
        ];
        for (key, expected) in cases {
            assert_eq!(schema.parse(&key), Some(expected), "{key}");
        }
    }

    #[test]
    fn custom_prefixes_are_normalised_with_or_without_slashes() {
        for written in [
            "tenant-a/quiver",
            "/tenant-a/quiver",
            "tenant-a/quiver/",
            "/tenant-a/quiver/",
            " /tenant-a/quiver// ",
        ] {
            let schema = KeySchema::new(written);
            assert_eq!(schema.prefix(), "/tenant-a/quiver/", "{written:?}");
            assert_eq!(
                schema.searcher("s1"),
                "/tenant-a/quiver/searchers/s1",
                "{written:?}"
            );
            assert_eq!(
                schema.parse("/tenant-a/quiver/collections/c"),
                Some(Key::Collection { name: "c".into() })
            );
        }
        assert_eq!(KeySchema::new("").prefix(), "/");
        assert_eq!(KeySchema::new("/").searcher("a"), "/searchers/a");
        assert_eq!(KeySchema::new("quiver"), KeySchema::default());
    }

    #[test]
    fn foreign_and_malformed_keys_are_rejected() {
        let schema = KeySchema::default();
        let rejected = [
            "/other/searchers/s1",
            "/quiverx/searchers/s1",
            "quiver/searchers/s1",
            "/quiver/",
            "/quiver/searchers",
            "/quiver/searchers/",
            "/quiver/searchers/s1/extra",
            "/quiver/collections/c/extra",
            "/quiver/unknown/x",
            "/quiver/assignments/c",
            "/quiver/assignments/c/",
            "/quiver/assignments/c/x1",
            "/quiver/assignments/c/-1",
            "/quiver/assignments/c/+1",
            "/quiver/assignments/c/01",
            "/quiver/assignments/c/4294967296",
            "/quiver/assignments/c/1/extra",
            "/quiver/assignments//1",
            "/quiver/replicas/c/1",
            "/quiver/replicas/c/one/s1",
            "/quiver/replicas/c/1/s1/extra",
            "/quiver/replicas/c/1/",
            "/quiver/controller/leader",
            "/quiver/controller/rebalance",
        ];
        for key in rejected {
            assert_eq!(schema.parse(key), None, "{key}");
        }
        // A key of another prefix is foreign even when it looks right.
        let other = KeySchema::new("/other/");
        assert_eq!(other.parse(&schema.searcher("s1")), None);
    }

    #[test]
    fn names_are_validated_with_a_clear_message() {
        for good in ["a", "A1", "0", "docs_v2", "s-1", &"x".repeat(64)] {
            validate_name("collection", good).unwrap();
        }
        let long = "x".repeat(65);
        for bad in ["", "-a", "_a", "a/b", "a b", "é", "a.b", &long] {
            let error = validate_name("collection", bad).unwrap_err();
            assert!(
                matches!(&error, Error::InvalidArgument(message) if message.starts_with("collection name")),
                "{bad:?}: {error}"
            );
        }
        let message = validate_name("searcher", "a/b").unwrap_err().to_string();
        assert!(message.contains("'/'"), "{message}");
    }
}
