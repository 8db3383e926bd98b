//! The embedded store: SQLite (bundled, so nothing to install) in one file under the data directory.
//!
//! Rows keep the queried fields as columns and the full record as JSON; log lines and items are keyed by
//! `(task_id, seq)` and inserted with `OR IGNORE`, which makes a retried batch harmless.

mod catalog;
mod notify;
mod output;
mod tasks;
mod tokens;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use arachne_shared::spider::DedupMode;
use arachne_shared::{
    AuditEntry, AuditId, ItemRecord, ItemTarget, LogLine, LogStream, Node, Schedule, ScheduleId,
    Spider, SpiderId, Task, TaskId, TaskStatus, Token, User, from_millis, to_millis,
};
use rusqlite::{Connection, OptionalExtension, params};

use super::{
    ActiveScope, ChildTotals, Error, Result, TaskChange, TaskFilter, parse_stored_id as parse_id,
};

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
PRAGMA wal_autocheckpoint = 0;
PRAGMA journal_size_limit = 16777216;
CREATE TABLE IF NOT EXISTS spiders (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    spider_name TEXT NOT NULL,
    status TEXT NOT NULL,
    node TEXT,
    priority INTEGER NOT NULL,
    log_lines INTEGER NOT NULL DEFAULT 0,
    items INTEGER NOT NULL DEFAULT 0,
    data TEXT NOT NULL,
    parent_id TEXT,
    schedule_id TEXT,
    fire_ms INTEGER,
    children INTEGER NOT NULL DEFAULT 0,
    exclusive TEXT,
    ended_ms INTEGER
);
CREATE TABLE IF NOT EXISTS nodes (name TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS schedules (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (name TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, data TEXT NOT NULL);
-- Ended runs per hour and spider, added to as each task's end is written (see TaskStore::run_stats).
CREATE TABLE IF NOT EXISTS run_stats (
    hour_ms INTEGER NOT NULL, spider TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (hour_ms, spider)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit (id TEXT PRIMARY KEY, actor TEXT NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS notifications (name TEXT PRIMARY KEY, data TEXT NOT NULL);
-- `dkey` is the rule, trigger and subject: one delivery each.
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY, notification TEXT NOT NULL, dkey TEXT NOT NULL UNIQUE, status TEXT NOT NULL,
    next_ms INTEGER NOT NULL, data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS logs (
    task_id TEXT NOT NULL, seq INTEGER NOT NULL, stream TEXT NOT NULL, at_ms INTEGER NOT NULL, text TEXT NOT NULL,
    PRIMARY KEY (task_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS items (
    task_id TEXT NOT NULL, seq INTEGER NOT NULL, data TEXT NOT NULL,
    -- The results collection and de-duplication key of an item, for spiders that de-duplicate.
    coll TEXT, dkey TEXT,
    -- When the master stored the item, for searches by time.
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (task_id, seq)
) WITHOUT ROWID;
";

const INDEXES: &str = "
CREATE INDEX IF NOT EXISTS tasks_dispatch ON tasks (status, priority, id) WHERE node IS NULL AND children = 0;
CREATE INDEX IF NOT EXISTS tasks_parent ON tasks (parent_id, id) WHERE parent_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_schedule ON tasks (schedule_id, id) WHERE schedule_id IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS tasks_fire ON tasks (schedule_id, fire_ms)
    WHERE fire_ms IS NOT NULL AND parent_id IS NULL;
CREATE INDEX IF NOT EXISTS tasks_exclusive ON tasks (exclusive, status) WHERE exclusive IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_spider_status ON tasks (spider_name, status);
CREATE INDEX IF NOT EXISTS tasks_status ON tasks (status, id);
CREATE INDEX IF NOT EXISTS tasks_spider ON tasks (spider_name, id);
CREATE INDEX IF NOT EXISTS tasks_ended ON tasks (ended_ms) WHERE ended_ms IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_node_set ON tasks (node, id) WHERE node IS NOT NULL;
CREATE INDEX IF NOT EXISTS audit_actor ON audit (actor, id);
CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries (next_ms) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS deliveries_rule ON deliveries (notification, id);
CREATE UNIQUE INDEX IF NOT EXISTS items_dedup ON items (coll, dkey) WHERE dkey IS NOT NULL;
";

/// The SQLite store. Bulk writes and listings run on the blocking pool; single-row statements run in place
/// (see [`EmbeddedStore::quick`]).
pub struct EmbeddedStore {
    conn: Arc<Mutex<Connection>>,
    /// Spiders read so far. Every task creation and every dispatch pass looks its spider up, and this store
    /// is the only writer of its file, so [`Store::put_spider`] can keep the copies current.
    spiders: Mutex<SpiderCache>,
    /// Dropped with the store, which ends the checkpointer thread.
    _checkpointer: Option<std::sync::mpsc::Sender<()>>,
}

/// Spiders by name, and a count of spider writes: a lookup that read the table before a write finished must
/// not cache what it read after the write dropped the old copy.
#[derive(Default)]
struct SpiderCache {
    writes: u64,
    by_name: HashMap<String, Spider>,
}

/// A write-ahead log of more pages than this (16 MiB of 4 KiB pages, as `journal_size_limit` in the schema)
/// is truncated once it is all checkpointed: a flood of writes must not leave a log of gigabytes behind.
const WAL_TRUNCATE_PAGES: i64 = 4096;

/// How often the checkpointer folds the write-ahead log back into the database.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

fn db(err: rusqlite::Error) -> Error {
    Error::Database(Box::new(err))
}

/// A write's result, with a uniqueness violation reported as a `Duplicate` of `what`.
fn unique(result: rusqlite::Result<usize>, what: impl FnOnce() -> String) -> Result<()> {
    match result {
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            Err(Error::Duplicate(what()))
        }
        other => other.map(drop).map_err(db),
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("domain types serialise")
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| Error::Corrupt(e.to_string()))
}

impl EmbeddedStore {
    /// Opens (creating if needed) the database file at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path).map_err(db)?;
        let store = Self::init(conn)?;
        Ok(Self {
            _checkpointer: Some(spawn_checkpointer(path)?),
            ..store
        })
    }

    /// An in-memory database, for tests.
    pub fn in_memory() -> Result<Self> {
        Self::init(Connection::open_in_memory().map_err(db)?)
    }

    fn init(conn: Connection) -> Result<Self> {
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db)?;
        // Every hot statement is cached: parsing SQL was a tenth of the master's CPU per task.
        conn.set_prepared_statement_cache_capacity(64);
        conn.execute_batch(SCHEMA).map_err(db)?;
        conn.execute_batch(INDEXES).map_err(db)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            spiders: Mutex::default(),
            _checkpointer: None,
        })
    }

    async fn call<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut conn = crate::lock(&conn);
            f(&mut conn)
        })
        .await
        .map_err(|e| Error::Database(Box::new(e)))?
    }

    fn cached_spiders(&self) -> std::sync::MutexGuard<'_, SpiderCache> {
        crate::lock(&self.spiders)
    }

    /// Runs a single-row statement on the calling thread when the connection is free: handing it to the
    /// blocking pool cost two thread switches, more than the statement itself (a fifth of no-op task
    /// throughput). When a bulk write holds the connection, it waits on the blocking pool like [`Self::call`]
    /// instead: async threads blocked on the lock could not read workers' heartbeats, and under a flood of
    /// output the master would take a live worker for dead.
    async fn quick<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        match self.conn.try_lock() {
            Ok(mut conn) => return f(&mut conn),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => {
                return f(&mut poisoned.into_inner());
            }
            Err(std::sync::TryLockError::WouldBlock) => {}
        }
        self.call(f).await
    }
}

