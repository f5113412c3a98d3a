//! The data as the templates see it: the caller's JSON itself, not a copy of it in
//! minijinja values. A map or array is handed out when a template reaches it, as a
//! view into the one shared value, so data a template never reads is never converted.
//!
//! Every value reads exactly as `minijinja::Value::from_serialize` would have made
//! it: maps in serde_json's key order with string keys, arrays as sequences, numbers
//! as u64, then i64, then f64 (serde_json's own serialization), strings, bools, and
//! null as none. Truthiness, length, iteration, `items()`, `tojson`, sorting and
//! comparison come from minijinja's generic handling of maps and sequences, the same
//! that served the copied values.

use std::fmt;
use std::sync::Arc;

use minijinja::value::{Enumerator, Object, ObjectExt, ObjectRepr, Value};
use yoke::Yoke;

/// A map or array inside the shared data, kept alive by the `Arc` it points into.
type Node = Yoke<&'static serde_json::Value, Arc<serde_json::Value>>;

/// The template context for `data`.
pub(crate) fn context(data: &Arc<serde_json::Value>) -> Value {
    let root: Node = Yoke::attach_to_cart(data.clone(), |value| value);
    into_value(&root, |value| Some(value)).unwrap_or_default()
}

/// The value `pick` finds in `node`, a view when it is a map or an array.
fn into_value(
    node: &Node,
    pick: impl for<'a> FnOnce(&'a serde_json::Value) -> Option<&'a serde_json::Value>,
) -> Option<Value> {
    let found = node.try_map_project_cloned(|value, _| match pick(value) {
        Some(inner @ (serde_json::Value::Array(_) | serde_json::Value::Object(_))) => Ok(inner),
        Some(leaf) => Err(Some(leaf_value(leaf))),
        None => Err(None),
    });
    match found {
        Ok(view) => Some(Value::from_object(Json(view))),
        Err(leaf) => leaf,
    }
}

/// A value with no parts, as serde would have given it to minijinja.
fn leaf_value(value: &serde_json::Value) -> Value {
    match value {
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Value::from(u)
            } else if let Some(i) = n.as_i64() {
                Value::from(i)
            } else {
                Value::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(s) => Value::from(s.as_str()),
        _ => Value::from(()),
    }
}

/// A map or array of the data, seen from a template.
struct Json(Node);

impl Json {
    fn json(&self) -> &serde_json::Value {
        self.0.get()
    }

    fn item(&self, index: usize) -> Option<Value> {
        into_value(&self.0, |v| v.as_array().and_then(|a| a.get(index)))
    }

    fn entry(&self, key: &str) -> Option<Value> {
        into_value(&self.0, |v| v.as_object().and_then(|m| m.get(key)))
    }
}

impl Object for Json {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        if self.json().is_array() {
            ObjectRepr::Seq
        } else {
            ObjectRepr::Map
        }
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        if self.json().is_array() {
            self.item(key.as_usize()?)
        } else {
            self.entry(key.as_str()?)
        }
    }

    fn get_value_by_str(self: &Arc<Self>, key: &str) -> Option<Value> {
        if self.json().is_array() {
            self.get_value(&Value::from(key))
        } else {
            self.entry(key)
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        match self.json() {
            serde_json::Value::Array(items) => Enumerator::Seq(items.len()),
            _ => self.mapped_rev_key_value_enumerator(|this| {
                // An exact size, as a copied map has: minijinja prints an iterable of
                // unknown length (`|items`) as `<iterator>`.
                let Some(map) = this.json().as_object() else {
                    return Box::new(std::iter::empty());
                };
                Box::new(map.iter().map(|(key, _)| {
                    let value = into_value(&this.0, |v| v.as_object().and_then(|m| m.get(key)));
                    (Value::from(key.as_str()), value.unwrap_or_default())
                }))
            }),
        }
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        Some(match self.json() {
            serde_json::Value::Array(items) => items.len(),
            serde_json::Value::Object(map) => map.len(),
            _ => 0,
        })
    }
}

/// As the copied value printed: the entries or items, for a template's `{{ x }}`
/// through minijinja's debug printing.
impl fmt::Debug for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.json() {
            serde_json::Value::Array(items) => f
                .debug_list()
                .entries((0..items.len()).filter_map(|i| self.item(i)))
                .finish(),
            serde_json::Value::Object(map) => f
                .debug_map()
                .entries(
                    map.keys()
                        .filter_map(|k| Some((Value::from(k.as_str()), self.entry(k)?))),
                )
                .finish(),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift), so a failure replays.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn json(&mut self, depth: u32) -> serde_json::Value {
            use serde_json::json;
            const KEYS: [&str; 7] = ["a", "b", "items", "name", "x y", "é", ""];
            const STRINGS: [&str; 7] = [
                "",
                "a",
                "B",
                "<b>&amp;\"'</b>",
                "10",
                "ünï",
                "a long string past the small-string size",
            ];
            let leaf = depth == 0 || self.below(3) == 0;
            match self.below(if leaf { 7 } else { 9 }) {
                0 => serde_json::Value::Null,
                1 => json!(self.below(2) == 0),
                2 => json!(self.below(2000) as i64 - 1000),
                3 => json!([u64::MAX, i64::MIN as u64, 0][self.below(3) as usize]),
                4 => json!(i64::MIN + self.below(3) as i64),
                5 => json!((self.below(20001) as f64 - 10000.0) / 64.0),
                6 => json!(STRINGS[self.below(STRINGS.len() as u64) as usize]),
                7 => (0..self.below(5)).map(|_| self.json(depth - 1)).collect(),
                _ => serde_json::Value::Object(
                    (0..self.below(6))
                        .map(|_| {
                            let key = KEYS[self.below(KEYS.len() as u64) as usize];
                            (key.to_string(), self.json(depth - 1))
                        })
                        .collect(),
                ),
            }
        }
    }

    /// Goes over every map and array of a value, and prints every leaf several ways.
    const WALK: &str = r#"{% macro walk(v) -%}
