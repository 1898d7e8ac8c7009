//! Exact brute-force search over vectors kept contiguously in memory.
//!
//! The reference every approximate index is measured against, and the right choice for
//! small shards: no build step, exact results, O(n·dim) per query.
//!
//! # Save format
//!
//! One file, `flat.bin`, all integers little-endian:
//!
//! | bytes        | field                                        |
//! |--------------|----------------------------------------------|
//! | 8            | magic `QVFLAT01`                             |
//! | 4            | format version (`u32`, currently 1)          |
//! | 4            | dimension (`u32`)                            |
//! | 1            | metric (`u8`: 0 = l2, 1 = ip, 2 = cosine)    |
//! | 8            | vector count `n` (`u64`)                     |
//! | 8·n          | ids (`u64`), in row order                    |
//! | 4·n·dim      | vectors (`f32`), row-major, cosine ones normalised |
//! | 4            | CRC-32 (IEEE) of every byte before it        |
//!
//! Written and read through [`crate::persist`], which every native index shares.

use std::{collections::HashMap, path::Path};

use crate::{
    persist::{Reader, Writer},
    validate::{prepare_batch, prepare_query, require_dimension},
    AllowList, Error, IndexSpec, Metric, Neighbor, Result, SearchParams, TopK, VectorIndex,
};

const FILE_NAME: &str = "flat.bin";
const MAGIC: [u8; 8] = *b"QVFLAT01";
const FORMAT_VERSION: u32 = 1;
/// Queries scored together by [`FlatIndex::search_batch`]: each stored row is read from
/// memory once per block instead of once per query, while the block's queries (a few tens
/// of KiB at typical dimensions) stay in cache.
const QUERY_BLOCK: usize = 32;

/// Exact brute-force index.
///
/// Rows live in one contiguous `Vec<f32>` (row `r` is `vectors[r*dim..(r+1)*dim]`) with a
/// parallel `ids` vector, so a scan is a linear walk through memory. Removal moves the last
/// row into the hole, keeping storage dense; row order is therefore not insertion order,
/// which no caller may rely on (results are ordered by score, then id).
#[derive(Debug, Clone)]
pub struct FlatIndex {
    dim: usize,
    metric: Metric,
    ids: Vec<u64>,
    vectors: Vec<f32>,
    row_of_id: HashMap<u64, usize>,
}

impl FlatIndex {
    /// An empty index. A `dim` of 0 gives an index that rejects every insert and search
    /// with [`Error::InvalidArgument`]; [`crate::build_index`] refuses it up front.
    pub fn new(dim: usize, metric: Metric) -> Self {
        Self {
            dim,
            metric,
            ids: Vec::new(),
            vectors: Vec::new(),
            row_of_id: HashMap::new(),
        }
    }

    /// Reopens an index written by [`VectorIndex::save`] under `dir`.
    ///
    /// Checks the magic, version, header fields, file length and checksum, and returns
    /// [`Error::Corrupt`] on any mismatch, so a damaged or truncated file is reported rather
    /// than half-loaded.
    pub fn load(dir: &Path) -> Result<Self> {
        let mut reader = Reader::open(dir, FILE_NAME, &MAGIC, FORMAT_VERSION)?;
        let dim = reader.u32()? as usize;
        if dim == 0 {
            return Err(reader.corrupt("dimension is 0"));
        }
        let metric = reader.metric()?;
        let count = reader.len()?;
        // Checked before any allocation, so a corrupt count cannot ask for terabytes.
        let value_count = count
            .checked_mul(dim)
            .filter(|values| values.checked_mul(4).is_some())
            .ok_or_else(|| reader.corrupt("the header's count and dimension overflow"))?;
        let ids = reader.u64s(count)?;
        let vectors = reader.f32s(value_count)?;
        reader.finish()?;

        let mut row_of_id = HashMap::with_capacity(count);
        for (row, &id) in ids.iter().enumerate() {
            if row_of_id.insert(id, row).is_some() {
                return Err(Error::Corrupt(format!(
                    "{}: id {id} is stored twice",
                    dir.join(FILE_NAME).display()
                )));
            }
        }
        Ok(Self {
            dim,
            metric,
            ids,
            vectors,
            row_of_id,
        })
    }

    /// The ids stored, in row order (not insertion order; see the type's docs).
    pub fn ids(&self) -> &[u64] {
        &self.ids
    }

