//! Access tokens: who may use the HTTP API (`api`) and who may join as a worker (`worker`). Only a token's
//! sha256 is ever stored; the secret is shown once, when it is created.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::files::hex;

/// What a token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// Every HTTP API route.
    Api,
    /// Joining the cluster as a worker over gRPC.
    Worker,
}

impl TokenKind {
    /// The start of every secret of this kind, so a leaked secret says what it opens.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Api => "arachne_api_",
            Self::Worker => "arachne_worker_",
        }
    }
}

named_enum!(TokenKind, "token kind", Api => "api", Worker => "worker");

/// A stored token: never its secret, only the secret's hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// Unique; names the token in lists and revocations.
    pub name: String,
    pub kind: TokenKind,
    /// Hex sha256 of the secret. Secrets are 256 random bits, so a plain hash is as strong as a slow one.
    pub hash: String,
    pub created_at: DateTime<Utc>,
}

impl Token {
    /// The hash a secret is stored and looked up by.
    pub fn hash_of(secret: &str) -> String {
        hex(&Sha256::digest(secret.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_and_secrets_hash_stably() {
        assert_eq!("worker".parse::<TokenKind>(), Ok(TokenKind::Worker));
        assert!(
            "admin"
                .parse::<TokenKind>()
                .unwrap_err()
                .0
                .contains("api, worker")
        );
        assert_eq!(Token::hash_of("s"), Token::hash_of("s"));
        assert_ne!(Token::hash_of("s"), Token::hash_of("t"));
        assert_eq!(Token::hash_of("s").len(), 64);
    }
}
