//! The embedded store's notification rules and deliveries.

use arachne_shared::notify::{Delivery, Notification};

use super::*;
use crate::store::NotifyStore;

#[async_trait::async_trait]
impl NotifyStore for EmbeddedStore {
    async fn put_notification(&self, notification: &Notification) -> Result<()> {
        let (name, data) = (notification.name.clone(), to_json(notification));
        self.call(move |conn| {
            conn.execute(
                "INSERT INTO notifications (name, data) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET data = ?2",
                params![name, data],
            )
            .map(drop)
            .map_err(db)
        })
        .await
    }

    async fn list_notifications(&self) -> Result<Vec<Notification>> {
        self.call(|conn| all_json(conn, "SELECT data FROM notifications ORDER BY name"))
            .await
    }

    async fn delete_notification(&self, name: &str) -> Result<bool> {
        let name = name.to_owned();
        self.call(move |conn| {
            conn.execute("DELETE FROM notifications WHERE name = ?1", [name])
                .map(|n| n > 0)
                .map_err(db)
        })
        .await
    }

    async fn insert_delivery(&self, delivery: &Delivery) -> Result<bool> {
        let row = delivery_row(delivery);
        self.call(move |conn| {
            conn.execute(
                "INSERT INTO deliveries (id, notification, dkey, status, next_ms, data)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (dkey) DO NOTHING",
                params![row.0, row.1, row.2, row.3, row.4, row.5],
            )
            .map(|n| n > 0)
            .map_err(db)
        })
        .await
    }

    async fn put_delivery(&self, delivery: &Delivery) -> Result<()> {
        let row = delivery_row(delivery);
        self.call(move |conn| {
            conn.execute(
                "UPDATE deliveries SET status = ?2, next_ms = ?3, data = ?4 WHERE id = ?1",
                params![row.0, row.3, row.4, row.5],
            )
            .map(drop)
            .map_err(db)
        })
        .await
    }

    async fn pending_deliveries(&self, limit: u32) -> Result<Vec<Delivery>> {
        self.call(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT data FROM deliveries WHERE status = 'pending' ORDER BY next_ms LIMIT ?1",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map([limit], |row| row.get::<_, String>(0))
                .map_err(db)?;
            rows.map(|r| from_json(&r.map_err(db)?)).collect()
        })
        .await
    }

    async fn list_deliveries(
        &self,
        notification: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Delivery>> {
        let notification = notification.map(str::to_owned);
        self.call(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT data FROM deliveries WHERE ?1 IS NULL OR notification = ?1
                     ORDER BY id DESC LIMIT ?2",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map(params![notification, limit], |row| row.get::<_, String>(0))
                .map_err(db)?;
            rows.map(|r| from_json(&r.map_err(db)?)).collect()
        })
        .await
    }
}

/// A delivery's columns: id, rule, unique key, status, next attempt, record.
fn delivery_row(d: &Delivery) -> (String, String, String, &'static str, i64, String) {
    (
        d.id.to_string(),
        d.notification.clone(),
        format!("{}|{}|{}", d.notification, d.trigger, d.subject),
        d.status.as_str(),
        to_millis(d.next_attempt_at),
        to_json(d),
    )
}
