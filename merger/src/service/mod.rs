//! The Merger service: what clients call. [`MergerService`] is the trait the gRPC adapter
//! calls; [`Merger`] implements it over the watched cluster view and the Searchers.
//!
//! Filtered reads and payload indexes have a file each: [`count`], [`scroll`] and
//! [`payload_indexes`]; [`shard_read`] is the one way a read reaches a shard.

mod count;
mod payload_indexes;
mod scroll;
mod shard_read;

use shard_read::{read_shard, remaining, with_deadline};
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use async_trait::async_trait;
use futures::future::join_all;
use quiver_cluster::{
    catalog,
    model::{now_rfc3339, CollectionRecord},
    placement::shard_of,
    ClusterState, ClusterView, KeySchema, MetadataStore, ReplicaPhase,
};
use quiver_index::{merge_top_k, IndexSpec, Metric, Neighbor};
use quiver_proto::{
    code_from_name, code_name,
    v1::{
        self, ClusterStatusResponse, CollectionConfig, CollectionDescription, CollectionHealth,
        CountRequest, CountResponse, CreateCollectionRequest, CreateCollectionResponse,
        CreatePayloadIndexRequest, CreatePayloadIndexResponse, DeleteRequest, DeleteResponse,
        DescribeCollectionResponse, DropCollectionResponse, DropPayloadIndexRequest,
        DropPayloadIndexResponse, GetRequest, GetResponse, ListCollectionsResponse, Point,
        QueryResult, ReplicaDeleteRequest, ReplicaDescription, ReplicaFailure, ReplicaGetRequest,
        ReplicaUpsertRequest, ReplicaWriteResponse, ScoredPoint, ScrollRequest, ScrollResponse,
        SearchRequest, SearchResponse, SearcherDescription, ShardDescription, ShardFailure,
        ShardOutcome, ShardReport, ShardSearchRequest, ShardWrite, UpsertRequest, UpsertResponse,
    },
};
use tokio::time::Instant;
use tonic::{Code, Status};

use crate::{
    clients::SearcherClients,
    error::{Error, Result},
    fanout::{FanOut, FanOutOutcome, HedgeConfig, SearchAnswer},
    load::SearcherLoads,
    metrics, validate,
};

#[derive(Debug, Clone)]
pub struct MergerConfig {
    /// Deadline of a search that names none.
    pub search_timeout: Duration,
    /// Deadline of writes, gets and admin calls that name none.
    pub write_timeout: Duration,
    /// How long CreateCollection waits for the new replicas to become ACTIVE.
    pub create_wait: Duration,
    /// When a slow Searcher call's shards go to a second replica.
    pub hedging: HedgeConfig,
    /// Acknowledgements a write needs per shard, unless the request names its own.
    pub write_quorum: WriteQuorum,
}

/// How many replicas of a shard (its primary included) must hold a write before the
/// Merger acknowledges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteQuorum {
    /// More than half of the replication factor.
    #[default]
    Majority,
    /// Every replica.
    All,
    /// This many, capped at the replication factor.
    Count(u32),
}

impl WriteQuorum {
    pub fn for_replication_factor(self, replication_factor: u32) -> u32 {
        match self {
            WriteQuorum::Majority => replication_factor / 2 + 1,
            WriteQuorum::All => replication_factor,
            WriteQuorum::Count(count) => count.clamp(1, replication_factor.max(1)),
        }
    }
}

impl std::str::FromStr for WriteQuorum {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, Self::Err> {
        match text.trim() {
            "majority" => Ok(WriteQuorum::Majority),
            "all" => Ok(WriteQuorum::All),
            number => match number.parse::<u32>() {
                Ok(count) if count >= 1 => Ok(WriteQuorum::Count(count)),
                _ => Err(format!(
                    "write quorum {text:?}: expected `majority`, `all` or a count of at least 1"
                )),
            },
        }
    }
}

impl Default for MergerConfig {
    fn default() -> Self {
        MergerConfig {
            search_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            create_wait: Duration::from_secs(15),
            hedging: HedgeConfig::default(),
            write_quorum: WriteQuorum::Majority,
        }
    }
}

/// Every method takes the client's gRPC deadline, if it sent one; the earlier of that and
/// the request's own or the default deadline bounds all the work the call causes.
#[async_trait]
pub trait MergerService: Send + Sync + 'static {
    async fn create_collection(
        &self,
        request: CreateCollectionRequest,
        client_timeout: Option<Duration>,
    ) -> Result<CreateCollectionResponse>;
    async fn drop_collection(&self, name: &str) -> Result<DropCollectionResponse>;
    async fn list_collections(&self) -> Result<ListCollectionsResponse>;
    async fn describe_collection(&self, name: &str) -> Result<DescribeCollectionResponse>;
    async fn upsert(
        &self,
        request: UpsertRequest,
        client_timeout: Option<Duration>,
    ) -> Result<UpsertResponse>;
    async fn delete(
        &self,
        request: DeleteRequest,
        client_timeout: Option<Duration>,
    ) -> Result<DeleteResponse>;
    async fn get(
        &self,
        request: GetRequest,
        client_timeout: Option<Duration>,
    ) -> Result<GetResponse>;
    async fn search(
        &self,
        request: SearchRequest,
        client_timeout: Option<Duration>,
    ) -> Result<SearchResponse>;
    async fn count(
        &self,
        request: CountRequest,
        client_timeout: Option<Duration>,
    ) -> Result<CountResponse>;
    async fn scroll(
        &self,
        request: ScrollRequest,
        client_timeout: Option<Duration>,
    ) -> Result<ScrollResponse>;
    async fn create_payload_index(
        &self,
        request: CreatePayloadIndexRequest,
    ) -> Result<CreatePayloadIndexResponse>;
    async fn drop_payload_index(
        &self,
        request: DropPayloadIndexRequest,
    ) -> Result<DropPayloadIndexResponse>;
    async fn cluster_status(&self) -> Result<ClusterStatusResponse>;
}

pub struct Merger {
    store: Arc<dyn MetadataStore>,
    schema: KeySchema,
    view: ClusterView,
    clients: Arc<SearcherClients>,
    /// Outstanding calls and recent latencies per Searcher: replica choice and hedging.
    loads: Arc<SearcherLoads>,
    /// Advances per request: the last tie-break between otherwise equal replicas.
    rotation: AtomicU64,
    config: MergerConfig,
    /// Drops the connections and load counters of Searchers that left the cluster.
    pruner: tokio::task::JoinHandle<()>,
}

impl Drop for Merger {
    fn drop(&mut self) {
        self.pruner.abort();
    }
}

enum ReplicaWrite {
    Upsert(Vec<Point>),
    Delete(Vec<String>),
    /// Every point the (validated) filter matches; the primary resolves it.
    DeleteMatching(v1::Filter),
}

/// What the primary of one shard did with a write.
struct ShardWriteOutcome {
    affected: u32,
    report: ShardWrite,
    /// Voting replicas that did not hold the write yet when it was acknowledged.
    lagging: Vec<ReplicaFailure>,
}

