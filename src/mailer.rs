//! The mailer: a loaded template set, a sender and a transport, shared by every task.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lettre::message::Mailbox;
use serde::Serialize;
use tracing::Instrument;

use crate::address::{parse_mailbox, parse_mailboxes};
use crate::config::{Config, TransportConfig};
use crate::error::{Error, ErrorKind, Result};
use crate::message::{self, Attachment, MessageId};
use crate::queue::{Queue, Queued};
use crate::render::{self, Rendered};
use crate::templates::{LiveSet, ReloadEvent, TemplateSet};
use crate::transport::{retry, Email, Inbox, RetryConfig, Transport};
use crate::watch::{self, Watch};

/// Renders named templates and sends them. Cheap to clone; clones share everything.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), missive::Error> {
/// let (mailer, inbox) = missive::Mailer::for_tests("templates");
/// let receipt = mailer
///     .template("welcome")
///     .to("Ada <ada@example.test>")
///     .data(&serde_json::json!({
///         "user": {"first_name": "Ada", "name": "Ada Lovelace", "email": "ada@example.test"},
///         "product": {"name": "Acme Cloud"},
///         "dashboard_url": "https://app.example.test/"
///     }))
///     .send()
///     .await?;
/// assert_eq!(receipt.accepted, ["ada@example.test"]);
/// assert_eq!(inbox.last().unwrap().subject(), "Welcome to Acme Cloud, Ada!");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Mailer {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    live: Arc<LiveSet>,
    /// Dropping it (with the last clone of the mailer) stops the watch.
    _watch: Option<Watch>,
    from: Mailbox,
    transport: Arc<dyn Transport>,
    retry: RetryConfig,
    /// Bounds the messages rendered and not yet delivered, so that a burst of sends
    /// neither renders everything up front (memory) nor fills the blocking pool with
    /// hundreds of threads: twice the transport's parallelism, one message on the
    /// wire and the next being rendered per connection.
    in_flight: Arc<tokio::sync::Semaphore>,
    /// The durable queue, when one is configured.
    queue: Option<Queue>,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("templates", &self.inner.live.current().templates_dir)
            .field("from", &self.inner.from.to_string())
            .field("transport", &self.inner.transport.name())
            .finish()
    }
}

/// What happened to a sent message.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Receipt {
    /// The Message-ID header, with angle brackets.
    pub message_id: String,
    /// The template that was sent.
    pub template: String,
    /// Envelope recipients the transport accepted.
    pub accepted: Vec<String>,
    /// Recipients the server refused while others got the message, each with the
    /// SMTP code (empty when everyone got it).
    pub rejected: Vec<crate::transport::Rejected>,
    /// Delivery attempts made (1 when the first one succeeded).
    pub attempts: u32,
    /// The server's final reply, or where the message was put.
    pub reply: String,
    /// The template's tags.
    pub tags: Vec<String>,
    /// The transport that delivered it (`smtp`, `outbox`, ...).
    pub transport: String,
}

/// A sendable template as [`Mailer::templates`] lists it.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct TemplateInfo {
    /// The name it is sent by, e.g. `account/password-reset`.
    pub name: String,
    /// Its base HTML file.
    pub file: PathBuf,
    /// Locale tags of its variants, as written in their file names.
    pub locales: Vec<String>,
    /// How many samples its schema's `examples` holds ([`Mailer::example`]).
    pub examples: usize,
}

/// Builds a [`Mailer`] in code; [`Mailer::from_config`] reads the same from a file.
#[derive(Debug, Clone, Default)]
pub struct MailerBuilder {
    config: Config,
    transport: Option<Arc<dyn Transport>>,
    retry: Option<RetryConfig>,
    watch: Option<watch::Mode>,
    tolerate_broken: bool,
}

impl MailerBuilder {
    /// Enqueues into, and [`Mailer::run_queue`] delivers from, this durable queue
    /// (the config's `queue:` section sets the same).
    pub fn queue(mut self, queue: crate::queue::QueueConfig) -> Self {
        self.config.queue = Some(queue);
        self
    }

    /// The template folder (`templates` by default).
    pub fn templates(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.templates = dir.into();
        self
    }

    /// The JSON Schema folder (`schemas` by default).
    pub fn schemas(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.schemas = dir.into();
        self
    }

    /// The default sender, `Name <address>`.
    pub fn from(mut self, from: impl Into<String>) -> Self {
        self.config.from = from.into();
        self
    }

