//! Spider files on the master: each upload becomes an immutable version folder named by the sha256 of its
//! manifest (path, size, mode and sha256 of every file), and versions are streamed to workers in chunks.
//!
//! Uploads are checked before anything is kept: no path may leave the spider folder, no link or special file
//! is accepted, and size and file-count limits hold even when the archive lies about its sizes. A rejected
//! upload leaves nothing behind.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use arachne_proto::server::{FileStream, Rejection};
use arachne_shared::SpiderId;
use arachne_shared::cluster::FileChunk;
use arachne_shared::spider::validate_relative_path;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

/// Size of one chunk sent to a worker.
const CHUNK_BYTES: usize = 256 * 1024;

/// Errors of storing and reading spider files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad archive: {0}")]
    BadArchive(String),
    #[error("archive too large: {0}")]
    TooLarge(String),
    #[error("version {0} not found")]
    NotFound(String),
    #[error("spider file storage failed at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// Limits on one upload.
#[derive(Debug, Clone)]
pub struct UploadLimits {
    /// Total size of all files once unpacked.
    pub max_unpacked_bytes: u64,
    pub max_files: usize,
}

impl Default for UploadLimits {
    fn default() -> Self {
        Self {
            max_unpacked_bytes: 1 << 30,
            max_files: 20_000,
        }
    }
}

/// What an upload produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub hash: String,
    pub file_count: u64,
    pub total_bytes: u64,
}

/// The folder of spider versions.
#[derive(Debug, Clone)]
pub struct SpiderFiles {
    root: PathBuf,
    limits: UploadLimits,
}

impl SpiderFiles {
    pub fn new(root: PathBuf, limits: UploadLimits) -> Self {
        Self { root, limits }
    }

    fn version_dir(&self, spider: SpiderId, version: &str) -> PathBuf {
        self.root.join(spider.to_string()).join(version)
    }

