//! [`WalRecord`] and its codec: a record is one frame ([`codec::frame`]) whose payload is
//! `seq u64 | epoch u64 | op u8` and then, for an upsert, `count u32` and per point
//! `id | dim u32 | f32 × dim | 0, or 1 and payload`, for a delete `count u32` and the ids
//! (strings as `u32` length and UTF-8). The single-file `wal.log` of older versions has no
//! epoch ([`Format::Legacy`]).

use std::io::{self, Read};

use crate::{
    point::PointData,
    storage::{
        codec::{self, Cursor, FRAME_HEADER_BYTES},
        Result, StorageError,
    },
};

const OP_UPSERT: u8 = 1;
const OP_DELETE: u8 = 2;
/// A frame longer than this is treated as corruption rather than allocated.
pub(super) const MAX_RECORD_BYTES: u32 = 1 << 30;

#[derive(Debug, Clone, PartialEq)]
pub enum WalOp {
    Upsert(Vec<PointData>),
    Delete(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct WalRecord {
    /// Sequence numbers start at 1 and grow by one per acknowledged write of the replica.
    pub seq: u64,
    /// The primary epoch the record was written in; 0 for records from before epochs.
    pub epoch: u64,
    pub op: WalOp,
}

/// What [`read_frame`] found.
pub(super) enum Frame {
    End,
    Record {
        record: WalRecord,
        frame_bytes: u64,
    },
    /// Torn or corrupt; `frame_end` is where the frame claims to end.
    Bad {
        frame_end: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    /// The single-file `wal.log`: no epoch in the payload.
    Legacy,
    Current,
}

/// Reads the frame at `offset` of a file whose intact bytes end at `limit`; never reads
/// past `limit`. Only I/O fails; damage is [`Frame::Bad`], for the caller to judge.
pub(super) fn read_frame(
    reader: &mut impl Read,
    offset: u64,
    limit: u64,
    format: Format,
) -> io::Result<Frame> {
    if offset >= limit {
        return Ok(Frame::End);
    }
    if limit - offset < FRAME_HEADER_BYTES {
        return Ok(Frame::Bad {
            frame_end: offset + FRAME_HEADER_BYTES,
        });
    }
    let mut header = [0u8; FRAME_HEADER_BYTES as usize];
    reader.read_exact(&mut header)?;
    let (payload_len, expected_crc) = codec::frame_header(&header);
    let frame_bytes = FRAME_HEADER_BYTES + u64::from(payload_len);
    let frame_end = offset + frame_bytes;
    if payload_len > MAX_RECORD_BYTES || frame_end > limit {
        return Ok(Frame::Bad { frame_end });
    }
    let mut payload = vec![0u8; payload_len as usize];
    reader.read_exact(&mut payload)?;
    if !codec::payload_matches(&payload, expected_crc) {
        return Ok(Frame::Bad { frame_end });
    }
    Ok(match decode_payload(&payload, format) {
        Some(record) => Frame::Record {
            record,
            frame_bytes,
        },
        None => Frame::Bad { frame_end },
    })
}

/// The record as one frame; a record over [`MAX_RECORD_BYTES`] is refused.
pub(super) fn encode_frame(record: &WalRecord) -> Result<Vec<u8>> {
    let payload = encode_payload(record);
    if u32::try_from(payload.len()).map_or(true, |len| len > MAX_RECORD_BYTES) {
        // Written anyway, it would read back as corruption and stop the replica opening.
        return Err(StorageError::InvalidInput(format!(
            "write-ahead log record of {} bytes is over the {MAX_RECORD_BYTES}-byte limit",
            payload.len()
        )));
    }
    Ok(codec::frame(&payload))
}

pub(super) fn encode_payload(record: &WalRecord) -> Vec<u8> {
    let mut out = Vec::new();
    codec::put_u64(&mut out, record.seq);
    codec::put_u64(&mut out, record.epoch);
    match &record.op {
        WalOp::Upsert(points) => {
            out.push(OP_UPSERT);
            codec::put_u32(&mut out, points.len());
            for point in points {
                codec::put_bytes(&mut out, point.id.as_bytes());
                codec::put_u32(&mut out, point.vector.len());
                for value in &point.vector {
                    out.extend_from_slice(&value.to_le_bytes());
                }
                match &point.payload {
                    Some(payload) => {
                        out.push(1);
                        codec::put_bytes(&mut out, payload.as_bytes());
                    }
                    None => out.push(0),
                }
            }
        }
        WalOp::Delete(ids) => {
            out.push(OP_DELETE);
            codec::put_u32(&mut out, ids.len());
            for id in ids {
                codec::put_bytes(&mut out, id.as_bytes());
            }
        }
    }
    out
}

/// The record in `payload`; `None` for anything but exactly one well-formed record.
fn decode_payload(payload: &[u8], format: Format) -> Option<WalRecord> {
    let mut cursor = Cursor::new(payload);
    let seq = cursor.u64()?;
    let epoch = match format {
        Format::Legacy => 0,
        Format::Current => cursor.u64()?,
    };
    let op = match cursor.u8()? {
        OP_UPSERT => WalOp::Upsert(decode_points(&mut cursor)?),
        OP_DELETE => {
            let count = cursor.u32()? as usize;
            let mut ids = Vec::with_capacity(count.min(65_536));
            for _ in 0..count {
                ids.push(cursor.string()?);
            }
            WalOp::Delete(ids)
        }
        _ => return None,
    };
    if cursor.remaining() != 0 {
        return None;
    }
    Some(WalRecord { seq, epoch, op })
}

fn decode_points(cursor: &mut Cursor<'_>) -> Option<Vec<PointData>> {
    let count = cursor.u32()? as usize;
    let mut points = Vec::with_capacity(count.min(65_536));
    for _ in 0..count {
        let id = cursor.string()?;
        let dim = cursor.u32()? as usize;
        let raw = cursor.take(dim.checked_mul(4)?)?;
        let vector = raw
            .chunks_exact(4)
            .map(|chunk| f32::from_le_bytes(chunk.try_into().expect("4 bytes")))
            .collect();
        let payload = match cursor.u8()? {
            0 => None,
            1 => Some(cursor.string()?),
            _ => return None,
        };
        points.push(PointData {
            id,
            vector,
            payload,
        });
    }
    Some(points)
}

/// A small record at `seq` for tests of the log's consumers (a delete of one id, `p<seq>`).
#[cfg(test)]
pub(crate) fn test_record(seq: u64) -> WalRecord {
    WalRecord {
        seq,
        epoch: 1,
        op: WalOp::Delete(vec![format!("p{seq}")]),
    }
}
