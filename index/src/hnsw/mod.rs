//! Native hierarchical navigable small-world graph (Malkov & Yashunin, 2016).
//!
//! Approximate search in about O(log n) distance computations: a query descends greedily
//! through sparse upper layers to a good starting node, then runs a best-first search of
//! width `ef` on layer 0, which holds every vector.
//!
//! # Layout
//!
//! Every inserted vector gets an internal `u32` *slot*; slots are never reused until a
//! compaction renumbers them. Everything per slot lives in flat arrays, so the search loop
//! touches no per-node allocation:
//!
//! - `vectors`: one contiguous arena, row `s` is `vectors[s*dim..(s+1)*dim]` (normalised
//!   for cosine);
//! - `ids`, `levels`, `deleted`: the external id, top layer and tombstone flag of each slot;
//!   `slot_of_id` maps live ids back to slots;
//! - `layer0`: a fixed block of `1 + 2·m` `u32`s per slot, a neighbour count followed by
//!   up to `2·m` neighbour slots;
//! - `upper`: for a slot on layers `1..=L`, `L` consecutive blocks of `1 + m` `u32`s (count,
//!   then up to `m` neighbours) starting at `upper_offsets[s]`.
//!
//! Internally every distance is "lower is closer": squared L2, or the negated dot product
//! for inner product and cosine, so one code path serves all metrics and the returned
//! score is recovered exactly (`score = -distance` is a sign flip).
//!
//! # Deletes
//!
//! A removed vector becomes a tombstone: it stays in the graph as a routing node (its edges
//! keep the graph navigable) but is never returned nor chosen as a new neighbour. Replacing
//! an id tombstones its old slot and inserts a fresh one. Once tombstones exceed a quarter
//! of the slots (and at least [`COMPACT_MIN_TOMBSTONES`]), the graph is rebuilt from the
//! live vectors (`HnswIndex::maybe_compact` says why a rebuild rather than a repair).
//!
//! # Save format
//!
//! One file, `hnsw.bin`, written through the crate's checksummed writer, all integers
//! little-endian:
//!
//! | bytes          | field                                                     |
//! |----------------|-----------------------------------------------------------|
//! | 8              | magic `QVHNSW01`                                          |
//! | 4              | format version (`u32`, currently 1)                       |
//! | 4              | dimension (`u32`)                                         |
//! | 1              | metric (`u8`: 0 = l2, 1 = ip, 2 = cosine)                 |
//! | 8 · 3          | `m`, `ef_construction`, `ef_search` (`u64` each)          |
//! | 8              | insertions so far (`u64`), the level generator's counter  |
//! | 8              | slot count `n` (`u64`)                                    |
//! | 4              | entry point slot (`u32`, `u32::MAX` when empty)           |
//! | 4              | top layer of the graph (`u32`)                            |
//! | 8·n            | ids (`u64`), in slot order                                |
//! | n              | tombstone flags (`u8`: 0 = live, 1 = removed)             |
//! | n              | top layer of each slot (`u8`)                             |
//! | 4·n·dim        | vectors (`f32`), row-major, cosine ones normalised        |
//! | 4·n·(1+2m)     | layer-0 blocks (`u32`)                                    |
//! | 4·Σlevel·(1+m) | upper-layer blocks (`u32`), in slot then layer order      |
//! | 4              | CRC-32 (IEEE) of every byte before it                     |
//!
//! Loading checks every count, neighbour slot and layer against the rest of the file, so a
//! damaged file is [`Error::Corrupt`] and never a panic in a later search.

mod filtered;
mod format;
mod graph;
mod scratch;
#[cfg(test)]
mod tests;

use std::{
    collections::{HashMap, HashSet},
    fmt,
    path::Path,
    sync::{Mutex, PoisonError},
};

use crate::{
    spec::{HnswParams, MAX_EF, MAX_HNSW_M},
    validate::{prepare_batch, prepare_query, require_dimension},
    AllowList, Error, IndexSpec, Metric, Neighbor, Result, SearchParams, VectorIndex,
};

use scratch::Scratch;

/// Tombstones tolerated regardless of the index size before a compaction: rebuilding a
/// small graph often would cost more than the few dead routing nodes do.
pub const COMPACT_MIN_TOMBSTONES: usize = 1024;

