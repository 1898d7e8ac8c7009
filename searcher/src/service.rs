//! The Searcher service: the trait the gRPC adapter calls, and [`SearcherNode`], which
//! hosts this process's replicas and runs their CPU and disk work on the blocking pool.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use async_trait::async_trait;
use quiver_cluster::ReplicaPhase;
use quiver_index::{merge_top_k, Neighbor, SearchParams};
use tokio::sync::{Notify, Semaphore};

use crate::{
    error::{Error, Result},
    point::{Hit, PointData},
    replica::{Replica, ReplicaCounters},
};

/// A search over several shards hosted here.
#[derive(Debug, Clone)]
pub struct ShardSearch {
    pub collection: String,
    pub shards: Vec<u32>,
    pub queries: Vec<Vec<f32>>,
    pub k: usize,
    pub params: SearchParams,
    pub with_vectors: bool,
    pub with_payloads: bool,
}

#[derive(Debug)]
pub struct ShardSearchOutcome {
    /// Per query, the top k over `searched_shards`, best first.
    pub results: Vec<Vec<Hit>>,
    pub searched_shards: Vec<u32>,
    pub failed_shards: Vec<(u32, Error)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaReport {
    pub collection: String,
    pub shard: u32,
    pub phase: ReplicaPhase,
    pub counters: ReplicaCounters,
}

#[async_trait]
pub trait SearcherService: Send + Sync + 'static {
    async fn search(&self, request: ShardSearch) -> Result<ShardSearchOutcome>;
    async fn upsert(
        &self,
        collection: &str,
        shard: u32,
        points: Vec<PointData>,
    ) -> Result<(usize, ReplicaCounters)>;
    async fn delete(
        &self,
        collection: &str,
        shard: u32,
        ids: Vec<String>,
    ) -> Result<(usize, ReplicaCounters)>;
    async fn get(
        &self,
        collection: &str,
        shard: u32,
        ids: Vec<String>,
        with_vectors: bool,
        with_payloads: bool,
    ) -> Result<Vec<PointData>>;
    async fn replica_status(&self, collection: Option<&str>) -> Vec<ReplicaReport>;
}

/// A replica slot: present from the moment the replica is assigned here until it is closed.
#[derive(Clone)]
pub(crate) struct Hosted {
    pub(crate) phase: ReplicaPhase,
    /// Set once the replica's files are open.
    pub(crate) replica: Option<Arc<Replica>>,
}

pub struct SearcherNode {
    id: String,
    data_dir: PathBuf,
    replicas: RwLock<HashMap<(String, u32), Hosted>>,
    /// Bounds concurrent CPU-heavy searches to the cores there are, so a burst queues
    /// instead of oversubscribing the blocking pool. The permit travels into the blocking
    /// task: a caller that gives up does not free a core that is still busy.
    search_slots: Arc<Semaphore>,
    /// Signalled after every applied write, so replica counters reach etcd promptly.
    writes_applied: Notify,
}

