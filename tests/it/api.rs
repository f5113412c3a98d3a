//! The library API, black-box, over the repository's own templates and small fixtures.

use crate::common;

use common::{repo, Fixture};
use missive::{Attachment, ErrorKind, Mailer};
use serde_json::json;

fn repo_mailer() -> (Mailer, missive::Inbox) {
    Mailer::for_tests(repo().0)
}

fn raw_text(raw: &[u8]) -> String {
    String::from_utf8(raw.to_vec()).expect("messages are 7-bit clean")
}

#[test]
fn mailer_is_cheap_to_share() {
    fn shareable<T: Clone + Send + Sync + 'static>() {}
    shareable::<Mailer>();
    shareable::<missive::Inbox>();
    fn error_is_std<E: std::error::Error + Send + Sync + 'static>() {}
    error_is_std::<missive::Error>();
}

#[tokio::test]
async fn send_template_delivers_to_the_front_matter_recipients() {
    let (mailer, inbox) = repo_mailer();
    let data = mailer.example("welcome", 0).unwrap();
    let receipt = mailer.send_template("welcome", &data).await.unwrap();
    assert_eq!(receipt.template, "welcome");
    assert_eq!(receipt.attempts, 1);
    assert_eq!(receipt.accepted, [data["user"]["email"].as_str().unwrap()]);
    assert!(receipt.tags.contains(&"welcome".to_string()));
    let sent = inbox.last().unwrap();
    assert_eq!(sent.message_id(), receipt.message_id);
    assert!(sent.subject().starts_with("Welcome to"));
    let raw = raw_text(sent.raw());
    assert!(raw.contains("Content-Type: multipart/alternative"), "{raw}");
    assert!(raw.contains("Content-Type: text/plain; charset=utf-8"));
    assert!(raw.contains("Content-Type: text/html; charset=utf-8"));
    assert!(raw.contains("\r\nDate: "));
    assert!(raw.contains(&format!("Message-ID: {}", receipt.message_id)));
    // Default sender of the built-in config; Message-ID is on its domain.
    assert!(
        receipt.message_id.ends_with("@localhost>"),
        "{}",
        receipt.message_id
    );
}

