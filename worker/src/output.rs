//! Turns a spider's raw output into numbered log lines and items and ships them to the master in batches.
//!
//! Both pipes feed one bounded channel, so when the master is slow the readers stop reading and the spider
//! blocks on its own pipe: backpressure instead of unbounded buffering, and nothing is dropped.
//!
//! The bounds are in bytes, since a line may be anything up to the line limit: lines read but not yet batched
//! hold a share of the run's [`RUN_BUDGET`], and batches from their sending until the master acknowledges
//! them hold a share of the worker's [`IN_FLIGHT_BUDGET`] (an [`Event`] carries it to the outbox).

use std::time::Duration;

use arachne_shared::cluster::{TaskReport, WorkerToMaster};
use arachne_shared::ipc::{self, ErrorPayload, Line, SpiderMessage, StatusPayload};
use arachne_shared::{ItemRecord, LogLine, LogStream, TaskId};
use chrono::Utc;
use std::sync::Arc;
use tokio::io::{AsyncBufRead, BufReader};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;

use crate::lines::{LineReader, RawLine};
use crate::scrapy_log::ScrapyLog;

/// Lines from both pipes waiting to be classified.
const RAW_CAPACITY: usize = 1024;
/// Bytes of one run's lines read from its pipes and not yet batched; a line longer than this takes all of it.
pub(crate) const RUN_BUDGET: usize = 8 << 20;
/// Bytes of one worker's batches sent to the outbox and not yet acknowledged by the master, over all runs. The
/// outbox keeps each until acknowledged while a copy goes out on the wire, so the worker may hold about twice
/// this; a batch longer than this takes all of it.
pub(crate) const IN_FLIGHT_BUDGET: usize = arachne_shared::cluster::WINDOW_BYTES / 2;

/// A message for the outbox, holding its share of the in-flight budget until the master acknowledges it.
#[derive(Debug)]
pub(crate) struct Event {
    pub(crate) message: WorkerToMaster,
    pub(crate) budget: Option<OwnedSemaphorePermit>,
}

impl From<WorkerToMaster> for Event {
    fn from(message: WorkerToMaster) -> Self {
        Self {
            message,
            budget: None,
        }
    }
}

/// Takes `bytes` of `budget` (all of it, for more than it holds), waiting while others hold it.
pub(crate) async fn reserve(
    budget: &Arc<Semaphore>,
    total: usize,
    bytes: usize,
) -> OwnedSemaphorePermit {
    let share = bytes.clamp(1, total) as u32;
    Arc::clone(budget)
        .acquire_many_owned(share)
        .await
        .expect("budgets are never closed")
}

/// A new budget of `bytes`.
pub(crate) fn budget(bytes: usize) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(bytes))
}
/// A batch is sent once it holds this many records…
const BATCH_RECORDS: usize = 2_000;
/// …or this many bytes…
const BATCH_BYTES: usize = 1024 * 1024;
/// …or once its oldest record is this old, so a quiet spider's lines still show up at once.
const BATCH_DELAY: Duration = Duration::from_millis(50);

/// What the output of a run amounted to.
#[derive(Debug, Default)]
pub(crate) struct Summary {
    /// The first fatal ERROR the spider reported.
    pub(crate) fatal_error: Option<String>,
}

pub(crate) struct Raw {
    source: Source,
    line: RawLine,
    /// This line's share of the run's budget, given back once it is batched.
    _budget: Option<OwnedSemaphorePermit>,
}

/// Where a line was read: one of the spider's pipes, or its Scrapy feed (a JSON object a line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Pipe(LogStream),
    Feed,
}

/// Where a run's readers send their lines.
#[derive(Clone)]
pub(crate) struct RawSender {
    tx: mpsc::Sender<Raw>,
    budget: Arc<Semaphore>,
}

