//! The MongoDB store's access tokens, users and audit log.

use super::*;
use crate::store::{AuditStore, TokenStore};

#[async_trait::async_trait]
impl TokenStore for MongoStore {
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

    async fn insert_user(&self, user: &User) -> Result<()> {
        let doc = doc! {"_id": &user.name, "data": record(user)};
        match self.users().insert_one(doc).await {
            Err(err) if is_duplicate(&err) => {
                Err(Error::Duplicate(format!("user {:?}", user.name)))
            }
            other => other.map(drop).map_err(db),
        }
    }

    async fn replace_user(&self, user: &User) -> Result<bool> {
        let replaced = self
            .users()
            .replace_one(
                doc! {"_id": &user.name},
                doc! {"_id": &user.name, "data": record(user)},
            )
            .await
            .map_err(db)?;
        Ok(replaced.matched_count > 0)
    }

    async fn user_by_name(&self, name: &str) -> Result<Option<User>> {
        let found = self
            .users()
            .find_one(doc! {"_id": name})
            .await
            .map_err(db)?;
        found.map(from_data).transpose()
    }

    async fn list_users(&self) -> Result<Vec<User>> {
        self.all_records(self.users(), doc! {"_id": 1}).await
    }

    async fn delete_user(&self, name: &str) -> Result<bool> {
        let deleted = self
            .users()
            .delete_one(doc! {"_id": name})
            .await
            .map_err(db)?;
        Ok(deleted.deleted_count > 0)
    }
}

#[async_trait::async_trait]
impl AuditStore for MongoStore {
    async fn insert_audit(&self, entry: &AuditEntry) -> Result<()> {
        let doc = doc! {"_id": entry.id.to_string(), "actor": &entry.actor, "data": record(entry)};
        match self.audit().insert_one(doc).await {
            Err(err) if is_duplicate(&err) => Ok(()),
            other => other.map(drop).map_err(db),
        }
    }

    async fn list_audit(
        &self,
        actor: Option<&str>,
        before: Option<AuditId>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>> {
        let mut filter = doc! {};
        if let Some(actor) = actor {
            filter.insert("actor", actor);
        }
        if let Some(before) = before {
            filter.insert("_id", doc! {"$lt": before.to_string()});
        }
        let mut cursor = self
            .audit()
            .find(filter)
            .sort(doc! {"_id": -1})
            .limit(limit.into())
            .await
            .map_err(db)?;
        let mut entries = Vec::new();
        while cursor.advance().await.map_err(db)? {
            entries.push(from_data(cursor.deserialize_current().map_err(db)?)?);
        }
        Ok(entries)
    }
}
