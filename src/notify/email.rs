//! Email notifications over SMTP (`[notify] email`), with lettre.
//!
//! The URL chooses the transport:
//! - `smtps://host[:465]`: TLS from the first byte;
//! - `smtp://host[:587]`: STARTTLS when the server offers it. When the URL carries credentials
//!   and the host is not loopback, STARTTLS is required, so a password never crosses the
//!   network in clear; `?tls=required` requires it always.
//!
//! Credentials come percent-encoded in the URL (`smtp://user:pass@host`), which the policy
//! holds as `${SMTP_URL}`; neither the URL nor the password is ever logged.

use super::{Message as Note, TIMEOUT};
use crate::policy::Email;
use lettre::message::{header::ContentType, Mailbox};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;

type Transport = AsyncSmtpTransport<Tokio1Executor>;

/// The transport an `smtp_url` chooses ([`crate::policy::smtp`] parses and checks it).
fn transport(url: &str) -> Result<Transport, String> {
    let smtp = crate::policy::smtp::parse_url(url)?;
    let mut builder = Transport::builder_dangerous(smtp.host.as_str())
        .port(smtp.port)
        .tls(smtp.tls)
        .timeout(Some(TIMEOUT));
    if let Some((user, password)) = smtp.credentials {
        builder = builder.credentials(Credentials::new(user, password));
    }
    Ok(builder.build())
}

fn message(email: &Email, note: &Note) -> Result<Message, String> {
    let text = note.text();
    let subject = text.lines().next().unwrap_or("backstop").to_string();
    let mut builder = Message::builder()
        .from(email.from.parse::<Mailbox>().map_err(|e| e.to_string())?)
        .subject(subject);
    for to in &email.to {
        builder = builder.to(to.parse::<Mailbox>().map_err(|e| e.to_string())?);
    }
    let record = serde_json::to_string_pretty(&note.record).unwrap_or_default();
    builder
        .header(ContentType::TEXT_PLAIN)
        .body(format!("{text}\n\nrun record:\n{record}\n"))
        .map_err(|e| e.to_string())
}

/// Sends `note` by email, retrying with backoff; true when the server accepted it.
pub async fn send(email: &Email, note: &Note, what: &str) -> bool {
    let built =
        transport(email.smtp_url.expose_secret()).and_then(|t| Ok((t, message(email, note)?)));
    let (transport, message) = match built {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!("{what}: {e}");
            return false;
        }
    };
    super::retry(what, || async {
        transport
            .send(message.clone())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await
}
