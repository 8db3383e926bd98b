//! Whether the store takes writes. A worker's report that cannot be stored (a full disk, a database that went
//! away) is retried by its session with backoff instead of ending the session; this is where those failures are
//! counted, logged once per interval rather than once per try, and read by `/health`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::{error, info};

/// How often a failure that goes on is logged again.
const LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub(crate) struct StoreHealth {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The latest failure, while writes fail.
    failing: Option<String>,
    /// When a failure was last logged.
    logged: Option<Instant>,
    /// Failures since then.
    unlogged: u64,
}

impl StoreHealth {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        crate::lock(&self.state)
    }

    /// A write failed; `what` says which.
    pub(crate) fn failed(&self, what: &str, err: &crate::store::Error) {
        let mut state = self.state();
        state.failing = Some(format!("{what}: {err}"));
        state.unlogged += 1;
        if state.logged.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
            error!(error = %err, failures = state.unlogged, "{what} failed; retrying with backoff (logged again in {} s if it goes on)", LOG_EVERY.as_secs());
            state.logged = Some(Instant::now());
            state.unlogged = 0;
        }
    }

    /// A write succeeded.
    pub(crate) fn ok(&self) {
        let mut state = self.state();
        if let Some(was) = state.failing.take() {
            info!(after = %was, "the store takes writes again");
            *state = State::default();
        }
    }

    /// The latest failure, while writes fail.
    pub(crate) fn failing(&self) -> Option<String> {
        self.state().failing.clone()
    }
}

/// Backoff between tries of a write that failed: 100 ms doubling to 5 s.
pub(crate) struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(Duration::from_millis(100))
    }
}

impl Backoff {
    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
    }
}

/// Evaluates `$call` (an expression giving a future of a store result) until it succeeds, reporting each
/// failure to `$health` under `$what` and backing off between tries; yields the success.
macro_rules! retrying {
    ($health:expr, $what:expr, $call:expr) => {{
        let mut backoff = $crate::store_health::Backoff::default();
        loop {
            match $call.await {
                Ok(done) => {
                    $health.ok();
                    break done;
                }
                Err(err) => {
                    $health.failed($what, &err);
                    backoff.wait().await;
                }
            }
        }
    }};
}
pub(crate) use retrying;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_failing_write_is_retried_until_it_succeeds_and_health_follows() {
        let health = StoreHealth::default();
        let mut tries = 0;
        let mut write = || {
            tries += 1;
            let attempt = tries;
            let failing = health.failing();
            async move {
                if attempt < 4 {
                    assert_eq!(failing.is_some(), attempt > 1);
                    Err(crate::store::Error::Corrupt(
                        "no space left on device".into(),
                    ))
                } else {
                    Ok(attempt)
                }
            }
        };
        let done = retrying!(health, "a test write", write());
        assert_eq!(done, 4);
        assert_eq!(health.failing(), None);
    }
}
