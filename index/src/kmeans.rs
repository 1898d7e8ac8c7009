//! k-means clustering: the coarse quantiser of the IVF indexes and the sub-quantisers of
//! product quantisation are both trained here.
//!
//! [`train`] runs Lloyd's algorithm on a deterministic sample of the data:
//!
//! 1. Sample at most `k · max_points_per_centroid` points (a partial Fisher-Yates shuffle
//!    driven by a seeded [`SplitMix64`], so the same data and seed give the same centroids
//!    on every machine and thread count).
//! 2. Seed with k-means++ (each next centroid drawn with probability proportional to its
//!    squared distance from the centroids so far).
//! 3. Alternate assignment (parallel over [`std::thread::available_parallelism`] threads)
//!    and mean update until no assignment changes or the iteration cap is reached.
//!    A cluster left empty is re-seeded by splitting the largest one: it takes the largest
//!    cluster's member farthest from that cluster's centroid.
//!
//! Nothing here is saved: callers persist the centroids they get back.

use std::{borrow::Cow, num::NonZeroUsize, sync::OnceLock, thread};

use crate::{dot, l2_squared};

/// How a point chooses its centroid, and how centroids are recomputed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Assignment {
    /// The centroid at the smallest squared L2 distance; centroids are means.
    L2,
    /// The centroid with the largest inner product; centroids are means (what FAISS does
    /// for inner-product IVF).
    MaxDot,
    /// The largest inner product with unit-length centroids (spherical k-means): for cosine
    /// data, where only direction matters.
    Spherical,
}

impl Assignment {
    /// The score of `centroid` for `point` under this assignment.
    #[inline]
    pub(crate) fn score(self, point: &[f32], centroid: &[f32]) -> f32 {
        match self {
            Assignment::L2 => l2_squared(point, centroid),
            Assignment::MaxDot | Assignment::Spherical => dot(point, centroid),
        }
    }

    /// Whether `candidate` is strictly better than `best`. Strict, so that ties go to the
    /// lower centroid index and assignment is deterministic.
    #[inline]
    pub(crate) fn better(self, candidate: f32, best: f32) -> bool {
        match self {
            Assignment::L2 => candidate < best,
            Assignment::MaxDot | Assignment::Spherical => candidate > best,
        }
    }

    /// The score every real one beats.
    fn worst(self) -> f32 {
        match self {
            Assignment::L2 => f32::INFINITY,
            Assignment::MaxDot | Assignment::Spherical => f32::NEG_INFINITY,
        }
    }
}

/// Settings of one [`train`] run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KMeansParams {
    /// Number of centroids.
    pub k: usize,
    /// Lloyd iterations at most; training stops earlier once assignments stop changing.
    pub max_iterations: usize,
    /// Training uses at most `k` times this many points (a deterministic sample).
    pub max_points_per_centroid: usize,
    pub seed: u64,
    pub assignment: Assignment,
}

/// Dimensions up to this train with [`assign_changed_transposed`]. Measured on
/// Fashion-MNIST's PQ16 subspaces (49 dimensions) it still beat one AVX2 kernel call per
/// centroid by ~15%; at 128 dimensions and more the kernel calls win.
const TRANSPOSED_MAX_DIM: usize = 64;

/// Below this many scalar operations a parallel section runs on the calling thread: a
/// scoped thread costs tens of microseconds to start.
const MIN_WORK_PER_THREAD: usize = 1 << 18;

