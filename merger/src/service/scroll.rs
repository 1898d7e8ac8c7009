//! Scroll: every point that matches a filter, a page at a time. Pages go shard by shard,
//! each shard's points in id order (byte order), so a page token is just where the last
//! page stopped: a shard and the last id returned from it. A point never changes shard and
//! ids only move forward, so over a collection not written meanwhile every matching point
//! comes exactly once; writes during a scroll are seen if they land ahead of the cursor.

use std::time::Duration;

use quiver_proto::v1::{ScrollRequest, ScrollResponse, ShardScrollRequest};

use super::{read_shard, with_deadline, Merger};
use crate::{
    error::{Error, Result},
    validate,
};

/// Points per page when the request names no limit, and the most it may name.
pub const DEFAULT_SCROLL_LIMIT: u32 = 100;
pub const MAX_SCROLL_LIMIT: u32 = 10_000;
const TOKEN_VERSION: &str = "q1";
/// Where a page stops gathering from further shards: each Searcher's page stops at 16 MiB
/// too, so a reply stays under the 64 MiB a message may hold.
const PAGE_BYTES: usize = 16 << 20;

fn point_bytes(point: &quiver_proto::v1::Point) -> usize {
    point.id.len() + point.vector.len() * size_of::<f32>() + point.payload_json.len()
}

/// Where a scroll resumes: the shard, and the last id returned from it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cursor {
    shard: u32,
    after: String,
}

/// `q1.<shard>.<hex of the id>`: opaque to clients, who pass it back as they got it.
fn encode(cursor: &Cursor) -> String {
    let hex: String = cursor
        .after
        .bytes()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("{TOKEN_VERSION}.{}.{hex}", cursor.shard)
}

fn decode(token: &str) -> Option<Cursor> {
    let mut parts = token.split('.');
    if parts.next()? != TOKEN_VERSION {
        return None;
    }
    let shard = parts.next()?.parse().ok()?;
    let hex = parts.next()?;
    if parts.next().is_some() || hex.len() % 2 != 0 {
        return None;
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(hex.get(at..at + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    Some(Cursor {
        shard,
        after: String::from_utf8(bytes).ok()?,
    })
}

impl Merger {
    pub(super) async fn scroll_points(
        &self,
        request: ScrollRequest,
        client_timeout: Option<Duration>,
    ) -> Result<ScrollResponse> {
        let state = self.view.current();
        let collection = Self::collection(&state, &request.collection)?;
        let filter = validate::filter(&collection, request.filter.as_ref())?
            .map(|filter| quiver_payload::proto::to_proto(&filter));
        let limit = match request.limit {
            0 => DEFAULT_SCROLL_LIMIT,
            limit if limit <= MAX_SCROLL_LIMIT => limit,
            limit => {
                return Err(Error::InvalidArgument(format!(
                    "limit must be at most {MAX_SCROLL_LIMIT}, got {limit}"
                )))
            }
        } as usize;
        let mut cursor = if request.page_token.is_empty() {
            Cursor {
                shard: 0,
                after: String::new(),
            }
        } else {
            decode(&request.page_token)
                .filter(|cursor| cursor.shard < collection.num_shards)
                .ok_or_else(|| {
                    Error::InvalidArgument(
                        "page_token is not one a scroll of this collection returned".into(),
                    )
                })?
        };
        let deadline = Self::deadline(
            self.config.search_timeout,
            request.timeout_ms,
            client_timeout,
        );
        let rotation = self.next_rotation();
        let mut points = Vec::with_capacity(limit);
        let mut bytes = 0;
        while cursor.shard < collection.num_shards && points.len() < limit {
            let wanted = limit - points.len();
            let shard = cursor.shard;
            let after = cursor.after.clone();
            let page = read_shard(
                &self.clients,
                &state,
                &collection.name,
                shard,
                rotation,
                deadline,
                |mut client, budget| {
                    let mut call = tonic::Request::new(ShardScrollRequest {
                        collection: collection.name.clone(),
                        shard,
                        filter: filter.clone(),
                        after_id: after.clone(),
                        limit: wanted as u32,
                        with_vectors: request.with_vectors,
                        with_payloads: request.with_payloads,
                    });
                    call.set_timeout(budget);
                    quiver_cluster::request_id::attach(&mut call);
                    async move { with_deadline(budget, client.scroll(call)).await }
                },
            )
            .await
            .map_err(|failure| Error::Searcher {
                code: quiver_proto::code_from_name(&failure.code),
                message: format!(
                    "shard {shard} could not be scrolled (last asked: {}): {}",
                    if failure.searcher_id.is_empty() {
                        "-"
                    } else {
                        &failure.searcher_id
                    },
                    failure.message
                ),
            })?;
            // A Searcher that does not say `end` is done when it returns nothing.
            let exhausted = page.end || page.points.is_empty();
            if let Some(last) = page.points.last() {
                cursor.after = last.id.clone();
            }
            bytes += page.points.iter().map(point_bytes).sum::<usize>();
            points.extend(page.points);
            if exhausted {
                cursor = Cursor {
                    shard: cursor.shard + 1,
                    after: String::new(),
                };
            }
            if bytes >= PAGE_BYTES {
                break;
            }
        }
        let next_page_token = if cursor.shard < collection.num_shards {
            encode(&cursor)
        } else {
            String::new()
        };
        Ok(ScrollResponse {
            points,
            next_page_token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_foreign_ones_are_refused() {
        for after in ["", "p-1", "ünïcode/ id", "a.b.c"] {
            let cursor = Cursor {
                shard: 7,
                after: after.to_string(),
            };
            assert_eq!(decode(&encode(&cursor)), Some(cursor));
        }
        for token in [
            "",
            "q1",
            "q1.x.00",
            "q2.1.00",
            "q1.1.0",
            "q1.1.zz",
            "q1.1.00.00",
            "q1.1.ff",
        ] {
            assert_eq!(decode(token), None, "{token}");
        }
    }
}
