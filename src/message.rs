//! Turning a rendered template into a MIME message.
//!
//! Structure, outermost first, each layer only when needed: `multipart/mixed` for
//! attachments, `multipart/alternative` for text + HTML, `multipart/related` for
//! inline `cid:` images beside the HTML.

use std::sync::Arc;

use lettre::address::Envelope;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::Message;

use crate::error::{Error, ErrorKind, Result};
use crate::render::Rendered;

/// A file sent with a message: attached, or inline for `cid:` references in the HTML.
#[derive(Clone)]
pub struct Attachment {
    filename: Option<String>,
    content_id: Option<String>,
    content_type: ContentType,
    body: Arc<[u8]>,
}

impl std::fmt::Debug for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attachment")
            .field("filename", &self.filename)
            .field("content_id", &self.content_id)
            .field("content_type", &self.content_type)
            .field("bytes", &self.body.len())
            .finish()
    }
}

impl Attachment {
    /// A file attached to the message, e.g. an invoice PDF.
    ///
    /// ```
    /// let pdf = missive::Attachment::new("invoice.pdf", "application/pdf", b"%PDF-1.7".to_vec())?;
    /// # Ok::<(), missive::Error>(())
    /// ```
    pub fn new(
        filename: impl Into<String>,
        content_type: &str,
        body: impl Into<Vec<u8>>,
    ) -> Result<Attachment> {
        Ok(Attachment {
            filename: Some(filename.into()),
            content_id: None,
            content_type: parse_content_type(content_type)?,
            body: Arc::from(body.into()),
        })
    }

    /// An image the HTML shows with `<img src="cid:CONTENT_ID">`.
    pub fn inline(
        content_id: impl Into<String>,
        content_type: &str,
        body: impl Into<Vec<u8>>,
    ) -> Result<Attachment> {
        let content_id = content_id.into();
        if content_id.is_empty() || content_id.contains(['<', '>', '\r', '\n', ' ']) {
            return Err(Error::new(
                ErrorKind::Address,
                format!("`{content_id}` is not a usable Content-ID"),
            ));
        }
        Ok(Attachment {
            filename: None,
            content_id: Some(content_id),
            content_type: parse_content_type(content_type)?,
            body: Arc::from(body.into()),
        })
    }

    fn part(&self) -> SinglePart {
        let attachment = match (&self.content_id, &self.filename) {
            (Some(cid), _) => lettre::message::Attachment::new_inline(cid.clone()),
            (None, Some(name)) => lettre::message::Attachment::new(name.clone()),
            (None, None) => lettre::message::Attachment::new("attachment".to_string()),
        };
        attachment.body(self.body.to_vec(), self.content_type.clone())
    }
}

fn parse_content_type(value: &str) -> Result<ContentType> {
    ContentType::parse(value).map_err(|_| {
        Error::new(
            ErrorKind::Address,
            format!("`{value}` is not a valid content type"),
        )
    })
}

/// A message ready for a transport.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub message_id: String,
    pub envelope: Envelope,
    pub raw: Vec<u8>,
    pub rendered: Rendered,
}

impl Outgoing {
    /// Envelope recipients, as plain addresses.
    pub fn recipients(&self) -> Vec<String> {
        self.envelope.to().iter().map(ToString::to_string).collect()
    }
}

/// Builds the MIME message for `rendered`.
pub(crate) fn build(
    rendered: Rendered,
    attachments: &[Attachment],
    default_from: Option<&Mailbox>,
) -> Result<Outgoing> {
    let from = rendered
        .from
        .clone()
        .or_else(|| default_from.cloned())
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Config,
                format!(
                    "`{}` has no sender: set `from` in the config or the template's front-matter",
                    rendered.template
                ),
            )
        })?;
    if rendered.to.is_empty() && rendered.cc.is_empty() && rendered.bcc.is_empty() {
        return Err(Error::new(
            ErrorKind::Address,
            format!(
                "`{}` has no recipients: set `to` in front-matter or pass one",
                rendered.template
            ),
        ));
    }
    let message_id = format!(
        "<{}@{}>",
        uuid::Uuid::new_v4().simple(),
        from.email.domain()
    );
    let mut builder = Message::builder()
        .from(from)
        .subject(rendered.subject.clone())
        .message_id(Some(message_id.clone()));
    if let Some(reply_to) = &rendered.reply_to {
        builder = builder.reply_to(reply_to.clone());
    }
    for mailbox in &rendered.to {
        builder = builder.to(mailbox.clone());
    }
    for mailbox in &rendered.cc {
        builder = builder.cc(mailbox.clone());
    }
    for mailbox in &rendered.bcc {
        builder = builder.bcc(mailbox.clone());
    }
    for (name, value) in &rendered.headers {
        let name = HeaderName::new_from_ascii(name.clone()).map_err(|_| {
            Error::new(
                ErrorKind::Template,
                format!("`{name}` is not a valid header name"),
            )
        })?;
        builder = builder.raw_header(HeaderValue::new(name, value.clone()));
    }
    let (inline, attached): (Vec<_>, Vec<_>) =
        attachments.iter().partition(|a| a.content_id.is_some());
    let html = SinglePart::html(crlf(&rendered.html));
    let html = if inline.is_empty() {
        Body::Single(html)
    } else {
        Body::Multi(
            inline
                .iter()
                .fold(MultiPart::related().singlepart(html), |m, a| {
                    m.singlepart(a.part())
                }),
        )
    };
    let body = match &rendered.text {
        Some(text) => Body::Multi(
            html.add_to(MultiPart::alternative().singlepart(SinglePart::plain(crlf(text)))),
        ),
        None => html,
    };
    let body = if attached.is_empty() {
        body
    } else {
        Body::Multi(
            attached
                .iter()
                .fold(body.add_to(MultiPart::mixed().build()), |m, a| {
                    m.singlepart(a.part())
                }),
        )
    };
    let message = match body {
        Body::Single(part) => builder.singlepart(part),
        Body::Multi(parts) => builder.multipart(parts),
    }
    .map_err(|e| {
        Error::new(
            ErrorKind::Address,
            format!("cannot build message for `{}`: {e}", rendered.template),
        )
    })?;
    Ok(Outgoing {
        message_id,
        envelope: message.envelope().clone(),
        raw: message.formatted(),
        rendered,
    })
}

/// `text` with CRLF line ends, as MIME wants them. lettre converts too, but by inserting
/// one `\r` at a time into the string, which moves the rest of it for every line.
fn crlf(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 16);
    for line in text.split_inclusive('\n') {
        match line.strip_suffix('\n') {
            Some(body) if !body.ends_with('\r') => {
                out.push_str(body);
                out.push_str("\r\n");
            }
            _ => out.push_str(line),
        }
    }
    out
}

enum Body {
    Single(SinglePart),
    Multi(MultiPart),
}

impl Body {
    fn add_to(self, parent: MultiPart) -> MultiPart {
        match self {
            Body::Single(part) => parent.singlepart(part),
            Body::Multi(parts) => parent.multipart(parts),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::crlf;

    #[test]
    fn line_ends_become_crlf_once() {
        assert_eq!(crlf("a\nb\r\nc\n"), "a\r\nb\r\nc\r\n");
        assert_eq!(crlf("é\n\n"), "é\r\n\r\n");
    }
}
