//! The one file format every native index saves in.
//!
//! A save file is: an 8-byte magic naming the index kind, a `u32` format version, the
//! index's own fields (little-endian), and a CRC-32 (IEEE, as zlib, gzip and PNG compute it,
//! by `crc32fast`) of every byte before it. Files are
//! written to `<name>.tmp`, fsynced, renamed over `<name>` and the directory fsynced, so a
//! crash leaves either the old save or the new one, never a mix.
//!
//! [`Reader`] checks lengths before allocating (a corrupt count cannot ask for terabytes)
//! and reports every mismatch as [`Error::Corrupt`] naming the file.

use std::{
    fs::{self, File},
    io::{self, BufReader, BufWriter, Read, Write},
    path::{Path, PathBuf},
};

use crc32fast::Hasher as Crc32;

use crate::{Error, Metric, Result};

const CHECKSUM_LEN: u64 = 4;
/// Values encoded or decoded per I/O call.
const IO_CHUNK_VALUES: usize = 16 * 1024;

/// Writes one save file; nothing is visible under the final name until [`Writer::commit`].
pub(crate) struct Writer {
    inner: BufWriter<File>,
    crc: Crc32,
    dir: PathBuf,
    temporary_path: PathBuf,
    final_path: PathBuf,
}

impl Writer {
    pub(crate) fn create(
        dir: &Path,
        file_name: &str,
        magic: &[u8; 8],
        version: u32,
    ) -> Result<Self> {
        fs::create_dir_all(dir)?;
        let temporary_path = dir.join(format!("{file_name}.tmp"));
        let file = File::create(&temporary_path)?;
        let mut writer = Self {
            inner: BufWriter::with_capacity(1 << 16, file),
            crc: Crc32::new(),
            dir: dir.to_path_buf(),
            temporary_path,
            final_path: dir.join(file_name),
        };
        writer.bytes(magic)?;
        writer.u32(version)?;
        Ok(writer)
    }

    pub(crate) fn bytes(&mut self, bytes: &[u8]) -> Result<()> {
        self.inner.write_all(bytes)?;
        self.crc.update(bytes);
        Ok(())
    }

    pub(crate) fn u8(&mut self, value: u8) -> Result<()> {
        self.bytes(&[value])
    }

    pub(crate) fn u32(&mut self, value: u32) -> Result<()> {
        self.bytes(&value.to_le_bytes())
    }

    pub(crate) fn u64(&mut self, value: u64) -> Result<()> {
        self.bytes(&value.to_le_bytes())
    }

    /// A `usize` stored as `u64`.
    pub(crate) fn len(&mut self, value: usize) -> Result<()> {
        self.u64(value as u64)
    }

    pub(crate) fn metric(&mut self, metric: Metric) -> Result<()> {
        self.u8(metric_code(metric))
    }

    pub(crate) fn f32s(&mut self, values: &[f32]) -> Result<()> {
        self.values(values, |value, out| {
            out.extend_from_slice(&value.to_le_bytes())
        })
    }

    pub(crate) fn u32s(&mut self, values: &[u32]) -> Result<()> {
        self.values(values, |value, out| {
            out.extend_from_slice(&value.to_le_bytes())
        })
    }

    pub(crate) fn u64s(&mut self, values: &[u64]) -> Result<()> {
        self.values(values, |value, out| {
            out.extend_from_slice(&value.to_le_bytes())
        })
    }

    fn values<T: Copy>(&mut self, values: &[T], encode: impl Fn(T, &mut Vec<u8>)) -> Result<()> {
        let mut buffer = Vec::with_capacity(IO_CHUNK_VALUES.min(values.len()) * size_of::<T>());
        for chunk in values.chunks(IO_CHUNK_VALUES) {
            buffer.clear();
            for &value in chunk {
                encode(value, &mut buffer);
            }
            self.bytes(&buffer)?;
        }
        Ok(())
    }

