//! Request validation and the documented limits. Every request is checked whole before any
//! replica is called, so a bad element rejects the request with nothing written.

use std::collections::HashSet;

use quiver_cluster::model::CollectionRecord;
use quiver_index::validate_vector;
use quiver_proto::v1::{Point, Vector};

use crate::error::{Error, Result};

/// Largest k a search may ask for.
pub const MAX_K: u32 = 1024;
/// Most queries in one search request.
pub const MAX_QUERIES: usize = 1024;
/// Most points in one upsert, or ids in one delete or get.
pub const MAX_BATCH: usize = 10_000;
/// Longest point id, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Largest payload of one point, in bytes of JSON text.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;

pub fn batch_size(what: &str, count: usize) -> Result<()> {
    if count == 0 {
        return Err(Error::InvalidArgument(format!("no {what} given")));
    }
    if count > MAX_BATCH {
        return Err(Error::InvalidArgument(format!(
            "{count} {what} in one request; the limit is {MAX_BATCH}"
        )));
    }
    Ok(())
}

pub fn point_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::InvalidArgument("point id must not be empty".into()));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(Error::InvalidArgument(format!(
            "point id of {} bytes; the limit is {MAX_ID_BYTES}",
            id.len()
        )));
    }
    Ok(())
}

/// Ids of a delete or get: each valid, none repeated.
pub fn ids(ids: &[String]) -> Result<()> {
    batch_size("ids", ids.len())?;
    let mut seen = HashSet::with_capacity(ids.len());
    for id in ids {
        point_id(id)?;
        if !seen.insert(id.as_str()) {
            return Err(Error::InvalidArgument(format!("id {id:?} appears twice")));
        }
    }
    Ok(())
}

/// Checks an upsert batch and returns each point's payload normalised to compact JSON.
pub fn points(collection: &CollectionRecord, points: &[Point]) -> Result<Vec<Option<String>>> {
    batch_size("points", points.len())?;
    let mut seen = HashSet::with_capacity(points.len());
    let mut payloads = Vec::with_capacity(points.len());
    for (position, point) in points.iter().enumerate() {
        point_id(&point.id)
            .map_err(|error| Error::InvalidArgument(format!("point {position}: {error}")))?;
        if !seen.insert(point.id.as_str()) {
            return Err(Error::InvalidArgument(format!(
                "point id {:?} appears twice in one batch",
                point.id
            )));
        }
        vector(collection, &point.vector)
            .map_err(|error| Error::InvalidArgument(format!("point {:?}: {error}", point.id)))?;
        payloads.push(
            payload(&point.payload_json).map_err(|error| {
                Error::InvalidArgument(format!("point {:?}: {error}", point.id))
            })?,
        );
    }
    Ok(payloads)
}

pub fn vector(collection: &CollectionRecord, values: &[f32]) -> Result<()> {
    validate_vector(values, collection.dimension as usize, collection.metric)
        .map_err(|error| Error::InvalidArgument(error.to_string()))
}

/// An empty payload means none; anything else must be a JSON object.
pub fn payload(text: &str) -> Result<Option<String>> {
    if text.is_empty() {
        return Ok(None);
    }
    if text.len() > MAX_PAYLOAD_BYTES {
        return Err(Error::InvalidArgument(format!(
            "payload of {} bytes; the limit is {MAX_PAYLOAD_BYTES}",
            text.len()
        )));
    }
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|error| Error::InvalidArgument(format!("payload is not valid JSON: {error}")))?;
    if !value.is_object() {
        return Err(Error::InvalidArgument(
            "payload must be a JSON object, like {\"key\": \"value\"}".into(),
        ));
    }
    Ok(Some(value.to_string()))
}

/// A request's filter, parsed and checked against the limits and against the collection's
/// declared payload indexes (a test that contradicts an index's type is refused); `None`
/// when absent or empty. The error names the path in the filter.
pub fn filter(
    collection: &CollectionRecord,
    filter: Option<&quiver_proto::v1::Filter>,
) -> Result<Option<quiver_payload::Filter>> {
    let Some(filter) = filter else {
        return Ok(None);
    };
    let parsed = quiver_payload::proto::from_proto(filter)?;
    parsed.validate(&quiver_payload::PayloadSchema::from_specs(
        &collection.payload_indexes,
    ))?;
    Ok((!parsed.is_empty()).then_some(parsed))
}

/// A payload index key: a dotted path of non-empty steps, at most 256 bytes.
pub fn payload_index_key(key: &str) -> Result<()> {
    quiver_payload::validate_key("key", key)
        .map_err(|error| Error::InvalidArgument(format!("key: {}", error.message)))
}

/// Checks the per-query index overrides against the same bounds index specs have.
pub fn search_params(params: Option<&quiver_proto::v1::SearchParams>) -> Result<()> {
    let Some(params) = params else {
        return Ok(());
    };
    let max_ef = quiver_index::spec::MAX_EF as u32;
    if params.ef_search > max_ef {
        return Err(Error::InvalidArgument(format!(
            "params.ef_search must be at most {max_ef}, got {}",
            params.ef_search
        )));
    }
    let max_nprobe = quiver_index::spec::MAX_NLIST as u32;
    if params.nprobe > max_nprobe {
        return Err(Error::InvalidArgument(format!(
            "params.nprobe must be at most {max_nprobe}, got {}",
            params.nprobe
        )));
    }
    Ok(())
}

