//! The single-file `wal.log` replicas kept before segments, next to the segment directory:
//! [`super::Wal::open`] converts it into one segment (epoch 0 for every record) and then
//! deletes it.

use std::{
    fs::File,
    io::BufReader,
    path::{Path, PathBuf},
};

use super::{
    record::{encode_frame, read_frame, Format, Frame, WalRecord},
    scan::{corruption, only_zeros_after},
    segment::write_segment_file,
};
use crate::storage::{fs::sync_dir, IoContext, Result, StorageError};

pub(super) const LEGACY_LOG_NAME: &str = "wal.log";

/// The `wal.log` beside the segment directory `dir`, if there is one.
pub(super) fn legacy_log_path(dir: &Path) -> Option<PathBuf> {
    let parent = dir.parent()?;
    Some(parent.join(LEGACY_LOG_NAME)).filter(|path| path.is_file())
}

/// Reads the records of a single-file log of the old format; a torn tail is dropped (the file
/// is deleted once converted), corruption anywhere else refuses.
pub(super) fn read_legacy_log(path: &Path) -> Result<Vec<WalRecord>> {
    let file = File::open(path).at(path)?;
    let file_len = file.metadata().at(path)?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut records: Vec<WalRecord> = Vec::new();
    let mut offset = 0u64;
    loop {
        let intact_through = records.last().map_or(0, |record| record.seq);
        match read_frame(&mut reader, offset, file_len, Format::Legacy).at(path)? {
            Frame::End => return Ok(records),
            Frame::Record {
                record,
                frame_bytes,
            } => {
                let in_order = match records.last() {
                    Some(previous) => record.seq == previous.seq + 1,
                    None => record.seq >= 1,
                };
                if !in_order {
                    return Err(corruption(
                        path,
                        offset,
                        intact_through,
                        format!("record has seq {} out of order", record.seq),
                    ));
                }
                offset += frame_bytes;
                records.push(record);
            }
            Frame::Bad { frame_end } => {
                if only_zeros_after(path, frame_end, file_len)? {
                    tracing::warn!(
                        path = %path.display(),
                        intact_bytes = offset,
                        dropped_bytes = file_len - offset,
                        "dropping torn tail of the single-file write-ahead log"
                    );
                    return Ok(records);
                }
                return Err(corruption(
                    path,
                    offset,
                    intact_through,
                    format!("corrupt record with {} bytes behind it", file_len - offset),
                ));
            }
        }
    }
}

/// Writes the old log's records (epoch 0) as one durable segment.
pub(super) fn convert_legacy_log(dir: &Path, records: &[WalRecord]) -> Result<()> {
    let Some(first) = records.first() else {
        return Ok(());
    };
    let mut body = Vec::new();
    for record in records {
        body.extend_from_slice(&encode_frame(record)?);
    }
    write_segment_file(dir, 0, first.seq, &body)?;
    sync_dir(dir)
}

/// Only a conversion cut short leaves both logs; anything else (say, an older binary run
/// again on this directory) would make deleting `wal.log` lose writes, so a `wal.log` that
/// goes past where the segments (or the snapshot, `after_seq`) end refuses the open.
pub(super) fn check_not_ahead(
    legacy_path: &Path,
    legacy_records: &[WalRecord],
    dir: &Path,
    log_last_seq: u64,
    after_seq: u64,
) -> Result<()> {
    let Some(legacy_last) = legacy_records.last() else {
        return Ok(());
    };
    if legacy_last.seq <= log_last_seq.max(after_seq) {
        return Ok(());
    }
    Err(StorageError::corrupt(
        legacy_path,
        0,
        format!(
            "holds records up to seq {} but the segmented log in {} ends at seq \
             {log_last_seq}; refusing to delete it",
            legacy_last.seq,
            dir.display()
        ),
    ))
}
