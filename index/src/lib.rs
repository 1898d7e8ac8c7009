//! Quiver's vector indexes.
//!
//! Everything here is synchronous and free of gRPC and async types, so that benchmarks and
//! tests use the indexes bare and the services decide where CPU work runs.
//!
//! - [`VectorIndex`]: the trait every index implements: exact [`FlatIndex`], native
//!   [`HnswIndex`], [`IvfFlatIndex`] and [`IvfPqIndex`], and FAISS behind the `faiss`
//!   feature; [`IndexSpec`] names which one a collection uses.
//! - [`Metric`] and [`Neighbor`]: how closeness is scored and ordered.
//! - [`topk`]: the metric-aware top-k merge the Searcher and the Merger both use.
//! - [`filtered`]: search restricted to an [`AllowList`] of ids, planned per query (an
//!   exact scan of the allowed vectors, or the index's own filtered search).
//! - [`dataset`]: readers for the `.fvecs`/`.ivecs` benchmark formats.

mod allow;
pub mod dataset;
pub mod distance;
mod error;
#[cfg(feature = "faiss")]
pub mod faiss;
pub mod filtered;
pub mod flat;
pub mod hnsw;
pub mod ivf;
pub mod ivf_pq;
mod kmeans;
mod metric;
mod persist;
pub mod pq;
pub mod spec;
pub mod topk;
mod validate;

pub use allow::AllowList;
pub use distance::{dot, l2_squared, simd_level, SimdLevel};
pub use error::{Error, Result};
pub use flat::FlatIndex;
pub use hnsw::HnswIndex;
pub use ivf::IvfFlatIndex;
pub use ivf_pq::IvfPqIndex;
pub use metric::{normalize_in_place, Metric, Neighbor};
pub use roaring::RoaringTreemap;
pub use spec::{FaissSpec, HnswParams, IndexSpec, IvfFlatParams, IvfPqParams};
pub use topk::{merge_top_k, TopK};
pub use validate::validate_vector;

use validate::require_dimension;

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
    /// The `k` nearest to `query` among the stored vectors whose ids `allowed` holds (ids it
    /// holds that are not stored are ignored), found by scoring every one of them: exact.
    /// Best first, ties broken by ascending id.
    fn search_among(&self, query: &[f32], k: usize, allowed: &AllowList) -> Result<Vec<Neighbor>> {
        // Every index can answer this from its stored vectors; the built-in ones do it
        // without copying each vector out.
        require_dimension(self.dim())?;
        let mut prepared = Vec::with_capacity(self.dim());
        validate::prepare_query(self.dim(), self.metric(), query, &mut prepared)?;
        if k == 0 || allowed.is_empty() {
            return Ok(Vec::new());
        }
        let mut top = TopK::new(self.metric(), k.min(allowed.len() as usize));
        for id in allowed.ids() {
            if let Some(stored) = self.vector(id) {
                top.push(Neighbor {
                    id,
                    score: self.metric().score(&prepared, &stored),
                });
            }
        }
        Ok(top.into_sorted_vec())
    }

    /// The index's own search, returning only ids `allowed` holds: approximate, like
    /// [`VectorIndex::search`], and it may come back with fewer than `min(k, allowed)`
    /// (see [`filtered::search`], which then scans exactly). This default over-fetches by
    /// the filter's selectivity and drops what the filter excludes.
    fn search_filtered(
        &self,
        query: &[f32],
        k: usize,
        params: &SearchParams,
        allowed: &AllowList,
    ) -> Result<Vec<Neighbor>> {
        let stored = self.len().max(1) as u64;
        let wanted = (k as u64)
            .saturating_mul(stored)
            .div_ceil(allowed.len().max(1))
            .saturating_mul(2)
            .min(stored)
            .max(k as u64) as usize;
        let mut found = self.search(query, wanted, params)?;
        found.retain(|neighbor| allowed.contains(neighbor.id));
        found.truncate(k);
        Ok(found)
    }

    /// Writes the whole index under `dir` (created if missing), replacing an earlier save.
    /// The write is atomic: a crash leaves either the old or the new save readable.
    fn save(&self, dir: &Path) -> Result<()>;
    /// Heap bytes the index holds (vectors, graph, codes, id maps), for metrics and the
    /// benchmark. An estimate from capacities, not an allocator reading.
    fn memory_bytes(&self) -> usize;
}

/// Whether this build can run FAISS indexes (the `faiss` cargo feature).
pub const FAISS_AVAILABLE: bool = cfg!(feature = "faiss");

/// Checks that `spec` can be built for vectors of `dim` under `metric`, with the error a
/// user can act on. For FAISS this builds a throwaway index from the factory string, so an
/// unknown factory is refused here rather than on every Searcher.
pub fn validate_spec(spec: &IndexSpec, dim: usize, metric: Metric) -> Result<()> {
    build_index(spec, dim, metric).map(drop)
}

/// Builds an empty index of the kind `spec` names.
pub fn build_index(spec: &IndexSpec, dim: usize, metric: Metric) -> Result<Box<dyn VectorIndex>> {
    spec.check(dim)?;
    Ok(match spec {
        IndexSpec::Flat => Box::new(FlatIndex::new(dim, metric)),
        IndexSpec::Hnsw(params) => Box::new(HnswIndex::new(dim, metric, *params)),
        IndexSpec::IvfFlat(params) => Box::new(IvfFlatIndex::new(dim, metric, *params)),
        IndexSpec::IvfPq(params) => Box::new(IvfPqIndex::new(dim, metric, *params)),
        IndexSpec::Faiss(faiss_spec) => build_faiss(faiss_spec, dim, metric)?,
    })
}

/// Reopens an index written by [`VectorIndex::save`] under `dir`.
pub fn load_index(spec: &IndexSpec, dir: &Path) -> Result<Box<dyn VectorIndex>> {
    let index: Box<dyn VectorIndex> = match spec {
        IndexSpec::Flat => Box::new(FlatIndex::load(dir)?),
        IndexSpec::Hnsw(_) => Box::new(HnswIndex::load(dir)?),
        IndexSpec::IvfFlat(_) => Box::new(IvfFlatIndex::load(dir)?),
        IndexSpec::IvfPq(_) => Box::new(IvfPqIndex::load(dir)?),
        IndexSpec::Faiss(_) => load_faiss(dir)?,
    };
    if index.spec() != *spec {
        return Err(Error::Corrupt(format!(
            "{} holds a {} index, expected {spec}",
            dir.display(),
            index.spec()
        )));
    }
    Ok(index)
}

#[cfg(feature = "faiss")]
fn build_faiss(spec: &FaissSpec, dim: usize, metric: Metric) -> Result<Box<dyn VectorIndex>> {
    Ok(Box::new(faiss::FaissIndex::new(dim, metric, spec.clone())?))
}

#[cfg(not(feature = "faiss"))]
fn build_faiss(_spec: &FaissSpec, _dim: usize, _metric: Metric) -> Result<Box<dyn VectorIndex>> {
    Err(Error::Unsupported(
        "this build has no FAISS support; rebuild with the `faiss` cargo feature or choose \
         flat, hnsw, ivf_flat or ivf_pq"
            .into(),
    ))
}

#[cfg(feature = "faiss")]
fn load_faiss(dir: &Path) -> Result<Box<dyn VectorIndex>> {
    Ok(Box::new(faiss::FaissIndex::load(dir)?))
}

#[cfg(not(feature = "faiss"))]
fn load_faiss(_dir: &Path) -> Result<Box<dyn VectorIndex>> {
    build_faiss(&FaissSpec::default(), 1, Metric::L2)
}
