//! Creating and dropping collections: the collection key and its shard assignments, written
//! and removed together. Used by the Merger's admin RPCs and by quiverctl.

use std::str::FromStr;

use crate::{
    keys::validate_name,
    model::{decode, encode, AssignmentRecord, CollectionRecord},
    placement::place_collection,
    store::{Compare, MetadataStore, Op},
    Error, KeySchema, Result,
};

pub const MAX_DIMENSION: u32 = 4096;
pub const MAX_SHARDS: u32 = 1024;

/// Checks a collection's configuration without touching the store: the name, dimension
/// (1..=4096), shard count (1..=1024), a replication factor of at least 1, and an index spec
/// `quiver_index` can parse. (Whether enough Searchers are live is checked on create.)
pub fn validate_collection(record: &CollectionRecord) -> Result<()> {
    validate_name("collection", &record.name)?;
    if !(1..=MAX_DIMENSION).contains(&record.dimension) {
        return Err(Error::InvalidArgument(format!(
            "dimension must be between 1 and {MAX_DIMENSION}, got {}",
            record.dimension
        )));
    }
    if !(1..=MAX_SHARDS).contains(&record.num_shards) {
        return Err(Error::InvalidArgument(format!(
            "num_shards must be between 1 and {MAX_SHARDS}, got {}",
            record.num_shards
        )));
    }
    if record.replication_factor == 0 {
        return Err(Error::InvalidArgument(
            "replication_factor must be at least 1".to_string(),
        ));
    }
    quiver_index::IndexSpec::from_str(&record.index_spec).map_err(|error| {
        Error::InvalidArgument(format!("index_spec {:?}: {error}", record.index_spec))
    })?;
    Ok(())
}

/// Validates `record` (see [`validate_collection`]), places every shard on the live
/// Searchers evenly ([`place_collection`]), and writes the collection key plus all assignment keys
/// in ONE transaction guarded by the collection key being absent. Fails with
/// `AlreadyExists` if the collection exists, `FailedPrecondition` (naming both counts) if
/// fewer Searchers are live than the replication factor. Returns the assignments in shard
/// order.
///
/// One transaction holds `num_shards + 1` operations, so etcd must allow that many
/// (`--max-txn-ops`, 128 by default); a refusal is reported as `FailedPrecondition` naming the
/// flag.
pub async fn create_collection(
    store: &dyn MetadataStore,
    schema: &KeySchema,
    record: &CollectionRecord,
    live_searcher_ids: &[String],
) -> Result<Vec<AssignmentRecord>> {
    validate_collection(record)?;
    let assignments: Vec<AssignmentRecord> = place_collection(
        live_searcher_ids,
        &record.name,
        record.num_shards,
        record.replication_factor,
    )?
    .into_iter()
    .map(AssignmentRecord::new)
    .collect();

    let collection_key = schema.collection(&record.name);
    let mut ops = Vec::with_capacity(assignments.len() + 1);
    ops.push(Op::Put {
        key: collection_key.clone(),
        value: encode(record),
        lease: None,
    });
    for (shard, assignment) in (0..record.num_shards).zip(&assignments) {
        ops.push(Op::Put {
            key: schema.assignment(&record.name, shard),
            value: encode(assignment),
            lease: None,
        });
    }
    let created = store
        .txn(vec![Compare::Absent(collection_key)], ops)
        .await?;
    if !created {
        return Err(Error::AlreadyExists(format!("collection {}", record.name)));
    }
    tracing::info!(
        collection = %record.name,
        num_shards = record.num_shards,
        replication_factor = record.replication_factor,
        live_searchers = live_searcher_ids.len(),
        "collection created"
    );
    Ok(assignments)
}

/// Deletes the collection key and its assignments in one transaction guarded by the
/// collection key being present; `NotFound` if it is absent. Replica status keys vanish when
/// Searchers close their replicas (or with their leases).
pub async fn drop_collection(
    store: &dyn MetadataStore,
    schema: &KeySchema,
    name: &str,
) -> Result<()> {
    validate_name("collection", name)?;
    let collection_key = schema.collection(name);
    let dropped = store
        .txn(
            vec![Compare::Present(collection_key.clone())],
            vec![
                Op::Delete(collection_key),
                Op::DeletePrefix(schema.assignments_prefix(name)),
            ],
        )
        .await?;
    if !dropped {
        return Err(Error::NotFound(format!("collection {name}")));
    }
    tracing::info!(collection = %name, "collection dropped");
    Ok(())
}

