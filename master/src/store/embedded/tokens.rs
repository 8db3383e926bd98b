//! The embedded store's access tokens.

use super::*;
use crate::store::TokenStore;

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
}