/// Trains `params.k` centroids of dimension `dim` on the row-major `data` and returns them
/// row-major (`k · dim` values).
///
/// With fewer distinct points than `k` some centroids coincide; with no data at all every
/// centroid is zero.
///
/// # Panics
///
/// If `dim` or `params.k` is 0 (callers validate their parameters first).
pub(crate) fn train(data: &[f32], dim: usize, params: &KMeansParams) -> Vec<f32> {
    assert!(dim > 0 && params.k > 0, "k-means needs a dimension and k");
    debug_assert_eq!(data.len() % dim, 0);
    let k = params.k;
    let n = data.len() / dim;
    if n == 0 {
        return vec![0.0; k * dim];
    }
    let mut rng = SplitMix64::new(params.seed);
    let cap = k.saturating_mul(params.max_points_per_centroid.max(1));
    let sample: Cow<[f32]> = if n > cap {
        let mut gathered = Vec::with_capacity(cap * dim);
        for row in sample_rows(n, cap, &mut rng) {
            gathered.extend_from_slice(&data[row * dim..(row + 1) * dim]);
        }
        Cow::Owned(gathered)
    } else {
        Cow::Borrowed(data)
    };
    let data = sample.as_ref();
    let n = data.len() / dim;

    let mut centroids = kmeans_plus_plus(data, dim, k, &mut rng);
    if params.assignment == Assignment::Spherical {
        normalise_rows(&mut centroids, dim);
    }
    let mut assigned = vec![(u32::MAX, 0.0f32); n];
    let mut sums = vec![0.0f64; k * dim];
    let mut counts = vec![0usize; k];
    for iteration in 0..params.max_iterations.max(1) {
        let changed = if dim <= TRANSPOSED_MAX_DIM {
            assign_changed_transposed(data, dim, &centroids, params.assignment, &mut assigned)
        } else {
            assign_changed(data, dim, &centroids, params.assignment, &mut assigned)
        };
        if changed == 0 && iteration > 0 {
            // Same assignment as last time, so the centroids already are its means.
            break;
        }
        // Sums in f64 and in row order: exact enough for any data size, and the result
        // does not depend on how many threads assigned the points.
        sums.fill(0.0);
        counts.fill(0);
        for (point, &(cluster, _)) in data.chunks_exact(dim).zip(&assigned) {
            let cluster = cluster as usize;
            counts[cluster] += 1;
            for (sum, &value) in sums[cluster * dim..(cluster + 1) * dim]
                .iter_mut()
                .zip(point)
            {
                *sum += f64::from(value);
            }
        }
        for ((centroid, sum), &count) in centroids
            .chunks_exact_mut(dim)
            .zip(sums.chunks_exact(dim))
            .zip(&counts)
        {
            if count > 0 {
                let scale = 1.0 / count as f64;
                for (value, &sum) in centroid.iter_mut().zip(sum) {
                    *value = (sum * scale) as f32;
                }
            }
        }
        split_empty_clusters(data, dim, &mut centroids, &mut counts, &mut assigned);
        if params.assignment == Assignment::Spherical {
            normalise_rows(&mut centroids, dim);
        }
    }
    centroids
}

/// Gives every empty cluster a centroid by splitting the currently largest cluster: its
/// member farthest from its centroid becomes the empty cluster's centroid (and member), so
/// the next assignment divides the large cluster between the two.
fn split_empty_clusters(
    data: &[f32],
    dim: usize,
    centroids: &mut [f32],
    counts: &mut [usize],
    assigned: &mut [(u32, f32)],
) {
    for empty in 0..counts.len() {
        if counts[empty] != 0 {
            continue;
        }
        let Some(largest) =
            (0..counts.len()).max_by_key(|&cluster| (counts[cluster], usize::MAX - cluster))
        else {
            return;
        };
        if counts[largest] < 2 {
            // Fewer points than clusters: nothing left to split.
            return;
        }
        let centroid = &centroids[largest * dim..(largest + 1) * dim];
        let mut farthest = None;
        let mut farthest_distance = -1.0f32;
        for (row, point) in data.chunks_exact(dim).enumerate() {
            if assigned[row].0 as usize != largest {
                continue;
            }
            let distance = l2_squared(point, centroid);
            if distance > farthest_distance {
                farthest_distance = distance;
                farthest = Some(row);
            }
        }
        let Some(row) = farthest else {
            return;
        };
        centroids[empty * dim..(empty + 1) * dim]
            .copy_from_slice(&data[row * dim..(row + 1) * dim]);
        assigned[row].0 = empty as u32;
        counts[empty] = 1;
        counts[largest] -= 1;
    }
}

