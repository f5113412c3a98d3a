//! Delivery through the Gmail API (`users.messages.send`), with the `gmail.send` scope
//! only: the built MIME as `raw` (base64url in JSON) while the request stays small, the
//! media upload endpoint (`message/rfc822`, the bytes as they are) past that.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use reqwest::Url;
use serde::Deserialize;

use crate::auth::{self, OAuthConfig, Provider, TokenCache};
use crate::error::{Error, ErrorKind, Result};
use crate::transport::api::{self, Answer, Api};
use crate::transport::limit::Rate;
use crate::transport::{async_trait, Delivery, Email, RetryConfig, Transport};

/// The one scope the transport needs: send mail, nothing else (no reading, no
/// settings), unlike SMTP's `https://mail.google.com/`.
pub(crate) const GMAIL_SEND_SCOPE: &str = "https://www.googleapis.com/auth/gmail.send";
const DEFAULT_BASE_URL: &str = "https://gmail.googleapis.com";
/// Google's guidance for simple requests is 5 MB; past it the upload endpoint is used.
const SIMPLE_REQUEST_LIMIT: usize = 5 * 1024 * 1024;
/// The largest message the upload endpoint takes (35 MB).
const UPLOAD_LIMIT: usize = 36_700_160;

/// The `transport: {type: gmail}` section: the Gmail API with OAuth2 from a user's
/// refresh token (`missive auth google`) or a Workspace service account acting as
/// `user` (domain-wide delegation).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GmailConfig {
    /// The sending mailbox's address; `me` (the signed-in user) by default. A service
    /// account needs it: the user it acts as.
    #[serde(default)]
    pub user: Option<String>,
    /// Where access tokens come from: provider `google` or `google-service-account`.
    /// The scope is `gmail.send` unless `scopes` says otherwise.
    pub oauth: OAuthConfig,
    /// The API's address, `https://gmail.googleapis.com` by default (https only, except
    /// toward loopback).
    #[serde(default)]
    pub base_url: Option<String>,
    /// An extra PEM trust anchor for the API and the token endpoint.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Seconds to wait for an answer once the message is sent.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// At most this many messages per period (`30/min`); none by default.
    #[serde(default)]
    pub rate: Option<Rate>,
    /// At most this many sends at once.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: usize,
    /// Retries of transient failures, for direct sends.
    #[serde(default)]
    pub retry: RetryConfig,
}

pub(crate) fn default_timeout() -> u64 {
    120
}
pub(crate) fn default_max_concurrent() -> usize {
    4
}

impl GmailConfig {
    /// The token settings with the `gmail.send` scope filled in where no scope is given;
    /// `missive auth google` asks for the same.
    pub fn token_settings(&self) -> Result<OAuthConfig> {
        if !matches!(
            self.oauth.provider,
            Provider::Google | Provider::GoogleServiceAccount | Provider::Generic
        ) {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "the gmail transport signs in with provider `google` or \
                     `google-service-account`, not `{}`",
                    self.oauth.provider.name()
                ),
            ));
        }
        let mut oauth = self.oauth.clone();
        oauth
            .scopes
            .get_or_insert_with(|| vec![GMAIL_SEND_SCOPE.to_string()]);
        Ok(oauth)
    }
}

/// The Gmail API transport.
pub(crate) struct Gmail {
    api: Api,
    user: String,
    send_url: Url,
    upload_url: Url,
}

impl std::fmt::Debug for Gmail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gmail")
            .field("user", &self.user)
            .field("url", &self.send_url.as_str())
            .finish_non_exhaustive()
    }
}

