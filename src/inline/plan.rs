//! Inlining by plan: which style each element ends up with depends only on the CSS and
//! the document's shape, so css-inline runs once per (stylesheet, shape) and later
//! documents of that shape get the same styles written in directly.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use crate::error::Result;
use crate::html::{self, Scanner, Token};
use crate::text::{self, Marks};

use super::css_inline_direct;
use super::rules::Split;

/// How many inlining plans are kept: one per distinct (stylesheet, document shape), so a
/// loop rendering 1 to 50 rows makes up to 50.
pub(super) const PLAN_CACHE_LIMIT: usize = 4096;

/// Whether lower-cased `name` is one of the attributes whose values selectors commonly
/// depend on, whatever the stylesheet says. A `match` compiles to a test of the length
/// and then of the bytes, where a loop over a list called `memcmp` for each name of
/// equal length.
fn is_key_attribute(name: &[u8]) -> bool {
    matches!(
        name,
        b"class" | b"id" | b"style" | b"lang" | b"dir" | b"type" | b"xml:lang"
    )
}

/// Marks each start tag while a plan is made, to find it again in css-inline's output.
pub(super) const MARKER: &str = "data-missive-node";

/// The plans made for one inlinable stylesheet.
#[derive(Debug)]
pub(super) struct CssPlans {
    pub(super) css: String,
    pub(super) by_shape: super::FastMap<Box<[u8]>, Arc<Plan>>,
}

/// The final `style` of every start tag of one document shape, by position.
#[derive(Debug)]
pub(super) enum Plan {
    Styles {
        styles: Vec<Option<Box<str>>>,
        /// Whether each element's planned style hides it, for the text part.
        hidden: Vec<bool>,
    },
    /// The parser adds or merges styled elements for this shape: run css-inline each time.
    Direct,
}

/// A document's start tags and everything selector matching can see of it.
pub(super) struct Shape<'a> {
    /// Byte range of each start tag, and of its name within it.
    pub(super) tags: Vec<(Range<usize>, usize)>,
    /// What the text part reads of each start tag's attributes.
    pub(super) marks: Vec<Marks<'a>>,
    /// The range of each start tag's first `style` attribute, from the end of its
    /// name, for [`apply`].
    pub(super) styles: Vec<Option<Range<usize>>>,
    /// Tag names, the attributes present and the values selectors may test, in order,
    /// each piece length-prefixed so that no two shapes write the same bytes.
    pub(super) signature: Vec<u8>,
}

