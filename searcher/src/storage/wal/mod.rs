//! The write-ahead log of one replica: a directory of segment files.
//!
//! A write is acknowledged only once its record is in the log and durable as the sync policy
//! ([`WalSync`]) asks, so under the default policy a Searcher killed at any moment replays
//! every acknowledged write on restart. The log is split into segments named
//! `<first seq, 20 digits>.log` so that a snapshot lets whole files go (no rewriting) and a
//! lagging peer can be served records straight from disk ([`Wal::read_after`]).
//!
//! - `segment.rs`: file names, the segment header (magic, format version, generation, first
//!   seq, crc32), writing a segment under a temporary name and renaming it into place, so a
//!   segment file either does not exist or has its whole header.
//! - `record.rs`: [`WalRecord`] and its codec; each record is one checksummed frame
//!   `[payload length u32][crc32 of payload u32][payload]`, little-endian.
//! - `scan.rs`: the replay rules, all aimed at never losing or skipping an acknowledged
//!   write: a torn last append is truncated, anything else bad refuses the open as
//!   [`StorageError::Corrupt`] naming the segment and the byte offset.
//! - `sync.rs`: the sync policy, [`WalSync`].
//! - `legacy.rs`: converting the single-file `wal.log` of older versions.
//!
//! [`Wal::reset`] bumps the generation in the header of the segment it starts. Segments of
//! an older generation are the leftovers of a reset cut short by a crash and are removed,
//! which makes a reset atomic without rewriting anything in place.

mod legacy;
mod record;
mod scan;
mod segment;
mod sync;
#[cfg(test)]
mod tests;

#[cfg(test)]
pub(crate) use record::test_record;
pub use record::{WalOp, WalRecord};
pub use sync::{ParseWalSyncError, WalSync};