/// Starts a reader task for one pipe (or the feed).
pub(crate) fn spawn_reader<R>(
    pipe: R,
    source: Source,
    max_line_bytes: usize,
    tx: RawSender,
) -> tokio::task::JoinHandle<()>
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(read_pipe(
        BufReader::with_capacity(64 * 1024, pipe),
        source,
        max_line_bytes,
        tx,
    ))
}

async fn read_pipe<R: AsyncBufRead + Unpin>(pipe: R, source: Source, max: usize, tx: RawSender) {
    let mut reader = LineReader::new(pipe, max);
    loop {
        match reader.next_line().await {
            Ok(Some(line)) => {
                // Waiting here leaves the rest in the pipe, and the spider blocks on it.
                let budget = reserve(&tx.budget, RUN_BUDGET, line.bytes.len()).await;
                let raw = Raw {
                    source,
                    line,
                    _budget: Some(budget),
                };
                if tx.tx.send(raw).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(err) => {
                let what = match source {
                    Source::Pipe(stream) => stream.as_str(),
                    Source::Feed => "the Scrapy feed",
                };
                let text = format!("[arachne] reading {what} failed: {err}");
                let line = RawLine {
                    bytes: text.into_bytes(),
                    truncated: 0,
                };
                let _ = tx
                    .tx
                    .send(Raw {
                        source: Source::Pipe(LogStream::System),
                        line,
                        _budget: None,
                    })
                    .await;
                return;
            }
        }
    }
}

/// Whether a line begins as an INSERT_DATA message.
fn is_item_message(bytes: &[u8]) -> bool {
    let head = &bytes[..bytes.len().min(256)];
    let head = String::from_utf8_lossy(head);
    head.trim_start().starts_with('{') && head.contains("\"INSERT_DATA\"")
}

/// A line as text, with a marker when it was cut.
fn text_of(line: &RawLine) -> String {
    let mut text = String::from_utf8_lossy(&line.bytes).into_owned();
    if line.truncated > 0 {
        text.push_str(&format!(
            " [arachne: line truncated, {} more bytes dropped]",
            line.truncated
        ));
    }
    text
}

/// The channel both readers of one run send to, with the run's budget.
pub(crate) fn raw_channel() -> (RawSender, mpsc::Receiver<Raw>) {
    let (tx, rx) = mpsc::channel(RAW_CAPACITY);
    let budget = budget(RUN_BUDGET);
    (RawSender { tx, budget }, rx)
}

/// Numbers and batches records until every reader has closed its sender.
pub(crate) struct Collector {
    task_id: TaskId,
    lease: u64,
    events: mpsc::Sender<Event>,
    /// The worker's in-flight budget; see [`IN_FLIGHT_BUDGET`].
    in_flight: Arc<Semaphore>,
    log_seq: u64,
    item_seq: u64,
    logs: Vec<LogLine>,
    items: Vec<ItemRecord>,
    bytes: usize,
    oldest: Option<Instant>,
    /// The latest STATUS not yet sent.
    status: Option<StatusPayload>,
    /// ERRORs not yet sent.
    errors: Vec<ErrorPayload>,
    /// ERRORs already sent.
    errors_sent: u64,
    /// A Scrapy crawl's own numbers, read from its log; the progress they imply is reported until the
    /// spider sends a STATUS of its own.
    scrapy: ScrapyLog,
    own_status: bool,
    /// The spider sent INSERT_DATA itself: its Scrapy feed, if it has one, is not read as items.
    own_items: bool,
    summary: Summary,
}

impl Collector {
    pub(crate) fn new(
        task_id: TaskId,
        lease: u64,
        events: mpsc::Sender<Event>,
        in_flight: Arc<Semaphore>,
    ) -> Self {
        Self {
            task_id,
            lease,
            events,
            in_flight,
            log_seq: 0,
            item_seq: 0,
            logs: Vec::new(),
            items: Vec::new(),
            bytes: 0,
            oldest: None,
            status: None,
            errors: Vec::new(),
            errors_sent: 0,
            scrapy: ScrapyLog::default(),
            own_status: false,
            own_items: false,
            summary: Summary::default(),
        }
    }

    /// Adds a platform message to the task's log (for example a sync failure), in order with the rest.
    pub(crate) fn system(&mut self, text: impl Into<String>) {
        self.push_log(LogStream::System, text.into());
    }

    /// Runs until the raw channel closes, then flushes.
    pub(crate) async fn run(mut self, mut raw: mpsc::Receiver<Raw>) -> Summary {
        loop {
            let deadline = self.oldest.map(|t| t + BATCH_DELAY);
            tokio::select! {
                next = raw.recv() => match next {
                    Some(raw) => {
                        self.accept(raw);
                        if self.logs.len() + self.items.len() >= BATCH_RECORDS || self.bytes >= BATCH_BYTES {
                            self.flush().await;
                        }
                    }
                    None => break,
                },
                () = sleep_until(deadline) => self.flush().await,
            }
        }
        self.flush().await;
        self.summary
    }

    /// Sends whatever is batched.
    pub(crate) async fn flush(&mut self) {
        self.oldest = None;
        self.bytes = 0;
        if !self.logs.is_empty() {
            let lines = std::mem::take(&mut self.logs);
            self.send(WorkerToMaster::Logs {
                task_id: self.task_id,
                lease: self.lease,
                lines,
            })
            .await;
        }
        if !self.items.is_empty() {
            let items = std::mem::take(&mut self.items);
            self.send(WorkerToMaster::Items {
                task_id: self.task_id,
                lease: self.lease,
                items,
            })
            .await;
        }
        if self.status.is_some() || !self.errors.is_empty() {
            let (status, errors) = (self.status.take(), std::mem::take(&mut self.errors));
            let errors_before = self.errors_sent;
            self.errors_sent += errors.len() as u64;
            self.send(WorkerToMaster::Report(TaskReport {
                task_id: self.task_id,
                lease: self.lease,
                status,
                errors,
                errors_before,
                at: Utc::now(),
            }))
            .await;
        }
    }

    async fn send(&mut self, message: WorkerToMaster) {
        let budget = reserve(&self.in_flight, IN_FLIGHT_BUDGET, message.approx_bytes()).await;
        let event = Event {
            message,
            budget: Some(budget),
        };
        // The channel outlives every session (the outbox resends after a reconnect); it closes only when the
        // worker itself is gone, and then nobody is left to tell.
        let _ = self.events.send(event).await;
    }

    /// Adds a line to the log as it is, never reading it as a message (an installer's output, say).
    pub(crate) fn plain(&mut self, Raw { source, line, .. }: Raw) {
        let text = text_of(&line);
        match source {
            Source::Pipe(stream) => self.push_log(stream, text),
            Source::Feed => self.feed_item(line),
        }
    }

    fn accept(&mut self, Raw { source, line, .. }: Raw) {
        let stream = match source {
            Source::Pipe(stream) => stream,
            Source::Feed => return self.feed_item(line),
        };
        let text = text_of(&line);
        if line.truncated > 0 {
            self.push_log(stream, text);
            if stream == LogStream::Stdout && is_item_message(&line.bytes) {
                // Cut, it is no longer JSON: its items are lost, and the task must say so.
                self.error(format!(
                    "item message over the line limit was dropped ({} bytes, limit {})",
                    line.bytes.len() + line.truncated,
                    line.bytes.len()
                ));
            }
            return;
        }
        if stream != LogStream::Stdout {
            self.log_line(stream, text);
            return;
        }
        match ipc::classify(&text) {
            Line::Log => self.log_line(stream, text),
            Line::Invalid { warning } => {
                self.push_log(stream, text);
                self.system(format!("[arachne] warning: {warning}"));
            }
            Line::Message(SpiderMessage::InsertData(items)) => {
                self.own_items = true;
                if std::str::from_utf8(&line.bytes).is_err() {
                    self.system(
                        "[arachne] warning: an item message held invalid UTF-8, replaced with U+FFFD in its items",
                    );
                }
                self.bytes += text.len();
                for data in items {
                    self.push_item(data);
                }
            }
            // Only the latest status matters, so a spider reporting on every page costs one message a batch.
            Line::Message(SpiderMessage::Status(status)) => {
                self.own_status = true;
                self.status = Some(status);
                self.oldest.get_or_insert_with(Instant::now);
            }
            Line::Message(SpiderMessage::Error(error)) => {
                let kind = if error.fatal { "fatal error" } else { "error" };
                self.system(format!(
                    "[arachne] spider reported {kind}: {}",
                    error.message
                ));
                if error.fatal && self.summary.fatal_error.is_none() {
                    self.summary.fatal_error = Some(error.message.clone());
                }
                self.errors.push(error);
            }
        }
    }

    /// A line of the Scrapy feed: one item, unless the spider sends its items itself (then the feed holds
    /// copies of them).
    fn feed_item(&mut self, line: RawLine) {
        if self.own_items {
            return;
        }
        if line.truncated > 0 {
            return self.error(format!(
                "a Scrapy item over the line limit was dropped ({} bytes, limit {})",
                line.bytes.len() + line.truncated,
                line.bytes.len()
            ));
        }
        let text = String::from_utf8_lossy(&line.bytes);
        match serde_json::from_str::<Box<serde_json::value::RawValue>>(text.trim()) {
            Ok(data) if data.get().starts_with('{') => {
                self.bytes += data.get().len();
                self.push_item(data);
            }
            _ if text.trim().is_empty() => {}
            _ => self.error(format!(
                "a line of the Scrapy feed is not a JSON object: {}",
                text.chars().take(200).collect::<String>()
            )),
        }
    }

    fn push_item(&mut self, data: Box<serde_json::value::RawValue>) {
        self.item_seq += 1;
        self.oldest.get_or_insert_with(Instant::now);
        self.items.push(ItemRecord {
            seq: self.item_seq,
            data,
        });
    }

    /// A line of the spider's log, read for a Scrapy crawl's numbers on the way.
    fn log_line(&mut self, stream: LogStream, text: String) {
        if let Some(status) = self.scrapy.observe(&text)
            && !self.own_status
        {
            self.status = Some(status);
            self.oldest.get_or_insert_with(Instant::now);
        }
        self.push_log(stream, text);
    }

    /// Records an error of the platform's own on the task, as a spider's ERROR would be.
    fn error(&mut self, message: String) {
        self.system(format!("[arachne] error: {message}"));
        self.errors.push(ErrorPayload {
            message,
            fatal: false,
            extra: Default::default(),
        });
        self.oldest.get_or_insert_with(Instant::now);
    }

    fn push_log(&mut self, stream: LogStream, text: String) {
        self.log_seq += 1;
        self.bytes += text.len();
        self.oldest.get_or_insert_with(Instant::now);
        self.logs.push(LogLine {
            seq: self.log_seq,
            stream,
            text,
            at: Utc::now(),
        });
    }
}

/// Sleeps until `deadline`; forever without one (a `select!` branch that never fires).
pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(stream: LogStream, text: &[u8]) -> Raw {
        from(Source::Pipe(stream), text)
    }

    fn from(source: Source, text: &[u8]) -> Raw {
        Raw {
            source,
            line: RawLine {
                bytes: text.to_vec(),
                truncated: 0,
            },
            _budget: None,
        }
    }

    type Reports = Vec<(Option<StatusPayload>, Vec<ErrorPayload>)>;

    async fn collect(input: Vec<Raw>) -> (Vec<LogLine>, Vec<ItemRecord>, Summary, Reports) {
        let (events_tx, mut events_rx) = mpsc::channel(1024);
        let (raw_tx, raw_rx) = raw_channel();
        let collector = tokio::spawn(
            Collector::new(TaskId::new(), 1, events_tx, budget(IN_FLIGHT_BUDGET)).run(raw_rx),
        );
        for r in input {
            raw_tx.tx.send(r).await.unwrap();
        }
        drop(raw_tx);
        let summary = collector.await.unwrap();
        let (mut logs, mut items, mut reports) = (Vec::new(), Vec::new(), Vec::new());
        while let Ok(event) = events_rx.try_recv() {
            match event.message {
                WorkerToMaster::Logs { lines, .. } => logs.extend(lines),
                WorkerToMaster::Items { items: batch, .. } => items.extend(batch),
                WorkerToMaster::Report(TaskReport { status, errors, .. }) => {
                    reports.push((status, errors));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        (logs, items, summary, reports)
    }

    #[tokio::test]
    async fn a_scrapy_feed_becomes_items_unless_the_spider_sends_its_own() {
        let (logs, items, _, reports) = collect(vec![
            from(Source::Feed, br#"{"quote":"a"}"#),
            from(Source::Feed, b"not json"),
            from(Source::Feed, br#"{"quote":"b"}"#),
        ])
        .await;
        let texts: Vec<&str> = items.iter().map(|i| i.data.get()).collect();
        assert_eq!(texts, [r#"{"quote":"a"}"#, r#"{"quote":"b"}"#]);
        assert_eq!(items[1].seq, 2);
        assert!(logs[0].text.contains("not a JSON object"), "{logs:?}");
        assert_eq!(reports[0].1.len(), 1);

        let (_, items, _, _) = collect(vec![
            raw(
                LogStream::Stdout,
                br#"{"type":"INSERT_DATA","payload":{"quote":"a"}}"#,
            ),
            from(Source::Feed, br#"{"quote":"a"}"#),
        ])
        .await;
        assert_eq!(items.len(), 1, "stored twice: {items:?}");
    }

    #[tokio::test]
    async fn scrapy_s_own_numbers_are_the_progress_until_the_spider_reports_its_own() {
        let stats = |n: u32| {
            format!(
                "2026-12-07 08:31:00 [scrapy.extensions.logstats] INFO: Crawled {n} pages (at {n} pages/min), scraped {n} items (at {n} items/min)"
            )
        };
        let (logs, _, _, reports) =
            collect(vec![raw(LogStream::Stderr, stats(3).as_bytes())]).await;
        assert_eq!(logs.len(), 1, "the line stays in the log");
        let status = reports[0].0.as_ref().unwrap();
        assert_eq!(status.stats.as_ref().unwrap()["pages"], 3);

        let (_, _, _, reports) = collect(vec![
            raw(
                LogStream::Stdout,
                br#"{"type":"STATUS","payload":{"message":"mine"}}"#,
            ),
            raw(LogStream::Stderr, stats(4).as_bytes()),
        ])
        .await;
        let status = reports.last().unwrap().0.as_ref().unwrap();
        assert_eq!(status.message.as_deref(), Some("mine"));
    }

    #[tokio::test]
    async fn separates_items_from_logs_and_numbers_both_without_gaps() {
        let (logs, items, summary, reports) = collect(vec![
            raw(LogStream::Stdout, b"starting"),
            raw(
                LogStream::Stdout,
                br#"{"type":"INSERT_DATA","payload":[{"n":1},{"n":2}]}"#,
            ),
            raw(
                LogStream::Stderr,
                br#"{"type":"INSERT_DATA","payload":{"n":99}}"#,
            ),
            raw(LogStream::Stdout, b"\xff\xfebinary"),
            raw(
                LogStream::Stdout,
                br#"{"type":"ERROR","payload":{"message":"blocked","fatal":true}}"#,
            ),
        ])
        .await;
        let texts: Vec<_> = logs
            .iter()
            .map(|l| (l.seq, l.stream, l.text.as_str()))
            .collect();
        assert_eq!(
            texts,
            [
                (1, LogStream::Stdout, "starting"),
                // stderr is never IPC.
                (
                    2,
                    LogStream::Stderr,
                    r#"{"type":"INSERT_DATA","payload":{"n":99}}"#
                ),
                (3, LogStream::Stdout, "\u{fffd}\u{fffd}binary"),
                (
                    4,
                    LogStream::System,
                    "[arachne] spider reported fatal error: blocked"
                ),
            ]
        );
        let seqs: Vec<_> = items
            .iter()
            .map(|i| (i.seq, i.value()["n"].as_i64().unwrap()))
            .collect();
        assert_eq!(seqs, [(1, 1), (2, 2)]);
        assert_eq!(summary.fatal_error.as_deref(), Some("blocked"));
        assert_eq!(reports.len(), 1, "one report per batch");
        assert_eq!(reports[0].1[0].message, "blocked");
    }

    #[tokio::test]
    async fn only_the_latest_status_of_a_batch_is_sent() {
        let (logs, _, _, reports) = collect(vec![
            raw(
                LogStream::Stdout,
                br#"{"type":"STATUS","payload":{"progress":0.1}}"#,
            ),
            raw(
                LogStream::Stdout,
                br#"{"type":"STATUS","payload":{"progress":0.2,"message":"page 2"}}"#,
            ),
        ])
        .await;
        assert!(logs.is_empty(), "status reports are not log lines");
        let status = reports[0].0.as_ref().unwrap();
        assert_eq!(
            (status.progress, status.message.as_deref()),
            (Some(0.2), Some("page 2"))
        );
    }

    #[tokio::test]
    async fn a_malformed_message_keeps_the_line_and_adds_a_warning() {
        let (logs, items, _, _) = collect(vec![raw(
            LogStream::Stdout,
            br#"{"type":"INSERT_DATA","payload":7}"#,
        )])
        .await;
        assert!(items.is_empty());
        assert_eq!(logs[0].text, r#"{"type":"INSERT_DATA","payload":7}"#);
        assert!(
            logs[1].text.contains("payload is a number"),
            "{}",
            logs[1].text
        );
    }

    #[tokio::test]
    async fn truncated_lines_carry_a_marker_and_a_cut_item_message_is_an_error() {
        let mut truncated = raw(LogStream::Stdout, br#"{"type":"INSERT_DATA","pay"#);
        truncated.line.truncated = 123;
        let mut plain = raw(LogStream::Stdout, b"just a long line");
        plain.line.truncated = 5;
        let (logs, items, _, reports) = collect(vec![truncated, plain]).await;
        let errors: Vec<ErrorPayload> = reports.into_iter().flat_map(|(_, e)| e).collect();
        assert!(items.is_empty());
        assert!(
            logs[0]
                .text
                .ends_with("[arachne: line truncated, 123 more bytes dropped]"),
            "{}",
            logs[0].text
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0]
                .message
                .contains("item message over the line limit was dropped"),
            "{errors:?}"
        );
        assert!(
            logs[1].text.starts_with("[arachne] error: item message"),
            "{logs:?}"
        );
        assert_eq!(logs.len(), 3, "the plain cut line is no error: {logs:?}");
    }

    #[tokio::test]
    async fn invalid_utf8_in_an_item_message_is_replaced_with_a_warning() {
        let line = raw(
            LogStream::Stdout,
            b"{\"type\":\"INSERT_DATA\",\"payload\":{\"t\":\"a\xffb\"}}",
        );
        let (logs, items, _, _) = collect(vec![line]).await;
        assert_eq!(items.len(), 1);
        assert!(
            items[0].data.get().contains('\u{fffd}'),
            "{}",
            items[0].data.get()
        );
        assert!(logs[0].text.contains("invalid UTF-8"), "{logs:?}");
    }

    /// Where the kernel has `pid` waiting, or "" if it is gone.
    fn wchan(pid: u32) -> String {
        std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default()
    }

    #[tokio::test]
    async fn a_stalled_consumer_blocks_the_spider_and_loses_nothing() {
        const LINES: u64 = 300_000;
        // Nobody reads these events yet: everything the worker may buffer fills up, and then it stops reading.
        let (events_tx, mut events_rx) = mpsc::channel(1);
        let mut child = tokio::process::Command::new("seq")
            .args(["1", &LINES.to_string()])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pid = child.id().unwrap();
        let (raw_tx, raw_rx) = raw_channel();
        spawn_reader(
            child.stdout.take().unwrap(),
            Source::Pipe(LogStream::Stdout),
            1024,
            raw_tx,
        );
        let collector = tokio::spawn(
            Collector::new(TaskId::new(), 1, events_tx, budget(IN_FLIGHT_BUDGET)).run(raw_rx),
        );

        // 2 MB of output against a few hundred KB of buffers: the spider has to end up blocked on its pipe.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !wchan(pid).contains("pipe") {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the spider never blocked: {:?}",
                wchan(pid)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the spider finished although nothing was consumed"
        );

        let mut next = 1u64;
        while let Some(event) = events_rx.recv().await {
            if let WorkerToMaster::Logs { lines, .. } = event.message {
                for line in lines {
                    assert_eq!(line.text, next.to_string());
                    next += 1;
                }
            }
        }
        assert_eq!(next, LINES + 1, "every line arrived, in order");
        collector.await.unwrap();
        assert!(child.wait().await.unwrap().success());
    }

    /// Long lines fill the byte budget long before any count bound: what the worker holds unacknowledged of a
    /// flood of 1 MiB lines is at most the in-flight budget, and output goes on once the master acknowledges
    /// (here: the held events are dropped).
    #[tokio::test]
    async fn a_flood_of_long_lines_is_held_to_the_byte_budgets() {
        const LINE: usize = 1 << 20;
        let (events_tx, mut events_rx) = mpsc::channel(100_000);
        let mut child = tokio::process::Command::new("/bin/sh")
            .args([
                "-c",
                &format!(
                    "f=$(mktemp); head -c {} /dev/zero | tr '\\0' x > $f; echo >> $f; while true; do cat $f; done",
                    LINE - 1
                ),
            ])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (raw_tx, raw_rx) = raw_channel();
        spawn_reader(
            child.stdout.take().unwrap(),
            Source::Pipe(LogStream::Stdout),
            16 << 20,
            raw_tx,
        );
        let in_flight = budget(IN_FLIGHT_BUDGET);
        let collector = tokio::spawn(
            Collector::new(TaskId::new(), 1, events_tx, Arc::clone(&in_flight)).run(raw_rx),
        );

        // Events are taken off the channel (as the outbox does) and held, as unacknowledged messages are.
        let mut held = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while in_flight.available_permits() > LINE {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the budget never filled"
            );
            while let Ok(event) = events_rx.try_recv() {
                held.push(event);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let held_bytes: usize = held.iter().map(|e| e.message.approx_bytes()).sum();
        assert!(
            held_bytes <= IN_FLIGHT_BUDGET + LINE,
            "{held_bytes} bytes in flight against a budget of {IN_FLIGHT_BUDGET}"
        );
        let lines = |held: &[Event]| -> usize {
            held.iter()
                .map(|e| match &e.message {
                    WorkerToMaster::Logs { lines, .. } => lines.len(),
                    _ => 0,
                })
                .sum()
        };
        let before = lines(&held);
        held.clear();
        let more = tokio::time::timeout(Duration::from_secs(30), events_rx.recv())
            .await
            .expect("output flows again once the budget is given back");
        assert!(more.is_some() && before > 0);
        child.kill().await.unwrap();
        drop(events_rx);
        let _ = collector.await;
    }
}
