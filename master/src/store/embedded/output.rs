//! The embedded store's runs' log lines and items.

use arachne_shared::results::{FieldCondition, FieldTest, FoundItem, ItemSearch};
use rusqlite::types::Value;

use super::*;
use crate::store::OutputStore;

#[async_trait::async_trait]
impl OutputStore for EmbeddedStore {
    async fn append_logs(&self, task: TaskId, lines: &[LogLine]) -> Result<()> {
        let lines = lines.to_vec();
        self.call(move |conn| {
            let id = task.to_string();
            let rows = lines.iter().map(|l| {
                (
                    &id,
                    l.seq as i64,
                    l.stream.as_str(),
                    to_millis(l.at),
                    &l.text,
                )
            });
            append_lines(conn, &id, rows)
        })
        .await
    }

    async fn logs(&self, task: TaskId, after: u64, limit: u32) -> Result<Vec<LogLine>> {
        self.call(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT seq, stream, at_ms, text FROM logs WHERE task_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map(params![task.to_string(), after as i64, limit], |row| {
                    let stream: String = row.get(1)?;
                    Ok(LogLine {
                        seq: row.get::<_, i64>(0)? as u64,
                        stream: LogStream::from_name(&stream),
                        at: from_millis(row.get(2)?),
                        text: row.get(3)?,
                    })
                })
                .map_err(db)?;
            rows.collect::<Result<_, _>>().map_err(db)
        })
        .await
    }

    async fn insert_items(&self, target: &ItemTarget, items: &[ItemRecord]) -> Result<()> {
        let (target, items) = (target.clone(), items.to_vec());
        self.call(move |conn| insert_item_batch(conn, &target, &items))
            .await
    }

    async fn items(&self, task: TaskId, after: u64, limit: u32) -> Result<Vec<ItemRecord>> {
        self.call(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT seq, data FROM items WHERE task_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3")
                .map_err(db)?;
            let rows = stmt
                .query_map(params![task.to_string(), after as i64, limit], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
                })
                .map_err(db)?;
            rows.map(|r| {
                let (seq, data) = r.map_err(db)?;
                let data = serde_json::value::RawValue::from_string(data).map_err(|e| Error::Corrupt(e.to_string()))?;
                    Ok(ItemRecord { seq: seq as u64, data })
            })
            .collect()
        })
        .await
    }

    async fn find_items(&self, search: &ItemSearch) -> Result<Vec<FoundItem>> {
        let search = search.clone();
        self.call(move |conn| {
            // The spider's tasks newest first, each task's items last first: the items' own key answers the
            // order, so storing an item writes no index beyond it.
            let (items_filter, items_values) = condition_filter(&search);
            let items_sql = format!(
                "SELECT seq, at_ms, data FROM items WHERE task_id = ? AND seq < ? AND {items_filter}
                 ORDER BY seq DESC LIMIT ?"
            );
            let mut found = Vec::new();
            // A cursor in a task is still that task's turn: its items below the cursor come first.
            let mut before = search.after.map(|c| next_after(&c.task.to_string()));
            while found.len() < search.limit as usize {
                let tasks = spider_tasks(conn, &search, before.as_deref())?;
                let Some(last) = tasks.last() else { break };
                before = Some(last.clone());
                for task in tasks {
                    let left = search.limit as usize - found.len();
                    if left == 0 {
                        break;
                    }
                    let below = match search.after {
                        Some(cursor) if cursor.task.to_string() == task => cursor.seq as i64,
                        _ => i64::MAX,
                    };
                    let mut values: Vec<Value> = vec![task.clone().into(), below.into()];
                    values.extend(items_values.iter().cloned());
                    values.push((left as i64).into());
                    let mut stmt = conn.prepare_cached(&items_sql).map_err(db)?;
                    let rows = stmt
                        .query_map(rusqlite::params_from_iter(values), |row| {
                            Ok((
                                row.get::<_, i64>(0)?,
                                row.get::<_, i64>(1)?,
                                row.get::<_, String>(2)?,
                            ))
                        })
                        .map_err(db)?;
                    for row in rows {
                        let (seq, at, data) = row.map_err(db)?;
                        found.push(FoundItem {
                            task_id: parse_id(&task)?,
                            seq: seq as u64,
                            at: from_millis(at),
                            data: serde_json::value::RawValue::from_string(data)
                                .map_err(|e| Error::Corrupt(e.to_string()))?,
                        });
                    }
                }
            }
            Ok(found)
        })
        .await
    }

    async fn count_items(&self, search: &ItemSearch) -> Result<u64> {
        let (items_filter, items_values) = condition_filter(search);
        let mut values: Vec<Value> = vec![
            search.spider_name.clone().into(),
            search.spider.to_string().into(),
        ];
        let task_filter = match search.task {
            Some(task) => {
                values.push(task.to_string().into());
                "AND t.id = ?"
            }
            None => "",
        };
        values.extend(items_values);
        self.call(move |conn| {
            let sql = format!(
                "SELECT COUNT(*) FROM tasks t JOIN items ON items.task_id = t.id
                 WHERE t.spider_name = ? AND json_extract(t.data, '$.spider_id') = ? {task_filter}
                 AND {items_filter}"
            );
            let count: i64 = conn
                .prepare_cached(&sql)
                .and_then(|mut stmt| {
                    stmt.query_row(rusqlite::params_from_iter(values), |row| row.get(0))
                })
                .map_err(db)?;
            Ok(count as u64)
        })
        .await
    }
}

