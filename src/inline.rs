//! CSS inlining, with the cascade a browser would apply.
//!
//! css-inline 0.23 does the selector matching, but left to itself it drops `:hover`
//! rules, drops `data-css-inline="ignore"` blocks instead of keeping them, and applies
//! `<link>`ed sheets after every `<style>` block so a linked rule beats a later,
//! equally specific `<style>` rule. So missive gathers the CSS itself, in document order,
//! splits off what cannot be inlined (at-rules, dynamic pseudo-classes, pseudo-elements)
//! into a `<style>` kept in the head, and hands css-inline only the rest, as one sheet.
//!
//! Linked stylesheets come from the template set in memory: nothing is read from disk
//! at render time, and remote stylesheets are never fetched (their `<link>` stays).

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, RwLock};

use crate::error::{Error, ErrorKind, Result};
use crate::html::{self, Scanner, Token};
use crate::text;

/// How many distinct gathered stylesheets the split cache keeps; templates that print
/// data into `<style>` would otherwise grow it without bound.
const SPLIT_CACHE_LIMIT: usize = 256;

/// How many inlining plans are kept: one per distinct (stylesheet, document shape), so a
/// loop rendering 1 to 50 rows makes up to 50.
const PLAN_CACHE_LIMIT: usize = 4096;

/// Attributes whose values selectors commonly depend on, whatever the stylesheet says.
const KEY_ATTRIBUTES: &[&str] = &["class", "id", "style", "lang", "dir", "type", "xml:lang"];

/// Marks each start tag while a plan is made, to find it again in css-inline's output.
const MARKER: &str = "data-missive-node";

/// The stylesheets of a template set, and the inliner that uses them.
///
/// Running css-inline costs a full HTML parse and selector matching per message. Which
/// style each element ends up with depends only on the CSS and the document's shape —
/// tags, nesting, classes, ids, the attributes selectors name — never on the text or the
/// URLs that differ between recipients. So the styles are computed once per shape (a
/// [`Plan`]) and written into each later document of that shape directly.
pub(crate) struct Stylesheets {
    files: HashMap<String, Arc<str>>,
    splits: RwLock<HashMap<String, Arc<Split>>>,
    /// Plans by the hash of the inlinable CSS they were made for, then by the exact
    /// shape. A hit compares the CSS and the whole shape, not hashes of them: a
    /// collision would otherwise write another document's styles into this one.
    plans: RwLock<HashMap<u64, CssPlans>>,
}

/// The plans made for one inlinable stylesheet.
#[derive(Debug)]
struct CssPlans {
    css: String,
    by_shape: HashMap<Box<[u8]>, Arc<Plan>>,
}

/// Gathered CSS, cut into what goes into `style=""` and what stays in the head.
#[derive(Debug, Default, PartialEq, Eq)]
struct Split {
    inline: String,
    keep: String,
    /// Attribute names the inlinable selectors test, lower-cased.
    selector_attributes: Vec<String>,
    /// Hash of `inline`, computed once so plan keys need not hash the CSS per message.
    inline_hash: u64,
}

/// The final `style` of every start tag of one document shape, by position.
#[derive(Debug)]
enum Plan {
    Styles {
        styles: Vec<Option<Box<str>>>,
        /// Whether each element's planned style hides it, for the text part.
        hidden: Vec<bool>,
    },
    /// The parser adds or merges styled elements for this shape: run css-inline each time.
    Direct,
}

impl Stylesheets {
    pub fn new(files: HashMap<String, Arc<str>>) -> Stylesheets {
        Stylesheets {
            files,
            splits: RwLock::new(HashMap::new()),
            plans: RwLock::new(HashMap::new()),
        }
    }

    /// The stylesheet files, by path under the templates folder.
    pub fn files(&self) -> &HashMap<String, Arc<str>> {
        &self.files
    }

    /// Inlines the CSS of `html`, rendered from `file`. (Rendering wants the text part
    /// too and calls [`Self::inline_and_text`].)
    #[cfg(any(test, feature = "bench-internals"))]
    pub fn inline(&self, html: &str, file: &Path) -> Result<String> {
        Ok(self.inline_and_text(html, file, false)?.0)
    }

