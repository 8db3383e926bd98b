//! The access service: users (argon2id password hashes, a role each), signing in to the web UI (a session
//! token that expires), API tokens made and revoked by admins, and the audit log of what callers changed.

use std::sync::Arc;

use arachne_shared::spider::validate_name;
use arachne_shared::{AuditEntry, AuditId, Caller, Role, Token, TokenKind, User};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use chrono::{Duration, Utc};
use tracing::info;

use crate::auth::{self, Auth, NewToken};
use crate::store::{self, Store};

/// Why an access change was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Invalid(#[from] arachne_shared::Invalid),
    #[error("a password needs at least {MIN_PASSWORD} characters")]
    ShortPassword,
    #[error("user {0:?} not found")]
    NoUser(String),
    #[error("user {0:?} exists already")]
    UserExists(String),
    #[error("the name or the password is wrong")]
    SignIn,
    #[error("a token cannot have more than its user's role: {user} is a {role}")]
    AboveUser { user: String, role: Role },
    #[error("expires_in_days must be 1 to 3650")]
    Expiry,
    #[error(
        "only a token made by signing in is ended by signing out; revoke an API token by its name"
    )]
    NotASession,
    #[error(transparent)]
    Token(#[from] auth::Error),
    #[error("hashing the password failed: {0}")]
    Hash(String),
    #[error("store: {0}")]
    Store(#[from] store::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The shortest password accepted.
pub const MIN_PASSWORD: usize = 10;
/// How long signing in to the web UI lasts.
pub const SESSION: Duration = Duration::hours(12);

/// A token an admin asks for.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub name: String,
    pub kind: TokenKind,
    pub role: Role,
    /// The user it acts for: the caller's own user by default.
    pub user: Option<String>,
    pub expires_in_days: Option<u32>,
}

/// Users, sign-in, tokens and the audit log.
pub struct Access {
    store: Arc<dyn Store>,
    auth: Arc<Auth>,
}

impl Access {
    pub(crate) fn new(store: Arc<dyn Store>, auth: Arc<Auth>) -> Self {
        Self { store, auth }
    }

    pub async fn users(&self) -> Result<Vec<User>> {
        Ok(self.store.list_users().await?)
    }

    pub async fn create_user(&self, name: &str, role: Role, password: &str) -> Result<User> {
        let user = new_user(name, role, password).await?;
        match self.store.insert_user(&user).await {
            Err(store::Error::Duplicate(_)) => Err(Error::UserExists(name.to_owned())),
            other => other.map_err(Error::from),
        }?;
        info!(user = name, role = %role, "user created");
        Ok(user)
    }

    /// Changes a user's role or password; their tokens follow the new role within seconds.
    pub async fn update_user(
        &self,
        name: &str,
        role: Option<Role>,
        password: Option<&str>,
    ) -> Result<User> {
        let mut user = self
            .store
            .user_by_name(name)
            .await?
            .ok_or_else(|| Error::NoUser(name.to_owned()))?;
        if let Some(role) = role {
            user.role = role;
        }
        if let Some(password) = password {
            user.password_hash = hash_password(password).await?;
        }
        if !self.store.replace_user(&user).await? {
            return Err(Error::NoUser(name.to_owned()));
        }
        self.auth.forget();
        Ok(user)
    }

    /// Deletes a user and revokes every token of theirs.
    pub async fn delete_user(&self, name: &str) -> Result<()> {
        if !self.store.delete_user(name).await? {
            return Err(Error::NoUser(name.to_owned()));
        }
        for token in self.store.list_tokens().await? {
            if token.user.as_deref() == Some(name) {
                self.store.delete_token(&token.name).await?;
            }
        }
        self.auth.forget();
        Ok(())
    }

    /// Checks a user's password and makes a session token for the web UI; its secret is in the answer only.
    pub async fn sign_in(&self, name: &str, password: &str) -> Result<(Token, String)> {
        let user = self.store.user_by_name(name).await?;
        // An unknown name costs the same hashing as a wrong password, so timing does not tell users apart.
        let hash = user
            .as_ref()
            .map_or_else(|| DECOY_HASH.to_owned(), |u| u.password_hash.clone());
        let password = password.to_owned();
        let matches = tokio::task::spawn_blocking(move || verify(&password, &hash))
            .await
            .map_err(|e| Error::Hash(e.to_string()))?;
        let Some(user) = user.filter(|_| matches) else {
            return Err(Error::SignIn);
        };
        // Sessions nobody signed out of would pile up: the user's expired ones go as a new one is made.
        let now = Utc::now();
        for token in self.store.list_tokens().await? {
            let expired = token.expires_at.is_some_and(|at| at <= now);
            if token.session && expired && token.user.as_deref() == Some(name) {
                self.store.delete_token(&token.name).await?;
            }
        }
        let mut suffix = [0u8; 4];
        getrandom::fill(&mut suffix).expect("the operating system provides random bytes");
        let token = NewToken {
            name: format!(
                "session-{}-{}",
                user.name,
                arachne_shared::files::hex(&suffix)
            ),
            kind: TokenKind::Api,
            role: user.role,
            user: Some(user.name.clone()),
            expires_at: Some(Utc::now() + SESSION),
            session: true,
        };
        Ok(auth::create_token(self.store.as_ref(), token).await?)
    }

    /// Ends the caller's web UI session by revoking its token.
    pub async fn sign_out(&self, caller: &Caller) -> Result<()> {
        let session = self
            .store
            .list_tokens()
            .await?
            .into_iter()
            .any(|t| t.name == caller.token && t.session);
        if !session {
            return Err(Error::NotASession);
        }
        auth::revoke_token(self.store.as_ref(), &caller.token).await?;
        self.auth.forget();
        Ok(())
    }

    /// Every token (never a secret), by name; expired ones until they are revoked.
    pub async fn tokens(&self) -> Result<Vec<Token>> {
        Ok(self.store.list_tokens().await?)
    }

    /// Makes a token for `request.user` (the caller's user by default), at most with that user's role.
    pub async fn create_token(
        &self,
        caller: &Caller,
        request: TokenRequest,
    ) -> Result<(Token, String)> {
        let user = request.user.or_else(|| caller.user.clone());
        if let Some(name) = &user {
            let found = self
                .store
                .user_by_name(name)
                .await?
                .ok_or_else(|| Error::NoUser(name.clone()))?;
            if request.role > found.role {
                return Err(Error::AboveUser {
                    user: found.name,
                    role: found.role,
                });
            }
        }
        let expires_at = match request.expires_in_days {
            Some(days @ 1..=3650) => Some(Utc::now() + Duration::days(days.into())),
            Some(_) => return Err(Error::Expiry),
            None => None,
        };
        let token = NewToken {
            name: request.name,
            kind: request.kind,
            role: request.role,
            user,
            expires_at,
            session: false,
        };
        Ok(auth::create_token(self.store.as_ref(), token).await?)
    }

    pub async fn revoke_token(&self, name: &str) -> Result<()> {
        auth::revoke_token(self.store.as_ref(), name).await?;
        self.auth.forget();
        Ok(())
    }

    /// Records one change a caller made.
    pub async fn record(&self, entry: &AuditEntry) -> Result<()> {
        Ok(self.store.insert_audit(entry).await?)
    }

    /// The audit log, newest first.
    pub async fn audit(
        &self,
        actor: Option<&str>,
        before: Option<AuditId>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>> {
        Ok(self.store.list_audit(actor, before, limit).await?)
    }
}

/// A user record with the password hashed; for the API and `arachne-master user`.
pub async fn new_user(name: &str, role: Role, password: &str) -> Result<User> {
    validate_name("user", name)?;
    Ok(User {
        name: name.to_owned(),
        role,
        password_hash: hash_password(password).await?,
        created_at: Utc::now(),
    })
}

/// The argon2id hash of a password, with a fresh salt, in PHC form.
async fn hash_password(password: &str) -> Result<String> {
    if password.chars().count() < MIN_PASSWORD {
        return Err(Error::ShortPassword);
    }
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).expect("the operating system provides random bytes");
        let salt = SaltString::encode_b64(&salt).map_err(|e| Error::Hash(e.to_string()))?;
        argon2::Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|e| Error::Hash(e.to_string()))
    })
    .await
    .map_err(|e| Error::Hash(e.to_string()))?
}