/// Hierarchical navigable small-world graph index.
///
/// Thread-safe for searching (`&self`); inserts and removals need `&mut self`. Builds are
/// deterministic: the same sequence of upserts and removals gives the same graph, and
/// [`VectorIndex::save`] then [`HnswIndex::load`] gives bit-identical search results.
pub struct HnswIndex {
    dim: usize,
    metric: Metric,
    params: HnswParams,
    /// Row-major vectors, one row per slot (normalised for cosine).
    vectors: Vec<f32>,
    /// External id of each slot (a tombstone keeps the id it had).
    ids: Vec<u64>,
    /// Live ids only.
    slot_of_id: HashMap<u64, u32>,
    /// Whether each slot is a tombstone.
    deleted: Vec<bool>,
    tombstones: usize,
    /// Top layer of each slot.
    levels: Vec<u8>,
    /// `1 + 2·m` entries per slot: neighbour count, then neighbour slots.
    layer0: Vec<u32>,
    /// Start of each slot's upper-layer blocks in `upper`.
    upper_offsets: Vec<usize>,
    /// Blocks of `1 + m` entries for layers `1..=levels[s]` of each slot.
    upper: Vec<u32>,
    /// Where every search starts: a slot on the top layer (possibly a tombstone).
    entry_point: Option<u32>,
    max_level: usize,
    /// Slots ever inserted; seeds the level of the next one so builds are reproducible.
    insertions: u64,
    /// Per-search working memory, reused so a query allocates nothing of size O(n).
    scratch_pool: Mutex<Vec<Scratch>>,
}

impl HnswIndex {
    /// An empty index. `params` are expected to be valid ([`IndexSpec::check`]); a `dim` of
    /// 0 gives an index that rejects every insert and search with
    /// [`Error::InvalidArgument`].
    pub fn new(dim: usize, metric: Metric, params: HnswParams) -> Self {
        // Clamped to what `IndexSpec::check` allows rather than trusted, so an unchecked
        // `m` cannot make the strides absurd and every save stays loadable.
        let params = HnswParams {
            m: params.m.clamp(2, MAX_HNSW_M),
            ef_construction: params.ef_construction.clamp(1, MAX_EF),
            ef_search: params.ef_search.clamp(1, MAX_EF),
        };
        Self {
            dim,
            metric,
            params,
            vectors: Vec::new(),
            ids: Vec::new(),
            slot_of_id: HashMap::new(),
            deleted: Vec::new(),
            tombstones: 0,
            levels: Vec::new(),
            layer0: Vec::new(),
            upper_offsets: Vec::new(),
            upper: Vec::new(),
            entry_point: None,
            max_level: 0,
            insertions: 0,
            scratch_pool: Mutex::new(Vec::new()),
        }
    }

    /// Reopens an index written by [`VectorIndex::save`] under `dir`.
    ///
    /// Returns [`Error::Corrupt`] for a damaged, truncated or foreign file.
    pub fn load(dir: &Path) -> Result<Self> {
        format::load(dir)
    }

    /// Internal slots in use, live and tombstoned (what the graph holds).
    pub fn slot_count(&self) -> usize {
        self.ids.len()
    }

    /// Removed vectors still kept as routing nodes until the next compaction.
    pub fn tombstone_count(&self) -> usize {
        self.tombstones
    }

    /// Checks a query and writes the form it is scored in (normalised for cosine) to `out`.
    fn prepare_query(&self, query: &[f32], out: &mut Vec<f32>) -> Result<()> {
        prepare_query(self.dim, self.metric, query, out)
    }

    fn take_scratch(&self) -> Scratch {
        self.scratch_pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
            .unwrap_or_default()
    }

    fn return_scratch(&self, scratch: Scratch) {
        self.scratch_pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(scratch);
    }

    /// Forgets every vector and the whole graph, keeping the parameters and the level
    /// counter (so later inserts stay reproducible).
    fn clear(&mut self) {
        let insertions = self.insertions;
        *self = Self::new(self.dim, self.metric, self.params);
        self.insertions = insertions;
    }

    /// Marks `slot` removed: it keeps routing searches but is never returned again.
    fn tombstone(&mut self, slot: u32) {
        let slot = slot as usize;
        debug_assert!(!self.deleted[slot]);
        self.deleted[slot] = true;
        self.tombstones += 1;
    }

    /// Rebuilds the graph from the live vectors once tombstones are a quarter of the slots.
    ///
    /// Why a rebuild rather than repairing the neighbour lists around each dead node: a
    /// repair (reconnect every live node that pointed at a dead one through the dead one's
    /// neighbours, then renumber slots) touches nearly every node once a quarter of them
    /// are dead, and each touch prunes a candidate set of several hundred with the
    /// heuristic, on the order of inserting the node afresh; repeated repairs
    /// also drift from the graph a clean build gives, while a rebuild restores exactly that
    /// quality and frees the dead vectors. Its cost, `live` inserts, is paid after at least
    /// `live / 3` removals, so each removal costs about three inserts amortised. The price
    /// is latency: the call that crosses the threshold pays the whole rebuild.
    fn maybe_compact(&mut self) {
        let slots = self.ids.len();
        if self.tombstones < COMPACT_MIN_TOMBSTONES || self.tombstones * 4 <= slots {
            return;
        }
        self.compact();
    }

