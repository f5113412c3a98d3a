//! Rendering one template with data: schema check, front-matter fields, HTML body,
//! inlined CSS, text part. The result is everything the message needs, nothing sent.

use std::path::Path;
use std::sync::Arc;

use lettre::message::Mailbox;
use serde::ser::SerializeMap;
use serde::Serialize;

use crate::address::{self, Header};
use crate::error::{Error, ErrorKind, Result};
use crate::templates::front_matter::TextMode;
use crate::templates::{Field, TemplateSet, Variant};

mod json;

/// A rendered template: headers and bodies, ready to become a message.
///
/// Addresses are already parsed; header values are checked for line breaks.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub(crate) template: String,
    pub(crate) locale: Option<String>,
    pub(crate) header: Header<String, Mailbox>,
    pub(crate) html: String,
    pub(crate) text: Option<String>,
    pub(crate) tags: Vec<String>,
}

impl Rendered {
    /// The template name, e.g. `account/password-reset`.
    pub fn template(&self) -> &str {
        &self.template
    }
    /// The locale of the variant used, if not the base template.
    pub fn locale(&self) -> Option<&str> {
        self.locale.as_deref()
    }
    /// The subject line.
    pub fn subject(&self) -> &str {
        &self.header.subject
    }
    /// The sender, as `Name <addr>`.
    pub fn from(&self) -> Option<String> {
        self.header.from.as_ref().map(Mailbox::to_string)
    }
    /// The reply-to address.
    pub fn reply_to(&self) -> Option<String> {
        self.header.reply_to.as_ref().map(Mailbox::to_string)
    }
    /// `To` recipients.
    pub fn to(&self) -> Vec<String> {
        self.header.to.iter().map(Mailbox::to_string).collect()
    }
    /// `Cc` recipients.
    pub fn cc(&self) -> Vec<String> {
        self.header.cc.iter().map(Mailbox::to_string).collect()
    }
    /// `Bcc` recipients (never written into the message headers).
    pub fn bcc(&self) -> Vec<String> {
        self.header.bcc.iter().map(Mailbox::to_string).collect()
    }
    /// Extra headers from front-matter, in order.
    pub fn headers(&self) -> &[(String, String)] {
        &self.header.headers
    }
    /// The final HTML, CSS inlined.
    pub fn html(&self) -> &str {
        &self.html
    }
    /// The plain-text part, unless the template has `text: false`.
    pub fn text(&self) -> Option<&str> {
        self.text.as_deref()
    }
    /// Tags from front-matter.
    pub fn tags(&self) -> &[String] {
        &self.tags
    }
}

impl Serialize for Rendered {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Headers<'a>(&'a [(String, String)]);
        impl Serialize for Headers<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut map = s.serialize_map(Some(self.0.len()))?;
                for (k, v) in self.0 {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
        let mut map = serializer.serialize_map(Some(12))?;
        map.serialize_entry("template", &self.template)?;
        map.serialize_entry("locale", &self.locale)?;
        map.serialize_entry("subject", &self.header.subject)?;
        map.serialize_entry("from", &self.from())?;
        map.serialize_entry("to", &self.to())?;
        map.serialize_entry("cc", &self.cc())?;
        map.serialize_entry("bcc", &self.bcc())?;
        map.serialize_entry("reply_to", &self.reply_to())?;
        map.serialize_entry("headers", &Headers(&self.header.headers))?;
        map.serialize_entry("html", &self.html)?;
        map.serialize_entry("text", &self.text)?;
        map.serialize_entry("tags", &self.tags)?;
        map.end()
    }
}

/// Addresses the caller gives in place of the front-matter's. A field given here is
/// not rendered at all: a front-matter value the caller replaced cannot fail the send.
#[derive(Debug, Clone, Default)]
pub(crate) struct Overrides {
    pub to: Option<Vec<Mailbox>>,
    pub cc: Option<Vec<Mailbox>>,
    pub bcc: Option<Vec<Mailbox>>,
    pub reply_to: Option<Mailbox>,
}

impl Overrides {
    fn any(&self) -> bool {
        self.to.is_some() || self.cc.is_some() || self.bcc.is_some() || self.reply_to.is_some()
    }
}

/// Renders `name` in `locale` with `data`, after checking `data` against its schema.
pub(crate) fn render(
    set: &TemplateSet,
    name: &str,
    locale: Option<&str>,
    data: &Arc<serde_json::Value>,
    overrides: &Overrides,
) -> Result<Rendered> {
    render_variant(set, set.variant(name, locale)?, data, overrides)
}