/// Moves checkpoints off the write path: SQLite otherwise runs one (with an fsync) inside whichever commit
/// crosses 1000 log pages, and that commit may be a task's assignment (it was the p99 of trigger → started).
/// The thread has its own connection, so a passive checkpoint runs beside the writer instead of holding its
/// lock; it stops when the store is dropped.
fn spawn_checkpointer(path: &Path) -> Result<std::sync::mpsc::Sender<()>> {
    let conn = Connection::open(path).map_err(db)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(db)?;
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(CHECKPOINT_EVERY)
            {
                let passive = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                    Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
                });
                match passive {
                    // Everything is in the database, but a flood left the log file large: truncate it now
                    // rather than at the next write, which may be long in coming.
                    Ok((logged, done)) if logged == done && logged > WAL_TRUNCATE_PAGES => {
                        if let Err(err) =
                            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                        {
                            tracing::warn!(error = %err, "truncating the embedded store's log failed; retrying");
                        }
                    }
                    Ok(_) => {}
                    Err(err) => {
                        tracing::warn!(error = %err, "checkpoint of the embedded store failed; retrying")
                    }
                }
            }
        })
        .map_err(|e| Error::Database(Box::new(e)))?;
    Ok(stop)
}

/// Every row of a one-column query of JSON records, decoded.
fn all_json<T: serde::de::DeserializeOwned>(conn: &Connection, sql: &str) -> Result<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql).map_err(db)?;
    let rows = stmt
        .query_map([], |row| row.get::<_, String>(0))
        .map_err(db)?;
    rows.map(|r| from_json(&r.map_err(db)?)).collect()
}

