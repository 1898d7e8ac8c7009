//! Count: how many points match a filter, exactly, summed over every shard. Each shard is
//! asked of one ACTIVE replica ([`read_shard`]); a shard no replica can count fails the
//! whole call, since a sum without it would be wrong, not partial.

use std::time::Duration;

use futures::future::join_all;
use quiver_proto::{
    code_from_name,
    v1::{CountRequest, CountResponse, ShardCountRequest},
};
use tonic::{Code, Status};

use super::{read_shard, with_deadline, Merger};
use crate::{
    error::{Error, Result},
    validate,
};

impl Merger {
    pub(super) async fn count_points(
        &self,
        request: CountRequest,
        client_timeout: Option<Duration>,
    ) -> Result<CountResponse> {
        let state = self.view.current();
        let collection = Self::collection(&state, &request.collection)?;
        let filter = validate::filter(&collection, request.filter.as_ref())?
            .map(|filter| quiver_payload::proto::to_proto(&filter));
        let deadline = Self::deadline(
            self.config.search_timeout,
            request.timeout_ms,
            client_timeout,
        );
        let rotation = self.next_rotation();
        let calls = (0..collection.num_shards).map(|shard| {
            let state = &state;
            let name = &collection.name;
            let filter = &filter;
            async move {
                read_shard(
                    &self.clients,
                    state,
                    name,
                    shard,
                    rotation,
                    deadline,
                    |mut client, budget| {
                        let mut call = tonic::Request::new(ShardCountRequest {
                            collection: name.clone(),
                            shards: vec![shard],
                            filter: filter.clone(),
                        });
                        call.set_timeout(budget);
                        quiver_cluster::request_id::attach(&mut call);
                        async move {
                            let response = with_deadline(budget, client.count(call)).await?;
                            if let Some(counted) = response
                                .counts
                                .iter()
                                .find(|counted| counted.shard == shard)
                            {
                                return Ok(counted.count);
                            }
                            // The replica could not count it (not ACTIVE here any more, say):
                            // its own code decides whether another replica is asked.
                            let failure = response.failed_shards.into_iter().next();
                            Err(failure.map_or_else(
                                || Status::unavailable("the searcher did not count the shard"),
                                |failure| {
                                    Status::new(code_from_name(&failure.code), failure.message)
                                },
                            ))
                        }
                    },
                )
                .await
            }
        });
        let mut count = 0u64;
        let mut failures = Vec::new();
        for result in join_all(calls).await {
            match result {
                Ok(shard_count) => count += shard_count,
                Err(failure) => failures.push(failure),
            }
        }
        if failures.is_empty() {
            return Ok(CountResponse { count });
        }
        let timed_out = failures
            .iter()
            .all(|failure| code_from_name(&failure.code) == Code::DeadlineExceeded);
        let detail: Vec<String> = failures
            .iter()
            .map(|failure| {
                format!(
                    "shard {}: {} {}",
                    failure.shard, failure.code, failure.message
                )
            })
            .collect();
        let message = format!(
            "{} of {} shard(s) could not be counted: {}",
            failures.len(),
            collection.num_shards,
            detail.join("; ")
        );
        Err(if timed_out {
            Error::DeadlineExceeded(message)
        } else if failures
            .iter()
            .all(|failure| code_from_name(&failure.code) == Code::InvalidArgument)
        {
            Error::InvalidArgument(message)
        } else {
            Error::Unavailable(message)
        })
    }
}
