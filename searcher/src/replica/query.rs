//! Filters on one replica: searching, counting, scrolling and deleting the points a filter
//! matches, and keeping the declared payload indexes.
//!
//! A filter is first resolved to the exact set of matching internal ids
//! ([`quiver_payload::resolve`]: payload indexes where declared, payloads otherwise), under
//! the data lock of the queries it serves (a large batch searches in blocks, and resolves
//! again only when a write came in between). The vector index then searches among those
//! ids, planned per query ([`quiver_index::filtered::search`]).

use std::ops::Bound;

use quiver_index::{
    filtered::{self, Plan},
    AllowList, Neighbor, SearchParams,
};
use quiver_payload::{
    eval, resolve, Filter, PayloadIndex, PayloadSchema, PointSource, RoaringTreemap,
};

use super::{Replica, ReplicaData, SEARCH_BLOCK_QUERIES};
use crate::{
    error::Result,
    point::PointData,
    replica::ReplicaCounters,
    storage::wal::{WalOp, WalRecord},
};

impl PointSource for ReplicaData {
    fn all(&self) -> &RoaringTreemap {
        &self.live
    }

    fn internal_id(&self, id: &str) -> Option<u64> {
        self.internal_by_id.get(id).copied()
    }

    fn point(&self, internal: u64) -> Option<(&str, Option<&str>)> {
        self.points
            .get(&internal)
            .map(|point| (point.id.as_str(), point.payload.as_deref()))
    }
}

/// The most ids one logged delete by filter holds (the Merger's batch limit): a filter that
/// matches more is logged as several deletes.
pub const DELETE_RECORD_IDS: usize = 10_000;

/// Where a scroll page stops growing: well under the 64 MiB a message may hold, whatever
/// the dimension (10,000 points of 4,096 dimensions would be 160 MiB).
pub const SCROLL_PAGE_BYTES: usize = 16 << 20;

/// One page of a scroll.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScrollPage {
    /// In id order.
    pub points: Vec<PointData>,
    /// No matching point follows the last one: the shard is done.
    pub end: bool,
}

/// What a filtered search found.
#[derive(Debug, Clone, PartialEq)]
pub struct FilteredSearch {
    /// Per query, best first.
    pub results: Vec<Vec<Neighbor<String>>>,
    /// Per query, how it ran.
    pub plans: Vec<Plan>,
    /// Points of the replica the filter matched.
    pub matches: u64,
}

impl Replica {
    /// The payload indexes this replica holds now.
    pub fn payload_schema(&self) -> PayloadSchema {
        self.read_payload_index()
            .map(|index| index.schema())
            .unwrap_or_default()
    }

