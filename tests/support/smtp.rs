//! A scripted SMTP server on 127.0.0.1 for tests: it speaks enough ESMTP for missive,
//! authenticates XOAUTH2 / OAUTHBEARER / PLAIN / LOGIN, and can be told to answer any
//! stage with any reply, drop the connection, or stall.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Any byte stream a session can run over: plain TCP or TLS.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// How the fake server offers TLS.
#[derive(Clone)]
pub enum ServerTls {
    /// Advertise STARTTLS and upgrade when asked.
    Starttls(TlsAcceptor),
    /// TLS from the first byte.
    Implicit(TlsAcceptor),
}

/// A TLS acceptor with the test certificate for `localhost` / 127.0.0.1, issued by
/// `tests/support/keys/test-ca.pem`.
pub fn test_tls_acceptor() -> TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let keys = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/keys");
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(keys.join("test-server.pem"))
            .unwrap()
            .map(Result::unwrap)
            .collect();
    let key = PrivateKeyDer::from_pem_file(keys.join("test-server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    TlsAcceptor::from(Arc::new(config))
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Where in a session a fault applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    Greeting,
    Auth,
    Mail,
    Rcpt,
    /// The reply to the DATA command.
    Data,
    /// While the message body is being received.
    MidData,
    /// The reply after the final dot.
    EndOfData,
}

/// What to do at a stage.
#[derive(Debug, Clone)]
pub enum Action {
    /// Answer with this line, e.g. `451 4.3.0 try again later`.
    Reply(String),
    /// Close the connection without a word.
    Drop,
    /// Say nothing, keep the connection open.
    Stall,
    /// Wait this long, then answer as usual.
    Delay(Duration),
}

/// How the server refuses an OAuth2 token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectStyle {
    /// `334 <base64 JSON>`, expects an empty line (or `AQ==` for OAUTHBEARER), then `535 5.7.8`.
    Gmail,
    /// A bare `535 5.7.3 Authentication unsuccessful`.
    Microsoft,
}

pub type Validator = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// One message as the server received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Whether the session was encrypted when the message came.
    pub encrypted: bool,
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
    /// When the server took it (just before its 250 went out).
    pub at: std::time::Instant,
}

/// One AUTH exchange.
#[derive(Debug, Clone)]
pub struct AuthSeen {
    pub mechanism: String,
    pub user: String,
    pub secret: String,
    pub accepted: bool,
    /// What the client answered to an error challenge, if one was sent.
    pub challenge_answer: Option<String>,
}

#[derive(Default)]
struct State {
    faults: VecDeque<(Stage, Action)>,
    always: Vec<(Stage, Action)>,
    /// Faults for the n-th time (from 1, over all connections) a stage comes.
    numbered: Vec<(Stage, usize, Action)>,
    stages_seen: HashMap<Stage, usize>,
    rcpt_replies: HashMap<String, String>,
    received: Vec<Received>,
    auths: Vec<AuthSeen>,
    mail_commands: usize,
    /// MAIL commands that came with the DATA command already sent behind them.
    pipelined: usize,
    /// Final dots that came with the next MAIL command already sent behind them.
    chained: usize,
    /// Lines taken for commands that the server does not know (such as message
    /// content sent after DATA was refused).
    unknown_commands: usize,
    connections: usize,
    active: usize,
    max_active: usize,
}

/// Settings fixed when the server starts.
#[derive(Clone)]
pub struct Options {
    pub tls: Option<ServerTls>,
    pub reject_style: RejectStyle,
    /// Which bearer tokens are good; every token when `None`.
    pub validator: Option<Validator>,
    /// `user` → password for PLAIN and LOGIN.
    pub passwords: HashMap<String, String>,
    pub require_auth: bool,
    /// Close the connection after each message, as a server's idle timeout would.
    pub close_after_message: bool,
    /// Offer PIPELINING (RFC 2920) in the EHLO reply, as Postfix does.
    pub pipelining: bool,
    /// Answer DATA with 354 even when no recipient was accepted (which RFC 2920 3.1
    /// forbids), and refuse the message only after its final dot.
    pub late_no_recipients: bool,
    /// Close connections with a reset, as a kernel does when the server closes with
    /// data still unread.
    pub reset_on_close: bool,
    /// Called with the message's number (from 1) once it is recorded, just before its
    /// 250 is written.
    pub before_accept: Option<Arc<dyn Fn(usize) + Send + Sync>>,
    /// Called with the message's number (from 1) the moment its 250 was written.
    pub after_accept: Option<Arc<dyn Fn(usize) + Send + Sync>>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            tls: None,
            reject_style: RejectStyle::Gmail,
            validator: None,
            passwords: HashMap::new(),
            require_auth: false,
            close_after_message: false,
            pipelining: true,
            late_no_recipients: false,
            reset_on_close: false,
            before_accept: None,
            after_accept: None,
        }
    }
}