fn read_task(data: String, log_lines: i64, items: i64) -> Result<Task> {
    let mut task: Task = from_json(&data)?;
    task.log_lines = log_lines as u64;
    task.items = items as u64;
    Ok(task)
}

fn get_task(conn: &Connection, id: TaskId) -> Result<Option<Task>> {
    conn.prepare_cached("SELECT data, log_lines, items FROM tasks WHERE id = ?1")
        .map_err(db)?
        .query_row([id.to_string()], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .optional()
        .map_err(db)?
        .map(|(data, lines, items)| read_task(data, lines, items))
        .transpose()
}

/// The statement that inserts a task; an `ON CONFLICT` clause makes it an upsert.
macro_rules! insert_task_sql {
    () => {
        "INSERT INTO tasks (id, spider_name, status, node, priority, data, parent_id, schedule_id, fire_ms,
                            children, exclusive, ended_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
    };
}

/// The indexed columns of a task row that an update can change.
struct Indexed {
    status: &'static str,
    node: Option<String>,
    priority: u8,
    children: u32,
    ended_ms: Option<i64>,
}

impl Indexed {
    fn of(task: &Task) -> Self {
        Self {
            status: task.status.as_str(),
            node: task.node.clone(),
            priority: task.priority,
            children: task.children,
            ended_ms: ended_ms(task),
        }
    }
}

/// Stores a changed task whose stored row had the indexed columns `before`. A plain update, not an upsert: an
/// upsert first tries the insert against every unique index. Only columns whose values changed are set: SQLite
/// rewrites the entry of every index over a column named in SET, changed or not, and each index page written is
/// a page in the write-ahead log (naming them all wrote about twice the pages of naming what changed).
fn update_row(conn: &Connection, before: &Indexed, task: &Task) -> Result<()> {
    let after = Indexed::of(task);
    let id = task.id.to_string();
    let data = to_json(task);
    let mut sql = String::from("UPDATE tasks SET data = ?2");
    let mut params: Vec<&dyn rusqlite::ToSql> = vec![&id, &data];
    let columns: [(&str, bool, &dyn rusqlite::ToSql); 5] = [
        ("status", before.status != after.status, &after.status),
        ("node", before.node != after.node, &after.node),
        (
            "priority",
            before.priority != after.priority,
            &after.priority,
        ),
        (
            "children",
            before.children != after.children,
            &after.children,
        ),
        (
            "ended_ms",
            before.ended_ms != after.ended_ms,
            &after.ended_ms,
        ),
    ];
    for (column, changed, value) in columns {
        if changed {
            params.push(value);
            sql.push_str(&format!(", {column} = ?{}", params.len()));
        }
    }
    sql.push_str(" WHERE id = ?1");
    conn.prepare_cached(&sql)
        .and_then(|mut stmt| stmt.execute(params.as_slice()))
        .map(drop)
        .map_err(db)
}

/// When a task ended, for the retention sweep; `None` while it has not.
fn ended_ms(task: &Task) -> Option<i64> {
    task.ended_at().map(to_millis)
}

/// An open transaction, rolled back when dropped uncommitted. BEGIN and COMMIT are cached statements:
/// rusqlite's `Transaction` parses them at every call, which cost more than a single-row statement inside.
struct Tx<'c>(&'c Connection);