    /// Writes messages as `.eml` files to `dir` (the default, with `outbox`).
    pub fn outbox(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.transport = TransportConfig::Outbox { dir: dir.into() };
        self.transport = None;
        self
    }

    /// Delivers through `transport` instead of the configured one: an API of your
    /// own, a test double, a transport wrapped in your own policy.
    pub fn transport(mut self, transport: impl Transport) -> Self {
        self.transport = Some(Arc::new(transport));
        self
    }

    /// How direct sends retry transient failures; by default the SMTP section's
    /// `retry`, or [`RetryConfig::default`].
    pub fn retry(mut self, retry: RetryConfig) -> Self {
        self.retry = Some(retry);
        self
    }

    /// Reloads the template set whenever a file under the template or schema folder
    /// changes (off by default). A set that fails to load is not swapped in: the last
    /// good one stays, and [`Mailer::subscribe`] and [`Mailer::last_reload_error`] say
    /// why. The watch ends when the last clone of the mailer is dropped.
    pub fn watch(mut self, watch: bool) -> Self {
        self.watch = watch.then_some(watch::Mode::Native);
        self
    }

    /// Like [`watch`](Self::watch), but scans the folders every `interval` instead of
    /// relying on file-system notifications, which network mounts and some containers
    /// never send.
    pub fn poll(mut self, interval: Duration) -> Self {
        self.watch = Some(watch::Mode::Poll(interval));
        self
    }

    /// With [`watch`](Self::watch) or [`poll`](Self::poll): build even when the
    /// template set does not load yet. The mailer then knows no templates and
    /// [`Mailer::last_reload_error`] says why, until a save makes the set load. Meant
    /// for previews and dev servers, where the fix is one save away; a mailer that
    /// does not watch still refuses to build.
    pub fn tolerate_broken(mut self, tolerate: bool) -> Self {
        self.tolerate_broken = tolerate;
        self
    }

    /// Takes every setting from `config`.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Loads the template set and opens the transport.
    pub fn build(mut self) -> Result<Mailer> {
        let transport: Arc<dyn Transport> = match self.transport.take() {
            Some(transport) => transport,
            None => crate::transport::open(&self.config.transport)?,
        };
        self.build_with(transport)
    }

    /// Like [`build`](Self::build), but every message goes to the returned [`Inbox`].
    pub fn build_in_memory(self) -> Result<(Mailer, Inbox)> {
        let inbox = Inbox::default();
        let mailer = self.build_with(Arc::new(inbox.clone()))?;
        Ok((mailer, inbox))
    }

    fn build_with(self, transport: Arc<dyn Transport>) -> Result<Mailer> {
        let from = parse_mailbox(&self.config.from).map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!("default sender: {}", e.message()),
            )
        })?;
        // Started before the first load, so that a save during it is not lost. A
        // missing folder is left for the load to explain.
        let watch = match self.watch.filter(|_| self.config.templates.is_dir()) {
            Some(mode) => Some(watch::start(
                &self.config.templates,
                &self.config.schemas,
                mode,
            )?),
            None => None,
        };
        let mut broken = None;
        let set = match TemplateSet::load(
            &self.config.templates,
            &self.config.schemas,
            self.config.compiled_schemas,
        ) {
            Ok(set) => set,
            // A missing or unreadable folder cannot be watched back to health.
            Err(e)
                if self.tolerate_broken
                    && self.watch.is_some()
                    && e.kind() != ErrorKind::Config =>
            {
                broken = Some(e);
                TemplateSet::empty(&self.config.templates)
            }
            Err(e) => return Err(e),
        };
        let live = Arc::new(LiveSet::new(
            set,
            &self.config.templates,
            &self.config.schemas,
            self.config.compiled_schemas,
        ));
        if let Some(error) = broken {
            live.broken_at_start(error);
        }
        if let Some(watch) = &watch {
            watch.attach(&live);
        }
        let retry = self
            .retry
            .clone()
            .unwrap_or_else(|| self.config.transport.retry());
        let queue = self.config.queue.as_ref().map(Queue::open).transpose()?;
        let inner = Arc::new(Inner {
            queue,
            live,
            _watch: watch,
            from,
            in_flight: Arc::new(tokio::sync::Semaphore::new(
                transport.parallelism().max(1) * 2,
            )),
            transport,
            retry,
        });
        Ok(Mailer { inner })
    }
}

