//! `arachne notification ...`: rules that announce task and node events on a webhook, a Slack channel or by
//! email; their test messages and the record of their deliveries.

use std::process::ExitCode;
use std::time::Duration;

use arachne_api_types::DeliveryQuery;
use arachne_client::Client;
use arachne_shared::notify::{
    Channel, Delivery, DeliveryStatus, Notification, SmtpSecurity, Trigger,
};
use arachne_shared::spider::SECRET_MASK;
use clap::{Args, Subcommand};

use crate::Error;
use crate::output::{Output, print_table};

#[derive(Debug, Subcommand)]
pub enum NotificationCommand {
    List,
    Show {
        name: String,
    },
    /// Create a rule, or replace the one of that name whole (a secret not given again is kept).
    Set(Box<SetArgs>),
    /// Announce again what the rule announces.
    Enable {
        name: String,
    },
    /// Keep the rule but announce nothing with it.
    Disable {
        name: String,
    },
    /// Delete a rule; its deliveries stay in the record.
    Delete {
        name: String,
    },
    /// Send a test message on the rule's channel and print how it went.
    Test {
        name: String,
    },
    /// The deliveries made, newest first.
    Deliveries {
        /// Only this rule's.
        #[arg(long)]
        notification: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("channel").required(true)))]
pub struct SetArgs {
    name: String,
    /// POST a JSON message to this URL.
    #[arg(long, group = "channel", value_name = "URL")]
    webhook: Option<String>,
    /// The environment variable holding the webhook's signing secret (HMAC-SHA256 of the body in
    /// X-Arachne-Signature).
    #[arg(
        long,
        value_name = "VAR",
        requires = "webhook",
        conflicts_with = "secret_file"
    )]
    secret_env: Option<String>,
    /// A file holding the webhook's signing secret.
    #[arg(long, value_name = "PATH", requires = "webhook")]
    secret_file: Option<std::path::PathBuf>,
    /// POST a Slack-compatible `{"text": ...}` message to this incoming-webhook URL.
    #[arg(long, group = "channel", value_name = "URL")]
    slack: Option<String>,
    /// Send email through this SMTP server (HOST or HOST:PORT; port 587 by default).
    #[arg(long, group = "channel", value_name = "HOST[:PORT]", requires_all = ["from", "to"])]
    smtp: Option<String>,
    /// starttls (default), tls, or none (a relay on this machine only).
    #[arg(
        long,
        value_name = "MODE",
        requires = "smtp",
        default_value = "starttls"
    )]
    smtp_security: SmtpSecurity,
    #[arg(long, value_name = "USER", requires = "smtp")]
    smtp_user: Option<String>,
    /// The environment variable holding the SMTP password.
    #[arg(
        long,
        value_name = "VAR",
        requires = "smtp_user",
        conflicts_with = "smtp_password_file"
    )]
    smtp_password_env: Option<String>,
    /// A file holding the SMTP password.
    #[arg(long, value_name = "PATH", requires = "smtp_user")]
    smtp_password_file: Option<std::path::PathBuf>,
    #[arg(long, value_name = "ADDRESS", requires = "smtp")]
    from: Option<String>,
    /// A recipient; repeat for more.
    #[arg(long, value_name = "ADDRESS", requires = "smtp")]
    to: Vec<String>,
    /// The events announced: finished, error, cancelled, abnormal, no_items, fatal_error, node_offline,
    /// node_online (comma-separated or repeated).
    #[arg(long = "on", value_name = "EVENT", value_delimiter = ',')]
    triggers: Vec<Trigger>,
    /// Also announce a task still running this many minutes after it started.
    #[arg(long, value_name = "MINUTES")]
    longer_than: Option<u32>,
    /// Only tasks of this spider.
    #[arg(long)]
    spider: Option<String>,
    /// Only tasks of this schedule.
    #[arg(long)]
    schedule: Option<String>,
    /// Store the rule disabled.
    #[arg(long)]
    disabled: bool,
}

impl NotificationCommand {
    pub(crate) async fn apply(self, client: &Client, output: Output) -> Result<ExitCode, Error> {
        let rule = match self {
            Self::List => {
                return output.show(&client.list_notifications().await?, |r| print_rules(r));
            }
            Self::Show { name } => client.get_notification(&name).await?,
            Self::Set(args) => args.apply(client).await?,
            Self::Enable { name } => set_enabled(client, &name, true).await?,
            Self::Disable { name } => set_enabled(client, &name, false).await?,
            Self::Delete { name } => {
                client.delete_notification(&name).await?;
                return output.show(&serde_json::json!({"deleted": name}), |_| {
                    outln!("notification {name} deleted");
                    Ok(())
                });
            }
            Self::Test { name } => {
                let delivery = tested(client, &name).await?;
                let failed = delivery.status != DeliveryStatus::Delivered;
                output.show(&delivery, |d| print_deliveries(std::slice::from_ref(d)))?;
                return Ok(if failed {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                });
            }
            Self::Deliveries {
                notification,
                limit,
            } => {
                let query = DeliveryQuery {
                    notification,
                    limit: Some(limit),
                };
                return output.show(&client.list_deliveries(&query).await?, |d| {
                    print_deliveries(d)
                });
            }
        };
        output.show(&rule, |r| print_rules(std::slice::from_ref(r)))
    }
}

