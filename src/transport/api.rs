//! What the HTTPS API transports (Gmail, Graph) share: the HTTP client, bearer tokens
//! from the token cache with one renewal on a 401, the outcome of an exchange in
//! missive's error kinds, and the message as these APIs need it.
//!
//! An API takes the recipients from the message's headers, not from an envelope. So a
//! `Bcc` recipient, which the built message does not name, is added in a `Bcc` header
//! that the provider removes before delivery, and an attempt for only some of the
//! recipients named in `To`/`Cc` is refused rather than sent to all of them again.

use std::borrow::Cow;
use std::collections::HashSet;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::Url;
use secrecy::ExposeSecret;

use crate::auth::{self, TokenCache};
use crate::error::{Error, ErrorKind, Result};
use crate::transport::{retry, Email};

/// A base URL from the config: https, or http toward this machine only (the fakes).
pub(crate) fn base_url(url: &str, what: &str) -> Result<Url> {
    let parsed = Url::parse(url).map_err(|e| {
        Error::new(
            ErrorKind::Config,
            format!("`{what}` `{url}` is not a URL: {e}"),
        )
    })?;
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if auth::is_loopback(parsed.host_str().unwrap_or_default()) => Ok(parsed),
        _ => Err(Error::new(
            ErrorKind::Config,
            format!("`{what}` `{url}` must use https (plain http is allowed only toward loopback)"),
        )),
    }
}

/// `base` with `segments` appended, each percent-encoded (the base may carry a path
/// prefix of its own).
pub(crate) fn join(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}

