//! Spider files on the master. Every file content is stored once, named by its sha256, in `blobs/`, whichever
//! spider or version holds it; a version is a manifest (path, size, mode and sha256 of every file) in
//! `versions/{spider}/{hash}.json`, named by the sha256 of the manifest. Workers fetch manifests and then only
//! the contents they lack.
//!
//! Uploads (`.tar.gz`, `.zip`, or single files) are checked before anything is kept: no path may leave the
//! spider folder, no link or special file is accepted, no path appears twice, and size and file-count limits
//! hold even when an archive lies about its sizes. A rejected upload leaves nothing behind.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use arachne_proto::server::{BlobStream, Rejection};
use arachne_shared::SpiderId;
use arachne_shared::cluster::BlobChunk;
use arachne_shared::files::{FileEntry, Manifest, VersionInfo, hex, is_sha256};
use arachne_shared::spider::validate_relative_path;
use arachne_web_api::archive::IgnoreRules;
use arachne_web_api::types::Upload;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

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
    #[error("spider file storage failed at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("stored version {0} is unreadable: {1}")]
    Corrupt(String, String),
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

/// A version as kept on disk.
#[derive(Debug, Serialize, Deserialize)]
struct StoredVersion {
    created_at: DateTime<Utc>,
    manifest: Manifest,
}

impl StoredVersion {
    fn info(&self, hash: &str) -> VersionInfo {
        VersionInfo {
            hash: hash.to_owned(),
            file_count: self.manifest.files.len() as u64,
            total_bytes: self.manifest.total_bytes(),
            created_at: self.created_at,
            current: false,
        }
    }
}

/// The spider file store: blobs by content and version manifests.
#[derive(Debug, Clone)]
pub struct SpiderFiles {
    root: PathBuf,
    limits: UploadLimits,
}

impl SpiderFiles {
    pub fn new(root: PathBuf, limits: UploadLimits) -> Self {
        Self { root, limits }
    }

    fn blob_path(&self, sha256: &str) -> PathBuf {
        self.root.join("blobs").join(&sha256[..2]).join(sha256)
    }

    fn version_path(&self, spider: SpiderId, version: &str) -> PathBuf {
        self.root
            .join("versions")
            .join(spider.to_string())
            .join(format!("{version}.json"))
    }

