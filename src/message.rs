//! Turning a rendered template into a MIME message.
//!
//! Structure, outermost first, each layer only when needed: `multipart/mixed` for
//! attachments, `multipart/alternative` for text + HTML, `multipart/related` for
//! inline `cid:` images beside the HTML.

use std::sync::Arc;

use lettre::message::header::{ContentTransferEncoding, ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::Message;

use crate::error::{Error, ErrorKind, Result};
use crate::html::{bytes_equal, find_words, HIGHS, ONES};
use crate::render::Rendered;
use crate::transport::Email;

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

/// How the Message-ID of a message is chosen.
#[derive(Debug, Clone, Default)]
pub(crate) enum MessageId {
    /// A random one on the sender's domain.
    #[default]
    Random,
    /// Exactly this one, validated (`<left@right>` or `left@right`).
    Given(String),
    /// Derived from an idempotency key: the same key always gives the same ID.
    FromKey(String),
}

impl MessageId {
    /// The header value, with angle brackets, on `domain` unless given whole.
    pub(crate) fn resolve(&self, domain: &str) -> Result<String> {
        match self {
            MessageId::Random => Ok(format!("<{}@{domain}>", uuid::Uuid::new_v4().simple())),
            MessageId::Given(id) => validate_message_id(id),
            MessageId::FromKey(key) => {
                // A name-based UUID: stable across processes and versions, unlike
                // std's hashers, and it reveals nothing of the key.
                let id = uuid::Uuid::new_v5(&MISSIVE_NAMESPACE, key.as_bytes());
                Ok(format!("<{}@{domain}>", id.simple()))
            }
        }
    }
}

/// The UUID namespace of Message-IDs derived from idempotency keys.
const MISSIVE_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6d69_7373_6976_6540_8000_0000_0000_0001);

/// `id` as a Message-ID header value: RFC 5322's `"<" id-left "@" id-right ">"`, in
/// dot-atom form on both sides (no quoted strings, no domain literals).
fn validate_message_id(id: &str) -> Result<String> {
    let inner = id
        .strip_prefix('<')
        .and_then(|i| i.strip_suffix('>'))
        .unwrap_or(id);
    let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c);
    let dot_atom =
        |s: &str| !s.is_empty() && s.split('.').all(|a| !a.is_empty() && a.chars().all(atext));
    match inner.split_once('@') {
        Some((left, right)) if dot_atom(left) && dot_atom(right) && inner.len() <= 250 => {
            Ok(format!("<{inner}>"))
        }
        _ => Err(Error::new(
            ErrorKind::Address,
            format!(
                "`{id}` is not a Message-ID: it must look like `<unique-part@your.domain>` \
                 (letters, digits and !#$%&'*+-/=?^_`{{|}}~ in dot-separated words)"
            ),
        )),
    }
}

/// Builds the MIME message for `rendered`.
pub(crate) fn build(
    rendered: Rendered,
    attachments: &[Attachment],
    default_from: Option<&Mailbox>,
    message_id: &MessageId,
) -> Result<Email> {
    let from = rendered
        .header
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
    if rendered.header.to.is_empty()
        && rendered.header.cc.is_empty()
        && rendered.header.bcc.is_empty()
    {
        return Err(Error::new(
            ErrorKind::Address,
            format!(
                "`{}` has no recipients: set `to` in front-matter or pass one",
                rendered.template
            ),
        ));
    }
    let message_id = message_id.resolve(from.email.domain())?;
    // The envelope from the mailboxes at hand: left to lettre, it is parsed back out of
    // the header fields just written (a twentieth of building the message). A raw
    // header that could change it leaves it to lettre.
    let envelope_headers = ["sender", "from", "to", "cc", "bcc"];
    let envelope = if rendered.header.headers.iter().any(|(name, _)| {
        envelope_headers
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h))
    }) {
        None
    } else {
        let recipients = rendered
            .header
            .to
            .iter()
            .chain(&rendered.header.cc)
            .chain(&rendered.header.bcc)
            .map(|mailbox| mailbox.email.clone())
            .collect();
        Some(
            lettre::address::Envelope::new(Some(from.email.clone()), recipients).map_err(|e| {
                Error::new(
                    ErrorKind::Address,
                    format!("cannot build message for `{}`: {e}", rendered.template),
                )
            })?,
        )
    };
    let mut builder = Message::builder()
        .from(from)
        .subject(rendered.header.subject.clone())
        .message_id(Some(message_id.clone()));
    if let Some(envelope) = envelope {
        builder = builder.envelope(envelope);
    }
    if let Some(reply_to) = &rendered.header.reply_to {
        builder = builder.reply_to(reply_to.clone());
    }
    for mailbox in &rendered.header.to {
        builder = builder.to(mailbox.clone());
    }
    for mailbox in &rendered.header.cc {
        builder = builder.cc(mailbox.clone());
    }
    for mailbox in &rendered.header.bcc {
        builder = builder.bcc(mailbox.clone());
    }
    for (name, value) in &rendered.header.headers {
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
    let mut email = Email::from_parts(
        message_id,
        message.envelope().clone(),
        // Vec into Bytes takes the buffer over: no copy of the message.
        message.formatted().into(),
    )
    .with_template(rendered.template.clone(), rendered.tags.clone());
    email.rendered = Some(Arc::new(rendered));
    Ok(email)
}

