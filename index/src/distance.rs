//! Distance kernels: inner product and squared L2, the inner loop of every index.
//!
//! Each kernel has a portable version, written so LLVM vectorises it for the baseline
//! target, and on x86-64 an AVX2 + FMA version chosen at run time when the CPU has both
//! (the binary itself stays runnable on any x86-64). `QUIVER_DISABLE_SIMD=1` forces the
//! portable path, which the benchmark uses to show what the explicit SIMD buys.
//!
//! Both paths sum in a fixed order, so one machine always gives bit-identical results for
//! the same inputs; the two paths may differ from each other in the last bits (FMA rounds
//! once where multiply-then-add rounds twice).

use std::sync::atomic::{AtomicU8, Ordering};

/// Lanes per step of the portable kernels. Eight independent accumulators let LLVM keep the
/// loop in vector registers (two SSE or one AVX register) without `-ffast-math`: the
/// additions it performs are exactly the ones written, so no reassociation is needed.
const LANES: usize = 8;

/// The inner product of `left` and `right`.
///
/// Both slices should have the same length; if they do not, only the common prefix counts.
#[inline]
pub fn dot(left: &[f32], right: &[f32]) -> f32 {
    debug_assert_eq!(
        left.len(),
        right.len(),
        "dot of vectors of different lengths"
    );
    #[cfg(target_arch = "x86_64")]
    if simd_level() == SimdLevel::Avx2Fma {
        return x86::dot_avx2(left, right);
    }
    portable::dot(left, right)
}

/// The squared Euclidean distance between `left` and `right`.
///
/// Both slices should have the same length; if they do not, only the common prefix counts.
#[inline]
pub fn l2_squared(left: &[f32], right: &[f32]) -> f32 {
    debug_assert_eq!(
        left.len(),
        right.len(),
        "distance of vectors of different lengths"
    );
    #[cfg(target_arch = "x86_64")]
    if simd_level() == SimdLevel::Avx2Fma {
        return x86::l2_squared_avx2(left, right);
    }
    portable::l2_squared(left, right)
}

/// Which kernels this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimdLevel {
    /// The auto-vectorised portable loops.
    Portable,
    /// x86-64 AVX2 with fused multiply-add.
    Avx2Fma,
}

impl SimdLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            SimdLevel::Portable => "portable",
            SimdLevel::Avx2Fma => "avx2+fma",
        }
    }
}

const LEVEL_UNKNOWN: u8 = 0;
const LEVEL_PORTABLE: u8 = 1;
const LEVEL_AVX2_FMA: u8 = 2;
static LEVEL: AtomicU8 = AtomicU8::new(LEVEL_UNKNOWN);

/// The kernels chosen for this CPU, detected once per process.
#[inline]
pub fn simd_level() -> SimdLevel {
    match LEVEL.load(Ordering::Relaxed) {
        LEVEL_PORTABLE => SimdLevel::Portable,
        LEVEL_AVX2_FMA => SimdLevel::Avx2Fma,
        _ => detect_simd_level(),
    }
}

#[cold]
fn detect_simd_level() -> SimdLevel {
    let disabled = std::env::var("QUIVER_DISABLE_SIMD").is_ok_and(|value| value == "1");
    #[cfg(target_arch = "x86_64")]
    let available = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    let available = false;
    let level = if available && !disabled {
        SimdLevel::Avx2Fma
    } else {
        SimdLevel::Portable
    };
    LEVEL.store(
        match level {
            SimdLevel::Portable => LEVEL_PORTABLE,
            SimdLevel::Avx2Fma => LEVEL_AVX2_FMA,
        },
        Ordering::Relaxed,
    );
    level
}

/// Kernels that rely only on the compiler's auto-vectorisation.
pub mod portable {
    use super::LANES;

    /// Portable inner product (see [`super::dot`]).
    #[inline]
    pub fn dot(left: &[f32], right: &[f32]) -> f32 {
        let len = left.len().min(right.len());
        let (left, right) = (&left[..len], &right[..len]);
        let left_chunks = left.chunks_exact(LANES);
        let right_chunks = right.chunks_exact(LANES);
        let left_tail = left_chunks.remainder();
        let right_tail = right_chunks.remainder();

        let mut accumulators = [0.0f32; LANES];
        for (left_chunk, right_chunk) in left_chunks.zip(right_chunks) {
            for lane in 0..LANES {
                accumulators[lane] += left_chunk[lane] * right_chunk[lane];
            }
        }
        let mut total = sum_lanes(accumulators);
        for (left_value, right_value) in left_tail.iter().zip(right_tail) {
            total += left_value * right_value;
        }
        total
    }

