//! Which stored ids a filtered search may return: an [`AllowList`] over a roaring bitmap of
//! ids, with a dense bit array beside it when that is small, since graph and list scans ask
//! "is this id allowed?" once per visited vector.

use roaring::RoaringTreemap;

/// Dense bits are kept when they cost at most this many bits per allowed id (beyond a
/// fixed allowance): ids are assigned in order, so they usually span little more than the
/// points that exist.
const DENSE_BITS_PER_ID: u64 = 64;
const DENSE_MIN_BITS: u64 = 1 << 20;

/// The ids a filtered search may return.
#[derive(Debug, Clone)]
pub struct AllowList<'a> {
    ids: &'a RoaringTreemap,
    /// Bit `id` set for every allowed `id` below `dense.len() * 64`; empty when the ids
    /// span too far for that to pay.
    dense: Vec<u64>,
}

impl<'a> AllowList<'a> {
    pub fn new(ids: &'a RoaringTreemap) -> AllowList<'a> {
        let dense = match ids.max() {
            Some(max) if max < DENSE_MIN_BITS + ids.len().saturating_mul(DENSE_BITS_PER_ID) => {
                let mut dense = vec![0u64; (max / 64 + 1) as usize];
                for id in ids {
                    dense[(id / 64) as usize] |= 1 << (id % 64);
                }
                dense
            }
            _ => Vec::new(),
        };
        AllowList { ids, dense }
    }

    #[inline]
    pub fn contains(&self, id: u64) -> bool {
        if self.dense.is_empty() {
            return self.ids.contains(id);
        }
        self.dense
            .get((id / 64) as usize)
            .is_some_and(|word| word & (1 << (id % 64)) != 0)
    }

    /// How many ids are allowed.
    pub fn len(&self) -> u64 {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The allowed ids, ascending.
    pub fn ids(&self) -> &'a RoaringTreemap {
        self.ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_and_sparse_answer_alike() {
        let near: RoaringTreemap = (0..5000u64).filter(|id| id % 7 == 3).collect();
        let far: RoaringTreemap = [3u64, 1 << 40, u64::MAX].into_iter().collect();
        for set in [&near, &far, &RoaringTreemap::new()] {
            let allow = AllowList::new(set);
            for id in (0..6000u64).chain([1 << 40, u64::MAX, (1 << 40) + 1]) {
                assert_eq!(allow.contains(id), set.contains(id), "{id}");
            }
            assert_eq!(allow.len(), set.len());
        }
        assert!(!AllowList::new(&near).dense.is_empty());
        assert!(AllowList::new(&far).dense.is_empty());
    }
}
