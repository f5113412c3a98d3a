//! The template set: every file under `templates/` and `schemas/`, loaded, checked and
//! compiled once, then shared read-only by every render.
//!
//! Loading gathers every problem it finds rather than stopping at the first, so
//! `missive check` and a hot reload can show them all.

pub(crate) mod front_matter;
pub(crate) mod live;
pub(crate) mod walk;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use minijinja::{AutoEscape, Environment, UndefinedBehavior};

use crate::error::{Error, ErrorKind, Result};
use crate::inline::Stylesheets;
use crate::render::schema::Schema;
use front_matter::{FrontMatter, TextMode};
pub(crate) use live::LiveSet;
pub use live::ReloadEvent;

/// Where a compiled minijinja template came from, to turn its errors into file:line.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    pub file: PathBuf,
    /// For the template of a variant's front-matter values: the template line each value
    /// starts on and the file line it stands on. Bodies keep file lines as they are.
    pub line_map: Option<Vec<(usize, usize)>>,
}

impl Source {
    fn file_line(&self, line: usize) -> usize {
        match &self.line_map {
            None => line,
            Some(map) => map
                .iter()
                .take_while(|(start, _)| *start <= line)
                .last()
                .map_or(1, |(_, file_line)| *file_line),
        }
    }
}

/// Separates the rendered front-matter values in the output of their shared template.
pub(crate) const FIELD_SEPARATOR: &str = "\u{1e}\n";

/// A front-matter value, compiled once at load time.
#[derive(Debug, Clone)]
pub(crate) struct Field {
    /// The value as written.
    pub text: String,
    /// Its place in the output of [`Fields::template`]; `None` when it has no template
    /// syntax and is used as written.
    pub slot: Option<usize>,
    /// Its line in the file.
    pub line: usize,
}

/// The front-matter of one variant, ready to render.
///
/// Values with template syntax share one minijinja template, one value per line: each
/// compiled template costs kilobytes, and a set can have thousands of values.
#[derive(Debug, Clone)]
pub(crate) struct Fields {
    pub subject: Field,
    pub from: Option<Field>,
    pub reply_to: Option<Field>,
    pub to: Vec<Field>,
    pub cc: Vec<Field>,
    pub bcc: Vec<Field>,
    pub headers: Vec<(String, Field)>,
    pub template: Option<String>,
    pub slots: usize,
}

/// One sendable file: a template in one locale.
#[derive(Debug)]
pub(crate) struct Variant {
    pub name: String,
    pub locale: Option<String>,
    /// The file, as a path under the configured templates folder.
    pub file: PathBuf,
    /// minijinja name of the HTML body.
    pub html: String,
    /// minijinja name of the `.txt` sibling.
    pub text: Option<String>,
    pub text_mode: TextMode,
    pub fields: Fields,
    pub schema: Option<Arc<Schema>>,
    pub tags: Vec<String>,
}

/// A sendable name with its locale variants.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub base: Arc<Variant>,
    /// Keyed by lower-cased locale tag.
    pub locales: BTreeMap<String, Arc<Variant>>,
}

/// A loaded, compiled template set.
pub(crate) struct TemplateSet {
    pub templates_dir: PathBuf,
    pub env: Environment<'static>,
    pub entries: BTreeMap<String, Entry>,
    pub stylesheets: Arc<Stylesheets>,
    pub sources: HashMap<String, Source>,
    /// What the set was loaded from, kept for reloading only what changed.
    origin: Arc<Origin>,
}

/// The files a set was loaded from.
#[derive(Default)]
struct Origin {
    root: Option<PathBuf>,
    schemas_dir: PathBuf,
    files: Vec<walk::File>,
    schemas: HashMap<String, Arc<Schema>>,
}

