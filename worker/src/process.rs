//! The process setup both binaries share: answering as the watchdog or the sandbox helper when started as
//! one, the log subscriber, and keeping the process's memory from its spiders. Only binaries call these.

/// Declares a binary's allocator and its `main`, which calls [`main`] with `run`. The allocator gives memory
/// back to the system soon after it is freed, so a worker (or a master) is small again once a flood of output
/// has passed.
#[macro_export]
macro_rules! binary_main {
    ($run:path) => {
        #[global_allocator]
        static ALLOCATOR: $crate::process::MiMalloc = $crate::process::MiMalloc;

        fn main() -> anyhow::Result<()> {
            $crate::process::main($run)
        }
    };
}

pub use mimalloc::MiMalloc;

/// The `main` of a binary that runs a worker: the process watchdog or the sandbox helper if it was started as
/// one (and nothing else), otherwise `run` on a multi-threaded runtime, with the log subscriber installed and the process sealed
/// first.
pub fn main<F: std::future::Future<Output = anyhow::Result<()>>>(
    run: impl FnOnce() -> F,
) -> anyhow::Result<()> {
    crate::watchdog::run_if_invoked();
    crate::sandbox::run_if_invoked();
    init_tracing();
    seal_process();
    tokio::runtime::Runtime::new()
        .map_err(|err| anyhow::anyhow!("starting the async runtime: {err}"))?
        .block_on(run())
}

/// Installs the log subscriber: `RUST_LOG` if set, `info` otherwise. Colours only on a terminal (and not
/// with `NO_COLOR` set): a log that goes to a file or a collector is plain text.
pub fn init_tracing() {
    use std::io::IsTerminal;
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_ansi(colour)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
}

/// Keeps this process's memory and environment (tokens, the MongoDB URI) from the spiders it starts when they
/// run as the same user, who may otherwise read `/proc/<pid>/environ` of its parent. A spider
/// itself is dumpable again, as `exec` resets the flag. Only the process-wide binaries call this.
pub fn seal_process() {
    if let Err(err) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(error = %err, "cannot hide this process's environment from spiders");
    }
}
