//! The graph itself: neighbour storage, layer search, insertion and the neighbour-selection
//! heuristic.

use std::iter;

use super::{
    scratch::{splitmix64, tie_rank, BeamEntry, Scored, Scratch},
    HnswIndex,
};
use crate::{dot, l2_squared, spec::MAX_HNSW_M, Metric};

/// Layers above this are never assigned. With `m = 2` a level past 32 has probability
/// 2^-33 per insert, so the cap only bounds a corrupt or adversarial case and lets levels
/// fit a `u8`.
pub(super) const MAX_LEVEL: usize = 32;

/// Vector arenas at least this large are assumed not to fit in the last-level cache, so
/// the search touches rows ahead of scoring them (see [`HnswIndex::search_layer`]).
const TOUCH_MIN_ARENA_BYTES: usize = 32 << 20;

/// Mixed into the insertion counter to draw levels; any constant works, this one is fixed
/// so that saved indexes keep growing the same way after a reload.
const LEVEL_SEED: u64 = 0x5155_4956_4552_4853; // "QUIVERHS"

/// Sorts candidates for [`HnswIndex::select_neighbours`] around `base`: closest first,
/// equally close ones in an order scrambled per base (see [`tie_rank`]).
fn sort_for_selection(candidates: &mut [Scored], base: u32) {
    let salt = u64::from(base);
    candidates.sort_unstable_by(|left, right| {
        left.distance
            .total_cmp(&right.distance)
            .then_with(|| tie_rank(left.slot, salt).cmp(&tie_rank(right.slot, salt)))
    });
}

impl HnswIndex {
    /// Entries per slot in `layer0`: a count and up to `2·m` neighbours.
    #[inline]
    pub(super) fn layer0_stride(&self) -> usize {
        1 + 2 * self.params.m
    }

    /// Entries per layer block in `upper`: a count and up to `m` neighbours.
    #[inline]
    pub(super) fn upper_stride(&self) -> usize {
        1 + self.params.m
    }

    /// Most neighbours a node keeps on `level`.
    #[inline]
    pub(super) fn capacity(&self, level: usize) -> usize {
        if level == 0 {
            2 * self.params.m
        } else {
            self.params.m
        }
    }

    /// The vector of `slot`.
    #[inline]
    pub(super) fn row(&self, slot: u32) -> &[f32] {
        let start = slot as usize * self.dim;
        &self.vectors[start..start + self.dim]
    }

    /// "Lower is closer" distance under the index's metric.
    #[inline]
    pub(super) fn distance(&self, query: &[f32], stored: &[f32]) -> f32 {
        match self.metric {
            Metric::L2 => l2_squared(query, stored),
            Metric::InnerProduct | Metric::Cosine => -dot(query, stored),
        }
    }

    #[inline]
    pub(super) fn scored(&self, query: &[f32], slot: u32) -> Scored {
        Scored {
            distance: self.distance(query, self.row(slot)),
            slot,
        }
    }

    /// Where the block of `slot` on `level` starts in `layer0` (level 0) or `upper`.
    #[inline]
    fn block_start(&self, slot: u32, level: usize) -> usize {
        if level == 0 {
            slot as usize * self.layer0_stride()
        } else {
            debug_assert!(level <= self.levels[slot as usize] as usize);
            self.upper_offsets[slot as usize] + (level - 1) * self.upper_stride()
        }
    }

    /// The neighbours of `slot` on `level` (which must be at most the slot's level).
    #[inline]
    pub(super) fn links(&self, slot: u32, level: usize) -> &[u32] {
        let start = self.block_start(slot, level);
        let store = if level == 0 {
            &self.layer0
        } else {
            &self.upper
        };
        let count = store[start] as usize;
        &store[start + 1..start + 1 + count]
    }

    fn set_links(&mut self, slot: u32, level: usize, neighbours: &[u32]) {
        debug_assert!(neighbours.len() <= self.capacity(level));
        let start = self.block_start(slot, level);
        let store = if level == 0 {
            &mut self.layer0
        } else {
            &mut self.upper
        };
        store[start] = neighbours.len() as u32;
        store[start + 1..start + 1 + neighbours.len()].copy_from_slice(neighbours);
    }

