//! Gathering a rendered document's CSS: its `<style>` blocks and the local stylesheets
//! it `<link>`s, in document order, taken out of the HTML.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, ErrorKind, Result};
use crate::html::{self, Scanner, Token};

use super::Stylesheets;

impl Stylesheets {
    /// Takes the inlinable `<style>` and local `<link>` CSS out of `html`, in order.
    pub(super) fn gather<'a>(&'a self, html: &'a str, file: &Path) -> Result<Gathered<'a>> {
        let mut out = String::with_capacity(html.len());
        let mut css = Vec::new();
        let mut kept_blocks = Vec::new();
        let mut copied = 0;
        let mut kept = Kept::for_html(html);
        let mut tokens = Scanner::new(html);
        while let Some((token, range)) = tokens.next() {
            let Token::Start { name, attrs, .. } = token else {
                kept.push(token, range, copied - out.len());
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
                kept.cut();
                if html::attr(attrs, "data-css-inline").as_deref() == Some("ignore") {
                    kept_blocks.push(html[range.start..end].to_string());
                } else {
                    css.push(Piece {
                        sheet: None,
                        css: content,
                        media: html::attr(attrs, "media"),
                    });
                }
            } else if name.eq_ignore_ascii_case("link") {
                let Some(href) = stylesheet_href(attrs).filter(|h| !is_remote(h)) else {
                    kept.push(token, range, copied - out.len());
                    continue;
                };
                let (path, sheet) = self.resolve(&href).map_err(|e| e.or_at(file, 1))?;
                css.push(Piece {
                    sheet: Some(path),
                    css: sheet,
                    media: html::attr(attrs, "media"),
                });
                out.push_str(&html[copied..range.start]);
                copied = range.end;
                kept.cut();
            } else {
                kept.push(token, range, copied - out.len());
            }
        }
        out.push_str(&html[copied..]);
        Ok(Gathered {
            html: out,
            css,
            kept_blocks,
            tokens: kept.tokens,
        })
    }

    /// The path of the linked sheet in the set, and its text.
    fn resolve(&self, href: &str) -> Result<(&str, &str)> {
        let rel = local_path(href)?;
        self.files
            .get_key_value(rel)
            .map(|(k, s)| (k.as_str(), &**s))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Render,
                    format!("stylesheet `{href}` is not in the templates folder"),
                )
            })
    }
}

pub(super) struct Gathered<'a> {
    pub(super) html: String,
    /// Where the document's inlinable CSS comes from, in order.
    pub(super) css: Vec<Piece<'a>>,
    pub(super) kept_blocks: Vec<String>,
    /// The tokens of `html` as a scan of it would give them (text cut in two by a
    /// removed block comes in its two pieces), ranges in `html`; `None` when a cut
    /// could change how the text around it scans, and `html` must be scanned again.
    pub(super) tokens: Option<Vec<(Token<'a>, Range<usize>)>>,
}

/// The tokens of the input that stay in the gathered HTML, moved to their new offsets,
/// so the stages after gathering need not scan the document again.
struct Kept<'a> {
    tokens: Option<Vec<(Token<'a>, Range<usize>)>>,
    /// Whether a block was just taken out after the last kept token.
    after_cut: bool,
}

impl<'a> Kept<'a> {
    /// Room for the tokens of `html`: about two per `<`, counted much faster than the
    /// vector would grow.
    fn for_html(html: &str) -> Kept<'a> {
        Kept {
            tokens: Some(Vec::with_capacity(
                2 * memchr::memchr_iter(b'<', html.as_bytes()).count() + 1,
            )),
            after_cut: false,
        }
    }

    /// Keeps `token`, found at `range` of the input, which is `removed` bytes ahead of
    /// the output there.
    fn push(&mut self, token: Token<'a>, range: Range<usize>, removed: usize) {
        let Some(tokens) = &mut self.tokens else {
            return;
        };
        if std::mem::take(&mut self.after_cut) {
            // Text on both sides of the cut scans as one run in the output. The pieces
            // read the same as that run, one after the other, unless the first ends
            // in a `<` (which may now open markup) or holds a `&` (a reference the cut
            // may have split): then the output is scanned again.
            if let (Token::Text(_), Some((Token::Text(before), _))) = (&token, tokens.last()) {
                if before.ends_with('<') || before.contains('&') {
                    self.tokens = None;
                    return;
                }
            }
        }
        tokens.push((token, range.start - removed..range.end - removed));
    }

    fn cut(&mut self) {
        self.after_cut = true;
    }
}

