//! YAML front-matter: splitting it from the body and checking its keys.
//!
//! Values stay unrendered strings here; the set compiles each into a template of its own.
//! Line numbers are kept per key so a problem in a value points at the line it is on.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, ErrorKind, Result};

/// Headers whose value missive derives itself, or that front-matter sets through a key
/// of its own; a `headers:` entry for one would fight the message builder.
const RESERVED_HEADERS: &[&str] = &[
    "from",
    "to",
    "cc",
    "bcc",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "sender",
];

/// A template file cut in two.
pub(crate) struct Split<'a> {
    /// The YAML between the fences.
    pub yaml: &'a str,
    /// The body after the closing fence.
    pub body: &'a str,
    /// How many lines the front-matter takes, fences included.
    pub lines: usize,
}

/// Splits `source` at its front-matter fences. A sendable template must have them.
pub(crate) fn split<'a>(file: &Path, source: &'a str) -> Result<Split<'a>> {
    let source = source.strip_prefix('\u{feff}').unwrap_or(source);
    let mut lines = source.split_inclusive('\n');
    let first = lines.next().unwrap_or("");
    if first.trim_end() != "---" {
        return Err(Error::new(
            ErrorKind::Template,
            "missing front-matter: a sendable template starts with a `---` line, then YAML \
             with at least `subject:`, then `---`",
        )
        .at(file, 1, 1));
    }
    let yaml_start = first.len();
    let mut offset = yaml_start;
    for (count, line) in (2..).zip(lines) {
        if line.trim_end() == "---" {
            return Ok(Split {
                yaml: &source[yaml_start..offset],
                body: &source[offset + line.len()..],
                lines: count,
            });
        }
        offset += line.len();
    }
    Err(Error::new(
        ErrorKind::Template,
        "front-matter is not closed: no second `---` line",
    )
    .at(file, 1, 1))
}

/// `text:` — whether to send a plain-text part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TextMode {
    /// The `.txt` sibling, or derived from the HTML.
    Auto,
    /// HTML only.
    Off,
}

/// One string value and where it stands.
#[derive(Debug, Clone)]
pub(crate) struct Value {
    pub source: String,
    pub line: usize,
    /// The field it is, for errors: `subject`, `to`, `to[1]` (an entry of a YAML list,
    /// from 0 as in the file), `headers.List-Unsubscribe`.
    pub field: String,
}

