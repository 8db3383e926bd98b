//! The master's own counters and the dispatch-latency histogram, kept in memory and read by `/metrics`.
//! Counts start at zero with each master process, as Prometheus counters do.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arachne_shared::histogram::Histogram;

/// Upper bounds of the dispatch-latency buckets, in seconds: from a hot queue (milliseconds) to a task that
/// waited minutes for a free slot.
const DISPATCH_BOUNDS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

#[derive(Debug)]
pub(crate) struct Telemetry {
    items: AtomicU64,
    log_lines: AtomicU64,
    dispatch: Mutex<Histogram>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self {
            items: AtomicU64::new(0),
            log_lines: AtomicU64::new(0),
            dispatch: Mutex::new(Histogram::new(DISPATCH_BOUNDS.to_vec())),
        }
    }
}

impl Telemetry {
    pub(crate) fn ingested(&self, items: usize, log_lines: usize) {
        self.items.fetch_add(items as u64, Ordering::Relaxed);
        self.log_lines
            .fetch_add(log_lines as u64, Ordering::Relaxed);
    }

    /// How long a task waited from being ready to run (created, or its retry backoff passed) to being sent to
    /// a worker.
    pub(crate) fn dispatched(&self, waited: Duration) {
        crate::lock(&self.dispatch).observe(waited.as_secs_f64());
    }

    /// Items and log lines stored, and the dispatch-latency histogram, as they are now.
    pub(crate) fn snapshot(&self) -> (u64, u64, Histogram) {
        let dispatch = crate::lock(&self.dispatch).clone();
        (
            self.items.load(Ordering::Relaxed),
            self.log_lines.load(Ordering::Relaxed),
            dispatch,
        )
    }
}
