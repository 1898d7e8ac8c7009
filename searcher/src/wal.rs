//! The write-ahead log of one replica: a directory of segment files.
//!
//! A write is acknowledged only once its record is in the log and durable as the sync policy
//! ([`WalSync`]) asks, so under the default policy a Searcher killed at any moment replays
//! every acknowledged write on restart. The log is split into segments named
//! `<first seq, 20 digits>.log` so that a snapshot lets whole files go (no rewriting) and a
//! lagging peer can be served records straight from disk ([`Wal::read_after`]).
//!
//! A segment starts with a header (magic, format version, generation, first seq, crc32) so
//! that a segment holding no record yet still says where the log continues, then holds
//! records framed as `[payload length u32][crc32 of payload u32][payload]`, little-endian.
//! New segments are written under a temporary name and renamed into place, so a segment file
//! either does not exist or has its whole header.
//!
//! Replay rules, all aimed at never losing or skipping an acknowledged write:
//! - A crash in the middle of an append leaves a torn last record. When the first bad frame
//!   is the last thing in the last segment (or only zeros follow it, as an extended but never
//!   written file region reads after a power loss), replay truncates it: that write was never
//!   acknowledged.
//! - A bad frame with data behind it, or in any segment but the last (a segment is synced
//!   before the next one is created), is corruption, not a torn append: truncating there
//!   would destroy acknowledged writes and skipping it would apply later writes without it,
//!   so the log refuses to open.
//! - Records are numbered without gaps across segments; a gap or disorder is corruption too.
//! - [`Wal::reset`] bumps the generation in the header of the segment it starts. Segments of
//!   an older generation are the leftovers of a reset cut short by a crash and are removed,
//!   which makes a reset atomic without rewriting anything in place.

use std::{
    fmt,
    fs::{self, File, OpenOptions},
    io::{self, BufReader, Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    str::FromStr,
    time::{Duration, Instant},
};

use crate::point::PointData;

const OP_UPSERT: u8 = 1;
const OP_DELETE: u8 = 2;
/// A frame longer than this is treated as corruption rather than allocated.
const MAX_RECORD_BYTES: u32 = 1 << 30;
const FRAME_HEADER_BYTES: u64 = 8;
const SEGMENT_MAGIC: &[u8; 8] = b"QVWALSEG";
const SEGMENT_FORMAT_VERSION: u32 = 1;
/// Magic, format version, generation, first seq, crc32 of the bytes before it.
const SEGMENT_HEADER_BYTES: u64 = 8 + 4 + 8 + 8 + 4;
const SEGMENT_SUFFIX: &str = ".log";
const TEMPORARY_SUFFIX: &str = ".tmp";
/// The single-file log that replicas kept before segments, next to the segment directory.
const LEGACY_LOG_NAME: &str = "wal.log";
/// [`Wal::read_after`] seeks to the nearest indexed record before the one asked for and
/// scans from there: an entry every this many bytes bounds that scan while keeping the index
/// at about a thousand entries per 64 MiB segment.
const INDEX_STRIDE_BYTES: u64 = 64 << 10;
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

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

/// When appends reach the disk, traded against write latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WalSync {
    /// fsync every append before acknowledging it: acknowledged writes survive a power loss.
    #[default]
    Always,
    /// fsync an append when at least this long has passed since the last fsync, and on
    /// [`Wal::sync`]. A power loss may lose the writes since the last fsync; without a
    /// later append or a `sync()` that window has no end, so the owner should call `sync()`
    /// on a timer and at close.
    Interval(Duration),
    /// Leave it to the OS: an acknowledged write is in the page cache, so it survives the
    /// process crashing but not the machine losing power.
    Never,
}

impl fmt::Display for WalSync {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalSync::Always => formatter.write_str("always"),
            WalSync::Never => formatter.write_str("never"),
            WalSync::Interval(period) => {
                // The largest unit that loses nothing, so the text parses back to this value.
                let nanos = period.as_nanos();
                if nanos % 1_000_000 == 0 {
                    write!(formatter, "interval:{}ms", nanos / 1_000_000)
                } else if nanos % 1_000 == 0 {
                    write!(formatter, "interval:{}us", nanos / 1_000)
                } else {
                    write!(formatter, "interval:{nanos}ns")
                }
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid write-ahead log sync policy {input:?}: {reason}; expected \"always\", \
     \"interval:<duration>\" (e.g. \"interval:100ms\", \"interval:1s\", or \"interval:100\" \
     in milliseconds) or \"never\""
)]
pub struct ParseWalSyncError {
    input: String,
    reason: String,
}

impl FromStr for WalSync {
    type Err = ParseWalSyncError;

    fn from_str(text: &str) -> Result<WalSync, ParseWalSyncError> {
        let error = |reason: String| ParseWalSyncError {
            input: text.to_string(),
            reason,
        };
        let normalized = text.trim().to_ascii_lowercase();
        match normalized.as_str() {
            "always" => return Ok(WalSync::Always),
            "never" => return Ok(WalSync::Never),
            _ => {}
        }
        let Some(period) = normalized.strip_prefix("interval:") else {
            return Err(error("unknown policy".into()));
        };
        parse_duration(period).map(WalSync::Interval).map_err(error)
    }
}

/// `100` (milliseconds), or whole numbers each followed by a unit as humantime writes them:
/// `100ms`, `1s`, `1m 30s`, `250us`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("the interval is empty".into());
    }
    let too_large = || "the interval is too large".to_string();
    if text.bytes().all(|byte| byte.is_ascii_digit()) {
        let millis: u64 = text.parse().map_err(|_| too_large())?;
        return Ok(Duration::from_millis(millis));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|character: char| !character.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("expected a number at {rest:?}"));
        }
        let value: u64 = rest[..digits].parse().map_err(|_| too_large())?;
        rest = rest[digits..].trim_start();
        let unit_len = rest
            .find(|character: char| character.is_ascii_digit() || character.is_whitespace())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = rest[unit_len..].trim_start();
        let seconds = |factor: u64| value.checked_mul(factor).map(Duration::from_secs);
        let term = match unit {
            "ns" | "nsec" => Some(Duration::from_nanos(value)),
            "us" | "usec" | "µs" => Some(Duration::from_micros(value)),
            "ms" | "msec" => Some(Duration::from_millis(value)),
            "s" | "sec" | "secs" => Some(Duration::from_secs(value)),
            "m" | "min" | "mins" => seconds(60),
            "h" | "hr" | "hrs" => seconds(3600),
            "" => return Err(format!("{value} needs a unit (ns, us, ms, s, m, h)")),
            other => return Err(format!("unknown unit {other:?}")),
        };
        total = term
            .and_then(|term| total.checked_add(term))
            .ok_or_else(too_large)?;
    }
    Ok(total)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalOptions {
    pub sync: WalSync,
    /// A segment that has reached this size gets no more records; the next append starts a
    /// new one. Compaction deletes whole segments, so this bounds how much covered log
    /// outlives a snapshot.
    pub segment_bytes: u64,
}

impl Default for WalOptions {
    fn default() -> WalOptions {
        WalOptions {
            sync: WalSync::Always,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
        }
    }
}

/// One segment file as the log knows it.
#[derive(Debug)]
struct Segment {
    path: PathBuf,
    first_seq: u64,
    /// The seq its next record would have: `first_seq` while it holds none.
    next_seq: u64,
    /// Header included; every byte up to here is an intact frame.
    len_bytes: u64,
    /// `(seq, byte offset)` of the first record and then of a record at least every
    /// [`INDEX_STRIDE_BYTES`].
    index: Vec<(u64, u64)>,
}

impl Segment {
    fn empty(path: PathBuf, first_seq: u64) -> Segment {
        Segment {
            path,
            first_seq,
            next_seq: first_seq,
            len_bytes: SEGMENT_HEADER_BYTES,
            index: Vec::new(),
        }
    }

