//! The data contract: a template's JSON Schema, checked once at load, checked against
//! before rendering.
//!
//! A compiled validator takes about six times the room of its schema's text (a node
//! per subschema, each annotation copied), ~100 KiB for a 17 KB schema, so a set
//! does not keep one per schema: each is compiled at load, which reports what is wrong
//! with it, then kept only while it is among the most recently used of its set
//! ([`Validators`]) and compiled again from the schema's text when needed after that.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use serde_json::Value;

use crate::error::{Error, ErrorKind, Result, Violation};

/// How many compiled validators a set keeps. Compiling a 17 KB schema again takes three
/// to four times as long as a render of its template, so the templates an app sends
/// most stay compiled, while the rest cost only their text (2–4 KB of compact JSON for
/// 17 KB as written).
pub(crate) const COMPILED_VALIDATORS: usize = 32;

/// A set's most recently used compiled validators, shared by its schemas.
pub(crate) struct Validators {
    capacity: usize,
    /// Counts uses, to find the least recently used.
    clock: AtomicU64,
    slots: RwLock<HashMap<usize, Slot>>,
}

struct Slot {
    validator: Arc<jsonschema::Validator>,
    used: AtomicU64,
}

impl Validators {
    /// A cache that keeps at most `capacity` validators.
    pub(crate) fn new(capacity: usize) -> Arc<Validators> {
        Arc::new(Validators {
            capacity,
            clock: AtomicU64::new(0),
            slots: RwLock::new(HashMap::new()),
        })
    }

    fn get(&self, id: usize) -> Option<Arc<jsonschema::Validator>> {
        let slots = self.slots.read().unwrap_or_else(PoisonError::into_inner);
        let slot = slots.get(&id)?;
        slot.used.store(
            self.clock.fetch_add(1, Ordering::Relaxed),
            Ordering::Relaxed,
        );
        Some(slot.validator.clone())
    }

    fn insert(&self, id: usize, validator: Arc<jsonschema::Validator>) {
        let mut slots = self.slots.write().unwrap_or_else(PoisonError::into_inner);
        if slots.len() >= self.capacity && !slots.contains_key(&id) {
            let oldest = slots
                .iter()
                .min_by_key(|(_, slot)| slot.used.load(Ordering::Relaxed))
                .map(|(id, _)| *id);
            if let Some(oldest) = oldest {
                slots.remove(&oldest);
            }
        }
        if self.capacity > 0 {
            let used = AtomicU64::new(self.clock.fetch_add(1, Ordering::Relaxed));
            slots.insert(id, Slot { validator, used });
        }
    }

    /// How many validators are compiled now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// A checked JSON Schema and the sample data it carries in `examples`.
pub(crate) struct Schema {
    pub file: PathBuf,
    /// The schema without `examples` and, where that cannot change what it accepts,
    /// without its annotations, as compact JSON: what its validator is compiled from
    /// again once [`Validators`] has let it go.
    source: Box<str>,
    /// Its key in `validators`.
    id: usize,
    validators: Arc<Validators>,
    /// Each example as compact JSON text: as `Value`s, sample data takes about six times
    /// the room of its text (a B-tree node per object, an allocation per string), in
    /// every schema of a set, while only `check`, the preview and `Mailer::example`
    /// read it.
    examples: Vec<Box<str>>,
    /// Where `examples` starts in the file, for problems with an example.
    pub examples_line: usize,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schema").field("file", &self.file).finish()
    }
}

fn options() -> jsonschema::ValidationOptions<'static> {
    jsonschema::options().should_validate_formats(true)
}