    /// Unpacks a `.tar.gz` archive into a new version of `spider`.
    pub async fn store_archive(
        &self,
        spider: SpiderId,
        archive: Vec<u8>,
    ) -> Result<Version, Error> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let staging = this
                .root
                .join(".staging")
                .join(uuid::Uuid::now_v7().to_string());
            let result = this
                .unpack(&archive, &staging)
                .and_then(|manifest| this.commit(spider, &staging, manifest));
            let _ = std::fs::remove_dir_all(&staging);
            result
        })
        .await
        .expect("unpacking does not panic")
    }

    fn unpack(
        &self,
        archive: &[u8],
        staging: &Path,
    ) -> Result<BTreeMap<String, (u64, u32, String)>, Error> {
        std::fs::create_dir_all(staging).map_err(io(staging))?;
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
        let mut manifest = BTreeMap::new();
        let mut total = 0u64;
        let bad =
            |e: std::io::Error| Error::BadArchive(format!("not a valid .tar.gz archive ({e})"));
        for entry in tar.entries().map_err(bad)? {
            let mut entry = entry.map_err(bad)?;
            let raw_path = entry.path().map_err(bad)?.to_string_lossy().into_owned();
            let path = raw_path
                .trim_start_matches("./")
                .trim_end_matches('/')
                .to_owned();
            let kind = entry.header().entry_type();
            if kind.is_dir() || path.is_empty() {
                continue;
            }
            validate_relative_path(&path).map_err(Error::BadArchive)?;
            if kind.is_symlink() || kind.is_hard_link() {
                return Err(Error::BadArchive(format!(
                    "{path} is a link; links are not allowed in spiders"
                )));
            }
            if !kind.is_file() {
                return Err(Error::BadArchive(format!("{path} is not a regular file")));
            }
            if manifest.contains_key(&path) {
                return Err(Error::BadArchive(format!(
                    "{path} appears twice in the archive"
                )));
            }
            if manifest.len() >= self.limits.max_files {
                return Err(Error::TooLarge(format!(
                    "more than {} files",
                    self.limits.max_files
                )));
            }
            let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
            let target = staging.join(&path);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(io(parent))?;
            }
            let mut file = std::fs::File::create(&target).map_err(io(&target))?;
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            let mut buffer = vec![0u8; 64 * 1024];
            // Counted while reading, not taken from the header, so a lying header cannot smuggle a bomb in.
            loop {
                let n = entry.read(&mut buffer).map_err(bad)?;
                if n == 0 {
                    break;
                }
                size += n as u64;
                total += n as u64;
                if total > self.limits.max_unpacked_bytes {
                    return Err(Error::TooLarge(format!(
                        "more than {} bytes once unpacked",
                        self.limits.max_unpacked_bytes
                    )));
                }
                hasher.update(&buffer[..n]);
                file.write_all(&buffer[..n]).map_err(io(&target))?;
            }
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode | 0o400))
                .map_err(io(&target))?;
            manifest.insert(path, (size, mode | 0o400, hex::encode(hasher.finalize())));
        }
        if manifest.is_empty() {
            return Err(Error::BadArchive("the archive holds no files".into()));
        }
        Ok(manifest)
    }

    fn commit(
        &self,
        spider: SpiderId,
        staging: &Path,
        manifest: BTreeMap<String, (u64, u32, String)>,
    ) -> Result<Version, Error> {
        let mut hasher = Sha256::new();
        let mut total_bytes = 0;
        for (path, (size, mode, sha)) in &manifest {
            hasher.update(format!("{path}\t{size}\t{mode:o}\t{sha}\n"));
            total_bytes += size;
        }
        let hash = hex::encode(hasher.finalize());
        let dir = self.version_dir(spider, &hash);
        if !dir.exists() {
            let parent = dir.parent().expect("version dir has a parent");
            std::fs::create_dir_all(parent).map_err(io(parent))?;
            std::fs::rename(staging, &dir).map_err(io(&dir))?;
        }
        Ok(Version {
            hash,
            file_count: manifest.len() as u64,
            total_bytes,
        })
    }

    /// Streams every file of a version, in path order.
    pub async fn stream(&self, spider: SpiderId, version: &str) -> Result<FileStream, Error> {
        validate_relative_path(version).map_err(|_| Error::NotFound(version.to_owned()))?;
        let dir = self.version_dir(spider, version);
        if !tokio::fs::try_exists(&dir).await.unwrap_or(false) {
            return Err(Error::NotFound(version.to_owned()));
        }
        let (tx, rx) = mpsc::channel(8);
        tokio::task::spawn_blocking(move || {
            if let Err(err) = send_tree(&dir, &tx) {
                let _ = tx.blocking_send(Err(Rejection::Internal(err.to_string())));
            }
        });
        Ok(rx)
    }
}

fn list_files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), Error> {
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        if path.is_dir() {
            list_files(root, &path, out)?;
        } else {
            out.push(path.strip_prefix(root).expect("below root").to_owned());
        }
    }
    Ok(())
}

fn send_tree(root: &Path, tx: &mpsc::Sender<Result<FileChunk, Rejection>>) -> Result<(), Error> {
    let mut files = Vec::new();
    list_files(root, root, &mut files)?;
    files.sort();
    for relative in files {
        let full = root.join(&relative);
        let mode = std::fs::metadata(&full)
            .map_err(io(&full))?
            .permissions()
            .mode()
            & 0o777;
        let mut file = std::fs::File::open(&full).map_err(io(&full))?;
        let path = relative.to_string_lossy().into_owned();
        let mut sent_any = false;
        loop {
            let mut data = vec![0u8; CHUNK_BYTES];
            let n = read_full(&mut file, &mut data).map_err(io(&full))?;
            data.truncate(n);
            let last = n < CHUNK_BYTES;
            if n > 0 || !sent_any {
                let chunk = FileChunk {
                    path: path.clone(),
                    mode,
                    data,
                    last,
                };
                if tx.blocking_send(Ok(chunk)).is_err() {
                    return Ok(());
                }
                sent_any = true;
            } else {
                // The file was an exact multiple of the chunk size: close it with an empty last chunk.
                let chunk = FileChunk {
                    path: path.clone(),
                    mode,
                    data: Vec::new(),
                    last: true,
                };
                let _ = tx.blocking_send(Ok(chunk));
            }
            if last {
                break;
            }
        }
    }
    Ok(())
}

