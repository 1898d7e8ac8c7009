//! Native IVF-PQ: an inverted file of product-quantised residuals, with exact re-rank.
//!
//! # Structure
//!
//! The coarse quantiser and its cells are those of [`crate::IvfFlatIndex`] (see
//! [`crate::ivf`]): a vector lives in the list of its nearest centroid `c`. What the list
//! scans is not the vector but an `m`-byte [`ProductQuantizer`] code of its *residual*
//! `x − c`: residuals of one cell are small and alike, so one set of codebooks quantises
//! them far more finely than it could the raw vectors.
//!
//! A query scores the probed lists with lookup tables (ADC):
//!
//! - squared L2: `‖q − x‖² ≈ ‖(q − c) − r̂‖²`, which per subspace `j` and codeword `y`
//!   expands to `‖q_j − c_j‖² + (‖y‖² + 2⟨c_j, y⟩) − 2⟨q_j, y⟩`. The middle term depends
//!   only on the list and the codeword, so it is computed once at training (FAISS's
//!   "precomputed table", `nlist · m · 2^nbits` floats); a probed list's table is then that
//!   term minus twice the query's inner-product table, `m · 2^nbits` operations instead of
//!   the `dim · 2^nbits` of scoring `q − c` against every codeword, and `Σ ‖q_j − c_j‖²` is
//!   the probe's centroid distance. Past [`PRECOMPUTED_TABLE_MAX_BYTES`] the index builds
//!   each probed list's table from `q − c` directly;
//! - inner product and cosine: `q·x ≈ q·c + q·r̂`; `q·c` is the centroid score the probe
//!   already computed, and one table of `q` against the codewords serves every list.
//!
//! A code's score is its list's base score plus the sum of its `m` table entries.
//!
//! With `rerank = 0` those approximate scores are returned as they are (same units: squared
//! L2 or inner product). With `rerank > 0` the best `rerank · k` candidates by approximate
//! score are scored again exactly and the best `k` of those returned, with exact scores.
//!
//! Every list keeps ids, codes (contiguous, `m` bytes per vector, the only data the scan
//! loop reads) and the exact vectors, row-aligned. Exact vectors are kept even with
//! `rerank = 0`: `vector(id)` must return what was stored, and retraining needs them.
//! Removal moves a list's last row into the hole in all three.
//!
//! # Training
//!
//! As for IVF-Flat, an untrained index holds everything in one list and answers exactly.
//! It trains once it holds `max(nlist, 2^nbits) ·` [`MIN_POINTS_PER_CELL`] vectors: enough
//! for the coarse cells, and for every sub-quantiser's `2^nbits` codewords. Training fits
//! the coarse quantiser, assigns every vector, trains the product quantiser on the
//! residuals of a sample of at most [`crate::pq::MAX_TRAINING_POINTS_PER_CODEWORD`]` ·
//! 2^nbits` vectors and encodes everything. Later inserts are assigned and encoded one by
//! one; at [`crate::ivf::RETRAIN_GROWTH`] times the training size both quantisers are
//! trained again.
//!
//! # Save format
//!
//! One file, `ivf_pq.bin`, written through the crate's checksummed writer (all integers
//! little-endian):
//!
//! | bytes            | field                                                   |
//! |------------------|---------------------------------------------------------|
//! | 8                | magic `QVIVFP01`                                        |
//! | 4                | format version (`u32`, currently 1)                     |
//! | 4                | dimension `dim` (`u32`)                                 |
//! | 1                | metric (`u8`: 0 = l2, 1 = ip, 2 = cosine)               |
//! | 5 × 8            | `nlist`, `m`, `nbits`, `nprobe`, `rerank` (`u64`)       |
//! | 8                | vectors held when last trained (`u64`; 0 = untrained)   |
//! | 4·nlist·dim      | coarse centroids (`f32`, row-major), only when trained  |
//! | 4·dim·2^nbits    | PQ codebooks (see [`crate::pq`]), only when trained     |
//! | per list         | rows `r` (`u64`), ids, codes (`r·m` bytes)¹, vectors     |
//! | 4                | CRC-32 (IEEE) of every byte before it                   |
//!
//! Per list, the ids are `r` `u64`s and the exact vectors `r·dim` `f32`s, row-major.
//! ¹ Codes are present only when trained. There is one list when untrained and `nlist`
//! when trained. Loading checks every code byte against `2^nbits`.

use std::{
    borrow::Cow,
    cmp::Ordering,
    collections::{BinaryHeap, HashMap},
    path::Path,
};

use crate::{
    dot,
    ivf::{
        check_capacity, index_ids, probe_count, scan_exact, scan_exact_where, search_among_slots,
        slots_memory, training_due, CoarseQuantizer, FilteredProbe, Slot, MIN_POINTS_PER_CELL,
    },
    kmeans::{self, SplitMix64},
    persist::{Reader, Writer},
    pq::{LookupTable, ProductQuantizer, MAX_TRAINING_POINTS_PER_CODEWORD},
    spec::IvfPqParams,
    validate::{prepare_batch, prepare_query, require_dimension},
    AllowList, Error, IndexSpec, Metric, Neighbor, Result, SearchParams, TopK, VectorIndex,
};

const FILE_NAME: &str = "ivf_pq.bin";
const MAGIC: [u8; 8] = *b"QVIVFP01";
const FORMAT_VERSION: u32 = 1;
const SAMPLE_SEED: u64 = 0x5156_5051_5f73_616d;
/// Largest precomputed L2 table kept (`nlist · m · 2^nbits` floats; see the module docs);
/// larger configurations build each probed list's table from the query residual instead, which
/// costs `dim · 2^nbits` operations per list rather than `m · 2^nbits`. FAISS's default
/// limit is 2 GiB; a shard should not spend that much on a speed-up.
pub const PRECOMPUTED_TABLE_MAX_BYTES: usize = 256 << 20;

/// An approximate candidate: its score, the score as a key where lower is better, its id,
/// and where its exact vector lives.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    /// The score negated for inner products (exact), with −0 made +0 and NaN made +∞ so
    /// that `total_cmp` orders keys like [`Metric::compare_scores`] orders scores.
    key: f32,
    score: f32,
    id: u64,
    list: u32,
    row: u32,
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Candidate {}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Candidate {
    /// Worse is greater: by key, then by id, so the heap's top is the candidate to evict.
    fn cmp(&self, other: &Self) -> Ordering {
        self.key
            .total_cmp(&other.key)
            .then_with(|| self.id.cmp(&other.id))
    }
}

