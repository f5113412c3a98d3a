//! The template set: every file under `templates/` and `schemas/`, loaded, checked and
//! compiled once, then shared read-only by every render.
//!
//! Loading gathers every problem it finds rather than stopping at the first, so
//! `missive check` and a hot reload can show them all.

pub(crate) mod front_matter;
pub(crate) mod live;
pub(crate) mod schema;
pub(crate) mod walk;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use minijinja::{AutoEscape, Environment, UndefinedBehavior};

use crate::address::Header;
use crate::error::{Error, ErrorKind, Result};
use crate::inline::Stylesheets;
use front_matter::{FrontMatter, TextMode};
pub(crate) use live::LiveSet;
pub use live::ReloadEvent;
use schema::Schema;

/// Where a compiled minijinja template came from, to turn its errors into file:line.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    pub file: PathBuf,
    /// For the template of a variant's front-matter values: the template line each value
    /// starts on, the file line it stands on and its field. Bodies keep file lines as
    /// they are.
    pub line_map: Option<Vec<(usize, usize, String)>>,
}

impl Source {
    /// The file line of template line `line`, and the front-matter field it is in.
    fn file_line(&self, line: usize) -> (usize, Option<&str>) {
        match &self.line_map {
            None => (line, None),
            Some(map) => map
                .iter()
                .take_while(|(start, _, _)| *start <= line)
                .last()
                .map_or((1, None), |(_, file_line, field)| {
                    (*file_line, Some(field.as_str()))
                }),
        }
    }
}

/// Separates the rendered front-matter values in the output of their shared template.
pub(crate) const FIELD_SEPARATOR: &str = "\u{1e}\n";

/// The variable that tells the front-matter template which addresses the caller gave
/// (`to`, `cc`, `bcc`, `reply_to`: true when given); set only when some are.
pub(crate) const GIVEN: &str = "__missive_given";

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
    /// Which field it is (`subject`, `to[1]`, `headers.X-Id`), for errors.
    pub field: String,
    /// The addresses of an address field used as written, parsed at its first render:
    /// the text never changes, and parsing it is most of what such a field costs.
    pub addresses: std::sync::OnceLock<std::result::Result<Vec<lettre::message::Mailbox>, String>>,
}

/// The front-matter of one variant, ready to render.
///
/// Values with template syntax share one minijinja template, one value per line: each
/// compiled template costs kilobytes, and a set can have thousands of values.
#[derive(Debug, Clone)]
pub(crate) struct Fields {
    pub header: Header<Field, Field>,
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
    /// Locale variants whose base template failed to load (only in a partial load):
    /// still checked, never sendable.
    pub orphans: Vec<Arc<Variant>>,
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
    /// How many validators the set's schemas keep compiled, for a reload to keep.
    compiled: usize,
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
    /// Loads and compiles everything under `templates_dir` and `schemas_dir`,
    ///
    /// keeping up to `compiled` schema validators compiled.
    ///
    /// On failure the error lists every problem found ([`Error::problems`]).
    pub(crate) fn load(
        templates_dir: &Path,
        schemas_dir: &Path,
        compiled: usize,
    ) -> Result<TemplateSet> {
        let (set, errors) = TemplateSet::load_partial(templates_dir, schemas_dir, compiled)?;
        if let Some(error) = Error::from_many(errors) {
            tracing::warn!(
                problems = error.problems().count(),
                "template set has problems"
            );
            return Err(error);
        }
        tracing::info!(templates = set.entries.len(), "template set loaded");
        Ok(set)
    }

    /// Loads what does load, for `missive check`: the set of every file that compiled,
    /// and the problems of the others, each once. A file that only fails because one it
    /// uses failed (a locale variant of a broken base, a template naming a schema that
    /// does not parse, a `<link>` to a stylesheet that cannot be read) adds no problem
    /// of its own; rendering one that extends, includes or imports a broken file fails
    /// with an error that [`Error::is_follow_on`] marks. The set keeps up to `compiled`
    /// schema validators compiled ([`schema::Validators`]).
    ///
    /// `Err` only when a folder cannot be read at all.
    pub(crate) fn load_partial(
        templates_dir: &Path,
        schemas_dir: &Path,
        compiled: usize,
    ) -> Result<(TemplateSet, Vec<Error>)> {
        let _span = tracing::info_span!("load", templates = %templates_dir.display()).entered();
        let mut errors = Vec::new();
        let files = walk::walk(templates_dir, &mut errors)?;
        let schema_files = if schemas_dir.is_dir() {
            walk::walk(schemas_dir, &mut errors)?
        } else {
            Vec::new()
        };
        let mut builder = Builder::new(templates_dir);
        let schemas = load_schemas(
            &schema_files,
            compiled,
            &mut builder.broken_schemas,
            &mut errors,
        );
        builder.add_files(&files, &mut errors);
        builder.add_sendables(&files, &schemas, schemas_dir, &mut errors);
        builder.check_links(None, &mut errors);
        let origin = Origin {
            root: templates_dir.canonicalize().ok(),
            schemas_dir: schemas_dir.to_path_buf(),
            files,
            schemas,
            compiled,
        };
        Ok((builder.finish(Arc::new(origin), None), errors))
    }

