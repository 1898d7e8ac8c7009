//! Native IVF-Flat: an inverted file of exact vectors.
//!
//! # Structure
//!
//! A coarse quantiser of `nlist` k-means centroids cuts the space into cells; every stored
//! vector lives in the list of its nearest cell (smallest squared L2 distance, or largest
//! inner product for `ip` and `cosine`). A query scores the centroids, scans the `nprobe`
//! best cells' lists exactly and keeps the top `k`, so the cost per query is
//! `nlist + nprobe · n / nlist` vector scores instead of `n`.
//!
//! Each list keeps its ids (`Vec<u64>`) and its vectors (one contiguous row-major
//! `Vec<f32>`) side by side, so scanning a list is a linear walk through memory; an
//! id → (list, row) map finds a vector for replacement, removal and `vector(id)`. Removal
//! moves the list's last row into the hole, keeping lists dense.
//!
//! # Training
//!
//! k-means needs data, so a new index is *untrained*: it holds everything in a single list
//! and answers exactly, like [`crate::FlatIndex`]. The upsert that brings it to
//! `nlist ·` [`MIN_POINTS_PER_CELL`] vectors trains the quantiser on (a sample of) what it
//! holds and distributes the vectors over the cells; later inserts go straight to their
//! nearest cell. Cells drawn from a small sample stop fitting once the data has grown a lot,
//! so when the index holds [`RETRAIN_GROWTH`] times what it was trained on, the upsert that
//! gets it there trains again on everything (the cost is amortised: each retraining needs
//! the index to have grown eightfold).
//!
//! Cosine vectors and queries are normalised and scored by their dot product; the cosine
//! quantiser is spherical k-means (unit-length centroids).
//!
//! # Save format
//!
//! One file, `ivf_flat.bin`, written through the crate's checksummed writer (all integers
//! little-endian):
//!
//! | bytes            | field                                                   |
//! |------------------|---------------------------------------------------------|
//! | 8                | magic `QVIVFF01`                                        |
//! | 4                | format version (`u32`, currently 1)                     |
//! | 4                | dimension `dim` (`u32`)                                 |
//! | 1                | metric (`u8`: 0 = l2, 1 = ip, 2 = cosine)               |
//! | 8 + 8            | `nlist`, `nprobe` (`u64`)                               |
//! | 8                | vectors held when last trained (`u64`; 0 = untrained)   |
//! | 4·nlist·dim      | centroids (`f32`, row-major), only when trained         |
//! | per list         | rows `r` (`u64`), ids (`r × u64`), vectors (`r·dim × f32`) |
//! | 4                | CRC-32 (IEEE) of every byte before it                   |
//!
//! There is one list when untrained and `nlist` when trained.

use std::{collections::HashMap, mem, path::Path};

use crate::{
    kmeans::{self, Assignment, KMeansParams},
    persist::{Reader, Writer},
    spec::IvfFlatParams,
    validate::{prepare_batch, prepare_query, require_dimension},
    AllowList, Error, IndexSpec, Metric, Neighbor, Result, SearchParams, TopK, VectorIndex,
};

/// Points per cell an IVF index needs before it trains its quantiser. FAISS warns below 39
/// points per centroid, because k-means on fewer gives cells that fit the sample rather
/// than the data; this is that floor. It lets siftsmall's 10,000 vectors train 256 cells.
pub const MIN_POINTS_PER_CELL: usize = 39;
/// An IVF index retrains once it holds this many times the vectors it was trained on.
pub const RETRAIN_GROWTH: usize = 8;
/// k-means trains on a sample of at most this many points per centroid (FAISS's default
/// is 256). Training time is linear in it; on Fashion-MNIST (nlist 256) halving it from 128
/// halved training and changed recall@10 by under 0.01 at every nprobe measured.
pub const MAX_TRAINING_POINTS_PER_CELL: usize = 64;
const KMEANS_ITERATIONS: usize = 20;
const TRAINING_SEED: u64 = 0x5156_4956_4631_3233;

const FILE_NAME: &str = "ivf_flat.bin";
const MAGIC: [u8; 8] = *b"QVIVFF01";
const FORMAT_VERSION: u32 = 1;

/// Where a stored id lives: its list and its row in that list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    pub(crate) list: u32,
    pub(crate) row: u32,
}

/// The `nlist` centroids that define the cells, and how a vector picks one.
#[derive(Debug, Clone)]
pub(crate) struct CoarseQuantizer {
    dim: usize,
    assignment: Assignment,
    centroids: Vec<f32>,
}

impl CoarseQuantizer {
    fn assignment_for(metric: Metric) -> Assignment {
        match metric {
            Metric::L2 => Assignment::L2,
            Metric::InnerProduct => Assignment::MaxDot,
            Metric::Cosine => Assignment::Spherical,
        }
    }

    /// Trains `nlist` cells on `data` (a sample of at most
    /// [`MAX_TRAINING_POINTS_PER_CELL`] per cell).
    pub(crate) fn train(data: &[f32], dim: usize, metric: Metric, nlist: usize) -> Self {
        let assignment = Self::assignment_for(metric);
        let params = KMeansParams {
            k: nlist,
            max_iterations: KMEANS_ITERATIONS,
            max_points_per_centroid: MAX_TRAINING_POINTS_PER_CELL,
            seed: TRAINING_SEED,
            assignment,
        };
        Self {
            dim,
            assignment,
            centroids: kmeans::train(data, dim, &params),
        }
    }

    pub(crate) fn nlist(&self) -> usize {
        self.centroids.len() / self.dim
    }

    pub(crate) fn centroid(&self, list: usize) -> &[f32] {
        &self.centroids[list * self.dim..(list + 1) * self.dim]
    }

    /// The cell of every row of `data` (in parallel for large batches).
    pub(crate) fn assign(&self, data: &[f32]) -> Vec<u32> {
        kmeans::assign(data, self.dim, &self.centroids, self.assignment)
            .into_iter()
            .map(|(cell, _)| cell)
            .collect()
    }