#[tokio::test]
async fn concurrent_sends_from_clones() {
    let (mailer, inbox) = repo_mailer();
    let data = mailer.example("account/password-reset", 0).unwrap();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let mailer = mailer.clone();
        let data = data.clone();
        tasks.push(tokio::spawn(async move {
            mailer.send_template("account/password-reset", &data).await
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for task in tasks {
        ids.insert(task.await.unwrap().unwrap().message_id);
    }
    assert_eq!(ids.len(), 16, "every message gets its own Message-ID");
    assert_eq!(inbox.len(), 16);
}

#[test]
fn locale_falls_back_from_region_to_language_to_base() {
    let (mailer, _) = repo_mailer();
    let data = mailer.example("welcome", 0).unwrap();
    let fr_ca = mailer
        .template("welcome")
        .locale("fr-CA")
        .data(&data)
        .render()
        .unwrap();
    assert_eq!(fr_ca.locale(), Some("fr"));
    assert!(
        fr_ca.subject().starts_with("Bienvenue"),
        "{}",
        fr_ca.subject()
    );
    let de = mailer
        .template("welcome")
        .locale("de-DE")
        .data(&data)
        .render()
        .unwrap();
    assert_eq!(de.locale(), None);
    assert!(de.subject().starts_with("Welcome"));
}

#[test]
fn text_part_comes_from_the_sibling_or_from_the_html() {
    let (mailer, _) = repo_mailer();
    let data = mailer.example("welcome", 0).unwrap();
    let with_sibling = mailer.render("welcome", &data).unwrap();
    let fr = mailer
        .template("welcome")
        .locale("fr")
        .data(&data)
        .render()
        .unwrap();
    // Only welcome.txt puts the link on a line of its own after a colon.
    assert!(
        with_sibling
            .text()
            .unwrap()
            .contains("Open your dashboard:\nhttps://"),
        "{:?}",
        with_sibling.text()
    );
    // The derived French text keeps links as `text (url)` and drops CSS.
    let text = fr.text().unwrap();
    assert!(text.contains(" (https://"), "{text}");
    assert!(
        !text.contains("{"),
        "no CSS or template syntax leaks: {text}"
    );
    assert!(!text.contains("<"), "{text}");
}

#[test]
fn html_is_escaped_and_text_is_not() {
    let f = Fixture::new();
    f.write(
        "templates/esc.html",
        "---\nsubject: \"Hello {{ name }}\"\nto: tj@x.test\n---\n<p>Hi {{ name }}</p>\n",
    );
    f.write("templates/esc.txt", "Hi {{ name }}\n");
    let (mailer, _) = f.mailer().unwrap();
    let rendered = mailer
        .render("esc", &json!({"name": "<b>Tom & Jerry</b>"}))
        .unwrap();
    assert!(
        rendered
            .html()
            .contains("&lt;b&gt;Tom &amp; Jerry&lt;/b&gt;"),
        "{}",
        rendered.html()
    );
    assert_eq!(rendered.text(), Some("Hi <b>Tom & Jerry</b>"));
    // Front-matter values are never HTML-escaped.
    assert_eq!(rendered.subject(), "Hello <b>Tom & Jerry</b>");
}

#[test]
fn css_is_inlined_with_hover_kept_in_the_head() {
    let f = Fixture::new();
    let (mailer, _) = f.mailer().unwrap();
    let rendered = mailer
        .render("hello", &json!({"name": "Ada", "email": "ada@x.test"}))
        .unwrap();
    let html = rendered.html();
    assert!(
        html.contains("<p style=\"color: #333333;\">Hi Ada</p>"),
        "{html}"
    );
    assert!(html.contains(".cta:hover{ color: red; }"), "{html}");
    assert!(!html.contains("<link"), "{html}");
}

#[test]
fn text_false_sends_html_only() {
    let f = Fixture::new();
    f.write(
        "templates/bare.html",
        "---\nsubject: Bare\nto: a@x.test\ntext: false\n---\n<p>x</p>\n",
    );
    let (mailer, _) = f.mailer().unwrap();
    let message = mailer.template("bare");
    assert_eq!(message.render().unwrap().text(), None);
    let raw = raw_text(&message.eml().unwrap());
    assert!(
        raw.contains("Content-Type: text/html; charset=utf-8"),
        "{raw}"
    );
    assert!(!raw.contains("multipart"), "{raw}");
}

#[tokio::test]
async fn builder_overrides_recipients_and_adds_attachments() {
    let f = Fixture::new();
    let (mailer, inbox) = f.mailer().unwrap();
    let receipt = mailer
        .template("hello")
        .data(&json!({"name": "Ada", "email": "ada@x.test"}))
        .to("Grace <grace@x.test>")
        .cc("boss@x.test, team@x.test")
        .bcc("audit@x.test")
        .reply_to("help@x.test")
        .attach(
            Attachment::new("invoice.pdf", "application/pdf", b"%PDF-1.7 fake".to_vec()).unwrap(),
        )
        .attach(Attachment::inline("logo", "image/png", vec![0x89, b'P', b'N', b'G']).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(
        receipt.accepted,
        ["grace@x.test", "boss@x.test", "team@x.test", "audit@x.test"]
    );
    let raw = raw_text(inbox.last().unwrap().raw());
    assert!(
        raw.contains("To: \"Grace\" <grace@x.test>") || raw.contains("To: Grace <grace@x.test>"),
        "{raw}"
    );
    assert!(
        !raw.contains("audit@x.test"),
        "Bcc never appears in headers"
    );
    assert!(raw.contains("Reply-To: help@x.test"), "{raw}");
    assert!(raw.contains("Content-Type: multipart/mixed"), "{raw}");
    assert!(raw.contains("Content-Type: multipart/related"), "{raw}");
    assert!(raw.contains("Content-ID: <logo>"), "{raw}");
    assert!(
        raw.contains("Content-Disposition: attachment; filename=\"invoice.pdf\""),
        "{raw}"
    );
    assert_eq!(inbox.sent_to("audit@x.test").len(), 1);
}

#[test]
fn custom_headers_and_non_ascii_are_encoded() {
    let f = Fixture::new();
    f.write(
        "templates/intl.html",
        "---\nsubject: \"Bienvenue, {{ name }} — ça va ?\"\nto: \"{{ name }} <{{ email }}>\"\nheaders:\n  X-Campaign: \"été-{{ year }}\"\n  List-Unsubscribe: \"<https://x.test/u>\"\ntags: [intl]\n---\n<p>Élodie</p>\n",
    );
    let (mailer, _) = f.mailer().unwrap();
    let message = mailer
        .template("intl")
        .data(&json!({"name": "Élodie", "email": "elodie@x.test", "year": 2026}));
    let rendered = message.render().unwrap();
    assert_eq!(
        rendered.headers()[0],
        ("X-Campaign".to_string(), "été-2026".to_string())
    );
    assert_eq!(rendered.tags(), ["intl"]);
    let raw = message.eml().unwrap();
    assert!(raw.is_ascii(), "headers and bodies are transfer-encoded");
    let raw = raw_text(&raw);
    let subject = raw.lines().find(|l| l.starts_with("Subject: ")).unwrap();
    assert!(subject.contains("=?utf-8?"), "{subject}");
    assert!(raw.contains("X-Campaign: =?utf-8?"), "{raw}");
    assert!(
        raw.contains("List-Unsubscribe: <https://x.test/u>"),
        "{raw}"
    );
}

#[test]
fn message_id_uses_the_sender_domain() {
    let f = Fixture::new();
    let (mailer, _) = f.mailer().unwrap();
    let raw = mailer
        .template("hello")
        .data(&json!({"name": "Ada", "email": "ada@x.test"}))
        .eml()
        .unwrap();
    let raw = raw_text(&raw);
    let id_line = raw.lines().find(|l| l.starts_with("Message-ID:")).unwrap();
    assert!(id_line.ends_with("@acme.test>"), "{id_line}");
}

#[test]
fn no_recipient_is_an_address_error() {
    let f = Fixture::new();
    f.write("templates/nobody.html", "---\nsubject: Hi\n---\nx\n");
    let (mailer, _) = f.mailer().unwrap();
    let err = mailer.template("nobody").eml().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Address);
    assert!(err.message().contains("no recipients"), "{err}");
}

#[test]
fn unserializable_data_is_invalid_data() {
    let f = Fixture::new();
    let (mailer, _) = f.mailer().unwrap();
    let mut weird = std::collections::HashMap::new();
    weird.insert((1, 2), "tuple keys do not serialize to JSON");
    let err = mailer.render("hello", &weird).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidData);
}

#[tokio::test]
async fn outbox_writes_one_eml_per_message() {
    let f = Fixture::new();
    let outbox = f.path("out");
    let mailer = Mailer::builder()
        .templates(f.templates())
        .schemas(f.schemas())
        .from("Acme <hello@acme.test>")
        .outbox(&outbox)
        .build()
        .unwrap();
    for name in ["Ada", "Grace"] {
        let receipt = mailer
            .send_template("hello", &json!({"name": name, "email": "x@y.test"}))
            .await
            .unwrap();
        assert!(
            receipt.reply.starts_with("written to "),
            "{}",
            receipt.reply
        );
    }
    let mut files: Vec<_> = std::fs::read_dir(&outbox)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2);
    for file in files {
        assert_eq!(file.extension().unwrap(), "eml");
        let raw = std::fs::read_to_string(&file).unwrap();
        assert!(raw.contains("Subject: Hello "), "{raw}");
    }
}

#[tokio::test]
async fn from_config_reads_missive_yaml() {
    let f = Fixture::new();
    f.write(
        "missive.yaml",
        "templates: templates\nschemas: schemas\nfrom: \"Config Sender <cfg@sender.test>\"\ntransport:\n  type: outbox\n  dir: sent\n",
    );
    let mailer = Mailer::from_config(f.path("missive.yaml")).await.unwrap();
    let receipt = mailer
        .send_template("hello", &json!({"name": "Ada", "email": "ada@x.test"}))
        .await
        .unwrap();
    assert!(receipt.message_id.ends_with("@sender.test>"));
    let files = std::fs::read_dir(f.path("sent")).unwrap();
    assert_eq!(
        files
            .filter(|e| e.as_ref().unwrap().path().is_file())
            .count(),
        1
    );
}

#[test]
fn check_passes_on_the_repository_set_and_counts_renders() {
    let (templates, schemas) = repo();
    let mut config = missive::Config::default();
    config.templates = templates;
    config.schemas = schemas;
    let report = missive::check(&config);
    assert!(report.is_ok(), "{:?}", report.problems);
    assert!(report.templates >= 7, "{report:?}");
    assert!(report.renders >= 14, "{report:?}");
    assert!(report.without_examples.is_empty(), "{report:?}");
}

#[test]
fn check_reports_examples_that_fail_their_schema() {
    let f = Fixture::new();
    f.write(
        "schemas/hello.schema.json",
        "{\n  \"type\": \"object\",\n  \"required\": [\"name\", \"email\"],\n  \"examples\": [\n    {\"name\": \"Ada\"}\n  ]\n}\n",
    );
    let mut config = missive::Config::default();
    config.templates = f.templates();
    config.schemas = f.schemas();
    let report = missive::check(&config);
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    let problem = &report.problems[0];
    assert_eq!(problem.kind(), ErrorKind::InvalidData);
    assert_eq!(problem.location().unwrap().line, 4);
    assert_eq!(problem.violations().len(), 1);
}

/// A transport of the app's own, through the public seam: it records what it was
/// given and answers from a script, one outcome per attempt.
#[derive(Debug, Default, Clone)]
struct Scripted {
    seen: std::sync::Arc<std::sync::Mutex<Vec<missive::Email>>>,
    script: std::sync::Arc<std::sync::Mutex<Vec<missive::Result<missive::Delivery>>>>,
}

#[missive::async_trait]
impl missive::Transport for Scripted {
    async fn send(&self, email: &missive::Email) -> missive::Result<missive::Delivery> {
        self.seen.lock().unwrap().push(email.clone());
        let next = self.script.lock().unwrap().pop();
        next.unwrap_or_else(|| Ok(missive::Delivery::new(email.recipients(), "250 ok")))
    }
    fn name(&self) -> &str {
        "scripted"
    }
}

fn scripted_mailer(transport: &Scripted) -> Mailer {
    let (templates, schemas) = repo();
    Mailer::builder()
        .templates(templates)
        .schemas(schemas)
        .transport(transport.clone())
        .retry(missive::RetryConfig {
            initial_backoff_ms: 1,
            max_backoff_ms: 2,
            ..missive::RetryConfig::default()
        })
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_custom_transport_gets_the_exact_message_and_its_envelope() {
    let transport = Scripted::default();
    let mailer = scripted_mailer(&transport);
    let data = mailer.example("orders/receipt", 0).unwrap();
    let message = || {
        mailer
            .template("orders/receipt")
            .data(&data)
            .message_id("<r-1@acme.test>")
            .bcc("archive@acme.test")
    };
    let eml = message().eml().unwrap();
    let receipt = message().send().await.unwrap();
    assert_eq!(receipt.transport, "scripted");
    let seen = transport.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let email = &seen[0];
    assert_eq!(email.message_id(), "<r-1@acme.test>");
    assert_eq!(email.template(), "orders/receipt");
    assert!(email
        .recipients()
        .contains(&"archive@acme.test".to_string()));
    assert!(email.envelope_from().is_some());
    // Byte for byte, but for the two things each build makes anew.
    let normalized = |raw: &[u8]| {
        let mut text = raw_text(raw);
        for (i, boundary) in text
            .split("boundary=\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .map(str::to_string)
            .collect::<Vec<_>>()
            .into_iter()
            .enumerate()
        {
            text = text.replace(&boundary, &format!("BOUNDARY{i}"));
        }
        text.lines()
            .filter(|l| !l.starts_with("Date:"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        normalized(email.raw()) == normalized(&eml),
        "the transport got another message"
    );
    assert!(
        !raw_text(email.raw()).contains("archive@acme.test"),
        "Bcc stays out of the headers"
    );
    let debug = format!("{email:?}");
    assert!(
        !debug.contains("Subject") && !debug.contains("archive@"),
        "{debug}"
    );
}

#[tokio::test]
async fn deferred_recipients_are_retried_alone_and_permanent_ones_reported() {
    let transport = Scripted::default();
    let deferred = |to: &str| missive::Rejected::new(to, Some(451), "451 4.2.1 try later");
    // Popped from the end: the first attempt takes a and defers b and c, refusing
    // nothing; the second takes b and refuses c for good.
    transport.script.lock().unwrap().extend([
        Ok(
            missive::Delivery::new(vec!["b@x.test".into()], "250 ok").with_rejected(vec![
                missive::Rejected::new("c@x.test", Some(550), "550 5.1.1 no such user"),
            ]),
        ),
        Ok(missive::Delivery::new(vec!["a@x.test".into()], "250 ok")
            .with_deferred(vec![deferred("b@x.test"), deferred("c@x.test")])),
    ]);
    let mailer = scripted_mailer(&transport);
    let data = mailer.example("welcome", 0).unwrap();
    let receipt = mailer
        .template("welcome")
        .data(&data)
        .to("a@x.test")
        .to("b@x.test")
        .to("c@x.test")
        .send()
        .await
        .unwrap();
    assert_eq!(receipt.attempts, 2);
    assert_eq!(receipt.accepted, ["a@x.test", "b@x.test"]);
    assert_eq!(receipt.rejected.len(), 1);
    assert_eq!(receipt.rejected[0].code, Some(550));
    let seen = transport.seen.lock().unwrap().clone();
    assert_eq!(seen[1].recipients(), ["b@x.test", "c@x.test"]);
    assert_eq!(seen[0].message_id(), seen[1].message_id());
}

#[tokio::test]
async fn delivery_unknown_from_any_transport_is_not_resent_by_default() {
    let transport = Scripted::default();
    transport
        .script
        .lock()
        .unwrap()
        .push(Err(missive::Error::new(
            ErrorKind::DeliveryUnknown,
            "the API timed out after the upload",
        )));
    let mailer = scripted_mailer(&transport);
    let data = mailer.example("welcome", 0).unwrap();
    let err = mailer.send_template("welcome", &data).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DeliveryUnknown);
    let seen = transport.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(err.message_id(), Some(seen[0].message_id()));
}

#[tokio::test]
async fn the_in_memory_inbox_reads_queued_mail_back_from_its_mime() {
    let (mailer, _) = repo_mailer();
    let data = mailer.example("orders/receipt", 0).unwrap();
    let rendered = mailer.render("orders/receipt", &data).unwrap();
    let eml = mailer.template("orders/receipt").data(&data).eml().unwrap();
    // What a queue hands back: only the envelope and the bytes.
    let email = missive::Email::new("<q@acme.test>", None, &["ada@x.test"], eml).unwrap();
    let inbox = missive::Inbox::default();
    missive::Transport::send(&inbox, &email).await.unwrap();
    let sent = inbox.last().unwrap();
    assert!(sent.rendered().is_none());
    assert_eq!(sent.subject(), rendered.subject());
    assert_eq!(sent.html(), rendered.html());
    assert_eq!(sent.text(), rendered.text());
}

#[tokio::test]
async fn recipients_the_caller_gives_replace_the_front_matter_before_it_renders() {
    // The front-matter's `to` and `reply_to` need data this caller does not pass; they
    // are replaced, so they are never rendered and cannot fail the send.
    let f = Fixture::empty();
    f.write(
        "templates/note.html",
        "---\nsubject: Note\nto: \"{{ contact.name }} <{{ contact.email }}>\"\n\
         reply_to: \"{{ owner.email }}\"\ncc: \"{{ watchers }}\"\n---\n<p>hi</p>\n",
    );
    let (mailer, inbox) = f.mailer().unwrap();
    let receipt = mailer
        .template("note")
        .to("Ada <ada@x.test>")
        .reply_to("desk@x.test")
        .cc("ops@x.test")
        .send()
        .await
        .unwrap();
    assert_eq!(receipt.accepted, ["ada@x.test", "ops@x.test"]);
    let rendered = inbox.last().unwrap().rendered().cloned().unwrap();
    assert_eq!(rendered.reply_to().as_deref(), Some("desk@x.test"));
    let err = mailer.template("note").send().await.unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::Render,
        "without them it renders, and fails: {err}"
    );
}

#[test]
fn every_schema_is_enforced_in_a_set_larger_than_the_validators_it_keeps() {
    // More schemas than the set keeps compiled (32): each is compiled again when used.
    let f = Fixture::new();
    for i in 0..40 {
        f.write(
            &format!("templates/t{i}.html"),
            &format!("---\nsubject: T{i}\nto: a@x.test\n---\n{{{{ k{i} }}}}\n"),
        );
        f.write(
            &format!("schemas/t{i}.schema.json"),
            &format!(
                "{{\"type\": \"object\", \"description\": \"template {i}\", \"required\": [\"k{i}\"], \"properties\": {{\"k{i}\": {{\"type\": \"integer\", \"title\": \"K\"}}}}}}"
            ),
        );
    }
    let (mailer, _) = f.mailer().unwrap();
    for _ in 0..2 {
        for i in 0..40 {
            let name = format!("t{i}");
            let html = mailer.render(&name, &json!({format!("k{i}"): i})).unwrap();
            assert!(html.html().contains(&i.to_string()), "{}", html.html());
            for bad in [json!({}), json!({format!("k{i}"): "x"})] {
                let err = mailer.render(&name, &bad).unwrap_err();
                assert_eq!(err.kind(), ErrorKind::InvalidData, "{name}: {err}");
                assert_eq!(err.violations().len(), 1, "{name}: {err}");
            }
        }
    }
}
