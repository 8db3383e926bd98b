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

use std::collections::HashSet;

use arachne_shared::spider::DedupMode;
use arachne_shared::{
    ItemRecord, ItemTarget, LogLine, LogStream, Node, Schedule, ScheduleId, Spider, Task, TaskId,
    TaskStatus, Token, from_millis, to_millis,
};
use bson::{Bson, Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, Database, IndexModel};

use super::{ActiveScope, Error, Result, Store, TaskChange, TaskFilter};

/// Most log lines kept in one document: a batch from a worker is split into documents of this many lines.
const LINES_PER_DOC: usize = 1000;
/// MongoDB's code for a unique index violation.
const DUPLICATE_KEY: i32 = 11000;
/// How often a task change is retried after losing a race before giving up.
const MAX_CONFLICTS: usize = 64;

fn db(err: mongodb::error::Error) -> Error {
    Error::Database(Box::new(err))
}

/// Whether `err` is a unique-index violation.
pub(crate) fn is_duplicate(err: &mongodb::error::Error) -> bool {
    match err.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(e)) => e.code == DUPLICATE_KEY,
        ErrorKind::Command(e) => e.code == DUPLICATE_KEY,
        ErrorKind::InsertMany(e) => e
            .write_errors
            .as_ref()
            .is_some_and(|errs| errs.iter().any(|e| e.code == DUPLICATE_KEY)),
        _ => false,
    }
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

/// A JSON value as BSON: integers as 64-bit integers, other numbers as doubles.
fn json_to_bson(value: serde_json::Value) -> Bson {
    use serde_json::Value;
    match value {
        Value::Null => Bson::Null,
        Value::Bool(b) => Bson::Boolean(b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Bson::Int64(i),
            None => Bson::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Bson::String(s),
        Value::Array(items) => Bson::Array(items.into_iter().map(json_to_bson).collect()),
        Value::Object(map) => {
            Bson::Document(map.into_iter().map(|(k, v)| (k, json_to_bson(v))).collect())
        }
    }
}

/// BSON as JSON; types JSON lacks (ids, dates, binary) become their relaxed extended-JSON form.
pub(crate) fn bson_to_json(value: Bson) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Bson::Null | Bson::Undefined => Value::Null,
        Bson::Boolean(b) => Value::Bool(b),
        Bson::Int32(i) => Value::from(i),
        Bson::Int64(i) => Value::from(i),
        Bson::Double(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        Bson::String(s) => Value::String(s),
        Bson::Array(items) => Value::Array(items.into_iter().map(bson_to_json).collect()),
        Bson::Document(doc) => doc_to_json(doc),
        other => other.into_relaxed_extjson(),
    }
}

fn doc_to_json(doc: Document) -> serde_json::Value {
    serde_json::Value::Object(doc.into_iter().map(|(k, v)| (k, bson_to_json(v))).collect())
}

/// A domain record as a BSON document.
pub(crate) fn record<T: serde::Serialize>(value: &T) -> Document {
    match json_to_bson(serde_json::to_value(value).expect("domain types serialise")) {
        Bson::Document(doc) => doc,
        _ => unreachable!("domain records serialise to objects"),
    }
}

