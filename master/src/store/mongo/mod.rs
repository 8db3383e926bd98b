//! The MongoDB store, for production: the same [`Store`] contract as the embedded one, on the official driver.
//!
//! Collections: `spiders`, `tasks`, `task_logs` (log lines in batches, many per document), `results_<spider>`
//! (one document per item, tagged `_tid` and `_sid` as Crawlab does, so its data tooling reads them), `nodes`,
//! `schedules`, `tokens` (hashes only). Fields that queries filter or sort on are top-level; the full record
//! sits beside them in `data`. Every index a query needs is created at start-up.
//!
//! Task changes are conditional replaces on a revision number (`rev`): a writer that lost a race re-reads and
//! re-checks, so two masters, or a master and a late worker message, can never both apply a change to one task.
//! Nothing here needs a replica set: no transaction, no change stream.

mod catalog;
mod notify;
mod output;
mod tasks;
mod tokens;

use crate::store::TaskStore;
use std::collections::HashSet;

use arachne_shared::spider::DedupMode;
use arachne_shared::{
    AuditEntry, AuditId, ItemRecord, ItemTarget, LogLine, LogStream, Node, Schedule, ScheduleId,
    Spider, SpiderId, Task, TaskId, TaskStatus, Token, User, from_millis, to_millis,
};
use bson::{Bson, Document, doc};
use mongodb::error::ErrorKind;
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, Database, IndexModel};

use super::{ActiveScope, ChildTotals, Error, Result, TaskChange, TaskFilter};
use crate::lock;
use crate::mongo_docs::{DUPLICATE_KEY, bson_to_json, is_duplicate, record};

/// Most log lines kept in one document: a batch from a worker is split into documents of this many lines.
const LINES_PER_DOC: usize = 1000;
/// How often a task change is retried after losing a race before giving up.
const MAX_CONFLICTS: usize = 64;

fn db(err: mongodb::error::Error) -> Error {
    Error::Database(Box::new(err))
}

/// For an unordered insert that failed only on duplicates: the positions of the documents that were.
fn duplicates_only(err: &mongodb::error::Error) -> Option<Vec<usize>> {
    match err.kind.as_ref() {
        ErrorKind::InsertMany(e) if e.write_concern_error.is_none() => {
            let errs = e.write_errors.as_ref()?;
            errs.iter()
                .all(|e| e.code == DUPLICATE_KEY)
                .then(|| errs.iter().map(|e| e.index).collect())
        }
        _ => None,
    }
}

/// The record kept in a document's `data` field.
fn from_data<T: serde::de::DeserializeOwned>(mut doc: Document) -> Result<T> {
    let data = doc
        .remove("data")
        .ok_or_else(|| Error::Corrupt("a document has no data field".into()))?;
    serde_json::from_value(bson_to_json(data)).map_err(|e| Error::Corrupt(e.to_string()))
}

fn opt<T: ToString>(value: Option<T>) -> Bson {
    value.map_or(Bson::Null, |v| Bson::String(v.to_string()))
}

/// The MongoDB store.
pub struct MongoStore {
    db: Database,
    retention: Option<std::time::Duration>,
    /// Which collection holds each recent task's items: looked up once per task, not once per read.
    results: std::sync::Mutex<std::collections::HashMap<TaskId, String>>,
    /// Item collections whose index is known to exist.
    indexed: std::sync::Mutex<HashSet<String>>,
}

/// The field holding an item's de-duplication key, in spiders that de-duplicate.
const DEDUP_KEY: &str = "_dk";
/// An item kept as its JSON text, because it is nested deeper than a MongoDB document may be.
const RAW_ITEM: &str = "_raw";
/// The deepest item stored as a document; MongoDB refuses documents nested more than 100 levels, and an item
/// sits one level down with the platform's own fields.
const MAX_ITEM_DEPTH: usize = 90;

/// How deeply `doc` nests documents and arrays (1 for a flat one).
fn depth(doc: &Document) -> usize {
    fn of(value: &Bson) -> usize {
        match value {
            Bson::Document(doc) => depth(doc),
            Bson::Array(items) => 1 + items.iter().map(of).max().unwrap_or(0),
            _ => 0,
        }
    }
    1 + doc.values().map(of).max().unwrap_or(0)
}