/// A running fake server; dropping it does not stop it (tests are short-lived).
#[derive(Clone)]
pub struct FakeSmtp {
    pub port: u16,
    state: Arc<Mutex<State>>,
}

impl FakeSmtp {
    pub async fn start(options: Options) -> FakeSmtp {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        tokio::spawn(async move {
            let options = Arc::new(options);
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                // Replies are written line by line; with Nagle's algorithm on, each
                // reply to a pipelined command would wait for the client's delayed ACK
                // of the one before (real servers buffer them and flush once).
                let _ = socket.set_nodelay(true);
                if options.reset_on_close {
                    let _ = socket.set_zero_linger();
                }
                let state = shared.clone();
                let options = options.clone();
                tokio::spawn(async move {
                    {
                        let mut s = state.lock().unwrap();
                        s.connections += 1;
                        s.active += 1;
                        s.max_active = s.max_active.max(s.active);
                    }
                    let _ = match &options.tls {
                        Some(ServerTls::Implicit(acceptor)) => {
                            match acceptor.accept(socket).await {
                                Ok(tls) => session(Box::new(tls), true, &state, &options).await,
                                Err(_) => Ok(()),
                            }
                        }
                        _ => session(Box::new(socket), false, &state, &options).await,
                    };
                    state.lock().unwrap().active -= 1;
                });
            }
        });
        FakeSmtp { port, state }
    }

    /// The next time `stage` comes (on any connection), do `action`.
    pub fn fault(&self, stage: Stage, action: Action) {
        self.state.lock().unwrap().faults.push_back((stage, action));
    }

    /// The `nth` time (from 1, counted over all connections) `stage` comes, do `action`.
    pub fn fault_at(&self, stage: Stage, nth: usize, action: Action) {
        self.state
            .lock()
            .unwrap()
            .numbered
            .push((stage, nth, action));
    }

    /// Every time `stage` comes, do `action`.
    pub fn always(&self, stage: Stage, action: Action) {
        self.state.lock().unwrap().always.push((stage, action));
    }

    /// Forgets every `always` rule: the server behaves again.
    pub fn clear_always(&self) {
        self.state.lock().unwrap().always.clear();
    }

    /// Takes `address` again after [`refuse_recipient`](Self::refuse_recipient).
    pub fn accept_recipient(&self, address: &str) {
        self.state
            .lock()
            .unwrap()
            .rcpt_replies
            .remove(&address.to_ascii_lowercase());
    }

    /// Answer `RCPT TO:<address>` with `reply` every time.
    pub fn refuse_recipient(&self, address: &str, reply: &str) {
        self.state
            .lock()
            .unwrap()
            .rcpt_replies
            .insert(address.to_ascii_lowercase(), reply.to_string());
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }
    pub fn auths(&self) -> Vec<AuthSeen> {
        self.state.lock().unwrap().auths.clone()
    }
    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().connections
    }
    pub fn max_concurrent(&self) -> usize {
        self.state.lock().unwrap().max_active
    }
    pub fn mail_commands(&self) -> usize {
        self.state.lock().unwrap().mail_commands
    }
    /// How many MAIL commands arrived with their RCPT and DATA commands in one batch.
    pub fn pipelined(&self) -> usize {
        self.state.lock().unwrap().pipelined
    }
    /// How many final dots arrived with the next transaction's MAIL behind them.
    pub fn chained(&self) -> usize {
        self.state.lock().unwrap().chained
    }
    /// How many lines the server took for commands it does not know.
    pub fn unknown_commands(&self) -> usize {
        self.state.lock().unwrap().unknown_commands
    }
}

