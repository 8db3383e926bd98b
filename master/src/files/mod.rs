//! Spider files on the master. Every file content is stored once, named by its sha256, whichever spider or
//! version holds it; a version is a manifest (path, size, mode and sha256 of every file), named by the sha256 of
//! the manifest. Workers fetch manifests and then only the contents they lack.
//!
//! Where they are kept is the backend's business: a folder under the data directory ([`disk`]) by default, or
//! GridFS beside the MongoDB store ([`gridfs`]), so a master on MongoDB keeps nothing on its own disk and any
//! master on that database can serve every spider.
//!
//! Uploads (`.tar.gz`, `.zip`, or single files) are checked before anything is kept ([`upload`]): no path may
//! leave the spider folder, no link or special file is accepted, no path appears twice, and size and file-count
//! limits hold even when an archive lies about its sizes. A rejected upload leaves nothing behind.

mod disk;
mod gridfs;
mod upload;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use arachne_shared::SpiderId;
use arachne_shared::files::{Manifest, VersionInfo, is_sha256};
use arachne_shared::upload::Upload;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use self::upload::Staged;

/// The contents a worker asked for, in chunks; an `Err` ends the transfer.
pub type Blobs = mpsc::Receiver<Result<arachne_shared::cluster::BlobChunk, Error>>;

/// Size of one chunk sent to a worker: large enough that per-message costs vanish beside the bytes.
const CHUNK_BYTES: usize = 1024 * 1024;

