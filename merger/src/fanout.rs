//! One search's fan-out to the Searchers: deadlines, retries, hedging, and an honest
//! report per shard.
//!
//! - Every call carries the search's remaining budget, never a fresh one.
//! - A shard whose call failed transiently (the replica moved, is starting, or its Searcher
//!   is unreachable) is retried once on another replica, and only while time is left.
//! - A call that has not answered within its hedge delay (see [`HedgeConfig`]) has its
//!   still-missing shards sent to other replicas, grouped per Searcher. The first answer
//!   for a shard wins; a call left with no shard to win is cancelled (its future dropped,
//!   which resets the HTTP/2 stream, so the Searcher stops working on it).
//! - When the deadline passes, the shards still missing are reported TIMED_OUT and every
//!   call in flight is cancelled.
//!
//! Searchers merge the shards of one call into one top-k list, so two calls for one shard
//! can overlap. An answer is used only for the shards it won: hits of shards that another
//! call answered first are dropped (a point's shard is `shard_of(id)`), see
//! [`SearchAnswer::won`]. This keeps the merge exact: a point in the global top k is in the
//! top k of every subset of shards that contains its own.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    future::Future,
    pin::Pin,
    time::Duration,
};

use futures::{
    future::{AbortHandle, Abortable},
    stream::FuturesUnordered,
    StreamExt,
};
use quiver_cluster::ClusterView;
use quiver_proto::{
    code_name,
    v1::{searcher_client::SearcherClient, ShardOutcome, ShardReport, ShardSearchRequest},
};
use tokio::time::Instant;
use tonic::{transport::Channel, Code, Status};

use crate::{clients::SearcherClients, error::retryable, load::SearcherLoads, metrics, routing};

/// When to send a second replica the shards of a call that has not answered.
#[derive(Debug, Clone, PartialEq)]
pub struct HedgeConfig {
    pub enabled: bool,
    /// A fixed hedge delay instead of the adaptive one.
    pub fixed_delay: Option<Duration>,
    /// The adaptive delay is this percentile (0 to 100) of recent answer latencies: the
    /// lower of the called Searcher's own and all Searchers' together. A Searcher that is
    /// slow throughout would otherwise set its own bar too high to ever be hedged; its
    /// losing calls are cancelled and never recorded, so they do not raise the overall one.
    pub percentile: f64,
    /// The adaptive delay is never shorter than this, so that sub-millisecond jitter does
    /// not double the load.
    pub min_delay: Duration,
    /// The delay before enough answers were seen to compute a percentile.
    pub delay_without_stats: Duration,
}

impl Default for HedgeConfig {
    fn default() -> Self {
        HedgeConfig {
            enabled: true,
            fixed_delay: None,
            percentile: 95.0,
            min_delay: Duration::from_millis(2),
            delay_without_stats: Duration::from_millis(20),
        }
    }
}

impl HedgeConfig {
    /// How long to wait for `searcher_id` before hedging; `None` when hedging is off.
    pub fn delay(&self, loads: &SearcherLoads, searcher_id: &str) -> Option<Duration> {
        if !self.enabled {
            return None;
        }
        if let Some(fixed) = self.fixed_delay {
            return Some(fixed);
        }
        let own = loads.searcher_percentile(searcher_id, self.percentile);
        let overall = loads.overall_percentile(self.percentile);
        let delay = match (own, overall) {
            (Some(own), Some(overall)) => own.min(overall),
            (Some(only), None) | (None, Some(only)) => only,
            (None, None) => self.delay_without_stats,
        };
        Some(delay.max(self.min_delay))
    }
}

/// One Searcher's answer, used for the shards it won.
#[derive(Debug)]
pub struct SearchAnswer {
    /// Per query, the top k over `searched` (the Searcher's own merge).
    pub results: Vec<quiver_proto::v1::QueryResult>,
    /// The shards the Searcher searched.
    pub searched: Vec<u32>,
    /// Those of `searched` this answer was first for; its hits of other shards are not used.
    pub won: Vec<u32>,
}

/// What a fan-out came to: the answers to merge and one report per shard, in shard order.
#[derive(Debug)]
pub struct FanOutOutcome {
    pub answers: Vec<SearchAnswer>,
    pub reports: Vec<ShardReport>,
    /// Searcher calls made: first calls, retries and hedges.
    pub calls: usize,
}

/// Everything one search's fan-out needs.
pub struct FanOut<'a> {
    pub clients: &'a SearcherClients,
    pub loads: &'a SearcherLoads,
    /// Read again when retrying or hedging, so that those see the newest cluster state.
    pub view: &'a ClusterView,
    pub hedging: &'a HedgeConfig,
    /// The request every call sends, `shards` aside.
    pub template: ShardSearchRequest,
    pub deadline: Instant,
    /// The last tie-break of replica choice (see [`routing::plan_search`]).
    pub rotation: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallKind {
    First,
    Hedge,
    Retry,
}

enum Event {
    Answered {
        call: usize,
        result: Result<quiver_proto::v1::ShardSearchResponse, Status>,
        latency: Duration,
    },
    /// A call aborted because every shard it covered was answered elsewhere.
    Cancelled,
    HedgeDue {
        call: usize,
    },
}

type EventFuture = Pin<Box<dyn Future<Output = Event> + Send>>;

struct CallInFlight {
    searcher_id: String,
    shards: Vec<u32>,
    kind: CallKind,
    abort: AbortHandle,
    sent: Instant,
}

