//! One SMTP connection: connect with the configured TLS, authenticate, run mail
//! transactions, pipelined (RFC 2920) where the server offers it.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lettre::address::Address;
// Deprecated for outside use, yet lettre 0.11's one way to put its TLS over our socket.
#[allow(deprecated)]
use lettre::transport::smtp::client::AsyncNetworkStream;
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream, TlsParameters};
use lettre::transport::smtp::commands::{Data, Ehlo, Mail, Rcpt, Rset};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use lettre::transport::smtp::response::Response;

use crate::error::{Error, ErrorKind};
use crate::transport::smtp::settings::TlsMode;
use crate::transport::smtp::stream::{Progress, TokioIo, Tracked};

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
    /// The whole message and its final "." were written, and then no reply came: the
    /// server may have accepted it.
    Unknown { detail: String },
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
        if let Some(tls) = crate::error::certificate_problem(&e) {
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

    pub(super) fn is_stale_connection(&self) -> bool {
        match self {
            Failure::Connection { stage, .. } => *stage == Stage::Mail,
            Failure::Reply { stage, code, .. } => {
                *stage == Stage::Mail && matches!(code, 421 | 530)
            }
            Failure::Unknown { .. } | Failure::Fatal(_) => false,
        }
    }
}

/// The server's words in a lettre error, without lettre's "permanent error (550): " prefix.
fn reply_text(e: &lettre::transport::smtp::Error) -> String {
    let text = e.to_string();
    match text.split_once("): ") {
        Some((_, rest)) => rest.to_string(),
        None => text,
    }
}

/// An open connection and what its server offers beyond what lettre's `ServerInfo`
/// keeps.
pub(crate) struct Session {
    pub(super) smtp: AsyncSmtpConnection,
    /// What the socket under the connection last did, to tell a reply lost after the
    /// final "." from a write that never finished.
    progress: Arc<Progress>,
    /// MAIL, RCPT and DATA go in one write and their replies are read after: one round
    /// trip instead of two plus one per recipient.
    pipelining: bool,
}

impl Session {
    pub(super) fn has_broken(&self) -> bool {
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
    pub timeouts: StageTimeouts,
}

/// [`Timeouts`](super::settings::Timeouts) as durations, each capped by `timeout_secs`.
#[derive(Debug, Clone)]
pub(crate) struct StageTimeouts {
    pub connect: Duration,
    pub greeting: Duration,
    pub mail: Duration,
    pub data: Duration,
    pub block: Duration,
    pub final_dot: Duration,
}

impl StageTimeouts {
    pub(super) fn new(t: &super::settings::Timeouts, cap: Option<u64>) -> StageTimeouts {
        let secs = |s: u64| Duration::from_secs(cap.map_or(s, |c| s.min(c)).max(1));
        StageTimeouts {
            connect: secs(t.connect),
            greeting: secs(t.greeting),
            mail: secs(t.mail),
            data: secs(t.data),
            block: secs(t.block),
            final_dot: secs(t.final_dot),
        }
    }

