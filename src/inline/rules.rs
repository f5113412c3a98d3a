//! Cutting gathered CSS into the rules css-inline can put into `style=""` and those
//! that stay in a `<style>` in the head (at-rules, dynamic pseudo-classes,
//! pseudo-elements), in order.

use crate::html;

/// Gathered CSS, cut into what goes into `style=""` and what stays in the head.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Split {
    pub(super) inline: String,
    pub(super) keep: String,
    /// Attribute names the inlinable selectors test, lower-cased.
    pub(super) selector_attributes: Vec<String>,
    /// Hash of `inline`, computed once so plan keys need not hash the CSS per message.
    pub(super) inline_hash: u64,
}

/// Pseudo-classes and -elements that describe states or generated content no `style=""`
/// can express; rules using them stay in the head.
pub(super) const DYNAMIC_PSEUDOS: &[&str] = &[
    ":hover",
    ":active",
    ":focus",
    ":visited",
    ":link",
    ":target",
    ":checked",
    ":before",
    ":after",
    ":placeholder",
    ":selection",
    ":first-line",
    ":first-letter",
    ":marker",
    ":-webkit-",
    ":-moz-",
    ":-ms-",
];

/// Cuts a stylesheet into inlinable rules and rules to keep in the head, in order.
pub(super) fn split_rules(css: &str) -> Split {
    let mut split = Split::default();
    let mut rest = css;
    loop {
        rest = skip_space_and_comments(rest);
        if rest.is_empty() {
            break;
        }
        if rest.starts_with('@') {
            let end = at_rule_end(rest);
            let rule = &rest[..end];
            if !html::starts_with_ci(rule, "@charset") {
                split.keep.push_str(rule.trim());
                split.keep.push('\n');
            }
            rest = &rest[end..];
            continue;
        }
        let Some(open) = find_outside_strings(rest, '{') else {
            break;
        };
        let close = block_end(&rest[open..]).map_or(rest.len(), |e| open + e);
        let prelude = rest[..open].trim();
        let block = &rest[open..close];
        let (mut inline, mut keep) = (Vec::new(), Vec::new());
        for selector in split_top_level(prelude, ',') {
            let lower = selector.to_ascii_lowercase();
            if DYNAMIC_PSEUDOS.iter().any(|p| lower.contains(p)) {
                keep.push(selector.trim());
            } else {
                inline.push(selector.trim());
            }
        }
        for (list, out) in [(inline, &mut split.inline), (keep, &mut split.keep)] {
            if !list.is_empty() {
                out.push_str(&list.join(", "));
                out.push_str(block);
                out.push('\n');
            }
        }
        rest = &rest[close..];
    }
    split.selector_attributes = selector_attributes(&split.inline);
    split.inline_hash = {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        split.inline.hash(&mut hasher);
        hasher.finish()
    };
    split
}

/// Names inside `[...]` attribute selectors.
pub(super) fn selector_attributes(css: &str) -> Vec<String> {
    let mut names: Vec<String> = css
        .split('[')
        .skip(1)
        .map(|part| {
            part.trim_start()
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == ':'))
                .next()
                .unwrap_or("")
                .to_ascii_lowercase()
        })
        .filter(|n| !n.is_empty())
        .collect();
    names.sort();
    names.dedup();
    names
}

pub(super) fn skip_space_and_comments(mut s: &str) -> &str {
    loop {
        s = s.trim_start();
        if let Some(body) = s.strip_prefix("/*") {
            s = body.find("*/").map_or("", |e| &body[e + 2..]);
        } else if let Some(body) = s.strip_prefix("<!--") {
            s = body;
        } else if let Some(body) = s.strip_prefix("-->") {
            s = body;
        } else {
            return s;
        }
    }
}

/// End of an at-rule: its `;`, or the `}` closing its block.
pub(super) fn at_rule_end(s: &str) -> usize {
    let semicolon = find_outside_strings(s, ';');
    let brace = find_outside_strings(s, '{');
    match (semicolon, brace) {
        (Some(semi), Some(open)) if semi < open => semi + 1,
        (_, Some(open)) => block_end(&s[open..]).map_or(s.len(), |e| open + e),
        (Some(semi), None) => semi + 1,
        (None, None) => s.len(),
    }
}

/// Index just past the `}` matching the `{` that `s` starts with.
pub(super) fn block_end(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote = None;
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), '\\') => {
                chars.next();
            }
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '/') if s[i..].starts_with("/*") => {
                let end = s[i + 2..].find("*/").map_or(s.len(), |e| i + 2 + e + 2);
                while chars.peek().is_some_and(|(j, _)| *j < end) {
                    chars.next();
                }
            }
            (None, '{') => depth += 1,
            (None, '}') => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

pub(super) fn find_outside_strings(s: &str, target: char) -> Option<usize> {
    let mut quote = None;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, c) if c == target => return Some(i),
            _ => {}
        }
    }
    None
}

/// Splits on `sep` outside parentheses, brackets and strings.
pub(super) fn split_top_level(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut quote = None;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '(' | '[') => depth += 1,
            (None, ')' | ']') => depth -= 1,
            (None, c) if c == sep && depth == 0 => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts.into_iter().filter(|p| !p.trim().is_empty()).collect()
}