/// One source of a document's inlinable CSS: a `<style>` block, or a sheet of the set
/// it links; with the media it is for.
#[derive(Debug)]
pub(super) struct Piece<'a> {
    /// The linked sheet's path in the set; `None` for a `<style>` block.
    pub(super) sheet: Option<&'a str>,
    pub(super) css: &'a str,
    pub(super) media: Option<Cow<'a, str>>,
}

impl Piece<'_> {
    /// What tells this piece from others: a sheet's text never changes while the set
    /// lives, so its path stands for it, where a block is its text.
    pub(super) fn identity(&self) -> (bool, &str, Option<&str>) {
        match self.sheet {
            Some(path) => (true, path, self.media.as_deref()),
            None => (false, self.css, self.media.as_deref()),
        }
    }
}

/// The CSS the pieces make up, in order, as css-inline is given it.
pub(super) fn css_text(pieces: &[Piece<'_>]) -> String {
    let mut css = String::with_capacity(pieces.iter().map(|p| p.css.len() + 1).sum());
    for piece in pieces {
        push_css(&mut css, piece.css, piece.media.as_deref());
    }
    css
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A token list with each run of text pieces joined into the one text token a
    /// scan gives, every token checked against `html` at its range.
    fn joined<'a>(
        html: &'a str,
        tokens: &[(Token<'a>, Range<usize>)],
    ) -> Vec<(Token<'a>, Range<usize>)> {
        let mut out: Vec<(Token<'a>, Range<usize>)> = Vec::new();
        for (token, range) in tokens {
            let Token::Text(text) = token else {
                let alone = Scanner::new(&html[range.clone()]).next().map(|(t, _)| t);
                assert_eq!(alone.as_ref(), Some(token), "at {range:?}");
                out.push((token.clone(), range.clone()));
                continue;
            };
            assert_eq!(*text, &html[range.clone()], "text piece at {range:?}");
            match out.last_mut() {
                Some((Token::Text(last), last_range)) => {
                    assert_eq!(last_range.end, range.start);
                    last_range.end = range.end;
                    *last = &html[last_range.clone()];
                }
                _ => out.push((token.clone(), range.clone())),
            }
        }
        out
    }

    /// Gathering keeps the document's tokens for the later stages instead of a second
    /// scan: they must be what scanning the gathered HTML gives, wherever the removed
    /// `<style>` and `<link>` blocks fall (between tags, inside text, next to
    /// references and literal `<`).
    #[test]
    fn kept_tokens_are_a_scan_of_the_gathered_html() {
        let sheets = Stylesheets::new(HashMap::from([("s.css".to_string(), Arc::from("p{}"))]));
        let blocks = [
            "<link rel=stylesheet href=s.css>",
            "<style>b { color: green }</style>",
            "<style data-css-inline=\"ignore\">i{}</style>",
            "<link rel=\"stylesheet\" href=\"https://x.test/r.css\">",
        ];
        let mut reused = 0;
        for seed in 0..1_000u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut doc = crate::html::generated::document(&mut rng);
            for _ in 0..rng.usize(1..4) {
                let mut at = rng.usize(..=doc.len());
                while !doc.is_char_boundary(at) {
                    at -= 1;
                }
                doc.insert_str(at, blocks[rng.usize(..blocks.len())]);
            }
            let Ok(gathered) = sheets.gather(&doc, Path::new("t.html")) else {
                continue;
            };
            let Some(tokens) = &gathered.tokens else {
                continue;
            };
            reused += 1;
            let scanned: Vec<_> = Scanner::new(&gathered.html).collect();
            assert_eq!(
                joined(&gathered.html, tokens),
                scanned,
                "seed {seed}: {doc:?} gathered as {:?}",
                gathered.html
            );
        }
        assert!(reused > 500, "{reused}");
    }
}
