//! `missive.yaml`: where the templates are, who sends, and through what.
//!
//! Secrets never live here: a key that looks like one is refused with a pointer to the
//! environment variable or credentials file that should hold it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, ErrorKind, Result};

/// The sender used when neither the config nor a template names one. It only suits the
/// outbox: a real server wants a sender of your own domain.
pub const DEFAULT_FROM: &str = "Missive <missive@localhost>";

/// Keys that hold secrets; refused anywhere in the config file.
const SECRET_KEYS: &[&str] = &[
    "password",
    "pass",
    "secret",
    "client_secret",
    "refresh_token",
    "access_token",
    "token",
    "private_key",
    "api_key",
];

/// Settings of a mailer, as read from `missive.yaml` or built in code: start from
/// [`Config::default`] and set the fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// The template folder.
    pub templates: PathBuf,
    /// The JSON Schema folder.
    pub schemas: PathBuf,
    /// Default sender, `Name <address>`.
    pub from: String,
    /// Where messages go.
    pub transport: TransportConfig,
    /// The durable queue, when there is one (`queue:`; `MISSIVE_QUEUE_URL` overrides
    /// its URL).
    pub queue: Option<crate::queue::QueueConfig>,
    /// How many compiled JSON Schema validators the template set keeps
    /// (`compiled_schemas:`, 32 by default). Every schema is compiled at load, so its
    /// errors show then; afterwards only the most recently used stay compiled and the
    /// others are kept as compact text, compiled again when a render needs them
    /// (~0.3 ms for a 17 KB schema). Raise it when an app sends more distinct
    /// templates than this all the time; each kept validator of a 17 KB schema costs
    /// ~100 KiB.
    pub compiled_schemas: usize,
}

/// The transport section of the config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
#[non_exhaustive]
pub enum TransportConfig {
    /// One `.eml` file per message in `dir`.
    Outbox {
        /// The folder, `outbox` by default.
        #[serde(default = "default_outbox")]
        dir: PathBuf,
    },
    /// An SMTP submission server.
    Smtp(Box<crate::transport::smtp::SmtpConfig>),
    /// The Gmail API, with the `gmail.send` scope.
    Gmail(Box<crate::transport::GmailConfig>),
    /// Microsoft Graph `sendMail`, with `Mail.Send`.
    Graph(Box<crate::transport::GraphConfig>),
    /// Transports tried in order: the next one when one fails transiently.
    Failover {
        /// Two or more transports, in the order they are tried.
        transports: Vec<TransportConfig>,
        /// Retries of transient failures (each tries the transports in order again),
        /// for direct sends.
        #[serde(default)]
        retry: crate::transport::RetryConfig,
    },
}

impl TransportConfig {
    /// The transport this section describes, with its limits, for use on its own or
    /// wrapped in a policy of your own ([`crate::MailerBuilder::transport`]). Checks the
    /// settings; connects to nothing and reads no credential yet.
    pub fn open(&self) -> Result<std::sync::Arc<dyn crate::Transport>> {
        crate::transport::open(self)
    }

    /// The retry policy of direct sends through this transport.
    pub(crate) fn retry(&self) -> crate::transport::RetryConfig {
        match self {
            TransportConfig::Outbox { .. } => crate::transport::RetryConfig::default(),
            TransportConfig::Smtp(smtp) => smtp.retry.clone(),
            TransportConfig::Gmail(gmail) => gmail.retry.clone(),
            TransportConfig::Graph(graph) => graph.retry.clone(),
            TransportConfig::Failover { retry, .. } => retry.clone(),
        }
    }

    /// Resolves relative paths against `base`, the config file's folder.
    fn relative_to(&mut self, base: &Path) {
        let join = |p: &mut PathBuf| {
            if p.is_relative() && !p.starts_with("~") && !base.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        };
        let oauth_paths = |oauth: &mut crate::auth::OAuthConfig| {
            [&mut oauth.credentials_file, &mut oauth.key_file]
                .into_iter()
                .flatten()
                .for_each(join);
        };
        match self {
            TransportConfig::Outbox { dir } => join(dir),
            TransportConfig::Smtp(smtp) => {
                smtp.ca_file.iter_mut().for_each(join);
                smtp.auth.oauth.iter_mut().for_each(oauth_paths);
            }
            TransportConfig::Gmail(gmail) => {
                gmail.ca_file.iter_mut().for_each(join);
                oauth_paths(&mut gmail.oauth);
            }
            TransportConfig::Graph(graph) => {
                graph.ca_file.iter_mut().for_each(join);
                oauth_paths(&mut graph.oauth);
            }
            TransportConfig::Failover { transports, .. } => {
                for transport in transports {
                    transport.relative_to(base);
                }
            }
        }
    }
}

fn default_outbox() -> PathBuf {
    PathBuf::from("outbox")
}

