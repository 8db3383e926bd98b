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
        let (filter, mut values) = item_filter(search, true);
        values.push(search.limit.into());
        self.call(move |conn| {
            let sql = format!(
                "SELECT task_id, seq, at_ms, data FROM items WHERE {filter}
                 ORDER BY task_id DESC, seq DESC LIMIT ?"
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(db)?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(values), |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, i64>(2)?,
                        row.get::<_, String>(3)?,
                    ))
                })
                .map_err(db)?;
            rows.map(|row| {
                let (task, seq, at, data) = row.map_err(db)?;
                Ok(FoundItem {
                    task_id: parse_id(&task)?,
                    seq: seq as u64,
                    at: from_millis(at),
                    data: serde_json::value::RawValue::from_string(data)
                        .map_err(|e| Error::Corrupt(e.to_string()))?,
                })
            })
            .collect()
        })
        .await
    }

    async fn count_items(&self, search: &ItemSearch) -> Result<u64> {
        let (filter, values) = item_filter(search, false);
        self.call(move |conn| {
            let sql = format!("SELECT COUNT(*) FROM items WHERE {filter}");
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

/// The `WHERE` clause of a search of a spider's items and its values, with its cursor or without.
fn item_filter(search: &ItemSearch, with_cursor: bool) -> (String, Vec<Value>) {
    let mut clauses = vec!["sid = ?".to_owned()];
    let mut values: Vec<Value> = vec![search.spider.to_string().into()];
    if let Some(task) = search.task {
        clauses.push("task_id = ?".into());
        values.push(task.to_string().into());
    }
    if let Some(since) = search.since {
        clauses.push("at_ms >= ?".into());
        values.push(to_millis(since).into());
    }
    if let Some(until) = search.until {
        clauses.push("at_ms < ?".into());
        values.push(to_millis(until).into());
    }
    if let Some(cursor) = search.after.filter(|_| with_cursor) {
        clauses.push("(task_id, seq) < (?, ?)".into());
        values.push(cursor.task.to_string().into());
        values.push((cursor.seq as i64).into());
    }
    for condition in &search.conditions {
        // Each name quoted, so any character but a quote (which conditions refuse) is part of the name.
        let path: String = std::iter::once("$".to_owned())
            .chain(condition.path.iter().map(|name| format!("\"{name}\"")))
            .collect::<Vec<_>>()
            .join(".");
        match &condition.test {
            FieldTest::Exists => {
                clauses.push("json_type(data, ?) IS NOT NULL".into());
                values.push(path.into());
            }
            FieldTest::Contains(text) => {
                clauses.push(
                    "(json_type(data, ?) = 'text' AND instr(json_extract(data, ?), ?) > 0)".into(),
                );
                values.extend([path.clone().into(), path.into(), text.clone().into()]);
            }
            FieldTest::Equals(value) => {
                clauses.push(
                    "((json_type(data, ?) = 'text' AND json_extract(data, ?) = ?)
                      OR (json_type(data, ?) IN ('integer', 'real') AND json_extract(data, ?) = ?)
                      OR json_type(data, ?) = ?)"
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