/// Checked front-matter, values not yet rendered.
#[derive(Debug, Clone)]
pub(crate) struct FrontMatter {
    pub subject: Value,
    pub from: Option<Value>,
    pub reply_to: Option<Value>,
    pub to: Vec<Value>,
    pub cc: Vec<Value>,
    pub bcc: Vec<Value>,
    pub headers: Vec<(String, Value)>,
    pub schema: Option<Value>,
    pub text: TextMode,
    pub tags: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    subject: Option<String>,
    from: Option<String>,
    reply_to: Option<String>,
    to: Option<OneOrMany>,
    cc: Option<OneOrMany>,
    bcc: Option<OneOrMany>,
    headers: Option<serde_yaml::Mapping>,
    schema: Option<String>,
    text: Option<TextSetting>,
    tags: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TextSetting {
    Flag(bool),
    Word(String),
}

/// Parses the YAML of `split` from `file`; lines reported are the file's.
pub(crate) fn parse(file: &Path, split: &Split<'_>) -> Result<FrontMatter> {
    let lines = KeyLines::scan(split.yaml);
    let raw: Raw = if split.yaml.trim().is_empty() {
        return Err(missing_subject(file));
    } else {
        serde_yaml::from_str(split.yaml).map_err(|err| {
            let (line, column) = err
                .location()
                .map(|l| (l.line() + 1, l.column()))
                .unwrap_or((1, 1));
            Error::new(
                ErrorKind::Template,
                format!("invalid front-matter: {}", strip_location(&err.to_string())),
            )
            .at(file, line, column)
        })?
    };
    let value = |key: &str, source: String| Value {
        line: lines.of(key),
        source,
        field: key.to_string(),
    };
    let many = |key: &str, v: Option<OneOrMany>| match v {
        None => Vec::new(),
        Some(OneOrMany::One(s)) => vec![value(key, s)],
        Some(OneOrMany::Many(list)) => list
            .into_iter()
            .enumerate()
            .map(|(i, s)| Value {
                field: format!("{key}[{i}]"),
                ..value(key, s)
            })
            .collect(),
    };
    let subject = raw.subject.ok_or_else(|| missing_subject(file))?;
    let text = match raw.text {
        None | Some(TextSetting::Flag(true)) => TextMode::Auto,
        Some(TextSetting::Flag(false)) => TextMode::Off,
        Some(TextSetting::Word(w)) if w == "auto" => TextMode::Auto,
        Some(TextSetting::Word(w)) => {
            return Err(Error::new(
                ErrorKind::Template,
                format!("front-matter `text` must be `auto` or `false`, not `{w}`"),
            )
            .at(file, lines.of("text"), 1))
        }
    };
    let mut headers = Vec::new();
    for (name, v) in raw.headers.unwrap_or_default() {
        let line = lines.of("headers");
        let name = match name {
            serde_yaml::Value::String(s) => s,
            other => {
                return Err(Error::new(
                    ErrorKind::Template,
                    format!("header name must be a string, found {other:?}"),
                )
                .at(file, line, 1))
            }
        };
        let line = lines.of_header(&name).unwrap_or(line);
        check_header_name(&name).map_err(|e| e.at(file, line, 1))?;
        let source = match v {
            serde_yaml::Value::String(s) => s,
            serde_yaml::Value::Number(n) => n.to_string(),
            serde_yaml::Value::Bool(b) => b.to_string(),
            _ => {
                return Err(Error::new(
                    ErrorKind::Template,
                    format!("header `{name}` must have a string value"),
                )
                .at(file, line, 1))
            }
        };
        let field = format!("headers.{name}");
        headers.push((
            name,
            Value {
                source,
                line,
                field,
            },
        ));
    }
    Ok(FrontMatter {
        subject: value("subject", subject),
        from: raw.from.map(|s| value("from", s)),
        reply_to: raw.reply_to.map(|s| value("reply_to", s)),
        to: many("to", raw.to),
        cc: many("cc", raw.cc),
        bcc: many("bcc", raw.bcc),
        headers,
        schema: raw.schema.map(|s| value("schema", s)),
        text,
        tags: raw.tags.unwrap_or_default(),
    })
}

fn missing_subject(file: &Path) -> Error {
    Error::new(
        ErrorKind::Template,
        "front-matter has no `subject` (it is required)",
    )
    .at(file, 1, 1)
}

/// serde_yaml appends " at line X column Y"; the location goes in front instead.
fn strip_location(message: &str) -> &str {
    message
        .find(" at line ")
        .map_or(message, |at| &message[..at])
}

fn check_header_name(name: &str) -> Result<()> {
    let valid = !name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b) && b != b':');
    if !valid {
        return Err(Error::new(
            ErrorKind::Template,
            format!("`{name}` is not a valid header name (printable ASCII, no colon or space)"),
        ));
    }
    if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(Error::new(
            ErrorKind::Template,
            format!(
                "header `{name}` cannot be set in `headers:`; use the front-matter key for it \
                 or let missive set it"
            ),
        ));
    }
    Ok(())
}

/// File lines of top-level keys, and of the keys nested under `headers:`.
struct KeyLines {
    top: HashMap<String, usize>,
    headers: HashMap<String, usize>,
}

impl KeyLines {
    fn scan(yaml: &str) -> KeyLines {
        let mut top = HashMap::new();
        let mut headers = HashMap::new();
        let mut in_headers = false;
        for (index, line) in yaml.lines().enumerate() {
            // +2: the opening fence is line 1, and `index` counts from 0.
            let file_line = index + 2;
            let indented = line.starts_with([' ', '\t']);
            let key = line.trim_start().split(':').next().unwrap_or("").trim();
            if key.is_empty() || key.starts_with('#') || !line.contains(':') {
                continue;
            }
            let key = key.trim_matches(['"', '\'']).to_string();
            if indented {
                if in_headers {
                    headers.entry(key).or_insert(file_line);
                }
            } else {
                in_headers = key == "headers";
                top.entry(key).or_insert(file_line);
            }
        }
        KeyLines { top, headers }
    }

