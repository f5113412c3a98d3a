//! One SMTP connection: connect with the configured TLS, authenticate, run mail
//! transactions, pipelined (RFC 2920) where the server offers it.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use lettre::address::Address;
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::commands::{Data, Ehlo, Mail, Rcpt, Rset};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use lettre::transport::smtp::response::Response;
use secrecy::{ExposeSecret, SecretString};

use crate::error::{Error, ErrorKind};
use crate::transport::smtp::settings::{Mechanism, TlsMode};

/// Where a failure happened; a stale pooled connection shows itself at `Mail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    Connect,
    Auth,
    Mail,
    Rcpt,
    Data,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Connect => "connect",
            Stage::Auth => "AUTH",
            Stage::Mail => "MAIL FROM",
            Stage::Rcpt => "RCPT TO",
            Stage::Data => "DATA",
        })
    }
}

/// Why one step failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The server answered 4xx or 5xx.
    Reply {
        stage: Stage,
        code: u16,
        text: String,
    },
    /// No usable answer: refused, reset, closed, timed out.
    Connection { stage: Stage, detail: String },
    /// Nothing a retry can fix (configuration, credentials, refused token).
    Fatal(Error),
}

impl Failure {
    fn from_smtp(stage: Stage, e: lettre::transport::smtp::Error) -> Failure {
        if let Some(code) = e.status() {
            return Failure::Reply {
                stage,
                code: u16::from(code),
                text: reply_text(&e),
            };
        }
        if let Some(tls) = certificate_problem(&e) {
            return Failure::Fatal(Error::new(
                ErrorKind::Config,
                format!(
                    "TLS with the SMTP server failed: {tls} (for a private CA set `ca_file`; \
                     when the certificate names another host, `tls_name`)"
                ),
            ));
        }
        if e.is_tls() {
            return Failure::Fatal(Error::new(
                ErrorKind::Config,
                format!("TLS with the SMTP server cannot be set up: {e}"),
            ));
        }
        if e.is_client() {
            return Failure::Fatal(Error::new(
                ErrorKind::Config,
                format!("the SMTP client cannot go on: {e}"),
            ));
        }
        Failure::Connection {
            stage,
            detail: e.to_string(),
        }
    }

    pub fn is_stale_connection(&self) -> bool {
        match self {
            Failure::Connection { stage, .. } => *stage == Stage::Mail,
            Failure::Reply { stage, code, .. } => {
                *stage == Stage::Mail && matches!(code, 421 | 530)
            }
            Failure::Fatal(_) => false,
        }
    }
}

/// A TLS failure that no retry can fix (an untrusted or mismatched certificate, no
/// common protocol version), wherever lettre wrapped it.
fn certificate_problem(e: &lettre::transport::smtp::Error) -> Option<&rustls::Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = current {
        let found = err.downcast_ref::<rustls::Error>().or_else(|| {
            err.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(tls) = found {
            return matches!(
                tls,
                rustls::Error::InvalidCertificate(_)
                    | rustls::Error::NoCertificatesPresented
                    | rustls::Error::PeerIncompatible(_)
            )
            .then_some(tls);
        }
        current = err.source();
    }
    None
}

/// The server's words in a lettre error, without lettre's "permanent error (550): " prefix.
fn reply_text(e: &lettre::transport::smtp::Error) -> String {
    let text = e.to_string();
    match text.split_once("): ") {
        Some((_, rest)) => rest.to_string(),
        None => text,
    }
}

/// A line sent as is. Used for SASL exchanges that lettre has no command for; lettre
/// is built without its `tracing` feature, so it never logs what we write.
struct Line<'a>(&'a str);

impl fmt::Display for Line<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\r\n", self.0)
    }
}

/// An open connection and what its server offers beyond what lettre's `ServerInfo`
/// keeps.
pub(crate) struct Session {
    smtp: AsyncSmtpConnection,
    /// MAIL, RCPT and DATA go in one write and their replies are read after: one round
    /// trip instead of two plus one per recipient.
    pipelining: bool,
}

