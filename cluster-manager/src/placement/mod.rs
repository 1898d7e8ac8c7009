//! Where points and replicas go. Pure functions: the same inputs give the same answer in
//! every process, on every platform, in every release.
//!
//! - A point goes to shard [`shard_of`]`(id, num_shards)`: FNV-1a 64 of the id's UTF-8 bytes,
//!   modulo the shard count. This is part of the API contract — clients and every Quiver
//!   version must agree on it — so it never changes.
//! - A shard's replicas go to Searchers by consistent hashing with bounded loads
//!   ([`balance`]): each Searcher owns [`DEFAULT_VIRTUAL_NODES`] points on a 64-bit ring
//!   ([`HashRing`]), a shard sits at the hash of `"{collection}/{shard}"` and prefers the
//!   Searchers whose points come first clockwise, and every Searcher holds between
//!   `floor(R / N)` and `ceil(R / N)` of a collection's `R` replicas. When one Searcher joins
//!   or leaves, only about 1/N of the replicas move.

mod balance;
mod min_cost_flow;

pub use balance::{balance_collection, place_new_collection, replica_load, LoadBounds};

use crate::{Error, Result};

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Ring points per Searcher: enough to keep every Searcher's share within a few percent of
/// the mean at tens of Searchers, cheap to build (N × 128 hashes).
pub const DEFAULT_VIRTUAL_NODES: u32 = 128;

/// FNV-1a 64 of `bytes`.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(FNV_PRIME)
    })
}

/// The shard of a point: FNV-1a 64 of the id's UTF-8 bytes, modulo `num_shards`.
///
/// Stable across processes, platforms and releases; part of the API contract. A
/// `num_shards` of 0 (never valid for a collection) is treated as 1.
pub fn shard_of(point_id: &str, num_shards: u32) -> u32 {
    (fnv1a64(point_id.as_bytes()) % u64::from(num_shards.max(1))) as u32
}

/// A well-mixed, stable 64-bit hash for ring positions: FNV-1a 64 followed by the splitmix64
/// finaliser. FNV alone clusters short, similar strings such as `"s1#0"`, `"s1#1"` on the
/// ring; the finaliser spreads them.
pub fn stable_hash64(bytes: &[u8]) -> u64 {
    let mut mixed = fnv1a64(bytes);
    mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    mixed ^ (mixed >> 31)
}

/// Where virtual node `virtual_node` of Searcher `searcher_id` sits on the ring.
pub fn virtual_node_position(searcher_id: &str, virtual_node: u32) -> u64 {
    stable_hash64(format!("{searcher_id}#{virtual_node}").as_bytes())
}

/// Where shard `shard` of `collection` sits on the ring: its replicas are the first distinct
/// Searchers met clockwise from here.
pub fn shard_position(collection: &str, shard: u32) -> u64 {
    stable_hash64(format!("{collection}/{shard}").as_bytes())
}

/// A consistent-hash ring over a set of Searchers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashRing {
    /// Sorted, distinct.
    searchers: Vec<String>,
    /// `(position, index into searchers)`, sorted; ties (vanishingly rare) broken by index,
    /// which follows the sorted ids, so the order never depends on the input order.
    points: Vec<(u64, usize)>,
}

impl HashRing {
    /// Builds the ring; the input order and duplicates of `searcher_ids` do not matter. A
    /// `virtual_nodes` of 0 is treated as 1.
    pub fn new(searcher_ids: &[String], virtual_nodes: u32) -> Self {
        let mut searchers = searcher_ids.to_vec();
        searchers.sort();
        searchers.dedup();
        let virtual_nodes = virtual_nodes.max(1);
        let mut points = Vec::with_capacity(searchers.len() * virtual_nodes as usize);
        for (index, id) in searchers.iter().enumerate() {
            for virtual_node in 0..virtual_nodes {
                points.push((virtual_node_position(id, virtual_node), index));
            }
        }
        points.sort_unstable();
        HashRing { searchers, points }
    }

    /// The distinct Searchers on the ring, sorted.
    pub fn searchers(&self) -> &[String] {
        &self.searchers
    }