    /// The `nprobe` best cells for `query` with their centroid scores (squared L2 distance
    /// or inner product), best first, ties to the lower cell.
    pub(crate) fn probe(&self, query: &[f32], nprobe: usize) -> Vec<Neighbor> {
        // The centroid scores order exactly like the metric they come from; inner product
        // stands in for cosine (same order, and the centroids may not be unit length).
        let order = match self.assignment {
            Assignment::L2 => Metric::L2,
            Assignment::MaxDot | Assignment::Spherical => Metric::InnerProduct,
        };
        let mut top = TopK::new(order, nprobe.min(self.nlist()));
        for (list, centroid) in self.centroids.chunks_exact(self.dim).enumerate() {
            top.push(Neighbor {
                id: list as u64,
                score: self.assignment.score(query, centroid),
            });
        }
        top.into_sorted_vec()
    }

    pub(crate) fn memory_bytes(&self) -> usize {
        self.centroids.capacity() * size_of::<f32>()
    }

    pub(crate) fn write(&self, writer: &mut Writer) -> Result<()> {
        writer.f32s(&self.centroids)
    }

    pub(crate) fn read(
        reader: &mut Reader,
        dim: usize,
        metric: Metric,
        nlist: usize,
    ) -> Result<Self> {
        let count = nlist
            .checked_mul(dim)
            .ok_or_else(|| reader.corrupt("centroid count overflows"))?;
        let centroids = reader.f32s(count)?;
        Ok(Self {
            dim,
            assignment: Self::assignment_for(metric),
            centroids,
        })
    }
}

/// Rows are addressed by `u32` within a list (half the map's memory), and an untrained
/// index keeps everything in one list, so an IVF index holds at most `u32::MAX` vectors.
pub(crate) fn check_capacity(held: usize, adding: usize) -> Result<()> {
    if held.saturating_add(adding) > u32::MAX as usize {
        return Err(Error::InvalidArgument(format!(
            "an IVF index holds at most {} vectors",
            u32::MAX
        )));
    }
    Ok(())
}

/// The cells a query scans: its own override if nonzero, else the spec's, at most `nlist`.
pub(crate) fn probe_count(spec_nprobe: usize, params: &SearchParams, nlist: usize) -> usize {
    let requested = match params.nprobe {
        0 => spec_nprobe,
        override_nprobe => override_nprobe as usize,
    };
    requested.clamp(1, nlist.max(1))
}

/// When a filtered list scan may stop: after `nprobe / sqrt(share)` lists (at most
/// `nlist`), once `k` allowed vectors are in hand and as many allowed vectors have been
/// scanned as those lists hold when the filter is spread evenly over the lists.
///
/// The k nearest allowed vectors rank about k/share among all of them, so they spread over
/// more cells than the k nearest do; scaling the probes this way keeps filtered recall near
/// the unfiltered one (1% allowed on siftsmall, nlist 64, nprobe 16: recall@10 0.90 with
/// `nprobe` lists, 0.99 with the scaled count) while scoring fewer vectors than an
/// unfiltered search, since only the allowed ones are scored. A filter correlated with the
/// vectors leaves the closest lists nearly empty of allowed vectors; counting the allowed
/// ones scanned keeps the probe going to where they are (one Fashion-MNIST class, 10% of
/// the points, nlist 256, nprobe 16: recall@10 0.91 on the list count alone, 1.00 with the
/// count of allowed vectors).
pub(crate) struct FilteredProbe {
    lists: usize,
    allowed: usize,
    found: usize,
}

impl FilteredProbe {
    /// For `wanted` results among `allowed` of `len` vectors in `nlist` lists, probing
    /// `nprobe` lists unfiltered.
    pub(crate) fn new(
        nprobe: usize,
        allowed: usize,
        len: usize,
        nlist: usize,
        wanted: usize,
    ) -> FilteredProbe {
        let nlist = nlist.max(1);
        let share = (allowed as f64 / len.max(1) as f64).clamp(1e-9, 1.0);
        let lists = ((nprobe as f64 / share.sqrt()).ceil() as usize).clamp(nprobe, nlist);
        FilteredProbe {
            lists,
            allowed: (lists as f64 * allowed as f64 / nlist as f64).ceil() as usize,
            found: wanted,
        }
    }

    /// Whether the scan may stop after `probed` lists that held `scanned` allowed vectors,
    /// with `found` results in hand.
    pub(crate) fn done(&self, probed: usize, scanned: usize, found: usize) -> bool {
        probed >= self.lists && found >= self.found && scanned >= self.allowed
    }
}

/// Whether an index holding `len` vectors should (re)train now.
pub(crate) fn training_due(len: usize, threshold: usize, trained_len: usize) -> bool {
    if trained_len == 0 {
        len >= threshold
    } else {
        len >= trained_len.saturating_mul(RETRAIN_GROWTH)
    }
}

/// Builds the id map of freshly loaded lists, or returns the first id stored twice (which
/// only a corrupt save can hold).
pub(crate) fn index_ids<'a>(
    lists: impl Iterator<Item = &'a [u64]>,
) -> std::result::Result<HashMap<u64, Slot>, u64> {
    let mut slots = HashMap::new();
    for (list, ids) in lists.enumerate() {
        slots.reserve(ids.len());
        for (row, &id) in ids.iter().enumerate() {
            let slot = Slot {
                list: list as u32,
                row: row as u32,
            };
            if slots.insert(id, slot).is_some() {
                return Err(id);
            }
        }
    }
    Ok(slots)
}

/// Offers every row of one list, scored exactly, to `top`.
pub(crate) fn scan_exact(
    metric: Metric,
    ids: &[u64],
    vectors: &[f32],
    dim: usize,
    query: &[f32],
    top: &mut TopK,
) {
    scan_exact_where(metric, ids, vectors, dim, query, top, |_| true);
}