    /// Makes the payload indexes those `schema` declares, building each from the stored
    /// payloads; true when they changed. Writes wait for the build at the log lock, taken
    /// first: a writer queued on the data lock instead would hold every search up behind
    /// it, and searches go on meanwhile.
    pub fn set_payload_schema(&self, schema: &PayloadSchema) -> Result<bool> {
        if self.read_payload_index()?.schema() == *schema {
            return Ok(false);
        }
        let started = std::time::Instant::now();
        let _writes = self.lock_wal()?;
        let data = self.read_data()?;
        let built = PayloadIndex::build(
            schema,
            data.points
                .iter()
                .map(|(internal, point)| (*internal, point.payload.as_deref())),
        );
        *self.write_payload_index()? = built;
        tracing::info!(
            collection = %self.config.collection,
            shard = self.config.shard,
            points = data.points.len(),
            indexes = ?schema.iter().map(|(key, kind)| format!("{key}:{kind}")).collect::<Vec<_>>(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "payload indexes built"
        );
        Ok(true)
    }

    /// Approximate bytes the payload indexes hold; `None` while a write or a build holds
    /// them, so async code may call it without waiting.
    pub fn payload_index_memory_bytes(&self) -> Option<usize> {
        let index = self.payload_index.try_read().ok()?;
        Some(index.memory_bytes())
    }

    /// The top `k` of the points `filter` matches, per query (row-major `queries`); the
    /// vector index searches among them unless they number at most `exact_threshold`
    /// (0: the default for the dimension), when they are scanned exactly.
    pub fn search_filtered(
        &self,
        queries: &[f32],
        k: usize,
        params: &SearchParams,
        filter: &Filter,
        exact_threshold: u64,
    ) -> Result<FilteredSearch> {
        let dimension = self.config.dimension.max(1);
        let threshold = match exact_threshold {
            0 => filtered::default_exact_threshold(dimension),
            threshold => threshold,
        };
        let mut found = FilteredSearch {
            results: Vec::with_capacity(queries.len() / dimension),
            plans: Vec::with_capacity(queries.len() / dimension),
            matches: 0,
        };
        // Each block of queries searches under its own lock acquisition, so a large batch
        // still lets writes in between blocks; the filter is resolved again only when a
        // write did come in.
        let mut resolved: Option<(u64, RoaringTreemap)> = None;
        for block in queries.chunks(dimension * SEARCH_BLOCK_QUERIES) {
            let data = self.read_data()?;
            if resolved
                .as_ref()
                .is_none_or(|(seq, _)| *seq != data.applied_seq)
            {
                let payload_index = self.read_payload_index()?;
                resolved = Some((data.applied_seq, resolve(filter, &payload_index, &*data)));
            }
            let (_, allowed) = resolved.as_ref().expect("resolved above");
            found.matches = allowed.len();
            let allow = AllowList::new(allowed);
            for query in block.chunks_exact(dimension) {
                let (neighbors, plan) =
                    filtered::search(data.index.as_ref(), query, k, params, &allow, threshold)?;
                found.results.push(named(&data, neighbors));
                found.plans.push(plan);
            }
        }
        Ok(found)
    }

    /// How many points `filter` matches (every point without one).
    pub fn count(&self, filter: Option<&Filter>) -> Result<u64> {
        let data = self.read_data()?;
        let Some(filter) = filter.filter(|filter| !filter.is_empty()) else {
            return Ok(data.points.len() as u64);
        };
        let payload_index = self.read_payload_index()?;
        Ok(resolve(filter, &payload_index, &*data).len())
    }

    /// Up to `limit` points `filter` matches whose ids sort after `after` (byte order), in id
    /// order, with their vectors and payloads as asked; fewer when the page reaches
    /// [`SCROLL_PAGE_BYTES`] (at least one point), so it fits a message. `end` says whether
    /// the shard has more.
    pub fn scroll(
        &self,
        filter: Option<&Filter>,
        after: &str,
        limit: usize,
        with_vectors: bool,
        with_payloads: bool,
    ) -> Result<ScrollPage> {
        let data = self.read_data()?;
        let filter = filter.filter(|filter| !filter.is_empty());
        // Indexes answer a filter for the whole shard in set operations; one they do not
        // answer is checked point by point from the cursor, since resolving it would read
        // every payload of the shard for each page.
        let allowed = match filter {
            Some(filter) => {
                let payload_index = self.read_payload_index()?;
                payload_index
                    .answers_all(filter)
                    .then(|| resolve(filter, &payload_index, &*data))
            }
            None => None,
        };
        let passes = |id: &str, internal: u64| match (filter, &allowed) {
            (None, _) => true,
            (Some(_), Some(allowed)) => allowed.contains(internal),
            (Some(filter), None) => {
                let payload = data
                    .points
                    .get(&internal)
                    .and_then(|point| point.payload.as_deref())
                    .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok());
                eval::matches(filter, id, payload.as_ref())
            }
        };
        let start = if after.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Excluded(after)
        };
        let mut page = Vec::with_capacity(limit.min(data.points.len()));
        let mut bytes = 0;
        let mut end = true;
        for (id, internal) in data
            .internal_by_id
            .range::<str, _>((start, Bound::Unbounded))
        {
            if page.len() >= limit || bytes >= SCROLL_PAGE_BYTES {
                end = false;
                break;
            }
            if !passes(id, *internal) {
                continue;
            }
            let vector = if with_vectors {
                data.index.vector(*internal).unwrap_or_default()
            } else {
                Vec::new()
            };
            let payload = if with_payloads {
                data.points
                    .get(internal)
                    .and_then(|point| point.payload.clone())
            } else {
                None
            };
            bytes += id.len()
                + vector.len() * size_of::<f32>()
                + payload.as_ref().map_or(0, String::len);
            page.push(PointData {
                id: id.clone(),
                vector,
                payload,
            });
        }
        Ok(ScrollPage { points: page, end })
    }

    /// As primary of `epoch`: deletes every point `filter` matches, resolved under the log
    /// lock (so no write slips in between) and logged as the ids it matched, so followers
    /// delete exactly those: in records of at most [`DELETE_RECORD_IDS`] ids, each one a
    /// message a follower can pull. No record when nothing matches; the records come back
    /// in log order.
    pub fn delete_matching_as_primary(
        &self,
        epoch: u64,
        filter: &Filter,
    ) -> Result<(Vec<WalRecord>, usize, ReplicaCounters)> {
        let mut wal_state = self.lock_wal()?;
        let ids: Vec<String> = {
            let data = self.read_data()?;
            let payload_index = self.read_payload_index()?;
            resolve(filter, &payload_index, &*data)
                .iter()
                .filter_map(|internal| data.points.get(&internal).map(|point| point.id.clone()))
                .collect()
        };
        let mut records = Vec::new();
        let mut deleted = 0;
        for chunk in ids.chunks(DELETE_RECORD_IDS) {
            let (record, affected, _) =
                self.write_locked(&mut wal_state, epoch, WalOp::Delete(chunk.to_vec()))?;
            records.extend(record);
            deleted += affected;
        }
        Ok((records, deleted, self.counters()))
    }
}

