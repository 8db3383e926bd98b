//! The embedded store's spiders, nodes and schedules.

use super::*;
use crate::store::CatalogStore;

#[async_trait::async_trait]
impl CatalogStore for EmbeddedStore {
    async fn put_spider(&self, spider: &Spider) -> Result<()> {
        let stored = spider.clone();
        let result = self
            .call(move |conn| {
                let result = conn.execute(
                    "INSERT INTO spiders (id, name, data) VALUES (?1, ?2, ?3)
                     ON CONFLICT (id) DO UPDATE SET name = ?2, data = ?3",
                    params![stored.id.to_string(), stored.name, to_json(&stored)],
                );
                unique(result, || format!("spider {:?}", stored.name))
            })
            .await;
        // Whatever the outcome, the copy of this spider (under its old name too, after a rename) is dropped
        // once the write is done; the next lookup reads the stored record.
        let mut cache = self.cached_spiders();
        cache.writes += 1;
        cache.by_name.retain(|_, s| s.id != spider.id);
        result
    }

    async fn spider_by_name(&self, name: &str) -> Result<Option<Spider>> {
        let writes = {
            let cache = self.cached_spiders();
            if let Some(spider) = cache.by_name.get(name) {
                return Ok(Some(spider.clone()));
            }
            cache.writes
        };
        let key = name.to_owned();
        let spider: Option<Spider> = self
            .quick(move |conn| {
                let data: Option<String> = conn
                    .prepare_cached("SELECT data FROM spiders WHERE name = ?1")
                    .map_err(db)?
                    .query_row([key], |row| row.get(0))
                    .optional()
                    .map_err(db)?;
                data.map(|d| from_json(&d)).transpose()
            })
            .await?;
        let mut cache = self.cached_spiders();
        if let Some(spider) = &spider
            && cache.writes == writes
        {
            cache.by_name.insert(name.to_owned(), spider.clone());
        }
        Ok(spider)
    }

    async fn list_spiders(&self) -> Result<Vec<Spider>> {
        self.call(|conn| all_json(conn, "SELECT data FROM spiders ORDER BY name"))
            .await
    }

    async fn delete_spider(&self, id: SpiderId) -> Result<bool> {
        let deleted = self
            .call(move |conn| {
                conn.execute("DELETE FROM spiders WHERE id = ?1", [id.to_string()])
                    .map(|n| n > 0)
                    .map_err(db)
            })
            .await;
        let mut cache = self.cached_spiders();
        cache.writes += 1;
        cache.by_name.retain(|_, s| s.id != id);
        deleted
    }

    async fn put_node(&self, node: &Node) -> Result<()> {
        let node = node.clone();
        self.call(move |conn| {
            conn.execute(
                "INSERT INTO nodes (name, data) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET data = ?2",
                params![node.name, to_json(&node)],
            )
            .map(drop)
            .map_err(db)
        })
        .await
    }

    async fn list_nodes(&self) -> Result<Vec<Node>> {
        self.call(|conn| all_json(conn, "SELECT data FROM nodes ORDER BY name"))
            .await
    }

    async fn delete_node(&self, name: &str) -> Result<bool> {
        let name = name.to_owned();
        self.call(move |conn| {
            conn.execute("DELETE FROM nodes WHERE name = ?1", [name])
                .map(|n| n > 0)
                .map_err(db)
        })
        .await
    }

    async fn put_schedule(&self, schedule: &Schedule) -> Result<()> {
        let schedule = schedule.clone();
        self.call(move |conn| {
            let result = conn.execute(
                "INSERT INTO schedules (id, name, data) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET name = ?2, data = ?3",
                params![schedule.id.to_string(), schedule.name, to_json(&schedule)],
            );
            unique(result, || format!("schedule {:?}", schedule.name))
        })
        .await
    }

    async fn get_schedule(&self, id: ScheduleId) -> Result<Option<Schedule>> {
        self.call(move |conn| {
            let data: Option<String> = conn
                .query_row(
                    "SELECT data FROM schedules WHERE id = ?1",
                    [id.to_string()],
                    |row| row.get(0),
                )
                .optional()
                .map_err(db)?;
            data.map(|d| from_json(&d)).transpose()
        })
        .await
    }

    async fn list_schedules(&self) -> Result<Vec<Schedule>> {
        self.call(|conn| all_json(conn, "SELECT data FROM schedules ORDER BY name"))
            .await
    }

    async fn delete_schedule(&self, id: ScheduleId) -> Result<bool> {
        self.call(move |conn| {
            conn.execute("DELETE FROM schedules WHERE id = ?1", [id.to_string()])
                .map(|n| n > 0)
                .map_err(db)
        })
        .await
    }
}
