//! A small, fast HTML scanner: tags, text and comments in document order, with byte
//! offsets, and entity decoding.
//!
//! It builds no tree and applies none of the HTML5 insertion rules; the stages that use
//! it (gathering CSS, deriving the text part) only need the token stream of documents
//! missive itself rendered, and a full parser per message costs several times more.

use std::borrow::Cow;
use std::ops::Range;

/// One piece of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Token<'a> {
    /// `<name attrs>`; `attrs` is the raw text between the name and `>`.
    Start {
        name: &'a str,
        attrs: &'a str,
        self_closing: bool,
    },
    /// `</name>`.
    End { name: &'a str },
    /// Text, entities not yet decoded (raw text of `<style>`/`<script>` included).
    Text(&'a str),
    /// `<!-- … -->`, with the markers.
    Comment(&'a str),
    /// `<!DOCTYPE …>` and other `<!…>`/`<?…>` declarations; also markup that makes no
    /// element (`</>`, `</ x>`, a tag the document ends inside).
    Declaration(&'a str),
}

/// Elements whose content is raw text up to their end tag.
const RAW_TEXT: &[&str] = &[
    "style", "script", "title", "textarea", "xmp", "iframe", "noembed", "noframes",
];

/// Iterates over the tokens of `html`, each with its byte range.
pub(crate) struct Scanner<'a> {
    html: &'a str,
    pos: usize,
    raw_until: Option<&'static str>,
}

impl<'a> Scanner<'a> {
    pub(crate) fn new(html: &'a str) -> Scanner<'a> {
        Scanner {
            html,
            pos: 0,
            raw_until: None,
        }
    }
}

impl<'a> Iterator for Scanner<'a> {
    type Item = (Token<'a>, Range<usize>);

    fn next(&mut self) -> Option<Self::Item> {
        let html = self.html;
        let start = self.pos;
        if start >= html.len() {
            return None;
        }
        if let Some(name) = self.raw_until.take() {
            let end = find_end_tag(&html[start..], name).map_or(html.len(), |e| start + e);
            self.pos = end;
            if end > start {
                return Some((Token::Text(&html[start..end]), start..end));
            }
            return self.next();
        }
        let rest = &html[start..];
        if !rest.starts_with('<') || !starts_markup(rest) {
            // `<` is ASCII, so any byte position of one is a character boundary.
            let end = find_byte(b'<', &rest.as_bytes()[1..]).map_or(html.len(), |i| start + 1 + i);
            let end = next_markup(html, start, end);
            self.pos = end;
            return Some((Token::Text(&html[start..end]), start..end));
        }
        // A letter opens a tag, by far the most common markup: none of the rest.
        let tag = rest.as_bytes()[1].is_ascii_alphabetic();
        if let Some(body) = rest.strip_prefix("<!--").filter(|_| !tag) {
            let end = body.find("-->").map_or(html.len(), |e| start + 4 + e + 3);
            self.pos = end;
            return Some((Token::Comment(&html[start..end]), start..end));
        }
        // `</>` is dropped by a parser, and `</` before anything but a letter opens a
        // bogus comment up to `>`: markup that makes no element either way.
        let bogus_end =
            rest.starts_with("</") && !rest.as_bytes().get(2).is_some_and(u8::is_ascii_alphabetic);
        if !tag && (rest.starts_with("<!") || rest.starts_with("<?") || bogus_end) {
            let end = rest.find('>').map_or(html.len(), |e| start + e + 1);
            self.pos = end;
            return Some((Token::Declaration(&html[start..end]), start..end));
        }
        let Some(end) = tag_end(rest).map(|e| start + e) else {
            // The document ends inside the tag: a parser drops it.
            self.pos = html.len();
            return Some((Token::Declaration(rest), start..html.len()));
        };
        self.pos = end;
        // `tag_end` stops at the first `>` outside a value: the only one at the end.
        let inner = &html[start + 1..end - 1];
        let name_len = |s: &str| {
            s.bytes()
                .position(|b| b.is_ascii_whitespace() || b == b'/')
                .unwrap_or(s.len())
        };
        if let Some(closing) = inner.strip_prefix('/') {
            let name = &closing[..name_len(closing)];
            return Some((Token::End { name }, start..end));
        }
        let name_end = name_len(inner);
        let name = &inner[..name_end];
        let mut self_closing = inner.ends_with('/');
        let mut attrs = inner[name_end..].trim_end_matches('/');
        if self_closing {
            // In `<a href=x/>` the slash belongs to the unquoted value, as a parser reads it.
            let full = &inner[name_end..];
            let in_value = attribute_spans(full)
                .last()
                .is_some_and(|(_, value, span)| {
                    let text = &full[span.clone()];
                    span.end == full.len()
                        && !value.is_empty()
                        && text.contains('=')
                        && !text.ends_with(['"', '\''])
                });
            if in_value {
                self_closing = false;
                attrs = full;
            }
        }
        // Most tags are none of them, and their length and first letter tell.
        if matches!(name.len(), 3 | 5..=8)
            && matches!(name.as_bytes()[0] | 0x20, b's' | b't' | b'x' | b'i' | b'n')
        {
            if let Some(raw) = RAW_TEXT.iter().find(|r| r.eq_ignore_ascii_case(name)) {
                self.raw_until = Some(raw);
            }
        }
        Some((
            Token::Start {
                name,
                attrs,
                self_closing,
            },
            start..end,
        ))
    }
}

/// How deep elements may nest in a document missive inlines CSS into. html5ever, under
/// css-inline, takes time quadratic in the depth (every start tag looks down the stack
/// of open elements) and recurses once per level, so a document thousands of levels
/// deep takes seconds and then overflows the 2 MiB stack of a render thread. Browsers
/// cap nesting too (Chromium's parser at 512); mail layouts nest a few dozen deep.
pub(crate) const MAX_DEPTH: usize = 512;

/// Elements that never have content.
const VOID: &[&str] = &[
    "area", "base", "basefont", "bgsound", "br", "col", "embed", "frame", "hr", "img", "input",
    "keygen", "link", "meta", "param", "source", "track", "wbr",
];

/// Elements an end tag does not close past, as HTML's "has an element in scope".
const SCOPE: &[&str] = &[
    "applet", "caption", "html", "marquee", "object", "table", "td", "template", "th",
];

/// Table parts, whose end tags close past cells: HTML's "in table scope".
const TABLE_PARTS: &[&str] = &[
    "caption", "colgroup", "table", "tbody", "td", "tfoot", "th", "thead", "tr",
];
const TABLE_SCOPE: &[&str] = &["html", "table", "template"];

/// Starts of elements that close a `<p>` left open.
const CLOSES_P: &[&str] = &[
    "address",
    "article",
    "aside",
    "blockquote",
    "center",
    "details",
    "dialog",
    "dir",
    "div",
    "dl",
    "fieldset",
    "figcaption",
    "figure",
    "footer",
    "form",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "header",
    "hgroup",
    "hr",
    "main",
    "menu",
    "nav",
    "ol",
    "p",
    "pre",
    "section",
    "summary",
    "table",
    "ul",
];

/// The open elements a start tag `name` closes when they are on top, as a parser would
/// (`<li>` ends the `<li>` before it).
fn implied_ends(name: &str) -> &'static [&'static str] {
    match name {
        "li" => &["li", "p"],
        "dt" | "dd" => &["dt", "dd", "p"],
        "option" => &["option"],
        "optgroup" => &["option", "optgroup"],
        "tr" => &["td", "th", "tr"],
        "td" | "th" => &["td", "th"],
        "thead" | "tbody" | "tfoot" => &["td", "th", "tr", "thead", "tbody", "tfoot"],
        _ if CLOSES_P.contains(&name) => &["p"],
        _ => &[],
    }
}

fn is_one_of(name: &str, names: &[&str]) -> bool {
    names.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// Where `html` first nests elements deeper than `max`: the byte offset of the start tag
/// that goes past it, and its name.
///
/// It follows end tags and the ends HTML implies (`<p>`, `<li>`, table cells), close to
/// the depth a parser builds; the stack it keeps never outgrows `max`, so the pass is
/// linear in the document whatever its depth.
pub(crate) fn too_deep(html: &str, max: usize) -> Option<(usize, &str)> {
    let mut open: Vec<&str> = Vec::new();
    for (token, range) in Scanner::new(html) {
        match token {
            Token::Start { name, .. } => {
                if is_one_of(name, VOID) {
                    continue;
                }
                let ends = implied_ends(&name.to_ascii_lowercase());
                while open.last().is_some_and(|top| is_one_of(top, ends)) {
                    open.pop();
                }
                open.push(name);
                if open.len() > max {
                    return Some((range.start, name));
                }
            }
            Token::End { name } => {
                let scope = if is_one_of(name, TABLE_PARTS) {
                    TABLE_SCOPE
                } else {
                    SCOPE
                };
                let found = open
                    .iter()
                    .rposition(|n| n.eq_ignore_ascii_case(name) || is_one_of(n, scope));
                if let Some(at) = found.filter(|&at| open[at].eq_ignore_ascii_case(name)) {
                    open.truncate(at);
                }
            }
            _ => {}
        }
    }
    None
}

/// Whether `<` at the start of `s` opens markup rather than being a literal `<`.
fn starts_markup(s: &str) -> bool {
    matches!(s.as_bytes().get(1), Some(b) if b.is_ascii_alphabetic() || matches!(b, b'/' | b'!' | b'?'))
}

/// Extends a text run over literal `<` characters that open no markup.
fn next_markup(html: &str, from: usize, mut end: usize) -> usize {
    while end < html.len() && !starts_markup(&html[end..]) {
        end = html[end + 1..]
            .find('<')
            .map_or(html.len(), |i| end + 1 + i);
    }
    let mut end = end.max(from + 1);
    while !html.is_char_boundary(end) {
        end += 1;
    }
    end
}

fn find_end_tag(s: &str, name: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = s[from..].find("</").map(|i| i + from) {
        // Only the element's own end tag ends it: `</styles>` is text inside `<style>`.
        let after = s.as_bytes().get(i + 2 + name.len());
        if starts_with_ci(&s[i + 2..], name)
            && after.is_some_and(|b| b.is_ascii_whitespace() || matches!(b, b'/' | b'>'))
        {
            return Some(i);
        }
        from = i + 2;
    }
    None
}

/// Index just past the `>` closing the tag at the start of `tag`, minding quotes.
pub(crate) fn tag_end(tag: &str) -> Option<usize> {
    let bytes = tag.as_bytes();
    let mut i = 0;
    loop {
        i += find_byte3(b'>', b'"', b'\'', &bytes[i..])?;
        let b = bytes[i];
        if b == b'>' {
            return Some(i + 1);
        }
        let opens = opens_value(tag, i);
        i += 1;
        if opens {
            i += find_byte(b, &bytes[i..])? + 1;
        }
    }
}

/// Whether the quote at `at` in `tag` opens a value: it does only right after `=`,
/// allowing white space (as `str::trim_end` knows it) between.
fn opens_value(tag: &str, at: usize) -> bool {
    let bytes = tag.as_bytes();
    let mut i = at;
    while i > 0 {
        match bytes[i - 1] {
            b'\t'..=b'\r' | b' ' => i -= 1,
            b'=' => return true,
            // Unicode white space: let `trim_end` decide.
            0x80.. => return tag[..i].trim_end().ends_with('='),
            _ => return false,
        }
    }
    false
}

/// `name="value"` pairs of a tag's attribute text; values raw (entities not decoded).
pub(crate) fn attributes(attrs: &str) -> impl Iterator<Item = (&str, &str)> {
    attribute_spans(attrs).map(|(name, value, _)| (name, value))
}

/// Like [`attributes`], with the byte range each whole attribute takes in `attrs`.
pub(crate) fn attribute_spans(attrs: &str) -> impl Iterator<Item = (&str, &str, Range<usize>)> {
    // Byte by byte: every delimiter is ASCII, so each cut is a character boundary, and
    // HTML separates attributes with ASCII white space only.
    let bytes = attrs.as_bytes();
    let len = bytes.len();
    // Past white space from `i`, and past `/` too between attributes.
    let skip = move |mut i: usize, slash: bool| {
        while i < len && (bytes[i].is_ascii_whitespace() || (slash && bytes[i] == b'/')) {
            i += 1;
        }
        i
    };
    let mut pos = 0;
    std::iter::from_fn(move || {
        let start = skip(pos, true);
        if start >= len {
            return None;
        }
        let name_end = bytes[start..]
            .iter()
            .position(|&b| b == b'=' || b.is_ascii_whitespace())
            .map_or(len, |e| start + e);
        let name = &attrs[start..name_end];
        let eq = skip(name_end, false);
        if bytes.get(eq) != Some(&b'=') {
            pos = name_end;
            return Some((name, "", start..pos));
        }
        let value_start = skip(eq + 1, false);
        let value = match bytes.get(value_start) {
            Some(&quote @ (b'"' | b'\'')) => {
                let close = find_byte(quote, &bytes[value_start + 1..])
                    .map_or(len, |e| value_start + 1 + e);
                pos = (close + 1).min(len);
                &attrs[value_start + 1..close]
            }
            _ => {
                let end = bytes[value_start..]
                    .iter()
                    .position(u8::is_ascii_whitespace)
                    .map_or(len, |e| value_start + e);
                pos = end;
                &attrs[value_start..end]
            }
        };
        Some((name, value, start..pos))
    })
}

/// The decoded value of attribute `name`, if present.
pub(crate) fn attr<'a>(attrs: &'a str, name: &str) -> Option<Cow<'a, str>> {
    attributes(attrs)
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| decode_entities(v))
}

/// Where the search loops hand over to `memchr`: what is searched here is mostly
/// short (values, tags, indentation between tags), found before `memchr` has set up.
const SHORT: usize = 32;

pub(crate) const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
pub(crate) const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);

