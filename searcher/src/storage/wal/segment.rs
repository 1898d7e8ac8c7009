//! Segment files: their names (`<first seq, 20 digits>.log`), their header, and how one is
//! written into place.
//!
//! The header is sealed ([`codec::seal`]): magic, format version, generation, first seq,
//! then the CRC-32 of those bytes. It lets a segment that holds no record yet still say
//! where the log continues, and the generation tells a reset's new log from the old one.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read, Write},
    path::{Path, PathBuf},
};

use crate::storage::{codec, fs::remove_file_if_exists, IoContext, Result};

const SEGMENT_MAGIC: &[u8; 8] = b"QVWALSEG";
const SEGMENT_FORMAT_VERSION: u32 = 1;
/// Magic, format version, generation, first seq, crc32 of the bytes before it.
pub(super) const SEGMENT_HEADER_BYTES: u64 = 8 + 4 + 8 + 8 + 4;
const SEGMENT_SUFFIX: &str = ".log";
pub(super) const TEMPORARY_SUFFIX: &str = ".tmp";
/// [`super::Wal::read_after`] seeks to the nearest indexed record before the one asked for
/// and scans from there: an entry every this many bytes bounds that scan while keeping the
/// index at about a thousand entries per 64 MiB segment.
const INDEX_STRIDE_BYTES: u64 = 64 << 10;

/// One segment file as the log knows it.
#[derive(Debug)]
pub(super) struct Segment {
    pub(super) path: PathBuf,
    pub(super) first_seq: u64,
    /// The seq its next record would have: `first_seq` while it holds none.
    pub(super) next_seq: u64,
    /// Header included; every byte up to here is an intact frame.
    pub(super) len_bytes: u64,
    /// `(seq, byte offset)` of the first record and then of a record at least every
    /// [`INDEX_STRIDE_BYTES`].
    pub(super) index: Vec<(u64, u64)>,
}

impl Segment {
    pub(super) fn empty(path: PathBuf, first_seq: u64) -> Segment {
        Segment {
            path,
            first_seq,
            next_seq: first_seq,
            len_bytes: SEGMENT_HEADER_BYTES,
            index: Vec::new(),
        }
    }

    pub(super) fn holds_records(&self) -> bool {
        self.next_seq > self.first_seq
    }

    pub(super) fn note_record(&mut self, seq: u64, offset: u64, frame_bytes: u64) {
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
    pub(super) fn scan_start(&self, seq: u64) -> u64 {
        let position = self
            .index
            .partition_point(|&(indexed_seq, _)| indexed_seq <= seq);
        match position {
            0 => SEGMENT_HEADER_BYTES,
            _ => self.index[position - 1].1,
        }
    }
}

pub(super) fn segment_file_name(first_seq: u64) -> String {
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
pub(super) fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
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
pub(super) fn remove_temporary_files(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
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
    codec::put_u64(&mut header, generation);
    codec::put_u64(&mut header, first_seq);
    codec::seal(&mut header);
    debug_assert_eq!(header.len() as u64, SEGMENT_HEADER_BYTES);
    header
}

/// `(generation, first seq)` of a segment, or why its header is unusable; an I/O failure is
/// the outer error.
pub(super) fn read_segment_header(
    path: &Path,
    name_seq: u64,
) -> Result<std::result::Result<(u64, u64), String>> {
    let mut file = File::open(path).at(path)?;
    let mut header = [0u8; SEGMENT_HEADER_BYTES as usize];
    if let Err(error) = file.read_exact(&mut header) {
        if error.kind() == io::ErrorKind::UnexpectedEof {
            return Ok(Err("segment is shorter than its header".into()));
        }
        return Err(error).at(path);
    }
    let u64_at =
        |start: usize| u64::from_le_bytes(header[start..start + 8].try_into().expect("8 bytes"));
    if &header[0..8] != SEGMENT_MAGIC {
        return Ok(Err("not a write-ahead log segment (bad magic)".into()));
    }
    let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if version != SEGMENT_FORMAT_VERSION {
        return Ok(Err(format!(
            "segment format version {version} is not one this build reads"
        )));
    }
    if codec::unseal(&header).is_none() {
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
pub(super) fn write_segment_file(
    dir: &Path,
    generation: u64,
    first_seq: u64,
    body: &[u8],
) -> Result<(PathBuf, File)> {
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
            Err(error).at(&path)
        }
    }
}
