//! Gathering a rendered document's CSS: its `<style>` blocks and the local stylesheets
//! it `<link>`s, in document order, taken out of the HTML.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, ErrorKind, Result};
use crate::html::{self, Scanner, Token};

use super::Stylesheets;

impl Stylesheets {
    /// Takes the inlinable `<style>` and local `<link>` CSS out of `html`, in order.
    pub(super) fn gather(&self, html: &str, file: &Path) -> Result<Gathered> {
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

pub(super) struct Gathered {
    pub(super) html: String,
    pub(super) css: String,
    pub(super) kept_blocks: Vec<String>,
}

pub(super) fn push_css(css: &mut String, sheet: &str, media: Option<&str>) {
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

pub(super) fn is_remote(href: &str) -> bool {
    href.starts_with("//")
        || href.split_once(':').is_some_and(|(scheme, _)| {
            !scheme.is_empty()
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.')
        })
}

/// A `<link href>` as a path under the templates folder, which is its root.
pub(super) fn local_path(href: &str) -> Result<&str> {
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
pub(super) fn stylesheet_href(attrs: &str) -> Option<String> {
    let rel = html::attr(attrs, "rel")?;
    if !rel
        .split_ascii_whitespace()
        .any(|w| w.eq_ignore_ascii_case("stylesheet"))
    {
        return None;
    }
    html::attr(attrs, "href").map(|h| h.trim().to_string())
}
