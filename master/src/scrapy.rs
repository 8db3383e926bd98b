//! Scrapy projects deployed as Scrapyd deploys them: an egg becomes a version of the project's spider, run as
//! Scrapyd's runner runs it (the egg on the Python path, the settings module its `scrapy` entry point names,
//! its requirements and Scrapy in the version's venv), and the Scrapy spiders of a version are found by running
//! `scrapy list` once on a worker, as an ordinary task of the project, and kept.

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arachne_shared::spider::RunSettings;
use arachne_shared::upload::{Spool, Upload, UploadedFile};
use arachne_shared::{LogStream, RunOptions, Spider, TaskId, TaskStatus};

use crate::changes::Changes;
use crate::removal::{self, Removal};
use crate::runs::{self, RunRequest, Runs};
use crate::spiders::{self, SpiderRequest, Spiders};
use crate::store::{self, Store, TaskFilter};

/// The egg's name in the version's folder; the Python path names it.
pub const EGG_FILE: &str = "project.egg";
/// The client's name of the version (Scrapyd's `version`), kept as a file of the version.
pub const LABEL_FILE: &str = "scrapyd-version.txt";
/// How long listing a version's spiders may take (its venv is built first, on a worker's first run of it).
const LIST_TIMEOUT: Duration = Duration::from_secs(600);
/// How many of a project's latest finished tasks are searched for an earlier listing of a version.
const LISTINGS_LOOKED_AT: u32 = 500;