    fn rows(&self) -> impl Iterator<Item = (u64, &[f32])> + '_ {
        debug_assert!(self.dim > 0);
        debug_assert_eq!(self.ids.len() * self.dim, self.vectors.len());
        self.ids
            .iter()
            .copied()
            .zip(self.vectors.chunks_exact(self.dim.max(1)))
    }

    fn row(&self, row: usize) -> &[f32] {
        &self.vectors[row * self.dim..(row + 1) * self.dim]
    }

    /// Checks a query and returns it in the form it is scored in (normalised for cosine).
    fn prepare_query(&self, query: &[f32], out: &mut Vec<f32>) -> Result<()> {
        prepare_query(self.dim, self.metric, query, out)
    }
}

impl VectorIndex for FlatIndex {
    fn spec(&self) -> IndexSpec {
        IndexSpec::Flat
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn metric(&self) -> Metric {
        self.metric
    }

    fn len(&self) -> usize {
        self.ids.len()
    }

    fn upsert(&mut self, ids: &[u64], vectors: &[f32]) -> Result<()> {
        // Validate the whole batch before touching the index, so a bad vector anywhere
        // leaves the index exactly as it was.
        let vectors = prepare_batch(self.dim, self.metric, ids, vectors)?;

        let new_ids = ids
            .iter()
            .filter(|id| !self.row_of_id.contains_key(id))
            .count();
        self.ids.reserve(new_ids);
        self.vectors.reserve(new_ids * self.dim);
        self.row_of_id.reserve(new_ids);
        for (&id, vector) in ids.iter().zip(vectors.chunks_exact(self.dim)) {
            match self.row_of_id.get(&id) {
                Some(&row) => {
                    self.vectors[row * self.dim..(row + 1) * self.dim].copy_from_slice(vector);
                }
                None => {
                    self.row_of_id.insert(id, self.ids.len());
                    self.ids.push(id);
                    self.vectors.extend_from_slice(vector);
                }
            }
        }
        debug_assert_eq!(self.ids.len(), self.row_of_id.len());
        debug_assert_eq!(self.ids.len() * self.dim, self.vectors.len());
        Ok(())
    }

    fn remove(&mut self, ids: &[u64]) -> Result<usize> {
        let mut removed = 0;
        for id in ids {
            let Some(row) = self.row_of_id.remove(id) else {
                continue;
            };
            let last_row = self.ids.len() - 1;
            if row != last_row {
                // Fill the hole with the last row so storage stays dense.
                let moved_id = self.ids[last_row];
                self.vectors.copy_within(
                    last_row * self.dim..(last_row + 1) * self.dim,
                    row * self.dim,
                );
                self.ids[row] = moved_id;
                self.row_of_id.insert(moved_id, row);
            }
            self.ids.truncate(last_row);
            self.vectors.truncate(last_row * self.dim);
            removed += 1;
        }
        debug_assert_eq!(self.ids.len(), self.row_of_id.len());
        debug_assert_eq!(self.ids.len() * self.dim, self.vectors.len());
        Ok(removed)
    }

    fn vector(&self, id: u64) -> Option<Vec<f32>> {
        self.row_of_id.get(&id).map(|&row| self.row(row).to_vec())
    }

    fn search_among(&self, query: &[f32], k: usize, allowed: &AllowList) -> Result<Vec<Neighbor>> {
        require_dimension(self.dim)?;
        let mut prepared = Vec::with_capacity(self.dim);
        self.prepare_query(query, &mut prepared)?;
        if k == 0 || allowed.is_empty() || self.ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut top = TopK::new(self.metric, k.min(allowed.len() as usize));
        // A walk over every row when many are allowed (memory order, no hashing); a lookup
        // per allowed id when few are.
        if allowed.len() as usize * 8 >= self.ids.len() {
            for (id, stored) in self.rows().filter(|(id, _)| allowed.contains(*id)) {
                top.push(Neighbor {
                    id,
                    score: self.metric.score(&prepared, stored),
                });
            }
        } else {
            for id in allowed.ids() {
                if let Some(&row) = self.row_of_id.get(&id) {
                    top.push(Neighbor {
                        id,
                        score: self.metric.score(&prepared, self.row(row)),
                    });
                }
            }
        }
        Ok(top.into_sorted_vec())
    }

    /// Exact already: the same as [`VectorIndex::search_among`].
    fn search_filtered(
        &self,
        query: &[f32],
        k: usize,
        _params: &SearchParams,
        allowed: &AllowList,
    ) -> Result<Vec<Neighbor>> {
        self.search_among(query, k, allowed)
    }

    fn search(&self, query: &[f32], k: usize, _params: &SearchParams) -> Result<Vec<Neighbor>> {
        require_dimension(self.dim)?;
        let mut prepared = Vec::with_capacity(self.dim);
        self.prepare_query(query, &mut prepared)?;
        if k == 0 || self.ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut top = TopK::new(self.metric, k.min(self.ids.len()));
        for (id, stored) in self.rows() {
            top.push(Neighbor {
                id,
                score: self.metric.score(&prepared, stored),
            });
        }
        Ok(top.into_sorted_vec())
    }

    /// Same results as calling [`VectorIndex::search`] per query, but scores a block of
    /// queries against each stored row while it is in cache. The kept set is the same
    /// because every (query, row) score is computed by the same kernel and the top-k under
    /// a total order does not depend on the order candidates arrive in.
    fn search_batch(
        &self,
        queries: &[f32],
        k: usize,
        _params: &SearchParams,
    ) -> Result<Vec<Vec<Neighbor>>> {
        require_dimension(self.dim)?;
        if queries.len() % self.dim != 0 {
            return Err(Error::DimensionMismatch {
                expected: self.dim,
                actual: queries.len(),
            });
        }
        let query_count = queries.len() / self.dim;
        let mut prepared = Vec::with_capacity(queries.len());
        let mut scratch = Vec::with_capacity(self.dim);
        for query in queries.chunks_exact(self.dim) {
            self.prepare_query(query, &mut scratch)?;
            prepared.extend_from_slice(&scratch);
        }
        if k == 0 || self.ids.is_empty() {
            return Ok(vec![Vec::new(); query_count]);
        }

        let kept_per_query = k.min(self.ids.len());
        let mut results = Vec::with_capacity(query_count);
        for block in prepared.chunks(QUERY_BLOCK * self.dim) {
            let mut tops: Vec<TopK> = block
                .chunks_exact(self.dim)
                .map(|_| TopK::new(self.metric, kept_per_query))
                .collect();
            for (id, stored) in self.rows() {
                for (top, query) in tops.iter_mut().zip(block.chunks_exact(self.dim)) {
                    top.push(Neighbor {
                        id,
                        score: self.metric.score(query, stored),
                    });
                }
            }
            results.extend(tops.into_iter().map(TopK::into_sorted_vec));
        }
        debug_assert_eq!(results.len(), query_count);
        Ok(results)
    }

    fn memory_bytes(&self) -> usize {
        // A HashMap entry costs its key, value and about one control byte of overhead.
        self.ids.capacity() * size_of::<u64>()
            + self.vectors.capacity() * size_of::<f32>()
            + self.row_of_id.capacity() * (size_of::<u64>() + size_of::<usize>() + 1)
    }

    fn save(&self, dir: &Path) -> Result<()> {
        let dim = u32::try_from(self.dim).map_err(|_| {
            Error::InvalidArgument(format!("dimension {} does not fit the format", self.dim))
        })?;
        let mut writer = Writer::create(dir, FILE_NAME, &MAGIC, FORMAT_VERSION)?;
        writer.u32(dim)?;
        writer.metric(self.metric)?;
        writer.len(self.ids.len())?;
        writer.u64s(&self.ids)?;
        writer.f32s(&self.vectors)?;
        writer.commit()
    }
}

#[cfg(test)]
mod tests {
    use crate::normalize_in_place;
    use std::fs;