/// The best `capacity` approximate candidates of one query.
///
/// [`TopK`] would do, but it orders through [`Metric::compare_neighbors`] and hands its
/// content back sorted; with `rerank · k` candidates per query that bookkeeping cost more
/// than scanning the codes. Here a comparison is one `total_cmp`, and the re-rank takes
/// the candidates unsorted. Final results still go through [`TopK`], so their order and
/// tie-breaking are exactly the crate's.
struct Candidates {
    capacity: usize,
    heap: BinaryHeap<Candidate>,
}

impl Candidates {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            heap: BinaryHeap::with_capacity(capacity.min(4096)),
        }
    }

    /// The key a candidate must not exceed to be considered, once full.
    #[inline]
    fn threshold(&self) -> Option<f32> {
        if self.heap.len() < self.capacity {
            return None;
        }
        self.heap.peek().map(|worst| worst.key)
    }

    #[inline]
    fn push(&mut self, sign: f32, score: f32, id: u64, list: u32, row: u32) {
        let key = sign * score;
        let key = if key.is_nan() {
            f32::INFINITY
        } else {
            key + 0.0
        };
        let candidate = Candidate {
            key,
            score,
            id,
            list,
            row,
        };
        if self.heap.len() < self.capacity {
            self.heap.push(candidate);
        } else if let Some(mut worst) = self.heap.peek_mut() {
            if candidate < *worst {
                *worst = candidate;
            }
        }
    }
}

/// One cell's vectors, row-aligned across the three vectors.
#[derive(Debug, Clone, Default)]
struct PqList {
    ids: Vec<u64>,
    /// `m` bytes per row; empty while the index is untrained.
    codes: Vec<u8>,
    /// Row-major exact vectors, `dim` values per row.
    vectors: Vec<f32>,
}

/// The trained quantisers.
#[derive(Debug, Clone)]
struct Quantizers {
    coarse: CoarseQuantizer,
    pq: ProductQuantizer,
    /// For L2, when it fits [`PRECOMPUTED_TABLE_MAX_BYTES`]: per list, subspace and
    /// codeword, `‖y‖² + 2⟨c_sub, y⟩` (`nlist × m × ksub`, see the module docs). Derived
    /// from the quantisers, so rebuilt on load rather than saved.
    precomputed: Option<Vec<f32>>,
}

impl Quantizers {
    fn new(coarse: CoarseQuantizer, pq: ProductQuantizer, metric: Metric) -> Self {
        let (m, ksub) = (pq.m(), pq.ksub());
        let entries = coarse.nlist().saturating_mul(m).saturating_mul(ksub);
        let precomputed = (metric == Metric::L2
            && entries.saturating_mul(size_of::<f32>()) <= PRECOMPUTED_TABLE_MAX_BYTES)
            .then(|| {
                let mut norms = Vec::with_capacity(m * ksub);
                for sub in 0..m {
                    for code in 0..ksub {
                        let codeword = pq.codeword(sub, code as u8);
                        norms.push(dot(codeword, codeword));
                    }
                }
                let mut terms = Vec::with_capacity(entries);
                let mut cross = LookupTable::new();
                for list in 0..coarse.nlist() {
                    pq.ip_table(coarse.centroid(list), &mut cross);
                    for (sub, norms) in norms.chunks_exact(ksub).enumerate() {
                        let row = &cross.row(sub)[..ksub];
                        terms.extend(
                            norms
                                .iter()
                                .zip(row)
                                .map(|(norm, cross)| norm + 2.0 * cross),
                        );
                    }
                }
                terms
            });
        Self {
            coarse,
            pq,
            precomputed,
        }
    }

    /// Fills `table` for scanning `list` with a query whose inner-product table is
    /// `query_table`, from the precomputed terms: `‖(q−c)−y‖² = ‖q−c‖² + term − 2⟨q, y⟩`
    /// per subspace, the `‖q−c‖²` part being the list's base score.
    fn fill_from_precomputed(
        &self,
        terms: &[f32],
        list: usize,
        query_table: &LookupTable,
        table: &mut LookupTable,
    ) {
        let (m, ksub) = (self.pq.m(), self.pq.ksub());
        let terms = &terms[list * m * ksub..(list + 1) * m * ksub];
        for (sub, (row, terms)) in table
            .rows_mut(m)
            .iter_mut()
            .zip(terms.chunks_exact(ksub))
            .enumerate()
        {
            let query_row = &query_table.row(sub)[..ksub];
            for ((out, &term), &query) in row[..ksub].iter_mut().zip(terms).zip(query_row) {
                *out = term - 2.0 * query;
            }
        }
    }
    /// The codes of `vectors`' residuals against their `cells`' centroids.
    fn encode(&self, vectors: &[f32], cells: &[u32]) -> Vec<u8> {
        let (dim, m) = (self.pq.dim(), self.pq.m());
        let mut codes = vec![0u8; cells.len() * m];
        kmeans::parallel_rows(&mut codes, m, dim * self.pq.ksub(), |first_row, chunk| {
            let mut residual = vec![0.0f32; dim];
            for (offset, code) in chunk.chunks_exact_mut(m).enumerate() {
                let row = first_row + offset;
                let vector = &vectors[row * dim..(row + 1) * dim];
                let centroid = self.coarse.centroid(cells[row] as usize);
                for ((out, &value), &center) in residual.iter_mut().zip(vector).zip(centroid) {
                    *out = value - center;
                }
                self.pq.encode(&residual, code);
            }
        });
        codes
    }

    fn memory_bytes(&self) -> usize {
        self.coarse.memory_bytes()
            + self.pq.memory_bytes()
            + self
                .precomputed
                .as_ref()
                .map_or(0, |terms| terms.capacity() * size_of::<f32>())
    }
}

/// Native inverted-file index over product-quantised residuals (see the module docs).
#[derive(Debug, Clone)]
pub struct IvfPqIndex {
    dim: usize,
    metric: Metric,
    params: IvfPqParams,
    /// `None` until trained.
    quantizers: Option<Quantizers>,
    /// One list while untrained, `nlist` after.
    lists: Vec<PqList>,
    slots: HashMap<u64, Slot>,
    /// Vectors held when the quantisers were last trained; 0 while untrained.
    trained_len: usize,
}

