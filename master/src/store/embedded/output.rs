//! The embedded store's runs' log lines and items.

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
}