    /// Appends the checksum and makes the file the current save, durably.
    pub(crate) fn commit(mut self) -> Result<()> {
        let checksum = self.crc.finalize();
        self.inner.write_all(&checksum.to_le_bytes())?;
        let file = self
            .inner
            .into_inner()
            .map_err(|error| error.into_error())?;
        // The data must be on disk before the rename makes it the current save; otherwise a
        // crash could leave the final name pointing at blocks that were never written.
        file.sync_all()?;
        drop(file);
        fs::rename(&self.temporary_path, &self.final_path)?;
        sync_directory(&self.dir)?;
        Ok(())
    }
}

/// Reads one save file written by [`Writer`], checking as it goes.
pub(crate) struct Reader {
    inner: BufReader<File>,
    crc: Crc32,
    /// Bytes left before the checksum.
    remaining: u64,
    path: PathBuf,
}

impl Reader {
    /// Opens `dir/file_name` and checks its magic and version.
    pub(crate) fn open(dir: &Path, file_name: &str, magic: &[u8; 8], version: u32) -> Result<Self> {
        let path = dir.join(file_name);
        let file = File::open(&path)?;
        let file_len = file.metadata()?.len();
        let mut reader = Self {
            inner: BufReader::with_capacity(1 << 16, file),
            crc: Crc32::new(),
            remaining: file_len.saturating_sub(CHECKSUM_LEN),
            path,
        };
        if file_len < 8 + 4 + CHECKSUM_LEN {
            return Err(reader.corrupt(format!("file is only {file_len} bytes")));
        }
        let found = reader.bytes(8)?;
        if found != magic {
            return Err(reader.corrupt(format!(
                "magic is {:?}, expected {:?}",
                String::from_utf8_lossy(&found),
                String::from_utf8_lossy(magic)
            )));
        }
        let found_version = reader.u32()?;
        if found_version != version {
            return Err(reader.corrupt(format!(
                "format version {found_version}; this build reads version {version}"
            )));
        }
        Ok(reader)
    }

    /// An [`Error::Corrupt`] naming this file.
    pub(crate) fn corrupt(&self, detail: impl Into<String>) -> Error {
        Error::Corrupt(format!("{}: {}", self.path.display(), detail.into()))
    }

    fn take(&mut self, count: u64) -> Result<()> {
        if count > self.remaining {
            return Err(self.corrupt(format!(
                "needs {count} more bytes but only {} remain; truncated or corrupt",
                self.remaining
            )));
        }
        self.remaining -= count;
        Ok(())
    }

    fn fill(&mut self, buffer: &mut [u8]) -> Result<()> {
        self.take(buffer.len() as u64)?;
        self.inner.read_exact(buffer).map_err(|error| {
            if error.kind() == io::ErrorKind::UnexpectedEof {
                self.corrupt("file ended early")
            } else {
                Error::Io(error)
            }
        })?;
        self.crc.update(buffer);
        Ok(())
    }

    pub(crate) fn bytes(&mut self, count: usize) -> Result<Vec<u8>> {
        self.take(count as u64)?;
        self.remaining += count as u64;
        let mut buffer = vec![0u8; count];
        self.fill(&mut buffer)?;
        Ok(buffer)
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        let mut buffer = [0u8; 1];
        self.fill(&mut buffer)?;
        Ok(buffer[0])
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        let mut buffer = [0u8; 4];
        self.fill(&mut buffer)?;
        Ok(u32::from_le_bytes(buffer))
    }

    pub(crate) fn u64(&mut self) -> Result<u64> {
        let mut buffer = [0u8; 8];
        self.fill(&mut buffer)?;
        Ok(u64::from_le_bytes(buffer))
    }

    /// A length written by [`Writer::len`], refused if it cannot fit in memory.
    pub(crate) fn len(&mut self) -> Result<usize> {
        let value = self.u64()?;
        usize::try_from(value).map_err(|_| self.corrupt(format!("length {value} is too large")))
    }

    pub(crate) fn metric(&mut self) -> Result<Metric> {
        let code = self.u8()?;
        metric_from_code(code).ok_or_else(|| self.corrupt(format!("unknown metric code {code}")))
    }

