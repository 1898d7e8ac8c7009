//! The etcd backend of [`MetadataStore`].
//!
//! Deadlines: the client is built with a per-request timeout, a connect timeout and HTTP/2
//! keep-alive (so a dead connection is noticed, and a long-lived watch on it fails instead of
//! hanging). On top, every unary call and the setup of every stream is wrapped in
//! `tokio::time::timeout`, because a balanced channel whose endpoints are all down can wait
//! for a ready endpoint without ever reaching the per-request timer.

use std::{future::Future, time::Duration};

use etcd_client::{
    Client, CompactionOptions, Compare as EtcdCompare, CompareOp, ConnectOptions, DeleteOptions,
    EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use futures::StreamExt;

use super::{Compare, KeyValue, LeaseId, MetadataStore, Op, WatchEvent, WatchStream};
use crate::{Error, Result};

/// Keys per page when listing a prefix: keeps each response far below gRPC's 4 MiB limit.
const LIST_PAGE_SIZE: i64 = 1000;

/// HTTP/2 ping interval. etcd's server refuses pings more often than every 5 s
/// (`--grpc-keepalive-min-time`), answering with GOAWAY "too many pings".
const HTTP2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// A [`MetadataStore`] on etcd v3 (3.4 or later). Clones share one connection.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    request_timeout: Duration,
    endpoints: Vec<String>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl EtcdStore {
    /// Connects to the etcd cluster at `endpoints` (`host:port` or `http://host:port`).
    /// Connections are made lazily and re-made on failure, so this succeeds while etcd is
    /// still starting; an unreachable etcd surfaces as `Unavailable` on the first request
    /// (see [`EtcdStore::check_connection`] to fail fast instead).
    pub async fn connect(endpoints: &[String], request_timeout: Duration) -> Result<Self> {
        if endpoints.is_empty() {
            return Err(Error::InvalidArgument(
                "no etcd endpoints given".to_string(),
            ));
        }
        if request_timeout.is_zero() {
            return Err(Error::InvalidArgument(
                "the etcd request timeout must be positive".to_string(),
            ));
        }
        let options = ConnectOptions::new()
            .with_timeout(request_timeout)
            .with_connect_timeout(request_timeout)
            .with_keep_alive(HTTP2_KEEP_ALIVE_INTERVAL, request_timeout)
            // Watches and lease streams must notice a dead peer even when no unary call is
            // in flight.
            .with_keep_alive_while_idle(true);
        let client = bounded(
            request_timeout,
            "connect",
            Client::connect(endpoints, Some(options)),
        )
        .await?;
        tracing::debug!(?endpoints, ?request_timeout, "etcd client created");
        Ok(EtcdStore {
            client,
            request_timeout,
            endpoints: endpoints.to_vec(),
        })
    }

    /// The endpoints this store was connected with.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// One round trip to etcd (a status call), to fail fast at startup or in a health check.
    pub async fn check_connection(&self) -> Result<()> {
        let mut client = self.client.clone();
        bounded(self.request_timeout, "status", client.status()).await?;
        Ok(())
    }

    /// Compacts etcd's history up to `revision` and waits until it is applied, so watches
    /// from an earlier revision fail with `Compacted` right after this returns.
    pub async fn compact(&self, revision: i64) -> Result<()> {
        let mut client = self.client.clone();
        bounded(
            self.request_timeout,
            "compact",
            client.compact(revision, Some(CompactionOptions::new().with_physical())),
        )
        .await?;
        Ok(())
    }
}

/// Runs one etcd call under `deadline`; an elapsed deadline is `Unavailable`.
async fn bounded<T>(
    deadline: Duration,
    operation: &'static str,
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T> {
    match tokio::time::timeout(deadline, call).await {
        Ok(result) => result.map_err(Error::from),
        Err(_) => Err(Error::Unavailable(format!(
            "etcd {operation} did not answer within {deadline:?}"
        ))),
    }
}

/// etcd answers a put under a lease it no longer has with NOT_FOUND
/// "etcdserver: requested lease not found".
fn is_lease_not_found(error: &Error) -> bool {
    matches!(
        error,
        Error::Etcd(etcd_client::Error::GRpcStatus(status))
            if status.message().contains("requested lease not found")
    )
}

fn is_too_many_txn_ops(error: &Error) -> bool {
    matches!(
        error,
        Error::Etcd(etcd_client::Error::GRpcStatus(status))
            if status.message().contains("too many operations in txn request")
    )
}

fn lease_of(ops: &[Op]) -> LeaseId {
    ops.iter()
        .find_map(|op| match op {
            Op::Put {
                lease: Some(lease), ..
            } if *lease != 0 => Some(*lease),
            _ => None,
        })
        .unwrap_or(0)
}

fn key_value(key_value: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        // Quiver writes UTF-8 keys only; a foreign binary key is kept readable rather than
        // failing a whole listing.
        key: String::from_utf8_lossy(key_value.key()).into_owned(),
        value: key_value.value().to_vec(),
        create_revision: key_value.create_revision(),
        mod_revision: key_value.mod_revision(),
        lease: key_value.lease(),
    }
}

/// The first key after every key that starts with `prefix` (etcd's range end for a prefix).
fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Empty prefix or all 0xff: every key; etcd spells "to the end" as "\0".
    vec![0]
}