impl Gmail {
    /// Checks the settings; reads no credential and connects to nothing yet.
    pub fn new(config: &GmailConfig) -> Result<Gmail> {
        let base = api::base_url(
            config.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL),
            "base_url",
        )?;
        let oauth = config.token_settings()?;
        let user = config.user.clone().unwrap_or_else(|| "me".to_string());
        let sub = config.user.as_deref().filter(|u| *u != "me");
        let source = auth::build_source(&oauth, sub, config.ca_file.as_deref())?;
        let tokens = TokenCache::new(source, Duration::from_secs(oauth.renew_before_secs));
        let path = |prefix: &[&str]| {
            let mut segments = prefix.to_vec();
            segments.extend(["gmail", "v1", "users", &user, "messages", "send"]);
            api::join(&base, &segments)
        };
        let send_url = path(&[]);
        let mut upload_url = path(&["upload"]);
        upload_url.set_query(Some("uploadType=media"));
        Ok(Gmail {
            api: Api::new(
                "Gmail",
                tokens,
                config.ca_file.as_deref(),
                Duration::from_secs(config.timeout_secs.max(1)),
            )?,
            user,
            send_url,
            upload_url,
        })
    }

    async fn deliver(&self, email: &Email) -> Result<Delivery> {
        let raw = api::message_for_api(email, "Gmail")?;
        if raw.len() > UPLOAD_LIMIT {
            return Err(Error::new(
                ErrorKind::Permanent,
                format!(
                    "the message is {} bytes; the Gmail API takes at most {UPLOAD_LIMIT} bytes \
                     (35 MB): send large files as links",
                    raw.len()
                ),
            ));
        }
        let encoded_len = 10 + raw.len().div_ceil(3) * 4;
        let answer = if encoded_len <= SIMPLE_REQUEST_LIMIT {
            let mut body = String::with_capacity(encoded_len);
            body.push_str("{\"raw\":\"");
            base64::engine::general_purpose::URL_SAFE.encode_string(&raw, &mut body);
            body.push_str("\"}");
            self.api
                .post(&self.send_url, "application/json", Bytes::from(body))
                .await?
        } else {
            self.api
                .post(
                    &self.upload_url,
                    "message/rfc822",
                    Bytes::from(raw.into_owned()),
                )
                .await?
        };
        if (200..300).contains(&answer.status) {
            let id = serde_json::from_slice::<Sent>(&answer.body)
                .map(|s| api::printable(&s.id))
                .unwrap_or_default();
            return Ok(Delivery::new(
                email.recipients(),
                format!("Gmail accepted it as message {id}"),
            )
            .via("gmail"));
        }
        Err(self.refusal(&answer))
    }

    fn refusal(&self, answer: &Answer) -> Error {
        let body: GoogleError = serde_json::from_slice(&answer.body).unwrap_or_default();
        let status = body.error.status.unwrap_or_default();
        let reasons: Vec<String> = body
            .error
            .errors
            .iter()
            .map(|e| e.reason.clone())
            .chain(body.error.details.iter().map(|d| d.reason.clone()))
            .filter(|r| !r.is_empty())
            .collect();
        let reason = reasons.first().cloned().unwrap_or(status);
        let message = api::printable(&body.error.message.unwrap_or_default());
        let detail = match (reason.is_empty(), message.is_empty()) {
            (false, false) => format!("{reason}: {message}"),
            (false, true) => reason.clone(),
            (true, false) => message,
            (true, true) => "no error details".to_string(),
        };
        let has = |r: &str| reasons.iter().any(|x| x == r);
        match answer.status {
            403 if has("insufficientPermissions")
                || has("ACCESS_TOKEN_SCOPE_INSUFFICIENT")
                || api::www_authenticate_error(answer).as_deref() == Some("insufficient_scope") =>
            {
                Error::new(
                    ErrorKind::Auth,
                    format!(
                        "Gmail refused the access token's scopes ({detail}): it lacks \
                         {GMAIL_SEND_SCOPE}; sign in again with `missive auth google` (it asks \
                         for that scope when the transport is gmail), or for a service account \
                         add the scope to its domain-wide delegation"
                    ),
                )
            }
            403 if has("rateLimitExceeded")
                || has("userRateLimitExceeded")
                || has("dailyLimitExceeded")
                || has("quotaExceeded") =>
            {
                let error = Error::new(
                    ErrorKind::Transient,
                    format!("Gmail's sending limit was reached ({detail}); try again later"),
                );
                match answer.retry_after() {
                    Some(wait) => error.with_retry_after(wait),
                    None => error,
                }
            }
            403 => Error::new(
                ErrorKind::Auth,
                format!("Gmail refused to send as {} ({detail})", self.user),
            ),
            404 => Error::new(
                ErrorKind::Config,
                format!("Gmail knows no mailbox `{}` ({detail})", self.user),
            ),
            _ => api::refusal("Gmail", answer, &detail),
        }
    }
}

#[derive(Deserialize)]
struct Sent {
    id: String,
}

/// Google's error body: `{"error": {"code", "message", "status", "errors": [{"reason"}],
/// "details": [{"reason"}]}}`.
#[derive(Deserialize, Default)]
struct GoogleError {
    #[serde(default)]
    error: GoogleErrorBody,
}

#[derive(Deserialize, Default)]
struct GoogleErrorBody {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    errors: Vec<Reason>,
    #[serde(default)]
    details: Vec<Reason>,
}

#[derive(Deserialize, Default)]
struct Reason {
    #[serde(default)]
    reason: String,
}

#[async_trait]
impl Transport for Gmail {
    async fn send(&self, email: &Email) -> Result<Delivery> {
        self.deliver(email).await
    }

    fn name(&self) -> &str {
        "gmail"
    }

    fn parallelism(&self) -> usize {
        default_max_concurrent()
    }
}