    /// Inlines the CSS of `html` and, if `want_text`, makes the text part of the
    /// result ([`text::from_html`] of it). With a plan, the text comes from the smaller
    /// document before inlining, each element seen with the style the plan gives it:
    /// the same text, without reading every inlined `style` again.
    pub fn inline_and_text(
        &self,
        html: &str,
        file: &Path,
        want_text: bool,
    ) -> Result<(String, Option<String>)> {
        let mut gathered = self.gather(html, file)?;
        let split = self.split(&gathered.css);
        let head = head(&split, &gathered);
        let (inlined, text) = if split.inline.is_empty() {
            let text = want_text.then(|| text::from_html(&gathered.html));
            (std::mem::take(&mut gathered.html), text)
        } else {
            let shape = Shape::of(&gathered.html, &split);
            let plan = self.plan(&gathered.html, &split, &shape, file)?;
            match &*plan {
                Plan::Styles { styles, hidden } => {
                    let text = want_text.then(|| text::from_planned_html(&gathered.html, hidden));
                    (apply(&gathered.html, &shape, styles), text)
                }
                Plan::Direct => {
                    let inlined = css_inline_direct(&gathered.html, &split.inline, file)?;
                    let text = want_text.then(|| text::from_html(&inlined));
                    (inlined, text)
                }
            }
        };
        Ok((insert_into_head(inlined, &head), text))
    }

    /// The straightforward pipeline, without plans: what [`Self::inline`] must equal.
    #[cfg(test)]
    pub(crate) fn inline_direct(&self, html: &str, file: &Path) -> Result<String> {
        let gathered = self.gather(html, file)?;
        let split = self.split(&gathered.css);
        let inlined = css_inline_direct(&gathered.html, &split.inline, file)?;
        Ok(insert_into_head(inlined, &head(&split, &gathered)))
    }

    fn plan(&self, html: &str, split: &Split, shape: &Shape, file: &Path) -> Result<Arc<Plan>> {
        if let Ok(plans) = self.plans.read() {
            let hit = plans
                .get(&split.inline_hash)
                .filter(|entry| entry.css == split.inline)
                .and_then(|entry| entry.by_shape.get(shape.signature.as_slice()));
            if let Some(plan) = hit {
                return Ok(plan.clone());
            }
        }
        let plan = Arc::new(make_plan(html, split, shape, file)?);
        if let Ok(mut plans) = self.plans.write() {
            if plans.values().map(|e| e.by_shape.len()).sum::<usize>() >= PLAN_CACHE_LIMIT {
                plans.clear();
            }
            let entry = plans.entry(split.inline_hash).or_insert_with(|| CssPlans {
                css: split.inline.clone(),
                by_shape: HashMap::new(),
            });
            if entry.css != split.inline {
                // Another stylesheet with the same hash: the newer one takes the slot.
                entry.css.clone_from(&split.inline);
                entry.by_shape.clear();
            }
            entry
                .by_shape
                .insert(shape.signature.clone().into_boxed_slice(), plan.clone());
        }
        Ok(plan)
    }

    fn split(&self, css: &str) -> Arc<Split> {
        if let Some(split) = self.splits.read().ok().and_then(|m| m.get(css).cloned()) {
            return split;
        }
        let split = Arc::new(split_rules(css));
        if let Ok(mut cache) = self.splits.write() {
            if cache.len() >= SPLIT_CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(css.to_string(), split.clone());
        }
        split
    }

    /// Takes the inlinable `<style>` and local `<link>` CSS out of `html`, in order.
    fn gather(&self, html: &str, file: &Path) -> Result<Gathered> {
        let mut out = String::with_capacity(html.len());
        let mut css = String::new();
        let mut kept_blocks = Vec::new();
        let mut copied = 0;
        let mut tokens = Scanner::new(html);
        while let Some((token, range)) = tokens.next() {
            let Token::Start { name, attrs, .. } = token else {
                continue;
            };
            if name.eq_ignore_ascii_case("style") {
                let mut end = range.end;
                let mut content = "";
                for (token, r) in tokens.by_ref() {
                    end = r.end;
                    match token {
                        Token::Text(text) => content = text,
                        _ => break,
                    }
                }
                out.push_str(&html[copied..range.start]);
                copied = end;
                if html::attr(attrs, "data-css-inline").as_deref() == Some("ignore") {
                    kept_blocks.push(html[range.start..end].to_string());
                } else {
                    push_css(&mut css, content, html::attr(attrs, "media").as_deref());
                }
            } else if name.eq_ignore_ascii_case("link") {
                let Some(href) = stylesheet_href(attrs).filter(|h| !is_remote(h)) else {
                    continue;
                };
                let sheet = self.resolve(&href).map_err(|e| e.or_at(file, 1))?;
                push_css(&mut css, sheet, html::attr(attrs, "media").as_deref());
                out.push_str(&html[copied..range.start]);
                copied = range.end;
            }
        }
        out.push_str(&html[copied..]);
        Ok(Gathered {
            html: out,
            css,
            kept_blocks,
        })
    }

