use std::{cmp::Ordering, fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::{
    distance::{dot, l2_squared},
    Error,
};

/// How closeness between two vectors is scored.
///
/// Scores are what the API returns: squared L2 distance (smaller is closer), inner product
/// and cosine similarity (larger is closer). Serialised as `"l2"`, `"ip"`, `"cosine"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Metric {
    #[serde(rename = "l2")]
    L2,
    #[serde(rename = "ip")]
    InnerProduct,
    #[serde(rename = "cosine")]
    Cosine,
}

/// One search hit: an id and its score under the index's metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Neighbor<I = u64> {
    pub id: I,
    pub score: f32,
}

impl Metric {
    /// Every metric, in a fixed order (handy for tests that cover them all).
    pub const ALL: [Metric; 3] = [Metric::L2, Metric::InnerProduct, Metric::Cosine];

    /// The score of `stored` for `query`; for cosine both must already be normalised.
    #[inline]
    pub fn score(self, query: &[f32], stored: &[f32]) -> f32 {
        match self {
            Metric::L2 => l2_squared(query, stored),
            // Cosine similarity of unit vectors is their dot product; normalising once at
            // insert time keeps the per-candidate cost equal to inner product.
            Metric::InnerProduct | Metric::Cosine => dot(query, stored),
        }
    }

    /// Whether a smaller score is closer (L2) or a larger one (inner product, cosine).
    pub fn lower_is_better(self) -> bool {
        matches!(self, Metric::L2)
    }

    /// Orders two scores best first. NaN never reaches here (inputs are validated), but it
    /// sorts last rather than panicking.
    pub fn compare_scores(self, left: f32, right: f32) -> Ordering {
        match (left.is_nan(), right.is_nan()) {
            (true, true) => return Ordering::Equal,
            (true, false) => return Ordering::Greater,
            (false, true) => return Ordering::Less,
            (false, false) => {}
        }
        // Without NaN, `partial_cmp` is total; unlike `total_cmp` it treats -0.0 and 0.0 as
        // equal, so such a tie falls through to the id and stays deterministic.
        let ascending = left.partial_cmp(&right).unwrap_or(Ordering::Equal);
        if self.lower_is_better() {
            ascending
        } else {
            ascending.reverse()
        }
    }

    /// Orders two neighbours best first, ties broken by ascending id, so results are
    /// deterministic across shards and runs.
    pub fn compare_neighbors<I: Ord>(self, left: &Neighbor<I>, right: &Neighbor<I>) -> Ordering {
        self.compare_scores(left.score, right.score)
            .then_with(|| left.id.cmp(&right.id))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Metric::L2 => "l2",
            Metric::InnerProduct => "ip",
            Metric::Cosine => "cosine",
        }
    }
}

impl FromStr for Metric {
    type Err = Error;

