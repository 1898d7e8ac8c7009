//! Reading the segments back at open: which records there are, where a torn append ends
//! the log, and what is corruption.
//!
//! - A crash in the middle of an append leaves a torn last record. When the first bad frame
//!   is the last thing in the last segment (or only zeros follow it, as an extended but never
//!   written file region reads after a power loss), it is torn: that write was never
//!   acknowledged, and open truncates it.
//! - A bad frame with data behind it, or in any segment but the last (a segment is synced
//!   before the next one is created), is corruption, not a torn append: truncating there
//!   would destroy acknowledged writes and skipping it would apply later writes without it,
//!   so the log refuses to open.
//! - Records are numbered without gaps across segments; a gap or disorder is corruption too.
//! - Segments of an older generation than the newest are the leftovers of a reset cut short
//!   by a crash: listed as obsolete, for open to remove.

use std::{
    fmt,
    fs::File,
    io::{BufReader, Read, Seek, SeekFrom},
    path::{Path, PathBuf},
};

use super::{
    record::{read_frame, Format, Frame, WalRecord},
    segment::{read_segment_header, Segment, SEGMENT_HEADER_BYTES},
};
use crate::storage::{IoContext, Result, StorageError};

/// What a scan of the segment directory found.
pub(super) struct Scan {
    pub(super) generation: u64,
    /// The segments of the newest generation, oldest first, checked contiguous.
    pub(super) segments: Vec<Segment>,
    /// Segments of older generations.
    pub(super) obsolete: Vec<PathBuf>,
    /// Records with seq > after_seq.
    pub(super) records: Vec<WalRecord>,
    /// The last segment's file length when a torn append follows its intact frames.
    pub(super) torn_tail_file_len: Option<u64>,
}

pub(super) fn scan_segments(listing: &[(u64, PathBuf)], after_seq: u64) -> Result<Scan> {
    let mut headers = Vec::with_capacity(listing.len());
    for (name_seq, path) in listing {
        headers.push(read_segment_header(path, *name_seq)?);
    }
    let generation = headers
        .iter()
        .filter_map(|header| header.as_ref().ok())
        .map(|&(generation, _)| generation)
        .max()
        .unwrap_or(0);
    let last_current = headers
        .iter()
        .rposition(|header| matches!(header, Ok((found, _)) if *found == generation));
    let mut scan = Scan {
        generation,
        segments: Vec::new(),
        obsolete: Vec::new(),
        records: Vec::new(),
        torn_tail_file_len: None,
    };
    for (position, ((name_seq, path), header)) in listing.iter().zip(headers).enumerate() {
        let intact_through = match scan.segments.last() {
            Some(previous) => previous.next_seq - 1,
            None => name_seq.saturating_sub(1),
        };
        let first_seq = match header {
            Ok((found, _)) if found < generation => {
                scan.obsolete.push(path.clone());
                continue;
            }
            Ok((_, first_seq)) => first_seq,
            // A segment whose header cannot be read may or may not be obsolete: refuse.
            Err(reason) => return Err(corruption(path, 0, intact_through, reason)),
        };
        if let Some(previous) = scan.segments.last() {
            if first_seq != previous.next_seq {
                return Err(corruption(
                    path,
                    0,
                    intact_through,
                    format!(
                        "segment starts at seq {first_seq} but the one before it ends at seq \
                         {intact_through}"
                    ),
                ));
            }
        }
        let is_last = Some(position) == last_current;
        let (segment, torn) = scan_segment(
            path.clone(),
            first_seq,
            is_last,
            after_seq,
            &mut scan.records,
        )?;
        scan.segments.push(segment);
        if torn.is_some() {
            scan.torn_tail_file_len = torn;
        }
    }
    Ok(scan)
}

/// Reads one segment's frames; returns it and, when a torn append ends it, its file length.
fn scan_segment(
    path: PathBuf,
    first_seq: u64,
    is_last: bool,
    after_seq: u64,
    records: &mut Vec<WalRecord>,
) -> Result<(Segment, Option<u64>)> {
    let mut file = File::open(&path).at(&path)?;
    let file_len = file.metadata().at(&path)?.len();
    file.seek(SeekFrom::Start(SEGMENT_HEADER_BYTES)).at(&path)?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut segment = Segment::empty(path, first_seq);
    loop {
        let offset = segment.len_bytes;
        let frame = read_frame(&mut reader, offset, file_len, Format::Current).at(&segment.path)?;
        match frame {
            Frame::End => return Ok((segment, None)),
            Frame::Record {
                record,
                frame_bytes,
            } => {
                if record.seq != segment.next_seq {
                    return Err(corruption(
                        &segment.path,
                        offset,
                        segment.next_seq - 1,
                        format!(
                            "record has seq {} where {} belongs",
                            record.seq, segment.next_seq
                        ),
                    ));
                }
                segment.note_record(record.seq, offset, frame_bytes);
                if record.seq > after_seq {
                    records.push(record);
                }
            }
            Frame::Bad { frame_end } => {
                if is_last && only_zeros_after(&segment.path, frame_end, file_len)? {
                    return Ok((segment, Some(file_len)));
                }
                let reason = format!(
                    "corrupt record with {} bytes behind it{}",
                    file_len - offset,
                    if is_last {
                        ""
                    } else {
                        " in a segment a newer one follows"
                    }
                );
                return Err(corruption(
                    &segment.path,
                    offset,
                    segment.next_seq - 1,
                    reason,
                ));
            }
        }
    }
}

/// Whether a bad frame ending at `frame_end` is a torn append: nothing but zeros (an
/// extended but never written region, as a power loss can leave) lies behind it. A frame
/// that claims to reach past the end is torn as well.
pub(super) fn only_zeros_after(path: &Path, frame_end: u64, file_len: u64) -> Result<bool> {
    if frame_end >= file_len {
        return Ok(true);
    }
    let mut file = File::open(path).at(path)?;
    file.seek(SeekFrom::Start(frame_end)).at(path)?;
    let mut remaining = file_len - frame_end;
    let mut buffer = vec![0u8; 64 << 10];
    while remaining > 0 {
        let chunk = remaining.min(buffer.len() as u64) as usize;
        file.read_exact(&mut buffer[..chunk]).at(path)?;
        if buffer[..chunk].iter().any(|&byte| byte != 0) {
            return Ok(false);
        }
        remaining -= chunk as u64;
    }
    Ok(true)
}

/// Corruption at byte `offset` of the log file `path`, which is intact through
/// `intact_through_seq`.
pub(super) fn corruption(
    path: &Path,
    offset: u64,
    intact_through_seq: u64,
    what: impl fmt::Display,
) -> StorageError {
    StorageError::corrupt(
        path,
        offset,
        format!(
            "{what} at byte {offset}; the log is intact through seq {intact_through_seq}; \
             refusing to open rather than skip or truncate acknowledged writes"
        ),
    )
}