/// Reads one collection's record; `NotFound` if absent.
pub async fn get_collection(
    store: &dyn MetadataStore,
    schema: &KeySchema,
    name: &str,
) -> Result<CollectionRecord> {
    validate_name("collection", name)?;
    let key = schema.collection(name);
    match store.get(&key).await? {
        Some(stored) => decode(&key, &stored.value),
        None => Err(Error::NotFound(format!("collection {name}"))),
    }
}

/// Changes one collection's record with `change`, guarded by the record's revision: read,
/// change, write only if nobody wrote it meanwhile, else read again (a few times). `change`
/// may refuse with an error, which is returned and writes nothing; `NotFound` if the
/// collection is absent. Returns the record as written.
pub async fn update_collection(
    store: &dyn MetadataStore,
    schema: &KeySchema,
    name: &str,
    mut change: impl FnMut(&mut CollectionRecord) -> Result<()>,
) -> Result<CollectionRecord> {
    validate_name("collection", name)?;
    let key = schema.collection(name);
    for _ in 0..UPDATE_ATTEMPTS {
        let Some(stored) = store.get(&key).await? else {
            return Err(Error::NotFound(format!("collection {name}")));
        };
        let mut record: CollectionRecord = decode(&key, &stored.value)?;
        change(&mut record)?;
        let written = store
            .txn(
                vec![Compare::ModRevision(key.clone(), stored.mod_revision)],
                vec![Op::Put {
                    key: key.clone(),
                    value: encode(&record),
                    lease: None,
                }],
            )
            .await?;
        if written {
            return Ok(record);
        }
    }
    Err(Error::Unavailable(format!(
        "collection {name} kept changing while being updated; try again"
    )))
}

/// Read-change-write rounds [`update_collection`] tries before giving up.
const UPDATE_ATTEMPTS: usize = 8;

