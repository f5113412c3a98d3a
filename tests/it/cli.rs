//! The `missive` binary, black-box: exit codes, output formats, files written.
//! `MISSIVE_BIN=target/release/missive` runs them against a release build.

use crate::common;

use assert_cmd::Command;
use common::{repo, Fixture};
use predicates::prelude::*;

fn missive() -> Command {
    let mut cmd = Command::new(common::missive_bin());
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
            predicate::str::contains("schemas/hello.schema.json:4:1: `examples[0]` does not match its own schema: (root): \"name\" is a required property")
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
            "templates/hello.html:3:1: front-matter `to`: undefined value `email`",
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
    let bin = common::missive_bin();
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

/// Issue 11.1: release builds (what `cargo install` makes) named no expression, because
/// minijinja's debug info followed `debug_assertions`. CI runs this file against
/// `target/release/missive` through `MISSIVE_BIN`.
#[test]
fn undefined_values_are_named_in_body_block_partial_and_subject() {
    let f = Fixture::new();
    f.write(
        "templates/_partials/ui.html",
        "{% macro nick(u) %}\n{{ u.nickname }}{% endmacro %}\n",
    );
    f.write(
        "templates/body.html",
        "---\nsubject: Hi\nto: a@x.test\n---\n<p>\n{{ user.nickname }}</p>\n",
    );
    f.write(
        "templates/block.html",
        "---\nsubject: Hi\nto: a@x.test\n---\n{% extends \"_layouts/base.html\" %}\n{% block content %}\n{{ user.nickname }}{% endblock %}\n",
    );
    f.write(
        "templates/partial.html",
        "---\nsubject: Hi\nto: a@x.test\n---\n{% import \"_partials/ui.html\" as ui %}\n{{ ui.nick(user) }}\n",
    );
    f.write(
        "templates/subject.html",
        "---\nsubject: \"Hi {{ user.nickname }}\"\nto: a@x.test\n---\nx\n",
    );
    for (name, expected) in [
        (
            "body",
            "templates/body.html:6:1: undefined value `user.nickname`",
        ),
        (
            "block",
            "templates/block.html:7:1: undefined value `user.nickname`",
        ),
        (
            "partial",
            "templates/_partials/ui.html:2:1: undefined value `u.nickname`",
        ),
        ("subject", "templates/subject.html:2:1: "),
    ] {
        let assert = missive()
            .current_dir(f.dir.path())
            .args(["render", name, "--data", "-"])
            .write_stdin(r#"{"user": {}}"#)
            .assert()
            .code(1);
        let stderr = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
        assert!(stderr.contains(expected), "{name}: {stderr}");
        assert!(stderr.contains("nickname`"), "{name}: {stderr}");
    }
}

/// Issue 11.4: one broken file does not hide the rest. Every problem of the set comes
/// out of one run, each once, with no follow-on error from another file's failure,
/// and everything that loads is still rendered.
#[test]
fn check_reports_every_problem_once_without_follow_on_errors() {
    let f = Fixture::new();
    f.write(
        "schemas/hello.schema.json",
        "{\n  \"type\": \"object\",\n  \"required\": [\"name\", \"email\"],\n  \"examples\": [\n    {\"name\": \"Ada\", \"email\": \"ada@x.test\"},\n    {\"name\": \"Bob\"}\n  ]\n}\n",
    );
    // Front-matter that does not parse, and a locale variant of it that is fine.
    f.write(
        "templates/welcome.html",
        "---\nsubject: [unclosed\n---\nx\n",
    );
    f.write(
        "templates/welcome.fr.html",
        "---\nsubject: Bienvenue\nto: a@x.test\nschema: hello.schema.json\n---\n<p>{{ name }}</p>\n",
    );
    // Two problems in one file: a broken subject and a broken body.
    f.write(
        "templates/twice.html",
        "---\nsubject: \"{{ name }\"\n---\n\n{% if %}\n",
    );
    // A schema that is not JSON, and a template naming it.
    f.write(
        "schemas/broken.schema.json",
        "{\n  \"type\": \"object\",\n  oops\n}\n",
    );
    f.write(
        "templates/uses-broken.html",
        "---\nsubject: Hi\nschema: broken.schema.json\n---\nx\n",
    );
    // A broken partial, and a template including it that is otherwise fine.
    f.write("templates/_partials/card.html", "<div>{% for %}</div>\n");
    f.write(
        "templates/card.html",
        "---\nsubject: Hi\nto: a@x.test\nschema: hello.schema.json\n---\n{% include \"_partials/card.html\" %}\n",
    );
    let assert = missive()
        .current_dir(f.dir.path())
        .arg("check")
        .assert()
        .code(1);
    let out = String::from_utf8_lossy(&assert.get_output().stdout).into_owned();
    let err = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    let lines: Vec<&str> = out.lines().collect();
    let expect = [
        "schemas/broken.schema.json:3:",
        "templates/_partials/card.html:1:",
        "templates/twice.html:2:1: front-matter `subject`: syntax error",
        "templates/twice.html:5:1: syntax error",
        "templates/welcome.html:2:",
        "schemas/hello.schema.json:4:1: `examples[1]` does not match its own schema: (root): \"email\" is a required property",
    ];
    assert_eq!(lines.len(), expect.len(), "{out}\n{err}");
    for want in expect {
        assert_eq!(
            lines.iter().filter(|l| l.starts_with(want)).count(),
            1,
            "{want} once in:\n{out}"
        );
    }
    for follow_on in [
        "no base template",
        "not found",
        "card.html:6",
        "does not exist",
    ] {
        assert!(!out.contains(follow_on), "{follow_on}: {out}");
    }
    // hello and welcome.fr were rendered with their good example; card was tried.
    assert!(err.contains("with 3 renders"), "{err}");
}