impl Mailer {
    /// A builder with the defaults: `templates/`, `schemas/`, the outbox.
    pub fn builder() -> MailerBuilder {
        MailerBuilder::default()
    }

    /// A mailer configured by the YAML file at `path`.
    pub async fn from_config(path: impl AsRef<Path>) -> Result<Mailer> {
        let path = path.as_ref().to_path_buf();
        let config = tokio::task::spawn_blocking(move || Config::from_file(path))
            .await
            .map_err(|e| Error::new(ErrorKind::Config, format!("config loader failed: {e}")))??;
        tokio::task::spawn_blocking(move || Mailer::builder().config(config).build())
            .await
            .map_err(|e| Error::new(ErrorKind::Template, format!("template loader failed: {e}")))?
    }

    /// A mailer over `templates` (schemas from the `schemas` folder beside it) whose
    /// messages land in the returned [`Inbox`], for tests.
    ///
    /// # Panics
    ///
    /// When the template set does not load; the panic message lists every problem.
    pub fn for_tests(templates: impl AsRef<Path>) -> (Mailer, Inbox) {
        let templates = templates.as_ref();
        let schemas = templates.parent().unwrap_or(Path::new("")).join("schemas");
        match Mailer::builder()
            .templates(templates)
            .schemas(schemas)
            .build_in_memory()
        {
            Ok(pair) => pair,
            Err(e) => {
                let problems: Vec<String> = e.problems().map(ToString::to_string).collect();
                panic!("test templates do not load:\n{}", problems.join("\n"))
            }
        }
    }

    /// Renders `name` with `data` (checked against its schema first), sending nothing.
    pub fn render(&self, name: &str, data: &impl Serialize) -> Result<Rendered> {
        self.template(name).data(data).render()
    }

    /// Renders `name` with `data` and sends it to the recipients its front-matter names.
    ///
    /// It waits for room among the messages in flight before it copies `data`: a
    /// burst of thousands of sends holds the callers' data, not a copy per send.
    pub async fn send_template(&self, name: &str, data: &impl Serialize) -> Result<Receipt> {
        let permit = self.inner.in_flight_permit().await?;
        // Boxed, so that a send still waiting above is a small future, not one the
        // size of a whole delivery.
        Box::pin(self.template(name).data(data).deliver(Some(permit))).await
    }

    /// A message from template `name`, to adjust before sending.
    pub fn template(&self, name: &str) -> TemplateMessage {
        TemplateMessage {
            mailer: self.clone(),
            name: name.to_string(),
            locale: None,
            data: Ok(Arc::new(serde_json::Value::Object(Default::default()))),
            to: None,
            cc: None,
            bcc: None,
            reply_to: None,
            attachments: Vec::new(),
            message_id: None,
            idempotency_key: None,
        }
    }

