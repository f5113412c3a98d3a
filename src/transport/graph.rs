//! Delivery through Microsoft Graph (`POST /users/{id}/sendMail`) with the built MIME,
//! base64 as a `text/plain` body: delegated `Mail.Send` (a user's refresh token) or
//! app-only client credentials (`https://graph.microsoft.com/.default`).
//!
//! Past Graph's 4 MB request limit the message is refused before sending. Graph's way
//! around the limit (a draft, an upload session per attachment, then a send) rebuilds
//! the message from JSON parts, so recipients would not get the MIME missive built (its
//! Message-ID, parts and headers), and it is three or more requests that can fail
//! half-way, leaving a draft behind.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use reqwest::Url;
use serde::Deserialize;

use crate::auth::{self, Grant, OAuthConfig, Provider, TokenCache};
use crate::error::{Error, ErrorKind, Result};
use crate::transport::api::{self, Answer, Api};
use crate::transport::gmail::{default_max_concurrent, default_timeout};
use crate::transport::limit::Rate;
use crate::transport::{async_trait, Delivery, Email, RetryConfig, Transport};

const DEFAULT_BASE_URL: &str = "https://graph.microsoft.com";
/// Delegated: send as the signed-in user, and get a refresh token.
pub(crate) const GRAPH_DELEGATED_SCOPES: &[&str] =
    &["https://graph.microsoft.com/Mail.Send", "offline_access"];
/// App-only: the application permissions an admin granted (Mail.Send).
pub(crate) const GRAPH_APP_SCOPE: &str = "https://graph.microsoft.com/.default";
/// Graph's limit on a request body, which holds the MIME in base64.
const REQUEST_LIMIT: usize = 4 * 1024 * 1024;

/// The `transport: {type: graph}` section: Microsoft Graph `sendMail`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphConfig {
    /// The sending mailbox: its address (user principal name) or object id; `me` for
    /// the signed-in user with delegated access.
    pub user: String,
    /// Where access tokens come from: provider `microsoft` with `tenant`; the
    /// `client_credentials` grant for app-only access.
    pub oauth: OAuthConfig,
    /// The API's address, `https://graph.microsoft.com` by default (https only, except
    /// toward loopback).
    #[serde(default)]
    pub base_url: Option<String>,
    /// An extra PEM trust anchor for the API and the token endpoint.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Whether Graph keeps a copy in the mailbox's Sent Items. Graph always does for
    /// MIME sends, so only `true` is accepted; see docs/api-transports.md.
    #[serde(default = "default_true")]
    pub save_to_sent_items: bool,
    /// Seconds to wait for an answer once the message is sent.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// At most this many messages per period (`30/min`); none by default.
    #[serde(default)]
    pub rate: Option<Rate>,
    /// At most this many sends at once; Exchange Online allows 4 per mailbox.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: usize,
    /// Retries of transient failures, for direct sends.
    #[serde(default)]
    pub retry: RetryConfig,
}

fn default_true() -> bool {
    true
}

impl GraphConfig {
    /// The token settings with Graph's scopes filled in where none are given.
    pub fn token_settings(&self) -> Result<OAuthConfig> {
        if !matches!(self.oauth.provider, Provider::Microsoft | Provider::Generic) {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "the graph transport signs in with provider `microsoft`, not `{}`",
                    self.oauth.provider.name()
                ),
            ));
        }
        let mut oauth = self.oauth.clone();
        oauth.scopes.get_or_insert_with(|| {
            if oauth.grant == Some(Grant::ClientCredentials) {
                vec![GRAPH_APP_SCOPE.to_string()]
            } else {
                GRAPH_DELEGATED_SCOPES
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            }
        });
        Ok(oauth)
    }
}

/// The Microsoft Graph transport.
pub(crate) struct Graph {
    api: Api,
    user: String,
    url: Url,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("user", &self.user)
            .field("url", &self.url.as_str())
            .finish_non_exhaustive()
    }
}

