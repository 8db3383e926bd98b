//! Installs a version's dependencies into an environment private to that version: a Python venv for a
//! `requirements.txt`, a `node_modules` folder for a `package.json`. An environment is built once per version
//! on this worker, before the version's first run, and reused by every later run of it; the installer's output
//! goes to the log of the task that built it, and a failed install fails that task (the next run tries again).
//!
//! An environment counts only once its marker file is written, after the installer succeeded, so an install
//! that was cut off (a cancel, a crash) is thrown away and redone, never used half-built. Runs of one version
//! wait for each other's install; runs of different versions install side by side.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use arachne_shared::LogStream;
use tokio::process::Command;

use crate::output::{self, Collector};
use crate::sandbox::{RunDirs, Sandbox};

/// Errors of installing dependencies.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("installing dependencies failed: `{command}` {status}; its output is in the log above")]
    Failed { command: String, status: String },
    #[error("installing dependencies failed: cannot start `{command}`: {source}")]
    Start {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("installing dependencies failed: {0}")]
    Sandbox(#[from] crate::sandbox::Error),
    #[error("installing dependencies failed: {0}")]
    Io(#[from] arachne_shared::PathIo),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io(arachne_shared::at(path)(source))
}

/// What a run needs to use its version's environments: folders to put first on `PATH`, and variables.
#[derive(Debug, Default, Clone)]
pub(crate) struct RunEnv {
    pub(crate) path_first: Vec<PathBuf>,
    pub(crate) vars: Vec<(&'static str, OsString)>,
}

impl RunEnv {
    /// `PATH` for the spider: this run's folders, then the `PATH` it would otherwise get.
    pub(crate) fn path(&self, inherited: Option<&OsString>) -> Option<OsString> {
        if self.path_first.is_empty() {
            return None;
        }
        let rest = inherited.map(std::env::split_paths).into_iter().flatten();
        std::env::join_paths(self.path_first.iter().cloned().chain(rest)).ok()
    }
}

/// The environments of every version on this worker, under `{work_dir}/envs/{version}/`.
#[derive(Debug, Clone)]
pub(crate) struct Deps {
    root: PathBuf,
    /// One lock per version, so two runs of a version never install into one folder at once.
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

/// Where an installer's lines go, and the environment and sandbox it runs in: an installer runs code from
/// PyPI or npm, so it is confined like the spider, with the version's environment folder writable too.
pub(crate) struct InstallCtx<'a> {
    pub(crate) collector: &'a mut Collector,
    pub(crate) spider_env: &'a [(OsString, OsString)],
    pub(crate) sandbox: &'a Sandbox,
    /// The run's folders; the installer runs in its working directory (a fresh copy of the version).
    pub(crate) dirs: &'a RunDirs,
    pub(crate) max_line_bytes: usize,
}

impl Deps {
    pub(crate) fn new(root: PathBuf) -> Self {
        Self {
            root,
            locks: Arc::default(),
        }
    }

    /// Makes sure the environments the run's working directory (a fresh copy of `version`) asks for exist,
    /// installing them if needed, and links them into it. `version` is a checked sha256, safe as a folder name.
    pub(crate) async fn prepare(
        &self,
        version: &str,
        ctx: InstallCtx<'_>,
    ) -> Result<RunEnv, Error> {
        let workdir = ctx.dirs.work.as_path();
        let python = workdir.join("requirements.txt").is_file();
        let node = workdir.join("package.json").is_file();
        let mut env = RunEnv::default();
        if !python && !node {
            return Ok(env);
        }
        let lock = Arc::clone(
            self.locks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(version.to_owned())
                .or_default(),
        );
        let _installing = lock.lock().await;
        let dir = self.root.join(version);
        let InstallCtx {
            collector,
            spider_env,
            sandbox,
            dirs,
            max_line_bytes,
        } = ctx;
        let mut installer = Installer {
            collector,
            spider_env,
            sandbox,
            dirs,
            env_dir: &dir,
            max_line_bytes,
            workdir,
        };
        if python {
            let venv = dir.join("venv");
            installer.python(&dir, &venv).await?;
            env.path_first.push(venv.join("bin"));
            env.vars.push(("VIRTUAL_ENV", venv.into_os_string()));
        }
        if node {
            let modules = dir.join("node_modules");
            installer.node(&dir, &modules).await?;
            let link = workdir.join("node_modules");
            // An upload never holds node_modules (it is ignored), so the name is free.
            tokio::fs::symlink(&modules, &link)
                .await
                .map_err(io(&link))?;
            env.path_first.push(modules.join(".bin"));
        }
        Ok(env)
    }
}

struct Installer<'a> {
    collector: &'a mut Collector,
    spider_env: &'a [(OsString, OsString)],
    sandbox: &'a Sandbox,
    dirs: &'a RunDirs,
    /// The version's environment folder, the one place outside the run an installer may write.
    env_dir: &'a Path,
    max_line_bytes: usize,
    workdir: &'a Path,
}

impl Installer<'_> {
    async fn python(&mut self, dir: &Path, venv: &Path) -> Result<(), Error> {
        let ready = dir.join("python.ready");
        if ready.exists() {
            self.collector
                .system("[arachne] using the Python environment installed for this version");
            return Ok(());
        }
        remove_if_present(venv).await?;
        self.open_env_dir().await?;
        self.collector.system(format!(
            "[arachne] installing requirements.txt into a Python environment for this version ({})",
            venv.display()
        ));
        let venv_arg = venv.to_string_lossy();
        let create = self.command(Path::new("python3"), &["-m", "venv", &venv_arg]);
        self.run("python3 -m venv", create).await?;
        let pip = self.command(
            &venv.join("bin").join("python"),
            &[
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "-r",
                "requirements.txt",
            ],
        );
        self.run("pip install -r requirements.txt", pip).await?;
        self.close_env_dir(venv).await?;
        mark_ready(&ready).await
    }

    async fn node(&mut self, dir: &Path, modules: &Path) -> Result<(), Error> {
        let ready = dir.join("node.ready");
        if ready.exists() {
            self.collector
                .system("[arachne] using the node_modules installed for this version");
            return Ok(());
        }
        remove_if_present(modules).await?;
        self.open_env_dir().await?;
        // With a lockfile the install is exactly what it pins; without one, npm resolves the ranges.
        let subcommand = if self.workdir.join("package-lock.json").is_file() {
            "ci"
        } else {
            "install"
        };
        self.collector.system(format!(
            "[arachne] installing package.json dependencies for this version (npm {subcommand})"
        ));
        let mut npm = self.command(Path::new("npm"), &[subcommand, "--no-audit", "--no-fund"]);
        npm.env("npm_config_update_notifier", "false");
        self.run(&format!("npm {subcommand}"), npm).await?;
        // Built inside this run's copy of the version, so relative paths in package.json resolve; then moved
        // where every later run of the version links to.
        let built = self.workdir.join("node_modules");
        if !built.exists() {
            tokio::fs::create_dir_all(&built)
                .await
                .map_err(io(&built))?;
        }
        tokio::fs::rename(&built, modules)
            .await
            .map_err(io(modules))?;
        self.close_env_dir(modules).await?;
        mark_ready(&ready).await
    }

    /// Creates the version's environment folder, writable by the installer's user.
    async fn open_env_dir(&self) -> Result<(), Error> {
        tokio::fs::create_dir_all(self.env_dir)
            .await
            .map_err(io(self.env_dir))?;
        if let Some(ids) = self.sandbox.owner() {
            std::os::unix::fs::chown(self.env_dir, Some(ids.uid), Some(ids.gid))
                .map_err(io(self.env_dir))?;
        }
        Ok(())
    }

    /// Hands a finished environment (and its folder) back to the worker, so no spider can alter what later
    /// runs of the version use.
    async fn close_env_dir(&self, built: &Path) -> Result<(), Error> {
        self.sandbox.reclaim(built, true).await?;
        Ok(self.sandbox.reclaim(self.env_dir, false).await?)
    }

    /// An installer step, confined like a spider.
    fn command(&self, program: &Path, args: &[&str]) -> Command {
        self.sandbox.command(
            program,
            args,
            self.dirs,
            Some(self.env_dir),
            self.spider_env,
        )
    }

    /// Runs one installer step in the run's folder, its output going line by line to the task's log.
    async fn run(&mut self, label: &str, mut command: Command) -> Result<(), Error> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|source| Error::Start {
            command: label.to_owned(),
            source,
        })?;
        let (tx, mut rx) = output::raw_channel();
        // The platform's lines, not the spider's: a task's stdout and stderr are what its spider wrote (a
        // `scrapy list` run's stdout is the list, with no installer output in it).
        let system = output::Source::Pipe(LogStream::System);
        let readers = [
            output::spawn_reader(
                child.stdout.take().expect("stdout is piped"),
                system,
                self.max_line_bytes,
                tx.clone(),
            ),
            output::spawn_reader(
                child.stderr.take().expect("stderr is piped"),
                system,
                self.max_line_bytes,
                tx,
            ),
        ];
        // Flushed line by line: an install can take minutes, and its log must show it moving.
        while let Some(raw) = rx.recv().await {
            self.collector.plain(raw);
            self.collector.flush().await;
        }
        for reader in readers {
            let _ = reader.await;
        }
        let status = child.wait().await.map_err(|source| Error::Start {
            command: label.to_owned(),
            source,
        })?;
        if status.success() {
            return Ok(());
        }
        let status = match status.code() {
            Some(code) => format!("exited with code {code}"),
            None => "was killed by a signal".to_owned(),
        };
        Err(Error::Failed {
            command: label.to_owned(),
            status,
        })
    }
}

async fn remove_if_present(path: &Path) -> Result<(), Error> {
    match tokio::fs::remove_dir_all(path).await {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(io(path)(err)),
        _ => Ok(()),
    }
}

async fn mark_ready(ready: &Path) -> Result<(), Error> {
    tokio::fs::write(ready, b"").await.map_err(io(ready))
}