/// Pause between attempts while a shard changes primary.
const WRITE_RETRY_PAUSE: Duration = Duration::from_millis(150);

impl Merger {
    pub fn new(
        store: Arc<dyn MetadataStore>,
        schema: KeySchema,
        view: ClusterView,
        config: MergerConfig,
    ) -> Merger {
        let clients = Arc::new(SearcherClients::new(Duration::from_secs(2)));
        let loads = Arc::new(SearcherLoads::new());
        let pruner = tokio::spawn(prune_departed_searchers(
            view.subscribe(),
            Arc::clone(&clients),
            Arc::clone(&loads),
        ));
        Merger {
            store,
            schema,
            view,
            clients,
            loads,
            rotation: AtomicU64::new(0),
            config,
            pruner,
        }
    }

    /// The next tie-break between otherwise equal replicas.
    fn next_rotation(&self) -> u64 {
        self.rotation.fetch_add(1, Ordering::Relaxed)
    }

    /// The per-Searcher load and latency the Merger tracks (for tests and diagnostics).
    pub fn loads(&self) -> &SearcherLoads {
        &self.loads
    }

    fn collection(state: &ClusterState, name: &str) -> Result<CollectionRecord> {
        state
            .collections
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("collection {name:?} does not exist")))
    }

    fn deadline(default: Duration, requested_ms: u32, client_timeout: Option<Duration>) -> Instant {
        let mut budget = if requested_ms > 0 {
            Duration::from_millis(u64::from(requested_ms))
        } else {
            default
        };
        if let Some(client_timeout) = client_timeout {
            budget = budget.min(client_timeout.saturating_sub(reply_margin(client_timeout)));
        }
        Instant::now() + budget
    }

    #[allow(clippy::too_many_arguments)]
    async fn call_write(
        &self,
        address: &str,
        collection: &str,
        shard: u32,
        epoch: u64,
        write_quorum: u32,
        write: &ReplicaWrite,
        deadline: Instant,
    ) -> Result<ReplicaWriteResponse, Status> {
        let remaining = remaining(deadline)?;
        let mut client = self.clients.client(address).map_err(Status::from)?;
        match write {
            ReplicaWrite::Upsert(points) => {
                let mut request = tonic::Request::new(ReplicaUpsertRequest {
                    collection: collection.to_string(),
                    shard,
                    points: points.clone(),
                    epoch,
                    write_quorum,
                });
                request.set_timeout(remaining);
                quiver_cluster::request_id::attach(&mut request);
                with_deadline(remaining, client.upsert(request)).await
            }
            ReplicaWrite::Delete(_) | ReplicaWrite::DeleteMatching(_) => {
                let (ids, filter) = match write {
                    ReplicaWrite::Delete(ids) => (ids.clone(), None),
                    ReplicaWrite::DeleteMatching(filter) => (Vec::new(), Some(filter.clone())),
                    ReplicaWrite::Upsert(_) => unreachable!("matched above"),
                };
                let mut request = tonic::Request::new(ReplicaDeleteRequest {
                    collection: collection.to_string(),
                    shard,
                    ids,
                    epoch,
                    write_quorum,
                    filter,
                });
                request.set_timeout(remaining);
                quiver_cluster::request_id::attach(&mut request);
                with_deadline(remaining, client.delete(request)).await
            }
        }
    }

    /// Sends one shard's part of a write to the shard's primary, which orders it and
    /// answers once `write_quorum` replicas hold it. While the shard changes primary (the
    /// primary is gone, or the view is behind), it tries again with a fresh view until the
    /// deadline: writes are idempotent, so a retry of a write that did land is harmless.
    async fn write_shard(
        &self,
        collection: &str,
        shard: u32,
        write_quorum: u32,
        write: &ReplicaWrite,
        deadline: Instant,
    ) -> std::result::Result<ShardWriteOutcome, ReplicaFailure> {
        let mut last_failure;
        loop {
            let state = self.view.current();
            let attempt: std::result::Result<(), ReplicaFailure> = match state
                .assignment(collection, shard)
            {
                None => Err(ReplicaFailure {
                    shard,
                    searcher_id: String::new(),
                    code: code_name(Code::Unavailable).into(),
                    message: "the shard has no assignment".into(),
                }),
                Some(assignment) => {
                    let primary = assignment.primary().to_string();
                    match state.searchers.get(&primary) {
                        None => Err(ReplicaFailure {
                            shard,
                            searcher_id: primary.clone(),
                            code: code_name(Code::Unavailable).into(),
                            message: format!(
                                "the primary's searcher {primary} is not live; a replica is being promoted"
                            ),
                        }),
                        Some(searcher) => {
                            let address = searcher.address.clone();
                            let voters = assignment.replicas.clone();
                            match self
                                .call_write(
                                    &address,
                                    collection,
                                    shard,
                                    assignment.epoch,
                                    write_quorum,
                                    write,
                                    deadline,
                                )
                                .await
                            {
                                Ok(response) => {
                                    let lagging = voters
                                        .iter()
                                        .filter(|id| !response.acknowledged_by.contains(id))
                                        .map(|id| ReplicaFailure {
                                            shard,
                                            searcher_id: id.clone(),
                                            code: code_name(Code::Unavailable).into(),
                                            message: "did not hold the write yet when it was acknowledged; it catches up from the primary".into(),
                                        })
                                        .collect();
                                    return Ok(ShardWriteOutcome {
                                        affected: response.affected,
                                        report: ShardWrite {
                                            shard,
                                            primary,
                                            seq: response.seq,
                                            acknowledged_by: response.acknowledged_by,
                                            write_quorum: response.write_quorum,
                                        },
                                        lagging,
                                    });
                                }
                                Err(status) => {
                                    tracing::warn!(%collection, shard, %primary, code = ?status.code(), message = status.message(), "shard write failed");
                                    metrics::replica_write_failed(code_name(status.code()));
                                    Err(ReplicaFailure {
                                        shard,
                                        searcher_id: primary,
                                        code: code_name(status.code()).into(),
                                        message: status.message().to_string(),
                                    })
                                }
                            }
                        }
                    }
                }
            };
            let failure = attempt.expect_err("successes returned above");
            let code = code_from_name(&failure.code);
            last_failure = failure;
            // Only a changing primary is worth waiting for; a refused request is final.
            let transient = matches!(
                code,
                Code::Unavailable | Code::FailedPrecondition | Code::NotFound | Code::Aborted
            );
            let pause_until = Instant::now() + WRITE_RETRY_PAUSE;
            if !transient || pause_until >= deadline {
                return Err(last_failure);
            }
            tokio::time::sleep_until(pause_until).await;
        }
    }

    /// Writes each shard's part through its primary, all shards at once. Acknowledged only
    /// when every shard's primary reached its quorum.
    async fn write_to_shards(
        &self,
        collection: &CollectionRecord,
        requested_quorum: Option<u32>,
        parts: BTreeMap<u32, ReplicaWrite>,
        deadline: Instant,
    ) -> Result<BTreeMap<u32, ShardWriteOutcome>> {
        let write_quorum = match requested_quorum {
            None => self
                .config
                .write_quorum
                .for_replication_factor(collection.replication_factor),
            Some(quorum) if (1..=collection.replication_factor).contains(&quorum) => quorum,
            Some(quorum) => {
                return Err(Error::InvalidArgument(format!(
                    "write_quorum must be between 1 and the replication factor {}, got {quorum}",
                    collection.replication_factor
                )))
            }
        };
        let calls = parts.iter().map(|(shard, write)| async move {
            (
                *shard,
                self.write_shard(&collection.name, *shard, write_quorum, write, deadline)
                    .await,
            )
        });
        let mut outcomes = BTreeMap::new();
        let mut failures = Vec::new();
        for (shard, result) in join_all(calls).await {
            match result {
                Ok(outcome) => {
                    outcomes.insert(shard, outcome);
                }
                Err(failure) => failures.push(failure),
            }
        }
        if failures.is_empty() {
            return Ok(outcomes);
        }
        // One shared answer about the request itself (say INVALID_ARGUMENT) passes through;
        // anything else means primaries were unreachable, which a retry may fix.
        let codes: HashSet<&str> = failures
            .iter()
            .map(|failure| failure.code.as_str())
            .collect();
        let code = match codes.iter().next() {
            Some(only) if codes.len() == 1 => match code_from_name(only) {
                Code::FailedPrecondition | Code::NotFound | Code::Aborted => Code::Unavailable,
                other => other,
            },
            _ => Code::Unavailable,
        };
        let detail: Vec<String> = failures
            .iter()
            .map(|failure| {
                format!(
                    "shard {} on {}: {} {}",
                    failure.shard,
                    if failure.searcher_id.is_empty() {
                        "-"
                    } else {
                        &failure.searcher_id
                    },
                    failure.code,
                    failure.message
                )
            })
            .collect();
        Err(Error::Searcher {
            code,
            message: format!(
                "write not acknowledged: {} of {} shard(s) did not reach their write quorum of {write_quorum} ({}); writes are idempotent, retry the request",
                failures.len(),
                parts.len(),
                detail.join("; ")
            ),
        })
    }
}