/// The record kept in a document's `data` field.
fn from_data<T: serde::de::DeserializeOwned>(mut doc: Document) -> Result<T> {
    let data = doc
        .remove("data")
        .ok_or_else(|| Error::Corrupt("a document has no data field".into()))?;
    serde_json::from_value(bson_to_json(data)).map_err(|e| Error::Corrupt(e.to_string()))
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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
            // One task per schedule fire time: only such tasks carry the key.
            index(doc! {"fire_key": 1}, true, true),
        ];
        let logs = [plain(doc! {"task_id": 1, "last": 1})];
        for (coll, models) in [
            (self.spiders(), &spiders[..]),
            (self.schedules(), &schedules[..]),
            (self.tokens(), &tokens[..]),
            (self.tasks(), &tasks[..]),
            (self.logs_coll(), &logs[..]),
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

#[async_trait::async_trait]
impl Store for MongoStore {
    async fn put_spider(&self, spider: &Spider) -> Result<()> {
        let what = format!("spider {:?}", spider.name);
        put_named(
            self.spiders(),
            spider.id.to_string(),
            &spider.name,
            record(spider),
            what,
        )
        .await
    }

    async fn spider_by_name(&self, name: &str) -> Result<Option<Spider>> {
        let found = self
            .spiders()
            .find_one(doc! {"name": name})
            .await
            .map_err(db)?;
        found.map(from_data).transpose()
    }

    async fn list_spiders(&self) -> Result<Vec<Spider>> {
        self.all_records(self.spiders(), doc! {"name": 1}).await
    }

    async fn insert_tasks(&self, tasks: &[Task]) -> Result<()> {
        if tasks.is_empty() {
            return Ok(());
        }
        let docs: Vec<Document> = tasks.iter().map(|t| task_doc(t, 0)).collect();
        match self.tasks().insert_many(docs).ordered(true).await {
            Ok(_) => Ok(()),
            Err(err) => {
                // All or none without a transaction (a standalone server has none): undo the ones before the
                // failure. Ids are fresh, so the ones removed are this call's own.
                let failed_at = match err.kind.as_ref() {
                    ErrorKind::InsertMany(e) => e
                        .write_errors
                        .as_ref()
                        .and_then(|errs| errs.iter().map(|e| e.index).min())
                        .unwrap_or(0),
                    _ => 0,
                };
                let inserted: Vec<String> = tasks[..failed_at]
                    .iter()
                    .map(|t| t.id.to_string())
                    .collect();
                if !inserted.is_empty() {
                    self.tasks()
                        .delete_many(doc! {"_id": {"$in": inserted}})
                        .await
                        .map_err(db)?;
                }
                if !is_duplicate(&err) {
                    return Err(db(err));
                }
                let task = &tasks[failed_at.min(tasks.len() - 1)];
                let existing = self.get_task(task.id).await?;
                Err(Error::Duplicate(
                    match (existing, task.schedule_id, task.fire_time) {
                        (Some(_), ..) => format!("task {}", task.id),
                        (None, Some(schedule), Some(fire)) => {
                            format!("a task for schedule {schedule} at {fire}")
                        }
                        (None, ..) => format!("task {}", task.id),
                    },
                ))
            }
        }
    }

    async fn get_task(&self, id: TaskId) -> Result<Option<Task>> {
        let found = self
            .tasks()
            .find_one(doc! {"_id": id.to_string()})
            .await
            .map_err(db)?;
        found.map(read_task).transpose()
    }

    async fn list_tasks(&self, filter: &TaskFilter) -> Result<(Vec<Task>, u64)> {
        let query = task_filter(filter);
        let total = self
            .tasks()
            .count_documents(query.clone())
            .await
            .map_err(db)?;
        let tasks = self
            .find_tasks(
                query,
                doc! {"_id": -1},
                filter.offset.into(),
                filter.limit.into(),
            )
            .await?;
        Ok((tasks, total))
    }

    async fn count_by_status(&self) -> Result<Vec<(TaskStatus, u64)>> {
        // One count per status rather than a $group: each is answered from the status index alone.
        let mut counts = Vec::with_capacity(TaskStatus::ALL.len());
        for status in TaskStatus::ALL {
            let count = self
                .tasks()
                .count_documents(doc! {"status": status.as_str()})
                .await
                .map_err(db)?;
            counts.push((status, count));
        }
        Ok(counts)
    }

    async fn update_task(
        &self,
        id: TaskId,
        expected: &[TaskStatus],
        mut change: TaskChange,
    ) -> Result<Option<Task>> {
        for _ in 0..MAX_CONFLICTS {
            let Some(doc) = self
                .tasks()
                .find_one(doc! {"_id": id.to_string()})
                .await
                .map_err(db)?
            else {
                return Ok(None);
            };
            let rev = doc.get_i64("rev").unwrap_or(0);
            let mut task = read_task(doc)?;
            let was_ended = task.status.is_terminal();
            if !expected.contains(&task.status) || !change(&mut task) {
                return Ok(None);
            }
            // The counters are left out: log and item appends raise them without a revision, and a change
            // read before such an append must not set them back.
            let mut fields = task_doc(&task, rev + 1);
            for field in ["_id", "log_lines", "items"] {
                fields.remove(field);
            }
            let unset = match fields.contains_key("fire_key") {
                true => doc! {},
                false => doc! {"fire_key": ""},
            };
            let mut update = doc! {"$set": fields};
            if !unset.is_empty() {
                update.insert("$unset", unset);
            }
            let replaced = self
                .tasks()
                .update_one(doc! {"_id": id.to_string(), "rev": rev}, update)
                .await
                .map_err(db)?;
            if replaced.matched_count == 1 {
                if let Some(ended) = ended_at(&task).filter(|_| !was_ended) {
                    // Its logs expire with it (lines that come later get the date as they are stored).
                    self.logs_coll()
                        .update_many(
                            doc! {"task_id": id.to_string()},
                            doc! {"$set": {"ended_at": ended}},
                        )
                        .await
                        .map_err(db)?;
                }
                return Ok(Some(task));
            }
            // Someone else changed the task in between: read it again and decide again.
        }
        Err(Error::Contended(id))
    }

    async fn delete_ended_before(&self, cutoff: chrono::DateTime<chrono::Utc>) -> Result<u64> {
        let before = doc! {"ended_at": {"$lt": bson::DateTime::from_millis(to_millis(cutoff))}};
        let deleted = self.tasks().delete_many(before.clone()).await.map_err(db)?;
        self.logs_coll().delete_many(before).await.map_err(db)?;
        Ok(deleted.deleted_count)
    }

    async fn delete_task(&self, task: &Task) -> Result<bool> {
        let id = task.id.to_string();
        // Records first: if a step fails, the task is still there to delete again, and nothing is orphaned.
        let ended = doc! {"_id": &id, "ended_at": {"$exists": true}};
        if self
            .tasks()
            .count_documents(ended.clone())
            .await
            .map_err(db)?
            == 0
        {
            return Ok(false);
        }
        self.logs_coll()
            .delete_many(doc! {"task_id": &id})
            .await
            .map_err(db)?;
        let items = self.item_collection(&task.item_target().collection).await?;
        items.delete_many(doc! {"_tid": &id}).await.map_err(db)?;
        let deleted = self.tasks().delete_one(ended).await.map_err(db)?;
        lock(&self.results).remove(&task.id);
        Ok(deleted.deleted_count == 1)
    }

    async fn dispatchable(&self, limit: u32, offset: u32) -> Result<Vec<Task>> {
        let filter = doc! {"status": "pending", "node": Bson::Null, "children": 0_i64};
        self.find_tasks(
            filter,
            doc! {"priority": 1, "_id": 1},
            offset.into(),
            limit.into(),
        )
        .await
    }

    async fn count_active(&self, scope: &ActiveScope) -> Result<u64> {
        let (field, value) = match scope {
            ActiveScope::Spider(name) => ("spider_name", name.clone()),
            ActiveScope::Exclusive(key) => ("exclusive", key.clone()),
            ActiveScope::Schedule(id) => ("schedule_id", id.to_string()),
        };
        let filter = doc! {
            field: value,
            "children": 0_i64,
            "$or": [{"status": "running"}, {"status": "pending", "node": {"$ne": Bson::Null}}],
        };
        self.tasks().count_documents(filter).await.map_err(db)
    }

    async fn append_logs(&self, task: TaskId, lines: &[LogLine]) -> Result<()> {
        let Some(last) = lines.iter().map(|l| l.seq).max() else {
            return Ok(());
        };
        // A resent batch has the same documents (named by task and first line), so the insert skips them.
        let docs: Vec<Document> = lines
            .chunks(LINES_PER_DOC)
            .map(|chunk| {
                let first = chunk[0].seq;
                let lines: Vec<Document> = chunk
                    .iter()
                    .map(|l| doc! {"seq": l.seq as i64, "stream": l.stream.as_str(), "at": to_millis(l.at), "text": &l.text})
                    .collect();
                doc! {
                    "_id": format!("{task}:{first}"),
                    "task_id": task.to_string(),
                    "first": first as i64,
                    "last": chunk.iter().map(|l| l.seq).max().unwrap_or(first) as i64,
                    "lines": lines,
                }
            })
            .collect();
        // The counter is a `$max`, so it may move first: a batch whose insert fails is sent again and raises
        // it to the same value. Both at once halve the round trips a batch waits for.
        let inserted = async {
            match self.logs_coll().insert_many(docs).ordered(false).await {
                Ok(_) => Ok(()),
                Err(err) if duplicates_only(&err).is_some() => Ok(()),
                Err(err) => Err(db(err)),
            }
        };
        let counted = async {
            self.tasks()
                .find_one_and_update(
                    doc! {"_id": task.to_string()},
                    doc! {"$max": {"log_lines": last as i64}},
                )
                .projection(doc! {"ended_at": 1})
                .await
                .map_err(db)
        };
        let ((), task_doc) = tokio::try_join!(inserted, counted)?;
        // Lines that arrive after their task ended expire with it too.
        if let Some(ended) = task_doc.and_then(|t| t.get_datetime("ended_at").ok().copied()) {
            self.logs_coll()
                .update_many(
                    doc! {"task_id": task.to_string(), "ended_at": {"$exists": false}},
                    doc! {"$set": {"ended_at": ended}},
                )
                .await
                .map_err(db)?;
        }
        Ok(())
    }

    async fn logs(&self, task: TaskId, after: u64, limit: u32) -> Result<Vec<LogLine>> {
        let mut cursor = self
            .logs_coll()
            .find(doc! {"task_id": task.to_string(), "last": {"$gt": after as i64}})
            .sort(doc! {"first": 1})
            .await
            .map_err(db)?;
        let mut lines = Vec::new();
        let mut seen = HashSet::new();
        while lines.len() < limit as usize && cursor.advance().await.map_err(db)? {
            let doc = cursor.deserialize_current().map_err(db)?;
            let batch = doc
                .get_array("lines")
                .map_err(|e| Error::Corrupt(e.to_string()))?;
            for line in batch {
                let Some(line) = line.as_document() else {
                    return Err(Error::Corrupt("a log line is not a document".into()));
                };
                let corrupt = |e: bson::error::Error| Error::Corrupt(e.to_string());
                let seq = line.get_i64("seq").map_err(corrupt)? as u64;
                if seq <= after || lines.len() >= limit as usize || !seen.insert(seq) {
                    continue;
                }
                let stream = line.get_str("stream").map_err(corrupt)?;
                lines.push(LogLine {
                    seq,
                    stream: LogStream::from_name(stream),
                    at: from_millis(line.get_i64("at").map_err(corrupt)?),
                    text: line.get_str("text").map_err(corrupt)?.to_owned(),
                });
            }
        }
        lines.sort_by_key(|l| l.seq);
        Ok(lines)
    }

    async fn insert_items(&self, target: &ItemTarget, items: &[ItemRecord]) -> Result<()> {
        let Some(last) = items.iter().map(|i| i.seq).max() else {
            return Ok(());
        };
        let collection = self.item_collection(&target.collection).await?;
        let (tid, sid) = (target.task.to_string(), target.spider_id.to_string());
        let mut docs = Vec::with_capacity(items.len());
        for item in items {
            // Straight from the text into an ordered document: the item's fields keep the spider's order. An
            // item nested deeper than a MongoDB document may be is kept as its text instead, so it is not lost
            // (and a batch holding it is not refused for ever).
            let mut doc = match serde_json::from_str::<Document>(item.data.get()) {
                Ok(doc) if depth(&doc) <= MAX_ITEM_DEPTH => doc,
                _ => {
                    tracing::warn!(task_id = %target.task, seq = item.seq, "an item nested deeper than MongoDB takes is kept as its JSON text");
                    doc! {RAW_ITEM: item.data.get()}
                }
            };
            doc.insert("_tid", tid.clone());
            doc.insert("_sid", sid.clone());
            doc.insert("_seq", item.seq as i64);
            let key = target.dedup.as_ref().map(|d| d.key_of(&item.data));
            match key {
                Some(Ok(Some(key))) => {
                    doc.insert(DEDUP_KEY, key);
                }
                Some(Err(err)) => tracing::warn!(task_id = %target.task, seq = item.seq, "{err}"),
                None | Some(Ok(None)) => {}
            }
            docs.push(doc);
        }
        // Unordered, so a duplicate (a retried item, or a key already stored) does not stop the rest.
        let inserted = async {
            match collection.insert_many(&docs).ordered(false).await {
                Ok(_) => Ok(Vec::new()),
                Err(err) => duplicates_only(&err).ok_or_else(|| db(err)),
            }
        };
        // A `$max`, as for log lines: raised beside the insert, and to the same value by a resent batch.
        let (duplicates, ()) =
            tokio::try_join!(inserted, self.raise_counter(target.task, "items", last))?;
        if target.dedup.as_ref().map(|d| d.mode) == Some(DedupMode::Overwrite) {
            for index in duplicates {
                let doc = &docs[index];
                let Ok(key) = doc.get_str(DEDUP_KEY) else {
                    continue;
                };
                // Only an item from an earlier task (ids order by creation), or from earlier in this one, is
                // replaced: the latest crawl wins in any arrival order, and a retried batch changes nothing.
                let seq = doc.get("_seq");
                let filter = doc! {DEDUP_KEY: key, "$or": [
                    {"_tid": {"$lt": &tid}},
                    {"_tid": &tid, "_seq": {"$lt": seq}},
                ]};
                collection.replace_one(filter, doc).await.map_err(db)?;
            }
        }
        Ok(())
    }

    async fn items(&self, task: TaskId, after: u64, limit: u32) -> Result<Vec<ItemRecord>> {
        let Some(collection) = self.results_of(task).await? else {
            return Ok(Vec::new());
        };
        let mut cursor = collection
            .find(doc! {"_tid": task.to_string(), "_seq": {"$gt": after as i64}})
            .sort(doc! {"_seq": 1})
            .limit(i64::from(limit))
            .await
            .map_err(db)?;
        let mut items = Vec::new();
        while cursor.advance().await.map_err(db)? {
            let mut doc = cursor.deserialize_current().map_err(db)?;
            let seq = doc
                .remove("_seq")
                .and_then(|s| s.as_i64())
                .ok_or_else(|| Error::Corrupt("an item has no _seq".into()))?
                as u64;
            for field in ["_id", "_tid", "_sid", DEDUP_KEY] {
                doc.remove(field);
            }
            let text = match doc.remove(RAW_ITEM) {
                Some(Bson::String(text)) => text,
                _ => serde_json::to_string(&doc).map_err(|e| Error::Corrupt(e.to_string()))?,
            };
            let data = serde_json::value::RawValue::from_string(text)
                .map_err(|e| Error::Corrupt(e.to_string()))?;
            items.push(ItemRecord { seq, data });
        }
        Ok(items)
    }

    async fn put_node(&self, node: &Node) -> Result<()> {
        let doc = doc! {"_id": &node.name, "data": record(node)};
        self.nodes()
            .replace_one(doc! {"_id": &node.name}, doc)
            .upsert(true)
            .await
            .map(drop)
            .map_err(db)
    }

    async fn list_nodes(&self) -> Result<Vec<Node>> {
        self.all_records(self.nodes(), doc! {"_id": 1}).await
    }

    async fn put_schedule(&self, schedule: &Schedule) -> Result<()> {
        let what = format!("schedule {:?}", schedule.name);
        put_named(
            self.schedules(),
            schedule.id.to_string(),
            &schedule.name,
            record(schedule),
            what,
        )
        .await
    }

    async fn get_schedule(&self, id: ScheduleId) -> Result<Option<Schedule>> {
        let found = self
            .schedules()
            .find_one(doc! {"_id": id.to_string()})
            .await
            .map_err(db)?;
        found.map(from_data).transpose()
    }

    async fn list_schedules(&self) -> Result<Vec<Schedule>> {
        self.all_records(self.schedules(), doc! {"name": 1}).await
    }

    async fn delete_schedule(&self, id: ScheduleId) -> Result<bool> {
        let deleted = self
            .schedules()
            .delete_one(doc! {"_id": id.to_string()})
            .await
            .map_err(db)?;
        Ok(deleted.deleted_count > 0)
    }

    async fn insert_token(&self, token: &Token) -> Result<()> {
        let doc = doc! {"_id": &token.name, "hash": &token.hash, "data": record(token)};
        match self.tokens().insert_one(doc).await {
            Err(err) if is_duplicate(&err) => {
                Err(Error::Duplicate(format!("token {:?}", token.name)))
            }
            other => other.map(drop).map_err(db),
        }
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<Token>> {
        let found = self
            .tokens()
            .find_one(doc! {"hash": hash})
            .await
            .map_err(db)?;
        found.map(from_data).transpose()
    }

    async fn list_tokens(&self) -> Result<Vec<Token>> {
        self.all_records(self.tokens(), doc! {"_id": 1}).await
    }

    async fn delete_token(&self, name: &str) -> Result<bool> {
        let deleted = self
            .tokens()
            .delete_one(doc! {"_id": name})
            .await
            .map_err(db)?;
        Ok(deleted.deleted_count > 0)
    }
}
