//! Reading one shard: its ACTIVE replicas are asked one after another, in read order (the
//! least loaded first), until one answers or one refuses the request itself. Get, Count and
//! Scroll all reach shards this way; searches fan out with hedging instead
//! ([`crate::fanout`]).

use std::{future::Future, time::Duration};

use quiver_cluster::ClusterState;
use quiver_proto::{code_name, v1::searcher_client::SearcherClient, v1::ShardFailure};
use tokio::time::Instant;
use tonic::{transport::Channel, Code, Status};

use crate::{clients::SearcherClients, error::retryable, routing};

/// What is left of `deadline`, or `DEADLINE_EXCEEDED` when nothing is.
pub(crate) fn remaining(deadline: Instant) -> Result<Duration, Status> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    if remaining.is_zero() {
        return Err(Status::deadline_exceeded("the request's deadline passed"));
    }
    Ok(remaining)
}

/// Bounds a call locally too: the server-side timeout does not cover connecting.
pub(crate) async fn with_deadline<T>(
    budget: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(budget, call).await {
        Ok(result) => result.map(tonic::Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded("the request's deadline passed")),
    }
}

/// Calls `call(client, budget)` on the shard's replicas in read order until one answers;
/// a transient failure moves on to the next replica, any other stops. The failure that
/// ended it names the replica asked last.
pub(crate) async fn read_shard<T, F, Fut>(
    clients: &SearcherClients,
    state: &ClusterState,
    collection: &str,
    shard: u32,
    rotation: u64,
    deadline: Instant,
    call: F,
) -> Result<T, ShardFailure>
where
    F: Fn(SearcherClient<Channel>, Duration) -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let mut last_failure = ShardFailure {
        shard,
        searcher_id: String::new(),
        code: code_name(Code::Unavailable).into(),
        message: "no ACTIVE replica on a live searcher".into(),
    };
    for (searcher_id, address) in routing::read_order(state, collection, shard, rotation) {
        let result = async {
            let budget = remaining(deadline)?;
            let client = clients.client(&address).map_err(Status::from)?;
            call(client, budget).await
        }
        .await;
        match result {
            Ok(answer) => return Ok(answer),
            Err(status) => {
                let stop = !retryable(status.code());
                last_failure = ShardFailure {
                    shard,
                    searcher_id,
                    code: code_name(status.code()).into(),
                    message: status.message().to_string(),
                };
                if stop {
                    break;
                }
            }
        }
    }
    Err(last_failure)
}