    fn holds_records(&self) -> bool {
        self.next_seq > self.first_seq
    }

    fn note_record(&mut self, seq: u64, offset: u64, frame_bytes: u64) {
        debug_assert_eq!(seq, self.next_seq, "a segment's records are contiguous");
        debug_assert_eq!(offset, self.len_bytes, "a segment's frames are contiguous");
        let due = match self.index.last() {
            None => true,
            Some(&(_, indexed_offset)) => offset - indexed_offset >= INDEX_STRIDE_BYTES,
        };
        if due {
            self.index.push((seq, offset));
        }
        self.next_seq = seq + 1;
        self.len_bytes = offset + frame_bytes;
    }

    /// Where to start scanning for `seq`, which the segment holds.
    fn scan_start(&self, seq: u64) -> u64 {
        let position = self
            .index
            .partition_point(|&(indexed_seq, _)| indexed_seq <= seq);
        match position {
            0 => SEGMENT_HEADER_BYTES,
            _ => self.index[position - 1].1,
        }
    }
}

pub struct Wal {
    dir: PathBuf,
    options: WalOptions,
    /// Bumped by every reset; see the module docs.
    generation: u64,
    /// Never empty, contiguous in seq, oldest first; the last is the active segment, the only
    /// one appended to.
    segments: Vec<Segment>,
    active_file: File,
    len_bytes: u64,
    last_sync: Instant,
    /// Bytes were appended to the active segment since its last fsync.
    unsynced: bool,
    /// A new segment was renamed into place but the directory fsync after it failed: its
    /// directory entry may not survive a power loss, so no append in it may be acknowledged
    /// before a later fsync succeeds.
    directory_unsynced: bool,
    #[cfg(test)]
    append_syncs: u64,
}

