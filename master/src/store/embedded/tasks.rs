//! The embedded store's tasks: insertion, conditional updates, listing, dispatch order, retention.

use super::*;
use crate::store::TaskStore;
use arachne_shared::stats::HourStats;

/// Adds a run that just ended to its hour's roll-up, in the transaction that writes its end.
fn add_run_stats(conn: &Connection, ended: &HourStats) -> Result<()> {
    let key = (to_millis(ended.hour), ended.spider.clone());
    let stored: Option<String> = conn
        .prepare_cached("SELECT data FROM run_stats WHERE hour_ms = ?1 AND spider = ?2")
        .map_err(db)?
        .query_row(params![key.0, key.1], |row| row.get(0))
        .optional()
        .map_err(db)?;
    let mut stats: HourStats = match stored {
        Some(data) => from_json(&data)?,
        None => HourStats {
            hour: ended.hour,
            spider: ended.spider.clone(),
            ..HourStats::default()
        },
    };
    stats.add(ended);
    conn.prepare_cached(
        "INSERT INTO run_stats (hour_ms, spider, data) VALUES (?1, ?2, ?3)
         ON CONFLICT (hour_ms, spider) DO UPDATE SET data = ?3",
    )
    .and_then(|mut stmt| stmt.execute(params![key.0, key.1, to_json(&stats)]))
    .map(drop)
    .map_err(db)
}

#[async_trait::async_trait]
impl TaskStore for EmbeddedStore {
    async fn insert_tasks(&self, tasks: &[Task]) -> Result<()> {
        let tasks = tasks.to_vec();
        self.quick(move |conn| {
            let tx = Tx::begin(conn)?;
            for task in &tasks {
                insert_task(&tx, task)?;
            }
            tx.commit()
        })
        .await
    }

    async fn get_task(&self, id: TaskId) -> Result<Option<Task>> {
        self.quick(move |conn| get_task(conn, id)).await
    }

    async fn list_tasks(&self, filter: &TaskFilter) -> Result<(Vec<Task>, u64)> {
        let filter = filter.clone();
        self.call(move |conn| {
            let mut clauses = Vec::new();
            let mut args: Vec<String> = Vec::new();
            let (since, until) = filter.id_range();
            for (column, value) in [
                ("spider_name", filter.spider_name),
                ("status", filter.status.map(|s| s.as_str().to_owned())),
                ("node", filter.node),
                ("parent_id", filter.parent_id.map(|id| id.to_string())),
                ("schedule_id", filter.schedule_id.map(|id| id.to_string())),
            ] {
                if let Some(value) = value {
                    args.push(value);
                    clauses.push(format!("{column} = ?{}", args.len()));
                }
            }
            for (op, bound) in [(">=", since), ("<", until)] {
                if let Some(bound) = bound {
                    args.push(bound.to_string());
                    clauses.push(format!("id {op} ?{}", args.len()));
                }
            }
            let filter_sql = if clauses.is_empty() { String::new() } else { format!("WHERE {}", clauses.join(" AND ")) };
            let total: i64 = conn
                .query_row(&format!("SELECT COUNT(*) FROM tasks {filter_sql}"), rusqlite::params_from_iter(&args), |r| {
                    r.get(0)
                })
                .map_err(db)?;
            let sql = format!(
                "SELECT data, log_lines, items FROM tasks {filter_sql} ORDER BY id DESC LIMIT {} OFFSET {}",
                filter.limit, filter.offset
            );
            let tasks = read_tasks(conn, &sql, &args)?;
            Ok((tasks, total as u64))
        })
        .await
    }

    async fn count_by_status(&self) -> Result<Vec<(TaskStatus, u64)>> {
        let counted: Vec<(String, i64)> = self
            .call(|conn| {
                let mut stmt = conn
                    .prepare_cached("SELECT status, COUNT(*) FROM tasks GROUP BY status")
                    .map_err(db)?;
                let rows = stmt
                    .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
                    .map_err(db)?;
                rows.collect::<Result<_, _>>().map_err(db)
            })
            .await?;
        Ok(TaskStatus::ALL
            .iter()
            .map(|status| {
                let count = counted
                    .iter()
                    .find(|(s, _)| s == status.as_str())
                    .map_or(0, |(_, n)| *n);
                (*status, count as u64)
            })
            .collect())
    }

    async fn update_task(
        &self,
        id: TaskId,
        expected: &[TaskStatus],
        mut change: TaskChange,
    ) -> Result<Option<Task>> {
        let expected = expected.to_vec();
        self.quick(move |conn| {
            let tx = Tx::begin(conn)?;
            let Some(mut task) = get_task(&tx, id)? else {
                return Ok(None);
            };
            if !expected.contains(&task.status) {
                return Ok(None);
            }
            let before = Indexed::of(&task);
            let was_ended = task.status.is_terminal();
            if !change(&mut task) {
                return Ok(None);
            }
            update_row(&tx, &before, &task)?;
            if !was_ended && let Some(ended) = HourStats::of_ended(&task) {
                add_run_stats(&tx, &ended)?;
            }
            tx.commit()?;
            Ok(Some(task))
        })
        .await
    }

