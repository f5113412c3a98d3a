//! The data contract: a template's JSON Schema, compiled once, checked before rendering.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, ErrorKind, Result, Violation};

/// A compiled JSON Schema and the sample data it carries in `examples`.
pub(crate) struct Schema {
    pub file: PathBuf,
    validator: jsonschema::Validator,
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

impl Schema {
    /// Parses and compiles `text`, read from `file`.
    pub fn compile(file: &Path, text: &str) -> Result<Schema> {
        let mut value: Value = serde_json::from_str(text).map_err(|e| {
            Error::new(ErrorKind::Template, format!("invalid JSON: {e}")).at(
                file,
                e.line(),
                e.column(),
            )
        })?;
        // `examples` do not take part in validation; taken out, they are stored once.
        let examples = value.as_object_mut().and_then(|o| o.remove("examples"));
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&value)
            .map_err(|e| {
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
        Ok(Schema {
            file: file.to_path_buf(),
            validator,
            examples,
            examples_line: line_of_pointer(text, "/examples"),
        })
    }

    /// How many examples the schema has.
    pub fn example_count(&self) -> usize {
        self.examples.len()
    }

    /// The examples, each read back from its text.
    pub fn examples(&self) -> impl Iterator<Item = Result<Value>> + '_ {
        (0..self.examples.len()).filter_map(|index| self.example(index))
    }

    /// Example `index`, or `None` past the last.
    pub fn example(&self, index: usize) -> Option<Result<Value>> {
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
    pub fn violations(&self, data: &Value) -> Vec<Violation> {
        self.validator
            .iter_errors(data)
            .map(|e| Violation {
                pointer: e.instance_path().as_str().to_string(),
                message: e.masked().to_string(),
                detail: e.to_string(),
            })
            .collect()
    }

    /// Refuses `data` that fails the schema, listing every violation.
    pub fn check(&self, template: &str, data: &Value) -> Result<()> {
        let violations = self.violations(data);
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

    #[test]
    fn lists_every_violation_with_its_pointer() {
        let schema = Schema::compile(Path::new("s.json"), SCHEMA).unwrap();
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
        let schema = Schema::compile(Path::new("s.json"), &text).unwrap();
        assert_eq!(schema.example_count(), 2);
        let back = schema.example(0).unwrap().unwrap();
        assert_eq!(back, example);
        assert_eq!(back.to_string(), example.to_string());
        assert_eq!(schema.example(1).unwrap().unwrap(), json!({}));
    }

    #[test]
    fn broken_json_and_schema_name_the_line() {
        let err =
            Schema::compile(Path::new("s.json"), "{\n  \"type\": \"object\",\n}").unwrap_err();
        assert_eq!(err.location().unwrap().line, 3);
        let err = Schema::compile(
            Path::new("s.json"),
            "{\n  \"type\": \"object\",\n  \"minProperties\": -1\n}",
        )
        .unwrap_err();
        assert!(err.message().contains("invalid JSON Schema"), "{err}");
        assert_eq!(err.location().unwrap().line, 3);
    }
}
