//! Which index a collection's replicas build, and with what parameters.
//!
//! The text form is what users type and what etcd stores, one kind followed by
//! `key=value` pairs separated by spaces or commas:
//!
//! ```text
//! flat
//! hnsw m=16 ef_construction=200 ef_search=64
//! ivf_flat nlist=256 nprobe=16
//! ivf_pq nlist=256 m=16 nbits=8 nprobe=16 rerank=10
//! faiss factory=IVF256,PQ16 params=nprobe=16
//! ```
//!
//! Omitted keys take their defaults; [`IndexSpec`]'s `Display` writes every key, so what
//! etcd holds says exactly what was built. A JSON object with a `kind` field
//! (`{"kind":"hnsw","m":32}`) is accepted too, for clients that build specs in code.
//! For `faiss`, `factory` and `params` take the rest of their token (so `,` inside a
//! FAISS factory string is part of it); separate the faiss keys with spaces.

use std::{collections::BTreeMap, fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::Error;

/// Upper bounds on parameters: past these an index would take more memory or time than
/// any shard should, so a typo is refused instead of tried.
pub const MAX_HNSW_M: usize = 256;
pub const MAX_EF: usize = 65_536;
pub const MAX_NLIST: usize = 1 << 20;
pub const MAX_PQ_NBITS: usize = 8;
pub const MAX_RERANK: usize = 1_000;

/// Parameters of the native HNSW graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HnswParams {
    /// Neighbours kept per node on the upper layers; layer 0 keeps `2·m`.
    pub m: usize,
    /// Candidate list size while inserting.
    pub ef_construction: usize,
    /// Candidate list size while searching (a query may override it; never below `k`).
    pub ef_search: usize,
}

impl Default for HnswParams {
    fn default() -> Self {
        Self {
            m: 16,
            ef_construction: 200,
            ef_search: 64,
        }
    }
}

/// Parameters of the native inverted-file index with exact vectors in its lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IvfFlatParams {
    /// Number of k-means cells.
    pub nlist: usize,
    /// Cells scanned per query (a query may override it).
    pub nprobe: usize,
}

impl Default for IvfFlatParams {
    fn default() -> Self {
        Self {
            nlist: 256,
            nprobe: 16,
        }
    }
}

/// Parameters of the native inverted file over product-quantised residuals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IvfPqParams {
    /// Number of k-means cells.
    pub nlist: usize,
    /// Sub-quantisers; must divide the dimension.
    pub m: usize,
    /// Bits per sub-quantiser code (1..=8: 2^nbits centroids each).
    pub nbits: usize,
    /// Cells scanned per query (a query may override it).
    pub nprobe: usize,
    /// Re-rank factor: the best `rerank·k` candidates by PQ distance are re-scored with
    /// exact vectors. 0 returns PQ-approximate scores.
    pub rerank: usize,
}

impl Default for IvfPqParams {
    fn default() -> Self {
        Self {
            nlist: 256,
            m: 16,
            nbits: 8,
            nprobe: 16,
            rerank: 10,
        }
    }
}

/// A FAISS index built by its `index_factory`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaissSpec {
    /// The `index_factory` description, e.g. `HNSW32`, `IVF256,Flat`, `IVF256,PQ16`.
    pub factory: String,
    /// FAISS `ParameterSpace` settings applied after building, e.g. `nprobe=16,efSearch=64`.
    pub params: String,
}

/// Which index a collection's replicas build.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum IndexSpec {
    /// Exact brute-force search.
    #[default]
    Flat,
    /// Native hierarchical navigable small-world graph.
    Hnsw(HnswParams),
    /// Native inverted file, exact vectors in the lists.
    IvfFlat(IvfFlatParams),
    /// Native inverted file with product quantisation and exact re-rank.
    IvfPq(IvfPqParams),
    /// A FAISS index (needs the `faiss` feature to build).
    Faiss(FaissSpec),
}