impl IvfPqIndex {
    /// An empty, untrained index. `params` are expected to have passed
    /// [`IndexSpec::check`]; a `dim` of 0 gives an index that rejects every insert and
    /// search with [`Error::InvalidArgument`].
    pub fn new(dim: usize, metric: Metric, params: IvfPqParams) -> Self {
        Self {
            dim,
            metric,
            params,
            quantizers: None,
            lists: vec![PqList::default()],
            slots: HashMap::new(),
            trained_len: 0,
        }
    }

    /// Whether the quantisers have been trained (before that, search is exact).
    pub fn is_trained(&self) -> bool {
        self.quantizers.is_some()
    }

    /// How many vectors the index must hold before it trains:
    /// `max(nlist, 2^nbits) ·` [`MIN_POINTS_PER_CELL`].
    pub fn training_threshold(&self) -> usize {
        let codewords = 1usize << self.params.nbits.min(usize::BITS as usize - 1);
        self.params
            .nlist
            .max(codewords)
            .saturating_mul(MIN_POINTS_PER_CELL)
    }

    fn insert(&mut self, id: u64, vector: &[f32], code: &[u8], list: usize) {
        let target = &mut self.lists[list];
        let slot = Slot {
            list: list as u32,
            row: target.ids.len() as u32,
        };
        target.ids.push(id);
        target.codes.extend_from_slice(code);
        target.vectors.extend_from_slice(vector);
        self.slots.insert(id, slot);
    }

    fn remove_one(&mut self, id: u64) -> bool {
        let Some(slot) = self.slots.remove(&id) else {
            return false;
        };
        let (dim, m) = (self.dim, self.code_len());
        let list = &mut self.lists[slot.list as usize];
        let row = slot.row as usize;
        let last = list.ids.len() - 1;
        if row != last {
            let moved = list.ids[last];
            list.ids[row] = moved;
            list.codes.copy_within(last * m..(last + 1) * m, row * m);
            list.vectors
                .copy_within(last * dim..(last + 1) * dim, row * dim);
            self.slots.insert(moved, slot);
        }
        list.ids.truncate(last);
        list.codes.truncate(last * m);
        list.vectors.truncate(last * dim);
        true
    }

    /// Bytes per code in the lists: `m` once trained, 0 before.
    fn code_len(&self) -> usize {
        if self.quantizers.is_some() {
            self.params.m
        } else {
            0
        }
    }

    /// Trains both quantisers on everything held and rebuilds the lists. Nothing changes
    /// unless training succeeds.
    fn train(&mut self) -> Result<()> {
        let (quantizers, lists, slots) = {
            let (ids, vectors) = gather(&self.lists);
            let quantizers = self.train_quantizers(&vectors)?;
            let cells = quantizers.coarse.assign(&vectors);
            let codes = quantizers.encode(&vectors, &cells);
            let (lists, slots) = self.distribute(&ids, &vectors, &codes, &cells);
            (quantizers, lists, slots)
        };
        self.trained_len = slots.len();
        self.lists = lists;
        self.slots = slots;
        self.quantizers = Some(quantizers);
        Ok(())
    }

    fn train_quantizers(&self, vectors: &[f32]) -> Result<Quantizers> {
        let dim = self.dim;
        let coarse = CoarseQuantizer::train(vectors, dim, self.metric, self.params.nlist);
        // The product quantiser only needs a sample; assigning just the sample keeps the
        // residuals (a second copy of the data) small.
        let ksub = 1usize << self.params.nbits;
        let mut rng = SplitMix64::new(SAMPLE_SEED);
        let n = vectors.len() / dim;
        let sample = kmeans::sample_rows(n, ksub * MAX_TRAINING_POINTS_PER_CODEWORD, &mut rng);
        let mut sampled = Vec::with_capacity(sample.len() * dim);
        for &row in &sample {
            sampled.extend_from_slice(&vectors[row * dim..(row + 1) * dim]);
        }
        let cells = coarse.assign(&sampled);
        for (residual, &cell) in sampled.chunks_exact_mut(dim).zip(&cells) {
            for (value, center) in residual.iter_mut().zip(coarse.centroid(cell as usize)) {
                *value -= center;
            }
        }
        let pq = ProductQuantizer::train(dim, self.params.m, self.params.nbits, &sampled)?;
        Ok(Quantizers::new(coarse, pq, self.metric))
    }

    /// New lists holding every row in its cell, and their id map.
    fn distribute(
        &self,
        ids: &[u64],
        vectors: &[f32],
        codes: &[u8],
        cells: &[u32],
    ) -> (Vec<PqList>, HashMap<u64, Slot>) {
        let (dim, m) = (self.dim, self.params.m);
        let mut sizes = vec![0usize; self.params.nlist];
        for &cell in cells {
            sizes[cell as usize] += 1;
        }
        let mut lists: Vec<PqList> = sizes
            .iter()
            .map(|&size| PqList {
                ids: Vec::with_capacity(size),
                codes: Vec::with_capacity(size * m),
                vectors: Vec::with_capacity(size * dim),
            })
            .collect();
        let mut slots = HashMap::with_capacity(ids.len());
        for (row, &cell) in cells.iter().enumerate() {
            let list = &mut lists[cell as usize];
            slots.insert(
                ids[row],
                Slot {
                    list: cell,
                    row: list.ids.len() as u32,
                },
            );
            list.ids.push(ids[row]);
            list.codes.extend_from_slice(&codes[row * m..(row + 1) * m]);
            list.vectors
                .extend_from_slice(&vectors[row * dim..(row + 1) * dim]);
        }
        (lists, slots)
    }

    /// Exact search over everything (the untrained case), or over what `allowed` holds.
    fn search_exact(&self, query: &[f32], k: usize, allowed: Option<&AllowList>) -> Vec<Neighbor> {
        let wanted = k
            .min(self.len())
            .min(allowed.map_or(usize::MAX, |allowed| allowed.len() as usize));
        if wanted == 0 {
            return Vec::new();
        }
        let mut top = TopK::new(self.metric, wanted);
        for list in &self.lists {
            match allowed {
                None => scan_exact(
                    self.metric,
                    &list.ids,
                    &list.vectors,
                    self.dim,
                    query,
                    &mut top,
                ),
                Some(allowed) => {
                    scan_exact_where(
                        self.metric,
                        &list.ids,
                        &list.vectors,
                        self.dim,
                        query,
                        &mut top,
                        |id| allowed.contains(id),
                    );
                }
            }
        }
        top.into_sorted_vec()
    }

