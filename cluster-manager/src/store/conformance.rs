//! The behaviour every [`MetadataStore`] backend must show, written once and run against
//! both the memory store and a real etcd (each backend's test module calls these with a
//! fresh store per test).

use std::{future::Future, time::Duration};

use futures::StreamExt;

use super::{Compare, MetadataStore, Op, WatchEvent, WatchStream};
use crate::Error;

/// How long a test waits for something that should happen promptly.
const PATIENCE: Duration = Duration::from_secs(10);

fn put_op(key: &str, value: &str) -> Op {
    Op::Put {
        key: key.to_string(),
        value: value.as_bytes().to_vec(),
        lease: None,
    }
}

async fn value_of(store: &dyn MetadataStore, key: &str) -> Option<String> {
    store
        .get(key)
        .await
        .unwrap()
        .map(|key_value| String::from_utf8(key_value.value).unwrap())
}

async fn keys_under(store: &dyn MetadataStore, prefix: &str) -> Vec<String> {
    let (key_values, _) = store.get_prefix(prefix).await.unwrap();
    key_values
        .into_iter()
        .map(|key_value| key_value.key)
        .collect()
}

/// Reads watch batches until `count` events have arrived.
pub(crate) async fn next_events(stream: &mut WatchStream, count: usize) -> Vec<WatchEvent> {
    let mut events = Vec::new();
    while events.len() < count {
        let batch = tokio::time::timeout(PATIENCE, stream.next())
            .await
            .unwrap_or_else(|_| panic!("no watch event within {PATIENCE:?}; got {events:?}"))
            .expect("watch stream ended")
            .expect("watch failed");
        assert!(!batch.is_empty(), "empty batches are not passed on");
        events.extend(batch);
    }
    events
}

/// Polls until `key` is gone; panics after `limit`.
async fn wait_until_absent(store: &dyn MetadataStore, key: &str, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while store.get(key).await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key} still present after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) async fn get_put_delete(store: &dyn MetadataStore) {
    assert_eq!(store.get("/t/k").await.unwrap(), None);
    store.put("/t/k", b"one".to_vec(), None).await.unwrap();
    let first = store.get("/t/k").await.unwrap().unwrap();
    assert_eq!(first.key, "/t/k");
    assert_eq!(first.value, b"one");
    assert_eq!(first.lease, 0);
    assert!(first.create_revision > 0);
    assert_eq!(first.create_revision, first.mod_revision);

    store.put("/t/k", b"two".to_vec(), None).await.unwrap();
    let second = store.get("/t/k").await.unwrap().unwrap();
    assert_eq!(second.value, b"two");
    assert_eq!(second.create_revision, first.create_revision);
    assert!(second.mod_revision > first.mod_revision);

    assert!(store.delete("/t/k").await.unwrap());
    assert!(!store.delete("/t/k").await.unwrap());
    assert_eq!(store.get("/t/k").await.unwrap(), None);

    // A re-created key starts a new life.
    store.put("/t/k", b"three".to_vec(), None).await.unwrap();
    let third = store.get("/t/k").await.unwrap().unwrap();
    assert!(third.create_revision > second.mod_revision);
}

pub(crate) async fn get_prefix_is_sorted_and_bounded(store: &dyn MetadataStore) {
    for key in ["/a/2", "/a/10", "/a/1", "/ab", "/a", "/b/1", "/a/sub/x"] {
        store.put(key, key.as_bytes().to_vec(), None).await.unwrap();
    }
    let (key_values, revision) = store.get_prefix("/a/").await.unwrap();
    let keys: Vec<&str> = key_values
        .iter()
        .map(|key_value| key_value.key.as_str())
        .collect();
    assert_eq!(keys, ["/a/1", "/a/10", "/a/2", "/a/sub/x"]);
    for key_value in &key_values {
        assert_eq!(key_value.value, key_value.key.as_bytes());
        assert!(key_value.mod_revision <= revision);
    }
    let latest = store.get("/a/sub/x").await.unwrap().unwrap().mod_revision;
    assert!(revision >= latest, "{revision} < {latest}");

    let (empty, empty_revision) = store.get_prefix("/zzz/").await.unwrap();
    assert!(empty.is_empty());
    assert!(empty_revision >= revision);
}

pub(crate) async fn txn_absent_succeeds_once(store: &dyn MetadataStore) {
    let create = |value: &str| {
        (
            vec![Compare::Absent("/t/once".to_string())],
            vec![put_op("/t/once", value)],
        )
    };
    let (compares, ops) = create("first");
    assert!(store.txn(compares, ops).await.unwrap());
    let (compares, ops) = create("second");
    assert!(!store.txn(compares, ops).await.unwrap());
    assert_eq!(value_of(store, "/t/once").await.as_deref(), Some("first"));
}