    /// Every virtual node as `(position, searcher id)`, in ring order (clockwise from 0).
    pub fn points(&self) -> impl Iterator<Item = (u64, &str)> + '_ {
        self.points
            .iter()
            .map(|(position, index)| (*position, self.searchers[*index].as_str()))
    }

    /// The position of `searcher_id`'s first virtual node clockwise from `position`
    /// (wrapping past the top): the point that makes it a replica of a shard placed at
    /// `position`. `None` when the Searcher is not on the ring.
    pub fn next_point_of(&self, searcher_id: &str, position: u64) -> Option<u64> {
        let index = self
            .searchers
            .binary_search_by(|id| id.as_str().cmp(searcher_id))
            .ok()?;
        let start = self.points.partition_point(|(point, _)| *point < position);
        (0..self.points.len())
            .map(|offset| self.points[(start + offset) % self.points.len()])
            .find(|(_, owner)| *owner == index)
            .map(|(point, _)| point)
    }

    /// Per Searcher (in [`HashRing::searchers`] order), the clockwise distance from
    /// `position` to its first virtual node: the order a shard placed at `position` prefers
    /// them in.
    pub fn distances_from(&self, position: u64) -> Vec<u64> {
        let mut distances = vec![u64::MAX; self.searchers.len()];
        let start = self.points.partition_point(|(point, _)| *point < position);
        let mut unseen = self.searchers.len();
        for offset in 0..self.points.len() {
            if unseen == 0 {
                break;
            }
            let (point, index) = self.points[(start + offset) % self.points.len()];
            if distances[index] == u64::MAX {
                distances[index] = point.wrapping_sub(position);
                unseen -= 1;
            }
        }
        distances
    }

    /// The `replication_factor` Searchers of one shard, primary first: walking clockwise from
    /// the shard's position, the first distinct Searchers met.
    pub fn replicas_for(
        &self,
        collection: &str,
        shard: u32,
        replication_factor: usize,
    ) -> Result<Vec<String>> {
        if replication_factor == 0 {
            return Err(Error::InvalidArgument(
                "replication factor must be at least 1".to_string(),
            ));
        }
        if replication_factor > self.searchers.len() {
            return Err(too_few_searchers(replication_factor, self.searchers.len()));
        }
        let position = shard_position(collection, shard);
        let start = self.points.partition_point(|(point, _)| *point < position);
        let mut chosen: Vec<usize> = Vec::with_capacity(replication_factor);
        for offset in 0..self.points.len() {
            let (_, index) = self.points[(start + offset) % self.points.len()];
            if !chosen.contains(&index) {
                chosen.push(index);
                if chosen.len() == replication_factor {
                    break;
                }
            }
        }
        debug_assert_eq!(
            chosen.len(),
            replication_factor,
            "every searcher is on the ring"
        );
        Ok(chosen
            .into_iter()
            .map(|index| self.searchers[index].clone())
            .collect())
    }
}

fn too_few_searchers(replication_factor: usize, live: usize) -> Error {
    Error::FailedPrecondition(format!(
        "replication factor {replication_factor} needs at least {replication_factor} live \
         searchers, but only {live} are live"
    ))
}

