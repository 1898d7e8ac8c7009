//! The write-ahead log of one replica.
//!
//! A write is acknowledged only after its record is in the log and the log is fsynced, so a
//! Searcher killed at any moment replays every acknowledged write on restart. Each record is
//! framed as `[payload length u32][crc32 of payload u32][payload]`, little-endian. A crash
//! in the middle of an append leaves a torn last record: when the first bad frame is the last
//! thing in the file, replay truncates it, which is safe because that write was never
//! acknowledged. A bad frame with more data behind it is corruption, not a torn append:
//! truncating there would destroy acknowledged writes, so the log refuses to open instead.

use std::{
    fs::{File, OpenOptions},
    io::{self, BufReader, Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
};

use crate::point::PointData;

const OP_UPSERT: u8 = 1;
const OP_DELETE: u8 = 2;
/// A frame longer than this is treated as corruption rather than allocated.
const MAX_RECORD_BYTES: u32 = 1 << 30;

#[derive(Debug, Clone, PartialEq)]
pub enum WalOp {
    Upsert(Vec<PointData>),
    Delete(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct WalRecord {
    /// Sequence numbers start at 1 and grow by one per acknowledged write of the replica.
    pub seq: u64,
    pub op: WalOp,
}

pub struct Wal {
    file: File,
    path: PathBuf,
    len_bytes: u64,
}

impl Wal {
    /// Opens (or creates) the log at `path` and returns every intact record in order. Fails
    /// with `InvalidData` when a record in the middle of the log is corrupt.
    pub fn open(path: &Path) -> io::Result<(Wal, Vec<WalRecord>)> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let file_len = file.metadata()?.len();
        let (records, intact_len) = read_records(&mut file, file_len)?;
        if intact_len < file_len {
            tracing::warn!(
                path = %path.display(),
                intact_bytes = intact_len,
                dropped_bytes = file_len - intact_len,
                "truncating torn tail of write-ahead log"
            );
            file.set_len(intact_len)?;
            file.sync_all()?;
        }
        file.seek(SeekFrom::Start(intact_len))?;
        Ok((
            Wal {
                file,
                path: path.to_path_buf(),
                len_bytes: intact_len,
            },
            records,
        ))
    }

    /// Appends one record and makes it durable before returning.
    pub fn append(&mut self, record: &WalRecord) -> io::Result<()> {
        let payload = encode_record(record);
        let mut frame = Vec::with_capacity(payload.len() + 8);
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        frame.extend_from_slice(&payload);
        if let Err(error) = self
            .file
            .write_all(&frame)
            .and_then(|()| self.file.sync_data())
        {
            // Cut off whatever part of the frame reached the file so the next append does not
            // land behind garbage; replay would stop at the garbage and lose later writes.
            let _ = self.file.set_len(self.len_bytes);
            let _ = self.file.seek(SeekFrom::Start(self.len_bytes));
            return Err(error);
        }
        self.len_bytes += frame.len() as u64;
        Ok(())
    }

    /// Empties the log once a snapshot covers everything in it.
    pub fn reset(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.file.sync_all()?;
        self.len_bytes = 0;
        Ok(())
    }

    pub fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn read_records(file: &mut File, file_len: u64) -> io::Result<(Vec<WalRecord>, u64)> {
    file.seek(SeekFrom::Start(0))?;
    let mut reader = BufReader::new(file);
    let mut records = Vec::new();
    let mut intact_len = 0u64;
    loop {
        let mut header = [0u8; 8];
        if !read_full(&mut reader, &mut header)? {
            break;
        }
        let payload_len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
        let expected_crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
        let frame_end = intact_len + 8 + u64::from(payload_len);
        let mut payload = Vec::new();
        let intact = payload_len <= MAX_RECORD_BYTES && {
            payload.resize(payload_len as usize, 0);
            read_full(&mut reader, &mut payload)?
        };
        let record = if intact && crc32fast::hash(&payload) == expected_crc {
            decode_record(&payload)
        } else {
            None
        };
        match record {
            Some(record) => {
                records.push(record);
                intact_len = frame_end;
            }
            // Only an append cut short leaves a bad frame that reaches the end of the file.
            None if frame_end >= file_len => break,
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "record at byte {intact_len} is corrupt and {} bytes follow it; refusing to truncate acknowledged writes",
                        file_len.saturating_sub(frame_end)
                    ),
                ))
            }
        }
    }
    Ok((records, intact_len))
}

/// Fills `buffer` completely; false when the input ends first (a torn record).
fn read_full(reader: &mut impl Read, buffer: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => return Ok(false),
            Ok(read) => filled += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(true)
}

