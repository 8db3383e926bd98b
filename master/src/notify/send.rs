//! Sending one message on one channel: a signed JSON POST, a Slack-compatible POST, or an email over SMTP
//! (lettre). Each attempt ends in an [`Attempt`]: taken, worth another try, or refused for good.

use std::time::Duration;

use arachne_shared::notify::{Channel, Delivery, SmtpSecurity};
use hmac::{Hmac, Mac};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use sha2::Sha256;

/// The header that carries a webhook body's signature: `sha256=` and the hex HMAC-SHA256 of the body.
pub const SIGNATURE_HEADER: &str = "X-Arachne-Signature";

/// How one attempt went.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// The channel took the message; the HTTP status or SMTP reply code.
    Taken(u16),
    /// It may work later (a timeout, a 5xx, a refused connection).
    Retry { status: Option<u16>, error: String },
    /// It will not work as configured (a 4xx, a rejected address): no more attempts.
    Refused { status: Option<u16>, error: String },
}

/// Why the channels cannot be used at all.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot build the HTTP client for notifications: {0}")]
    Client(#[source] reqwest::Error),
}

/// What sends on every channel: the HTTP client webhooks are posted with (SMTP connects per message).
pub(crate) struct Channels {
    http: reqwest::Client,
}

impl Channels {
    /// TLS over the ring provider with Mozilla's authorities; no redirects (a receiver that moved is
    /// reconfigured, not followed with a signed body).
    pub(crate) fn new() -> Result<Self, Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("arachne/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(Error::Client)?;
        Ok(Self { http })
    }

    /// Sends `delivery`'s message on `channel`, within `timeout`.
    pub(crate) async fn send(
        &self,
        channel: &Channel,
        delivery: &Delivery,
        timeout: Duration,
    ) -> Attempt {
        send(&self.http, channel, delivery, timeout).await
    }
}

async fn send(
    http: &reqwest::Client,
    channel: &Channel,
    delivery: &Delivery,
    timeout: Duration,
) -> Attempt {
    match channel {
        Channel::Webhook { url, secret } => {
            let body = serde_json::to_vec(&webhook_body(delivery)).expect("messages serialise");
            let mut request = http
                .post(url)
                .timeout(timeout)
                .header("content-type", "application/json")
                .header("X-Arachne-Event", &delivery.trigger)
                .header("X-Arachne-Delivery", delivery.id.to_string());
            if let Some(secret) = secret {
                request = request.header(SIGNATURE_HEADER, signature(secret, &body));
            }
            post(request.body(body)).await
        }
        Channel::Slack { url } => {
            let body = serde_json::json!({ "text": delivery.message.text() });
            post(http.post(url).timeout(timeout).json(&body)).await
        }
        Channel::Email {
            host,
            port,
            security,
            username,
            password,
            from,
            to,
        } => {
            let mail = Mail {
                host,
                port: *port,
                security: *security,
                username: username.as_deref(),
                password: password.as_deref(),
                from,
                to,
            };
            match tokio::time::timeout(timeout, mail.send(delivery)).await {
                Ok(attempt) => attempt,
                Err(_) => Attempt::Retry {
                    status: None,
                    error: format!("no answer from {host}:{port} within {timeout:?}"),
                },
            }
        }
    }
}

/// What a webhook receives: the delivery's identity and the message, with its text for channels that only
/// show text.
fn webhook_body(delivery: &Delivery) -> serde_json::Value {
    serde_json::json!({
        "delivery": delivery.id,
        "notification": delivery.notification,
        "trigger": delivery.trigger,
        "text": delivery.message.text(),
        "message": delivery.message,
    })
}

/// `sha256=` and the hex HMAC-SHA256 of `body` under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

async fn post(request: reqwest::RequestBuilder) -> Attempt {
    match request.send().await {
        Ok(response) => {
            let status = response.status();
            let code = status.as_u16();
            if status.is_success() {
                return Attempt::Taken(code);
            }
            let text = response.text().await.unwrap_or_default();
            let error = format!(
                "answered {status}: {}",
                text.chars().take(200).collect::<String>()
            );
            // Asked to come back later, or failing on its side: worth another try; anything else 4xx will
            // fail the same way every time.
            if status.is_server_error() || code == 408 || code == 429 {
                Attempt::Retry {
                    status: Some(code),
                    error,
                }
            } else {
                Attempt::Refused {
                    status: Some(code),
                    error,
                }
            }
        }
        Err(err) => Attempt::Retry {
            status: None,
            error: chain(&err),
        },
    }
}

/// An error with its sources, which say what actually went wrong (refused, timed out, bad certificate).
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// An email channel's settings, borrowed for one attempt.
struct Mail<'a> {
    host: &'a str,
    port: u16,
    security: SmtpSecurity,
    username: Option<&'a str>,
    password: Option<&'a str>,
    from: &'a str,
    to: &'a [String],
}

impl Mail<'_> {
    async fn send(&self, delivery: &Delivery) -> Attempt {
        let refused = |error: String| Attempt::Refused {
            status: None,
            error,
        };
        let mut builder = lettre::Message::builder()
            .subject(delivery.message.title.clone())
            .header(lettre::message::header::ContentType::TEXT_PLAIN);
        match self.from.parse() {
            Ok(from) => builder = builder.from(from),
            Err(err) => return refused(format!("from {:?}: {err}", self.from)),
        }
        for to in self.to {
            match to.parse() {
                Ok(to) => builder = builder.to(to),
                Err(err) => return refused(format!("to {to:?}: {err}")),
            }
        }
        let email = match builder.body(delivery.message.text()) {
            Ok(email) => email,
            Err(err) => return refused(err.to_string()),
        };
        let transport = match self.security {
            SmtpSecurity::Starttls => {
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(self.host)
            }
            SmtpSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(self.host),
            SmtpSecurity::None => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(
                self.host,
            )),
        };
        let mut transport = match transport {
            Ok(transport) => transport.port(self.port),
            Err(err) => return refused(chain(&err)),
        };
        if let Some(user) = self.username {
            transport = transport.credentials(Credentials::new(
                user.to_owned(),
                self.password.unwrap_or_default().to_owned(),
            ));
        }
        match transport.build().send(email).await {
            Ok(response) => Attempt::Taken(reply_code(response.code())),
            Err(err) => {
                let status = err.status().map(reply_code);
                // A permanent SMTP refusal (5xx: no such mailbox, authentication failed) will not change.
                if err.is_permanent() {
                    Attempt::Refused {
                        status,
                        error: chain(&err),
                    }
                } else {
                    Attempt::Retry {
                        status,
                        error: chain(&err),
                    }
                }
            }
        }
    }
}

fn reply_code(code: lettre::transport::smtp::response::Code) -> u16 {
    code.to_string().parse().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_hex_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