#[derive(Default)]
struct ShardProgress {
    /// Searchers asked for this shard.
    tried: HashSet<String>,
    last_asked: Option<String>,
    /// Calls out for it now.
    in_flight: usize,
    attempts: u32,
    hedged: bool,
    retried: bool,
    /// (searcher, code, message) of the latest failure.
    last_failure: Option<(String, Code, String)>,
    /// Set once the shard's fate is known.
    report: Option<ShardReport>,
}

/// The mutable state of one fan-out.
struct Run {
    started: Instant,
    shards: BTreeMap<u32, ShardProgress>,
    calls: HashMap<usize, CallInFlight>,
    events: FuturesUnordered<EventFuture>,
    answers: Vec<SearchAnswer>,
    next_call: usize,
}

impl Run {
    fn finish(
        &mut self,
        shard: u32,
        outcome: ShardOutcome,
        searcher_id: String,
        code: Code,
        message: String,
    ) {
        let latency_us = self.started.elapsed().as_micros() as u64;
        let Some(progress) = self.shards.get_mut(&shard) else {
            return;
        };
        debug_assert!(progress.report.is_none(), "shard {shard} finished twice");
        progress.report = Some(ShardReport {
            shard,
            outcome: outcome as i32,
            searcher_id,
            code: code_name(code).to_string(),
            message,
            latency_us,
            attempts: progress.attempts,
            plan: String::new(),
        });
    }

    fn is_done(&self, shard: u32) -> bool {
        self.shards
            .get(&shard)
            .is_none_or(|progress| progress.report.is_some())
    }

    fn unfinished(&self) -> bool {
        self.shards
            .values()
            .any(|progress| progress.report.is_none())
    }

    /// Aborts every call none of whose shards is still missing: it can no longer win any.
    fn cancel_losers(&mut self, loads: &SearcherLoads) {
        let losers: Vec<usize> = self
            .calls
            .iter()
            .filter(|(_, call)| call.shards.iter().all(|shard| self.is_done(*shard)))
            .map(|(id, _)| *id)
            .collect();
        for id in losers {
            if let Some(call) = self.calls.remove(&id) {
                call.abort.abort();
                loads.record_given_up(&call.searcher_id, call.sent.elapsed());
                for shard in &call.shards {
                    if let Some(progress) = self.shards.get_mut(shard) {
                        progress.in_flight -= 1;
                    }
                }
            }
        }
    }
}

