//! The MongoDB store's tasks: insertion, conditional updates, listing, dispatch order, retention.

use super::*;
use crate::store::TaskStore;
use arachne_shared::stats::{HourStats, RUN_TIME_BOUNDS_MS};

impl MongoStore {
    fn run_stats_coll(&self) -> Collection<Document> {
        self.db.collection("run_stats")
    }

    /// Adds a run that just ended to its hour's roll-up. It follows the end's write: a master killed in
    /// between leaves that one run out of the figures, never the task's record wrong.
    async fn add_run_stats(&self, ended: &HourStats) -> Result<()> {
        let hour = to_millis(ended.hour);
        let mut inc = doc! {
            "finished": ended.finished as i64,
            "error": ended.error as i64,
            "cancelled": ended.cancelled as i64,
            "abnormal": ended.abnormal as i64,
            "items": ended.items as i64,
        };
        for (bucket, count) in ended.run_times.iter().enumerate().filter(|(_, c)| **c > 0) {
            inc.insert(format!("rt.{bucket}"), *count as i64);
        }
        self.run_stats_coll()
            .update_one(
                doc! {"_id": format!("{hour}|{}", ended.spider)},
                doc! {
                    "$inc": inc,
                    "$setOnInsert": {"hour": bson::DateTime::from_millis(hour), "spider": &ended.spider},
                },
            )
            .upsert(true)
            .await
            .map(drop)
            .map_err(db)
    }
}

fn read_run_stats(doc: &Document) -> Result<HourStats> {
    let corrupt = |e: bson::error::Error| Error::Corrupt(format!("run statistics: {e}"));
    let count = |field: &str| doc.get_i64(field).map(|n| n as u64).unwrap_or(0);
    let mut run_times = vec![0; RUN_TIME_BOUNDS_MS.len() + 1];
    if let Ok(buckets) = doc.get_document("rt") {
        for (bucket, count) in buckets {
            if let (Ok(bucket), Some(count)) = (bucket.parse::<usize>(), count.as_i64())
                && let Some(slot) = run_times.get_mut(bucket)
            {
                *slot = count as u64;
            }
        }
    }
    Ok(HourStats {
        hour: from_millis(
            doc.get_datetime("hour")
                .map_err(corrupt)?
                .timestamp_millis(),
        ),
        spider: doc.get_str("spider").map_err(corrupt)?.to_owned(),
        finished: count("finished"),
        error: count("error"),
        cancelled: count("cancelled"),
        abnormal: count("abnormal"),
        items: count("items"),
        run_times,
    })
}

#[async_trait::async_trait]
impl TaskStore for MongoStore {
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
                if let Some(ended) = HourStats::of_ended(&task).filter(|_| !was_ended) {
                    self.add_run_stats(&ended).await?;
                }
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

    async fn ended_since(
        &self,
        since: chrono::DateTime<chrono::Utc>,
        after: Option<TaskId>,
        limit: u32,
    ) -> Result<Vec<Task>> {
        let since = bson::DateTime::from_millis(to_millis(since));
        let after = after.map(|id| id.to_string()).unwrap_or_default();
        let filter = doc! {"$or": [
            {"ended_at": {"$gt": since}},
            {"ended_at": since, "_id": {"$gt": after}},
        ]};
        self.find_tasks(filter, doc! {"ended_at": 1, "_id": 1}, 0, limit.into())
            .await
    }

    async fn run_stats(
        &self,
        since: chrono::DateTime<chrono::Utc>,
        spider: Option<&str>,
    ) -> Result<Vec<HourStats>> {
        let mut filter = doc! {"hour": {"$gte": bson::DateTime::from_millis(to_millis(since))}};
        if let Some(spider) = spider {
            filter.insert("spider", spider);
        }
        let mut cursor = self
            .run_stats_coll()
            .find(filter)
            .sort(doc! {"hour": 1, "spider": 1})
            .await
            .map_err(db)?;
        let mut rows = Vec::new();
        while cursor.advance().await.map_err(db)? {
            let doc: Document = cursor.deserialize_current().map_err(db)?;
            rows.push(read_run_stats(&doc)?);
        }
        Ok(rows)
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

    async fn child_totals(&self, parents: &[TaskId]) -> Result<Vec<ChildTotals>> {
        if parents.is_empty() {
            return Ok(Vec::new());
        }
        let parents: Vec<String> = parents.iter().map(TaskId::to_string).collect();
        let pipeline = [
            doc! {"$match": {"parent_id": {"$in": parents}}},
            doc! {"$group": {
                "_id": "$parent_id",
                "items": {"$sum": "$items"},
                "log_lines": {"$sum": "$log_lines"},
            }},
        ];
        let mut cursor = self.tasks().aggregate(pipeline).await.map_err(db)?;
        let mut totals = Vec::new();
        while cursor.advance().await.map_err(db)? {
            let doc = cursor.deserialize_current().map_err(db)?;
            let corrupt = |e: bson::error::Error| Error::Corrupt(e.to_string());
            let count = |field: &str| -> Result<u64> {
                let n = match doc.get(field) {
                    Some(Bson::Int32(n)) => i64::from(*n),
                    Some(Bson::Int64(n)) => *n,
                    _ => return Err(Error::Corrupt(format!("a sum of {field} is not a number"))),
                };
                Ok(n.max(0) as u64)
            };
            let parent = doc.get_str("_id").map_err(corrupt)?;
            totals.push(ChildTotals {
                parent: crate::store::parse_stored_id(parent)?,
                items: count("items")?,
                log_lines: count("log_lines")?,
            });
        }
        Ok(totals)
    }
}
