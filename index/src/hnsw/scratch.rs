//! Working memory of one graph search, pooled so searches allocate nothing of size O(n).

/// A slot and its distance to the current query ("lower is closer").
#[derive(Debug, Clone, Copy)]
pub(super) struct Scored {
    pub(super) distance: f32,
    pub(super) slot: u32,
}

/// SplitMix64's output function: a well-mixed 64-bit value for each input, and a
/// bijection, so distinct inputs never collide.
pub(super) fn splitmix64(value: u64) -> u64 {
    let mut mixed = value.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    mixed ^ (mixed >> 31)
}

/// Where `slot` goes among nodes at exactly the same distance, in an order that differs
/// with `salt`.
///
/// Such ties are exact duplicates in practice. Broken by slot, every search would keep the
/// same oldest copies, every neighbour list would hold the same few, and later copies would
/// lose all their in-links and become unreachable; scrambled per inserted node, each list
/// keeps a different sample and a group of copies larger than a list stays connected.
#[inline]
pub(super) fn tie_rank(slot: u32, salt: u64) -> u64 {
    splitmix64((salt << 32) ^ u64::from(slot))
}

/// Which slots one search has reached, cleared in O(1) by bumping a generation.
///
/// A `u16` stamp per slot keeps the array small enough to stay in cache (120 KiB for 60k
/// slots); the rare wrap-around costs one full clear every 65535 searches.
#[derive(Debug, Default)]
pub(super) struct VisitedSet {
    stamps: Vec<u16>,
    generation: u16,
}

impl VisitedSet {
    /// Starts a new search over `slots` slots: everything unvisited.
    pub(super) fn reset(&mut self, slots: usize) {
        if self.stamps.len() < slots {
            // Grow with headroom so an index filling up does not resize on every insert.
            let target = slots.max(self.stamps.len() * 3 / 2);
            self.stamps.resize(target, 0);
        }
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.stamps.fill(0);
            self.generation = 1;
        }
    }

    /// Marks `slot` visited; returns whether it was not already.
    #[inline]
    pub(super) fn insert(&mut self, slot: u32) -> bool {
        let stamp = &mut self.stamps[slot as usize];
        // Written unconditionally so the caller's filter compiles without a branch.
        let fresh = *stamp != self.generation;
        *stamp = self.generation;
        fresh
    }

    fn memory_bytes(&self) -> usize {
        self.stamps.capacity() * size_of::<u16>()
    }
}

/// One node held by a [`Beam`].
#[derive(Debug, Clone, Copy)]
pub(super) struct BeamEntry {
    pub(super) distance: f32,
    pub(super) slot: u32,
    expanded: bool,
    pub(super) live: bool,
}

/// The best-first search's working set: every node within the best `ef` live ones found so
/// far, sorted closest first, each marked once its neighbours have been scored.
///
/// This one sorted array replaces the textbook pair of heaps (candidates to expand and
/// results): a candidate farther than the `ef`-th live result is never expanded, so the
/// candidates worth keeping are exactly the unexpanded entries of the results, and "the
/// closest unexpanded" is a cursor that only moves back when something closer arrives. An
/// insert is a binary search and a short `memmove` (measured slightly cheaper than the two
/// heaps' sifts), and the results come out sorted.
///
/// Tombstones are held and expanded like other nodes but do not count towards `ef`, so a
/// search through a region of removed vectors still ends with `ef` live results.
#[derive(Debug, Default)]
pub(super) struct Beam {
    entries: Vec<BeamEntry>,
    /// Live entries held, at most `ef`.
    live: usize,
    ef: usize,
    /// Every entry before this index has been expanded.
    cursor: usize,
    /// Orders entries at equal distance (see [`tie_rank`]).
    tie_salt: u64,
}

impl Beam {
    pub(super) fn reset(&mut self, ef: usize, tie_salt: u64) {
        self.tie_salt = tie_salt;
        self.entries.clear();
        self.entries.reserve(ef + 1);
        self.live = 0;
        self.ef = ef.max(1);
        self.cursor = 0;
    }

    /// The distance a node must be below to enter: the `ef`-th live entry's once `ef` are
    /// held, infinity before.
    #[inline]
    pub(super) fn bound(&self) -> f32 {
        match self.entries.last() {
            Some(last) if self.live >= self.ef => last.distance,
            _ => f32::INFINITY,
        }
    }

    /// Adds a node the caller found below [`Beam::bound`].
    #[inline]
    pub(super) fn insert(&mut self, distance: f32, slot: u32, live: bool) {
        // Plain float comparisons are enough: NaN only arises from inner products that
        // overflow, and a binary search over such an inconsistent order still returns a
        // position in range, merely misplacing that entry.
        let salt = self.tie_salt;
        let position = self.entries.partition_point(|entry| {
            entry.distance < distance
                || (entry.distance == distance && tie_rank(entry.slot, salt) < tie_rank(slot, salt))
        });
        self.entries.insert(
            position,
            BeamEntry {
                distance,
                slot,
                expanded: false,
                live,
            },
        );
        self.cursor = self.cursor.min(position);
        if live {
            self.live += 1;
            if self.live > self.ef {
                // Drop the farthest live entry and the tombstones behind it, which could
                // only be reached by expanding past `ef` live results.
                while let Some(dropped) = self.entries.pop() {
                    if dropped.live {
                        break;
                    }
                }
                self.live -= 1;
                while self.entries.last().is_some_and(|entry| !entry.live) {
                    self.entries.pop();
                }
            }
        }
    }

    /// The closest entry not yet expanded, now marked expanded.
    #[inline]
    pub(super) fn next_unexpanded(&mut self) -> Option<u32> {
        while let Some(entry) = self.entries.get_mut(self.cursor) {
            self.cursor += 1;
            if !entry.expanded {
                entry.expanded = true;
                return Some(entry.slot);
            }
        }
        None
    }

    /// Everything held, closest first (tombstones included; check `live`).
    pub(super) fn entries(&self) -> &[BeamEntry] {
        &self.entries
    }

    fn memory_bytes(&self) -> usize {
        self.entries.capacity() * size_of::<BeamEntry>()
    }
}

/// Everything a search or an insert needs besides the index itself.
#[derive(Debug, Default)]
pub(super) struct Scratch {
    pub(super) visited: VisitedSet,
    pub(super) beam: Beam,
    /// The live results of one layer, closest first (inserts only).
    pub(super) found: Vec<Scored>,
    /// Neighbours chosen by the selection heuristic (inserts only).
    pub(super) selected: Vec<u32>,
    /// An overflowing neighbour list with its new member, to be pruned (inserts only).
    pub(super) overflow: Vec<Scored>,
    pub(super) overflow_selected: Vec<u32>,
    /// The prepared (normalised) query.
    pub(super) query: Vec<f32>,
}

impl Scratch {
    pub(super) fn memory_bytes(&self) -> usize {
        self.visited.memory_bytes()
            + self.beam.memory_bytes()
            + (self.found.capacity() + self.overflow.capacity()) * size_of::<Scored>()
            + (self.selected.capacity() + self.overflow_selected.capacity()) * size_of::<u32>()
            + self.query.capacity() * size_of::<f32>()
    }
}