    /// Checks an upload and stores it as a version of `spider` (the same content gives the same version).
    pub async fn store_upload(
        &self,
        spider: SpiderId,
        upload: Upload,
    ) -> Result<VersionInfo, Error> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let staging = this
                .root
                .join(".staging")
                .join(uuid::Uuid::now_v7().to_string());
            std::fs::create_dir_all(&staging).map_err(io(&staging))?;
            let result = this
                .unpack(upload, &staging)
                .and_then(|staged| this.commit(spider, staged));
            let _ = std::fs::remove_dir_all(&staging);
            result
        })
        .await
        .expect("unpacking does not panic")
    }

    fn unpack(&self, upload: Upload, staging: &Path) -> Result<Vec<Staged>, Error> {
        let mut sink = Sink {
            staging,
            limits: &self.limits,
            files: Vec::new(),
            paths: HashSet::new(),
            total: 0,
        };
        match upload {
            Upload::Archive(bytes) if bytes.starts_with(&[0x1f, 0x8b]) => {
                read_tar(&bytes, &mut sink)?
            }
            Upload::Archive(bytes) if bytes.starts_with(b"PK") => read_zip(&bytes, &mut sink)?,
            Upload::Archive(bytes) if bytes.is_empty() => {
                return Err(Error::BadArchive("the upload is empty".into()));
            }
            Upload::Archive(_) => {
                return Err(Error::BadArchive(
                    "not a .tar.gz or .zip archive (send a spider folder as one of those, or as files)".into(),
                ));
            }
            Upload::Files(files) => {
                for file in files {
                    let mode = file.mode.unwrap_or(0o644);
                    sink.add(&file.path, mode, &mut &file.data[..])?;
                }
            }
        }
        sink.finish()
    }

    fn commit(&self, spider: SpiderId, staged: Vec<Staged>) -> Result<VersionInfo, Error> {
        let mut entries = Vec::with_capacity(staged.len());
        for file in staged {
            let blob = self.blob_path(&file.entry.sha256);
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
        let manifest = Manifest::new(entries);
        let hash = manifest.hash();
        let path = self.version_path(spider, &hash);
        match self.read_version(spider, &hash) {
            Ok(existing) => Ok(existing.info(&hash)),
            Err(_) => {
                let stored = StoredVersion {
                    created_at: Utc::now(),
                    manifest,
                };
                write_atomically(&path, &serde_json::to_vec(&stored).expect("serialises"))?;
                Ok(stored.info(&hash))
            }
        }
    }

    fn read_version(&self, spider: SpiderId, version: &str) -> Result<StoredVersion, Error> {
        if !is_sha256(version) {
            return Err(Error::NotFound(version.to_owned()));
        }
        let path = self.version_path(spider, version);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound(version.to_owned()));
            }
            Err(err) => return Err(io(&path)(err)),
        };
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::Corrupt(version.to_owned(), e.to_string()))
    }

    /// Moves versions kept in the first layout (a folder of files per version, `{spider}/{hash}/`) into blobs
    /// and manifests, so spiders uploaded before keep running. Returns how many versions were moved.
    pub async fn migrate_folders(&self) -> Result<usize, Error> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let Ok(spiders) = std::fs::read_dir(&this.root) else {
                return Ok(0);
            };
            let mut moved = 0;
            for spider_dir in spiders.filter_map(Result::ok) {
                let name = spider_dir.file_name();
                let Some(spider) = name.to_str().and_then(|n| n.parse::<SpiderId>().ok()) else {
                    continue;
                };
                for version in std::fs::read_dir(spider_dir.path()).map_err(io(&spider_dir.path()))? {
                    let version = version.map_err(io(&spider_dir.path()))?.path();
                    let staging = this.root.join(".staging").join(uuid::Uuid::now_v7().to_string());
                    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
                    let committed = this
                        .stage_folder(&version, &staging)
                        .and_then(|staged| this.commit(spider, staged));
                    let _ = std::fs::remove_dir_all(&staging);
                    let committed = committed?;
                    if version.file_name().and_then(|n| n.to_str()) != Some(committed.hash.as_str()) {
                        // Same hash formula, so this means the folder was changed by hand.
                        tracing::warn!(folder = %version.display(), version = %committed.hash,
                            "a moved spider version hashed differently; its spider needs its version set again");
                    }
                    std::fs::remove_dir_all(&version).map_err(io(&version))?;
                    moved += 1;
                }
                let _ = std::fs::remove_dir(spider_dir.path());
            }
            Ok(moved)
        })
        .await
        .expect("migrating does not panic")
    }

    /// A version folder of the first layout, staged as an upload would be (no limits: it was accepted once).
    fn stage_folder(&self, folder: &Path, staging: &Path) -> Result<Vec<Staged>, Error> {
        let limits = UploadLimits {
            max_unpacked_bytes: u64::MAX,
            max_files: usize::MAX,
        };
        let mut sink = Sink {
            staging,
            limits: &limits,
            files: Vec::new(),
            paths: HashSet::new(),
            total: 0,
        };
        let mut stack = vec![folder.to_owned()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
                let path = entry.map_err(io(&dir))?.path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let relative = path.strip_prefix(folder).expect("below the folder");
                let mode = std::fs::metadata(&path)
                    .map_err(io(&path))?
                    .permissions()
                    .mode();
                let mut file = std::fs::File::open(&path).map_err(io(&path))?;
                sink.add(&relative.to_string_lossy(), mode, &mut file)?;
            }
        }
        sink.files.sort_by(|a, b| a.entry.path.cmp(&b.entry.path));
        Ok(sink.files)
    }

    /// One stored version.
    pub async fn version(&self, spider: SpiderId, version: &str) -> Result<VersionInfo, Error> {
        let this = self.clone();
        let version = version.to_owned();
        tokio::task::spawn_blocking(move || Ok(this.read_version(spider, &version)?.info(&version)))
            .await
            .expect("reading does not panic")
    }

    /// The manifest of one version.
    pub async fn manifest(&self, spider: SpiderId, version: &str) -> Result<Manifest, Error> {
        let this = self.clone();
        let version = version.to_owned();
        tokio::task::spawn_blocking(move || Ok(this.read_version(spider, &version)?.manifest))
            .await
            .expect("reading does not panic")
    }

    /// Every version of `spider`, newest first.
    pub async fn versions(&self, spider: SpiderId) -> Result<Vec<VersionInfo>, Error> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let dir = this.root.join("versions").join(spider.to_string());
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(err) => return Err(io(&dir)(err)),
            };
            let mut versions = Vec::new();
            for entry in entries {
                let name = entry.map_err(io(&dir))?.file_name();
                let Some(hash) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                    continue;
                };
                versions.push(this.read_version(spider, hash)?.info(hash));
            }
            versions.sort_by_key(|v| std::cmp::Reverse(v.created_at));
            Ok(versions)
        })
        .await
        .expect("listing does not panic")
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
        let blob = self.blob_path(&entry.sha256);
        tokio::fs::read(&blob).await.map_err(io(&blob))
    }

    /// Streams the named contents, each of which must belong to the version.
    pub async fn stream_blobs(
        &self,
        spider: SpiderId,
        version: &str,
        wanted: Vec<String>,
    ) -> Result<BlobStream, Error> {
        let manifest = self.manifest(spider, version).await?;
        let known: HashSet<&str> = manifest.files.iter().map(|f| f.sha256.as_str()).collect();
        if let Some(stranger) = wanted.iter().find(|w| !known.contains(w.as_str())) {
            return Err(Error::NoSuchFile {
                version: version.to_owned(),
                path: format!("content {stranger}"),
            });
        }
        let paths: Vec<(String, PathBuf)> = wanted
            .into_iter()
            .map(|sha| {
                let path = self.blob_path(&sha);
                (sha, path)
            })
            .collect();
        let (tx, rx) = mpsc::channel(8);
        tokio::task::spawn_blocking(move || {
            for (sha, path) in paths {
                if let Err(err) = send_blob(&sha, &path, &tx) {
                    let _ = tx.blocking_send(Err(Rejection::Internal(err.to_string())));
                    return;
                }
            }
        });
        Ok(rx)
    }
}