/// [`scan_exact`] of the rows whose id `keep` accepts (a filter's allow-list); the others
/// are not scored. Returns how many were accepted.
pub(crate) fn scan_exact_where(
    metric: Metric,
    ids: &[u64],
    vectors: &[f32],
    dim: usize,
    query: &[f32],
    top: &mut TopK,
    keep: impl Fn(u64) -> bool,
) -> usize {
    let lower_is_better = metric.lower_is_better();
    let mut worst = top.worst_score();
    let mut kept = 0;
    for (&id, stored) in ids.iter().zip(vectors.chunks_exact(dim)) {
        if !keep(id) {
            continue;
        }
        kept += 1;
        let score = metric.score(query, stored);
        // Once `top` is full most rows lose to its worst; skip them without touching the
        // heap. A tie still goes in, to be decided by id.
        if let Some(worst) = worst {
            let loses = if lower_is_better {
                score > worst
            } else {
                score < worst
            };
            if loses {
                continue;
            }
        }
        top.push(Neighbor { id, score });
        worst = top.worst_score();
    }
    kept
}

/// The exact `k` nearest among `allowed`, each allowed id looked up in `slots` and its
/// vector read through `row` (IVF lists keep every exact vector).
pub(crate) fn search_among_slots<'a>(
    metric: Metric,
    slots: &HashMap<u64, Slot>,
    row: impl Fn(Slot) -> &'a [f32],
    query: &[f32],
    k: usize,
    allowed: &AllowList,
) -> Vec<Neighbor> {
    if k == 0 || allowed.is_empty() || slots.is_empty() {
        return Vec::new();
    }
    let mut top = TopK::new(metric, k.min(allowed.len() as usize));
    for id in allowed.ids() {
        if let Some(&slot) = slots.get(&id) {
            top.push(Neighbor {
                id,
                score: metric.score(query, row(slot)),
            });
        }
    }
    top.into_sorted_vec()
}

/// Heap bytes of an id → slot map: key, value and about one control byte per bucket.
pub(crate) fn slots_memory(slots: &HashMap<u64, Slot>) -> usize {
    slots.capacity() * (size_of::<u64>() + size_of::<Slot>() + 1)
}

/// One cell's vectors.
#[derive(Debug, Clone, Default)]
struct FlatList {
    ids: Vec<u64>,
    /// Row-major, `ids.len() · dim` values.
    vectors: Vec<f32>,
}

/// Native inverted-file index with exact vectors in its lists (see the module docs).
#[derive(Debug, Clone)]
pub struct IvfFlatIndex {
    dim: usize,
    metric: Metric,
    params: IvfFlatParams,
    /// `None` until trained.
    coarse: Option<CoarseQuantizer>,
    /// One list while untrained, `nlist` after.
    lists: Vec<FlatList>,
    slots: HashMap<u64, Slot>,
    /// Vectors held when the quantiser was last trained; 0 while untrained.
    trained_len: usize,
}

impl IvfFlatIndex {
    /// An empty, untrained index. `params` are expected to have passed
    /// [`IndexSpec::check`]; a `dim` of 0 gives an index that rejects every insert and
    /// search with [`Error::InvalidArgument`].
    pub fn new(dim: usize, metric: Metric, params: IvfFlatParams) -> Self {
        Self {
            dim,
            metric,
            params,
            coarse: None,
            lists: vec![FlatList::default()],
            slots: HashMap::new(),
            trained_len: 0,
        }
    }

    /// Whether the coarse quantiser has been trained (before that, search is exact).
    pub fn is_trained(&self) -> bool {
        self.coarse.is_some()
    }

    /// How many vectors the index must hold before it trains: `nlist ·`
    /// [`MIN_POINTS_PER_CELL`].
    pub fn training_threshold(&self) -> usize {
        self.params.nlist.saturating_mul(MIN_POINTS_PER_CELL)
    }

    fn row<'a>(&self, list: &'a FlatList, row: usize) -> &'a [f32] {
        &list.vectors[row * self.dim..(row + 1) * self.dim]
    }

    fn insert(&mut self, id: u64, vector: &[f32], list: usize) {
        let target = &mut self.lists[list];
        let slot = Slot {
            list: list as u32,
            row: target.ids.len() as u32,
        };
        target.ids.push(id);
        target.vectors.extend_from_slice(vector);
        self.slots.insert(id, slot);
    }

    fn remove_one(&mut self, id: u64) -> bool {
        let Some(slot) = self.slots.remove(&id) else {
            return false;
        };
        let dim = self.dim;
        let list = &mut self.lists[slot.list as usize];
        let row = slot.row as usize;
        let last = list.ids.len() - 1;
        if row != last {
            let moved = list.ids[last];
            list.ids[row] = moved;
            list.vectors
                .copy_within(last * dim..(last + 1) * dim, row * dim);
            self.slots.insert(moved, slot);
        }
        list.ids.truncate(last);
        list.vectors.truncate(last * dim);
        true
    }

    /// Trains the quantiser on everything held and redistributes the vectors.
    fn train(&mut self) {
        let dim = self.dim;
        let (ids, vectors) = take_all(&mut self.lists);
        let coarse = CoarseQuantizer::train(&vectors, dim, self.metric, self.params.nlist);
        let cells = coarse.assign(&vectors);
        let mut sizes = vec![0usize; coarse.nlist()];
        for &cell in &cells {
            sizes[cell as usize] += 1;
        }
        self.lists = sizes
            .iter()
            .map(|&size| FlatList {
                ids: Vec::with_capacity(size),
                vectors: Vec::with_capacity(size * dim),
            })
            .collect();
        self.slots.clear();
        for ((&id, vector), &cell) in ids.iter().zip(vectors.chunks_exact(dim)).zip(&cells) {
            self.insert(id, vector, cell as usize);
        }
        self.trained_len = ids.len();
        self.coarse = Some(coarse);
    }

    fn scan(&self, list: &FlatList, query: &[f32], top: &mut TopK) {
        scan_exact(self.metric, &list.ids, &list.vectors, self.dim, query, top);
    }

    /// Reopens an index written by [`VectorIndex::save`] under `dir`.
    ///
    /// Every count is checked against the header and the file length, ids must be unique
    /// and the checksum must match; anything else is [`Error::Corrupt`].
    pub fn load(dir: &Path) -> Result<Self> {
        let mut reader = Reader::open(dir, FILE_NAME, &MAGIC, FORMAT_VERSION)?;
        let dim = reader.u32()? as usize;
        let metric = reader.metric()?;
        let params = IvfFlatParams {
            nlist: reader.len()?,
            nprobe: reader.len()?,
        };
        IndexSpec::IvfFlat(params)
            .check(dim)
            .map_err(|error| reader.corrupt(error.to_string()))?;
        let trained_len = reader.len()?;
        let coarse = match trained_len {
            0 => None,
            _ => Some(CoarseQuantizer::read(
                &mut reader,
                dim,
                metric,
                params.nlist,
            )?),
        };
        let list_count = if coarse.is_some() { params.nlist } else { 1 };
        let mut lists = Vec::with_capacity(list_count);
        for _ in 0..list_count {
            let rows = reader.len()?;
            let ids = reader.u64s(rows)?;
            let values = rows
                .checked_mul(dim)
                .ok_or_else(|| reader.corrupt("list size overflows"))?;
            let vectors = reader.f32s(values)?;
            lists.push(FlatList { ids, vectors });
        }
        reader.finish()?;
        let slots = index_ids(lists.iter().map(|list| list.ids.as_slice())).map_err(|id| {
            Error::Corrupt(format!(
                "{}: id {id} is stored twice",
                dir.join(FILE_NAME).display()
            ))
        })?;
        Ok(Self {
            dim,
            metric,
            params,
            coarse,
            lists,
            slots,
            trained_len,
        })
    }
}