impl FanOut<'_> {
    /// Searches `shards` and reports on each of them by the deadline.
    pub async fn run(self, shards: &[u32]) -> FanOutOutcome {
        let mut run = Run {
            started: Instant::now(),
            shards: shards
                .iter()
                .map(|shard| (*shard, ShardProgress::default()))
                .collect(),
            calls: HashMap::new(),
            events: FuturesUnordered::new(),
            answers: Vec::new(),
            next_call: 0,
        };
        self.send(&mut run, CallKind::First, shards.to_vec());
        let deadline = tokio::time::sleep_until(self.deadline);
        tokio::pin!(deadline);
        while run.unfinished() {
            if run.events.is_empty() {
                debug_assert!(false, "unfinished shards with nothing in flight");
                break;
            }
            let event = tokio::select! {
                // An answer that is already here counts even if the deadline is too.
                biased;
                Some(event) = run.events.next() => event,
                () = &mut deadline => break,
            };
            match event {
                Event::Answered {
                    call,
                    result,
                    latency,
                } => self.on_answer(&mut run, call, result, latency),
                Event::HedgeDue { call } => self.on_hedge_due(&mut run, call),
                Event::Cancelled => {}
            }
        }
        // Out of time: what is still missing timed out. Dropping `run.events` below cancels
        // every call still in flight.
        for call in run.calls.values() {
            self.loads
                .record_given_up(&call.searcher_id, call.sent.elapsed());
        }
        let missing: Vec<u32> = run
            .shards
            .iter()
            .filter(|(_, progress)| progress.report.is_none())
            .map(|(shard, _)| *shard)
            .collect();
        let budget = self.deadline.saturating_duration_since(run.started);
        for shard in missing {
            let searcher_id = run.shards[&shard].last_asked.clone().unwrap_or_default();
            run.finish(
                shard,
                ShardOutcome::TimedOut,
                searcher_id,
                Code::DeadlineExceeded,
                format!(
                    "no replica answered within the search's deadline ({} ms)",
                    budget.as_millis()
                ),
            );
        }
        let reports = run
            .shards
            .into_values()
            .filter_map(|progress| progress.report)
            .collect();
        FanOutOutcome {
            answers: run.answers,
            reports,
            calls: run.next_call,
        }
    }

    /// Sends `shards` to one replica each (one call per Searcher). Shards no replica can
    /// take are finished unless they still wait on a call (a hedge that found no second
    /// replica just keeps waiting on the first).
    fn send(&self, run: &mut Run, kind: CallKind, shards: Vec<u32>) {
        let state = self.view.current();
        let plan = routing::plan_search(
            &state,
            &self.template.collection,
            &shards,
            self.rotation,
            |shard| {
                run.shards
                    .get(&shard)
                    .map(|progress| progress.tried.clone())
                    .unwrap_or_default()
            },
            |searcher_id| self.loads.snapshot(searcher_id),
        );
        for (shard, reason) in plan.unroutable {
            let Some(progress) = run.shards.get(&shard) else {
                continue;
            };
            if progress.in_flight > 0 || progress.report.is_some() {
                continue;
            }
            match progress.last_failure.clone() {
                None => run.finish(
                    shard,
                    ShardOutcome::NoLiveReplica,
                    String::new(),
                    Code::Unavailable,
                    reason,
                ),
                Some((searcher_id, code, message)) => run.finish(
                    shard,
                    ShardOutcome::Failed,
                    searcher_id,
                    code,
                    format!("{message} ({reason})"),
                ),
            }
        }
        for (searcher_id, (address, call_shards)) in plan.calls {
            let id = run.next_call;
            run.next_call += 1;
            for shard in &call_shards {
                if let Some(progress) = run.shards.get_mut(shard) {
                    progress.tried.insert(searcher_id.clone());
                    progress.last_asked = Some(searcher_id.clone());
                    progress.in_flight += 1;
                    progress.attempts += 1;
                }
            }
            let mut request = self.template.clone();
            request.shards = call_shards.clone();
            let client = self.clients.client(&address).map_err(Status::from);
            let outstanding = self.loads.begin(&searcher_id, call_shards.len());
            let deadline = self.deadline;
            let (abort, registration) = AbortHandle::new_pair();
            let call = Abortable::new(
                async move {
                    let _outstanding = outstanding;
                    let sent = Instant::now();
                    let result = match client {
                        Ok(client) => call_search(client, request, deadline).await,
                        Err(status) => Err(status),
                    };
                    (result, sent.elapsed())
                },
                registration,
            );
            run.events.push(Box::pin(async move {
                match call.await {
                    Ok((result, latency)) => Event::Answered {
                        call: id,
                        result,
                        latency,
                    },
                    Err(_aborted) => Event::Cancelled,
                }
            }));
            if kind != CallKind::Hedge {
                if let Some(delay) = self.hedging.delay(self.loads, &searcher_id) {
                    let due = Instant::now() + delay;
                    if due < self.deadline {
                        run.events.push(Box::pin(async move {
                            tokio::time::sleep_until(due).await;
                            Event::HedgeDue { call: id }
                        }));
                    }
                }
            }
            if kind == CallKind::Hedge {
                metrics::hedge_sent();
            }
            run.calls.insert(
                id,
                CallInFlight {
                    searcher_id,
                    shards: call_shards,
                    kind,
                    abort,
                    sent: Instant::now(),
                },
            );
        }
    }

    fn on_answer(
        &self,
        run: &mut Run,
        id: usize,
        result: Result<quiver_proto::v1::ShardSearchResponse, Status>,
        latency: Duration,
    ) {
        // Absent: cancelled as a loser after it had already finished.
        let Some(call) = run.calls.remove(&id) else {
            return;
        };
        for shard in &call.shards {
            if let Some(progress) = run.shards.get_mut(shard) {
                progress.in_flight -= 1;
            }
        }
        let mut failed: Vec<u32> = Vec::new();
        match result {
            Ok(response) => {
                self.loads.record_answer(&call.searcher_id, latency);
                let asked: HashSet<u32> = call.shards.iter().copied().collect();
                let mut accounted: HashSet<u32> = HashSet::new();
                let mut won = Vec::new();
                for shard in &response.searched_shards {
                    if !asked.contains(shard) || !accounted.insert(*shard) {
                        continue;
                    }
                    if !run.is_done(*shard) {
                        run.finish(
                            *shard,
                            ShardOutcome::Ok,
                            call.searcher_id.clone(),
                            Code::Ok,
                            String::new(),
                        );
                        let plan = response.plans.iter().find(|plan| plan.shard == *shard);
                        if let (Some(plan), Some(report)) = (
                            plan,
                            run.shards
                                .get_mut(shard)
                                .and_then(|progress| progress.report.as_mut()),
                        ) {
                            report.plan = plan.plan.clone();
                        }
                        won.push(*shard);
                    }
                }
                for failure in response.failed_shards {
                    if !asked.contains(&failure.shard) || !accounted.insert(failure.shard) {
                        continue;
                    }
                    if let Some(progress) = run.shards.get_mut(&failure.shard) {
                        progress.last_failure = Some((
                            call.searcher_id.clone(),
                            quiver_proto::code_from_name(&failure.code),
                            failure.message,
                        ));
                    }
                    failed.push(failure.shard);
                }
                for shard in &call.shards {
                    if accounted.insert(*shard) {
                        if let Some(progress) = run.shards.get_mut(shard) {
                            progress.last_failure = Some((
                                call.searcher_id.clone(),
                                Code::Internal,
                                "the searcher's answer left the shard out".into(),
                            ));
                        }
                        failed.push(*shard);
                    }
                }
                if !won.is_empty() {
                    if call.kind == CallKind::Hedge {
                        metrics::hedge_won();
                    }
                    run.answers.push(SearchAnswer {
                        results: response.results,
                        searched: response.searched_shards,
                        won,
                    });
                }
            }
            Err(status) => {
                let status = as_deadline_if_timed_out(status, self.deadline);
                tracing::warn!(
                    collection = %self.template.collection,
                    searcher_id = %call.searcher_id,
                    shards = ?call.shards,
                    code = ?status.code(),
                    message = status.message(),
                    "searcher call failed"
                );
                match status.code() {
                    Code::Unavailable | Code::Unknown => {
                        self.loads.record_failure(&call.searcher_id)
                    }
                    // Out of time on either side: it would have taken at least this long.
                    Code::DeadlineExceeded => {
                        self.loads.record_given_up(&call.searcher_id, latency)
                    }
                    _ => {}
                }
                for shard in &call.shards {
                    if let Some(progress) = run.shards.get_mut(shard) {
                        progress.last_failure = Some((
                            call.searcher_id.clone(),
                            status.code(),
                            status.message().to_string(),
                        ));
                    }
                    failed.push(*shard);
                }
            }
        }

        let mut retry = Vec::new();
        // A retry with less than this left could not answer in time anyway.
        let out_of_time = self.deadline.saturating_duration_since(Instant::now()) <= DEADLINE_SLACK;
        for shard in failed {
            let Some(progress) = run.shards.get_mut(&shard) else {
                continue;
            };
            // Answered elsewhere already, or another call is still out for it.
            if progress.report.is_some() || progress.in_flight > 0 {
                continue;
            }
            let Some((searcher_id, code, message)) = progress.last_failure.clone() else {
                continue;
            };
            if code == Code::DeadlineExceeded || out_of_time {
                run.finish(
                    shard,
                    ShardOutcome::TimedOut,
                    searcher_id,
                    Code::DeadlineExceeded,
                    message,
                );
            } else if retryable(code) && !progress.retried {
                progress.retried = true;
                retry.push(shard);
            } else {
                run.finish(shard, ShardOutcome::Failed, searcher_id, code, message);
            }
        }
        if !retry.is_empty() {
            metrics::shards_retried(retry.len());
            self.send(run, CallKind::Retry, retry);
        }
        run.cancel_losers(self.loads);
    }

    fn on_hedge_due(&self, run: &mut Run, id: usize) {
        let Some(call) = run.calls.get(&id) else {
            return;
        };
        let shards: Vec<u32> = call
            .shards
            .iter()
            .copied()
            .filter(|shard| {
                run.shards
                    .get(shard)
                    .is_some_and(|progress| progress.report.is_none() && !progress.hedged)
            })
            .collect();
        for shard in &shards {
            if let Some(progress) = run.shards.get_mut(shard) {
                progress.hedged = true;
            }
        }
        if shards.is_empty() || Instant::now() >= self.deadline {
            return;
        }
        self.send(run, CallKind::Hedge, shards);
    }
}

