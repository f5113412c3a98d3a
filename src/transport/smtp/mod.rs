//! Delivery over SMTP: a bounded connection pool, OAuth2 or password authentication,
//! one mail transaction per attempt with the outcome of each recipient.

mod conn;
mod sasl;
mod settings;
mod stream;

pub use settings::{AuthConfig, Mechanism, PoolConfig, SmtpConfig, Timeouts, TlsMode};

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lettre::transport::smtp::client::{Certificate, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use secrecy::SecretString;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use crate::auth::{self, TokenCache};
use crate::error::{Error, ErrorKind, Result};
use crate::transport::{async_trait, Delivery, Email, Rejected, Transport};
use conn::{Endpoint, Envelope, Failure, Refusal, Session, Stage, StageTimeouts};

/// The SMTP transport of a mailer. Clones share the pool and the token cache.
#[derive(Clone)]
pub(crate) struct Smtp {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Smtp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Smtp")
            .field("host", &self.inner.endpoint.host)
            .field("port", &self.inner.endpoint.port)
            .finish_non_exhaustive()
    }
}

struct Inner {
    endpoint: Endpoint,
    login: SmtpLogin,
    max_connections: usize,
    /// One permit per connection in use: lettre's own pool only caps idle connections.
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<Idle>>,
    idle_timeout: Duration,
    /// Sends waiting for a connection, oldest first: a connection about to write a
    /// message's content writes the first one's commands behind it.
    waiting: Mutex<VecDeque<Waiter>>,
    next_waiter: AtomicU64,
}

/// A send queued for its turn on a connection.
struct Waiter {
    id: u64,
    email: Email,
    turn: oneshot::Sender<Handoff>,
}

/// A connection passed on, with its permit, to the send whose MAIL, RCPT and DATA
/// were written behind the message before; `None` when the connection broke before
/// that send's turn (its content never went, so it starts over on a new one).
struct Handoff {
    permit: OwnedSemaphorePermit,
    session: Option<Box<Session>>,
}

/// How a send got its turn.
enum Turn {
    Free(OwnedSemaphorePermit),
    Handed(Handoff),
}

/// A place in the queue of waiting sends, given up when the send stops waiting.
struct Queued<'a> {
    inner: &'a Inner,
    id: u64,
}

impl Queued<'_> {
    /// Leaves the queue; `false` when a connection took this send meanwhile.
    fn withdraw(&self) -> bool {
        let mut waiting = self.inner.waiting();
        match waiting.iter().position(|w| w.id == self.id) {
            Some(at) => {
                waiting.remove(at);
                true
            }
            None => false,
        }
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.withdraw();
    }
}

impl Inner {
    fn waiting(&self) -> std::sync::MutexGuard<'_, VecDeque<Waiter>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Idle {
    conn: Session,
    since: Instant,
}

enum SmtpLogin {
    None,
    Password {
        mechanism: Mechanism,
        user: String,
        env: String,
    },
    OAuth {
        mechanism: Mechanism,
        user: String,
        tokens: TokenCache,
    },
}

impl Smtp {
    /// Checks the settings and prepares the pool; connects to nothing yet.
    pub(crate) fn new(config: &SmtpConfig) -> Result<Smtp> {
        let config_error = |m: String| Error::new(ErrorKind::Config, m);
        if config.tls == TlsMode::None && !auth::is_loopback(&config.host) {
            return Err(config_error(format!(
                "`tls: none` sends mail and credentials in clear text, so it is allowed only \
                 toward loopback, not {}",
                config.host
            )));
        }
        if config.pool.max_connections == 0 || config.retry.attempts == 0 {
            return Err(config_error(
                "`pool.max_connections` and `retry.attempts` must be at least 1".into(),
            ));
        }
        let port = config.port.unwrap_or(match config.tls {
            TlsMode::Starttls => 587,
            TlsMode::Implicit => 465,
            TlsMode::None => 25,
        });
        let tls_parameters = match config.tls {
            TlsMode::None => None,
            _ => Some(tls_parameters(config)?),
        };
        let hello = match &config.hello_name {
            Some(name) => ClientId::Domain(name.clone()),
            None => ClientId::default(),
        };
        let login = build_login(config)?;
        Ok(Smtp {
            inner: Arc::new(Inner {
                endpoint: Endpoint {
                    host: config.host.clone(),
                    port,
                    tls: config.tls,
                    tls_parameters,
                    hello,
                    timeouts: StageTimeouts::new(&config.timeouts, config.timeout_secs),
                },
                login,
                max_connections: config.pool.max_connections,
                permits: Arc::new(Semaphore::new(config.pool.max_connections)),
                idle: Mutex::new(Vec::new()),
                idle_timeout: Duration::from_secs(config.pool.idle_timeout_secs),
                waiting: Mutex::new(VecDeque::new()),
                next_waiter: AtomicU64::new(0),
            }),
        })
    }