use std::{
    fs::{File, OpenOptions},
    io::{BufReader, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    time::Instant,
};

use record::{encode_frame, read_frame, Format, Frame};
use scan::{corruption, scan_segments, Scan};
use segment::{write_segment_file, Segment, SEGMENT_HEADER_BYTES};

use super::{
    fs::{create_dir_durably, parent_dir, remove_file_if_exists, sync_dir},
    IoContext, Result, StorageError,
};

pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

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
    /// ([`StorageError::Corrupt`]), as is corruption anywhere in the log. A single-file
    /// `wal.log` left next to `dir` by an older version is converted into a segment and then
    /// deleted.
    pub fn open(dir: &Path, options: WalOptions, after_seq: u64) -> Result<(Wal, Vec<WalRecord>)> {
        create_dir_durably(dir)?;
        segment::remove_temporary_files(dir)?;
        let legacy_path = legacy::legacy_log_path(dir);
        let legacy_records = match &legacy_path {
            Some(path) => legacy::read_legacy_log(path)?,
            None => Vec::new(),
        };
        let mut listing = segment::list_segments(dir)?;
        if listing.is_empty() && !legacy_records.is_empty() {
            legacy::convert_legacy_log(dir, &legacy_records)?;
            listing = segment::list_segments(dir)?;
        }
        let mut scan = scan_segments(&listing, after_seq)?;

        // Everything that can refuse the log is checked before anything is deleted or
        // truncated.
        let log_last_seq = scan
            .segments
            .last()
            .map(|segment| segment.next_seq - 1)
            .unwrap_or(after_seq);
        check_no_records_missing(&scan, after_seq)?;
        if let Some(path) = &legacy_path {
            legacy::check_not_ahead(path, &legacy_records, dir, log_last_seq, after_seq)?;
        }

        remove_obsolete_segments(dir, &scan.obsolete)?;
        let mut wal = Wal::resume(dir, options, after_seq, &mut scan)?;
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

    /// The log as the scan found it (its segments taken), appending after its last intact
    /// record (a torn tail cut off), or a first, empty segment starting after `after_seq`.
    fn resume(dir: &Path, options: WalOptions, after_seq: u64, scan: &mut Scan) -> Result<Wal> {
        let Some(active) = scan.segments.last() else {
            let first_seq = after_seq + 1;
            let (path, active_file) = write_segment_file(dir, scan.generation, first_seq, &[])?;
            sync_dir(dir)?;
            let segments = vec![Segment::empty(path, first_seq)];
            return Ok(Wal::with_segments(
                dir,
                options,
                scan.generation,
                segments,
                active_file,
            ));
        };
        let path = &active.path;
        let mut active_file = OpenOptions::new().write(true).open(path).at(path)?;
        if let Some(file_len) = scan.torn_tail_file_len {
            tracing::warn!(
                path = %path.display(),
                intact_bytes = active.len_bytes,
                dropped_bytes = file_len - active.len_bytes,
                "truncating torn tail of write-ahead log"
            );
            active_file.set_len(active.len_bytes).at(path)?;
            active_file.sync_all().at(path)?;
        }
        active_file
            .seek(SeekFrom::Start(active.len_bytes))
            .at(path)?;
        let segments = std::mem::take(&mut scan.segments);
        Ok(Wal::with_segments(
            dir,
            options,
            scan.generation,
            segments,
            active_file,
        ))
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
    pub fn append(&mut self, record: &WalRecord) -> Result<()> {
        let expected_seq = self.last_seq() + 1;
        debug_assert_eq!(
            record.seq, expected_seq,
            "log records are appended in order"
        );
        if record.seq != expected_seq {
            return Err(StorageError::InvalidInput(format!(
                "write-ahead log record has seq {} but the next one must be {expected_seq}",
                record.seq
            )));
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

    fn write_and_sync(&mut self, frame: &[u8]) -> Result<()> {
        let path = &self.segments.last().expect("an active segment").path;
        self.active_file.write_all(frame).at(path)?;
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
    pub fn sync(&mut self) -> Result<()> {
        if self.directory_unsynced {
            self.sync_directory()?;
        }
        if self.unsynced {
            self.sync_active()?;
        }
        Ok(())
    }

    fn sync_active(&mut self) -> Result<()> {
        self.active_file.sync_data().at(&self.active().path)?;
        self.unsynced = false;
        self.last_sync = Instant::now();
        #[cfg(test)]
        {
            self.append_syncs += 1;
        }
        Ok(())
    }

    fn sync_directory(&mut self) -> Result<()> {
        self.directory_unsynced = true;
        sync_dir(&self.dir)?;
        self.directory_unsynced = false;
        Ok(())
    }

    /// Closes the active segment and starts the next one.
    fn roll(&mut self) -> Result<()> {
        // A bad frame in any segment but the last is corruption, so under Interval or Never
        // the closed segment must be on disk before a newer one can be.
        if self.unsynced {
            self.sync_active()?;
        }
        self.start_segment(self.last_seq() + 1)
    }

    fn start_segment(&mut self, first_seq: u64) -> Result<()> {
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
    pub fn compact(&mut self, covered_seq: u64) -> Result<()> {
        if covered_seq > self.last_seq() {
            return Err(StorageError::InvalidInput(format!(
                "a snapshot covering seq {covered_seq} is past the log's last seq {}; \
                 reset the log instead",
                self.last_seq()
            )));
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
    ) -> Result<Option<Vec<WalRecord>>> {
        if after_seq >= self.last_seq() {
            return Ok(Some(Vec::new()));
        }
        let wanted_seq = after_seq + 1;
        let Some(position) = self
            .segments
            .iter()
            .position(|segment| segment.first_seq <= wanted_seq && wanted_seq < segment.next_seq)
        else {
            return Ok(None);
        };
        let mut batch = ReadBatch {
            records: Vec::new(),
            wanted_seq,
            bytes: 0,
            max_records,
            max_bytes,
        };
        if max_records == 0 {
            return Ok(Some(batch.records));
        }
        for segment in &self.segments[position..] {
            if segment.holds_records() && batch.read_segment(segment)? {
                break;
            }
        }
        Ok(Some(batch.records))
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
    pub fn reset(&mut self, next_seq: u64) -> Result<()> {
        if next_seq == 0 {
            return Err(StorageError::InvalidInput(
                "write-ahead log seqs start at 1".into(),
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

/// The records [`Wal::read_after`] gathers, and its limits.
struct ReadBatch {
    records: Vec<WalRecord>,
    /// The seq the next record read must have.
    wanted_seq: u64,
    /// Frame bytes gathered so far.
    bytes: usize,
    max_records: usize,
    max_bytes: usize,
}

impl ReadBatch {
    /// Reads `segment` from the indexed record nearest before `wanted_seq`; true once a limit
    /// is reached.
    fn read_segment(&mut self, segment: &Segment) -> Result<bool> {
        let path = &segment.path;
        let mut offset = segment.scan_start(self.wanted_seq);
        let mut file = File::open(path).at(path)?;
        file.seek(SeekFrom::Start(offset)).at(path)?;
        let mut reader = BufReader::new(file);
        loop {
            let frame =
                read_frame(&mut reader, offset, segment.len_bytes, Format::Current).at(path)?;
            let (record, frame_bytes) = match frame {
                Frame::End => return Ok(false),
                Frame::Record {
                    record,
                    frame_bytes,
                } => (record, frame_bytes),
                Frame::Bad { .. } => {
                    return Err(corruption(
                        path,
                        offset,
                        self.wanted_seq - 1,
                        "record went bad after the log was opened",
                    ))
                }
            };
            offset += frame_bytes;
            if record.seq < self.wanted_seq {
                continue;
            }
            if record.seq != self.wanted_seq {
                return Err(corruption(
                    path,
                    offset - frame_bytes,
                    self.wanted_seq - 1,
                    format!(
                        "record has seq {} where {} belongs",
                        record.seq, self.wanted_seq
                    ),
                ));
            }
            let frame_bytes = frame_bytes as usize;
            if !self.records.is_empty() && self.bytes + frame_bytes > self.max_bytes {
                return Ok(true);
            }
            self.bytes += frame_bytes;
            self.wanted_seq += 1;
            self.records.push(record);
            if self.records.len() >= self.max_records {
                return Ok(true);
            }
        }
    }
}

/// A log that starts after `after_seq + 1` lacks records the caller needs.
fn check_no_records_missing(scan: &Scan, after_seq: u64) -> Result<()> {
    let Some(first) = scan.segments.first() else {
        return Ok(());
    };
    if after_seq + 1 >= first.first_seq {
        return Ok(());
    }
    Err(StorageError::corrupt(
        &first.path,
        0,
        format!(
            "starts at seq {} but the records after seq {after_seq} are needed; seqs {}..={} \
             are missing",
            first.first_seq,
            after_seq + 1,
            first.first_seq - 1
        ),
    ))
}

/// Removes the segments of older generations (a reset cut short by a crash).
fn remove_obsolete_segments(dir: &Path, obsolete: &[PathBuf]) -> Result<()> {
    for path in obsolete {
        tracing::warn!(
            path = %path.display(),
            "removing a write-ahead log segment left over from an interrupted reset"
        );
        remove_file_if_exists(path)?;
    }
    if !obsolete.is_empty() {
        sync_dir(dir)?;
    }
    Ok(())
}
