//! Spider folders on the master's disk: each subfolder holding an `arachne.toml` (name, cmd, optional settings
//! and max_instances) is a spider. Example folders are registered once, when missing; a watched spiders folder
//! (`--spiders-dir`) is kept in sync: edits become a new current version, debounced, without a restart.
//!
//! A broken folder is reported with its reason and skipped; it never stops the others. What each folder came
//! to (synced, broken, removed) is kept in a [`FolderReport`] the API shows: a broken `arachne.toml` or a
//! folder taken away is visible there, not only in the master's log. A removed folder's spider stays: deleting
//! a spider (and maybe its results) is a user's decision.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

use arachne_shared::upload::Upload;
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::spiders::{self, SpiderRequest, Spiders};

/// The settings file of a spider folder.
const SETTINGS_FILE: &str = "arachne.toml";
/// Quiet time after the last change before a folder is synced, so a save of many files makes one version.
const DEBOUNCE: Duration = Duration::from_millis(500);
/// Changed paths waiting for the syncer; when full, the syncer rescans every folder instead.
const EVENTS_CAPACITY: usize = 1024;

/// The settings file of a spider folder.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SpiderSettings {
    name: String,
    cmd: String,
    #[serde(default)]
    settings: Option<arachne_shared::spider::RunSettings>,
    #[serde(default)]
    max_instances: Option<u32>,
    #[serde(default)]
    results_collection: Option<String>,
    #[serde(default)]
    dedup: Option<arachne_shared::spider::Dedup>,
}

/// Why a folder could not be synced.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Settings {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("cannot pack the folder: {0}")]
    Pack(#[from] arachne_shared::archive::Error),
    #[error("cannot spool the packed folder: {0}")]
    Spool(#[source] std::io::Error),
    #[error("packing the folder stopped: {0}")]
    Packer(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Spider(#[from] spiders::Error),
}

/// What became of one spider folder of the watched folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FolderState {
    pub(crate) folder: PathBuf,
    /// The spider it defines, when its settings could be read (now or before it broke).
    pub(crate) spider: Option<String>,
    pub(crate) outcome: FolderOutcome,
    pub(crate) at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FolderOutcome {
    /// Its files are the spider's current version.
    Synced,
    /// It could not be synced; the spider, if any, keeps its last good version.
    Broken(String),
    /// The folder (or its `arachne.toml`) is gone; the spider stays.
    Removed,
}

/// The state of every folder of the watched spiders folder, as the watcher last found it.
#[derive(Debug, Default)]
pub(crate) struct FolderReport {
    folders: Mutex<BTreeMap<PathBuf, FolderState>>,
}

impl FolderReport {
    pub(crate) fn folders(&self) -> Vec<FolderState> {
        crate::lock(&self.folders).values().cloned().collect()
    }

    fn set(&self, folder: &Path, spider: Option<String>, outcome: FolderOutcome) {
        let mut folders = crate::lock(&self.folders);
        // A folder broken before its name could be read is still the spider it was.
        let spider = spider.or_else(|| folders.get(folder).and_then(|f| f.spider.clone()));
        let state = FolderState {
            folder: folder.to_owned(),
            spider,
            outcome,
            at: Utc::now(),
        };
        folders.insert(folder.to_owned(), state);
    }

    /// Marks folders that are no longer there (`present` is what a scan found) as removed.
    fn gone(&self, present: &BTreeSet<PathBuf>) {
        let missing: Vec<PathBuf> = crate::lock(&self.folders)
            .iter()
            .filter(|(path, state)| {
                !present.contains(*path) && state.outcome != FolderOutcome::Removed
            })
            .map(|(path, _)| path.clone())
            .collect();
        for folder in missing {
            warn!(folder = %folder.display(), "a spider folder was removed; its spider stays until deleted");
            self.set(&folder, None, FolderOutcome::Removed);
        }
    }
}

/// Whether a folder's spider is written when it exists already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Existing {
    Keep,
    Update,
}

/// Registers every example spider that does not exist yet.
pub(crate) async fn register_examples(spiders: &Spiders, dir: &Path) {
    let Ok(folders) = folders(dir) else {
        info!(dir = %dir.display(), "no examples folder; no example spiders registered");
        return;
    };
    for folder in folders {
        if let Err(err) = sync_folder(spiders, &folder, Existing::Keep).await {
            warn!(folder = %folder.display(), error = %err, "example spider not registered");
        }
    }
}

/// Syncs every spider folder under `dir`, then keeps them in sync until `shutdown`.
pub(crate) async fn watch(
    spiders: Arc<Spiders>,
    report: Arc<FolderReport>,
    dir: PathBuf,
    shutdown: CancellationToken,
) {
    let (tx, mut rx) = mpsc::channel::<Option<PathBuf>>(EVENTS_CAPACITY);
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let message = match event {
            Ok(event) => event.paths.into_iter().next(),
            // The watcher lost track (for example an overflowed queue): rescan everything.
            Err(_) => None,
        };
        // Full queue: the syncer will rescan anyway, since a `None` or this event is already waiting.
        let _ = tx.try_send(message);
    });
    let mut watcher = match watcher {
        Ok(watcher) => watcher,
        Err(err) => {
            error!(dir = %dir.display(), error = %err, "cannot watch the spiders folder; edits need a restart");
            sync_all(&spiders, &report, &dir).await;
            return;
        }
    };
    if let Err(err) = watcher.watch(&dir, RecursiveMode::Recursive) {
        error!(dir = %dir.display(), error = %err, "cannot watch the spiders folder; edits need a restart");
    }
    sync_all(&spiders, &report, &dir).await;
    loop {
        let first = tokio::select! {
            message = rx.recv() => message,
            () = shutdown.cancelled() => return,
        };
        let Some(first) = first else { return };
        let mut changed = BTreeSet::new();
        let mut everything = false;
        let mut note = |message: Option<PathBuf>| match message.and_then(|p| top_folder(&dir, &p)) {
            Some(folder) => {
                changed.insert(folder);
            }
            None => everything = true,
        };
        note(first);
        // Debounce: keep collecting until the folder has been quiet for a while.
        loop {
            tokio::select! {
                message = rx.recv() => match message {
                    Some(message) => note(message),
                    None => return,
                },
                () = tokio::time::sleep(DEBOUNCE) => break,
                () = shutdown.cancelled() => return,
            }
        }
        if everything {
            sync_all(&spiders, &report, &dir).await;
            continue;
        }
        let mut removed = false;
        for folder in changed {
            if folder.join(SETTINGS_FILE).exists() {
                sync_one(&spiders, &report, &folder).await;
            } else {
                removed = true;
            }
        }
        // One look at what is left, however many folders went in this batch.
        if removed {
            let present = folders(&dir).unwrap_or_default().into_iter().collect();
            report.gone(&present);
        }
    }
}