pub(crate) async fn txn_is_all_or_nothing(store: &dyn MetadataStore) {
    store.put("/t/x", b"old".to_vec(), None).await.unwrap();
    let ops = || vec![put_op("/t/new", "n"), Op::Delete("/t/x".to_string())];

    // One failing compare among several: nothing happens.
    let failing = vec![
        Compare::Absent("/t/new".to_string()),
        Compare::Absent("/t/x".to_string()),
    ];
    assert!(!store.txn(failing, ops()).await.unwrap());
    assert_eq!(value_of(store, "/t/new").await, None);
    assert_eq!(value_of(store, "/t/x").await.as_deref(), Some("old"));

    // Every compare holds: every op happens, in one revision.
    let holding = vec![
        Compare::Absent("/t/new".to_string()),
        Compare::Present("/t/x".to_string()),
    ];
    assert!(store.txn(holding, ops()).await.unwrap());
    assert_eq!(value_of(store, "/t/x").await, None);
    let created = store.get("/t/new").await.unwrap().unwrap();
    let (_, revision) = store.get_prefix("/t/").await.unwrap();
    assert_eq!(
        created.mod_revision, revision,
        "one revision for the whole txn"
    );

    // An op that cannot apply (a lease that is gone) fails the whole txn.
    let lease = store.grant_lease(30).await.unwrap();
    store.revoke_lease(lease).await.unwrap();
    let doomed = vec![
        put_op("/t/plain", "p"),
        Op::Put {
            key: "/t/leased".to_string(),
            value: b"l".to_vec(),
            lease: Some(lease),
        },
    ];
    let error = store.txn(vec![], doomed).await.unwrap_err();
    assert!(
        matches!(error, Error::LeaseLost(id) if id == lease),
        "{error}"
    );
    assert_eq!(value_of(store, "/t/plain").await, None);
    assert_eq!(value_of(store, "/t/leased").await, None);
}

pub(crate) async fn txn_mod_revision_and_present(store: &dyn MetadataStore) {
    assert!(!store
        .txn(
            vec![Compare::Present("/t/m".into())],
            vec![put_op("/t/m", "x")]
        )
        .await
        .unwrap());
    // An absent key has mod revision 0, as in etcd.
    assert!(store
        .txn(
            vec![Compare::ModRevision("/t/m".into(), 0)],
            vec![put_op("/t/m", "v1")]
        )
        .await
        .unwrap());
    let current = store.get("/t/m").await.unwrap().unwrap().mod_revision;
    assert!(store
        .txn(
            vec![Compare::ModRevision("/t/m".into(), current)],
            vec![put_op("/t/m", "v2")]
        )
        .await
        .unwrap());
    // The same compare is stale now: optimistic concurrency refuses the lost update.
    assert!(!store
        .txn(
            vec![Compare::ModRevision("/t/m".into(), current)],
            vec![put_op("/t/m", "v3")]
        )
        .await
        .unwrap());
    assert_eq!(value_of(store, "/t/m").await.as_deref(), Some("v2"));
}

pub(crate) async fn delete_prefix(store: &dyn MetadataStore) {
    for key in ["/p/1", "/p/2", "/p/x/y", "/pq", "/p"] {
        store.put(key, b"v".to_vec(), None).await.unwrap();
    }
    assert!(store
        .txn(vec![], vec![Op::DeletePrefix("/p/".to_string())])
        .await
        .unwrap());
    assert_eq!(keys_under(store, "/p").await, ["/p", "/pq"]);
}

pub(crate) async fn lease_revoke_deletes_keys(store: &dyn MetadataStore) {
    let lease = store.grant_lease(30).await.unwrap();
    assert_ne!(lease, 0);
    store.put("/l/a", b"a".to_vec(), Some(lease)).await.unwrap();
    store
        .txn(
            vec![],
            vec![Op::Put {
                key: "/l/b".to_string(),
                value: b"b".to_vec(),
                lease: Some(lease),
            }],
        )
        .await
        .unwrap();
    store.put("/l/plain", b"p".to_vec(), None).await.unwrap();
    assert_eq!(store.get("/l/a").await.unwrap().unwrap().lease, lease);

    store.revoke_lease(lease).await.unwrap();
    assert_eq!(keys_under(store, "/l/").await, ["/l/plain"]);

    let error = store
        .put("/l/a", b"again".to_vec(), Some(lease))
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::LeaseLost(id) if id == lease),
        "{error}"
    );
    // Revoking again is not an error: a graceful stop after a lost lease must work.
    store.revoke_lease(lease).await.unwrap();

    // Re-putting a key without a lease detaches it from its lease.
    let second = store.grant_lease(30).await.unwrap();
    store
        .put("/l/c", b"c".to_vec(), Some(second))
        .await
        .unwrap();
    store.put("/l/c", b"c2".to_vec(), None).await.unwrap();
    store.revoke_lease(second).await.unwrap();
    assert_eq!(value_of(store, "/l/c").await.as_deref(), Some("c2"));
}

pub(crate) async fn lease_expiry_deletes_keys(store: &dyn MetadataStore) {
    let lease = store.grant_lease(2).await.unwrap();
    let started = tokio::time::Instant::now();
    store.put("/e/a", b"a".to_vec(), Some(lease)).await.unwrap();
    store.put("/e/keep", b"k".to_vec(), None).await.unwrap();
    assert!(store.get("/e/a").await.unwrap().is_some());
    wait_until_absent(store, "/e/a", Duration::from_secs(8)).await;
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "expired after {:?}, before its 2 s TTL",
        started.elapsed()
    );
    assert_eq!(keys_under(store, "/e/").await, ["/e/keep"]);
    assert!(store.keep_alive(lease).await.unwrap() <= 0);
}