impl std::fmt::Debug for TemplateSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TemplateSet")
            .field("templates_dir", &self.templates_dir)
            .field("templates", &self.entries.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl TemplateSet {
    /// Loads and compiles everything under `templates_dir` and `schemas_dir`.
    ///
    /// On failure the error lists every problem found ([`Error::problems`]).
    pub fn load(templates_dir: &Path, schemas_dir: &Path) -> Result<TemplateSet> {
        let _span = tracing::info_span!("load", templates = %templates_dir.display()).entered();
        let mut errors = Vec::new();
        let files = walk::walk(templates_dir, &mut errors)?;
        let schema_files = if schemas_dir.is_dir() {
            walk::walk(schemas_dir, &mut errors)?
        } else {
            Vec::new()
        };
        let mut builder = Builder::new(templates_dir);
        let schemas = load_schemas(&schema_files, &mut errors);
        builder.add_files(&files, &mut errors);
        builder.add_sendables(&files, &schemas, schemas_dir, &mut errors);
        builder.check_links(None, &mut errors);
        if let Some(error) = Error::from_many(errors) {
            tracing::warn!(
                problems = error.problems().count(),
                "template set has problems"
            );
            return Err(error);
        }
        let origin = Origin {
            root: templates_dir.canonicalize().ok(),
            schemas_dir: schemas_dir.to_path_buf(),
            files,
            schemas,
        };
        let set = builder.finish(Arc::new(origin), None);
        tracing::info!(templates = set.entries.len(), "template set loaded");
        Ok(set)
    }

    /// The set as it is on disk after `changed` files were saved.
    ///
    /// When only sendable templates (or their `.txt` bodies) that the set already has
    /// were edited, only those are compiled again, on a copy of this set that shares
    /// everything else; a change to anything others depend on — a layout, partial,
    /// stylesheet or schema — or a file added or removed loads the whole set.
    pub fn reload(&self, changed: &[PathBuf]) -> Result<TemplateSet> {
        match self.reload_only(changed) {
            Some(result) => result,
            None => TemplateSet::load(&self.templates_dir, &self.origin.schemas_dir),
        }
    }

    fn reload_only(&self, changed: &[PathBuf]) -> Option<Result<TemplateSet>> {
        let root = self.origin.root.as_ref()?;
        let mut files = Vec::new();
        for path in changed {
            let path = path.canonicalize().ok()?;
            let rel = path.strip_prefix(root).ok()?.to_str()?.replace('\\', "/");
            let file = self.origin.files.iter().find(|f| f.rel == rel)?;
            let known = match file.kind() {
                walk::Kind::Sendable | walk::Kind::Text => self.sources.contains_key(&rel),
                _ => false,
            };
            if !known || !file.path.is_file() {
                return None;
            }
            files.push(file);
        }
        if files.is_empty() {
            return None;
        }
        let _span = tracing::info_span!("reload", files = files.len()).entered();
        let mut builder = Builder::from_set(self);
        let result = files
            .iter()
            .try_for_each(|file| builder.replace(file, &self.origin, &self.stylesheets));
        Some(result.map(|()| {
            let set = builder.finish(self.origin.clone(), Some(self.stylesheets.clone()));
            tracing::info!(files = files.len(), "changed templates recompiled");
            set
        }))
    }

    /// A set with no templates: what a mailer renders from while the files it watches
    /// have never loaded.
    pub fn empty(templates_dir: &Path) -> TemplateSet {
        Builder::new(templates_dir).finish(Arc::default(), None)
    }

    /// The variant of `name` for `locale`: `fr-CA`, then `fr`, then the base.
    pub fn variant(&self, name: &str, locale: Option<&str>) -> Result<&Arc<Variant>> {
        let entry = self.entries.get(name).ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!(
                    "no template named `{name}` under {} (known: {})",
                    self.templates_dir.display(),
                    self.entries.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
        })?;
        let Some(locale) = locale else {
            return Ok(&entry.base);
        };
        let mut tag = locale.to_ascii_lowercase().replace('_', "-");
        loop {
            if let Some(variant) = entry.locales.get(&tag) {
                return Ok(variant);
            }
            match tag.rfind('-') {
                Some(cut) => tag.truncate(cut),
                None => return Ok(&entry.base),
            }
        }
    }

    /// Every variant, base first then locales, in name order.
    pub fn variants(&self) -> impl Iterator<Item = &Arc<Variant>> {
        self.entries
            .values()
            .flat_map(|e| std::iter::once(&e.base).chain(e.locales.values()))
    }

    /// Turns a minijinja error into ours, with the file and line it happened at.
    pub fn jinja_error(&self, err: &minijinja::Error, kind: ErrorKind) -> Error {
        jinja_error(&self.sources, err, kind)
    }
}

