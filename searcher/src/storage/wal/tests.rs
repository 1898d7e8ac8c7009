//! The log as a whole: appends, replay, torn tails and corruption, compaction, reads for
//! peers, resets, sync policies and the legacy conversion.

use std::{
    collections::BTreeMap,
    fs::{self, OpenOptions},
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use super::{
    legacy::LEGACY_LOG_NAME,
    record::{encode_frame, encode_payload},
    segment::{list_segments, segment_file_name, SEGMENT_HEADER_BYTES, TEMPORARY_SUFFIX},
    *,
};
use crate::point::PointData;

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

fn open_error(dir: &Path, after_seq: u64) -> StorageError {
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