/// tonic ends a call at the client's gRPC deadline by itself (answering CANCELLED), so work
/// bounded by that deadline stops this much earlier: what it found — a partial answer, or
/// which shards timed out — then still reaches the client.
fn reply_margin(client_timeout: Duration) -> Duration {
    (client_timeout / 10).min(Duration::from_millis(10))
}

fn write_reports(
    outcomes: impl Iterator<Item = ShardWriteOutcome>,
) -> (Vec<ReplicaFailure>, Vec<ShardWrite>) {
    let mut lagging = Vec::new();
    let mut shards = Vec::new();
    for outcome in outcomes {
        lagging.extend(outcome.lagging);
        shards.push(outcome.report);
    }
    (lagging, shards)
}

fn metric_from_proto(metric: i32) -> Result<Metric> {
    match v1::Metric::try_from(metric) {
        Ok(v1::Metric::L2) => Ok(Metric::L2),
        Ok(v1::Metric::InnerProduct) => Ok(Metric::InnerProduct),
        Ok(v1::Metric::Cosine) => Ok(Metric::Cosine),
        Ok(v1::Metric::Unspecified) => Err(Error::InvalidArgument(
            "metric is required: METRIC_L2, METRIC_INNER_PRODUCT or METRIC_COSINE".into(),
        )),
        Err(_) => Err(Error::InvalidArgument(format!(
            "unknown metric value {metric}"
        ))),
    }
}

fn metric_to_proto(metric: Metric) -> v1::Metric {
    match metric {
        Metric::L2 => v1::Metric::L2,
        Metric::InnerProduct => v1::Metric::InnerProduct,
        Metric::Cosine => v1::Metric::Cosine,
    }
}

fn config_of(record: &CollectionRecord) -> CollectionConfig {
    CollectionConfig {
        name: record.name.clone(),
        dimension: record.dimension,
        metric: metric_to_proto(record.metric) as i32,
        num_shards: record.num_shards,
        replication_factor: record.replication_factor,
        index_spec: record.index_spec.clone(),
        payload_indexes: payload_indexes::indexes_to_proto(&record.payload_indexes),
    }
}

fn replica_state(
    state: &ClusterState,
    collection: &str,
    shard: u32,
    searcher: &str,
) -> v1::ReplicaState {
    if !state.searchers.contains_key(searcher) {
        return v1::ReplicaState::Offline;
    }
    match state
        .replica(collection, shard, searcher)
        .map(|record| &record.state)
    {
        Some(ReplicaPhase::Booting) => v1::ReplicaState::Booting,
        Some(ReplicaPhase::Active) => v1::ReplicaState::Active,
        Some(ReplicaPhase::Draining) => v1::ReplicaState::Draining,
        Some(ReplicaPhase::Failed) => v1::ReplicaState::Failed,
        None => v1::ReplicaState::Offline,
    }
}

pub fn describe(state: &ClusterState, name: &str) -> Option<CollectionDescription> {
    let record = state.collections.get(name)?;
    let shards = (0..record.num_shards)
        .map(|shard| {
            let Some(assignment) = state.assignment(name, shard) else {
                return ShardDescription {
                    shard,
                    ..Default::default()
                };
            };
            ShardDescription {
                shard,
                replicas: assignment
                    .members()
                    .map(|searcher_id| {
                        let reported = state.replica(name, shard, searcher_id);
                        ReplicaDescription {
                            searcher_id: searcher_id.clone(),
                            address: state
                                .searchers
                                .get(searcher_id)
                                .map(|searcher| searcher.address.clone())
                                .unwrap_or_default(),
                            state: replica_state(state, name, shard, searcher_id) as i32,
                            point_count: reported.map_or(0, |record| record.point_count),
                            applied_seq: reported.map_or(0, |record| record.applied_seq),
                            role: match assignment.role_of(searcher_id) {
                                Some(quiver_cluster::ReplicaRole::Primary) => {
                                    v1::ReplicaRole::Primary
                                }
                                Some(quiver_cluster::ReplicaRole::Follower) => {
                                    v1::ReplicaRole::Follower
                                }
                                Some(quiver_cluster::ReplicaRole::Learner) => {
                                    v1::ReplicaRole::Learner
                                }
                                None => v1::ReplicaRole::Unspecified,
                            } as i32,
                        }
                    })
                    .collect(),
                primary: assignment.primary().to_string(),
                epoch: assignment.epoch,
            }
        })
        .collect();
    Some(CollectionDescription {
        config: Some(config_of(record)),
        shards,
    })
}

fn all_replicas_active(state: &ClusterState, name: &str) -> bool {
    let Some(record) = state.collections.get(name) else {
        return false;
    };
    (0..record.num_shards).all(|shard| {
        state.assignment(name, shard).is_some_and(|assignment| {
            assignment.replicas.iter().all(|searcher| {
                replica_state(state, name, shard, searcher) == v1::ReplicaState::Active
            })
        })
    })
}