    /// Sample data of template `name`: entry `index` of its schema's `examples`.
    pub fn example(&self, name: &str, index: usize) -> Result<serde_json::Value> {
        let set = self.set();
        let variant = set.variant(name, None)?;
        let schema = variant.schema.as_ref();
        if let Some(example) = schema.and_then(|s| s.example(index)) {
            return example;
        }
        let count = schema.map_or(0, |s| s.example_count());
        Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "`{name}` has {count} schema example{}, so there is no example {index}; pass data instead",
                if count == 1 { "" } else { "s" }
            ),
        ))
    }

    /// Names of every sendable template, sorted.
    pub fn template_names(&self) -> Vec<String> {
        self.inner.live.current().entries.keys().cloned().collect()
    }

    /// Every sendable template with its locale variants and sample data, sorted by
    /// name: what a preview lists.
    pub fn templates(&self) -> Vec<TemplateInfo> {
        let set = self.set();
        set.entries
            .iter()
            .map(|(name, entry)| TemplateInfo {
                name: name.clone(),
                file: entry.base.file.clone(),
                locales: entry
                    .locales
                    .values()
                    .filter_map(|v| v.locale.clone())
                    .collect(),
                examples: entry.base.schema.as_ref().map_or(0, |s| s.example_count()),
            })
            .collect()
    }

    #[cfg(feature = "bench-internals")]
    pub(crate) fn default_from(&self) -> &Mailbox {
        &self.inner.from
    }

    pub(crate) fn set(&self) -> Arc<TemplateSet> {
        self.inner.live.current()
    }

    /// Reload events from now on: one per save (or burst of saves) that changed the
    /// template set, telling whether it was swapped in or refused. Only a mailer built
    /// with [`MailerBuilder::watch`] or [`poll`](MailerBuilder::poll) sends any. The
    /// receiver reports the channel closed once the last mailer clone is gone.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<ReloadEvent> {
        self.inner.live.subscribe()
    }

    /// Why the files on disk do not load, if the last reload failed; the mailer keeps
    /// rendering with the last set that did. `None` once a reload succeeds again.
    pub fn last_reload_error(&self) -> Option<Arc<Error>> {
        self.inner.live.last_error()
    }

    /// How many times the set was reloaded and swapped in since the mailer was built.
    pub fn generation(&self) -> u64 {
        self.inner.live.generation()
    }

    /// The transport messages go through; the queue's workers deliver through it.
    pub(crate) fn transport(&self) -> Arc<dyn Transport> {
        self.inner.transport.clone()
    }

    /// Validates and renders `name` with `data`, and stores it in the durable queue;
    /// see [`TemplateMessage::enqueue`].
    pub async fn enqueue(&self, name: &str, data: &impl Serialize) -> Result<Queued> {
        self.template(name).data(data).enqueue().await
    }

    /// The durable queue, when one is configured: inspect and operate it.
    pub fn queue(&self) -> Option<&Queue> {
        self.inner.queue.as_ref()
    }

    /// Delivers queued mail through the mailer's transport with the configured number
    /// of workers until `shutdown` resolves; then claims nothing more, lets what is on
    /// its way finish and be recorded, and returns.
    ///
    /// ```no_run
    /// # async fn run(mailer: missive::Mailer) -> missive::Result<()> {
    /// mailer.run_queue(async { tokio::signal::ctrl_c().await.ok(); }).await
    /// # }
    /// ```
    pub async fn run_queue(
        &self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<()> {
        let queue = self.require_queue()?;
        crate::queue::run_workers(queue.clone(), self.transport(), shutdown).await
    }

    fn require_queue(&self) -> Result<&Queue> {
        self.queue().ok_or_else(|| {
            Error::new(
                ErrorKind::Config,
                "no queue is configured: add `queue: { url: \"sqlite://var/missive-queue.db\" }` \
                 to missive.yaml, or MailerBuilder::queue",
            )
        })
    }
}

/// One message being put together: template, data, overrides, attachments.
#[derive(Debug)]
pub struct TemplateMessage {
    mailer: Mailer,
    name: String,
    locale: Option<String>,
    data: Result<Arc<serde_json::Value>, String>,
    to: Option<Vec<String>>,
    cc: Option<Vec<String>>,
    bcc: Option<Vec<String>>,
    reply_to: Option<String>,
    attachments: Vec<Attachment>,
    message_id: Option<String>,
    idempotency_key: Option<String>,
}

impl TemplateMessage {
    /// The data the template renders with.
    ///
    /// It is serialised into JSON first, to be checked against the template's schema;
    /// data that already is JSON can skip that copy with [`json`](Self::json).
    pub fn data(mut self, data: &impl Serialize) -> Self {
        self.data = serde_json::to_value(data)
            .map(Arc::new)
            .map_err(|e| e.to_string());
        self
    }

    /// The data the template renders with, as JSON the caller already holds: a
    /// request body, a row's JSON column, or one value shared by many messages.
    /// Nothing is copied, where [`data`](Self::data) serialises its argument (over the
    /// example templates, about a tenth of the render).
    ///
    /// ```
    /// # let (mailer, _inbox) = missive::Mailer::for_tests(concat!(env!("CARGO_MANIFEST_DIR"), "/templates"));
    /// use std::sync::Arc;
    ///
    /// let data = Arc::new(mailer.example("welcome", 0)?);
    /// for to in ["ada@example.com", "grace@example.com"] {
    ///     let rendered = mailer.template("welcome").json(data.clone()).to(to).render()?;
    ///     assert!(rendered.html().contains("Ada"));
    ///     assert_eq!(rendered.to(), [to]);
    /// }
    /// # Ok::<(), missive::Error>(())
    /// ```
    pub fn json(mut self, data: impl Into<Arc<serde_json::Value>>) -> Self {
        self.data = Ok(data.into());
        self
    }

    /// Picks a locale variant: `fr-CA`, then `fr`, then the base template.
    pub fn locale(mut self, locale: impl Into<String>) -> Self {
        self.locale = Some(locale.into());
        self
    }

    /// Adds a `To` recipient; any `to` replaces the front-matter's.
    pub fn to(mut self, address: impl Into<String>) -> Self {
        self.to.get_or_insert_with(Vec::new).push(address.into());
        self
    }

