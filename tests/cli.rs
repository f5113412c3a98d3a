//! The `missive` binary, black-box: exit codes, output formats, files written.

mod common;

use assert_cmd::Command;
use common::{repo, Fixture};
use predicates::prelude::*;

fn missive() -> Command {
    let mut cmd = Command::cargo_bin("missive").expect("binary");
    cmd.env_remove("MISSIVE_CONFIG").env_remove("RUST_LOG");
    cmd
}

/// `missive` run from the repository root, where the example set is.
fn in_repo() -> Command {
    let mut cmd = missive();
    cmd.current_dir(repo().0.parent().unwrap());
    cmd
}

#[test]
fn check_passes_on_the_example_set() {
    in_repo()
        .arg("check")
        .assert()
        .success()
        .stdout("")
        .stderr(predicate::str::contains("0 problems"));
}

#[test]
fn check_prints_path_line_col_and_fails() {
    let f = Fixture::new();
    f.write(
        "templates/bad.html",
        "---\nsubject: Hi\nsubjekt: typo\n---\nx\n",
    );
    f.write(
        "templates/worse.html",
        "---\nsubject: Hi\n---\n\n{% for %}\n",
    );
    let assert = missive()
        .current_dir(f.dir.path())
        .arg("check")
        .assert()
        .code(1);
    let out = String::from_utf8(assert.get_output().stdout.clone()).unwrap();
    let lines: Vec<_> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("templates/bad.html:3:"), "{out}");
    assert!(lines[1].starts_with("templates/worse.html:5:1: "), "{out}");
}

#[test]
fn check_prints_one_line_per_schema_violation() {
    let f = Fixture::new();
    f.write(
        "schemas/hello.schema.json",
        "{\n  \"type\": \"object\",\n  \"required\": [\"name\", \"email\"],\n  \"examples\": [{}]\n}\n",
    );
    missive()
        .current_dir(f.dir.path())
        .arg("check")
        .assert()
        .code(1)
        .stdout(
            predicate::str::contains("schemas/hello.schema.json:4:1: example 0 does not match its own schema: (root): \"name\" is a required property")
                .and(predicate::str::contains("\"email\" is a required property")),
        );
}

#[test]
fn render_formats() {
    in_repo()
        .args(["render", "welcome"])
        .assert()
        .success()
        .stdout(
            predicate::str::starts_with("<!DOCTYPE html>")
                .and(predicate::str::contains("style=\"")),
        );
    in_repo()
        .args(["render", "welcome", "--format", "text"])
        .assert()
        .success()
        .stdout(predicate::str::contains("Welcome aboard"));
    in_repo()
        .args([
            "render",
            "orders/receipt",
            "--format",
            "eml",
            "--example",
            "1",
        ])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("MIME-Version: 1.0")
                .and(predicate::str::contains("Message-ID: <")),
        );
    let out = in_repo()
        .args(["render", "welcome", "--format", "json", "--locale", "fr-CA"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "subject", "from", "to", "cc", "bcc", "reply_to", "headers", "html", "text",
    ] {
        assert!(json.get(key).is_some(), "missing {key}");
    }
    assert_eq!(json["locale"], "fr");
}