#[async_trait]
impl MergerService for Merger {
    async fn create_collection(
        &self,
        request: CreateCollectionRequest,
        client_timeout: Option<Duration>,
    ) -> Result<CreateCollectionResponse> {
        let config = request
            .config
            .ok_or_else(|| Error::InvalidArgument("config is required".into()))?;
        let metric = metric_from_proto(config.metric)?;
        let index_spec: IndexSpec = config
            .index_spec
            .parse()
            .map_err(|error: quiver_index::Error| Error::InvalidArgument(error.to_string()))?;
        // Build a throwaway index so a spec the Searchers cannot build (dim not divisible
        // by m, an unknown FAISS factory) is refused here, before anything is written.
        let dimension = config.dimension as usize;
        let spec_to_check = index_spec.clone();
        tokio::task::spawn_blocking(move || {
            quiver_index::validate_spec(&spec_to_check, dimension, metric)
        })
        .await
        .map_err(|error| Error::Internal(format!("spec validation task failed: {error}")))?
        .map_err(|error| match error {
            quiver_index::Error::Unsupported(message) => {
                Error::Unimplemented(format!("index_spec {index_spec}: {message}"))
            }
            other => Error::InvalidArgument(format!("index_spec: {other}")),
        })?;
        let record = CollectionRecord {
            name: config.name.clone(),
            dimension: config.dimension,
            metric,
            num_shards: config.num_shards.max(1),
            replication_factor: config.replication_factor.max(1),
            index_spec: index_spec.to_string(),
            created_at: now_rfc3339(),
            payload_indexes: payload_indexes::indexes_from_proto(&config.payload_indexes)?,
        };
        let state = self.view.current();
        let live: Vec<String> = state.searchers.keys().cloned().collect();
        catalog::create_collection(&*self.store, &self.schema, &record, &live).await?;
        tracing::info!(
            collection = %record.name,
            shards = record.num_shards,
            replication_factor = record.replication_factor,
            "collection created"
        );
        let wait = client_timeout.map_or(self.config.create_wait, |timeout| {
            timeout.min(self.config.create_wait)
        });
        let name = record.name.clone();
        let state = match self
            .view
            .wait_until(wait, |state| all_replicas_active(state, &name))
            .await
        {
            Ok(state) => state,
            Err(_) => {
                tracing::warn!(collection = %name, "not every replica became ACTIVE in time");
                self.view.current()
            }
        };
        let collection = describe(&state, &record.name).unwrap_or(CollectionDescription {
            config: Some(config_of(&record)),
            shards: Vec::new(),
        });
        Ok(CreateCollectionResponse {
            collection: Some(collection),
        })
    }

    async fn drop_collection(&self, name: &str) -> Result<DropCollectionResponse> {
        catalog::drop_collection(&*self.store, &self.schema, name).await?;
        tracing::info!(collection = %name, "collection dropped");
        Ok(DropCollectionResponse {})
    }

    async fn list_collections(&self) -> Result<ListCollectionsResponse> {
        let state = self.view.current();
        Ok(ListCollectionsResponse {
            collections: state.collections.values().map(config_of).collect(),
        })
    }

    async fn describe_collection(&self, name: &str) -> Result<DescribeCollectionResponse> {
        let state = self.view.current();
        let collection = describe(&state, name)
            .ok_or_else(|| Error::NotFound(format!("collection {name:?} does not exist")))?;
        Ok(DescribeCollectionResponse {
            collection: Some(collection),
        })
    }

    async fn upsert(
        &self,
        request: UpsertRequest,
        client_timeout: Option<Duration>,
    ) -> Result<UpsertResponse> {
        let state = self.view.current();
        let collection = Self::collection(&state, &request.collection)?;
        let deadline = Self::deadline(self.config.write_timeout, 0, client_timeout);
        let total = request.points.len() as u32;
        let write_quorum = request.write_quorum;
        // Up to 10,000 vectors and JSON payloads to check and re-serialise: CPU work.
        let record = collection.clone();
        let parts: BTreeMap<u32, ReplicaWrite> = run_blocking("validating the upsert", move || {
            let payloads = validate::points(&record, &request.points)?;
            let mut parts: BTreeMap<u32, Vec<Point>> = BTreeMap::new();
            for (mut point, payload) in request.points.into_iter().zip(payloads) {
                point.payload_json = payload.unwrap_or_default();
                parts
                    .entry(shard_of(&point.id, record.num_shards))
                    .or_default()
                    .push(point);
            }
            Ok::<_, Error>(
                parts
                    .into_iter()
                    .map(|(shard, points)| (shard, ReplicaWrite::Upsert(points)))
                    .collect(),
            )
        })
        .await??;
        let outcomes = self
            .write_to_shards(&collection, write_quorum, parts, deadline)
            .await?;
        let (failed_replicas, shards) = write_reports(outcomes.into_values());
        Ok(UpsertResponse {
            upserted: total,
            failed_replicas,
            shards,
        })
    }

    async fn delete(
        &self,
        request: DeleteRequest,
        client_timeout: Option<Duration>,
    ) -> Result<DeleteResponse> {
        let state = self.view.current();
        let collection = Self::collection(&state, &request.collection)?;
        let filter = validate::filter(&collection, request.filter.as_ref())?;
        let deadline = Self::deadline(self.config.write_timeout, 0, client_timeout);
        let parts: BTreeMap<u32, ReplicaWrite> = match filter {
            Some(_) if !request.ids.is_empty() => {
                return Err(Error::InvalidArgument(
                    "give ids or a filter to delete, not both".into(),
                ))
            }
            // Every shard's primary deletes what matches there.
            Some(filter) => {
                let filter = quiver_payload::proto::to_proto(&filter);
                (0..collection.num_shards)
                    .map(|shard| (shard, ReplicaWrite::DeleteMatching(filter.clone())))
                    .collect()
            }
            None => {
                validate::ids(&request.ids)?;
                let mut parts: BTreeMap<u32, Vec<String>> = BTreeMap::new();
                for id in request.ids {
                    parts
                        .entry(shard_of(&id, collection.num_shards))
                        .or_default()
                        .push(id);
                }
                parts
                    .into_iter()
                    .map(|(shard, ids)| (shard, ReplicaWrite::Delete(ids)))
                    .collect()
            }
        };
        let outcomes = self
            .write_to_shards(&collection, request.write_quorum, parts, deadline)
            .await?;
        let deleted = outcomes.values().map(|outcome| outcome.affected).sum();
        let (failed_replicas, shards) = write_reports(outcomes.into_values());
        Ok(DeleteResponse {
            deleted,
            failed_replicas,
            shards,
        })
    }

