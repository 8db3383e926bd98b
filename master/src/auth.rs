//! Who may use the HTTP API, with which role, and who may join as a worker. Tokens live in the store as
//! hashes; a secret is shown once, when it is made. What a token was found to be is remembered for a few
//! seconds, so a busy API does not ask the store on every request, and a revoked token (or a user's lowered
//! role) takes effect within those seconds.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arachne_shared::files::hex;
use arachne_shared::spider::validate_name;
use arachne_shared::{Caller, Role, Token, TokenKind};
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

/// What a new token is: its name and kind, and for an API token its role, user and expiry.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub name: String,
    pub kind: TokenKind,
    pub role: Role,
    pub user: Option<String>,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    pub session: bool,
}

impl NewToken {
    /// A token of the master's own (`arachne-master token`, its first token): no user, no expiry.
    pub fn master(name: &str, kind: TokenKind, role: Role) -> Self {
        Self {
            name: name.to_owned(),
            kind,
            role,
            user: None,
            expires_at: None,
            session: false,
        }
    }
}

/// Makes a token and returns it with its secret, which is stored nowhere.
pub async fn create_token(store: &dyn TokenStore, new: NewToken) -> Result<(Token, String), Error> {
    validate_name("token", &new.name)?;
    let secret = new_secret(new.kind);
    let token = Token {
        name: new.name,
        kind: new.kind,
        hash: Token::hash_of(&secret),
        created_at: chrono::Utc::now(),
        role: new.role,
        user: new.user,
        expires_at: new.expires_at,
        session: new.session,
    };
    store.insert_token(&token).await?;
    Ok((token, secret))
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
            role: Role::Admin,
            user: None,
            expires_at: None,
            session: false,
        })
        .await?;
    Ok(())
}

/// Checks tokens for the API and the gRPC service.
pub struct Auth {
    store: Arc<dyn TokenStore>,
    required: bool,
    recent: Mutex<HashMap<String, Remembered>>,
}

/// What a token's hash was found to be, and when: the caller it makes (none when it makes none) and its kind.
type Remembered = (Option<Caller>, TokenKind, Instant);

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
            let first = NewToken::master(FIRST_TOKEN, TokenKind::Api, Role::Admin);
            let (_, secret) = create_token(store.as_ref(), first).await?;
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

    /// Whether `secret` is a valid worker token (always, when authentication is off).
    pub async fn check_worker(&self, secret: &str) -> Result<bool, store::Error> {
        if !self.required {
            return Ok(true);
        }
        Ok(self.look_up(secret).await?.1 == Some(TokenKind::Worker))
    }

    /// Who an API token's secret speaks for, and with which role; `None` for a secret that is unknown,
    /// revoked, expired, not an API token, or whose user is gone. Everyone is an admin when authentication
    /// is off.
    pub async fn caller(&self, secret: &str) -> Result<Option<Caller>, store::Error> {
        if !self.required {
            return Ok(Some(Caller {
                actor: "anonymous".into(),
                role: Role::Admin,
                token: String::new(),
                user: None,
            }));
        }
        Ok(self.look_up(secret).await?.0)
    }

    /// The caller a secret makes, and its token's kind; remembered for [`REMEMBER`].
    async fn look_up(
        &self,
        secret: &str,
    ) -> Result<(Option<Caller>, Option<TokenKind>), store::Error> {
        let hash = Token::hash_of(secret);
        if let Some((caller, kind, at)) = self.lock().get(&hash).cloned()
            && at.elapsed() < REMEMBER
        {
            return Ok((caller, Some(kind)));
        }
        let Some(token) = self.store.token_by_hash(&hash).await? else {
            return Ok((None, None));
        };
        let expired = token.expires_at.is_some_and(|at| at <= chrono::Utc::now());
        let caller = match (&token.user, token.kind, expired) {
            (_, TokenKind::Worker, _) | (_, _, true) => None,
            (None, TokenKind::Api, false) => Some(Caller {
                actor: format!("token:{}", token.name),
                role: token.role,
                token: token.name.clone(),
                user: None,
            }),
            (Some(user), TokenKind::Api, false) => {
                self.store.user_by_name(user).await?.map(|found| Caller {
                    actor: user.clone(),
                    role: token.role.min(found.role),
                    token: token.name.clone(),
                    user: Some(user.clone()),
                })
            }
        };
        let mut recent = self.lock();
        if recent.len() >= REMEMBERED {
            recent.clear();
        }
        // An expiring token is not remembered past its expiry by more than REMEMBER.
        recent.insert(hash, (caller.clone(), token.kind, Instant::now()));
        Ok((caller, Some(token.kind)))
    }

    /// Forgets what was remembered of every token: a user's role or a token changed.
    pub fn forget(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Remembered>> {
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
