//! `epochs.json`: a replica's [`EpochHistory`], replaced atomically on every change.

use std::{io, path::Path};

use serde::{Deserialize, Serialize};

use super::{fs::write_file_atomically, Result, StorageError};

const EPOCHS_FILE: &str = "epochs.json";

/// Where each primary epoch began in this replica's log, and the newest epoch it was fenced
/// at. A follower whose last record is from epoch `e` at sequence `s` shares the primary's
/// history only if `s` is at most where the primary's epoch `e` ended; past that its tail
/// is a write an old primary never got acknowledged, and it must start over from a
/// snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochHistory {
    /// No record of an older epoch is accepted from a primary once fenced at this one.
    pub fenced: u64,
    /// `(epoch, first sequence number written in it)`, in increasing order.
    pub starts: Vec<(u64, u64)>,
}

impl EpochHistory {
    /// The newest epoch this replica led (or learned from a snapshot); 0 for none.
    pub fn current(&self) -> u64 {
        self.starts.last().map_or(0, |(epoch, _)| *epoch)
    }

    /// The last sequence number written in `epoch` by this history, given that the log
    /// ends at `last_seq`: just before the next epoch's start.
    pub fn end_of(&self, epoch: u64, last_seq: u64) -> u64 {
        self.starts
            .iter()
            .find(|(started, _)| *started > epoch)
            .map_or(last_seq, |(_, start)| start.saturating_sub(1))
    }
}

/// The history stored in the replica directory `dir`; empty when none was stored yet.
pub fn read_epochs(dir: &Path) -> Result<EpochHistory> {
    let path = dir.join(EPOCHS_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|error| StorageError::corrupt(&path, 0, error.to_string())),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(EpochHistory::default()),
        Err(source) => Err(StorageError::io(&path, source)),
    }
}

/// Stores `epochs` in the replica directory `dir`, durably.
pub fn write_epochs(dir: &Path, epochs: &EpochHistory) -> Result<()> {
    let json = serde_json::to_vec(epochs).map_err(|error| StorageError::Encode {
        what: EPOCHS_FILE,
        reason: error.to_string(),
    })?;
    write_file_atomically(&dir.join(EPOCHS_FILE), &json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_round_trips_and_a_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_epochs(dir.path()).unwrap(), EpochHistory::default());
        let history = EpochHistory {
            fenced: 4,
            starts: vec![(1, 1), (3, 10)],
        };
        write_epochs(dir.path(), &history).unwrap();
        assert_eq!(read_epochs(dir.path()).unwrap(), history);
        assert_eq!(history.current(), 3);
        assert_eq!(history.end_of(1, 20), 9);
        std::fs::write(dir.path().join(EPOCHS_FILE), b"{").unwrap();
        assert!(matches!(
            read_epochs(dir.path()),
            Err(StorageError::Corrupt { .. })
        ));
    }
}
