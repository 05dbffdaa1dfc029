//! The `[notify] email` SMTP URL and addresses: parsed and checked here, where the policy's
//! validator and the mailer (`notify::email`) both take them, so the policy needs nothing of
//! notify.
//!
//! The URL chooses the transport:
//! - `smtps://host[:465]`: TLS from the first byte;
//! - `smtp://host[:587]`: STARTTLS when the server offers it. When the URL carries credentials
//!   and the host is not loopback, STARTTLS is required, so a password never crosses the
//!   network in clear; `?tls=required` requires it always.

use lettre::message::Mailbox;
use lettre::transport::smtp::client::{Tls, TlsParameters};

/// Where and how to reach the SMTP server.
pub struct Smtp {
    pub host: String,
    pub port: u16,
    pub tls: Tls,
    /// User and password, percent-decoded.
    pub credentials: Option<(String, String)>,
}

/// What is wrong with an `smtp_url`, if anything; never quotes the URL.
pub fn check_url(url: &str) -> Result<(), String> {
    parse_url(url).map(|_| ())
}

/// What is wrong with an address, if anything.
pub fn check_address(address: &str) -> Result<(), String> {
    address
        .parse::<Mailbox>()
        .map(|_| ())
        .map_err(|e| format!("`{address}` is not an email address: {e}"))
}

pub fn parse_url(url: &str) -> Result<Smtp, String> {
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
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let credentials = url
        .password()
        .map(|password| (decode(url.username()), decode(password)));
    Ok(Smtp {
        port: url.port().unwrap_or(port),
        host,
        tls,
        credentials,
    })
}