    async fn get(
        &self,
        request: GetRequest,
        client_timeout: Option<Duration>,
    ) -> Result<GetResponse> {
        let state = self.view.current();
        let collection = Self::collection(&state, &request.collection)?;
        validate::ids(&request.ids)?;
        let deadline = Self::deadline(self.config.write_timeout, 0, client_timeout);
        let rotation = self.rotation.fetch_add(1, Ordering::Relaxed);
        let mut by_shard: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for id in &request.ids {
            by_shard
                .entry(shard_of(id, collection.num_shards))
                .or_default()
                .push(id.clone());
        }
        let lookups = by_shard.into_iter().map(|(shard, ids)| {
            let request = &request;
            let state = &state;
            let collection = &collection;
            async move {
                read_shard(
                    &self.clients,
                    state,
                    &collection.name,
                    shard,
                    rotation,
                    deadline,
                    |mut client, budget| {
                        let mut call = tonic::Request::new(ReplicaGetRequest {
                            collection: collection.name.clone(),
                            shard,
                            ids: ids.clone(),
                            with_vectors: request.with_vectors,
                            with_payloads: request.with_payloads,
                        });
                        call.set_timeout(budget);
                        quiver_cluster::request_id::attach(&mut call);
                        async move {
                            with_deadline(budget, client.get(call))
                                .await
                                .map(|response| response.points)
                        }
                    },
                )
                .await
            }
        });
        let outcomes = join_all(lookups).await;
        assemble_get(&request.ids, outcomes)
    }

    async fn search(
        &self,
        request: SearchRequest,
        client_timeout: Option<Duration>,
    ) -> Result<SearchResponse> {
        let state = self.view.current();
        let collection = Self::collection(&state, &request.collection)?;
        validate::search(&collection, &request.queries, request.k, &request.shards)?;
        validate::search_params(request.params.as_ref())?;
        let min_coverage = validate::min_coverage(request.min_coverage)?;
        let filter = validate::filter(&collection, request.filter.as_ref())?
            .map(|filter| quiver_payload::proto::to_proto(&filter));
        let deadline = Self::deadline(
            self.config.search_timeout,
            request.timeout_ms,
            client_timeout,
        );
        let shards: Vec<u32> = if request.shards.is_empty() {
            (0..collection.num_shards).collect()
        } else {
            request.shards.clone()
        };
        let query_count = request.queries.len();
        let fan_out = FanOut {
            clients: &self.clients,
            loads: &self.loads,
            view: &self.view,
            hedging: &self.config.hedging,
            template: ShardSearchRequest {
                collection: collection.name.clone(),
                shards: Vec::new(),
                queries: request.queries,
                k: request.k,
                with_payloads: request.with_payloads,
                with_vectors: request.with_vectors,
                params: request.params,
                filter,
            },
            deadline,
            rotation: self.rotation.fetch_add(1, Ordering::Relaxed),
        };
        let started = std::time::Instant::now();
        let FanOutOutcome {
            answers,
            reports,
            calls,
        } = fan_out.run(&shards).await;

        metrics::search_fanned_out(calls, shards.len());
        for report in &reports {
            if report.outcome == ShardOutcome::Ok as i32 {
                metrics::shard_answered(
                    &collection.name,
                    report.shard,
                    Duration::from_micros(report.latency_us),
                );
            } else {
                metrics::shard_failed(&report.code);
            }
        }
        let coverage = check_coverage(&reports, min_coverage)?;
        let per_query = answer_lists(answers, query_count, collection.num_shards);
        let results = merge_results(collection.metric, request.k as usize, per_query).await?;
        if coverage.partial {
            metrics::partial_result();
        }
        tracing::debug!(
            collection = %collection.name,
            shards = coverage.total,
            shards_answered = coverage.answered,
            calls,
            partial = coverage.partial,
            latency_us = started.elapsed().as_micros() as u64,
            "search served"
        );
        Ok(SearchResponse {
            results,
            shards_total: coverage.total as u32,
            shards_answered: coverage.answered as u32,
            failed_shards: reports
                .iter()
                .filter(|report| report.outcome != ShardOutcome::Ok as i32)
                .map(|report| ShardFailure {
                    shard: report.shard,
                    searcher_id: report.searcher_id.clone(),
                    code: report.code.clone(),
                    message: report.message.clone(),
                })
                .collect(),
            shards: reports,
            coverage: coverage.fraction,
            partial: coverage.partial,
        })
    }

    async fn count(
        &self,
        request: CountRequest,
        client_timeout: Option<Duration>,
    ) -> Result<CountResponse> {
        self.count_points(request, client_timeout).await
    }

    async fn scroll(
        &self,
        request: ScrollRequest,
        client_timeout: Option<Duration>,
    ) -> Result<ScrollResponse> {
        self.scroll_points(request, client_timeout).await
    }

    async fn create_payload_index(
        &self,
        request: CreatePayloadIndexRequest,
    ) -> Result<CreatePayloadIndexResponse> {
        self.add_payload_index(request).await
    }

    async fn drop_payload_index(
        &self,
        request: DropPayloadIndexRequest,
    ) -> Result<DropPayloadIndexResponse> {
        self.remove_payload_index(request).await
    }

    async fn cluster_status(&self) -> Result<ClusterStatusResponse> {
        let state = self.view.current();
        let mut replica_counts: HashMap<&str, u32> = HashMap::new();
        for (_, _, searcher) in state.replicas.keys() {
            *replica_counts.entry(searcher.as_str()).or_default() += 1;
        }
        let searchers = state
            .searchers
            .values()
            .map(|searcher| SearcherDescription {
                id: searcher.id.clone(),
                address: searcher.address.clone(),
                version: searcher.version.clone(),
                started_at: searcher.started_at.clone(),
                replica_count: replica_counts
                    .get(searcher.id.as_str())
                    .copied()
                    .unwrap_or(0),
            })
            .collect();
        let collections = state
            .collections
            .values()
            .map(|record| {
                let mut serving = 0;
                let mut fully_replicated = 0;
                for shard in 0..record.num_shards {
                    let active = state.active_replicas(&record.name, shard).len();
                    let assigned = state
                        .assignment(&record.name, shard)
                        .map_or(0, |assignment| assignment.replicas.len());
                    if active > 0 {
                        serving += 1;
                    }
                    if assigned > 0 && active == assigned {
                        fully_replicated += 1;
                    }
                }
                CollectionHealth {
                    name: record.name.clone(),
                    num_shards: record.num_shards,
                    serving_shards: serving,
                    fully_replicated_shards: fully_replicated,
                }
            })
            .collect();
        Ok(ClusterStatusResponse {
            searchers,
            collections,
            revision: state.revision,
        })
    }
}

/// Runs CPU-bound work on tokio's blocking pool, so that the async workers stay free to
/// serve calls. A panic in the work comes back as [`Error::Internal`].
async fn run_blocking<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| Error::Internal(format!("{what} failed: {error}")))
}

/// Merges with fewer hits than this in all run inline: handing them to the blocking pool
/// would cost more than the merge itself (the Merger's overhead on a search is measured in
/// tens of microseconds; see docs/benchmarks.md).
const INLINE_MERGE_MAX_HITS: usize = 1024;