    fn resolve(&self, href: &str) -> Result<&str> {
        let rel = local_path(href)?;
        self.files.get(rel).map(|s| &**s).ok_or_else(|| {
            Error::new(
                ErrorKind::Render,
                format!("stylesheet `{href}` is not in the templates folder"),
            )
        })
    }
}

/// The head `<style>` of rules that cannot be inlined, then the ignored blocks.
fn head(split: &Split, gathered: &Gathered) -> String {
    let mut head = String::new();
    if !split.keep.is_empty() {
        head.push_str("<style>");
        head.push_str(&split.keep);
        head.push_str("</style>");
    }
    for block in &gathered.kept_blocks {
        head.push_str(block);
    }
    head
}

fn css_inline_direct(html: &str, css: &str, file: &Path) -> Result<String> {
    if let Some((at, name)) = html::too_deep(html, html::MAX_DEPTH) {
        let line = html[..at].matches('\n').count() + 1;
        return Err(Error::new(
            ErrorKind::Render,
            format!(
                "the rendered HTML nests elements more than {} deep (the `<{name}>` on line \
                 {line} of the rendered HTML); mail clients and browsers stop nesting long \
                 before, and missive refuses such a document rather than take seconds over it",
                html::MAX_DEPTH
            ),
        )
        .at(file, 1, 1));
    }
    let options = css_inline::InlineOptions::default()
        .load_remote_stylesheets(false)
        .keep_link_tags(true)
        .keep_style_tags(false)
        .extra_css(Some(Cow::Borrowed(css)));
    css_inline::CSSInliner::new(options)
        .inline(html)
        .map_err(|e| {
            Error::new(ErrorKind::Render, format!("CSS inlining failed: {e}")).at(file, 1, 1)
        })
}

/// A document's start tags and everything selector matching can see of it.
struct Shape {
    /// Byte range of each start tag, and of its name within it.
    tags: Vec<(Range<usize>, usize)>,
    /// Tag names, the attributes present and the values selectors may test, in order,
    /// each piece length-prefixed so that no two shapes write the same bytes.
    signature: Vec<u8>,
}

impl Shape {
    fn of(html: &str, split: &Split) -> Shape {
        let mut signature = Vec::with_capacity(html.len() / 8);
        let mut tags = Vec::new();
        for (token, range) in Scanner::new(html) {
            match token {
                Token::Start { name, attrs, .. } => {
                    tags.push((range, name.len()));
                    signature.push(0);
                    push_lower(&mut signature, name);
                    for (attr, value) in html::attributes(attrs) {
                        let keyed = KEY_ATTRIBUTES.iter().any(|k| k.eq_ignore_ascii_case(attr))
                            || split
                                .selector_attributes
                                .iter()
                                .any(|k| k.eq_ignore_ascii_case(attr));
                        signature.push(if keyed { 3 } else { 4 });
                        push_lower(&mut signature, attr);
                        if keyed {
                            push_piece(&mut signature, value.as_bytes());
                        }
                    }
                }
                Token::End { name } => {
                    signature.push(1);
                    push_lower(&mut signature, name);
                }
                // Text never changes which selectors match, but whether there is any can
                // change the tree the parser builds (and `:empty`).
                Token::Text(text) => signature.push(5 + u8::from(text.trim().is_empty())),
                Token::Comment(_) | Token::Declaration(_) => {}
            }
        }
        Shape { tags, signature }
    }
}

