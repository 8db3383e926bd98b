//! Confines what a spider (or a dependency installer, which runs code from PyPI and npm) can reach: the user
//! it runs as, where it may write, its own `/tmp` and `HOME`, and which of the worker's environment variables
//! it sees.
//!
//! A spider is started through the helper, `arachne-sandbox` (or, without it, this program itself) run with
//! [`SANDBOX_ARG`]: the helper gives itself a private `/tmp`, drops to the spider user, restricts its writes
//! with Landlock and then `exec`s the spider, so the spider keeps the helper's pid (the group the runner and
//! the watchdog know) and nothing of this needs code between `fork` and `exec` in the worker. What each layer
//! covers, and what it cannot, is in SECURITY.md.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use landlock::{
    ABI, AccessFs, CompatLevel, Compatible, Ruleset, RulesetAttr, RulesetCreatedAttr,
    path_beneath_rules,
};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// The first argument that makes an Arachne binary the sandbox helper (see [`run_if_invoked`]).
pub const SANDBOX_ARG: &str = "__arachne_sandbox";

/// The helper binary's name: small, so the extra `exec` at every run costs a fraction of what re-running the
/// worker's (or the master's) own executable did (0.7 ms against 2.2 ms here).
pub const HELPER_BINARY: &str = "arachne-sandbox";

/// The sandbox helper to start spiders through: `arachne-sandbox` beside `exe`, or `exe` itself (every Arachne
/// binary can act as the helper) when it is not installed.
pub fn helper_beside(exe: &Path) -> PathBuf {
    let beside = exe.with_file_name(HELPER_BINARY);
    if beside.is_file() {
        beside
    } else {
        warn!(
            helper = %exe.display(),
            "{HELPER_BINARY} is not installed beside this program; spiders start through it instead, slower"
        );
        exe.to_owned()
    }
}

/// Where the runs of a worker whose work folder the spider user cannot reach live instead: a folder of its
/// own under /var/lib/arachne, named by the work folder, so two workers of a machine never share one.
pub fn runs_root_for(work_dir: &Path) -> PathBuf {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(work_dir.as_os_str().as_encoded_bytes());
    let name = arachne_shared::files::hex(&digest[..8]);
    Path::new("/var/lib/arachne/runs").join(name)
}

/// The user the worker creates, when it runs as root, to run spiders as.
pub const DEFAULT_SPIDER_USER: &str = "arachne-spider";

/// Which user spiders run as.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SpiderUser {
    /// As root: [`DEFAULT_SPIDER_USER`], created if missing (else `nobody`). Otherwise: the worker's own user.
    #[default]
    Auto,
    /// This user (needs root, unless it is the worker's own user).
    Named(String),
}