impl<'c> Tx<'c> {
    fn begin(conn: &'c Connection) -> Result<Self> {
        run_cached(conn, "BEGIN")?;
        Ok(Self(conn))
    }

    fn commit(self) -> Result<()> {
        run_cached(self.0, "COMMIT")?;
        std::mem::forget(self);
        Ok(())
    }
}

impl std::ops::Deref for Tx<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.0
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        // After some errors (a full disk among them) SQLite has already rolled the transaction back itself.
        if self.0.is_autocommit() {
            return;
        }
        if let Err(err) = run_cached(self.0, "ROLLBACK") {
            tracing::error!(error = %err, "cannot roll back a transaction of the embedded store");
        }
    }
}

fn run_cached(conn: &Connection, sql: &str) -> Result<()> {
    conn.prepare_cached(sql)
        .and_then(|mut stmt| stmt.execute([]))
        .map(drop)
        .map_err(db)
}

/// Stores a new task; one whose id is already stored is a duplicate, like a second task for a fire time.
fn insert_task(conn: &Connection, task: &Task) -> Result<()> {
    store_task(conn, insert_task_sql!(), task)
}

fn store_task(conn: &Connection, sql: &str, task: &Task) -> Result<()> {
    let result = conn.prepare_cached(sql).and_then(|mut stmt| {
        stmt.execute(params![
            task.id.to_string(),
            task.spider_name,
            task.status.as_str(),
            task.node,
            task.priority,
            to_json(task),
            task.parent_id.map(|id| id.to_string()),
            task.schedule_id.map(|id| id.to_string()),
            task.fire_time.map(to_millis),
            task.children,
            task.exclusive,
            ended_ms(task),
        ])
    });
    // The primary key is the id; the only other unique index is a schedule's fire time.
    let id_taken = matches!(&result, Err(rusqlite::Error::SqliteFailure(e, _))
        if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY);
    unique(result, || {
        if id_taken {
            format!("task {}", task.id)
        } else {
            format!(
                "a task for schedule {} at {}",
                or_dash(task.schedule_id),
                or_dash(task.fire_time)
            )
        }
    })
}

fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

fn read_tasks(conn: &Connection, sql: &str, args: &[String]) -> Result<Vec<Task>> {
    let mut stmt = conn.prepare_cached(sql).map_err(db)?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(args), |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .map_err(db)?;
    rows.map(|r| {
        let (data, lines, items) = r.map_err(db)?;
        read_task(data, lines, items)
    })
    .collect()
}

/// Inserts one batch of log lines in one transaction. Lines whose `(task_id, seq)` is already stored are
/// skipped, and only the lines actually inserted are counted, so a retried batch changes nothing.
fn append_lines<P: rusqlite::Params>(
    conn: &mut Connection,
    task: &str,
    rows: impl IntoIterator<Item = P>,
) -> Result<()> {
    let tx = Tx::begin(conn)?;
    let mut added = 0i64;
    {
        let mut stmt = tx
            .prepare_cached("INSERT OR IGNORE INTO logs (task_id, seq, stream, at_ms, text) VALUES (?1, ?2, ?3, ?4, ?5)")
            .map_err(db)?;
        for row in rows {
            added += stmt.execute(row).map_err(db)? as i64;
        }
    }
    tx.prepare_cached("UPDATE tasks SET log_lines = log_lines + ?1 WHERE id = ?2")
        .and_then(|mut stmt| stmt.execute(params![added, task]))
        .map_err(db)?;
    tx.commit()
}

