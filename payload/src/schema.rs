//! The payload indexes a collection declares: which keys, of which type.

use std::{collections::BTreeMap, fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::error::FilterError;

/// What a payload index holds for its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadIndexType {
    /// Strings, matched exactly.
    Keyword,
    /// Whole numbers, matched and ranged.
    Integer,
    /// Any numbers, ranged (and matched by value).
    Float,
    /// `true` and `false`.
    Bool,
}

impl PayloadIndexType {
    pub const ALL: [PayloadIndexType; 4] = [
        PayloadIndexType::Keyword,
        PayloadIndexType::Integer,
        PayloadIndexType::Float,
        PayloadIndexType::Bool,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PayloadIndexType::Keyword => "keyword",
            PayloadIndexType::Integer => "integer",
            PayloadIndexType::Float => "float",
            PayloadIndexType::Bool => "bool",
        }
    }
}

impl fmt::Display for PayloadIndexType {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl FromStr for PayloadIndexType {
    type Err = FilterError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        PayloadIndexType::ALL
            .into_iter()
            .find(|kind| kind.as_str().eq_ignore_ascii_case(text))
            .ok_or_else(|| {
                FilterError::at(
                    "type",
                    format!("{text:?} is not a payload index type (keyword, integer, float, bool)"),
                )
            })
    }
}

/// One declared payload index, as etcd's collection record holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadIndexSpec {
    pub key: String,
    #[serde(rename = "type")]
    pub kind: PayloadIndexType,
}

/// A collection's declared payload indexes, by key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PayloadSchema {
    indexes: BTreeMap<String, PayloadIndexType>,
}

impl PayloadSchema {
    pub fn new(indexes: impl IntoIterator<Item = (String, PayloadIndexType)>) -> PayloadSchema {
        PayloadSchema {
            indexes: indexes.into_iter().collect(),
        }
    }

    pub fn from_specs(specs: &[PayloadIndexSpec]) -> PayloadSchema {
        PayloadSchema::new(specs.iter().map(|spec| (spec.key.clone(), spec.kind)))
    }

    pub fn index_type(&self, key: &str) -> Option<PayloadIndexType> {
        self.indexes.get(key).copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, PayloadIndexType)> {
        self.indexes.iter().map(|(key, kind)| (key.as_str(), *kind))
    }

    pub fn is_empty(&self) -> bool {
        self.indexes.is_empty()
    }
}