/// k-means++ seeding. Distances are squared L2 whatever the assignment: the aim is only to
/// start from well spread points.
fn kmeans_plus_plus(data: &[f32], dim: usize, k: usize, rng: &mut SplitMix64) -> Vec<f32> {
    let n = data.len() / dim;
    let mut centroids = Vec::with_capacity(k * dim);
    let first = rng.below(n);
    centroids.extend_from_slice(&data[first * dim..(first + 1) * dim]);
    let mut nearest = vec![f32::INFINITY; n];
    for chosen in 1..k {
        let newest = &centroids[(chosen - 1) * dim..chosen * dim];
        parallel_rows(&mut nearest, 1, dim, |first_row, chunk| {
            let rows = data[first_row * dim..].chunks_exact(dim);
            for (distance, point) in chunk.iter_mut().zip(rows) {
                *distance = distance.min(l2_squared(point, newest));
            }
        });
        let total: f64 = nearest.iter().map(|&distance| f64::from(distance)).sum();
        let row = if total > 0.0 && total.is_finite() {
            let target = rng.unit_f64() * total;
            let mut cumulative = 0.0;
            let mut picked = n - 1;
            for (row, &distance) in nearest.iter().enumerate() {
                cumulative += f64::from(distance);
                if cumulative > target {
                    picked = row;
                    break;
                }
            }
            picked
        } else {
            // Every point coincides with a centroid already: duplicates are all that is left.
            rng.below(n)
        };
        centroids.extend_from_slice(&data[row * dim..(row + 1) * dim]);
    }
    centroids
}

/// Assigns every row of `data` and returns how many assignments changed.
fn assign_changed(
    data: &[f32],
    dim: usize,
    centroids: &[f32],
    assignment: Assignment,
    assigned: &mut [(u32, f32)],
) -> usize {
    let k = centroids.len() / dim;
    let changed = std::sync::atomic::AtomicUsize::new(0);
    parallel_rows(assigned, 1, k * dim, |first_row, chunk| {
        let mut local = 0;
        let points = &data[first_row * dim..(first_row + chunk.len()) * dim];
        for (slots, block) in chunk
            .chunks_mut(POINT_BLOCK)
            .zip(points.chunks(POINT_BLOCK * dim))
        {
            let mut best = [(0u32, assignment.worst()); POINT_BLOCK];
            // Centroid-major over a block of points: each centroid is read from memory once
            // per block rather than once per point, which matters once the centroids
            // outgrow the cache (256 cells of 784 floats are 800 KB).
            for (index, centroid) in centroids.chunks_exact(dim).enumerate() {
                for (best, point) in best.iter_mut().zip(block.chunks_exact(dim)) {
                    let score = assignment.score(point, centroid);
                    if assignment.better(score, best.1) {
                        *best = (index as u32, score);
                    }
                }
            }
            for (slot, &best) in slots.iter_mut().zip(&best) {
                if best.0 != slot.0 {
                    local += 1;
                }
                *slot = best;
            }
        }
        changed.fetch_add(local, std::sync::atomic::Ordering::Relaxed);
    });
    changed.into_inner()
}

/// Points scored together by [`assign_changed`].
const POINT_BLOCK: usize = 8;