    async fn ended_since(
        &self,
        since: chrono::DateTime<chrono::Utc>,
        after: Option<TaskId>,
        limit: u32,
    ) -> Result<Vec<Task>> {
        let args = vec![
            to_millis(since).to_string(),
            after.map(|id| id.to_string()).unwrap_or_default(),
            limit.to_string(),
        ];
        self.call(move |conn| {
            read_tasks(
                conn,
                "SELECT data, log_lines, items FROM tasks
                 WHERE ended_ms > ?1 OR (ended_ms = ?1 AND id > ?2)
                 ORDER BY ended_ms, id LIMIT ?3",
                &args,
            )
        })
        .await
    }

    async fn run_stats(
        &self,
        since: chrono::DateTime<chrono::Utc>,
        spider: Option<&str>,
    ) -> Result<Vec<HourStats>> {
        let (since, spider) = (to_millis(since), spider.map(str::to_owned));
        self.call(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT data FROM run_stats WHERE hour_ms >= ?1 AND (?2 IS NULL OR spider = ?2)
                     ORDER BY hour_ms, spider",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map(params![since, spider], |row| row.get::<_, String>(0))
                .map_err(db)?;
            rows.map(|r| from_json(&r.map_err(db)?)).collect()
        })
        .await
    }

    async fn delete_ended_before(&self, cutoff: chrono::DateTime<chrono::Utc>) -> Result<u64> {
        let cutoff = to_millis(cutoff);
        let mut deleted = 0;
        // In batches, so a first sweep over years of tasks does not hold the writer for long.
        loop {
            let batch = self
                .call(move |conn| {
                    let tx = Tx::begin(conn)?;
                    let ids: Vec<String> = {
                        let mut stmt = tx
                            .prepare_cached("SELECT id FROM tasks WHERE ended_ms < ?1 LIMIT 500")
                            .map_err(db)?;
                        let rows = stmt.query_map([cutoff], |row| row.get(0)).map_err(db)?;
                        rows.collect::<Result<_, _>>().map_err(db)?
                    };
                    for id in &ids {
                        for sql in [
                            "DELETE FROM logs WHERE task_id = ?1",
                            "DELETE FROM tasks WHERE id = ?1",
                        ] {
                            tx.prepare_cached(sql)
                                .and_then(|mut stmt| stmt.execute([id]))
                                .map_err(db)?;
                        }
                    }
                    tx.commit()?;
                    Ok(ids.len() as u64)
                })
                .await?;
            deleted += batch;
            if batch < 500 {
                return Ok(deleted);
            }
        }
    }

    async fn delete_task(&self, task: &Task) -> Result<bool> {
        let id = task.id.to_string();
        self.call(move |conn| {
            let tx = Tx::begin(conn)?;
            let removed = tx
                .prepare_cached("DELETE FROM tasks WHERE id = ?1 AND ended_ms IS NOT NULL")
                .and_then(|mut stmt| stmt.execute([&id]))
                .map_err(db)?;
            if removed == 0 {
                return Ok(false);
            }
            for sql in [
                "DELETE FROM logs WHERE task_id = ?1",
                "DELETE FROM items WHERE task_id = ?1",
            ] {
                tx.prepare_cached(sql)
                    .and_then(|mut stmt| stmt.execute([&id]))
                    .map_err(db)?;
            }
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn dispatchable(&self, limit: u32, offset: u32) -> Result<Vec<Task>> {
        self.quick(move |conn| {
            read_tasks(
                conn,
                "SELECT data, log_lines, items FROM tasks WHERE status = 'pending' AND node IS NULL AND children = 0
                 ORDER BY priority, id LIMIT ?1 OFFSET ?2",
                &[limit.to_string(), offset.to_string()],
            )
        }).await
    }

    async fn count_active(&self, scope: &ActiveScope) -> Result<u64> {
        let (column, value) = match scope {
            ActiveScope::Spider(name) => ("spider_name", name.clone()),
            ActiveScope::Exclusive(key) => ("exclusive", key.clone()),
            ActiveScope::Schedule(id) => ("schedule_id", id.to_string()),
        };
        self.quick(move |conn| {
            let sql = format!(
                "SELECT COUNT(*) FROM tasks WHERE {column} = ?1 AND children = 0
                 AND (status = 'running' OR (status = 'pending' AND node IS NOT NULL))"
            );
            let count: i64 = conn
                .prepare_cached(&sql)
                .and_then(|mut stmt| stmt.query_row([value], |row| row.get(0)))
                .map_err(db)?;
            Ok(count as u64)
        })
        .await
    }

    async fn child_totals(&self, parents: &[TaskId]) -> Result<Vec<ChildTotals>> {
        if parents.is_empty() {
            return Ok(Vec::new());
        }
        let parents: Vec<String> = parents.iter().map(TaskId::to_string).collect();
        self.quick(move |conn| {
            let sql = format!(
                "SELECT parent_id, SUM(items), SUM(log_lines) FROM tasks WHERE parent_id IN ({})
                 GROUP BY parent_id",
                vec!["?"; parents.len()].join(",")
            );
            let mut stmt = conn.prepare(&sql).map_err(db)?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(&parents), |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, i64>(2)?,
                    ))
                })
                .map_err(db)?;
            rows.map(|row| {
                let (parent, items, log_lines) = row.map_err(db)?;
                Ok(ChildTotals {
                    parent: parse_id(&parent)?,
                    items: items as u64,
                    log_lines: log_lines as u64,
                })
            })
            .collect()
        })
        .await
    }
}