/// How an item is inserted: a `(task_id, seq)` already stored is always skipped (a retried batch); a stored
/// de-duplication key is skipped (`ignore`) or taken over by the new item (`overwrite`) if that comes from a
/// later task (task ids order by creation), or later in the same task. So the latest crawl wins whatever
/// order writes arrive in, and a replayed old batch cannot undo a newer item.
fn item_insert(dedup: Option<DedupMode>) -> &'static str {
    match dedup {
        None | Some(DedupMode::Ignore) => {
            "INSERT OR IGNORE INTO items (task_id, seq, data, coll, dkey, at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
        }
        Some(DedupMode::Overwrite) => {
            "INSERT INTO items (task_id, seq, data, coll, dkey, at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (task_id, seq) DO NOTHING
             ON CONFLICT (coll, dkey) WHERE dkey IS NOT NULL
                DO UPDATE SET task_id = excluded.task_id, seq = excluded.seq, data = excluded.data,
                    at_ms = excluded.at_ms
                WHERE (excluded.task_id, excluded.seq) > (items.task_id, items.seq)"
        }
    }
}

fn insert_item_batch(
    conn: &mut Connection,
    target: &ItemTarget,
    items: &[ItemRecord],
) -> Result<()> {
    let Some(last) = items.iter().map(|i| i.seq).max() else {
        return Ok(());
    };
    let task = target.task.to_string();
    let tx = Tx::begin(conn)?;
    {
        let dedup = target.dedup.as_ref();
        let mut stmt = tx
            .prepare_cached(item_insert(dedup.map(|d| d.mode)))
            .map_err(db)?;
        let at = to_millis(chrono::Utc::now());
        for item in items {
            let key = dedup.and_then(|dedup| {
                dedup.key_of(&item.data).unwrap_or_else(|err| {
                    tracing::warn!(task_id = %target.task, seq = item.seq, "{err}");
                    None
                })
            });
            let coll = key.as_ref().map(|_| target.collection.as_str());
            let seq = item.seq as i64;
            stmt.execute(params![task, seq, item.data.get(), coll, key, at])
                .map_err(db)?;
        }
    }
    // The count of items the task produced (sequence numbers have no gaps), whether or not de-duplication kept
    // each one under this task, and unchanged by a retried batch.
    tx.prepare_cached("UPDATE tasks SET items = max(items, ?1) WHERE id = ?2")
        .and_then(|mut stmt| stmt.execute(params![last as i64, task]))
        .map_err(db)?;
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::TaskStore;

    /// A statement that finds the connection busy (a bulk write holds it) waits off the async thread, so the
    /// thread goes on with other work meanwhile: reading workers' heartbeats, say.
    #[test]
    fn a_busy_connection_leaves_the_async_thread_free() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(&dir.path().join("store.db")).unwrap());
        let busy = crate::lock(&store.conn);
        let (ran, ran_beside) = std::sync::mpsc::channel();
        let reader = {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let beside = tokio::spawn(async move { ran.send(()).unwrap() });
                    let found = store.get_task(TaskId::new()).await.unwrap();
                    beside.await.unwrap();
                    found
                })
            })
        };
        let other_work_ran = ran_beside.recv_timeout(std::time::Duration::from_secs(10));
        drop(busy);
        assert!(
            other_work_ran.is_ok(),
            "the async thread was blocked on the busy connection"
        );
        assert_eq!(reader.join().unwrap(), None);
    }
}