impl Session {
    pub fn has_broken(&self) -> bool {
        self.smtp.has_broken()
    }
}

/// How to reach the server.
pub(crate) struct Endpoint {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub tls_parameters: Option<TlsParameters>,
    pub hello: ClientId,
    pub timeout: Duration,
}

impl Endpoint {
    pub async fn connect(&self) -> Result<Session, Failure> {
        let implicit = match self.tls {
            TlsMode::Implicit => self.tls_parameters.clone(),
            _ => None,
        };
        let mut conn = match implicit {
            Some(parameters) => {
                self.step(
                    Stage::Connect,
                    AsyncSmtpConnection::connect_tokio1(
                        (self.host.as_str(), self.port),
                        Some(self.timeout),
                        &self.hello,
                        Some(parameters),
                        None,
                    ),
                )
                .await?
            }
            None => {
                let tcp = self.tcp().await?;
                self.step(
                    Stage::Connect,
                    AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &self.hello),
                )
                .await?
            }
        };
        if self.tls == TlsMode::Starttls {
            let Some(parameters) = self.tls_parameters.clone() else {
                return Err(Failure::Fatal(Error::new(
                    ErrorKind::Config,
                    "STARTTLS without TLS parameters",
                )));
            };
            if !conn.server_info().supports_feature(Extension::StartTls) {
                self.abandon(conn).await;
                return Err(Failure::Fatal(Error::new(
                    ErrorKind::Config,
                    format!(
                        "{}:{} does not offer STARTTLS, which `tls: starttls` requires; \
                         missive never falls back to plain text (use `tls: implicit` for port 465)",
                        self.host, self.port
                    ),
                )));
            }
            self.step(Stage::Connect, conn.starttls(parameters, &self.hello))
                .await?;
        }
        // lettre's `ServerInfo` drops the extensions it has no use for, PIPELINING among
        // them, so the server is asked once more, once per connection. A repeated EHLO
        // only resets the (empty) mail transaction (RFC 5321 4.1.4).
        let pipelining = match self
            .step(Stage::Connect, conn.command(Ehlo::new(self.hello.clone())))
            .await
        {
            Ok(reply) => offers_pipelining(&reply),
            Err(failure) => {
                self.abandon(conn).await;
                return Err(failure);
            }
        };
        Ok(Session {
            smtp: conn,
            pipelining,
        })
    }

    /// A TCP connection with Nagle's algorithm off. lettre's own DATA writer (used for
    /// bodies that are not UTF-8) writes the body and its final `.` separately; with
    /// Nagle on, the second write waits for the server's delayed ACK of the first, some
    /// 40 ms per message.
    async fn tcp(&self) -> Result<tokio::net::TcpStream, Failure> {
        let failed = |detail: String| Failure::Connection {
            stage: Stage::Connect,
            detail,
        };
        let tcp = tokio::time::timeout(
            self.timeout,
            tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| failed(format!("no answer within {}s", self.timeout.as_secs())))?
        .map_err(|e| {
            failed(format!(
                "cannot connect to {}:{}: {e}",
                self.host, self.port
            ))
        })?;
        tcp.set_nodelay(true)
            .map_err(|e| failed(format!("cannot set TCP_NODELAY: {e}")))?;
        Ok(tcp)
    }

    /// Ends a connection with QUIT, without waiting long for a server that stopped
    /// answering.
    pub async fn close(&self, session: Session) {
        self.abandon(session.smtp).await;
    }

    async fn abandon(&self, mut conn: AsyncSmtpConnection) {
        let wait = self.timeout.min(Duration::from_millis(500));
        let _ = tokio::time::timeout(wait, conn.abort()).await;
    }

    /// Runs one protocol step under the configured timeout.
    pub async fn step<T>(
        &self,
        stage: Stage,
        future: impl std::future::Future<Output = Result<T, lettre::transport::smtp::Error>>,
    ) -> Result<T, Failure> {
        match tokio::time::timeout(self.timeout, future).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(Failure::from_smtp(stage, e)),
            Err(_) => Err(Failure::Connection {
                stage,
                detail: format!("no answer within {}s", self.timeout.as_secs()),
            }),
        }
    }

    /// Authenticates with an OAuth2 bearer token. `Ok(Some(..))` is the server's
    /// refusal of the token (the caller renews it and tries once more).
    pub async fn oauth(
        &self,
        session: &mut Session,
        mechanism: Mechanism,
        user: &str,
        token: &SecretString,
    ) -> Result<Option<Rejection>, Failure> {
        let conn = &mut session.smtp;
        let b64 = base64::engine::general_purpose::STANDARD;
        let (initial, dummy) = match mechanism {
            Mechanism::Oauthbearer => {
                let user = user.replace('=', "=3D").replace(',', "=2C");
                (
                    SecretString::from(b64.encode(format!(
                        "n,a={user},\x01host={}\x01port={}\x01auth=Bearer {}\x01\x01",
                        self.host,
                        self.port,
                        token.expose_secret()
                    ))),
                    // RFC 7628 3.2.3: a failed exchange is closed with a single %x01.
                    "AQ==",
                )
            }
            _ => (
                SecretString::from(b64.encode(format!(
                    "user={user}\x01auth=Bearer {}\x01\x01",
                    token.expose_secret()
                ))),
                // Gmail's XOAUTH2 error challenge is answered with an empty line.
                "",
            ),
        };
        let command = SecretString::from(format!(
            "AUTH {} {}",
            mechanism.name(),
            initial.expose_secret()
        ));
        let first = self
            .step(Stage::Auth, conn.command(Line(command.expose_secret())))
            .await;
        match first {
            Ok(response) if response.has_code(334) => {
                let challenge = decode_challenge(&response);
                match self.step(Stage::Auth, conn.command(Line(dummy))).await {
                    Err(Failure::Reply { code, text, .. }) if code >= 500 => Ok(Some(Rejection {
                        code,
                        text,
                        challenge,
                    })),
                    Err(other) => Err(other),
                    Ok(response) => Err(Failure::Fatal(Error::new(
                        ErrorKind::Auth,
                        format!(
                            "unexpected answer to the {} error challenge: {}",
                            mechanism.name(),
                            response.code()
                        ),
                    ))),
                }
            }
            Ok(_) => Ok(None),
            Err(Failure::Reply { code, text, .. }) if matches!(code, 530 | 534 | 535) => {
                Ok(Some(Rejection {
                    code,
                    text,
                    challenge: None,
                }))
            }
            Err(Failure::Reply { code, text, .. }) if code >= 500 => Err(Failure::Fatal(
                Error::new(
                    ErrorKind::Auth,
                    format!(
                        "the server refused AUTH {} ({code} {text}); is the mechanism enabled \
                         for this account?",
                        mechanism.name()
                    ),
                )
                .with_smtp_code(code),
            )),
            Err(other) => Err(other),
        }
    }

    /// Authenticates with user name and password (PLAIN or LOGIN).
    pub async fn password(
        &self,
        session: &mut Session,
        mechanism: Mechanism,
        user: &str,
        password: &SecretString,
    ) -> Result<(), Failure> {
        let conn = &mut session.smtp;
        use lettre::transport::smtp::authentication::{Credentials, Mechanism as M};
        let lettre_mechanism = match mechanism {
            Mechanism::Login => M::Login,
            _ => M::Plain,
        };
        if !conn.server_info().supports_auth_mechanism(lettre_mechanism) {
            return Err(Failure::Fatal(Error::new(
                ErrorKind::Auth,
                format!("the server does not offer AUTH {}", mechanism.name()),
            )));
        }
        let credentials = Credentials::new(user.to_string(), password.expose_secret().to_string());
        match self
            .step(Stage::Auth, conn.auth(&[lettre_mechanism], &credentials))
            .await
        {
            Ok(_) => Ok(()),
            Err(Failure::Reply { code, text, .. }) if code >= 500 => Err(Failure::Fatal(
                Error::new(
                    ErrorKind::Auth,
                    format!("the server refused the password of {user}: {code} {text}"),
                )
                .with_smtp_code(code),
            )),
            Err(other) => Err(other),
        }
    }

    /// One mail transaction to `recipients`: each refused recipient is reported on its
    /// own, and the message goes to those accepted.
    pub async fn transaction(
        &self,
        session: &mut Session,
        from: Option<&Address>,
        recipients: &[Address],
        raw: &[u8],
    ) -> Result<Transaction, Failure> {
        let conn = &mut session.smtp;
        let mut parameters = Vec::new();
        let non_ascii_address = from
            .into_iter()
            .chain(recipients)
            .any(|a| !AsRef::<str>::as_ref(a).is_ascii());
        if non_ascii_address {
            if !conn.server_info().supports_feature(Extension::SmtpUtfEight) {
                return Err(Failure::Fatal(Error::new(
                    ErrorKind::Address,
                    "an address is not ASCII and the server does not support SMTPUTF8",
                )));
            }
            parameters.push(MailParameter::SmtpUtfEight);
        }
        if !raw.is_ascii() && conn.server_info().supports_feature(Extension::EightBitMime) {
            parameters.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        let mail = Mail::new(from.cloned(), parameters);
        let mut outcome = Transaction::default();
        let data = if session.pipelining {
            let mut batch = mail.to_string();
            for recipient in recipients {
                batch.push_str(&Rcpt::new(recipient.clone(), vec![]).to_string());
            }
            batch.push_str(&Data.to_string());
            // The replies come in order; after a refused MAIL the connection is closed
            // by the caller, so the RCPT and DATA replies need not be read.
            self.step(Stage::Mail, conn.command(Payload(&batch)))
                .await?;
            for recipient in recipients {
                let reply = self.step(Stage::Rcpt, conn.read_response()).await;
                outcome.record(recipient, reply)?;
            }
            self.step(Stage::Data, conn.read_response()).await
        } else {
            self.step(Stage::Mail, conn.command(mail)).await?;
            for recipient in recipients {
                let reply = self
                    .step(
                        Stage::Rcpt,
                        conn.command(Rcpt::new(recipient.clone(), vec![])),
                    )
                    .await;
                outcome.record(recipient, reply)?;
            }
            if outcome.accepted.is_empty() {
                let _ = self.step(Stage::Rcpt, conn.command(Rset)).await;
                return Ok(outcome);
            }
            self.step(Stage::Data, conn.command(Data)).await
        };
        if outcome.accepted.is_empty() {
            // RFC 2920 3.1: with no recipient the server refuses DATA; one that takes
            // it anyway gets an empty message, which it cannot deliver to anyone.
            if data.is_ok() {
                let _ = self.step(Stage::Data, conn.command(Payload(".\r\n"))).await;
            }
            let _ = self.step(Stage::Rcpt, conn.command(Rset)).await;
            return Ok(outcome);
        }
        data?;
        // Built messages are 7-bit; anything else goes through lettre's own writer.
        let response: Response = match std::str::from_utf8(raw) {
            Ok(text) => {
                let payload = data_payload(text);
                self.step(Stage::Data, conn.command(Payload(&payload)))
                    .await?
            }
            Err(_) => self.step(Stage::Data, conn.message(raw)).await?,
        };
        outcome.reply = format!(
            "{} {}",
            response.code(),
            response.message().collect::<Vec<_>>().join(" ")
        );
        Ok(outcome)
    }
}

