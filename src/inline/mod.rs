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
use std::hash::{BuildHasher, Hash, Hasher};
use std::path::Path;
use std::sync::{Arc, RwLock};

use crate::error::{Error, ErrorKind, Result};
use crate::html;
use crate::text;
pub(crate) use gather::check_static_links;
use gather::{css_text, Gathered, Piece};
use plan::{apply, make_plan, CssPlans, Plan, Shape, PLAN_CACHE_LIMIT};
use rules::{split_rules, Split};

mod gather;
mod plan;
mod rules;

/// The caches' maps: their keys are looked up once or twice per message.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// How many distinct gathered stylesheets the split cache keeps; templates that print
/// data into `<style>` would otherwise grow it without bound.
const SPLIT_CACHE_LIMIT: usize = 256;

/// The stylesheets of a template set, and the inliner that uses them.
///
/// Running css-inline costs a full HTML parse and selector matching per message. Which
/// style each element ends up with depends only on the CSS and the document's shape —
/// tags, nesting, classes, ids, the attributes selectors name — never on the text or the
/// URLs that differ between recipients. So the styles are computed once per shape (a
/// [`Plan`]) and written into each later document of that shape directly.
pub(crate) struct Stylesheets {
    files: HashMap<String, Arc<str>>,
    /// Splits by the hash of the pieces gathered, each with the pieces it is for: a
    /// document that links the set's sheets finds its split without the sheets' text
    /// being copied together, hashed or compared.
    splits: RwLock<FastMap<u64, SplitBucket>>,
    /// Plans by the hash of the inlinable CSS they were made for, then by the exact
    /// shape. A hit compares the CSS and the whole shape, not hashes of them: a
    /// collision would otherwise write another document's styles into this one.
    plans: RwLock<FastMap<u64, CssPlans>>,
}

impl Stylesheets {
    pub(crate) fn new(files: HashMap<String, Arc<str>>) -> Stylesheets {
        Stylesheets {
            files,
            splits: RwLock::new(FastMap::default()),
            plans: RwLock::new(FastMap::default()),
        }
    }

    /// The stylesheet files, by path under the templates folder.
    pub(crate) fn files(&self) -> &HashMap<String, Arc<str>> {
        &self.files
    }

    /// Inlines the CSS of `html`, rendered from `file`. (Rendering wants the text part
    /// too and calls [`Self::inline_and_text`].)
    #[cfg(any(test, feature = "bench-internals"))]
    pub(crate) fn inline(&self, html: &str, file: &Path) -> Result<String> {
        Ok(self.inline_and_text(html, file, false)?.0)
    }

    /// Inlines the CSS of `html` and, if `want_text`, makes the text part of the
    /// result ([`text::from_html`] of it). With a plan, the text comes from the smaller
    /// document before inlining, each element seen with the style the plan gives it:
    /// the same text, without reading every inlined `style` again. The document is
    /// scanned once: gathering keeps its tokens for the shape and the text.
    pub(crate) fn inline_and_text(
        &self,
        html: &str,
        file: &Path,
        want_text: bool,
    ) -> Result<(String, Option<String>)> {
        let mut gathered = self.gather(html, file)?;
        let split = self.split(&gathered.css);
        let head = head(&split, &gathered);
        let tokens = gathered
            .tokens
            .take()
            .unwrap_or_else(|| html::Scanner::new(&gathered.html).collect());
        let (inlined, text) = if split.inline.is_empty() {
            let len = gathered.html.len();
            let text = want_text.then(|| text::from_tokens(tokens, len, None));
            (std::mem::take(&mut gathered.html), text)
        } else {
            let shape = Shape::of(&tokens, &split);
            let plan = self.plan(&gathered.html, &split, &shape, file)?;
            match &*plan {
                Plan::Styles { styles, hidden } => {
                    let planned = text::Planned {
                        hidden_by_style: hidden,
                        marks: &shape.marks,
                    };
                    let len = gathered.html.len();
                    let text = want_text.then(|| text::from_tokens(tokens, len, Some(planned)));
                    (apply(&gathered.html, &shape, styles, head.len()), text)
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
                by_shape: FastMap::default(),
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

    fn split(&self, pieces: &[Piece<'_>]) -> Arc<Split> {
        let same = |key: &[PieceKey]| {
            key.len() == pieces.len()
                && key
                    .iter()
                    .zip(pieces)
                    .all(|(k, p)| k.identity() == p.identity())
        };
        let hash = |cache: &FastMap<u64, _>| {
            let mut hasher = cache.hasher().build_hasher();
            for piece in pieces {
                piece.identity().hash(&mut hasher);
            }
            hasher.finish()
        };
        let mut at = None;
        if let Ok(cache) = self.splits.read() {
            let h = hash(&cache);
            let hit = cache
                .get(&h)
                .and_then(|bucket| bucket.iter().find(|(key, _)| same(key)));
            if let Some((_, split)) = hit {
                return split.clone();
            }
            at = Some(h);
        }
        let split = Arc::new(split_rules(&css_text(pieces)));
        if let (Some(h), Ok(mut cache)) = (at, self.splits.write()) {
            if cache.len() >= SPLIT_CACHE_LIMIT {
                cache.clear();
            }
            let key = pieces.iter().map(PieceKey::of).collect();
            cache.entry(h).or_default().push((key, split.clone()));
        }
        split
    }
}

/// The splits whose pieces hash alike, each with its pieces.
type SplitBucket = Vec<(Vec<PieceKey>, Arc<Split>)>;

/// A gathered [`Piece`] as the split cache keeps it.
struct PieceKey {
    sheet: bool,
    text: String,
    media: Option<String>,
}

impl PieceKey {
    fn of(piece: &Piece<'_>) -> PieceKey {
        let (sheet, text, media) = piece.identity();
        PieceKey {
            sheet,
            text: text.to_string(),
            media: media.map(str::to_string),
        }
    }

    fn identity(&self) -> (bool, &str, Option<&str>) {
        (self.sheet, &self.text, self.media.as_deref())
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
    for (token, range) in html::Scanner::new(&serialized) {
        match token {
            html::Token::Start { name, attrs, .. } => {
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
            "<table><tr><td style=color:green>a</td><td class=q style=color:green/>b</td></tr></table>",
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
            let shape = Shape::of_html(html, split);
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
        let sig = |html: &str| Shape::of_html(html, &split).signature;
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
    fn rules_are_found_as_css_syntax_defines_them() {
        let split = split_rules(
            "<!-- p:is(.a, .b), [title=\"x,y\"] { color: red /* } */ }\n\
             a[href$=\"\\\"}\"]:focus, b { margin: 0 }\n-->/* the head */\
             @media screen { .x { content: \"{\" } }\n",
        );
        assert_eq!(
            split.inline,
            "p:is(.a, .b), [title=\"x,y\"]{ color: red /* } */ }\nb{ margin: 0 }\n"
        );
        assert_eq!(
            split.keep,
            "a[href$=\"\\\"}\"]:focus{ margin: 0 }\n@media screen { .x { content: \"{\" } }\n"
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