/// Every query's merge. One answer needs none: a Searcher's list is already the exact top k
/// of its shards in the API's order. Up to 1024 queries, each over every Searcher's top k
/// (k up to 1024), is too much CPU work for an async worker, so big merges run on the
/// blocking pool.
async fn merge_results(
    metric: Metric,
    k: usize,
    per_query: Vec<Vec<Vec<ScoredPoint>>>,
) -> Result<Vec<QueryResult>> {
    let inline = hit_count(&per_query) <= INLINE_MERGE_MAX_HITS;
    let merge = move || -> Vec<QueryResult> {
        per_query
            .into_iter()
            .map(|mut lists| {
                if lists.len() == 1 {
                    let mut neighbors = lists.pop().unwrap_or_default();
                    neighbors.truncate(k);
                    return QueryResult { neighbors };
                }
                merge_query(metric, k, lists)
            })
            .collect()
    };
    if inline {
        return Ok(merge());
    }
    run_blocking("merging search results", merge).await
}

fn hit_count(per_query: &[Vec<Vec<ScoredPoint>>]) -> usize {
    per_query
        .iter()
        .flat_map(|lists| lists.iter().map(Vec::len))
        .sum()
}

/// How much of a search answered.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Coverage {
    total: usize,
    answered: usize,
    fraction: f64,
    partial: bool,
}

/// Whether enough shards answered: `answered / total >= min_coverage`, compared in f32 (the
/// request's type, so that 0.3 with 3 of 10 shards passes), and always at least one shard.
/// Below it, the error names every missing shard and why; it is DEADLINE_EXCEEDED when all
/// of them ran out of time, UNAVAILABLE otherwise.
fn check_coverage(reports: &[ShardReport], min_coverage: f32) -> Result<Coverage> {
    let total = reports.len();
    let answered = reports
        .iter()
        .filter(|report| report.outcome == ShardOutcome::Ok as i32)
        .count();
    let fraction = if total == 0 {
        0.0
    } else {
        answered as f64 / total as f64
    };
    let coverage = Coverage {
        total,
        answered,
        fraction,
        partial: answered < total,
    };
    if answered > 0 && answered as f32 / total as f32 >= min_coverage {
        return Ok(coverage);
    }
    let missing: Vec<&ShardReport> = reports
        .iter()
        .filter(|report| report.outcome != ShardOutcome::Ok as i32)
        .collect();
    let all_timed_out = missing
        .iter()
        .all(|report| report.outcome == ShardOutcome::TimedOut as i32);
    let detail: Vec<String> = missing
        .iter()
        .map(|report| {
            let outcome = ShardOutcome::try_from(report.outcome)
                .map_or("UNKNOWN", |outcome| outcome.as_str_name());
            let on = if report.searcher_id.is_empty() {
                String::new()
            } else {
                format!(" on {}", report.searcher_id)
            };
            format!(
                "shard {}{on}: {} {}: {}",
                report.shard,
                outcome.trim_start_matches("SHARD_OUTCOME_"),
                report.code,
                report.message
            )
        })
        .collect();
    let message = format!(
        "{answered} of {total} shards answered (coverage {fraction:.2}), below min_coverage {min_coverage:.2}; missing: {}",
        detail.join("; ")
    );
    Err(if all_timed_out {
        Error::DeadlineExceeded(message)
    } else {
        Error::Unavailable(message)
    })
}

/// Per query, every answer's list, keeping of each answer only the hits of the shards it
/// was first to answer for (see [`crate::fanout`]): exact, since a point of the global top
/// k is in the top k of any set of shards that contains its own.
fn answer_lists(
    answers: Vec<SearchAnswer>,
    query_count: usize,
    num_shards: u32,
) -> Vec<Vec<Vec<ScoredPoint>>> {
    let mut per_query: Vec<Vec<Vec<ScoredPoint>>> = vec![Vec::new(); query_count];
    for answer in answers {
        let won_everything = answer
            .searched
            .iter()
            .all(|shard| answer.won.contains(shard));
        for (query, result) in answer.results.into_iter().enumerate() {
            let Some(lists) = per_query.get_mut(query) else {
                continue;
            };
            let mut neighbors = result.neighbors;
            if !won_everything {
                neighbors.retain(|point| answer.won.contains(&shard_of(&point.id, num_shards)));
            }
            lists.push(neighbors);
        }
    }
    per_query
}

/// Keeps the connection pool and the load counters to the Searchers the cluster has, and
/// the cluster-wide gauges up to date: each watch update is a cheap snapshot, so this never
/// waits on (nor delays) a search.
async fn prune_departed_searchers(
    mut updates: tokio::sync::watch::Receiver<Arc<ClusterState>>,
    clients: Arc<SearcherClients>,
    loads: Arc<SearcherLoads>,
) {
    metrics::observe_cluster_state(&updates.borrow_and_update().clone());
    while updates.changed().await.is_ok() {
        let state = updates.borrow_and_update().clone();
        metrics::observe_cluster_state(&state);
        let addresses: HashSet<&str> = state
            .searchers
            .values()
            .map(|searcher| searcher.address.as_str())
            .collect();
        clients.retain(|address| addresses.contains(address));
        loads.retain(|searcher_id| state.searchers.contains_key(searcher_id));
    }
}

/// What one shard's lookup came to: the points it has of those asked for, or its last
/// failure.
type ShardLookup = std::result::Result<Vec<Point>, ShardFailure>;

/// A Get's answer from every shard's lookup: the points found, in the requested order, and
/// the shards that did not answer. A shard that answered without some ids simply does not
/// have them, so the call fails only when no shard answered at all.
fn assemble_get(ids: &[String], lookups: Vec<ShardLookup>) -> Result<GetResponse> {
    let mut found: HashMap<String, Point> = HashMap::new();
    let mut answered = 0usize;
    let mut failed_shards = Vec::new();
    for lookup in lookups {
        match lookup {
            Ok(points) => {
                answered += 1;
                found.extend(points.into_iter().map(|point| (point.id.clone(), point)));
            }
            Err(failure) => failed_shards.push(failure),
        }
    }
    if answered == 0 {
        if let Some(failure) = failed_shards.first() {
            return Err(Error::Searcher {
                code: match code_from_name(&failure.code) {
                    Code::DeadlineExceeded => Code::DeadlineExceeded,
                    _ => Code::Unavailable,
                },
                message: format!(
                    "no shard answered; shard {}: {}",
                    failure.shard, failure.message
                ),
            });
        }
    }
    let points = ids.iter().filter_map(|id| found.remove(id)).collect();
    Ok(GetResponse {
        points,
        failed_shards,
    })
}