/// [`assign_changed`] for small dimensions (product-quantiser subspaces), where calling a
/// distance kernel per centroid costs more than the arithmetic: all centroids of a point
/// are scored at once over a transposed copy, a loop the compiler vectorises across
/// centroids. L2 ranks by `‖c‖² − 2·x·c` (the point's own norm cannot change the order).
/// Only training uses it, so its different rounding cannot separate a stored vector from
/// the cell a query equal to it probes.
fn assign_changed_transposed(
    data: &[f32],
    dim: usize,
    centroids: &[f32],
    assignment: Assignment,
    assigned: &mut [(u32, f32)],
) -> usize {
    let k = centroids.len() / dim;
    let mut transposed = vec![0.0f32; k * dim];
    for (index, centroid) in centroids.chunks_exact(dim).enumerate() {
        for (component, &value) in centroid.iter().enumerate() {
            transposed[component * k + index] = value;
        }
    }
    let (initial, factor): (Vec<f32>, f32) = match assignment {
        Assignment::L2 => (
            centroids
                .chunks_exact(dim)
                .map(|centroid| dot(centroid, centroid))
                .collect(),
            -2.0,
        ),
        Assignment::MaxDot | Assignment::Spherical => (vec![0.0; k], 1.0),
    };
    let changed = std::sync::atomic::AtomicUsize::new(0);
    parallel_rows(assigned, 1, k * dim, |first_row, chunk| {
        let mut local = 0;
        let mut scores = vec![0.0f32; k];
        let rows = data[first_row * dim..].chunks_exact(dim);
        for (slot, point) in chunk.iter_mut().zip(rows) {
            score_transposed(point, factor, &transposed, &initial, &mut scores);
            let best = best_of(&scores, assignment);
            if best.0 != slot.0 {
                local += 1;
            }
            *slot = best;
        }
        changed.fetch_add(local, std::sync::atomic::Ordering::Relaxed);
    });
    changed.into_inner()
}

/// Centroids scored per register block in [`score_transposed`].
const BLOCK: usize = 16;

/// `scores[c] = initial[c] + Σ_d factor·point[d]·transposed[d][c]`. Blocks of [`BLOCK`]
/// centroids stay in registers across all `dim` components instead of making `dim`
/// passes through memory.
#[inline]
fn score_transposed(
    point: &[f32],
    factor: f32,
    transposed: &[f32],
    initial: &[f32],
    scores: &mut [f32],
) {
    let k = scores.len();
    // Each column block is copied into a fixed-size array and walked by a constant range:
    // in the test profile (debug assertions on) the same loop over slice iterators was
    // left scalar and trained about twice as slowly.
    let mut blocks = scores.chunks_exact_mut(BLOCK);
    let mut start = 0;
    for (block, initial) in (&mut blocks).zip(initial.chunks_exact(BLOCK)) {
        let mut sums = [0.0f32; BLOCK];
        sums.copy_from_slice(initial);
        for (&value, column) in point.iter().zip(transposed.chunks_exact(k)) {
            let value = value * factor;
            let mut block = [0.0f32; BLOCK];
            block.copy_from_slice(&column[start..start + BLOCK]);
            for lane in 0..BLOCK {
                sums[lane] += value * block[lane];
            }
        }
        block.copy_from_slice(&sums);
        start += BLOCK;
    }
    let tail = blocks.into_remainder();
    if !tail.is_empty() {
        tail.copy_from_slice(&initial[start..]);
        for (&value, column) in point.iter().zip(transposed.chunks_exact(k)) {
            let value = value * factor;
            for (sum, &centroid) in tail.iter_mut().zip(&column[start..]) {
                *sum += value * centroid;
            }
        }
    }
}

/// The index and value of the best score (smallest for L2, largest otherwise), ties to
/// the lower index. The best value is found first with independent lanes (which the
/// compiler vectorises), then its first position.
#[inline]
fn best_of(scores: &[f32], assignment: Assignment) -> (u32, f32) {
    const LANES: usize = 8;
    let lower = assignment == Assignment::L2;
    let mut lanes = [assignment.worst(); LANES];
    let chunks = scores.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (lane, &score) in lanes.iter_mut().zip(chunk) {
            let take = if lower { score < *lane } else { score > *lane };
            *lane = if take { score } else { *lane };
        }
    }
    let mut best = assignment.worst();
    for &score in lanes.iter().chain(tail) {
        if assignment.better(score, best) {
            best = score;
        }
    }
    // NaN never wins a comparison; with nothing better than the worst, take centroid 0.
    let index = scores.iter().position(|&score| score == best).unwrap_or(0);
    (index as u32, best)
}

