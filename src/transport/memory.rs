//! The in-memory transport behind [`crate::Mailer::for_tests`].

use std::sync::{Arc, Mutex, MutexGuard};

use crate::render::Rendered;
use crate::transport::{async_trait, Delivery, Email, Transport};

/// Messages a test mailer "sent", for assertions. Clones share the same list.
///
/// ```
/// let inbox = missive::Inbox::default();
/// assert!(inbox.is_empty());
/// ```
#[derive(Debug, Clone, Default)]
pub struct Inbox {
    messages: Arc<Mutex<Vec<SentMessage>>>,
}

/// One message as the in-memory transport received it.
#[derive(Debug, Clone)]
pub struct SentMessage {
    email: Email,
    recipients: Vec<String>,
    /// Read back from the MIME when the mailer's render is not at hand (mail
    /// delivered from the queue).
    parsed: Option<Arc<Parsed>>,
}

/// Subject and bodies decoded from a message missive built.
#[derive(Debug)]
struct Parsed {
    subject: String,
    html: String,
    text: Option<String>,
}

impl SentMessage {
    /// The Message-ID header, with angle brackets.
    pub fn message_id(&self) -> &str {
        self.email.message_id()
    }
    /// Envelope recipients: To, Cc and Bcc.
    pub fn recipients(&self) -> &[String] {
        &self.recipients
    }
    /// Subject, addresses, bodies and tags as rendered, when the message came straight
    /// from the mailer (not for mail delivered from the queue, which keeps only the
    /// MIME).
    pub fn rendered(&self) -> Option<&Rendered> {
        self.email.rendered.as_deref()
    }
    /// The template name.
    pub fn template(&self) -> &str {
        self.email.template()
    }
    /// The subject line.
    pub fn subject(&self) -> &str {
        match (self.rendered(), &self.parsed) {
            (Some(rendered), _) => rendered.subject(),
            (None, Some(parsed)) => &parsed.subject,
            (None, None) => "",
        }
    }
    /// The final HTML.
    pub fn html(&self) -> &str {
        match (self.rendered(), &self.parsed) {
            (Some(rendered), _) => rendered.html(),
            (None, Some(parsed)) => &parsed.html,
            (None, None) => "",
        }
    }
    /// The text part.
    pub fn text(&self) -> Option<&str> {
        match (self.rendered(), &self.parsed) {
            (Some(rendered), _) => rendered.text(),
            (None, Some(parsed)) => parsed.text.as_deref(),
            (None, None) => None,
        }
    }
    /// The whole message as it would go on the wire.
    pub fn raw(&self) -> &[u8] {
        self.email.raw()
    }
}

impl Inbox {
    fn lock(&self) -> MutexGuard<'_, Vec<SentMessage>> {
        // A panic in another test thread must not hide what was sent.
        self.messages.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, email: &Email) -> Delivery {
        let recipients = email.recipients();
        let parsed = match email.rendered {
            Some(_) => None,
            None => Some(Arc::new(parse(email.raw()))),
        };
        self.lock().push(SentMessage {
            email: email.clone(),
            recipients: recipients.clone(),
            parsed,
        });
        Delivery::new(recipients, "stored in memory").via("memory")
    }

    /// Every message so far, oldest first.
    pub fn messages(&self) -> Vec<SentMessage> {
        self.lock().clone()
    }
    /// How many messages were sent.
    pub fn len(&self) -> usize {
        self.lock().len()
    }
    /// Whether nothing was sent.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
    /// The most recent message.
    pub fn last(&self) -> Option<SentMessage> {
        self.lock().last().cloned()
    }
    /// Messages whose envelope includes `address`.
    pub fn sent_to(&self, address: &str) -> Vec<SentMessage> {
        self.lock()
            .iter()
            .filter(|m| m.recipients.iter().any(|r| r.eq_ignore_ascii_case(address)))
            .cloned()
            .collect()
    }
    /// Forgets every message.
    pub fn clear(&self) {
        self.lock().clear();
    }
}

