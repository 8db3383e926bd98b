//! The embedded store's access tokens, users and audit log.

use super::*;
use crate::store::{AuditStore, TokenStore};

#[async_trait::async_trait]
impl TokenStore for EmbeddedStore {
    async fn insert_token(&self, token: &Token) -> Result<()> {
        let token = token.clone();
        self.call(move |conn| {
            let result = conn.execute(
                "INSERT INTO tokens (name, hash, data) VALUES (?1, ?2, ?3)",
                params![token.name, token.hash, to_json(&token)],
            );
            unique(result, || format!("token {:?}", token.name))
        })
        .await
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<Token>> {
        let hash = hash.to_owned();
        self.call(move |conn| {
            let data: Option<String> = conn
                .query_row("SELECT data FROM tokens WHERE hash = ?1", [hash], |row| {
                    row.get(0)
                })
                .optional()
                .map_err(db)?;
            data.map(|d| from_json(&d)).transpose()
        })
        .await
    }

    async fn list_tokens(&self) -> Result<Vec<Token>> {
        self.call(|conn| all_json(conn, "SELECT data FROM tokens ORDER BY name"))
            .await
    }

    async fn delete_token(&self, name: &str) -> Result<bool> {
        let name = name.to_owned();
        self.call(move |conn| {
            conn.execute("DELETE FROM tokens WHERE name = ?1", [name])
                .map(|n| n > 0)
                .map_err(db)
        })
        .await
    }

    async fn insert_user(&self, user: &User) -> Result<()> {
        let (name, data) = (user.name.clone(), to_json(user));
        self.call(move |conn| {
            let result = conn.execute(
                "INSERT INTO users (name, data) VALUES (?1, ?2)",
                params![name, data],
            );
            unique(result, || format!("user {name:?}"))
        })
        .await
    }

    async fn replace_user(&self, user: &User) -> Result<bool> {
        let (name, data) = (user.name.clone(), to_json(user));
        self.call(move |conn| {
            conn.execute(
                "UPDATE users SET data = ?2 WHERE name = ?1",
                params![name, data],
            )
            .map(|n| n > 0)
            .map_err(db)
        })
        .await
    }

    async fn user_by_name(&self, name: &str) -> Result<Option<User>> {
        let name = name.to_owned();
        self.call(move |conn| {
            let data: Option<String> = conn
                .query_row("SELECT data FROM users WHERE name = ?1", [name], |row| {
                    row.get(0)
                })
                .optional()
                .map_err(db)?;
            data.map(|d| from_json(&d)).transpose()
        })
        .await
    }

    async fn list_users(&self) -> Result<Vec<User>> {
        self.call(|conn| all_json(conn, "SELECT data FROM users ORDER BY name"))
            .await
    }

    async fn delete_user(&self, name: &str) -> Result<bool> {
        let name = name.to_owned();
        self.call(move |conn| {
            conn.execute("DELETE FROM users WHERE name = ?1", [name])
                .map(|n| n > 0)
                .map_err(db)
        })
        .await
    }
}

#[async_trait::async_trait]
impl AuditStore for EmbeddedStore {
    async fn insert_audit(&self, entry: &AuditEntry) -> Result<()> {
        let row = (entry.id.to_string(), entry.actor.clone(), to_json(entry));
        self.call(move |conn| {
            conn.execute(
                "INSERT OR IGNORE INTO audit (id, actor, data) VALUES (?1, ?2, ?3)",
                params![row.0, row.1, row.2],
            )
            .map(drop)
            .map_err(db)
        })
        .await
    }

    async fn list_audit(
        &self,
        actor: Option<&str>,
        before: Option<AuditId>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>> {
        let actor = actor.map(str::to_owned);
        let before = before.map(|id| id.to_string());
        self.call(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT data FROM audit WHERE (?1 IS NULL OR actor = ?1) AND (?2 IS NULL OR id < ?2)
                     ORDER BY id DESC LIMIT ?3",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map(params![actor, before, limit], |row| row.get::<_, String>(0))
                .map_err(db)?;
            rows.map(|r| from_json(&r.map_err(db)?)).collect()
        })
        .await
    }
}