impl<'a> Shape<'a> {
    /// The shape of the document `tokens` make up (as [`Scanner`] gives them; a text
    /// run may come in pieces, and reads as one).
    pub(super) fn of(tokens: &[(Token<'a>, Range<usize>)], split: &Split) -> Shape<'a> {
        // A tag's piece of the signature is never much longer than the tag, nor a text
        // run's: room for the whole document spares the regrowing.
        let mut signature = Vec::with_capacity(tokens.last().map_or(0, |(_, r)| r.end) + 16);
        let starts = tokens
            .iter()
            .filter(|(t, _)| matches!(t, Token::Start { .. }))
            .count();
        let mut tags = Vec::with_capacity(starts);
        let mut marks = Vec::with_capacity(starts);
        let mut styles = Vec::with_capacity(starts);
        let mut after_text = false;
        for (token, range) in tokens {
            let text = matches!(token, Token::Text(_));
            match *token {
                Token::Start { name, attrs, .. } => {
                    tags.push((range.clone(), name.len()));
                    signature.push(0);
                    push_lower(&mut signature, name);
                    let mut mark = Marks::default();
                    let mut style = None;
                    for (attr, value, span) in html::attribute_spans(attrs) {
                        mark.note(attr, value);
                        if style.is_none() && attr.eq_ignore_ascii_case("style") {
                            style = Some(span);
                        }
                        let kind = signature.len();
                        signature.push(4);
                        push_lower(&mut signature, attr);
                        // Both lists are lower-cased: compare with the name as just written.
                        let lower = &signature[signature.len() - attr.len()..];
                        let keyed = is_key_attribute(lower)
                            || split
                                .selector_attributes
                                .iter()
                                .any(|k| k.as_bytes() == lower);
                        if keyed {
                            signature[kind] = 3;
                            push_piece(&mut signature, value.as_bytes());
                        }
                    }
                    marks.push(mark);
                    styles.push(style);
                }
                Token::End { name } => {
                    signature.push(1);
                    push_lower(&mut signature, name);
                }
                // Text never changes which selectors match, but whether there is any can
                // change the tree the parser builds (and `:empty`).
                Token::Text(text) => {
                    let blank = is_blank(text);
                    if !after_text {
                        signature.push(5 + u8::from(blank));
                    } else if !blank {
                        if let Some(last) = signature.last_mut() {
                            *last = 5;
                        }
                    }
                }
                Token::Comment(_) | Token::Declaration(_) => {}
            }
            after_text = text;
        }
        Shape {
            tags,
            marks,
            styles,
            signature,
        }
    }

    #[cfg(test)]
    pub(super) fn of_html(html: &'a str, split: &Split) -> Shape<'a> {
        Shape::of(&Scanner::new(html).collect::<Vec<_>>(), split)
    }
}

/// Writes `bytes` after their length (LEB128: one byte below 128).
pub(super) fn push_piece(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut len = bytes.len();
    while len >= 0x80 {
        out.push((len as u8 & 0x7f) | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out.extend_from_slice(bytes);
}

/// Writes `s` lowercased, length first. Names are a few bytes: a loop beats a copy
/// and a second pass.
pub(super) fn push_lower(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    if bytes.len() >= 0x80 {
        push_piece(out, bytes);
        let start = out.len() - s.len();
        out[start..].make_ascii_lowercase();
        return;
    }
    out.reserve(bytes.len() + 1);
    out.push(bytes.len() as u8);
    out.extend(bytes.iter().map(u8::to_ascii_lowercase));
}

/// Whether `text` is all white space (`str::trim` of it is empty). Text between tags is
/// mostly indentation: test bytes, and chars only past the first non-ASCII byte.
fn is_blank(text: &str) -> bool {
    for (at, &b) in text.as_bytes().iter().enumerate() {
        match b {
            b'\t'..=b'\r' | b' ' => {}
            0x80.. => return text[at..].trim().is_empty(),
            _ => return false,
        }
    }
    true
}

/// Runs css-inline once on `html` with every start tag marked, and reads back the style
/// each marked element ends up with.
pub(super) fn make_plan(html: &str, split: &Split, shape: &Shape, file: &Path) -> Result<Plan> {
    let mut marked = String::with_capacity(html.len() + shape.tags.len() * 24);
    let mut copied = 0;
    for (index, (range, name_len)) in shape.tags.iter().enumerate() {
        let at = range.start + 1 + name_len;
        marked.push_str(&html[copied..at]);
        marked.push_str(&format!(" {MARKER}=\"{index}\""));
        copied = at;
    }
    marked.push_str(&html[copied..]);
    let output = css_inline_direct(&marked, &split.inline, file)?;
    let mut styles: Vec<Option<Box<str>>> = vec![None; shape.tags.len()];
    let mut seen = vec![false; shape.tags.len()];
    for (token, _) in Scanner::new(&output) {
        let Token::Start { attrs, .. } = token else {
            continue;
        };
        let mut index = None;
        let mut style = None;
        for (name, value) in html::attributes(attrs) {
            if name == MARKER {
                index = value.parse::<usize>().ok();
            } else if name.eq_ignore_ascii_case("style") {
                style = Some(value);
            }
        }
        match index {
            Some(i) if i < seen.len() && !seen[i] => {
                seen[i] = true;
                styles[i] = style.map(Box::from);
            }
            // The parser made this element, or merged two into one: positions no longer
            // map one to one, so this shape is inlined the slow way every time.
            Some(_) => return Ok(Plan::Direct),
            None if style.is_some() => return Ok(Plan::Direct),
            None => {}
        }
    }
    if seen.iter().any(|s| !s) {
        return Ok(Plan::Direct);
    }
    let hidden = styles
        .iter()
        .map(|style| style.as_deref().is_some_and(text::hides))
        .collect();
    Ok(Plan::Styles { styles, hidden })
}

/// Where a new attribute goes in the tag at `range`: before its `>`, or its `/>`.
pub(super) fn attrs_end(html: &str, range: &Range<usize>) -> usize {
    let tag = &html[range.clone()];
    let Some(body) = tag.strip_suffix('>') else {
        return range.end;
    };
    match body.strip_suffix('/') {
        Some(before)
            if before.ends_with(|c: char| c.is_ascii_whitespace() || c == '"' || c == '\'') =>
        {
            range.start + before.len()
        }
        _ => range.start + body.len(),
    }
}

/// Writes the planned styles into `html`, replacing any `style` attribute already there.
/// The result has room for `more` bytes besides, which the caller adds next.
pub(super) fn apply(html: &str, shape: &Shape, styles: &[Option<Box<str>>], more: usize) -> String {
    let extra: usize = styles.iter().flatten().map(|s| s.len() + 9).sum();
    let mut out = String::with_capacity(html.len() + extra + more);
    let mut copied = 0;
    for (((range, name_len), at), style) in shape.tags.iter().zip(&shape.styles).zip(styles) {
        let Some(style) = style else { continue };
        let attrs_start = range.start + 1 + name_len;
        // The attributes as the shape read them, without the tag's `>`: an unquoted
        // value that ends the tag keeps its `>`.
        match at {
            Some(span) => {
                out.push_str(&html[copied..attrs_start + span.start]);
                copied = attrs_start + span.end;
            }
            None => {
                let at = attrs_end(html, range);
                out.push_str(&html[copied..at]);
                copied = at;
                out.push(' ');
            }
        }
        out.push_str("style=\"");
        out.push_str(style);
        out.push('"');
    }
    out.push_str(&html[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_is_what_trim_leaves_empty() {
        for text in [
            "",
            " ",
            "\n\t \r\x0c",
            "\x0b",
            " \u{a0} ",
            "\u{3000}",
            " x ",
            "\u{a0}x",
            "\x1f",
            "é",
        ] {
            assert_eq!(is_blank(text), text.trim().is_empty(), "{text:?}");
        }
    }

    /// The planned style takes the place of the one written, whatever its quoting; an
    /// unquoted value that ends the tag once took the tag's `>` with it.
    #[test]
    fn the_planned_style_replaces_the_written_one_and_keeps_the_tag_whole() {
        let split = super::super::rules::split_rules("p { color: red }");
        for (html, want) in [
            ("<p style=color:green>x</p>", "<p style=\"c\">x</p>"),
            (
                "<p id=a style=color:green/>x</p>",
                "<p id=a style=\"c\">x</p>",
            ),
            ("<p style='a' id=b>x</p>", "<p style=\"c\" id=b>x</p>"),
            (
                "<p style=\"a\" style=b>x</p>",
                "<p style=\"c\" style=b>x</p>",
            ),
            ("<p id=b>x</p>", "<p id=b style=\"c\">x</p>"),
            ("<p id=b/>x</p>", "<p id=b/ style=\"c\">x</p>"),
            ("<p id=\"b\"/>x</p>", "<p id=\"b\" style=\"c\"/>x</p>"),
        ] {
            let shape = Shape::of_html(html, &split);
            assert_eq!(apply(html, &shape, &[Some("c".into())], 0), want, "{html}");
        }
    }
}