    /// The set as it is on disk after `changed` files were saved.
    ///
    /// When only sendable templates (or their `.txt` bodies) that the set already has
    /// were edited, only those are compiled again, on a copy of this set that shares
    /// everything else; a change to anything others depend on — a layout, partial,
    /// stylesheet or schema — or a file added or removed loads the whole set.
    pub(crate) fn reload(&self, changed: &[PathBuf]) -> Result<TemplateSet> {
        match self.reload_only(changed) {
            Some(result) => result,
            None => TemplateSet::load(
                &self.templates_dir,
                &self.origin.schemas_dir,
                self.origin.compiled,
            ),
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
    pub(crate) fn empty(templates_dir: &Path) -> TemplateSet {
        Builder::new(templates_dir).finish(Arc::default(), None)
    }

    /// The variant of `name` for `locale`: `fr-CA`, then `fr`, then the base.
    pub(crate) fn variant(&self, name: &str, locale: Option<&str>) -> Result<&Arc<Variant>> {
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
    pub(crate) fn variants(&self) -> impl Iterator<Item = &Arc<Variant>> {
        self.entries
            .values()
            .flat_map(|e| std::iter::once(&e.base).chain(e.locales.values()))
    }

    /// Turns a minijinja error into ours, with the file and line it happened at.
    pub(crate) fn jinja_error(&self, err: &minijinja::Error, kind: ErrorKind) -> Error {
        let source_of = |name: &str| {
            self.env
                .get_template(name)
                .ok()
                .map(|t| t.source().to_string())
        };
        jinja_error(&self.sources, err, kind, &source_of)
    }
}

/// Maps a minijinja error onto the file and line it came from, naming the undefined
/// variable where that is the problem.
///
/// An error inside an `{% include %}` or `{% import %}` comes wrapped once per level
/// ("could not render include: error in …"); the innermost is the one that says what
/// is wrong and where, and the levels say which files lead to it. `source_of` gives a
/// template's text, to follow `{% extends %}` when inheritance goes round in a cycle.
pub(crate) fn jinja_error(
    sources: &HashMap<String, Source>,
    err: &minijinja::Error,
    kind: ErrorKind,
    source_of: &dyn Fn(&str) -> Option<String>,
) -> Error {
    let mut chain = vec![err];
    let mut next = std::error::Error::source(err);
    while let Some(cause) = next {
        if let Some(inner) = cause.downcast_ref::<minijinja::Error>() {
            chain.push(inner);
        }
        next = cause.source();
    }
    let inner = chain[chain.len() - 1];
    let includes: Vec<&minijinja::Error> = chain
        .iter()
        .copied()
        .filter(|e| e.kind() == minijinja::ErrorKind::BadInclude)
        .collect();
    let at = |name: Option<&str>, line: Option<usize>| -> Option<(&Source, usize, Option<&str>)> {
        let source = sources.get(name?)?;
        let (line, field) = source.file_line(line.unwrap_or(1));
        Some((source, line, field))
    };
    if let Some((cycle, closing)) = include_cycle(&includes, inner) {
        let mut error = Error::new(
            kind,
            format!(
                "`include`/`import` cycle: {} (each file includes or imports the next;                  a template that includes itself needs a condition that ends it)",
                cycle.join(" → ")
            ),
        );
        if let Some((source, line, _)) = at(closing.name(), closing.line()) {
            error = error.at(&source.file, line, 1);
        }
        return error;
    }
    let mut message = match inner.kind() {
        minijinja::ErrorKind::UndefinedError => {
            let expr = inner
                .range()
                .zip(inner.template_source())
                .and_then(|(range, text)| text.get(range))
                .map(|e| e.trim().to_string());
            match expr {
                Some(expr) if !expr.is_empty() => {
                    format!("undefined value `{expr}` (test it with `{{% if %}}` or give it a `default`)")
                }
                _ => "undefined value".to_string(),
            }
        }
        minijinja::ErrorKind::InvalidOperation
            if inner
                .detail()
                .is_some_and(|d| d.starts_with("cycle in template inheritance")) =>
        {
            // "… \"_a.html\" was referenced more than once": the cycle starts there.
            let again = inner.detail().and_then(|d| d.split('"').nth(1));
            match extends_cycle(again, source_of) {
                Some(cycle) => format!("`extends` cycle: {}", cycle.join(" → ")),
                None => format!("`extends` cycle: {}", inner.detail().unwrap_or_default()),
            }
        }
        other => match inner.detail() {
            Some(detail) => format!("{other}: {detail}"),
            None => other.to_string(),
        },
    };
    let place = at(inner.name(), inner.line());
    if let (None, Some(name)) = (&place, inner.name()) {
        message.push_str(&format!(" (in {name})"));
    }
    if let Some(outer) = includes.first() {
        if let Some((source, line, _)) = at(outer.name(), outer.line()) {
            message.push_str(&format!(
                " (included from {}:{line})",
                source.file.display()
            ));
        }
    }
    let error = match place {
        Some((source, line, field)) => {
            if let Some(field) = field {
                message = format!("front-matter `{field}`: {message}");
            }
            Error::new(kind, message).at(&source.file, line, 1)
        }
        None => Error::new(kind, message),
    };
    // In a partial load: it uses a file that failed, whose own error says why.
    if inner.detail().is_some_and(|d| d.ends_with(BROKEN)) {
        error.follow_on()
    } else {
        error
    }
}

/// When `includes` (outermost first) ended in minijinja's recursion limit because
/// templates include each other: the names from the outermost to the first one met
/// again, and the include that goes back.
fn include_cycle<'e>(
    includes: &[&'e minijinja::Error],
    inner: &'e minijinja::Error,
) -> Option<(Vec<String>, &'e minijinja::Error)> {
    let limit = inner.kind() == minijinja::ErrorKind::InvalidOperation
        && inner.detail() == Some("recursion limit exceeded");
    if !limit || includes.is_empty() {
        return None;
    }
    // Level i is the include statement in template i; template i + 1 is what it named.
    let levels: Vec<&minijinja::Error> = includes.iter().copied().chain([inner]).collect();
    let mut names: Vec<String> = Vec::new();
    for (i, level) in levels.iter().enumerate() {
        let name = level.name()?.to_string();
        if names.contains(&name) {
            names.push(name);
            return Some((names, levels[i - 1]));
        }
        names.push(name);
    }
    None
}

/// The chain of literal `{% extends "…" %}` from `start` until a name comes again.
fn extends_cycle(
    start: Option<&str>,
    source_of: &dyn Fn(&str) -> Option<String>,
) -> Option<Vec<String>> {
    let mut names = vec![start?.to_string()];
    loop {
        let parent = extends_target(&source_of(names.last()?)?)?;
        let again = names.contains(&parent);
        names.push(parent);
        if again {
            return Some(names);
        }
    }
}

/// The name in a template's first `{% extends "name" %}`, if it is a literal.
fn extends_target(text: &str) -> Option<String> {
    let mut rest = text;
    while let Some(open) = rest.find("{%") {
        let tag = rest[open + 2..].trim_start_matches(['-', '+']).trim_start();
        if let Some(args) = tag.strip_prefix("extends") {
            let args = args.trim_start();
            let quote = args.chars().next().filter(|c| *c == '"' || *c == '\'')?;
            let body = &args[1..];
            return body.find(quote).map(|end| body[..end].to_string());
        }
        rest = &rest[open + 2..];
    }
    None
}

/// HTML-escapes what HTML needs escaped. minijinja's escaper also writes `/` as
/// `&#x2f;`, which is harmless but fills every URL a recipient sees in the source with it.
fn write_escaped(out: &mut minijinja::Output, text: &str) -> Result<(), minijinja::Error> {
    let failed = |_| minijinja::Error::new(minijinja::ErrorKind::WriteFailure, "output failed");
    // The five are ASCII, so every cut is a character boundary; they are searched for
    // a word at a time, which is several times cheaper than a search for any of five
    // chars.
    let mut rest = text;
    while let Some(at) = crate::html::find_escapable(rest.as_bytes()) {
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
    /// Files under the templates folder that failed to load, by name: whatever uses
    /// them fails too, and must not report that as a problem of its own.
    broken: HashSet<String>,
    /// Schema files that failed to load, by name under the schemas folder.
    broken_schemas: HashSet<String>,
    orphans: Vec<Arc<Variant>>,
}

/// What the loader says of a template that is in the folder but failed to load.
const BROKEN: &str = "failed to load; see its own error";

/// Refuses names that leave the folder, and says of `broken` ones that they failed.
/// Everything the set may include was added up front; the loader only runs for names
/// that are not there, to say why they fail.
fn set_loader(env: &mut Environment<'static>, broken: HashSet<String>) {
    env.set_loader(move |name| {
        if name.split('/').any(|part| part == "..") || name.starts_with('/') {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                format!("`{name}` is outside the templates folder and is never read"),
            ))
        } else if broken.contains(name) {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                format!("`{name}` {BROKEN}"),
            ))
        } else {
            Ok(None)
        }
    });
}

