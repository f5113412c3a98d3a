//! Hot reload through the public API: a watching mailer over a template set in a temp
//! folder, changed the ways editors change files. Every wait has a generous bound that
//! only catches a reload that never comes; speed is measured in benches/reload.rs.

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use missive::{ErrorKind, Inbox, Mailer, ReloadEvent};
use serde_json::json;
use tokio::sync::broadcast::Receiver;

/// Long enough that only a missing reload hits it, even on a loaded CI machine.
const PATIENCE: Duration = Duration::from_secs(20);

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("templates/_layouts")).unwrap();
        fs::create_dir_all(root.join("schemas")).unwrap();
        fs::write(
            root.join("templates/_layouts/base.html"),
            "<html><body>{% block content %}{% endblock %}</body></html>\n",
        )
        .unwrap();
        fs::write(
            root.join("schemas/note.schema.json"),
            r#"{"type": "object", "required": ["name"],
                "properties": {"name": {"type": "string"}},
                "examples": [{"name": "Ada"}]}"#,
        )
        .unwrap();
        let fixture = Fixture { dir };
        fixture.write("note.html", &note(1));
        fixture
    }

    fn templates(&self) -> PathBuf {
        self.dir.path().join("templates")
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.templates().join(rel)
    }

    fn write(&self, rel: &str, text: &str) {
        fs::write(self.path(rel), text).unwrap();
    }

    fn mailer(&self) -> (Mailer, Inbox) {
        self.builder().watch(true).build_in_memory().unwrap()
    }

    fn builder(&self) -> missive::MailerBuilder {
        Mailer::builder()
            .templates(self.templates())
            .schemas(self.dir.path().join("schemas"))
    }
}

/// Version `v` of a template whose subject and body both carry `v`.
fn note(v: u32) -> String {
    format!(
        "---\nsubject: \"Note v{v} for {{{{ name }}}}\"\nto: a@example.test\n---\n\
         {{% extends \"_layouts/base.html\" %}}\n{{% block content %}}<p>body v{v}</p>{{% endblock %}}\n"
    )
}

fn subject(mailer: &Mailer, name: &str) -> String {
    mailer
        .render(name, &json!({"name": "Ada"}))
        .unwrap()
        .subject()
        .to_string()
}

/// Waits for reload events until `done` holds after one; fails after [`PATIENCE`].
async fn until(
    rx: &mut Receiver<ReloadEvent>,
    mut done: impl FnMut(&ReloadEvent) -> bool,
) -> ReloadEvent {
    loop {
        let event = tokio::time::timeout(PATIENCE, rx.recv())
            .await
            .expect("no reload event came")
            .expect("reload channel closed");
        if done(&event) {
            return event;
        }
    }
}

async fn until_subject(rx: &mut Receiver<ReloadEvent>, mailer: &Mailer, name: &str, want: &str) {
    until(rx, |_| {
        mailer
            .render(name, &json!({"name": "Ada"}))
            .is_ok_and(|r| r.subject() == want)
    })
    .await;
}

fn reloaded(event: &ReloadEvent) -> bool {
    matches!(event, ReloadEvent::Reloaded { .. })
}

#[tokio::test]
async fn an_edit_in_place_is_rendered_next() {
    let fx = Fixture::new();
    let (mailer, _) = fx.mailer();
    let mut rx = mailer.subscribe();
    assert_eq!(subject(&mailer, "note"), "Note v1 for Ada");
    fx.write("note.html", &note(2));
    let event = until(&mut rx, reloaded).await;
    assert_eq!(subject(&mailer, "note"), "Note v2 for Ada");
    let ReloadEvent::Reloaded {
        generation,
        changed,
    } = event
    else {
        unreachable!()
    };
    assert!(generation >= 1);
    assert!(
        changed.iter().any(|p| p.ends_with("note.html")),
        "{changed:?}"
    );
    assert!(mailer.last_reload_error().is_none());
}