/// Writes `bytes` after their length (LEB128: one byte below 128).
fn push_piece(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut len = bytes.len();
    while len >= 0x80 {
        out.push((len as u8 & 0x7f) | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out.extend_from_slice(bytes);
}

/// Writes `s` lowercased, length first: names are nearly always lowercase already.
fn push_lower(out: &mut Vec<u8>, s: &str) {
    push_piece(out, s.as_bytes());
    let start = out.len() - s.len();
    out[start..].make_ascii_lowercase();
}

/// Runs css-inline once on `html` with every start tag marked, and reads back the style
/// each marked element ends up with.
fn make_plan(html: &str, split: &Split, shape: &Shape, file: &Path) -> Result<Plan> {
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
fn attrs_end(html: &str, range: &Range<usize>) -> usize {
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
fn apply(html: &str, shape: &Shape, styles: &[Option<Box<str>>]) -> String {
    let extra: usize = styles.iter().flatten().map(|s| s.len() + 9).sum();
    let mut out = String::with_capacity(html.len() + extra);
    let mut copied = 0;
    for ((range, name_len), style) in shape.tags.iter().zip(styles) {
        let Some(style) = style else { continue };
        let attrs_start = range.start + 1 + name_len;
        let tag = &html[attrs_start..range.end];
        let existing = html::attribute_spans(tag).find(|(n, _, _)| n.eq_ignore_ascii_case("style"));
        match existing {
            Some((_, _, span)) => {
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

struct Gathered {
    html: String,
    css: String,
    kept_blocks: Vec<String>,
}

fn push_css(css: &mut String, sheet: &str, media: Option<&str>) {
    match media
        .map(str::trim)
        .filter(|m| !m.is_empty() && *m != "all")
    {
        Some(media) => {
            css.push_str(&format!("@media {media} {{\n{sheet}\n}}\n"));
        }
        None => {
            css.push_str(sheet);
            css.push('\n');
        }
    }
}

fn is_remote(href: &str) -> bool {
    href.starts_with("//")
        || href.split_once(':').is_some_and(|(scheme, _)| {
            !scheme.is_empty()
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.')
        })
}

/// A `<link href>` as a path under the templates folder, which is its root.
fn local_path(href: &str) -> Result<&str> {
    let path = href.split(['?', '#']).next().unwrap_or(href);
    let path = path.trim_start_matches("./").trim_start_matches('/');
    if path.split('/').any(|p| p == "..") {
        return Err(Error::new(
            ErrorKind::Template,
            format!("stylesheet `{href}` is outside the templates folder and is never read"),
        ));
    }
    Ok(path)
}

/// Fails on a literal `<link rel="stylesheet">` to a local file the set does not have,
/// so `missive check` catches it before anything renders. Files in `broken` are there
/// but failed to load, and have errors of their own.
pub(crate) fn check_static_links(
    source: &str,
    file: &Path,
    files: &HashMap<String, Arc<str>>,
    broken: &std::collections::HashSet<String>,
) -> Result<()> {
    for (token, range) in Scanner::new(source) {
        let Token::Start { name, attrs, .. } = token else {
            continue;
        };
        if !name.eq_ignore_ascii_case("link") {
            continue;
        }
        let Some(href) = stylesheet_href(attrs).filter(|h| !is_remote(h)) else {
            continue;
        };
        if href.contains("{{") || href.contains("{%") {
            continue;
        }
        let line = source[..range.start].matches('\n').count() + 1;
        let rel = local_path(&href).map_err(|e| e.at(file, line, 1))?;
        if !files.contains_key(rel) && !broken.contains(rel) {
            return Err(Error::new(
                ErrorKind::Template,
                format!("stylesheet `{href}` is not in the templates folder"),
            )
            .at(file, line, 1));
        }
    }
    Ok(())
}

/// The `href` of a `<link>` that is a stylesheet.
fn stylesheet_href(attrs: &str) -> Option<String> {
    let rel = html::attr(attrs, "rel")?;
    if !rel
        .split_ascii_whitespace()
        .any(|w| w.eq_ignore_ascii_case("stylesheet"))
    {
        return None;
    }
    html::attr(attrs, "href").map(|h| h.trim().to_string())
}

fn insert_into_head(mut html: String, head: &str) -> String {
    if head.is_empty() {
        return html;
    }
    match html::find_ci(&html, "</head") {
        Some(at) => html.insert_str(at, head),
        None => html.insert_str(0, head),
    }
    html
}

/// Pseudo-classes and -elements that describe states or generated content no `style=""`
/// can express; rules using them stay in the head.
const DYNAMIC_PSEUDOS: &[&str] = &[
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
fn split_rules(css: &str) -> Split {
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
fn selector_attributes(css: &str) -> Vec<String> {
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

fn skip_space_and_comments(mut s: &str) -> &str {
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
fn at_rule_end(s: &str) -> usize {
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
fn block_end(s: &str) -> Option<usize> {
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

fn find_outside_strings(s: &str, target: char) -> Option<usize> {
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
fn split_top_level(s: &str, sep: char) -> Vec<&str> {
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

/// `html` parsed and serialized again by html5ever: equal for equal documents.
#[cfg(test)]
pub(crate) fn normalize(html: &str) -> String {
    let options = css_inline::InlineOptions::default()
        .inline_style_tags(false)
        .keep_style_tags(true)
        .keep_link_tags(true)
        .load_remote_stylesheets(false);
    let serialized = css_inline::CSSInliner::new(options)
        .inline(html)
        .expect("normalizes")
        .replace(";\"", "\"");
    // Attribute order means nothing in HTML, and the serializer does not keep it.
    let mut out = String::with_capacity(serialized.len());
    for (token, range) in Scanner::new(&serialized) {
        match token {
            Token::Start { name, attrs, .. } => {
                let mut pairs: Vec<_> = html::attributes(attrs).collect();
                pairs.sort();
                out.push('<');
                out.push_str(name);
                for (k, v) in pairs {
                    out.push_str(&format!(" {k}=\"{v}\""));
                }
                out.push('>');
            }
            _ => out.push_str(&serialized[range]),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same_as_direct(s: &Stylesheets, html: &str) {
        let direct = s.inline_direct(html, Path::new("t.html")).unwrap();
        for round in 0..2 {
            let planned = s.inline(html, Path::new("t.html")).unwrap();
            assert_eq!(normalize(&planned), normalize(&direct), "round {round}");
        }
    }

    #[test]
    fn plans_match_css_inline_on_awkward_documents() {
        let s = sheets(&[(
            "a.css",
            "td { padding: 1px } tbody td { color: red } tr:nth-child(even) td { background: #eee }\n\
             p:empty { display: none } a[x-apple-data-detectors] { color: inherit } .x.y { margin: 0 }\n\
             li:first-child { font-weight: bold } body { margin: 0 }",
        )]);
        let docs = [
            "<table><tr><td>a</td></tr><tr><td>b</td></tr><tr><td>c</td></tr></table>",
            "<html><head><link rel=stylesheet href=a.css></head><body><p></p><p>x</p><a x-apple-data-detectors href=x>y</a></body></html>",
            "<link rel=stylesheet href=a.css><div class='x y' style='color: blue'>q</div><ul><li>1<li>2</ul>",
            "<link rel=stylesheet href=a.css><table><tbody><tr><td style=\"color: green\">a</td></tr></tbody></table><br/><img src=x />",
            "<link rel=stylesheet href=a.css>text before html<p>para<p>unclosed<div><table><tr><td>x</td></tr></table></div>",
        ];
        for doc in docs {
            let doc = if doc.contains("a.css") {
                doc.to_string()
            } else {
                format!("<link rel=stylesheet href=a.css>{doc}")
            };
            same_as_direct(&s, &doc);
        }
    }

    #[test]
    fn plans_are_shared_by_documents_of_one_shape() {
        let s = sheets(&[("a.css", "p { color: red } .big { font-size: 20px }")]);
        let doc = |name: &str, class: &str| {
            format!("<link rel=stylesheet href=a.css><p class=\"{class}\">Hello {name}</p><a href=\"https://x.test/{name}\">go</a>")
        };
        s.inline(&doc("Ada", "big"), Path::new("t")).unwrap();
        s.inline(&doc("Grace", "big"), Path::new("t")).unwrap();
        assert_eq!(plan_count(&s), 1, "text and URLs do not make new shapes");
        let small = s.inline(&doc("Linus", "small"), Path::new("t")).unwrap();
        assert_eq!(plan_count(&s), 2, "a class does");
        assert!(
            small.contains("<p class=\"small\" style=\"color: red;\">Hello Linus</p>"),
            "{small}"
        );
    }

    #[test]
    fn the_text_of_a_planned_document_sees_the_styles_it_was_given() {
        let s = sheets(&[(
            "a.css",
            ".pre { display: none } p { color: red } .show { display: block }",
        )]);
        let doc = "<html><head><link rel=stylesheet href=a.css></head><body>\
                   <div class=\"pre\">preheader</div><p style=\"display:none\">own style</p>\
                   <p>shown</p><div class=\"pre show\">overridden</div></body></html>";
        for _ in 0..2 {
            let (html, text) = s.inline_and_text(doc, Path::new("t"), true).unwrap();
            assert!(matches!(
                s.plans
                    .read()
                    .unwrap()
                    .values()
                    .flat_map(|e| e.by_shape.values())
                    .next()
                    .map(|p| &**p),
                Some(Plan::Styles { .. })
            ));
            assert_eq!(text.as_deref(), Some("shown\n\noverridden\n"));
            assert_eq!(text.unwrap(), crate::text::from_html(&html));
        }
    }

    fn plan_count(s: &Stylesheets) -> usize {
        s.plans
            .read()
            .unwrap()
            .values()
            .map(|e| e.by_shape.len())
            .sum()
    }

    #[test]
    fn a_hash_collision_never_reuses_another_stylesheets_plan() {
        let s = sheets(&[]);
        let html = "<p class=\"a\">x</p>";
        let split = |css: &str| {
            let mut split = split_rules(css);
            split.inline_hash = 42; // as if both stylesheets hashed alike
            split
        };
        let (red, blue) = (split(".a { color: red }"), split(".a { color: blue }"));
        let styles = |split: &Split| {
            let shape = Shape::of(html, split);
            match &*s.plan(html, split, &shape, Path::new("t")).unwrap() {
                Plan::Styles { styles, .. } => styles.clone(),
                Plan::Direct => panic!("a plain paragraph is planned"),
            }
        };
        assert_eq!(styles(&red), [Some("color: red;".into())]);
        assert_eq!(styles(&blue), [Some("color: blue;".into())]);
        assert_eq!(styles(&red), [Some("color: red;".into())]);
    }

    #[test]
    fn shapes_differ_whenever_a_selector_could_tell_them_apart() {
        let split = split_rules("[data-x] { color: red } .a { color: blue }");
        let sig = |html: &str| Shape::of(html, &split).signature;
        // Pieces are length-prefixed: moving bytes between a name and a value, or
        // between two values, never gives the same signature.
        assert_ne!(
            sig("<p class=\"ab\" id=\"c\">"),
            sig("<p class=\"a\" id=\"bc\">")
        );
        assert_ne!(sig("<p data-x=\"1\">"), sig("<p data-x=\"2\">"));
        assert_ne!(sig("<p title=1>"), sig("<p>"));
        assert_eq!(
            sig("<p title=1>"),
            sig("<p title=2>"),
            "untested values do not count"
        );
        assert_eq!(sig("<P CLASS=\"a\">"), sig("<p class=\"a\">"));
    }

    fn sheets(files: &[(&str, &str)]) -> Stylesheets {
        Stylesheets::new(
            files
                .iter()
                .map(|(k, v)| (k.to_string(), Arc::from(*v)))
                .collect(),
        )
    }

    fn inline(s: &Stylesheets, html: &str) -> String {
        s.inline(html, Path::new("t.html")).unwrap()
    }

    #[test]
    fn splits_rules_by_what_can_be_inlined() {
        let split = split_rules(
            "@charset \"utf-8\";\n/* c */ p, a:hover { color: red }\n@media (max-width: 600px) { p { color: blue } }\n\
             @font-face { font-family: X; src: url('x;{.woff') }\ntd:first-child { padding: 0 }\na::after { content: '}' }",
        );
        assert_eq!(
            split.inline,
            "p{ color: red }\ntd:first-child{ padding: 0 }\n"
        );
        assert_eq!(
            split.keep,
            "a:hover{ color: red }\n@media (max-width: 600px) { p { color: blue } }\n\
             @font-face { font-family: X; src: url('x;{.woff') }\na::after{ content: '}' }\n"
        );
    }

    #[test]
    fn later_style_beats_linked_sheet_of_equal_specificity() {
        let s = sheets(&[("styles/a.css", "p { color: red; margin: 0 }")]);
        let html = inline(
            &s,
            r#"<html><head><link rel="stylesheet" href="styles/a.css"><style>p { color: blue }</style></head><body><p>x</p></body></html>"#,
        );
        assert!(
            html.contains(r#"<p style="color: blue;margin: 0;">"#),
            "{html}"
        );
        assert!(!html.contains("<link"), "{html}");
    }

    #[test]
    fn own_style_attribute_wins() {
        let s = sheets(&[]);
        let html = inline(
            &s,
            r#"<html><head><style>p { color: blue }</style></head><body><p style="color: green">x</p></body></html>"#,
        );
        assert!(html.contains("color: green"), "{html}");
        assert!(!html.contains("color: blue"), "{html}");
    }

    #[test]
    fn hover_media_and_font_face_stay_in_head() {
        let s = sheets(&[("e.css", "a { color: red }\na:hover { color: blue }\n@media (prefers-color-scheme: dark) { a { color: white } }\n@font-face { font-family: F; src: url(f.woff) }")]);
        let html = inline(
            &s,
            r#"<html><head><link rel="stylesheet" href="/e.css"></head><body><a href="https://x.test">x</a></body></html>"#,
        );
        let head = &html[..html.find("</head>").unwrap()];
        assert!(head.contains("a:hover{ color: blue }"), "{html}");
        assert!(
            head.contains("@media (prefers-color-scheme: dark)"),
            "{html}"
        );
        assert!(head.contains("@font-face"), "{html}");
        assert!(
            html.contains(r#"<a href="https://x.test" style="color: red;">"#),
            "{html}"
        );
    }

    #[test]
    fn ignored_blocks_stay_untouched() {
        let s = sheets(&[]);
        let block = r#"<style data-css-inline="ignore">p { color: red }</style>"#;
        let html = inline(
            &s,
            &format!("<html><head>{block}</head><body><p>x</p></body></html>"),
        );
        assert!(html.contains(block), "{html}");
        assert!(html.contains("<p>x</p>"), "{html}");
    }

    #[test]
    fn remote_links_and_conditional_comments_pass_through() {
        let s = sheets(&[]);
        let html = inline(
            &s,
            r#"<html><head><link rel="stylesheet" href="https://fonts.example.com/css"><!--[if mso]><style>td{font-family:Arial}</style><![endif]--></head><body><p>x</p></body></html>"#,
        );
        assert!(
            html.contains(r#"<link href="https://fonts.example.com/css" rel="stylesheet">"#)
                || html.contains(r#"<link rel="stylesheet" href="https://fonts.example.com/css">"#),
            "{html}"
        );
        assert!(
            html.contains("<!--[if mso]><style>td{font-family:Arial}</style><![endif]-->"),
            "{html}"
        );
    }

    #[test]
    fn missing_and_escaping_links_are_errors() {
        let s = sheets(&[]);
        let err = s
            .inline(
                r#"<link rel="stylesheet" href="nope.css">"#,
                Path::new("t.html"),
            )
            .unwrap_err();
        assert!(
            err.message().contains("not in the templates folder"),
            "{err}"
        );
        assert_eq!(err.location().unwrap().file, Path::new("t.html"));
        let err = s
            .inline(
                r#"<link rel="stylesheet" href="../secret.css">"#,
                Path::new("t.html"),
            )
            .unwrap_err();
        assert!(
            err.message().contains("outside the templates folder"),
            "{err}"
        );
    }

    #[test]
    fn static_links_are_checked_with_their_line() {
        let files = HashMap::from([("a.css".to_string(), Arc::from("p{}"))]);
        assert!(check_static_links(
            "<link rel=\"stylesheet\" href=\"a.css\">",
            Path::new("t"),
            &files,
            &Default::default()
        )
        .is_ok());
        let err = check_static_links(
            "x\n\n<link rel=\"stylesheet\" href=\"b.css\">",
            Path::new("t"),
            &files,
            &Default::default(),
        )
        .unwrap_err();
        assert_eq!(err.location().unwrap().line, 3);
    }
}