pub(crate) async fn keep_alive_extends_and_reports_lost_leases(store: &dyn MetadataStore) {
    let lease = store.grant_lease(2).await.unwrap();
    store.put("/k/a", b"a".to_vec(), Some(lease)).await.unwrap();
    // Twice the TTL, refreshed every half TTL: the key must survive.
    for _ in 0..8 {
        let ttl = store.keep_alive(lease).await.unwrap();
        assert!(ttl > 0 && ttl <= 2, "ttl {ttl}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(store.get("/k/a").await.unwrap().is_some());

    store.revoke_lease(lease).await.unwrap();
    match store.keep_alive(lease).await {
        Ok(ttl) => assert!(ttl <= 0, "revoked lease still has ttl {ttl}"),
        Err(Error::LeaseLost(id)) => assert_eq!(id, lease),
        Err(other) => panic!("unexpected error {other}"),
    }
    assert_eq!(store.get("/k/a").await.unwrap(), None);
}

pub(crate) async fn watch_sees_puts_and_deletes_in_order(store: &dyn MetadataStore) {
    store.put("/w/a", b"1".to_vec(), None).await.unwrap();
    let start = store.get("/w/a").await.unwrap().unwrap().mod_revision;
    store.put("/w/b", b"2".to_vec(), None).await.unwrap();

    // From a past revision: history first, then live changes.
    let mut stream = store.watch_prefix("/w/", start).await.unwrap();
    store.put("/other", b"x".to_vec(), None).await.unwrap();
    store.put("/wx", b"x".to_vec(), None).await.unwrap();
    store.delete("/w/a").await.unwrap();
    store.put("/w/b", b"3".to_vec(), None).await.unwrap();
    store
        .txn(vec![], vec![put_op("/w/c", "4"), put_op("/w/d", "5")])
        .await
        .unwrap();

    let events = next_events(&mut stream, 6).await;
    let summary: Vec<(char, &str)> = events
        .iter()
        .map(|event| match event {
            WatchEvent::Put(key_value) => ('P', key_value.key.as_str()),
            WatchEvent::Delete { key, .. } => ('D', key.as_str()),
        })
        .collect();
    assert_eq!(
        summary,
        [
            ('P', "/w/a"),
            ('P', "/w/b"),
            ('D', "/w/a"),
            ('P', "/w/b"),
            ('P', "/w/c"),
            ('P', "/w/d"),
        ]
    );
    assert_eq!(events[0].revision(), start);
    for pair in events.windows(2) {
        assert!(pair[0].revision() <= pair[1].revision(), "{events:?}");
    }
    assert_eq!(
        events[4].revision(),
        events[5].revision(),
        "one txn, one revision"
    );
    match &events[3] {
        WatchEvent::Put(key_value) => assert_eq!(key_value.value, b"3"),
        other => panic!("unexpected {other:?}"),
    }

    // From "now": only later changes.
    let mut live = store.watch_prefix("/w/", 0).await.unwrap();
    store.put("/w/e", b"6".to_vec(), None).await.unwrap();
    let events = next_events(&mut live, 1).await;
    assert_eq!(events[0].key(), "/w/e");

    // A leased key's expiry is a delete event too.
    let lease = store.grant_lease(30).await.unwrap();
    store
        .put("/w/leased", b"l".to_vec(), Some(lease))
        .await
        .unwrap();
    store.revoke_lease(lease).await.unwrap();
    let events = next_events(&mut live, 2).await;
    assert!(matches!(&events[0], WatchEvent::Put(kv) if kv.lease == lease));
    assert!(matches!(&events[1], WatchEvent::Delete { key, .. } if key == "/w/leased"));
}

pub(crate) async fn watch_from_compacted_revision_fails<Compact, Done>(
    store: &dyn MetadataStore,
    compact: Compact,
) where
    Compact: FnOnce(i64) -> Done,
    Done: Future<Output = ()>,
{
    for value in 0..5 {
        store
            .put("/c/k", value.to_string().into_bytes(), None)
            .await
            .unwrap();
    }
    let (_, revision) = store.get_prefix("/c/").await.unwrap();
    compact(revision).await;

    let mut stream = store.watch_prefix("/c/", revision - 3).await.unwrap();
    let item = tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("compaction is reported promptly")
        .expect("the stream reports the compaction before ending");
    match item {
        Err(Error::Compacted { compact_revision }) => assert_eq!(compact_revision, revision),
        other => panic!("expected Compacted, got {other:?}"),
    }
    let end = tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("the stream ends after the error");
    assert!(end.is_none(), "{end:?}");

    // The compaction revision itself is still watchable.
    let mut stream = store.watch_prefix("/c/", revision).await.unwrap();
    let events = next_events(&mut stream, 1).await;
    assert_eq!(events[0].revision(), revision);
}
