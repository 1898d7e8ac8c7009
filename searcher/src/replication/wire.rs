//! Replication's types to and from their protobuf form.

use quiver_proto::v1::{LogRecord, Point, PullLogRequest};

use super::pull_server::PullRequest;
use crate::{
    point::PointData,
    storage::wal::{WalOp, WalRecord},
};

pub fn record_to_proto(record: &WalRecord) -> LogRecord {
    match &record.op {
        WalOp::Upsert(points) => LogRecord {
            seq: record.seq,
            epoch: record.epoch,
            upsert: points
                .iter()
                .map(|point| Point {
                    id: point.id.clone(),
                    vector: point.vector.clone(),
                    payload_json: point.payload.clone().unwrap_or_default(),
                })
                .collect(),
            ..Default::default()
        },
        WalOp::Delete(ids) => LogRecord {
            seq: record.seq,
            epoch: record.epoch,
            delete: ids.clone(),
            is_delete: true,
            ..Default::default()
        },
    }
}

pub fn record_from_proto(record: LogRecord) -> WalRecord {
    let op = if record.is_delete {
        WalOp::Delete(record.delete)
    } else {
        WalOp::Upsert(
            record
                .upsert
                .into_iter()
                .map(|point| PointData {
                    id: point.id,
                    vector: point.vector,
                    payload: (!point.payload_json.is_empty()).then_some(point.payload_json),
                })
                .collect(),
        )
    };
    WalRecord {
        seq: record.seq,
        epoch: record.epoch,
        op,
    }
}

pub fn pull_request_from_proto(request: PullLogRequest) -> PullRequest {
    PullRequest {
        collection: request.collection,
        shard: request.shard,
        searcher_id: request.searcher_id,
        epoch: request.epoch,
        after_seq: request.after_seq,
        last_epoch: request.last_epoch,
        max_wait_ms: request.max_wait_ms,
        max_records: request.max_records,
        recovery: request.recovery,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::wal::test_record;

    #[test]
    fn records_round_trip_through_the_wire_form() {
        let record = WalRecord {
            seq: 4,
            epoch: 2,
            op: WalOp::Upsert(vec![PointData {
                id: "a".into(),
                vector: vec![1.0, 2.0],
                payload: Some("{}".into()),
            }]),
        };
        assert_eq!(record_from_proto(record_to_proto(&record)), record);
        let delete = test_record(5);
        assert_eq!(record_from_proto(record_to_proto(&delete)), delete);
    }
}
