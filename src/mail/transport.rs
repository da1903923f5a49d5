//! Where mail goes: an SMTP server from `AUTHD_SMTP_URL`, or, without one
//! (development), nowhere, which the worker reports loudly.

use std::time::Duration;

use anyhow::Context as _;
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor};
use secrecy::{ExposeSecret as _, SecretString};

/// Longest wait for any single SMTP reply.
const SMTP_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    /// No SMTP server configured: nothing is sent.
    Unconfigured,
}

/// What became of a message handed to the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handoff {
    /// The SMTP server accepted it.
    Accepted,
    /// There is no server; the message was not sent.
    NotConfigured,
}

impl Transport {
    /// `smtp://user:pass@host:port` (plain), `…?tls=required` (STARTTLS) or
    /// `smtps://…` (TLS). Errors never echo the URL: it holds a password.
    pub fn from_url(url: Option<&SecretString>) -> anyhow::Result<Self> {
        let Some(url) = url else {
            return Ok(Self::Unconfigured);
        };
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose_secret())
            .context("AUTHD_SMTP_URL is not a usable SMTP URL (smtp://user:pass@host:port, smtps://…)")?
            .timeout(Some(SMTP_COMMAND_TIMEOUT))
            .build();
        Ok(Self::Smtp(transport))
    }

    pub async fn send(&self, message: Message) -> Result<Handoff, lettre::transport::smtp::Error> {
        match self {
            Self::Smtp(smtp) => smtp.send(message).await.map(|_| Handoff::Accepted),
            Self::Unconfigured => Ok(Handoff::NotConfigured),
        }
    }
}
