//! Listing a folder without ever leaving it.
//!
//! Symbolic links are followed only while they stay inside the folder; one that leads
//! out is an error, not a silent skip, so a designer sees why a file is missing.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};

/// A file found under the folder.
#[derive(Debug, Clone)]
pub(crate) struct File {
    /// Path relative to the folder, `/`-separated: the name templates use.
    pub rel: String,
    /// The folder joined with `rel`, for messages and reading.
    pub path: PathBuf,
}

/// What a file is to the template set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `.html` outside any `_` folder: a template that can be sent.
    Sendable,
    /// `.txt` outside any `_` folder: the text body beside a sendable.
    Text,
    /// Any `.html`/`.txt` file under a `_`-prefixed name: layouts, partials, macros.
    Partial,
    /// `.css`: linked from templates and inlined.
    Stylesheet,
    /// Anything else (images, notes): not part of the set.
    Other,
}

impl File {
    pub(crate) fn kind(&self) -> Kind {
        let private = self.rel.split('/').any(|part| part.starts_with('_'));
        let ext = self.rel.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
        match (ext, private) {
            ("css", _) => Kind::Stylesheet,
            ("html" | "htm" | "txt", true) => Kind::Partial,
            ("html", false) => Kind::Sendable,
            ("txt", false) => Kind::Text,
            _ => Kind::Other,
        }
    }

    pub(crate) fn read(&self) -> Result<String> {
        std::fs::read_to_string(&self.path).map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => Error::new(
                ErrorKind::Template,
                format!("{} is not UTF-8 text", self.rel),
            )
            .at(&self.path, 1, 1),
            _ => Error::io(&self.path, "read", e),
        })
    }
}

/// Splits `welcome.fr-CA` into (`welcome`, `fr-CA`); a stem without a locale-shaped
/// last part is all name.
pub(crate) fn split_locale(stem: &str) -> (&str, Option<&str>) {
    match stem.rsplit_once('.') {
        Some((name, tag)) if is_locale(tag) && !name.is_empty() => (name, Some(tag)),
        _ => (stem, None),
    }
}

/// BCP 47-ish: a 2–3 letter language, then alphanumeric subtags of 2–8.
fn is_locale(tag: &str) -> bool {
    let mut parts = tag.split(['-', '_']);
    let lang = parts.next().unwrap_or("");
    (2..=3).contains(&lang.len())
        && lang.bytes().all(|b| b.is_ascii_lowercase())
        && parts.all(|p| (2..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Files editors leave behind while saving; never part of the set.
pub(crate) fn is_editor_litter(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with('~')
        || name.starts_with('#')
        || name.ends_with(".swp")
        || name.ends_with(".swx")
        || name.ends_with(".tmp")
        || name == "4913"
}

/// Every file under `dir`, in a stable order.
pub(crate) fn walk(dir: &Path, errors: &mut Vec<Error>) -> Result<Vec<File>> {
    let root = dir.canonicalize().map_err(|e| {
        Error::new(
            ErrorKind::Config,
            format!("cannot open folder {}: {e}", dir.display()),
        )
    })?;
    if !root.is_dir() {
        return Err(Error::new(
            ErrorKind::Config,
            format!("{} is not a folder", dir.display()),
        ));
    }
    let mut files = Vec::new();
    let mut seen = HashSet::new();
    seen.insert(root.clone());
    walk_dir(&root, dir, "", &mut files, &mut seen, errors);
    files.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(files)
}

fn walk_dir(
    root: &Path,
    display: &Path,
    rel: &str,
    files: &mut Vec<File>,
    seen: &mut HashSet<PathBuf>,
    errors: &mut Vec<Error>,
) {
    let here = display.join(rel);
    let entries = match std::fs::read_dir(&here) {
        Ok(entries) => entries,
        Err(e) => {
            errors.push(Error::io(&here, "list", e));
            return;
        }
    };
    for entry in entries.flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            errors.push(
                Error::new(ErrorKind::Template, "file name is not UTF-8").at(entry.path(), 1, 1),
            );
            continue;
        };
        if is_editor_litter(&name) {
            continue;
        }
        let child_rel = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let path = display.join(&child_rel);
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue;
        };
        let is_dir = if meta.file_type().is_symlink() {
            match entry.path().canonicalize() {
                Ok(target) if target.starts_with(root) => {
                    if target.is_dir() && !seen.insert(target) {
                        continue;
                    }
                    entry.path().is_dir()
                }
                Ok(_) => {
                    errors.push(
                        Error::new(
                            ErrorKind::Template,
                            format!(
                                "`{child_rel}` is a link that leaves {}; templates never read outside their folder",
                                display.display()
                            ),
                        )
                        .at(&path, 1, 1),
                    );
                    continue;
                }
                Err(e) => {
                    errors.push(Error::io(&path, "follow link", e));
                    continue;
                }
            }
        } else {
            meta.is_dir()
        };
        if is_dir {
            walk_dir(root, display, &child_rel, files, seen, errors);
        } else {
            files.push(File {
                rel: child_rel,
                path,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locales_are_recognised() {
        assert_eq!(split_locale("welcome.fr"), ("welcome", Some("fr")));
        assert_eq!(split_locale("welcome.fr-CA"), ("welcome", Some("fr-CA")));
        assert_eq!(split_locale("account/reset"), ("account/reset", None));
        assert_eq!(split_locale("v1.2"), ("v1.2", None));
        assert_eq!(split_locale("notes.draft"), ("notes.draft", None));
    }

    #[test]
    fn kinds_follow_names() {
        let file = |rel: &str| File {
            rel: rel.into(),
            path: PathBuf::from(rel),
        };
        assert_eq!(file("welcome.html").kind(), Kind::Sendable);
        assert_eq!(file("welcome.txt").kind(), Kind::Text);
        assert_eq!(file("_layouts/base.html").kind(), Kind::Partial);
        assert_eq!(file("a/_button.html").kind(), Kind::Partial);
        assert_eq!(file("styles/email.css").kind(), Kind::Stylesheet);
        assert_eq!(file("logo.png").kind(), Kind::Other);
    }

    #[test]
    fn editor_files_are_skipped() {
        for name in [
            ".welcome.html.swp",
            "welcome.html~",
            "#welcome.html#",
            "4913",
        ] {
            assert!(is_editor_litter(name), "{name}");
        }
        assert!(!is_editor_litter("welcome.html"));
    }

    #[cfg(unix)]
    #[test]
    fn links_out_of_the_folder_are_refused() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.html"), "x").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ok.html"), "x").unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("secret.html"),
            dir.path().join("leak.html"),
        )
        .unwrap();
        std::os::unix::fs::symlink(dir.path().join("ok.html"), dir.path().join("alias.html"))
            .unwrap();
        let mut errors = Vec::new();
        let files = walk(dir.path(), &mut errors).unwrap();
        let names: Vec<_> = files.iter().map(|f| f.rel.as_str()).collect();
        assert_eq!(names, ["alias.html", "ok.html"]);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].message().contains("leaves"), "{}", errors[0]);
    }
}
