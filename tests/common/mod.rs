//! Helpers shared by the black-box tests: throwaway template sets on disk.

#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};

/// A template set in a temporary folder: `templates/` and `schemas/` side by side.
pub struct Fixture {
    pub dir: tempfile::TempDir,
}

/// A minimal layout and sendable template, for tests that break one thing at a time.
pub const BASE_LAYOUT: &str = "<!DOCTYPE html>\n<html><head><link rel=\"stylesheet\" href=\"styles/mail.css\"></head>\n<body>{% block content %}{% endblock %}</body></html>\n";
pub const STYLES: &str = "p { color: #333333; }\n.cta:hover { color: red; }\n";
pub const HELLO: &str = "---\nsubject: \"Hello {{ name }}\"\nto: \"{{ name }} <{{ email }}>\"\n---\n{% extends \"_layouts/base.html\" %}\n{% block content %}<p>Hi {{ name }}</p>{% endblock %}\n";

impl Fixture {
    /// A set with a layout, a stylesheet and a `hello` template.
    pub fn new() -> Fixture {
        let fixture = Fixture::empty();
        fixture.write("templates/_layouts/base.html", BASE_LAYOUT);
        fixture.write("templates/styles/mail.css", STYLES);
        fixture.write("templates/hello.html", HELLO);
        fixture
    }

    /// Just the two folders.
    pub fn empty() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("templates")).expect("templates dir");
        std::fs::create_dir_all(dir.path().join("schemas")).expect("schemas dir");
        Fixture { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, contents: &str) -> &Fixture {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, contents).expect("write");
        self
    }

    pub fn templates(&self) -> PathBuf {
        self.path("templates")
    }

    pub fn schemas(&self) -> PathBuf {
        self.path("schemas")
    }

    /// Builds a mailer over the set with the in-memory transport.
    pub fn mailer(&self) -> missive::Result<(missive::Mailer, missive::Inbox)> {
        missive::Mailer::builder()
            .templates(self.templates())
            .schemas(self.schemas())
            .from("Acme <hello@acme.test>")
            .build_in_memory()
    }

    /// The error the set fails to load with.
    pub fn load_error(&self) -> missive::Error {
        match self.mailer() {
            Ok(_) => panic!("expected the template set to fail loading"),
            Err(e) => e,
        }
    }
}

/// The `missive` binary under test: `$MISSIVE_BIN` when set (CI points it at the
/// release build, which is what `cargo install` makes and where debug-only behaviour
/// would hide), else the one cargo built beside these tests. Relative to the crate.
pub fn missive_bin() -> PathBuf {
    match std::env::var_os("MISSIVE_BIN") {
        Some(path) => Path::new(env!("CARGO_MANIFEST_DIR")).join(path),
        None => PathBuf::from(env!("CARGO_BIN_EXE_missive")),
    }
}

/// The repository's own example set.
pub fn repo() -> (PathBuf, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    (root.join("templates"), root.join("schemas"))
}

/// Copies a folder tree, e.g. the example set into a temporary folder tests can edit.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

/// Asserts the error's location names `file` (a path ending) and `line`.
pub fn assert_at(err: &missive::Error, file: &str, line: usize) {
    let location = err
        .location()
        .unwrap_or_else(|| panic!("no location in {err}"));
    assert!(
        location.file.ends_with(file),
        "expected file {file}, got {} ({err})",
        location.file.display()
    );
    assert_eq!(location.line, line, "wrong line in {err}");
    assert!(
        err.to_string()
            .contains(&format!("{}:{line}:", location.file.display())),
        "display lacks file:line: {err}"
    );
}