/// Empties `lists` into one id vector and one row-major vector block, without copying
/// when there is a single list (the untrained case).
fn take_all(lists: &mut Vec<FlatList>) -> (Vec<u64>, Vec<f32>) {
    let mut taken = mem::take(lists);
    if taken.len() == 1 {
        let list = taken.pop().unwrap_or_default();
        return (list.ids, list.vectors);
    }
    let count = taken.iter().map(|list| list.ids.len()).sum();
    let values = taken.iter().map(|list| list.vectors.len()).sum();
    let mut ids = Vec::with_capacity(count);
    let mut vectors = Vec::with_capacity(values);
    for list in taken {
        ids.extend_from_slice(&list.ids);
        vectors.extend_from_slice(&list.vectors);
    }
    (ids, vectors)
}

impl VectorIndex for IvfFlatIndex {
    fn spec(&self) -> IndexSpec {
        IndexSpec::IvfFlat(self.params)
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn metric(&self) -> Metric {
        self.metric
    }

    fn len(&self) -> usize {
        self.slots.len()
    }

    fn upsert(&mut self, ids: &[u64], vectors: &[f32]) -> Result<()> {
        // `new` trusts its caller; training must not meet parameters it cannot honour.
        require_dimension(self.dim)?;
        self.spec().check(self.dim)?;
        let vectors = prepare_batch(self.dim, self.metric, ids, vectors)?;
        check_capacity(self.len(), ids.len())?;
        let cells = self.coarse.as_ref().map(|coarse| coarse.assign(&vectors));
        for (position, (&id, vector)) in ids.iter().zip(vectors.chunks_exact(self.dim)).enumerate()
        {
            // Replacing is removing then inserting: the new vector may belong to another
            // cell. A repeated id in the batch therefore ends with its last vector.
            self.remove_one(id);
            let list = cells.as_ref().map_or(0, |cells| cells[position] as usize);
            self.insert(id, vector, list);
        }
        if training_due(self.len(), self.training_threshold(), self.trained_len) {
            self.train();
        }
        Ok(())
    }

    fn remove(&mut self, ids: &[u64]) -> Result<usize> {
        Ok(ids.iter().filter(|&&id| self.remove_one(id)).count())
    }

    fn vector(&self, id: u64) -> Option<Vec<f32>> {
        let slot = self.slots.get(&id)?;
        Some(
            self.row(&self.lists[slot.list as usize], slot.row as usize)
                .to_vec(),
        )
    }

    fn search(&self, query: &[f32], k: usize, params: &SearchParams) -> Result<Vec<Neighbor>> {
        let mut prepared = Vec::with_capacity(self.dim);
        prepare_query(self.dim, self.metric, query, &mut prepared)?;
        if k == 0 || self.is_empty() {
            return Ok(Vec::new());
        }
        let mut top = TopK::new(self.metric, k.min(self.len()));
        match &self.coarse {
            None => {
                for list in &self.lists {
                    self.scan(list, &prepared, &mut top);
                }
            }
            Some(coarse) => {
                let nprobe = probe_count(self.params.nprobe, params, coarse.nlist());
                for cell in coarse.probe(&prepared, nprobe) {
                    self.scan(&self.lists[cell.id as usize], &prepared, &mut top);
                }
            }
        }
        Ok(top.into_sorted_vec())
    }

    fn search_among(&self, query: &[f32], k: usize, allowed: &AllowList) -> Result<Vec<Neighbor>> {
        let mut prepared = Vec::with_capacity(self.dim);
        prepare_query(self.dim, self.metric, query, &mut prepared)?;
        Ok(search_among_slots(
            self.metric,
            &self.slots,
            |slot| self.row(&self.lists[slot.list as usize], slot.row as usize),
            &prepared,
            k,
            allowed,
        ))
    }

    /// Scans the probed lists skipping what the filter excludes, and goes on to the next
    /// closest lists until [`FilteredProbe`] is satisfied (all lists, at worst: that is the
    /// exact scan of the allowed vectors).
    fn search_filtered(
        &self,
        query: &[f32],
        k: usize,
        params: &SearchParams,
        allowed: &AllowList,
    ) -> Result<Vec<Neighbor>> {
        let mut prepared = Vec::with_capacity(self.dim);
        prepare_query(self.dim, self.metric, query, &mut prepared)?;
        if k == 0 || self.is_empty() || allowed.is_empty() {
            return Ok(Vec::new());
        }
        let wanted = k.min(self.len()).min(allowed.len() as usize);
        let mut top = TopK::new(self.metric, wanted);
        let keep = |id: u64| allowed.contains(id);
        let scan = |list: &FlatList, top: &mut TopK| -> usize {
            scan_exact_where(
                self.metric,
                &list.ids,
                &list.vectors,
                self.dim,
                &prepared,
                top,
                keep,
            )
        };
        match &self.coarse {
            None => {
                for list in &self.lists {
                    scan(list, &mut top);
                }
            }
            Some(coarse) => {
                let budget = FilteredProbe::new(
                    probe_count(self.params.nprobe, params, coarse.nlist()),
                    allowed.len() as usize,
                    self.len(),
                    coarse.nlist(),
                    wanted,
                );
                let mut scanned = 0;
                for (probed, cell) in coarse.probe(&prepared, coarse.nlist()).iter().enumerate() {
                    if budget.done(probed, scanned, top.len()) {
                        break;
                    }
                    scanned += scan(&self.lists[cell.id as usize], &mut top);
                }
            }
        }
        Ok(top.into_sorted_vec())
    }

    fn memory_bytes(&self) -> usize {
        let lists: usize = self
            .lists
            .iter()
            .map(|list| {
                list.ids.capacity() * size_of::<u64>() + list.vectors.capacity() * size_of::<f32>()
            })
            .sum();
        lists
            + self.lists.capacity() * size_of::<FlatList>()
            + self
                .coarse
                .as_ref()
                .map_or(0, CoarseQuantizer::memory_bytes)
            + slots_memory(&self.slots)
    }

    fn save(&self, dir: &Path) -> Result<()> {
        let dim = u32::try_from(self.dim).map_err(|_| {
            Error::InvalidArgument(format!("dimension {} does not fit the format", self.dim))
        })?;
        let mut writer = Writer::create(dir, FILE_NAME, &MAGIC, FORMAT_VERSION)?;
        writer.u32(dim)?;
        writer.metric(self.metric)?;
        writer.len(self.params.nlist)?;
        writer.len(self.params.nprobe)?;
        writer.len(self.trained_len)?;
        if let Some(coarse) = &self.coarse {
            coarse.write(&mut writer)?;
        }
        for list in &self.lists {
            writer.len(list.ids.len())?;
            writer.u64s(&list.ids)?;
            writer.f32s(&list.vectors)?;
        }
        writer.commit()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use crate::normalize_in_place;
    use std::{fs, path::PathBuf, time::Instant};

    use super::*;
    use crate::{
        dataset::{self, read_fvecs, read_ivecs, recall_at_k, Vectors},
        FlatIndex,
    };

    pub(crate) const DEFAULT: SearchParams = SearchParams {
        ef_search: 0,
        nprobe: 0,
    };

    pub(crate) fn probes(nprobe: u32) -> SearchParams {
        SearchParams {
            ef_search: 0,
            nprobe,
        }
    }

    /// siftsmall's base, queries and ground truth, or `None` (with a message) when the
    /// shared data folder is absent.
    pub(crate) fn siftsmall() -> Option<(Vectors, Vectors, Vec<Vec<u32>>)> {
        let dir = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/data/siftsmall/"
        ));
        if !dir.join("siftsmall_base.fvecs").exists() {
            eprintln!("skipping: siftsmall is absent from {}", dir.display());
            return None;
        }
        Some((
            read_fvecs(&dir.join("siftsmall_base.fvecs")).unwrap(),
            read_fvecs(&dir.join("siftsmall_query.fvecs")).unwrap(),
            read_ivecs(&dir.join("siftsmall_groundtruth.ivecs")).unwrap(),
        ))
    }