/// Whether an EHLO reply lists PIPELINING (RFC 2920).
fn offers_pipelining(reply: &Response) -> bool {
    reply.message().skip(1).any(|line| {
        line.split_ascii_whitespace()
            .next()
            .is_some_and(|keyword| keyword.eq_ignore_ascii_case("PIPELINING"))
    })
}

/// The DATA section as it goes on the wire: dot-stuffed, then the terminating `.` line,
/// in one buffer. lettre writes the body and the terminator separately, escaping byte
/// by byte: two packets and two system calls per message instead of one.
fn data_payload(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len() + 16);
    if raw.starts_with('.') {
        out.push('.');
    }
    let mut start = 0;
    for at in memchr::memmem::find_iter(raw.as_bytes(), b"\r\n.") {
        // `at + 2` is the dot: an ASCII byte, so a character boundary.
        out.push_str(&raw[start..at + 2]);
        out.push('.');
        start = at + 2;
    }
    out.push_str(&raw[start..]);
    out.push_str("\r\n.\r\n");
    out
}

/// Text written to the server exactly as it is.
struct Payload<'a>(&'a str);

impl std::fmt::Display for Payload<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// What one transaction did.
#[derive(Debug, Default)]
pub(crate) struct Transaction {
    pub accepted: Vec<Address>,
    pub refused: Vec<Refusal>,
    pub reply: String,
}