impl Default for Config {
    fn default() -> Config {
        Config {
            templates: PathBuf::from("templates"),
            schemas: PathBuf::from("schemas"),
            from: DEFAULT_FROM.to_string(),
            transport: TransportConfig::Outbox {
                dir: default_outbox(),
            },
            queue: None,
            compiled_schemas: crate::templates::schema::COMPILED_VALIDATORS,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    templates: Option<PathBuf>,
    schemas: Option<PathBuf>,
    from: Option<String>,
    transport: Option<TransportConfig>,
    queue: Option<crate::queue::RawQueueConfig>,
    compiled_schemas: Option<usize>,
}

impl Config {
    /// Reads `path`. Relative folders in it are taken from the file's own folder.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Config> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!("cannot read config {}: {e}", path.display()),
            )
            .at(path, 1, 1)
        })?;
        Config::from_yaml(&text, path).map(Config::queue_from_env)
    }

    /// `MISSIVE_QUEUE_URL` (which may carry a password) replaces the file's queue URL.
    fn queue_from_env(mut self) -> Config {
        if let Some(url) = std::env::var("MISSIVE_QUEUE_URL")
            .ok()
            .filter(|u| !u.is_empty())
        {
            self.queue = Some(match self.queue.take() {
                Some(mut queue) => {
                    queue.url = url;
                    queue
                }
                None => crate::queue::QueueConfig::new(url),
            });
        }
        self
    }

    /// The config the command line and `Mailer::from_config` use when given no file:
    /// `$MISSIVE_CONFIG`, else `missive.yaml` in the working folder, else the defaults.
    pub fn discover() -> Result<Config> {
        if let Some(path) = std::env::var_os("MISSIVE_CONFIG") {
            return Config::from_file(PathBuf::from(path));
        }
        let local = Path::new("missive.yaml");
        if local.is_file() {
            return Config::from_file(local);
        }
        Ok(Config::default().queue_from_env())
    }

    fn from_yaml(text: &str, path: &Path) -> Result<Config> {
        let yaml_error = |e: serde_yaml::Error| {
            let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
            let message = e.to_string();
            let message = message
                .find(" at line ")
                .map_or(message.as_str(), |at| &message[..at]);
            Error::new(ErrorKind::Config, format!("invalid config: {message}"))
                .at(path, line, column)
        };
        let value: serde_yaml::Value = serde_yaml::from_str(text).map_err(yaml_error)?;
        if value.is_null() {
            return Ok(Config::default().relative_to(path));
        }
        if let Some(key) = find_secret_key(&value) {
            let line = text
                .lines()
                .position(|l| l.trim_start().starts_with(&format!("{key}:")))
                .map_or(1, |i| i + 1);
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "`{key}` looks like a secret; secrets never go in the config file — \
                     use an environment variable or the credentials file `missive auth` writes"
                ),
            )
            .at(path, line, 1));
        }
        // Parsed again from the text, not from `value`, so that errors keep their line
        // and the path of the field (`transport.port: invalid type ...`).
        let raw: Raw = serde_yaml::from_str(text).map_err(yaml_error)?;
        let defaults = Config::default();
        let line_of = |key: &str| {
            text.lines()
                .position(|l| l.trim_start().starts_with(&format!("{key}:")))
                .map_or(1, |i| i + 1)
        };
        let base = path.parent().unwrap_or(Path::new(""));
        let queue = raw
            .queue
            .map(|q| q.resolve(base))
            .transpose()
            .map_err(|e| e.at(path, line_of("queue"), 1))?;
        let config = Config {
            templates: raw.templates.unwrap_or(defaults.templates),
            schemas: raw.schemas.unwrap_or(defaults.schemas),
            from: raw.from.unwrap_or(defaults.from),
            transport: raw.transport.unwrap_or(defaults.transport),
            queue,
            compiled_schemas: raw.compiled_schemas.unwrap_or(defaults.compiled_schemas),
        };
        crate::address::parse_mailbox(&config.from).map_err(|e| {
            let line = text
                .lines()
                .position(|l| l.trim_start().starts_with("from:"))
                .map_or(1, |i| i + 1);
            Error::new(ErrorKind::Config, format!("`from`: {}", e.message())).at(path, line, 1)
        })?;
        Ok(config.relative_to(path))
    }

    /// Resolves relative folders against the folder of the config file.
    fn relative_to(mut self, path: &Path) -> Config {
        let base = path.parent().unwrap_or(Path::new(""));
        let join = |p: &mut PathBuf| {
            if p.is_relative() && !base.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        };
        join(&mut self.templates);
        join(&mut self.schemas);
        self.transport.relative_to(base);
        self
    }
}

