//! Reading points from files, one record at a time: `.fvecs`, `.npy` (2-D little-endian
//! float32 or float64, C order) and `.jsonl` (`{"id": ..., "vector": [...], "payload": {...}}`
//! per line). Every error names the file and the row (fvecs, npy; numbered from 0, like the
//! ids) or line (jsonl; numbered from 1, like editors do) it came from.

use std::{
    fs::File,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
};

use crate::errors::CliError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Fvecs,
    Npy,
    Jsonl,
}

impl Format {
    /// The format a file's extension names.
    pub fn from_path(path: &Path) -> Result<Format, CliError> {
        let extension = path
            .extension()
            .and_then(|extension| extension.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        match extension.as_str() {
            "fvecs" => Ok(Format::Fvecs),
            "npy" => Ok(Format::Npy),
            "jsonl" | "ndjson" => Ok(Format::Jsonl),
            _ => Err(CliError::input(format!(
                "cannot tell the format of {} from its extension",
                path.display()
            ))
            .hint("name it .fvecs, .npy or .jsonl, or say which with --format")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Fvecs => "fvecs",
            Format::Npy => "npy",
            Format::Jsonl => "jsonl",
        }
    }
}

/// One point read from a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub id: String,
    pub vector: Vec<f32>,
    /// A JSON object as text, or empty for none.
    pub payload_json: String,
    /// Row (from 0) or line (from 1), as [`Source::location`] spells it.
    pub position: u64,
}

/// An open file of points, read lazily.
pub struct Source {
    pub path: PathBuf,
    pub format: Format,
    /// How many records the file holds, when its header or size says so.
    pub total: Option<u64>,
    records: Box<dyn Iterator<Item = Result<Record, CliError>> + Send>,
}

impl Source {
    /// Opens `path`. Ids of fvecs and npy rows are `id_offset + row`, and their payload is
    /// `{"row": <row>}` so that results can be traced back to the file; jsonl records carry
    /// their own.
    pub fn open(path: &Path, format: Format, id_offset: u64) -> Result<Source, CliError> {
        let file = File::open(path)
            .map_err(|error| CliError::input(format!("cannot open {}: {error}", path.display())))?;
        let size = file.metadata().map(|metadata| metadata.len()).ok();
        let reader = BufReader::with_capacity(1 << 20, file);
        let shown = path.display().to_string();
        let (total, records): (Option<u64>, Box<dyn Iterator<Item = _> + Send>) = match format {
            Format::Fvecs => {
                let rows = FvecsRows::new(reader, shown, id_offset);
                (None, Box::new(rows))
            }
            Format::Npy => {
                let rows = NpyRows::new(reader, shown, id_offset)?;
                (Some(rows.header.rows), Box::new(rows))
            }
            Format::Jsonl => (None, Box::new(JsonlRecords::new(reader, shown))),
        };
        let total = match (format, total) {
            (Format::Fvecs, _) => size.and_then(|size| fvecs_rows_in(path, size)),
            (_, total) => total,
        };
        Ok(Source {
            path: path.to_path_buf(),
            format,
            total,
            records,
        })
    }

    /// "base.fvecs row 17" or "points.jsonl line 3".
    pub fn location(&self, position: u64) -> String {
        location(&self.path.display().to_string(), self.format, position)
    }
}

impl Iterator for Source {
    type Item = Result<Record, CliError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.records.next()
    }
}

pub fn location(path: &str, format: Format, position: u64) -> String {
    match format {
        Format::Fvecs | Format::Npy => format!("{path} row {position}"),
        Format::Jsonl => format!("{path} line {position}"),
    }
}

/// Rows in an fvecs file of `size` bytes, from its first row's dimension, when the size is a
/// whole number of rows.
fn fvecs_rows_in(path: &Path, size: u64) -> Option<u64> {
    let mut first = [0u8; 4];
    File::open(path).ok()?.read_exact(&mut first).ok()?;
    let dimension = u32::from_le_bytes(first) as u64;
    let row_bytes = 4 + 4 * dimension;
    (dimension > 0 && size.checked_rem(row_bytes) == Some(0)).then_some(size / row_bytes)
}

/// `buffer.len()` bytes, or `Ok(false)` at a clean end of file (no byte read).
fn read_full(reader: &mut impl Read, buffer: &mut [u8]) -> std::io::Result<bool> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the file ends in the middle of a row",
                ))
            }
            Ok(read) => filled += read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(true)
}

struct FvecsRows<R> {
    reader: R,
    path: String,
    id_offset: u64,
    row: u64,
    failed: bool,
}