    /// Inserts `data` under ids `first_id..`.
    pub(crate) fn fill(index: &mut dyn VectorIndex, data: &Vectors, first_id: u64) {
        let ids: Vec<u64> = (first_id..first_id + data.len() as u64).collect();
        index.upsert(&ids, &data.data).unwrap();
    }

    pub(crate) fn flat_of(data: &Vectors, metric: Metric) -> FlatIndex {
        let mut flat = FlatIndex::new(data.dim, metric);
        fill(&mut flat, data, 0);
        flat
    }

    pub(crate) fn search_all(
        index: &dyn VectorIndex,
        queries: &Vectors,
        k: usize,
        params: &SearchParams,
    ) -> Vec<Vec<Neighbor>> {
        queries
            .rows()
            .map(|query| index.search(query, k, params).unwrap())
            .collect()
    }

    pub(crate) fn recall(
        index: &dyn VectorIndex,
        queries: &Vectors,
        truth: &[Vec<u32>],
        k: usize,
        params: &SearchParams,
    ) -> f64 {
        let found: Vec<Vec<u64>> = search_all(index, queries, k, params)
            .iter()
            .map(|result| result.iter().map(|neighbor| neighbor.id).collect())
            .collect();
        recall_at_k(&found, truth, k)
    }

    pub(crate) fn truth_u32(truth: Vec<Vec<u64>>) -> Vec<Vec<u32>> {
        truth
            .into_iter()
            .map(|row| row.into_iter().map(|id| id as u32).collect())
            .collect()
    }

    fn params(nlist: usize, nprobe: usize) -> IvfFlatParams {
        IvfFlatParams { nlist, nprobe }
    }

    fn trained(metric: Metric, data: &Vectors, nlist: usize, nprobe: usize) -> IvfFlatIndex {
        let mut index = IvfFlatIndex::new(data.dim, metric, params(nlist, nprobe));
        fill(&mut index, data, 0);
        assert!(index.is_trained());
        index
    }