impl Wal {
    /// Opens the log directory (created if missing) and returns every intact record with
    /// seq > `after_seq` in order. `after_seq` is what the caller's snapshot covers: a log
    /// that ends before it is entirely covered and continues at `after_seq + 1`, and a log
    /// that starts after `after_seq + 1` lacks records the caller needs, which is data loss
    /// (`InvalidData`), as is corruption anywhere in the log. A single-file `wal.log` left
    /// next to `dir` by an older version is converted into a segment and then deleted.
    pub fn open(
        dir: &Path,
        options: WalOptions,
        after_seq: u64,
    ) -> io::Result<(Wal, Vec<WalRecord>)> {
        create_dir_durably(dir)?;
        remove_temporary_files(dir)?;
        let legacy_path = match dir.parent() {
            Some(parent) => Some(parent.join(LEGACY_LOG_NAME)).filter(|path| path.is_file()),
            None => None,
        };
        let legacy_records = match &legacy_path {
            Some(path) => read_legacy_log(path)?,
            None => Vec::new(),
        };
        let mut listing = list_segments(dir)?;
        if listing.is_empty() && !legacy_records.is_empty() {
            convert_legacy_log(dir, &legacy_records)?;
            listing = list_segments(dir)?;
        }
        let scan = scan_segments(&listing, after_seq)?;

        // Everything that can refuse the log is checked before anything is deleted or
        // truncated.
        let log_last_seq = scan
            .segments
            .last()
            .map(|segment| segment.next_seq - 1)
            .unwrap_or(after_seq);
        if let Some(first) = scan.segments.first() {
            if after_seq + 1 < first.first_seq {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "write-ahead log {}: starts at seq {} but the records after seq \
                         {after_seq} are needed; seqs {}..={} are missing",
                        first.path.display(),
                        first.first_seq,
                        after_seq + 1,
                        first.first_seq - 1
                    ),
                ));
            }
        }
        if let (Some(path), Some(legacy_last)) = (&legacy_path, legacy_records.last()) {
            // Only a conversion cut short leaves both; anything else (say, an older binary
            // run again on this directory) would make deleting wal.log lose writes.
            if legacy_last.seq > log_last_seq.max(after_seq) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} holds records up to seq {} but the segmented log in {} ends at \
                         seq {log_last_seq}; refusing to delete it",
                        path.display(),
                        legacy_last.seq,
                        dir.display()
                    ),
                ));
            }
        }

        for obsolete in &scan.obsolete {
            tracing::warn!(
                path = %obsolete.display(),
                "removing a write-ahead log segment left over from an interrupted reset"
            );
            remove_file_if_exists(obsolete)?;
        }
        if !scan.obsolete.is_empty() {
            sync_dir(dir)?;
        }

        let mut wal = match scan.segments.last() {
            None => {
                let first_seq = after_seq + 1;
                let (path, active_file) = write_segment_file(dir, scan.generation, first_seq, &[])?;
                sync_dir(dir)?;
                Wal::with_segments(
                    dir,
                    options,
                    scan.generation,
                    vec![Segment::empty(path, first_seq)],
                    active_file,
                )
            }
            Some(active) => {
                let mut active_file = OpenOptions::new().write(true).open(&active.path)?;
                if let Some(file_len) = scan.torn_tail_file_len {
                    tracing::warn!(
                        path = %active.path.display(),
                        intact_bytes = active.len_bytes,
                        dropped_bytes = file_len - active.len_bytes,
                        "truncating torn tail of write-ahead log"
                    );
                    active_file.set_len(active.len_bytes)?;
                    active_file.sync_all()?;
                }
                active_file.seek(SeekFrom::Start(active.len_bytes))?;
                Wal::with_segments(dir, options, scan.generation, scan.segments, active_file)
            }
        };
        if after_seq > wal.last_seq() {
            tracing::info!(
                dir = %dir.display(),
                log_last_seq = wal.last_seq(),
                snapshot_seq = after_seq,
                "the snapshot covers the whole write-ahead log; starting it afresh"
            );
            wal.reset(after_seq + 1)?;
        }
        if let Some(path) = &legacy_path {
            tracing::info!(
                path = %path.display(),
                records = legacy_records.len(),
                "converted the single-file write-ahead log into segments"
            );
            remove_file_if_exists(path)?;
            sync_dir(&parent_dir(path))?;
        }
        Ok((wal, scan.records))
    }

    fn with_segments(
        dir: &Path,
        options: WalOptions,
        generation: u64,
        segments: Vec<Segment>,
        active_file: File,
    ) -> Wal {
        let len_bytes = segments.iter().map(|segment| segment.len_bytes).sum();
        Wal {
            dir: dir.to_path_buf(),
            options,
            generation,
            segments,
            active_file,
            len_bytes,
            last_sync: Instant::now(),
            unsynced: false,
            directory_unsynced: false,
            #[cfg(test)]
            append_syncs: 0,
        }
    }

    /// Appends one record, durable as the sync policy asks before this returns. Its seq must
    /// be `last_seq() + 1`.
    pub fn append(&mut self, record: &WalRecord) -> io::Result<()> {
        let expected_seq = self.last_seq() + 1;
        debug_assert_eq!(
            record.seq, expected_seq,
            "log records are appended in order"
        );
        if record.seq != expected_seq {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "write-ahead log record has seq {} but the next one must be {expected_seq}",
                    record.seq
                ),
            ));
        }
        let frame = encode_frame(record)?;
        if self.active().holds_records() && self.active().len_bytes >= self.options.segment_bytes {
            self.roll()?;
        }
        if self.directory_unsynced {
            self.sync_directory()?;
        }
        let offset = self.active().len_bytes;
        if let Err(error) = self.write_and_sync(&frame) {
            // Cut off whatever part of the frame reached the file so the next append does not
            // land behind garbage; replay would refuse a bad frame with data behind it.
            let _ = self.active_file.set_len(offset);
            let _ = self.active_file.seek(SeekFrom::Start(offset));
            return Err(error);
        }
        let frame_bytes = frame.len() as u64;
        self.active_mut()
            .note_record(record.seq, offset, frame_bytes);
        self.len_bytes += frame_bytes;
        Ok(())
    }

    fn write_and_sync(&mut self, frame: &[u8]) -> io::Result<()> {
        self.active_file.write_all(frame)?;
        self.unsynced = true;
        let due = match self.options.sync {
            WalSync::Always => true,
            WalSync::Interval(period) => self.last_sync.elapsed() >= period,
            WalSync::Never => false,
        };
        if due {
            self.sync_active()?;
        }
        Ok(())
    }

    /// Makes every append so far durable (under `Interval` or `Never`, e.g. at close).
    pub fn sync(&mut self) -> io::Result<()> {
        if self.directory_unsynced {
            self.sync_directory()?;
        }
        if self.unsynced {
            self.sync_active()?;
        }
        Ok(())
    }

    fn sync_active(&mut self) -> io::Result<()> {
        self.active_file.sync_data()?;
        self.unsynced = false;
        self.last_sync = Instant::now();
        #[cfg(test)]
        {
            self.append_syncs += 1;
        }
        Ok(())
    }

    fn sync_directory(&mut self) -> io::Result<()> {
        self.directory_unsynced = true;
        sync_dir(&self.dir)?;
        self.directory_unsynced = false;
        Ok(())
    }

    /// Closes the active segment and starts the next one.
    fn roll(&mut self) -> io::Result<()> {
        // A bad frame in any segment but the last is corruption, so under Interval or Never
        // the closed segment must be on disk before a newer one can be.
        if self.unsynced {
            self.sync_active()?;
        }
        self.start_segment(self.last_seq() + 1)
    }

    fn start_segment(&mut self, first_seq: u64) -> io::Result<()> {
        let (path, file) = write_segment_file(&self.dir, self.generation, first_seq, &[])?;
        // The file is in place from here on: the log must follow it, or the next append
        // would go to the older segment and leave this one behind as a seq gap.
        self.active_file = file;
        self.segments.push(Segment::empty(path, first_seq));
        self.len_bytes += SEGMENT_HEADER_BYTES;
        self.unsynced = false;
        self.last_sync = Instant::now();
        self.sync_directory()
    }

    /// Deletes every segment whose records are all <= `covered_seq` (a snapshot covers
    /// them). A fully covered active segment is closed and a fresh one started, so the log
    /// never keeps covered records longer than one segment.
    pub fn compact(&mut self, covered_seq: u64) -> io::Result<()> {
        if covered_seq > self.last_seq() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a snapshot covering seq {covered_seq} is past the log's last seq {}; \
                     reset the log instead",
                    self.last_seq()
                ),
            ));
        }
        let active = self.active();
        if active.holds_records() && active.next_seq <= covered_seq + 1 {
            // Synced first because deleting it may fail and leave it behind the fresh one.
            if self.unsynced {
                self.sync_active()?;
            }
            self.start_segment(self.last_seq() + 1)?;
        }
        let closed = &self.segments[..self.segments.len() - 1];
        let covered = closed
            .iter()
            .take_while(|segment| segment.next_seq <= covered_seq + 1)
            .count();
        // Oldest first, so a failure or crash part way leaves a contiguous log.
        let mut removed = 0;
        let mut outcome = Ok(());
        for segment in &closed[..covered] {
            if let Err(error) = remove_file_if_exists(&segment.path) {
                outcome = Err(error);
                break;
            }
            removed += 1;
        }
        for segment in self.segments.drain(..removed) {
            self.len_bytes -= segment.len_bytes;
        }
        outcome?;
        if removed > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Up to `max_records` records with seq > `after_seq`, in order, read from disk, stopping
    /// before the one that would take them past `max_bytes` of frames (at least one record is
    /// returned when there is one). `Ok(None)` when record `after_seq + 1` is no longer in
    /// the log (compacted or reset away) although the log has gone past it: the reader needs
    /// a snapshot instead.
    pub fn read_after(
        &self,
        after_seq: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> io::Result<Option<Vec<WalRecord>>> {
        if after_seq >= self.last_seq() {
            return Ok(Some(Vec::new()));
        }
        let mut wanted_seq = after_seq + 1;
        let Some(position) = self
            .segments
            .iter()
            .position(|segment| segment.first_seq <= wanted_seq && wanted_seq < segment.next_seq)
        else {
            return Ok(None);
        };
        let mut records = Vec::new();
        if max_records == 0 {
            return Ok(Some(records));
        }
        let mut bytes = 0usize;
        for segment in &self.segments[position..] {
            if !segment.holds_records() {
                continue;
            }
            let mut offset = segment.scan_start(wanted_seq);
            let mut file = File::open(&segment.path)?;
            file.seek(SeekFrom::Start(offset))?;
            let mut reader = BufReader::new(file);
            loop {
                let frame = read_frame(&mut reader, offset, segment.len_bytes, Format::Current)?;
                let (record, frame_bytes) = match frame {
                    Frame::End => break,
                    Frame::Record {
                        record,
                        frame_bytes,
                    } => (record, frame_bytes),
                    Frame::Bad { .. } => {
                        return Err(corruption(
                            &segment.path,
                            offset,
                            wanted_seq - 1,
                            "record went bad after the log was opened",
                        ))
                    }
                };
                offset += frame_bytes;
                if record.seq < wanted_seq {
                    continue;
                }
                if record.seq != wanted_seq {
                    return Err(corruption(
                        &segment.path,
                        offset - frame_bytes,
                        wanted_seq - 1,
                        format!("record has seq {} where {wanted_seq} belongs", record.seq),
                    ));
                }
                let frame_bytes = frame_bytes as usize;
                if !records.is_empty() && bytes + frame_bytes > max_bytes {
                    return Ok(Some(records));
                }
                bytes += frame_bytes;
                wanted_seq += 1;
                records.push(record);
                if records.len() >= max_records {
                    return Ok(Some(records));
                }
            }
        }
        Ok(Some(records))
    }

    /// The first record still in the log; None when it holds none.
    pub fn first_seq(&self) -> Option<u64> {
        let first = self.segments.first()?;
        (self.active().next_seq > first.first_seq).then_some(first.first_seq)
    }

    /// The last record appended (0 if none ever was), also after everything was compacted.
    pub fn last_seq(&self) -> u64 {
        self.active().next_seq - 1
    }

    /// Removes every segment and starts empty, the next append being seq `next_seq` (after
    /// installing a snapshot that covers `next_seq - 1`). Atomic across a crash: a reopened
    /// log is either the old one or the new, empty one.
    pub fn reset(&mut self, next_seq: u64) -> io::Result<()> {
        if next_seq == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "write-ahead log seqs start at 1",
            ));
        }
        let generation = self.generation + 1;
        let (path, file) = write_segment_file(&self.dir, generation, next_seq, &[])?;
        let obsolete = std::mem::replace(
            &mut self.segments,
            vec![Segment::empty(path.clone(), next_seq)],
        );
        self.generation = generation;
        self.active_file = file;
        self.len_bytes = SEGMENT_HEADER_BYTES;
        self.unsynced = false;
        self.last_sync = Instant::now();
        self.sync_directory()?;
        // The new generation is durable: the old segments are dead whether or not they go
        // now, and the next open removes any left behind.
        let mut removed_any = false;
        for segment in obsolete.iter().filter(|segment| segment.path != path) {
            match remove_file_if_exists(&segment.path) {
                Ok(()) => removed_any = true,
                Err(error) => tracing::warn!(
                    path = %segment.path.display(),
                    %error,
                    "could not remove an obsolete write-ahead log segment; the next open will"
                ),
            }
        }
        if removed_any {
            if let Err(error) = sync_dir(&self.dir) {
                tracing::warn!(dir = %self.dir.display(), %error, "could not sync the write-ahead log directory after a reset");
            }
        }
        Ok(())
    }

    /// All segments together, headers included.
    pub fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn active(&self) -> &Segment {
        self.segments
            .last()
            .expect("the log always has an active segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .last_mut()
            .expect("the log always has an active segment")
    }

    /// How many fsyncs appends and `sync()` caused.
    #[cfg(test)]
    fn append_syncs(&self) -> u64 {
        self.append_syncs
    }
}

