//! Readers for the ANN benchmark formats, synthetic data, exact ground truth and recall.
//!
//! `.fvecs` and `.ivecs` (the texmex corpus format used by SIFT, GIST and ann-benchmarks
//! exports) store each vector as a little-endian `i32` dimension followed by that many
//! little-endian `f32` or `i32` values.

use std::{
    collections::HashSet,
    fs::File,
    io::{self, BufReader, BufWriter, Read, Write},
    path::Path,
};

use crate::{Error, FlatIndex, Metric, Result, SearchParams, VectorIndex};

/// Row-major vectors of one dimension, as read from an `.fvecs` file.
#[derive(Debug, Clone, PartialEq)]
pub struct Vectors {
    pub dim: usize,
    /// `len() * dim` values; row `i` is `data[i*dim..(i+1)*dim]`.
    pub data: Vec<f32>,
}

impl Vectors {
    /// Number of vectors (0 when `dim` is 0).
    pub fn len(&self) -> usize {
        debug_assert!(self.dim == 0 || self.data.len() % self.dim == 0);
        if self.dim == 0 {
            return 0;
        }
        self.data.len() / self.dim
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Vector `index`.
    ///
    /// # Panics
    ///
    /// If `index >= self.len()`, like slice indexing.
    pub fn row(&self, index: usize) -> &[f32] {
        assert!(
            index < self.len(),
            "row {index} out of range for {} vectors",
            self.len()
        );
        &self.data[index * self.dim..(index + 1) * self.dim]
    }

    /// The vectors in order.
    pub fn rows(&self) -> impl Iterator<Item = &[f32]> + '_ {
        // `chunks_exact(0)` panics; a zero dimension means no rows.
        let chunk = if self.dim == 0 {
            self.data.len().max(1)
        } else {
            self.dim
        };
        self.data.chunks_exact(chunk).take(self.len())
    }
}

/// Reads an `.fvecs` file. Every vector must have the same, non-zero dimension; an empty,
/// truncated or ragged file is [`Error::Corrupt`].
pub fn read_fvecs(path: &Path) -> Result<Vectors> {
    let mut dim = 0;
    let mut data = Vec::new();
    let rows = for_each_record(path, |row, row_dim, payload, bytes_left| {
        if row_dim == 0 {
            return Err(format!("row {row} has dimension 0"));
        }
        if row == 0 {
            dim = row_dim;
            // Every row has the same size, so the file length tells how many follow.
            let rows_left = bytes_left / (4 + 4 * row_dim as u64);
            data.reserve(
                usize::try_from(rows_left.saturating_add(1))
                    .unwrap_or(0)
                    .saturating_mul(row_dim),
            );
        } else if row_dim != dim {
            return Err(format!(
                "row {row} has dimension {row_dim}, but earlier rows have {dim}"
            ));
        }
        data.extend(
            payload
                .chunks_exact(4)
                .map(|value| f32::from_le_bytes([value[0], value[1], value[2], value[3]])),
        );
        Ok(())
    })?;
    debug_assert_eq!(data.len(), rows * dim);
    Ok(Vectors { dim, data })
}

/// Reads a `.bvecs` file (one unsigned byte per component, as in SIFT1B) into floats.
pub fn read_bvecs(path: &Path) -> Result<Vectors> {
    let mut dim = 0;
    let mut data = Vec::new();
    let rows = for_each_record_of(path, 1, |row, row_dim, payload, _bytes_left| {
        if row_dim == 0 {
            return Err(format!("row {row} has dimension 0"));
        }
        if row == 0 {
            dim = row_dim;
        } else if row_dim != dim {
            return Err(format!(
                "row {row} has dimension {row_dim}, but earlier rows have {dim}"
            ));
        }
        data.extend(payload.iter().map(|&value| f32::from(value)));
        Ok(())
    })?;
    debug_assert_eq!(data.len(), rows * dim);
    Ok(Vectors { dim, data })
}