    #[test]
    fn untrained_index_answers_exactly_like_flat() {
        let data = dataset::synthetic(600, 8, 1);
        let queries = dataset::synthetic(10, 8, 2);
        for metric in Metric::ALL {
            let mut index = IvfFlatIndex::new(8, metric, params(16, 1));
            fill(&mut index, &data, 0);
            assert!(!index.is_trained(), "600 < 16·{MIN_POINTS_PER_CELL}");
            let flat = flat_of(&data, metric);
            for k in [1, 10, 600, 1000] {
                assert_eq!(
                    search_all(&index, &queries, k, &DEFAULT),
                    search_all(&flat, &queries, k, &DEFAULT),
                    "{metric} k={k}"
                );
            }
        }
    }

    #[test]
    fn the_upsert_reaching_the_threshold_trains() {
        let data = dataset::synthetic(700, 8, 3);
        let queries = dataset::synthetic(10, 8, 4);
        let mut index = IvfFlatIndex::new(8, Metric::L2, params(16, 16));
        let threshold = index.training_threshold();
        assert_eq!(threshold, 16 * MIN_POINTS_PER_CELL);
        let ids: Vec<u64> = (0..700).collect();
        index
            .upsert(&ids[..threshold - 1], &data.data[..(threshold - 1) * 8])
            .unwrap();
        assert!(!index.is_trained());
        index
            .upsert(&ids[threshold - 1..], &data.data[(threshold - 1) * 8..])
            .unwrap();
        assert!(index.is_trained());
        assert_eq!(index.lists.len(), 16);
        assert_eq!(index.trained_len, 700);
        assert_eq!(index.len(), 700);
        // Training spread the points: no cell holds most of them.
        assert!(index.lists.iter().all(|list| list.ids.len() < 200));
        for (id, row) in data.rows().enumerate() {
            assert_eq!(index.vector(id as u64).unwrap(), row);
        }
        assert_eq!(
            search_all(&index, &queries, 10, &DEFAULT),
            search_all(&flat_of(&data, Metric::L2), &queries, 10, &DEFAULT)
        );
    }

    #[test]
    fn growing_eightfold_retrains() {
        let data = dataset::synthetic(700, 4, 5);
        let mut index = IvfFlatIndex::new(4, Metric::L2, params(2, 2));
        let first = 2 * MIN_POINTS_PER_CELL;
        let ids: Vec<u64> = (0..700).collect();
        index
            .upsert(&ids[..first], &data.data[..first * 4])
            .unwrap();
        assert_eq!(index.trained_len, first);
        let before = index.coarse.as_ref().unwrap().centroids.clone();
        index
            .upsert(
                &ids[first..first * RETRAIN_GROWTH - 1],
                &data.data[first * 4..(first * RETRAIN_GROWTH - 1) * 4],
            )
            .unwrap();
        assert_eq!(index.trained_len, first);
        index
            .upsert(
                &ids[first * RETRAIN_GROWTH - 1..],
                &data.data[(first * RETRAIN_GROWTH - 1) * 4..],
            )
            .unwrap();
        assert_eq!(index.trained_len, 700);
        assert_ne!(index.coarse.as_ref().unwrap().centroids, before);
        let queries = dataset::synthetic(10, 4, 6);
        assert_eq!(
            search_all(&index, &queries, 10, &DEFAULT),
            search_all(&flat_of(&data, Metric::L2), &queries, 10, &DEFAULT)
        );
    }

    #[test]
    fn probing_every_cell_gives_exact_results() {
        let data = dataset::synthetic(3_000, 16, 7);
        let queries = dataset::synthetic(20, 16, 8);
        for metric in Metric::ALL {
            let index = trained(metric, &data, 32, 2);
            let flat = flat_of(&data, metric);
            let exact = search_all(&flat, &queries, 10, &DEFAULT);
            assert_eq!(
                search_all(&index, &queries, 10, &probes(32)),
                exact,
                "{metric}"
            );
            // An override beyond nlist is clamped.
            assert_eq!(
                search_all(&index, &queries, 10, &probes(1_000)),
                exact,
                "{metric}"
            );
            let narrow = search_all(&index, &queries, 10, &DEFAULT);
            assert_ne!(
                narrow, exact,
                "{metric}: 2 of 32 cells should miss something"
            );
        }
    }

    #[test]
    fn recall_on_synthetic_data_for_every_metric() {
        let data = dataset::synthetic(5_000, 16, 9);
        let queries = dataset::synthetic(50, 16, 10);
        for metric in Metric::ALL {
            let truth = truth_u32(dataset::ground_truth(&data, &queries, 10, metric));
            // Uniform data has no clusters to exploit, so it takes 15 of 40 cells; the floor
            // leaves room above the 0.95-0.97 measured.
            let index = trained(metric, &data, 40, 15);
            let found = recall(&index, &queries, &truth, 10, &DEFAULT);
            eprintln!("{metric}: recall@10 {found:.3}");
            assert!(found >= 0.93, "{metric}: recall@10 {found}");
        }
    }

    #[test]
    fn recall_on_siftsmall() {
        let Some((base, queries, truth)) = siftsmall() else {
            return;
        };
        let started = Instant::now();
        let index = trained(Metric::L2, &base, 100, 16);
        eprintln!("ivf_flat nlist=100 built in {:?}", started.elapsed());
        let found = recall(&index, &queries, &truth, 10, &DEFAULT);
        eprintln!("ivf_flat nlist=100 nprobe=16: recall@10 {found:.4}");
        assert!(found >= 0.95, "recall@10 {found}");
        let all = recall(&index, &queries, &truth, 10, &probes(100));
        assert_eq!(all, 1.0);
    }