/// Maps a minijinja error onto the file and line it came from, naming the undefined
/// variable where that is the problem.
pub(crate) fn jinja_error(
    sources: &HashMap<String, Source>,
    err: &minijinja::Error,
    kind: ErrorKind,
) -> Error {
    let source = err.name().and_then(|n| sources.get(n));
    let mut message = match err.kind() {
        minijinja::ErrorKind::UndefinedError => {
            let expr = err
                .range()
                .zip(err.template_source())
                .and_then(|(range, text)| text.get(range))
                .map(|e| e.trim().to_string());
            match expr {
                Some(expr) if !expr.is_empty() => {
                    format!("undefined value `{expr}` (test it with `{{% if %}}` or give it a `default`)")
                }
                _ => "undefined value".to_string(),
            }
        }
        other => match err.detail() {
            Some(detail) => format!("{other}: {detail}"),
            None => other.to_string(),
        },
    };
    if let (None, Some(name)) = (source, err.name()) {
        message.push_str(&format!(" (in {name})"));
    }
    let mut error = Error::new(kind, message);
    if let Some(source) = source {
        let line = source.file_line(err.line().unwrap_or(1));
        error = error.at(&source.file, line, 1);
    }
    error
}

/// HTML-escapes what HTML needs escaped. minijinja's escaper also writes `/` as
/// `&#x2f;`, which is harmless but fills every URL a recipient sees in the source with it.
fn write_escaped(out: &mut minijinja::Output, text: &str) -> Result<(), minijinja::Error> {
    let failed = |_| minijinja::Error::new(minijinja::ErrorKind::WriteFailure, "output failed");
    let mut rest = text;
    while let Some(at) = rest.find(['&', '<', '>', '"', '\'']) {
        out.write_str(&rest[..at]).map_err(failed)?;
        let entity = match rest.as_bytes()[at] {
            b'&' => "&amp;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'"' => "&quot;",
            _ => "&#39;",
        };
        out.write_str(entity).map_err(failed)?;
        rest = &rest[at + 1..];
    }
    out.write_str(rest).map_err(failed)
}

struct Builder {
    templates_dir: PathBuf,
    env: Environment<'static>,
    sources: HashMap<String, Source>,
    stylesheets: HashMap<String, Arc<str>>,
    entries: BTreeMap<String, Entry>,
    /// HTML sources with a `<link>` added since links were last checked: name, file, text.
    html: Vec<(String, PathBuf, String)>,
}