    /// Rebuilds the graph from the live vectors, in slot order (so deterministically).
    fn compact(&mut self) {
        let live = self.len();
        let mut fresh = Self::new(self.dim, self.metric, self.params);
        fresh.insertions = self.insertions;
        fresh.reserve(live);
        let mut scratch = self.take_scratch();
        for slot in 0..self.ids.len() {
            if !self.deleted[slot] {
                fresh.insert(self.ids[slot], self.row(slot as u32), &mut scratch);
            }
        }
        // The rest of the old pool goes with the old index; the rebuild's scratch is kept.
        *self = fresh;
        self.return_scratch(scratch);
    }

    fn reserve(&mut self, additional: usize) {
        self.vectors.reserve(additional * self.dim);
        self.ids.reserve(additional);
        self.deleted.reserve(additional);
        self.levels.reserve(additional);
        self.layer0.reserve(additional * self.layer0_stride());
        self.upper_offsets.reserve(additional);
        self.slot_of_id.reserve(additional);
    }
}

impl fmt::Debug for HnswIndex {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("HnswIndex")
            .field("dim", &self.dim)
            .field("metric", &self.metric)
            .field("params", &self.params)
            .field("len", &self.len())
            .field("slots", &self.ids.len())
            .field("max_level", &self.max_level)
            .finish_non_exhaustive()
    }
}

impl VectorIndex for HnswIndex {
    fn spec(&self) -> IndexSpec {
        IndexSpec::Hnsw(self.params)
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn metric(&self) -> Metric {
        self.metric
    }

    fn len(&self) -> usize {
        self.slot_of_id.len()
    }

    fn upsert(&mut self, ids: &[u64], vectors: &[f32]) -> Result<()> {
        // Validate the whole batch before touching the index, so a bad vector anywhere
        // leaves the index exactly as it was.
        let vectors = prepare_batch(self.dim, self.metric, ids, vectors)?;
        // Slots are u32 and u32::MAX marks "no entry point" in saves.
        if self.ids.len().saturating_add(ids.len()) >= u32::MAX as usize {
            return Err(Error::InvalidArgument(format!(
                "an hnsw index holds fewer than {} vectors (including removed ones awaiting \
                 compaction)",
                u32::MAX
            )));
        }

        // Only the last occurrence of a repeated id is inserted: earlier ones would be
        // tombstoned at once, costing an insert and leaving a dead node behind.
        let mut seen = HashSet::with_capacity(ids.len());
        let mut keep: Vec<bool> = ids.iter().rev().map(|id| seen.insert(*id)).collect();
        keep.reverse();

        self.reserve(ids.len());
        let mut scratch = self.take_scratch();
        for ((&id, vector), keep) in ids.iter().zip(vectors.chunks_exact(self.dim)).zip(keep) {
            if !keep {
                continue;
            }
            if let Some(&slot) = self.slot_of_id.get(&id) {
                let unchanged = self
                    .row(slot)
                    .iter()
                    .zip(vector)
                    .all(|(old, new)| old.to_bits() == new.to_bits());
                if unchanged {
                    continue;
                }
                self.slot_of_id.remove(&id);
                self.tombstone(slot);
            }
            self.insert(id, vector, &mut scratch);
        }
        self.return_scratch(scratch);
        self.maybe_compact();
        Ok(())
    }

    fn remove(&mut self, ids: &[u64]) -> Result<usize> {
        let mut removed = 0;
        for id in ids {
            if let Some(slot) = self.slot_of_id.remove(id) {
                self.tombstone(slot);
                removed += 1;
            }
        }
        if removed > 0 {
            if self.slot_of_id.is_empty() {
                // Nothing left to find: a graph of tombstones only costs memory, and new
                // inserts could not link to any live node through it.
                self.clear();
            } else {
                self.maybe_compact();
            }
        }
        Ok(removed)
    }

    fn vector(&self, id: u64) -> Option<Vec<f32>> {
        self.slot_of_id
            .get(&id)
            .map(|&slot| self.row(slot).to_vec())
    }

    fn search(&self, query: &[f32], k: usize, params: &SearchParams) -> Result<Vec<Neighbor>> {
        self.with_prepared(query, |prepared, scratch| {
            self.search_prepared(prepared, k, params, scratch)
        })
    }

    fn search_among(&self, query: &[f32], k: usize, allowed: &AllowList) -> Result<Vec<Neighbor>> {
        // No graph walk, so no scratch: a filter passing a handful of points is answered
        // in well under a microsecond, where the pool's lock and moves would show.
        require_dimension(self.dim)?;
        let mut prepared = Vec::with_capacity(self.dim);
        self.prepare_query(query, &mut prepared)?;
        Ok(self.search_among_prepared(&prepared, k, allowed))
    }

    fn search_filtered(
        &self,
        query: &[f32],
        k: usize,
        params: &SearchParams,
        allowed: &AllowList,
    ) -> Result<Vec<Neighbor>> {
        self.with_prepared(query, |prepared, scratch| {
            self.search_filtered_prepared(prepared, k, params, allowed, scratch)
        })
    }

    fn memory_bytes(&self) -> usize {
        let scratch: usize = self
            .scratch_pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(Scratch::memory_bytes)
            .sum();
        // A HashMap entry costs its key and value (padded) and about one control byte.
        self.vectors.capacity() * size_of::<f32>()
            + self.ids.capacity() * size_of::<u64>()
            + self.slot_of_id.capacity() * (size_of::<(u64, u32)>() + 1)
            + self.deleted.capacity()
            + self.levels.capacity()
            + self.layer0.capacity() * size_of::<u32>()
            + self.upper_offsets.capacity() * size_of::<usize>()
            + self.upper.capacity() * size_of::<u32>()
            + scratch
    }

    fn save(&self, dir: &Path) -> Result<()> {
        format::save(self, dir)
    }
}

impl HnswIndex {
    /// Checks and normalises `query` into pooled scratch, then runs `search` on it.
    fn with_prepared<T>(
        &self,
        query: &[f32],
        search: impl FnOnce(&[f32], &mut Scratch) -> T,
    ) -> Result<T> {
        require_dimension(self.dim)?;
        let mut scratch = self.take_scratch();
        let mut prepared = std::mem::take(&mut scratch.query);
        let result = self
            .prepare_query(query, &mut prepared)
            .map(|()| search(&prepared, &mut scratch));
        scratch.query = prepared;
        self.return_scratch(scratch);
        result
    }