    fn of(&self, stage: Stage) -> Duration {
        match stage {
            Stage::Connect | Stage::Auth => self.greeting,
            Stage::Mail | Stage::Rcpt => self.mail,
            Stage::Data => self.data,
        }
    }
}

/// Never past the deadline of the send in progress, if it has one.
fn within_deadline(wait: Duration) -> Duration {
    match crate::transport::retry::deadline() {
        Some(deadline) => wait.min(deadline.saturating_duration_since(Instant::now())),
        None => wait,
    }
}

impl Endpoint {
    pub(super) async fn connect(&self) -> Result<Session, Failure> {
        let progress = Progress::new();
        let tcp = Tracked {
            tcp: self.tcp().await?,
            progress: progress.clone(),
        };
        let stream: Box<dyn AsyncTokioStream> = match (self.tls, &self.tls_parameters) {
            (TlsMode::Implicit, Some(parameters)) => {
                #[allow(deprecated)] // lettre's own way to put TLS over a given stream
                let mut tls = AsyncNetworkStream::use_existing_tokio1(Box::new(tcp));
                self.within(
                    Stage::Connect,
                    self.timeouts.connect,
                    tls.upgrade_tls(parameters.clone()),
                )
                .await?;
                Box::new(TokioIo(tls))
            }
            _ => Box::new(tcp),
        };
        let mut conn = self
            .step(
                Stage::Connect,
                AsyncSmtpConnection::connect_with_transport(stream, &self.hello),
            )
            .await?;
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
            progress,
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
        let wait = within_deadline(self.timeouts.connect);
        let tcp = tokio::time::timeout(
            wait,
            tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| failed(format!("no answer within {}s", wait.as_secs())))?
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
    pub(super) async fn close(&self, session: Session) {
        self.abandon(session.smtp).await;
    }

    async fn abandon(&self, mut conn: AsyncSmtpConnection) {
        let wait = Duration::from_millis(500);
        let _ = tokio::time::timeout(wait, conn.abort()).await;
    }

    /// Runs one protocol step under its stage's timeout.
    pub(super) async fn step<T>(
        &self,
        stage: Stage,
        future: impl std::future::Future<Output = Result<T, lettre::transport::smtp::Error>>,
    ) -> Result<T, Failure> {
        self.within(stage, self.timeouts.of(stage), future).await
    }

    async fn within<T>(
        &self,
        stage: Stage,
        wait: Duration,
        future: impl std::future::Future<Output = Result<T, lettre::transport::smtp::Error>>,
    ) -> Result<T, Failure> {
        let wait = within_deadline(wait);
        match tokio::time::timeout(wait, future).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(Failure::from_smtp(stage, e)),
            Err(_) => Err(Failure::Connection {
                stage,
                detail: format!("no answer within {}s", wait.as_secs()),
            }),
        }
    }

    /// Writes the message with its final "." and waits for the verdict: up to
    /// `block` for each write to make progress, then up to `final_dot` for the
    /// reply. Once everything was written, a lost reply leaves the outcome unknown;
    /// a reset is not (the server closed with part of the message unread, so it
    /// never saw the final "."), unless the next transaction's commands followed the
    /// "." in the same write: then the unread part may be those alone.
    ///
    /// `dot_end` is, with the next commands behind the ".", the count of bytes
    /// [`Progress::written`] must reach before the server can have the ".".
    async fn finish_data(
        &self,
        progress: &Progress,
        dot_end: Option<u64>,
        future: impl std::future::Future<Output = Result<Response, lettre::transport::smtp::Error>>,
    ) -> Result<Response, Failure> {
        let mut future = std::pin::pin!(future);
        let started = Instant::now();
        let result = loop {
            let due = match progress.reading_since() {
                Some(since) => since.max(started) + self.timeouts.final_dot,
                None => progress.last_write().max(started) + self.timeouts.block,
            };
            let due = crate::transport::retry::deadline().map_or(due, |d| due.min(d));
            tokio::select! {
                result = &mut future => break Some(result),
                () = tokio::time::sleep_until(due.into()) => {
                    // Progress since may have moved the due time; if not, time is up.
                    let now_due = match progress.reading_since() {
                        Some(since) => since.max(started) + self.timeouts.final_dot,
                        None => progress.last_write().max(started) + self.timeouts.block,
                    };
                    if now_due <= Instant::now()
                        || crate::transport::retry::deadline().is_some_and(|d| d <= Instant::now())
                    {
                        break None;
                    }
                }
            }
        };
        let written = progress.reading_since().is_some();
        let dot_written = written || dot_end.is_some_and(|end| progress.written() >= end);
        let reset_proves_unread = dot_end.is_none();
        match result {
            Some(Ok(response)) => Ok(response),
            Some(Err(e))
                if e.status().is_some()
                    || !dot_written
                    || (reset_proves_unread && was_reset(&e)) =>
            {
                Err(Failure::from_smtp(Stage::Data, e))
            }
            Some(Err(e)) => Err(Failure::Unknown {
                detail: format!("the connection ended before the reply: {e}"),
            }),
            None if dot_written => Err(Failure::Unknown {
                detail: format!(
                    "no reply within {}s",
                    Instant::now().duration_since(started).as_secs()
                ),
            }),
            None => Err(Failure::Connection {
                stage: Stage::Data,
                detail: "the server stopped taking the message".into(),
            }),
        }
    }