    /// Portable squared L2 distance (see [`super::l2_squared`]).
    #[inline]
    pub fn l2_squared(left: &[f32], right: &[f32]) -> f32 {
        let len = left.len().min(right.len());
        let (left, right) = (&left[..len], &right[..len]);
        let left_chunks = left.chunks_exact(LANES);
        let right_chunks = right.chunks_exact(LANES);
        let left_tail = left_chunks.remainder();
        let right_tail = right_chunks.remainder();

        let mut accumulators = [0.0f32; LANES];
        for (left_chunk, right_chunk) in left_chunks.zip(right_chunks) {
            for lane in 0..LANES {
                let difference = left_chunk[lane] - right_chunk[lane];
                accumulators[lane] += difference * difference;
            }
        }
        let mut total = sum_lanes(accumulators);
        for (left_value, right_value) in left_tail.iter().zip(right_tail) {
            let difference = left_value - right_value;
            total += difference * difference;
        }
        total
    }

    /// A plain left-to-right sum on purpose: a "pairwise" tree looked more accurate but led
    /// LLVM's SLP vectoriser to split the main loop into 2-wide operations, costing ~30%.
    #[inline]
    fn sum_lanes(lanes: [f32; LANES]) -> f32 {
        lanes.iter().sum()
    }
}