impl<R: Read> FvecsRows<R> {
    fn new(reader: R, path: String, id_offset: u64) -> Self {
        FvecsRows {
            reader,
            path,
            id_offset,
            row: 0,
            failed: false,
        }
    }

    fn read_row(&mut self) -> Result<Option<Record>, String> {
        let mut header = [0u8; 4];
        if !read_full(&mut self.reader, &mut header).map_err(|error| error.to_string())? {
            return Ok(None);
        }
        let dimension = i32::from_le_bytes(header);
        if !(1..=1 << 16).contains(&dimension) {
            return Err(format!(
                "a row of dimension {dimension}: not an .fvecs file, or a corrupt one"
            ));
        }
        let mut bytes = vec![0u8; dimension as usize * 4];
        if !read_full(&mut self.reader, &mut bytes).map_err(|error| error.to_string())? {
            return Err("the file ends in the middle of a row".to_string());
        }
        let vector = bytes
            .chunks_exact(4)
            .map(|chunk| f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
            .collect();
        Ok(Some(row_record(self.row, self.id_offset, vector)))
    }
}

fn row_record(row: u64, id_offset: u64, vector: Vec<f32>) -> Record {
    Record {
        id: (id_offset + row).to_string(),
        vector,
        payload_json: format!(r#"{{"row":{row}}}"#),
        position: row,
    }
}

impl<R: Read> Iterator for FvecsRows<R> {
    type Item = Result<Record, CliError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.read_row() {
            Ok(Some(record)) => {
                self.row += 1;
                Some(Ok(record))
            }
            Ok(None) => None,
            Err(problem) => {
                self.failed = true;
                Some(Err(CliError::input(format!(
                    "{}: {problem}",
                    location(&self.path, Format::Fvecs, self.row)
                ))))
            }
        }
    }
}

/// Element type of an .npy array this reader accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NpyDtype {
    /// `<f4`
    F32,
    /// `<f8`, converted to float32.
    F64,
}