fn read_full(file: &mut std::fs::File, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(entries: &[(&str, &[u8], tar::EntryType)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (path, data, kind) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_size(data.len() as u64);
            header.set_mode(0o755);
            // set_path refuses `..`, which is exactly what a hostile archive carries: write the name raw.
            header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    fn files(dir: &Path) -> SpiderFiles {
        SpiderFiles::new(
            dir.to_owned(),
            UploadLimits {
                max_unpacked_bytes: 1000,
                max_files: 3,
            },
        )
    }

    #[tokio::test]
    async fn same_content_gives_the_same_version_and_modes_survive() {
        let dir = tempfile::tempdir().unwrap();
        let store = files(dir.path());
        let spider = SpiderId::new();
        let upload = archive(&[
            ("main.py", b"print(1)", tar::EntryType::Regular),
            ("a/b.sh", b"", tar::EntryType::Regular),
        ]);
        let v1 = store.store_archive(spider, upload.clone()).await.unwrap();
        let v2 = store.store_archive(spider, upload).await.unwrap();
        assert_eq!(v1, v2);
        assert_eq!((v1.file_count, v1.total_bytes), (2, 8));
        let mode = std::fs::metadata(store.version_dir(spider, &v1.hash).join("a/b.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);

        let mut stream = store.stream(spider, &v1.hash).await.unwrap();
        let mut got = Vec::new();
        while let Some(chunk) = stream.recv().await {
            let chunk = chunk.unwrap();
            got.push((chunk.path, chunk.data, chunk.last));
        }
        assert_eq!(
            got,
            [
                ("a/b.sh".into(), vec![], true),
                ("main.py".into(), b"print(1)".to_vec(), true)
            ]
        );
    }

    #[tokio::test]
    async fn hostile_or_oversize_archives_are_refused_and_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = files(dir.path());
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                archive(&[("../evil", b"x", tar::EntryType::Regular)]),
                "unsafe path",
            ),
            (
                archive(&[("/etc/x", b"x", tar::EntryType::Regular)]),
                "unsafe path",
            ),
            (
                archive(&[("link", b"", tar::EntryType::Symlink)]),
                "links are not allowed",
            ),
            (
                archive(&[
                    ("a", b"1", tar::EntryType::Regular),
                    ("a", b"2", tar::EntryType::Regular),
                ]),
                "appears twice",
            ),
            (
                archive(&[("big", &[0u8; 1001], tar::EntryType::Regular)]),
                "more than 1000 bytes",
            ),
            (archive(&[]), "holds no files"),
            (b"definitely not gzip".to_vec(), "not a valid .tar.gz"),
        ];
        for (upload, expected) in cases {
            let err = store
                .store_archive(SpiderId::new(), upload)
                .await
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(expected),
                "{err:?} does not mention {expected:?}"
            );
        }
        let many: Vec<_> = ["1", "2", "3", "4"]
            .iter()
            .map(|n| (*n, &b""[..], tar::EntryType::Regular))
            .collect();
        let err = store
            .store_archive(SpiderId::new(), archive(&many))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("more than 3 files"), "{err}");
        // Only the (empty) staging folder may remain.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, [std::ffi::OsString::from(".staging")]);
        assert_eq!(
            std::fs::read_dir(dir.path().join(".staging"))
                .unwrap()
                .count(),
            0
        );
    }
}
