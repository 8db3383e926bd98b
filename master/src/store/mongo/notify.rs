//! The MongoDB store's notification rules and deliveries.

use arachne_shared::notify::{Delivery, Notification};

use super::*;
use crate::store::NotifyStore;

#[async_trait::async_trait]
impl NotifyStore for MongoStore {
    async fn put_notification(&self, notification: &Notification) -> Result<()> {
        let doc = doc! {"_id": &notification.name, "data": record(notification)};
        self.notifications()
            .replace_one(doc! {"_id": &notification.name}, doc)
            .upsert(true)
            .await
            .map(drop)
            .map_err(db)
    }

    async fn list_notifications(&self) -> Result<Vec<Notification>> {
        self.all_records(self.notifications(), doc! {"_id": 1})
            .await
    }

    async fn delete_notification(&self, name: &str) -> Result<bool> {
        let deleted = self
            .notifications()
            .delete_one(doc! {"_id": name})
            .await
            .map_err(db)?;
        Ok(deleted.deleted_count > 0)
    }

    async fn insert_delivery(&self, delivery: &Delivery) -> Result<bool> {
        match self.deliveries().insert_one(delivery_doc(delivery)).await {
            Ok(_) => Ok(true),
            Err(err) if is_duplicate(&err) => Ok(false),
            Err(err) => Err(db(err)),
        }
    }

    async fn put_delivery(&self, delivery: &Delivery) -> Result<()> {
        let id = delivery.id.to_string();
        self.deliveries()
            .replace_one(doc! {"_id": &id}, delivery_doc(delivery))
            .await
            .map(drop)
            .map_err(db)
    }

    async fn pending_deliveries(&self, limit: u32) -> Result<Vec<Delivery>> {
        self.some_deliveries(doc! {"status": "pending"}, doc! {"next_at": 1}, limit)
            .await
    }

    async fn list_deliveries(
        &self,
        notification: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Delivery>> {
        let filter = match notification {
            Some(name) => doc! {"notification": name},
            None => doc! {},
        };
        self.some_deliveries(filter, doc! {"_id": -1}, limit).await
    }
}

impl MongoStore {
    async fn some_deliveries(
        &self,
        filter: Document,
        sort: Document,
        limit: u32,
    ) -> Result<Vec<Delivery>> {
        let mut cursor = self
            .deliveries()
            .find(filter)
            .sort(sort)
            .limit(limit.into())
            .await
            .map_err(db)?;
        let mut found = Vec::new();
        while cursor.advance().await.map_err(db)? {
            found.push(from_data(cursor.deserialize_current().map_err(db)?)?);
        }
        Ok(found)
    }
}

/// A delivery's document: the record, with what it is found by beside it.
fn delivery_doc(d: &Delivery) -> Document {
    doc! {
        "_id": d.id.to_string(),
        "notification": &d.notification,
        "key": format!("{}|{}|{}", d.notification, d.trigger, d.subject),
        "status": d.status.as_str(),
        "next_at": bson::DateTime::from_millis(to_millis(d.next_attempt_at)),
        "data": record(d),
    }
}