impl Schema {
    /// Parses and compiles `text`, read from `file`, as schema `id` of a set whose
    /// validators `validators` keeps.
    pub(crate) fn compile(
        file: &Path,
        text: &str,
        id: usize,
        validators: &Arc<Validators>,
    ) -> Result<Schema> {
        let mut value: Value = serde_json::from_str(text).map_err(|e| {
            Error::new(ErrorKind::Template, format!("invalid JSON: {e}")).at(
                file,
                e.line(),
                e.column(),
            )
        })?;
        // `examples` do not take part in validation; taken out, they are stored once.
        let examples = value.as_object_mut().and_then(|o| o.remove("examples"));
        // Compiled as written, so that every problem in it is reported, annotations too.
        let validator = options().build(&value).map_err(|e| {
            let pointer = e.instance_path().as_str().to_string();
            Error::new(
                ErrorKind::Template,
                format!("invalid JSON Schema at `{pointer}`: {e}"),
            )
            .at(file, line_of_pointer(text, &pointer), 1)
        })?;
        let examples = match examples {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| item.to_string().into_boxed_str())
                .collect(),
            Some(_) => {
                return Err(Error::new(
                    ErrorKind::Template,
                    "`examples` must be an array of sample data",
                )
                .at(file, line_of_pointer(text, "/examples"), 1))
            }
        };
        if !refers_to_annotation(&value) {
            strip_annotations(&mut value);
        }
        validators.insert(id, Arc::new(validator));
        Ok(Schema {
            file: file.to_path_buf(),
            source: value.to_string().into_boxed_str(),
            id,
            validators: validators.clone(),
            examples,
            examples_line: line_of_pointer(text, "/examples"),
        })
    }

    /// The compiled validator: the one kept, or compiled again from `source`.
    fn validator(&self) -> Result<Arc<jsonschema::Validator>> {
        if let Some(validator) = self.validators.get(self.id) {
            return Ok(validator);
        }
        // It compiled at load, so this fails only if the schema's own text no longer
        // reads back: reported as the schema's problem, never a panic.
        let again = |detail: String| {
            Error::new(
                ErrorKind::Template,
                format!("schema does not compile again: {detail}"),
            )
            .at(&self.file, 1, 1)
        };
        let value: Value = serde_json::from_str(&self.source).map_err(|e| again(e.to_string()))?;
        let validator = Arc::new(options().build(&value).map_err(|e| again(e.to_string()))?);
        self.validators.insert(self.id, validator.clone());
        Ok(validator)
    }

    /// How many examples the schema has.
    pub(crate) fn example_count(&self) -> usize {
        self.examples.len()
    }

    /// The examples, each read back from its text.
    pub(crate) fn examples(&self) -> impl Iterator<Item = Result<Value>> + '_ {
        (0..self.examples.len()).filter_map(|index| self.example(index))
    }

    /// Example `index`, or `None` past the last.
    pub(crate) fn example(&self, index: usize) -> Option<Result<Value>> {
        let text = self.examples.get(index)?;
        Some(serde_json::from_str(text).map_err(|e| {
            Error::new(
                ErrorKind::Template,
                format!("`examples[{index}]` does not read back: {e}"),
            )
            .at(&self.file, self.examples_line, 1)
        }))
    }

    /// Every way in which `data` fails the schema; empty when it passes.
    pub(crate) fn violations(&self, data: &Value) -> Result<Vec<Violation>> {
        Ok(self
            .validator()?
            .iter_errors(data)
            .map(|e| Violation {
                pointer: e.instance_path().as_str().to_string(),
                message: e.masked().to_string(),
                detail: e.to_string(),
            })
            .collect())
    }

    /// Refuses `data` that fails the schema, listing every violation.
    pub(crate) fn check(&self, template: &str, data: &Value) -> Result<()> {
        // Data nearly always passes: the yes-or-no walk stops at nothing and builds no
        // error paths, where collecting every violation costs several times more.
        if self.validator()?.is_valid(data) {
            return Ok(());
        }
        let violations = self.violations(data)?;
        if violations.is_empty() {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::InvalidData,
            format!(
                "data for `{template}` does not match {} ({} problem{})",
                self.file.display(),
                violations.len(),
                if violations.len() == 1 { "" } else { "s" }
            ),
        )
        .with_violations(violations))
    }
}

/// Keywords that only annotate: what a schema accepts is the same without them. A
/// compiled validator keeps a copy of each, for output formats missive does not use.
const ANNOTATIONS: [&str; 8] = [
    "title",
    "description",
    "$comment",
    "examples",
    "default",
    "deprecated",
    "readOnly",
    "writeOnly",
];