fn txn_compare(compare: Compare) -> EtcdCompare {
    match compare {
        // A key's version is 0 exactly when it does not exist.
        Compare::Absent(key) => EtcdCompare::version(key, CompareOp::Equal, 0),
        Compare::Present(key) => EtcdCompare::version(key, CompareOp::Greater, 0),
        Compare::ModRevision(key, revision) => {
            EtcdCompare::mod_revision(key, CompareOp::Equal, revision)
        }
    }
}

fn txn_op(op: Op) -> TxnOp {
    match op {
        Op::Put { key, value, lease } => {
            let options = lease
                .filter(|lease| *lease != 0)
                .map(|lease| PutOptions::new().with_lease(lease));
            TxnOp::put(key, value, options)
        }
        Op::Delete(key) => TxnOp::delete(key, None),
        Op::DeletePrefix(prefix) => TxnOp::delete(prefix, Some(DeleteOptions::new().with_prefix())),
    }
}

/// Turns one etcd watch response into what the trait promises: `None` for responses without
/// events (created, progress), an error for a compacted or cancelled watch.
fn watch_batch(response: &etcd_client::WatchResponse) -> Option<Result<Vec<WatchEvent>>> {
    if response.compact_revision() > 0 {
        return Some(Err(Error::Compacted {
            compact_revision: response.compact_revision(),
        }));
    }
    if response.canceled() {
        return Some(Err(Error::Unavailable(format!(
            "etcd cancelled the watch: {}",
            response.cancel_reason()
        ))));
    }
    let events: Vec<WatchEvent> = response
        .events()
        .iter()
        .filter_map(|event| {
            let stored = event.kv()?;
            Some(match event.event_type() {
                EventType::Put => WatchEvent::Put(key_value(stored)),
                EventType::Delete => WatchEvent::Delete {
                    key: String::from_utf8_lossy(stored.key()).into_owned(),
                    mod_revision: stored.mod_revision(),
                },
            })
        })
        .collect();
    (!events.is_empty()).then_some(Ok(events))
}