#[async_trait]
impl Transport for Inbox {
    async fn send(&self, email: &Email) -> crate::Result<Delivery> {
        Ok(self.push(email))
    }

    fn name(&self) -> &str {
        "memory"
    }
}

/// Reads subject and bodies back from a message as `message::build` writes it: folded
/// headers, RFC 2047 encoded words in the subject, 7bit or quoted-printable parts.
fn parse(raw: &[u8]) -> Parsed {
    let text = String::from_utf8_lossy(raw);
    let (head, _) = split_head(&text);
    let subject = header(head, "subject")
        .map(decode_words)
        .unwrap_or_default();
    let mut parsed = Parsed {
        subject,
        html: String::new(),
        text: None,
    };
    collect_parts(&text, &mut parsed);
    parsed
}

fn split_head(part: &str) -> (&str, &str) {
    part.split_once("\r\n\r\n").unwrap_or((part, ""))
}

/// A header's value, unfolded.
fn header(head: &str, name: &str) -> Option<String> {
    let mut value: Option<String> = None;
    for line in head.split("\r\n") {
        if let Some(v) = value.as_mut() {
            if line.starts_with([' ', '\t']) {
                v.push_str(line);
                continue;
            }
            break;
        }
        if let Some((n, v)) = line.split_once(':') {
            if n.eq_ignore_ascii_case(name) {
                value = Some(v.trim_start().to_string());
            }
        }
    }
    value
}

fn decode_words(value: String) -> String {
    use base64::Engine as _;
    let mut out = String::new();
    for word in value.split_whitespace() {
        let decoded = word
            .strip_prefix("=?")
            .and_then(|w| w.strip_suffix("?="))
            .and_then(|w| {
                let mut pieces = w.splitn(3, '?');
                let (_charset, encoding, data) = (pieces.next()?, pieces.next()?, pieces.next()?);
                let bytes = if encoding.eq_ignore_ascii_case("b") {
                    base64::engine::general_purpose::STANDARD
                        .decode(data)
                        .ok()?
                } else {
                    quoted_printable(&data.replace('_', " "))
                };
                String::from_utf8(bytes).ok()
            });
        match decoded {
            Some(text) => out.push_str(&text),
            None => {
                if !out.is_empty() {
                    out.push(' ');
                }
                out.push_str(word);
            }
        }
    }
    out
}

fn collect_parts(part: &str, parsed: &mut Parsed) {
    let (head, body) = split_head(part);
    let content_type = header(head, "content-type").unwrap_or_default();
    let lower = content_type.to_ascii_lowercase();
    if lower.starts_with("multipart/") {
        let Some(boundary) = content_type
            .split(';')
            .filter_map(|p| p.trim().strip_prefix("boundary="))
            .next()
            .map(|b| b.trim_matches('"').to_string())
        else {
            return;
        };
        let delimiter = format!("--{boundary}");
        for child in body.split(delimiter.as_str()).skip(1) {
            if child.starts_with("--") {
                break;
            }
            collect_parts(child.trim_start_matches("\r\n"), parsed);
        }
        return;
    }
    let encoding = header(head, "content-transfer-encoding").unwrap_or_default();
    let body = body.strip_suffix("\r\n").unwrap_or(body);
    let decoded = if encoding.eq_ignore_ascii_case("quoted-printable") {
        String::from_utf8_lossy(&quoted_printable(body)).into_owned()
    } else {
        body.to_string()
    };
    let decoded = decoded.replace("\r\n", "\n");
    if lower.starts_with("text/html") && parsed.html.is_empty() {
        parsed.html = decoded;
    } else if lower.starts_with("text/plain") && parsed.text.is_none() {
        parsed.text = Some(decoded);
    }
}

fn quoted_printable(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'=' if bytes.get(i + 1..i + 3) == Some(b"\r\n") => i += 3,
            b'=' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 3;
                    }
                    None => {
                        out.push(b'=');
                        i += 1;
                    }
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}