    /// The quantised search. With `allowed`, codes the filter excludes are skipped, and
    /// lists past `nprobe` are scanned, closest first, until the candidates for re-ranking
    /// are all in hand (every list at worst).
    fn search_quantized(
        &self,
        quantizers: &Quantizers,
        query: &[f32],
        k: usize,
        params: &SearchParams,
        allowed: Option<&AllowList>,
    ) -> Vec<Neighbor> {
        let Quantizers {
            coarse,
            pq,
            precomputed,
        } = quantizers;
        let nprobe = probe_count(self.params.nprobe, params, coarse.nlist());
        let kept = match self.params.rerank {
            0 => k,
            rerank => k.saturating_mul(rerank),
        }
        .min(self.len())
        .min(allowed.map_or(usize::MAX, |allowed| allowed.len() as usize));
        if kept == 0 {
            return Vec::new();
        }
        let budget = allowed.map(|allowed| {
            FilteredProbe::new(
                nprobe,
                allowed.len() as usize,
                self.len(),
                coarse.nlist(),
                kept,
            )
        });
        let mut candidates = Candidates::new(kept);
        let sign = if self.metric.lower_is_better() {
            1.0
        } else {
            -1.0
        };
        // One inner-product table serves every list for ip and cosine, and for L2 with
        // precomputed terms; L2 without them needs a residual table per list.
        let mut query_table = LookupTable::new();
        let per_list_residual = self.metric == Metric::L2 && precomputed.is_none();
        if !per_list_residual {
            pq.ip_table(query, &mut query_table);
        }
        let mut table = LookupTable::new();
        let mut residual = Vec::new();
        let probed = match allowed {
            None => coarse.probe(query, nprobe),
            Some(_) => coarse.probe(query, coarse.nlist()),
        };
        let mut scanned = 0;
        for (position, cell) in probed.into_iter().enumerate() {
            let done = match &budget {
                None => position >= nprobe,
                Some(budget) => budget.done(position, scanned, candidates.heap.len()),
            };
            if done {
                break;
            }
            let list_index = cell.id as usize;
            let list = &self.lists[list_index];
            if list.ids.is_empty() {
                continue;
            }
            let (table, base) = match (self.metric, precomputed) {
                (Metric::L2, Some(terms)) => {
                    quantizers.fill_from_precomputed(terms, list_index, &query_table, &mut table);
                    (&table, cell.score)
                }
                (Metric::L2, None) => {
                    let centroid = coarse.centroid(list_index);
                    residual.clear();
                    residual.extend(
                        query
                            .iter()
                            .zip(centroid)
                            .map(|(value, center)| value - center),
                    );
                    pq.l2_table(&residual, &mut table);
                    (&table, 0.0)
                }
                (Metric::InnerProduct | Metric::Cosine, _) => (&query_table, cell.score),
            };
            scanned += scan_codes(
                list,
                list_index as u32,
                pq.m(),
                table,
                base,
                sign,
                &mut candidates,
                allowed,
            );
        }
        let rerank = self.params.rerank > 0;
        let mut top = TopK::new(self.metric, k.min(candidates.heap.len()));
        for candidate in candidates.heap.into_vec() {
            let score = if rerank {
                let row = candidate.row as usize;
                let list = &self.lists[candidate.list as usize];
                self.metric
                    .score(query, &list.vectors[row * self.dim..(row + 1) * self.dim])
            } else {
                candidate.score
            };
            top.push(Neighbor {
                id: candidate.id,
                score,
            });
        }
        top.into_sorted_vec()
    }

    /// Reopens an index written by [`VectorIndex::save`] under `dir`.
    ///
    /// Every count is checked against the header and the file length, codes against
    /// `2^nbits`, ids must be unique and the checksum must match; anything else is
    /// [`Error::Corrupt`].
    pub fn load(dir: &Path) -> Result<Self> {
        let mut reader = Reader::open(dir, FILE_NAME, &MAGIC, FORMAT_VERSION)?;
        let dim = reader.u32()? as usize;
        let metric = reader.metric()?;
        let params = IvfPqParams {
            nlist: reader.len()?,
            m: reader.len()?,
            nbits: reader.len()?,
            nprobe: reader.len()?,
            rerank: reader.len()?,
        };
        IndexSpec::IvfPq(params)
            .check(dim)
            .map_err(|error| reader.corrupt(error.to_string()))?;
        let trained_len = reader.len()?;
        let quantizers = match trained_len {
            0 => None,
            _ => {
                let coarse = CoarseQuantizer::read(&mut reader, dim, metric, params.nlist)?;
                let pq = ProductQuantizer::read(&mut reader, dim, params.m, params.nbits)?;
                Some(Quantizers::new(coarse, pq, metric))
            }
        };
        let (list_count, code_len) = match quantizers {
            Some(_) => (params.nlist, params.m),
            None => (1, 0),
        };
        let ksub = 1usize << params.nbits;
        let mut lists = Vec::with_capacity(list_count);
        for _ in 0..list_count {
            let rows = reader.len()?;
            let ids = reader.u64s(rows)?;
            let code_bytes = rows
                .checked_mul(code_len)
                .ok_or_else(|| reader.corrupt("code size overflows"))?;
            let codes = reader.bytes(code_bytes)?;
            if let Some(bad) = codes.iter().find(|&&byte| usize::from(byte) >= ksub) {
                return Err(reader.corrupt(format!(
                    "code {bad} is out of range for nbits={}",
                    params.nbits
                )));
            }
            let values = rows
                .checked_mul(dim)
                .ok_or_else(|| reader.corrupt("list size overflows"))?;
            let vectors = reader.f32s(values)?;
            lists.push(PqList {
                ids,
                codes,
                vectors,
            });
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
            quantizers,
            lists,
            slots,
            trained_len,
        })
    }
}

/// Scores every code of `list` (those `allowed` holds, when given) and offers it to
/// `candidates`; `sign` turns scores into keys (1 for L2, −1 for inner products). Returns
/// how many codes were scored.
#[inline]
#[allow(clippy::too_many_arguments)]
fn scan_codes(
    list: &PqList,
    list_index: u32,
    m: usize,
    table: &LookupTable,
    base: f32,
    sign: f32,
    candidates: &mut Candidates,
    allowed: Option<&AllowList>,
) -> usize {
    let mut threshold = candidates.threshold();
    let mut kept = 0;
    for (row, (&id, code)) in list.ids.iter().zip(list.codes.chunks_exact(m)).enumerate() {
        if allowed.is_some_and(|allowed| !allowed.contains(id)) {
            continue;
        }
        kept += 1;
        let score = base + table.score(code);
        // Most codes lose to the current worst; reject them before touching the heap. A
        // tie still goes to the heap, which breaks it by id.
        if threshold.is_some_and(|threshold| sign * score > threshold) {
            continue;
        }
        candidates.push(sign, score, id, list_index, row as u32);
        threshold = candidates.threshold();
    }
    kept
}