/// A UTF-8 text part: 7bit when it can be, quoted-printable otherwise.
///
/// lettre would choose the same, but its converter inserts CRLFs one `\r` at a time
/// and its quoted-printable encoder goes character by character; together they cost
/// more than rendering the template.
fn text_part(content_type: ContentType, text: &str) -> SinglePart {
    let body = if is_seven_bit(text.as_bytes()) {
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

/// Whether `text` may go as 7bit (RFC 2045 2.7): ASCII without NUL, CR only before LF,
/// and no line over 998 characters.
fn is_seven_bit(text: &[u8]) -> bool {
    if !text.is_ascii() || memchr::memchr(0, text).is_some() {
        return false;
    }
    let bare_cr = memchr::memchr_iter(b'\r', text).any(|at| text.get(at + 1) != Some(&b'\n'));
    if bare_cr {
        return false;
    }
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', text).chain(std::iter::once(text.len())) {
        let line = &text[start..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > 998 {
            return false;
        }
        start = end + 1;
    }
    true
}

/// `text` with CRLF line ends, as MIME wants them.
fn crlf(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len() + text.len() / 16);
    let mut start = 0;
    for at in memchr::memchr_iter(b'\n', bytes) {
        // Both slices end at ASCII bytes, so they are whole characters.
        if at == 0 || bytes[at - 1] != b'\r' {
            out.push_str(&text[start..at]);
            out.push_str("\r\n");
            start = at + 1;
        }
    }
    out.push_str(&text[start..]);
    out
}

/// Quoted-printable (RFC 2045 §6.7): lines of at most 76 characters, line ends as CRLF.
///
/// One pass over the bytes: runs of characters that go as they are are copied whole,
/// so the cost is close to a copy for text that is mostly ASCII.
fn quoted_printable(text: &str) -> Vec<u8> {
    const MAX: usize = 76;
    let bytes = text.as_bytes();
    let n = bytes.len();
    let mut out = Vec::with_capacity(n + n / 4);
    // Whether position `at` starts a line end (LF or CRLF) or is the end of the text.
    let line_end_at = |at: usize| match bytes.get(at) {
        None | Some(b'\n') => true,
        Some(b'\r') => bytes.get(at + 1) == Some(&b'\n'),
        Some(_) => false,
    };
    let mut width = 0;
    let mut i = 0;
    while i < n {
        let b = bytes[i];
        if b == b'\n' || (b == b'\r' && bytes.get(i + 1) == Some(&b'\n')) {
            out.extend_from_slice(b"\r\n");
            width = 0;
            i += if b == b'\r' { 2 } else { 1 };
            continue;
        }
        let mut end = i;
        if QP_LITERAL[usize::from(b)] {
            end = i + literal_run(&bytes[i..]);
            // White space at the end of a line would be eaten by transports: it is
            // left out of the run and encoded below.
            if line_end_at(end) && matches!(bytes[end - 1], b' ' | b'\t') {
                end -= 1;
            }
        }
        if end > i {
            let run_ends_line = line_end_at(end);
            while i < end {
                // Room before the soft break's `=`, or for one more character when
                // the run ends the line.
                let room = (MAX - 1).saturating_sub(width);
                let left = end - i;
                if left <= room || (run_ends_line && left == room + 1) {
                    out.extend_from_slice(&bytes[i..end]);
                    width += left;
                    i = end;
                } else {
                    out.extend_from_slice(&bytes[i..i + room]);
                    out.extend_from_slice(b"=\r\n");
                    width = 0;
                    i += room;
                }
            }
            continue;
        }
        let limit = if line_end_at(i + 1) { MAX } else { MAX - 1 };
        if width + 3 > limit {
            out.extend_from_slice(b"=\r\n");
            width = 0;
        }
        out.extend_from_slice(&[b'=', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        width += 3;
        i += 1;
    }
    out
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// How many bytes at the start of `bytes` quoted-printable writes as they are.
///
/// Eight bytes at a time (the HTML scanner's word search): a word with no control
/// byte, no `=` and nothing from DEL up is all literal. The first byte the test flags
/// is exact, but a tab is flagged and literal, so a hit is checked in the table.
/// Byte by byte throughout, this search was two fifths of building a message.
fn literal_run(bytes: &[u8]) -> usize {
    let hits = |w: u64| {
        let below_space = w.wrapping_sub(ONES * 0x20) & !w;
        let del_or_above = w.wrapping_add(ONES) | w;
        (below_space | del_or_above) & HIGHS | bytes_equal(w, b'=')
    };
    let mut at = 0;
    loop {
        match find_words(&bytes[at..], usize::MAX, hits) {
            Ok(hit) if QP_LITERAL[usize::from(bytes[at + hit])] => at += hit + 1,
            Ok(hit) => return at + hit,
            Err(tail) => {
                at += tail;
                return bytes[at..]
                    .iter()
                    .position(|&b| !QP_LITERAL[usize::from(b)])
                    .map_or(bytes.len(), |p| at + p);
            }
        }
    }
}

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
    use super::{crlf, is_seven_bit, literal_run, quoted_printable, QP_LITERAL};

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
        // And random mixes of every kind of character and line end.
        let alphabet = [
            "a",
            "b",
            " ",
            "\t",
            "=",
            ".",
            "\u{e9}",
            "\u{1f600}",
            "\r",
            "\n",
            "\r\n",
            "\0",
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..3000 {
            let mut s = String::new();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 240) as usize;
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                // Mostly plain letters, as real text is, so lines reach the edge.
                let pick = (seed % 40) as usize;
                s.push_str(alphabet.get(pick).copied().unwrap_or("x"));
            }
            samples.push(s);
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
    fn literal_runs_end_at_the_first_byte_to_encode() {
        let naive = |b: &[u8]| {
            b.iter()
                .position(|&c| !QP_LITERAL[usize::from(c)])
                .unwrap_or(b.len())
        };
        for special in [b'=', b'\n', b'\r', 0, 0x1f, 0x7f, 0x80, 0xc3, 0xff] {
            for len in 0..20 {
                for at in 0..=len {
                    let mut text = vec![b'a'; len];
                    text.extend_from_slice(b"\tbc");
                    if at < len {
                        text[at] = special;
                    }
                    assert_eq!(
                        literal_run(&text),
                        naive(&text),
                        "{special:#x} at {at} of {len}"
                    );
                }
            }
        }
        let text = b"tabs\tand spaces count as literal, all of it";
        assert_eq!(literal_run(text), text.len());
    }

    #[test]
    fn quoted_printable_breaks_only_lines_that_need_it() {
        let fits = "x".repeat(76);
        assert_eq!(quoted_printable(&fits), fits.as_bytes());
        let encoded = String::from_utf8(quoted_printable(&"x".repeat(77))).unwrap();
        assert_eq!(encoded, format!("{}=\r\nxx", "x".repeat(75)));
    }

    #[test]
    fn line_ends_become_crlf_once() {
        assert_eq!(crlf("a\nb\r\nc\n"), "a\r\nb\r\nc\r\n");
        assert_eq!(crlf("é\n\n"), "é\r\n\r\n");
        assert_eq!(crlf("\nx\r"), "\r\nx\r");
    }

    #[test]
    fn seven_bit_only_for_short_lines_of_ascii() {
        let line = |n: usize| "x".repeat(n);
        assert!(is_seven_bit(b""));
        assert!(is_seven_bit(
            format!("{}\r\n{}", line(998), line(998)).as_bytes()
        ));
        assert!(!is_seven_bit(format!("a\n{}", line(999)).as_bytes()));
        assert!(!is_seven_bit(line(999).as_bytes()));
        assert!(!is_seven_bit("caf\u{e9}".as_bytes()));
        assert!(!is_seven_bit(b"a\0b"));
        assert!(!is_seven_bit(b"a\rb\r\n"));
        assert!(!is_seven_bit(b"ends in\r"));
    }
}