fn take_fault(state: &Mutex<State>, stage: Stage) -> Option<Action> {
    let mut s = state.lock().unwrap();
    let seen = {
        let seen = s.stages_seen.entry(stage).or_default();
        *seen += 1;
        *seen
    };
    if let Some(i) = s
        .numbered
        .iter()
        .position(|(st, n, _)| *st == stage && *n == seen)
    {
        return Some(s.numbered.remove(i).2);
    }
    if let Some(i) = s.faults.iter().position(|(st, _)| *st == stage) {
        return s.faults.remove(i).map(|(_, a)| a);
    }
    s.always
        .iter()
        .find(|(st, _)| *st == stage)
        .map(|(_, a)| a.clone())
}

enum Flow {
    Continue,
    Close,
}

struct Conn {
    reader: BufReader<Box<dyn Stream>>,
}

impl Conn {
    async fn send(&mut self, line: &str) -> std::io::Result<()> {
        self.reader
            .get_mut()
            .write_all(format!("{line}\r\n").as_bytes())
            .await
    }
    async fn line(&mut self) -> std::io::Result<Option<String>> {
        let mut buf = String::new();
        if self.reader.read_line(&mut buf).await? == 0 {
            return Ok(None);
        }
        Ok(Some(buf.trim_end_matches(['\r', '\n']).to_string()))
    }
    /// Applies a fault; `Some(flow)` when it replaced the normal answer.
    async fn apply(&mut self, action: Option<Action>) -> std::io::Result<Option<Flow>> {
        match action {
            None => Ok(None),
            Some(Action::Reply(line)) => {
                self.send(&line).await?;
                Ok(Some(if line.starts_with("421") {
                    Flow::Close
                } else {
                    Flow::Continue
                }))
            }
            Some(Action::Drop) => Ok(Some(Flow::Close)),
            Some(Action::Stall) => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(Some(Flow::Close))
            }
            Some(Action::Delay(wait)) => {
                tokio::time::sleep(wait).await;
                Ok(None)
            }
        }
    }
}