    #[test]
    fn removed_ids_are_never_returned() {
        let data = dataset::synthetic(2_000, 8, 11);
        let queries = dataset::synthetic(10, 8, 12);
        for trained_first in [false, true] {
            let mut index =
                IvfFlatIndex::new(8, Metric::L2, params(if trained_first { 8 } else { 64 }, 8));
            fill(&mut index, &data, 0);
            assert_eq!(index.is_trained(), trained_first);
            let removed: Vec<u64> = (0..2_000).filter(|id| id % 3 == 0).collect();
            let mut request = removed.clone();
            request.push(99_999);
            assert_eq!(index.remove(&request).unwrap(), removed.len());
            assert_eq!(index.remove(&removed).unwrap(), 0);
            assert_eq!(index.len(), 2_000 - removed.len());
            assert_eq!(index.vector(3), None);
            let live: Vec<u64> = (0..2_000).filter(|id| id % 3 != 0).collect();
            let mut flat = FlatIndex::new(8, Metric::L2);
            for &id in &live {
                flat.upsert(&[id], data.row(id as usize)).unwrap();
            }
            for query in queries.rows() {
                let found = index.search(query, 50, &probes(8)).unwrap();
                assert!(found.iter().all(|neighbor| neighbor.id % 3 != 0));
                assert_eq!(found, flat.search(query, 50, &DEFAULT).unwrap());
            }
            // Every moved row still answers for its own id.
            for &id in &live {
                assert_eq!(index.vector(id).unwrap(), data.row(id as usize));
            }
            assert_eq!(index.remove(&live).unwrap(), live.len());
            assert!(index.is_empty());
            assert!(index
                .search(queries.row(0), 5, &DEFAULT)
                .unwrap()
                .is_empty());
        }
    }

    #[test]
    fn upsert_replaces_and_a_repeated_id_keeps_its_last_vector() {
        let data = dataset::synthetic(1_000, 8, 13);
        for metric in Metric::ALL {
            let mut index = trained(metric, &data, 8, 1);
            let replacement = vec![-500.0f32; 8];
            index.upsert(&[7], &replacement).unwrap();
            assert_eq!(index.len(), 1_000);
            let mut stored = replacement.clone();
            if metric == Metric::Cosine {
                normalize_in_place(&mut stored);
            }
            assert_eq!(index.vector(7).unwrap(), stored);
            let found = index.search(&replacement, 1, &DEFAULT).unwrap();
            assert_eq!(found[0].id, 7, "{metric}");
            let near_old = index.search(data.row(7), 5, &probes(8)).unwrap();
            assert!(near_old.iter().all(|neighbor| neighbor.id != 7) || metric != Metric::L2);

            index
                .upsert(
                    &[3, 3, 4_000],
                    &[vec![1.0f32; 8], vec![2.0; 8], vec![3.0; 8]].concat(),
                )
                .unwrap();
            let mut expected = vec![2.0f32; 8];
            if metric == Metric::Cosine {
                normalize_in_place(&mut expected);
            }
            assert_eq!(index.vector(3).unwrap(), expected);
            assert_eq!(index.len(), 1_001);
        }
    }

    #[test]
    fn bad_input_is_an_error_and_changes_nothing() {
        let data = dataset::synthetic(500, 4, 14);
        for trained_first in [false, true] {
            let nlist = if trained_first { 4 } else { 64 };
            let mut index = IvfFlatIndex::new(4, Metric::Cosine, params(nlist, 2));
            fill(&mut index, &data, 0);
            let before = search_all(&index, &data, 5, &DEFAULT);
            assert!(matches!(
                index.upsert(&[1_000], &[1.0, 2.0]),
                Err(Error::DimensionMismatch { .. })
            ));
            assert!(matches!(
                index.upsert(&[1, 1_001], &[1.0, 2.0, 3.0, 4.0, f32::NAN, 0.0, 0.0, 1.0]),
                Err(Error::InvalidArgument(_))
            ));
            assert!(matches!(
                index.upsert(&[2, 1_003], &[1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0, 0.0]),
                Err(Error::InvalidArgument(_))
            ));
            assert!(matches!(
                index.search(&[1.0, 2.0, 3.0], 5, &DEFAULT),
                Err(Error::DimensionMismatch { .. })
            ));
            assert!(matches!(
                index.search(&[1.0, f32::INFINITY, 3.0, 4.0], 5, &DEFAULT),
                Err(Error::InvalidArgument(_))
            ));
            assert!(matches!(
                index.search(&[0.0; 4], 5, &DEFAULT),
                Err(Error::InvalidArgument(_))
            ));
            assert_eq!(index.len(), 500);
            assert_eq!(index.vector(1_001), None);
            let mut original = data.row(1).to_vec();
            normalize_in_place(&mut original);
            assert_eq!(index.vector(1).unwrap(), original);
            assert_eq!(search_all(&index, &data, 5, &DEFAULT), before);
        }
    }