fn find_secret_key(value: &serde_yaml::Value) -> Option<String> {
    match value {
        serde_yaml::Value::Mapping(map) => map.iter().find_map(|(k, v)| {
            let key = k.as_str().unwrap_or_default();
            if SECRET_KEYS.contains(&key.to_ascii_lowercase().as_str()) {
                Some(key.to_string())
            } else {
                find_secret_key(v)
            }
        }),
        serde_yaml::Value::Sequence(items) => items.iter().find_map(find_secret_key),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        Config::from_yaml(text, Path::new("conf/missive.yaml"))
    }

    #[test]
    fn relative_paths_follow_the_file() {
        let config = parse("templates: tpl\nfrom: \"Acme <hi@acme.test>\"\ntransport:\n  type: outbox\n  dir: /tmp/out\n").unwrap();
        assert_eq!(config.templates, Path::new("conf/tpl"));
        assert_eq!(config.schemas, Path::new("conf/schemas"));
        assert_eq!(
            config.transport,
            TransportConfig::Outbox {
                dir: PathBuf::from("/tmp/out")
            }
        );
    }

    #[test]
    fn empty_file_is_the_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.from, DEFAULT_FROM);
        assert_eq!(
            config.compiled_schemas,
            crate::templates::schema::COMPILED_VALIDATORS
        );
    }

    #[test]
    fn compiled_schemas_is_read() {
        assert_eq!(
            parse("compiled_schemas: 200").unwrap().compiled_schemas,
            200
        );
        let err = parse("from: a@b.test\ncompiled_schemas: many\n").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("compiled_schemas"), "{err}");
        assert_eq!(err.location().unwrap().line, 2, "{err}");
    }

    #[test]
    fn secrets_are_refused_with_their_line() {
        let err =
            parse("from: a@b.test\ntransport:\n  type: outbox\n  password: hunter2\n").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert_eq!(err.location().unwrap().line, 4);
        assert!(!err.to_string().contains("hunter2"));
    }

    /// Every `transport:` block of docs/api-transports.md is a valid configuration.
    #[test]
    fn the_documented_api_transports_parse() {
        let docs = include_str!("../docs/api-transports.md");
        let blocks: Vec<&str> = docs
            .split("```yaml\n")
            .skip(1)
            .filter_map(|b| b.split("```").next())
            .filter(|b| b.starts_with("transport:"))
            .collect();
        let mut kinds = Vec::new();
        for block in blocks {
            let config = parse(block).unwrap_or_else(|e| panic!("{e}\n{block}"));
            kinds.push(match config.transport {
                TransportConfig::Gmail(gmail) => {
                    assert!(gmail.token_settings().is_ok());
                    "gmail"
                }
                TransportConfig::Graph(graph) => {
                    assert!(graph.save_to_sent_items);
                    "graph"
                }
                TransportConfig::Failover { transports, .. } => {
                    assert_eq!(transports.len(), 2);
                    "failover"
                }
                _ => "other",
            });
        }
        assert_eq!(kinds, ["gmail", "graph", "failover", "gmail"]);
    }

    #[test]
    fn the_queue_section_resolves_paths_and_durations_and_refuses_passwords() {
        let config = parse(
            "queue:\n  url: sqlite://var/q.db\n  workers: 3\n  backoff: { min: 1s, max: 2m }\n  lifetime: 2d\n",
        )
        .unwrap();
        let queue = config.queue.unwrap();
        assert_eq!(queue.url, "sqlite://conf/var/q.db");
        assert_eq!(queue.workers, 3);
        assert_eq!(queue.backoff_min, std::time::Duration::from_secs(1));
        assert_eq!(queue.backoff_max, std::time::Duration::from_secs(120));
        assert_eq!(queue.lifetime, std::time::Duration::from_secs(172_800));
        let err =
            parse("from: a@b.test\nqueue:\n  url: postgres://app:hunter2@db/mail\n").unwrap_err();
        assert_eq!(err.location().unwrap().line, 2);
        assert!(err.message().contains("PGPASSWORD"), "{err}");
        assert!(!err.to_string().contains("hunter2"));
        let err = parse("queue:\n  url: sqlite://q.db\n  lifetime: forever\n").unwrap_err();
        assert!(err.message().contains("`queue.lifetime`"), "{err}");
    }

    #[test]
    fn unknown_keys_and_bad_sender_are_errors() {
        let err = parse("from: a@b.test\ntemplats: x\n").unwrap_err();
        assert!(err.message().contains("unknown field `templats`"), "{err}");
        assert_eq!(err.location().unwrap().line, 2);
        let err = parse("from: not an address\n").unwrap_err();
        assert!(err.message().starts_with("`from`"), "{err}");
        let err = parse("transport:\n  type: carrier-pigeon\n").unwrap_err();
        assert!(err.message().contains("carrier-pigeon"), "{err}");
    }
}
