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
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;

type Transport = AsyncSmtpTransport<Tokio1Executor>;

/// What is wrong with an `smtp_url`, if anything; never quotes the URL.
pub fn check_url(url: &str) -> Result<(), String> {
    transport(url).map(|_| ())
}

/// What is wrong with an address, if anything.
pub fn check_address(address: &str) -> Result<(), String> {
    address
        .parse::<Mailbox>()
        .map(|_| ())
        .map_err(|e| format!("`{address}` is not an email address: {e}"))
}

fn transport(url: &str) -> Result<Transport, String> {
    let url = url::Url::parse(url).map_err(|e| format!("the SMTP URL does not parse: {e}"))?;
    let host = url
        .host_str()
        .ok_or("the SMTP URL has no host")?
        .trim_matches(['[', ']'])
        .to_string();
    let required = url
        .query_pairs()
        .any(|(k, v)| k == "tls" && v == "required");
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let params =
        || TlsParameters::new(host.clone()).map_err(|e| format!("TLS for the SMTP server: {e}"));
    let (port, tls) = match url.scheme() {
        "smtps" => (465, Tls::Wrapper(params()?)),
        "smtp" if required || (url.password().is_some() && !loopback) => {
            (587, Tls::Required(params()?))
        }
        "smtp" => (587, Tls::Opportunistic(params()?)),
        other => {
            return Err(format!(
                "the SMTP URL's scheme is `{other}`; use smtp:// or smtps://"
            ))
        }
    };
    let mut builder = Transport::builder_dangerous(host.as_str())
        .port(url.port().unwrap_or(port))
        .tls(tls)
        .timeout(Some(TIMEOUT));
    if let Some(password) = url.password() {
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        builder = builder.credentials(Credentials::new(decode(url.username()), decode(password)));
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