/// Reads MNIST-style idx3 images (`magic 0x00000803`, big-endian counts, then one byte
/// per pixel) from any reader (decompress `.gz` files before passing them), one vector
/// per image with each pixel as a float.
pub fn read_idx_images(mut reader: impl Read) -> Result<Vectors> {
    let mut header = [0u8; 16];
    reader
        .read_exact(&mut header)
        .map_err(|error| Error::Corrupt(format!("idx header: {error}")))?;
    let word = |at: usize| {
        u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    if word(0) != 0x0000_0803 {
        return Err(Error::Corrupt(format!(
            "not an idx3 ubyte image file (magic {:#010x})",
            word(0)
        )));
    }
    let (count, rows, columns) = (word(4) as usize, word(8) as usize, word(12) as usize);
    let dim = rows * columns;
    if dim == 0 {
        return Err(Error::Corrupt("idx images have no pixels".into()));
    }
    let mut pixels = Vec::new();
    reader.read_to_end(&mut pixels)?;
    if pixels.len() != count * dim {
        return Err(Error::Corrupt(format!(
            "idx header promises {count} images of {dim} pixels but {} bytes follow",
            pixels.len()
        )));
    }
    Ok(Vectors {
        dim,
        data: pixels.into_iter().map(f32::from).collect(),
    })
}

/// Reads an `.ivecs` file (typically ground-truth neighbour ids). Rows may differ in
/// length; a negative value, or an empty or truncated file, is [`Error::Corrupt`].
pub fn read_ivecs(path: &Path) -> Result<Vec<Vec<u32>>> {
    let mut rows = Vec::new();
    for_each_record(path, |row, _row_dim, payload, _bytes_left| {
        let mut values = Vec::with_capacity(payload.len() / 4);
        for (column, value) in payload.chunks_exact(4).enumerate() {
            let value = i32::from_le_bytes([value[0], value[1], value[2], value[3]]);
            let value = u32::try_from(value)
                .map_err(|_| format!("row {row} column {column} is negative ({value})"))?;
            values.push(value);
        }
        rows.push(values);
        Ok(())
    })?;
    Ok(rows)
}

/// Writes `vectors` as an `.fvecs` file, replacing `path`.
pub fn write_fvecs(path: &Path, vectors: &Vectors) -> Result<()> {
    let dim = record_dimension(vectors.dim)?;
    let mut writer = BufWriter::new(File::create(path)?);
    for row in vectors.rows() {
        writer.write_all(&dim.to_le_bytes())?;
        for value in row {
            writer.write_all(&value.to_le_bytes())?;
        }
    }
    writer.flush()?;
    Ok(())
}

/// Writes `rows` as an `.ivecs` file, replacing `path`. Values above `i32::MAX` do not fit
/// the format and are [`Error::InvalidArgument`].
pub fn write_ivecs(path: &Path, rows: &[Vec<u32>]) -> Result<()> {
    let mut writer = BufWriter::new(File::create(path)?);
    for row in rows {
        writer.write_all(&record_dimension(row.len())?.to_le_bytes())?;
        for &value in row {
            let value = i32::try_from(value).map_err(|_| {
                Error::InvalidArgument(format!("{value} does not fit an ivecs value (i32)"))
            })?;
            writer.write_all(&value.to_le_bytes())?;
        }
    }
    writer.flush()?;
    Ok(())
}

fn record_dimension(dim: usize) -> Result<i32> {
    i32::try_from(dim)
        .map_err(|_| Error::InvalidArgument(format!("dimension {dim} does not fit the format")))
}

/// Streams the records of a `*vecs` file: for each one calls `visit(row, dim, payload,
/// bytes_left_after_it)`, where `payload` is the record's `4 * dim` value bytes. The
/// visitor's error text becomes [`Error::Corrupt`], prefixed with the path. Returns the
/// number of records; a file with none is corrupt.
fn for_each_record(
    path: &Path,
    visit: impl FnMut(usize, usize, &[u8], u64) -> Result<(), String>,
) -> Result<usize> {
    for_each_record_of(path, 4, visit)
}

/// [`for_each_record`] for components of `width` bytes (4 for fvecs/ivecs, 1 for bvecs).
fn for_each_record_of(
    path: &Path,
    width: u64,
    mut visit: impl FnMut(usize, usize, &[u8], u64) -> Result<(), String>,
) -> Result<usize> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let corrupt = |detail: String| Error::Corrupt(format!("{}: {detail}", path.display()));
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut offset: u64 = 0;
    let mut payload = Vec::new();
    let mut row = 0;
    loop {
        let mut dim_bytes = [0u8; 4];
        let header_read = read_up_to(&mut reader, &mut dim_bytes)?;
        if header_read == 0 {
            break;
        }
        if header_read < dim_bytes.len() {
            return Err(corrupt(format!(
                "file ends inside the dimension of row {row}"
            )));
        }
        offset += 4;
        let dim = i32::from_le_bytes(dim_bytes);
        let dim = usize::try_from(dim)
            .map_err(|_| corrupt(format!("row {row} has negative dimension {dim}")))?;
        let payload_len = dim as u64 * width;
        // Check against the file before allocating, so a garbage dimension cannot ask for
        // gigabytes.
        let bytes_left = file_len.saturating_sub(offset);
        if payload_len > bytes_left {
            return Err(corrupt(format!(
                "row {row} claims dimension {dim} ({payload_len} bytes) but only {bytes_left} \
                 bytes remain; the file is truncated"
            )));
        }
        payload.resize(payload_len as usize, 0);
        reader.read_exact(&mut payload).map_err(|error| {
            if error.kind() == io::ErrorKind::UnexpectedEof {
                return corrupt(format!("file ends inside row {row}"));
            }
            Error::Io(error)
        })?;
        offset += payload_len;
        visit(row, dim, &payload, file_len.saturating_sub(offset)).map_err(corrupt)?;
        row += 1;
    }
    if row == 0 {
        return Err(corrupt("file holds no vectors".to_string()));
    }
    Ok(row)
}