/// One checked file of an upload, written to a temporary file.
struct Staged {
    entry: FileEntry,
    temp: PathBuf,
}

/// Takes an upload's files one by one and enforces the rules on them.
struct Sink<'a> {
    staging: &'a Path,
    limits: &'a UploadLimits,
    files: Vec<Staged>,
    paths: HashSet<String>,
    total: u64,
}

impl Sink<'_> {
    /// Checks and stages one file, unless the built-in rules leave it out.
    fn add(&mut self, raw_path: &str, mode: u32, content: &mut dyn Read) -> Result<(), Error> {
        let path = raw_path.trim_start_matches("./").to_owned();
        validate_relative_path(&path).map_err(Error::BadArchive)?;
        if IgnoreRules::builtin().is_ignored(&path) {
            return Ok(());
        }
        if !self.paths.insert(path.clone()) {
            return Err(Error::BadArchive(format!(
                "{path} appears twice in the upload"
            )));
        }
        if self.files.len() >= self.limits.max_files {
            return Err(Error::TooLarge(format!(
                "more than {} files",
                self.limits.max_files
            )));
        }
        let temp = self.staging.join(self.files.len().to_string());
        let mut file = std::fs::File::create(&temp).map_err(io(&temp))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buffer = vec![0u8; 64 * 1024];
        // Counted while reading, never taken from a header, so a lying archive cannot smuggle a bomb in.
        loop {
            let n = content.read(&mut buffer).map_err(|e| {
                Error::BadArchive(format!("{path} cannot be read from the upload ({e})"))
            })?;
            if n == 0 {
                break;
            }
            size += n as u64;
            self.total += n as u64;
            if self.total > self.limits.max_unpacked_bytes {
                return Err(Error::TooLarge(format!(
                    "more than {} bytes once unpacked",
                    self.limits.max_unpacked_bytes
                )));
            }
            hasher.update(&buffer[..n]);
            file.write_all(&buffer[..n]).map_err(io(&temp))?;
        }
        self.files.push(Staged {
            entry: FileEntry {
                path,
                size,
                mode: (mode & 0o777) | 0o400,
                sha256: hex(&hasher.finalize()),
            },
            temp,
        });
        Ok(())
    }

    /// Applies the upload's own `.arachneignore` and checks that the files form a folder.
    fn finish(self) -> Result<Vec<Staged>, Error> {
        let rules = match self
            .files
            .iter()
            .find(|f| f.entry.path == IgnoreRules::FILE)
        {
            Some(file) => {
                let text = std::fs::read_to_string(&file.temp).map_err(io(&file.temp))?;
                IgnoreRules::parse(&text).map_err(Error::BadArchive)?
            }
            None => IgnoreRules::builtin(),
        };
        let kept: Vec<Staged> = self
            .files
            .into_iter()
            .filter(|f| !rules.is_ignored(&f.entry.path))
            .collect();
        if kept.is_empty() {
            return Err(Error::BadArchive("the upload holds no files".into()));
        }
        let paths: HashSet<&str> = kept.iter().map(|f| f.entry.path.as_str()).collect();
        for file in &kept {
            let mut parent = file.entry.path.as_str();
            while let Some((dir, _)) = parent.rsplit_once('/') {
                if paths.contains(dir) {
                    return Err(Error::BadArchive(format!(
                        "{dir} is both a file and a folder"
                    )));
                }
                parent = dir;
            }
        }
        Ok(kept)
    }
}

