//! Deriving the plain-text part from the final HTML.
//!
//! Mail clients that show text (and spam filters that compare the parts) expect what a
//! reader would see: block structure as line breaks, links as `text (url)`, and none of
//! the CSS, script or hidden preheader text.

use std::borrow::Cow;
use std::ops::Range;

use crate::html::{self, Scanner, Token};

/// The text a reader of `html` would see.
pub(crate) fn from_html(html: &str) -> String {
    from_tokens(Scanner::new(html), html.len(), None)
}

/// The text a reader would see of the document `tokens` make up (as [`Scanner`] gives
/// them; a text run may come in pieces). With `hidden_by_style`, start tag number `i`
/// is hidden by its style exactly when `hidden_by_style[i]`: what [`from_html`] gives
/// for the inlined document, without reading its long `style` attributes. `html_len`
/// is the document's length.
pub(crate) fn from_tokens<'a>(
    tokens: impl IntoIterator<Item = (Token<'a>, Range<usize>)>,
    html_len: usize,
    planned: Option<Planned<'_, 'a>>,
) -> String {
    // A mail's text is about a tenth of its HTML or less: room for an eighth spares the
    // regrowing.
    let mut state = State {
        out: String::with_capacity(html_len / 8),
        ..State::default()
    };
    let mut index = 0;
    for (token, _) in tokens {
        match token {
            Token::Start {
                name,
                attrs,
                self_closing,
            } => {
                let tag = match planned {
                    Some(p) => Tag::Planned {
                        hidden_by_style: p.hidden_by_style.get(index).copied().unwrap_or(false),
                        marks: p.marks.get(index).copied().unwrap_or_default(),
                    },
                    None => Tag::Attributes(attrs),
                };
                index += 1;
                state.start(&lower(name), tag, self_closing);
            }
            Token::End { name } => state.end(&lower(name)),
            Token::Text(text) if state.hidden.is_none() => {
                state.text(&html::decode_entities(text));
            }
            _ => {}
        }
    }
    state.finish()
}

/// What the inliner already knows of each start tag, in document order: whether its
/// planned style hides it, and the attributes the text part reads (noted as the shape
/// read them), so that no tag's attributes are parsed again here.
#[derive(Clone, Copy)]
pub(crate) struct Planned<'p, 'a> {
    pub(crate) hidden_by_style: &'p [bool],
    pub(crate) marks: &'p [Marks<'a>],
}

/// The attributes of a start tag the text part reads, besides `style`.
#[derive(Clone, Copy, Default)]
pub(crate) struct Marks<'a> {
    hidden: bool,
    href: Option<&'a str>,
    alt: Option<&'a str>,
}

impl<'a> Marks<'a> {
    /// Takes in attribute `key`; of a repeated `href` or `alt` the last counts.
    pub(crate) fn note(&mut self, key: &str, value: &'a str) {
        if key.eq_ignore_ascii_case("hidden") {
            self.hidden = true;
        } else if key.eq_ignore_ascii_case("href") {
            self.href = Some(value);
        } else if key.eq_ignore_ascii_case("alt") {
            self.alt = Some(value);
        }
    }
}

/// A start tag's attributes: as written, or as the inliner read them.
enum Tag<'a> {
    Attributes(&'a str),
    Planned {
        hidden_by_style: bool,
        marks: Marks<'a>,
    },
}

fn lower(name: &str) -> Cow<'_, str> {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

/// Whether a `style` attribute hides its element (`display: none`).
pub(crate) fn hides(style: &str) -> bool {
    // Inlined styles run to hundreds of bytes on every element: jump between d's.
    memchr::memchr2_iter(b'd', b'D', style.as_bytes()).any(|at| {
        // `d` is ASCII, so `at` is a character boundary.
        let rest = &style[at..];
        html::starts_with_ci(rest, "display")
            && rest[7..]
                .trim_start()
                .strip_prefix(':')
                .is_some_and(|value| html::starts_with_ci(value.trim_start(), "none"))
    })
}

#[derive(Default)]
struct State {
    out: String,
    /// Pending line breaks, emitted before the next visible text (at most 2).
    breaks: usize,
    /// Element name and nesting depth of a subtree that is not shown.
    hidden: Option<(String, usize)>,
    /// The href and the length of `out` when the link opened.
    links: Vec<(Option<String>, usize)>,
    /// List counters: `None` for `ul`, the next number for `ol`.
    lists: Vec<Option<usize>>,
    pending_space: bool,
}

