//! Keeps a local cache of spider versions fetched from the master, and builds each run's working directory.
//!
//! A version is downloaded into a temporary folder and renamed into place only when complete, so a sync that
//! is cut off never leaves a half-written version that a later run would use. A failed sync fails the task:
//! a spider never runs on stale or partial files.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use arachne_proto::client::Client;
use arachne_shared::SpiderId;
use arachne_shared::spider::validate_relative_path;
use tokio::io::AsyncWriteExt;

/// Errors of syncing files.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("fetching files from the master failed: {0}")]
    Fetch(#[from] arachne_proto::Error),
    #[error("fetching files failed: no connection to the master within {0} s")]
    Disconnected(u64),
    #[error("the master sent an unsafe path: {0}")]
    UnsafePath(String),
    #[error("the master sent chunks of {0:?} after its last chunk")]
    Order(String),
    #[error("writing {path}: {source}")]
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

/// The folder of cached versions on this worker.
#[derive(Debug, Clone)]
pub(crate) struct FileCache {
    root: PathBuf,
}

impl FileCache {
    pub(crate) fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// The folder holding `version` of the spider, downloading it first if it is not cached.
    pub(crate) async fn ensure(
        &self,
        client: &mut Client,
        spider_id: SpiderId,
        version: &str,
    ) -> Result<PathBuf, Error> {
        validate_relative_path(version).map_err(Error::UnsafePath)?;
        let dir = self.root.join(spider_id.to_string()).join(version);
        if tokio::fs::try_exists(&dir).await.unwrap_or(false) {
            return Ok(dir);
        }
        let staging = self
            .root
            .join(".staging")
            .join(uuid::Uuid::now_v7().to_string());
        let result = download(client, spider_id, version, &staging).await;
        if let Err(err) = result {
            let _ = tokio::fs::remove_dir_all(&staging).await;
            return Err(err);
        }
        let parent = dir.parent().expect("version dir has a parent");
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(io(parent))?;
        if let Err(err) = tokio::fs::rename(&staging, &dir).await {
            let _ = tokio::fs::remove_dir_all(&staging).await;
            // Another run of the same version finished its download first; theirs is as good as ours.
            if !tokio::fs::try_exists(&dir).await.unwrap_or(false) {
                return Err(Error::Io {
                    path: dir,
                    source: err,
                });
            }
        }
        Ok(dir)
    }
}

async fn download(
    client: &mut Client,
    spider_id: SpiderId,
    version: &str,
    staging: &Path,
) -> Result<(), Error> {
    tokio::fs::create_dir_all(staging)
        .await
        .map_err(io(staging))?;
    let mut files = client.fetch_files(spider_id, version).await?;
    let mut open: Option<(String, tokio::fs::File, u32)> = None;
    let mut done = std::collections::HashSet::new();
    while let Some(chunk) = files.next().await {
        let chunk = chunk?;
        if open.as_ref().is_none_or(|(path, ..)| *path != chunk.path) {
            validate_relative_path(&chunk.path).map_err(Error::UnsafePath)?;
            if !done.insert(chunk.path.clone()) {
                return Err(Error::Order(chunk.path));
            }
            let path = staging.join(&chunk.path);
            if let Some(parent) = path.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(io(parent))?;
            }
            let file = tokio::fs::File::create(&path).await.map_err(io(&path))?;
            open = Some((chunk.path.clone(), file, chunk.mode));
        }
        let (path, file, mode) = open.as_mut().expect("a file is open");
        let full = staging.join(&*path);
        file.write_all(&chunk.data).await.map_err(io(&full))?;
        if chunk.last {
            file.flush().await.map_err(io(&full))?;
            let permissions = std::fs::Permissions::from_mode(*mode & 0o777);
            tokio::fs::set_permissions(&full, permissions)
                .await
                .map_err(io(&full))?;
            open = None;
        }
    }
    match open {
        Some((path, ..)) => Err(Error::Order(path)),
        None => Ok(()),
    }
}

/// Creates a fresh working directory for one run, holding a copy of `source` (or nothing), so files one run
/// writes never leak into the next.
pub(crate) async fn prepare_workdir(
    source: Option<PathBuf>,
    workdir: PathBuf,
) -> Result<(), Error> {
    tokio::task::spawn_blocking(move || {
        if workdir.exists() {
            std::fs::remove_dir_all(&workdir).map_err(io(&workdir))?;
        }
        std::fs::create_dir_all(&workdir).map_err(io(&workdir))?;
        match source {
            Some(source) => copy_tree(&source, &workdir),
            None => Ok(()),
        }
    })
    .await
    .expect("copy task does not panic")
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), Error> {
    for entry in std::fs::read_dir(from).map_err(io(from))? {
        let entry = entry.map_err(io(from))?;
        let target = to.join(entry.file_name());
        let kind = entry.file_type().map_err(io(&entry.path()))?;
        if kind.is_dir() {
            std::fs::create_dir(&target).map_err(io(&target))?;
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_file() {
            // fs::copy keeps the permission bits, so executables stay executable.
            std::fs::copy(entry.path(), &target).map_err(io(&target))?;
        }
    }
    Ok(())
}
