//! Product quantisation: vectors compressed to `m` bytes, compared through lookup tables.
//!
//! A [`ProductQuantizer`] cuts a `dim`-dimensional vector into `m` sub-vectors of
//! `dsub = dim / m` values and replaces each by the index of its nearest codeword among
//! the `ksub = 2^nbits` codewords k-means learnt for that subspace, so a vector becomes an
//! `m`-byte code (one `u8` per sub-quantiser, whatever `nbits`).
//!
//! Search never decodes: for a query, a [`LookupTable`] holds, per subspace, the score of
//! the query's sub-vector against every codeword (squared L2 distance, or inner product),
//! and the score of a code is the sum of `m` table entries (asymmetric distance
//! computation, ADC). Squared L2 and inner product both add up over subspaces, so the sum
//! is exactly the score against the decoded vector, up to rounding.
//!
//! # Layout
//!
//! Codebooks are kept twice: codeword-major (`m × ksub × dsub`, for decoding and saving)
//! and transposed (`m × dsub × ksub`). The transposed copy turns "score one sub-vector
//! against all codewords" into `dsub` passes over contiguous rows of `ksub` floats, which
//! the compiler vectorises across codewords; calling a distance kernel per codeword would
//! spend most of its time on call overhead at `dsub` of 4 to 16.
//!
//! Table rows are always 256 wide, so indexing one with a `u8` code needs no bounds check
//! in the scan loop. Entries past `ksub` are zero and never read by a valid code.
//!
//! # Save format
//!
//! A quantiser has no file of its own; the index that owns it writes, after its own
//! header has recorded `dim`, `m` and `nbits`, the `m · ksub · dsub` codeword values
//! (`f32`, little-endian), codeword-major.

use crate::{
    kmeans::{self, Assignment, KMeansParams},
    persist::{Reader, Writer},
    Error, Result,
};

/// Codewords per sub-quantiser at most (`nbits` ≤ 8, one byte per code).
pub const MAX_KSUB: usize = 256;
/// Training samples at most this many points per codeword (16,384 sub-vectors per
/// subspace at 8 bits). FAISS warns below 39 and samples up to 256; training time is
/// linear in the sample, and with re-rank the codes only have to shortlist candidates.
pub const MAX_TRAINING_POINTS_PER_CODEWORD: usize = 64;
const TRAINING_ITERATIONS: usize = 20;
const TRAINING_SEED: u64 = 0x5150_5F50_515F_7631;

/// Per-subspace codebooks learnt by k-means, and the code/score operations on them.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductQuantizer {
    dim: usize,
    m: usize,
    nbits: usize,
    ksub: usize,
    dsub: usize,
    /// `m × ksub × dsub`: codeword `c` of subspace `j` starts at `(j·ksub + c)·dsub`.
    centroids: Vec<f32>,
    /// `m × dsub × ksub`: component `d` of every codeword of subspace `j` is the run
    /// starting at `(j·dsub + d)·ksub`.
    transposed: Vec<f32>,
}

impl ProductQuantizer {
    /// Learns `m` codebooks of `2^nbits` codewords from the row-major `data` (`n · dim`
    /// values), each by k-means on at most [`MAX_TRAINING_POINTS_PER_CODEWORD`]` · 2^nbits`
    /// sampled sub-vectors. Deterministic: the same data gives the same quantiser.
    ///
    /// Fewer training points than codewords still works (some codewords coincide), but
    /// codes are only as good as the data: 39 or more points per codeword is advisable.
    pub fn train(dim: usize, m: usize, nbits: usize, data: &[f32]) -> Result<Self> {
        Self::check_shape(dim, m, nbits)?;
        if data.is_empty() || data.len() % dim != 0 {
            return Err(Error::InvalidArgument(format!(
                "product quantiser training needs whole vectors of dimension {dim}, got {} values",
                data.len()
            )));
        }
        let ksub = 1 << nbits;
        let dsub = dim / m;
        let n = data.len() / dim;
        let mut centroids = Vec::with_capacity(m * ksub * dsub);
        let mut sub_vectors = Vec::with_capacity(n * dsub);
        for sub in 0..m {
            sub_vectors.clear();
            for row in data.chunks_exact(dim) {
                sub_vectors.extend_from_slice(&row[sub * dsub..(sub + 1) * dsub]);
            }
            let params = KMeansParams {
                k: ksub,
                max_iterations: TRAINING_ITERATIONS,
                max_points_per_centroid: MAX_TRAINING_POINTS_PER_CODEWORD,
                seed: TRAINING_SEED.wrapping_add(sub as u64),
                assignment: Assignment::L2,
            };
            centroids.extend(kmeans::train(&sub_vectors, dsub, &params));
        }
        Ok(Self::from_centroids(dim, m, nbits, centroids))
    }