impl IndexSpec {
    /// The kind as written in the text form.
    pub fn kind(&self) -> &'static str {
        match self {
            IndexSpec::Flat => "flat",
            IndexSpec::Hnsw(_) => "hnsw",
            IndexSpec::IvfFlat(_) => "ivf_flat",
            IndexSpec::IvfPq(_) => "ivf_pq",
            IndexSpec::Faiss(_) => "faiss",
        }
    }

    /// Checks the parameters against each other and against `dim`, without building
    /// anything (FAISS factory strings are checked by [`crate::validate_spec`]).
    pub fn check(&self, dim: usize) -> Result<(), Error> {
        let invalid = |message: String| Err(Error::InvalidSpec(message));
        if dim == 0 {
            return invalid("dimension must be at least 1".into());
        }
        match self {
            IndexSpec::Flat => {}
            IndexSpec::Hnsw(params) => {
                if !(2..=MAX_HNSW_M).contains(&params.m) {
                    return invalid(format!(
                        "hnsw m must be in 2..={MAX_HNSW_M}, got {}",
                        params.m
                    ));
                }
                check_range("hnsw ef_construction", params.ef_construction, 1, MAX_EF)?;
                check_range("hnsw ef_search", params.ef_search, 1, MAX_EF)?;
            }
            IndexSpec::IvfFlat(params) => {
                check_range("ivf_flat nlist", params.nlist, 1, MAX_NLIST)?;
                check_range("ivf_flat nprobe", params.nprobe, 1, params.nlist)?;
            }
            IndexSpec::IvfPq(params) => {
                check_range("ivf_pq nlist", params.nlist, 1, MAX_NLIST)?;
                check_range("ivf_pq nprobe", params.nprobe, 1, params.nlist)?;
                check_range("ivf_pq nbits", params.nbits, 1, MAX_PQ_NBITS)?;
                check_range("ivf_pq rerank", params.rerank, 0, MAX_RERANK)?;
                check_range("ivf_pq m", params.m, 1, dim)?;
                if dim % params.m != 0 {
                    return invalid(format!(
                        "ivf_pq m={} must divide the dimension {dim}",
                        params.m
                    ));
                }
            }
            IndexSpec::Faiss(spec) => {
                if spec.factory.trim().is_empty() {
                    return invalid("faiss needs factory=<index_factory string>".into());
                }
                if spec.factory.chars().any(char::is_whitespace)
                    || spec.params.chars().any(char::is_whitespace)
                {
                    return invalid("faiss factory and params must not contain spaces".into());
                }
            }
        }
        Ok(())
    }
}

fn check_range(name: &str, value: usize, min: usize, max: usize) -> Result<(), Error> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(Error::InvalidSpec(format!(
            "{name} must be in {min}..={max}, got {value}"
        )))
    }
}

impl FromStr for IndexSpec {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let text = text.trim();
        if text.starts_with('{') {
            return serde_json::from_str(text)
                .map_err(|error| Error::InvalidSpec(format!("index spec JSON: {error}")));
        }
        let (kind, rest) = match text.find(|c: char| c.is_whitespace() || c == ',') {
            Some(position) => (&text[..position], &text[position + 1..]),
            None => (text, ""),
        };
        let kind = kind.to_ascii_lowercase();
        // FAISS values contain commas, so only whitespace separates its pairs.
        let separators: &[char] = if kind == "faiss" {
            &[' ', '\t', '\n']
        } else {
            &[' ', '\t', '\n', ',']
        };
        let mut pairs = BTreeMap::new();
        for token in rest.split(separators).filter(|token| !token.is_empty()) {
            let Some((key, value)) = token.split_once('=') else {
                return Err(Error::InvalidSpec(format!(
                    "expected key=value in the {kind} spec, got {token:?}"
                )));
            };
            let key = key.trim().to_ascii_lowercase();
            if pairs
                .insert(key.clone(), value.trim().to_string())
                .is_some()
            {
                return Err(Error::InvalidSpec(format!(
                    "{kind} key {key:?} given twice"
                )));
            }
        }
        let mut reader = PairReader { kind: &kind, pairs };
        let spec = match kind.as_str() {
            "" | "flat" => IndexSpec::Flat,
            "hnsw" => {
                let defaults = HnswParams::default();
                IndexSpec::Hnsw(HnswParams {
                    m: reader.number("m", defaults.m)?,
                    ef_construction: reader.number("ef_construction", defaults.ef_construction)?,
                    ef_search: reader.number("ef_search", defaults.ef_search)?,
                })
            }
            "ivf_flat" => {
                let defaults = IvfFlatParams::default();
                IndexSpec::IvfFlat(IvfFlatParams {
                    nlist: reader.number("nlist", defaults.nlist)?,
                    nprobe: reader.number("nprobe", defaults.nprobe)?,
                })
            }
            "ivf_pq" => {
                let defaults = IvfPqParams::default();
                IndexSpec::IvfPq(IvfPqParams {
                    nlist: reader.number("nlist", defaults.nlist)?,
                    m: reader.number("m", defaults.m)?,
                    nbits: reader.number("nbits", defaults.nbits)?,
                    nprobe: reader.number("nprobe", defaults.nprobe)?,
                    rerank: reader.number("rerank", defaults.rerank)?,
                })
            }
            "faiss" => IndexSpec::Faiss(FaissSpec {
                factory: reader.text("factory")?,
                params: reader.text("params")?,
            }),
            other => {
                return Err(Error::InvalidSpec(format!(
                    "unknown index kind {other:?}; supported: flat, hnsw, ivf_flat, ivf_pq, faiss"
                )))
            }
        };
        reader.finish()?;
        Ok(spec)
    }
}

/// Takes typed values out of the parsed `key=value` pairs and rejects leftovers.
struct PairReader<'a> {
    kind: &'a str,
    pairs: BTreeMap<String, String>,
}

