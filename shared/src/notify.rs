//! Notifications: the rules that say which events are announced on which channel ([`Notification`]), and the
//! record of each announcement's delivery ([`Delivery`]), with the checks a rule passes before it is stored.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::spider::SECRET_MASK;
use crate::{Invalid, TaskId, TaskStatus};

/// A rule: on these events, of these tasks, send a message on this channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Notification {
    pub name: String,
    pub channel: Channel,
    /// The events announced; at least one, or `longer_than_minutes`.
    #[serde(default)]
    pub triggers: Vec<Trigger>,
    /// Also announce a task still running this many minutes after it started (once per task).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longer_than_minutes: Option<u32>,
    /// Only tasks of this spider; every spider when absent. Node events ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spider: Option<String>,
    /// Only tasks this schedule (by name) created; any task when absent. Node events ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// Task events of tasks that ended before this are never announced by this rule.
    #[serde(default = "Utc::now")]
    pub created_at: DateTime<Utc>,
}

fn enabled() -> bool {
    true
}

/// Where a notification's messages go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Channel {
    /// A JSON POST of the event; with a secret, signed by an `X-Arachne-Signature: sha256=HEX` header, the
    /// HMAC-SHA256 of the body under the secret.
    Webhook {
        url: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret: Option<String>,
    },
    /// A Slack (or Mattermost, Rocket.Chat...) incoming webhook: a POST of `{"text": ...}`.
    Slack { url: String },
    /// Email over SMTP.
    Email {
        host: String,
        #[serde(default = "smtp_port")]
        port: u16,
        #[serde(default)]
        security: SmtpSecurity,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        username: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password: Option<String>,
        from: String,
        to: Vec<String>,
    },
}

impl Channel {
    /// `webhook`, `slack` or `email`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Webhook { .. } => "webhook",
            Self::Slack { .. } => "slack",
            Self::Email { .. } => "email",
        }
    }
}

fn smtp_port() -> u16 {
    587
}

/// How an SMTP connection is protected.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain connection upgraded by STARTTLS, which the server must offer (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No encryption: only for a relay on this machine or a trusted network.
    None,
}

named_enum!(SmtpSecurity, "SMTP security", Starttls => "starttls", Tls => "tls", None => "none");

/// An event a notification can announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// A task ended as Finished.
    Finished,
    /// A task ended as Error.
    Error,
    /// A task ended as Cancelled.
    Cancelled,
    /// A task ended as Abnormal.
    Abnormal,
    /// A task finished with no item.
    NoItems,
    /// A task reported an ERROR marked fatal.
    FatalError,
    /// A node went offline.
    NodeOffline,
    /// A node came (back) online.
    NodeOnline,
}

named_enum!(Trigger, "trigger",
    Finished => "finished", Error => "error", Cancelled => "cancelled", Abnormal => "abnormal",
    NoItems => "no_items", FatalError => "fatal_error", NodeOffline => "node_offline",
    NodeOnline => "node_online");

impl Trigger {
    /// The trigger a task ending with `status` fires, if any.
    pub fn ended(status: TaskStatus) -> Option<Self> {
        match status {
            TaskStatus::Finished => Some(Self::Finished),
            TaskStatus::Error => Some(Self::Error),
            TaskStatus::Cancelled => Some(Self::Cancelled),
            TaskStatus::Abnormal => Some(Self::Abnormal),
            _ => None,
        }
    }
}

impl Notification {
    /// Checks the rule as a whole; the message names the field at fault.
    pub fn validate(&self) -> Result<(), Invalid> {
        crate::spider::validate_name("notification", &self.name)?;
        if self.triggers.is_empty() && self.longer_than_minutes.is_none() {
            return Err(Invalid(
                "triggers: name at least one event (finished, error, cancelled, abnormal, no_items, fatal_error, node_offline, node_online) or set longer_than_minutes".into(),
            ));
        }
        if self.longer_than_minutes == Some(0) {
            return Err(Invalid("longer_than_minutes must be at least 1".into()));
        }
        match &self.channel {
            Channel::Webhook { url, .. } | Channel::Slack { url } => http_url(url),
            Channel::Email { host, from, to, .. } => {
                if host.trim().is_empty() {
                    return Err(Invalid("channel.host: name the SMTP server".into()));
                }
                if to.is_empty() {
                    return Err(Invalid("channel.to: name at least one recipient".into()));
                }
                for address in std::iter::once(from).chain(to) {
                    let (user, domain) = address.split_once('@').unwrap_or(("", ""));
                    if user.is_empty() || domain.is_empty() || address.contains(char::is_whitespace)
                    {
                        return Err(Invalid(format!("{address:?} is not an email address")));
                    }
                }
                Ok(())
            }
        }
    }