/// Why an egg could not be deployed or a version's spiders not listed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("egg is not a ZIP file (if using curl, use egg=@path not egg=path)")]
    NotZip(#[source] zip::result::ZipError),
    #[error(
        "the egg names no settings module: EGG-INFO/entry_points.txt needs a [scrapy] section with `settings = PROJECT.settings` (scrapyd-deploy writes it)"
    )]
    NoSettings,
    #[error("version label must be 1 to 200 characters without control characters, got {0:?}")]
    Label(String),
    #[error("reading the egg: {0}")]
    Read(#[source] std::io::Error),
    #[error("project {project:?} has no version {version:?}")]
    NoVersion { project: String, version: String },
    #[error("listing the spiders of {project:?} (task {task}) {outcome}; its log says why")]
    List {
        project: String,
        task: TaskId,
        outcome: String,
    },
    #[error(transparent)]
    Spider(#[from] spiders::Error),
    #[error(transparent)]
    Run(#[from] runs::Error),
    #[error(transparent)]
    Removal(#[from] removal::Error),
    #[error("store: {0}")]
    Store(#[from] store::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A stored version of a project and the name its client gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub label: String,
    pub hash: String,
}

/// What an egg says about its project.
#[derive(Debug, PartialEq, Eq)]
struct EggInfo {
    settings_module: String,
    requires: Vec<String>,
}

/// Deploys eggs and lists the spiders of versions.
pub struct Scrapy {
    pub(crate) spiders: Arc<Spiders>,
    pub(crate) runs: Arc<Runs>,
    pub(crate) removal: Arc<Removal>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) changes: Arc<Changes>,
    /// The pip requirement for Scrapy itself that every egg's venv gets ("" for none: Scrapy is on the
    /// workers' PATH).
    pub(crate) requirement: String,
    /// Spiders by version hash, once listed.
    pub(crate) listed: Mutex<HashMap<String, Vec<String>>>,
}

impl Scrapy {
    /// Stores `egg` as the new current version of `project` (made if missing), labelled `label`, and lists its
    /// spiders.
    pub async fn deploy(&self, project: &str, label: &str, egg: Vec<u8>) -> Result<Vec<String>> {
        if label.is_empty() || label.chars().count() > 200 || label.chars().any(char::is_control) {
            return Err(Error::Label(label.to_owned()));
        }
        let info = inspect(&egg)?;
        let mut requirements: Vec<String> = Vec::new();
        if !self.requirement.trim().is_empty() {
            requirements.push(self.requirement.trim().to_owned());
        }
        requirements.extend(info.requires);
        let mut files = vec![
            file(EGG_FILE, &egg)?,
            file(LABEL_FILE, format!("{label}\n").as_bytes())?,
        ];
        if !requirements.is_empty() {
            files.push(file(
                "requirements.txt",
                requirements.join("\n").as_bytes(),
            )?);
        }
        let mut settings = match self.spiders.get(project).await {
            Ok(spider) => spider.settings,
            Err(spiders::Error::NoSpider(_)) => RunSettings::default(),
            Err(err) => return Err(err.into()),
        };
        // Relative to the run's folder, where the egg is: what Scrapyd's runner does with sys.path.
        settings.env.insert("PYTHONPATH".into(), EGG_FILE.into());
        settings
            .env
            .insert("SCRAPY_SETTINGS_MODULE".into(), info.settings_module);
        self.spiders
            .put(SpiderRequest {
                name: project.to_owned(),
                cmd: "scrapy".into(),
                settings: Some(settings),
                ..SpiderRequest::default()
            })
            .await?;
        let spider = self
            .spiders
            .upload(project, Upload::Files(files))
            .await?
            .spider;
        self.list(&spider, &spider.version).await
    }

    /// The project's versions, oldest first, each with its client's label (its hash when it came otherwise).
    pub async fn versions(&self, project: &str) -> Result<Vec<Version>> {
        let mut stored = self.spiders.versions(project).await?;
        stored.sort_by_key(|v| (v.current, v.created_at));
        let mut versions = Vec::with_capacity(stored.len());
        for v in stored {
            let label = match self
                .spiders
                .read_file(project, LABEL_FILE, Some(v.hash.clone()))
                .await
            {
                Ok(text) => String::from_utf8_lossy(&text).trim().to_owned(),
                // Uploaded otherwise (a folder, an archive): known by its hash.
                Err(spiders::Error::Files(crate::files::Error::NoSuchFile { .. })) => {
                    v.hash.clone()
                }
                Err(err) => return Err(err.into()),
            };
            versions.push(Version {
                label,
                hash: v.hash,
            });
        }
        Ok(versions)
    }

    /// The hash of the version `name` means: a label, or a unique prefix of a hash.
    pub async fn version(&self, project: &str, name: &str) -> Result<String> {
        // A whole hash (what the Scrapyd adapter passes on once it has resolved a name) needs no label read.
        if arachne_shared::files::is_sha256(name)
            && self
                .spiders
                .versions(project)
                .await?
                .iter()
                .any(|v| v.hash == name)
        {
            return Ok(name.to_owned());
        }
        let versions = self.versions(project).await?;
        if let Some(v) = versions.iter().rev().find(|v| v.label == name) {
            return Ok(v.hash.clone());
        }
        let mut found = versions.iter().filter(|v| v.hash.starts_with(name));
        match (found.next(), found.next()) {
            (Some(v), None) if !name.is_empty() => Ok(v.hash.clone()),
            _ => Err(Error::NoVersion {
                project: project.to_owned(),
                version: name.to_owned(),
            }),
        }
    }

    /// Deletes a version (a label or a hash prefix) as Scrapyd does: when it is the current one, the newest
    /// other version becomes current; when it is the last one, the project goes with it (its jobs stay).
    /// Returns whether the project went. Refused while an unended task runs that version.
    pub async fn delete_version(&self, project: &str, name: &str) -> Result<bool> {
        let hash = self.version(project, name).await?;
        let spider = self.spiders.get(project).await?;
        let versions = self.spiders.versions(project).await?;
        let Some(newest_other) = versions.iter().find(|v| v.hash != hash) else {
            self.removal.delete_spider(project, false).await?;
            self.lock().remove(&hash);
            return Ok(true);
        };
        // Before the current version moves, so a refusal changes nothing.
        self.spiders.refuse_if_running(&spider, &hash).await?;
        if spider.version == hash {
            self.spiders
                .set_current(project, &newest_other.hash)
                .await?;
        }
        self.spiders.delete_version(project, &hash).await?;
        self.lock().remove(&hash);
        Ok(false)
    }

    /// The Scrapy spiders of a version of `project` (its current one when `None`).
    pub async fn spiders(&self, project: &str, version: Option<&str>) -> Result<Vec<String>> {
        let spider = self.spiders.get(project).await?;
        let hash = match version {
            Some(name) => self.version(project, name).await?,
            None => spider.version.clone(),
        };
        self.list(&spider, &hash).await
    }

    /// Runs `scrapy list` on a version unless it already was; its standard output is the spiders' names.
    async fn list(&self, spider: &Spider, hash: &str) -> Result<Vec<String>> {
        if let Some(names) = self.lock().get(hash) {
            return Ok(names.clone());
        }
        if let Some(earlier) = self.listed_earlier(spider, hash).await? {
            let names = self.names_printed_by(earlier).await?;
            self.lock().insert(hash.to_owned(), names.clone());
            return Ok(names);
        }
        let mut changes = self.changes.subscribe();
        let task = self
            .runs
            .create(RunRequest {
                spider: spider.name.clone(),
                version: Some(hash.to_owned()),
                options: RunOptions {
                    param: Some(arachne_shared::scrapy::LIST_ARGS.into()),
                    settings: RunSettings {
                        retries: Some(0),
                        ..RunSettings::default()
                    },
                    ..RunOptions::default()
                },
                ..RunRequest::default()
            })
            .await?;
        let deadline = tokio::time::Instant::now() + LIST_TIMEOUT;
        let ended = loop {
            let current = self.runs.task(task.id).await?;
            if current.status.is_terminal() {
                break current;
            }
            let changed = async {
                loop {
                    match changes.recv().await {
                        Ok(change) if change.task_id != task.id => {}
                        _ => return,
                    }
                }
            };
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                let _ = self.runs.cancel(task.id).await;
                return Err(Error::List {
                    project: spider.name.clone(),
                    task: task.id,
                    outcome: format!("did not end within {} s", LIST_TIMEOUT.as_secs()),
                });
            }
        };
        if ended.status != TaskStatus::Finished {
            return Err(Error::List {
                project: spider.name.clone(),
                task: task.id,
                outcome: format!("ended {}", ended.status),
            });
        }
        let names = self.names_printed_by(task.id).await?;
        self.lock().insert(hash.to_owned(), names.clone());
        Ok(names)
    }

    /// A `scrapy list` of this version that finished before (under an earlier master process, say): its
    /// output is the answer, so a restart does not list every version again. Looked for among the project's
    /// latest finished tasks.
    async fn listed_earlier(&self, spider: &Spider, hash: &str) -> Result<Option<TaskId>> {
        let filter = TaskFilter {
            spider_name: Some(spider.name.clone()),
            status: Some(TaskStatus::Finished),
            limit: LISTINGS_LOOKED_AT,
            ..TaskFilter::default()
        };
        let (finished, _) = self.store.list_tasks(&filter).await?;
        Ok(finished
            .into_iter()
            .find(|t| {
                t.version == hash && t.param.as_deref() == Some(arachne_shared::scrapy::LIST_ARGS)
            })
            .map(|t| t.id))
    }

    /// The spider names a finished `scrapy list` task printed, one per standard output line.
    async fn names_printed_by(&self, task: TaskId) -> Result<Vec<String>> {
        let mut names = Vec::new();
        let mut after = 0;
        loop {
            let lines = self.store.logs(task, after, 10_000).await?;
            let Some(last) = lines.last() else { break };
            after = last.seq;
            names.extend(
                lines
                    .iter()
                    .filter(|l| l.stream == LogStream::Stdout)
                    .map(|l| l.text.trim().to_owned())
                    .filter(|name| !name.is_empty()),
            );
        }
        Ok(names)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<String>>> {
        crate::lock(&self.listed)
    }
}

fn file(path: &str, bytes: &[u8]) -> Result<UploadedFile> {
    Ok(UploadedFile {
        path: path.to_owned(),
        data: Spool::from_bytes(bytes, None).map_err(Error::Read)?,
        mode: None,
    })
}

/// Reads an egg's settings module (its `scrapy` entry point) and its requirements.
fn inspect(egg: &[u8]) -> Result<EggInfo> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(egg)).map_err(Error::NotZip)?;
    let mut text_of = |name: &str| -> Result<Option<String>> {
        let mut entry = match archive.by_name(name) {
            Ok(entry) => entry,
            Err(zip::result::ZipError::FileNotFound) => return Ok(None),
            Err(err) => return Err(Error::NotZip(err)),
        };
        let mut text = String::new();
        entry.read_to_string(&mut text).map_err(Error::Read)?;
        Ok(Some(text))
    };
    let entry_points = text_of("EGG-INFO/entry_points.txt")?.unwrap_or_default();
    let settings_module = section(&entry_points, "scrapy")
        .filter_map(|line| line.split_once('='))
        .find(|(key, _)| key.trim() == "settings")
        .map(|(_, module)| module.trim().to_owned())
        .filter(|module| !module.is_empty())
        .ok_or(Error::NoSettings)?;
    let requires = text_of("EGG-INFO/requires.txt")?.unwrap_or_default();
    // Lines before the first `[extra]` section are what the project always needs.
    let requires = requires
        .lines()
        .map(str::trim)
        .take_while(|line| !line.starts_with('['))
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect();
    Ok(EggInfo {
        settings_module,
        requires,
    })
}

/// The lines of an INI section.
fn section<'a>(text: &'a str, name: &str) -> impl Iterator<Item = &'a str> {
    let header = format!("[{name}]");
    text.lines()
        .map(str::trim)
        .skip_while(move |line| *line != header)
        .skip(1)
        .take_while(|line| !line.starts_with('['))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn egg(files: &[(&str, &str)]) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        let mut zip = zip::ZipWriter::new(&mut out);
        for (name, text) in files {
            zip.start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            zip.write_all(text.as_bytes()).unwrap();
        }
        zip.finish().unwrap();
        out.into_inner()
    }

    #[test]
    fn an_egg_names_its_settings_and_requirements() {
        let info = inspect(&egg(&[
            (
                "EGG-INFO/entry_points.txt",
                "[console_scripts]\nx = y\n\n[scrapy]\nsettings = quotes.settings\n",
            ),
            (
                "EGG-INFO/requires.txt",
                "requests>=2\n# why\n\n[socks]\npysocks\n",
            ),
            ("quotes/settings.py", ""),
        ]))
        .unwrap();
        assert_eq!(
            info,
            EggInfo {
                settings_module: "quotes.settings".into(),
                requires: vec!["requests>=2".into()],
            }
        );
    }

    #[test]
    fn a_bad_egg_says_what_is_wrong() {
        assert!(matches!(inspect(b"not a zip"), Err(Error::NotZip(_))));
        let no_entry = egg(&[("quotes/settings.py", "")]);
        assert!(matches!(inspect(&no_entry), Err(Error::NoSettings)));
    }
}