/// All ids and vectors of `lists`, borrowed when there is one list (the untrained case).
fn gather(lists: &[PqList]) -> (Cow<'_, [u64]>, Cow<'_, [f32]>) {
    if let [list] = lists {
        return (Cow::Borrowed(&list.ids), Cow::Borrowed(&list.vectors));
    }
    let ids: Vec<u64> = lists
        .iter()
        .flat_map(|list| list.ids.iter().copied())
        .collect();
    let vectors: Vec<f32> = lists
        .iter()
        .flat_map(|list| list.vectors.iter().copied())
        .collect();
    (Cow::Owned(ids), Cow::Owned(vectors))
}

impl VectorIndex for IvfPqIndex {
    fn spec(&self) -> IndexSpec {
        IndexSpec::IvfPq(self.params)
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
        let encoded = self.quantizers.as_ref().map(|quantizers| {
            let cells = quantizers.coarse.assign(&vectors);
            let codes = quantizers.encode(&vectors, &cells);
            (cells, codes)
        });
        let m = self.code_len();
        for (position, (&id, vector)) in ids.iter().zip(vectors.chunks_exact(self.dim)).enumerate()
        {
            // Replacing is removing then inserting: the new vector may belong to another
            // cell. A repeated id in the batch therefore ends with its last vector.
            self.remove_one(id);
            let (list, code) = match &encoded {
                Some((cells, codes)) => (
                    cells[position] as usize,
                    &codes[position * m..(position + 1) * m],
                ),
                None => (0, &[][..]),
            };
            self.insert(id, vector, code, list);
        }
        if training_due(self.len(), self.training_threshold(), self.trained_len) {
            self.train()?;
        }
        Ok(())
    }

    fn remove(&mut self, ids: &[u64]) -> Result<usize> {
        Ok(ids.iter().filter(|&&id| self.remove_one(id)).count())
    }

    fn vector(&self, id: u64) -> Option<Vec<f32>> {
        let slot = self.slots.get(&id)?;
        let row = slot.row as usize;
        Some(self.lists[slot.list as usize].vectors[row * self.dim..(row + 1) * self.dim].to_vec())
    }

    fn search(&self, query: &[f32], k: usize, params: &SearchParams) -> Result<Vec<Neighbor>> {
        let mut prepared = Vec::with_capacity(self.dim);
        prepare_query(self.dim, self.metric, query, &mut prepared)?;
        if k == 0 || self.is_empty() {
            return Ok(Vec::new());
        }
        Ok(match &self.quantizers {
            None => self.search_exact(&prepared, k, None),
            Some(quantizers) => self.search_quantized(quantizers, &prepared, k, params, None),
        })
    }

    fn search_among(&self, query: &[f32], k: usize, allowed: &AllowList) -> Result<Vec<Neighbor>> {
        let mut prepared = Vec::with_capacity(self.dim);
        prepare_query(self.dim, self.metric, query, &mut prepared)?;
        Ok(search_among_slots(
            self.metric,
            &self.slots,
            |slot| {
                let row = slot.row as usize;
                &self.lists[slot.list as usize].vectors[row * self.dim..(row + 1) * self.dim]
            },
            &prepared,
            k,
            allowed,
        ))
    }

    fn search_filtered(
        &self,
        query: &[f32],
        k: usize,
        params: &SearchParams,
        allowed: &AllowList,
    ) -> Result<Vec<Neighbor>> {
        let mut prepared = Vec::with_capacity(self.dim);
        prepare_query(self.dim, self.metric, query, &mut prepared)?;
        if k == 0 || self.is_empty() {
            return Ok(Vec::new());
        }
        Ok(match &self.quantizers {
            None => self.search_exact(&prepared, k, Some(allowed)),
            Some(quantizers) => {
                self.search_quantized(quantizers, &prepared, k, params, Some(allowed))
            }
        })
    }

    fn memory_bytes(&self) -> usize {
        let lists: usize = self
            .lists
            .iter()
            .map(|list| {
                list.ids.capacity() * size_of::<u64>()
                    + list.codes.capacity()
                    + list.vectors.capacity() * size_of::<f32>()
            })
            .sum();
        lists
            + self.lists.capacity() * size_of::<PqList>()
            + self.quantizers.as_ref().map_or(0, Quantizers::memory_bytes)
            + slots_memory(&self.slots)
    }

    fn save(&self, dir: &Path) -> Result<()> {
        let dim = u32::try_from(self.dim).map_err(|_| {
            Error::InvalidArgument(format!("dimension {} does not fit the format", self.dim))
        })?;
        let mut writer = Writer::create(dir, FILE_NAME, &MAGIC, FORMAT_VERSION)?;
        writer.u32(dim)?;
        writer.metric(self.metric)?;
        for value in [
            self.params.nlist,
            self.params.m,
            self.params.nbits,
            self.params.nprobe,
            self.params.rerank,
            self.trained_len,
        ] {
            writer.len(value)?;
        }
        if let Some(quantizers) = &self.quantizers {
            quantizers.coarse.write(&mut writer)?;
            quantizers.pq.write(&mut writer)?;
        }
        for list in &self.lists {
            writer.len(list.ids.len())?;
            writer.u64s(&list.ids)?;
            writer.bytes(&list.codes)?;
            writer.f32s(&list.vectors)?;
        }
        writer.commit()
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, time::Instant};

    use super::*;
    use crate::{
        dataset::{self, Vectors},
        dot,
        ivf::tests::{fill, flat_of, probes, recall, search_all, siftsmall, truth_u32, DEFAULT},
        l2_squared, normalize_in_place, FlatIndex,
    };

    fn params(nlist: usize, m: usize, nbits: usize, nprobe: usize, rerank: usize) -> IvfPqParams {
        IvfPqParams {
            nlist,
            m,
            nbits,
            nprobe,
            rerank,
        }
    }

    fn built(metric: Metric, data: &Vectors, params: IvfPqParams) -> IvfPqIndex {
        let mut index = IvfPqIndex::new(data.dim, metric, params);
        fill(&mut index, data, 0);
        index
    }

