//! A consistent copy of a replica's snapshot, staged for streaming to a peer.

use std::path::Path;

use super::{blocking, SearcherNode};
use crate::{error::Result, service::ExportedSnapshot};

impl SearcherNode {
    pub(super) async fn export_replica_snapshot(
        &self,
        collection: &str,
        shard: u32,
    ) -> Result<ExportedSnapshot> {
        let replica = self.active_replica(collection, shard)?;
        let dir = self.staging_dir();
        blocking(move || {
            let info = replica.export_snapshot(&dir)?;
            let mut exported = ExportedSnapshot {
                info,
                incarnation: replica.config().incarnation.clone(),
                dir: dir.clone(),
                files: Vec::new(),
            };
            list_files(&dir, "", &mut exported.files)?;
            exported.files.sort();
            Ok(exported)
        })
        .await
    }
}

fn list_files(dir: &Path, prefix: &str, out: &mut Vec<(String, u64)>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|source| crate::replica::storage(dir, source))?;
    for entry in entries {
        let entry = entry.map_err(|source| crate::replica::storage(dir, source))?;
        let name = entry.file_name().to_string_lossy().to_string();
        let relative = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let metadata = entry
            .metadata()
            .map_err(|source| crate::replica::storage(&entry.path(), source))?;
        if metadata.is_dir() {
            list_files(&entry.path(), &relative, out)?;
        } else {
            out.push((relative, metadata.len()));
        }
    }
    Ok(())
}