/// Every collection's record, sorted by name. A malformed record fails the listing (this is
/// an admin read; the cluster view skips such records instead).
pub async fn list_collections(
    store: &dyn MetadataStore,
    schema: &KeySchema,
) -> Result<Vec<CollectionRecord>> {
    let (stored, _) = store.get_prefix(&schema.collections_prefix()).await?;
    stored
        .iter()
        .map(|key_value| decode(&key_value.key, &key_value.value))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        store::{EtcdStore, MemoryStore},
        testing::EtcdServer,
    };

    fn collection(name: &str, num_shards: u32, replication_factor: u32) -> CollectionRecord {
        CollectionRecord {
            name: name.to_string(),
            dimension: 8,
            metric: quiver_index::Metric::InnerProduct,
            num_shards,
            replication_factor,
            index_spec: "flat".to_string(),
            created_at: crate::model::now_rfc3339(),
            payload_indexes: Vec::new(),
        }
    }

    fn live(count: usize) -> Vec<String> {
        (1..=count).map(|index| format!("s{index}")).collect()
    }

    async fn create_writes_collection_and_assignments(store: &dyn MetadataStore) {
        let schema = KeySchema::default();
        let record = collection("docs", 6, 2);
        let searchers = live(4);
        let assignments = create_collection(store, &schema, &record, &searchers)
            .await
            .unwrap();
        assert_eq!(assignments.len(), 6);
        let placed = place_collection(&searchers, "docs", 6, 2).unwrap();
        for (shard, assignment) in assignments.iter().enumerate() {
            assert_eq!(assignment.replicas, placed[shard]);
            let shard = shard as u32;
            let stored = store
                .get(&schema.assignment("docs", shard))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                decode::<AssignmentRecord>(&stored.key, &stored.value).unwrap(),
                *assignment
            );
        }
        // Everything in one revision.
        let (stored, _) = store.get_prefix(schema.prefix()).await.unwrap();
        assert_eq!(stored.len(), 7);
        assert!(stored
            .iter()
            .all(|key_value| key_value.mod_revision == stored[0].mod_revision));
        assert_eq!(
            get_collection(store, &schema, "docs").await.unwrap(),
            record
        );
        assert_eq!(
            list_collections(store, &schema).await.unwrap(),
            std::slice::from_ref(&record)
        );

        let error = create_collection(store, &schema, &collection("docs", 2, 1), &searchers)
            .await
            .unwrap_err();
        assert!(matches!(error, Error::AlreadyExists(_)), "{error}");
        assert_eq!(error.to_string(), "collection docs already exists");
        assert_eq!(
            get_collection(store, &schema, "docs").await.unwrap(),
            record,
            "the existing collection is untouched"
        );
    }

    async fn drop_removes_collection_and_assignments(store: &dyn MetadataStore) {
        let schema = KeySchema::default();
        create_collection(store, &schema, &collection("docs", 3, 1), &live(2))
            .await
            .unwrap();
        // A collection whose name extends the first must survive the prefix delete.
        create_collection(store, &schema, &collection("docs2", 2, 1), &live(2))
            .await
            .unwrap();
        drop_collection(store, &schema, "docs").await.unwrap();
        assert_eq!(store.get(&schema.collection("docs")).await.unwrap(), None);
        let (left, _) = store
            .get_prefix(&schema.assignments_prefix("docs"))
            .await
            .unwrap();
        assert!(left.is_empty());
        let (kept, _) = store
            .get_prefix(&schema.assignments_prefix("docs2"))
            .await
            .unwrap();
        assert_eq!(kept.len(), 2);

        let error = drop_collection(store, &schema, "docs").await.unwrap_err();
        assert!(matches!(error, Error::NotFound(_)), "{error}");
        assert_eq!(error.to_string(), "collection docs not found");
        let error = get_collection(store, &schema, "docs").await.unwrap_err();
        assert!(matches!(error, Error::NotFound(_)), "{error}");

        // Dropped names can be created again.
        create_collection(store, &schema, &collection("docs", 1, 1), &live(1))
            .await
            .unwrap();
    }

    async fn invalid_requests_write_nothing(store: &dyn MetadataStore) {
        let schema = KeySchema::default();
        let invalid = [
            CollectionRecord {
                name: "bad/name".into(),
                ..collection("x", 1, 1)
            },
            CollectionRecord {
                dimension: 0,
                ..collection("x", 1, 1)
            },
            CollectionRecord {
                dimension: 4097,
                ..collection("x", 1, 1)
            },
            collection("x", 0, 1),
            collection("x", 1025, 1),
            collection("x", 1, 0),
            CollectionRecord {
                index_spec: "hnsw-but-not-really".into(),
                ..collection("x", 1, 1)
            },
        ];
        for record in invalid {
            let error = create_collection(store, &schema, &record, &live(3))
                .await
                .unwrap_err();
            assert!(
                matches!(error, Error::InvalidArgument(_)),
                "{record:?}: {error}"
            );
        }
        let error = create_collection(store, &schema, &collection("x", 4, 3), &live(2))
            .await
            .unwrap_err();
        match error {
            Error::FailedPrecondition(message) => assert_eq!(
                message,
                "replication factor 3 needs at least 3 live searchers, but only 2 are live"
            ),
            other => panic!("unexpected {other:?}"),
        }
        // Duplicate ids do not count twice.
        let duplicated = vec!["s1".to_string(), "s1".to_string()];
        let error = create_collection(store, &schema, &collection("x", 1, 2), &duplicated)
            .await
            .unwrap_err();
        assert!(matches!(error, Error::FailedPrecondition(_)), "{error}");
        assert!(store.get_prefix("/").await.unwrap().0.is_empty());

        // The largest collection allowed fits in one transaction (the test etcd allows it).
        let largest = collection("big", MAX_SHARDS, 2);
        let assignments = create_collection(store, &schema, &largest, &live(3))
            .await
            .unwrap();
        assert_eq!(assignments.len(), MAX_SHARDS as usize);
    }

    #[tokio::test]
    async fn memory_catalog_create() {
        create_writes_collection_and_assignments(&MemoryStore::new()).await;
    }

    #[tokio::test]
    async fn memory_catalog_drop() {
        drop_removes_collection_and_assignments(&MemoryStore::new()).await;
    }

    #[tokio::test]
    async fn memory_catalog_rejects_invalid_requests() {
        invalid_requests_write_nothing(&MemoryStore::new()).await;
    }

    async fn etcd() -> (EtcdServer, EtcdStore) {
        let server = EtcdServer::start().expect("start etcd");
        let store = server.connect_store().await.unwrap();
        (server, store)
    }

    #[tokio::test]
    async fn etcd_catalog_create() {
        let (_server, store) = etcd().await;
        create_writes_collection_and_assignments(&store).await;
    }

    #[tokio::test]
    async fn etcd_catalog_drop() {
        let (_server, store) = etcd().await;
        drop_removes_collection_and_assignments(&store).await;
    }

    #[tokio::test]
    async fn etcd_catalog_rejects_invalid_requests() {
        let (_server, store) = etcd().await;
        invalid_requests_write_nothing(&store).await;
    }
}