impl SetArgs {
    async fn apply(self, client: &Client) -> Result<Notification, Error> {
        let existing = match client.get_notification(&self.name).await {
            Ok(rule) => Some(rule),
            Err(err) if err.is_not_found() => None,
            Err(err) => return Err(err.into()),
        };
        // Replacing, a secret not given again is sent masked: the master keeps the one it has.
        let kept = existing.is_some().then(|| SECRET_MASK.to_owned());
        let channel = if let Some(url) = self.webhook {
            let secret =
                crate::read_secret(self.secret_env.as_deref(), self.secret_file.as_deref())?;
            Channel::Webhook {
                url,
                secret: secret.or(kept),
            }
        } else if let Some(url) = self.slack {
            Channel::Slack { url }
        } else {
            let server = self.smtp.unwrap_or_default();
            let (host, port) = match server.rsplit_once(':') {
                Some((host, port)) => (
                    host.to_owned(),
                    port.parse().map_err(|_| {
                        Error::Input(format!("--smtp {server:?}: the port is not a number"))
                    })?,
                ),
                None => (server, 587),
            };
            let password = crate::read_secret(
                self.smtp_password_env.as_deref(),
                self.smtp_password_file.as_deref(),
            )?;
            Channel::Email {
                host,
                port,
                security: self.smtp_security,
                password: password.or(kept.filter(|_| self.smtp_user.is_some())),
                username: self.smtp_user,
                from: self.from.unwrap_or_default(),
                to: self.to,
            }
        };
        let rule = Notification {
            name: self.name,
            channel,
            triggers: self.triggers,
            longer_than_minutes: self.longer_than,
            spider: self.spider,
            schedule: self.schedule,
            enabled: !self.disabled,
            created_at: chrono::Utc::now(),
        };
        Ok(match existing {
            Some(_) => client.replace_notification(&rule).await?,
            None => client.create_notification(&rule).await?,
        })
    }
}

async fn set_enabled(client: &Client, name: &str, enabled: bool) -> Result<Notification, Error> {
    // The rule comes back with its secrets masked, which the master reads as "keep".
    let mut rule = client.get_notification(name).await?;
    rule.enabled = enabled;
    Ok(client.replace_notification(&rule).await?)
}

/// Sends a test message and waits (up to the master's attempt timeout and a margin) for its first outcome.
async fn tested(client: &Client, name: &str) -> Result<Delivery, Error> {
    let sent = client.test_notification(name).await?;
    let query = DeliveryQuery {
        notification: Some(name.to_owned()),
        limit: Some(20),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = client.list_deliveries(&query).await?;
        if let Some(delivery) = now.into_iter().find(|d| d.id == sent.id)
            && (delivery.attempts > 0 || tokio::time::Instant::now() > deadline)
        {
            return Ok(delivery);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn print_rules(rules: &[Notification]) -> Result<(), Error> {
    let rows = rules
        .iter()
        .map(|r| {
            let channel = match &r.channel {
                Channel::Webhook { url, .. } | Channel::Slack { url } => {
                    format!("{} {url}", r.channel.kind())
                }
                Channel::Email { host, port, to, .. } => {
                    format!("email {host}:{port} → {}", to.join(","))
                }
            };
            let mut on: Vec<String> = r.triggers.iter().map(|t| t.to_string()).collect();
            if let Some(minutes) = r.longer_than_minutes {
                on.push(format!("longer_than {minutes}m"));
            }
            let scope = match (&r.spider, &r.schedule) {
                (None, None) => "all".to_owned(),
                (spider, schedule) => [
                    spider.as_ref().map(|s| format!("spider {s}")),
                    schedule.as_ref().map(|s| format!("schedule {s}")),
                ]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(", "),
            };
            vec![
                r.name.clone(),
                if r.enabled { "yes" } else { "no" }.into(),
                channel,
                on.join(","),
                scope,
            ]
        })
        .collect();
    print_table(&["NAME", "ENABLED", "CHANNEL", "ON", "FOR"], rows)
}

fn print_deliveries(deliveries: &[Delivery]) -> Result<(), Error> {
    let rows = deliveries
        .iter()
        .map(|d| {
            vec![
                d.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                d.notification.clone(),
                d.channel.clone(),
                d.trigger.clone(),
                d.status.to_string(),
                d.response_status
                    .map(|s| s.to_string())
                    .unwrap_or("-".into()),
                d.attempts.to_string(),
                d.message.title.clone(),
                d.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print_table(
        &[
            "TIME",
            "NOTIFICATION",
            "CHANNEL",
            "TRIGGER",
            "STATUS",
            "RESPONSE",
            "ATTEMPTS",
            "MESSAGE",
            "ERROR",
        ],
        rows,
    )
}