/// Internal ids as user ids (a point deleted meanwhile cannot be: the lock is held).
pub(super) fn named(data: &ReplicaData, neighbors: Vec<Neighbor>) -> Vec<Neighbor<String>> {
    neighbors
        .into_iter()
        .filter_map(|neighbor| {
            let point = data.points.get(&neighbor.id)?;
            Some(Neighbor {
                id: point.id.clone(),
                score: neighbor.score,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use quiver_index::Metric;
    use quiver_payload::{Condition, FieldCondition, FieldTest, MatchValue};

    use super::*;
    use crate::replica::ReplicaConfig;

    fn config(dimension: usize) -> ReplicaConfig {
        ReplicaConfig {
            collection: "things".into(),
            shard: 0,
            dimension,
            metric: Metric::L2,
            index_spec: "flat".into(),
            incarnation: "2026-01-01T00:00:00Z".into(),
        }
    }

    fn points(count: usize, dimension: usize) -> Vec<PointData> {
        (0..count)
            .map(|row| PointData {
                id: format!("p{row:05}"),
                vector: vec![row as f32; dimension],
                payload: Some(format!(r#"{{"g": {}}}"#, row % 2)),
            })
            .collect()
    }

    fn g_is(value: i64) -> Filter {
        Filter {
            must: vec![Condition::Field(FieldCondition {
                key: "g".into(),
                test: FieldTest::Match(MatchValue::Integer(value)),
            })],
            ..Filter::default()
        }
    }

    #[test]
    fn a_delete_by_filter_is_logged_in_records_a_follower_can_pull() {
        let dir = tempfile::tempdir().unwrap();
        let replica = Replica::open(dir.path(), config(2)).unwrap();
        let all = points(25_001, 2);
        for batch in all.chunks(10_000) {
            replica.upsert(batch.to_vec()).unwrap();
        }
        let (records, deleted, counters) = replica.delete_matching_as_primary(0, &g_is(0)).unwrap();
        assert_eq!(deleted, 12_501);
        let sizes: Vec<usize> = records
            .iter()
            .map(|record| match &record.op {
                WalOp::Delete(ids) => ids.len(),
                WalOp::Upsert(_) => panic!("a delete by filter logged an upsert"),
            })
            .collect();
        assert_eq!(sizes, [DELETE_RECORD_IDS, 2_501]);
        let seqs: Vec<u64> = records.iter().map(|record| record.seq).collect();
        assert_eq!(seqs, [4, 5]);
        assert_eq!(counters.point_count, 12_500);
        assert_eq!(counters.applied_seq, 5);
        drop(replica);
        let reopened = Replica::open(dir.path(), config(2)).unwrap();
        assert_eq!(reopened.count(Some(&g_is(0))).unwrap(), 0);
        assert_eq!(reopened.count(None).unwrap(), 12_500);
    }

    #[test]
    fn a_scroll_page_stops_at_its_byte_budget_and_says_whether_more_follow() {
        let dimension = 4096;
        let dir = tempfile::tempdir().unwrap();
        let replica = Replica::open(dir.path(), config(dimension)).unwrap();
        replica.upsert(points(1_100, dimension)).unwrap();
        let first = replica.scroll(None, "", 10_000, true, false).unwrap();
        // 16 KiB of vector per point: the page stops once it holds 16 MiB.
        assert_eq!(first.points.len(), 1_024);
        assert!(!first.end);
        let last = &first.points.last().unwrap().id;
        let second = replica.scroll(None, last, 10_000, true, false).unwrap();
        assert_eq!(second.points.len(), 76);
        assert!(second.end);
        let ids: Vec<&str> = first
            .points
            .iter()
            .chain(&second.points)
            .map(|point| point.id.as_str())
            .collect();
        let expected: Vec<String> = (0..1_100).map(|row| format!("p{row:05}")).collect();
        assert_eq!(ids, expected);
        // Without vectors the same points fit one page; a filter no index answers is
        // checked point by point and gives the same points as one that is resolved.
        let odd = replica
            .scroll(Some(&g_is(1)), "", 10_000, false, true)
            .unwrap();
        assert!(odd.end);
        assert_eq!(odd.points.len(), 550);
        assert!(odd
            .points
            .iter()
            .all(|point| point.payload.as_deref() == Some(r#"{"g": 1}"#)));
        replica
            .set_payload_schema(&PayloadSchema::new([(
                "g".to_string(),
                quiver_payload::PayloadIndexType::Integer,
            )]))
            .unwrap();
        assert_eq!(
            replica
                .scroll(Some(&g_is(1)), "", 10_000, false, true)
                .unwrap(),
            odd
        );
    }
}
