//! Keeps a local cache of spider files fetched from the master, and builds each run's working directory.
//!
//! Contents are cached once each, named by their sha256 (`blobs/`), whatever spider or version holds them;
//! a version is its manifest (`versions/{hash}.json`). Before a run the worker fetches the manifest, asks the
//! master only for the contents it lacks, and checks each one's sha256 and size. A content is renamed into
//! place only once verified, and the manifest is written last, so a sync that is cut off never leaves a
//! half-written version that a later run would use. A failed sync fails the task: a spider never runs on
//! stale or partial files.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arachne_proto::client::Client;
use arachne_shared::SpiderId;
use arachne_shared::files::{FileEntry, Manifest, hex, is_sha256};
use sha2::{Digest, Sha256};
use std::io::Write;

use tokio::sync::mpsc;
use tracing::warn;

use crate::sandbox::{Ids, chown_tree};

/// Errors of syncing files.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("fetching files from the master failed: {0}")]
    Fetch(#[from] arachne_proto::Error),
    #[error("fetching files failed: no connection to the master within {0} s")]
    Disconnected(u64),
    #[error("the master sent a bad version name: {0:?}")]
    BadVersion(String),
    #[error("the manifest the master sent does not match version {0}")]
    ManifestMismatch(String),
    #[error("the master sent {0}, which was not asked for or came twice")]
    Unexpected(String),
    #[error("content {sha256} of {path} failed its check: {problem}")]
    Corrupt {
        sha256: String,
        path: String,
        problem: String,
    },
    #[error(
        "the cached content {sha256} of {path} was altered; it is removed and fetched again by the next run"
    )]
    Altered { sha256: String, path: String },
    #[error(transparent)]
    HandOver(#[from] crate::sandbox::Error),
    #[error("the transfer ended before content {0} arrived")]
    Incomplete(String),
    #[error("writing received files stopped unexpectedly")]
    WriterGone,
    #[error("writing {0}")]
    Io(#[from] arachne_shared::PathIo),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io(arachne_shared::at(path)(source))
}

/// The largest version whose working directory is built without a trip to the blocking pool.
#[derive(Debug, Clone, Copy)]
struct InlineLimit {
    manifest_bytes: u64,
    files: usize,
    bytes: u64,
}

const INLINE: InlineLimit = InlineLimit {
    manifest_bytes: 4 << 10,
    files: 8,
    bytes: 256 << 10,
};

/// What building a working directory from the cache came to.
#[derive(Debug, PartialEq, Eq)]
enum Checkout {
    Built,
    /// The version or some of its contents must be synced first.
    NotCached,
    /// To be built on the blocking pool: over the in-place limit, or a leftover folder to clear first.
    ForPool,
}

/// What a sync found and did.
#[derive(Debug)]
pub(crate) struct Synced {
    pub(crate) manifest: Manifest,
    /// Contents downloaded for this sync (the rest were cached).
    pub(crate) fetched_files: usize,
    pub(crate) fetched_bytes: u64,
}

/// The cache of spider files on this worker.
#[derive(Debug, Clone)]
pub(crate) struct FileCache {
    root: PathBuf,
    /// Who a run's copy is handed to: the spider user, when spiders run as another user.
    owner: Option<Ids>,
    /// Held shared by checkouts and syncs, exclusively by [`FileCache::forget`]: a sync writes its manifest
    /// after its contents, so a sweep in between would take contents no manifest names yet.
    sweeping: Arc<tokio::sync::RwLock<()>>,
}

impl FileCache {
    pub(crate) fn new(root: PathBuf, owner: Option<Ids>) -> Self {
        Self {
            root,
            owner,
            sweeping: Arc::default(),
        }
    }

    /// The versions cached here, by hash.
    pub(crate) fn cached_versions(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.root.join("versions")) else {
            return Vec::new();
        };
        let mut versions: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let hash = name.strip_suffix(".json")?;
                is_sha256(hash).then(|| hash.to_owned())
            })
            .collect();
        versions.sort();
        versions
    }

    /// Forgets versions the master no longer has, and removes every content no remaining cached version
    /// names; how many contents went.
    pub(crate) async fn forget(&self, versions: Vec<String>) -> Result<usize, Error> {
        let _exclusive = self.sweeping.write().await;
        let cache = self.clone();
        tokio::task::spawn_blocking(move || cache.forget_now(&versions))
            .await
            .expect("sweeping the cache does not panic")
    }

    fn forget_now(&self, versions: &[String]) -> Result<usize, Error> {
        for version in versions.iter().filter(|v| is_sha256(v)) {
            let path = self.manifest_path(version);
            match std::fs::remove_file(&path) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io(&path)(err));
                }
                _ => {}
            }
        }
        let mut named = HashSet::new();
        for version in self.cached_versions() {
            let path = self.manifest_path(&version);
            let manifest = std::fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<Manifest>(&bytes).ok());
            match manifest {
                Some(manifest) => named.extend(manifest.files.into_iter().map(|f| f.sha256)),
                // Unreadable: it goes too, and the next run of it syncs it again.
                None => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let mut removed = 0;
        let Ok(shards) = std::fs::read_dir(self.root.join("blobs")) else {
            return Ok(0);
        };
        for shard in shards.filter_map(|s| s.ok()) {
            let Ok(blobs) = std::fs::read_dir(shard.path()) else {
                continue;
            };
            for blob in blobs.filter_map(|b| b.ok()) {
                let name = blob.file_name();
                if name.to_str().is_some_and(|n| !named.contains(n)) {
                    let path = blob.path();
                    std::fs::remove_file(&path).map_err(io(&path))?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    pub(crate) fn blob_path(&self, sha256: &str) -> PathBuf {
        self.root.join("blobs").join(&sha256[..2]).join(sha256)
    }

    fn manifest_path(&self, version: &str) -> PathBuf {
        self.root.join("versions").join(format!("{version}.json"))
    }

    /// Clears what a crash can leave: half-received contents.
    pub(crate) async fn sweep(&self) {
        let _ = tokio::fs::remove_dir_all(self.root.join(".staging")).await;
    }

    /// Builds `workdir` straight from the cache when `version` and all its contents are cached (the common
    /// case: every run after a version's first on this worker). `false` when something must be synced first.
    ///
    /// A small version is built on the calling task: handing a few syscalls to the blocking pool and back
    /// cost two thread switches, about a sixth of a no-op run's time from assignment to spawn on a busy
    /// machine. Anything larger, or a leftover folder to clear first, goes to the blocking pool in one pass.
    pub(crate) async fn checkout_cached(
        &self,
        version: &str,
        workdir: PathBuf,
    ) -> Result<bool, Error> {
        if !is_sha256(version) {
            return Err(Error::BadVersion(version.to_owned()));
        }
        let _shared = self.sweeping.read().await;
        let manifest_path = self.manifest_path(version);
        match self.checkout(&manifest_path, &workdir, Some(INLINE))? {
            Checkout::Built => return Ok(true),
            Checkout::NotCached => return Ok(false),
            Checkout::ForPool => {}
        }
        let cache = self.clone();
        tokio::task::spawn_blocking(move || cache.checkout(&manifest_path, &workdir, None))
            .await
            .expect("checking the cache does not panic")
            .map(|checkout| checkout == Checkout::Built)
    }

    /// Builds `workdir` from the cached version at `manifest_path`, unless `limit` says it is work for the pool.
    fn checkout(
        &self,
        manifest_path: &Path,
        workdir: &Path,
        limit: Option<InlineLimit>,
    ) -> Result<Checkout, Error> {
        if let Some(limit) = limit {
            match std::fs::metadata(manifest_path) {
                Ok(meta) if meta.len() > limit.manifest_bytes => return Ok(Checkout::ForPool),
                Ok(_) if workdir.exists() => return Ok(Checkout::ForPool),
                Ok(_) => {}
                Err(_) => return Ok(Checkout::NotCached),
            }
        }
        let Some(manifest) = std::fs::read(manifest_path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Manifest>(&bytes).ok())
        else {
            return Ok(Checkout::NotCached);
        };
        if let Some(limit) = limit {
            let bytes: u64 = manifest.files.iter().map(|f| f.size).sum();
            if manifest.files.len() > limit.files || bytes > limit.bytes {
                return Ok(Checkout::ForPool);
            }
        }
        if !manifest
            .files
            .iter()
            .all(|f| self.blob_path(&f.sha256).exists())
        {
            return Ok(Checkout::NotCached);
        }
        match self.build_workdir(workdir, Some(&manifest)) {
            // Fetched again from the master by the sync that follows.
            Err(Error::Altered { sha256, path }) => {
                warn!(%sha256, %path, "a cached file was altered since it was fetched; fetching it again");
                Ok(Checkout::NotCached)
            }
            built => built.map(|()| Checkout::Built),
        }
    }

    /// The contents of `manifest` not in the cache, each with its size and a path holding it; one blocking
    /// pass, not a task hop per file.
    async fn missing(&self, manifest: &Manifest) -> HashMap<String, (u64, String)> {
        let cache = self.clone();
        let files: Vec<_> = manifest
            .files
            .iter()
            .map(|f| (f.sha256.clone(), f.size, f.path.clone()))
            .collect();
        tokio::task::spawn_blocking(move || {
            let mut missing = HashMap::new();
            for (sha256, size, path) in files {
                if !missing.contains_key(&sha256) && !cache.blob_path(&sha256).exists() {
                    missing.insert(sha256, (size, path));
                }
            }
            missing
        })
        .await
        .expect("checking the cache does not panic")
    }

    /// Makes sure every file of `version` is cached, downloading only the contents this worker lacks, and
    /// builds `workdir` from it. Each file is copied into place as soon as its content is cached, beside the
    /// transfer of the next ones, so a large first sync does not copy everything again once it is done.
    pub(crate) async fn sync_into(
        &self,
        client: &mut Client,
        spider_id: SpiderId,
        version: &str,
        workdir: PathBuf,
    ) -> Result<Synced, Error> {
        if !is_sha256(version) {
            return Err(Error::BadVersion(version.to_owned()));
        }
        let _shared = self.sweeping.read().await;
        let manifest = client.manifest(spider_id, version).await?;
        if manifest.hash() != version {
            return Err(Error::ManifestMismatch(version.to_owned()));
        }
        let missing = self.missing(&manifest).await;
        let fetched_files = missing.len();
        let fetched_bytes = missing.values().map(|(size, _)| size).sum();
        // Bounded by the number of contents, so the writer never waits on the copier.
        let (cached_tx, cached_rx) = std::sync::mpsc::sync_channel::<String>(missing.len().max(1));
        let copier = {
            let (cache, manifest) = (self.clone(), manifest.clone());
            let missing: HashSet<String> = missing.keys().cloned().collect();
            tokio::task::spawn_blocking(move || {
                cache.build_workdir(&workdir, None)?;
                let copy = |f: &FileEntry| cache.copy_into(&workdir, f);
                (manifest.files.iter())
                    .filter(|f| !missing.contains(&f.sha256))
                    .try_for_each(copy)?;
                while let Ok(sha256) = cached_rx.recv() {
                    (manifest.files.iter())
                        .filter(|f| f.sha256 == sha256)
                        .try_for_each(copy)?;
                }
                cache.hand_over(&workdir)
            })
        };
        let downloaded = if missing.is_empty() {
            // Nothing will be announced: without this the copier would wait for the sender forever.
            drop(cached_tx);
            Ok(())
        } else {
            self.download(client, spider_id, version, missing, cached_tx)
                .await
        };
        let copied = copier.await.expect("the copier does not panic");
        downloaded.and(copied)?;
        let path = self.manifest_path(version);
        write_atomically(&path, &serde_json::to_vec(&manifest).expect("serialises")).await?;
        Ok(Synced {
            manifest,
            fetched_files,
            fetched_bytes,
        })
    }

    async fn download(
        &self,
        client: &mut Client,
        spider_id: SpiderId,
        version: &str,
        missing: HashMap<String, (u64, String)>,
        cached: std::sync::mpsc::SyncSender<String>,
    ) -> Result<(), Error> {
        let staging = self.root.join(".staging");
        tokio::fs::create_dir_all(&staging)
            .await
            .map_err(io(&staging))?;
        let wanted: Vec<String> = missing.keys().cloned().collect();
        let mut blobs = client.fetch_blobs(spider_id, version, wanted).await?;
        // Hashing and writing run on a thread of their own, beside this task receiving the next chunks: done
        // in line, the sha256 alone was a third of a large sync and the transfer waited on it.
        let (pieces, rx) = mpsc::channel(PIECES_IN_FLIGHT);
        let cache = self.clone();
        let writer = tokio::task::spawn_blocking(move || cache.write_pieces(&staging, rx, cached));
        let mut done: HashSet<String> = HashSet::new();
        let received = async {
            // The content being received, and how many of its bytes came so far.
            let mut open: Option<(String, u64, u64)> = None;
            while let Some(chunk) = blobs.next().await {
                let chunk = chunk?;
                if open.as_ref().is_none_or(|(sha, ..)| *sha != chunk.sha256) {
                    if open.is_some() || done.contains(&chunk.sha256) {
                        return Err(Error::Unexpected(format!("content {}", chunk.sha256)));
                    }
                    let Some((size, path)) = missing.get(&chunk.sha256) else {
                        return Err(Error::Unexpected(format!("content {}", chunk.sha256)));
                    };
                    let start = Piece::Start {
                        sha256: chunk.sha256.clone(),
                        path: path.clone(),
                        expected_size: *size,
                    };
                    pieces.send(start).await.map_err(|_| Error::WriterGone)?;
                    open = Some((chunk.sha256.clone(), *size, 0));
                }
                let (sha256, expected, received) = open.as_mut().expect("a content is open");
                *received += chunk.data.len() as u64;
                if *received > *expected {
                    return Err(Error::Corrupt {
                        sha256: sha256.clone(),
                        path: missing[sha256.as_str()].1.clone(),
                        problem: format!("more than its {expected} bytes arrived"),
                    });
                }
                pieces
                    .send(Piece::Data(chunk.data))
                    .await
                    .map_err(|_| Error::WriterGone)?;
                if chunk.last {
                    pieces
                        .send(Piece::End)
                        .await
                        .map_err(|_| Error::WriterGone)?;
                    done.insert(open.take().expect("a content is open").0);
                }
            }
            match missing.keys().find(|sha| !done.contains(*sha)) {
                Some(sha) => Err(Error::Incomplete(sha.clone())),
                None => Ok(()),
            }
        }
        .await;
        drop(pieces);
        let written = writer.await.expect("the content writer does not panic");
        // The writer's failure (a bad checksum, a full disk) is the cause when both failed.
        written.and(received)
    }

    /// Writes received contents to staging files, checks each one's size and sha256, and renames it into the
    /// cache. Runs until the sender is dropped; a content left open then is removed.
    fn write_pieces(
        &self,
        staging: &Path,
        mut pieces: mpsc::Receiver<Piece>,
        cached: std::sync::mpsc::SyncSender<String>,
    ) -> Result<(), Error> {
        let mut open: Option<Incoming> = None;
        let result = (|| {
            while let Some(piece) = pieces.blocking_recv() {
                match piece {
                    Piece::Start {
                        sha256,
                        path,
                        expected_size,
                    } => {
                        let temp = staging.join(uuid::Uuid::now_v7().to_string());
                        let file = std::fs::File::create(&temp).map_err(io(&temp))?;
                        open = Some(Incoming {
                            sha256,
                            path,
                            expected_size,
                            size: 0,
                            hasher: Sha256::new(),
                            file,
                            temp,
                        });
                    }
                    Piece::Data(data) => {
                        let incoming = open.as_mut().ok_or(Error::WriterGone)?;
                        incoming.size += data.len() as u64;
                        incoming.hasher.update(&data);
                        incoming.file.write_all(&data).map_err(io(&incoming.temp))?;
                    }
                    Piece::End => {
                        let incoming = open.take().ok_or(Error::WriterGone)?;
                        let sha256 = incoming.sha256.clone();
                        self.settle(incoming)?;
                        // The copier stops only on an error of its own, which the sync reports anyway.
                        let _ = cached.send(sha256);
                    }
                }
            }
            Ok(())
        })();
        if let Some(incoming) = open {
            let _ = std::fs::remove_file(&incoming.temp);
        }
        result
    }

    /// Checks a received content and renames it into the cache.
    fn settle(&self, incoming: Incoming) -> Result<(), Error> {
        let Incoming {
            sha256,
            path,
            expected_size,
            size,
            hasher,
            file,
            temp,
        } = incoming;
        drop(file);
        let check = (|| {
            let actual = hex(&hasher.finalize());
            if size != expected_size || actual != sha256 {
                return Err(Error::Corrupt {
                    sha256: sha256.clone(),
                    path: path.clone(),
                    problem: format!("got {size} bytes with sha256 {actual}"),
                });
            }
            std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o444))
                .map_err(io(&temp))?;
            let blob = self.blob_path(&sha256);
            let parent = blob.parent().expect("a blob has a parent");
            std::fs::create_dir_all(parent).map_err(io(parent))?;
            std::fs::rename(&temp, &blob).map_err(io(&blob))
        })();
        if check.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        check
    }
}

/// Chunks handed to the writer and not yet written: a few MiB, so a slow disk slows the transfer down.
const PIECES_IN_FLIGHT: usize = 8;

/// What the receiving task hands the writer thread, in order.
enum Piece {
    Start {
        sha256: String,
        path: String,
        expected_size: u64,
    },
    Data(bytes::Bytes),
    End,
}

/// A content being received.
struct Incoming {
    sha256: String,
    /// A path that holds it, for error messages.
    path: String,
    expected_size: u64,
    size: u64,
    hasher: Sha256,
    file: std::fs::File,
    temp: PathBuf,
}

async fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let parent = path.parent().expect("a manifest has a parent");
    tokio::fs::create_dir_all(parent)
        .await
        .map_err(io(parent))?;
    let temp = parent.join(format!(".{}.tmp", uuid::Uuid::now_v7()));
    tokio::fs::write(&temp, bytes).await.map_err(io(&temp))?;
    tokio::fs::rename(&temp, path).await.map_err(io(path))
}