fn verify(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// A hash no password matches, checked against when the name is unknown.
const DECOY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0cDkRlXqHZSGqCGKjLcT0GKqNvvbS6jJmZ1aT4L7e5Y";

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_password_is_stored_as_an_argon2id_hash_that_only_it_matches() {
        let user = new_user("ada", Role::Developer, "correct horse battery")
            .await
            .unwrap();
        assert!(
            user.password_hash.starts_with("$argon2id$"),
            "{}",
            user.password_hash
        );
        assert!(!user.password_hash.contains("correct horse"));
        assert!(verify("correct horse battery", &user.password_hash));
        assert!(!verify("correct horse battery!", &user.password_hash));
        let again = new_user("ada", Role::Developer, "correct horse battery")
            .await
            .unwrap();
        assert_ne!(
            again.password_hash, user.password_hash,
            "a fresh salt each time"
        );
        assert!(matches!(
            new_user("ada", Role::Viewer, "short").await,
            Err(Error::ShortPassword)
        ));
        assert!(matches!(
            new_user("a b", Role::Viewer, "long enough pw").await,
            Err(Error::Invalid(_))
        ));
        assert!(
            PasswordHash::new(DECOY_HASH).is_ok(),
            "the decoy is a well-formed hash"
        );
        assert!(!verify("", DECOY_HASH));
    }

    #[tokio::test]
    async fn an_expired_token_opens_nothing_and_signing_in_clears_the_user_s_expired_sessions() {
        use crate::store::TokenStore;
        use crate::store::embedded::EmbeddedStore;
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory().unwrap());
        let tokens: Arc<dyn TokenStore> = Arc::clone(&store) as _;
        let auth = Arc::new(
            Auth::start(tokens, &crate::auth::AuthConfig::default(), dir.path())
                .await
                .unwrap(),
        );
        let access = Access::new(Arc::clone(&store), Arc::clone(&auth));
        access
            .create_user("ada", Role::Developer, "ada-password-long")
            .await
            .unwrap();
        let old = NewToken {
            name: "session-ada-old".into(),
            kind: TokenKind::Api,
            role: Role::Developer,
            user: Some("ada".into()),
            expires_at: Some(Utc::now() - Duration::minutes(1)),
            session: true,
        };
        let (_, secret) = auth::create_token(store.as_ref(), old).await.unwrap();
        assert_eq!(auth.caller(&secret).await.unwrap(), None, "expired");
        let (fresh, fresh_secret) = access.sign_in("ada", "ada-password-long").await.unwrap();
        let names: Vec<String> = store
            .list_tokens()
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert!(
            !names.contains(&"session-ada-old".to_owned()) && names.contains(&fresh.name),
            "{names:?}"
        );
        let caller = auth.caller(&fresh_secret).await.unwrap().unwrap();
        assert_eq!(
            (caller.actor.as_str(), caller.role),
            ("ada", Role::Developer)
        );
    }
}