#[async_trait::async_trait]
impl MetadataStore for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let mut client = self.client.clone();
        let response = bounded(self.request_timeout, "get", client.get(key, None)).await?;
        Ok(response.kvs().first().map(key_value))
    }

    async fn get_prefix(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64)> {
        // Paged, every page pinned to the first page's revision, so the result is one
        // consistent snapshot however many keys there are.
        let range_end = prefix_range_end(prefix.as_bytes());
        let mut start: Vec<u8> = prefix.as_bytes().to_vec();
        let mut revision = 0;
        let mut listed = Vec::new();
        loop {
            let mut options = GetOptions::new()
                .with_range(range_end.clone())
                .with_limit(LIST_PAGE_SIZE);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let mut client = self.client.clone();
            let response = bounded(
                self.request_timeout,
                "get prefix",
                client.get(start.clone(), Some(options)),
            )
            .await?;
            if revision == 0 {
                revision = response.header().map_or(0, |header| header.revision());
            }
            listed.extend(response.kvs().iter().map(key_value));
            match response.kvs().last() {
                Some(last) if response.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => break,
            }
        }
        Ok((listed, revision))
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<()> {
        let options = lease
            .filter(|lease| *lease != 0)
            .map(|lease| PutOptions::new().with_lease(lease));
        let mut client = self.client.clone();
        bounded(self.request_timeout, "put", client.put(key, value, options))
            .await
            .map_err(|error| match lease {
                Some(lease) if is_lease_not_found(&error) => Error::LeaseLost(lease),
                _ => error,
            })?;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let mut client = self.client.clone();
        let response = bounded(self.request_timeout, "delete", client.delete(key, None)).await?;
        Ok(response.deleted() > 0)
    }

    async fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> Result<bool> {
        let lease = lease_of(&ops);
        let op_count = ops.len();
        let txn = Txn::new()
            .when(compares.into_iter().map(txn_compare).collect::<Vec<_>>())
            .and_then(ops.into_iter().map(txn_op).collect::<Vec<_>>());
        let mut client = self.client.clone();
        let response = bounded(self.request_timeout, "txn", client.txn(txn))
            .await
            .map_err(|error| {
                if lease != 0 && is_lease_not_found(&error) {
                    Error::LeaseLost(lease)
                } else if is_too_many_txn_ops(&error) {
                    Error::FailedPrecondition(format!(
                        "etcd refused a transaction of {op_count} operations (too many \
                         operations in txn request): start etcd with --max-txn-ops {op_count} \
                         or more"
                    ))
                } else {
                    error
                }
            })?;
        Ok(response.succeeded())
    }

    async fn grant_lease(&self, ttl_secs: i64) -> Result<LeaseId> {
        if ttl_secs <= 0 {
            return Err(Error::InvalidArgument(format!(
                "lease ttl must be at least 1 second, got {ttl_secs}"
            )));
        }
        let mut client = self.client.clone();
        let response = bounded(
            self.request_timeout,
            "lease grant",
            client.lease_grant(ttl_secs, None),
        )
        .await?;
        Ok(response.id())
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<i64> {
        let mut client = self.client.clone();
        let exchange = async move {
            // etcd-client opens the keep-alive stream with one request and checks that
            // answer itself (a missing lease is an error there); one more request on the
            // stream gives us the TTL to report. Both extend the lease identically.
            let (mut keeper, mut responses) = match client.lease_keep_alive(lease).await {
                Ok(pair) => pair,
                Err(etcd_client::Error::LeaseKeepAliveError(reason))
                    if reason.contains("lease not found") =>
                {
                    return Ok(0);
                }
                Err(error) => return Err(error),
            };
            keeper.keep_alive().await?;
            match responses.message().await? {
                Some(response) => Ok(response.ttl()),
                None => Err(etcd_client::Error::LeaseKeepAliveError(
                    "keep-alive stream closed before answering".to_string(),
                )),
            }
        };
        bounded(self.request_timeout, "lease keep-alive", exchange).await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        let mut client = self.client.clone();
        match bounded(
            self.request_timeout,
            "lease revoke",
            client.lease_revoke(lease),
        )
        .await
        {
            Ok(_) => Ok(()),
            // Already expired or revoked: the goal of revoking is met.
            Err(error) if is_lease_not_found(&error) => Ok(()),
            Err(error) => Err(error),
        }
    }

    async fn watch_prefix(&self, prefix: &str, from_revision: i64) -> Result<WatchStream> {
        let mut options = WatchOptions::new().with_prefix();
        if from_revision > 0 {
            options = options.with_start_revision(from_revision);
        }
        let mut client = self.client.clone();
        let watch = bounded(
            self.request_timeout,
            "watch",
            client.watch(prefix, Some(options)),
        )
        .await?;
        // The etcd-client `WatchStream` owns both the request sender and the response
        // stream; dropping the sender would end the watch, so the whole object travels inside
        // the stream we hand out and is dropped only with it.
        let stream = futures::stream::unfold(Some(watch), |watch| async move {
            let mut watch = watch?;
            loop {
                match watch.message().await {
                    Ok(Some(response)) => match watch_batch(&response) {
                        None => continue,
                        Some(Ok(events)) => return Some((Ok(events), Some(watch))),
                        Some(Err(error)) => return Some((Err(error), None)),
                    },
                    // The server closed the stream; the caller re-lists and re-watches.
                    Ok(None) => return None,
                    Err(error) => return Some((Err(Error::from(error)), None)),
                }
            }
        });
        Ok(stream.boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{store::conformance, testing::EtcdServer};

    async fn start() -> (EtcdServer, EtcdStore) {
        let server = EtcdServer::start().expect("start etcd");
        let store = server.connect_store().await.expect("connect to etcd");
        (server, store)
    }

    #[test]
    fn prefix_range_end_increments_the_last_byte() {
        assert_eq!(prefix_range_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_range_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_range_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_range_end(b""), vec![0]);
    }

    #[tokio::test]
    async fn etcd_store_get_put_delete() {
        let (_server, store) = start().await;
        conformance::get_put_delete(&store).await;
    }

    #[tokio::test]
    async fn etcd_store_get_prefix_is_sorted_and_bounded() {
        let (_server, store) = start().await;
        conformance::get_prefix_is_sorted_and_bounded(&store).await;
    }

    #[tokio::test]
    async fn etcd_store_get_prefix_pages_through_many_keys() {
        let (_server, store) = start().await;
        let total = LIST_PAGE_SIZE as usize * 2 + 7;
        let ops: Vec<Op> = (0..total)
            .map(|index| Op::Put {
                key: format!("/many/{index:05}"),
                value: vec![b'v'],
                lease: None,
            })
            .collect();
        for chunk in ops.chunks(100) {
            assert!(store.txn(vec![], chunk.to_vec()).await.unwrap());
        }
        store.put("/manz", b"outside".to_vec(), None).await.unwrap();
        let (listed, revision) = store.get_prefix("/many/").await.unwrap();
        assert_eq!(listed.len(), total);
        assert!(listed.windows(2).all(|pair| pair[0].key < pair[1].key));
        assert_eq!(listed[0].key, "/many/00000");
        assert!(revision >= listed.iter().map(|kv| kv.mod_revision).max().unwrap());
    }

    #[tokio::test]
    async fn etcd_store_txn_absent_succeeds_once() {
        let (_server, store) = start().await;
        conformance::txn_absent_succeeds_once(&store).await;
    }

    #[tokio::test]
    async fn etcd_store_txn_is_all_or_nothing() {
        let (_server, store) = start().await;
        conformance::txn_is_all_or_nothing(&store).await;
    }

    #[tokio::test]
    async fn etcd_store_txn_mod_revision_and_present() {
        let (_server, store) = start().await;
        conformance::txn_mod_revision_and_present(&store).await;
    }

    #[tokio::test]
    async fn etcd_store_delete_prefix() {
        let (_server, store) = start().await;
        conformance::delete_prefix(&store).await;
    }

    #[tokio::test]
    async fn etcd_store_lease_revoke_deletes_keys() {
        let (_server, store) = start().await;
        conformance::lease_revoke_deletes_keys(&store).await;
    }

    #[tokio::test]
    async fn etcd_store_lease_expiry_deletes_keys() {
        let (_server, store) = start().await;
        conformance::lease_expiry_deletes_keys(&store).await;
    }

    #[tokio::test]
    async fn etcd_store_keep_alive_extends_and_reports_lost_leases() {
        let (_server, store) = start().await;
        conformance::keep_alive_extends_and_reports_lost_leases(&store).await;
    }

    #[tokio::test]
    async fn etcd_store_watch_sees_puts_and_deletes_in_order() {
        let (_server, store) = start().await;
        conformance::watch_sees_puts_and_deletes_in_order(&store).await;
    }

    #[tokio::test]
    async fn etcd_store_watch_from_compacted_revision_fails() {
        let (_server, store) = start().await;
        conformance::watch_from_compacted_revision_fails(&store, |revision| {
            let store = store.clone();
            async move { store.compact(revision).await.unwrap() }
        })
        .await;
    }

    #[tokio::test]
    async fn etcd_store_watch_outlives_the_request_timeout() {
        // The per-request timeout must not cut long-lived watch streams.
        let server = EtcdServer::start().expect("start etcd");
        let store = EtcdStore::connect(&server.endpoints(), Duration::from_millis(500))
            .await
            .unwrap();
        let mut stream = store.watch_prefix("/slow/", 0).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        store.put("/slow/k", b"v".to_vec(), None).await.unwrap();
        let events = conformance::next_events(&mut stream, 1).await;
        assert_eq!(events[0].key(), "/slow/k");
    }

    #[tokio::test]
    async fn etcd_store_unreachable_endpoint_is_unavailable_within_the_deadline() {
        // A port nobody listens on (bound, then released).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let timeout = Duration::from_millis(500);
        let started = std::time::Instant::now();
        let result = async {
            let store = EtcdStore::connect(&[format!("127.0.0.1:{port}")], timeout).await?;
            store.get("/k").await
        }
        .await;
        let error = result.expect_err("nothing listens there");
        assert_eq!(tonic::Status::from(error).code(), tonic::Code::Unavailable);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn etcd_store_reports_oversized_transactions_clearly() {
        let (_server, store) = start().await;
        // The test server allows 2048 operations per transaction.
        let ops: Vec<Op> = (0..2049)
            .map(|index| Op::Put {
                key: format!("/big/{index}"),
                value: vec![],
                lease: None,
            })
            .collect();
        let error = store.txn(vec![], ops).await.unwrap_err();
        match error {
            Error::FailedPrecondition(message) => {
                assert!(message.contains("--max-txn-ops"), "{message}")
            }
            other => panic!("unexpected error {other}"),
        }
    }
}
