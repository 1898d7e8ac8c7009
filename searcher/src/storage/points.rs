//! `points.bin`: the half of a snapshot the index does not hold — every point's user id and
//! payload by internal id, and the sequence number (and its epoch) the snapshot covers.
//!
//! Layout, sealed with a CRC-32 of everything before it ([`codec::seal`]):
//! `magic (8) | applied seq u64 | last epoch u64 | next internal id u64 | count u64` then per
//! point `internal id u64 | id (u32 length, bytes) | 0, or 1 and payload (u32 length, bytes)`.
//! Files written before records carried epochs have the magic `QVPTS001` and no epoch; they
//! read as epoch 0.

use std::path::Path;

use super::{
    codec::{self, Cursor},
    fs::write_file_durably,
    IoContext, Result, StorageError,
};

const POINTS_MAGIC: &[u8; 8] = b"QVPTS002";
/// Snapshots written before records carried epochs; read as epoch 0.
const POINTS_MAGIC_V1: &[u8; 8] = b"QVPTS001";

/// What a snapshot covers, besides its points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PointsHeader {
    pub applied_seq: u64,
    /// The epoch of the record `applied_seq`.
    pub last_epoch: u64,
    /// The internal id the next new point gets.
    pub next_internal: u64,
}

/// One stored point: `(internal id, user id, payload)`.
pub type PointEntry<'a> = (u64, &'a str, Option<&'a str>);

/// Writes `points.bin` at `path` and fsyncs it (the caller renames the snapshot directory
/// holding it into place).
pub fn write_points_file<'a>(
    path: &Path,
    header: &PointsHeader,
    points: impl ExactSizeIterator<Item = PointEntry<'a>>,
) -> Result<()> {
    let mut out = Vec::with_capacity(32 + points.len() * 32);
    out.extend_from_slice(POINTS_MAGIC);
    codec::put_u64(&mut out, header.applied_seq);
    codec::put_u64(&mut out, header.last_epoch);
    codec::put_u64(&mut out, header.next_internal);
    codec::put_u64(&mut out, points.len() as u64);
    for (internal, id, payload) in points {
        codec::put_u64(&mut out, internal);
        codec::put_bytes(&mut out, id.as_bytes());
        match payload {
            Some(payload) => {
                out.push(1);
                codec::put_bytes(&mut out, payload.as_bytes());
            }
            None => out.push(0),
        }
    }
    codec::seal(&mut out);
    write_file_durably(path, &out)
}

/// Reads `points.bin` at `path` (either version), handing every point to `visit` in file
/// order; any damage is [`StorageError::Corrupt`].
pub fn read_points_file(
    path: &Path,
    mut visit: impl FnMut(u64, String, Option<String>),
) -> Result<PointsHeader> {
    let bytes = std::fs::read(path).at(path)?;
    let corrupt = |offset: usize, reason: &str| StorageError::corrupt(path, offset as u64, reason);
    if bytes.len() < POINTS_MAGIC.len() + codec::SEAL_BYTES {
        return Err(corrupt(0, "missing header"));
    }
    let has_epoch = match &bytes[..POINTS_MAGIC.len()] {
        magic if magic == POINTS_MAGIC => true,
        magic if magic == POINTS_MAGIC_V1 => false,
        _ => return Err(corrupt(0, "missing header")),
    };
    let Some(body) = codec::unseal(&bytes) else {
        return Err(corrupt(
            bytes.len() - codec::SEAL_BYTES,
            "checksum mismatch",
        ));
    };
    let mut cursor = Cursor::new(&body[POINTS_MAGIC.len()..]);
    let offset = |cursor: &Cursor| body.len() - cursor.remaining();
    let truncated = |cursor: &Cursor, reason: &str| corrupt(offset(cursor), reason);
    let applied_seq = cursor
        .u64()
        .ok_or_else(|| truncated(&cursor, "truncated"))?;
    let last_epoch = if has_epoch {
        cursor
            .u64()
            .ok_or_else(|| truncated(&cursor, "truncated"))?
    } else {
        0
    };
    let next_internal = cursor
        .u64()
        .ok_or_else(|| truncated(&cursor, "truncated"))?;
    let count = cursor
        .u64()
        .ok_or_else(|| truncated(&cursor, "truncated"))?;
    for _ in 0..count {
        let internal = cursor
            .u64()
            .ok_or_else(|| truncated(&cursor, "truncated"))?;
        let id = cursor
            .string()
            .ok_or_else(|| truncated(&cursor, "truncated id"))?;
        let payload = match cursor.u8().ok_or_else(|| truncated(&cursor, "truncated"))? {
            0 => None,
            1 => Some(
                cursor
                    .string()
                    .ok_or_else(|| truncated(&cursor, "truncated payload"))?,
            ),
            _ => return Err(truncated(&cursor, "bad payload flag")),
        };
        visit(internal, id, payload);
    }
    Ok(PointsHeader {
        applied_seq,
        last_epoch,
        next_internal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    type OwnedPoint = (u64, String, Option<String>);

    fn read_all(path: &Path) -> Result<(PointsHeader, Vec<OwnedPoint>)> {
        let mut points = Vec::new();
        let header = read_points_file(path, |internal, id, payload| {
            points.push((internal, id, payload))
        })?;
        Ok((header, points))
    }

    #[test]
    fn points_round_trip_and_damage_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("points.bin");
        let header = PointsHeader {
            applied_seq: 12,
            last_epoch: 3,
            next_internal: 9,
        };
        let points = [(4, "a", Some(r#"{"n":1}"#)), (7, "ü", None)];
        write_points_file(&path, &header, points.iter().copied()).unwrap();
        let (read_header, read_points) = read_all(&path).unwrap();
        assert_eq!(read_header, header);
        assert_eq!(
            read_points,
            vec![
                (4, "a".to_string(), Some(r#"{"n":1}"#.to_string())),
                (7, "ü".to_string(), None)
            ]
        );

        let mut bytes = std::fs::read(&path).unwrap();
        bytes[20] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let error = read_all(&path).unwrap_err();
        assert!(matches!(error, StorageError::Corrupt { .. }), "{error}");
        assert!(error.to_string().contains("checksum mismatch"), "{error}");
        std::fs::write(&path, b"QVPTS0").unwrap();
        assert!(read_all(&path)
            .unwrap_err()
            .to_string()
            .contains("missing header"));
    }

    #[test]
    fn a_first_version_file_reads_as_epoch_zero() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("points.bin");
        let mut bytes = POINTS_MAGIC_V1.to_vec();
        for value in [5u64, 2, 1, 1] {
            codec::put_u64(&mut bytes, value);
        }
        codec::put_bytes(&mut bytes, b"x");
        bytes.push(0);
        codec::seal(&mut bytes);
        std::fs::write(&path, &bytes).unwrap();
        let (header, points) = read_all(&path).unwrap();
        assert_eq!(
            header,
            PointsHeader {
                applied_seq: 5,
                last_epoch: 0,
                next_internal: 2
            }
        );
        assert_eq!(points, vec![(1, "x".to_string(), None)]);
    }
}