/// The best centroid for every row of `data` and its score (ties to the lower index), in
/// parallel when there is enough work. Scores come from [`Assignment::score`], the kernel
/// the IVF probe uses, so a query equal to a stored vector probes that vector's cell first.
pub(crate) fn assign(
    data: &[f32],
    dim: usize,
    centroids: &[f32],
    assignment: Assignment,
) -> Vec<(u32, f32)> {
    let mut assigned = vec![(0u32, 0.0f32); data.len() / dim];
    assign_changed(data, dim, centroids, assignment, &mut assigned);
    assigned
}

fn normalise_rows(rows: &mut [f32], dim: usize) {
    for row in rows.chunks_exact_mut(dim) {
        // A zero mean (points cancelling out) has no direction; it stays zero and scores 0
        // against everything, which is harmless.
        crate::normalize_in_place(row);
    }
}

/// `count` distinct row numbers out of `0..n`, in a deterministic pseudo-random order.
pub(crate) fn sample_rows(n: usize, count: usize, rng: &mut SplitMix64) -> Vec<usize> {
    let count = count.min(n);
    let mut rows: Vec<usize> = (0..n).collect();
    // Partial Fisher-Yates: the first `count` slots end up a uniform sample.
    for slot in 0..count {
        let pick = slot + rng.below(n - slot);
        rows.swap(slot, pick);
    }
    rows.truncate(count);
    rows
}

/// How many threads the parallel sections may use.
pub(crate) fn thread_count() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| thread::available_parallelism().map_or(1, NonZeroUsize::get))
}

/// Runs `work(first_row, rows)` over `out` cut into contiguous runs of whole rows of
/// `stride` elements, one run per thread, when `cost_per_row` times the row count is worth
/// the threads; otherwise runs it once over everything on the calling thread.
pub(crate) fn parallel_rows<T: Send>(
    out: &mut [T],
    stride: usize,
    cost_per_row: usize,
    work: impl Fn(usize, &mut [T]) + Sync,
) {
    let stride = stride.max(1);
    let rows = out.len() / stride;
    let threads = thread_count()
        .min(rows.saturating_mul(cost_per_row.max(1)) / MIN_WORK_PER_THREAD)
        .min(rows);
    if threads <= 1 {
        work(0, out);
        return;
    }
    let rows_per_thread = rows.div_ceil(threads);
    let work = &work;
    thread::scope(|scope| {
        let mut chunks = out.chunks_mut(rows_per_thread * stride).enumerate();
        // The calling thread takes the first run instead of idling in the join.
        let first = chunks.next();
        for (index, chunk) in chunks {
            scope.spawn(move || work(index * rows_per_thread, chunk));
        }
        if let Some((_, chunk)) = first {
            work(0, chunk);
        }
    });
}