/// Tasks whose item destination is remembered; past this the memory starts over.
const RESULTS_REMEMBERED: usize = 1024;

/// Name of the TTL indexes that expire ended tasks and their logs.
const RETENTION_INDEX: &str = "retention";
/// MongoDB's code for an index that exists with other options.
const INDEX_OPTIONS_CONFLICT: i32 = 85;

impl MongoStore {
    /// Connects to `uri` and makes sure every index exists. The database is `database` if given, else the
    /// one the URI names, else `arachne`. With `retention`, ended tasks and their logs expire that long after
    /// they ended (a TTL index, so the server removes them even while no master runs).
    pub async fn connect(
        uri: &str,
        database: Option<&str>,
        retention: Option<std::time::Duration>,
    ) -> Result<Self> {
        let mut options = ClientOptions::parse(uri).await.map_err(db)?;
        // A batch of logs or items is acknowledged to its worker, which then forgets it, once the store has
        // acknowledged it: so the store must acknowledge only what is on disk (journaled), or a database that
        // crashes right after loses lines nobody holds any more. A URI that names its own write concern wins.
        if options.write_concern.is_none() {
            options.write_concern = Some(
                mongodb::options::WriteConcern::builder()
                    .journal(true)
                    .build(),
            );
        }
        let name = (database.map(str::to_owned))
            .or_else(|| options.default_database.clone())
            .unwrap_or_else(|| "arachne".into());
        let client = Client::with_options(options).map_err(db)?;
        let store = Self {
            db: client.database(&name),
            retention,
            results: Default::default(),
            indexed: Default::default(),
        };
        store.create_indexes().await?;
        Ok(store)
    }

    /// The database, for what lives beside the store (spider files).
    pub fn database(&self) -> &Database {
        &self.db
    }

    fn spiders(&self) -> Collection<Document> {
        self.db.collection("spiders")
    }
    fn tasks(&self) -> Collection<Document> {
        self.db.collection("tasks")
    }
    fn logs_coll(&self) -> Collection<Document> {
        self.db.collection("task_logs")
    }
    fn nodes(&self) -> Collection<Document> {
        self.db.collection("nodes")
    }
    fn schedules(&self) -> Collection<Document> {
        self.db.collection("schedules")
    }
    fn tokens(&self) -> Collection<Document> {
        self.db.collection("tokens")
    }
    fn users(&self) -> Collection<Document> {
        self.db.collection("users")
    }
    fn audit(&self) -> Collection<Document> {
        self.db.collection("audit")
    }
    fn notifications(&self) -> Collection<Document> {
        self.db.collection("notifications")
    }
    fn deliveries(&self) -> Collection<Document> {
        self.db.collection("deliveries")
    }

    async fn create_indexes(&self) -> Result<()> {
        let index = |keys: Document, unique: bool, sparse: bool| {
            IndexModel::builder()
                .keys(keys)
                .options(
                    IndexOptions::builder()
                        .unique(unique)
                        .sparse(sparse)
                        .build(),
                )
                .build()
        };
        let plain = |keys: Document| index(keys, false, false);
        let spiders = [index(doc! {"name": 1}, true, false)];
        let schedules = [index(doc! {"name": 1}, true, false)];
        let tokens = [index(doc! {"hash": 1}, true, false)];
        let tasks = [
            // Dispatch: pending, not handed out, not a parent; by priority then age.
            plain(doc! {"status": 1, "node": 1, "children": 1, "priority": 1, "_id": 1}),
            plain(doc! {"status": 1, "_id": -1}),
            plain(doc! {"spider_name": 1, "_id": -1}),
            plain(doc! {"spider_name": 1, "status": 1, "_id": -1}),
            plain(doc! {"node": 1, "_id": -1}),
            plain(doc! {"parent_id": 1, "_id": -1}),
            plain(doc! {"schedule_id": 1, "_id": -1}),
            plain(doc! {"exclusive": 1, "status": 1}),
            // Tasks in the order they ended (the notifier's catch-up); not the retention index's key.
            plain(doc! {"ended_at": 1, "_id": 1}),
            // One task per schedule fire time: only such tasks carry the key.
            index(doc! {"fire_key": 1}, true, true),
        ];
        let logs = [plain(doc! {"task_id": 1, "last": 1})];
        let deliveries = [
            index(doc! {"key": 1}, true, false),
            plain(doc! {"status": 1, "next_at": 1}),
            plain(doc! {"notification": 1, "_id": -1}),
        ];
        for (coll, models) in [
            (self.spiders(), &spiders[..]),
            (self.schedules(), &schedules[..]),
            (self.tokens(), &tokens[..]),
            (self.tasks(), &tasks[..]),
            (self.logs_coll(), &logs[..]),
            (self.deliveries(), &deliveries[..]),
            (self.audit(), &[plain(doc! {"actor": 1, "_id": -1})][..]),
            (
                self.db.collection("run_stats"),
                &[plain(doc! {"hour": 1, "spider": 1})][..],
            ),
        ] {
            coll.create_indexes(models.to_vec()).await.map_err(db)?;
        }
        for coll in [self.tasks(), self.logs_coll()] {
            self.retention_index(coll).await?;
        }
        Ok(())
    }