    /// One delivery attempt. A pooled connection found closed is replaced without
    /// counting as an attempt.
    async fn deliver(&self, email: &Email) -> Result<Delivery> {
        let span = tracing::debug_span!("smtp", server = %self.inner.endpoint.host);
        // Boxed, as the attempt's future (connection, TLS, AUTH, transaction) is
        // kilobytes: inline, every send's future is that large and is copied whole
        // when spawned and moved.
        let tx = Box::pin(self.attempt(email).instrument(span))
            .await
            .map_err(|failure| self.failure_error(failure))?;
        let (deferred, rejected): (Vec<Refusal>, Vec<Refusal>) =
            tx.refused.into_iter().partition(|r| r.code < 500);
        Ok(Delivery::new(
            tx.accepted.iter().map(ToString::to_string).collect(),
            tx.reply,
        )
        .with_rejected(rejected.iter().map(rejection).collect())
        .with_deferred(deferred.iter().map(rejection).collect())
        .via("smtp"))
    }

    fn failure_error(&self, failure: Failure) -> Error {
        let host = &self.inner.endpoint.host;
        match failure {
            Failure::Reply { stage, code, text } => Error::new(
                if code >= 500 {
                    ErrorKind::Permanent
                } else {
                    ErrorKind::Transient
                },
                format!("{host} answered {code} {text} at {stage}"),
            )
            .with_smtp_code(code),
            Failure::Connection { stage, detail } => Error::new(
                ErrorKind::Transient,
                format!("connection to {host} failed at {stage}: {detail}"),
            ),
            Failure::Unknown { detail } => Error::new(
                ErrorKind::DeliveryUnknown,
                format!(
                    "delivery unknown: {host} took the whole message, then {detail}; it may \
                     have been delivered"
                ),
            ),
            // Token endpoint failures were retried by the token source already.
            Failure::Fatal(error) => error.retried(),
        }
    }

    /// One attempt: a pooled or new connection, and one transaction on it. A pooled
    /// connection that the server closed meanwhile is replaced, which costs no attempt.
    async fn attempt(&self, email: &Email) -> Result<conn::Transaction, Failure> {
        let envelope = Envelope {
            from: email.envelope().from(),
            recipients: email.envelope().to(),
            raw: email.raw(),
        };
        let (permit, start) = match self.turn(email).await? {
            Turn::Free(permit) => (permit, self.checkout().map(|conn| (conn, false))),
            Turn::Handed(Handoff { permit, session }) => {
                (permit, session.map(|conn| (*conn, true)))
            }
        };
        let mut permit = Some(permit);
        if let Some((conn, sent)) = start {
            match self.run(conn, &envelope, sent, &mut permit).await {
                Err(failure) if failure.is_stale_connection() => {
                    tracing::debug!(?failure, "pooled connection was stale; opening a new one");
                }
                result => return result,
            }
        }
        // Boxed for the same reason: opening is rare, and its future the largest.
        let conn = Box::pin(self.open()).await?;
        self.run(conn, &envelope, false, &mut permit).await
    }

    /// Waits for a free connection, or for a connection that wrote this send's
    /// commands behind the message before it, whichever comes first; no longer than
    /// the deadline of the send.
    async fn turn(&self, email: &Email) -> Result<Turn, Failure> {
        let permits = &self.inner.permits;
        if let Ok(permit) = permits.clone().try_acquire_owned() {
            return Ok(Turn::Free(permit));
        }
        let (tx, mut rx) = oneshot::channel();
        let id = self.inner.next_waiter.fetch_add(1, Ordering::Relaxed);
        self.inner.waiting().push_back(Waiter {
            id,
            email: email.clone(),
            turn: tx,
        });
        let queued = Queued {
            inner: &self.inner,
            id,
        };
        let wait = async {
            tokio::select! {
                biased;
                handed = &mut rx => match handed {
                    Ok(handoff) => Ok(Turn::Handed(handoff)),
                    // The connection that took this send went away before its turn.
                    Err(_) => permits.clone().acquire_owned().await.map(Turn::Free),
                },
                permit = permits.clone().acquire_owned() => {
                    let permit = permit?;
                    if queued.withdraw() {
                        return Ok(Turn::Free(permit));
                    }
                    // Taken by a connection just now: its handoff follows.
                    drop(permit);
                    match rx.await {
                        Ok(handoff) => Ok(Turn::Handed(handoff)),
                        Err(_) => permits.clone().acquire_owned().await.map(Turn::Free),
                    }
                }
            }
        };
        let waited = match crate::transport::retry::deadline() {
            Some(deadline) => tokio::time::timeout_at(deadline.into(), wait)
                .await
                .map_err(|_| Failure::Connection {
                    stage: Stage::Connect,
                    detail: "no connection came free before the deadline".into(),
                })?,
            None => wait.await,
        };
        waited.map_err(|_| {
            Failure::Fatal(Error::new(
                ErrorKind::Transient,
                "the mailer is shutting down",
            ))
        })
    }