#[tokio::test]
async fn an_atomic_save_by_rename_is_seen() {
    let fx = Fixture::new();
    let (mailer, _) = fx.mailer();
    let mut rx = mailer.subscribe();
    // What most editors and `sed -i` do: write a temp file, rename it over the original.
    fx.write("note.html.tmp", &note(2));
    fs::rename(fx.path("note.html.tmp"), fx.path("note.html")).unwrap();
    until_subject(&mut rx, &mailer, "note", "Note v2 for Ada").await;
}

#[tokio::test]
async fn vims_backup_dance_is_seen() {
    let fx = Fixture::new();
    let (mailer, _) = fx.mailer();
    let mut rx = mailer.subscribe();
    // vim with `backupcopy=no`: probe file 4913, move the original aside, write anew,
    // drop the backup; swap files come and go meanwhile.
    fx.write("4913", "");
    fs::remove_file(fx.path("4913")).unwrap();
    fx.write(".note.html.swp", "swap");
    fs::rename(fx.path("note.html"), fx.path("note.html~")).unwrap();
    fx.write("note.html", &note(2));
    fs::remove_file(fx.path("note.html~")).unwrap();
    until_subject(&mut rx, &mailer, "note", "Note v2 for Ada").await;
    assert!(mailer.last_reload_error().is_none());
}

#[tokio::test]
async fn editor_temp_files_alone_cause_no_reload() {
    let fx = Fixture::new();
    let (mailer, _) = fx.mailer();
    let mut rx = mailer.subscribe();
    fx.write(".note.html.swp", "swap");
    fx.write("note.html~", "backup");
    fx.write("#note.html#", "emacs autosave");
    // The first reload must be the one for this real change, and name only it.
    fx.write("note.html", &note(2));
    let event = until(&mut rx, |_| true).await;
    let ReloadEvent::Reloaded { changed, .. } = event else {
        panic!("expected a reload, got {event:?}")
    };
    assert!(!changed.is_empty());
    assert!(
        changed.iter().all(|p| p.ends_with("note.html")),
        "{changed:?}"
    );
}

