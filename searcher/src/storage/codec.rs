//! The byte codec every storage format is written in: little-endian integers, strings and
//! byte strings as a `u32` length and the bytes, and CRC-32 (IEEE, `crc32fast`) checks in
//! two shapes:
//! - a *frame*, `[payload length u32][crc32 of payload u32][payload]`, one per log record;
//! - a *sealed* block, the bytes followed by the CRC-32 of all of them (a log segment's
//!   header, `points.bin`).

/// Bytes in a frame before its payload: the length and the CRC-32.
pub const FRAME_HEADER_BYTES: u64 = 8;
/// Bytes a seal adds.
pub const SEAL_BYTES: usize = 4;

pub fn put_u32(out: &mut Vec<u8>, value: usize) {
    let value = u32::try_from(value).expect("lengths are bounded by request limits");
    out.extend_from_slice(&value.to_le_bytes());
}

pub fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

/// A `u32` length, then the bytes.
pub fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u32(out, bytes.len());
    out.extend_from_slice(bytes);
}

/// Appends the CRC-32 of everything in `out`.
pub fn seal(out: &mut Vec<u8>) {
    let crc = crc32fast::hash(out);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// The bytes before the seal when it matches them; `None` when the seal is missing or wrong.
pub fn unseal(bytes: &[u8]) -> Option<&[u8]> {
    let body_len = bytes.len().checked_sub(SEAL_BYTES)?;
    let (body, crc) = bytes.split_at(body_len);
    let expected = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    (crc32fast::hash(body) == expected).then_some(body)
}

/// `payload` framed: its length, its CRC-32, then the bytes. The caller bounds the length.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let payload_len = u32::try_from(payload.len()).expect("the caller bounds frame payloads");
    let mut framed = Vec::with_capacity(payload.len() + FRAME_HEADER_BYTES as usize);
    framed.extend_from_slice(&payload_len.to_le_bytes());
    framed.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    framed.extend_from_slice(payload);
    framed
}

/// A frame's header: the payload length and the CRC-32 it must have.
pub fn frame_header(header: &[u8; FRAME_HEADER_BYTES as usize]) -> (u32, u32) {
    let payload_len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    let expected_crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    (payload_len, expected_crc)
}

/// Whether a frame's payload has the CRC-32 its header promised.
pub fn payload_matches(payload: &[u8], expected_crc: u32) -> bool {
    crc32fast::hash(payload) == expected_crc
}

/// A bounds-checked reader over a byte slice: every accessor returns None past the end, so
/// corrupt bytes can never panic a decoder.
pub struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub fn new(bytes: &'a [u8]) -> Cursor<'a> {
        Cursor { bytes }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.bytes.len()
    }

    pub fn take(&mut self, count: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < count {
            return None;
        }
        let (head, tail) = self.bytes.split_at(count);
        self.bytes = tail;
        Some(head)
    }

    pub fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    /// A `u32` length, then that many bytes of UTF-8.
    pub fn string(&mut self) -> Option<String> {
        let len = self.u32()? as usize;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_bytes_open_only_unchanged() {
        let mut sealed = b"QVTEST".to_vec();
        put_u64(&mut sealed, 7);
        seal(&mut sealed);
        assert_eq!(unseal(&sealed).map(<[u8]>::len), Some(14));
        let mut damaged = sealed.clone();
        damaged[3] ^= 1;
        assert_eq!(unseal(&damaged), None);
        assert_eq!(unseal(&sealed[..3]), None);
    }

    #[test]
    fn a_frame_reads_back_and_a_cursor_stops_at_the_end() {
        let mut payload = Vec::new();
        put_bytes(&mut payload, "ü".as_bytes());
        payload.push(9);
        let framed = frame(&payload);
        let (len, crc) = frame_header(framed[..8].try_into().unwrap());
        assert_eq!(len as usize, payload.len());
        assert!(payload_matches(&framed[8..], crc));
        let mut cursor = Cursor::new(&framed[8..]);
        assert_eq!(cursor.string().as_deref(), Some("ü"));
        assert_eq!(cursor.u8(), Some(9));
        assert_eq!(cursor.remaining(), 0);
        assert_eq!(cursor.u8(), None);
        assert_eq!(cursor.u64(), None);
    }
}
