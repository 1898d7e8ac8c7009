//! Metric-aware top-k selection.
//!
//! [`TopK`] collects the best `k` candidates of one scan; [`merge_top_k`] combines ranked
//! lists from several shards (in the Searcher) or several Searchers (in the Merger) into
//! the global top `k`. Both order by [`Metric::compare_neighbors`], so every layer of the
//! cluster ranks, and breaks ties, the same way.

use std::{
    cmp::Ordering,
    collections::{hash_map::Entry, BinaryHeap, HashMap},
    hash::Hash,
};

use crate::{Metric, Neighbor};

/// A bounded collector of the best `k` neighbours under a metric.
///
/// A max-heap whose top is the worst neighbour kept, so a candidate is rejected with one
/// comparison once the collector is full, and accepted in O(log k). Ids are expected to be
/// unique among the pushed candidates (one scan of one index); use [`merge_top_k`] to
/// combine lists that may share ids.
#[derive(Debug, Clone)]
pub struct TopK<I = u64> {
    metric: Metric,
    k: usize,
    heap: BinaryHeap<WorstOnTop<I>>,
}

impl<I: Ord + Clone> TopK<I> {
    /// An empty collector for the best `k` under `metric`. With `k == 0` it keeps nothing.
    pub fn new(metric: Metric, k: usize) -> Self {
        // Capacity is capped so a huge `k` from a request cannot allocate up front; the heap
        // grows as candidates actually arrive.
        const MAX_PREALLOCATED: usize = 4096;
        Self {
            metric,
            k,
            heap: BinaryHeap::with_capacity(k.saturating_add(1).min(MAX_PREALLOCATED)),
        }
    }

    /// The metric candidates are ranked by.
    pub fn metric(&self) -> Metric {
        self.metric
    }

    /// How many neighbours this collector keeps at most.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Offers a candidate; it is kept if fewer than `k` are held or it beats the worst kept
    /// (on a tie in score, the smaller id wins).
    pub fn push(&mut self, neighbor: Neighbor<I>) {
        if self.k == 0 {
            return;
        }
        if self.heap.len() < self.k {
            self.heap.push(WorstOnTop {
                metric: self.metric,
                neighbor,
            });
            return;
        }
        let Some(mut worst) = self.heap.peek_mut() else {
            return;
        };
        if self.metric.compare_neighbors(&neighbor, &worst.neighbor) != Ordering::Less {
            return;
        }
        // Replacing through `PeekMut` sifts the new element down once, instead of a pop
        // and a push that would each restore the heap.
        worst.neighbor = neighbor;
    }

    /// The score a candidate must beat (or tie with a smaller id) to be kept, once `k`
    /// candidates are held; `None` while the collector still accepts anything.
    pub fn worst_score(&self) -> Option<f32> {
        if self.k == 0 || self.heap.len() < self.k {
            return None;
        }
        self.heap.peek().map(|worst| worst.neighbor.score)
    }

    /// How many neighbours are held (at most `k`).
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// The kept neighbours, best first, ties broken by ascending id.
    pub fn into_sorted_vec(self) -> Vec<Neighbor<I>> {
        // The heap orders worst as greatest, so ascending heap order is best first.
        let sorted: Vec<Neighbor<I>> = self
            .heap
            .into_sorted_vec()
            .into_iter()
            .map(|entry| entry.neighbor)
            .collect();
        debug_assert!(sorted
            .windows(2)
            .all(|pair| self.metric.compare_neighbors(&pair[0], &pair[1]) != Ordering::Greater));
        sorted
    }
}

impl<I: Ord + Clone> Extend<Neighbor<I>> for TopK<I> {
    fn extend<T: IntoIterator<Item = Neighbor<I>>>(&mut self, neighbors: T) {
        for neighbor in neighbors {
            self.push(neighbor);
        }
    }
}

/// A heap entry ordered so that the worst neighbour is the greatest. Carrying the metric in
/// each entry costs nothing for `u64` ids (it fits in `Neighbor`'s padding) and keeps `Ord`
/// self-contained, as `BinaryHeap` requires.
#[derive(Debug, Clone)]
struct WorstOnTop<I> {
    metric: Metric,
    neighbor: Neighbor<I>,
}

impl<I: Ord> PartialEq for WorstOnTop<I> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl<I: Ord> Eq for WorstOnTop<I> {}

impl<I: Ord> PartialOrd for WorstOnTop<I> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<I: Ord> Ord for WorstOnTop<I> {
    fn cmp(&self, other: &Self) -> Ordering {
        debug_assert_eq!(self.metric, other.metric);
        // "Less" means better, so the greatest entry (the heap's top) is the worst.
        self.metric
            .compare_neighbors(&self.neighbor, &other.neighbor)
    }
}

