//! Who may use the HTTP API and who may join as a worker. Tokens live in the store as hashes; a secret is shown
//! once, when it is made. A token found valid is remembered for a few seconds, so a busy API does not ask the
//! store on every request, and a revoked one stops working within those seconds.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arachne_shared::files::hex;
use arachne_shared::spider::validate_name;
use arachne_shared::{Token, TokenKind};
use tracing::{info, warn};

use crate::store::{self, TokenStore};

/// How long a valid token is trusted without asking the store again.
const REMEMBER: Duration = Duration::from_secs(5);
/// Entries kept at most; past this the memory starts over.
const REMEMBERED: usize = 4096;
/// Names of the tokens the master registers from its configuration.
pub const CONFIGURED_API_TOKEN: &str = "configured-api";
pub const CONFIGURED_WORKER_TOKEN: &str = "configured-worker";
/// The token a master makes on its first start when none exists, and the file in its data folder that holds
/// its secret for the `arachne` CLI on the same machine.
pub const FIRST_TOKEN: &str = "admin";
pub const FIRST_TOKEN_FILE: &str = "api-token";

/// Errors of managing tokens.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid token name: {0}")]
    Name(#[from] arachne_shared::Invalid),
    #[error("a token named {0:?} exists already")]
    Exists(String),
    #[error("no token named {0:?}")]
    NotFound(String),
    #[error(transparent)]
    Store(store::Error),
    #[error(
        "the configured {which} is {len} characters long; a configured token needs at least {MIN_CONFIGURED_LEN} (`openssl rand -hex 32` makes one)"
    )]
    Weak { which: &'static str, len: usize },
    #[error("cannot write the token file {path}: {source}")]
    File {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<store::Error> for Error {
    fn from(err: store::Error) -> Self {
        match err {
            store::Error::Duplicate(what) => Self::Exists(what),
            other => Self::Store(other),
        }
    }
}

/// The fewest characters a configured token may have: one guessable by brute force would open the master.
pub const MIN_CONFIGURED_LEN: usize = 32;

/// Authentication settings of a master.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Every API route but `/health`, and every worker call, needs a token. Turning it off is allowed only
    /// while both listeners are on loopback.
    pub required: bool,
    /// An API token registered at start (as `configured-api`), for deployments that hand secrets in.
    pub api_token: Option<String>,
    /// A worker token registered at start (as `configured-worker`).
    pub worker_token: Option<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            required: true,
            api_token: None,
            worker_token: None,
        }
    }
}

/// A fresh secret of `kind`: 256 random bits, hex, behind the kind's prefix.
pub fn new_secret(kind: TokenKind) -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system provides random bytes");
    format!("{}{}", kind.prefix(), hex(&bytes))
}

/// Makes a token named `name` and returns its secret, which is stored nowhere.
pub async fn create_token(
    store: &dyn TokenStore,
    name: &str,
    kind: TokenKind,
) -> Result<String, Error> {
    validate_name("token", name)?;
    let secret = new_secret(kind);
    store
        .insert_token(&Token {
            name: name.to_owned(),
            kind,
            hash: Token::hash_of(&secret),
            created_at: chrono::Utc::now(),
        })
        .await?;
    Ok(secret)
}

/// Revokes the token named `name`.
pub async fn revoke_token(store: &dyn TokenStore, name: &str) -> Result<(), Error> {
    if store.delete_token(name).await? {
        Ok(())
    } else {
        Err(Error::NotFound(name.to_owned()))
    }
}

/// Makes the token `name` hold `secret`, replacing what it held.
async fn register(
    store: &dyn TokenStore,
    name: &str,
    kind: TokenKind,
    secret: &str,
) -> Result<(), Error> {
    let hash = Token::hash_of(secret);
    if let Some(current) = store.token_by_hash(&hash).await?
        && current.name == name
        && current.kind == kind
    {
        return Ok(());
    }
    store.delete_token(name).await?;
    store
        .insert_token(&Token {
            name: name.to_owned(),
            kind,
            hash,
            created_at: chrono::Utc::now(),
        })
        .await?;
    Ok(())
}

/// Checks tokens for the API and the gRPC service.
pub struct Auth {
    store: Arc<dyn TokenStore>,
    required: bool,
    recent: Mutex<HashMap<String, (TokenKind, Instant)>>,
}

impl Auth {
    /// Registers the configured tokens and, on a first start with none, makes the first API token and writes
    /// its secret to `data_dir`.
    pub async fn start(
        store: Arc<dyn TokenStore>,
        config: &AuthConfig,
        data_dir: &Path,
    ) -> Result<Self, Error> {
        for (which, secret) in [
            ("API token", &config.api_token),
            ("worker token", &config.worker_token),
        ] {
            if let Some(secret) = secret
                && secret.chars().count() < MIN_CONFIGURED_LEN
            {
                return Err(Error::Weak {
                    which,
                    len: secret.chars().count(),
                });
            }
        }
        if let Some(secret) = &config.api_token {
            register(store.as_ref(), CONFIGURED_API_TOKEN, TokenKind::Api, secret).await?;
        }
        if let Some(secret) = &config.worker_token {
            register(
                store.as_ref(),
                CONFIGURED_WORKER_TOKEN,
                TokenKind::Worker,
                secret,
            )
            .await?;
        }
        let has_api_token = store
            .list_tokens()
            .await?
            .iter()
            .any(|t| t.kind == TokenKind::Api);
        if config.required && !has_api_token {
            let secret = create_token(store.as_ref(), FIRST_TOKEN, TokenKind::Api).await?;
            let path = data_dir.join(FIRST_TOKEN_FILE);
            write_private(&path, &secret).map_err(|source| Error::File {
                path: path.clone(),
                source,
            })?;
            info!(file = %path.display(), "made the first API token, {FIRST_TOKEN:?}; the arachne CLI in this folder reads it from that file");
        }
        if !config.required {
            warn!(
                "authentication is off: anyone who can reach the API or the worker port controls this master"
            );
        }
        Ok(Self {
            store,
            required: config.required,
            recent: Mutex::new(HashMap::new()),
        })
    }

    pub fn required(&self) -> bool {
        self.required
    }

    /// Whether `secret` is a valid token of `kind` (always, when authentication is off).
    pub async fn check(&self, secret: &str, kind: TokenKind) -> Result<bool, store::Error> {
        if !self.required {
            return Ok(true);
        }
        let hash = Token::hash_of(secret);
        if let Some((known, at)) = self.lock().get(&hash).copied()
            && at.elapsed() < REMEMBER
        {
            return Ok(known == kind);
        }
        let Some(token) = self.store.token_by_hash(&hash).await? else {
            return Ok(false);
        };
        let mut recent = self.lock();
        if recent.len() >= REMEMBERED {
            recent.clear();
        }
        recent.insert(hash, (token.kind, Instant::now()));
        Ok(token.kind == kind)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (TokenKind, Instant)>> {
        crate::lock(&self.recent)
    }
}

/// Writes `secret` readable by its owner only.
fn write_private(path: &Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(file, "{secret}")
}