#[tokio::test]
async fn created_deleted_and_renamed_templates_come_and_go() {
    let fx = Fixture::new();
    let (mailer, _) = fx.mailer();
    let mut rx = mailer.subscribe();
    let names = |m: &Mailer| m.template_names();

    fx.write(
        "promo.html",
        "---\nsubject: Promo\nto: a@example.test\n---\n<p>hi</p>\n",
    );
    until(&mut rx, |_| names(&mailer).contains(&"promo".to_string())).await;

    fs::rename(fx.path("promo.html"), fx.path("offer.html")).unwrap();
    until(&mut rx, |_| names(&mailer) == ["note", "offer"]).await;

    fs::create_dir(fx.path("account")).unwrap();
    fs::rename(fx.path("offer.html"), fx.path("account/offer.html")).unwrap();
    until(&mut rx, |_| names(&mailer) == ["account/offer", "note"]).await;

    fs::remove_file(fx.path("account/offer.html")).unwrap();
    until(&mut rx, |_| names(&mailer) == ["note"]).await;
    let err = mailer.render("account/offer", &json!({})).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn schema_changes_are_reloaded_too() {
    let fx = Fixture::new();
    let (mailer, _) = fx.mailer();
    let mut rx = mailer.subscribe();
    let schema = fx.dir.path().join("schemas/note.schema.json");
    fs::write(
        &schema,
        r#"{"type": "object", "required": ["name"], "examples": [{"name": "Grace"}, {"name": "Ada"}]}"#,
    )
    .unwrap();
    until(&mut rx, |_| mailer.example("note", 1).is_ok()).await;
    assert_eq!(mailer.example("note", 0).unwrap(), json!({"name": "Grace"}));
    assert_eq!(mailer.templates()[0].examples, 2);
}

#[tokio::test]
async fn a_broken_edit_keeps_the_last_good_set_until_fixed() {
    let fx = Fixture::new();
    let (mailer, _) = fx.mailer();
    let mut rx = mailer.subscribe();
    fx.write(
        "note.html",
        "---\nsubject: Broken\nto: a@example.test\n---\n<p>fine</p>\n{% if name %}\n<p>never closed</p>\n",
    );
    let event = until(&mut rx, |e| matches!(e, ReloadEvent::Failed { .. })).await;
    let ReloadEvent::Failed { error, changed } = event else {
        unreachable!()
    };
    assert!(changed.iter().any(|p| p.ends_with("note.html")));
    assert_eq!(error.kind(), ErrorKind::Template);
    let location = error.location().expect("the error names a file");
    assert!(location.file.ends_with("note.html"), "{location}");
    assert!(
        location.line >= 6,
        "line {} should point into the body",
        location.line
    );

    // Production keeps sending what last loaded.
    assert_eq!(subject(&mailer, "note"), "Note v1 for Ada");
    let kept = mailer
        .last_reload_error()
        .expect("the failure is remembered");
    assert_eq!(kept.location(), error.location());

    fx.write("note.html", &note(3));
    until(&mut rx, reloaded).await;
    assert_eq!(subject(&mailer, "note"), "Note v3 for Ada");
    assert!(mailer.last_reload_error().is_none());
}

#[tokio::test]
async fn every_problem_of_a_broken_set_is_reported() {
    let fx = Fixture::new();
    let (mailer, _) = fx.mailer();
    let mut rx = mailer.subscribe();
    fx.write("a.html", "---\nsubject: A\n---\n{{ broken\n");
    fx.write("b.html", "---\nsubjekt: B\n---\n<p>b</p>\n");
    let event = until(&mut rx, |e| match e {
        ReloadEvent::Failed { error, .. } => error.problems().count() == 2,
        _ => false,
    })
    .await;
    let ReloadEvent::Failed { error, .. } = event else {
        unreachable!()
    };
    let files: Vec<_> = error
        .problems()
        .filter_map(|p| p.location())
        .map(|l| l.file.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, ["a.html", "b.html"]);
}

#[test]
fn renders_in_flight_finish_on_the_set_they_started_with() {
    let fx = Fixture::new();
    let (mailer, _) = fx.mailer();
    let mut rx = mailer.subscribe();
    let stop = Arc::new(AtomicBool::new(false));
    // Renders race a stream of saves; each must come wholly from one version of the
    // file, subject and body alike, and none may fail.
    let renderers: Vec<_> = (0..2)
        .map(|_| {
            let mailer = mailer.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut renders = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let r = mailer.render("note", &json!({"name": "Ada"})).unwrap();
                    let v = r
                        .subject()
                        .trim_start_matches("Note v")
                        .split(' ')
                        .next()
                        .unwrap()
                        .to_string();
                    assert!(
                        r.html().contains(&format!("body v{v}<")),
                        "subject v{v} with {}",
                        r.html()
                    );
                    renders += 1;
                }
                renders
            })
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    for v in 2..=6 {
        fx.write("note.html", &note(v));
        let want = format!("Note v{v} for Ada");
        runtime.block_on(until_subject(&mut rx, &mailer, "note", &want));
    }
    stop.store(true, Ordering::Relaxed);
    for renderer in renderers {
        assert!(renderer.join().expect("a render failed") > 0);
    }
}

#[tokio::test]
async fn polling_sees_changes_without_notifications() {
    let fx = Fixture::new();
    let (mailer, _) = fx
        .builder()
        .poll(Duration::from_millis(100))
        .build_in_memory()
        .unwrap();
    let mut rx = mailer.subscribe();
    fx.write("note.html", &note(2));
    until_subject(&mut rx, &mailer, "note", "Note v2 for Ada").await;
    fx.write("note.html", "---\nsubject: x\n---\n{% if %}\n");
    until(&mut rx, |_| mailer.last_reload_error().is_some()).await;
}