    fn check_shape(dim: usize, m: usize, nbits: usize) -> Result<()> {
        if dim == 0 || m == 0 || dim % m != 0 {
            return Err(Error::InvalidArgument(format!(
                "product quantiser m={m} must divide the dimension {dim}"
            )));
        }
        if !(1..=8).contains(&nbits) {
            return Err(Error::InvalidArgument(format!(
                "product quantiser nbits must be in 1..=8, got {nbits}"
            )));
        }
        Ok(())
    }

    fn from_centroids(dim: usize, m: usize, nbits: usize, centroids: Vec<f32>) -> Self {
        let ksub = 1 << nbits;
        let dsub = dim / m;
        debug_assert_eq!(centroids.len(), m * ksub * dsub);
        let mut transposed = vec![0.0; centroids.len()];
        for sub in 0..m {
            for code in 0..ksub {
                for component in 0..dsub {
                    transposed[(sub * dsub + component) * ksub + code] =
                        centroids[(sub * ksub + code) * dsub + component];
                }
            }
        }
        Self {
            dim,
            m,
            nbits,
            ksub,
            dsub,
            centroids,
            transposed,
        }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of sub-quantisers, which is also the code size in bytes.
    pub fn m(&self) -> usize {
        self.m
    }

    pub fn nbits(&self) -> usize {
        self.nbits
    }

    /// Codewords per sub-quantiser (`2^nbits`).
    pub fn ksub(&self) -> usize {
        self.ksub
    }

    /// Dimension of each sub-vector (`dim / m`).
    pub fn dsub(&self) -> usize {
        self.dsub
    }

    /// Codeword `code` of subspace `sub`.
    pub fn codeword(&self, sub: usize, code: u8) -> &[f32] {
        let start = (sub * self.ksub + usize::from(code)) * self.dsub;
        &self.centroids[start..start + self.dsub]
    }

    /// Writes the `m` code bytes of `vector` into `code`: per subspace, the nearest
    /// codeword by squared L2 distance (ties to the lower code).
    ///
    /// # Panics
    ///
    /// If `vector` is not `dim` long or `code` not `m` long.
    pub fn encode(&self, vector: &[f32], code: &mut [u8]) {
        assert_eq!(vector.len(), self.dim, "vector length");
        assert_eq!(code.len(), self.m, "code length");
        let mut distances = [0.0f32; MAX_KSUB];
        for (sub, (byte, sub_vector)) in code
            .iter_mut()
            .zip(vector.chunks_exact(self.dsub))
            .enumerate()
        {
            self.l2_row(sub, sub_vector, &mut distances);
            let mut best = 0;
            for (candidate, &distance) in distances[..self.ksub].iter().enumerate() {
                if distance < distances[best] {
                    best = candidate;
                }
            }
            *byte = best as u8;
        }
    }

    /// [`ProductQuantizer::encode`] for every row of `vectors`, in parallel when worth it.
    ///
    /// # Panics
    ///
    /// If `vectors` is not whole rows or `codes` not `m` bytes per row.
    pub fn encode_batch(&self, vectors: &[f32], codes: &mut [u8]) {
        assert_eq!(vectors.len() % self.dim, 0, "vectors must be whole rows");
        assert_eq!(
            codes.len(),
            vectors.len() / self.dim * self.m,
            "codes length"
        );
        kmeans::parallel_rows(codes, self.m, self.dim * self.ksub, |first_row, chunk| {
            let rows = vectors[first_row * self.dim..].chunks_exact(self.dim);
            for (code, vector) in chunk.chunks_exact_mut(self.m).zip(rows) {
                self.encode(vector, code);
            }
        });
    }

    /// Writes the vector `code` stands for (the concatenated codewords) into `out`.
    ///
    /// # Panics
    ///
    /// If `code` is not `m` long or `out` not `dim` long.
    pub fn decode(&self, code: &[u8], out: &mut [f32]) {
        assert_eq!(code.len(), self.m, "code length");
        assert_eq!(out.len(), self.dim, "output length");
        for (sub, (&byte, sub_out)) in code.iter().zip(out.chunks_exact_mut(self.dsub)).enumerate()
        {
            sub_out.copy_from_slice(self.codeword(sub, byte));
        }
    }

    /// Fills `table` with the squared L2 distance of each sub-vector of `query` to every
    /// codeword, so that [`LookupTable::score`] of a code is the squared distance from
    /// `query` to the code's decoded vector.
    pub fn l2_table(&self, query: &[f32], table: &mut LookupTable) {
        assert_eq!(query.len(), self.dim, "query length");
        table.reset(self.m);
        for (sub, (row, sub_query)) in table
            .rows
            .iter_mut()
            .zip(query.chunks_exact(self.dsub))
            .enumerate()
        {
            self.l2_row(sub, sub_query, row);
        }
    }

    /// Fills `table` with the inner product of each sub-vector of `query` with every
    /// codeword, so that [`LookupTable::score`] of a code is the inner product of `query`
    /// with the code's decoded vector.
    pub fn ip_table(&self, query: &[f32], table: &mut LookupTable) {
        assert_eq!(query.len(), self.dim, "query length");
        table.reset(self.m);
        let ksub = self.ksub;
        for (sub, (row, sub_query)) in table
            .rows
            .iter_mut()
            .zip(query.chunks_exact(self.dsub))
            .enumerate()
        {
            let out = &mut row[..ksub];
            out.fill(0.0);
            let block = &self.transposed[sub * self.dsub * ksub..(sub + 1) * self.dsub * ksub];
            for (&value, column) in sub_query.iter().zip(block.chunks_exact(ksub)) {
                for (sum, &component) in out.iter_mut().zip(column) {
                    *sum += value * component;
                }
            }
        }
    }

    /// Squared L2 distances of one sub-vector to every codeword of subspace `sub`.
    #[inline]
    fn l2_row(&self, sub: usize, sub_vector: &[f32], row: &mut [f32; MAX_KSUB]) {
        let ksub = self.ksub;
        let out = &mut row[..ksub];
        out.fill(0.0);
        let block = &self.transposed[sub * self.dsub * ksub..(sub + 1) * self.dsub * ksub];
        for (&value, column) in sub_vector.iter().zip(block.chunks_exact(ksub)) {
            for (sum, &component) in out.iter_mut().zip(column) {
                let difference = value - component;
                *sum += difference * difference;
            }
        }
    }

    /// Heap bytes held by the codebooks.
    pub fn memory_bytes(&self) -> usize {
        (self.centroids.capacity() + self.transposed.capacity()) * size_of::<f32>()
    }

    /// Appends the codebooks to a save file (see the module docs).
    pub(crate) fn write(&self, writer: &mut Writer) -> Result<()> {
        writer.f32s(&self.centroids)
    }

    /// Reads codebooks written by [`ProductQuantizer::write`] for the shape the owning
    /// index's header gave.
    pub(crate) fn read(reader: &mut Reader, dim: usize, m: usize, nbits: usize) -> Result<Self> {
        Self::check_shape(dim, m, nbits).map_err(|error| reader.corrupt(error.to_string()))?;
        let count = dim
            .checked_mul(1 << nbits)
            .ok_or_else(|| reader.corrupt("codebook size overflows"))?;
        let centroids = reader.f32s(count)?;
        Ok(Self::from_centroids(dim, m, nbits, centroids))
    }
}

/// Per-query scores of every codeword of every subspace (see the module docs).
///
/// Reusable: the fill methods of [`ProductQuantizer`] overwrite it, so a search keeps one
/// per thread instead of allocating per probed list.
#[derive(Debug, Clone, Default)]
pub struct LookupTable {
    rows: Vec<[f32; MAX_KSUB]>,
}

impl LookupTable {
    /// An empty table; the fill methods size it.
    pub fn new() -> Self {
        Self::default()
    }

