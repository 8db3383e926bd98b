//! Turns SIGINT/SIGTERM into cancellation of the root token. A second signal exits at once: the user is
//! impatient, and a drain that hangs must not keep the process alive. Used by the binaries only.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Cancels `root` on the first SIGINT or SIGTERM and exits the process with status 130 on the second.
pub fn spawn_handler(root: CancellationToken) {
    tokio::spawn(async move {
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
        tracing::info!("shutting down; send the signal again to exit at once");
        root.cancel();
        tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
        std::process::exit(130);
    });
}
