//! The durable file operations every storage file is written with.
//!
//! A rename or a new directory entry survives a power loss only once its directory is
//! fsynced, and a file's contents only once the file is: each helper here does both in the
//! order that leaves either the old state or the new one after a crash.

use std::{
    fs::{self, File},
    io::{self, Write},
    path::{Path, PathBuf},
};

use super::{IoContext, Result, StorageError};

/// Makes the entries of `dir` (creations, renames, removals) durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|handle| handle.sync_all()).at(dir)
}

/// The directory holding `path`; `.` for a bare relative name.
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Creates `dir` and any missing parents, fsyncing each parent that gained an entry, so a
/// directory created before an acknowledged write survives a power loss.
pub fn create_dir_durably(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = parent_dir(dir);
    create_dir_durably(&parent)?;
    match fs::create_dir(dir) {
        Ok(()) => sync_dir(&parent),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(StorageError::io(dir, source)),
    }
}

/// Writes `bytes` to `path.tmp` (the extension replaced), fsyncs it, renames it over `path`
/// and fsyncs the directory: `path` holds either its old contents or all of `bytes`.
pub fn write_file_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let temporary = path.with_extension("tmp");
    write_file_durably(&temporary, bytes)?;
    fs::rename(&temporary, path).at(path)?;
    if let Some(parent) = path.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Creates (or truncates) `path` with `bytes` and fsyncs it; the caller makes its directory
/// entry durable (a file in a directory renamed into place as a whole needs no more).
pub fn write_file_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = File::create(path).at(path)?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .at(path)
}

pub fn remove_file_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(StorageError::io(path, error)),
        _ => Ok(()),
    }
}

pub fn remove_dir_if_exists(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StorageError::io(dir, source)),
    }
}

/// Removes everything inside `dir`, keeping `dir` itself.
pub fn remove_dir_contents(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).at(dir)? {
        let path = entry.at(dir)?.path();
        if path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        }
        .at(&path)?;
    }
    Ok(())
}

/// Hard-links every file under `source` to the same place under `dest` (created), so `dest`
/// keeps those contents whatever later replaces the files under `source`.
pub fn link_tree(source: &Path, dest: &Path) -> Result<()> {
    fs::create_dir_all(dest).at(dest)?;
    for entry in fs::read_dir(source).at(source)? {
        let entry = entry.at(source)?;
        let from = entry.path();
        let to = dest.join(entry.file_name());
        if from.is_dir() {
            link_tree(&from, &to)?;
        } else {
            fs::hard_link(&from, &to).at(&to)?;
        }
    }
    Ok(())
}