    fn push_link(&mut self, slot: u32, level: usize, neighbour: u32) {
        let start = self.block_start(slot, level);
        let store = if level == 0 {
            &mut self.layer0
        } else {
            &mut self.upper
        };
        let count = store[start] as usize;
        store[start + 1 + count] = neighbour;
        store[start] += 1;
    }

    /// The top layer of the next slot: floor(-ln(U) / ln(m)) for U uniform in (0, 1], so
    /// each layer holds about 1/m of the one below, drawn from the insertion counter so the
    /// same inserts always give the same graph.
    fn next_level(&mut self) -> usize {
        let bits = splitmix64(self.insertions ^ LEVEL_SEED);
        self.insertions += 1;
        // 53 random bits, plus one so that U is never 0 (whose logarithm is infinite).
        let unit = ((bits >> 11) + 1) as f64 / (1u64 << 53) as f64;
        let level = -unit.ln() / (self.params.m as f64).ln();
        (level.floor() as usize).min(MAX_LEVEL)
    }

    /// Follows the closest neighbour on `level` until none is closer (the upper-layer
    /// descent, where a width of 1 suffices because the layer only picks a start).
    pub(super) fn greedy_closest(
        &self,
        query: &[f32],
        mut nearest: Scored,
        level: usize,
    ) -> Scored {
        loop {
            let mut improved = false;
            for &neighbour in self.links(nearest.slot, level) {
                let distance = self.distance(query, self.row(neighbour));
                if distance < nearest.distance {
                    nearest = Scored {
                        distance,
                        slot: neighbour,
                    };
                    improved = true;
                }
            }
            if !improved {
                return nearest;
            }
        }
    }

    /// Best-first search of width `ef` on `level` from `entry`; leaves the best `ef` live
    /// nodes (and the tombstones among them) in `scratch.beam`, closest first.
    ///
    /// Tombstones are expanded like any node, so they keep routing, but never count as
    /// results; the search ends when every node within the best `ef` live ones has been
    /// expanded.
    pub(super) fn search_layer(
        &self,
        query: &[f32],
        entry: Scored,
        ef: usize,
        level: usize,
        tie_salt: u64,
        scratch: &mut Scratch,
    ) {
        let has_tombstones = self.tombstones > 0;
        let is_live = |slot: u32| !(has_tombstones && self.deleted[slot as usize]);
        self.search_layer_where(query, entry, ef, level, tie_salt, scratch, is_live);
    }