const VOID: &[&str] = &[
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track",
    "wbr",
];

impl State {
    fn text(&mut self, text: &str) {
        // Words are separated by HTML's white space and the no-break space. Byte by
        // byte: the separators are ASCII but for the no-break space (C2 A0),
        // and no other character's UTF-8 holds those bytes, so every cut is a boundary.
        let bytes = text.as_bytes();
        let (mut start, mut i) = (0, 0);
        while i < bytes.len() {
            // Bytes above the space are word bytes but for C2: test that first.
            let b = bytes[i];
            if b > b' ' && b != 0xc2 {
                i += 1;
                continue;
            }
            let width = match b {
                b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => 1,
                0xc2 if bytes.get(i + 1) == Some(&0xa0) => 2,
                _ => {
                    i += 1;
                    continue;
                }
            };
            // `word` would write a single space between two words as it stands: such
            // words go out together, in one copy.
            if b == b' ' && start < i && bytes.get(i + 1).is_some_and(|&n| n > b' ' && n != 0xc2) {
                i += 1;
                continue;
            }
            if start < i {
                self.word(&text[start..i]);
            }
            self.pending_space = true;
            i += width;
            start = i;
        }
        if start < bytes.len() {
            self.word(&text[start..]);
        }
    }

    fn word(&mut self, word: &str) {
        self.separate();
        self.out.push_str(word);
    }

    /// What goes before the next word: the pending line breaks, or a space.
    fn separate(&mut self) {
        if self.breaks > 0 && !self.out.is_empty() {
            for _ in 0..self.breaks {
                self.out.push('\n');
            }
        } else if self.pending_space && !self.out.is_empty() && !self.out.ends_with('\n') {
            self.out.push(' ');
        }
        self.breaks = 0;
        self.pending_space = false;
    }

    fn block(&mut self, lines: usize) {
        self.breaks = self.breaks.max(lines);
        self.pending_space = false;
    }

    /// A planned `tag` says whether the element's style hides it, in place of its
    /// `style` attribute.
    fn start(&mut self, name: &str, tag: Tag<'_>, self_closing: bool) {
        if let Some((hidden, depth)) = &mut self.hidden {
            if hidden == name && !VOID.contains(&name) {
                *depth += 1;
            }
            return;
        }
        let (marks, mut invisible) = match tag {
            Tag::Planned {
                hidden_by_style,
                marks,
            } => (marks, hidden_by_style),
            Tag::Attributes(attrs) => {
                let mut marks = Marks::default();
                let mut styled_away = false;
                for (key, value) in html::attributes(attrs) {
                    if key.eq_ignore_ascii_case("style") {
                        styled_away |= hides(value);
                    } else {
                        marks.note(key, value);
                    }
                }
                (marks, styled_away)
            }
        };
        let Marks { hidden, href, alt } = marks;
        invisible |= hidden;
        invisible |= matches!(name, "head" | "style" | "script" | "title" | "template");
        if invisible {
            if !VOID.contains(&name) && !self_closing {
                self.hidden = Some((name.to_string(), 1));
            }
            return;
        }
        match name {
            "br" => {
                self.out.push('\n');
                self.breaks = 0;
                self.pending_space = false;
            }
            "p" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" | "table" | "blockquote" | "ul"
            | "ol" => self.block(2),
            "div" | "tr" | "section" | "header" | "footer" | "article" | "center" | "dl" | "dt"
            | "dd" => self.block(1),
            "hr" => {
                self.block(2);
                self.word("----");
                self.block(2);
            }
            "li" => {
                self.block(1);
                let marker = match self.lists.last_mut() {
                    Some(Some(n)) => {
                        *n += 1;
                        format!("{}.", *n - 1)
                    }
                    _ => "-".to_string(),
                };
                self.word(&marker);
                self.pending_space = true;
            }
            "td" | "th" => self.pending_space = true,
            "a" => self.links.push((
                href.map(|h| html::decode_entities(h).into_owned()),
                self.out.len(),
            )),
            "img" => {
                if let Some(alt) = alt.filter(|a| !a.trim().is_empty()) {
                    self.text(&html::decode_entities(alt));
                }
            }
            _ => {}
        }
        if name == "ol" {
            self.lists.push(Some(1));
        } else if name == "ul" {
            self.lists.push(None);
        }
    }

