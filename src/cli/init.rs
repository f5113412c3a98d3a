//! `missive init`: a starter template set a new project can edit right away.
//!
//! The files are the repository's own welcome template, layout, partial and stylesheet,
//! so the starter is always one that `missive check` passes.

use std::path::Path;

use missive::{Error, ErrorKind, Result};

const FILES: &[(&str, &str)] = &[
    ("missive.yaml", CONFIG),
    (
        "templates/welcome.html",
        include_str!("../../templates/welcome.html"),
    ),
    (
        "templates/welcome.txt",
        include_str!("../../templates/welcome.txt"),
    ),
    (
        "templates/_layouts/base.html",
        include_str!("../../templates/_layouts/base.html"),
    ),
    (
        "templates/_partials/ui.html",
        include_str!("../../templates/_partials/ui.html"),
    ),
    (
        "templates/styles/email.css",
        include_str!("../../templates/styles/email.css"),
    ),
    (
        "schemas/welcome.schema.json",
        include_str!("../../schemas/welcome.schema.json"),
    ),
];

const CONFIG: &str = "\
# missive configuration. Secrets never go here: they come from the environment or
# the credentials file `missive auth` writes.
templates: templates
schemas: schemas
from: \"Acme Cloud <hello@acme.example.com>\"
transport:
  type: outbox
  dir: outbox
";

pub fn run(dir: &Path, force: bool) -> Result<()> {
    let existing: Vec<_> = FILES
        .iter()
        .map(|(rel, _)| dir.join(rel))
        .filter(|p| p.exists())
        .collect();
    if !force && !existing.is_empty() {
        let list: Vec<_> = existing.iter().map(|p| p.display().to_string()).collect();
        return Err(Error::new(
            ErrorKind::Io,
            format!(
                "would overwrite {} (use --force to replace them)",
                list.join(", ")
            ),
        ));
    }
    for (rel, contents) in FILES {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| {
                Error::new(
                    ErrorKind::Io,
                    format!("cannot create {}: {e}", parent.display()),
                )
            })?;
        }
        std::fs::write(&path, contents).map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("cannot write {}: {e}", path.display()),
            )
        })?;
        println!("created {}", path.display());
    }
    println!(
        "\nnext: cd {} && missive check && missive send welcome",
        dir.display()
    );
    Ok(())
}