/// Errors of setting the sandbox up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the spider user {0:?} does not exist")]
    NoSuchUser(String),
    #[error("looking up the user {name:?}: {source}")]
    Lookup {
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error(
        "spiders can run as {0:?} only when the worker runs as root; leave --spider-user unset to run them as the worker's own user"
    )]
    NotRoot(String),
    #[error(
        "spiders run as {user}, who cannot reach {path}: give it search permission (chmod o+x) or choose a work directory under one it can reach"
    )]
    Unreachable { user: String, path: PathBuf },
    #[error("handing {path} to the spider user: {source}")]
    Chown {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A user and group id pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Ids {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

impl Ids {
    fn current() -> Self {
        Self {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        }
    }
}

/// How this worker confines the processes it starts; decided once, at start.
#[derive(Debug, Clone)]
pub(crate) struct Sandbox {
    helper: PathBuf,
    /// Folders every run may write in besides its own.
    shared: Vec<PathBuf>,
    /// The user spiders are switched to, when it is not the worker's own.
    user: Option<(String, Ids)>,
    /// The worker's own ids: what an environment built by the spider user is handed back to.
    worker: Ids,
    landlock: bool,
}

/// Where one run may write: its working directory, its `HOME` and its `/tmp`.
#[derive(Debug, Clone)]
pub(crate) struct RunDirs {
    pub(crate) work: PathBuf,
    pub(crate) home: PathBuf,
    pub(crate) tmp: PathBuf,
}

impl RunDirs {
    pub(crate) fn new(tasks_dir: &Path, name: &str) -> Self {
        Self {
            work: tasks_dir.join(name),
            home: tasks_dir.join(format!("{name}.home")),
            tmp: tasks_dir.join(format!("{name}.tmp")),
        }
    }

    /// Removes all three; what is already gone is no error.
    pub(crate) async fn remove(&self) -> std::io::Result<()> {
        for dir in [&self.work, &self.home, &self.tmp] {
            match tokio::fs::remove_dir_all(dir).await {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err),
                _ => {}
            }
        }
        Ok(())
    }
}

/// The worker's environment variables a spider may see: `PATH`, the locale and the time zone, and those the
/// operator names. Everything else (the worker's tokens, `SOME_DB_PASSWORD`, …) stays out; the run adds its
/// own `HOME`, `TMPDIR` and task variables.
pub fn allowed_env(pass: &[String]) -> Vec<(OsString, OsString)> {
    std::env::vars_os()
        .filter(|(key, _)| {
            let key = key.to_string_lossy();
            matches!(key.as_ref(), "PATH" | "LANG" | "LANGUAGE" | "TZ")
                || key.starts_with("LC_")
                || pass.iter().any(|p| *p == key)
        })
        .collect()
}

impl Sandbox {
    /// Resolves the spider user, checks Landlock, and says once what spiders will be confined by.
    pub(crate) fn start(
        helper: PathBuf,
        choice: &SpiderUser,
        shared: Vec<PathBuf>,
    ) -> Result<Self, Error> {
        let worker = Ids::current();
        let user = resolve(choice, worker)?;
        let landlock = landlock_available();
        match &user {
            Some((name, ids)) => {
                info!(user = %name, uid = ids.uid, "spiders run as their own user")
            }
            None if worker.uid == 0 => {
                warn!("spiders run as root: they can read everything this worker can")
            }
            None => info!(
                uid = worker.uid,
                "spiders run as the worker's own user; the worker is not root, so it cannot switch"
            ),
        }
        if !landlock {
            warn!(
                "Landlock is not available on this kernel: what spiders may write is limited by file permissions only"
            );
        }
        Ok(Self {
            helper,
            shared,
            user,
            worker,
            landlock,
        })
    }

    /// A sandbox that confines nothing, for tests that never start a process.
    #[cfg(test)]
    pub(crate) fn for_test() -> Self {
        Self {
            helper: PathBuf::from("/nonexistent"),
            shared: Vec::new(),
            user: None,
            worker: Ids::current(),
            landlock: false,
        }
    }

    /// The ids a run's files are handed to, when spiders run as another user.
    pub(crate) fn owner(&self) -> Option<Ids> {
        self.user.as_ref().map(|(_, ids)| *ids)
    }

    /// Fails unless the spider user can reach `dir` (search permission on it and every folder above it).
    pub(crate) fn check_reachable(&self, dir: &Path) -> Result<(), Error> {
        let Some((name, ids)) = &self.user else {
            return Ok(());
        };
        for ancestor in dir.ancestors() {
            let Ok(meta) = std::fs::metadata(ancestor) else {
                continue;
            };
            let mode = meta.mode();
            let searchable = if meta.uid() == ids.uid {
                mode & 0o100 != 0
            } else if meta.gid() == ids.gid {
                mode & 0o010 != 0
            } else {
                mode & 0o001 != 0
            };
            if !searchable {
                return Err(Error::Unreachable {
                    user: name.clone(),
                    path: ancestor.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Creates a run's `HOME` and `/tmp`, owned by the spider user.
    pub(crate) fn create_private_dirs(&self, dirs: &RunDirs) -> Result<(), Error> {
        for dir in [&dirs.home, &dirs.tmp] {
            let chown = |source| Error::Chown {
                path: dir.clone(),
                source,
            };
            if dir.exists() {
                std::fs::remove_dir_all(dir).map_err(chown)?;
            }
            std::fs::create_dir(dir).map_err(chown)?;
            if let Some(ids) = self.owner() {
                std::os::unix::fs::chown(dir, Some(ids.uid), Some(ids.gid)).map_err(chown)?;
            }
        }
        Ok(())
    }

    /// Hands `dir` (a folder the spider user filled), with everything beneath it if `deep`, back to the
    /// worker, so that no later spider can alter it.
    pub(crate) async fn reclaim(&self, dir: &Path, deep: bool) -> Result<(), Error> {
        if self.user.is_none() {
            return Ok(());
        }
        let (dir, worker) = (dir.to_owned(), self.worker);
        if !deep {
            return std::os::unix::fs::chown(&dir, Some(worker.uid), Some(worker.gid))
                .map_err(|source| Error::Chown { path: dir, source });
        }
        tokio::task::spawn_blocking(move || chown_tree(&dir, worker))
            .await
            .expect("walking a folder does not panic")
    }

    /// A command that starts `program` with `args` in `dirs.work`, confined to `dirs` (and `also_writable`,
    /// for an installer), with `env` and the run's `HOME` and `TMPDIR` as its only variables. The caller adds
    /// the run's own variables and sets the standard streams.
    pub(crate) fn command(
        &self,
        program: &Path,
        args: &[&str],
        dirs: &RunDirs,
        also_writable: Option<&Path>,
        env: &[(OsString, OsString)],
    ) -> tokio::process::Command {
        let mut writable = vec![dirs.work.clone(), dirs.home.clone(), dirs.tmp.clone()];
        writable.extend(also_writable.map(Path::to_owned));
        writable.extend(self.shared.iter().cloned());
        let spec = Spec {
            user: self.owner(),
            landlock: self.landlock,
            writable,
            tmp: dirs.tmp.clone(),
            program: program.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        };
        // An absolute path: with a PATH of our own and a bare name, std falls back from posix_spawn to fork,
        // which copies the whole worker's page tables at every spawn (a third of no-op task throughput).
        let mut cmd = tokio::process::Command::new(&self.helper);
        cmd.arg(SANDBOX_ARG)
            .arg(serde_json::to_string(&spec).expect("a spec serializes"))
            .current_dir(&dirs.work)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("HOME", &dirs.home)
            .env("TMPDIR", &dirs.tmp);
        cmd
    }
}

/// Gives `path` and everything beneath it to `ids` (symbolic links themselves, never their targets).
pub(crate) fn chown_tree(path: &Path, ids: Ids) -> Result<(), Error> {
    let chown = |path: &Path| {
        std::os::unix::fs::lchown(path, Some(ids.uid), Some(ids.gid)).map_err(|source| {
            Error::Chown {
                path: path.to_owned(),
                source,
            }
        })
    };
    chown(path)?;
    let meta = std::fs::symlink_metadata(path).map_err(|source| Error::Chown {
        path: path.to_owned(),
        source,
    })?;
    if meta.is_dir() {
        let entries = std::fs::read_dir(path).map_err(|source| Error::Chown {
            path: path.to_owned(),
            source,
        })?;
        for entry in entries.flatten() {
            chown_tree(&entry.path(), ids)?;
        }
    }
    Ok(())
}

fn resolve(choice: &SpiderUser, worker: Ids) -> Result<Option<(String, Ids)>, Error> {
    let root = worker.uid == 0;
    let name = match choice {
        SpiderUser::Auto if !root => return Ok(None),
        SpiderUser::Auto => {
            if lookup(DEFAULT_SPIDER_USER)?.is_none() {
                create_user(DEFAULT_SPIDER_USER);
            }
            if lookup(DEFAULT_SPIDER_USER)?.is_some() {
                DEFAULT_SPIDER_USER
            } else {
                warn!(
                    "cannot create the user {DEFAULT_SPIDER_USER} (useradd failed); spiders run as nobody"
                );
                "nobody"
            }
        }
        SpiderUser::Named(name) => name.as_str(),
    };
    let ids = lookup(name)?.ok_or_else(|| Error::NoSuchUser(name.to_owned()))?;
    if ids == worker {
        return Ok(None);
    }
    if !root {
        return Err(Error::NotRoot(name.to_owned()));
    }
    Ok(Some((name.to_owned(), ids)))
}

fn lookup(name: &str) -> Result<Option<Ids>, Error> {
    nix::unistd::User::from_name(name)
        .map(|user| {
            user.map(|u| Ids {
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
            })
        })
        .map_err(|source| Error::Lookup {
            name: name.to_owned(),
            source,
        })
}

/// A system user with its own group, no home and no login shell. Workers starting side by side may race to
/// create it; the loser's failure is harmless, as the lookup after it finds the winner's.
fn create_user(name: &str) {
    let status = std::process::Command::new("useradd")
        .args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    match status {
        Ok(status) if status.success() => info!(user = name, "created the spider user"),
        _ => {}
    }
}

/// Whether this kernel enforces Landlock's file-system rules (asked without restricting anything).
pub fn landlock_available() -> bool {
    Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_write(ABI::V1))
        .and_then(|ruleset| ruleset.create())
        .is_ok()
}

/// What the helper is told to do, as JSON in its second argument.
#[derive(Debug, Serialize, Deserialize)]
struct Spec {
    user: Option<Ids>,
    landlock: bool,
    writable: Vec<PathBuf>,
    tmp: PathBuf,
    program: PathBuf,
    args: Vec<String>,
}

/// The helper's entry point: when this process was started with [`SANDBOX_ARG`], confines itself and `exec`s
/// the spider, and never returns. Binaries call it first thing, before any thread starts.
pub fn run_if_invoked() {
    let mut args = std::env::args_os().skip(1);
    if args.next().is_none_or(|arg| arg != SANDBOX_ARG) {
        return;
    }
    let spec = args
        .next()
        .and_then(|arg| serde_json::from_str::<Spec>(arg.to_str()?).ok());
    let Some(spec) = spec else {
        eprintln!("[arachne] the sandbox helper was started without a valid spec");
        std::process::exit(126);
    };
    let (message, code) = enter(spec);
    eprintln!("[arachne] {message}");
    std::process::exit(code);
}

/// Confines this process as `spec` says and `exec`s the program; returns only on failure, with the message
/// and exit code to end with.
fn enter(spec: Spec) -> (String, i32) {
    // Best effort: without it the run still has its own TMPDIR, and Landlock keeps it out of the shared /tmp.
    // A run that lives under /tmp itself would lose sight of its own folders, so it keeps the shared one.
    if !spec.writable.iter().any(|dir| dir.starts_with("/tmp")) {
        let _ = private_tmp(&spec.tmp);
    }
    if let Some(ids) = spec.user
        && let Err(err) = drop_to(ids)
    {
        return (format!("cannot switch to the spider user: {err}"), 126);
    }
    if spec.landlock
        && let Err(err) = restrict_writes(&spec.writable)
    {
        return (format!("cannot restrict the spider's writes: {err}"), 126);
    }
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new(&spec.program)
        .args(&spec.args)
        .exec();
    (
        format!("cannot start `{}`: {err}", spec.program.display()),
        127,
    )
}

/// Mounts the run's own folder on `/tmp` in a mount namespace of this process (a user namespace too when not
/// root).
fn private_tmp(tmp: &Path) -> std::io::Result<()> {
    use nix::mount::{MsFlags, mount};
    use nix::sched::{CloneFlags, unshare};
    let (uid, gid) = (nix::unistd::getuid(), nix::unistd::getgid());
    if uid.is_root() {
        unshare(CloneFlags::CLONE_NEWNS)?;
    } else {
        unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS)?;
        std::fs::write("/proc/self/setgroups", "deny")?;
        std::fs::write("/proc/self/uid_map", format!("{uid} {uid} 1"))?;
        std::fs::write("/proc/self/gid_map", format!("{gid} {gid} 1"))?;
    }
    // Private first, so the bind below never propagates to the host's /tmp.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    mount(
        Some(tmp),
        "/tmp",
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )?;
    Ok(())
}

fn drop_to(ids: Ids) -> nix::Result<()> {
    use nix::unistd::{Gid, Uid, setgid, setgroups, setuid};
    let gid = Gid::from_raw(ids.gid);
    setgroups(&[gid])?;
    setgid(gid)?;
    setuid(Uid::from_raw(ids.uid))
}

/// Allows writing only beneath `writable` and to the few devices every program writes to.
fn restrict_writes(writable: &[PathBuf]) -> Result<(), landlock::RulesetError> {
    let write = AccessFs::from_write(ABI::V3);
    Ruleset::default()
        .handle_access(write)?
        .create()?
        .add_rules(path_beneath_rules(writable, write))?
        .add_rules(path_beneath_rules(
            [
                "/dev/null",
                "/dev/zero",
                "/dev/full",
                "/dev/tty",
                "/dev/shm",
                "/dev/pts",
            ],
            write,
        ))?
        .restrict_self()?;
    Ok(())
}