pub fn search(
    collection: &CollectionRecord,
    queries: &[Vector],
    k: u32,
    shards: &[u32],
) -> Result<()> {
    if k == 0 || k > MAX_K {
        return Err(Error::InvalidArgument(format!(
            "k must be between 1 and {MAX_K}, got {k}"
        )));
    }
    if queries.is_empty() {
        return Err(Error::InvalidArgument("no query vectors given".into()));
    }
    if queries.len() > MAX_QUERIES {
        return Err(Error::InvalidArgument(format!(
            "{} queries in one request; the limit is {MAX_QUERIES}",
            queries.len()
        )));
    }
    for (position, query) in queries.iter().enumerate() {
        vector(collection, &query.values)
            .map_err(|error| Error::InvalidArgument(format!("query {position}: {error}")))?;
    }
    let mut seen = HashSet::new();
    for shard in shards {
        if *shard >= collection.num_shards {
            return Err(Error::InvalidArgument(format!(
                "shard {shard} does not exist; collection {:?} has shards 0 to {}",
                collection.name,
                collection.num_shards - 1
            )));
        }
        if !seen.insert(*shard) {
            return Err(Error::InvalidArgument(format!(
                "shard {shard} listed twice"
            )));
        }
    }
    Ok(())
}

/// The request's `min_coverage`: absent means 1.0 (every shard, or an error); otherwise in
/// (0, 1].
pub fn min_coverage(requested: Option<f32>) -> Result<f32> {
    let Some(value) = requested else {
        return Ok(1.0);
    };
    if !(value > 0.0 && value <= 1.0) {
        return Err(Error::InvalidArgument(format!(
            "min_coverage must be above 0 and at most 1, got {value}"
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quiver_index::Metric;

    fn collection(metric: Metric) -> CollectionRecord {
        CollectionRecord {
            name: "c".into(),
            dimension: 2,
            metric,
            num_shards: 4,
            replication_factor: 1,
            index_spec: "flat".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            payload_indexes: Vec::new(),
        }
    }

    fn point(id: &str, vector: Vec<f32>, payload: &str) -> Point {
        Point {
            id: id.into(),
            vector,
            payload_json: payload.into(),
        }
    }

    #[test]
    fn payload_must_be_an_object_and_is_compacted() {
        assert_eq!(payload("").unwrap(), None);
        assert_eq!(
            payload("{ \"a\" : [1, 2] }").unwrap().as_deref(),
            Some(r#"{"a":[1,2]}"#)
        );
        for bad in ["[1]", "3", "\"text\"", "{", "null"] {
            assert!(payload(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn a_bad_point_anywhere_rejects_the_batch() {
        let record = collection(Metric::L2);
        assert!(points(&record, &[point("a", vec![1.0, 2.0], "")]).is_ok());
        let cases = [
            vec![
                point("a", vec![1.0, 2.0], ""),
                point("", vec![1.0, 2.0], ""),
            ],
            vec![
                point("a", vec![1.0, 2.0], ""),
                point("a", vec![1.0, 2.0], ""),
            ],
            vec![point("a", vec![1.0], "")],
            vec![point("a", vec![f32::NAN, 1.0], "")],
            vec![point("a", vec![f32::NEG_INFINITY, 1.0], "")],
            vec![point("a", vec![1.0, 1.0], "[1]")],
            vec![point(&"x".repeat(MAX_ID_BYTES + 1), vec![1.0, 1.0], "")],
            vec![],
        ];
        for case in cases {
            assert!(matches!(
                points(&record, &case),
                Err(Error::InvalidArgument(_))
            ));
        }
        let too_many: Vec<Point> = (0..=MAX_BATCH)
            .map(|index| point(&index.to_string(), vec![1.0, 1.0], ""))
            .collect();
        assert!(points(&record, &too_many).is_err());
    }

    #[test]
    fn min_coverage_defaults_to_every_shard_and_is_bounded() {
        assert_eq!(min_coverage(None).unwrap(), 1.0);
        assert_eq!(min_coverage(Some(0.5)).unwrap(), 0.5);
        assert_eq!(min_coverage(Some(1.0)).unwrap(), 1.0);
        for bad in [0.0, -0.5, 1.01, f32::NAN, f32::INFINITY] {
            assert!(
                matches!(min_coverage(Some(bad)), Err(Error::InvalidArgument(_))),
                "{bad} must be refused"
            );
        }
    }

    #[test]
    fn search_limits() {
        let record = collection(Metric::Cosine);
        let query = || Vector {
            values: vec![1.0, 0.0],
        };
        assert!(search(&record, &[query()], 10, &[0, 3]).is_ok());
        assert!(search(&record, &[query()], 0, &[]).is_err());
        assert!(search(&record, &[query()], MAX_K + 1, &[]).is_err());
        assert!(search(&record, &[], 10, &[]).is_err());
        assert!(search(&record, &[query()], 10, &[4]).is_err());
        assert!(search(&record, &[query()], 10, &[1, 1]).is_err());
        let zero = Vector {
            values: vec![0.0, 0.0],
        };
        assert!(search(&record, &[zero], 10, &[]).is_err());
    }
}