/// Sebastiano Vigna's SplitMix64: a tiny, fully specified generator, so training is
/// reproducible without a runtime dependency on `rand`.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut mixed = self.state;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        mixed ^ (mixed >> 31)
    }

    /// Uniform in `0..bound` (`bound > 0`), by Lemire's multiply-shift; the bias is below
    /// 2^-32 for any bound a sample can have.
    pub(crate) fn below(&mut self, bound: usize) -> usize {
        debug_assert!(bound > 0);
        ((u128::from(self.next_u64()) * bound as u128) >> 64) as usize
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain reference: score every centroid, keep the first best.
    fn nearest(point: &[f32], centroids: &[f32], dim: usize, assignment: Assignment) -> (u32, f32) {
        let mut best = (0u32, assignment.worst());
        for (index, centroid) in centroids.chunks_exact(dim).enumerate() {
            let score = assignment.score(point, centroid);
            if assignment.better(score, best.1) {
                best = (index as u32, score);
            }
        }
        best
    }

    fn params(k: usize, assignment: Assignment) -> KMeansParams {
        KMeansParams {
            k,
            max_iterations: 20,
            max_points_per_centroid: 256,
            seed: 42,
            assignment,
        }
    }

    /// `per_cluster` points around each of `centers`, within ±0.5 in every coordinate.
    fn blobs(centers: &[Vec<f32>], per_cluster: usize, seed: u64) -> Vec<f32> {
        let mut rng = SplitMix64::new(seed);
        let mut data = Vec::new();
        for _ in 0..per_cluster {
            for center in centers {
                data.extend(
                    center
                        .iter()
                        .map(|&value| value + rng.unit_f64() as f32 - 0.5),
                );
            }
        }
        data
    }

    fn grid_centers(count: usize, dim: usize) -> Vec<Vec<f32>> {
        (0..count)
            .map(|cluster| {
                (0..dim)
                    .map(|axis| {
                        if axis == cluster % dim {
                            100.0 * (1 + cluster / dim) as f32
                        } else {
                            0.0
                        }
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn finds_well_separated_clusters() {
        let dim = 8;
        let centers = grid_centers(12, dim);
        let data = blobs(&centers, 50, 1);
        let centroids = train(&data, dim, &params(12, Assignment::L2));
        assert_eq!(centroids.len(), 12 * dim);
        for center in &centers {
            let (_, distance) = nearest(center, &centroids, dim, Assignment::L2);
            assert!(distance < 0.5, "no centroid near {center:?}: {distance}");
        }
        // Every point is assigned to the centroid of its own blob.
        let assigned = assign(&data, dim, &centroids, Assignment::L2);
        for (row, &(cluster, _)) in assigned.iter().enumerate() {
            let (owner, _) = nearest(
                &centers[row % centers.len()],
                &centroids,
                dim,
                Assignment::L2,
            );
            assert_eq!(cluster, owner);
        }
    }

    #[test]
    fn spherical_centroids_are_unit_length_and_split_directions() {
        let dim = 4;
        let centers: Vec<Vec<f32>> = (0..4)
            .map(|axis| {
                (0..dim)
                    .map(|i| if i == axis { 10.0 } else { 0.0 })
                    .collect()
            })
            .collect();
        let mut data = blobs(&centers, 40, 2);
        for row in data.chunks_exact_mut(dim) {
            crate::normalize_in_place(row);
        }
        let centroids = train(&data, dim, &params(4, Assignment::Spherical));
        for centroid in centroids.chunks_exact(dim) {
            assert!((dot(centroid, centroid) - 1.0).abs() < 1e-5);
        }
        for center in &centers {
            let mut direction = center.clone();
            crate::normalize_in_place(&mut direction);
            let (_, similarity) = nearest(&direction, &centroids, dim, Assignment::Spherical);
            assert!(similarity > 0.99, "{similarity}");
        }
    }

    #[test]
    fn is_deterministic_with_and_without_sampling() {
        let data = blobs(&grid_centers(20, 6), 30, 3);
        let first = train(&data, 6, &params(16, Assignment::L2));
        let second = train(&data, 6, &params(16, Assignment::L2));
        assert_eq!(first, second);
        // A capped sample is deterministic too.
        let capped = KMeansParams {
            max_points_per_centroid: 5,
            ..params(16, Assignment::MaxDot)
        };
        assert_eq!(train(&data, 6, &capped), train(&data, 6, &capped));
    }

    #[test]
    fn duplicates_and_too_few_points_do_not_panic() {
        // Three distinct points, many copies, more clusters than distinct points.
        let data: Vec<f32> = (0..30).flat_map(|row| [(row % 3) as f32, 1.0]).collect();
        let centroids = train(&data, 2, &params(5, Assignment::L2));
        assert_eq!(centroids.len(), 10);
        assert!(centroids.iter().all(|value| value.is_finite()));
        for point in data.chunks_exact(2) {
            assert_eq!(nearest(point, &centroids, 2, Assignment::L2).1, 0.0);
        }
        // Fewer points than clusters.
        let centroids = train(&[1.0, 2.0, 3.0, 4.0], 2, &params(4, Assignment::L2));
        assert_eq!(centroids.len(), 8);
        assert!(train(&[], 2, &params(3, Assignment::L2))
            .iter()
            .all(|&value| value == 0.0));
    }

    #[test]
    fn empty_clusters_are_reseeded_from_the_largest() {
        let dim = 1;
        // Cluster 0 holds five points, cluster 1 one, cluster 2 none.
        let data = [0.0, 1.0, 2.0, 3.0, 10.0, 50.0];
        let mut centroids = vec![3.2, 50.0, 1000.0];
        let mut assigned = vec![(0, 0.0), (0, 0.0), (0, 0.0), (0, 0.0), (0, 0.0), (1, 0.0)];
        let mut counts = vec![5, 1, 0];
        split_empty_clusters(&data, dim, &mut centroids, &mut counts, &mut assigned);
        // The farthest member of cluster 0 (10.0) now seeds cluster 2.
        assert_eq!(centroids, vec![3.2, 50.0, 10.0]);
        assert_eq!(counts, vec![4, 1, 1]);
        assert_eq!(assigned[4].0, 2);

        // In a full run no cluster ends empty while there are points to spare.
        let data = blobs(&grid_centers(8, 4), 25, 4);
        let centroids = train(&data, 4, &params(8, Assignment::L2));
        let assigned = assign(&data, 4, &centroids, Assignment::L2);
        let mut sizes = [0usize; 8];
        for (cluster, _) in assigned {
            sizes[cluster as usize] += 1;
        }
        assert!(sizes.iter().all(|&size| size > 0), "{sizes:?}");
    }

    #[test]
    fn parallel_assignment_equals_sequential() {
        let data = blobs(&grid_centers(30, 32), 200, 5);
        let centroids = train(&data, 32, &params(30, Assignment::L2));
        let parallel = assign(&data, 32, &centroids, Assignment::L2);
        let sequential: Vec<(u32, f32)> = data
            .chunks_exact(32)
            .map(|point| nearest(point, &centroids, 32, Assignment::L2))
            .collect();
        assert_eq!(parallel, sequential);
    }

    #[test]
    fn transposed_assignment_picks_a_best_centroid() {
        for (dim, k) in [(2, 256), (8, 37), (49, 16)] {
            let data = crate::dataset::synthetic(500, dim, dim as u64).data;
            let centroids = crate::dataset::synthetic(k, dim, 100 + dim as u64).data;
            for assignment in [Assignment::L2, Assignment::MaxDot] {
                let mut assigned = vec![(u32::MAX, 0.0); 500];
                let changed =
                    assign_changed_transposed(&data, dim, &centroids, assignment, &mut assigned);
                assert_eq!(changed, 500);
                for (point, &(cell, _)) in data.chunks_exact(dim).zip(&assigned) {
                    let (_, best) = nearest(point, &centroids, dim, assignment);
                    let chosen = assignment.score(point, &centroids[cell as usize * dim..][..dim]);
                    assert!(
                        (chosen - best).abs() <= 1e-4 * best.abs().max(1.0),
                        "{chosen} vs {best}"
                    );
                }
            }
        }
    }

    #[test]
    fn sample_rows_are_distinct_and_in_range() {
        let mut rng = SplitMix64::new(9);
        let rows = sample_rows(1000, 300, &mut rng);
        assert_eq!(rows.len(), 300);
        let mut sorted = rows.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 300);
        assert!(rows.iter().all(|&row| row < 1000));
        assert_eq!(sample_rows(5, 10, &mut rng).len(), 5);
    }
}