#[tokio::test]
async fn a_mailer_without_watch_never_reloads() {
    let fx = Fixture::new();
    let (mailer, _) = fx.builder().build_in_memory().unwrap();
    let mut rx = mailer.subscribe();
    fx.write("note.html", &note(2));
    // A watching mailer over the same files proves the change was there to be seen.
    let (watching, _) = fx.mailer();
    let mut watching_rx = watching.subscribe();
    fx.write("note.html", &note(3));
    until_subject(&mut watching_rx, &watching, "note", "Note v3 for Ada").await;
    assert_eq!(subject(&mailer, "note"), "Note v1 for Ada");
    assert!(rx.try_recv().is_err());
    assert_eq!(mailer.generation(), 0);
}

#[test]
fn the_real_template_set_reloads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    common::copy_dir(&root.join("templates"), &dir.path().join("templates"));
    common::copy_dir(&root.join("schemas"), &dir.path().join("schemas"));
    let (mailer, _) = Mailer::builder()
        .templates(dir.path().join("templates"))
        .schemas(dir.path().join("schemas"))
        .watch(true)
        .build_in_memory()
        .unwrap();
    let mut rx = mailer.subscribe();
    let data = mailer.example("welcome", 0).unwrap();
    let css = dir.path().join("templates/styles/email.css");
    let mut text = fs::read_to_string(&css).unwrap();
    text.push_str("\n.reload-probe { color: #123456; }\nh1 { letter-spacing: 7px; }\n");
    fs::write(&css, text).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(until(&mut rx, |_| {
        mailer
            .render("welcome", &data)
            .is_ok_and(|r| r.html().contains("letter-spacing: 7px"))
    }));
}

#[tokio::test]
async fn a_set_broken_from_the_start_can_be_tolerated_until_fixed() {
    let fx = Fixture::new();
    fx.write("note.html", "---\nsubject: x\n---\n{% if %}\n");
    let err = fx.builder().watch(true).build_in_memory().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Template);
    // Tolerating needs a watch, or nothing would ever mend it.
    assert!(fx
        .builder()
        .tolerate_broken(true)
        .build_in_memory()
        .is_err());

    let (mailer, _) = fx
        .builder()
        .watch(true)
        .tolerate_broken(true)
        .build_in_memory()
        .unwrap();
    let mut rx = mailer.subscribe();
    assert!(mailer.template_names().is_empty());
    let error = mailer.last_reload_error().expect("why it does not load");
    assert!(error.location().unwrap().file.ends_with("note.html"));
    let err = mailer.render("note", &json!({"name": "Ada"})).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);

    fx.write("note.html", &note(2));
    until(&mut rx, reloaded).await;
    assert_eq!(subject(&mailer, "note"), "Note v2 for Ada");
    assert!(mailer.last_reload_error().is_none());
}

#[test]
fn saves_made_while_the_mailer_is_built_are_not_lost() {
    let fx = Fixture::new();
    let building = Arc::new(AtomicBool::new(true));
    let path = fx.path("note.html");
    let writer = {
        let building = building.clone();
        std::thread::spawn(move || {
            let mut v = 1;
            // Saved as editors do, by rename, so no load ever sees half a file.
            let temp = path.with_extension("html.tmp");
            while building.load(Ordering::Relaxed) {
                v += 1;
                fs::write(&temp, note(v)).unwrap();
                fs::rename(&temp, &path).unwrap();
            }
            v
        })
    };
    let (mailer, _) = fx.mailer();
    let mut rx = mailer.subscribe();
    building.store(false, Ordering::Relaxed);
    let last = writer.join().unwrap();
    let want = format!("Note v{last} for Ada");
    if subject(&mailer, "note") != want {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(until_subject(&mut rx, &mailer, "note", &want));
    }
}