/// Whether a reference in `value` points into an annotation (`#/$defs/a/default`): then
/// the annotations stay, since what the reference finds would change.
fn refers_to_annotation(value: &Value) -> bool {
    match value {
        Value::Object(object) => object.iter().any(|(key, value)| {
            let reference = matches!(key.as_str(), "$ref" | "$dynamicRef" | "$recursiveRef")
                && value
                    .as_str()
                    .is_some_and(|r| r.split('/').any(|segment| ANNOTATIONS.contains(&segment)));
            reference || refers_to_annotation(value)
        }),
        Value::Array(items) => items.iter().any(refers_to_annotation),
        _ => false,
    }
}

/// Takes the annotation keywords out of `schema` and of its subschemas, wherever a
/// keyword holds subschemas (so a property named `title` stays).
fn strip_annotations(schema: &mut Value) {
    let Value::Object(object) = schema else {
        return;
    };
    for keyword in ANNOTATIONS {
        object.remove(keyword);
    }
    for (keyword, value) in object.iter_mut() {
        match keyword.as_str() {
            "properties" | "patternProperties" | "$defs" | "definitions" | "dependentSchemas"
            | "dependencies" => {
                if let Value::Object(subschemas) = value {
                    subschemas.values_mut().for_each(strip_annotations);
                }
            }
            "items" | "prefixItems" | "allOf" | "anyOf" | "oneOf" => match value {
                Value::Array(subschemas) => subschemas.iter_mut().for_each(strip_annotations),
                subschema => strip_annotations(subschema),
            },
            "additionalProperties"
            | "additionalItems"
            | "unevaluatedItems"
            | "unevaluatedProperties"
            | "not"
            | "if"
            | "then"
            | "else"
            | "contains"
            | "propertyNames"
            | "contentSchema" => strip_annotations(value),
            _ => {}
        }
    }
}