    /// The TTL index for the configured retention, replacing one made for another retention.
    async fn retention_index(&self, coll: Collection<Document>) -> Result<()> {
        let Some(retention) = self.retention else {
            // Kept forever: an index left from an earlier setting would still expire them.
            let _ = coll.drop_index(RETENTION_INDEX).await;
            return Ok(());
        };
        let model = IndexModel::builder()
            .keys(doc! {"ended_at": 1})
            .options(
                IndexOptions::builder()
                    .name(RETENTION_INDEX.to_owned())
                    .expire_after(retention)
                    .build(),
            )
            .build();
        match coll.create_index(model.clone()).await {
            Err(err) if matches!(err.kind.as_ref(), ErrorKind::Command(e) if e.code == INDEX_OPTIONS_CONFLICT) =>
            {
                coll.drop_index(RETENTION_INDEX).await.map_err(db)?;
                coll.create_index(model).await.map(drop).map_err(db)
            }
            other => other.map(drop).map_err(db),
        }
    }

    /// The collection holding `task`'s items.
    /// The collection a task's items are in; `None` for a task the store does not hold (never made, or
    /// deleted), which has no items.
    async fn results_of(&self, task: TaskId) -> Result<Option<Collection<Document>>> {
        let known = lock(&self.results).get(&task).cloned();
        let name = match known {
            Some(name) => name,
            None => {
                let Some(stored) = self.get_task(task).await? else {
                    return Ok(None);
                };
                let name = stored.item_target().collection;
                let mut results = lock(&self.results);
                if results.len() >= RESULTS_REMEMBERED {
                    results.clear();
                }
                results.insert(task, name.clone());
                name
            }
        };
        self.item_collection(&name).await.map(Some)
    }

    /// An item collection, with its indexes made sure of once per store.
    async fn item_collection(&self, name: &str) -> Result<Collection<Document>> {
        let collection = self.db.collection(name);
        if !lock(&self.indexed).contains(name) {
            ensure_item_indexes(&collection).await?;
            lock(&self.indexed).insert(name.to_owned());
        }
        Ok(collection)
    }

