//! Filtered search, planned per query: the caller resolves its filter to the exact set of
//! allowed ids, and this decides how to search among them.
//!
//! - Few matches (at most `exact_threshold`, an absolute number of points, or at most `k`):
//!   an exact scan of exactly the allowed vectors ([`Plan::ExactScan`]). A filter passing
//!   1% of 100M points still passes 1M, so the threshold is a count, not a fraction.
//! - A thin filter (under [`THIN_SHARE`] of the points) with up to [`THIN_SCAN_FACTOR`]
//!   times that many matches: the exact scan too. That thin, a graph's allowed points are
//!   scattered beyond what its search can join (recall@10 fell to 0.8 at 0.3% on
//!   Fashion-MNIST), and scanning ~10^5–10^6 vectors exactly costs milliseconds.
//! - Otherwise the index's own filtered search ([`VectorIndex::search_filtered`],
//!   [`Plan::Index`]); should it come back with fewer than `min(k, matches)` results (a
//!   filter that cuts the graph apart, say), the exact scan answers instead, so a filtered
//!   search never returns fewer than it could.

use crate::{AllowList, Neighbor, Result, SearchParams, VectorIndex};

/// Matching points up to which an exact scan beats an index search on 128-dimensional
/// vectors (see [`default_exact_threshold`] and docs/benchmarks.md).
pub const DEFAULT_EXACT_THRESHOLD: u64 = 4096;
/// Filters passing a smaller share of the points than this are scanned exactly up to
/// [`THIN_SCAN_FACTOR`] times the exact threshold.
pub const THIN_SHARE: f64 = 0.01;
pub const THIN_SCAN_FACTOR: u64 = 256;

/// The exact threshold for vectors of `dim` dimensions: [`DEFAULT_EXACT_THRESHOLD`] up to
/// 128, then less in proportion (an exact scan costs a distance per match, and a distance
/// grows with the dimension faster than a graph search does), at least 1,024. Measured
/// crossovers: about 3,500 matches on siftsmall (128-d), about 1,300 on Fashion-MNIST
/// (784-d).
pub fn default_exact_threshold(dim: usize) -> u64 {
    (DEFAULT_EXACT_THRESHOLD * 128 / dim.max(1) as u64).clamp(1024, DEFAULT_EXACT_THRESHOLD)
}

/// How a filtered search ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Plan {
    /// Every allowed vector was scored.
    ExactScan,
    /// The index searched, skipping what the filter excludes.
    Index,
}

impl Plan {
    /// The name reported per shard and used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Plan::ExactScan => "exact_scan",
            Plan::Index => "index",
        }
    }
}

/// The `k` nearest allowed vectors to `query`, best first, and the plan that found them.
pub fn search(
    index: &dyn VectorIndex,
    query: &[f32],
    k: usize,
    params: &SearchParams,
    allowed: &AllowList,
    exact_threshold: u64,
) -> Result<(Vec<Neighbor>, Plan)> {
    let matches = allowed.len();
    let share = matches as f64 / index.len().max(1) as f64;
    let thin = share < THIN_SHARE && matches <= exact_threshold.saturating_mul(THIN_SCAN_FACTOR);
    if matches <= exact_threshold.max(k as u64) || thin {
        return Ok((index.search_among(query, k, allowed)?, Plan::ExactScan));
    }
    let found = index.search_filtered(query, k, params, allowed)?;
    if (found.len() as u64) < matches.min(k as u64) {
        return Ok((index.search_among(query, k, allowed)?, Plan::ExactScan));
    }
    Ok((found, Plan::Index))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{dataset, FlatIndex, IndexSpec, Metric, RoaringTreemap};

    /// A flat index whose filtered search loses every other result, like a graph search
    /// that cannot reach all the allowed points.
    struct Lossy(FlatIndex);

    impl VectorIndex for Lossy {
        fn spec(&self) -> IndexSpec {
            self.0.spec()
        }
        fn dim(&self) -> usize {
            self.0.dim()
        }
        fn metric(&self) -> Metric {
            self.0.metric()
        }
        fn len(&self) -> usize {
            self.0.len()
        }
        fn upsert(&mut self, ids: &[u64], vectors: &[f32]) -> Result<()> {
            self.0.upsert(ids, vectors)
        }
        fn remove(&mut self, ids: &[u64]) -> Result<usize> {
            self.0.remove(ids)
        }
        fn vector(&self, id: u64) -> Option<Vec<f32>> {
            self.0.vector(id)
        }
        fn search(&self, query: &[f32], k: usize, params: &SearchParams) -> Result<Vec<Neighbor>> {
            self.0.search(query, k, params)
        }
        fn search_filtered(
            &self,
            query: &[f32],
            k: usize,
            params: &SearchParams,
            allowed: &AllowList,
        ) -> Result<Vec<Neighbor>> {
            let mut found = self.0.search_filtered(query, k, params, allowed)?;
            found.truncate(found.len() / 2);
            Ok(found)
        }
        fn save(&self, dir: &std::path::Path) -> Result<()> {
            self.0.save(dir)
        }
        fn memory_bytes(&self) -> usize {
            self.0.memory_bytes()
        }
    }

    #[test]
    fn few_matches_scan_exactly_and_a_short_index_answer_falls_back() {
        let base = dataset::synthetic(2000, 8, 3);
        let mut flat = FlatIndex::new(8, Metric::L2);
        flat.upsert(&(0..2000).collect::<Vec<u64>>(), &base.data)
            .unwrap();
        let lossy = Lossy(flat.clone());
        let query = &base.data[..8];
        let params = SearchParams::default();
        let every_third: RoaringTreemap = (0..2000u64).filter(|id| id % 3 == 0).collect();
        let allow = AllowList::new(&every_third);
        let exact = flat.search_among(query, 10, &allow).unwrap();
        assert_eq!(exact.len(), 10);
        assert!(exact.iter().all(|neighbor| neighbor.id % 3 == 0));

        // 667 matches: within the threshold, an exact scan; past it, the index.
        let (found, plan) = search(&flat, query, 10, &params, &allow, 1000).unwrap();
        assert_eq!((plan, &found), (Plan::ExactScan, &exact));
        let (found, plan) = search(&flat, query, 10, &params, &allow, 100).unwrap();
        assert_eq!((plan, &found), (Plan::Index, &exact));
        // The index came back short: the exact scan answers.
        let (found, plan) = search(&lossy, query, 10, &params, &allow, 100).unwrap();
        assert_eq!((plan, &found), (Plan::ExactScan, &exact));
        // Fewer matches than k: all of them.
        let three: RoaringTreemap = [5u64, 6, 1999].into_iter().collect();
        let (found, _) = search(&lossy, query, 10, &params, &AllowList::new(&three), 0).unwrap();
        assert_eq!(found.len(), 3);
        let (found, _) = search(
            &flat,
            query,
            10,
            &params,
            &AllowList::new(&RoaringTreemap::new()),
            0,
        )
        .unwrap();
        assert!(found.is_empty());
    }
}