/// Renders one variant of a template with `data`, after checking `data` against its
/// schema.
pub(crate) fn render_variant(
    set: &TemplateSet,
    variant: &Variant,
    data: &Arc<serde_json::Value>,
    overrides: &Overrides,
) -> Result<Rendered> {
    let name = variant.name.as_str();
    let _span = tracing::debug_span!("render", template = name, locale = ?variant.locale).entered();
    if let Some(schema) = &variant.schema {
        schema.check(name, data)?;
    }
    let ctx = json::context(data);
    let fields = &variant.fields.header;
    let values = if overrides.any() {
        let given = minijinja::context! {
            to => overrides.to.is_some(),
            cc => overrides.cc.is_some(),
            bcc => overrides.bcc.is_some(),
            reply_to => overrides.reply_to.is_some(),
        };
        let with_given = minijinja::value::merge_maps([
            minijinja::Value::from_iter([(crate::templates::GIVEN, given)]),
            ctx.clone(),
        ]);
        render_fields(set, variant, &with_given)?
    } else {
        render_fields(set, variant, &ctx)?
    };
    let field = |f: &Field| -> Result<String> {
        Ok(match f.slot {
            Some(slot) => values.get(slot).to_string(),
            None => f.text.clone(),
        })
    };
    let subject = header_value(&variant.file, &fields.subject, field(&fields.subject)?)?;
    let one_of = |value: &str| -> std::result::Result<Vec<Mailbox>, String> {
        if value.trim().is_empty() {
            return Ok(Vec::new());
        }
        address::mailbox_or_reason(value).map(|m| vec![m])
    };
    // A field used as written parses the same every time: once, then from its cache.
    let parse = |f: &Field,
                 how: &dyn Fn(&str) -> std::result::Result<Vec<Mailbox>, String>|
     -> Result<Vec<Mailbox>> {
        let parsed = match f.slot {
            Some(slot) => how(values.get(slot)),
            None => f.addresses.get_or_init(|| how(&f.text)).clone(),
        };
        parsed.map_err(|reason| field_error(&variant.file, f, &reason))
    };
    let one = |f: &Option<Field>| -> Result<Option<Mailbox>> {
        let Some(f) = f else { return Ok(None) };
        Ok(parse(f, &one_of)?.pop())
    };
    let many = |list: &[Field]| -> Result<Vec<Mailbox>> {
        let mut out = Vec::new();
        for f in list {
            out.extend(parse(f, &address::mailboxes_or_reason)?);
        }
        Ok(out)
    };
    let given = |over: &Option<Vec<Mailbox>>, list: &[Field]| match over {
        Some(given) => Ok(given.clone()),
        None => many(list),
    };
    let from = one(&fields.from)?;
    let reply_to = match &overrides.reply_to {
        Some(given) => Some(given.clone()),
        None => one(&fields.reply_to)?,
    };
    let to = given(&overrides.to, &fields.to)?;
    let cc = given(&overrides.cc, &fields.cc)?;
    let bcc = given(&overrides.bcc, &fields.bcc)?;
    let mut headers = Vec::with_capacity(fields.headers.len());
    for (header, f) in &fields.headers {
        let value = header_value(&variant.file, f, field(f)?)?;
        headers.push((header.clone(), value));
    }
    let raw_html = render_body(set, &variant.html, &ctx)?;
    let from_html = variant.text_mode == TextMode::Auto && variant.text.is_none();
    let (html, text) = set
        .stylesheets
        .inline_and_text(&raw_html, &variant.file, from_html)?;
    let text = match (variant.text_mode, &variant.text) {
        (TextMode::Off, _) => None,
        (TextMode::Auto, Some(text)) => Some(render_body(set, text, &ctx)?),
        (TextMode::Auto, None) => text,
    };
    Ok(Rendered {
        template: variant.name.clone(),
        locale: variant.locale.clone(),
        header: Header {
            subject,
            from,
            reply_to,
            to,
            cc,
            bcc,
            headers,
        },
        html,
        text,
        tags: variant.tags.clone(),
    })
}

/// The rendered front-matter values: one output, cut by slot.
#[derive(Default)]
struct Values {
    output: String,
    slots: Vec<std::ops::Range<usize>>,
}

impl Values {
    fn get(&self, slot: usize) -> &str {
        self.slots
            .get(slot)
            .and_then(|range| self.output.get(range.clone()))
            .unwrap_or("")
    }
}