    /// Raises a task's counter to `seq` (sequence numbers count from 1 without gaps, so the highest stored is
    /// the count); a retried batch leaves it as it was.
    async fn raise_counter(&self, task: TaskId, field: &str, seq: u64) -> Result<()> {
        self.tasks()
            .update_one(
                doc! {"_id": task.to_string()},
                doc! {"$max": {field: seq as i64}},
            )
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn find_tasks(
        &self,
        filter: Document,
        sort: Document,
        skip: u64,
        limit: i64,
    ) -> Result<Vec<Task>> {
        let mut cursor = self
            .tasks()
            .find(filter)
            .sort(sort)
            .skip(skip)
            .limit(limit)
            .await
            .map_err(db)?;
        let mut tasks = Vec::new();
        while cursor.advance().await.map_err(db)? {
            tasks.push(read_task(cursor.deserialize_current().map_err(db)?)?);
        }
        Ok(tasks)
    }

    async fn all_records<T: serde::de::DeserializeOwned>(
        &self,
        coll: Collection<Document>,
        sort: Document,
    ) -> Result<Vec<T>> {
        let mut cursor = coll.find(doc! {}).sort(sort).await.map_err(db)?;
        let mut records = Vec::new();
        while cursor.advance().await.map_err(db)? {
            records.push(from_data(cursor.deserialize_current().map_err(db)?)?);
        }
        Ok(records)
    }
}

/// Items are read by task in sequence order, a retried batch must not store an item twice, and a
/// de-duplication key is stored once (items without one are not in that index).
async fn ensure_item_indexes(coll: &Collection<Document>) -> Result<()> {
    let by_task = IndexModel::builder()
        .keys(doc! {"_tid": 1, "_seq": 1})
        .options(IndexOptions::builder().unique(true).build())
        .build();
    let by_key = IndexModel::builder()
        .keys(doc! {DEDUP_KEY: 1})
        .options(
            IndexOptions::builder()
                .unique(true)
                .partial_filter_expression(doc! {DEDUP_KEY: {"$exists": true}})
                .build(),
        )
        .build();
    coll.create_indexes([by_task, by_key]).await.map_err(db)?;
    Ok(())
}

fn task_doc(task: &Task, rev: i64) -> Document {
    let fire_key = match (task.schedule_id, task.fire_time, task.parent_id) {
        (Some(schedule), Some(fire), None) => {
            Bson::String(format!("{schedule}@{}", to_millis(fire)))
        }
        _ => Bson::Null,
    };
    let mut doc = doc! {
        "_id": task.id.to_string(),
        "rev": rev,
        "spider_name": &task.spider_name,
        "status": task.status.as_str(),
        "node": task.node.clone().map_or(Bson::Null, Bson::String),
        "priority": i32::from(task.priority),
        "parent_id": opt(task.parent_id),
        "schedule_id": opt(task.schedule_id),
        "children": task.children as i64,
        "exclusive": task.exclusive.clone().map_or(Bson::Null, Bson::String),
        "log_lines": task.log_lines as i64,
        "items": task.items as i64,
        "data": record(task),
    };
    // Absent, not null: the unique index skips only documents without the field.
    if let Bson::String(key) = fire_key {
        doc.insert("fire_key", key);
    }
    if let Some(ended) = ended_at(task) {
        doc.insert("ended_at", ended);
    }
    doc
}

/// When a task ended, as the date its TTL index reads; `None` while it has not.
fn ended_at(task: &Task) -> Option<bson::DateTime> {
    task.ended_at()
        .map(|ended| bson::DateTime::from_millis(to_millis(ended)))
}

fn read_task(doc: Document) -> Result<Task> {
    let counter = |field: &str| doc.get_i64(field).unwrap_or(0).max(0) as u64;
    let (log_lines, items) = (counter("log_lines"), counter("items"));
    let mut task: Task = from_data(doc)?;
    task.log_lines = log_lines;
    task.items = items;
    Ok(task)
}

fn task_filter(filter: &TaskFilter) -> Document {
    let mut query = Document::new();
    if let Some(spider) = &filter.spider_name {
        query.insert("spider_name", spider);
    }
    if let Some(status) = filter.status {
        query.insert("status", status.as_str());
    }
    if let Some(node) = &filter.node {
        query.insert("node", node);
    }
    if let Some(parent) = filter.parent_id {
        query.insert("parent_id", parent.to_string());
    }
    if let Some(schedule) = filter.schedule_id {
        query.insert("schedule_id", schedule.to_string());
    }
    let (since, until) = filter.id_range();
    let mut range = Document::new();
    if let Some(since) = since {
        range.insert("$gte", since.to_string());
    }
    if let Some(until) = until {
        range.insert("$lt", until.to_string());
    }
    if !range.is_empty() {
        query.insert("_id", range);
    }
    query
}

/// Replaces a keyed record, reporting a clash on its unique name as a `Duplicate` of `what`.
async fn put_named(
    coll: Collection<Document>,
    id: String,
    name: &str,
    data: Document,
    what: String,
) -> Result<()> {
    let doc = doc! {"_id": &id, "name": name, "data": data};
    match coll.replace_one(doc! {"_id": &id}, doc).upsert(true).await {
        Err(err) if is_duplicate(&err) => Err(Error::Duplicate(what)),
        other => other.map(drop).map_err(db),
    }
}