    /// One transaction on `conn`. When the next waiting send's commands went out behind
    /// this message, the connection and the permit pass to that send, in step if this
    /// message got its reply, broken otherwise; else the connection goes back to the
    /// pool, or is closed after a failure.
    async fn run(
        &self,
        mut conn: Session,
        envelope: &Envelope<'_>,
        sent: bool,
        permit: &mut Option<OwnedSemaphorePermit>,
    ) -> Result<conn::Transaction, Failure> {
        let endpoint = &self.inner.endpoint;
        let mut taken = None;
        let result = endpoint
            .transaction(&mut conn, envelope, sent, |session| {
                let (waiter, batch) = self.next_waiter(session)?;
                taken = Some(waiter);
                Some(batch)
            })
            .await;
        match (taken, permit.take()) {
            (Some(waiter), Some(permit)) => {
                let in_step = matches!(result, Ok(_) | Err(Failure::Reply { .. }));
                let session = if in_step && !conn.has_broken() {
                    Some(Box::new(conn))
                } else {
                    endpoint.close(conn).await;
                    None
                };
                if let Err(Handoff {
                    session: Some(conn),
                    ..
                }) = waiter.turn.send(Handoff { permit, session })
                {
                    // That send gave up waiting; its commands are pending unanswered.
                    endpoint.close(*conn).await;
                }
            }
            (_, permit_left) => {
                *permit = permit_left;
                match &result {
                    Ok(_) => self.checkin(conn),
                    Err(_) => endpoint.close(conn).await,
                }
            }
        }
        result
    }

    /// The oldest waiting send this connection can take, with its commands.
    fn next_waiter(&self, session: &Session) -> Option<(Waiter, String)> {
        let mut waiting = self.inner.waiting();
        let at = waiting.iter().position(|w| !w.turn.is_closed())?;
        let email = &waiting[at].email;
        let batch = session.next_batch(&Envelope {
            from: email.envelope().from(),
            recipients: email.envelope().to(),
            raw: email.raw(),
        })?;
        Some((waiting.remove(at)?, batch))
    }

    fn checkout(&self) -> Option<Session> {
        let mut idle = self.inner.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(entry) = idle.pop() {
            if entry.since.elapsed() < self.inner.idle_timeout && !entry.conn.has_broken() {
                return Some(entry.conn);
            }
        }
        None
    }

    fn checkin(&self, conn: Session) {
        if conn.has_broken() {
            return;
        }
        let mut idle = self.inner.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.push(Idle {
            conn,
            since: Instant::now(),
        });
    }

    /// A new connection, authenticated. A refused access token is dropped, renewed and
    /// tried once more on a new connection; a second refusal is the caller's error.
    async fn open(&self) -> Result<Session, Failure> {
        let endpoint = &self.inner.endpoint;
        match &self.inner.login {
            SmtpLogin::None => endpoint.connect().await,
            SmtpLogin::Password {
                mechanism,
                user,
                env,
            } => {
                let password = match std::env::var(env) {
                    Ok(value) if !value.is_empty() => SecretString::from(value),
                    _ => {
                        return Err(Failure::Fatal(Error::new(
                            ErrorKind::Config,
                            format!("environment variable {env} (the SMTP password) is not set"),
                        )))
                    }
                };
                let mut conn = endpoint.connect().await?;
                if let Err(failure) = endpoint
                    .password(&mut conn, *mechanism, user, &password)
                    .await
                {
                    endpoint.close(conn).await;
                    return Err(failure);
                }
                Ok(conn)
            }
            SmtpLogin::OAuth {
                mechanism,
                user,
                tokens,
            } => {
                let first = match sign_in(endpoint, *mechanism, user, tokens).await? {
                    Ok(conn) => return Ok(conn),
                    Err(rejection) => rejection,
                };
                // lettre cannot change the credentials of a connection it built, and a
                // server may close after a failed AUTH: renew, then start over, once.
                tracing::info!(rejection = %first, "the server refused the access token; renewing it");
                let second = match sign_in(endpoint, *mechanism, user, tokens).await? {
                    Ok(conn) => return Ok(conn),
                    Err(rejection) => rejection,
                };
                Err(Failure::Fatal(
                    Error::new(
                        ErrorKind::Auth,
                        format!(
                            "{} refused a freshly renewed access token for {user} ({}): {second}; \
                             check that SMTP AUTH is enabled for the mailbox and that the token's \
                             scopes allow sending",
                            endpoint.host,
                            tokens.describe()
                        ),
                    )
                    .with_smtp_code(second.code),
                ))
            }
        }
    }
}