    use rand::{Rng, SeedableRng};

    use super::*;

    const PARAMS: SearchParams = SearchParams {
        ef_search: 0,
        nprobe: 0,
    };

    fn random_vectors(rng: &mut impl Rng, count: usize, dim: usize) -> Vec<f32> {
        (0..count * dim).map(|_| rng.gen_range(-1.0..1.0)).collect()
    }

    /// Score everything, sort with the metric's order, take k.
    fn naive_search(index: &FlatIndex, query: &[f32], k: usize) -> Vec<Neighbor> {
        let mut query = query.to_vec();
        if index.metric() == Metric::Cosine {
            assert!(normalize_in_place(&mut query));
        }
        let mut all: Vec<Neighbor> = index
            .ids()
            .iter()
            .map(|&id| Neighbor {
                id,
                score: index.metric().score(&query, &index.vector(id).unwrap()),
            })
            .collect();
        all.sort_by(|left, right| index.metric().compare_neighbors(left, right));
        all.truncate(k);
        all
    }

    fn filled_index(metric: Metric, count: usize, dim: usize, seed: u64) -> FlatIndex {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut index = FlatIndex::new(dim, metric);
        // Sparse, shuffled ids so row order and id order differ.
        let ids: Vec<u64> = (0..count as u64).map(|row| row * 7919 % 100_003).collect();
        index
            .upsert(&ids, &random_vectors(&mut rng, count, dim))
            .unwrap();
        index
    }