/// Renders every templated front-matter value at once, in slot order.
fn render_fields(set: &TemplateSet, variant: &Variant, ctx: &minijinja::Value) -> Result<Values> {
    let Some(name) = &variant.fields.template else {
        return Ok(Values::default());
    };
    let output = render_body(set, name, ctx)?;
    let mut slots = Vec::with_capacity(variant.fields.slots);
    let mut start = 0;
    for (at, separator) in output.match_indices(crate::templates::FIELD_SEPARATOR) {
        slots.push(start..at);
        start = at + separator.len();
    }
    slots.push(start..output.len());
    let values = Values { output, slots };
    if values.slots.len() != variant.fields.slots {
        return Err(Error::new(
            ErrorKind::Address,
            "a rendered front-matter value contains the control character U+001E",
        )
        .at(&variant.file, 1, 1));
    }
    Ok(values)
}

pub(crate) fn render_body(set: &TemplateSet, name: &str, ctx: &minijinja::Value) -> Result<String> {
    set.env
        .get_template(name)
        .and_then(|t| t.render(ctx))
        .map_err(|e| set.jinja_error(&e, ErrorKind::Render))
}

/// Refuses a value that would break out of its header line.
fn header_value(file: &Path, f: &Field, value: String) -> Result<String> {
    if value.contains(['\r', '\n']) {
        return Err(field_error(
            file,
            f,
            "the rendered value contains a line break, which would inject headers",
        ));
    }
    Ok(value)
}

/// A problem with the rendered value of front-matter field `f`. The value itself is
/// left out: it comes from the data, and errors end up in logs.
fn field_error(file: &Path, f: &Field, reason: &str) -> Error {
    Error::new(
        ErrorKind::Address,
        format!("front-matter `{}`: {reason}", f.field),
    )
    .at(file, f.line, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Negative-step slices follow Python, and an empty list reversed is empty rather
    /// than a panic (the vendored minijinja's `range_step_backwards`).
    #[test]
    fn slices_with_a_negative_step_follow_python() {
        let env = minijinja::Environment::new();
        let cases = [
            (
                "{{ items[::-1]|join(',') }}",
                serde_json::json!({"items": []}),
                "",
            ),
            ("{{ s[::-1] }}", serde_json::json!({"s": ""}), ""),
            (
                "{{ items[::-1]|join(',') }}",
                serde_json::json!({"items": [1, 2, 3]}),
                "3,2,1",
            ),
            ("{{ s[3:0:-1] }}", serde_json::json!({"s": "abcd"}), "dcb"),
            ("{{ s[::-2] }}", serde_json::json!({"s": "abcde"}), "eca"),
            (
                "{{ items[0:2:-1]|length }}",
                serde_json::json!({"items": [1, 2, 3]}),
                "0",
            ),
            (
                "{{ items[-1:-4:-1]|join(',') }}",
                serde_json::json!({"items": [1, 2, 3, 4, 5]}),
                "5,4,3",
            ),
            (
                "{{ items[10:1:-1]|join(',') }}",
                serde_json::json!({"items": [1, 2, 3]}),
                "3",
            ),
        ];
        for (template, data, want) in cases {
            let got = env.render_str(template, &data).unwrap();
            assert_eq!(got, want, "{template} with {data}");
        }
    }

    /// Issue: inlining by plan must give what plain css-inline gives, on every template and
    /// example of the repository's set, with the plan cache cold and warm.
    #[test]
    fn planned_inlining_equals_plain_css_inline_for_the_example_set() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let set = TemplateSet::load(
            &root.join("templates"),
            &root.join("schemas"),
            crate::templates::schema::COMPILED_VALIDATORS,
        )
        .unwrap();
        let mut compared = 0;
        for variant in set.variants() {
            let Some(schema) = &variant.schema else {
                continue;
            };
            for example in schema.examples() {
                let example = example.unwrap();
                let ctx = minijinja::Value::from_serialize(&example);
                let raw = render_body(&set, &variant.html, &ctx).unwrap();
                let direct = set.stylesheets.inline_direct(&raw, &variant.file).unwrap();
                for _ in 0..2 {
                    let (planned, text) = set
                        .stylesheets
                        .inline_and_text(&raw, &variant.file, true)
                        .unwrap();
                    assert_eq!(
                        crate::inline::normalize(&planned),
                        crate::inline::normalize(&direct),
                        "{}",
                        variant.file.display()
                    );
                    assert_eq!(
                        text.as_deref(),
                        Some(crate::text::from_html(&direct).as_str()),
                        "text of {}",
                        variant.file.display()
                    );
                }
                compared += 1;
            }
        }
        assert!(compared >= 17, "{compared}");
    }
}