/// Where a new collection's shards go: [`place_new_collection`] on a ring of
/// [`DEFAULT_VIRTUAL_NODES`] over the live Searchers (index = shard, primary first);
/// `FailedPrecondition` naming both counts when fewer Searchers are live than the
/// replication factor, `InvalidArgument` for a replication factor of 0.
pub fn place_collection(
    live_searcher_ids: &[String],
    collection: &str,
    num_shards: u32,
    replication_factor: u32,
) -> Result<Vec<Vec<String>>> {
    let ring = HashRing::new(live_searcher_ids, DEFAULT_VIRTUAL_NODES);
    if replication_factor == 0 {
        return Err(Error::InvalidArgument(
            "replication factor must be at least 1".to_string(),
        ));
    }
    if replication_factor as usize > ring.searchers().len() {
        return Err(too_few_searchers(
            replication_factor as usize,
            ring.searchers().len(),
        ));
    }
    Ok(place_new_collection(
        &ring,
        collection,
        num_shards,
        replication_factor,
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn ids(count: usize) -> Vec<String> {
        (1..=count)
            .map(|index| format!("searcher-{index}"))
            .collect()
    }

    #[test]
    fn fnv1a64_matches_published_vectors() {
        // Reference values of the FNV-1a 64-bit hash (Landon Curt Noll's test suite).
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn shard_of_is_pinned() {
        // These values are the contract: if this test fails, points would move shards.
        assert_eq!(shard_of("", 7), (0xcbf2_9ce4_8422_2325_u64 % 7) as u32);
        assert_eq!(shard_of("a", 16), (0xaf63_dc4c_8601_ec8c_u64 % 16) as u32);
        assert_eq!(
            shard_of("foobar", 1000),
            (0x8594_4171_f739_67e8_u64 % 1000) as u32
        );
        assert_eq!(shard_of("anything", 1), 0);
        assert_eq!(shard_of("anything", 0), 0);
        let counts = (0..10_000).fold([0u32; 8], |mut counts, index| {
            counts[shard_of(&format!("point-{index}"), 8) as usize] += 1;
            counts
        });
        assert!(
            counts.iter().all(|count| (1000..1500).contains(count)),
            "{counts:?}"
        );
    }

    #[test]
    fn stable_hash64_is_pinned_and_mixes() {
        // Pinned so ring positions (and so placements) never change between releases.
        let expected = {
            let mut mixed: u64 = 0xaf63_dc4c_8601_ec8c;
            mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            mixed ^ (mixed >> 31)
        };
        assert_eq!(stable_hash64(b"a"), expected);
        assert_ne!(stable_hash64(b"s1#0") >> 56, stable_hash64(b"s1#1") >> 56);
    }

    #[test]
    fn replicas_are_the_first_distinct_searchers_at_their_next_points() {
        let searchers = ids(4);
        let ring = HashRing::new(&searchers, 16);
        assert_eq!(ring.points().count(), 64);
        assert!(ring
            .points()
            .zip(ring.points().skip(1))
            .all(|((before, _), (after, _))| before <= after));
        assert_eq!(ring.next_point_of("nobody", 0), None);
        for shard in 0..50 {
            let position = shard_position("docs", shard);
            let replicas = ring.replicas_for("docs", shard, 4).unwrap();
            // Clockwise distance from the shard to each replica's next point grows in
            // replica order: the primary's point is met first.
            let distances: Vec<u64> = replicas
                .iter()
                .map(|id| {
                    ring.next_point_of(id, position)
                        .unwrap()
                        .wrapping_sub(position)
                })
                .collect();
            assert!(
                distances.windows(2).all(|pair| pair[0] < pair[1]),
                "{distances:?}"
            );
        }
    }

    #[test]
    fn replicas_are_distinct_and_deterministic() {
        let searchers = ids(5);
        let ring = HashRing::new(&searchers, DEFAULT_VIRTUAL_NODES);
        for shard in 0..200 {
            let replicas = ring.replicas_for("docs", shard, 3).unwrap();
            assert_eq!(replicas.len(), 3);
            let distinct: BTreeSet<&String> = replicas.iter().collect();
            assert_eq!(distinct.len(), 3, "{replicas:?}");
            assert!(replicas.iter().all(|id| searchers.contains(id)));
            assert_eq!(replicas, ring.replicas_for("docs", shard, 3).unwrap());
            // The first R' of a larger set are the set for R' (primary stays primary).
            assert_eq!(
                replicas[..2],
                ring.replicas_for("docs", shard, 2).unwrap()[..]
            );
        }
        assert_eq!(ring.replicas_for("docs", 0, 5).unwrap().len(), 5);
    }

    #[test]
    fn placement_ignores_input_order_and_duplicates() {
        let searchers = ids(6);
        let mut shuffled = searchers.clone();
        shuffled.reverse();
        shuffled.swap(1, 4);
        shuffled.push(searchers[2].clone());
        assert_eq!(
            HashRing::new(&searchers, DEFAULT_VIRTUAL_NODES),
            HashRing::new(&shuffled, DEFAULT_VIRTUAL_NODES)
        );
        for shard in 0..100 {
            assert_eq!(
                HashRing::new(&searchers, DEFAULT_VIRTUAL_NODES)
                    .replicas_for("c", shard, 2)
                    .unwrap(),
                HashRing::new(&shuffled, DEFAULT_VIRTUAL_NODES)
                    .replicas_for("c", shard, 2)
                    .unwrap()
            );
        }
        assert_eq!(
            place_collection(&searchers, "c", 12, 2).unwrap(),
            place_collection(&shuffled, "c", 12, 2).unwrap()
        );
    }

    #[test]
    fn too_few_searchers_is_a_failed_precondition_naming_both_counts() {
        let error = place_collection(&ids(2), "c", 4, 3).unwrap_err();
        match error {
            Error::FailedPrecondition(message) => assert_eq!(
                message,
                "replication factor 3 needs at least 3 live searchers, but only 2 are live"
            ),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            place_collection(&[], "c", 4, 1).unwrap_err(),
            Error::FailedPrecondition(_)
        ));
        assert!(matches!(
            place_collection(&ids(2), "c", 4, 0).unwrap_err(),
            Error::InvalidArgument(_)
        ));
    }
}
