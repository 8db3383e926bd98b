//! The MongoDB store's access tokens.

use super::*;
use crate::store::TokenStore;

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
}