    /// The rule as the API shows it: the webhook secret and SMTP password masked.
    pub fn masked(mut self) -> Self {
        match &mut self.channel {
            Channel::Webhook {
                secret: Some(secret),
                ..
            } => *secret = SECRET_MASK.into(),
            Channel::Email {
                password: Some(password),
                ..
            } => *password = SECRET_MASK.into(),
            _ => {}
        }
        self
    }

    /// A secret sent back masked (as the API showed it) keeps the stored one.
    pub fn keep_secrets_of(&mut self, stored: &Notification) {
        match (&mut self.channel, &stored.channel) {
            (
                Channel::Webhook {
                    secret: Some(new), ..
                },
                Channel::Webhook { secret: old, .. },
            )
            | (
                Channel::Email {
                    password: Some(new),
                    ..
                },
                Channel::Email { password: old, .. },
            ) if new == SECRET_MASK => {
                if let Some(old) = old {
                    *new = old.clone();
                }
            }
            _ => {}
        }
    }

    /// Whether the rule announces `trigger`.
    pub fn fires_on(&self, trigger: Trigger) -> bool {
        self.enabled && self.triggers.contains(&trigger)
    }
}

fn http_url(url: &str) -> Result<(), Invalid> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(rest) if !rest.is_empty() && !url.contains(char::is_whitespace) => Ok(()),
        _ => Err(Invalid(format!(
            "channel.url {url:?} is not an http:// or https:// URL"
        ))),
    }
}

/// What a message says: the event, and for a task its spider, status, node, duration, items, last log lines
/// and a link to it in the UI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Message {
    /// One line: what happened.
    pub title: String,
    /// The event: a trigger's name, `longer_than`, or `test`.
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskSummary>,
    /// The node, for a node event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The page of the task (or the nodes page) in the web UI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    pub at: DateTime<Utc>,
}

/// A task as a message describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TaskSummary {
    pub id: TaskId,
    pub spider: String,
    pub status: TaskStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Run time so far, or in all once it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    pub items: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// The task's last log lines, oldest first.
    #[serde(default)]
    pub last_log_lines: Vec<String>,
}

impl Message {
    /// The message as plain text: its title, then a line per fact, then the last log lines and the link.
    pub fn text(&self) -> String {
        let mut text = self.title.clone();
        if let Some(task) = &self.task {
            text.push_str(&format!(
                "\n\nspider: {}\nstatus: {}\ntask: {}",
                task.spider, task.status, task.id
            ));
            if let Some(node) = &task.node {
                text.push_str(&format!("\nnode: {node}"));
            }
            if let Some(ms) = task.duration_ms {
                text.push_str(&format!("\nduration: {}", duration(ms)));
            }
            text.push_str(&format!("\nitems: {}", task.items));
            if let Some(schedule) = &task.schedule {
                text.push_str(&format!("\nschedule: {schedule}"));
            }
            if let Some(error) = &task.error {
                text.push_str(&format!("\nerror: {error}"));
            }
            if !task.last_log_lines.is_empty() {
                text.push_str("\n\nlast log lines:\n");
                text.push_str(&task.last_log_lines.join("\n"));
            }
        }
        if let Some(link) = &self.link {
            text.push_str(&format!("\n\n{link}"));
        }
        text
    }
}

/// `1h 02m 03s`, `2m 03s` or `3.4s`.
fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, _) => format!("{:.1}s", ms as f64 / 1000.0),
        (0, m, s) => format!("{m}m {s:02}s"),
        (h, m, s) => format!("{h}h {m:02}m {s:02}s"),
    }
}

