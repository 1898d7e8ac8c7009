//! Receives a snapshot a peer streams with `CopySnapshot`: the files, chunk by chunk, into
//! a staging directory, checked against the stream's header.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use futures::StreamExt;
use quiver_proto::v1::{CopySnapshotRequest, SnapshotChunk, SnapshotHeader};
use tokio::io::AsyncWriteExt;

use super::{peer_clients::PeerClients, replicator::status_error};
use crate::{
    error::{Error, Result},
    replica::{storage, EpochHistory, ReplicaConfig, SnapshotInfo},
};

/// A stalled peer must not hold the replica BOOTING forever.
const STREAM_IDLE_LIMIT: Duration = Duration::from_secs(30);

/// Streams a peer's snapshot into `staging/snapshot`; returns what it covers and its size.
pub async fn receive_snapshot(
    peers: &PeerClients,
    address: &str,
    collection: &str,
    shard: u32,
    me: &str,
    config: &ReplicaConfig,
    staging: &Path,
) -> Result<(SnapshotInfo, u64)> {
    let mut client = peers.client(address)?;
    let request = tonic::Request::new(CopySnapshotRequest {
        collection: collection.to_string(),
        shard,
        searcher_id: me.to_string(),
    });
    let mut stream = client
        .copy_snapshot(request)
        .await
        .map_err(|status| status_error("CopySnapshot", status))?
        .into_inner();
    let snapshot_dir = staging.join("snapshot");
    tokio::fs::create_dir_all(&snapshot_dir)
        .await
        .map_err(|source| storage(&snapshot_dir, source))?;
    let mut header = None;
    let mut files = SnapshotFiles::new(snapshot_dir);
    loop {
        let mut chunk = match tokio::time::timeout(STREAM_IDLE_LIMIT, stream.next()).await {
            Err(_) => return Err(Error::Internal("snapshot stream stalled".into())),
            Ok(None) => break,
            Ok(Some(chunk)) => {
                chunk.map_err(|status| status_error("CopySnapshot stream", status))?
            }
        };
        if let Some(first) = chunk.header.take() {
            if first.incarnation != config.incarnation {
                return Err(Error::Internal(
                    "the peer's snapshot belongs to another incarnation of the collection".into(),
                ));
            }
            header = Some(first);
        }
        files.write(chunk).await?;
    }
    let received = files.finish().await?;
    let header = header.ok_or_else(|| Error::Internal("snapshot stream had no header".into()))?;
    if received != header.total_bytes {
        return Err(Error::Internal(format!(
            "snapshot stream ended after {received} of {} bytes",
            header.total_bytes
        )));
    }
    Ok((snapshot_info(&header), received))
}

/// What the snapshot covers, as its header says.
fn snapshot_info(header: &SnapshotHeader) -> SnapshotInfo {
    let epochs = EpochHistory {
        fenced: 0,
        starts: header
            .epochs
            .iter()
            .map(|start| (start.epoch, start.start_seq))
            .collect(),
    };
    SnapshotInfo {
        applied_seq: header.applied_seq,
        last_epoch: header.last_epoch,
        epochs,
    }
}

/// The files of a snapshot being received: chunks of one file arrive in a run, so one
/// file is open at a time, flushed and synced before the next is opened.
struct SnapshotFiles {
    dir: PathBuf,
    open: Option<(String, tokio::fs::File)>,
    received: u64,
}

impl SnapshotFiles {
    fn new(dir: PathBuf) -> SnapshotFiles {
        SnapshotFiles {
            dir,
            open: None,
            received: 0,
        }
    }

    /// Appends a chunk's data to the file it names; a chunk naming no file (the header
    /// alone) writes nothing.
    async fn write(&mut self, chunk: SnapshotChunk) -> Result<()> {
        if chunk.file.is_empty() {
            return Ok(());
        }
        let relative = safe_relative_path(&chunk.file)?;
        let needs_open = self
            .open
            .as_ref()
            .is_none_or(|(name, _)| *name != chunk.file);
        if needs_open {
            if let Some((_, mut file)) = self.open.take() {
                finish_file(&mut file, &self.dir).await?;
            }
            let path = self.dir.join(&relative);
            if let Some(parent) = path.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(|source| storage(parent, source))?;
            }
            let file = tokio::fs::File::create(&path)
                .await
                .map_err(|source| storage(&path, source))?;
            self.open = Some((chunk.file.clone(), file));
        }
        let (_, file) = self.open.as_mut().expect("opened above");
        file.write_all(&chunk.data)
            .await
            .map_err(|source| storage(&self.dir, source))?;
        self.received += chunk.data.len() as u64;
        Ok(())
    }

    /// Syncs the last file; returns the bytes received.
    async fn finish(mut self) -> Result<u64> {
        if let Some((_, mut file)) = self.open.take() {
            finish_file(&mut file, &self.dir).await?;
        }
        Ok(self.received)
    }
}

async fn finish_file(file: &mut tokio::fs::File, path: &Path) -> Result<()> {
    file.flush()
        .await
        .and(file.sync_all().await)
        .map_err(|source| storage(path, source))
}

/// A peer names files relative to its snapshot; nothing may escape the staging directory.
fn safe_relative_path(name: &str) -> Result<PathBuf> {
    let path = PathBuf::from(name);
    let safe = path
        .components()
        .all(|component| matches!(component, std::path::Component::Normal(_)));
    if !safe || name.is_empty() {
        return Err(Error::Internal(format!(
            "snapshot file name {name:?} is not a plain relative path"
        )));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_file_names_cannot_escape() {
        assert!(safe_relative_path("index/graph.bin").is_ok());
        for bad in ["", "../x", "/etc/passwd", "a/../../b"] {
            assert!(safe_relative_path(bad).is_err(), "{bad}");
        }
    }
}
