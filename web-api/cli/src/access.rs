//! `arachne user ...`, `arachne token ...`, `arachne audit` and `arachne whoami`: users and their roles, API
//! tokens with a role and an expiry, the audit log (all for admins), and who the CLI's token speaks for.

use std::process::ExitCode;

use arachne_api_types::{AuditQuery, CreateToken, CreateUser, UpdateUser};
use arachne_client::Client;
use arachne_shared::{AuditEntry, Role, TokenInfo, TokenKind, UserInfo};
use clap::{Args, Subcommand};

use crate::Error;
use crate::output::{Output, print_table};

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    List,
    /// Make a user; the password comes from --password-env or --password-file.
    Create {
        name: String,
        /// admin, developer or viewer.
        #[arg(long)]
        role: Role,
        #[command(flatten)]
        password: PasswordArgs,
    },
    /// Change a user's role or password; their tokens follow the new role.
    #[command(group(clap::ArgGroup::new("change").required(true).multiple(true)))]
    Set {
        name: String,
        #[arg(long, group = "change")]
        role: Option<Role>,
        #[command(flatten)]
        password: PasswordArgs,
    },
    /// Delete a user and revoke every token of theirs.
    Delete {
        name: String,
    },
}

/// Where a password comes from: never the command line itself.
#[derive(Debug, Args)]
pub struct PasswordArgs {
    /// The environment variable holding the password.
    #[arg(
        long,
        value_name = "VAR",
        group = "change",
        conflicts_with = "password_file"
    )]
    password_env: Option<String>,
    /// A file holding the password (its first line).
    #[arg(long, value_name = "PATH", group = "change")]
    password_file: Option<std::path::PathBuf>,
}

impl PasswordArgs {
    fn read(&self) -> Result<Option<String>, Error> {
        crate::read_secret(self.password_env.as_deref(), self.password_file.as_deref())
    }
}

impl UserCommand {
    pub(crate) async fn apply(self, client: &Client, output: Output) -> Result<ExitCode, Error> {
        let user = match self {
            Self::List => return output.show(&client.list_users().await?, |u| print_users(u)),
            Self::Create {
                name,
                role,
                password,
            } => {
                let password = password.read()?.ok_or_else(|| {
                    Error::Input(
                        "give the password with --password-env VAR or --password-file PATH".into(),
                    )
                })?;
                client
                    .create_user(&CreateUser {
                        name,
                        role,
                        password,
                    })
                    .await?
            }
            Self::Set {
                name,
                role,
                password,
            } => {
                let update = UpdateUser {
                    role,
                    password: password.read()?,
                };
                client.update_user(&name, &update).await?
            }
            Self::Delete { name } => {
                client.delete_user(&name).await?;
                return output.show(&serde_json::json!({"deleted": name}), |_| {
                    outln!("user {name} deleted, and their tokens revoked");
                    Ok(())
                });
            }
        };
        output.show(&user, |u| print_users(std::slice::from_ref(u)))
    }
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    List,
    /// Make a token and print its secret, shown this once.
    Create {
        name: String,
        /// What it may do: viewer (default), developer or admin; at most its user's role.
        #[arg(long, default_value = "viewer")]
        role: Role,
        /// The user it acts for (your own by default).
        #[arg(long)]
        user: Option<String>,
        /// It stops working after this many days.
        #[arg(long, value_name = "DAYS")]
        expires_in_days: Option<u32>,
        /// `api` (default) or `worker` (for a worker joining over gRPC).
        #[arg(long, default_value = "api")]
        kind: TokenKind,
    },
    /// Revoke a token: it stops working at once.
    Revoke {
        name: String,
    },
}

impl TokenCommand {
    pub(crate) async fn apply(self, client: &Client, output: Output) -> Result<ExitCode, Error> {
        match self {
            Self::List => output.show(&client.list_tokens().await?, |t| print_tokens(t)),
            Self::Create {
                name,
                role,
                user,
                expires_in_days,
                kind,
            } => {
                let request = CreateToken {
                    name,
                    kind,
                    role,
                    user,
                    expires_in_days,
                };
                let made = client.create_token(&request).await?;
                output.show(&made, |m| {
                    outln!("{}", m.secret);
                    Ok(())
                })
            }
            Self::Revoke { name } => {
                client.revoke_token(&name).await?;
                output.show(&serde_json::json!({"revoked": name}), |_| {
                    outln!("token {name} revoked");
                    Ok(())
                })
            }
        }
    }
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only what this user (or `token:NAME`) did.
    #[arg(long)]
    actor: Option<String>,
    #[arg(long, default_value_t = 100)]
    limit: u32,
}

impl AuditArgs {
    pub(crate) async fn apply(self, client: &Client, output: Output) -> Result<ExitCode, Error> {
        let query = AuditQuery {
            actor: self.actor,
            before: None,
            limit: Some(self.limit),
        };
        output.show(&client.audit(&query).await?, |e| print_audit(e))
    }
}

pub(crate) async fn whoami(client: &Client, output: Output) -> Result<ExitCode, Error> {
    output.show(&client.me().await?, |me| {
        outln!("{} ({}, token {})", me.actor, me.role, me.token);
        Ok(())
    })
}

fn print_users(users: &[UserInfo]) -> Result<(), Error> {
    let rows = users
        .iter()
        .map(|u| {
            vec![
                u.name.clone(),
                u.role.to_string(),
                u.created_at.format("%Y-%m-%d %H:%M").to_string(),
            ]
        })
        .collect();
    print_table(&["NAME", "ROLE", "CREATED"], rows)
}

fn print_tokens(tokens: &[TokenInfo]) -> Result<(), Error> {
    let rows = tokens
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                t.kind.to_string(),
                t.role.to_string(),
                t.user.clone().unwrap_or("-".into()),
                t.created_at.format("%Y-%m-%d %H:%M").to_string(),
                t.expires_at
                    .map_or("never".into(), |at| at.format("%Y-%m-%d %H:%M").to_string()),
            ]
        })
        .collect();
    print_table(
        &["NAME", "KIND", "ROLE", "USER", "CREATED", "EXPIRES"],
        rows,
    )
}

fn print_audit(entries: &[AuditEntry]) -> Result<(), Error> {
    let rows = entries
        .iter()
        .map(|e| {
            vec![
                e.at.format("%Y-%m-%d %H:%M:%S").to_string(),
                e.actor.clone(),
                e.action.clone(),
                e.target.clone(),
                e.status.to_string(),
            ]
        })
        .collect();
    print_table(&["TIME", "WHO", "ACTION", "TARGET", "STATUS"], rows)
}