<{{ v }}|{{ v is mapping }}{{ v is sequence }}{{ v is string }}{{ v is number }}{{ v is none }}{{ v is iterable }}|{{ v|tojson }}|{% if v %}T{% else %}F{% endif %}|{{ v|pprint }}|{{ v|safe }}|{{ v|e }}
{%- if v is mapping %}{% for k, x in v|items %}[{{ k }}={{ walk(x) }}]{% endfor %}{% for k, x in v|dictsort %}{{ k }}{{ x }}{% endfor %}{% for k in v %}{{ loop.index }}{{ k }}{{ v[k] }}{% endfor %}|{{ v|length }}{{ v.a }}{{ v['b'] }}{{ v.missing is defined }}{{ v[0] is defined }}{{ 'a' in v }}{{ v|list }}{{ v|reverse|list }}{{ v == v }}
{%- elif v is sequence and v is not string %}{% for x in v %}({{ loop.index0 }}{{ loop.first }}{{ loop.last }}:{{ walk(x) }}){% endfor %}{% for x in v|reverse %}{{ x }}{% endfor %}|{{ v|length }}{{ v[0] }}{{ v[-1] }}{{ v['0'] is defined }}{{ v[1:] }}{{ v[1::2] }}{{ v|join('-') }}{{ 1 in v }}{{ none in v }}{{ v == v }}{{ v|list }}
{%- elif v is number %}{{ v + 1 }}{{ v * 2 }}{{ v // 3 if v else 0 }}{{ v|abs }}{{ v|round }}{{ v is integer }}{{ v is float }}{{ v|string }}
{%- endif %}>{%- endmacro %}{{ walk(d) }}"#;

    /// Expressions that may fail on some shapes: each is compared on its own, the
    /// error included.
    const EXPRESSIONS: [&str; 22] = [
        "d == e",
        "d != e",
        "d < e",
        "[d, 1] == [e, 1]",
        "{'k': d} == {'k': e}",
        "d in [e]",
        "d|first",
        "d|last",
        "d|sort",
        "d|unique|list",
        "d|min",
        "d|max",
        "d|sum",
        "d|dictsort(by='value')",
        "d|items",
        "d|map(attribute='a')|list",
        "d|selectattr('a')|list",
        "d|groupby('a')",
        "d.items()",
        "d.keys()",
        "d.get('a')",
        "(d ~ '')|length",
    ];

    fn render(env: &minijinja::Environment<'_>, source: &str, ctx: &Value) -> String {
        match env.render_str(source, ctx) {
            Ok(out) => out,
            Err(e) => format!("error: {e:#}"),
        }
    }

    #[test]
    fn templates_see_the_data_as_from_serialize_made_it() {
        let env = minijinja::Environment::new();
        let mut gen = Gen(0x9E37_79B9_7F4A_7C15);
        let mut maps = 0;
        let mut errors = 0;
        for case in 0..600 {
            let v = loop {
                let v = gen.json(4);
                if v.is_object() || v.is_array() {
                    break v;
                }
            };
            maps += usize::from(v.is_object());
            let data = serde_json::json!({ "d": v, "e": v });
            let copied = Value::from_serialize(&data);
            let viewed = context(&Arc::new(data.clone()));
            assert_eq!(
                render(&env, WALK, &viewed),
                render(&env, WALK, &copied),
                "case {case}: {data}"
            );
            for expr in EXPRESSIONS {
                let source = format!("{{{{ {expr} }}}}");
                let want = render(&env, &source, &copied);
                errors += usize::from(want.starts_with("error"));
                assert_eq!(
                    render(&env, &source, &viewed),
                    want,
                    "case {case}, `{expr}`: {data}"
                );
            }
            assert_eq!(format!("{viewed:?}"), format!("{copied:?}"), "case {case}");
            assert_eq!(viewed, copied, "case {case}");
        }
        assert!(maps > 200 && errors > 1000, "{maps} maps, {errors} errors");
    }

    #[test]
    fn a_root_that_is_not_a_map_reads_as_before() {
        let env = minijinja::Environment::new();
        for data in [
            serde_json::json!(null),
            serde_json::json!("s"),
            serde_json::json!([1, 2]),
        ] {
            let source = "{{ a is defined }}{{ [0] is defined }}";
            let copied = Value::from_serialize(&data);
            assert_eq!(
                render(&env, source, &context(&Arc::new(data))),
                render(&env, source, &copied)
            );
        }
    }
}