/// AVX2 + FMA kernels. Only called after [`simd_level`] confirmed both features.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86 {
    use std::arch::x86_64::{
        __m256, _mm256_add_ps, _mm256_castps256_ps128, _mm256_extractf128_ps, _mm256_fmadd_ps,
        _mm256_loadu_ps, _mm256_setzero_ps, _mm256_sub_ps, _mm_add_ps, _mm_add_ss, _mm_cvtss_f32,
        _mm_movehl_ps, _mm_shuffle_ps,
    };

    /// Floats per AVX register.
    const WIDTH: usize = 8;
    /// Four independent accumulators cover the FMA latency (4 cycles, 2 per cycle on most
    /// cores) so the loop is limited by loads, not by the dependency chain.
    const UNROLL: usize = 4;

    pub(super) fn dot_avx2(left: &[f32], right: &[f32]) -> f32 {
        let len = left.len().min(right.len());
        // SAFETY: `simd_level` returned Avx2Fma, so the CPU has AVX2 and FMA.
        unsafe { dot_kernel(&left[..len], &right[..len]) }
    }

    pub(super) fn l2_squared_avx2(left: &[f32], right: &[f32]) -> f32 {
        let len = left.len().min(right.len());
        // SAFETY: as above.
        unsafe { l2_kernel(&left[..len], &right[..len]) }
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA; `left` and `right` must have the same length.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_kernel(left: &[f32], right: &[f32]) -> f32 {
        let len = left.len();
        let (a, b) = (left.as_ptr(), right.as_ptr());
        let mut sums = [_mm256_setzero_ps(); UNROLL];
        let mut offset = 0;
        // SAFETY (all loads): `offset + WIDTH * UNROLL <= len` or `offset + WIDTH <= len`
        // is checked before each load, and both slices are `len` long.
        while offset + WIDTH * UNROLL <= len {
            for (lane, sum) in sums.iter_mut().enumerate() {
                let at = offset + lane * WIDTH;
                *sum = _mm256_fmadd_ps(
                    unsafe { _mm256_loadu_ps(a.add(at)) },
                    unsafe { _mm256_loadu_ps(b.add(at)) },
                    *sum,
                );
            }
            offset += WIDTH * UNROLL;
        }
        while offset + WIDTH <= len {
            sums[0] = _mm256_fmadd_ps(
                unsafe { _mm256_loadu_ps(a.add(offset)) },
                unsafe { _mm256_loadu_ps(b.add(offset)) },
                sums[0],
            );
            offset += WIDTH;
        }
        let mut total = horizontal_sum(combine(sums));
        for index in offset..len {
            total += left[index] * right[index];
        }
        total
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA; `left` and `right` must have the same length.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn l2_kernel(left: &[f32], right: &[f32]) -> f32 {
        let len = left.len();
        let (a, b) = (left.as_ptr(), right.as_ptr());
        let mut sums = [_mm256_setzero_ps(); UNROLL];
        let mut offset = 0;
        // SAFETY (all loads): bounds as in `dot_kernel`.
        while offset + WIDTH * UNROLL <= len {
            for (lane, sum) in sums.iter_mut().enumerate() {
                let at = offset + lane * WIDTH;
                let difference = _mm256_sub_ps(unsafe { _mm256_loadu_ps(a.add(at)) }, unsafe {
                    _mm256_loadu_ps(b.add(at))
                });
                *sum = _mm256_fmadd_ps(difference, difference, *sum);
            }
            offset += WIDTH * UNROLL;
        }
        while offset + WIDTH <= len {
            let difference = _mm256_sub_ps(unsafe { _mm256_loadu_ps(a.add(offset)) }, unsafe {
                _mm256_loadu_ps(b.add(offset))
            });
            sums[0] = _mm256_fmadd_ps(difference, difference, sums[0]);
            offset += WIDTH;
        }
        let mut total = horizontal_sum(combine(sums));
        for index in offset..len {
            let difference = left[index] - right[index];
            total += difference * difference;
        }
        total
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn combine(sums: [__m256; UNROLL]) -> __m256 {
        _mm256_add_ps(
            _mm256_add_ps(sums[0], sums[1]),
            _mm256_add_ps(sums[2], sums[3]),
        )
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn horizontal_sum(value: __m256) -> f32 {
        let low = _mm256_castps256_ps128(value);
        let high = _mm256_extractf128_ps::<1>(value);
        let quad = _mm_add_ps(low, high);
        let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
        let single = _mm_add_ss(pair, _mm_shuffle_ps::<0b01>(pair, pair));
        _mm_cvtss_f32(single)
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    type Kernel = fn(&[f32], &[f32]) -> f32;
    type Reference = fn(&[f32], &[f32]) -> f64;

    fn naive_dot(left: &[f32], right: &[f32]) -> f64 {
        left.iter()
            .zip(right)
            .map(|(a, b)| f64::from(*a) * f64::from(*b))
            .sum()
    }

    fn naive_l2(left: &[f32], right: &[f32]) -> f64 {
        left.iter()
            .zip(right)
            .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
            .sum()
    }

    #[test]
    fn both_paths_match_naive_sums_for_every_length() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for len in 0..300 {
            let left: Vec<f32> = (0..len).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let right: Vec<f32> = (0..len).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let tolerance = 1e-4 * (len as f64 + 1.0);
            let kernels: [(Kernel, Reference); 4] = [
                (dot, naive_dot),
                (portable::dot, naive_dot),
                (l2_squared, naive_l2),
                (portable::l2_squared, naive_l2),
            ];
            for (kernel, naive) in kernels {
                let difference = (f64::from(kernel(&left, &right)) - naive(&left, &right)).abs();
                assert!(difference < tolerance, "len {len}: off by {difference}");
            }
        }
    }

    #[test]
    fn simd_kernels_are_exact_on_small_integers() {
        // Small integers and their products are exact in f32 whatever the rounding mode
        // or fusing, so every path must agree exactly.
        let left: Vec<f32> = (0..131).map(|value| (value % 7) as f32).collect();
        let right: Vec<f32> = (0..131).map(|value| (value % 5) as f32 - 2.0).collect();
        let expected_dot: f32 = left.iter().zip(&right).map(|(a, b)| a * b).sum();
        let expected_l2: f32 = left
            .iter()
            .zip(&right)
            .map(|(a, b)| (a - b) * (a - b))
            .sum();
        assert_eq!(dot(&left, &right), expected_dot);
        assert_eq!(portable::dot(&left, &right), expected_dot);
        assert_eq!(l2_squared(&left, &right), expected_l2);
        assert_eq!(portable::l2_squared(&left, &right), expected_l2);
    }

    #[test]
    fn the_detected_level_is_stable() {
        let first = simd_level();
        assert_eq!(simd_level(), first);
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && std::env::var("QUIVER_DISABLE_SIMD").is_err()
        {
            assert_eq!(first, SimdLevel::Avx2Fma);
        }
    }
}