    /// [`HnswIndex::search_layer`] with the nodes that count as results chosen by
    /// `is_live`: the others (tombstones, points a filter excludes) still route.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub(super) fn search_layer_where(
        &self,
        query: &[f32],
        entry: Scored,
        ef: usize,
        level: usize,
        tie_salt: u64,
        scratch: &mut Scratch,
        is_live: impl Fn(u32) -> bool,
    ) {
        let Scratch { visited, beam, .. } = scratch;
        visited.reset(self.ids.len());
        beam.reset(ef, tie_salt);

        visited.insert(entry.slot);
        beam.insert(entry.distance, entry.slot, is_live(entry.slot));
        let mut unvisited = [0u32; 2 * MAX_HNSW_M];
        let mut touched = 0u32;
        let touch = self.vectors.len() * size_of::<f32>() >= TOUCH_MIN_ARENA_BYTES;
        while let Some(current) = beam.next_unexpanded() {
            // Filter first, without a branch per neighbour (whether one was visited is a
            // coin flip the predictor keeps missing), then score the survivors.
            let mut fresh = 0;
            for &neighbour in self.links(current, level) {
                unvisited[fresh] = neighbour;
                fresh += usize::from(visited.insert(neighbour));
            }
            let unvisited = &unvisited[..fresh];
            if touch {
                // Safe Rust has no prefetch instruction, but a load whose value is thrown
                // away does the same job: the misses for every row about to be scored are
                // in flight together instead of one after another. Only worth it when rows
                // come from DRAM; for an arena that fits in cache it measured as pure cost.
                for &neighbour in unvisited {
                    touched ^= self.vectors[neighbour as usize * self.dim].to_bits();
                }
            }
            for &neighbour in unvisited {
                let distance = self.distance(query, self.row(neighbour));
                if distance < beam.bound() {
                    beam.insert(distance, neighbour, is_live(neighbour));
                }
            }
        }
        std::hint::black_box(touched);
    }

    /// Adds `vector` (checked, normalised for cosine) under `id` as a new slot and links it
    /// into the graph.
    pub(super) fn insert(&mut self, id: u64, vector: &[f32], scratch: &mut Scratch) {
        debug_assert_eq!(vector.len(), self.dim);
        let slot = self.ids.len() as u32;
        let level = self.next_level();
        self.vectors.extend_from_slice(vector);
        self.ids.push(id);
        self.deleted.push(false);
        self.levels.push(level as u8);
        let layer0_stride = self.layer0_stride();
        self.layer0.extend(iter::repeat_n(0, layer0_stride));
        self.upper_offsets.push(self.upper.len());
        let upper_len = level * self.upper_stride();
        self.upper.extend(iter::repeat_n(0, upper_len));
        self.slot_of_id.insert(id, slot);

        let Some(entry) = self.entry_point else {
            self.entry_point = Some(slot);
            self.max_level = level;
            return;
        };
        let mut nearest = self.scored(vector, entry);
        for upper_level in (level + 1..=self.max_level).rev() {
            nearest = self.greedy_closest(vector, nearest, upper_level);
        }
        for link_level in (0..=level.min(self.max_level)).rev() {
            self.search_layer(
                vector,
                nearest,
                self.params.ef_construction,
                link_level,
                // Scrambling ties per new node spreads the links of exact duplicates.
                u64::from(slot),
                scratch,
            );
            let found = &mut scratch.found;
            found.clear();
            let entries = scratch.beam.entries();
            let as_scored = |entry: &BeamEntry| Scored {
                distance: entry.distance,
                slot: entry.slot,
            };
            found.extend(entries.iter().filter(|entry| entry.live).map(as_scored));
            if found.is_empty() {
                // Only tombstones were reachable (say, the one this upsert replaced): link
                // to them, or nothing could ever reach the new node.
                found.extend(entries.iter().map(as_scored));
            }
            nearest = found[0];
            // The new node fills its whole list (2·m on layer 0, as FAISS does; hnswlib
            // stops at m): measured on siftsmall it costs ~3% more distances per query for
            // slightly higher recall at small ef, and leaves room for hard data.
            self.select_neighbours(
                &scratch.found,
                self.capacity(link_level),
                &mut scratch.selected,
            );
            self.set_links(slot, link_level, &scratch.selected);
            for index in 0..scratch.selected.len() {
                let neighbour = scratch.selected[index];
                self.link_back(neighbour, slot, link_level, scratch);
            }
        }
        if level > self.max_level {
            self.entry_point = Some(slot);
            self.max_level = level;
        }
    }

    /// Adds `new` to the neighbours of `slot` on `level`; a full list is re-chosen by the
    /// heuristic from its members plus `new`, as seen from `slot`.
    fn link_back(&mut self, slot: u32, new: u32, level: usize, scratch: &mut Scratch) {
        let links = self.links(slot, level);
        if links.len() < self.capacity(level) {
            self.push_link(slot, level, new);
            return;
        }
        let base = self.row(slot);
        let overflow = &mut scratch.overflow;
        overflow.clear();
        overflow.extend(links.iter().chain(iter::once(&new)).map(|&member| Scored {
            distance: self.distance(base, self.row(member)),
            slot: member,
        }));
        sort_for_selection(overflow, slot);
        self.select_neighbours(
            &scratch.overflow,
            self.capacity(level),
            &mut scratch.overflow_selected,
        );
        self.set_links(slot, level, &scratch.overflow_selected);
    }

    /// Malkov & Yashunin's heuristic (algorithm 4): walks `candidates` (sorted by distance
    /// to the base node) closest first and keeps one only if no neighbour already kept is
    /// closer to it than the base is, up to `limit`. Preferring directions not yet covered
    /// keeps the graph connected across clusters, which plain "closest `limit`" does not.
    fn select_neighbours(&self, candidates: &[Scored], limit: usize, selected: &mut Vec<u32>) {
        selected.clear();
        for candidate in candidates {
            if selected.len() >= limit {
                break;
            }
            let vector = self.row(candidate.slot);
            let diverse = selected
                .iter()
                .all(|&kept| self.distance(vector, self.row(kept)) >= candidate.distance);
            if diverse {
                selected.push(candidate.slot);
            }
        }
    }
}
