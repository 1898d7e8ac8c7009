//! Quiver's vector indexes.
//!
//! Everything here is synchronous and free of gRPC and async types, so that benchmarks and
//! tests use the indexes bare and the services decide where CPU work runs.
//!
//! - [`VectorIndex`]: the trait every index implements (flat today; HNSW, IVF, PQ and FAISS
//!   plug in behind it), with [`IndexSpec`] naming which one a collection uses.
//! - [`Metric`] and [`Neighbor`]: how closeness is scored and ordered.
//! - [`topk`]: the metric-aware top-k merge the Searcher and the Merger both use.
//! - [`dataset`]: readers for the `.fvecs`/`.ivecs` benchmark formats.

mod crc32;
pub mod dataset;
mod error;
pub mod flat;
mod metric;
mod spec;
pub mod topk;
mod validate;

pub use error::{Error, Result};
pub use flat::FlatIndex;
pub use metric::{dot, l2_squared, normalize_in_place, Metric, Neighbor};
pub use spec::IndexSpec;
pub use topk::{merge_top_k, TopK};
pub use validate::validate_vector;

use std::path::Path;

/// Tuning knobs an approximate index may read per query; exact indexes ignore them.
/// Zero means "the index's own default".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SearchParams {
    pub ef_search: u32,
    pub nprobe: u32,
}

/// A set of vectors keyed by `u64` ids, searchable by k nearest neighbours.
///
/// Vectors are passed row-major in one flat slice (`n * dim` floats), which is what FAISS
/// and SIMD kernels want. For [`Metric::Cosine`] the index normalises what it stores and
/// what it is asked, so callers pass raw vectors. Callers validate input (finite values,
/// no zero vectors for cosine) before it gets here; indexes still return errors instead of
/// panicking on a wrong length.
pub trait VectorIndex: Send + Sync {
    /// The spec this index was built from (used to persist and reopen it).
    fn spec(&self) -> IndexSpec;
    fn dim(&self) -> usize;
    fn metric(&self) -> Metric;
    /// Number of live vectors.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Inserts the vectors, replacing any already stored under the same id. `ids.len() * dim`
    /// must equal `vectors.len()`; if an id repeats, the last occurrence wins.
    fn upsert(&mut self, ids: &[u64], vectors: &[f32]) -> Result<()>;
    /// Removes the ids that exist and returns how many did.
    fn remove(&mut self, ids: &[u64]) -> Result<usize>;
    /// The stored vector of `id` (normalised for cosine), if present.
    fn vector(&self, id: u64) -> Option<Vec<f32>>;
    /// The `k` nearest stored vectors to `query`, best first, ties broken by ascending id.
    fn search(&self, query: &[f32], k: usize, params: &SearchParams) -> Result<Vec<Neighbor>>;
    /// [`VectorIndex::search`] for `queries.len() / dim` queries at once.
    fn search_batch(
        &self,
        queries: &[f32],
        k: usize,
        params: &SearchParams,
    ) -> Result<Vec<Vec<Neighbor>>> {
        let dim = self.dim();
        if dim == 0 || queries.len() % dim != 0 {
            return Err(Error::DimensionMismatch {
                expected: dim,
                actual: queries.len(),
            });
        }
        queries
            .chunks_exact(dim)
            .map(|query| self.search(query, k, params))
            .collect()
    }
    /// Writes the whole index under `dir` (created if missing), replacing an earlier save.
    /// The write is atomic: a crash leaves either the old or the new save readable.
    fn save(&self, dir: &Path) -> Result<()>;
}

/// Builds an empty index of the kind `spec` names.
pub fn build_index(spec: &IndexSpec, dim: usize, metric: Metric) -> Result<Box<dyn VectorIndex>> {
    if dim == 0 {
        return Err(Error::InvalidSpec("dimension must be at least 1".into()));
    }
    match spec {
        IndexSpec::Flat => Ok(Box::new(FlatIndex::new(dim, metric))),
    }
}

/// Reopens an index written by [`VectorIndex::save`] under `dir`.
pub fn load_index(spec: &IndexSpec, dir: &Path) -> Result<Box<dyn VectorIndex>> {
    match spec {
        IndexSpec::Flat => Ok(Box::new(FlatIndex::load(dir)?)),
    }
}
