//! Filters on one replica: searching, counting, scrolling and deleting the points a filter
//! matches, and keeping the declared payload indexes.
//!
//! A filter is first resolved to the exact set of matching internal ids
//! ([`quiver_payload::resolve`]: payload indexes where declared, payloads otherwise), under
//! the data lock, so every query of a request sees one state. The vector index then
//! searches among those ids, planned per query ([`quiver_index::filtered::search`]).

use std::ops::Bound;

use quiver_index::{
    filtered::{self, Plan},
    AllowList, Neighbor, SearchParams,
};
use quiver_payload::{resolve, Filter, PayloadIndex, PayloadSchema, PointSource, RoaringTreemap};

use super::{Replica, ReplicaData, SEARCH_BLOCK_QUERIES};
use crate::{
    error::Result,
    point::PointData,
    replica::ReplicaCounters,
    wal::{WalOp, WalRecord},
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
    /// payloads; true when they changed. Searches go on meanwhile; writes wait for the
    /// build (they need the data lock it reads under).
    pub fn set_payload_schema(&self, schema: &PayloadSchema) -> Result<bool> {
        if self.read_payload_index()?.schema() == *schema {
            return Ok(false);
        }
        let started = std::time::Instant::now();
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

    /// Approximate bytes the payload indexes hold.
    pub fn payload_index_bytes(&self) -> usize {
        self.read_payload_index()
            .map_or(0, |index| index.memory_bytes())
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
        // One resolution per block of queries, under the same lock acquisition as their
        // searches, so a large batch still lets writes in between blocks.
        for block in queries.chunks(dimension * SEARCH_BLOCK_QUERIES) {
            let data = self.read_data()?;
            let allowed = {
                let payload_index = self.read_payload_index()?;
                resolve(filter, &payload_index, &*data)
            };
            found.matches = allowed.len();
            let allow = AllowList::new(&allowed);
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
    /// order, with their vectors and payloads as asked.
    pub fn scroll(
        &self,
        filter: Option<&Filter>,
        after: &str,
        limit: usize,
        with_vectors: bool,
        with_payloads: bool,
    ) -> Result<Vec<PointData>> {
        let data = self.read_data()?;
        let allowed = match filter.filter(|filter| !filter.is_empty()) {
            Some(filter) => {
                let payload_index = self.read_payload_index()?;
                Some(resolve(filter, &payload_index, &*data))
            }
            None => None,
        };
        let start = if after.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Excluded(after)
        };
        let mut page = Vec::with_capacity(limit.min(data.points.len()));
        for (id, internal) in data
            .internal_by_id
            .range::<str, _>((start, Bound::Unbounded))
        {
            if page.len() >= limit {
                break;
            }
            if allowed
                .as_ref()
                .is_some_and(|allowed| !allowed.contains(*internal))
            {
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
            page.push(PointData {
                id: id.clone(),
                vector,
                payload,
            });
        }
        Ok(page)
    }

    /// As primary of `epoch`: deletes every point `filter` matches, resolved under the log
    /// lock (so no write slips in between) and logged as the ids it matched, so followers
    /// delete exactly those. No record when nothing matches.
    pub fn delete_matching_as_primary(
        &self,
        epoch: u64,
        filter: &Filter,
    ) -> Result<(Option<WalRecord>, usize, ReplicaCounters)> {
        let mut wal_state = self.lock_wal()?;
        let ids: Vec<String> = {
            let data = self.read_data()?;
            let payload_index = self.read_payload_index()?;
            resolve(filter, &payload_index, &*data)
                .iter()
                .filter_map(|internal| data.points.get(&internal).map(|point| point.id.clone()))
                .collect()
        };
        if ids.is_empty() {
            return Ok((None, 0, self.counters()));
        }
        self.write_locked(&mut wal_state, epoch, WalOp::Delete(ids))
    }
}

/// Internal ids as user ids (a point deleted meanwhile cannot be: the lock is held).
fn named(data: &ReplicaData, neighbors: Vec<Neighbor>) -> Vec<Neighbor<String>> {
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
