//! Declaring and dropping payload indexes. The declaration lives in the collection's record
//! in etcd (`payload_indexes`), changed under the record's revision; every Searcher builds
//! or drops its replicas' indexes when its view shows the change. Filters give the same
//! answers with or without an index, so no search waits for a build.

use quiver_cluster::catalog;
use quiver_payload::{
    proto::{index_type_from_proto, index_type_to_proto},
    PayloadIndexSpec,
};
use quiver_proto::v1::{
    CreatePayloadIndexRequest, CreatePayloadIndexResponse, DropPayloadIndexRequest,
    DropPayloadIndexResponse, PayloadIndex,
};

use super::Merger;
use crate::{
    error::{Error, Result},
    validate,
};

/// The proto form of a collection's declared indexes.
pub(super) fn indexes_to_proto(specs: &[PayloadIndexSpec]) -> Vec<PayloadIndex> {
    specs
        .iter()
        .map(|spec| PayloadIndex {
            key: spec.key.clone(),
            r#type: index_type_to_proto(spec.kind) as i32,
        })
        .collect()
}

/// Checks declared indexes (at creation): valid keys, a type each, no key twice.
pub(super) fn indexes_from_proto(indexes: &[PayloadIndex]) -> Result<Vec<PayloadIndexSpec>> {
    let mut specs: Vec<PayloadIndexSpec> = Vec::with_capacity(indexes.len());
    for (position, index) in indexes.iter().enumerate() {
        let spec = spec_from_proto(&index.key, index.r#type).map_err(|error| {
            Error::InvalidArgument(format!("payload_indexes[{position}].{error}"))
        })?;
        if specs.iter().any(|declared| declared.key == spec.key) {
            return Err(Error::InvalidArgument(format!(
                "payload_indexes[{position}]: key {:?} is indexed twice",
                spec.key
            )));
        }
        specs.push(spec);
    }
    Ok(specs)
}

fn spec_from_proto(key: &str, kind: i32) -> Result<PayloadIndexSpec> {
    validate::payload_index_key(key)?;
    let kind = index_type_from_proto(kind)
        .map_err(|error| Error::InvalidArgument(format!("type: {}", error.message)))?;
    Ok(PayloadIndexSpec {
        key: key.to_string(),
        kind,
    })
}

impl Merger {
    /// Adds an index on `key`. Declaring the same key with the same type again is a no-op;
    /// with another type it is refused.
    pub(super) async fn add_payload_index(
        &self,
        request: CreatePayloadIndexRequest,
    ) -> Result<CreatePayloadIndexResponse> {
        let spec = spec_from_proto(&request.key, request.r#type)?;
        let record =
            catalog::update_collection(&*self.store, &self.schema, &request.collection, |record| {
                match record
                    .payload_indexes
                    .iter()
                    .find(|declared| declared.key == spec.key)
                {
                    Some(declared) if declared.kind == spec.kind => {}
                    Some(declared) => {
                        return Err(quiver_cluster::Error::InvalidArgument(format!(
                        "key {:?} already has a {} payload index; drop it first to index it as {}",
                        spec.key, declared.kind, spec.kind
                    )))
                    }
                    None => record.payload_indexes.push(spec.clone()),
                }
                Ok(())
            })
            .await?;
        tracing::info!(collection = %record.name, key = %spec.key, kind = %spec.kind, "payload index declared");
        Ok(CreatePayloadIndexResponse {
            payload_indexes: indexes_to_proto(&record.payload_indexes),
        })
    }

    /// Drops the index on `key`; `NOT_FOUND` when there is none.
    pub(super) async fn remove_payload_index(
        &self,
        request: DropPayloadIndexRequest,
    ) -> Result<DropPayloadIndexResponse> {
        validate::payload_index_key(&request.key)?;
        let key = request.key.clone();
        let record =
            catalog::update_collection(&*self.store, &self.schema, &request.collection, |record| {
                let before = record.payload_indexes.len();
                record
                    .payload_indexes
                    .retain(|declared| declared.key != key);
                if record.payload_indexes.len() == before {
                    return Err(quiver_cluster::Error::NotFound(format!(
                        "payload index on key {key:?} of collection {}",
                        record.name
                    )));
                }
                Ok(())
            })
            .await?;
        tracing::info!(collection = %record.name, key = %request.key, "payload index dropped");
        Ok(DropPayloadIndexResponse {
            payload_indexes: indexes_to_proto(&record.payload_indexes),
        })
    }
}