fn read_tar(bytes: &[u8], sink: &mut Sink<'_>) -> Result<(), Error> {
    let bad = |e: std::io::Error| Error::BadArchive(format!("not a valid .tar.gz archive ({e})"));
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
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
        let mode = entry.header().mode().unwrap_or(0o644);
        sink.add(&path, mode, &mut entry)?;
    }
    Ok(())
}

fn read_zip(bytes: &[u8], sink: &mut Sink<'_>) -> Result<(), Error> {
    let bad =
        |e: zip::result::ZipError| Error::BadArchive(format!("not a valid .zip archive ({e})"));
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(bad)?;
    for index in 0..zip.len() {
        let mut entry = zip.by_index(index).map_err(bad)?;
        // The raw name, not `enclosed_name`, so a hostile path is reported rather than quietly rewritten.
        let raw_path = String::from_utf8_lossy(entry.name_raw()).into_owned();
        let path = raw_path
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_owned();
        if entry.is_dir() || path.is_empty() {
            continue;
        }
        validate_relative_path(&path).map_err(Error::BadArchive)?;
        if entry.is_symlink() {
            return Err(Error::BadArchive(format!(
                "{path} is a link; links are not allowed in spiders"
            )));
        }
        let mode = entry.unix_mode().unwrap_or(0o644);
        if mode & 0o170000 != 0 && mode & 0o170000 != 0o100000 {
            return Err(Error::BadArchive(format!("{path} is not a regular file")));
        }
        sink.add(&path, mode, &mut entry)?;
    }
    Ok(())
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let parent = path.parent().expect("a version file has a parent");
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let temp = parent.join(format!(".{}.tmp", uuid::Uuid::now_v7()));
    std::fs::write(&temp, bytes).map_err(io(&temp))?;
    std::fs::rename(&temp, path).map_err(io(path))
}