#[test]
fn render_reads_data_from_a_file_or_stdin() {
    let f = Fixture::new();
    f.write("data.json", r#"{"name": "Ada", "email": "ada@x.test"}"#);
    f.write("data.yaml", "name: Grace\nemail: grace@x.test\n");
    missive()
        .current_dir(f.dir.path())
        .args(["render", "hello", "--format", "text", "--data", "data.json"])
        .assert()
        .success()
        .stdout("Hi Ada\n");
    missive()
        .current_dir(f.dir.path())
        .args(["render", "hello", "--format", "text", "--data", "data.yaml"])
        .assert()
        .success()
        .stdout("Hi Grace\n");
    missive()
        .current_dir(f.dir.path())
        .args(["render", "hello", "--format", "text", "--data", "-"])
        .write_stdin(r#"{"name": "Linus", "email": "l@x.test"}"#)
        .assert()
        .success()
        .stdout("Hi Linus\n");
}

#[test]
fn render_errors_name_the_file_and_exit_1() {
    let f = Fixture::new();
    f.write("data.json", "{\n  \"name\": \"Ada\",\n}");
    missive()
        .current_dir(f.dir.path())
        .args(["render", "hello", "--data", "data.json"])
        .assert()
        .code(1)
        .stderr(predicate::str::starts_with(
            "data.json:3:1: invalid JSON data",
        ));
    missive()
        .current_dir(f.dir.path())
        .args(["render", "hello", "--data", "-"])
        .write_stdin(r#"{"name": "Ada"}"#)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "templates/hello.html:3:1: undefined value `email`",
        ));
    missive()
        .current_dir(f.dir.path())
        .args(["render", "nope"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("no template named `nope`"));
    in_repo()
        .args(["render", "welcome", "--example", "99"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("no example 99"));
}

#[test]
fn usage_errors_exit_2() {
    missive().arg("frobnicate").assert().code(2);
    missive().args(["render"]).assert().code(2);
    missive()
        .args(["render", "x", "--format", "pdf"])
        .assert()
        .code(2);
}

#[test]
fn send_writes_to_the_outbox_by_default() {
    let f = Fixture::new();
    f.write("d.json", r#"{"name": "Ada", "email": "ada@x.test"}"#);
    missive()
        .current_dir(f.dir.path())
        .args(["send", "hello", "--data", "d.json", "--to", "grace@x.test"])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "to grace@x.test (written to outbox/",
        ));
    assert_eq!(eml_files(&f.path("outbox")), 1);
}

#[test]
fn config_file_is_honoured() {
    let f = Fixture::new();
    f.write(
        "conf/missive.yaml",
        "templates: ../templates\nschemas: ../schemas\nfrom: \"Ops <ops@acme.test>\"\ntransport:\n  type: outbox\n  dir: ../mail\n",
    );
    f.write("d.json", r#"{"name": "Ada", "email": "ada@x.test"}"#);
    missive()
        .current_dir(f.dir.path())
        .args([
            "--config",
            "conf/missive.yaml",
            "send",
            "hello",
            "--data",
            "d.json",
        ])
        .assert()
        .success()
        .stdout(predicate::str::contains("@acme.test>"));
    assert_eq!(eml_files(&f.path("mail")), 1);
    missive()
        .current_dir(f.dir.path())
        .env("MISSIVE_CONFIG", "conf/missive.yaml")
        .arg("check")
        .assert()
        .success();
    f.write("conf/bad.yaml", "from: x@y.test\nrefresh_token: abc123\n");
    missive()
        .current_dir(f.dir.path())
        .args(["--config", "conf/bad.yaml", "check"])
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("conf/bad.yaml:2:1:")
                .and(predicate::str::contains("abc123").not()),
        );
}

#[test]
fn init_writes_a_starter_that_checks_and_sends() {
    let dir = tempfile::tempdir().unwrap();
    missive()
        .args(["init"])
        .arg(dir.path())
        .assert()
        .success()
        .stdout(predicate::str::contains("created"));
    missive()
        .current_dir(dir.path())
        .arg("check")
        .assert()
        .success();
    missive()
        .current_dir(dir.path())
        .args(["send", "welcome"])
        .assert()
        .success();
    missive()
        .args(["init"])
        .arg(dir.path())
        .assert()
        .code(1)
        .stderr(predicate::str::contains("--force"));
}

#[test]
fn verbose_logs_go_to_stderr() {
    in_repo()
        .args(["-v", "render", "welcome", "--format", "text"])
        .assert()
        .success()
        .stderr(predicate::str::contains("template set loaded"))
        .stdout(predicate::str::contains("template set loaded").not());
}

/// Messages in an outbox folder (beside them, its `tmp/` area).
fn eml_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension() == Some("eml".as_ref()))
        .count()
}

#[test]
fn an_outbox_killed_mid_write_keeps_only_whole_messages() {
    // A large message, so that a good share of the kills land while it is written.
    let f = Fixture::empty();
    f.write(
        "templates/big.html",
        "---\nsubject: Big\nto: ada@x.test\n---\n<html><body>\
         {% for i in range(100) %}{% for j in range(500) %}<p>line {{ i }}.{{ j }} of the report</p>\
         {% endfor %}{% endfor %}</body></html>\n",
    );
    f.write("data.json", "{}");
    let bin = assert_cmd::cargo::cargo_bin("missive");
    let run = || {
        std::process::Command::new(&bin)
            .current_dir(f.dir.path())
            .env_remove("MISSIVE_CONFIG")
            .env_remove("RUST_LOG")
            .args(["send", "big", "--data", "data.json"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let tmp = f.path("outbox/tmp");
    let mut killed = 0;
    for round in 0..30 {
        let mut child = run();
        // Half the kills at a random moment, half once the file is being written.
        let deadline =
            std::time::Instant::now() + std::time::Duration::from_millis(fastrand::u64(0..600));
        while child.try_wait().unwrap().is_none() {
            let writing =
                round % 2 == 1 && std::fs::read_dir(&tmp).is_ok_and(|mut d| d.next().is_some());
            if writing || std::time::Instant::now() >= deadline {
                std::thread::sleep(std::time::Duration::from_micros(fastrand::u64(0..500)));
                child.kill().unwrap(); // SIGKILL
                killed += 1;
                break;
            }
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
        child.wait().unwrap();
    }
    assert!(killed >= 15, "only {killed} runs were killed");
    assert!(run().wait().unwrap().success(), "a later send sweeps tmp/");
    let outbox = f.path("outbox");
    let left: Vec<_> = std::fs::read_dir(outbox.join("tmp")).unwrap().collect();
    assert!(left.is_empty(), "partly written files left: {left:?}");
    for entry in std::fs::read_dir(&outbox).unwrap() {
        let path = entry.unwrap().path();
        if path.extension() == Some("eml".as_ref()) {
            let raw = std::fs::read_to_string(&path).unwrap();
            assert!(raw.contains("Message-ID: <"), "{}", path.display());
            assert!(
                raw.trim_end().ends_with("--") && raw.contains("line 99.499 of the report"),
                "{} is cut short",
                path.display()
            );
        }
    }
}
