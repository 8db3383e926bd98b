//! Access tokens: who may use the HTTP API (`api`) and who may join as a worker (`worker`), an API token with
//! a role and perhaps an owner and an expiry; users, who sign in with a password and hold a role; and the
//! audit log of what they did. Only a token's sha256 and a password's argon2 hash are ever stored; a secret
//! is shown once, when it is created.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::files::hex;

/// What a token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
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

/// What an API caller may do; each role may do what the ones below it may.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything; changes nothing.
    Viewer,
    /// Also creates, changes, runs, cancels and deletes spiders, runs, schedules and notifications.
    Developer,
    /// Also nodes, users, tokens and the audit log.
    Admin,
}

named_enum!(Role, "role", Viewer => "viewer", Developer => "developer", Admin => "admin");

/// A stored token: never its secret, only the secret's hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// Unique; names the token in lists and revocations.
    pub name: String,
    pub kind: TokenKind,
    /// Hex sha256 of the secret. Secrets are 256 random bits, so a plain hash is as strong as a slow one.
    pub hash: String,
    pub created_at: DateTime<Utc>,
    /// What an API token may do (at most its user's role, checked on every use). Worker tokens have none.
    pub role: Role,
    /// The user it acts for; none for a token made by the master (`arachne-master token`, its first token,
    /// a configured one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// It stops working then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// Made by signing in to the web UI (revoked by signing out).
    #[serde(default)]
    pub session: bool,
}

/// A token as lists show it: everything but its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TokenInfo {
    pub name: String,
    pub kind: TokenKind,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub session: bool,
}

impl From<&Token> for TokenInfo {
    fn from(token: &Token) -> Self {
        Self {
            name: token.name.clone(),
            kind: token.kind,
            role: token.role,
            user: token.user.clone(),
            created_at: token.created_at,
            expires_at: token.expires_at,
            session: token.session,
        }
    }
}

/// Who is calling the API, as their token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Caller {
    /// The user, or `token:NAME` for a token that belongs to no user.
    pub actor: String,
    /// What the call may do: the token's role, never more than its user's.
    pub role: Role,
    /// The token's name.
    pub token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// Someone who signs in to the web UI with a password, and owns API tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub role: Role,
    /// The password's argon2id hash in PHC form (salt and parameters included).
    pub password_hash: String,
    pub created_at: DateTime<Utc>,
}

/// A user as the API shows one: no hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct UserInfo {
    pub name: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
}

impl From<&User> for UserInfo {
    fn from(user: &User) -> Self {
        Self {
            name: user.name.clone(),
            role: user.role,
            created_at: user.created_at,
        }
    }
}

uuid_id!(
    /// Identifies an audit entry; ids sort by time.
    AuditId
);

/// One change someone made through the API: who, what, to what, when, and how it went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AuditEntry {
    pub id: AuditId,
    pub at: DateTime<Utc>,
    /// The user, or the token when it belongs to no user (`token:NAME`); the name tried, for a failed sign-in.
    pub actor: String,
    /// What was done: `POST /api/v1/spiders/{name}/files`, say: the method and the route.
    pub action: String,
    /// What it was done to: the request's path (`/api/v1/spiders/quotes/files`).
    pub target: String,
    /// The answer's HTTP status: whether it was done.
    pub status: u16,
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
