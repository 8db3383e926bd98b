//! Spider files in a folder, for a master without MongoDB: every content once in `blobs/{sha[..2]}/{sha}`,
//! read-only, and every version as `versions/{spider}/{hash}.json`. Files are written under a temporary name
//! and renamed, so a crash never leaves a half-written blob or version under its real name.

use std::collections::HashSet;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use arachne_shared::SpiderId;
use arachne_shared::cluster::BlobChunk;
use arachne_shared::files::FileEntry;
use tokio::sync::mpsc;

use super::upload::Staged;
use super::{CHUNK_BYTES, Error, StoredVersion, io};

/// Blobs and versions under one folder.
#[derive(Debug, Clone)]
pub(super) struct Disk {
    root: PathBuf,
}

impl Disk {
    pub(super) fn new(root: PathBuf) -> Self {
        Self { root }
    }

    fn blob_path(&self, sha256: &str) -> PathBuf {
        self.root.join("blobs").join(&sha256[..2]).join(sha256)
    }

    fn versions_dir(&self, spider: SpiderId) -> PathBuf {
        self.root.join("versions").join(spider.to_string())
    }

    /// Keeps the staged contents not kept yet.
    pub(super) async fn keep_blobs(&self, staged: Vec<Staged>) -> Result<Vec<FileEntry>, Error> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut entries = Vec::with_capacity(staged.len());
            for file in staged {
                let blob = this.blob_path(&file.entry.sha256);
                if blob.exists() {
                    let _ = std::fs::remove_file(&file.temp);
                } else {
                    let parent = blob.parent().expect("a blob has a parent");
                    std::fs::create_dir_all(parent).map_err(io(parent))?;
                    std::fs::set_permissions(&file.temp, std::fs::Permissions::from_mode(0o444))
                        .map_err(io(&file.temp))?;
                    std::fs::rename(&file.temp, &blob).map_err(io(&blob))?;
                }
                entries.push(file.entry);
            }
            Ok(entries)
        })
        .await
        .expect("keeping blobs does not panic")
    }

    pub(super) async fn version(
        &self,
        spider: SpiderId,
        hash: &str,
    ) -> Result<Option<StoredVersion>, Error> {
        let path = self.versions_dir(spider).join(format!("{hash}.json"));
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(io(&path)(err)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Corrupt(hash.to_owned(), e.to_string()))
    }

    /// Keeps `stored` unless the version exists already.
    pub(super) async fn put_version(
        &self,
        spider: SpiderId,
        hash: &str,
        stored: &StoredVersion,
    ) -> Result<(), Error> {
        let dir = self.versions_dir(spider);
        tokio::fs::create_dir_all(&dir).await.map_err(io(&dir))?;
        let temp = dir.join(format!(".{}.tmp", uuid::Uuid::now_v7()));
        let bytes = serde_json::to_vec(stored).expect("a version serialises");
        tokio::fs::write(&temp, bytes).await.map_err(io(&temp))?;
        let path = dir.join(format!("{hash}.json"));
        tokio::fs::rename(&temp, &path).await.map_err(io(&path))
    }

    /// Every version of `spider`, in no order.
    pub(super) async fn versions(
        &self,
        spider: SpiderId,
    ) -> Result<Vec<(String, StoredVersion)>, Error> {
        let dir = self.versions_dir(spider);
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(io(&dir)(err)),
        };
        let mut versions = Vec::new();
        while let Some(entry) = entries.next_entry().await.map_err(io(&dir))? {
            let name = entry.file_name();
            let Some(hash) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if let Some(stored) = self.version(spider, hash).await? {
                versions.push((hash.to_owned(), stored));
            }
        }
        Ok(versions)
    }

    /// Removes one version; false if there was none.
    pub(super) async fn delete_version(&self, spider: SpiderId, hash: &str) -> Result<bool, Error> {
        let path = self.versions_dir(spider).join(format!("{hash}.json"));
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(err) => Err(io(&path)(err)),
        }
    }

    /// Removes the contents no version names.
    pub(super) async fn remove_unnamed_blobs(&self) -> Result<u64, Error> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut named = HashSet::new();
            for spider in entries(&this.root.join("versions"))? {
                for version in entries(&spider)? {
                    if version.extension().is_some_and(|e| e == "json") {
                        let bytes = std::fs::read(&version).map_err(io(&version))?;
                        let stored: StoredVersion =
                            serde_json::from_slice(&bytes).map_err(|e| {
                                Error::Corrupt(version.display().to_string(), e.to_string())
                            })?;
                        named.extend(stored.manifest.files.into_iter().map(|f| f.sha256));
                    }
                }
            }
            let mut removed = 0;
            for shard in entries(&this.root.join("blobs"))? {
                for blob in entries(&shard)? {
                    let unnamed = blob
                        .file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|sha| !named.contains(sha));
                    if unnamed {
                        std::fs::remove_file(&blob).map_err(io(&blob))?;
                        removed += 1;
                    }
                }
            }
            Ok(removed)
        })
        .await
        .expect("removing blobs does not panic")
    }

    pub(super) async fn read_blob(&self, sha256: &str) -> Result<Vec<u8>, Error> {
        let blob = self.blob_path(sha256);
        tokio::fs::read(&blob).await.map_err(io(&blob))
    }

    /// Sends the contents in chunks, on a blocking thread: plain reads beat async file I/O for large blobs.
    pub(super) fn send_blobs(
        &self,
        wanted: Vec<String>,
        tx: mpsc::Sender<Result<BlobChunk, Error>>,
    ) {
        let paths: Vec<(String, PathBuf)> = wanted
            .into_iter()
            .map(|sha| {
                let path = self.blob_path(&sha);
                (sha, path)
            })
            .collect();
        tokio::task::spawn_blocking(move || {
            for (sha, path) in paths {
                if let Err(err) = send_blob(&sha, &path, &tx) {
                    let _ = tx.blocking_send(Err(err));
                    return;
                }
            }
        });
    }
}

/// The paths in a folder; none when it does not exist.
fn entries(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let read = match std::fs::read_dir(dir) {
        Ok(read) => read,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(io(dir)(err)),
    };
    read.map(|entry| entry.map(|e| e.path()).map_err(io(dir)))
        .collect()
}

fn send_blob(
    sha: &str,
    path: &Path,
    tx: &mpsc::Sender<Result<BlobChunk, Error>>,
) -> Result<(), Error> {
    let file = std::fs::File::open(path).map_err(io(path))?;
    let mut reader = file.take(0);
    loop {
        // Read into spare capacity: zeroing a fresh buffer for every chunk cost more than the read.
        let mut data = Vec::with_capacity(CHUNK_BYTES);
        reader.set_limit(CHUNK_BYTES as u64);
        let n = reader.read_to_end(&mut data).map_err(io(path))?;
        let last = n < CHUNK_BYTES;
        let chunk = BlobChunk {
            sha256: sha.to_owned(),
            data: data.into(),
            last,
        };
        if tx.blocking_send(Ok(chunk)).is_err() || last {
            return Ok(());
        }
    }
}