/// The line of the last key of `pointer` in pretty-printed JSON, or 1: good enough to
/// point a person at the right place without a span-keeping JSON parser.
fn line_of_pointer(text: &str, pointer: &str) -> usize {
    let Some(key) = pointer.rsplit('/').next().filter(|k| !k.is_empty()) else {
        return 1;
    };
    let needle = format!("\"{key}\"");
    text.lines()
        .position(|l| l.contains(&needle))
        .map_or(1, |i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SCHEMA: &str = r#"{
  "type": "object",
  "required": ["user"],
  "properties": {
    "user": {
      "type": "object",
      "required": ["email", "name"],
      "properties": {
        "email": {"type": "string", "format": "email"},
        "name": {"type": "string"}
      }
    }
  },
  "examples": [{"user": {"email": "a@b.test", "name": "A"}}]
}"#;

    fn compile(text: &str) -> Result<Schema> {
        Schema::compile(Path::new("s.json"), text, 0, &Validators::new(1))
    }

    /// Compiled at load, then compiled again from its text for every use.
    fn uncached(text: &str) -> Schema {
        Schema::compile(Path::new("s.json"), text, 0, &Validators::new(0)).unwrap()
    }

    #[test]
    fn lists_every_violation_with_its_pointer() {
        let schema = compile(SCHEMA).unwrap();
        assert_eq!(schema.example_count(), 1);
        let example = schema.example(0).unwrap().unwrap();
        assert_eq!(example, json!({"user": {"email": "a@b.test", "name": "A"}}));
        assert!(schema.check("t", &example).is_ok());
        assert!(schema.example(1).is_none());
        let err = schema
            .check("t", &json!({"user": {"email": "nope"}}))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidData);
        let pointers: Vec<_> = err
            .violations()
            .iter()
            .map(|v| v.pointer.as_str())
            .collect();
        assert!(pointers.contains(&"/user/email"), "{pointers:?}");
        assert!(pointers.contains(&"/user"), "{pointers:?}");
        assert_eq!(pointers.len(), 2);
        // Issue 10.6: the value stays out of what goes to logs.
        let email = &err.violations()[pointers.iter().position(|p| *p == "/user/email").unwrap()];
        assert_eq!(email.message, "value is not a \"email\"");
        assert_eq!(email.detail, "\"nope\" is not a \"email\"");
        for shown in [err.to_string(), format!("{err:?}")] {
            assert!(!shown.contains("nope"), "{shown}");
        }
    }

    #[test]
    fn examples_read_back_as_written() {
        let example = json!({
            "n": [0, -1, 18446744073709551615u64, -9223372036854775808i64, 1.5, -0.0, 1e300],
            "s": "é \" \\ \n \u{1e} 😀",
            "o": {"b": null, "a": [true, false, {}, []]}
        });
        let text = json!({"type": "object", "examples": [example, {}]}).to_string();
        let schema = compile(&text).unwrap();
        assert_eq!(schema.example_count(), 2);
        let back = schema.example(0).unwrap().unwrap();
        assert_eq!(back, example);
        assert_eq!(back.to_string(), example.to_string());
        assert_eq!(schema.example(1).unwrap().unwrap(), json!({}));
    }

    #[test]
    fn broken_json_and_schema_name_the_line() {
        let err = compile("{\n  \"type\": \"object\",\n}").unwrap_err();
        assert_eq!(err.location().unwrap().line, 3);
        let err = compile("{\n  \"type\": \"object\",\n  \"minProperties\": -1\n}").unwrap_err();
        assert!(err.message().contains("invalid JSON Schema"), "{err}");
        assert_eq!(err.location().unwrap().line, 3);
        // Annotations are left out of what is kept, not out of what is checked at load.
        let err = compile("{\n  \"type\": \"object\",\n  \"title\": 5\n}").unwrap_err();
        assert!(err.message().contains("invalid JSON Schema"), "{err}");
        assert_eq!(err.location().unwrap().line, 3);
    }

    fn pointers(schema: &Schema, data: Value) -> Vec<String> {
        let mut pointers: Vec<String> = schema
            .violations(&data)
            .unwrap()
            .into_iter()
            .map(|v| format!("{} {}", v.pointer, v.detail))
            .collect();
        pointers.sort();
        pointers
    }

    #[test]
    fn compiled_again_it_finds_the_same_violations() {
        let text = json!({
            "title": "t",
            "description": "d",
            "type": "object",
            "required": ["title", "description", "items"],
            "properties": {
                "title": {"type": "string", "title": "The title", "default": "x"},
                "description": {"type": "string", "maxLength": 3, "examples": ["abc"]},
                "items": {
                    "type": "array",
                    "items": {"$ref": "#/$defs/item"},
                    "$comment": "c"
                }
            },
            "$defs": {
                "item": {
                    "description": "an item",
                    "oneOf": [
                        {"type": "integer", "deprecated": true},
                        {"type": "string", "pattern": "^[a-z]+$", "readOnly": true}
                    ]
                }
            },
            "additionalProperties": false
        })
        .to_string();
        let kept = compile(&text).unwrap();
        let again = uncached(&text);
        assert!(!again.source.contains("an item"), "{}", again.source);
        for data in [
            json!({"title": "a", "description": "abc", "items": [1, "a"]}),
            json!({"title": 5, "description": "abcd", "items": [1.5, "A", {}], "x": 1}),
            json!({}),
            json!("nope"),
        ] {
            let found = pointers(&kept, data.clone());
            assert_eq!(found, pointers(&again, data.clone()), "{data}");
            assert_eq!(found.is_empty(), data["title"] == "a", "{data}: {found:?}");
        }
    }

    #[test]
    fn a_reference_into_an_annotation_keeps_the_annotations() {
        let text = json!({
            "$defs": {"a": {"default": {"type": "string"}}},
            "$ref": "#/$defs/a/default"
        })
        .to_string();
        let schema = uncached(&text);
        assert_eq!(pointers(&schema, json!(5)).len(), 1);
        assert!(pointers(&schema, json!("s")).is_empty());
    }

    #[test]
    fn keeps_only_the_most_recently_used_validators() {
        let validators = Validators::new(2);
        let schemas: Vec<Schema> = (0..3)
            .map(|id| {
                let text = json!({"type": "object", "required": [format!("k{id}")]}).to_string();
                Schema::compile(Path::new("s.json"), &text, id, &validators).unwrap()
            })
            .collect();
        assert_eq!(validators.len(), 2);
        assert!(validators.get(0).is_none(), "the first loaded went first");
        for _ in 0..2 {
            for (id, schema) in schemas.iter().enumerate() {
                assert_eq!(pointers(schema, json!({})).len(), 1);
                assert!(pointers(schema, json!({format!("k{id}"): 1})).is_empty());
            }
        }
        assert_eq!(validators.len(), 2);
        assert!(validators.get(0).is_none() && validators.get(2).is_some());
    }
}