async fn session(
    stream: Box<dyn Stream>,
    mut encrypted: bool,
    state: &Mutex<State>,
    options: &Options,
) -> std::io::Result<()> {
    let mut conn = Conn {
        reader: BufReader::new(stream),
    };
    if let Some(flow) = conn.apply(take_fault(state, Stage::Greeting)).await? {
        if matches!(flow, Flow::Close) {
            return Ok(());
        }
    }
    conn.send("220 fake.test ESMTP ready").await?;
    let mut authed = false;
    let mut in_transaction = false;
    let mut from = String::new();
    let mut to: Vec<String> = Vec::new();
    while let Some(line) = conn.line().await? {
        let upper = line.to_ascii_uppercase();
        let flow = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            in_transaction = false;
            to.clear();
            conn.send("250-fake.test").await?;
            if matches!(options.tls, Some(ServerTls::Starttls(_))) && !encrypted {
                conn.send("250-STARTTLS").await?;
            }
            conn.send("250-AUTH XOAUTH2 OAUTHBEARER PLAIN LOGIN")
                .await?;
            if options.pipelining {
                conn.send("250-PIPELINING").await?;
            }
            conn.send("250-8BITMIME").await?;
            conn.send("250 SMTPUTF8").await?;
            Flow::Continue
        } else if upper == "STARTTLS" {
            match &options.tls {
                Some(ServerTls::Starttls(acceptor)) if !encrypted => {
                    conn.send("220 2.0.0 ready to start TLS").await?;
                    let plain = conn.reader.into_inner();
                    let tls = acceptor.accept(plain).await?;
                    conn = Conn {
                        reader: BufReader::new(Box::new(tls)),
                    };
                    encrypted = true;
                }
                _ => conn.send("454 4.7.0 TLS not available").await?,
            }
            Flow::Continue
        } else if upper.starts_with("AUTH ") {
            if let Some(flow) = conn.apply(take_fault(state, Stage::Auth)).await? {
                flow
            } else {
                authed = auth(&mut conn, &line, state, options).await?;
                Flow::Continue
            }
        } else if upper.starts_with("MAIL FROM:") {
            // The client may send only what is already in the read buffer.
            let batched = String::from_utf8_lossy(conn.reader.buffer())
                .to_ascii_uppercase()
                .contains("DATA\r\n");
            {
                let mut s = state.lock().unwrap();
                s.mail_commands += 1;
                s.pipelined += usize::from(batched);
            }
            if let Some(flow) = conn.apply(take_fault(state, Stage::Mail)).await? {
                flow
            } else if options.require_auth && !authed {
                conn.send("530 5.7.0 Authentication required").await?;
                Flow::Continue
            } else if in_transaction {
                // As Postfix: a transaction must end (DATA or RSET) before the next.
                conn.send("503 5.5.1 Error: nested MAIL command").await?;
                Flow::Continue
            } else {
                from = between_brackets(&line);
                to.clear();
                in_transaction = true;
                conn.send("250 2.1.0 OK").await?;
                Flow::Continue
            }
        } else if upper.starts_with("RCPT TO:") {
            let address = between_brackets(&line);
            let refusal = state
                .lock()
                .unwrap()
                .rcpt_replies
                .get(&address.to_ascii_lowercase())
                .cloned();
            if !in_transaction {
                conn.send("503 5.5.1 need MAIL command").await?;
                Flow::Continue
            } else if let Some(flow) = conn.apply(take_fault(state, Stage::Rcpt)).await? {
                flow
            } else if let Some(reply) = refusal {
                conn.send(&reply).await?;
                Flow::Continue
            } else {
                to.push(address);
                conn.send("250 2.1.5 OK").await?;
                Flow::Continue
            }
        } else if upper == "DATA" {
            if to.is_empty() && options.late_no_recipients {
                conn.send("354 go ahead").await?;
                while let Some(body_line) = conn.line().await? {
                    if body_line == "." {
                        break;
                    }
                }
                conn.send("554 5.5.1 no valid recipients").await?;
                Flow::Continue
            } else if to.is_empty() {
                conn.send("554 5.5.1 no valid recipients").await?;
                Flow::Continue
            } else if let Some(flow) = conn.apply(take_fault(state, Stage::Data)).await? {
                flow
            } else {
                conn.send("354 go ahead").await?;
                let mid = take_fault(state, Stage::MidData);
                let mut data = String::new();
                let mut lines = 0;
                let mut dropped = false;
                let mut ended = false;
                while let Some(body_line) = conn.line().await? {
                    if body_line == "." {
                        ended = true;
                        let chained = String::from_utf8_lossy(conn.reader.buffer())
                            .to_ascii_uppercase()
                            .starts_with("MAIL FROM:");
                        state.lock().unwrap().chained += usize::from(chained);
                        break;
                    }
                    lines += 1;
                    if lines == 5 && mid.is_some() {
                        dropped = true;
                        break;
                    }
                    data.push_str(body_line.strip_prefix('.').unwrap_or(&body_line));
                    data.push_str("\r\n");
                }
                if dropped {
                    conn.apply(mid).await?;
                    return Ok(());
                }
                // The client went away mid-message: like a real server, take nothing.
                if !ended {
                    return Ok(());
                }
                if let Some(flow) = conn.apply(take_fault(state, Stage::EndOfData)).await? {
                    // Whatever the answer, the transaction is over.
                    in_transaction = false;
                    to.clear();
                    flow
                } else {
                    let n = {
                        let mut s = state.lock().unwrap();
                        s.received.push(Received {
                            encrypted,
                            from: from.clone(),
                            to: to.clone(),
                            data,
                            at: std::time::Instant::now(),
                        });
                        s.received.len()
                    };
                    in_transaction = false;
                    to.clear();
                    if let Some(hook) = &options.before_accept {
                        hook(n);
                    }
                    conn.send(&format!("250 2.0.0 OK queued as {n}")).await?;
                    if let Some(hook) = &options.after_accept {
                        hook(n);
                    }
                    if options.close_after_message {
                        Flow::Close
                    } else {
                        Flow::Continue
                    }
                }
            }
        } else if upper == "RSET" {
            in_transaction = false;
            to.clear();
            conn.send("250 2.0.0 OK").await?;
            Flow::Continue
        } else if upper == "NOOP" {
            conn.send("250 2.0.0 OK").await?;
            Flow::Continue
        } else if upper == "QUIT" {
            conn.send("221 2.0.0 bye").await?;
            Flow::Close
        } else {
            state.lock().unwrap().unknown_commands += 1;
            conn.send("502 5.5.2 unknown command").await?;
            Flow::Continue
        };
        if matches!(flow, Flow::Close) {
            return Ok(());
        }
    }
    Ok(())
}