/// Merges ranked lists (one per shard or per Searcher) into the global top `k`.
///
/// An id that appears more than once (a point seen by two replicas, or moved between
/// shards mid-flight) is kept once, with its best score. The result is best first under
/// `metric`, ties broken by ascending id. The input lists need not be sorted.
pub fn merge_top_k<I: Ord + Clone + Hash>(
    metric: Metric,
    k: usize,
    lists: impl IntoIterator<Item = Vec<Neighbor<I>>>,
) -> Vec<Neighbor<I>> {
    if k == 0 {
        return Vec::new();
    }
    // Deduplicate before selecting: selecting first could let two copies of one id take
    // two of the k places and push out a neighbour that belongs in the result.
    let mut best_score_by_id: HashMap<I, f32> = HashMap::new();
    for list in lists {
        best_score_by_id.reserve(list.len());
        for neighbor in list {
            match best_score_by_id.entry(neighbor.id) {
                Entry::Vacant(vacant) => {
                    vacant.insert(neighbor.score);
                }
                Entry::Occupied(mut occupied) => {
                    let kept = occupied.get_mut();
                    if metric.compare_scores(neighbor.score, *kept) == Ordering::Less {
                        *kept = neighbor.score;
                    }
                }
            }
        }
    }
    let mut top = TopK::new(metric, k.min(best_score_by_id.len()));
    top.extend(
        best_score_by_id
            .into_iter()
            .map(|(id, score)| Neighbor { id, score }),
    );
    top.into_sorted_vec()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use rand::{seq::SliceRandom, Rng, SeedableRng};

    use super::*;

    fn neighbor(id: u64, score: f32) -> Neighbor {
        Neighbor { id, score }
    }

    fn ids<I: Clone>(neighbors: &[Neighbor<I>]) -> Vec<I> {
        neighbors
            .iter()
            .map(|neighbor| neighbor.id.clone())
            .collect()
    }

    fn collect(metric: Metric, k: usize, neighbors: &[Neighbor]) -> Vec<Neighbor> {
        let mut top = TopK::new(metric, k);
        top.extend(neighbors.iter().cloned());
        top.into_sorted_vec()
    }

    #[test]
    fn top_k_orders_l2_ascending() {
        let candidates = [
            neighbor(1, 5.0),
            neighbor(2, 1.0),
            neighbor(3, 3.0),
            neighbor(4, 0.5),
            neighbor(5, 4.0),
        ];
        assert_eq!(ids(&collect(Metric::L2, 3, &candidates)), vec![4, 2, 3]);
    }

    #[test]
    fn top_k_orders_inner_product_and_cosine_descending() {
        let candidates = [
            neighbor(1, 0.2),
            neighbor(2, 0.9),
            neighbor(3, -0.5),
            neighbor(4, 0.7),
        ];
        for metric in [Metric::InnerProduct, Metric::Cosine] {
            assert_eq!(ids(&collect(metric, 2, &candidates)), vec![2, 4]);
        }
    }

    #[test]
    fn top_k_breaks_ties_by_ascending_id_whatever_the_push_order() {
        let mut candidates: Vec<Neighbor> = (0..20).map(|id| neighbor(id, 1.0)).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for metric in Metric::ALL {
            for _ in 0..10 {
                candidates.shuffle(&mut rng);
                assert_eq!(ids(&collect(metric, 5, &candidates)), vec![0, 1, 2, 3, 4]);
            }
        }
    }

    #[test]
    fn top_k_reports_worst_score_only_when_full() {
        let mut top = TopK::new(Metric::L2, 2);
        assert!(top.is_empty());
        top.push(neighbor(1, 3.0));
        assert_eq!(top.worst_score(), None);
        top.push(neighbor(2, 1.0));
        assert_eq!(top.worst_score(), Some(3.0));
        top.push(neighbor(3, 2.0));
        assert_eq!(top.worst_score(), Some(2.0));
        top.push(neighbor(4, 10.0));
        assert_eq!(top.len(), 2);
        assert_eq!(ids(&top.into_sorted_vec()), vec![2, 3]);
    }

    #[test]
    fn top_k_with_k_zero_keeps_nothing() {
        let mut top = TopK::new(Metric::InnerProduct, 0);
        top.push(neighbor(1, 1.0));
        assert!(top.is_empty());
        assert_eq!(top.worst_score(), None);
        assert!(top.into_sorted_vec().is_empty());
    }

    #[test]
    fn top_k_larger_than_input_returns_everything_sorted() {
        let candidates = [neighbor(7, 2.0), neighbor(3, 1.0)];
        assert_eq!(ids(&collect(Metric::L2, 100, &candidates)), vec![3, 7]);
    }

    #[test]
    fn top_k_puts_nan_last_without_panicking() {
        let candidates = [
            neighbor(1, f32::NAN),
            neighbor(2, 1.0),
            neighbor(3, f32::NAN),
            neighbor(4, 2.0),
        ];
        for metric in Metric::ALL {
            let all = collect(metric, 10, &candidates);
            assert_eq!(ids(&all[2..]), vec![1, 3]);
            let best_two = collect(metric, 2, &candidates);
            assert!(best_two.iter().all(|neighbor| !neighbor.score.is_nan()));
        }
    }

    #[test]
    fn merge_orders_by_metric() {
        let lists = || {
            vec![
                vec![neighbor(1, 1.0), neighbor(2, 4.0)],
                vec![neighbor(3, 2.0), neighbor(4, 3.0)],
            ]
        };
        assert_eq!(ids(&merge_top_k(Metric::L2, 3, lists())), vec![1, 3, 4]);
        assert_eq!(
            ids(&merge_top_k(Metric::InnerProduct, 3, lists())),
            vec![2, 4, 3]
        );
        assert_eq!(ids(&merge_top_k(Metric::Cosine, 1, lists())), vec![2]);
    }

    #[test]
    fn merge_keeps_each_id_once_with_its_best_score() {
        let lists = vec![
            vec![neighbor(1, 0.9), neighbor(2, 0.5)],
            vec![neighbor(1, 0.3), neighbor(3, 0.4)],
            vec![neighbor(2, 0.8)],
        ];
        let merged = merge_top_k(Metric::InnerProduct, 10, lists.clone());
        assert_eq!(
            merged,
            vec![neighbor(1, 0.9), neighbor(2, 0.8), neighbor(3, 0.4)]
        );
        let merged = merge_top_k(Metric::L2, 10, lists);
        assert_eq!(
            merged,
            vec![neighbor(1, 0.3), neighbor(3, 0.4), neighbor(2, 0.5)]
        );
    }

    #[test]
    fn merge_breaks_ties_by_ascending_id_and_works_with_string_ids() {
        let lists = vec![
            vec![Neighbor {
                id: "b".to_string(),
                score: 1.0,
            }],
            vec![
                Neighbor {
                    id: "c".to_string(),
                    score: 1.0,
                },
                Neighbor {
                    id: "a".to_string(),
                    score: 1.0,
                },
            ],
        ];
        assert_eq!(ids(&merge_top_k(Metric::L2, 2, lists)), vec!["a", "b"]);
    }

    #[test]
    fn merge_with_k_zero_or_no_input_is_empty() {
        let lists = vec![vec![neighbor(1, 1.0)]];
        assert!(merge_top_k(Metric::L2, 0, lists).is_empty());
        assert!(merge_top_k::<u64>(Metric::L2, 5, Vec::new()).is_empty());
        assert!(merge_top_k::<u64>(Metric::L2, 5, vec![Vec::new(), Vec::new()]).is_empty());
    }

    #[test]
    fn merge_with_k_larger_than_total_returns_everything() {
        let lists = vec![vec![neighbor(5, 1.0)], vec![neighbor(6, 0.0)]];
        assert_eq!(ids(&merge_top_k(Metric::L2, 1000, lists)), vec![6, 5]);
    }

    #[test]
    fn merge_prefers_a_finite_score_over_nan_for_the_same_id() {
        let lists = vec![
            vec![neighbor(1, f32::NAN), neighbor(2, f32::NAN)],
            vec![neighbor(1, 0.5), neighbor(3, 0.7)],
        ];
        for metric in Metric::ALL {
            let merged = merge_top_k(metric, 3, lists.clone());
            assert_eq!(merged.len(), 3);
            assert_eq!(merged[2].id, 2);
            assert!(merged[2].score.is_nan());
            let one = merged.iter().find(|neighbor| neighbor.id == 1).unwrap();
            assert_eq!(one.score, 0.5);
        }
    }

    /// Sort everything, keep the first (best) occurrence of each id, take k.
    fn naive_merge(metric: Metric, k: usize, lists: &[Vec<Neighbor>]) -> Vec<Neighbor> {
        let mut all: Vec<Neighbor> = lists.iter().flatten().cloned().collect();
        all.sort_by(|left, right| metric.compare_neighbors(left, right));
        let mut seen = HashSet::new();
        all.into_iter()
            .filter(|neighbor| seen.insert(neighbor.id))
            .take(k)
            .collect()
    }

    #[test]
    fn merge_matches_a_naive_sort_and_dedupe_on_random_lists() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        for round in 0..500 {
            let metric = Metric::ALL[round % 3];
            let list_count = rng.gen_range(0..6);
            let id_space = rng.gen_range(1..60u64);
            let lists: Vec<Vec<Neighbor>> = (0..list_count)
                .map(|_| {
                    let len = rng.gen_range(0..25);
                    (0..len)
                        .map(|_| {
                            // Coarse scores make ties (and duplicate ids) common.
                            let score = if rng.gen_bool(0.02) {
                                f32::NAN
                            } else {
                                f32::from(rng.gen_range(-8i8..8)) / 4.0
                            };
                            neighbor(rng.gen_range(0..id_space), score)
                        })
                        .collect()
                })
                .collect();
            let k = rng.gen_range(0..40);
            let expected = naive_merge(metric, k, &lists);
            let merged = merge_top_k(metric, k, lists.clone());
            assert_eq!(ids(&merged), ids(&expected), "round {round}");
            for (left, right) in merged.iter().zip(&expected) {
                assert_eq!(left.score.to_bits(), right.score.to_bits(), "round {round}");
            }
        }
    }
}
