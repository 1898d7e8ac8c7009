//! A search over the shards hosted here: each replica searched (among the points a filter
//! matches, when there is one), the results merged per query.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use quiver_index::{filtered::Plan, merge_top_k, Metric, Neighbor};
use quiver_payload::Filter;

use super::{blocking, SearcherNode};
use crate::{
    error::{Error, Result},
    point::Hit,
    replica::Replica,
    service::{ShardPlan, ShardSearch, ShardSearchOutcome},
};

/// Per query, best first: what one replica's index answered.
type QueryResults = Vec<Vec<Neighbor<String>>>;

impl SearcherNode {
    pub(super) async fn search_hosted(&self, request: ShardSearch) -> Result<ShardSearchOutcome> {
        crate::metrics::search_asked_for(request.shards.len());
        let mut replicas = Vec::new();
        let mut failed_shards = Vec::new();
        let mut seen = HashSet::new();
        for shard in &request.shards {
            if !seen.insert(*shard) {
                continue;
            }
            match self.active_replica(&request.collection, *shard) {
                Ok(replica) => replicas.push((*shard, replica)),
                Err(error) => failed_shards.push((*shard, error)),
            }
        }
        if let Some((_, replica)) = replicas.first() {
            // Queries are flattened for the index, so one of the wrong length would shift
            // every query after it: refuse the request instead.
            let config = replica.config();
            for (number, query) in request.queries.iter().enumerate() {
                quiver_index::validate_vector(query, config.dimension, config.metric)
                    .map_err(|error| Error::InvalidArgument(format!("query {number}: {error}")))?;
            }
        }
        if replicas.is_empty() {
            return Ok(ShardSearchOutcome {
                results: vec![Vec::new(); request.queries.len()],
                searched_shards: Vec::new(),
                failed_shards,
                plans: Vec::new(),
            });
        }
        let slot = self.search_slot().await?;
        let exact_threshold = self.filter_exact_threshold;
        let mut outcome = blocking(move || {
            let _slot = slot;
            Ok(search_replicas(&request, &replicas, exact_threshold))
        })
        .await?;
        outcome.failed_shards.append(&mut failed_shards);
        outcome.failed_shards.sort_by_key(|(shard, _)| *shard);
        Ok(outcome)
    }
}

/// Searches each replica (among the points the filter matches, when there is one),
/// merges per query, then fetches vectors and payloads for the winners only.
fn search_replicas(
    request: &ShardSearch,
    replicas: &[(u32, Arc<Replica>)],
    exact_threshold: u64,
) -> ShardSearchOutcome {
    let flat_queries: Vec<f32> = request.queries.iter().flatten().copied().collect();
    let filter = request.filter.as_ref().filter(|filter| !filter.is_empty());
    let mut per_replica = Vec::with_capacity(replicas.len());
    let mut searched = Vec::new();
    let mut failed = Vec::new();
    let mut plans = Vec::new();
    for (shard, replica) in replicas {
        let started = std::time::Instant::now();
        let searched_shard = search_shard(
            request,
            *shard,
            replica,
            &flat_queries,
            filter,
            exact_threshold,
        );
        match searched_shard {
            Ok((results, plan)) => {
                plans.extend(plan);
                crate::metrics::shard_searched(&request.collection, *shard, started.elapsed());
                searched.push(*shard);
                per_replica.push((Arc::clone(replica), results));
            }
            Err(error) => failed.push((*shard, error)),
        }
    }
    let Some((_, first)) = replicas.first() else {
        return ShardSearchOutcome {
            results: vec![Vec::new(); request.queries.len()],
            searched_shards: searched,
            failed_shards: failed,
            plans,
        };
    };
    let metric = first.config().metric;
    let merged = (0..request.queries.len())
        .map(|query_number| merge_query(request, metric, &per_replica, query_number))
        .collect();
    ShardSearchOutcome {
        results: merged,
        searched_shards: searched,
        failed_shards: failed,
        plans,
    }
}

