//! `missive render --watch`: renders again on every save, to a file or to stdout.

use crate::common;

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Only a render that never comes hits this.
const PATIENCE: Duration = Duration::from_secs(30);

fn note(v: u32) -> String {
    format!("---\nsubject: \"Note v{v}\"\nto: a@example.test\n---\n<p>body v{v} for {{{{ name }}}}</p>\n")
}

fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("templates")).unwrap();
    fs::create_dir_all(dir.path().join("schemas")).unwrap();
    fs::write(dir.path().join("templates/note.html"), note(1)).unwrap();
    fs::write(
        dir.path().join("schemas/note.schema.json"),
        r#"{"type": "object", "required": ["name"], "examples": [{"name": "Ada"}]}"#,
    )
    .unwrap();
    dir
}

/// A running `missive render --watch` whose stdout and stderr are collected as they come.
struct Watching {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Watching {
    fn start(dir: &Path, args: &[&str]) -> Watching {
        let mut all = vec!["render", "note", "--watch"];
        all.extend_from_slice(args);
        Watching::start_with(dir, &all)
    }

    fn start_with(dir: &Path, args: &[&str]) -> Watching {
        let mut child = Command::new(common::missive_bin())
            .arg("--templates")
            .arg(dir.join("templates"))
            .arg("--schemas")
            .arg(dir.join("schemas"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let collect = |mut from: Box<dyn Read + Send>| {
            let text = Arc::new(Mutex::new(String::new()));
            let sink = text.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = from.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
            text
        };
        let stdout = collect(Box::new(child.stdout.take().unwrap()));
        let stderr = collect(Box::new(child.stderr.take().unwrap()));
        Watching {
            child,
            stdout,
            stderr,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn render_watch_rewrites_the_out_file_on_every_save() {
    let dir = fixture();
    let out = dir.path().join("out.html");
    let watching = Watching::start(dir.path(), &["--out", out.to_str().unwrap()]);
    let read = || fs::read_to_string(&out).unwrap_or_default();
    wait_for("first render", || read().contains("body v1 for Ada"));
    // Wait until it watches: the first render is announced once written.
    wait_for("watching", || watching.stderr().contains("watching"));

    fs::write(dir.path().join("templates/note.html"), note(2)).unwrap();
    wait_for("second render", || read().contains("body v2 for Ada"));

    fs::write(
        dir.path().join("templates/note.html"),
        "---\nsubject: x\n---\n{% if %}\n",
    )
    .unwrap();
    wait_for("error report", || watching.stderr().contains("note.html:"));
    assert!(
        read().contains("body v2 for Ada"),
        "a broken save leaves the last output"
    );

    fs::write(dir.path().join("templates/note.html"), note(3)).unwrap();
    wait_for("render after the fix", || {
        read().contains("body v3 for Ada")
    });
    assert!(
        watching.stdout().is_empty(),
        "with --out nothing goes to stdout"
    );
}

#[test]
fn render_watch_polls_and_prints_to_stdout() {
    let dir = fixture();
    // --poll implies --watch.
    let watching = Watching::start_with(
        dir.path(),
        &["render", "note", "--format", "json", "--poll", "100"],
    );
    wait_for("first render", || {
        watching.stdout().contains("\"subject\": \"Note v1\"")
    });
    wait_for("watching", || watching.stderr().contains("watching"));
    fs::write(dir.path().join("templates/note.html"), note(2)).unwrap();
    wait_for("second render", || {
        watching.stdout().contains("\"subject\": \"Note v2\"")
    });
    assert!(
        watching.stdout().contains("\"subject\": \"Note v1\""),
        "renders follow one another"
    );
}