    pub(crate) fn f32s(&mut self, count: usize) -> Result<Vec<f32>> {
        self.values(count, |bytes| {
            f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
        })
    }

    pub(crate) fn u32s(&mut self, count: usize) -> Result<Vec<u32>> {
        self.values(count, |bytes| {
            u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
        })
    }

    pub(crate) fn u64s(&mut self, count: usize) -> Result<Vec<u64>> {
        self.values(count, |bytes| {
            u64::from_le_bytes([
                bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7],
            ])
        })
    }

    fn values<T>(&mut self, count: usize, decode: impl Fn(&[u8]) -> T) -> Result<Vec<T>> {
        let width = size_of::<T>();
        let total = (count as u64).checked_mul(width as u64);
        match total {
            Some(total) if total <= self.remaining => {}
            _ => {
                return Err(self.corrupt(format!(
                    "{count} values of {width} bytes do not fit in the {} bytes left",
                    self.remaining
                )))
            }
        }
        let mut values = Vec::with_capacity(count);
        let mut buffer = vec![0u8; IO_CHUNK_VALUES.min(count) * width];
        let mut left = count;
        while left > 0 {
            let chunk = left.min(IO_CHUNK_VALUES);
            let bytes = &mut buffer[..chunk * width];
            self.fill(bytes)?;
            values.extend(bytes.chunks_exact(width).map(&decode));
            left -= chunk;
        }
        Ok(values)
    }

    /// Checks that every field was read and the checksum matches.
    pub(crate) fn finish(mut self) -> Result<()> {
        if self.remaining != 0 {
            return Err(self.corrupt(format!(
                "{} unread bytes before the checksum",
                self.remaining
            )));
        }
        let computed = self.crc.clone().finalize();
        let mut stored = [0u8; CHECKSUM_LEN as usize];
        self.inner
            .read_exact(&mut stored)
            .map_err(|_| self.corrupt("checksum missing"))?;
        let stored = u32::from_le_bytes(stored);
        if stored != computed {
            return Err(self.corrupt(format!(
                "checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
            )));
        }
        Ok(())
    }
}

pub(crate) fn metric_code(metric: Metric) -> u8 {
    match metric {
        Metric::L2 => 0,
        Metric::InnerProduct => 1,
        Metric::Cosine => 2,
    }
}

pub(crate) fn metric_from_code(code: u8) -> Option<Metric> {
    match code {
        0 => Some(Metric::L2),
        1 => Some(Metric::InnerProduct),
        2 => Some(Metric::Cosine),
        _ => None,
    }
}