    #[test]
    fn degenerate_construction_is_an_error_not_a_panic() {
        let mut zero_dim = IvfFlatIndex::new(0, Metric::L2, params(4, 1));
        assert!(zero_dim.upsert(&[], &[]).is_err());
        assert!(zero_dim.search(&[], 1, &DEFAULT).is_err());
        assert_eq!(zero_dim.remove(&[1]).unwrap(), 0);
        let mut no_cells = IvfFlatIndex::new(2, Metric::L2, params(0, 0));
        assert!(matches!(
            no_cells.upsert(&[1], &[1.0, 2.0]),
            Err(Error::InvalidSpec(_))
        ));
        assert!(no_cells
            .search(&[1.0, 2.0], 1, &DEFAULT)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn k_zero_empty_index_and_k_beyond_the_count() {
        let data = dataset::synthetic(400, 4, 15);
        let mut index = IvfFlatIndex::new(4, Metric::InnerProduct, params(4, 4));
        assert!(index.search(data.row(0), 10, &DEFAULT).unwrap().is_empty());
        fill(&mut index, &data, 0);
        assert!(index.is_trained());
        assert!(index.search(data.row(0), 0, &DEFAULT).unwrap().is_empty());
        assert_eq!(
            index.search(data.row(0), 1_000, &DEFAULT).unwrap().len(),
            400
        );
        // Fewer than k in the probed cells: what is there, still best first.
        let found = index.search(data.row(0), 1_000, &probes(1)).unwrap();
        assert!(found.len() < 400 && !found.is_empty());
        assert!(found.windows(2).all(|pair| Metric::InnerProduct
            .compare_neighbors(&pair[0], &pair[1])
            .is_le()));
    }

    #[test]
    fn save_then_load_gives_identical_results_trained_or_not() {
        let data = dataset::synthetic(1_500, 8, 16);
        let queries = dataset::synthetic(20, 8, 17);
        let directory = tempfile::tempdir().unwrap();
        for metric in Metric::ALL {
            for nlist in [8, 64] {
                let mut index = IvfFlatIndex::new(8, metric, params(nlist, 2));
                fill(&mut index, &data, 0);
                assert_eq!(index.is_trained(), nlist == 8);
                index.remove(&[5, 6, 7]).unwrap();
                let dir = directory.path().join(format!("{metric}-{nlist}"));
                index.save(&dir).unwrap();
                index.save(&dir).unwrap();
                let loaded = IvfFlatIndex::load(&dir).unwrap();
                assert_eq!(loaded.spec(), index.spec());
                assert_eq!(
                    (loaded.dim(), loaded.metric(), loaded.len()),
                    (8, metric, index.len())
                );
                assert_eq!(loaded.is_trained(), index.is_trained());
                assert_eq!(loaded.trained_len, index.trained_len);
                for params in [DEFAULT, probes(3)] {
                    assert_eq!(
                        search_all(&loaded, &queries, 10, &params),
                        search_all(&index, &queries, 10, &params)
                    );
                }
                assert_eq!(loaded.vector(8), index.vector(8));
                assert_eq!(loaded.vector(5), None);
                let through_spec = crate::load_index(&index.spec(), &dir).unwrap();
                assert_eq!(through_spec.len(), index.len());
            }
        }
    }

    #[test]
    fn damaged_files_are_corrupt() {
        let data = dataset::synthetic(100, 2, 18);
        let directory = tempfile::tempdir().unwrap();
        let mut index = IvfFlatIndex::new(2, Metric::L2, params(2, 1));
        fill(&mut index, &data, 0);
        assert!(index.is_trained());
        index.save(directory.path()).unwrap();
        let path = directory.path().join(FILE_NAME);
        let original = fs::read(&path).unwrap();
        for position in 0..original.len() {
            let mut damaged = original.clone();
            damaged[position] ^= 0x24;
            fs::write(&path, &damaged).unwrap();
            let result = IvfFlatIndex::load(directory.path());
            assert!(
                matches!(result, Err(Error::Corrupt(_))),
                "byte {position}: {result:?}"
            );
        }
        for len in (0..original.len()).step_by(7).chain([original.len() + 3]) {
            let mut changed = original.clone();
            changed.resize(len, 0);
            fs::write(&path, &changed).unwrap();
            let result = IvfFlatIndex::load(directory.path());
            assert!(
                matches!(result, Err(Error::Corrupt(_))),
                "length {len}: {result:?}"
            );
        }
    }

    /// A file with a valid checksum but contents no save could have written.
    fn write_raw(dir: &Path, nlist: usize, trained_len: usize, lists: &[&[u64]]) {
        let mut writer = Writer::create(dir, FILE_NAME, &MAGIC, FORMAT_VERSION).unwrap();
        writer.u32(1).unwrap();
        writer.metric(Metric::L2).unwrap();
        writer.len(nlist).unwrap();
        writer.len(1).unwrap();
        writer.len(trained_len).unwrap();
        if trained_len > 0 {
            writer.f32s(&vec![0.0; nlist]).unwrap();
        }
        for ids in lists {
            writer.len(ids.len()).unwrap();
            writer.u64s(ids).unwrap();
            writer.f32s(&vec![1.0; ids.len()]).unwrap();
        }
        writer.commit().unwrap();
    }

    #[test]
    fn well_checksummed_nonsense_is_corrupt() {
        let directory = tempfile::tempdir().unwrap();
        let dir = directory.path();
        write_raw(dir, 2, 80, &[&[1, 2], &[3]]);
        assert_eq!(IvfFlatIndex::load(dir).unwrap().len(), 3);
        for (nlist, trained_len, lists, needle) in [
            (2, 80, &[&[1u64, 2][..], &[2]][..], "stored twice"),
            (0, 0, &[&[][..]][..], "nlist"),
            (2, 80, &[&[1u64][..]][..], "bytes"),
            (2, 0, &[&[1u64][..], &[2]][..], "unread"),
        ] {
            write_raw(dir, nlist, trained_len, lists);
            let error = IvfFlatIndex::load(dir).unwrap_err();
            assert!(matches!(error, Error::Corrupt(_)), "{error}");
            assert!(error.to_string().contains(needle), "{error}");
        }
    }

    #[test]
    fn memory_grows_with_content() {
        let data = dataset::synthetic(1_000, 8, 19);
        let mut index = IvfFlatIndex::new(8, Metric::L2, params(4, 1));
        let empty = index.memory_bytes();
        fill(&mut index, &data, 0);
        assert!(index.memory_bytes() >= empty + 1_000 * (8 * 4 + 8));
    }

    /// `cargo test --release -p quiver-index --lib ivf::tests::report -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement, not a check"]
    fn report_siftsmall() {
        let Some((base, queries, truth)) = siftsmall() else {
            return;
        };
        for nlist in [100, 256] {
            let started = Instant::now();
            let index = trained(Metric::L2, &base, nlist, 1);
            let build = started.elapsed();
            for nprobe in [1, 4, 16, 64] {
                let params = probes(nprobe);
                let found = recall(&index, &queries, &truth, 10, &params);
                let started = Instant::now();
                let mut rounds = 0;
                while started.elapsed().as_secs_f64() < 1.0 {
                    search_all(&index, &queries, 10, &params);
                    rounds += 1;
                }
                let qps = (rounds * queries.len()) as f64 / started.elapsed().as_secs_f64();
                eprintln!(
                    "ivf_flat nlist={nlist} nprobe={nprobe}: build {build:.2?} \
                     recall@10 {found:.4} qps {qps:.0}"
                );
            }
        }
    }
}