/// The answer to one request that was not a rejected token.
pub(crate) struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn retry_after(&self) -> Option<Duration> {
        let value = self.headers.get("retry-after")?.to_str().ok()?.trim();
        if let Ok(secs) = value.parse::<u64>() {
            return Some(Duration::from_secs(secs));
        }
        let at = httpdate::parse_http_date(value).ok()?;
        Some(at.duration_since(SystemTime::now()).unwrap_or_default())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// An HTTPS API endpoint with its own token cache.
pub(crate) struct Api {
    client: reqwest::Client,
    tokens: TokenCache,
    timeout: Duration,
    /// `Gmail`, `Graph`: for messages.
    pub label: &'static str,
}

impl Api {
    pub fn new(
        label: &'static str,
        tokens: TokenCache,
        ca_file: Option<&Path>,
        timeout: Duration,
    ) -> Result<Api> {
        let builder = reqwest::Client::builder()
            // A redirect would carry the bearer token to another host.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout.min(Duration::from_secs(30)))
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true);
        let builder = crate::auth::trust_ca_file(builder, ca_file)?;
        let client = builder.build().map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!("cannot set up the HTTP client: {e}"),
            )
        })?;
        Ok(Api {
            client,
            tokens,
            timeout,
            label,
        })
    }

    /// POSTs `body` with a bearer token. A 401 drops the token, renews it and posts
    /// once more; a second 401 is an [`ErrorKind::Auth`] error.
    pub async fn post(&self, url: &Url, content_type: &str, body: Bytes) -> Result<Answer> {
        // Token endpoint failures were retried by the token source already.
        let token = self.tokens.get().await.map_err(Error::retried)?;
        let answer = self
            .exchange(url, content_type, body.clone(), token.secret())
            .await?;
        if answer.status != 401 {
            return Ok(answer);
        }
        tracing::warn!(
            api = self.label,
            "the API refused the access token; renewing it"
        );
        self.tokens.reject(&token);
        let token = self.tokens.get().await.map_err(Error::retried)?;
        let answer = self
            .exchange(url, content_type, body, token.secret())
            .await?;
        if answer.status != 401 {
            return Ok(answer);
        }
        self.tokens.reject(&token);
        Err(Error::new(
            ErrorKind::Auth,
            format!(
                "{} refused a freshly renewed access token ({}): HTTP 401{}",
                self.label,
                self.tokens.describe(),
                www_authenticate_error(&answer)
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ),
        ))
    }

    /// One request. Whether the whole body was handed over decides what a lost answer
    /// means: before, nothing reached the API (transient); after, the API may have
    /// sent the message (delivery unknown, as for SMTP's lost reply to the final ".").
    async fn exchange(
        &self,
        url: &Url,
        content_type: &str,
        body: Bytes,
        token: &secrecy::SecretString,
    ) -> Result<Answer> {
        let mut bearer = HeaderValue::from_str(&format!("Bearer {}", token.expose_secret()))
            .map_err(|_| {
                Error::new(
                    ErrorKind::Auth,
                    "the access token is not usable in an HTTP header",
                )
            })?;
        bearer.set_sensitive(true);
        let sent = Arc::new(AtomicBool::new(false));
        let length = body.len();
        let request = self
            .client
            .post(url.clone())
            .header(AUTHORIZATION, bearer)
            .header(CONTENT_TYPE, content_type)
            .header(CONTENT_LENGTH, length)
            .body(reqwest::Body::wrap(Tracked {
                body,
                sent: sent.clone(),
            }))
            .build()
            .map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    format!("cannot build the request: {}", e.without_url()),
                )
            })?;
        let limit = match retry::deadline() {
            Some(deadline) => self
                .timeout
                .min(deadline.saturating_duration_since(Instant::now())),
            None => self.timeout,
        };
        let host = url.host_str().unwrap_or_default().to_string();
        let started = Instant::now();
        let lost = |detail: String| {
            if sent.load(Ordering::SeqCst) {
                Error::new(
                    ErrorKind::DeliveryUnknown,
                    format!(
                        "delivery unknown: {host} took the whole message ({length} bytes), then \
                         {detail}; it may have been delivered"
                    ),
                )
            } else {
                Error::new(
                    ErrorKind::Transient,
                    format!("cannot reach {} at {host}: {detail}", self.label),
                )
            }
        };
        let response = match tokio::time::timeout(limit, self.client.execute(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) if e.is_connect() => {
                return Err(Error::new(
                    ErrorKind::Transient,
                    format!("cannot reach {} at {host}: {}", self.label, describe(&e)),
                ))
            }
            Ok(Err(e)) => return Err(lost(format!("the connection failed: {}", describe(&e)))),
            Err(_) => {
                return Err(lost(format!(
                    "no answer came within {} s",
                    limit.as_secs_f64().ceil()
                )))
            }
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        // Once the status is in, the outcome is known: a body lost or slow after it
        // only costs the details.
        let rest = limit
            .saturating_sub(started.elapsed())
            .max(Duration::from_secs(1));
        let body = match tokio::time::timeout(rest, response.bytes()).await {
            Ok(Ok(body)) => body,
            _ => Bytes::new(),
        };
        Ok(Answer {
            status,
            headers,
            body,
        })
    }
}

/// An API's refusal in missive's error kinds, for the statuses every API means the
/// same by; `detail` is the API's error code and message, `403` is the caller's.
pub(crate) fn refusal(label: &str, answer: &Answer, detail: &str) -> Error {
    let status = answer.status;
    let said = format!("{label} answered HTTP {status} ({detail})");
    match status {
        429 | 503 => {
            let error = Error::new(ErrorKind::Transient, format!("{said}; try again later"));
            match answer.retry_after() {
                Some(wait) => error
                    .note(format!("it asked for {} s", wait.as_secs()))
                    .with_retry_after(wait),
                None => error,
            }
        }
        // A gateway that gave up waiting: the service behind it may have sent it.
        504 => Error::new(
            ErrorKind::DeliveryUnknown,
            format!("delivery unknown: {said} after taking the whole message; it may have been delivered"),
        ),
        500..=599 => Error::new(ErrorKind::Transient, said),
        413 => Error::new(ErrorKind::Permanent, format!("{said}: the message is too large")),
        _ => Error::new(
            ErrorKind::Permanent,
            format!("{label} refused the message: HTTP {status} ({detail})"),
        ),
    }
}

/// A reqwest error with its causes, without the URL.
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text.replace(
        &format!(" for url ({})", e.url().map_or("", |u| u.as_str())),
        "",
    )
}