    /// Adds a `Cc` recipient; any `cc` replaces the front-matter's.
    pub fn cc(mut self, address: impl Into<String>) -> Self {
        self.cc.get_or_insert_with(Vec::new).push(address.into());
        self
    }

    /// Adds a `Bcc` recipient; any `bcc` replaces the front-matter's.
    pub fn bcc(mut self, address: impl Into<String>) -> Self {
        self.bcc.get_or_insert_with(Vec::new).push(address.into());
        self
    }

    /// Sets `Reply-To`, replacing the front-matter's.
    pub fn reply_to(mut self, address: impl Into<String>) -> Self {
        self.reply_to = Some(address.into());
        self
    }

    /// Attaches a file or an inline image.
    pub fn attach(mut self, attachment: Attachment) -> Self {
        self.attachments.push(attachment);
        self
    }

    /// Sends with this Message-ID (`<unique@your.domain>`, brackets optional) instead
    /// of a random one: an app that journals its sends resends after a crash, or after
    /// [`ErrorKind::DeliveryUnknown`], with the same ID so receivers can tell the
    /// copies apart. Checked when the message is built.
    pub fn message_id(mut self, id: impl Into<String>) -> Self {
        self.message_id = Some(id.into());
        self
    }

    /// Names this message for deduplication: its Message-ID is derived from the key
    /// (the same key always gives the same ID on the sender's domain, and the ID does
    /// not reveal the key), and the queue accepts a key only once. An explicit
    /// [`message_id`](Self::message_id) wins over the derived one.
    ///
    /// ```
    /// let (mailer, _inbox) = missive::Mailer::for_tests("templates");
    /// let data = mailer.example("welcome", 0)?;
    /// let first = mailer.template("welcome").data(&data).idempotency_key("signup-42").eml()?;
    /// let again = mailer.template("welcome").data(&data).idempotency_key("signup-42").eml()?;
    /// let id = |eml: &[u8]| String::from_utf8_lossy(eml).lines()
    ///     .find(|l| l.starts_with("Message-ID:")).map(String::from);
    /// assert_eq!(id(&first), id(&again));
    /// # Ok::<(), missive::Error>(())
    /// ```
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Renders without sending: subject, addresses, HTML and text.
    pub fn render(&self) -> Result<Rendered> {
        render_message(&self.mailer.set(), &self.parts()?, self.checked_data()?)
    }

    /// The whole MIME message as it would be sent, without sending it.
    pub fn eml(&self) -> Result<Vec<u8>> {
        let rendered = self.render()?;
        let email = message::build(
            rendered,
            &self.attachments,
            Some(&self.mailer.inner.from),
            &self.message_id_rule(),
        )?;
        Ok(email.into_raw())
    }

    fn message_id_rule(&self) -> MessageId {
        match (&self.message_id, &self.idempotency_key) {
            (Some(id), _) => MessageId::Given(id.clone()),
            (None, Some(key)) => MessageId::FromKey(key.clone()),
            (None, None) => MessageId::Random,
        }
    }

    fn checked_data(&self) -> Result<&Arc<serde_json::Value>> {
        self.data.as_ref().map_err(|e| {
            Error::new(
                ErrorKind::InvalidData,
                format!("data for `{}` cannot be serialized: {e}", self.name),
            )
        })
    }

    fn parts(&self) -> Result<Parts> {
        let list = |v: &Option<Vec<String>>| -> Result<Option<Vec<Mailbox>>> {
            v.as_ref()
                .map(|items| {
                    items
                        .iter()
                        .map(|a| parse_mailboxes(a))
                        .collect::<Result<Vec<_>>>()
                        .map(|v| v.concat())
                })
                .transpose()
        };
        Ok(Parts {
            name: self.name.clone(),
            locale: self.locale.clone(),
            overrides: render::Overrides {
                to: list(&self.to)?,
                cc: list(&self.cc)?,
                bcc: list(&self.bcc)?,
                reply_to: self.reply_to.as_deref().map(parse_mailbox).transpose()?,
            },
        })
    }