/// How close to the deadline a CANCELLED answer counts as the deadline having passed.
const DEADLINE_SLACK: Duration = Duration::from_millis(5);

/// tonic answers a call whose gRPC deadline expired on the server with CANCELLED ("Timeout
/// expired"), not DEADLINE_EXCEEDED, and CANCELLED is otherwise worth a retry. The
/// Searcher's timer starts after ours (it starts when the request arrives), so a CANCELLED
/// that arrives at the deadline is that timer: it is reported, and not retried, as what it
/// is.
fn as_deadline_if_timed_out(status: Status, deadline: Instant) -> Status {
    let at_deadline = deadline.saturating_duration_since(Instant::now()) <= DEADLINE_SLACK;
    if status.code() == Code::Cancelled && at_deadline {
        return Status::deadline_exceeded(format!(
            "the search's deadline passed ({})",
            status.message()
        ));
    }
    status
}

/// One Searcher call under the search's remaining budget, sent as the gRPC deadline so that
/// the Searcher gives up too. Locally the fan-out's own deadline timer bounds it (connecting
/// included): [`FanOut::run`] drops every call still out when the deadline passes, so a
/// second timer per call would only cost.
async fn call_search(
    mut client: SearcherClient<Channel>,
    request: ShardSearchRequest,
    deadline: Instant,
) -> Result<quiver_proto::v1::ShardSearchResponse, Status> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    if remaining.is_zero() {
        return Err(Status::deadline_exceeded("the search's deadline passed"));
    }
    let mut request = tonic::Request::new(request);
    request.set_timeout(remaining);
    quiver_cluster::request_id::attach(&mut request);
    client
        .search(request)
        .await
        .map(tonic::Response::into_inner)
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    };

    use quiver_cluster::{
        model::{
            encode, AssignmentRecord, Capacity, CollectionRecord, ReplicaRecord, SearcherRecord,
        },
        KeySchema, MemoryStore, MetadataStore, ReplicaPhase,
    };
    use quiver_index::Metric;
    use quiver_proto::v1::{
        searcher_server::{Searcher, SearcherServer},
        QueryResult, ReplicaDeleteRequest, ReplicaGetRequest, ReplicaGetResponse,
        ReplicaStatusRequest, ReplicaStatusResponse, ReplicaUpsertRequest, ReplicaWriteResponse,
        ScoredPoint, ShardSearchResponse, Vector,
    };
    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::{Request, Response};

    use super::*;

    /// What a fake Searcher does with a search.
    #[derive(Debug, Clone, Copy)]
    enum Behaviour {
        Answer,
        Fail(Code),
        /// Waits, then answers.
        Delay(Duration),
        /// Waits, then fails.
        DelayThenFail(Duration, Code),
    }

    #[derive(Default)]
    struct Observed {
        calls: AtomicUsize,
        /// Handlers that ran to their end.
        finished: AtomicUsize,
        /// Handlers dropped before their end: the caller went away.
        cancelled: AtomicUsize,
        /// The gRPC deadline each call carried.
        timeouts: Mutex<Vec<Duration>>,
    }

    struct FakeSearcher {
        behaviour: Behaviour,
        num_shards: u32,
        observed: Arc<Observed>,
    }

    /// Counts the handler as cancelled if dropped before `finish`.
    struct Cancellation(Option<Arc<Observed>>);

    impl Cancellation {
        fn finish(mut self) {
            if let Some(observed) = self.0.take() {
                observed.finished.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    impl Drop for Cancellation {
        fn drop(&mut self) {
            if let Some(observed) = self.0.take() {
                observed.cancelled.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    /// The first id `shard_of` puts on `shard`.
    fn id_on(shard: u32, num_shards: u32) -> String {
        (0..)
            .map(|number| format!("p{number}"))
            .find(|id| quiver_cluster::shard_of(id, num_shards) == shard)
            .unwrap()
    }

    #[tonic::async_trait]
    impl Searcher for FakeSearcher {
        async fn search(
            &self,
            request: Request<ShardSearchRequest>,
        ) -> Result<Response<ShardSearchResponse>, Status> {
            self.observed.calls.fetch_add(1, Ordering::SeqCst);
            if let Some(timeout) = crate::grpc::client_timeout(&request) {
                self.observed.timeouts.lock().unwrap().push(timeout);
            }
            let cancellation = Cancellation(Some(Arc::clone(&self.observed)));
            let failure = match self.behaviour {
                Behaviour::Answer => None,
                Behaviour::Fail(code) => Some(code),
                Behaviour::Delay(delay) => {
                    tokio::time::sleep(delay).await;
                    None
                }
                Behaviour::DelayThenFail(delay, code) => {
                    tokio::time::sleep(delay).await;
                    Some(code)
                }
            };
            cancellation.finish();
            if let Some(code) = failure {
                return Err(Status::new(code, "fake failure"));
            }
            let request = request.into_inner();
            let neighbors: Vec<ScoredPoint> = request
                .shards
                .iter()
                .map(|shard| ScoredPoint {
                    id: id_on(*shard, self.num_shards),
                    score: *shard as f32,
                    vector: Vec::new(),
                    payload_json: String::new(),
                })
                .collect();
            Ok(Response::new(ShardSearchResponse {
                results: vec![QueryResult { neighbors }; request.queries.len()],
                searched_shards: request.shards,
                failed_shards: Vec::new(),
                plans: Vec::new(),
            }))
        }

        async fn upsert(
            &self,
            _: Request<ReplicaUpsertRequest>,
        ) -> Result<Response<ReplicaWriteResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }

        async fn delete(
            &self,
            _: Request<ReplicaDeleteRequest>,
        ) -> Result<Response<ReplicaWriteResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }

        async fn get(
            &self,
            _: Request<ReplicaGetRequest>,
        ) -> Result<Response<ReplicaGetResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }

        async fn count(
            &self,
            _: Request<quiver_proto::v1::ShardCountRequest>,
        ) -> Result<Response<quiver_proto::v1::ShardCountResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }

        async fn scroll(
            &self,
            _: Request<quiver_proto::v1::ShardScrollRequest>,
        ) -> Result<Response<quiver_proto::v1::ShardScrollResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }

        async fn replica_status(
            &self,
            _: Request<ReplicaStatusRequest>,
        ) -> Result<Response<ReplicaStatusResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }

        type CopySnapshotStream =
            tokio_stream::wrappers::ReceiverStream<Result<quiver_proto::v1::SnapshotChunk, Status>>;

        async fn pull_log(
            &self,
            _: Request<quiver_proto::v1::PullLogRequest>,
        ) -> Result<Response<quiver_proto::v1::PullLogResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }

        async fn fence(
            &self,
            _: Request<quiver_proto::v1::FenceRequest>,
        ) -> Result<Response<quiver_proto::v1::FenceResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }

        async fn copy_snapshot(
            &self,
            _: Request<quiver_proto::v1::CopySnapshotRequest>,
        ) -> Result<Response<Self::CopySnapshotStream>, Status> {
            Err(Status::unimplemented("fake"))
        }
    }

    /// Fake Searchers behind real gRPC on 127.0.0.1, and a view of them over the memory
    /// store: collection "c" whose shard `i` has the replicas `layout[i]` (in order).
    struct Fixture {
        view: ClusterView,
        clients: SearcherClients,
        loads: SearcherLoads,
        observed: HashMap<String, Arc<Observed>>,
    }

    impl Fixture {
        async fn new(searchers: &[(&str, Behaviour)], layout: &[&[&str]]) -> Fixture {
            let store = MemoryStore::new();
            let schema = KeySchema::default();
            let num_shards = layout.len() as u32;
            let mut observed = HashMap::new();
            for (id, behaviour) in searchers {
                let watched = Arc::new(Observed::default());
                observed.insert(id.to_string(), Arc::clone(&watched));
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let address = format!("http://{}", listener.local_addr().unwrap());
                let fake = FakeSearcher {
                    behaviour: *behaviour,
                    num_shards,
                    observed: watched,
                };
                tokio::spawn(
                    tonic::transport::Server::builder()
                        .add_service(SearcherServer::new(fake))
                        .serve_with_incoming(TcpListenerStream::new(listener)),
                );
                let record = SearcherRecord {
                    id: id.to_string(),
                    address,
                    version: "test".into(),
                    started_at: "t".into(),
                    capacity: Capacity {
                        cpus: 1,
                        memory_bytes: 1,
                    },
                };
                store
                    .put(&schema.searcher(id), encode(&record), None)
                    .await
                    .unwrap();
            }
            let collection = CollectionRecord {
                name: "c".into(),
                dimension: 1,
                metric: Metric::L2,
                num_shards,
                replication_factor: layout[0].len() as u32,
                index_spec: "flat".into(),
                created_at: "t".into(),
                payload_indexes: Vec::new(),
            };
            store
                .put(&schema.collection("c"), encode(&collection), None)
                .await
                .unwrap();
            for (shard, replicas) in layout.iter().enumerate() {
                let shard = shard as u32;
                let assignment =
                    AssignmentRecord::new(replicas.iter().map(|id| id.to_string()).collect());
                store
                    .put(&schema.assignment("c", shard), encode(&assignment), None)
                    .await
                    .unwrap();
                for searcher in *replicas {
                    let replica = ReplicaRecord {
                        state: ReplicaPhase::Active,
                        point_count: 1,
                        applied_seq: 1,
                        ..Default::default()
                    };
                    store
                        .put(
                            &schema.replica("c", shard, searcher),
                            encode(&replica),
                            None,
                        )
                        .await
                        .unwrap();
                }
            }
            let store: Arc<dyn MetadataStore> = Arc::new(store);
            let view = ClusterView::start(store, schema).await.unwrap();
            Fixture {
                view,
                clients: SearcherClients::new(Duration::from_secs(1)),
                loads: SearcherLoads::new(),
                observed,
            }
        }

        async fn search(
            &self,
            shards: &[u32],
            budget: Duration,
            hedging: &HedgeConfig,
        ) -> FanOutOutcome {
            FanOut {
                clients: &self.clients,
                loads: &self.loads,
                view: &self.view,
                hedging,
                template: ShardSearchRequest {
                    collection: "c".into(),
                    shards: Vec::new(),
                    queries: vec![Vector { values: vec![1.0] }],
                    k: 10,
                    with_payloads: false,
                    with_vectors: false,
                    params: None,
                    filter: None,
                },
                deadline: Instant::now() + budget,
                rotation: 0,
            }
            .run(shards)
            .await
        }

        fn calls(&self, searcher: &str) -> usize {
            self.observed[searcher].calls.load(Ordering::SeqCst)
        }
    }

    const NO_HEDGING: HedgeConfig = HedgeConfig {
        enabled: false,
        fixed_delay: None,
        percentile: 95.0,
        min_delay: Duration::ZERO,
        delay_without_stats: Duration::ZERO,
    };

    fn hedge_after(delay: Duration) -> HedgeConfig {
        HedgeConfig {
            fixed_delay: Some(delay),
            ..HedgeConfig::default()
        }
    }

    fn outcome(report: &ShardReport) -> ShardOutcome {
        ShardOutcome::try_from(report.outcome).unwrap()
    }

    #[tokio::test]
    async fn a_transient_failure_is_retried_once_on_another_replica() {
        let fixture = Fixture::new(
            &[
                ("s1", Behaviour::Fail(Code::Unavailable)),
                ("s2", Behaviour::Answer),
            ],
            &[&["s1", "s2"]],
        )
        .await;
        let result = fixture
            .search(&[0], Duration::from_secs(5), &NO_HEDGING)
            .await;
        let report = &result.reports[0];
        assert_eq!(outcome(report), ShardOutcome::Ok, "{report:?}");
        assert_eq!((report.searcher_id.as_str(), report.attempts), ("s2", 2));
        assert_eq!((fixture.calls("s1"), fixture.calls("s2")), (1, 1));
        assert_eq!(result.answers.len(), 1);
        assert_eq!(result.answers[0].won, vec![0]);
        // The failure marks s1, so the next search starts on s2.
        assert!(fixture.loads.snapshot("s1").recently_failed);
        let result = fixture
            .search(&[0], Duration::from_secs(5), &NO_HEDGING)
            .await;
        assert_eq!(result.reports[0].attempts, 1);
        assert_eq!((fixture.calls("s1"), fixture.calls("s2")), (1, 2));
    }

    #[tokio::test]
    async fn one_retry_only_and_none_for_answers_about_the_request() {
        let fixture = Fixture::new(
            &[
                ("s1", Behaviour::Fail(Code::Unavailable)),
                ("s2", Behaviour::Fail(Code::Unavailable)),
                ("s3", Behaviour::Answer),
            ],
            &[&["s1", "s2", "s3"]],
        )
        .await;
        let result = fixture
            .search(&[0], Duration::from_secs(5), &NO_HEDGING)
            .await;
        let report = &result.reports[0];
        assert_eq!(outcome(report), ShardOutcome::Failed, "{report:?}");
        assert_eq!(report.code, "UNAVAILABLE");
        assert_eq!(report.attempts, 2);
        assert_eq!(fixture.calls("s3"), 0, "a second retry was sent");
        assert!(result.answers.is_empty());

        let fixture = Fixture::new(
            &[
                ("s1", Behaviour::Fail(Code::InvalidArgument)),
                ("s2", Behaviour::Answer),
            ],
            &[&["s1", "s2"]],
        )
        .await;
        let result = fixture
            .search(&[0], Duration::from_secs(5), &NO_HEDGING)
            .await;
        let report = &result.reports[0];
        assert_eq!(outcome(report), ShardOutcome::Failed);
        assert_eq!(
            (report.code.as_str(), report.attempts),
            ("INVALID_ARGUMENT", 1)
        );
        assert_eq!(fixture.calls("s2"), 0);
    }

    #[tokio::test]
    async fn a_slow_replica_is_hedged_the_first_answer_wins_and_the_loser_is_cancelled() {
        let fixture = Fixture::new(
            &[
                ("s1", Behaviour::Delay(Duration::from_secs(5))),
                ("s2", Behaviour::Answer),
            ],
            &[&["s1", "s2"]],
        )
        .await;
        let started = std::time::Instant::now();
        let result = fixture
            .search(
                &[0],
                Duration::from_secs(3),
                &hedge_after(Duration::from_millis(20)),
            )
            .await;
        let elapsed = started.elapsed();
        let report = &result.reports[0];
        assert_eq!(outcome(report), ShardOutcome::Ok, "{report:?}");
        assert_eq!((report.searcher_id.as_str(), report.attempts), ("s2", 2));
        assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
        assert!(report.latency_us >= 20_000);
        // The loser's handler is dropped once the Merger resets its stream.
        let observed = &fixture.observed["s1"];
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while observed.cancelled.load(Ordering::SeqCst) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the slow call was not cancelled"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(observed.finished.load(Ordering::SeqCst), 0);
        assert_eq!(fixture.loads.snapshot("s1").outstanding, 0);
        assert_eq!(fixture.loads.snapshot("s2").outstanding, 0);
        // The lost call counts as at least that slow, so the next search starts on s2.
        let stalled = fixture.loads.snapshot("s1").latency_micros.unwrap();
        assert!(stalled >= 20_000.0, "{stalled}");
        let result = fixture
            .search(
                &[0],
                Duration::from_secs(3),
                &hedge_after(Duration::from_millis(20)),
            )
            .await;
        assert_eq!(
            (
                result.reports[0].searcher_id.as_str(),
                result.reports[0].attempts
            ),
            ("s2", 1)
        );

        // Without hedging a search that lands on the slow replica waits for it.
        let fixture = Fixture::new(
            &[
                ("s1", Behaviour::Delay(Duration::from_secs(5))),
                ("s2", Behaviour::Answer),
            ],
            &[&["s1", "s2"]],
        )
        .await;
        let started = std::time::Instant::now();
        let result = fixture
            .search(&[0], Duration::from_millis(300), &NO_HEDGING)
            .await;
        assert_eq!(outcome(&result.reports[0]), ShardOutcome::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(fixture.loads.snapshot("s1").latency_micros.unwrap() >= 290_000.0);
    }

    #[tokio::test]
    async fn hedges_send_each_missing_shard_to_its_own_alternative() {
        let fixture = Fixture::new(
            &[
                ("s1", Behaviour::Delay(Duration::from_secs(5))),
                ("s2", Behaviour::Answer),
                ("s3", Behaviour::Answer),
            ],
            &[&["s1", "s2"], &["s1", "s3"]],
        )
        .await;
        // s2 and s3 look busy, so both shards go to s1 in one call.
        let _busy = (fixture.loads.begin("s2", 5), fixture.loads.begin("s3", 5));
        let result = fixture
            .search(
                &[0, 1],
                Duration::from_secs(3),
                &hedge_after(Duration::from_millis(20)),
            )
            .await;
        assert_eq!(fixture.calls("s1"), 1);
        let answered: Vec<(u32, &str, u32)> = result
            .reports
            .iter()
            .map(|report| {
                assert_eq!(outcome(report), ShardOutcome::Ok);
                (report.shard, report.searcher_id.as_str(), report.attempts)
            })
            .collect();
        assert_eq!(answered, vec![(0, "s2", 2), (1, "s3", 2)]);
        assert_eq!((fixture.calls("s2"), fixture.calls("s3")), (1, 1));
    }

    #[tokio::test]
    async fn calls_carry_the_remaining_budget_and_nothing_is_retried_past_it() {
        // s1 fails transiently after 200 ms of a 500 ms budget; the retry on s2 gets what is
        // left, not a fresh 500 ms, and the shard times out at the deadline.
        let fixture = Fixture::new(
            &[
                (
                    "s1",
                    Behaviour::DelayThenFail(Duration::from_millis(200), Code::Unavailable),
                ),
                ("s2", Behaviour::Delay(Duration::from_secs(5))),
            ],
            &[&["s1", "s2"]],
        )
        .await;
        let started = std::time::Instant::now();
        let result = fixture
            .search(&[0], Duration::from_millis(500), &NO_HEDGING)
            .await;
        let elapsed = started.elapsed();
        let report = &result.reports[0];
        assert_eq!(outcome(report), ShardOutcome::TimedOut, "{report:?}");
        assert_eq!(report.code, "DEADLINE_EXCEEDED");
        assert_eq!((report.searcher_id.as_str(), report.attempts), ("s2", 2));
        assert!(
            elapsed >= Duration::from_millis(500) && elapsed < Duration::from_millis(1500),
            "{elapsed:?}"
        );
        let first = fixture.observed["s1"].timeouts.lock().unwrap()[0];
        let retry = fixture.observed["s2"].timeouts.lock().unwrap()[0];
        assert!(first <= Duration::from_millis(500), "{first:?}");
        assert!(
            retry <= Duration::from_millis(320),
            "the retry got {retry:?}"
        );

        // A failure that arrives after the deadline is not retried.
        let fixture = Fixture::new(
            &[
                (
                    "s1",
                    Behaviour::DelayThenFail(Duration::from_millis(400), Code::Unavailable),
                ),
                ("s2", Behaviour::Answer),
            ],
            &[&["s1", "s2"]],
        )
        .await;
        let result = fixture
            .search(&[0], Duration::from_millis(200), &NO_HEDGING)
            .await;
        assert_eq!(outcome(&result.reports[0]), ShardOutcome::TimedOut);
        assert_eq!(fixture.calls("s2"), 0);
    }

    #[tokio::test]
    async fn a_shard_without_a_live_replica_is_reported_without_a_call() {
        let fixture = Fixture::new(&[("s1", Behaviour::Answer)], &[&["s1"], &["gone"]]).await;
        let result = fixture
            .search(&[0, 1], Duration::from_secs(5), &NO_HEDGING)
            .await;
        assert_eq!(outcome(&result.reports[0]), ShardOutcome::Ok);
        let missing = &result.reports[1];
        assert_eq!(outcome(missing), ShardOutcome::NoLiveReplica);
        assert_eq!((missing.attempts, missing.searcher_id.as_str()), (0, ""));
        assert_eq!(missing.code, "UNAVAILABLE");
    }

    /// A measurement, not a test (it asserts no timing): `cargo test --release -p
    /// quiver-merger --lib fan_out_overhead -- --ignored --nocapture` prints what the fan-out
    /// (routing, load tracking, deadline and hedge timers) adds to one Searcher call over a
    /// bare client call to the same in-process Searcher; see docs/benchmarks.md.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement, not a check"]
    async fn fan_out_overhead_over_a_bare_call() {
        let fixture = Fixture::new(&[("s1", Behaviour::Answer)], &[&["s1"]]).await;
        let address = fixture.view.current().searchers["s1"].address.clone();
        let client = fixture.clients.client(&address).unwrap();
        let request = ShardSearchRequest {
            collection: "c".into(),
            shards: vec![0],
            queries: vec![Vector { values: vec![1.0] }],
            k: 10,
            ..ShardSearchRequest::default()
        };
        let rounds = 5;
        let per_round = 2000;
        for round in 0..rounds {
            let mut bare = Vec::with_capacity(per_round);
            let mut fanned = Vec::with_capacity(per_round);
            for _ in 0..per_round {
                let started = std::time::Instant::now();
                let mut call = client.clone();
                call.search(request.clone()).await.unwrap();
                bare.push(started.elapsed());
                let started = std::time::Instant::now();
                let result = fixture
                    .search(&[0], Duration::from_secs(5), &HedgeConfig::default())
                    .await;
                fanned.push(started.elapsed());
                assert_eq!(result.answers.len(), 1);
            }
            bare.sort();
            fanned.sort();
            println!(
                "round {round}: bare call p50 {:?}, fan-out p50 {:?}",
                bare[per_round / 2],
                fanned[per_round / 2]
            );
        }
    }

    #[test]
    fn a_server_side_timeout_reads_as_the_deadline_not_as_a_cancellation() {
        let now = Instant::now();
        let expired = as_deadline_if_timed_out(Status::cancelled("Timeout expired"), now);
        assert_eq!(expired.code(), Code::DeadlineExceeded);
        assert!(expired.message().contains("Timeout expired"));
        let early = as_deadline_if_timed_out(
            Status::cancelled("going away"),
            now + Duration::from_secs(1),
        );
        assert_eq!(early.code(), Code::Cancelled);
        let other = as_deadline_if_timed_out(Status::unavailable("down"), now);
        assert_eq!(other.code(), Code::Unavailable);
    }

    #[test]
    fn hedge_delay_is_the_lower_percentile_floored_or_fixed() {
        let loads = SearcherLoads::new();
        let adaptive = HedgeConfig {
            min_delay: Duration::from_millis(2),
            delay_without_stats: Duration::from_millis(20),
            ..HedgeConfig::default()
        };
        assert_eq!(NO_HEDGING.delay(&loads, "s1"), None);
        assert_eq!(
            hedge_after(Duration::from_millis(7)).delay(&loads, "s1"),
            Some(Duration::from_millis(7))
        );
        assert_eq!(
            adaptive.delay(&loads, "s1"),
            Some(Duration::from_millis(20))
        );
        for _ in 0..100 {
            loads.record_answer("fast", Duration::from_millis(5));
        }
        // s1 has no answers of its own: the overall percentile.
        assert_eq!(adaptive.delay(&loads, "s1"), Some(Duration::from_millis(5)));
        for _ in 0..100 {
            loads.record_answer("slow", Duration::from_millis(300));
        }
        // The slow one's own p95 is 300 ms; all together's is lower.
        assert_eq!(
            adaptive.delay(&loads, "slow"),
            Some(Duration::from_millis(300))
        );
        let loads = SearcherLoads::new();
        for _ in 0..100 {
            loads.record_answer("slow", Duration::from_millis(300));
        }
        for _ in 0..300 {
            loads.record_answer("fast", Duration::from_micros(500));
        }
        assert_eq!(
            adaptive.delay(&loads, "slow"),
            Some(Duration::from_millis(2))
        );
        assert_eq!(
            adaptive.delay(&loads, "fast"),
            Some(Duration::from_millis(2))
        );
    }
}