/// Fills `buffer` unless the reader ends first; returns how many bytes were read.
fn read_up_to(reader: &mut impl Read, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

/// `n` deterministic pseudo-random vectors of dimension `dim`, components in `[0, 100)`.
///
/// For tests and benchmarks when the real data folder is absent. The same `(n, dim, seed)`
/// gives the same vectors on every platform and version, so results can be compared
/// across runs.
pub fn synthetic(n: usize, dim: usize, seed: u64) -> Vectors {
    let mut generator = SplitMix64 { state: seed };
    let data = (0..n.saturating_mul(dim))
        .map(|_| generator.next_unit_f32() * 100.0)
        .collect::<Vec<f32>>();
    debug_assert!(data.iter().all(|value| (0.0..100.0).contains(value)));
    Vectors { dim, data }
}

/// Sebastiano Vigna's SplitMix64: tiny, fast, well distributed, and fully specified, so
/// the synthetic data never changes with a dependency's version.
struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut mixed = self.state;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        mixed ^ (mixed >> 31)
    }

    /// Uniform in `[0, 1)`: the top 24 bits fill an f32 mantissa exactly, so the result is
    /// never rounded up to 1.
    fn next_unit_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u32 << 24) as f32
    }
}

/// The exact top-`k` row numbers of `base` for every query, by brute force.
///
/// # Panics
///
/// If the dimensions differ, or (for cosine) a vector is zero; use [`try_ground_truth`] to
/// get those as errors.
pub fn ground_truth(base: &Vectors, queries: &Vectors, k: usize, metric: Metric) -> Vec<Vec<u64>> {
    match try_ground_truth(base, queries, k, metric) {
        Ok(truth) => truth,
        Err(error) => panic!("cannot compute ground truth: {error}"),
    }
}