    /// One mail transaction to `recipients`: each refused recipient is reported on its
    /// own, and the message goes to those accepted.
    ///
    /// `sent` says the MAIL, RCPT and DATA commands already went out, written by the
    /// transaction before on this connection behind its final ".", so only their
    /// replies remain to be read. `next` is asked, once this message's content is
    /// about to go, for the commands of the next transaction to write behind it
    /// (RFC 2920: one round trip per message instead of two).
    pub(super) async fn transaction(
        &self,
        session: &mut Session,
        envelope: &Envelope<'_>,
        sent: bool,
        next: impl FnOnce(&Session) -> Option<String>,
    ) -> Result<Transaction, Failure> {
        let recipients = envelope.recipients;
        let progress = session.progress.clone();
        let mut outcome = Transaction::default();
        let data = if sent || session.pipelining {
            if !sent {
                let batch = session.batch(envelope)?;
                // The replies come in order; after a refused MAIL the connection is
                // closed by the caller, so the RCPT and DATA replies need not be read.
                self.step(Stage::Mail, session.smtp.command(Payload(&batch)))
                    .await?;
            } else {
                self.step(Stage::Mail, session.smtp.read_response()).await?;
            }
            for recipient in recipients {
                let reply = self.step(Stage::Rcpt, session.smtp.read_response()).await;
                outcome.record(recipient, reply)?;
            }
            self.step(Stage::Data, session.smtp.read_response()).await
        } else {
            let conn = &mut session.smtp;
            let mail = mail_command(conn, envelope)?;
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
            let conn = &mut session.smtp;
            if data.is_ok() {
                let _ = self.step(Stage::Data, conn.command(Payload(".\r\n"))).await;
            }
            let _ = self.step(Stage::Rcpt, conn.command(Rset)).await;
            return Ok(outcome);
        }
        data?;
        // Built messages are 7-bit; anything else goes through lettre's own writer.
        let response: Response = match std::str::from_utf8(envelope.raw) {
            Ok(text) => {
                let next = next(session);
                let mut payload = data_payload(text, next.as_ref().map_or(0, String::len));
                let dot_end = next.map(|batch| {
                    let end = progress.written() + payload.len() as u64;
                    payload.push_str(&batch);
                    end
                });
                self.finish_data(&progress, dot_end, session.smtp.command(Payload(&payload)))
                    .await?
            }
            Err(_) => {
                self.finish_data(&progress, None, session.smtp.message(envelope.raw))
                    .await?
            }
        };
        outcome.reply = format!(
            "{} {}",
            response.code(),
            response.message().collect::<Vec<_>>().join(" ")
        );
        Ok(outcome)
    }
}

/// What a transaction sends, and to whom.
pub(crate) struct Envelope<'a> {
    pub from: Option<&'a Address>,
    pub recipients: &'a [Address],
    pub raw: &'a [u8],
}

impl Session {
    /// MAIL, every RCPT and DATA as one batch of text.
    fn batch(&self, envelope: &Envelope<'_>) -> Result<String, Failure> {
        let mut batch = mail_command(&self.smtp, envelope)?.to_string();
        for recipient in envelope.recipients {
            batch.push_str(&Rcpt::new(recipient.clone(), vec![]).to_string());
        }
        batch.push_str(&Data.to_string());
        Ok(batch)
    }

    /// The commands of a transaction to write behind another's final ".", where the
    /// server takes commands in batches and can take this one.
    pub(super) fn next_batch(&self, envelope: &Envelope<'_>) -> Option<String> {
        if !self.pipelining {
            return None;
        }
        self.batch(envelope).ok()
    }
}

/// MAIL FROM with the parameters the message and the server call for.
fn mail_command(conn: &AsyncSmtpConnection, envelope: &Envelope<'_>) -> Result<Mail, Failure> {
    let mut parameters = Vec::new();
    let non_ascii_address = envelope
        .from
        .into_iter()
        .chain(envelope.recipients)
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
    if !envelope.raw.is_ascii() && conn.server_info().supports_feature(Extension::EightBitMime) {
        parameters.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    Ok(Mail::new(envelope.from.cloned(), parameters))
}

/// Whether the connection was reset by the peer, as a server's kernel does when it
/// closes with data still unread.
fn was_reset(e: &lettre::transport::smtp::Error) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::ConnectionReset;
        }
        current = err.source();
    }
    false
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
/// by byte: two packets and two system calls per message instead of one. `room` is
/// what will be written behind it, so that appending it does not copy the message.
fn data_payload(raw: &str, room: usize) -> String {
    let mut out = String::with_capacity(raw.len() + 16 + room);
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
                data_payload(raw, 0).as_bytes(),
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
                data_payload(&raw, 0).as_bytes(),
                lettre_stuffing(raw.as_bytes()),
                "{raw:?}"
            );
        }
    }
}