/// One connection signed in with the cached access token. A token the server refuses
/// is dropped from the cache, so the next call renews it.
async fn sign_in(
    endpoint: &Endpoint,
    mechanism: Mechanism,
    user: &str,
    tokens: &TokenCache,
) -> Result<Result<Session, sasl::Rejection>, Failure> {
    // The token first: no connection is opened for credentials that are dead.
    let token = tokens.get().await.map_err(Failure::Fatal)?;
    let mut conn = endpoint.connect().await?;
    match endpoint
        .oauth(&mut conn, mechanism, user, token.secret())
        .await
    {
        Ok(None) => Ok(Ok(conn)),
        Ok(Some(rejection)) => {
            endpoint.close(conn).await;
            tokens.reject(&token);
            Ok(Err(rejection))
        }
        Err(failure) => {
            endpoint.close(conn).await;
            Err(failure)
        }
    }
}

#[async_trait]
impl Transport for Smtp {
    async fn send(&self, email: &Email) -> Result<Delivery> {
        self.deliver(email).await
    }

    fn name(&self) -> &str {
        "smtp"
    }

    /// Two per connection: with the commands of the next transaction written behind
    /// each message's final ".", a connection carries two messages at a time, and a
    /// third must be ready when its turn comes.
    fn parallelism(&self) -> usize {
        self.inner.max_connections.saturating_mul(2)
    }
}

fn rejection(refusal: &Refusal) -> Rejected {
    Rejected {
        recipient: refusal.recipient.to_string(),
        code: Some(refusal.code),
        reply: format!("{} {}", refusal.code, refusal.text),
    }
}

fn tls_parameters(config: &SmtpConfig) -> Result<TlsParameters> {
    let name = config
        .tls_name
        .clone()
        .unwrap_or_else(|| config.host.clone());
    let mut builder = TlsParameters::builder(name);
    if let Some(path) = &config.ca_file {
        let path = &auth::expand_home(path);
        let pem = std::fs::read(path).map_err(|e| Error::io(path, "read CA file", e))?;
        let cert = Certificate::from_pem(&pem).map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!("CA file is not a PEM certificate: {e}"),
            )
            .at(path, 1, 1)
        })?;
        builder = builder.add_root_certificate(cert);
    }
    builder
        .build_rustls()
        .map_err(|e| Error::new(ErrorKind::Config, format!("TLS setup failed: {e}")))
}

fn build_login(config: &SmtpConfig) -> Result<SmtpLogin> {
    let auth = &config.auth;
    let need_user = || {
        auth.user.clone().ok_or_else(|| {
            Error::new(
                ErrorKind::Config,
                format!("`auth.user` is required for {}", auth.mechanism.name()),
            )
        })
    };
    Ok(match auth.mechanism {
        Mechanism::None => SmtpLogin::None,
        Mechanism::Plain | Mechanism::Login => SmtpLogin::Password {
            mechanism: auth.mechanism,
            user: need_user()?,
            env: auth.password_env.clone().ok_or_else(|| {
                Error::new(
                    ErrorKind::Config,
                    "`auth.password_env` must name the environment variable holding the password",
                )
            })?,
        },
        Mechanism::Xoauth2 | Mechanism::Oauthbearer => {
            let oauth = auth.oauth.as_ref().ok_or_else(|| {
                Error::new(
                    ErrorKind::Config,
                    format!("`auth.oauth` is required for {}", auth.mechanism.name()),
                )
            })?;
            let user = need_user()?;
            let source = auth::build_source(oauth, Some(&user), config.ca_file.as_deref())?;
            SmtpLogin::OAuth {
                mechanism: auth.mechanism,
                user,
                tokens: TokenCache::new(source, Duration::from_secs(oauth.renew_before_secs)),
            }
        }
    })
}