    fn of(&self, key: &str) -> usize {
        self.top.get(key).copied().unwrap_or(1)
    }

    fn of_header(&self, name: &str) -> Option<usize> {
        self.headers.get(name).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(source: &str) -> Result<FrontMatter> {
        let file = Path::new("t.html");
        parse(file, &split(file, source)?)
    }

    #[test]
    fn splits_and_counts_lines() {
        let s = split(Path::new("t.html"), "---\nsubject: Hi\n---\n<p>body</p>\n").unwrap();
        assert_eq!(s.yaml, "subject: Hi\n");
        assert_eq!(s.body, "<p>body</p>\n");
        assert_eq!(s.lines, 3);
    }

    #[test]
    fn tolerates_bom_and_crlf() {
        let s = split(
            Path::new("t.html"),
            "\u{feff}---\r\nsubject: Hi\r\n---\r\nx",
        )
        .unwrap();
        assert_eq!(s.body, "x");
    }

    #[test]
    fn values_keep_their_lines() {
        let fm = parse_str(
            "---\nsubject: \"Hello {{ name }}\"\nto:\n  - a@b.test\n  - c@d.test\nheaders:\n  X-Campaign: spring\n  X-Id: 7\ntext: false\ntags: [a, b]\n---\n",
        )
        .unwrap();
        assert_eq!(fm.subject.line, 2);
        assert_eq!(fm.to.len(), 2);
        assert_eq!(fm.to[1].line, 3);
        assert_eq!(fm.to[1].field, "to[1]");
        assert_eq!(fm.subject.field, "subject");
        assert_eq!(fm.headers[0].1.field, "headers.X-Campaign");
        assert_eq!(fm.headers[0].0, "X-Campaign");
        assert_eq!(fm.headers[0].1.line, 7);
        assert_eq!(fm.headers[1].1.source, "7");
        assert_eq!(fm.text, TextMode::Off);
        assert_eq!(fm.tags, ["a", "b"]);
    }

    #[test]
    fn unknown_key_names_the_line() {
        let err = parse_str("---\nsubject: Hi\nsubjet: typo\n---\n").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Template);
        assert_eq!(err.location().unwrap().line, 3);
        assert!(err.message().contains("unknown field `subjet`"), "{err}");
    }

    #[test]
    fn missing_subject_and_fences() {
        assert!(parse_str("---\nto: a@b.test\n---\n")
            .unwrap_err()
            .message()
            .contains("no `subject`"));
        assert!(parse_str("<p>no front matter</p>")
            .unwrap_err()
            .message()
            .contains("missing front-matter"));
        assert!(parse_str("---\nsubject: x\n")
            .unwrap_err()
            .message()
            .contains("not closed"));
    }

    #[test]
    fn malformed_yaml_points_at_its_line() {
        let err = parse_str("---\nsubject: Hi\nto: [a@b.test\n---\n").unwrap_err();
        assert!(err.message().starts_with("invalid front-matter"), "{err}");
        assert!(err.location().unwrap().line >= 3, "{err}");
    }

    #[test]
    fn reserved_and_malformed_header_names_are_refused() {
        let err = parse_str("---\nsubject: Hi\nheaders:\n  Content-Type: x\n---\n").unwrap_err();
        assert!(err.message().contains("cannot be set"), "{err}");
        assert_eq!(err.location().unwrap().line, 4);
        let err = parse_str("---\nsubject: Hi\nheaders:\n  \"Bad Name\": x\n---\n").unwrap_err();
        assert!(err.message().contains("not a valid header name"), "{err}");
    }

    #[test]
    fn text_setting_is_checked() {
        let err = parse_str("---\nsubject: Hi\ntext: maybe\n---\n").unwrap_err();
        assert_eq!(err.location().unwrap().line, 3);
        assert_eq!(
            parse_str("---\nsubject: Hi\ntext: auto\n---\n")
                .unwrap()
                .text,
            TextMode::Auto
        );
    }
}
