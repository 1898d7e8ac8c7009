//! CRC-32 (IEEE 802.3, reflected polynomial `0xEDB88320`), the checksum of zlib, gzip and
//! PNG, so a saved file can be checked with everyday tools.
//!
//! Written here rather than pulled from `crc32fast` to keep this crate's dependencies to
//! serde and thiserror. "Slicing by 8" handles eight bytes per step, which keeps checksumming
//! well below the cost of the disk I/O it guards.

const POLYNOMIAL: u32 = 0xEDB8_8320;

/// `TABLES[0]` is the classic byte-at-a-time table; `TABLES[n][byte]` is the CRC of `byte`
/// followed by `n` zero bytes, which lets eight table lookups be combined independently.
const TABLES: [[u32; 256]; 8] = build_tables();

const fn build_tables() -> [[u32; 256]; 8] {
    let mut tables = [[0u32; 256]; 8];
    let mut byte = 0;
    while byte < 256 {
        let mut crc = byte as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ POLYNOMIAL
            } else {
                crc >> 1
            };
            bit += 1;
        }
        tables[0][byte] = crc;
        byte += 1;
    }
    let mut slice = 1;
    while slice < 8 {
        let mut byte = 0;
        while byte < 256 {
            let previous = tables[slice - 1][byte];
            tables[slice][byte] = (previous >> 8) ^ tables[0][(previous & 0xFF) as usize];
            byte += 1;
        }
        slice += 1;
    }
    tables
}

/// A running CRC-32 over bytes fed in any number of pieces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Crc32 {
    /// The register, kept inverted between updates as the algorithm defines.
    state: u32,
}

impl Default for Crc32 {
    fn default() -> Self {
        Self::new()
    }
}

impl Crc32 {
    pub(crate) fn new() -> Self {
        Self { state: !0 }
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        let mut crc = self.state;
        let mut blocks = bytes.chunks_exact(8);
        for block in &mut blocks {
            let low = crc ^ u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
            crc = TABLES[7][(low & 0xFF) as usize]
                ^ TABLES[6][((low >> 8) & 0xFF) as usize]
                ^ TABLES[5][((low >> 16) & 0xFF) as usize]
                ^ TABLES[4][(low >> 24) as usize]
                ^ TABLES[3][block[4] as usize]
                ^ TABLES[2][block[5] as usize]
                ^ TABLES[1][block[6] as usize]
                ^ TABLES[0][block[7] as usize];
        }
        for &byte in blocks.remainder() {
            crc = (crc >> 8) ^ TABLES[0][((crc ^ u32::from(byte)) & 0xFF) as usize];
        }
        self.state = crc;
    }

    pub(crate) fn finish(&self) -> u32 {
        !self.state
    }
}

/// The CRC-32 of `bytes` in one call.
#[cfg(test)]
pub(crate) fn checksum(bytes: &[u8]) -> u32 {
    let mut crc = Crc32::new();
    crc.update(bytes);
    crc.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook bit-at-a-time definition, to check the table-driven version against.
    fn bitwise_reference(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in bytes {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ POLYNOMIAL
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
            assert_eq!(crc.finish(), expected, "length {len} split at {split}");
        }
    }
}