impl Builder {
    fn new(templates_dir: &Path) -> Builder {
        let mut env = Environment::new();
        // minijinja keeps the source and span an error needs to name the failing
        // expression only in debug mode, which it otherwise ties to `debug_assertions`:
        // release builds (what `cargo install` makes) would say just "undefined value".
        // It costs nothing until an error is made.
        env.set_debug(true);
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
        set_loader(&mut env, HashSet::new());
        Builder {
            templates_dir: templates_dir.to_path_buf(),
            env,
            sources: HashMap::new(),
            stylesheets: HashMap::new(),
            entries: BTreeMap::new(),
            html: Vec::new(),
            broken: HashSet::new(),
            broken_schemas: HashSet::new(),
            orphans: Vec::new(),
        }
    }

    fn add(
        &mut self,
        name: String,
        text: String,
        file: &Path,
        line_map: Option<Vec<(usize, usize, String)>>,
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
            .map_err(|e| jinja_error(&self.sources, &e, ErrorKind::Template, &|_| None))
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
                self.broken.insert(file.rel.clone());
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
                Err(e) => {
                    self.broken.insert(file.rel.clone());
                    errors.extend(
                        e.problems()
                            .map(Error::clone_shallow)
                            .filter(|e| !e.is_follow_on()),
                    );
                }
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
            let base_file = format!("{}.html", variant.name);
            match self.entries.get_mut(&variant.name) {
                Some(entry) => {
                    entry.locales.insert(key, Arc::new(variant));
                }
                // Its base has an error of its own; this variant is still checked.
                None if self.broken.contains(&base_file) => self.orphans.push(Arc::new(variant)),
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
        // The body, the fields and the schema are independent: one run reports all three.
        let body = self.add(file.rel.clone(), body, &file.path, None);
        let text_name = format!("{stem}.txt");
        let text = files
            .iter()
            .any(|f| f.rel == text_name)
            .then_some(text_name);
        let fields = self.compile_fields(&file.rel, &file.path, &fm);
        let schema = resolve_schema(
            &fm,
            name,
            &file.path,
            schemas,
            &self.broken_schemas,
            schemas_dir,
        );
        let (fields, schema) = match (body, fields, schema) {
            (Ok(()), Ok(fields), Ok(schema)) => (fields, schema),
            (body, fields, schema) => {
                // Each may hold several (every broken field): one flat list, by line.
                let mut problems: Vec<Error> = [body.err(), fields.err(), schema.err()]
                    .iter()
                    .flatten()
                    .flat_map(|e| e.problems().map(Error::clone_shallow))
                    .collect();
                problems.sort_by_key(|e| e.location().map(|l| l.line));
                return Err(Error::from_many(problems)
                    .unwrap_or_else(|| Error::new(ErrorKind::Template, "failed to load")));
            }
        };
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
                        Error::new(
                            ErrorKind::Template,
                            format!("front-matter `{}`: {}{detail}", value.field, e.kind()),
                        )
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
                field: value.field.clone(),
                addresses: std::sync::OnceLock::new(),
            })
        };
        // Every broken value is reported, not only the first.
        let mut problems = Vec::new();
        let mut ok = |result: Result<Field>| match result {
            Ok(f) => Some(f),
            Err(e) => {
                problems.push(e);
                None
            }
        };
        let subject = ok(field(&fm.subject));
        let from = fm.from.as_ref().and_then(|v| ok(field(v)));
        let reply_to = fm.reply_to.as_ref().and_then(|v| ok(field(v)));
        let to: Vec<Field> = fm.to.iter().filter_map(|v| ok(field(v))).collect();
        let cc: Vec<Field> = fm.cc.iter().filter_map(|v| ok(field(v))).collect();
        let bcc: Vec<Field> = fm.bcc.iter().filter_map(|v| ok(field(v))).collect();
        let headers: Vec<(String, Field)> = fm
            .headers
            .iter()
            .filter_map(|(n, v)| Some((n.clone(), ok(field(v))?)))
            .collect();
        let subject = match (subject, Error::from_many(problems)) {
            (Some(subject), None) => subject,
            (_, problem) => {
                return Err(
                    problem.unwrap_or_else(|| Error::new(ErrorKind::Template, "`subject` failed"))
                )
            }
        };
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
                line_map.push((line, value.line, value.field.clone()));
                // An address the caller may replace renders only when not replaced, so
                // that a value it does not need cannot fail the send.
                let group = value.field.split('[').next().unwrap_or_default();
                if matches!(group, "to" | "cc" | "bcc" | "reply_to") {
                    source.push_str(&format!(
                        "{{% if {GIVEN} is not defined or not {GIVEN}.{group} %}}"
                    ));
                    source.push_str(&value.source);
                    source.push_str("{% endif %}");
                } else {
                    source.push_str(&value.source);
                }
                line += value.source.matches('\n').count();
            }
            let name = format!("{html}#front-matter");
            self.add(name.clone(), source, file, Some(line_map))?;
            Some(name)
        };
        Ok(Fields {
            header: Header {
                subject,
                from,
                reply_to,
                to,
                cc,
                bcc,
                headers,
            },
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
            if let Err(e) = crate::inline::check_static_links(&text, &file, sheets, &self.broken) {
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
            broken: HashSet::new(),
            broken_schemas: HashSet::new(),
            orphans: Vec::new(),
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

    fn finish(mut self, origin: Arc<Origin>, stylesheets: Option<Arc<Stylesheets>>) -> TemplateSet {
        if !self.broken.is_empty() {
            set_loader(&mut self.env, std::mem::take(&mut self.broken));
        }
        TemplateSet {
            templates_dir: self.templates_dir,
            orphans: self.orphans,
            env: self.env,
            entries: self.entries,
            stylesheets: stylesheets
                .unwrap_or_else(|| Arc::new(Stylesheets::new(self.stylesheets))),
            sources: self.sources,
            origin,
        }
    }
}

fn load_schemas(
    files: &[walk::File],
    compiled: usize,
    broken: &mut HashSet<String>,
    errors: &mut Vec<Error>,
) -> HashMap<String, Arc<Schema>> {
    let mut schemas = HashMap::new();
    let validators = schema::Validators::new(compiled);
    for (id, file) in files
        .iter()
        .filter(|f| f.rel.ends_with(".json"))
        .enumerate()
    {
        match file
            .read()
            .and_then(|text| Schema::compile(&file.path, &text, id, &validators))
        {
            Ok(schema) => {
                schemas.insert(file.rel.clone(), Arc::new(schema));
            }
            Err(e) => {
                broken.insert(file.rel.clone());
                errors.push(e);
            }
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
    broken: &HashSet<String>,
    schemas_dir: &Path,
) -> Result<Option<Arc<Schema>>> {
    // A schema that failed to load has its own error; the template cannot be checked.
    let follow_on = |rel: &str| {
        Error::new(
            ErrorKind::Template,
            format!("schema `{rel}` failed to load"),
        )
        .follow_on()
    };
    let Some(value) = &fm.schema else {
        let rel = format!("{name}.schema.json");
        if broken.contains(&rel) {
            return Err(follow_on(&rel));
        }
        return Ok(schemas.get(&rel).cloned());
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
    if broken.contains(rel) {
        return Err(follow_on(rel));
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
        TemplateSet::load(
            &dir.join("templates"),
            &dir.join("schemas"),
            schema::COMPILED_VALIDATORS,
        )
        .unwrap()
    }

    fn render(set: &TemplateSet, name: &str) -> crate::Rendered {
        crate::render::render(
            set,
            name,
            None,
            &std::sync::Arc::new(serde_json::json!({"n": 1})),
            &Default::default(),
        )
        .unwrap()
    }

    /// A full reload (a shared file changed) keeps the number of compiled validators the
    /// set was loaded with, not the default.
    #[test]
    fn a_full_reload_keeps_the_compiled_validator_limit() {
        let dir = tempfile::tempdir().unwrap();
        set_in(dir.path());
        let set = TemplateSet::load(
            &dir.path().join("templates"),
            &dir.path().join("schemas"),
            3,
        )
        .unwrap();
        assert_eq!(set.origin.compiled, 3);
        let shared = dir.path().join("templates/s.css");
        std::fs::write(&shared, "p { color: blue }").unwrap();
        let next = set.reload(&[shared]).unwrap();
        assert!(!Arc::ptr_eq(&set.origin, &next.origin), "loaded again");
        assert_eq!(next.origin.compiled, 3);
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