    fn end(&mut self, name: &str) {
        if let Some((hidden, depth)) = &mut self.hidden {
            if hidden == name {
                *depth -= 1;
                if *depth == 0 {
                    self.hidden = None;
                }
            }
            return;
        }
        match name {
            "p" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" | "table" | "blockquote" => self.block(2),
            "ul" | "ol" => {
                self.lists.pop();
                self.block(2);
            }
            "div" | "tr" | "li" | "section" | "header" | "footer" | "article" | "center" | "dt"
            | "dd" => self.block(1),
            "td" | "th" => self.pending_space = true,
            "a" => self.close_link(),
            _ => {}
        }
    }

    fn close_link(&mut self) {
        let Some((href, start)) = self.links.pop() else {
            return;
        };
        let Some(href) = href else {
            return;
        };
        let href = href.trim();
        if href.is_empty() || href.starts_with('#') || href.starts_with("javascript:") {
            return;
        }
        let shown = self.out.get(start..).unwrap_or("").trim();
        let bare = href.strip_prefix("mailto:").unwrap_or(href);
        if shown == href || shown == bare {
            return;
        }
        if shown.is_empty() {
            self.text(bare);
        } else {
            self.pending_space = true;
            self.separate();
            self.out.push('(');
            self.out.push_str(bare);
            self.out.push(')');
        }
    }

    fn finish(self) -> String {
        let mut text = String::with_capacity(self.out.len() + 1);
        let mut blank = 0;
        for line in self.out.lines() {
            let line = line.trim();
            if line.is_empty() {
                blank += 1;
                continue;
            }
            if !text.is_empty() {
                text.push_str(if blank > 0 { "\n\n" } else { "\n" });
            }
            blank = 0;
            text.push_str(line);
        }
        text.push('\n');
        text
    }
}

#[cfg(test)]
mod tests {
    use super::from_html;

    #[test]
    fn blocks_links_and_lists() {
        let html = r#"<html><head><title>T</title><style>p{color:red}</style></head><body>
            <div style="display: none">preheader text</div>
            <h1>Welcome,   Ada!</h1>
            <p>Click <a href="https://x.test/go">here</a>. Or visit <a href="https://x.test">https://x.test</a>.</p>
            <ul><li>one</li><li>two</li></ul>
            <ol><li>first</li><li>second</li></ol>
            <table><tr><td>Widget</td><td>2</td><td>$4.00</td></tr><tr><td>Total</td><td></td><td>$8.00</td></tr></table>
            <p>Line<br>break &amp; entity&nbsp;here</p>
            <a href="https://x.test/logo"><img src="l.png" alt="Acme"></a>
            <a href="mailto:help@x.test">help@x.test</a>
            <script>alert(1)</script>
        </body></html>"#;
        assert_eq!(
            from_html(html),
            "Welcome, Ada!\n\nClick here (https://x.test/go). Or visit https://x.test.\n\n\
             - one\n- two\n\n1. first\n2. second\n\nWidget 2 $4.00\nTotal $8.00\n\n\
             Line\nbreak & entity here\n\nAcme (https://x.test/logo) help@x.test\n"
        );
    }

    #[test]
    fn hidden_by_any_spelling_of_display_none() {
        for style in [
            "display:none",
            "color: red; DISPLAY : None !important",
            "display:  none",
            "Display: none",
            "width: 1px; display:none",
        ] {
            assert!(super::hides(style), "{style}");
        }
        assert!(!super::hides("display: block; mso-hide: none"));
        assert!(!super::hides("d"));
        assert!(!super::hides("display"));
        assert!(!super::hides("text-decoration: none; display: block"));
    }

    #[test]
    fn words_split_at_white_space_and_no_break_spaces_only() {
        // © (C2 A9) and Š (C5 A0) share a byte with the no-break space (C2 A0).
        assert_eq!(
            from_html("<p>a\u{a0}b ©\u{a0}Š\u{a0}\u{a0} c\t\n\r\x0cd&nbsp;é</p>"),
            "a b © Š c d é\n"
        );
    }

    #[test]
    fn nested_hidden_elements_stay_hidden() {
        let html = "<div style=\"display:none\"><div>a</div><div>b</div></div><p>shown</p>";
        assert_eq!(from_html(html), "shown\n");
    }
}
