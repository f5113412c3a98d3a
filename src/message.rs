//! Turning a rendered template into a MIME message.
//!
//! Structure, outermost first, each layer only when needed: `multipart/mixed` for
//! attachments, `multipart/alternative` for text + HTML, `multipart/related` for
//! inline `cid:` images beside the HTML.

use std::sync::Arc;

use lettre::address::Envelope;
use lettre::message::header::{ContentTransferEncoding, ContentType, HeaderName, HeaderValue};
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
    let html = text_part(ContentType::TEXT_HTML, &rendered.html);
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
    let body =
        match &rendered.text {
            Some(text) => Body::Multi(html.add_to(
                MultiPart::alternative().singlepart(text_part(ContentType::TEXT_PLAIN, text)),
            )),
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

/// A UTF-8 text part: 7bit when it can be, quoted-printable otherwise.
///
/// lettre would choose the same, but its converter inserts CRLFs one `\r` at a time
/// and its quoted-printable encoder goes character by character; together they cost
/// more than rendering the template.
fn text_part(content_type: ContentType, text: &str) -> SinglePart {
    let bare_cr = text
        .split('\r')
        .skip(1)
        .any(|after| !after.starts_with('\n'));
    let seven_bit =
        text.is_ascii() && !text.contains('\0') && !bare_cr && text.lines().all(|l| l.len() <= 998);
    let body = if seven_bit {
        lettre::message::Body::dangerous_pre_encoded(
            crlf(text).into_bytes(),
            ContentTransferEncoding::SevenBit,
        )
    } else {
        lettre::message::Body::dangerous_pre_encoded(
            quoted_printable(text),
            ContentTransferEncoding::QuotedPrintable,
        )
    };
    SinglePart::builder().header(content_type).body(body)
}

/// `text` with CRLF line ends, as MIME wants them.
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

/// Quoted-printable (RFC 2045 §6.7): lines of at most 76 characters, line ends as CRLF.
fn quoted_printable(text: &str) -> Vec<u8> {
    const MAX: usize = 76;
    let mut out = Vec::with_capacity(text.len() + text.len() / 8);
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line).as_bytes();
        // White space at the end of a line would be eaten by transports: encode it.
        let keep = line.len() - usize::from(matches!(line.last(), Some(b' ' | b'\t')));
        let mut width = 0;
        let mut i = 0;
        while i < line.len() {
            // Copy a run of plain characters, leaving room for a soft break's `=`
            // unless the run reaches the end of the line.
            let run = line[i..keep]
                .iter()
                .position(|&b| !QP_LITERAL[usize::from(b)])
                .map_or(keep, |p| i + p);
            if run > i {
                let room = MAX - 1 - width;
                let end = if run == line.len() && run - i <= room + 1 {
                    run
                } else {
                    run.min(i + room)
                };
                out.extend_from_slice(&line[i..end]);
                width += end - i;
                i = end;
                if i < line.len() && width >= MAX - 1 {
                    out.extend_from_slice(b"=\r\n");
                    width = 0;
                }
                continue;
            }
            let limit = if i + 1 == line.len() { MAX } else { MAX - 1 };
            if width + 3 > limit {
                out.extend_from_slice(b"=\r\n");
                width = 0;
            }
            let b = line[i];
            out.extend_from_slice(&[b'=', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
            width += 3;
            i += 1;
        }
        out.extend_from_slice(b"\r\n");
    }
    // `split` yields one more (empty) line after a final `\n` than the text has.
    out.truncate(out.len() - 2);
    out
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Bytes quoted-printable writes as they are: printable ASCII but `=`, and space and
/// tab (except at the end of a line, which the encoder handles).
const QP_LITERAL: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 32;
    while b < 127 {
        table[b] = b != b'=' as usize;
        b += 1;
    }
    table[b'\t' as usize] = true;
    table
};

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
    use super::{crlf, quoted_printable};

    #[test]
    fn quoted_printable_round_trips_and_keeps_lines_short() {
        let long = "x".repeat(200);
        let mut samples = vec![
            "plain ascii".to_string(),
            "caf\u{e9} = 5\u{20ac} \u{2014} \u{1f600}\ntrailing space \nand tab\t\n".to_string(),
            long,
            "line\r\nbreaks\n\nend\n".to_string(),
            "=3D==\u{a0}\u{a0}".to_string(),
        ];
        // Every mix of plain, encoded and blank characters around the 76-column edge.
        let pieces = ["a", "=", "\u{e9}", " ", "\t", "\u{1f600}"];
        for len in 70..82 {
            for (i, piece) in pieces.iter().enumerate() {
                for tail in pieces {
                    let mut s = "b".repeat(len - i);
                    s.push_str(piece);
                    s.push_str(tail);
                    s.push_str(&"x=".repeat(i));
                    samples.push(s.clone());
                    s.push('\n');
                    s.push_str(tail);
                    samples.push(s);
                }
            }
        }
        for sample in &samples {
            let sample = sample.as_str();
            let encoded = quoted_printable(sample);
            let text = String::from_utf8(encoded.clone()).unwrap();
            for line in text.split("\r\n") {
                assert!(line.len() <= 76, "{line:?}");
                assert!(!line.ends_with(' ') && !line.ends_with('\t'), "{line:?}");
            }
            let decoded =
                ::quoted_printable::decode(&encoded, ::quoted_printable::ParseMode::Strict)
                    .unwrap();
            assert_eq!(
                String::from_utf8(decoded).unwrap(),
                crlf(sample),
                "{sample:?}"
            );
        }
    }

    #[test]
    fn line_ends_become_crlf_once() {
        assert_eq!(crlf("a\nb\r\nc\n"), "a\r\nb\r\nc\r\n");
        assert_eq!(crlf("é\n\n"), "é\r\n\r\n");
    }
}