impl Builder {
    fn new(templates_dir: &Path) -> Builder {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".html") || name.ends_with(".htm") {
                AutoEscape::Html
            } else {
                AutoEscape::None
            }
        });
        env.set_formatter(|out, state, value| match value.as_str() {
            Some(text) if state.auto_escape() == AutoEscape::Html && !value.is_safe() => {
                write_escaped(out, text)
            }
            _ => minijinja::escape_formatter(out, state, value),
        });
        // Everything the set may include was added up front; the loader only runs for
        // names that are not there, to say why a path that leaves the folder fails.
        env.set_loader(|name| {
            if name.split('/').any(|part| part == "..") || name.starts_with('/') {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    format!("`{name}` is outside the templates folder and is never read"),
                ))
            } else {
                Ok(None)
            }
        });
        Builder {
            templates_dir: templates_dir.to_path_buf(),
            env,
            sources: HashMap::new(),
            stylesheets: HashMap::new(),
            entries: BTreeMap::new(),
            html: Vec::new(),
        }
    }

    fn add(
        &mut self,
        name: String,
        text: String,
        file: &Path,
        line_map: Option<Vec<(usize, usize)>>,
    ) -> Result<()> {
        // Only a `<link>` start tag can fail the check, so text without one (most
        // sendables: they extend a layout) is not held until the check runs.
        let has_link = crate::html::find_ci(&text, "<link").is_some();
        if line_map.is_none() && name.ends_with(".html") && has_link {
            self.html
                .push((name.clone(), file.to_path_buf(), text.clone()));
        }
        self.sources.insert(
            name.clone(),
            Source {
                file: file.to_path_buf(),
                line_map,
            },
        );
        self.env
            .add_template_owned(name, text)
            .map_err(|e| jinja_error(&self.sources, &e, ErrorKind::Template))
    }

    /// Layouts, partials, `.txt` bodies and stylesheets: everything but sendables.
    fn add_files(&mut self, files: &[walk::File], errors: &mut Vec<Error>) {
        for file in files {
            let result = match file.kind() {
                walk::Kind::Stylesheet => file.read().map(|css| {
                    self.stylesheets.insert(file.rel.clone(), Arc::from(css));
                }),
                walk::Kind::Partial | walk::Kind::Text => file
                    .read()
                    .and_then(|text| self.add(file.rel.clone(), text, &file.path, None)),
                walk::Kind::Sendable | walk::Kind::Other => Ok(()),
            };
            if let Err(e) = result {
                errors.push(e);
            }
        }
    }

    fn add_sendables(
        &mut self,
        files: &[walk::File],
        schemas: &HashMap<String, Arc<Schema>>,
        schemas_dir: &Path,
        errors: &mut Vec<Error>,
    ) {
        let mut locales = Vec::new();
        for file in files.iter().filter(|f| f.kind() == walk::Kind::Sendable) {
            match self.add_sendable(file, files, schemas, schemas_dir) {
                Ok(variant) if variant.locale.is_some() => locales.push(variant),
                Ok(variant) => {
                    self.entries.insert(
                        variant.name.clone(),
                        Entry {
                            base: Arc::new(variant),
                            locales: BTreeMap::new(),
                        },
                    );
                }
                Err(e) => errors.push(e),
            }
        }
        for file in files.iter().filter(|f| f.kind() == walk::Kind::Text) {
            let stem = file.rel.trim_end_matches(".txt");
            let has_html = files.iter().any(|f| {
                f.kind() == walk::Kind::Sendable && f.rel.trim_end_matches(".html") == stem
            });
            if !has_html {
                errors.push(
                    Error::new(
                        ErrorKind::Template,
                        format!(
                            "`{}` has no `{stem}.html` beside it to be the text part of",
                            file.rel
                        ),
                    )
                    .at(&file.path, 1, 1),
                );
            }
        }
        for variant in locales {
            let key = variant
                .locale
                .clone()
                .unwrap_or_default()
                .to_ascii_lowercase();
            match self.entries.get_mut(&variant.name) {
                Some(entry) => {
                    entry.locales.insert(key, Arc::new(variant));
                }
                None => errors.push(
                    Error::new(
                        ErrorKind::Template,
                        format!(
                            "locale variant of `{}` has no base template `{}.html`",
                            variant.name, variant.name
                        ),
                    )
                    .at(&variant.file, 1, 1),
                ),
            }
        }
    }

    fn add_sendable(
        &mut self,
        file: &walk::File,
        files: &[walk::File],
        schemas: &HashMap<String, Arc<Schema>>,
        schemas_dir: &Path,
    ) -> Result<Variant> {
        let source = file.read()?;
        let split = front_matter::split(&file.path, &source)?;
        let fm = front_matter::parse(&file.path, &split)?;
        let stem = file.rel.trim_end_matches(".html");
        let (name, locale) = walk::split_locale(stem);
        // The comment stands in for the front-matter, so body lines stay file lines.
        let body = format!("{{#{}#}}{}", "\n".repeat(split.lines), split.body);
        self.add(file.rel.clone(), body, &file.path, None)?;
        let text_name = format!("{stem}.txt");
        let text = files
            .iter()
            .any(|f| f.rel == text_name)
            .then_some(text_name);
        let fields = self.compile_fields(&file.rel, &file.path, &fm)?;
        let schema = resolve_schema(&fm, name, &file.path, schemas, schemas_dir)?;
        Ok(Variant {
            name: name.to_string(),
            locale: locale.map(str::to_string),
            file: file.path.clone(),
            html: file.rel.clone(),
            text,
            text_mode: fm.text,
            fields,
            schema,
            tags: fm.tags,
        })
    }

    fn compile_fields<'a>(
        &mut self,
        html: &str,
        file: &Path,
        fm: &'a FrontMatter,
    ) -> Result<Fields> {
        let mut dynamic: Vec<&front_matter::Value> = Vec::new();
        let mut field = |value: &'a front_matter::Value| -> Result<Field> {
            let templated = value.source.contains("{{") || value.source.contains("{%");
            let slot = if templated {
                // Compiled alone first, so a syntax error points at its own line.
                self.env
                    .template_from_named_str(html, &value.source)
                    .map_err(|e| {
                        let detail = e.detail().map(|d| format!(": {d}")).unwrap_or_default();
                        Error::new(ErrorKind::Template, format!("{}{detail}", e.kind()))
                            .at(file, value.line, 1)
                    })?;
                dynamic.push(value);
                Some(dynamic.len() - 1)
            } else {
                None
            };
            Ok(Field {
                text: value.source.clone(),
                slot,
                line: value.line,
            })
        };
        let subject = field(&fm.subject)?;
        let from = fm.from.as_ref().map(&mut field).transpose()?;
        let reply_to = fm.reply_to.as_ref().map(&mut field).transpose()?;
        let to = fm.to.iter().map(&mut field).collect::<Result<Vec<_>>>()?;
        let cc = fm.cc.iter().map(&mut field).collect::<Result<Vec<_>>>()?;
        let bcc = fm.bcc.iter().map(&mut field).collect::<Result<Vec<_>>>()?;
        let headers = fm
            .headers
            .iter()
            .map(|(n, v)| Ok((n.clone(), field(v)?)))
            .collect::<Result<Vec<_>>>()?;
        let slots = dynamic.len();
        let template = if dynamic.is_empty() {
            None
        } else {
            let mut source = String::new();
            let mut line_map = Vec::with_capacity(slots);
            let mut line = 1;
            for (i, value) in dynamic.iter().enumerate() {
                if i > 0 {
                    source.push_str(FIELD_SEPARATOR);
                    line += 1;
                }
                line_map.push((line, value.line));
                source.push_str(&value.source);
                line += value.source.matches('\n').count();
            }
            let name = format!("{html}#front-matter");
            self.add(name.clone(), source, file, Some(line_map))?;
            Some(name)
        };
        Ok(Fields {
            subject,
            from,
            reply_to,
            to,
            cc,
            bcc,
            headers,
            template,
            slots,
        })
    }

    /// Literal `<link>`s to stylesheets the set lacks, in layouts as in sendables.
    fn check_links(&mut self, sheets: Option<&HashMap<String, Arc<str>>>, errors: &mut Vec<Error>) {
        let mut html = std::mem::take(&mut self.html);
        html.sort_by(|a, b| a.0.cmp(&b.0));
        let sheets = sheets.unwrap_or(&self.stylesheets);
        for (_, file, text) in html {
            if let Err(e) = crate::inline::check_static_links(&text, &file, sheets) {
                errors.push(e);
            }
        }
    }

    /// A builder holding everything `set` has, to replace a few files in.
    fn from_set(set: &TemplateSet) -> Builder {
        Builder {
            templates_dir: set.templates_dir.clone(),
            env: set.env.clone(),
            sources: set.sources.clone(),
            stylesheets: HashMap::new(),
            entries: set.entries.clone(),
            html: Vec::new(),
        }
    }

    /// Compiles `file` again and puts it in place of its old version.
    fn replace(&mut self, file: &walk::File, origin: &Origin, sheets: &Stylesheets) -> Result<()> {
        if file.kind() == walk::Kind::Text {
            return self.add(file.rel.clone(), file.read()?, &file.path, None);
        }
        let variant =
            self.add_sendable(file, &origin.files, &origin.schemas, &origin.schemas_dir)?;
        let mut errors = Vec::new();
        self.check_links(Some(sheets.files()), &mut errors);
        if let Some(error) = Error::from_many(errors) {
            return Err(error);
        }
        let entry = self.entries.get_mut(&variant.name).ok_or_else(|| {
            Error::new(
                ErrorKind::Template,
                format!("`{}` is not in the set", variant.name),
            )
        })?;
        match &variant.locale {
            Some(locale) => {
                entry
                    .locales
                    .insert(locale.to_ascii_lowercase(), Arc::new(variant));
            }
            None => entry.base = Arc::new(variant),
        }
        Ok(())
    }

    fn finish(self, origin: Arc<Origin>, stylesheets: Option<Arc<Stylesheets>>) -> TemplateSet {
        TemplateSet {
            templates_dir: self.templates_dir,
            env: self.env,
            entries: self.entries,
            stylesheets: stylesheets
                .unwrap_or_else(|| Arc::new(Stylesheets::new(self.stylesheets))),
            sources: self.sources,
            origin,
        }
    }
}