    /// Accepts `l2`/`euclidean`, `ip`/`inner_product`/`dot` and `cosine`, in any case.
    fn from_str(text: &str) -> Result<Self, Error> {
        match text.trim().to_ascii_lowercase().as_str() {
            "l2" | "euclidean" => Ok(Metric::L2),
            "ip" | "inner_product" | "dot" => Ok(Metric::InnerProduct),
            "cosine" => Ok(Metric::Cosine),
            other => Err(Error::InvalidArgument(format!(
                "unknown metric {other:?}; supported: \"l2\", \"ip\", \"cosine\""
            ))),
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Scales `vector` to unit length, as cosine search needs.
///
/// Returns `false` and leaves the vector untouched when its norm is zero or not finite
/// (which includes any NaN or infinite component), because such a vector has no direction.
pub fn normalize_in_place(vector: &mut [f32]) -> bool {
    // The norm is accumulated in f64 so that large but finite components (whose squares
    // would overflow f32) still normalise, and tiny ones do not underflow to zero.
    let squared_norm: f64 = vector
        .iter()
        .map(|&value| f64::from(value) * f64::from(value))
        .sum();
    let norm = squared_norm.sqrt();
    if norm == 0.0 || !norm.is_finite() {
        return false;
    }
    for value in vector.iter_mut() {
        *value = (f64::from(*value) / norm) as f32;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_dot(left: &[f32], right: &[f32]) -> f64 {
        left.iter()
            .zip(right)
            .map(|(a, b)| f64::from(*a) * f64::from(*b))
            .sum()
    }

    fn naive_l2(left: &[f32], right: &[f32]) -> f64 {
        left.iter()
            .zip(right)
            .map(|(a, b)| {
                let difference = f64::from(*a) - f64::from(*b);
                difference * difference
            })
            .sum()
    }

    #[test]
    fn kernels_match_naive_sums_for_every_length() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for len in 0..70 {
            let left: Vec<f32> = (0..len).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let right: Vec<f32> = (0..len).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let tolerance = 1e-4 * (len as f64 + 1.0);
            assert!((f64::from(dot(&left, &right)) - naive_dot(&left, &right)).abs() < tolerance);
            assert!(
                (f64::from(l2_squared(&left, &right)) - naive_l2(&left, &right)).abs() < tolerance
            );
        }
    }

    #[test]
    fn integer_valued_vectors_give_exact_scores() {
        let left = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0];
        let right = [10.0, 9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0];
        assert_eq!(dot(&left, &right), 220.0);
        assert_eq!(l2_squared(&left, &right), 330.0);
        assert_eq!(Metric::L2.score(&left, &right), 330.0);
        assert_eq!(Metric::InnerProduct.score(&left, &right), 220.0);
        assert_eq!(Metric::Cosine.score(&left, &right), 220.0);
    }

    #[test]
    fn compare_scores_puts_the_better_score_first() {
        assert_eq!(Metric::L2.compare_scores(1.0, 2.0), Ordering::Less);
        assert_eq!(Metric::L2.compare_scores(2.0, 1.0), Ordering::Greater);
        assert_eq!(
            Metric::InnerProduct.compare_scores(2.0, 1.0),
            Ordering::Less
        );
        assert_eq!(Metric::Cosine.compare_scores(0.1, 0.9), Ordering::Greater);
        assert_eq!(Metric::L2.compare_scores(-0.0, 0.0), Ordering::Equal);
    }

    #[test]
    fn nan_sorts_last_for_every_metric() {
        for metric in Metric::ALL {
            assert_eq!(metric.compare_scores(f32::NAN, 1.0), Ordering::Greater);
            assert_eq!(metric.compare_scores(-1.0, -f32::NAN), Ordering::Less);
            assert_eq!(metric.compare_scores(f32::NAN, f32::NAN), Ordering::Equal);
            assert_eq!(
                metric.compare_scores(f32::NAN, f32::INFINITY),
                Ordering::Greater
            );
            assert_eq!(
                metric.compare_scores(f32::NEG_INFINITY, -f32::NAN),
                Ordering::Less
            );
        }
    }

    #[test]
    fn compare_neighbors_breaks_ties_by_ascending_id() {
        let lower_id = Neighbor {
            id: 3u64,
            score: 0.5,
        };
        let higher_id = Neighbor {
            id: 9u64,
            score: 0.5,
        };
        for metric in Metric::ALL {
            assert_eq!(
                metric.compare_neighbors(&lower_id, &higher_id),
                Ordering::Less
            );
        }
    }

    #[test]
    fn metric_parses_aliases_in_any_case_and_displays_its_canonical_name() {
        for (text, expected) in [
            ("l2", Metric::L2),
            ("Euclidean", Metric::L2),
            ("IP", Metric::InnerProduct),
            ("inner_product", Metric::InnerProduct),
            ("dot", Metric::InnerProduct),
            (" cosine ", Metric::Cosine),
        ] {
            assert_eq!(text.parse::<Metric>().unwrap(), expected);
        }
        assert!(matches!(
            "manhattan".parse::<Metric>(),
            Err(Error::InvalidArgument(_))
        ));
        for metric in Metric::ALL {
            assert_eq!(metric.to_string(), metric.as_str());
            assert_eq!(metric.to_string().parse::<Metric>().unwrap(), metric);
            let json = serde_json::to_string(&metric).unwrap();
            assert_eq!(json, format!("\"{}\"", metric.as_str()));
        }
    }

    #[test]
    fn normalize_in_place_gives_unit_vectors_and_rejects_degenerate_ones() {
        let mut vector = [3.0, 4.0];
        assert!(normalize_in_place(&mut vector));
        assert_eq!(vector, [0.6, 0.8]);

        let mut huge = [3e30f32, 4e30];
        assert!(normalize_in_place(&mut huge));
        assert!((dot(&huge, &huge) - 1.0).abs() < 1e-6);

        for degenerate in [
            vec![0.0, 0.0, 0.0],
            vec![],
            vec![1.0, f32::NAN],
            vec![f32::INFINITY, 1.0],
        ] {
            let mut copy = degenerate.clone();
            assert!(!normalize_in_place(&mut copy));
            assert_eq!(
                copy.iter().map(|value| value.to_bits()).collect::<Vec<_>>(),
                degenerate
                    .iter()
                    .map(|value| value.to_bits())
                    .collect::<Vec<_>>()
            );
        }
    }
}