/// The `error="..."` of a `WWW-Authenticate: Bearer` challenge (RFC 6750 3).
pub(crate) fn www_authenticate_error(answer: &Answer) -> Option<String> {
    let header = answer.header("www-authenticate")?;
    let start = header.find("error=\"")? + "error=\"".len();
    let end = header[start..].find('"')?;
    Some(printable(&header[start..start + end]))
}

/// Provider text as it may go in an error: one line, control characters out, short.
pub(crate) fn printable(text: &str) -> String {
    const MAX: usize = 300;
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > MAX {
        let mut cut = MAX;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// The request body, which notes when its last byte was handed to the connection.
struct Tracked {
    body: Bytes,
    sent: Arc<AtomicBool>,
}

/// Chunks small enough that a large message is not seen as sent while most of it
/// still waits for the socket.
const CHUNK: usize = 64 * 1024;

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<http_body::Frame<Bytes>, Self::Error>>> {
        if self.body.is_empty() {
            self.sent.store(true, Ordering::SeqCst);
            return Poll::Ready(None);
        }
        let take = self.body.len().min(CHUNK);
        let chunk = self.body.split_to(take);
        if self.body.is_empty() {
            self.sent.store(true, Ordering::SeqCst);
        }
        Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.body.len() as u64)
    }
}

/// The message as an API that reads its recipients from the headers must get it:
/// `raw` itself, or `raw` with a `Bcc` header naming the envelope recipients that the
/// headers do not (the built message never names its Bcc recipients).
pub(crate) fn message_for_api<'a>(email: &'a Email, label: &str) -> Result<Cow<'a, [u8]>> {
    let raw = email.raw();
    let named = header_recipients(raw);
    let envelope: Vec<String> = email
        .envelope()
        .to()
        .iter()
        .map(|a| a.to_string().to_ascii_lowercase())
        .collect();
    let wanted: HashSet<&str> = envelope.iter().map(String::as_str).collect();
    let absent = named
        .iter()
        .filter(|a| !wanted.contains(a.as_str()))
        .count();
    if absent > 0 {
        return Err(Error::new(
            ErrorKind::Permanent,
            format!(
                "{label} sends to every To/Cc address of a message, and {absent} of this \
                 message's are not among the recipients of this attempt (an earlier attempt \
                 reached them): sending it again would give them a second copy"
            ),
        ));
    }
    let hidden: Vec<&str> = envelope
        .iter()
        .map(String::as_str)
        .filter(|a| !named.contains(*a))
        .collect();
    if hidden.is_empty() {
        return Ok(Cow::Borrowed(raw));
    }
    let mut out =
        Vec::with_capacity(raw.len() + 8 + hidden.iter().map(|a| a.len() + 2).sum::<usize>());
    out.extend_from_slice(b"Bcc: ");
    out.extend_from_slice(hidden.join(",\r\n ").as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(raw);
    Ok(Cow::Owned(out))
}

/// The addresses (lower case) of the `To`, `Cc` and `Bcc` headers of `raw`.
fn header_recipients(raw: &[u8]) -> HashSet<String> {
    let end = memchr::memmem::find(raw, b"\r\n\r\n").map_or(raw.len(), |i| i + 2);
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut fields: Vec<String> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = fields.last_mut() {
                last.push_str(line);
            }
        } else {
            fields.push(line.to_string());
        }
    }
    let mut out = HashSet::new();
    for field in fields {
        let Some((name, value)) = field.split_once(':') else {
            continue;
        };
        if ["to", "cc", "bcc"].contains(&name.trim().to_ascii_lowercase().as_str()) {
            out.extend(addresses(value));
        }
    }
    out
}