/// [`ground_truth`] that returns bad input as an error instead of panicking.
pub fn try_ground_truth(
    base: &Vectors,
    queries: &Vectors,
    k: usize,
    metric: Metric,
) -> Result<Vec<Vec<u64>>> {
    if base.dim != queries.dim {
        return Err(Error::DimensionMismatch {
            expected: base.dim,
            actual: queries.dim,
        });
    }
    if queries.is_empty() {
        return Ok(Vec::new());
    }
    let mut index = FlatIndex::new(base.dim, metric);
    let ids: Vec<u64> = (0..base.len() as u64).collect();
    index.upsert(&ids, &base.data)?;
    let results = index.search_batch(&queries.data, k, &SearchParams::default())?;
    Ok(results
        .into_iter()
        .map(|neighbors| neighbors.into_iter().map(|neighbor| neighbor.id).collect())
        .collect())
}

/// Mean over queries of the fraction of the true top `k` found in the first `k` results.
///
/// Queries are those of `truth`; a query missing from `found` counts as nothing found.
/// If a truth row has fewer than `k` ids, the fraction is of those it has (and a query with
/// an empty truth row counts as fully recalled). With `k == 0` or no queries, 1.0.
pub fn recall_at_k(found: &[Vec<u64>], truth: &[Vec<u32>], k: usize) -> f64 {
    if k == 0 || truth.is_empty() {
        return 1.0;
    }
    let mut total = 0.0;
    for (query, true_ids) in truth.iter().enumerate() {
        let mut wanted: HashSet<u64> = true_ids.iter().take(k).map(|&id| u64::from(id)).collect();
        let wanted_count = wanted.len();
        if wanted_count == 0 {
            total += 1.0;
            continue;
        }
        let Some(found_ids) = found.get(query) else {
            continue;
        };
        // Removing on a hit means a duplicated result id is only counted once.
        let hits = found_ids
            .iter()
            .take(k)
            .filter(|id| wanted.remove(id))
            .count();
        total += hits as f64 / wanted_count as f64;
    }
    total / truth.len() as f64
}

#[cfg(test)]
mod tests {
    use std::{fs, path::PathBuf};

    use super::*;
    use crate::l2_squared;

    #[test]
    fn fvecs_and_ivecs_round_trip() {
        let directory = tempfile::tempdir().unwrap();
        let vectors = Vectors {
            dim: 3,
            data: vec![1.0, -2.5, 3.25, 0.0, f32::MAX, f32::MIN_POSITIVE],
        };
        let fvecs = directory.path().join("base.fvecs");
        write_fvecs(&fvecs, &vectors).unwrap();
        assert_eq!(fs::metadata(&fvecs).unwrap().len(), 2 * (4 + 3 * 4));
        let read = read_fvecs(&fvecs).unwrap();
        assert_eq!(read, vectors);
        assert_eq!(read.len(), 2);
        assert_eq!(read.row(1), &[0.0, f32::MAX, f32::MIN_POSITIVE]);
        assert_eq!(read.rows().count(), 2);

        let rows = vec![vec![1, 2, 3], vec![], vec![i32::MAX as u32]];
        let ivecs = directory.path().join("truth.ivecs");
        write_ivecs(&ivecs, &rows).unwrap();
        assert_eq!(read_ivecs(&ivecs).unwrap(), rows);
        assert!(matches!(
            write_ivecs(&ivecs, &[vec![u32::MAX]]),
            Err(Error::InvalidArgument(_))
        ));
    }

    fn write_bytes(directory: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = directory.join(name);
        fs::write(&path, bytes).unwrap();
        path
    }

    fn record(dim: i32, values: &[u32]) -> Vec<u8> {
        let mut bytes = dim.to_le_bytes().to_vec();
        for value in values {
            bytes.extend_from_slice(&value.to_le_bytes());
        }
        bytes
    }