/// The high bit of each byte of `word` that equals `byte`: exact for the lowest such
/// byte, which is all the callers read.
pub(crate) fn bytes_equal(word: u64, byte: u8) -> u64 {
    let x = word ^ (ONES * u64::from(byte));
    x.wrapping_sub(ONES) & !x & HIGHS
}

/// The first position in the first `limit` bytes of `haystack` whose 8-byte word has
/// a set bit in `hits`, eight bytes at a time; `Err` with how far it looked otherwise
/// (the rest is less than a word, or past `limit`).
pub(crate) fn find_words(
    haystack: &[u8],
    limit: usize,
    hits: impl Fn(u64) -> u64,
) -> Result<usize, usize> {
    let end = haystack.len().min(limit);
    let mut i = 0;
    while let Some(chunk) = haystack.get(i..i + 8).filter(|_| i + 8 <= end) {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        let found = hits(u64::from_le_bytes(word));
        if found != 0 {
            return Ok(i + (found.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    Err(i)
}

/// The first `needle` in `haystack`.
pub(crate) fn find_byte(needle: u8, haystack: &[u8]) -> Option<usize> {
    let from = match find_words(haystack, SHORT, |w| bytes_equal(w, needle)) {
        Ok(at) => return Some(at),
        Err(from) => from,
    };
    if from < SHORT {
        return haystack[from..]
            .iter()
            .position(|&b| b == needle)
            .map(|at| from + at);
    }
    memchr::memchr(needle, &haystack[from..]).map(|at| from + at)
}

/// The first of `a`, `b` or `c` in `haystack`.
pub(crate) fn find_byte3(a: u8, b: u8, c: u8, haystack: &[u8]) -> Option<usize> {
    let hits = |w| bytes_equal(w, a) | bytes_equal(w, b) | bytes_equal(w, c);
    let from = match find_words(haystack, SHORT, hits) {
        Ok(at) => return Some(at),
        Err(from) => from,
    };
    if from < SHORT {
        return haystack[from..]
            .iter()
            .position(|&x| x == a || x == b || x == c)
            .map(|at| from + at);
    }
    memchr::memchr3(a, b, c, &haystack[from..]).map(|at| from + at)
}

/// The first byte of `haystack` that HTML escaping replaces (`&<>"'`).
pub(crate) fn find_escapable(haystack: &[u8]) -> Option<usize> {
    let special = |b: u8| matches!(b, b'&' | b'<' | b'>' | b'"' | b'\'');
    let hits = |w| {
        bytes_equal(w, b'&')
            | bytes_equal(w, b'<')
            | bytes_equal(w, b'>')
            | bytes_equal(w, b'"')
            | bytes_equal(w, b'\'')
    };
    let from = match find_words(haystack, usize::MAX, hits) {
        Ok(at) => return Some(at),
        Err(from) => from,
    };
    haystack[from..]
        .iter()
        .position(|&b| special(b))
        .map(|at| from + at)
}

pub(crate) fn starts_with_ci(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

pub(crate) fn find_ci(haystack: &str, needle: &str) -> Option<usize> {
    let n = needle.as_bytes();
    let Some(&first) = n.first() else {
        return Some(0);
    };
    let bytes = haystack.as_bytes();
    // Jump between the places the needle's first byte, in either case, occurs.
    memchr::memchr2_iter(
        first.to_ascii_lowercase(),
        first.to_ascii_uppercase(),
        bytes,
    )
    .find(|&at| bytes[at..].len() >= n.len() && bytes[at..at + n.len()].eq_ignore_ascii_case(n))
}

/// Replaces character references (`&amp;`, `&#8217;`, `&#x2f;`, `&nbsp;`) with the
/// characters they stand for; unknown ones stay as written, as browsers keep them.
pub(crate) fn decode_entities(text: &str) -> Cow<'_, str> {
    let Some(first) = find_byte(b'&', text.as_bytes()) else {
        return Cow::Borrowed(text);
    };
    let mut out = String::with_capacity(text.len());
    out.push_str(&text[..first]);
    let mut rest = &text[first..];
    while let Some(amp) = memchr::memchr(b'&', rest.as_bytes()) {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        match decode_one(rest) {
            Some(((first, second), used)) => {
                out.push(first);
                out.extend(second);
                rest = &rest[used..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Decodes the reference at the start of `s` (which starts with `&`): the text and the
/// bytes it took. A reference stands for one or two characters.
fn decode_one(s: &str) -> Option<((char, Option<char>), usize)> {
    let body = &s[1..];
    if let Some(num) = body.strip_prefix('#') {
        let (digits, radix, skip) = match num.strip_prefix(['x', 'X']) {
            Some(hex) => (hex, 16, 3),
            None => (num, 10, 2),
        };
        let len = digits
            .bytes()
            .take_while(|b| b.is_ascii_digit() || (radix == 16 && b.is_ascii_hexdigit()))
            .count();
        if len == 0 {
            return None;
        }
        let code = u32::from_str_radix(&digits[..len], radix).unwrap_or(0xFFFD);
        let c = char::from_u32(code)
            .filter(|c| *c != '\0')
            .unwrap_or('\u{FFFD}');
        let semicolon = usize::from(digits[len..].starts_with(';'));
        return Some(((c, None), skip + len + semicolon));
    }
    let len = body
        .bytes()
        .take(32)
        .take_while(u8::is_ascii_alphanumeric)
        .count();
    if len == 0 {
        return None;
    }
    let with_semicolon = body[len..].starts_with(';');
    let key = if with_semicolon {
        &body[..=len]
    } else {
        &body[..len]
    };
    let (a, b) = html5ever::data::NAMED_ENTITIES.get(key).copied()?;
    let first = char::from_u32(a).filter(|_| a != 0)?;
    let second = char::from_u32(b).filter(|_| b != 0);
    Some(((first, second), 1 + key.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(html: &str) -> Vec<Token<'_>> {
        Scanner::new(html).map(|(t, _)| t).collect()
    }

    #[test]
    fn scans_tags_text_comments_and_raw_text() {
        let html = "<!DOCTYPE html><p class=\"a>b\" id=x>Hi &amp; <b>bye</b></p><!-- c --><style>p > a { x: '<' }</style><br/>1 < 2";
        assert_eq!(
            tokens(html),
            [
                Token::Declaration("<!DOCTYPE html>"),
                Token::Start {
                    name: "p",
                    attrs: " class=\"a>b\" id=x",
                    self_closing: false
                },
                Token::Text("Hi &amp; "),
                Token::Start {
                    name: "b",
                    attrs: "",
                    self_closing: false
                },
                Token::Text("bye"),
                Token::End { name: "b" },
                Token::End { name: "p" },
                Token::Comment("<!-- c -->"),
                Token::Start {
                    name: "style",
                    attrs: "",
                    self_closing: false
                },
                Token::Text("p > a { x: '<' }"),
                Token::End { name: "style" },
                Token::Start {
                    name: "br",
                    attrs: "",
                    self_closing: true
                },
                Token::Text("1 < 2"),
            ]
        );
        let ranges: Vec<_> = Scanner::new(html).map(|(_, r)| r).collect();
        assert_eq!(ranges.first(), Some(&(0..15)));
        assert_eq!(ranges.last().map(|r| r.end), Some(html.len()));
    }

    #[test]
    fn never_panics_and_covers_every_byte() {
        let doc = "▲<p>é</p>&é;<a href='▲>'>ü</a><!--▲<-->é<▲<style>▲</st▲yle>–<br/>&#x▲;&▲";
        for end in (0..=doc.len()).filter(|i| doc.is_char_boundary(*i)) {
            let prefix = &doc[..end];
            let mut covered = 0;
            for (token, range) in Scanner::new(prefix) {
                assert_eq!(range.start, covered, "{prefix:?}: {token:?}");
                covered = range.end;
                if let Token::Text(text) = token {
                    let _ = decode_entities(text);
                }
            }
            assert_eq!(covered, prefix.len(), "{prefix:?}");
        }
    }

    #[test]
    fn quotes_open_values_only_after_an_equals_sign() {
        assert_eq!(tag_end("<a href=\"x>y\">z"), Some(14));
        assert_eq!(tag_end("<a href = 'x>y' b>z"), Some(18));
        assert_eq!(tag_end("<a b\"c>d\">"), Some(7));
        assert_eq!(tag_end("<a b=\"c\" \"d>e\">"), Some(12));
        // Any white space, a no-break space included, may come between.
        assert_eq!(tag_end("<a b=\u{a0}\"c>d\">"), Some(13));
        assert_eq!(tag_end("<a b=\x0b'c>d'>"), Some(12));
        assert_eq!(tag_end("<a é\"c>d\">"), Some(8));
        assert_eq!(tag_end("<a b=\"c>"), None);
    }

    /// The word-at-a-time searches find what a plain search finds, at every length
    /// and position about the hand-over to `memchr`, with near-misses around.
    #[test]
    fn byte_searches_find_the_first_match() {
        for len in 0..100 {
            for at in 0..=len {
                let mut hay: Vec<u8> = (0..len).map(|i| [0x01, 0x3d, 0xbe, b'a'][i % 4]).collect();
                if at < len {
                    hay[at] = b'>';
                    if at + 3 < len {
                        hay[at + 3] = b'"';
                    }
                }
                let want = hay.iter().position(|&b| b == b'>');
                assert_eq!(find_byte(b'>', &hay), want, "{len} {at}");
                let want3 = hay
                    .iter()
                    .position(|&b| b == b'>' || b == b'"' || b == b'\'');
                assert_eq!(find_byte3(b'>', b'"', b'\'', &hay), want3, "{len} {at}");
                assert_eq!(find_byte(0x00, &hay), None, "{len} {at}");
                let escapable = hay.iter().position(|b| b"&<>\"'".contains(b));
                assert_eq!(find_escapable(&hay), escapable, "{len} {at}");
                if at < len {
                    for special in *b"&<'" {
                        let mut other = hay.clone();
                        other[at] = special;
                        assert_eq!(find_escapable(&other), Some(at), "{len} {at}");
                    }
                }
            }
        }
        assert_eq!(find_ci("<p></HEAD></head>", "</head"), Some(3));
        assert_eq!(find_ci("<p></hea", "</head"), None);
        assert_eq!(find_ci("</header><//head>", "</head"), Some(0));
        assert_eq!(find_ci("x<</HeAd", "</head"), Some(2));
    }

    #[test]
    fn attributes_are_parsed_and_decoded() {
        let attrs = " href=\"https:&#x2f;&#x2f;x.test?a=1&amp;b=2\" hidden data-x='y z' alt=plain";
        let all: Vec<_> = attributes(attrs).collect();
        assert_eq!(all.len(), 4);
        assert_eq!(attr(attrs, "HREF").unwrap(), "https://x.test?a=1&b=2");
        assert_eq!(attr(attrs, "hidden").unwrap(), "");
        assert_eq!(attr(attrs, "data-x").unwrap(), "y z");
        assert_eq!(attr(attrs, "alt").unwrap(), "plain");
        assert!(attr(attrs, "title").is_none());
        let spans: Vec<_> = attribute_spans(attrs).map(|(_, _, r)| &attrs[r]).collect();
        assert_eq!(
            spans,
            [
                "href=\"https:&#x2f;&#x2f;x.test?a=1&amp;b=2\"",
                "hidden",
                "data-x='y z'",
                "alt=plain"
            ]
        );
    }

    #[test]
    fn nesting_depth_follows_end_tags_and_implied_ends() {
        let deep = |n: usize| format!("{}x{}", "<div>".repeat(n), "</div>".repeat(n));
        assert_eq!(too_deep(&deep(3), 3), None);
        assert_eq!(too_deep(&deep(4), 3), Some((15, "div")));
        // Siblings, void elements, self-closed void elements and closed elements add
        // nothing; unclosed <li>, <p> and cells end where a parser ends them.
        let flat = "<ul><li>a<li>b<li>c</ul><p>1<p>2<p>3<br><img src=x/><hr/>                    <table><tr><td>1<td>2<tr><td>3</table><dl><dt>a<dd>b<dt>c</dl>";
        assert_eq!(too_deep(&flat.repeat(50), 3), None);
        // An end tag does not close past a table cell, as in a parser.
        let cells = "<div><table><tr><td></div>".repeat(2);
        assert!(too_deep(&cells, 6).is_some());
        // Stray end tags change nothing.
        assert_eq!(
            too_deep(&format!("<div></span></p>{}", "</b>".repeat(9)), 1),
            None
        );
    }

    #[test]
    fn entities_decode_like_a_browser() {
        assert_eq!(decode_entities("a &amp; b"), "a & b");
        assert_eq!(
            decode_entities("&lt;&gt;&quot;&#39;&rsquo;&nbsp;"),
            "<>\"'\u{2019}\u{a0}"
        );
        assert_eq!(decode_entities("&#x1F600;&#8212;"), "\u{1F600}\u{2014}");
        assert_eq!(decode_entities("AT&T &bogus; &"), "AT&T &bogus; &");
        assert_eq!(decode_entities("&amp"), "&");
        assert!(matches!(decode_entities("plain"), Cow::Borrowed(_)));
    }
}

/// Issue 11.8: the hand-written scanner against html5ever's tokenizer, on generated
/// documents (nesting, attributes quoted every way and not at all, comments,
/// conditional comments, entities, `<style>`/`<script>` contents, malformed markup), and
/// the inliner and the text part on the same documents, which must never panic. A
/// seeded generator keeps every run the same; a failure prints its seed and document.
#[cfg(test)]
pub(crate) mod generated {
    use super::*;
    use html5ever::tokenizer::states::RawKind;
    use html5ever::tokenizer::{
        BufferQueue, TagKind, Token as H5Token, TokenSink, TokenSinkResult, Tokenizer,
        TokenizerOpts,
    };
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::sync::Arc;

    const CASES: u64 = 2_000;

    /// A token as both sides can state it: names lower-cased, entities decoded,
    /// attributes in order with the first of a repeated name kept, as a parser keeps it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum View {
        Start(String, Vec<(String, String)>, bool),
        End(String),
        Text(String),
        Comment(String),
        Doctype,
    }

    fn push_text(out: &mut Vec<View>, text: &str) {
        if text.is_empty() {
            return;
        }
        if let Some(View::Text(last)) = out.last_mut() {
            last.push_str(text);
        } else {
            out.push(View::Text(text.to_string()));
        }
    }

    fn ours(html: &str) -> Vec<View> {
        let mut out = Vec::new();
        for (token, _) in Scanner::new(html) {
            match token {
                Token::Start {
                    name,
                    attrs,
                    self_closing,
                } => {
                    let mut seen: Vec<(String, String)> = Vec::new();
                    for (k, v) in attributes(attrs) {
                        let k = k.to_ascii_lowercase();
                        if !seen.iter().any(|(s, _)| *s == k) {
                            seen.push((k, decode_entities(v).into_owned()));
                        }
                    }
                    out.push(View::Start(name.to_ascii_lowercase(), seen, self_closing));
                }
                Token::End { name } => out.push(View::End(name.to_ascii_lowercase())),
                Token::Text(text) => push_text(&mut out, &decode_entities(text)),
                Token::Comment(c) => {
                    let inner = c.strip_prefix("<!--").unwrap_or(c);
                    let inner = inner.strip_suffix("-->").unwrap_or(inner);
                    out.push(View::Comment(inner.to_string()));
                }
                Token::Declaration(d) if starts_with_ci(d, "<!doctype") => out.push(View::Doctype),
                // A parser drops `</>`, and a tag the document ends in, altogether.
                Token::Declaration(d)
                    if d == "</>"
                        || (!d.ends_with('>')
                            && d[1..]
                                .trim_start_matches('/')
                                .starts_with(|c: char| c.is_ascii_alphabetic())) => {}
                Token::Declaration(d) => {
                    let inner = d
                        .strip_prefix("<!")
                        .or_else(|| d.strip_prefix("</"))
                        .or_else(|| d.strip_prefix('<'))
                        .unwrap_or(d);
                    let inner = inner.strip_suffix('>').unwrap_or(inner);
                    out.push(View::Comment(inner.to_string()));
                }
            }
        }
        out
    }

    #[derive(Default)]
    struct Sink {
        out: RefCell<Vec<View>>,
    }

    impl TokenSink for Sink {
        type Handle = ();

        fn process_token(&self, token: H5Token, _line: u64) -> TokenSinkResult<()> {
            let mut out = self.out.borrow_mut();
            match token {
                H5Token::TagToken(tag) => {
                    let name = tag.name.to_string();
                    match tag.kind {
                        TagKind::StartTag => {
                            let attrs = tag
                                .attrs
                                .iter()
                                .map(|a| (a.name.local.to_string(), a.value.to_string()))
                                .collect();
                            out.push(View::Start(name.clone(), attrs, tag.self_closing));
                            // What the tree builder would tell the tokenizer.
                            let raw = match name.as_str() {
                                "style" | "xmp" | "iframe" | "noembed" | "noframes" => {
                                    Some(RawKind::Rawtext)
                                }
                                "title" | "textarea" => Some(RawKind::Rcdata),
                                "script" => Some(RawKind::ScriptData),
                                _ => None,
                            };
                            if let Some(raw) = raw {
                                return TokenSinkResult::RawData(raw);
                            }
                        }
                        TagKind::EndTag => out.push(View::End(name)),
                    }
                }
                H5Token::CharacterTokens(text) => push_text(&mut out, &text),
                H5Token::CommentToken(text) => out.push(View::Comment(text.to_string())),
                H5Token::DoctypeToken(_) => out.push(View::Doctype),
                H5Token::NullCharacterToken | H5Token::EOFToken | H5Token::ParseError(_) => {}
            }
            TokenSinkResult::Continue
        }
    }

    fn html5ever(html: &str) -> Vec<View> {
        let tokenizer = Tokenizer::new(Sink::default(), TokenizerOpts::default());
        let input = BufferQueue::default();
        input.push_back(html.into());
        let _ = tokenizer.feed(&input);
        tokenizer.end();
        tokenizer.sink.out.take()
    }

    fn pick<'a>(rng: &mut fastrand::Rng, from: &[&'a str]) -> &'a str {
        from[rng.usize(..from.len())]
    }

    const NAMES: &[&str] = &[
        "div", "p", "a", "b", "span", "table", "tr", "td", "img", "br", "ul", "li", "h1", "center",
        "font", "Div", "TD", "x-card", "o:p",
    ];

    fn attribute(rng: &mut fastrand::Rng) -> String {
        let name = pick(
            rng,
            &[
                "class", "id", "style", "href", "data-x", "hidden", "alt", "TITLE", "width",
            ],
        );
        let value = pick(
            rng,
            &[
                "x",
                "a b",
                "color: red; display:none",
                "https://x.test/?a=1&amp;b=2",
                "é▲",
                "&lt;&#39;&#x2F;&quot;",
                "a>b",
                "",
                "5",
            ],
        );
        let sep = pick(rng, &[" ", "\n", "  ", "\t"]);
        match rng.usize(..5) {
            0 => format!("{sep}{name}=\"{}\"", value.replace('"', "'")),
            1 => format!("{sep}{name}='{}'", value.replace('\'', "\"")),
            2 if !value.is_empty() => {
                let bare: String = value
                    .chars()
                    .filter(|c| !c.is_whitespace() && !"\"'=<>`".contains(*c))
                    .collect();
                format!("{sep}{name}={}", if bare.is_empty() { "v" } else { &bare })
            }
            3 => format!("{sep}{name} = \"{value}\""),
            _ => format!("{sep}{name}"),
        }
    }

    fn piece(rng: &mut fastrand::Rng, depth: usize) -> String {
        match rng.usize(..12) {
            0 | 1 => pick(
                rng,
                &[
                    "Hello",
                    " world ",
                    "a < b",
                    "1 <2",
                    "x > y",
                    "é▲ü",
                    "\n  ",
                    "tom & jerry",
                ],
            )
            .to_string(),
            2 => pick(
                rng,
                &[
                    "&amp;",
                    "&lt;",
                    "&gt;",
                    "&quot;",
                    "&#39;",
                    "&#x2F;",
                    "&#8212;",
                    "&nbsp;",
                    "&rsquo;",
                    "&copy ",
                    "& ",
                    "&bogus;",
                    "&#x1F600;",
                ],
            )
            .to_string(),
            3..=5 if depth < 6 => {
                let name = pick(rng, NAMES);
                let attrs: String = (0..rng.usize(..4)).map(|_| attribute(rng)).collect();
                let close = pick(rng, &[">", ">", " />", "/>"]);
                let inner: String = (0..rng.usize(..4)).map(|_| piece(rng, depth + 1)).collect();
                let end = if rng.usize(..5) == 0 {
                    String::new()
                } else {
                    format!("</{}{}>", name, pick(rng, &["", " ", " class=x"]))
                };
                format!("<{name}{attrs}{close}{inner}{end}")
            }
            6 => pick(
                rng,
                &[
                    "<!-- note -->",
                    "<!--[if mso]><table><tr><td><![endif]-->",
                    "<!---->",
                    "<!-- a -- b -->",
                    "<!--<p>not a tag</p>-->",
                ],
            )
            .to_string(),
            7 => pick(
                rng,
                &[
                    "<style>p > a { x: '<' } .a{b:c}</style>",
                    "<style type=\"text/css\">a</styles>b</style>",
                    "<STYLE>td { color: red }</Style >",
                    "<script>if (a < b && c > d) { x = '</p>'; }</script>",
                    "<title>A &amp; B <b></title>",
                    "<textarea><p>not a tag</p></textarea>",
                ],
            )
            .to_string(),
            8 => pick(
                rng,
                &[
                    "<!DOCTYPE html>",
                    "<![if !mso]>",
                    "<![endif]>",
                    "<?xml version=\"1.0\"?>",
                ],
            )
            .to_string(),
            9 => pick(
                rng,
                &[
                    "< p>",
                    "<>",
                    "</>",
                    "</ p>",
                    "<3",
                    "a<b>c",
                    "<a\nhref=x>",
                    "<p/ class=x>",
                    ">",
                ],
            )
            .to_string(),
            _ => format!("</{}>", pick(rng, NAMES)),
        }
    }

    pub(crate) fn document(rng: &mut fastrand::Rng) -> String {
        let mut doc: String = (0..rng.usize(1..30)).map(|_| piece(rng, 0)).collect();
        // Now and then the document stops in the middle of something.
        if rng.usize(..8) == 0 {
            doc.push_str(pick(
                rng,
                &["<a href=\"x", "<div", "<!-- open", "<style>p{"],
            ));
        }
        doc
    }

    #[test]
    fn the_scanner_sees_what_html5ever_sees() {
        for seed in 0..CASES {
            let doc = document(&mut fastrand::Rng::with_seed(seed));
            assert_eq!(ours(&doc), html5ever(&doc), "seed {seed}: {doc:?}");
        }
    }

    #[test]
    fn inlining_and_text_never_panic() {
        let sheets = crate::inline::Stylesheets::new(HashMap::from([(
            "s.css".to_string(),
            Arc::from("p { color: red } td a { margin: 0 } .x:hover { color: blue } div > b { font-weight: bold }"),
        )]));
        for seed in 0..CASES / 4 {
            let doc = document(&mut fastrand::Rng::with_seed(seed));
            let doc =
                format!("<link rel=stylesheet href=s.css><style>b {{ color: green }}</style>{doc}");
            let _ = crate::text::from_html(&doc);
            // An error is fine (a malformed `<link>`, say); a panic is not.
            let _ = sheets.inline_and_text(&doc, std::path::Path::new("t.html"), true);
        }
    }
}
