//! Cutting gathered CSS into the rules css-inline can put into `style=""` and those
//! that stay in a `<style>` in the head (at-rules, dynamic pseudo-classes,
//! pseudo-elements), in order.

use cssparser::{
    AtRuleParser, CowRcStr, ParseError, Parser, ParserState, QualifiedRuleParser, StyleSheetParser,
};

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
/// cssparser finds the rules (strings, comments, escapes, nested blocks and CDO/CDC
/// as CSS Syntax defines them); each rule's text goes on as written.
pub(super) fn split_rules(css: &str) -> Split {
    let mut split = Split::default();
    let mut input = Parser::new(css);
    let mut reader = RuleText;
    let mut rules = StyleSheetParser::new(&mut input, &mut reader);
    loop {
        let start = rules.input.position();
        let Some(rule) = rules.next() else { break };
        match rule {
            Ok(Rule::At(name)) => {
                if !name.eq_ignore_ascii_case("charset") {
                    split
                        .keep
                        .push_str(leading_trivia_removed(rules.input.slice_from(start)));
                    split.keep.push('\n');
                }
            }
            Ok(Rule::Qualified { selectors, block }) => {
                let (mut inline, mut keep) = (Vec::new(), Vec::new());
                for selector in selectors {
                    let lower = selector.to_ascii_lowercase();
                    if DYNAMIC_PSEUDOS.iter().any(|p| lower.contains(p)) {
                        keep.push(selector);
                    } else {
                        inline.push(selector);
                    }
                }
                for (list, out) in [(inline, &mut split.inline), (keep, &mut split.keep)] {
                    if !list.is_empty() {
                        out.push_str(&list.join(", "));
                        out.push('{');
                        out.push_str(block);
                        out.push_str("}\n");
                    }
                }
            }
            // A rule that does not parse is dropped, as a browser drops it.
            Err(_) => {}
        }
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

/// One top-level rule as written: an at-rule (its text is taken from the input after
/// it), or a style rule's selectors and its block's contents.
enum Rule<'i> {
    At(CowRcStr<'i>),
    Qualified {
        selectors: Vec<&'i str>,
        block: &'i str,
    },
}

/// The text of a rule without the whitespace, comments, `<!--` and `-->` that the
/// stylesheet parser skipped before it.
fn leading_trivia_removed(mut text: &str) -> &str {
    loop {
        text = text.trim();
        if let Some(comment) = text.strip_prefix("/*") {
            text = comment.find("*/").map_or("", |end| &comment[end + 2..]);
        } else if let Some(rest) = text
            .strip_prefix("<!--")
            .or_else(|| text.strip_prefix("-->"))
        {
            text = rest;
        } else {
            return text;
        }
    }
}

/// Reads rules without interpreting them: only their extent and text matter here.
struct RuleText;

/// Consumes the rest of `input` and gives its text, trimmed.
fn rest<'i>(input: &mut Parser<'i>) -> &'i str {
    let start = input.position();
    while input.next_including_whitespace_and_comments().is_ok() {}
    input.slice_from(start).trim()
}

impl<'i> AtRuleParser<'i> for RuleText {
    type Prelude = CowRcStr<'i>;
    type AtRule = Rule<'i>;
    type Error = ();

    fn parse_prelude(
        &mut self,
        name: CowRcStr<'i>,
        input: &mut Parser<'i>,
    ) -> Result<Self::Prelude, ParseError<()>> {
        rest(input);
        Ok(name)
    }

    fn rule_without_block(&mut self, name: Self::Prelude, _: &ParserState) -> Result<Rule<'i>, ()> {
        Ok(Rule::At(name))
    }

    fn parse_block(
        &mut self,
        name: Self::Prelude,
        _: &ParserState,
        input: &mut Parser<'i>,
    ) -> Result<Rule<'i>, ParseError<()>> {
        rest(input);
        Ok(Rule::At(name))
    }
}

impl<'i> QualifiedRuleParser<'i> for RuleText {
    type Prelude = Vec<&'i str>;
    type QualifiedRule = Rule<'i>;
    type Error = ();

    fn parse_prelude(&mut self, input: &mut Parser<'i>) -> Result<Self::Prelude, ParseError<()>> {
        let selectors: Vec<&str> = input
            .parse_comma_separated_ignoring_errors(|selector| {
                Ok::<_, ParseError<()>>(rest(selector))
            })
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect();
        Ok(selectors)
    }

    fn parse_block(
        &mut self,
        selectors: Self::Prelude,
        _: &ParserState,
        input: &mut Parser<'i>,
    ) -> Result<Rule<'i>, ParseError<()>> {
        let start = input.position();
        while input.next_including_whitespace_and_comments().is_ok() {}
        Ok(Rule::Qualified {
            selectors,
            block: input.slice_from(start),
        })
    }
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