impl Transaction {
    /// Files a recipient under accepted or refused by the server's reply to its RCPT;
    /// anything but a reply ends the transaction.
    fn record(
        &mut self,
        recipient: &Address,
        reply: Result<Response, Failure>,
    ) -> Result<(), Failure> {
        match reply {
            Ok(_) => self.accepted.push(recipient.clone()),
            Err(Failure::Reply { code, text, .. }) => self.refused.push(Refusal {
                recipient: recipient.clone(),
                code,
                text,
            }),
            Err(other) => return Err(other),
        }
        Ok(())
    }
}

/// A recipient the server refused at RCPT TO.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    pub recipient: Address,
    pub code: u16,
    pub text: String,
}

/// A server's refusal of an access token.
#[derive(Debug)]
pub(crate) struct Rejection {
    pub code: u16,
    pub text: String,
    /// The decoded JSON of an XOAUTH2/OAUTHBEARER error challenge, e.g.
    /// `{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}`.
    pub challenge: Option<String>,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.text)?;
        if let Some(challenge) = &self.challenge {
            write!(f, " (challenge: {challenge})")?;
        }
        Ok(())
    }
}

/// The JSON status in a `334 <base64>` error challenge, as compact text.
fn decode_challenge(response: &Response) -> Option<String> {
    let encoded: String = response.message().collect::<Vec<_>>().join("");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(json) => Some(json.to_string()),
        Err(_) => Some(text.chars().filter(|c| !c.is_control()).take(300).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// lettre's transparency rule, byte by byte, as its client codec applies it.
    fn lettre_stuffing(raw: &[u8]) -> Vec<u8> {
        let (mut out, mut state) = (Vec::new(), 0u8); // 0 line start, 1 after CR, 2 middle
        for &b in raw {
            out.push(b);
            state = match (b, state) {
                (b'\r', _) => 1,
                (b'\n', 1) => 0,
                (b'.', 0) => {
                    out.push(b'.');
                    2
                }
                _ => 2,
            };
        }
        out.extend_from_slice(b"\r\n.\r\n");
        out
    }

    #[test]
    fn data_payload_stuffs_dots_like_lettre() {
        for raw in [
            "plain\r\nbody",
            ".starts with a dot\r\n..two\r\n.\r\nend\r\n",
            "bare\n.lf is no line start\r\n\r\n.",
            "cr\r.not\r\r\n.yes",
            "",
        ] {
            assert_eq!(
                data_payload(raw).as_bytes(),
                lettre_stuffing(raw.as_bytes()),
                "{raw:?}"
            );
        }
        // Every string of up to 7 of these pieces.
        let pieces = [".", "\r", "\n", "\r\n", "a"];
        let mut raw = String::new();
        for mut n in 0..pieces.len().pow(7) {
            raw.clear();
            while n > 0 {
                raw.push_str(pieces[n % pieces.len()]);
                n /= pieces.len();
            }
            assert_eq!(
                data_payload(&raw).as_bytes(),
                lettre_stuffing(raw.as_bytes()),
                "{raw:?}"
            );
        }
    }
}