    #[test]
    fn search_matches_a_naive_reference_for_every_metric() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for metric in Metric::ALL {
            for dim in [1, 3, 8, 17] {
                let index = filled_index(metric, 300, dim, 5 + dim as u64);
                for k in [1, 5, 10, 299, 300, 1000] {
                    for _ in 0..5 {
                        let query = random_vectors(&mut rng, 1, dim);
                        let found = index.search(&query, k, &PARAMS).unwrap();
                        assert_eq!(found, naive_search(&index, &query, k), "{metric} {dim} {k}");
                    }
                }
            }
        }
    }

    #[test]
    fn search_breaks_score_ties_by_ascending_id() {
        let mut index = FlatIndex::new(2, Metric::L2);
        index
            .upsert(&[9, 4, 6, 1], &[1.0, 0.0, 0.0, 1.0, -1.0, 0.0, 5.0, 5.0])
            .unwrap();
        let found = index.search(&[0.0, 0.0], 3, &PARAMS).unwrap();
        assert_eq!(
            found.iter().map(|neighbor| neighbor.id).collect::<Vec<_>>(),
            vec![4, 6, 9]
        );
    }

    #[test]
    fn search_batch_equals_search_per_query() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        for metric in Metric::ALL {
            let index = filled_index(metric, 500, 12, 9);
            // More queries than one block, and not a multiple of it.
            let queries = random_vectors(&mut rng, QUERY_BLOCK * 2 + 5, 12);
            for k in [0, 1, 10, 600] {
                let batch = index.search_batch(&queries, k, &PARAMS).unwrap();
                let single: Vec<Vec<Neighbor>> = queries
                    .chunks_exact(12)
                    .map(|query| index.search(query, k, &PARAMS).unwrap())
                    .collect();
                assert_eq!(batch, single, "{metric} k={k}");
            }
        }
    }

    #[test]
    fn k_zero_and_empty_index_give_empty_results() {
        let empty = FlatIndex::new(3, Metric::L2);
        assert!(empty
            .search(&[1.0, 2.0, 3.0], 5, &PARAMS)
            .unwrap()
            .is_empty());
        assert_eq!(
            empty.search_batch(&[1.0; 6], 5, &PARAMS).unwrap(),
            vec![Vec::<Neighbor>::new(); 2]
        );
        let index = filled_index(Metric::L2, 10, 3, 1);
        assert!(index
            .search(&[1.0, 2.0, 3.0], 0, &PARAMS)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn upsert_of_an_existing_id_replaces_its_vector_and_keeps_len() {
        let mut index = FlatIndex::new(2, Metric::InnerProduct);
        index.upsert(&[1, 2], &[1.0, 0.0, 0.0, 1.0]).unwrap();
        index.upsert(&[1], &[0.0, 5.0]).unwrap();
        assert_eq!(index.len(), 2);
        assert_eq!(index.vector(1), Some(vec![0.0, 5.0]));
        let found = index.search(&[0.0, 1.0], 1, &PARAMS).unwrap();
        assert_eq!(found, vec![Neighbor { id: 1, score: 5.0 }]);
    }

    #[test]
    fn upsert_with_a_repeated_id_keeps_the_last_occurrence() {
        let mut index = FlatIndex::new(1, Metric::L2);
        index.upsert(&[7, 7, 8], &[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(index.len(), 2);
        assert_eq!(index.vector(7), Some(vec![2.0]));
    }

    #[test]
    fn removed_ids_are_never_returned() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let mut index = filled_index(Metric::L2, 200, 4, 3);
        let all_ids = index.ids().to_vec();
        let removed: Vec<u64> = all_ids.iter().copied().step_by(3).collect();
        // Ask twice for some ids and for unknown ones: only real removals count.
        let mut request = removed.clone();
        request.extend_from_slice(&removed[..5]);
        request.push(u64::MAX);
        assert_eq!(index.remove(&request).unwrap(), removed.len());
        assert_eq!(index.len(), all_ids.len() - removed.len());
        for &id in &removed {
            assert_eq!(index.vector(id), None);
        }
        for _ in 0..20 {
            let query = random_vectors(&mut rng, 1, 4);
            let found = index.search(&query, 200, &PARAMS).unwrap();
            assert_eq!(found.len(), index.len());
            assert!(found.iter().all(|neighbor| !removed.contains(&neighbor.id)));
            assert_eq!(found, naive_search(&index, &query, 200));
        }
        // The row moved into each hole still answers for its own id.
        for &id in index.ids() {
            let vector = index.vector(id).unwrap();
            let best = index.search(&vector, 1, &PARAMS).unwrap();
            assert_eq!(best[0].id, id);
        }
        assert_eq!(
            index.remove(index.ids().to_vec().as_slice()).unwrap(),
            200 - removed.len()
        );
        assert!(index.is_empty());
    }

    #[test]
    fn wrong_lengths_are_dimension_errors_and_change_nothing() {
        let mut index = FlatIndex::new(3, Metric::L2);
        index.upsert(&[1], &[1.0, 2.0, 3.0]).unwrap();
        assert!(matches!(
            index.upsert(&[2, 3], &[1.0; 5]),
            Err(Error::DimensionMismatch {
                expected: 6,
                actual: 5
            })
        ));
        assert_eq!(index.len(), 1);
        assert!(matches!(
            index.search(&[1.0, 2.0], 1, &PARAMS),
            Err(Error::DimensionMismatch {
                expected: 3,
                actual: 2
            })
        ));
        assert!(matches!(
            index.search_batch(&[1.0; 7], 1, &PARAMS),
            Err(Error::DimensionMismatch { .. })
        ));
    }

    #[test]
    fn non_finite_values_are_rejected() {
        let mut index = FlatIndex::new(2, Metric::L2);
        assert!(matches!(
            index.upsert(&[1, 2], &[1.0, 2.0, f32::NAN, 0.0]),
            Err(Error::InvalidArgument(_))
        ));
        assert!(index.is_empty());
        assert!(matches!(
            index.search(&[f32::INFINITY, 0.0], 1, &PARAMS),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn dimension_zero_index_rejects_operations_without_panicking() {
        let mut index = FlatIndex::new(0, Metric::L2);
        assert!(index.upsert(&[], &[]).is_err());
        assert!(index.search(&[], 1, &PARAMS).is_err());
        assert!(index.search_batch(&[], 1, &PARAMS).is_err());
        assert_eq!(index.remove(&[1]).unwrap(), 0);
    }

    #[test]
    fn cosine_normalises_and_rejects_zero_vectors_without_partial_writes() {
        let mut index = FlatIndex::new(2, Metric::Cosine);
        index.upsert(&[1], &[3.0, 4.0]).unwrap();
        assert_eq!(index.vector(1), Some(vec![0.6, 0.8]));

        let result = index.upsert(&[1, 2, 3], &[1.0, 0.0, 0.0, 1.0, 0.0, 0.0]);
        assert!(matches!(result, Err(Error::InvalidArgument(_))));
        assert_eq!(index.len(), 1);
        assert_eq!(index.vector(1), Some(vec![0.6, 0.8]));
        assert_eq!(index.vector(2), None);

        assert!(matches!(
            index.search(&[0.0, 0.0], 1, &PARAMS),
            Err(Error::InvalidArgument(_))
        ));
        // Scale does not matter for cosine; the score is the cosine similarity.
        let found = index.search(&[30.0, 40.0], 1, &PARAMS).unwrap();
        assert_eq!(found[0].id, 1);
        assert!((found[0].score - 1.0).abs() < 1e-6);
    }

    #[test]
    fn save_then_load_gives_identical_search_results() {
        let directory = tempfile::tempdir().unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        for metric in Metric::ALL {
            let mut index = filled_index(metric, 150, 9, 12);
            let first_rows = index.ids()[..10].to_vec();
            index.remove(&first_rows).unwrap();
            let save_dir = directory.path().join(metric.as_str()).join("nested");
            index.save(&save_dir).unwrap();
            assert!(!save_dir.join(format!("{FILE_NAME}.tmp")).exists());

            let loaded = FlatIndex::load(&save_dir).unwrap();
            assert_eq!(loaded.metric(), metric);
            assert_eq!(loaded.dim(), 9);
            assert_eq!(loaded.len(), index.len());
            assert_eq!(loaded.ids(), index.ids());
            let queries = random_vectors(&mut rng, 10, 9);
            assert_eq!(
                loaded.search_batch(&queries, 15, &PARAMS).unwrap(),
                index.search_batch(&queries, 15, &PARAMS).unwrap()
            );
            for &id in index.ids() {
                assert_eq!(loaded.vector(id), index.vector(id));
            }
        }
    }

    #[test]
    fn saving_again_replaces_the_earlier_save() {
        let directory = tempfile::tempdir().unwrap();
        let mut index = FlatIndex::new(2, Metric::L2);
        index.upsert(&[1], &[1.0, 1.0]).unwrap();
        index.save(directory.path()).unwrap();
        index.upsert(&[2], &[2.0, 2.0]).unwrap();
        index.save(directory.path()).unwrap();
        assert_eq!(FlatIndex::load(directory.path()).unwrap().len(), 2);

        let empty = FlatIndex::new(2, Metric::L2);
        empty.save(directory.path()).unwrap();
        assert!(FlatIndex::load(directory.path()).unwrap().is_empty());
    }

    #[test]
    fn load_index_through_the_spec_reopens_a_flat_save() {
        let directory = tempfile::tempdir().unwrap();
        let mut index = crate::build_index(&IndexSpec::Flat, 2, Metric::L2).unwrap();
        index.upsert(&[3], &[1.0, 2.0]).unwrap();
        index.save(directory.path()).unwrap();
        let loaded = crate::load_index(&IndexSpec::Flat, directory.path()).unwrap();
        assert_eq!(loaded.vector(3), Some(vec![1.0, 2.0]));
    }

    fn saved_bytes(directory: &Path) -> Vec<u8> {
        let index = filled_index(Metric::InnerProduct, 20, 3, 6);
        index.save(directory).unwrap();
        fs::read(directory.join(FILE_NAME)).unwrap()
    }

    #[test]
    fn any_flipped_byte_is_reported_as_corrupt() {
        let directory = tempfile::tempdir().unwrap();
        let original = saved_bytes(directory.path());
        for position in 0..original.len() {
            let mut damaged = original.clone();
            damaged[position] ^= 0x40;
            fs::write(directory.path().join(FILE_NAME), &damaged).unwrap();
            let result = FlatIndex::load(directory.path());
            assert!(
                matches!(result, Err(Error::Corrupt(_))),
                "byte {position}: {result:?}"
            );
        }
    }

    #[test]
    fn truncated_or_extended_files_are_reported_as_corrupt() {
        let directory = tempfile::tempdir().unwrap();
        let original = saved_bytes(directory.path());
        for len in (0..original.len()).chain([original.len() + 1]) {
            let mut changed = original.clone();
            changed.resize(len, 0);
            fs::write(directory.path().join(FILE_NAME), &changed).unwrap();
            let result = FlatIndex::load(directory.path());
            assert!(
                matches!(result, Err(Error::Corrupt(_))),
                "length {len}: {result:?}"
            );
        }
    }

    #[test]
    fn corrupt_errors_say_what_is_wrong() {
        let directory = tempfile::tempdir().unwrap();
        let original = saved_bytes(directory.path());
        let message_for = |bytes: &[u8]| {
            fs::write(directory.path().join(FILE_NAME), bytes).unwrap();
            FlatIndex::load(directory.path()).unwrap_err().to_string()
        };
        let mut bad_magic = original.clone();
        bad_magic[0] = b'X';
        assert!(message_for(&bad_magic).contains("magic"));
        let mut bad_version = original.clone();
        bad_version[8] = 2;
        assert!(message_for(&bad_version).contains("version 2"));
        let mut bad_payload = original.clone();
        bad_payload[40] ^= 1;
        assert!(message_for(&bad_payload).contains("checksum"));
        // A huge count must be caught by the length check, not by a failed allocation.
        let mut huge_count = original.clone();
        huge_count[17..25].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(message_for(&huge_count).contains("bytes"));
        let mut overflowing_count = original.clone();
        overflowing_count[17..25].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(message_for(&overflowing_count).contains("overflow"));
    }

    #[test]
    fn load_of_a_missing_save_is_an_io_error() {
        let directory = tempfile::tempdir().unwrap();
        assert!(matches!(
            FlatIndex::load(directory.path()),
            Err(Error::Io(_))
        ));
    }
}