    #[test]
    fn untrained_index_answers_exactly_like_flat() {
        let data = dataset::synthetic(600, 8, 1);
        let queries = dataset::synthetic(10, 8, 2);
        for metric in Metric::ALL {
            for rerank in [0, 3] {
                let index = built(metric, &data, params(16, 4, 8, 1, rerank));
                assert!(!index.is_trained());
                let flat = flat_of(&data, metric);
                for k in [1, 10, 1_000] {
                    assert_eq!(
                        search_all(&index, &queries, k, &DEFAULT),
                        search_all(&flat, &queries, k, &DEFAULT),
                        "{metric} rerank={rerank} k={k}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_threshold_covers_cells_and_codewords_and_the_crossing_upsert_trains() {
        let index = IvfPqIndex::new(8, Metric::L2, params(4, 4, 4, 1, 0));
        assert_eq!(index.training_threshold(), 16 * MIN_POINTS_PER_CELL);
        let index = IvfPqIndex::new(8, Metric::L2, params(300, 4, 8, 1, 0));
        assert_eq!(index.training_threshold(), 300 * MIN_POINTS_PER_CELL);

        let data = dataset::synthetic(700, 8, 3);
        let mut index = IvfPqIndex::new(8, Metric::L2, params(4, 4, 4, 4, 100));
        let threshold = index.training_threshold();
        let ids: Vec<u64> = (0..700).collect();
        index
            .upsert(&ids[..threshold - 1], &data.data[..(threshold - 1) * 8])
            .unwrap();
        assert!(!index.is_trained());
        index
            .upsert(&ids[threshold - 1..], &data.data[(threshold - 1) * 8..])
            .unwrap();
        assert!(index.is_trained());
        assert_eq!(index.trained_len, 700);
        assert_eq!(index.lists.len(), 4);
        assert!(index
            .lists
            .iter()
            .all(|list| list.codes.len() == list.ids.len() * 4));
        for (id, row) in data.rows().enumerate() {
            assert_eq!(index.vector(id as u64).unwrap(), row);
        }
        // Later inserts are assigned and encoded one by one.
        let more = dataset::synthetic(50, 8, 4);
        fill(&mut index, &more, 700);
        assert_eq!(index.len(), 750);
        assert_eq!(index.trained_len, 700);
        assert!(index
            .lists
            .iter()
            .all(|list| list.codes.len() == list.ids.len() * 4));
        let queries = dataset::synthetic(10, 8, 5);
        let mut all = data.clone();
        all.data.extend_from_slice(&more.data);
        // Every cell probed and 100·k re-ranked out of 750: exact.
        assert_eq!(
            search_all(&index, &queries, 10, &DEFAULT),
            search_all(&flat_of(&all, Metric::L2), &queries, 10, &DEFAULT)
        );
    }

    #[test]
    fn growing_eightfold_retrains_both_quantizers() {
        let data = dataset::synthetic(2_600, 4, 6);
        let mut index = IvfPqIndex::new(4, Metric::L2, params(2, 2, 3, 2, 1_000));
        let first = index.training_threshold();
        let ids: Vec<u64> = (0..2_600).collect();
        index
            .upsert(&ids[..first], &data.data[..first * 4])
            .unwrap();
        assert_eq!(index.trained_len, first);
        let before = index.quantizers.as_ref().unwrap().pq.clone();
        index
            .upsert(&ids[first..], &data.data[first * 4..])
            .unwrap();
        assert_eq!(index.trained_len, 2_600);
        assert_ne!(index.quantizers.as_ref().unwrap().pq, before);
        let queries = dataset::synthetic(5, 4, 7);
        assert_eq!(
            search_all(&index, &queries, 2, &DEFAULT),
            search_all(&flat_of(&data, Metric::L2), &queries, 2, &DEFAULT)
        );
    }

    /// The vector a code stands for: its cell's centroid plus the decoded residual.
    fn reconstruction(index: &IvfPqIndex, id: u64) -> Vec<f32> {
        let quantizers = index.quantizers.as_ref().unwrap();
        let slot = index.slots[&id];
        let m = index.params.m;
        let row = slot.row as usize;
        let code = &index.lists[slot.list as usize].codes[row * m..(row + 1) * m];
        let mut decoded = vec![0.0; index.dim];
        quantizers.pq.decode(code, &mut decoded);
        let centroid = quantizers.coarse.centroid(slot.list as usize);
        decoded
            .iter()
            .zip(centroid)
            .map(|(residual, center)| residual + center)
            .collect()
    }

    #[test]
    fn rerank_zero_returns_pq_scores_and_rerank_returns_exact_ones() {
        let data = dataset::synthetic(2_000, 16, 8);
        let queries = dataset::synthetic(10, 16, 9);
        for metric in Metric::ALL {
            let mut index = built(metric, &data, params(8, 4, 5, 3, 0));
            assert!(index.is_trained());
            for query in queries.rows() {
                let mut query = query.to_vec();
                if metric == Metric::Cosine {
                    normalize_in_place(&mut query);
                }
                let found = index.search(&query, 10, &DEFAULT).unwrap();
                assert_eq!(found.len(), 10);
                for neighbor in &found {
                    let approximate = metric.score(&query, &reconstruction(&index, neighbor.id));
                    // Precomputed L2 terms cancel large numbers, so allow for the magnitude
                    // of the query's distance to the data, not just of the score.
                    let scale = l2_squared(&query, &data.data[..16])
                        .max(dot(&query, &query))
                        .max(1.0);
                    assert!(
                        (approximate - neighbor.score).abs() <= 1e-5 * scale,
                        "{metric}: {approximate} vs {}",
                        neighbor.score
                    );
                }
            }
            index.params.rerank = 4;
            for query in queries.rows() {
                let mut normalised = query.to_vec();
                if metric == Metric::Cosine {
                    normalize_in_place(&mut normalised);
                }
                let found = index.search(query, 10, &DEFAULT).unwrap();
                assert!(found
                    .windows(2)
                    .all(|pair| metric.compare_neighbors(&pair[0], &pair[1]).is_le()));
                for neighbor in &found {
                    let exact = metric.score(&normalised, &index.vector(neighbor.id).unwrap());
                    assert_eq!(exact, neighbor.score, "{metric}");
                }
            }
        }
    }

    #[test]
    fn l2_with_and_without_precomputed_tables_agree() {
        let data = dataset::synthetic(3_000, 16, 10);
        let queries = dataset::synthetic(20, 16, 11);
        let with = built(Metric::L2, &data, params(16, 8, 6, 4, 0));
        let mut without = with.clone();
        without.quantizers.as_mut().unwrap().precomputed = None;
        assert!(with.quantizers.as_ref().unwrap().precomputed.is_some());
        for query in queries.rows() {
            let left = with.search(query, 20, &DEFAULT).unwrap();
            let right = without.search(query, 20, &DEFAULT).unwrap();
            let overlap = left
                .iter()
                .filter(|hit| right.iter().any(|other| other.id == hit.id))
                .count();
            assert!(overlap >= 18, "{overlap}");
            for (left, right) in left.iter().zip(&right) {
                assert!((left.score - right.score).abs() <= 1e-3 * right.score.max(1.0));
            }
        }
    }

    #[test]
    fn every_cell_and_a_wide_rerank_give_exact_results() {
        let data = dataset::synthetic(2_000, 16, 12);
        let queries = dataset::synthetic(10, 16, 13);
        for metric in Metric::ALL {
            let index = built(metric, &data, params(8, 8, 4, 1, 200));
            assert!(index.is_trained());
            let expected = search_all(&flat_of(&data, metric), &queries, 10, &DEFAULT);
            assert_eq!(
                search_all(&index, &queries, 10, &probes(8)),
                expected,
                "{metric}"
            );
            assert_eq!(
                search_all(&index, &queries, 10, &probes(500)),
                expected,
                "{metric}"
            );
        }
    }

    #[test]
    fn recall_on_synthetic_data_for_every_metric() {
        let data = dataset::synthetic(5_000, 16, 14);
        let queries = dataset::synthetic(50, 16, 15);
        for metric in Metric::ALL {
            let truth = truth_u32(dataset::ground_truth(&data, &queries, 10, metric));
            // Uniform data: 15 of 40 cells (as for IVF-Flat), and a re-rank wide enough
            // for 8-byte codes.
            let index = built(metric, &data, params(40, 8, 8, 15, 10));
            let found = recall(&index, &queries, &truth, 10, &DEFAULT);
            eprintln!("{metric}: recall@10 {found:.3}");
            assert!(found >= 0.9, "{metric}: recall@10 {found}");
        }
    }

    #[test]
    fn recall_on_siftsmall() {
        let Some((base, queries, truth)) = siftsmall() else {
            return;
        };
        let started = Instant::now();
        let mut index = built(Metric::L2, &base, params(64, 16, 8, 16, 10));
        eprintln!("ivf_pq nlist=64 m=16 built in {:?}", started.elapsed());
        let found = recall(&index, &queries, &truth, 10, &DEFAULT);
        eprintln!("ivf_pq nlist=64 m=16 nprobe=16 rerank=10: recall@10 {found:.4}");
        assert!(found >= 0.95, "recall@10 {found}");
        index.params.rerank = 0;
        let approximate = recall(&index, &queries, &truth, 10, &DEFAULT);
        eprintln!("ivf_pq nlist=64 m=16 nprobe=16 rerank=0: recall@10 {approximate:.4}");
        assert!(approximate >= 0.6, "recall@10 {approximate}");
    }

    #[test]
    fn removed_ids_are_never_returned() {
        let data = dataset::synthetic(2_000, 8, 16);
        let queries = dataset::synthetic(10, 8, 17);
        for nlist in [8, 64] {
            let mut index = built(Metric::L2, &data, params(nlist, 4, 4, nlist, 400));
            assert_eq!(index.is_trained(), nlist == 8);
            let removed: Vec<u64> = (0..2_000).filter(|id| id % 3 == 0).collect();
            assert_eq!(index.remove(&removed).unwrap(), removed.len());
            assert_eq!(index.remove(&removed).unwrap(), 0);
            assert_eq!(index.len(), 2_000 - removed.len());
            assert_eq!(index.vector(0), None);
            let live: Vec<u64> = (0..2_000).filter(|id| id % 3 != 0).collect();
            let mut flat = FlatIndex::new(8, Metric::L2);
            for &id in &live {
                flat.upsert(&[id], data.row(id as usize)).unwrap();
            }
            for query in queries.rows() {
                let found = index.search(query, 50, &DEFAULT).unwrap();
                assert!(found.iter().all(|neighbor| neighbor.id % 3 != 0));
                assert_eq!(found, flat.search(query, 50, &DEFAULT).unwrap());
                index.params.rerank = 0;
                let approximate = index.search(query, 50, &DEFAULT).unwrap();
                assert_eq!(approximate.len(), 50);
                assert!(approximate.iter().all(|neighbor| neighbor.id % 3 != 0));
                index.params.rerank = 400;
            }
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
        let data = dataset::synthetic(1_000, 8, 18);
        let mut index = built(Metric::L2, &data, params(8, 8, 4, 8, 200));
        assert!(index.is_trained());
        let replacement = vec![1_000.0f32; 8];
        index.upsert(&[7], &replacement).unwrap();
        assert_eq!(index.len(), 1_000);
        assert_eq!(index.vector(7).unwrap(), replacement);
        let found = index.search(&replacement, 1, &DEFAULT).unwrap();
        assert_eq!(found, vec![Neighbor { id: 7, score: 0.0 }]);
        let near_old = index.search(data.row(7), 5, &DEFAULT).unwrap();
        assert!(near_old.iter().all(|neighbor| neighbor.id != 7));
        index
            .upsert(&[3, 3], &[vec![-5.0f32; 8], vec![-9.0; 8]].concat())
            .unwrap();
        assert_eq!(index.vector(3).unwrap(), vec![-9.0f32; 8]);
        assert_eq!(index.len(), 1_000);
    }

    #[test]
    fn bad_input_is_an_error_and_changes_nothing() {
        let data = dataset::synthetic(700, 4, 19);
        for nlist in [4, 64] {
            let mut index = built(Metric::Cosine, &data, params(nlist, 2, 4, 2, 5));
            assert_eq!(index.is_trained(), nlist == 4);
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
                index.search(&[1.0, f32::NAN, 3.0, 4.0], 5, &DEFAULT),
                Err(Error::InvalidArgument(_))
            ));
            assert!(matches!(
                index.search(&[0.0; 4], 5, &DEFAULT),
                Err(Error::InvalidArgument(_))
            ));
            assert_eq!(index.len(), 700);
            assert_eq!(index.vector(1_001), None);
            assert_eq!(search_all(&index, &data, 5, &DEFAULT), before);
        }
        let mut bad_spec = IvfPqIndex::new(6, Metric::L2, params(4, 4, 8, 1, 0));
        assert!(matches!(
            bad_spec.upsert(&[1], &[0.0; 6]),
            Err(Error::InvalidSpec(_))
        ));
        let mut zero_dim = IvfPqIndex::new(0, Metric::L2, params(4, 4, 8, 1, 0));
        assert!(zero_dim.upsert(&[], &[]).is_err());
        assert!(zero_dim.search(&[], 1, &DEFAULT).is_err());
    }

    #[test]
    fn save_then_load_gives_identical_results_trained_or_not() {
        let data = dataset::synthetic(1_500, 8, 20);
        let queries = dataset::synthetic(20, 8, 21);
        let directory = tempfile::tempdir().unwrap();
        for metric in Metric::ALL {
            for (nlist, rerank) in [(8, 0), (8, 5), (64, 5)] {
                let mut index = built(metric, &data, params(nlist, 4, 5, 2, rerank));
                assert_eq!(index.is_trained(), nlist == 8);
                index.remove(&[5, 6, 7]).unwrap();
                let dir = directory.path().join(format!("{metric}-{nlist}-{rerank}"));
                index.save(&dir).unwrap();
                index.save(&dir).unwrap();
                let loaded = IvfPqIndex::load(&dir).unwrap();
                assert_eq!(loaded.spec(), index.spec());
                assert_eq!(
                    (loaded.dim(), loaded.metric(), loaded.len()),
                    (8, metric, index.len())
                );
                assert_eq!(loaded.trained_len, index.trained_len);
                for params in [DEFAULT, probes(5)] {
                    assert_eq!(
                        search_all(&loaded, &queries, 10, &params),
                        search_all(&index, &queries, 10, &params)
                    );
                }
                assert_eq!(loaded.vector(8), index.vector(8));
                assert_eq!(loaded.vector(5), None);
                assert_eq!(
                    crate::load_index(&index.spec(), &dir).unwrap().len(),
                    index.len()
                );
            }
        }
    }

    #[test]
    fn damaged_files_are_corrupt() {
        let data = dataset::synthetic(160, 2, 22);
        let directory = tempfile::tempdir().unwrap();
        let index = built(Metric::L2, &data, params(2, 2, 2, 1, 1));
        assert!(index.is_trained());
        index.save(directory.path()).unwrap();
        let path = directory.path().join(FILE_NAME);
        let original = fs::read(&path).unwrap();
        for position in 0..original.len() {
            let mut damaged = original.clone();
            damaged[position] ^= 0x24;
            fs::write(&path, &damaged).unwrap();
            let result = IvfPqIndex::load(directory.path());
            assert!(
                matches!(result, Err(Error::Corrupt(_))),
                "byte {position}: {result:?}"
            );
        }
        for len in (0..original.len()).step_by(5).chain([original.len() + 1]) {
            fs::write(&path, &original[..len.min(original.len())]).unwrap();
            if len > original.len() {
                let mut longer = original.clone();
                longer.push(0);
                fs::write(&path, longer).unwrap();
            }
            let result = IvfPqIndex::load(directory.path());
            assert!(
                matches!(result, Err(Error::Corrupt(_))),
                "length {len}: {result:?}"
            );
        }
    }

    #[test]
    fn well_checksummed_nonsense_is_corrupt() {
        let directory = tempfile::tempdir().unwrap();
        let dir = directory.path();
        // nlist=1, m=1, nbits=1, dim=1: a trained file with one list of `ids`.
        let write = |nbits: usize, ids: &[u64], code: u8| {
            let mut writer = Writer::create(dir, FILE_NAME, &MAGIC, FORMAT_VERSION).unwrap();
            writer.u32(1).unwrap();
            writer.metric(Metric::L2).unwrap();
            for value in [1, 1, nbits, 1, 0, 80] {
                writer.len(value).unwrap();
            }
            writer.f32s(&[0.0]).unwrap();
            writer.f32s(&vec![0.5; 1 << nbits]).unwrap();
            writer.len(ids.len()).unwrap();
            writer.u64s(ids).unwrap();
            writer.bytes(&vec![code; ids.len()]).unwrap();
            writer.f32s(&vec![1.0; ids.len()]).unwrap();
            writer.commit().unwrap();
        };
        write(1, &[1, 2], 1);
        assert_eq!(IvfPqIndex::load(dir).unwrap().len(), 2);
        for (nbits, ids, code, needle) in [
            (1, &[1u64, 1][..], 0, "stored twice"),
            (1, &[1u64][..], 2, "out of range"),
            (9, &[1u64][..], 0, "nbits"),
        ] {
            write(nbits, ids, code);
            let error = IvfPqIndex::load(dir).unwrap_err();
            assert!(matches!(error, Error::Corrupt(_)), "{error}");
            assert!(error.to_string().contains(needle), "{error}");
        }
    }

    #[test]
    fn memory_counts_codes_vectors_and_tables() {
        let data = dataset::synthetic(1_000, 8, 23);
        let index = built(Metric::L2, &data, params(4, 4, 4, 1, 0));
        assert!(index.is_trained());
        let floor = 1_000 * (8 * 4 + 8 + 4) + 4 * 4 * 16 * 4;
        assert!(index.memory_bytes() >= floor, "{}", index.memory_bytes());
    }

    /// `cargo test --release -p quiver-index --lib ivf_pq::tests::report -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement, not a check"]
    fn report_siftsmall() {
        let Some((base, queries, truth)) = siftsmall() else {
            return;
        };
        for (nlist, m) in [(64, 16), (64, 32), (256, 16), (256, 32)] {
            let started = Instant::now();
            let mut index = built(Metric::L2, &base, params(nlist, m, 8, 1, 0));
            let build = started.elapsed();
            assert!(index.is_trained());
            for rerank in [0, 10] {
                index.params.rerank = rerank;
                for nprobe in [1, 4, 16, 64] {
                    let params = probes(nprobe);
                    let found = recall(&index, &queries, &truth, 10, &params);
                    let started = Instant::now();
                    let mut rounds = 0;
                    while started.elapsed().as_secs_f64() < 0.5 {
                        search_all(&index, &queries, 10, &params);
                        rounds += 1;
                    }
                    let qps = (rounds * queries.len()) as f64 / started.elapsed().as_secs_f64();
                    eprintln!(
                        "ivf_pq nlist={nlist} m={m} rerank={rerank} nprobe={nprobe}: build {build:.2?} \
                         recall@10 {found:.4} qps {qps:.0}"
                    );
                }
            }
        }
    }
}