    fn reset(&mut self, m: usize) {
        self.rows.resize(m, [0.0; MAX_KSUB]);
    }

    /// The entries of subspace `sub`, one per code.
    pub fn row(&self, sub: usize) -> &[f32; MAX_KSUB] {
        &self.rows[sub]
    }

    pub(crate) fn rows_mut(&mut self, m: usize) -> &mut [[f32; MAX_KSUB]] {
        self.reset(m);
        &mut self.rows
    }

    /// The ADC score of `code`: the sum of its `m` table entries.
    ///
    /// Four partial sums break the chain of dependent additions, so the scan is bound by
    /// its table loads rather than by addition latency.
    #[inline]
    pub fn score(&self, code: &[u8]) -> f32 {
        debug_assert_eq!(code.len(), self.rows.len());
        let codes = code.chunks_exact(4);
        let rows = self.rows.chunks_exact(4);
        let (code_tail, row_tail) = (codes.remainder(), rows.remainder());
        let mut partial = [0.0f32; 4];
        for (code, row) in codes.zip(rows) {
            partial[0] += row[0][usize::from(code[0])];
            partial[1] += row[1][usize::from(code[1])];
            partial[2] += row[2][usize::from(code[2])];
            partial[3] += row[3][usize::from(code[3])];
        }
        let mut total = (partial[0] + partial[1]) + (partial[2] + partial[3]);
        for (&byte, row) in code_tail.iter().zip(row_tail) {
            total += row[usize::from(byte)];
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{dataset, dot, l2_squared};

    fn training_data(n: usize, dim: usize) -> Vec<f32> {
        dataset::synthetic(n, dim, 17).data
    }

    #[test]
    fn encode_then_decode_is_close_and_beats_the_mean() {
        let dim = 16;
        let data = training_data(4_000, dim);
        let pq = ProductQuantizer::train(dim, 8, 8, &data).unwrap();
        assert_eq!((pq.m(), pq.ksub(), pq.dsub()), (8, 256, 2));
        let mut mean = vec![0.0f32; dim];
        for row in data.chunks_exact(dim) {
            for (sum, value) in mean.iter_mut().zip(row) {
                *sum += value / 4_000.0;
            }
        }
        let mut code = vec![0u8; 8];
        let mut decoded = vec![0.0f32; dim];
        let (mut error, mut spread) = (0.0f64, 0.0f64);
        for row in data.chunks_exact(dim) {
            pq.encode(row, &mut code);
            pq.decode(&code, &mut decoded);
            error += f64::from(l2_squared(row, &decoded));
            spread += f64::from(l2_squared(row, &mean));
        }
        // 256 codewords in 2-d subspaces of uniform data: the error is a small fraction of
        // the variance (about 1/200 in theory, 1/ksub per subspace).
        let ratio = error / spread;
        assert!(ratio < 0.02, "relative quantisation error {ratio}");
    }

    #[test]
    fn adc_equals_the_direct_score_against_the_decoded_vector() {
        let dim = 24;
        let data = training_data(2_000, dim);
        for (m, nbits) in [(6, 8), (8, 5), (3, 1), (24, 4)] {
            let pq = ProductQuantizer::train(dim, m, nbits, &data).unwrap();
            let queries = dataset::synthetic(5, dim, 99).data;
            let mut l2 = LookupTable::new();
            let mut ip = LookupTable::new();
            let mut code = vec![0u8; m];
            let mut decoded = vec![0.0f32; dim];
            for query in queries.chunks_exact(dim) {
                pq.l2_table(query, &mut l2);
                pq.ip_table(query, &mut ip);
                for row in data.chunks_exact(dim).take(50) {
                    pq.encode(row, &mut code);
                    assert!(code.iter().all(|&byte| usize::from(byte) < pq.ksub()));
                    pq.decode(&code, &mut decoded);
                    let exact = l2_squared(query, &decoded);
                    assert!((l2.score(&code) - exact).abs() <= 1e-4 * exact.max(1.0));
                    let exact = dot(query, &decoded);
                    assert!((ip.score(&code) - exact).abs() <= 1e-4 * exact.abs().max(1.0));
                }
            }
        }
    }

    #[test]
    fn encoding_picks_the_nearest_codeword_and_batch_equals_single() {
        let dim = 8;
        let data = training_data(3_000, dim);
        let pq = ProductQuantizer::train(dim, 4, 6, &data).unwrap();
        let mut batch = vec![0u8; 3_000 * 4];
        pq.encode_batch(&data, &mut batch);
        let mut code = vec![0u8; 4];
        for (row, expected) in data.chunks_exact(dim).zip(batch.chunks_exact(4)) {
            pq.encode(row, &mut code);
            assert_eq!(code, expected);
            for (sub, &byte) in code.iter().enumerate() {
                let sub_vector = &row[sub * 2..sub * 2 + 2];
                let chosen = l2_squared(sub_vector, pq.codeword(sub, byte));
                for other in 0..pq.ksub() as u8 {
                    assert!(chosen <= l2_squared(sub_vector, pq.codeword(sub, other)) + 1e-3);
                }
            }
        }
    }

    #[test]
    fn training_is_deterministic_and_checks_its_arguments() {
        let data = training_data(1_000, 8);
        assert_eq!(
            ProductQuantizer::train(8, 2, 4, &data).unwrap(),
            ProductQuantizer::train(8, 2, 4, &data).unwrap()
        );
        assert!(ProductQuantizer::train(8, 3, 4, &data).is_err());
        assert!(ProductQuantizer::train(8, 2, 9, &data).is_err());
        assert!(ProductQuantizer::train(8, 2, 0, &data).is_err());
        assert!(ProductQuantizer::train(8, 2, 4, &[]).is_err());
        assert!(ProductQuantizer::train(8, 2, 4, &data[..7]).is_err());
        // Fewer points than codewords: codewords repeat, nothing panics.
        let few = ProductQuantizer::train(8, 2, 8, &data[..80]).unwrap();
        let mut code = [0u8; 2];
        few.encode(&data[..8], &mut code);
    }
}