/// What a scan of the segment directory found.
struct Scan {
    generation: u64,
    /// The segments of the newest generation, oldest first, checked contiguous.
    segments: Vec<Segment>,
    /// Segments of older generations.
    obsolete: Vec<PathBuf>,
    /// Records with seq > after_seq.
    records: Vec<WalRecord>,
    /// The last segment's file length when a torn append follows its intact frames.
    torn_tail_file_len: Option<u64>,
}

fn scan_segments(listing: &[(u64, PathBuf)], after_seq: u64) -> io::Result<Scan> {
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
) -> io::Result<(Segment, Option<u64>)> {
    let mut file = File::open(&path)?;
    let file_len = file.metadata()?.len();
    file.seek(SeekFrom::Start(SEGMENT_HEADER_BYTES))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut segment = Segment::empty(path, first_seq);
    loop {
        let offset = segment.len_bytes;
        match read_frame(&mut reader, offset, file_len, Format::Current)? {
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
fn only_zeros_after(path: &Path, frame_end: u64, file_len: u64) -> io::Result<bool> {
    if frame_end >= file_len {
        return Ok(true);
    }
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(frame_end))?;
    let mut remaining = file_len - frame_end;
    let mut buffer = vec![0u8; 64 << 10];
    while remaining > 0 {
        let chunk = remaining.min(buffer.len() as u64) as usize;
        file.read_exact(&mut buffer[..chunk])?;
        if buffer[..chunk].iter().any(|&byte| byte != 0) {
            return Ok(false);
        }
        remaining -= chunk as u64;
    }
    Ok(true)
}

/// Reads the records of a single-file log of the old format; a torn tail is dropped (the file
/// is deleted once converted), corruption anywhere else refuses.
fn read_legacy_log(path: &Path) -> io::Result<Vec<WalRecord>> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut records: Vec<WalRecord> = Vec::new();
    let mut offset = 0u64;
    loop {
        let intact_through = records.last().map_or(0, |record| record.seq);
        match read_frame(&mut reader, offset, file_len, Format::Legacy)? {
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
fn convert_legacy_log(dir: &Path, records: &[WalRecord]) -> io::Result<()> {
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

enum Frame {
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
enum Format {
    /// The single-file `wal.log`: no epoch in the payload.
    Legacy,
    Current,
}

/// Reads the frame at `offset` of a file whose intact bytes end at `limit`; never reads
/// past `limit`.
fn read_frame(
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
    let payload_len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    let expected_crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    let frame_bytes = FRAME_HEADER_BYTES + u64::from(payload_len);
    let frame_end = offset + frame_bytes;
    if payload_len > MAX_RECORD_BYTES || frame_end > limit {
        return Ok(Frame::Bad { frame_end });
    }
    let mut payload = vec![0u8; payload_len as usize];
    reader.read_exact(&mut payload)?;
    if crc32fast::hash(&payload) != expected_crc {
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

fn corruption(
    path: &Path,
    offset: u64,
    intact_through_seq: u64,
    what: impl fmt::Display,
) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "write-ahead log {}: {what} at byte {offset}; the log is intact through seq \
             {intact_through_seq}; refusing to open rather than skip or truncate acknowledged \
             writes",
            path.display()
        ),
    )
}

fn segment_file_name(first_seq: u64) -> String {
    format!("{first_seq:020}{SEGMENT_SUFFIX}")
}

fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segment files in `dir`, oldest first.
fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(first_seq) = name.to_str().and_then(parse_segment_file_name) {
            segments.push((first_seq, entry.path()));
        }
    }
    segments.sort_unstable_by_key(|(first_seq, _)| *first_seq);
    Ok(segments)
}

/// A segment being written under its temporary name when the process died was never part
/// of the log.
fn remove_temporary_files(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let is_temporary = entry.file_name().to_str().is_some_and(|name| {
            name.strip_suffix(TEMPORARY_SUFFIX)
                .and_then(parse_segment_file_name)
                .is_some()
        });
        if is_temporary {
            remove_file_if_exists(&entry.path())?;
        }
    }
    Ok(())
}

fn encode_segment_header(generation: u64, first_seq: u64) -> Vec<u8> {
    let mut header = Vec::with_capacity(SEGMENT_HEADER_BYTES as usize);
    header.extend_from_slice(SEGMENT_MAGIC);
    header.extend_from_slice(&SEGMENT_FORMAT_VERSION.to_le_bytes());
    header.extend_from_slice(&generation.to_le_bytes());
    header.extend_from_slice(&first_seq.to_le_bytes());
    let crc = crc32fast::hash(&header);
    header.extend_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(header.len() as u64, SEGMENT_HEADER_BYTES);
    header
}

/// `(generation, first seq)` of a segment, or why its header is unusable; an I/O failure is
/// the outer error.
fn read_segment_header(path: &Path, name_seq: u64) -> io::Result<Result<(u64, u64), String>> {
    let mut file = File::open(path)?;
    let mut header = [0u8; SEGMENT_HEADER_BYTES as usize];
    if let Err(error) = file.read_exact(&mut header) {
        if error.kind() == io::ErrorKind::UnexpectedEof {
            return Ok(Err("segment is shorter than its header".into()));
        }
        return Err(error);
    }
    let (body, crc) = header.split_at(SEGMENT_HEADER_BYTES as usize - 4);
    let u64_at =
        |start: usize| u64::from_le_bytes(body[start..start + 8].try_into().expect("8 bytes"));
    if &body[0..8] != SEGMENT_MAGIC {
        return Ok(Err("not a write-ahead log segment (bad magic)".into()));
    }
    let version = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes"));
    if version != SEGMENT_FORMAT_VERSION {
        return Ok(Err(format!(
            "segment format version {version} is not one this build reads"
        )));
    }
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Ok(Err("segment header checksum mismatch".into()));
    }
    let generation = u64_at(12);
    let first_seq = u64_at(20);
    if first_seq != name_seq || first_seq == 0 {
        return Ok(Err(format!(
            "segment header says it starts at seq {first_seq}, its name says {name_seq}"
        )));
    }
    Ok(Ok((generation, first_seq)))
}

/// Writes a segment under a temporary name, fsyncs it and renames it into place (replacing a
/// segment of the same name), so a segment file either does not exist or is complete.
/// Returns it open for appending; the rename is durable only once the directory is synced.
fn write_segment_file(
    dir: &Path,
    generation: u64,
    first_seq: u64,
    body: &[u8],
) -> io::Result<(PathBuf, File)> {
    let name = segment_file_name(first_seq);
    let path = dir.join(&name);
    let temporary = dir.join(format!("{name}{TEMPORARY_SUFFIX}"));
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temporary)?;
        file.write_all(&encode_segment_header(generation, first_seq))?;
        file.write_all(body)?;
        file.sync_all()?;
        fs::rename(&temporary, &path)?;
        Ok(file)
    })();
    match written {
        Ok(file) => Ok((path, file)),
        Err(error) => {
            let _ = fs::remove_file(&temporary);
            Err(error)
        }
    }
}