    /// The beam width of a search for `k`: the query's `ef_search`, else the index's, at
    /// least `k`, at most every slot (so a huge `k` reserves nothing that cannot exist).
    fn beam_width(&self, k: usize, params: &SearchParams) -> usize {
        match params.ef_search {
            0 => self.params.ef_search,
            ef => ef as usize,
        }
        .max(k)
        .min(self.ids.len())
    }

    /// [`VectorIndex::search`] for a query already checked and normalised.
    fn search_prepared(
        &self,
        query: &[f32],
        k: usize,
        params: &SearchParams,
        scratch: &mut Scratch,
    ) -> Vec<Neighbor> {
        if k == 0 || self.slot_of_id.is_empty() {
            return Vec::new();
        }
        let Some(entry) = self.entry_point else {
            return Vec::new();
        };
        let ef = self.beam_width(k, params);
        let mut nearest = self.scored(query, entry);
        for level in (1..=self.max_level).rev() {
            nearest = self.greedy_closest(query, nearest, level);
        }
        self.search_layer(query, nearest, ef, 0, 0, scratch);
        self.collect(k, scratch)
    }

    /// The best `k` live entries of the beam a layer-0 search left, as neighbours.
    fn collect(&self, k: usize, scratch: &Scratch) -> Vec<Neighbor> {
        let lower_is_better = self.metric.lower_is_better();
        let mut found: Vec<Neighbor> = Vec::with_capacity(k.min(self.len()));
        let mut last_distance = f32::NAN;
        for entry in scratch.beam.entries().iter().filter(|entry| entry.live) {
            // The beam is sorted by distance (ties in no useful order); past the k-th,
            // only ties with it matter, since they may win on id.
            if found.len() >= k && entry.distance != last_distance {
                break;
            }
            last_distance = entry.distance;
            found.push(Neighbor {
                id: self.ids[entry.slot as usize],
                // Exactly `Metric::score(query, stored)`: the distance is that score or
                // its negation.
                score: if lower_is_better {
                    entry.distance
                } else {
                    -entry.distance
                },
            });
        }
        // Already in order but for ties, which the stable sort fixes in one pass.
        found.sort_by(|left, right| self.metric.compare_neighbors(left, right));
        found.truncate(k);
        found
    }
}
