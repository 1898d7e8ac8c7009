//! Reads of one or a few shards that are not searches: points by id, counts and pages.

use std::collections::HashSet;

use quiver_payload::Filter;

use super::{blocking, SearcherNode};
use crate::{error::Result, point::PointData, replica::ScrollPage, service::ShardScroll};

impl SearcherNode {
    pub(super) async fn get_points(
        &self,
        collection: &str,
        shard: u32,
        ids: Vec<String>,
        with_vectors: bool,
        with_payloads: bool,
    ) -> Result<Vec<PointData>> {
        let replica = self.active_replica(collection, shard)?;
        blocking(move || {
            let mut found = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some((vector, payload)) = replica.point(&id, with_vectors, with_payloads)? {
                    found.push(PointData {
                        id,
                        vector: vector.unwrap_or_default(),
                        payload,
                    });
                }
            }
            Ok(found)
        })
        .await
    }

    pub(super) async fn count_points(
        &self,
        collection: &str,
        shards: Vec<u32>,
        filter: Option<Filter>,
    ) -> Vec<(u32, Result<u64>)> {
        let mut replicas = Vec::new();
        let mut counts = Vec::new();
        let mut seen = HashSet::new();
        for shard in shards {
            if !seen.insert(shard) {
                continue;
            }
            match self.active_replica(collection, shard) {
                Ok(replica) => replicas.push((shard, replica)),
                Err(error) => counts.push((shard, Err(error))),
            }
        }
        if !replicas.is_empty() {
            let slot = match self.search_slot().await {
                Ok(slot) => slot,
                Err(error) => return vec![(u32::MAX, Err(error))],
            };
            let counted = blocking(move || {
                let _slot = slot;
                Ok(replicas
                    .into_iter()
                    .map(|(shard, replica)| (shard, replica.count(filter.as_ref())))
                    .collect::<Vec<_>>())
            })
            .await;
            match counted {
                Ok(mut counted) => counts.append(&mut counted),
                Err(error) => return vec![(u32::MAX, Err(error))],
            }
        }
        counts.sort_by_key(|(shard, _)| *shard);
        counts
    }

    pub(super) async fn scroll_points(&self, request: ShardScroll) -> Result<ScrollPage> {
        let replica = self.active_replica(&request.collection, request.shard)?;
        let slot = self.search_slot().await?;
        blocking(move || {
            let _slot = slot;
            replica.scroll(
                request.filter.as_ref(),
                &request.after,
                request.limit,
                request.with_vectors,
                request.with_payloads,
            )
        })
        .await
    }
}