/// The exact global top k of one query from each Searcher's local top k: every global
/// winner is in the local top k of the shard that holds it, so nothing is missed.
fn merge_query(metric: Metric, k: usize, lists: Vec<Vec<ScoredPoint>>) -> QueryResult {
    let mut details: HashMap<String, ScoredPoint> = HashMap::new();
    let neighbor_lists: Vec<Vec<Neighbor<String>>> = lists
        .into_iter()
        .map(|list| {
            list.into_iter()
                .map(|point| {
                    let neighbor = Neighbor {
                        id: point.id.clone(),
                        score: point.score,
                    };
                    details.entry(point.id.clone()).or_insert(point);
                    neighbor
                })
                .collect()
        })
        .collect();
    let neighbors = merge_top_k(metric, k, neighbor_lists)
        .into_iter()
        .filter_map(|neighbor| {
            let mut point = details.remove(&neighbor.id)?;
            point.score = neighbor.score;
            Some(point)
        })
        .collect();
    QueryResult { neighbors }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scored(id: &str, score: f32) -> ScoredPoint {
        ScoredPoint {
            id: id.into(),
            score,
            vector: Vec::new(),
            payload_json: String::new(),
        }
    }

    fn ids(result: &QueryResult) -> Vec<(&str, f32)> {
        result
            .neighbors
            .iter()
            .map(|point| (point.id.as_str(), point.score))
            .collect()
    }

    #[test]
    fn the_earliest_deadline_wins_and_a_client_deadline_keeps_a_reply_margin() {
        let budget = |default_ms: u64, requested_ms: u32, client_ms: Option<u64>| {
            let deadline = Merger::deadline(
                Duration::from_millis(default_ms),
                requested_ms,
                client_ms.map(Duration::from_millis),
            );
            // Rounded to milliseconds: the call itself takes a little time.
            (deadline
                .saturating_duration_since(Instant::now())
                .as_micros() as u64
                + 500)
                / 1000
        };
        assert_eq!(budget(10_000, 0, None), 10_000);
        assert_eq!(budget(10_000, 300, None), 300);
        assert_eq!(budget(10_000, 300, Some(5_000)), 300);
        assert_eq!(budget(10_000, 0, Some(400)), 390);
        assert_eq!(budget(10_000, 0, Some(20)), 18);
        assert_eq!(budget(10_000, 5_000, Some(400)), 390);
    }

    #[test]
    fn l2_merges_ascending_and_similarity_descending() {
        let lists = || {
            vec![
                vec![scored("a", 1.0), scored("b", 4.0)],
                vec![scored("c", 2.0), scored("d", 3.0)],
            ]
        };
        assert_eq!(
            ids(&merge_query(Metric::L2, 3, lists())),
            vec![("a", 1.0), ("c", 2.0), ("d", 3.0)]
        );
        let lists = vec![
            vec![scored("b", 4.0), scored("a", 1.0)],
            vec![scored("d", 3.0), scored("c", 2.0)],
        ];
        assert_eq!(
            ids(&merge_query(Metric::InnerProduct, 2, lists)),
            vec![("b", 4.0), ("d", 3.0)]
        );
    }

    #[test]
    fn duplicates_are_dropped_and_ties_broken_by_id() {
        let lists = vec![
            vec![scored("z", 1.0), scored("x", 2.0)],
            vec![scored("y", 1.0), scored("x", 2.0)],
        ];
        assert_eq!(
            ids(&merge_query(Metric::L2, 10, lists)),
            vec![("y", 1.0), ("z", 1.0), ("x", 2.0)]
        );
    }

    fn point(id: &str) -> Point {
        Point {
            id: id.into(),
            vector: vec![1.0, 2.0],
            payload_json: String::new(),
        }
    }

    fn failure(shard: u32, code: Code) -> ShardFailure {
        ShardFailure {
            shard,
            searcher_id: "s1".into(),
            code: code_name(code).into(),
            message: "down".into(),
        }
    }

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|value| value.to_string()).collect()
    }

    #[test]
    fn get_with_a_failed_shard_returns_what_the_others_answered() {
        // Shard 0 answered without the ids, shard 1 failed: not an error, nothing found.
        let response = assemble_get(
            &strings(&["a", "b"]),
            vec![Ok(Vec::new()), Err(failure(1, Code::Unavailable))],
        )
        .unwrap();
        assert!(response.points.is_empty());
        assert_eq!(response.failed_shards.len(), 1);
        assert_eq!(response.failed_shards[0].shard, 1);

        // Points come back in the requested order, missing ones left out.
        let response = assemble_get(
            &strings(&["c", "x", "a"]),
            vec![
                Ok(vec![point("a")]),
                Err(failure(1, Code::DeadlineExceeded)),
                Ok(vec![point("c")]),
            ],
        )
        .unwrap();
        let found: Vec<&str> = response.points.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(found, vec!["c", "a"]);
        assert_eq!(response.failed_shards.len(), 1);
    }

    #[test]
    fn get_fails_only_when_no_shard_answered() {
        let error = assemble_get(
            &strings(&["a"]),
            vec![
                Err(failure(0, Code::DeadlineExceeded)),
                Err(failure(1, Code::Unavailable)),
            ],
        )
        .unwrap_err();
        assert_eq!(error.code(), Code::DeadlineExceeded);
        let error = assemble_get(
            &strings(&["a"]),
            vec![
                Err(failure(0, Code::NotFound)),
                Err(failure(1, Code::DeadlineExceeded)),
            ],
        )
        .unwrap_err();
        assert_eq!(error.code(), Code::Unavailable);
        assert!(error.to_string().contains("no shard answered"));
    }

    fn shard_report(shard: u32, outcome: ShardOutcome) -> ShardReport {
        let code = match outcome {
            ShardOutcome::Ok => Code::Ok,
            ShardOutcome::TimedOut => Code::DeadlineExceeded,
            _ => Code::Unavailable,
        };
        ShardReport {
            shard,
            outcome: outcome as i32,
            searcher_id: if outcome == ShardOutcome::NoLiveReplica {
                String::new()
            } else {
                format!("s{shard}")
            },
            code: code_name(code).into(),
            message: if outcome == ShardOutcome::Ok {
                String::new()
            } else {
                "gone".into()
            },
            latency_us: 1,
            attempts: 1,
            plan: String::new(),
        }
    }

    fn reports(outcomes: &[ShardOutcome]) -> Vec<ShardReport> {
        outcomes
            .iter()
            .enumerate()
            .map(|(shard, outcome)| shard_report(shard as u32, *outcome))
            .collect()
    }

    #[test]
    fn coverage_at_or_above_the_minimum_is_a_flagged_partial_answer() {
        use ShardOutcome::{Failed, Ok as Answered, TimedOut};
        let all = check_coverage(&reports(&[Answered, Answered]), 1.0).unwrap();
        assert_eq!((all.answered, all.total, all.partial), (2, 2, false));
        assert_eq!(all.fraction, 1.0);
        let half = check_coverage(&reports(&[Answered, Failed]), 0.5).unwrap();
        assert_eq!((half.fraction, half.partial), (0.5, true));
        // 3 of 10 meets 0.3 exactly, although 0.3 is not exact in binary.
        let mut ten = vec![Answered; 3];
        ten.extend([TimedOut; 7]);
        assert!(check_coverage(&reports(&ten), 0.3).is_ok());
        assert!(check_coverage(&reports(&ten), 0.31).is_err());
        // Never an answer from no shard at all, however small the minimum.
        let error = check_coverage(&reports(&[Failed, Failed]), 0.0001).unwrap_err();
        assert_eq!(error.code(), Code::Unavailable);
    }

    #[test]
    fn coverage_below_the_minimum_names_the_missing_shards() {
        use ShardOutcome::{Failed, NoLiveReplica, Ok as Answered, TimedOut};
        let error = check_coverage(&reports(&[Answered, Failed, NoLiveReplica]), 1.0).unwrap_err();
        assert_eq!(error.code(), Code::Unavailable);
        let message = error.to_string();
        assert!(message.contains("1 of 3 shards answered"), "{message}");
        assert!(
            message.contains("shard 1 on s1: FAILED UNAVAILABLE: gone"),
            "{message}"
        );
        assert!(
            message.contains("shard 2: NO_LIVE_REPLICA UNAVAILABLE"),
            "{message}"
        );
        assert!(!message.contains("shard 0"), "{message}");
        // Every missing shard ran out of time: DEADLINE_EXCEEDED.
        let error = check_coverage(&reports(&[Answered, TimedOut, TimedOut]), 1.0).unwrap_err();
        assert_eq!(error.code(), Code::DeadlineExceeded);
        assert!(error
            .to_string()
            .contains("shard 2 on s2: TIMED_OUT DEADLINE_EXCEEDED"));
        let error = check_coverage(&reports(&[Answered, TimedOut, Failed]), 1.0).unwrap_err();
        assert_eq!(error.code(), Code::Unavailable);
    }

    #[test]
    fn an_answer_counts_only_for_the_shards_it_won() {
        let num_shards = 2;
        let on = |shard: u32| -> Vec<String> {
            (0..)
                .map(|number| format!("id{number}"))
                .filter(|id| shard_of(id, num_shards) == shard)
                .take(2)
                .collect()
        };
        let (zero, one) = (on(0), on(1));
        // A slow call covered shards 0 and 1 and answered after a hedge had already
        // answered shard 0 (with an older copy of a point, scored differently).
        let slow = SearchAnswer {
            results: vec![QueryResult {
                neighbors: vec![
                    scored(&zero[0], 0.5),
                    scored(&one[0], 1.0),
                    scored(&zero[1], 1.5),
                    scored(&one[1], 2.0),
                ],
            }],
            searched: vec![0, 1],
            won: vec![1],
        };
        let hedge = SearchAnswer {
            results: vec![QueryResult {
                neighbors: vec![scored(&zero[0], 0.7), scored(&zero[1], 1.2)],
            }],
            searched: vec![0],
            won: vec![0],
        };
        let lists = answer_lists(vec![slow, hedge], 1, num_shards);
        let merged = merge_query(Metric::L2, 4, lists[0].clone());
        assert_eq!(
            ids(&merged),
            vec![
                (zero[0].as_str(), 0.7),
                (one[0].as_str(), 1.0),
                (zero[1].as_str(), 1.2),
                (one[1].as_str(), 2.0)
            ],
            "shard 0's points come from the answer that won shard 0 only"
        );
    }

    #[tokio::test]
    async fn a_single_answer_needs_no_merge_and_small_merges_stay_inline() {
        let per_query = vec![vec![vec![
            scored("a", 1.0),
            scored("b", 2.0),
            scored("c", 3.0),
        ]]];
        let results = merge_results(Metric::L2, 2, per_query).await.unwrap();
        assert_eq!(ids(&results[0]), vec![("a", 1.0), ("b", 2.0)]);
        let per_query = vec![vec![vec![scored("a", 1.0)], vec![scored("b", 0.5)]]];
        let results = merge_results(Metric::L2, 2, per_query).await.unwrap();
        assert_eq!(ids(&results[0]), vec![("b", 0.5), ("a", 1.0)]);
    }

    /// On a single-threaded runtime, a task spawned just before `work` can run before `work`
    /// ends only if `work` yields while it computes, which is what handing the CPU part to
    /// the blocking pool does; done inline, it would hold the only worker to the end.
    async fn yields_while_working<T>(work: impl std::future::Future<Output = T>) -> (bool, T) {
        let other_task_ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&other_task_ran);
        let other_task = tokio::spawn(async move { flag.store(true, Ordering::SeqCst) });
        let output = work.await;
        let ran = other_task_ran.load(Ordering::SeqCst);
        other_task.await.unwrap();
        (ran, output)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn search_merge_runs_off_the_async_workers() {
        let lists: Vec<Vec<ScoredPoint>> = (0..4)
            .map(|searcher| {
                (0..1024)
                    .map(|rank| scored(&format!("{searcher}-{rank}"), rank as f32))
                    .collect()
            })
            .collect();
        let per_query = vec![lists; 64];
        let (yielded, results) =
            yields_while_working(merge_results(Metric::L2, 1024, per_query)).await;
        let results = results.unwrap();
        assert!(yielded, "the merge ran on the async worker");
        assert_eq!(results.len(), 64);
        assert_eq!(results[0].neighbors.len(), 1024);
        assert_eq!(results[0].neighbors[0].id, "0-0");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn upsert_validation_runs_off_the_async_workers() {
        let store = quiver_cluster::MemoryStore::new();
        let schema = KeySchema::default();
        let record = CollectionRecord {
            name: "c".into(),
            dimension: 2,
            metric: Metric::L2,
            num_shards: 2,
            replication_factor: 1,
            index_spec: "flat".into(),
            created_at: now_rfc3339(),
            payload_indexes: Vec::new(),
        };
        store
            .put(
                &schema.collection("c"),
                quiver_cluster::model::encode(&record),
                None,
            )
            .await
            .unwrap();
        let store: Arc<dyn MetadataStore> = Arc::new(store);
        let view = ClusterView::start(Arc::clone(&store), schema.clone())
            .await
            .unwrap();
        let merger = Merger::new(store, schema, view, MergerConfig::default());
        // A full batch with one bad vector at the very end: it is refused without a single
        // replica call, so nothing else in upsert would yield.
        let mut points: Vec<Point> = (0..validate::MAX_BATCH)
            .map(|index| Point {
                id: format!("p{index}"),
                vector: vec![index as f32, 1.0],
                payload_json: format!("{{\"n\": {index}, \"tags\": [\"a\", \"b\"]}}"),
            })
            .collect();
        points.last_mut().unwrap().vector = vec![f32::NAN, 1.0];
        let request = UpsertRequest {
            collection: "c".into(),
            points,
            ..Default::default()
        };
        let (yielded, result) = yields_while_working(merger.upsert(request, None)).await;
        assert!(yielded, "validation ran on the async worker");
        assert!(
            matches!(result, Err(Error::InvalidArgument(ref message)) if message.contains("p9999")),
            "{result:?}"
        );
    }
}