/// The addr-specs of an address list: `<...>` where there is one, else the bare
/// mailbox; quoted display names are skipped whole, so a comma or `@` in one does not
/// count.
fn addresses(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut segment = String::new();
    let mut angle: Option<String> = None;
    let mut had_angle = false;
    let mut quoted = false;
    let mut escaped = false;
    let bare = |segment: &str, had_angle: bool| {
        let bare = segment.trim();
        (!had_angle && bare.contains('@') && !bare.contains([' ', ':', ';']))
            .then(|| bare.to_ascii_lowercase())
    };
    for c in value.chars() {
        if quoted {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => quoted = false,
                _ => {}
            }
            continue;
        }
        if let Some(addr) = angle.as_mut() {
            if c == '>' {
                if addr.contains('@') {
                    out.push(addr.trim().to_ascii_lowercase());
                }
                angle = None;
            } else {
                addr.push(c);
            }
            continue;
        }
        match c {
            '"' => quoted = true,
            '<' => {
                angle = Some(String::new());
                had_angle = true;
            }
            ',' => {
                out.extend(bare(&segment, had_angle));
                segment.clear();
                had_angle = false;
            }
            _ => segment.push(c),
        }
    }
    out.extend(bare(&segment, had_angle));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_lists_are_read_past_display_names() {
        assert_eq!(
            addresses(r#" "Lovelace, Ada (ada@evil.test)" <Ada@Example.test>, bob@x.test,"#),
            ["ada@example.test", "bob@x.test"]
        );
        assert_eq!(addresses(" undisclosed-recipients:;"), Vec::<String>::new());
        assert_eq!(addresses(" =?utf-8?q?Z=C3=BC?= <z@x.test>"), ["z@x.test"]);
    }

    fn email(to: &[&str], raw: &str) -> Email {
        Email::new(
            "<1@x.test>",
            Some("app@x.test"),
            to,
            raw.as_bytes().to_vec(),
        )
        .unwrap()
    }

    #[test]
    fn bcc_recipients_are_named_for_the_api_and_partial_resends_refused() {
        let raw = "From: app@x.test\r\nTo: Ada <ada@x.test>,\r\n bob@x.test\r\nSubject: hi\r\n\r\nTo: not@a.header\r\n";
        let same = email(&["ada@x.test", "bob@x.test"], raw);
        assert!(matches!(
            message_for_api(&same, "Gmail").unwrap(),
            Cow::Borrowed(_)
        ));
        let bcc = email(
            &["ada@x.test", "bob@x.test", "eve@x.test", "not@a.header"],
            raw,
        );
        let sent = message_for_api(&bcc, "Gmail").unwrap();
        let expected = format!("Bcc: eve@x.test,\r\n not@a.header\r\n{raw}");
        assert_eq!(std::str::from_utf8(&sent).unwrap(), expected);
        let partial = email(&["bob@x.test"], raw);
        let err = message_for_api(&partial, "Gmail").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Permanent);
        assert!(err.message().contains("1 of"), "{err}");
    }

    fn answer(retry_after: &str) -> Answer {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_str(retry_after).unwrap());
        Answer {
            status: 429,
            headers,
            body: Bytes::new(),
        }
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        assert_eq!(answer("7").retry_after(), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        let wait = answer(&later).retry_after().unwrap();
        assert!(
            wait > Duration::from_secs(100) && wait <= Duration::from_secs(120),
            "{wait:?}"
        );
        let past = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(60));
        assert_eq!(answer(&past).retry_after(), Some(Duration::ZERO));
        assert_eq!(answer("soon").retry_after(), None);
        let error = refusal("Graph", &answer("7"), "TooManyRequests");
        assert_eq!(error.kind(), ErrorKind::Transient);
        assert_eq!(error.retry_after(), Some(Duration::from_secs(7)));
    }

    #[test]
    fn base_urls_need_https_off_this_machine() {
        assert!(base_url("https://gmail.googleapis.com", "base_url").is_ok());
        assert!(base_url("http://127.0.0.1:8080", "base_url").is_ok());
        let err = base_url("http://gmail.googleapis.com", "base_url").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.message().contains("https"), "{err}");
        let prefixed = base_url("https://proxy.test/graph/", "base_url").unwrap();
        assert_eq!(
            join(&prefixed, &["v1.0", "users", "a b@x.test", "sendMail"]).as_str(),
            "https://proxy.test/graph/v1.0/users/a%20b@x.test/sendMail"
        );
    }
}