    /// Validates, renders and builds the message on tokio's blocking pool, once the
    /// mailer has room for another message in flight (`permit`, when the caller took
    /// that room already).
    async fn build_email(
        self,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Result<(Email, tokio::sync::OwnedSemaphorePermit, Mailer)> {
        let parts = self.parts()?;
        self.checked_data()?;
        let message_id = self.message_id_rule();
        // Checked above; moved rather than cloned, as the message is consumed.
        let data = self.data.unwrap_or_default();
        let mailer = self.mailer;
        let permit = match permit {
            Some(permit) => permit,
            None => mailer.inner.in_flight_permit().await?,
        };
        // Taken once there is room, so that a send waiting meanwhile uses the set
        // in force when it renders.
        let set = mailer.set();
        let from = mailer.inner.from.clone();
        let attachments = self.attachments;
        let email = tokio::task::spawn_blocking(move || {
            let rendered = render_message(&set, &parts, &data)?;
            message::build(rendered, &attachments, Some(&from), &message_id)
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Render, format!("render task failed: {e}")))??;
        Ok((email, permit, mailer))
    }

    /// Validates, renders and builds the message, and stores it in the durable queue.
    /// Returns once storage has committed it (synced to disk); bad data or a broken
    /// template is an error at once and nothing is queued. Workers
    /// ([`Mailer::run_queue`], `missive worker`) deliver exactly these bytes, with
    /// this Message-ID on every attempt. With an
    /// [`idempotency_key`](Self::idempotency_key) already queued, nothing new is
    /// stored and the first message's id comes back with `duplicate: true`.
    pub async fn enqueue(self) -> Result<Queued> {
        let queue = self.mailer.require_queue()?.clone();
        let key = self.idempotency_key.clone();
        let (email, in_flight, _mailer) = self.build_email(None).await?;
        // The permit bounds rendering; the write is bounded by group commit instead.
        drop(in_flight);
        queue.enqueue(&email, key.as_deref()).await
    }

    /// Like [`enqueue`](Self::enqueue), on the app's own PostgreSQL connection or
    /// transaction (`&mut *tx`): the message exists if and only if that transaction
    /// commits, and workers see it at the commit. The queue must be PostgreSQL
    /// (feature `queue-postgres`).
    #[cfg(feature = "queue-postgres")]
    pub async fn enqueue_in(self, conn: &mut sqlx::PgConnection) -> Result<Queued> {
        let queue = self.mailer.require_queue()?.clone();
        let key = self.idempotency_key.clone();
        let (email, in_flight, _mailer) = self.build_email(None).await?;
        drop(in_flight);
        queue.enqueue_in(conn, &email, key.as_deref()).await
    }

    /// Renders (off the async worker threads) and sends through the mailer's
    /// transport, retrying transient failures as the retry policy allows.
    pub async fn send(self) -> Result<Receipt> {
        self.deliver(None).await
    }

    async fn deliver(self, permit: Option<tokio::sync::OwnedSemaphorePermit>) -> Result<Receipt> {
        let (email, _in_flight, mailer) = self.build_email(permit).await?;
        let transport = &mailer.inner.transport;
        let span = tracing::info_span!(
            "send",
            template = %email.template(),
            message_id = %email.message_id(),
            transport = transport.name(),
            tags = ?email.tags(),
        );
        let sent = retry::deliver(transport.as_ref(), &email, &mailer.inner.retry)
            .instrument(span.clone())
            .await;
        let _entered = span.enter();
        match sent {
            Ok(sent) => {
                let delivery = sent.delivery;
                tracing::info!(attempts = sent.attempts, reply = %delivery.reply, "sent");
                Ok(Receipt {
                    message_id: email.message_id().to_string(),
                    template: email.template().to_string(),
                    accepted: delivery.accepted,
                    rejected: delivery.rejected,
                    attempts: sent.attempts,
                    reply: delivery.reply,
                    tags: email.tags().to_vec(),
                    transport: delivery.transport,
                })
            }
            Err(e) => {
                tracing::debug!(error = %e, "not sent");
                Err(e)
            }
        }
    }
}

impl Inner {
    async fn in_flight_permit(self: &Arc<Inner>) -> Result<tokio::sync::OwnedSemaphorePermit> {
        self.in_flight
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::new(ErrorKind::Transient, "the mailer is shutting down"))
    }
}

/// Everything a render needs, owned, so it can move to a blocking thread.
struct Parts {
    name: String,
    locale: Option<String>,
    overrides: render::Overrides,
}

fn render_message(
    set: &TemplateSet,
    parts: &Parts,
    data: &Arc<serde_json::Value>,
) -> Result<Rendered> {
    render::render(
        set,
        &parts.name,
        parts.locale.as_deref(),
        data,
        &parts.overrides,
    )
}