    #[test]
    fn malformed_files_are_corrupt() {
        let directory = tempfile::tempdir().unwrap();
        let directory = directory.path();
        let one = 1.0f32.to_bits();
        let mut ragged = record(2, &[one, one]);
        ragged.extend(record(3, &[one, one, one]));
        let mut truncated = record(2, &[one, one]);
        truncated.extend(record(2, &[one]));
        let mut partial_dimension = record(1, &[one]);
        partial_dimension.extend_from_slice(&[1, 0]);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            ("ragged", ragged),
            ("truncated", truncated),
            ("partial_dimension", partial_dimension),
            ("zero_dimension", record(0, &[])),
            ("negative_dimension", record(-1, &[])),
            ("huge_dimension", record(i32::MAX, &[one])),
        ];
        for (name, bytes) in cases {
            let path = write_bytes(directory, &format!("{name}.fvecs"), &bytes);
            let result = read_fvecs(&path);
            assert!(
                matches!(result, Err(Error::Corrupt(_))),
                "{name}: {result:?}"
            );
        }

        let negative = write_bytes(directory, "negative.ivecs", &record(2, &[5, u32::MAX]));
        let error = read_ivecs(&negative).unwrap_err();
        assert!(error.to_string().contains("negative"), "{error}");
        let empty = write_bytes(directory, "empty.ivecs", &[]);
        assert!(matches!(read_ivecs(&empty), Err(Error::Corrupt(_))));
        assert!(matches!(
            read_fvecs(&directory.join("missing.fvecs")),
            Err(Error::Io(_))
        ));
    }

    #[test]
    fn synthetic_is_deterministic_and_in_range() {
        let first = synthetic(50, 7, 99);
        assert_eq!(first, synthetic(50, 7, 99));
        assert_ne!(first, synthetic(50, 7, 100));
        assert_eq!(first.len(), 50);
        assert_eq!(first.dim, 7);
        assert!(first.data.iter().all(|value| (0.0..100.0).contains(value)));
        let mean = first.data.iter().sum::<f32>() / first.data.len() as f32;
        assert!((40.0..60.0).contains(&mean), "mean {mean}");
        assert!(synthetic(0, 7, 1).is_empty());
        assert_eq!(synthetic(3, 0, 1).rows().count(), 0);
    }

    #[test]
    fn recall_counts_the_overlap_of_the_first_k() {
        let truth = vec![vec![1, 2, 3, 4], vec![5, 6, 7, 8]];
        let found = vec![vec![3, 1, 9, 2], vec![5, 5, 5, 5]];
        assert_eq!(recall_at_k(&found, &truth, 1), 0.5);
        assert_eq!(recall_at_k(&found, &truth, 2), 0.5);
        assert_eq!(
            recall_at_k(&found, &truth, 3),
            (2.0 / 3.0 + 1.0 / 3.0) / 2.0
        );
        assert_eq!(
            recall_at_k(&found, &truth, 4),
            (3.0 / 4.0 + 1.0 / 4.0) / 2.0
        );
        assert_eq!(recall_at_k(&found[..1], &truth, 4), (3.0 / 4.0) / 2.0);
        assert_eq!(recall_at_k(&found, &truth, 0), 1.0);
    }

    #[test]
    fn ground_truth_on_synthetic_data_is_self_consistent() {
        let base = synthetic(300, 8, 1);
        let queries = Vectors {
            dim: 8,
            data: base.data[..5 * 8].to_vec(),
        };
        for metric in [Metric::L2, Metric::Cosine] {
            let truth = ground_truth(&base, &queries, 10, metric);
            assert_eq!(truth.len(), 5);
            for (query, ids) in truth.iter().enumerate() {
                assert_eq!(ids.len(), 10);
                // A base vector is its own nearest neighbour.
                assert_eq!(ids[0], query as u64, "{metric}");
            }
            let as_truth: Vec<Vec<u32>> = truth
                .iter()
                .map(|ids| ids.iter().map(|&id| id as u32).collect())
                .collect();
            assert_eq!(recall_at_k(&truth, &as_truth, 10), 1.0);
        }
        assert!(matches!(
            try_ground_truth(&base, &synthetic(1, 3, 1), 1, Metric::L2),
            Err(Error::DimensionMismatch { .. })
        ));
    }

    fn siftsmall_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/siftsmall")
    }

    #[test]
    fn flat_l2_reproduces_siftsmall_ground_truth_exactly() {
        let directory = siftsmall_dir();
        if !directory.is_dir() {
            eprintln!(
                "skipping siftsmall check: {} not found (the shared data folder sits beside \
                 the project root)",
                directory.display()
            );
            return;
        }
        let base = read_fvecs(&directory.join("siftsmall_base.fvecs")).unwrap();
        let queries = read_fvecs(&directory.join("siftsmall_query.fvecs")).unwrap();
        let truth = read_ivecs(&directory.join("siftsmall_groundtruth.ivecs")).unwrap();
        assert_eq!((base.len(), base.dim), (10_000, 128));
        assert_eq!((queries.len(), queries.dim), (100, 128));
        assert_eq!(truth.len(), 100);
        assert!(truth.iter().all(|row| row.len() == 100));

        let found = ground_truth(&base, &queries, 100, Metric::L2);
        assert_eq!(recall_at_k(&found, &truth, 100), 1.0);
        // SIFT components are small integers, so every squared distance here is an exact
        // integer in f32 and ties are real. The published file lists 22 tied pairs in no
        // particular id order, while we break ties by ascending id; so the check is exact
        // id equality position by position, except that within a run of equal distances
        // the same ids must appear in any order.
        let mut tied_runs = 0;
        for (query, (found_ids, true_ids)) in found.iter().zip(&truth).enumerate() {
            let query_vector = queries.row(query);
            let distance = |id: u64| l2_squared(query_vector, base.row(id as usize));
            let true_ids: Vec<u64> = true_ids.iter().map(|&id| u64::from(id)).collect();
            let found_distances: Vec<f32> = found_ids.iter().map(|&id| distance(id)).collect();
            let true_distances: Vec<f32> = true_ids.iter().map(|&id| distance(id)).collect();
            assert_eq!(found_distances, true_distances, "query {query}");
            let mut start = 0;
            while start < true_ids.len() {
                let end = start
                    + true_distances[start..]
                        .iter()
                        .take_while(|&&value| value == true_distances[start])
                        .count();
                if end - start == 1 {
                    assert_eq!(
                        found_ids[start], true_ids[start],
                        "query {query} rank {start}"
                    );
                } else {
                    tied_runs += 1;
                    let mut found_run = found_ids[start..end].to_vec();
                    let mut true_run = true_ids[start..end].to_vec();
                    assert!(found_run.windows(2).all(|pair| pair[0] < pair[1]));
                    found_run.sort_unstable();
                    true_run.sort_unstable();
                    assert_eq!(found_run, true_run, "query {query} ranks {start}..{end}");
                }
                start = end;
            }
        }
        assert_eq!(
            tied_runs, 22,
            "the published ground truth has 22 tied pairs"
        );

        // The per-query path must agree with the blocked batch path on real data too.
        let mut index = FlatIndex::new(base.dim, Metric::L2);
        let ids: Vec<u64> = (0..base.len() as u64).collect();
        index.upsert(&ids, &base.data).unwrap();
        for (query, expected) in queries.rows().zip(&found).take(10) {
            let single: Vec<u64> = index
                .search(query, 100, &SearchParams::default())
                .unwrap()
                .into_iter()
                .map(|neighbor| neighbor.id)
                .collect();
            assert_eq!(&single, expected);
        }
    }
}