fn between_brackets(line: &str) -> String {
    let start = line.find('<').map_or(0, |i| i + 1);
    let end = line[start..].find('>').map_or(line.len(), |i| start + i);
    line[start..end].to_string()
}

fn decode(b64: &str) -> String {
    String::from_utf8_lossy(&B64.decode(b64.trim()).unwrap_or_default()).into_owned()
}

async fn auth(
    conn: &mut Conn,
    line: &str,
    state: &Mutex<State>,
    options: &Options,
) -> std::io::Result<bool> {
    let mut parts = line.splitn(3, ' ');
    parts.next();
    let mechanism = parts.next().unwrap_or_default().to_ascii_uppercase();
    let initial = parts.next().map(str::to_string);
    let (user, secret) = match mechanism.as_str() {
        "XOAUTH2" => {
            let text = decode(initial.as_deref().unwrap_or_default());
            let user = text
                .split('\x01')
                .find_map(|f| f.strip_prefix("user="))
                .unwrap_or_default()
                .to_string();
            (user, bearer(&text))
        }
        "OAUTHBEARER" => {
            let text = decode(initial.as_deref().unwrap_or_default());
            let user = text
                .split(',')
                .find_map(|f| f.strip_prefix("a="))
                .unwrap_or_default()
                .replace("=2C", ",")
                .replace("=3D", "=");
            (user, bearer(&text))
        }
        "PLAIN" => {
            let text = decode(initial.as_deref().unwrap_or_default());
            let mut fields = text.split('\0').skip(1);
            (
                fields.next().unwrap_or_default().to_string(),
                fields.next().unwrap_or_default().to_string(),
            )
        }
        "LOGIN" => {
            conn.send("334 VXNlcm5hbWU6").await?;
            let user = decode(&conn.line().await?.unwrap_or_default());
            conn.send("334 UGFzc3dvcmQ6").await?;
            let password = decode(&conn.line().await?.unwrap_or_default());
            (user, password)
        }
        _ => {
            conn.send("504 5.7.4 unrecognized authentication type")
                .await?;
            return Ok(false);
        }
    };
    let oauth = mechanism == "XOAUTH2" || mechanism == "OAUTHBEARER";
    let good = if oauth {
        options.validator.as_ref().is_none_or(|v| v(&secret))
    } else {
        options.passwords.get(&user) == Some(&secret)
    };
    let mut seen = AuthSeen {
        mechanism: mechanism.clone(),
        user,
        secret,
        accepted: good,
        challenge_answer: None,
    };
    if good {
        conn.send("235 2.7.0 Accepted").await?;
    } else if oauth && options.reject_style == RejectStyle::Gmail {
        let json = if mechanism == "XOAUTH2" {
            r#"{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}"#
        } else {
            r#"{"status":"invalid_token","scope":"https://mail.google.com/"}"#
        };
        conn.send(&format!("334 {}", B64.encode(json))).await?;
        seen.challenge_answer = Some(conn.line().await?.unwrap_or_default());
        conn.send("535-5.7.8 Username and Password not accepted. For more information, go to")
            .await?;
        conn.send("535 5.7.8  https://support.google.com/mail/?p=BadCredentials")
            .await?;
    } else if oauth {
        conn.send("535 5.7.3 Authentication unsuccessful").await?;
    } else {
        conn.send("535 5.7.8 Error: authentication failed").await?;
    }
    state.lock().unwrap().auths.push(seen);
    Ok(good)
}

/// The set of addresses as a lowercase set, for assertions.
pub fn addresses(list: &[String]) -> HashSet<String> {
    list.iter().map(|a| a.to_ascii_lowercase()).collect()
}

/// The token of an `auth=Bearer …` field, as XOAUTH2 and OAUTHBEARER both carry it.
fn bearer(text: &str) -> String {
    text.split('\x01')
        .find_map(|f| f.strip_prefix("auth=Bearer "))
        .unwrap_or_default()
        .to_string()
}