/// Creates `dir` and any missing parents, fsyncing each parent that gained an entry.
fn create_dir_durably(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = parent_dir(dir);
    create_dir_durably(&parent)?;
    match fs::create_dir(dir) {
        Ok(()) => sync_dir(&parent),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(error),
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn remove_file_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

fn encode_frame(record: &WalRecord) -> io::Result<Vec<u8>> {
    let payload = encode_payload(record);
    let payload_len = u32::try_from(payload.len())
        .ok()
        .filter(|&len| len <= MAX_RECORD_BYTES)
        .ok_or_else(|| {
            // Written anyway, it would read back as corruption and stop the replica opening.
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "write-ahead log record of {} bytes is over the {MAX_RECORD_BYTES}-byte limit",
                    payload.len()
                ),
            )
        })?;
    let mut frame = Vec::with_capacity(payload.len() + FRAME_HEADER_BYTES as usize);
    frame.extend_from_slice(&payload_len.to_le_bytes());
    frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    frame.extend_from_slice(&payload);
    Ok(frame)
}

fn encode_payload(record: &WalRecord) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&record.seq.to_le_bytes());
    out.extend_from_slice(&record.epoch.to_le_bytes());
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

fn decode_payload(payload: &[u8], format: Format) -> Option<WalRecord> {
    let mut cursor = Cursor { bytes: payload };
    let seq = cursor.u64()?;
    let epoch = match format {
        Format::Legacy => 0,
        Format::Current => cursor.u64()?,
    };
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
    Some(WalRecord { seq, epoch, op })
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
    use std::collections::BTreeMap;

    use super::*;

    fn upsert(seq: u64, id: &str) -> WalRecord {
        WalRecord {
            seq,
            epoch: seq / 4 + 1,
            op: WalOp::Upsert(vec![PointData {
                id: id.to_string(),
                vector: vec![1.0, -2.5, 3.25],
                payload: Some(r#"{"a":1}"#.to_string()),
            }]),
        }
    }

    fn records(seqs: std::ops::RangeInclusive<u64>) -> Vec<WalRecord> {
        seqs.map(|seq| {
            if seq % 3 == 0 {
                WalRecord {
                    seq,
                    epoch: 7,
                    op: WalOp::Delete(vec![format!("p{seq}"), "ü-unicode".into()]),
                }
            } else {
                upsert(seq, &format!("p{seq}"))
            }
        })
        .collect()
    }

    /// Segments small enough that a handful of records spans several.
    fn small_segments(sync: WalSync) -> WalOptions {
        WalOptions {
            sync,
            segment_bytes: 200,
        }
    }

    fn log_dir(root: &tempfile::TempDir) -> PathBuf {
        root.path().join("wal")
    }

    fn append_all(wal: &mut Wal, records: &[WalRecord]) {
        for record in records {
            wal.append(record).unwrap();
        }
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        list_segments(dir)
            .unwrap()
            .into_iter()
            .map(|(_, path)| path)
            .collect()
    }

    fn segment_first_seqs(dir: &Path) -> Vec<u64> {
        list_segments(dir)
            .unwrap()
            .into_iter()
            .map(|(first_seq, _)| first_seq)
            .collect()
    }

    /// Every file under `dir` and its bytes.
    fn file_contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        fs::read_dir(dir)
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                (
                    entry.file_name().to_string_lossy().into_owned(),
                    fs::read(entry.path()).unwrap(),
                )
            })
            .collect()
    }

    fn open(dir: &Path, options: WalOptions, after_seq: u64) -> (Wal, Vec<WalRecord>) {
        Wal::open(dir, options, after_seq).unwrap()
    }

    fn open_error(dir: &Path, after_seq: u64) -> io::Error {
        Wal::open(dir, small_segments(WalSync::Always), after_seq)
            .err()
            .expect("the log must refuse to open")
    }

    /// A single-file log as replicas wrote it before segments: frames without an epoch.
    fn write_legacy_log(path: &Path, records: &[WalRecord]) {
        let mut bytes = Vec::new();
        for record in records {
            let mut payload = encode_payload(record);
            payload.drain(8..16);
            bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            bytes.extend_from_slice(&payload);
        }
        fs::write(path, bytes).unwrap();
    }

    #[test]
    fn records_round_trip_across_segments_and_reopen() {
        let root = tempfile::tempdir().unwrap();
        let dir = log_dir(&root);
        let written = records(1..=20);
        {
            let (mut wal, existing) = open(&dir, small_segments(WalSync::Always), 0);
            assert!(existing.is_empty());
            assert_eq!(wal.first_seq(), None);
            assert_eq!(wal.last_seq(), 0);
            append_all(&mut wal, &written);
            assert_eq!(wal.first_seq(), Some(1));
            assert_eq!(wal.last_seq(), 20);
            let on_disk: u64 = segment_files(&dir)
                .iter()
                .map(|path| fs::metadata(path).unwrap().len())
                .sum();
            assert_eq!(wal.len_bytes(), on_disk);
            assert_eq!(wal.dir(), dir.as_path());
        }
        let first_seqs = segment_first_seqs(&dir);
        assert!(first_seqs.len() >= 4, "several segments: {first_seqs:?}");
        assert_eq!(first_seqs[0], 1);
        let (mut wal, replayed) = open(&dir, small_segments(WalSync::Always), 0);
        assert_eq!(replayed, written);
        assert_eq!(wal.last_seq(), 20);
        wal.append(&upsert(21, "after reopen")).unwrap();
        drop(wal);
        let (_wal, replayed) = open(&dir, WalOptions::default(), 0);
        assert_eq!(replayed.len(), 21);
        assert_eq!(replayed[20], upsert(21, "after reopen"));
    }

    #[test]
    fn open_skips_records_a_snapshot_covers() {
        let root = tempfile::tempdir().unwrap();
        let dir = log_dir(&root);
        let written = records(1..=12);
        {
            let (mut wal, _) = open(&dir, small_segments(WalSync::Always), 0);
            append_all(&mut wal, &written);
        }
        let (wal, replayed) = open(&dir, small_segments(WalSync::Always), 7);
        assert_eq!(replayed, written[7..]);
        assert_eq!(wal.first_seq(), Some(1), "open itself deletes nothing");
        drop(wal);
        let (wal, replayed) = open(&dir, small_segments(WalSync::Always), 12);
        assert!(replayed.is_empty());
        assert_eq!(wal.last_seq(), 12);
    }

    #[test]
    fn a_log_behind_the_snapshot_continues_after_it() {
        let root = tempfile::tempdir().unwrap();
        let dir = log_dir(&root);
        {
            let (mut wal, _) = open(&dir, small_segments(WalSync::Always), 0);
            append_all(&mut wal, &records(1..=5));
        }
        let (mut wal, replayed) = open(&dir, small_segments(WalSync::Always), 40);
        assert!(replayed.is_empty());
        assert_eq!(wal.last_seq(), 40);
        assert_eq!(wal.first_seq(), None);
        wal.append(&upsert(41, "a")).unwrap();
        drop(wal);
        assert_eq!(segment_first_seqs(&dir), vec![41]);
        let (_wal, replayed) = open(&dir, small_segments(WalSync::Always), 40);
        assert_eq!(replayed, vec![upsert(41, "a")]);

        // A fresh directory continues after the snapshot too.
        let fresh = root.path().join("fresh");
        let (wal, replayed) = open(&fresh, WalOptions::default(), 9);
        assert!(replayed.is_empty());
        assert_eq!(wal.last_seq(), 9);
    }

    #[test]
    fn a_log_starting_after_the_records_needed_refuses_to_open() {
        let root = tempfile::tempdir().unwrap();
        let dir = log_dir(&root);
        {
            let (mut wal, _) = open(&dir, small_segments(WalSync::Always), 0);
            append_all(&mut wal, &records(1..=12));
            wal.compact(6).unwrap();
        }
        let first = segment_first_seqs(&dir)[0];
        assert!(first > 1);
        let before = file_contents(&dir);
        let error = open_error(&dir, first - 2);
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(error.to_string().contains("missing"), "{error}");
        assert_eq!(file_contents(&dir), before);
        let (_wal, replayed) = open(&dir, small_segments(WalSync::Always), first - 1);
        assert_eq!(replayed.first().map(|record| record.seq), Some(first));
    }

    #[test]
    fn torn_tail_is_truncated_and_later_appends_replay() {
        let root = tempfile::tempdir().unwrap();
        let dir = log_dir(&root);
        {
            let (mut wal, _) = open(&dir, WalOptions::default(), 0);
            wal.append(&upsert(1, "a")).unwrap();
            wal.append(&upsert(2, "b")).unwrap();
        }
        let segment = segment_files(&dir).pop().unwrap();
        let full_len = fs::metadata(&segment).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&segment)
            .unwrap()
            .set_len(full_len - 5)
            .unwrap();

        let (mut wal, replayed) = open(&dir, WalOptions::default(), 0);
        assert_eq!(replayed, vec![upsert(1, "a")]);
        assert_eq!(wal.last_seq(), 1);
        wal.append(&upsert(2, "c")).unwrap();
        drop(wal);
        let (_wal, replayed) = open(&dir, WalOptions::default(), 0);
        assert_eq!(replayed, vec![upsert(1, "a"), upsert(2, "c")]);
    }

    #[test]
    fn corrupt_last_record_and_an_unwritten_zero_tail_are_torn_appends() {
        let root = tempfile::tempdir().unwrap();
        let dir = log_dir(&root);
        {
            let (mut wal, _) = open(&dir, WalOptions::default(), 0);
            append_all(&mut wal, &records(1..=2));
        }
        let segment = segment_files(&dir).pop().unwrap();
        let mut bytes = fs::read(&segment).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 0xFF;
        fs::write(&segment, &bytes).unwrap();
        let (mut wal, replayed) = open(&dir, WalOptions::default(), 0);
        assert_eq!(replayed, records(1..=1));
        wal.append(&records(2..=2)[0]).unwrap();
        drop(wal);

        // A power loss can leave the file extended over blocks that were never written.
        let mut bytes = fs::read(&segment).unwrap();
        bytes.extend_from_slice(&[0u8; 4096]);
        fs::write(&segment, &bytes).unwrap();
        let (wal, replayed) = open(&dir, WalOptions::default(), 0);
        assert_eq!(replayed, records(1..=2));
        drop(wal);
        assert_eq!(fs::read(&segment).unwrap().len(), bytes.len() - 4096);
    }

    #[test]
    fn corruption_in_the_middle_refuses_to_open_and_keeps_the_files() {
        let root = tempfile::tempdir().unwrap();
        let dir = log_dir(&root);
        {
            let (mut wal, _) = open(&dir, WalOptions::default(), 0);
            for seq in 1..=3 {
                wal.append(&upsert(seq, "a")).unwrap();
            }
        }
        let segment = segment_files(&dir).pop().unwrap();
        let mut bytes = fs::read(&segment).unwrap();
        // Inside the payload of the second of three equal records.
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xFF;
        fs::write(&segment, &bytes).unwrap();
        let before = file_contents(&dir);
        let error = open_error(&dir, 0);
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        let message = error.to_string();
        assert!(message.contains("00000000000000000001.log"), "{message}");
        assert!(message.contains("intact through seq 1"), "{message}");
        let record_bytes = (bytes.len() as u64 - SEGMENT_HEADER_BYTES) / 3;
        let second_offset = SEGMENT_HEADER_BYTES + record_bytes;
        assert!(
            message.contains(&format!("at byte {second_offset}")),
            "{message}"
        );
        assert_eq!(file_contents(&dir), before, "nothing was truncated");
        // Still refused on a second attempt: nothing was repaired behind the caller's back.
        assert_eq!(open_error(&dir, 0).kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn a_torn_looking_frame_in_a_closed_segment_is_corruption() {
        let root = tempfile::tempdir().unwrap();
        let dir = log_dir(&root);
        {
            let (mut wal, _) = open(&dir, small_segments(WalSync::Always), 0);
            append_all(&mut wal, &records(1..=10));
        }
        let segments = segment_files(&dir);
        assert!(segments.len() >= 3);
        // The last frame of the first segment, reaching its end: torn if it were the last
        // segment, but newer segments hold acknowledged writes after it.
        let first = &segments[0];
        let len = fs::metadata(first).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(first)
            .unwrap()
            .set_len(len - 2)
            .unwrap();
        let before = file_contents(&dir);
        let error = open_error(&dir, 0);
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(
            error.to_string().contains("00000000000000000001.log"),
            "{error}"
        );
        assert_eq!(file_contents(&dir), before);
    }

    #[test]
    fn a_seq_gap_between_segments_refuses_to_open() {
        let root = tempfile::tempdir().unwrap();
        let dir = log_dir(&root);
        {
            let (mut wal, _) = open(&dir, small_segments(WalSync::Always), 0);
            append_all(&mut wal, &records(1..=12));
        }
        let segments = segment_files(&dir);
        assert!(segments.len() >= 3);
        fs::remove_file(&segments[1]).unwrap();
        let before = file_contents(&dir);
        let error = open_error(&dir, 0);
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(
            error.to_string().contains("segment starts at seq"),
            "{error}"
        );
        assert_eq!(file_contents(&dir), before);
    }

    #[test]
    fn a_record_out_of_order_refuses_to_open() {
        let root = tempfile::tempdir().unwrap();
        let dir = log_dir(&root);
        {
            let (mut wal, _) = open(&dir, WalOptions::default(), 0);
            append_all(&mut wal, &records(1..=2));
        }
        // A well-formed frame carrying the wrong seq, as a buggy writer would leave.
        let segment = segment_files(&dir).pop().unwrap();
        let mut bytes = fs::read(&segment).unwrap();
        bytes.extend_from_slice(&encode_frame(&upsert(5, "x")).unwrap());
        fs::write(&segment, &bytes).unwrap();
        let error = open_error(&dir, 0);
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(
            error.to_string().contains("seq 5 where 3 belongs"),
            "{error}"
        );
    }

    #[test]
    fn compaction_deletes_exactly_the_covered_segments() {
        let root = tempfile::tempdir().unwrap();
        let dir = log_dir(&root);
        let (mut wal, _) = open(&dir, small_segments(WalSync::Always), 0);
        append_all(&mut wal, &records(1..=20));
        let first_seqs = segment_first_seqs(&dir);
        assert!(first_seqs.len() >= 4, "{first_seqs:?}");

        // Covering the middle of the third segment deletes the first two only.
        let covered = first_seqs[2] + 1;
        assert!(covered < first_seqs[3]);
        wal.compact(covered).unwrap();
        assert_eq!(segment_first_seqs(&dir), first_seqs[2..]);
        assert_eq!(wal.first_seq(), Some(first_seqs[2]));
        let on_disk: u64 = segment_files(&dir)
            .iter()
            .map(|path| fs::metadata(path).unwrap().len())
            .sum();
        assert_eq!(wal.len_bytes(), on_disk);

        // Covering exactly the end of a segment deletes it too.
        wal.compact(first_seqs[3] - 1).unwrap();
        assert_eq!(segment_first_seqs(&dir), first_seqs[3..]);
        wal.append(&upsert(21, "a")).unwrap();
        drop(wal);

        let (mut wal, replayed) = open(&dir, small_segments(WalSync::Always), first_seqs[3] - 1);
        let mut expected = records(first_seqs[3]..=20);
        expected.push(upsert(21, "a"));
        assert_eq!(replayed, expected);

        // Covering everything leaves one fresh, empty segment that remembers the last seq.
        wal.compact(21).unwrap();
        assert_eq!(segment_first_seqs(&dir), vec![22]);
        assert_eq!(wal.first_seq(), None);
        assert_eq!(wal.last_seq(), 21);
        assert_eq!(wal.len_bytes(), SEGMENT_HEADER_BYTES);
        // Nothing more to delete: a no-op.
        wal.compact(21).unwrap();
        assert_eq!(segment_first_seqs(&dir), vec![22]);
        drop(wal);
        let (mut wal, replayed) = open(&dir, small_segments(WalSync::Always), 21);
        assert!(replayed.is_empty());
        assert_eq!(wal.last_seq(), 21);
        wal.append(&upsert(22, "b")).unwrap();
        assert_eq!(
            wal.compact(23).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        drop(wal);
        let (_wal, replayed) = open(&dir, small_segments(WalSync::Always), 21);
        assert_eq!(replayed, vec![upsert(22, "b")]);
    }

    #[test]
    fn read_after_spans_segments_and_honours_its_limits() {
        let root = tempfile::tempdir().unwrap();
        let dir = log_dir(&root);
        let written = records(1..=30);
        let (mut wal, _) = open(&dir, small_segments(WalSync::Always), 0);
        append_all(&mut wal, &written);
        assert!(segment_files(&dir).len() >= 5);

        assert_eq!(
            wal.read_after(0, usize::MAX, usize::MAX).unwrap(),
            Some(written.clone())
        );
        assert_eq!(
            wal.read_after(4, 10, usize::MAX).unwrap(),
            Some(written[4..14].to_vec())
        );
        assert_eq!(wal.read_after(30, 10, usize::MAX).unwrap(), Some(vec![]));
        assert_eq!(wal.read_after(99, 10, usize::MAX).unwrap(), Some(vec![]));
        assert_eq!(wal.read_after(3, 0, usize::MAX).unwrap(), Some(vec![]));

        // The byte limit counts whole frames and still lets one record through.
        let frame_bytes = |record: &WalRecord| encode_frame(record).unwrap().len();
        let budget = frame_bytes(&written[10]) + frame_bytes(&written[11]) + 1;
        assert_eq!(
            wal.read_after(10, 100, budget).unwrap(),
            Some(written[10..12].to_vec())
        );
        assert_eq!(
            wal.read_after(10, 100, 1).unwrap(),
            Some(written[10..11].to_vec())
        );

        let first_seqs = segment_first_seqs(&dir);
        wal.compact(first_seqs[2] - 1).unwrap();
        assert_eq!(wal.read_after(0, 10, usize::MAX).unwrap(), None);
        assert_eq!(
            wal.read_after(first_seqs[2] - 2, 10, usize::MAX).unwrap(),
            None
        );
        assert_eq!(
            wal.read_after(first_seqs[2] - 1, 3, usize::MAX).unwrap(),
            Some(written[first_seqs[2] as usize - 1..first_seqs[2] as usize + 2].to_vec())
        );
        wal.compact(30).unwrap();
        assert_eq!(wal.read_after(29, 10, usize::MAX).unwrap(), None);
        assert_eq!(wal.read_after(30, 10, usize::MAX).unwrap(), Some(vec![]));
    }

    #[test]
    fn read_after_finds_records_deep_in_a_large_segment() {
        let root = tempfile::tempdir().unwrap();
        let dir = log_dir(&root);
        let (mut wal, _) = open(&dir, WalOptions::default(), 0);
        // Enough bytes for several index entries in one segment.
        let big = |seq: u64| WalRecord {
            seq,
            epoch: 3,
            op: WalOp::Upsert(vec![PointData {
                id: format!("p{seq}"),
                vector: vec![seq as f32; 1000],
                payload: None,
            }]),
        };
        let written: Vec<WalRecord> = (1..=200).map(big).collect();
        append_all(&mut wal, &written);
        assert_eq!(segment_files(&dir).len(), 1);
        assert!(wal.active().index.len() > 5);
        for after_seq in [0, 1, 15, 16, 17, 100, 150, 199] {
            let read = wal.read_after(after_seq, 2, usize::MAX).unwrap().unwrap();
            let end = (after_seq as usize + 2).min(200);
            assert_eq!(read, written[after_seq as usize..end], "after {after_seq}");
        }
        drop(wal);
        // The index rebuilt by open finds the same records.
        let (wal, _) = open(&dir, WalOptions::default(), 200);
        let read = wal.read_after(123, 1, usize::MAX).unwrap().unwrap();
        assert_eq!(read, written[123..124]);
    }

    #[test]
    fn reset_starts_an_empty_log_at_the_given_seq() {
        let root = tempfile::tempdir().unwrap();
        let dir = log_dir(&root);
        let (mut wal, _) = open(&dir, small_segments(WalSync::Always), 0);
        append_all(&mut wal, &records(1..=10));
        wal.reset(101).unwrap();
        assert_eq!(segment_first_seqs(&dir), vec![101]);
        assert_eq!(wal.first_seq(), None);
        assert_eq!(wal.last_seq(), 100);
        assert_eq!(wal.read_after(50, 10, usize::MAX).unwrap(), None);
        append_all(&mut wal, &records(101..=110));
        drop(wal);
        let (mut wal, replayed) = open(&dir, small_segments(WalSync::Always), 100);
        assert_eq!(replayed, records(101..=110));

        // Going back, as a divergent log does when a snapshot replaces it.
        wal.reset(5).unwrap();
        wal.append(&upsert(5, "b")).unwrap();
        drop(wal);
        let (wal, replayed) = open(&dir, small_segments(WalSync::Always), 4);
        assert_eq!(replayed, vec![upsert(5, "b")]);
        assert_eq!(segment_first_seqs(&dir), vec![5]);
        drop(wal);
        assert_eq!(
            Wal::open(&dir, WalOptions::default(), 4)
                .unwrap()
                .0
                .reset(0)
                .unwrap_err()
                .kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[test]
    fn a_reset_cut_short_by_a_crash_leaves_only_the_new_log() {
        let root = tempfile::tempdir().unwrap();
        let dir = log_dir(&root);
        let (mut wal, _) = open(&dir, small_segments(WalSync::Always), 0);
        append_all(&mut wal, &records(1..=12));
        let old_files = file_contents(&dir);
        assert!(old_files.len() >= 3);
        wal.reset(7).unwrap();
        wal.append(&upsert(7, "new")).unwrap();
        drop(wal);
        // A crash after the new segment was in place but before the old ones were deleted;
        // one old segment even has a name past the new one.
        for (name, bytes) in &old_files {
            if !dir.join(name).exists() {
                fs::write(dir.join(name), bytes).unwrap();
            }
        }
        assert!(segment_first_seqs(&dir).len() > 2);
        let (wal, replayed) = open(&dir, small_segments(WalSync::Always), 6);
        assert_eq!(replayed, vec![upsert(7, "new")]);
        assert_eq!(wal.last_seq(), 7);
        assert_eq!(segment_first_seqs(&dir), vec![7]);
    }

    #[test]
    fn sync_policies_parse_and_display() {
        let cases = [
            ("always", WalSync::Always),
            ("never", WalSync::Never),
            (" Always ", WalSync::Always),
            (
                "interval:100ms",
                WalSync::Interval(Duration::from_millis(100)),
            ),
            (
                "interval:100",
                WalSync::Interval(Duration::from_millis(100)),
            ),
            ("interval:1s", WalSync::Interval(Duration::from_secs(1))),
            (
                "interval:1m 30s",
                WalSync::Interval(Duration::from_secs(90)),
            ),
            (
                "interval:250us",
                WalSync::Interval(Duration::from_micros(250)),
            ),
            ("interval:0", WalSync::Interval(Duration::ZERO)),
        ];
        for (text, expected) in cases {
            let parsed: WalSync = text
                .parse()
                .unwrap_or_else(|error| panic!("{text}: {error}"));
            assert_eq!(parsed, expected, "{text}");
            assert_eq!(parsed.to_string().parse::<WalSync>().unwrap(), parsed);
        }
        assert_eq!(WalSync::Always.to_string(), "always");
        assert_eq!(WalSync::Never.to_string(), "never");
        assert_eq!(
            WalSync::Interval(Duration::from_secs(2)).to_string(),
            "interval:2000ms"
        );
        for odd in [
            Duration::from_nanos(1_500),
            Duration::from_nanos(7),
            Duration::from_micros(1_001),
        ] {
            let policy = WalSync::Interval(odd);
            assert_eq!(policy.to_string().parse::<WalSync>().unwrap(), policy);
        }
        for bad in [
            "",
            "sometimes",
            "interval",
            "interval:",
            "interval:5 parsecs",
            "interval:ms",
            "interval:1s5",
            "interval:-1s",
            "interval:99999999999999999999",
        ] {
            let error = bad.parse::<WalSync>().unwrap_err();
            assert!(error.to_string().contains("interval:100ms"), "{error}");
        }
        assert_eq!(WalOptions::default().sync, WalSync::Always);
        assert_eq!(WalOptions::default().segment_bytes, 64 << 20);
    }

    #[test]
    fn only_the_always_policy_syncs_every_append() {
        let root = tempfile::tempdir().unwrap();
        let count_syncs = |name: &str, sync: WalSync| {
            let dir = root.path().join(name);
            let options = WalOptions {
                sync,
                segment_bytes: DEFAULT_SEGMENT_BYTES,
            };
            let (mut wal, _) = open(&dir, options, 0);
            append_all(&mut wal, &records(1..=10));
            let during = wal.append_syncs();
            wal.sync().unwrap();
            let after_sync = wal.append_syncs();
            // Nothing new to make durable: no second fsync.
            wal.sync().unwrap();
            assert_eq!(wal.append_syncs(), after_sync);
            drop(wal);
            let (_wal, replayed) = open(&dir, options, 0);
            assert_eq!(replayed, records(1..=10), "{name}");
            (during, after_sync)
        };
        assert_eq!(count_syncs("always", WalSync::Always), (10, 10));
        assert_eq!(
            count_syncs("hourly", WalSync::Interval(Duration::from_secs(3600))),
            (0, 1)
        );
        assert_eq!(
            count_syncs("eager", WalSync::Interval(Duration::ZERO)),
            (10, 10)
        );
        assert_eq!(count_syncs("never", WalSync::Never), (0, 1));
    }

    #[test]
    fn a_closed_segment_is_synced_under_every_policy() {
        let root = tempfile::tempdir().unwrap();
        let dir = log_dir(&root);
        let (mut wal, _) = open(&dir, small_segments(WalSync::Never), 0);
        append_all(&mut wal, &records(1..=10));
        let segments = segment_files(&dir).len() as u64;
        assert!(segments >= 3);
        // One fsync per roll, none per append.
        assert_eq!(wal.append_syncs(), segments - 1);
    }

    #[test]
    fn a_legacy_single_file_log_is_converted_with_every_record() {
        let root = tempfile::tempdir().unwrap();
        let dir = log_dir(&root);
        let legacy_path = root.path().join(LEGACY_LOG_NAME);
        let legacy: Vec<WalRecord> = records(5..=9)
            .into_iter()
            .map(|record| WalRecord { epoch: 0, ..record })
            .collect();
        write_legacy_log(&legacy_path, &legacy);
        // A torn append at its end, never acknowledged.
        let mut bytes = fs::read(&legacy_path).unwrap();
        bytes.extend_from_slice(&[200, 0, 0, 0, 1, 2]);
        fs::write(&legacy_path, &bytes).unwrap();

        let (mut wal, replayed) = open(&dir, small_segments(WalSync::Always), 4);
        assert_eq!(replayed, legacy);
        assert!(!legacy_path.exists());
        assert_eq!(segment_first_seqs(&dir), vec![5]);
        assert_eq!(wal.first_seq(), Some(5));
        assert_eq!(wal.last_seq(), 9);
        assert_eq!(
            wal.read_after(6, 2, usize::MAX).unwrap(),
            Some(legacy[2..4].to_vec())
        );
        wal.append(&upsert(10, "new")).unwrap();
        drop(wal);
        let (_wal, replayed) = open(&dir, small_segments(WalSync::Always), 4);
        assert_eq!(replayed.len(), 6);
        assert_eq!(replayed[..5], legacy);

        // A crash after the conversion but before wal.log was deleted converts nothing twice.
        write_legacy_log(&legacy_path, &legacy);
        let (_wal, replayed) = open(&dir, small_segments(WalSync::Always), 4);
        assert_eq!(replayed.len(), 6);
        assert!(!legacy_path.exists());
    }

    #[test]
    fn a_legacy_log_the_snapshot_covers_is_dropped() {
        let root = tempfile::tempdir().unwrap();
        let dir = log_dir(&root);
        let legacy_path = root.path().join(LEGACY_LOG_NAME);
        fs::write(&legacy_path, b"").unwrap();
        let (wal, replayed) = open(&dir, WalOptions::default(), 30);
        assert!(replayed.is_empty());
        assert_eq!(wal.last_seq(), 30);
        assert!(!legacy_path.exists());
    }

    #[test]
    fn a_corrupt_legacy_log_refuses_to_open_and_is_kept() {
        let root = tempfile::tempdir().unwrap();
        let dir = log_dir(&root);
        let legacy_path = root.path().join(LEGACY_LOG_NAME);
        write_legacy_log(&legacy_path, &records(1..=3));
        let mut bytes = fs::read(&legacy_path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xFF;
        fs::write(&legacy_path, &bytes).unwrap();
        let error = open_error(&dir, 0);
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(error.to_string().contains("wal.log"), "{error}");
        assert_eq!(fs::read(&legacy_path).unwrap(), bytes);
        assert!(segment_files(&dir).is_empty());
    }

    #[test]
    fn a_legacy_log_ahead_of_the_segments_is_not_deleted() {
        let root = tempfile::tempdir().unwrap();
        let dir = log_dir(&root);
        {
            let (mut wal, _) = open(&dir, WalOptions::default(), 0);
            append_all(&mut wal, &records(1..=2));
        }
        let legacy_path = root.path().join(LEGACY_LOG_NAME);
        write_legacy_log(&legacy_path, &records(1..=4));
        let error = open_error(&dir, 0);
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(legacy_path.exists());
    }

    #[test]
    fn leftover_temporary_segments_are_ignored_and_removed() {
        let root = tempfile::tempdir().unwrap();
        let dir = log_dir(&root);
        {
            let (mut wal, _) = open(&dir, WalOptions::default(), 0);
            append_all(&mut wal, &records(1..=2));
        }
        let leftover = dir.join(format!("{}{TEMPORARY_SUFFIX}", segment_file_name(3)));
        fs::write(&leftover, b"QVWAL").unwrap();
        let (_wal, replayed) = open(&dir, WalOptions::default(), 0);
        assert_eq!(replayed, records(1..=2));
        assert!(!leftover.exists());
    }

    #[test]
    #[cfg_attr(debug_assertions, should_panic(expected = "appended in order"))]
    fn an_append_out_of_order_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let (mut wal, _) = open(&log_dir(&root), WalOptions::default(), 0);
        wal.append(&upsert(1, "a")).unwrap();
        let error = wal.append(&upsert(3, "a")).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        wal.append(&upsert(2, "a")).unwrap();
    }
}