/// Errors of storing and reading spider files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad upload: {0}")]
    BadArchive(String),
    #[error("upload too large: {0}")]
    TooLarge(String),
    #[error("version {0} not found")]
    NotFound(String),
    #[error("no file {path:?} in version {version}")]
    NoSuchFile { version: String, path: String },
    #[error("spider file storage failed at {0}")]
    Io(#[from] arachne_shared::PathIo),
    #[error("spider file storage in MongoDB failed: {0}")]
    MongoDb(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("stored version {0} is unreadable: {1}")]
    Corrupt(String, String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io(arachne_shared::at(path)(source))
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

/// A version as a backend keeps it.
#[derive(Debug, Serialize, Deserialize)]
struct StoredVersion {
    created_at: DateTime<Utc>,
    manifest: Manifest,
}

impl StoredVersion {
    fn info(&self, hash: &str) -> VersionInfo {
        VersionInfo {
            unwrapped: None,
            hash: hash.to_owned(),
            file_count: self.manifest.files.len() as u64,
            total_bytes: self.manifest.total_bytes(),
            created_at: self.created_at,
            current: false,
        }
    }
}

/// Where contents and versions are kept.
#[derive(Debug, Clone)]
enum Storage {
    Disk(disk::Disk),
    GridFs(gridfs::GridFs),
}

/// The spider file store: blobs by content and version manifests.
#[derive(Debug, Clone)]
pub struct SpiderFiles {
    /// Uploads are unpacked and checked here.
    local: PathBuf,
    limits: UploadLimits,
    storage: Storage,
    /// Held shared from keeping an upload's contents until its version names them, and exclusively by a
    /// clean-up, which would otherwise take those contents for unused.
    cleanup: std::sync::Arc<tokio::sync::RwLock<()>>,
}

impl SpiderFiles {
    /// Keeps everything under `root`.
    pub fn new(root: PathBuf, limits: UploadLimits) -> Self {
        Self {
            storage: Storage::Disk(disk::Disk::new(root.clone())),
            local: root,
            limits,
            cleanup: Default::default(),
        }
    }

    /// Keeps contents and versions in `db` (GridFS and `spider_versions`); only uploads being checked
    /// touch `staging_root`.
    pub async fn in_mongodb(
        db: &mongodb::Database,
        staging_root: PathBuf,
        limits: UploadLimits,
    ) -> Result<Self, Error> {
        Ok(Self {
            storage: Storage::GridFs(gridfs::GridFs::open(db).await?),
            local: staging_root,
            limits,
            cleanup: Default::default(),
        })
    }

    /// Removes what uploads cut short by an earlier process left in the staging folder. Called at start,
    /// before any upload.
    pub async fn sweep_staging(&self) {
        let staging = self.local.join(".staging");
        match tokio::fs::remove_dir_all(&staging).await {
            Ok(()) => {
                tracing::info!(dir = %staging.display(), "removed uploads an earlier run left unfinished")
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                tracing::warn!(dir = %staging.display(), error = %err, "cannot clear the upload staging folder")
            }
        }
    }

    /// Checks an upload and stores it as a version of `spider` (the same content gives the same version).
    pub async fn store_upload(
        &self,
        spider: SpiderId,
        upload: Upload,
        cmd: &str,
    ) -> Result<VersionInfo, Error> {
        let limits = self.limits.clone();
        let cmd = cmd.to_owned();
        let staging = self
            .local
            .join(".staging")
            .join(uuid::Uuid::now_v7().to_string());
        let folder = staging.clone();
        let unpacked = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&folder).map_err(io(&folder))?;
            upload::unpack(upload, &folder, &limits, &cmd)
        })
        .await
        .expect("unpacking does not panic");
        let result = match unpacked {
            Ok(unpacked) => self
                .commit(spider, unpacked.files)
                .await
                .map(|info| VersionInfo {
                    unwrapped: unpacked.unwrapped,
                    ..info
                }),
            Err(err) => Err(err),
        };
        // Whatever happened, the staged copies go.
        let _ = tokio::fs::remove_dir_all(&staging).await;
        result
    }

    async fn commit(&self, spider: SpiderId, staged: Vec<Staged>) -> Result<VersionInfo, Error> {
        let _no_cleanup = self.cleanup.read().await;
        let entries = match &self.storage {
            Storage::Disk(disk) => disk.keep_blobs(staged).await?,
            Storage::GridFs(grid) => grid.keep_blobs(staged).await?,
        };
        let manifest = Manifest::new(entries);
        let hash = manifest.hash();
        if let Some(existing) = self.stored(spider, &hash).await? {
            return Ok(existing.info(&hash));
        }
        let stored = StoredVersion {
            created_at: Utc::now(),
            manifest,
        };
        match &self.storage {
            Storage::Disk(disk) => disk.put_version(spider, &hash, &stored).await?,
            Storage::GridFs(grid) => grid.put_version(spider, &hash, &stored).await?,
        }
        Ok(stored.info(&hash))
    }

    async fn stored(&self, spider: SpiderId, hash: &str) -> Result<Option<StoredVersion>, Error> {
        match &self.storage {
            Storage::Disk(disk) => disk.version(spider, hash).await,
            Storage::GridFs(grid) => grid.version(spider, hash).await,
        }
    }

    async fn read_version(&self, spider: SpiderId, version: &str) -> Result<StoredVersion, Error> {
        if !is_sha256(version) {
            return Err(Error::NotFound(version.to_owned()));
        }
        self.stored(spider, version)
            .await?
            .ok_or_else(|| Error::NotFound(version.to_owned()))
    }

    /// One stored version.
    pub async fn version(&self, spider: SpiderId, version: &str) -> Result<VersionInfo, Error> {
        Ok(self.read_version(spider, version).await?.info(version))
    }

    /// The manifest of one version.
    pub async fn manifest(&self, spider: SpiderId, version: &str) -> Result<Manifest, Error> {
        Ok(self.read_version(spider, version).await?.manifest)
    }

    /// Every version of `spider`, newest first.
    pub async fn versions(&self, spider: SpiderId) -> Result<Vec<VersionInfo>, Error> {
        let stored = match &self.storage {
            Storage::Disk(disk) => disk.versions(spider).await?,
            Storage::GridFs(grid) => grid.versions(spider).await?,
        };
        let mut versions: Vec<VersionInfo> = stored
            .iter()
            .map(|(hash, version)| version.info(hash))
            .collect();
        versions.sort_by_key(|v| std::cmp::Reverse(v.created_at));
        Ok(versions)
    }

    /// Removes a version, then every content no version of any spider names any more; false if there was
    /// no such version. Which versions may go is the caller's rule.
    pub async fn delete_version(&self, spider: SpiderId, version: &str) -> Result<bool, Error> {
        Ok(self.delete_versions(spider, &[version]).await? == 1)
    }

    /// Removes versions of `spider`, then, once, every content no version names any more; how many of them
    /// there were.
    pub async fn delete_versions(&self, spider: SpiderId, versions: &[&str]) -> Result<u64, Error> {
        let _alone = self.cleanup.write().await;
        let mut deleted = 0;
        for version in versions.iter().filter(|v| is_sha256(v)) {
            let gone = match &self.storage {
                Storage::Disk(disk) => disk.delete_version(spider, version).await?,
                Storage::GridFs(grid) => grid.delete_version(spider, version).await?,
            };
            deleted += u64::from(gone);
        }
        if deleted > 0 {
            let removed = match &self.storage {
                Storage::Disk(disk) => disk.remove_unnamed_blobs().await?,
                Storage::GridFs(grid) => grid.remove_unnamed_blobs().await?,
            };
            tracing::info!(%spider, versions = deleted, contents_removed = removed, "spider versions deleted");
        }
        Ok(deleted)
    }

    /// The content of one file of a version.
    pub async fn read_file(
        &self,
        spider: SpiderId,
        version: &str,
        path: &str,
    ) -> Result<Vec<u8>, Error> {
        let manifest = self.manifest(spider, version).await?;
        let entry = manifest.get(path).ok_or_else(|| Error::NoSuchFile {
            version: version.to_owned(),
            path: path.to_owned(),
        })?;
        match &self.storage {
            Storage::Disk(disk) => disk.read_blob(&entry.sha256).await,
            Storage::GridFs(grid) => grid.read_blob(&entry.sha256).await,
        }
    }

    /// Streams the named contents, each of which must belong to the version.
    pub async fn stream_blobs(
        &self,
        spider: SpiderId,
        version: &str,
        wanted: Vec<String>,
    ) -> Result<Blobs, Error> {
        let manifest = self.manifest(spider, version).await?;
        let known: HashSet<&str> = manifest.files.iter().map(|f| f.sha256.as_str()).collect();
        if let Some(stranger) = wanted.iter().find(|w| !known.contains(w.as_str())) {
            return Err(Error::NoSuchFile {
                version: version.to_owned(),
                path: format!("content {stranger}"),
            });
        }
        let (tx, rx) = mpsc::channel(8);
        match &self.storage {
            Storage::Disk(disk) => disk.send_blobs(wanted, tx),
            Storage::GridFs(grid) => grid.send_blobs(wanted, tx),
        }
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use arachne_shared::upload::{Spool, UploadedFile};

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

    fn archive_upload(bytes: impl AsRef<[u8]>) -> Upload {
        Upload::archive(bytes.as_ref()).unwrap()
    }

    fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for (path, data) in entries {
            let options = zip::write::SimpleFileOptions::default().unix_permissions(0o755);
            zip.start_file(*path, options).unwrap();
            zip.write_all(data).unwrap();
        }
        zip.finish().unwrap().into_inner()
    }

    /// A zip holding two entries named `main.py`, which `ZipWriter` itself refuses to write: written with
    /// another name of the same length, then renamed in the bytes.
    fn twin_zip() -> Vec<u8> {
        let zip = zip_of(&[("main.py", b"print(1)"), ("mbin.py", b"print(2)")]);
        let text = zip.clone();
        let mut zip = zip;
        for at in 0..text.len() - 7 {
            if &text[at..at + 7] == b"mbin.py" {
                zip[at..at + 7].copy_from_slice(b"main.py");
            }
        }
        zip
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

    fn blob_count(dir: &Path) -> usize {
        let mut count = 0;
        for shard in std::fs::read_dir(dir.join("blobs")).unwrap() {
            count += std::fs::read_dir(shard.unwrap().path()).unwrap().count();
        }
        count
    }

    #[tokio::test]
    async fn same_content_is_one_version_and_contents_are_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = files(dir.path());
        let spider = SpiderId::new();
        let upload = archive(&[
            ("main.py", b"print(1)", tar::EntryType::Regular),
            ("a/b.sh", b"", tar::EntryType::Regular),
        ]);
        let v1 = store
            .store_upload(spider, archive_upload(upload.clone()), "")
            .await
            .unwrap();
        let v2 = store
            .store_upload(spider, archive_upload(upload), "")
            .await
            .unwrap();
        assert_eq!(v1, v2);
        assert_eq!((v1.file_count, v1.total_bytes), (2, 8));
        let manifest = store.manifest(spider, &v1.hash).await.unwrap();
        assert_eq!(manifest.hash(), v1.hash);
        assert_eq!(manifest.get("a/b.sh").unwrap().mode, 0o755);

        // The same content as a zip, and for another spider, adds a version but no blob.
        let other = SpiderId::new();
        let zipped = zip_of(&[("main.py", b"print(1)"), ("a/b.sh", b"")]);
        let v3 = store
            .store_upload(other, archive_upload(zipped), "")
            .await
            .unwrap();
        assert_eq!(v3.hash, v1.hash, "modes and contents are the same");
        // Single files, one of them changed.
        let single = vec![
            UploadedFile {
                path: "main.py".into(),
                data: Spool::from_bytes(b"print(2)", None).unwrap(),
                mode: None,
            },
            UploadedFile {
                path: "a/b.sh".into(),
                data: Spool::from_bytes(b"", None).unwrap(),
                mode: Some(0o755),
            },
        ];
        let v4 = store
            .store_upload(spider, Upload::Files(single), "")
            .await
            .unwrap();
        assert_ne!(v4.hash, v1.hash);
        assert_eq!(
            blob_count(dir.path()),
            3,
            "print(1), print(2) and the empty file"
        );
        assert_eq!(store.versions(spider).await.unwrap().len(), 2);
        assert_eq!(
            store.read_file(spider, &v4.hash, "main.py").await.unwrap(),
            b"print(2)"
        );
        assert!(matches!(
            store.read_file(spider, &v4.hash, "nope").await,
            Err(Error::NoSuchFile { .. })
        ));

        let sha = manifest.get("main.py").unwrap().sha256.clone();
        let mut stream = store
            .stream_blobs(spider, &v1.hash, vec![sha.clone()])
            .await
            .unwrap();
        let chunk = stream.recv().await.unwrap().unwrap();
        assert_eq!(
            (chunk.sha256, chunk.data, chunk.last),
            (sha, b"print(1)".to_vec().into(), true)
        );
        assert!(stream.recv().await.is_none());
        // A content of another version cannot be fetched through this one.
        let foreign = store
            .manifest(spider, &v4.hash)
            .await
            .unwrap()
            .get("main.py")
            .unwrap()
            .sha256
            .clone();
        assert!(
            store
                .stream_blobs(spider, &v1.hash, vec![foreign])
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_deleted_version_takes_only_the_contents_no_other_version_names() {
        let dir = tempfile::tempdir().unwrap();
        let store = files(dir.path());
        let (spider, other) = (SpiderId::new(), SpiderId::new());
        let upload = |entries: &[(&str, &[u8])]| archive_upload(zip_of(entries));
        let shared: (&str, &[u8]) = ("lib.py", b"shared");
        let old = store
            .store_upload(spider, upload(&[("main.py", b"old"), shared]), "")
            .await
            .unwrap();
        let new = store
            .store_upload(spider, upload(&[("main.py", b"new"), shared]), "")
            .await
            .unwrap();
        store
            .store_upload(other, upload(&[("main.py", b"old")]), "")
            .await
            .unwrap();
        assert_eq!(blob_count(dir.path()), 3);

        // "old" is still named by the other spider, "shared" by the newer version.
        assert!(store.delete_version(spider, &old.hash).await.unwrap());
        assert_eq!(blob_count(dir.path()), 3);
        assert!(matches!(
            store.version(spider, &old.hash).await,
            Err(Error::NotFound(_))
        ));
        assert!(
            !store.delete_version(spider, &old.hash).await.unwrap(),
            "gone already"
        );
        assert!(!store.delete_version(spider, "not-a-hash").await.unwrap());

        assert!(store.delete_version(spider, &new.hash).await.unwrap());
        assert_eq!(
            blob_count(dir.path()),
            1,
            "only the other spider's content is left"
        );
        assert!(store.versions(spider).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn ignore_rules_apply_to_every_upload() {
        let dir = tempfile::tempdir().unwrap();
        let store = SpiderFiles::new(dir.path().to_owned(), UploadLimits::default());
        let zipped = zip_of(&[
            ("main.py", b"1"),
            (".arachneignore", b"*.log\n"),
            ("run.log", b"x"),
            ("node_modules/x/index.js", b"x"),
            ("m.pyc", b"x"),
        ]);
        let v = store
            .store_upload(SpiderId::new(), archive_upload(zipped), "")
            .await
            .unwrap();
        assert_eq!(v.file_count, 2, "main.py and .arachneignore");
    }

    #[tokio::test]
    async fn hostile_or_oversize_uploads_are_refused_and_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = files(dir.path());
        let file = |path: &str| UploadedFile {
            path: path.into(),
            data: Spool::from_bytes(b"x", None).unwrap(),
            mode: None,
        };
        let cases: Vec<(Upload, &str)> = vec![
            (
                archive_upload(archive(&[("../evil", b"x", tar::EntryType::Regular)])),
                "unsafe path",
            ),
            (
                archive_upload(archive(&[("/etc/x", b"x", tar::EntryType::Regular)])),
                "unsafe path",
            ),
            (
                archive_upload(archive(&[("link", b"", tar::EntryType::Symlink)])),
                "links are not allowed",
            ),
            (
                archive_upload(archive(&[
                    ("a", b"1", tar::EntryType::Regular),
                    ("a", b"2", tar::EntryType::Regular),
                ])),
                "appears twice",
            ),
            (
                archive_upload(archive(&[
                    ("a", b"1", tar::EntryType::Regular),
                    ("a/b", b"2", tar::EntryType::Regular),
                ])),
                "both a file and a folder",
            ),
            (
                archive_upload(archive(&[("big", &[0u8; 1001], tar::EntryType::Regular)])),
                "more than 1000 bytes",
            ),
            (archive_upload(archive(&[])), "holds no files"),
            (
                archive_upload(b"definitely not an archive"),
                "not a .tar.gz or .zip",
            ),
            (
                archive_upload(vec![0x1f, 0x8b, 0, 1, 2]),
                "not a valid .tar.gz",
            ),
            (archive_upload(b"PK\x03\x04 truncated"), "not a valid .zip"),
            (archive_upload(Vec::new()), "empty"),
            (archive_upload(zip_of(&[("../../x", b"1")])), "unsafe path"),
            (
                archive_upload(zip_of(&[("big", &[0u8; 1001])])),
                "more than 1000 bytes",
            ),
            (archive_upload(twin_zip()), "main.py appears twice"),
            (
                archive_upload(zip_of(&[("1", b""), ("2", b""), ("3", b""), ("4", b"")])),
                "4 entries, more than 3 files",
            ),
            (Upload::Files(vec![file("a\nb.py")]), "control character"),
            (
                Upload::Files(vec![file("\u{1b}[31mred")]),
                "control character",
            ),
            (Upload::Files(vec![file("/abs")]), "unsafe path"),
            (Upload::Files(vec![file("a/../../b")]), "unsafe path"),
            (Upload::Files(vec![file("a"), file("a")]), "appears twice"),
            (Upload::Files(Vec::new()), "holds no files"),
            (
                Upload::Files(vec![file("1"), file("2"), file("3"), file("4")]),
                "more than 3 files",
            ),
        ];
        for (upload, expected) in cases {
            let err = store
                .store_upload(SpiderId::new(), upload, "")
                .await
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(expected),
                "{err:?} does not mention {expected:?}"
            );
        }
        // A zip bomb: a small archive whose content inflates past the limit.
        let bomb = {
            let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
            let options = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated);
            zip.start_file("bomb", options).unwrap();
            zip.write_all(&vec![0u8; 1 << 20]).unwrap();
            zip.finish().unwrap().into_inner()
        };
        assert!(bomb.len() < 10_000);
        let err = store
            .store_upload(SpiderId::new(), archive_upload(bomb), "")
            .await
            .unwrap_err();
        assert!(matches!(err, Error::TooLarge(_)), "{err}");

        // Nothing was kept: no blob, no version, only the (empty) staging folder.
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