/// Up to a page of the spider's tasks (the one task a search names, if it names one), newest first, older
/// than `before` when given.
fn spider_tasks(
    conn: &Connection,
    search: &ItemSearch,
    before: Option<&str>,
) -> Result<Vec<String>> {
    const PAGE: i64 = 256;
    // The spider's id, not only its name: a spider deleted and made again under its name does not inherit
    // the tasks its predecessor left.
    let mut stmt = conn
        .prepare_cached(
            "SELECT id FROM tasks WHERE spider_name = ?1 AND json_extract(data, '$.spider_id') = ?2
             AND (?3 IS NULL OR id = ?3) AND (?4 IS NULL OR id < ?4) ORDER BY id DESC LIMIT ?5",
        )
        .map_err(db)?;
    let rows = stmt
        .query_map(
            params![
                search.spider_name,
                search.spider.to_string(),
                search.task.map(|t| t.to_string()),
                before,
                PAGE
            ],
            |row| row.get::<_, String>(0),
        )
        .map_err(db)?;
    rows.collect::<Result<_, _>>().map_err(db)
}

/// The least text greater than `id`, so `id < next_after(id)` takes `id` itself in.
fn next_after(id: &str) -> String {
    format!("{id}\u{1}")
}

/// The conditions of a search on an item's stored time and fields, as a `WHERE` clause over `items` with its
/// values (`1` when there are none).
fn condition_filter(search: &ItemSearch) -> (String, Vec<Value>) {
    let mut clauses = vec!["1".to_owned()];
    let mut values: Vec<Value> = Vec::new();
    if let Some(since) = search.since {
        clauses.push("items.at_ms >= ?".into());
        values.push(to_millis(since).into());
    }
    if let Some(until) = search.until {
        clauses.push("items.at_ms < ?".into());
        values.push(to_millis(until).into());
    }
    for condition in &search.conditions {
        // Each name quoted, so any character but a quote (which conditions refuse) is part of the name.
        let path: String = std::iter::once("$".to_owned())
            .chain(condition.path.iter().map(|name| format!("\"{name}\"")))
            .collect::<Vec<_>>()
            .join(".");
        match &condition.test {
            FieldTest::Exists => {
                clauses.push("json_type(items.data, ?) IS NOT NULL".into());
                values.push(path.into());
            }
            FieldTest::Contains(text) => {
                clauses.push(
                    "(json_type(items.data, ?) = 'text' AND instr(json_extract(items.data, ?), ?) > 0)".into(),
                );
                values.extend([path.clone().into(), path.into(), text.clone().into()]);
            }
            FieldTest::Equals(value) => {
                clauses.push(
                    "((json_type(items.data, ?) = 'text' AND json_extract(items.data, ?) = ?)
                      OR (json_type(items.data, ?) IN ('integer', 'real') AND json_extract(items.data, ?) = ?)
                      OR json_type(items.data, ?) = ?)"
                        .into(),
                );
                let number: Value = match FieldCondition::number(value) {
                    Some(n) if n.is_i64() => n.as_i64().map_or(Value::Null, Value::from),
                    Some(n) => n.as_f64().map_or(Value::Null, Value::from),
                    None => Value::Null,
                };
                let word: Value = match value.as_str() {
                    "true" | "false" | "null" => value.clone().into(),
                    _ => Value::Null,
                };
                values.extend([
                    path.clone().into(),
                    path.clone().into(),
                    value.clone().into(),
                    path.clone().into(),
                    path.clone().into(),
                    number,
                    path.into(),
                    word,
                ]);
            }
        }
    }
    (clauses.join(" AND "), values)
}