/// Makes a rename inside `dir` durable. Directories cannot be opened for syncing on every
/// platform; where they cannot, the rename is as durable as the platform allows.
pub(crate) fn sync_directory(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAGIC: [u8; 8] = *b"QVTEST01";

    fn write_sample(dir: &Path) {
        let mut writer = Writer::create(dir, "sample.bin", &MAGIC, 3).unwrap();
        writer.metric(Metric::Cosine).unwrap();
        writer.len(3).unwrap();
        writer.f32s(&[1.0, -2.5, 3.25]).unwrap();
        writer.u32s(&[7, 8]).unwrap();
        writer.u64s(&[u64::MAX]).unwrap();
        writer.commit().unwrap();
    }

    #[test]
    fn what_is_written_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        write_sample(dir.path());
        let mut reader = Reader::open(dir.path(), "sample.bin", &MAGIC, 3).unwrap();
        assert_eq!(reader.metric().unwrap(), Metric::Cosine);
        let count = reader.len().unwrap();
        assert_eq!(reader.f32s(count).unwrap(), vec![1.0, -2.5, 3.25]);
        assert_eq!(reader.u32s(2).unwrap(), vec![7, 8]);
        assert_eq!(reader.u64s(1).unwrap(), vec![u64::MAX]);
        reader.finish().unwrap();
        assert!(!dir.path().join("sample.bin.tmp").exists());
    }

    #[test]
    fn a_flipped_bit_fails_the_checksum() {
        let dir = tempfile::tempdir().unwrap();
        write_sample(dir.path());
        let path = dir.path().join("sample.bin");
        let mut bytes = fs::read(&path).unwrap();
        bytes[24] ^= 0x10; // inside the f32 values
        fs::write(&path, bytes).unwrap();
        let mut reader = Reader::open(dir.path(), "sample.bin", &MAGIC, 3).unwrap();
        reader.metric().unwrap();
        let count = reader.len().unwrap();
        reader.f32s(count).unwrap();
        reader.u32s(2).unwrap();
        reader.u64s(1).unwrap();
        let error = reader.finish().unwrap_err().to_string();
        assert!(error.contains("checksum mismatch"), "{error}");
    }

    /// The CRC-32 of `bytes` in one call.
    fn checksum(bytes: &[u8]) -> u32 {
        crc32fast::hash(bytes)
    }

    /// The textbook bit-at-a-time CRC-32/IEEE (reflected polynomial `0xEDB88320`), to check
    /// the library against the definition earlier saves were written with.
    fn bitwise_reference(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in bytes {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn matches_the_standard_check_values() {
        assert_eq!(checksum(b""), 0);
        assert_eq!(checksum(b"123456789"), 0xCBF4_3926);
        assert_eq!(
            checksum(b"The quick brown fox jumps over the lazy dog"),
            0x414F_A339
        );
    }

    #[test]
    fn matches_the_bitwise_definition_for_any_split() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for len in 0..100 {
            let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            let expected = bitwise_reference(&bytes);
            assert_eq!(checksum(&bytes), expected, "length {len}");
            let split = rng.gen_range(0..=len);
            let mut crc = Crc32::new();
            crc.update(&bytes[..split]);
            crc.update(&bytes[split..]);
            assert_eq!(crc.finalize(), expected, "length {len} split at {split}");
        }
    }

    /// `write_sample`'s file as the hand-written CRC-32 of earlier versions saved it: saves
    /// on disk today must keep loading, and new saves must come out byte for byte the same.
    const SAMPLE_SAVED_BEFORE: [u8; 53] = [
        0x51, 0x56, 0x54, 0x45, 0x53, 0x54, 0x30, 0x31, 0x03, 0x00, 0x00, 0x00, 0x02, 0x03, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x20, 0xc0, 0x00,
        0x00, 0x50, 0x40, 0x07, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xdd, 0x65, 0x2c, 0xee,
    ];

    #[test]
    fn a_file_saved_before_still_loads_and_saves_identically() {
        let dir = tempfile::tempdir().unwrap();
        write_sample(dir.path());
        assert_eq!(
            fs::read(dir.path().join("sample.bin")).unwrap(),
            SAMPLE_SAVED_BEFORE
        );
        fs::write(dir.path().join("old.bin"), SAMPLE_SAVED_BEFORE).unwrap();
        let mut reader = Reader::open(dir.path(), "old.bin", &MAGIC, 3).unwrap();
        assert_eq!(reader.metric().unwrap(), Metric::Cosine);
        let count = reader.len().unwrap();
        assert_eq!(reader.f32s(count).unwrap(), vec![1.0, -2.5, 3.25]);
        assert_eq!(reader.u32s(2).unwrap(), vec![7, 8]);
        assert_eq!(reader.u64s(1).unwrap(), vec![u64::MAX]);
        reader.finish().unwrap();
    }

    #[test]
    fn wrong_magic_version_and_huge_counts_are_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        write_sample(dir.path());
        let error = Reader::open(dir.path(), "sample.bin", b"QVOTHER1", 3)
            .err()
            .unwrap();
        assert!(error.to_string().contains("magic"), "{error}");
        let error = Reader::open(dir.path(), "sample.bin", &MAGIC, 4)
            .err()
            .unwrap();
        assert!(error.to_string().contains("version"), "{error}");
        let mut reader = Reader::open(dir.path(), "sample.bin", &MAGIC, 3).unwrap();
        let error = reader.f32s(usize::MAX / 2).unwrap_err();
        assert!(matches!(error, Error::Corrupt(_)), "{error}");
    }
}