impl FileCache {
    /// Creates a fresh, empty working directory, for a run of a spider without files: in place (one mkdir),
    /// unless a leftover folder must be cleared first.
    pub(crate) async fn empty_workdir(&self, workdir: PathBuf) -> Result<(), Error> {
        if !workdir.exists() {
            return self.build_workdir(&workdir, None);
        }
        let cache = self.clone();
        tokio::task::spawn_blocking(move || cache.build_workdir(&workdir, None))
            .await
            .expect("creating a folder does not panic")
    }

    /// Creates a fresh working directory for one run, holding a checked copy of the version's files (or
    /// nothing), so files one run writes never leak into the next, nor into the cache; then hands it to the
    /// spider user.
    fn build_workdir(&self, workdir: &Path, manifest: Option<&Manifest>) -> Result<(), Error> {
        if workdir.exists() {
            std::fs::remove_dir_all(workdir).map_err(io(workdir))?;
        }
        std::fs::create_dir_all(workdir).map_err(io(workdir))?;
        let Some(manifest) = manifest else {
            return self.hand_over(workdir);
        };
        for file in &manifest.files {
            self.copy_into(workdir, file)?;
        }
        self.hand_over(workdir)
    }

    fn hand_over(&self, workdir: &Path) -> Result<(), Error> {
        match self.owner {
            Some(ids) => Ok(chown_tree(workdir, ids)?),
            None => Ok(()),
        }
    }