impl Graph {
    /// Checks the settings; reads no credential and connects to nothing yet.
    pub fn new(config: &GraphConfig) -> Result<Graph> {
        if !config.save_to_sent_items {
            return Err(Error::new(
                ErrorKind::Config,
                "`save_to_sent_items: false` cannot be honoured: Graph saves every message sent \
                 as MIME to Sent Items, and its JSON form, which could skip that, would not send \
                 the message missive built",
            ));
        }
        let base = api::base_url(
            config.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL),
            "base_url",
        )?;
        if config.user.trim().is_empty() {
            return Err(Error::new(
                ErrorKind::Config,
                "`user` must name the sending mailbox",
            ));
        }
        let oauth = config.token_settings()?;
        if config.user == "me" && oauth.grant == Some(Grant::ClientCredentials) {
            return Err(Error::new(
                ErrorKind::Config,
                "app-only (client_credentials) access has no signed-in user: `user` must name \
                 the sending mailbox",
            ));
        }
        let source = auth::build_source(&oauth, Some(&config.user), config.ca_file.as_deref())?;
        let tokens = TokenCache::new(source, Duration::from_secs(oauth.renew_before_secs));
        let url = if config.user == "me" {
            api::join(&base, &["v1.0", "me", "sendMail"])
        } else {
            api::join(&base, &["v1.0", "users", &config.user, "sendMail"])
        };
        Ok(Graph {
            api: Api::new(
                "Graph",
                tokens,
                config.ca_file.as_deref(),
                Duration::from_secs(config.timeout_secs.max(1)),
            )?,
            user: config.user.clone(),
            url,
        })
    }

    async fn deliver(&self, email: &Email) -> Result<Delivery> {
        let raw = api::message_for_api(email, "Graph")?;
        let encoded_len = raw.len().div_ceil(3) * 4;
        if encoded_len > REQUEST_LIMIT {
            return Err(Error::new(
                ErrorKind::Permanent,
                format!(
                    "the message is {} bytes, {encoded_len} in base64; Graph takes at most \
                     {REQUEST_LIMIT} bytes per request (about 3 MB of message): send large \
                     files as links, or this message over SMTP",
                    raw.len()
                ),
            ));
        }
        let mut body = String::with_capacity(encoded_len);
        base64::engine::general_purpose::STANDARD.encode_string(&raw, &mut body);
        let answer = self
            .api
            .post(&self.url, "text/plain", Bytes::from(body))
            .await?;
        let request_id = answer
            .header("request-id")
            .map(|id| format!(", request-id {}", api::printable(id)))
            .unwrap_or_default();
        if (200..300).contains(&answer.status) {
            return Ok(Delivery::new(
                email.recipients(),
                format!(
                    "Graph accepted it for delivery (HTTP {}{request_id})",
                    answer.status
                ),
            )
            .via("graph"));
        }
        Err(self.refusal(&answer, &request_id))
    }

    fn refusal(&self, answer: &Answer, request_id: &str) -> Error {
        let body: GraphError = serde_json::from_slice(&answer.body).unwrap_or_default();
        let code = api::printable(&body.error.code);
        let message = api::printable(&body.error.message);
        let detail = match (code.is_empty(), message.is_empty()) {
            (false, false) => format!("{code}: {message}{request_id}"),
            (false, true) => format!("{code}{request_id}"),
            (true, false) => format!("{message}{request_id}"),
            (true, true) => format!("no error details{request_id}"),
        };
        match answer.status {
            403 => Error::new(
                ErrorKind::Auth,
                format!(
                    "Graph refused to send as {} ({detail}): the access token lacks Mail.Send \
                     (delegated: the user's consent to Mail.Send; app-only: the Mail.Send \
                     application permission with admin consent), or an application access \
                     policy leaves this mailbox out",
                    self.user
                ),
            ),
            404 => Error::new(
                ErrorKind::Config,
                format!("Graph knows no mailbox `{}` ({detail})", self.user),
            ),
            _ => api::refusal("Graph", answer, &detail),
        }
    }
}

/// Graph's error body: `{"error": {"code", "message", "innerError": {...}}}`.
#[derive(Deserialize, Default)]
struct GraphError {
    #[serde(default)]
    error: GraphErrorBody,
}

#[derive(Deserialize, Default)]
struct GraphErrorBody {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

#[async_trait]
impl Transport for Graph {
    async fn send(&self, email: &Email) -> Result<Delivery> {
        self.deliver(email).await
    }

    fn name(&self) -> &str {
        "graph"
    }

    fn parallelism(&self) -> usize {
        default_max_concurrent()
    }
}