fn send_blob(
    sha: &str,
    path: &Path,
    tx: &mpsc::Sender<Result<BlobChunk, Rejection>>,
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

#[cfg(test)]
mod tests {
    use arachne_web_api::types::UploadedFile;

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

    fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for (path, data) in entries {
            let options = zip::write::SimpleFileOptions::default().unix_permissions(0o755);
            zip.start_file(*path, options).unwrap();
            zip.write_all(data).unwrap();
        }
        zip.finish().unwrap().into_inner()
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
            .store_upload(spider, Upload::Archive(upload.clone()))
            .await
            .unwrap();
        let v2 = store
            .store_upload(spider, Upload::Archive(upload))
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
            .store_upload(other, Upload::Archive(zipped))
            .await
            .unwrap();
        assert_eq!(v3.hash, v1.hash, "modes and contents are the same");
        // Single files, one of them changed.
        let single = vec![
            UploadedFile {
                path: "main.py".into(),
                data: b"print(2)".to_vec(),
                mode: None,
            },
            UploadedFile {
                path: "a/b.sh".into(),
                data: Vec::new(),
                mode: Some(0o755),
            },
        ];
        let v4 = store
            .store_upload(spider, Upload::Files(single))
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
    async fn versions_of_the_first_layout_are_moved_and_keep_their_names() {
        let dir = tempfile::tempdir().unwrap();
        let store = SpiderFiles::new(dir.path().to_owned(), UploadLimits::default());
        let spider = SpiderId::new();
        // What the first layout kept: one folder of files per version, named by the same manifest hash.
        let manifest = Manifest::new(vec![FileEntry {
            path: "bin/run.sh".into(),
            size: 5,
            mode: 0o755,
            sha256: hex(&Sha256::digest(b"exit\n")),
        }]);
        let old = dir.path().join(spider.to_string()).join(manifest.hash());
        std::fs::create_dir_all(old.join("bin")).unwrap();
        std::fs::write(old.join("bin/run.sh"), "exit\n").unwrap();
        std::fs::set_permissions(
            old.join("bin/run.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();

        assert_eq!(store.migrate_folders().await.unwrap(), 1);
        assert_eq!(
            store.manifest(spider, &manifest.hash()).await.unwrap(),
            manifest
        );
        assert_eq!(
            store
                .read_file(spider, &manifest.hash(), "bin/run.sh")
                .await
                .unwrap(),
            b"exit\n"
        );
        assert!(!dir.path().join(spider.to_string()).exists());
        assert_eq!(
            store.migrate_folders().await.unwrap(),
            0,
            "nothing left to move"
        );
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
            .store_upload(SpiderId::new(), Upload::Archive(zipped))
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
            data: b"x".to_vec(),
            mode: None,
        };
        let cases: Vec<(Upload, &str)> = vec![
            (
                Upload::Archive(archive(&[("../evil", b"x", tar::EntryType::Regular)])),
                "unsafe path",
            ),
            (
                Upload::Archive(archive(&[("/etc/x", b"x", tar::EntryType::Regular)])),
                "unsafe path",
            ),
            (
                Upload::Archive(archive(&[("link", b"", tar::EntryType::Symlink)])),
                "links are not allowed",
            ),
            (
                Upload::Archive(archive(&[
                    ("a", b"1", tar::EntryType::Regular),
                    ("a", b"2", tar::EntryType::Regular),
                ])),
                "appears twice",
            ),
            (
                Upload::Archive(archive(&[
                    ("a", b"1", tar::EntryType::Regular),
                    ("a/b", b"2", tar::EntryType::Regular),
                ])),
                "both a file and a folder",
            ),
            (
                Upload::Archive(archive(&[("big", &[0u8; 1001], tar::EntryType::Regular)])),
                "more than 1000 bytes",
            ),
            (Upload::Archive(archive(&[])), "holds no files"),
            (
                Upload::Archive(b"definitely not an archive".to_vec()),
                "not a .tar.gz or .zip",
            ),
            (
                Upload::Archive(vec![0x1f, 0x8b, 0, 1, 2]),
                "not a valid .tar.gz",
            ),
            (
                Upload::Archive(b"PK\x03\x04 truncated".to_vec()),
                "not a valid .zip",
            ),
            (Upload::Archive(Vec::new()), "empty"),
            (Upload::Archive(zip_of(&[("../../x", b"1")])), "unsafe path"),
            (
                Upload::Archive(zip_of(&[("big", &[0u8; 1001])])),
                "more than 1000 bytes",
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
                .store_upload(SpiderId::new(), upload)
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
            .store_upload(SpiderId::new(), Upload::Archive(bomb))
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