impl NpyDtype {
    fn size(self) -> usize {
        match self {
            NpyDtype::F32 => 4,
            NpyDtype::F64 => 8,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    pub dtype: NpyDtype,
    pub rows: u64,
    pub columns: u64,
}

/// Reads an .npy file's magic, version and header dictionary, leaving `reader` at the first
/// byte of data. Accepts format versions 1 to 3, 2-D arrays of `<f4` or `<f8` in C order;
/// anything else is refused with what to do instead.
pub fn read_npy_header(reader: &mut impl Read) -> Result<NpyHeader, String> {
    let mut magic = [0u8; 8];
    reader
        .read_exact(&mut magic)
        .map_err(|_| "too short to be an .npy file".to_string())?;
    if &magic[..6] != b"\x93NUMPY" {
        return Err("not an .npy file (no \\x93NUMPY magic)".to_string());
    }
    let header_length = match magic[6] {
        1 => {
            let mut length = [0u8; 2];
            reader
                .read_exact(&mut length)
                .map_err(|error| error.to_string())?;
            u16::from_le_bytes(length) as usize
        }
        2 | 3 => {
            let mut length = [0u8; 4];
            reader
                .read_exact(&mut length)
                .map_err(|error| error.to_string())?;
            u32::from_le_bytes(length) as usize
        }
        version => return Err(format!(".npy format version {version} is not supported")),
    };
    if header_length > 1 << 20 {
        return Err(format!("an .npy header of {header_length} bytes"));
    }
    let mut header = vec![0u8; header_length];
    reader
        .read_exact(&mut header)
        .map_err(|_| "the .npy header is cut short".to_string())?;
    let header = String::from_utf8_lossy(&header);
    parse_npy_dictionary(&header)
}

/// Parses the Python dictionary literal of an .npy header, e.g.
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (10, 128), }`.
pub fn parse_npy_dictionary(header: &str) -> Result<NpyHeader, String> {
    let value_after = |key: &str| -> Result<&str, String> {
        let start = header
            .find(&format!("'{key}'"))
            .or_else(|| header.find(&format!("\"{key}\"")))
            .ok_or_else(|| format!("the .npy header has no '{key}': {header}"))?;
        let rest = &header[start + key.len() + 2..];
        let colon = rest
            .find(':')
            .ok_or_else(|| format!("malformed .npy header: {header}"))?;
        Ok(rest[colon + 1..].trim_start())
    };

    let descr = value_after("descr")?;
    let quote = descr.chars().next().unwrap_or(' ');
    if quote != '\'' && quote != '"' {
        return Err(format!(
            "unsupported dtype {}: only plain float32 or float64 arrays are",
            descr.split(',').next().unwrap_or(descr)
        ));
    }
    let descr = descr[1..]
        .split(quote)
        .next()
        .ok_or_else(|| format!("malformed .npy header: {header}"))?;
    let dtype = match descr {
        "<f4" => NpyDtype::F32,
        "<f8" => NpyDtype::F64,
        ">f4" | ">f8" => {
            return Err(format!(
                "dtype '{descr}' is big-endian; save it little-endian: arr.astype('<f4')"
            ))
        }
        other => {
            return Err(format!(
                "dtype '{other}' is not supported; save float32 or float64: arr.astype('float32')"
            ))
        }
    };

    let fortran = value_after("fortran_order")?;
    if fortran.starts_with("True") {
        return Err(
            "the array is in Fortran order; save it in C order: np.save(path, np.ascontiguousarray(arr))"
                .to_string(),
        );
    }
    if !fortran.starts_with("False") {
        return Err(format!("malformed .npy header: {header}"));
    }

    let shape = value_after("shape")?;
    let shape = shape
        .strip_prefix('(')
        .and_then(|rest| rest.split(')').next())
        .ok_or_else(|| format!("malformed .npy header: {header}"))?;
    let dimensions: Vec<u64> = shape
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            part.trim_end_matches('L')
                .parse::<u64>()
                .map_err(|_| format!("malformed .npy shape ({shape})"))
        })
        .collect::<Result<_, _>>()?;
    match dimensions[..] {
        [rows, columns] if columns > 0 => Ok(NpyHeader {
            dtype,
            rows,
            columns,
        }),
        _ => Err(format!(
            "the array has shape ({shape}); a 2-D array of points × dimensions is needed"
        )),
    }
}

struct NpyRows<R> {
    reader: R,
    header: NpyHeader,
    path: String,
    id_offset: u64,
    row: u64,
    failed: bool,
}

impl<R: Read> NpyRows<R> {
    fn new(mut reader: R, path: String, id_offset: u64) -> Result<Self, CliError> {
        let header = read_npy_header(&mut reader)
            .map_err(|problem| CliError::input(format!("{path}: {problem}")))?;
        Ok(NpyRows {
            reader,
            header,
            path,
            id_offset,
            row: 0,
            failed: false,
        })
    }
}

impl<R: Read> Iterator for NpyRows<R> {
    type Item = Result<Record, CliError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.row >= self.header.rows {
            return None;
        }
        let size = self.header.dtype.size();
        let mut bytes = vec![0u8; self.header.columns as usize * size];
        if let Err(error) = self.reader.read_exact(&mut bytes) {
            self.failed = true;
            return Some(Err(CliError::input(format!(
                "{}: the file ends early ({error}); its header promises {} rows",
                location(&self.path, Format::Npy, self.row),
                self.header.rows
            ))));
        }
        let vector = match self.header.dtype {
            NpyDtype::F32 => bytes
                .chunks_exact(4)
                .map(|chunk| f32::from_le_bytes(chunk.try_into().expect("4 bytes")))
                .collect(),
            NpyDtype::F64 => bytes
                .chunks_exact(8)
                .map(|chunk| f64::from_le_bytes(chunk.try_into().expect("8 bytes")) as f32)
                .collect(),
        };
        let record = row_record(self.row, self.id_offset, vector);
        self.row += 1;
        Some(Ok(record))
    }
}

struct JsonlRecords<R> {
    lines: std::io::Lines<R>,
    path: String,
    line: u64,
    failed: bool,
}

impl<R: BufRead> JsonlRecords<R> {
    fn new(reader: R, path: String) -> Self {
        JsonlRecords {
            lines: reader.lines(),
            path,
            line: 0,
            failed: false,
        }
    }
}

/// One jsonl line as a record, or what is wrong with it.
pub fn parse_jsonl_line(text: &str, line: u64) -> Result<Record, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|error| format!("not valid JSON: {error}"))?;
    let serde_json::Value::Object(object) = value else {
        return Err(r#"expected an object like {"id": "a", "vector": [0.1, 0.2]}"#.to_string());
    };
    let id = match object.get("id") {
        Some(serde_json::Value::String(id)) if !id.is_empty() => id.clone(),
        Some(serde_json::Value::Number(number)) if number.is_u64() || number.is_i64() => {
            number.to_string()
        }
        Some(other) => {
            return Err(format!(
                "\"id\" must be a non-empty string or an integer, got {other}"
            ))
        }
        None => return Err("no \"id\"".to_string()),
    };
    let vector = match object.get("vector") {
        Some(serde_json::Value::Array(values)) => values
            .iter()
            .enumerate()
            .map(|(position, value)| {
                value
                    .as_f64()
                    .map(|number| number as f32)
                    .filter(|number| number.is_finite())
                    .ok_or_else(|| {
                        format!("\"vector\"[{position}] is {value}, not a finite float32 number")
                    })
            })
            .collect::<Result<Vec<f32>, String>>()?,
        Some(other) => {
            return Err(format!(
                "\"vector\" must be an array of numbers, got {other}"
            ))
        }
        None => return Err("no \"vector\"".to_string()),
    };
    let payload_json = match object.get("payload") {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(payload @ serde_json::Value::Object(_)) => payload.to_string(),
        Some(other) => return Err(format!("\"payload\" must be a JSON object, got {other}")),
    };
    Ok(Record {
        id,
        vector,
        payload_json,
        position: line,
    })
}

impl<R: BufRead> Iterator for JsonlRecords<R> {
    type Item = Result<Record, CliError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            self.line += 1;
            let text = match self.lines.next()? {
                Ok(text) => text,
                Err(error) => {
                    self.failed = true;
                    return Some(Err(CliError::input(format!(
                        "{}: {error}",
                        location(&self.path, Format::Jsonl, self.line)
                    ))));
                }
            };
            if text.trim().is_empty() {
                continue;
            }
            return Some(parse_jsonl_line(&text, self.line).map_err(|problem| {
                self.failed = true;
                CliError::input(format!(
                    "{}: {problem}",
                    location(&self.path, Format::Jsonl, self.line)
                ))
                .hint("each line must be {\"id\": \"...\" or 123, \"vector\": [numbers], \"payload\": {...} (optional)}")
            }));
        }
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// An .npy file (format 1.0) of `rows` × `columns` values, as numpy writes it.
    pub fn npy_bytes(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
        let fortran = if fortran { "True" } else { "False" };
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}");
        // numpy pads the header with spaces so the data starts on a 64-byte boundary.
        while (10 + header.len() + 1).checked_rem(64) != Some(0) {
            header.push(' ');
        }
        header.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        bytes
    }

    fn collect(source: impl Iterator<Item = Result<Record, CliError>>) -> Vec<Record> {
        source.map(|record| record.expect("record")).collect()
    }

    #[test]
    fn npy_float32_and_float64_rows() {
        let values32: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
            .iter()
            .flat_map(|value| value.to_le_bytes())
            .collect();
        let bytes = npy_bytes("<f4", false, "(3, 2)", &values32);
        let rows = NpyRows::new(&bytes[..], "a.npy".into(), 10).expect("header");
        assert_eq!(
            rows.header,
            NpyHeader {
                dtype: NpyDtype::F32,
                rows: 3,
                columns: 2
            }
        );
        let records = collect(rows);
        assert_eq!(records.len(), 3);
        assert_eq!(records[2].id, "12");
        assert_eq!(records[2].vector, vec![5.0, 6.0]);
        assert_eq!(records[2].payload_json, r#"{"row":2}"#);

        let values64: Vec<u8> = [0.5f64, -1.25, 1e-3]
            .iter()
            .flat_map(|value| value.to_le_bytes())
            .collect();
        let bytes = npy_bytes("<f8", false, "(1, 3)", &values64);
        let records = collect(NpyRows::new(&bytes[..], "b.npy".into(), 0).expect("header"));
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].vector, vec![0.5f32, -1.25, 1e-3f64 as f32]);
    }

    #[test]
    fn npy_refusals_say_what_to_do() {
        let refuse = |descr: &str, fortran: bool, shape: &str| {
            let bytes = npy_bytes(descr, fortran, shape, &[]);
            read_npy_header(&mut &bytes[..]).expect_err("refused")
        };
        assert!(refuse("<f4", true, "(2, 2)").contains("Fortran order"));
        assert!(refuse("<i8", false, "(2, 2)").contains("dtype '<i8' is not supported"));
        assert!(refuse(">f4", false, "(2, 2)").contains("big-endian"));
        assert!(refuse("<f4", false, "(4,)").contains("2-D"));
        assert!(refuse("<f4", false, "(2, 2, 2)").contains("2-D"));
        assert!(read_npy_header(&mut &b"PK\x03\x04 zip"[..])
            .unwrap_err()
            .contains("not an .npy file"));

        // Truncated data names the row where it ends.
        let bytes = npy_bytes("<f4", false, "(2, 2)", &[0u8; 12]);
        let mut rows = NpyRows::new(&bytes[..], "c.npy".into(), 0).expect("header");
        assert!(rows.next().unwrap().is_ok());
        let error = rows.next().unwrap().unwrap_err();
        assert!(error
            .message
            .starts_with("c.npy row 1: the file ends early"));
        assert!(rows.next().is_none());
    }

    #[test]
    fn npy_version_2_headers_and_odd_spacing() {
        let header =
            parse_npy_dictionary("{\"descr\":\"<f8\",\"fortran_order\":False,\"shape\":(7,3)}")
                .expect("parsed");
        assert_eq!(header.rows, 7);
        assert_eq!(header.dtype, NpyDtype::F64);

        let dictionary = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), }\n";
        let mut bytes = b"\x93NUMPY\x02\x00".to_vec();
        bytes.extend_from_slice(&(dictionary.len() as u32).to_le_bytes());
        bytes.extend_from_slice(dictionary.as_bytes());
        let header = read_npy_header(&mut &bytes[..]).expect("version 2");
        assert_eq!((header.rows, header.columns), (1, 2));
    }

    #[test]
    fn jsonl_records_and_numbered_errors() {
        let text = "{\"id\": \"a\", \"vector\": [1, 2.5], \"payload\": {\"k\": [1, \"x\"]}}\n\
                    \n\
                    {\"id\": 42, \"vector\": [0, -1]}\n\
                    {\"id\": \"c\", \"vector\": [1, \"two\"]}\n\
                    {\"id\": \"d\", \"vector\": [1, 2]}\n";
        let mut records = JsonlRecords::new(text.as_bytes(), "p.jsonl".into());
        let first = records.next().unwrap().unwrap();
        assert_eq!(first.id, "a");
        assert_eq!(first.vector, vec![1.0, 2.5]);
        assert_eq!(first.payload_json, r#"{"k":[1,"x"]}"#);
        assert_eq!(first.position, 1);
        let second = records.next().unwrap().unwrap();
        assert_eq!((second.id.as_str(), second.position), ("42", 3));
        assert_eq!(second.payload_json, "");
        let error = records.next().unwrap().unwrap_err();
        assert_eq!(
            error.message,
            "p.jsonl line 4: \"vector\"[1] is \"two\", not a finite float32 number"
        );
        assert!(error.hint.is_some());
        // Reading stops at the first bad line.
        assert!(records.next().is_none());
    }

    #[test]
    fn jsonl_line_problems() {
        let problem = |text: &str| parse_jsonl_line(text, 1).unwrap_err();
        assert!(problem("{\"id\": \"a\"").starts_with("not valid JSON"));
        assert!(problem("[1, 2]").starts_with("expected an object"));
        assert_eq!(problem(r#"{"vector": [1]}"#), "no \"id\"");
        assert!(problem(r#"{"id": 1.5, "vector": [1]}"#).contains("\"id\" must be"));
        assert!(problem(r#"{"id": "", "vector": [1]}"#).contains("\"id\" must be"));
        assert_eq!(problem(r#"{"id": "a"}"#), "no \"vector\"");
        assert!(problem(r#"{"id": "a", "vector": [1], "payload": [1]}"#)
            .contains("\"payload\" must be a JSON object"));
        assert!(problem(r#"{"id": "a", "vector": [1e300]}"#).contains("not a finite float32"));
    }

    #[test]
    fn fvecs_rows_and_a_cut_file() {
        let mut bytes = Vec::new();
        for row in [[1.0f32, 2.0], [3.0, 4.0]] {
            bytes.extend_from_slice(&2i32.to_le_bytes());
            for value in row {
                bytes.extend_from_slice(&value.to_le_bytes());
            }
        }
        let records = collect(FvecsRows::new(&bytes[..], "v.fvecs".into(), 5));
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].id, "6");
        assert_eq!(records[1].vector, vec![3.0, 4.0]);

        let cut = &bytes[..bytes.len() - 2];
        let mut rows = FvecsRows::new(cut, "v.fvecs".into(), 0);
        assert!(rows.next().unwrap().is_ok());
        let error = rows.next().unwrap().unwrap_err();
        assert_eq!(
            error.message,
            "v.fvecs row 1: the file ends in the middle of a row"
        );
    }

    #[test]
    fn formats_from_extensions() {
        assert_eq!(
            Format::from_path(Path::new("a/b.FVECS")).unwrap(),
            Format::Fvecs
        );
        assert_eq!(Format::from_path(Path::new("x.npy")).unwrap(), Format::Npy);
        assert_eq!(
            Format::from_path(Path::new("x.jsonl")).unwrap(),
            Format::Jsonl
        );
        let error = Format::from_path(Path::new("x.csv")).unwrap_err();
        assert!(error.hint.unwrap().contains("--format"));
    }
}