impl SearcherNode {
    pub fn new(id: String, data_dir: PathBuf) -> SearcherNode {
        let cores = std::thread::available_parallelism()
            .map(|count| count.get())
            .unwrap_or(2);
        SearcherNode {
            id,
            data_dir,
            replicas: RwLock::new(HashMap::new()),
            search_slots: Arc::new(Semaphore::new(cores)),
            writes_applied: Notify::new(),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn writes_applied(&self) -> &Notify {
        &self.writes_applied
    }

    pub fn replica_dir(&self, collection: &str, shard: u32) -> PathBuf {
        replica_dir(&self.data_dir, collection, shard)
    }

    pub(crate) fn hosted(&self) -> HashMap<(String, u32), Hosted> {
        self.replicas
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub(crate) fn set_slot(&self, collection: &str, shard: u32, slot: Option<Hosted>) {
        let mut replicas = self
            .replicas
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let key = (collection.to_string(), shard);
        match slot {
            Some(slot) => replicas.insert(key, slot),
            None => replicas.remove(&key),
        };
    }

    /// The replica if it is ACTIVE; errors name why not. A BOOTING replica is still
    /// replaying its log, so it takes neither reads nor writes yet.
    fn active_replica(&self, collection: &str, shard: u32) -> Result<Arc<Replica>> {
        let replicas = self
            .replicas
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(hosted) = replicas.get(&(collection.to_string(), shard)) else {
            return Err(Error::ReplicaNotHosted {
                collection: collection.to_string(),
                shard,
            });
        };
        match (&hosted.phase, &hosted.replica) {
            (ReplicaPhase::Active, Some(replica)) => Ok(Arc::clone(replica)),
            (phase, _) => Err(Error::ReplicaNotReady {
                collection: collection.to_string(),
                shard,
                state: match phase {
                    ReplicaPhase::Booting => "BOOTING",
                    ReplicaPhase::Active => "ACTIVE",
                    ReplicaPhase::Draining => "DRAINING",
                    ReplicaPhase::Failed => "FAILED",
                },
            }),
        }
    }
}

pub fn replica_dir(data_dir: &Path, collection: &str, shard: u32) -> PathBuf {
    data_dir
        .join("collections")
        .join(collection)
        .join(shard.to_string())
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| Error::Internal(format!("blocking task failed: {error}")))?
}

#[async_trait]
impl SearcherService for SearcherNode {
    async fn search(&self, request: ShardSearch) -> Result<ShardSearchOutcome> {
        let mut replicas = Vec::new();
        let mut failed_shards = Vec::new();
        let mut seen = std::collections::HashSet::new();
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
            });
        }
        let slot = Arc::clone(&self.search_slots)
            .acquire_owned()
            .await
            .map_err(|_| Error::Internal("search slots closed".into()))?;
        let (results, searched_shards, mut search_failures) = blocking(move || {
            let _slot = slot;
            Ok(search_replicas(&request, &replicas))
        })
        .await?;
        failed_shards.append(&mut search_failures);
        Ok(ShardSearchOutcome {
            results,
            searched_shards,
            failed_shards,
        })
    }

    async fn upsert(
        &self,
        collection: &str,
        shard: u32,
        points: Vec<PointData>,
    ) -> Result<(usize, ReplicaCounters)> {
        let replica = self.active_replica(collection, shard)?;
        let outcome = blocking(move || replica.upsert(points)).await?;
        self.writes_applied.notify_one();
        Ok(outcome)
    }

    async fn delete(
        &self,
        collection: &str,
        shard: u32,
        ids: Vec<String>,
    ) -> Result<(usize, ReplicaCounters)> {
        let replica = self.active_replica(collection, shard)?;
        let outcome = blocking(move || replica.delete(ids)).await?;
        self.writes_applied.notify_one();
        Ok(outcome)
    }

    async fn get(
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

    async fn replica_status(&self, collection: Option<&str>) -> Vec<ReplicaReport> {
        let mut reports: Vec<ReplicaReport> = self
            .hosted()
            .into_iter()
            .filter(|((name, _), _)| collection.is_none_or(|wanted| wanted == name))
            .map(|((name, shard), hosted)| ReplicaReport {
                collection: name,
                shard,
                phase: hosted.phase,
                counters: hosted.replica.map(|replica| replica.counters()).unwrap_or(
                    ReplicaCounters {
                        point_count: 0,
                        applied_seq: 0,
                    },
                ),
            })
            .collect();
        reports.sort_by(|left, right| {
            (&left.collection, left.shard).cmp(&(&right.collection, right.shard))
        });
        reports
    }
}

type SearchParts = (Vec<Vec<Hit>>, Vec<u32>, Vec<(u32, Error)>);

/// Searches each replica, merges per query, then fetches vectors and payloads for the
/// winners only.
fn search_replicas(request: &ShardSearch, replicas: &[(u32, Arc<Replica>)]) -> SearchParts {
    let flat_queries: Vec<f32> = request.queries.iter().flatten().copied().collect();
    let mut per_replica = Vec::with_capacity(replicas.len());
    let mut searched = Vec::new();
    let mut failed = Vec::new();
    for (shard, replica) in replicas {
        match replica.search(&flat_queries, request.k, &request.params) {
            Ok(results) => {
                searched.push(*shard);
                per_replica.push((Arc::clone(replica), results));
            }
            Err(error) => failed.push((*shard, error)),
        }
    }
    let metric = replicas[0].1.config().metric;
    let mut merged = Vec::with_capacity(request.queries.len());
    for query_number in 0..request.queries.len() {
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
        let hits = top
            .into_iter()
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
            .collect();
        merged.push(hits);
    }
    (merged, searched, failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::ReplicaConfig;
    use quiver_index::Metric;

    async fn node_with_replica(dir: &Path) -> SearcherNode {
        let node = SearcherNode::new("s1".into(), dir.to_path_buf());
        let config = ReplicaConfig {
            collection: "c".into(),
            shard: 0,
            dimension: 4,
            metric: Metric::L2,
            index_spec: "flat".into(),
            incarnation: "t".into(),
        };
        let replica = Replica::open(&node.replica_dir("c", 0), config).unwrap();
        node.set_slot(
            "c",
            0,
            Some(Hosted {
                phase: ReplicaPhase::Active,
                replica: Some(Arc::new(replica)),
            }),
        );
        node.upsert(
            "c",
            0,
            vec![PointData {
                id: "a".into(),
                vector: vec![1.0; 4],
                payload: None,
            }],
        )
        .await
        .unwrap();
        node
    }

    fn request(queries: Vec<Vec<f32>>, shards: Vec<u32>) -> ShardSearch {
        ShardSearch {
            collection: "c".into(),
            shards,
            queries,
            k: 3,
            params: SearchParams::default(),
            with_vectors: false,
            with_payloads: false,
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
        node.set_slot(
            "c",
            1,
            Some(Hosted {
                phase: ReplicaPhase::Booting,
                replica: None,
            }),
        );
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