fn encode_record(record: &WalRecord) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&record.seq.to_le_bytes());
    match &record.op {
        WalOp::Upsert(points) => {
            out.push(OP_UPSERT);
            put_u32(&mut out, points.len());
            for point in points {
                put_bytes(&mut out, point.id.as_bytes());
                put_u32(&mut out, point.vector.len());
                for value in &point.vector {
                    out.extend_from_slice(&value.to_le_bytes());
                }
                match &point.payload {
                    Some(payload) => {
                        out.push(1);
                        put_bytes(&mut out, payload.as_bytes());
                    }
                    None => out.push(0),
                }
            }
        }
        WalOp::Delete(ids) => {
            out.push(OP_DELETE);
            put_u32(&mut out, ids.len());
            for id in ids {
                put_bytes(&mut out, id.as_bytes());
            }
        }
    }
    out
}

fn decode_record(payload: &[u8]) -> Option<WalRecord> {
    let mut cursor = Cursor { bytes: payload };
    let seq = cursor.u64()?;
    let op = match cursor.u8()? {
        OP_UPSERT => {
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
            WalOp::Upsert(points)
        }
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
    if !cursor.bytes.is_empty() {
        return None;
    }
    Some(WalRecord { seq, op })
}

fn put_u32(out: &mut Vec<u8>, value: usize) {
    let value = u32::try_from(value).expect("lengths are bounded by request limits");
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u32(out, bytes.len());
    out.extend_from_slice(bytes);
}

/// A bounds-checked reader over a byte slice: every accessor returns None past the end, so
/// a corrupt record can never panic the replay.
pub(crate) struct Cursor<'a> {
    pub(crate) bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub(crate) fn take(&mut self, count: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < count {
            return None;
        }
        let (head, tail) = self.bytes.split_at(count);
        self.bytes = tail;
        Some(head)
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    pub(crate) fn string(&mut self) -> Option<String> {
        let len = self.u32()? as usize;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upsert(seq: u64, id: &str) -> WalRecord {
        WalRecord {
            seq,
            op: WalOp::Upsert(vec![PointData {
                id: id.to_string(),
                vector: vec![1.0, -2.5, 3.25],
                payload: Some(r#"{"a":1}"#.to_string()),
            }]),
        }
    }

    #[test]
    fn records_survive_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.log");
        let written = vec![
            upsert(1, "a"),
            WalRecord {
                seq: 2,
                op: WalOp::Delete(vec!["a".into(), "b".into()]),
            },
            upsert(3, "ü-unicode"),
        ];
        {
            let (mut wal, existing) = Wal::open(&path).unwrap();
            assert!(existing.is_empty());
            for record in &written {
                wal.append(record).unwrap();
            }
        }
        let (_wal, replayed) = Wal::open(&path).unwrap();
        assert_eq!(replayed, written);
    }

    #[test]
    fn torn_tail_is_truncated_and_later_appends_replay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.log");
        {
            let (mut wal, _) = Wal::open(&path).unwrap();
            wal.append(&upsert(1, "a")).unwrap();
            wal.append(&upsert(2, "b")).unwrap();
        }
        let full_len = std::fs::metadata(&path).unwrap().len();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(full_len - 5).unwrap();
        drop(file);

        let (mut wal, replayed) = Wal::open(&path).unwrap();
        assert_eq!(replayed, vec![upsert(1, "a")]);
        wal.append(&upsert(2, "c")).unwrap();
        drop(wal);
        let (_wal, replayed) = Wal::open(&path).unwrap();
        assert_eq!(replayed, vec![upsert(1, "a"), upsert(2, "c")]);
    }

    #[test]
    fn corrupt_last_record_is_dropped_as_a_torn_append() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.log");
        {
            let (mut wal, _) = Wal::open(&path).unwrap();
            wal.append(&upsert(1, "a")).unwrap();
            wal.append(&upsert(2, "b")).unwrap();
        }
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 0xFF;
        std::fs::write(&path, &bytes).unwrap();
        let (_wal, replayed) = Wal::open(&path).unwrap();
        assert_eq!(replayed, vec![upsert(1, "a")]);
    }

    #[test]
    fn corruption_in_the_middle_refuses_to_open_and_keeps_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.log");
        {
            let (mut wal, _) = Wal::open(&path).unwrap();
            for seq in 1..=3 {
                wal.append(&upsert(seq, "a")).unwrap();
            }
        }
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[12] ^= 0xFF;
        std::fs::write(&path, &bytes).unwrap();
        let error = Wal::open(&path)
            .err()
            .expect("a corrupt middle record must not open");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "nothing was truncated"
        );
    }

    #[test]
    fn reset_empties_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.log");
        let (mut wal, _) = Wal::open(&path).unwrap();
        wal.append(&upsert(1, "a")).unwrap();
        assert!(wal.len_bytes() > 0);
        wal.reset().unwrap();
        wal.append(&upsert(2, "b")).unwrap();
        drop(wal);
        let (_wal, replayed) = Wal::open(&path).unwrap();
        assert_eq!(replayed, vec![upsert(2, "b")]);
    }
}