impl PairReader<'_> {
    fn number(&mut self, key: &str, default: usize) -> Result<usize, Error> {
        match self.pairs.remove(key) {
            None => Ok(default),
            Some(value) => value.parse().map_err(|_| {
                Error::InvalidSpec(format!(
                    "{} {key} must be a non-negative integer, got {value:?}",
                    self.kind
                ))
            }),
        }
    }

    fn text(&mut self, key: &str) -> Result<String, Error> {
        Ok(self
            .pairs
            .remove(key)
            .map(|value| value.trim_matches('"').to_string())
            .unwrap_or_default())
    }

    fn finish(self) -> Result<(), Error> {
        match self.pairs.keys().next() {
            None => Ok(()),
            Some(key) => Err(Error::InvalidSpec(format!(
                "unknown {} parameter {key:?}",
                self.kind
            ))),
        }
    }
}

impl fmt::Display for IndexSpec {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IndexSpec::Flat => formatter.write_str("flat"),
            IndexSpec::Hnsw(p) => write!(
                formatter,
                "hnsw m={} ef_construction={} ef_search={}",
                p.m, p.ef_construction, p.ef_search
            ),
            IndexSpec::IvfFlat(p) => {
                write!(formatter, "ivf_flat nlist={} nprobe={}", p.nlist, p.nprobe)
            }
            IndexSpec::IvfPq(p) => write!(
                formatter,
                "ivf_pq nlist={} m={} nbits={} nprobe={} rerank={}",
                p.nlist, p.m, p.nbits, p.nprobe, p.rerank
            ),
            IndexSpec::Faiss(spec) => {
                write!(formatter, "faiss factory={}", spec.factory)?;
                if !spec.params.is_empty() {
                    write!(formatter, " params={}", spec.params)?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> IndexSpec {
        text.parse()
            .unwrap_or_else(|error| panic!("{text:?}: {error}"))
    }

    #[test]
    fn every_kind_round_trips_through_its_text_form() {
        for text in [
            "flat",
            "hnsw m=32 ef_construction=100 ef_search=50",
            "ivf_flat nlist=64 nprobe=4",
            "ivf_pq nlist=64 m=8 nbits=6 nprobe=4 rerank=0",
            "faiss factory=IVF64,PQ8 params=nprobe=4,ht=20",
            "faiss factory=HNSW32",
        ] {
            let spec = parse(text);
            assert_eq!(spec.to_string(), text);
            assert_eq!(parse(&spec.to_string()), spec);
        }
    }

    #[test]
    fn omitted_keys_take_defaults_and_commas_separate_native_pairs() {
        assert_eq!(parse(""), IndexSpec::Flat);
        assert_eq!(parse("HNSW"), IndexSpec::Hnsw(HnswParams::default()));
        assert_eq!(
            parse("hnsw,m=8, ef_search=20"),
            IndexSpec::Hnsw(HnswParams {
                m: 8,
                ef_search: 20,
                ..HnswParams::default()
            })
        );
    }

    #[test]
    fn json_form_is_accepted() {
        assert_eq!(
            parse(r#"{"kind":"ivf_pq","m":8}"#),
            IndexSpec::IvfPq(IvfPqParams {
                m: 8,
                ..IvfPqParams::default()
            })
        );
        assert_eq!(parse(r#"{"kind":"flat"}"#), IndexSpec::Flat);
        assert!(r#"{"kind":"hnsw","mm":8}"#.parse::<IndexSpec>().is_err());
    }

    #[test]
    fn malformed_text_is_refused_with_the_reason() {
        for (text, needle) in [
            ("annoy", "unknown index kind"),
            ("hnsw m=abc", "non-negative integer"),
            ("hnsw m", "key=value"),
            ("hnsw efsearch=3", "unknown hnsw parameter"),
            ("hnsw m=4 m=5", "given twice"),
            ("ivf_flat nlist=-1", "non-negative integer"),
        ] {
            let error = text.parse::<IndexSpec>().unwrap_err().to_string();
            assert!(error.contains(needle), "{text:?}: {error}");
        }
    }

    #[test]
    fn check_refuses_bad_parameters() {
        for (text, dim, needle) in [
            ("hnsw m=1", 8, "hnsw m"),
            ("hnsw ef_search=0", 8, "ef_search"),
            ("ivf_flat nlist=0", 8, "nlist"),
            ("ivf_flat nlist=4 nprobe=5", 8, "nprobe"),
            ("ivf_pq m=3", 128, "must divide the dimension 128"),
            ("ivf_pq m=16 nbits=9", 128, "nbits"),
            ("ivf_pq m=16 nbits=0", 128, "nbits"),
            ("ivf_pq m=256", 128, "ivf_pq m"),
            ("faiss", 8, "factory"),
            ("flat", 0, "dimension"),
        ] {
            let error = parse(text).check(dim).unwrap_err().to_string();
            assert!(error.contains(needle), "{text:?}: {error}");
        }
        for text in ["flat", "hnsw", "ivf_flat", "ivf_pq", "faiss factory=Flat"] {
            parse(text).check(128).unwrap();
        }
    }
}
