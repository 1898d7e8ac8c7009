use std::{fmt, str::FromStr};

use crate::Error;

/// Which index a collection's replicas build, as written in `CollectionConfig.index_spec`
/// and in etcd. The text form is what users type: `flat`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum IndexSpec {
    /// Exact brute-force search.
    #[default]
    Flat,
}

impl FromStr for IndexSpec {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        match text.trim().to_ascii_lowercase().as_str() {
            "" | "flat" => Ok(IndexSpec::Flat),
            other => Err(Error::InvalidSpec(format!(
                "unknown index kind {other:?}; supported: \"flat\""
            ))),
        }
    }
}

impl fmt::Display for IndexSpec {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IndexSpec::Flat => formatter.write_str("flat"),
        }
    }
}