/// Searches one shard's replica; with a filter, also how most of its queries ran.
fn search_shard(
    request: &ShardSearch,
    shard: u32,
    replica: &Replica,
    flat_queries: &[f32],
    filter: Option<&Filter>,
    exact_threshold: u64,
) -> Result<(QueryResults, Option<ShardPlan>)> {
    let Some(filter) = filter else {
        return Ok((
            replica.search(flat_queries, request.k, &request.params)?,
            None,
        ));
    };
    let found = replica.search_filtered(
        flat_queries,
        request.k,
        &request.params,
        filter,
        exact_threshold,
    )?;
    for plan in &found.plans {
        crate::metrics::filtered_search(*plan);
    }
    let by_index = found
        .plans
        .iter()
        .filter(|plan| **plan == Plan::Index)
        .count();
    let plan = ShardPlan {
        shard,
        plan: if by_index * 2 > found.plans.len() {
            Plan::Index
        } else {
            Plan::ExactScan
        },
        matches: found.matches,
    };
    Ok((found.results, Some(plan)))
}

/// The top k of one query over every replica searched, with vectors and payloads when
/// asked, read from the replica that found each point.
fn merge_query(
    request: &ShardSearch,
    metric: Metric,
    per_replica: &[(Arc<Replica>, QueryResults)],
    query_number: usize,
) -> Vec<Hit> {
    let mut owner: HashMap<String, &Arc<Replica>> = HashMap::new();
    let lists: Vec<Vec<Neighbor<String>>> = per_replica
        .iter()
        .map(|(replica, results)| {
            let list = results.get(query_number).cloned().unwrap_or_default();
            for neighbor in &list {
                owner.insert(neighbor.id.clone(), replica);
            }
            list
        })
        .collect();
    let top = merge_top_k(metric, request.k, lists);
    top.into_iter()
        .map(|neighbor| {
            let (vector, payload) = if request.with_vectors || request.with_payloads {
                owner
                    .get(&neighbor.id)
                    .and_then(|replica| {
                        replica
                            .point(&neighbor.id, request.with_vectors, request.with_payloads)
                            .ok()
                            .flatten()
                    })
                    .unwrap_or((None, None))
            } else {
                (None, None)
            };
            Hit {
                id: neighbor.id,
                score: neighbor.score,
                vector,
                payload,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use quiver_cluster::ReplicaPhase;
    use quiver_index::SearchParams;

    use super::super::{test_support::node_with_replica, Hosted};
    use super::*;
    use crate::service::SearcherService;

    fn request(queries: Vec<Vec<f32>>, shards: Vec<u32>) -> ShardSearch {
        ShardSearch {
            collection: "c".into(),
            shards,
            queries,
            k: 3,
            params: SearchParams::default(),
            with_vectors: false,
            with_payloads: false,
            filter: None,
        }
    }

    #[tokio::test]
    async fn misaligned_queries_are_refused_not_reinterpreted() {
        let dir = tempfile::tempdir().unwrap();
        let node = node_with_replica(dir.path()).await;
        // 3 + 5 floats make two rows of 4 once flattened; that must not pass for two queries.
        let error = node
            .search(request(vec![vec![1.0; 3], vec![1.0; 5]], vec![0]))
            .await
            .unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
    }

    #[tokio::test]
    async fn shards_not_hosted_or_not_active_are_reported_per_shard() {
        let dir = tempfile::tempdir().unwrap();
        let node = node_with_replica(dir.path()).await;
        node.set_slot("c", 1, Some(Hosted::new(ReplicaPhase::Booting, None)));
        let outcome = node
            .search(request(vec![vec![1.0; 4]], vec![0, 1, 2]))
            .await
            .unwrap();
        assert_eq!(outcome.searched_shards, vec![0]);
        assert_eq!(outcome.results[0][0].id, "a");
        let failures: Vec<(u32, tonic::Code)> = outcome
            .failed_shards
            .iter()
            .map(|(shard, error)| (*shard, error.code()))
            .collect();
        assert_eq!(
            failures,
            vec![(1, tonic::Code::Unavailable), (2, tonic::Code::NotFound)]
        );
    }
}