/// The subfolder of `dir` that `path` lies in; `None` for `dir` itself or a path outside it.
fn top_folder(dir: &Path, path: &Path) -> Option<PathBuf> {
    let relative = path.strip_prefix(dir).ok()?;
    let first = relative.components().next()?;
    Some(dir.join(first))
}

fn folders(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut folders: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join(SETTINGS_FILE).is_file())
        .collect();
    folders.sort();
    Ok(folders)
}

async fn sync_all(spiders: &Spiders, report: &FolderReport, dir: &Path) {
    match folders(dir) {
        Ok(folders) => {
            for folder in &folders {
                sync_one(spiders, report, folder).await;
            }
            report.gone(&folders.into_iter().collect());
        }
        Err(err) => error!(dir = %dir.display(), error = %err, "cannot read the spiders folder"),
    }
}

async fn sync_one(spiders: &Spiders, report: &FolderReport, folder: &Path) {
    match sync_folder(spiders, folder, Existing::Update).await {
        Ok(name) => report.set(folder, Some(name), FolderOutcome::Synced),
        Err(err) => {
            warn!(folder = %folder.display(), error = %err, "spider folder not synced; fix it and save again");
            report.set(folder, None, FolderOutcome::Broken(err.to_string()));
        }
    }
}

/// Creates or updates the folder's spider and uploads its files as its current version; the spider's name.
async fn sync_folder(
    spiders: &Spiders,
    folder: &Path,
    existing: Existing,
) -> Result<String, Error> {
    let path = folder.join(SETTINGS_FILE);
    let text = tokio::fs::read_to_string(&path)
        .await
        .map_err(|source| Error::Read {
            path: path.clone(),
            source,
        })?;
    let settings: SpiderSettings =
        toml::from_str(&text).map_err(|source| Error::Settings { path, source })?;
    let before = spiders.get(&settings.name).await.ok();
    if existing == Existing::Keep && before.is_some() {
        return Ok(settings.name);
    }
    let packed = {
        let folder = folder.to_owned();
        tokio::task::spawn_blocking(move || arachne_shared::archive::pack_dir(&folder)).await??
    };
    let name = settings.name.clone();
    // The file is the whole truth about its spider: a setting taken out of it goes back to its default.
    spiders
        .put(SpiderRequest {
            name: name.clone(),
            cmd: settings.cmd,
            settings: Some(settings.settings.unwrap_or_default()),
            max_instances: Some(settings.max_instances.unwrap_or(0)),
            results_collection: Some(settings.results_collection.unwrap_or_default()),
            dedup: Some(settings.dedup.unwrap_or(arachne_shared::spider::Dedup {
                keys: Vec::new(),
                mode: Default::default(),
            })),
        })
        .await?;
    let upload = Upload::archive(&packed).map_err(Error::Spool)?;
    let spider = spiders.upload(&name, upload).await?.spider;
    if before.is_none_or(|b| b.version != spider.version) {
        info!(spider = %name, version = %spider.version, files = spider.file_count, folder = %folder.display(),
            "spider folder synced as a new version");
    }
    Ok(name)
}
