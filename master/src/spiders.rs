//! The spider service: creating and changing spiders, storing their uploaded files as versions, choosing the
//! current version, and reading a version's files. The HTTP adapter and the folder watcher both call it.

use std::collections::HashSet;
use std::sync::Arc;

use arachne_shared::files::{Manifest, VersionInfo};
use arachne_shared::spider::{Dedup, RunSettings};
use arachne_shared::upload::Upload;
use arachne_shared::{Invalid, Spider, Task, TaskId, TaskStatus};
use chrono::Utc;
use tracing::{info, warn};

use crate::files::{self, SpiderFiles};
use crate::scheduler::Scheduler;
use crate::store::{self, Store, TaskFilter};

/// Why a spider or its files could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("spider {0:?} not found")]
    NoSpider(String),
    #[error("spider {0:?} has no files yet")]
    NoFiles(String),
    #[error("spider {spider:?} has no version {version:?}")]
    NoVersion { spider: String, version: String },
    #[error(
        "version {version} is spider {spider:?}'s current version: make another current first (`arachne spider use`)"
    )]
    CurrentVersion { spider: String, version: String },
    #[error("version {version} of spider {spider:?} is used by task {task}, which is {status}")]
    VersionInUse {
        spider: String,
        version: String,
        task: TaskId,
        status: TaskStatus,
    },
    #[error("cmd must not be empty")]
    EmptyCmd,
    #[error("settings.{0}")]
    Settings(#[source] Invalid),
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("spider files: {0}")]
    Files(#[source] files::Error),
    #[error("store: {0}")]
    Store(#[from] store::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A spider as a user writes it. On an existing spider, what is left out keeps its value.
#[derive(Debug, Clone, Default)]
pub struct SpiderRequest {
    pub name: String,
    pub cmd: String,
    pub settings: Option<RunSettings>,
    /// 0 removes the limit.
    pub max_instances: Option<u32>,
    /// "" restores the default collection.
    pub results_collection: Option<String>,
    /// No keys removes deduplication.
    pub dedup: Option<Dedup>,
}

/// A spider after an upload, and the lone top-level folder the upload's files were taken out of, if any.
#[derive(Debug)]
pub struct Uploaded {
    pub spider: Spider,
    pub unwrapped: Option<String>,
}

/// Writes spiders and their versions.
pub struct Spiders {
    store: Arc<dyn Store>,
    files: SpiderFiles,
    /// Through which connected workers learn of deleted versions.
    scheduler: Arc<Scheduler>,
}

impl Spiders {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        files: SpiderFiles,
        scheduler: Arc<Scheduler>,
    ) -> Self {
        Self {
            store,
            files,
            scheduler,
        }
    }

    /// Which of `versions` (hashes, as a worker caches them) no spider has any more.
    pub(crate) async fn stale(&self, versions: &[String]) -> Result<Vec<String>> {
        if versions.is_empty() {
            return Ok(Vec::new());
        }
        let mut live = HashSet::new();
        for spider in self.store.list_spiders().await? {
            let stored = self
                .files
                .versions(spider.id)
                .await
                .map_err(|err| files_error(&spider.name, err))?;
            live.extend(stored.into_iter().map(|v| v.hash));
        }
        Ok(versions
            .iter()
            .filter(|v| !live.contains(*v))
            .cloned()
            .collect())
    }

    /// Tells the connected workers to drop deleted versions from their caches (a worker offline now is told
    /// when it registers again). A hash another spider still has stays.
    async fn forget_on_workers(&self, deleted: &[String]) {
        match self.stale(deleted).await {
            Ok(stale) if !stale.is_empty() => self.scheduler.forget_versions(stale),
            Ok(_) => {}
            Err(err) => {
                warn!(error = %err, "cannot tell the workers which versions went; they learn it when they register again")
            }
        }
    }

    pub async fn get(&self, name: &str) -> Result<Spider> {
        self.store
            .spider_by_name(name)
            .await?
            .ok_or_else(|| Error::NoSpider(name.to_owned()))
    }

    pub async fn list(&self) -> Result<Vec<Spider>> {
        Ok(self.store.list_spiders().await?)
    }

    /// Creates the spider, or changes the one of that name.
    pub async fn put(&self, mut request: SpiderRequest) -> Result<Spider> {
        arachne_shared::spider::validate_name("spider", &request.name)?;
        let cmd = request.cmd.trim();
        if cmd.is_empty() {
            return Err(Error::EmptyCmd);
        }
        let stored = self.store.spider_by_name(&request.name).await?;
        if let Some(settings) = &mut request.settings {
            // A form that showed the stored settings sends their masked secrets back: they stay as stored.
            let before = stored
                .as_ref()
                .map(|s| s.settings.clone())
                .unwrap_or_default();
            settings.keep_secrets_of(&before).map_err(Error::Settings)?;
            settings.validate().map_err(Error::Settings)?;
        }
        let keep_collection = request.results_collection.is_none();
        let results_collection = request.results_collection.filter(|c| !c.is_empty());
        if let Some(collection) = &results_collection {
            arachne_shared::spider::validate_collection(collection)?;
        }
        let keep_dedup = request.dedup.is_none();
        let dedup = request.dedup.filter(|d| !d.keys.is_empty());
        if let Some(dedup) = &dedup {
            dedup.validate()?;
        }
        let now = Utc::now();
        let spider = match stored {
            Some(existing) => Spider {
                cmd: cmd.to_owned(),
                updated_at: now,
                settings: request.settings.unwrap_or(existing.settings.clone()),
                max_instances: match request.max_instances {
                    Some(0) => None,
                    Some(max) => Some(max),
                    None => existing.max_instances,
                },
                results_collection: if keep_collection {
                    existing.results_collection.clone()
                } else {
                    results_collection
                },
                dedup: if keep_dedup {
                    existing.dedup.clone()
                } else {
                    dedup
                },
                ..existing
            },
            None => Spider {
                settings: request.settings.unwrap_or_default(),
                max_instances: request.max_instances.filter(|max| *max > 0),
                results_collection,
                dedup,
                ..Spider::new(request.name, cmd, now)
            },
        };
        self.store.put_spider(&spider).await?;
        Ok(spider)
    }

    /// Stores an upload as a new version and makes it current.
    pub async fn upload(&self, name: &str, upload: Upload) -> Result<Uploaded> {
        let spider = self.get(name).await?;
        let version = self
            .files
            .store_upload(spider.id, upload, &spider.cmd)
            .await
            .map_err(|err| files_error(name, err))?;
        info!(spider = %name, version = %version.hash, files = version.file_count, bytes = version.total_bytes,
            unwrapped = ?version.unwrapped, "spider files uploaded");
        let unwrapped = version.unwrapped.clone();
        let spider = self.make_current(spider, version).await?;
        Ok(Uploaded { spider, unwrapped })
    }

    /// Every stored version, the current one marked.
    pub async fn versions(&self, name: &str) -> Result<Vec<VersionInfo>> {
        let spider = self.get(name).await?;
        let mut versions = self
            .files
            .versions(spider.id)
            .await
            .map_err(|err| files_error(name, err))?;
        for v in &mut versions {
            v.current = v.hash == spider.version;
        }
        Ok(versions)
    }

    /// Makes a stored version current (a rollback, or a roll forward).
    pub async fn set_current(&self, name: &str, version: &str) -> Result<Spider> {
        let spider = self.get(name).await?;
        let info = self
            .files
            .version(spider.id, version)
            .await
            .map_err(|err| files_error(name, err))?;
        self.make_current(spider, info).await
    }

    /// Deletes a stored version that is not current and that no unended task runs, with the contents no
    /// other version names.
    pub async fn delete_version(&self, name: &str, version: &str) -> Result<()> {
        let spider = self.get(name).await?;
        // Known first, so a version that is not there says so rather than "in use" or "current".
        self.files
            .version(spider.id, version)
            .await
            .map_err(|err| files_error(name, err))?;
        if spider.version == version {
            return Err(Error::CurrentVersion {
                spider: spider.name,
                version: version.to_owned(),
            });
        }
        self.refuse_if_running(&spider, version).await?;
        self.files
            .delete_version(spider.id, version)
            .await
            .map_err(|err| files_error(name, err))?;
        info!(spider = %name, version, "spider version deleted");
        self.forget_on_workers(&[version.to_owned()]).await;
        Ok(())
    }

    /// `VersionInUse` when an unended task of `spider` runs `version`.
    pub(crate) async fn refuse_if_running(&self, spider: &Spider, version: &str) -> Result<()> {
        let unended = self.unended_tasks(&spider.name).await?;
        match unended.into_iter().find(|t| t.version == version) {
            Some(task) => Err(Error::VersionInUse {
                spider: spider.name.clone(),
                version: version.to_owned(),
                task: task.id,
                status: task.status,
            }),
            None => Ok(()),
        }
    }

    /// The spider's tasks that have not ended, newest first.
    pub(crate) async fn unended_tasks(&self, name: &str) -> Result<Vec<Task>> {
        let filter = TaskFilter {
            spider_name: Some(name.to_owned()),
            ..TaskFilter::default()
        };
        Ok(self.store.unended_tasks(&filter).await?)
    }

    /// Removes the spider's record, then its versions and the contents only they named; how many versions
    /// went. Its schedules and tasks are the caller's ([`crate::removal`]).
    pub(crate) async fn remove(&self, spider: &Spider) -> Result<u64> {
        // The record first: a failure after it leaves unreachable versions, never a spider without files.
        self.store.delete_spider(spider.id).await?;
        let versions = self
            .files
            .versions(spider.id)
            .await
            .map_err(|err| files_error(&spider.name, err))?;
        let hashes: Vec<&str> = versions.iter().map(|v| v.hash.as_str()).collect();
        let deleted = self
            .files
            .delete_versions(spider.id, &hashes)
            .await
            .map_err(|err| files_error(&spider.name, err))?;
        info!(spider = %spider.name, versions = deleted, "spider deleted");
        let hashes: Vec<String> = versions.into_iter().map(|v| v.hash).collect();
        self.forget_on_workers(&hashes).await;
        Ok(deleted)
    }

    /// The files of a version (the current one when `None`), and which version that is.
    pub async fn manifest(
        &self,
        name: &str,
        version: Option<String>,
    ) -> Result<(String, Manifest)> {
        let (spider, version) = self.version_of(name, version).await?;
        let manifest = self.manifest_of(&spider, &version).await?;
        Ok((version, manifest))
    }

    /// The files of a stored version of a spider already read; `NoVersion` when it has no such version.
    pub(crate) async fn manifest_of(&self, spider: &Spider, version: &str) -> Result<Manifest> {
        self.files
            .manifest(spider.id, version)
            .await
            .map_err(|err| files_error(&spider.name, err))
    }

    /// One file of a version (the current one when `None`).
    pub async fn read_file(
        &self,
        name: &str,
        path: &str,
        version: Option<String>,
    ) -> Result<Vec<u8>> {
        let (spider, version) = self.version_of(name, version).await?;
        self.files
            .read_file(spider.id, &version, path)
            .await
            .map_err(|err| files_error(name, err))
    }

    /// The spider and the version a file request means: the named one, or the current one.
    async fn version_of(&self, name: &str, version: Option<String>) -> Result<(Spider, String)> {
        let spider = self.get(name).await?;
        let version = match version {
            Some(v) => v,
            None if spider.version.is_empty() => return Err(Error::NoFiles(name.to_owned())),
            None => spider.version.clone(),
        };
        Ok((spider, version))
    }

    async fn make_current(&self, spider: Spider, version: VersionInfo) -> Result<Spider> {
        let spider = Spider {
            version: version.hash,
            file_count: version.file_count,
            total_bytes: version.total_bytes,
            updated_at: Utc::now(),
            ..spider
        };
        self.store.put_spider(&spider).await?;
        Ok(spider)
    }
}

fn files_error(spider: &str, err: files::Error) -> Error {
    match err {
        files::Error::NotFound(version) => Error::NoVersion {
            spider: spider.to_owned(),
            version,
        },
        other => Error::Files(other),
    }
}