/// One message on its way to one channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Delivery {
    pub id: DeliveryId,
    /// The rule that sent it.
    pub notification: String,
    /// The channel's kind: webhook, slack or email.
    pub channel: String,
    /// What set it off: a trigger's name, `longer_than`, or `test`.
    pub trigger: String,
    /// What it was about (`task:ID`, `node:NAME@TIME`): one delivery per rule, trigger and subject.
    pub subject: String,
    pub message: Message,
    pub status: DeliveryStatus,
    /// Sending attempts so far.
    pub attempts: u32,
    /// The HTTP status (or SMTP reply code) of the last attempt, when there was an answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_status: Option<u16>,
    /// Why the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    /// When the next attempt is due, while it is pending.
    pub next_attempt_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<DateTime<Utc>>,
}

uuid_id!(
    /// Identifies a delivery.
    DeliveryId
);

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Not sent yet, or to be tried again.
    Pending,
    /// The channel took it.
    Delivered,
    /// Every attempt failed.
    Failed,
}

named_enum!(DeliveryStatus, "delivery status", Pending => "pending", Delivered => "delivered", Failed => "failed");

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(channel: Channel) -> Notification {
        Notification {
            name: "ops".into(),
            channel,
            triggers: vec![Trigger::Error],
            longer_than_minutes: None,
            spider: None,
            schedule: None,
            enabled: true,
            created_at: Utc::now(),
        }
    }

    #[test]
    fn a_rule_is_checked_field_by_field() {
        let hook = |url: &str| Channel::Webhook {
            url: url.into(),
            secret: None,
        };
        assert!(rule(hook("https://example.com/x")).validate().is_ok());
        let bad = rule(hook("ftp://example.com")).validate().unwrap_err();
        assert!(bad.0.contains("channel.url"), "{bad}");
        let mut none = rule(hook("http://h"));
        none.triggers.clear();
        assert!(none.validate().unwrap_err().0.contains("triggers"));
        let mail = |to: &str| Channel::Email {
            host: "smtp".into(),
            port: 25,
            security: SmtpSecurity::None,
            username: None,
            password: None,
            from: "arachne@example.com".into(),
            to: vec![to.into()],
        };
        assert!(rule(mail("ops@example.com")).validate().is_ok());
        assert!(
            rule(mail("ops"))
                .validate()
                .unwrap_err()
                .0
                .contains("\"ops\"")
        );
        assert_eq!(
            "Fatal_Error".parse::<Trigger>().unwrap(),
            Trigger::FatalError
        );
        assert!(
            "boom"
                .parse::<Trigger>()
                .unwrap_err()
                .0
                .contains("node_offline")
        );
    }

    #[test]
    fn secrets_are_masked_on_the_way_out_and_kept_when_sent_back_masked() {
        let stored = rule(Channel::Webhook {
            url: "http://h".into(),
            secret: Some("s3cret".into()),
        });
        let shown = stored.clone().masked();
        assert_eq!(
            shown.channel,
            Channel::Webhook {
                url: "http://h".into(),
                secret: Some(SECRET_MASK.into())
            }
        );
        let mut back = shown;
        back.keep_secrets_of(&stored);
        assert_eq!(back.channel, stored.channel);
    }

    #[test]
    fn a_message_reads_as_text() {
        let message = Message {
            title: "quotes ended as error".into(),
            event: "error".into(),
            task: Some(TaskSummary {
                id: TaskId::new(),
                spider: "quotes".into(),
                status: TaskStatus::Error,
                node: Some("w1".into()),
                duration_ms: Some(63_000),
                items: 0,
                error: Some("exit code 1".into()),
                schedule: None,
                last_log_lines: vec!["Traceback".into()],
            }),
            node: None,
            link: Some("http://m/#/tasks/x".into()),
            at: Utc::now(),
        };
        let text = message.text();
        for part in [
            "spider: quotes",
            "node: w1",
            "duration: 1m 03s",
            "items: 0",
            "exit code 1",
            "Traceback",
            "http://m/#/tasks/x",
        ] {
            assert!(text.contains(part), "{part} in {text}");
        }
    }
}