fn load_schemas(files: &[walk::File], errors: &mut Vec<Error>) -> HashMap<String, Arc<Schema>> {
    let mut schemas = HashMap::new();
    for file in files.iter().filter(|f| f.rel.ends_with(".json")) {
        match file
            .read()
            .and_then(|text| Schema::compile(&file.path, &text))
        {
            Ok(schema) => {
                schemas.insert(file.rel.clone(), Arc::new(schema));
            }
            Err(e) => errors.push(e),
        }
    }
    schemas
}

/// The schema a variant names, or by convention `schemas/<name>.schema.json`.
fn resolve_schema(
    fm: &FrontMatter,
    name: &str,
    file: &Path,
    schemas: &HashMap<String, Arc<Schema>>,
    schemas_dir: &Path,
) -> Result<Option<Arc<Schema>>> {
    let Some(value) = &fm.schema else {
        return Ok(schemas.get(&format!("{name}.schema.json")).cloned());
    };
    let rel = value.source.trim_start_matches("./");
    if rel.starts_with('/') || rel.split('/').any(|p| p == "..") {
        return Err(Error::new(
            ErrorKind::Template,
            format!(
                "schema `{}` must be a path under {}",
                value.source,
                schemas_dir.display()
            ),
        )
        .at(file, value.line, 1));
    }
    schemas.get(rel).cloned().map(Some).ok_or_else(|| {
        Error::new(
            ErrorKind::Template,
            format!(
                "schema `{}` not found under {}",
                value.source,
                schemas_dir.display()
            ),
        )
        .at(file, value.line, 1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_in(dir: &Path) -> TemplateSet {
        let write = |rel: &str, text: &str| {
            let path = dir.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        write("templates/_base.html", "<html><head><link rel=stylesheet href=s.css></head><body>{% block b %}{% endblock %}</body></html>");
        write("templates/s.css", "p { color: red }");
        write("templates/a.html", "---\nsubject: \"A {{ n }}\"\nto: a@x.test\n---\n{% extends \"_base.html\" %}{% block b %}<p>a {{ n }}</p>{% endblock %}");
        write("templates/a.txt", "text a {{ n }}");
        write(
            "templates/b.html",
            "---\nsubject: B\nto: b@x.test\n---\n<p>b</p>",
        );
        std::fs::create_dir_all(dir.join("schemas")).unwrap();
        TemplateSet::load(&dir.join("templates"), &dir.join("schemas")).unwrap()
    }

    fn render(set: &TemplateSet, name: &str) -> crate::Rendered {
        crate::render::render(set, name, None, &serde_json::json!({"n": 1})).unwrap()
    }

    #[test]
    fn editing_a_sendable_recompiles_only_it() {
        let dir = tempfile::tempdir().unwrap();
        let set = set_in(dir.path());
        let a = dir.path().join("templates/a.html");
        std::fs::write(&a, "---\nsubject: \"A2 {{ n }}\"\nto: a@x.test\n---\n{% extends \"_base.html\" %}{% block b %}<p>new {{ n }}</p>{% endblock %}").unwrap();
        let next = set.reload(&[a]).unwrap();
        assert!(
            Arc::ptr_eq(&set.stylesheets, &next.stylesheets),
            "reloaded in place"
        );
        let rendered = render(&next, "a");
        assert_eq!(rendered.subject(), "A2 1");
        assert!(
            rendered
                .html()
                .contains("<p style=\"color: red;\">new 1</p>"),
            "{}",
            rendered.html()
        );
        assert_eq!(
            render(&set, "a").subject(),
            "A 1",
            "the old set is untouched"
        );
        assert_eq!(render(&next, "b").subject(), "B");
        let txt = dir.path().join("templates/a.txt");
        std::fs::write(&txt, "text two {{ n }}").unwrap();
        let next = next.reload(&[txt]).unwrap();
        assert_eq!(render(&next, "a").text(), Some("text two 1"));
    }

    #[test]
    fn editing_what_others_use_loads_everything() {
        let dir = tempfile::tempdir().unwrap();
        let set = set_in(dir.path());
        let base = dir.path().join("templates/_base.html");
        std::fs::write(
            &base,
            "<html><body><div>{% block b %}{% endblock %}</div></body></html>",
        )
        .unwrap();
        let next = set.reload(&[base]).unwrap();
        assert!(
            !Arc::ptr_eq(&set.stylesheets, &next.stylesheets),
            "loaded anew"
        );
        assert!(render(&next, "a").html().contains("<div><p>a 1</p></div>"));
        let added = dir.path().join("templates/c.html");
        std::fs::write(&added, "---\nsubject: C\n---\nc").unwrap();
        assert!(next.reload(&[added]).unwrap().entries.contains_key("c"));
    }

    #[test]
    fn a_broken_edit_is_reported_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let set = set_in(dir.path());
        let b = dir.path().join("templates/b.html");
        std::fs::write(&b, "---\nsubject: B\n---\n\n{% if %}").unwrap();
        let err = set.reload(&[b]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Template);
        assert_eq!(err.location().unwrap().line, 5, "{err}");
    }
}