    /// Copies one cached file into a working directory, with its mode, checking its sha256 on the way: a
    /// content altered in the cache (by anything that could write there) is removed, never run.
    fn copy_into(&self, workdir: &Path, file: &FileEntry) -> Result<(), Error> {
        use std::io::Read;
        let target = workdir.join(&file.path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let blob = self.blob_path(&file.sha256);
        let mut source = std::fs::File::open(&blob).map_err(io(&blob))?;
        let mut copy = std::fs::File::create(&target).map_err(io(&target))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0; 64 << 10];
        loop {
            let n = source.read(&mut buf).map_err(io(&blob))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            copy.write_all(&buf[..n]).map_err(io(&target))?;
        }
        if hex(&hasher.finalize()) != file.sha256 {
            let _ = std::fs::remove_file(&blob);
            return Err(Error::Altered {
                sha256: file.sha256.clone(),
                path: file.path.clone(),
            });
        }
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(file.mode & 0o777))
            .map_err(io(&target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Puts `files` (path, content, mode) in the cache as one version, as a finished sync leaves them; returns
    /// the version.
    fn cache_version(cache: &FileCache, files: &[(&str, Vec<u8>, u32)]) -> String {
        let entries = files
            .iter()
            .map(|(path, content, mode)| {
                let sha256 = hex(&Sha256::digest(content));
                let blob = cache.blob_path(&sha256);
                std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
                std::fs::write(&blob, content).unwrap();
                FileEntry {
                    path: (*path).to_owned(),
                    size: content.len() as u64,
                    mode: *mode,
                    sha256,
                }
            })
            .collect();
        let manifest = Manifest::new(entries);
        let version = manifest.hash();
        let path = cache.manifest_path(&version);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, serde_json::to_vec(&manifest).unwrap()).unwrap();
        version
    }

    fn read(dir: &Path, path: &str) -> (Vec<u8>, u32) {
        let path = dir.join(path);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        (std::fs::read(path).unwrap(), mode)
    }

    #[tokio::test]
    async fn small_and_large_versions_check_out_whole_and_fresh() {
        let root = tempfile::tempdir().unwrap();
        let cache = FileCache::new(root.path().join("cache"), None);
        let small = cache_version(
            &cache,
            &[
                ("main.sh", b"echo hi\n".to_vec(), 0o755),
                ("conf/a.txt", b"a".to_vec(), 0o644),
            ],
        );
        // Over the in-place limit both by count and by size: built on the blocking pool.
        let many: Vec<(String, Vec<u8>, u32)> = (0..INLINE.files + 1)
            .map(|i| (format!("part{i}.txt"), vec![b'x'; 64 << 10], 0o600))
            .collect();
        let refs: Vec<(&str, Vec<u8>, u32)> = many
            .iter()
            .map(|(p, c, m)| (p.as_str(), c.clone(), *m))
            .collect();
        let large = cache_version(&cache, &refs);

        let work = root.path().join("w1");
        assert!(cache.checkout_cached(&small, work.clone()).await.unwrap());
        assert_eq!(read(&work, "main.sh"), (b"echo hi\n".to_vec(), 0o755));
        assert_eq!(read(&work, "conf/a.txt"), (b"a".to_vec(), 0o644));

        // A folder left by an earlier run is replaced, not merged into.
        std::fs::write(work.join("stale.txt"), "old run").unwrap();
        assert!(cache.checkout_cached(&small, work.clone()).await.unwrap());
        assert!(!work.join("stale.txt").exists());
        assert_eq!(read(&work, "main.sh").0, b"echo hi\n");

        let work = root.path().join("w2");
        assert!(cache.checkout_cached(&large, work.clone()).await.unwrap());
        for (path, content, mode) in &many {
            assert_eq!(&read(&work, path), &(content.clone(), *mode), "{path}");
        }
    }

    #[tokio::test]
    async fn a_version_with_anything_missing_must_be_synced() {
        let root = tempfile::tempdir().unwrap();
        let cache = FileCache::new(root.path().join("cache"), None);
        let version = cache_version(&cache, &[("main.py", b"print(1)\n".to_vec(), 0o644)]);
        let unknown = hex(&Sha256::digest(b"no such version"));
        let work = root.path().join("w");
        assert!(!cache.checkout_cached(&unknown, work.clone()).await.unwrap());

        let blob = cache.blob_path(&hex(&Sha256::digest(b"print(1)\n")));
        std::fs::remove_file(blob).unwrap();
        assert!(!cache.checkout_cached(&version, work.clone()).await.unwrap());

        let err = cache.checkout_cached("../../etc", work).await.unwrap_err();
        assert!(matches!(err, Error::BadVersion(_)), "{err}");
    }

    /// A cached content someone altered (a spider did, before runs had their own user) is never run: the
    /// checkout sees its sha256 differ, removes it and asks for a sync.
    #[tokio::test]
    async fn an_altered_cached_file_is_removed_and_fetched_again_never_run() {
        let root = tempfile::tempdir().unwrap();
        let cache = FileCache::new(root.path().join("cache"), None);
        let version = cache_version(&cache, &[("hello.sh", b"echo hello\n".to_vec(), 0o755)]);
        let blob = cache.blob_path(&hex(&Sha256::digest(b"echo hello\n")));
        std::fs::write(&blob, "echo poisoned\n").unwrap();
        let work = root.path().join("w");
        assert!(!cache.checkout_cached(&version, work.clone()).await.unwrap());
        assert!(!blob.exists());
    }
}
