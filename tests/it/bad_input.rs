//! Every kind of bad input gets one clear error naming the file and line, never a panic.

use crate::common;

use common::{assert_at, Fixture};
use missive::ErrorKind;
use serde_json::json;

#[test]
fn malformed_front_matter_yaml() {
    let f = Fixture::new();
    f.write(
        "templates/hello.html",
        "---\nsubject: Hi\nto: [unclosed\n---\n<p>x</p>\n",
    );
    let err = f.load_error();
    assert_eq!(err.kind(), ErrorKind::Template);
    assert!(err.message().contains("invalid front-matter"), "{err}");
    assert!(err.location().unwrap().file.ends_with("hello.html"));
    assert!(err.location().unwrap().line >= 3, "{err}");
}

#[test]
fn unknown_front_matter_key() {
    let f = Fixture::new();
    f.write(
        "templates/hello.html",
        "---\nsubject: Hi\nto: a@b.test\nreply-to: c@d.test\n---\n<p>x</p>\n",
    );
    let err = f.load_error();
    assert_eq!(err.kind(), ErrorKind::Template);
    assert!(err.message().contains("unknown field `reply-to`"), "{err}");
    assert_at(&err, "templates/hello.html", 4);
}

#[test]
fn missing_subject() {
    let f = Fixture::new();
    f.write("templates/hello.html", "---\nto: a@b.test\n---\n<p>x</p>\n");
    let err = f.load_error();
    assert_eq!(err.kind(), ErrorKind::Template);
    assert!(err.message().contains("subject"), "{err}");
    assert_at(&err, "templates/hello.html", 1);
}

#[test]
fn missing_front_matter() {
    let f = Fixture::new();
    f.write("templates/hello.html", "<p>no front matter</p>\n");
    let err = f.load_error();
    assert!(err.message().contains("missing front-matter"), "{err}");
    assert_at(&err, "templates/hello.html", 1);
}

#[test]
fn broken_jinja_in_body_points_at_the_file_line() {
    let f = Fixture::new();
    f.write(
        "templates/hello.html",
        "---\nsubject: Hi\n---\n<p>one</p>\n<p>{% if name %}unclosed</p>\n",
    );
    let err = f.load_error();
    assert_eq!(err.kind(), ErrorKind::Template);
    assert!(err.message().contains("syntax error"), "{err}");
    // The front-matter is three lines; the error is on the body's second line.
    assert_at(&err, "templates/hello.html", 5);
}

#[test]
fn broken_jinja_in_a_front_matter_value() {
    let f = Fixture::new();
    f.write(
        "templates/hello.html",
        "---\nsubject: Hi\nto: \"{{ email }\"\n---\n<p>x</p>\n",
    );
    let err = f.load_error();
    assert_eq!(err.kind(), ErrorKind::Template);
    assert_at(&err, "templates/hello.html", 3);
}

#[test]
fn broken_jinja_in_a_layout() {
    let f = Fixture::new();
    f.write(
        "templates/_layouts/base.html",
        "<html>\n<body>\n{% block content %}\n</body></html>\n",
    );
    let err = f.load_error();
    assert_eq!(err.kind(), ErrorKind::Template);
    assert!(
        err.location().unwrap().file.ends_with("_layouts/base.html"),
        "{err}"
    );
}

#[test]
fn missing_schema_file() {
    let f = Fixture::new();
    f.write(
        "templates/hello.html",
        "---\nsubject: Hi\nschema: nope.schema.json\n---\n<p>x</p>\n",
    );
    let err = f.load_error();
    assert_eq!(err.kind(), ErrorKind::Template);
    assert!(
        err.message()
            .contains("schema `nope.schema.json` not found"),
        "{err}"
    );
    assert_at(&err, "templates/hello.html", 3);
}

#[test]
fn schema_that_is_not_json() {
    let f = Fixture::new();
    f.write(
        "schemas/hello.schema.json",
        "{\n  \"type\": \"object\",\n  oops\n}\n",
    );
    let err = f.load_error();
    assert_eq!(err.kind(), ErrorKind::Template);
    assert!(err.message().contains("invalid JSON"), "{err}");
    assert_at(&err, "schemas/hello.schema.json", 3);
}

#[test]
fn schema_that_is_not_a_schema() {
    let f = Fixture::new();
    f.write(
        "schemas/hello.schema.json",
        "{\n  \"type\": \"object\",\n  \"required\": \"name\"\n}\n",
    );
    let err = f.load_error();
    assert!(err.message().contains("invalid JSON Schema"), "{err}");
    assert_at(&err, "schemas/hello.schema.json", 3);
}

#[test]
fn include_that_leaves_the_folder() {
    let f = Fixture::new();
    f.write("secret.html", "top secret");
    f.write(
        "templates/hello.html",
        "---\nsubject: Hi\n---\n\n{% include \"../secret.html\" %}\n",
    );
    let (mailer, _) = f
        .mailer()
        .expect("loads: the include is resolved at render time");
    let err = mailer.render("hello", &json!({})).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Render);
    assert!(
        err.message().contains("outside the templates folder"),
        "{err}"
    );
    assert!(!err.to_string().contains("top secret"));
    assert_at(&err, "templates/hello.html", 5);
}

#[test]
fn absolute_include_is_refused() {
    let f = Fixture::new();
    f.write(
        "templates/hello.html",
        "---\nsubject: Hi\n---\n{% include \"/etc/passwd\" %}\n",
    );
    let (mailer, _) = f.mailer().unwrap();
    let err = mailer.render("hello", &json!({})).unwrap_err();
    assert!(
        err.message().contains("outside the templates folder"),
        "{err}"
    );
    assert_at(&err, "templates/hello.html", 4);
}

#[cfg(unix)]
#[test]
fn symlink_that_leaves_the_folder() {
    let f = Fixture::new();
    f.write("elsewhere/_evil.html", "outside");
    std::os::unix::fs::symlink(
        f.path("elsewhere/_evil.html"),
        f.path("templates/_evil.html"),
    )
    .unwrap();
    let err = f.load_error();
    assert_eq!(err.kind(), ErrorKind::Template);
    assert!(err.message().contains("leaves"), "{err}");
    assert_at(&err, "templates/_evil.html", 1);
}

#[test]
fn stylesheet_link_to_a_missing_file() {
    let f = Fixture::new();
    f.write(
        "templates/_layouts/base.html",
        "<html>\n<head>\n<link rel=\"stylesheet\" href=\"styles/missing.css\">\n</head><body>{% block content %}{% endblock %}</body></html>\n",
    );
    let err = f.load_error();
    assert!(err.message().contains("styles/missing.css"), "{err}");
    assert_at(&err, "templates/_layouts/base.html", 3);
}

#[test]
fn stylesheet_link_outside_the_folder() {
    let f = Fixture::new();
    f.write(
        "templates/_layouts/base.html",
        "<html><head><link rel=\"stylesheet\" href=\"../../etc/x.css\"></head><body>{% block content %}{% endblock %}</body></html>\n",
    );
    let err = f.load_error();
    assert!(
        err.message().contains("outside the templates folder"),
        "{err}"
    );
    assert_at(&err, "templates/_layouts/base.html", 1);
}

#[test]
fn remote_stylesheet_is_never_fetched() {
    let f = Fixture::new();
    f.write(
        "templates/_layouts/base.html",
        "<html><head><link rel=\"stylesheet\" href=\"https://fonts.example.test/css\"><style>p{color:red}</style></head><body>{% block content %}{% endblock %}</body></html>\n",
    );
    let (mailer, _) = f.mailer().unwrap();
    let rendered = mailer
        .render("hello", &json!({"name": "Ada", "email": "ada@x.test"}))
        .unwrap();
    assert!(rendered.html().contains("https://fonts.example.test/css"));
    assert!(
        rendered.html().contains("<p style=\"color: red;\">"),
        "{}",
        rendered.html()
    );
}

#[test]
fn file_that_is_not_utf8() {
    let f = Fixture::new();
    std::fs::create_dir_all(f.path("templates/_partials")).unwrap();
    std::fs::write(f.path("templates/_partials/bad.html"), b"\xff\xfe bad").unwrap();
    let err = f.load_error();
    assert!(err.message().contains("not UTF-8"), "{err}");
    assert_at(&err, "templates/_partials/bad.html", 1);
}

#[test]
fn text_file_without_its_html() {
    let f = Fixture::new();
    f.write("templates/orphan.txt", "hi");
    let err = f.load_error();
    assert!(err.message().contains("orphan.html"), "{err}");
    assert_at(&err, "templates/orphan.txt", 1);
}

#[test]
fn locale_variant_without_base() {
    let f = Fixture::new();
    f.write("templates/bye.fr.html", "---\nsubject: Salut\n---\nx\n");
    let err = f.load_error();
    assert!(err.message().contains("no base template"), "{err}");
    assert_at(&err, "templates/bye.fr.html", 1);
}

#[test]
fn reserved_header_in_front_matter() {
    let f = Fixture::new();
    f.write(
        "templates/hello.html",
        "---\nsubject: Hi\nheaders:\n  X-Ok: fine\n  Message-ID: \"<x@y>\"\n---\nx\n",
    );
    let err = f.load_error();
    assert!(err.message().contains("Message-ID"), "{err}");
    assert_at(&err, "templates/hello.html", 5);
}

#[test]
fn every_broken_file_is_reported_at_once() {
    let f = Fixture::new();
    f.write("templates/a.html", "---\nsubject: A\nbogus: 1\n---\nx\n");
    f.write("templates/b.html", "---\nto: b@x.test\n---\nx\n");
    f.write("templates/c.html", "---\nsubject: C\n---\n{{ unclosed\n");
    let err = f.load_error();
    let files: Vec<_> = err
        .problems()
        .map(|p| p.location().unwrap().file.file_name().unwrap().to_owned())
        .collect();
    assert_eq!(files, ["a.html", "b.html", "c.html"]);
}

#[test]
fn undefined_value_names_variable_file_and_line() {
    let f = Fixture::new();
    f.write(
        "templates/hello.html",
        "---\nsubject: Hi\nto: a@b.test\n---\n<p>ok</p>\n<p>{{ user.nickname }}</p>\n",
    );
    let (mailer, _) = f.mailer().unwrap();
    let err = mailer.render("hello", &json!({"user": {}})).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Render);
    assert!(err.message().contains("`user.nickname`"), "{err}");
    assert_at(&err, "templates/hello.html", 6);
}

#[test]
fn undefined_value_in_a_layout_names_the_layout() {
    let f = Fixture::new();
    f.write(
        "templates/_layouts/base.html",
        "<html>\n<head><title>{{ title }}</title></head>\n<body>{% block content %}{% endblock %}</body></html>\n",
    );
    let (mailer, _) = f.mailer().unwrap();
    let err = mailer
        .render("hello", &json!({"name": "A", "email": "a@x.test"}))
        .unwrap_err();
    assert!(err.message().contains("`title`"), "{err}");
    assert_at(&err, "templates/_layouts/base.html", 2);
}

#[test]
fn undefined_value_in_a_front_matter_value() {
    let f = Fixture::new();
    let (mailer, _) = f.mailer().unwrap();
    let err = mailer.render("hello", &json!({"name": "Ada"})).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Render);
    assert!(err.message().contains("`email`"), "{err}");
    assert_at(&err, "templates/hello.html", 3);
}

#[test]
fn looping_over_a_missing_value_is_an_error_but_testing_it_is_not() {
    let f = Fixture::new();
    f.write(
        "templates/list.html",
        "---\nsubject: List\nto: a@b.test\n---\n{% if items %}never{% endif %}\n{% for i in items %}{{ i }}{% endfor %}\n",
    );
    let (mailer, _) = f.mailer().unwrap();
    let err = mailer.render("list", &json!({})).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Render);
    assert_at(&err, "templates/list.html", 6);
    let ok = mailer.render("list", &json!({"items": [1, 2]})).unwrap();
    assert!(ok.html().contains("never\n12"), "{}", ok.html());
}

#[test]
fn unparsable_rendered_address() {
    let f = Fixture::new();
    let (mailer, _) = f.mailer().unwrap();
    let err = mailer
        .render("hello", &json!({"name": "Ada", "email": "not-an-address"}))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Address);
    assert_at(&err, "templates/hello.html", 3);
}

#[test]
fn header_injection_through_data_is_refused() {
    let f = Fixture::new();
    let (mailer, inbox) = f.mailer().unwrap();
    let err = mailer
        .render(
            "hello",
            &json!({"name": "Ada\r\nBcc: victim@x.test", "email": "ada@x.test"}),
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Address);
    assert_at(&err, "templates/hello.html", 2);
    assert!(inbox.is_empty());
}

#[test]
fn data_failing_the_schema_lists_every_violation() {
    let f = Fixture::new();
    f.write(
        "schemas/hello.schema.json",
        r#"{"type": "object", "required": ["name", "email"],
            "properties": {"name": {"type": "string", "minLength": 2}, "email": {"type": "string", "format": "email"}},
            "additionalProperties": false}"#,
    );
    let (mailer, inbox) = f.mailer().unwrap();
    let err = mailer
        .render("hello", &json!({"name": "A", "email": "nope", "extra": 1}))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidData);
    let mut pointers: Vec<_> = err.violations().iter().map(|v| v.pointer.clone()).collect();
    pointers.sort();
    assert_eq!(pointers, ["", "/email", "/name"], "{err}");
    assert!(err.message().contains("hello.schema.json"), "{err}");
    assert!(inbox.is_empty());
}

#[test]
fn unknown_template_and_missing_example() {
    let f = Fixture::new();
    let (mailer, _) = f.mailer().unwrap();
    assert_eq!(
        mailer.render("nope", &json!({})).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        mailer.example("hello", 0).unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

#[test]
fn missing_templates_folder_is_a_config_error() {
    let err = missive::Mailer::builder()
        .templates("/definitely/not/here")
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.message().contains("/definitely/not/here"), "{err}");
}

#[test]
fn bad_config_file() {
    let f = Fixture::new();
    f.write(
        "missive.yaml",
        "from: \"Acme <a@b.test>\"\ntransport:\n  type: outbox\n  dri: x\n",
    );
    let err = missive::Config::from_file(f.path("missive.yaml")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.message().contains("dri"), "{err}");
    assert!(err.location().unwrap().file.ends_with("missive.yaml"));
}

/// Issue 11.2: errors in front-matter values name the field, and an address list entry
/// by its place; the rendered (data-derived) value is never quoted.
#[test]
fn front_matter_errors_name_the_field() {
    let f = Fixture::new();
    f.write(
        "templates/syntax.html",
        "---\nsubject: Hi\nheaders:\n  X-Ref: \"{{ ref }\"\n---\nx\n",
    );
    let err = f.load_error();
    assert!(
        err.message()
            .starts_with("front-matter `headers.X-Ref`: syntax error"),
        "{err}"
    );
    assert_at(&err, "templates/syntax.html", 4);
    f.write(
        "templates/syntax.html",
        "---\nsubject: \"{{ user.name }\"\n---\nx\n",
    );
    let err = f.load_error();
    assert!(
        err.message()
            .starts_with("front-matter `subject`: syntax error"),
        "{err}"
    );
    assert_at(&err, "templates/syntax.html", 2);
    std::fs::remove_file(f.path("templates/syntax.html")).unwrap();

    f.write(
        "templates/fields.html",
        "---\nsubject: \"Hi {{ user.name }}\"\nto:\n  - ada@x.test\n  - \"{{ user.email }}\"\ncc: \"ada@x.test, {{ user.email }}\"\nheaders:\n  X-Ref: \"{{ ref }}\"\n---\nx\n",
    );
    let (mailer, _) = f.mailer().unwrap();
    let good = json!({"user": {"name": "Ada", "email": "ada@x.test"}, "ref": "r1"});
    mailer.render("fields", &good).unwrap();
    let with = |patch: serde_json::Value| {
        let mut data = good.clone();
        for (k, v) in patch.as_object().unwrap() {
            data[k] = v.clone();
        }
        mailer.render("fields", &data).unwrap_err()
    };

    let err = with(json!({"user": {"email": "ada@x.test"}}));
    assert_eq!(err.kind(), ErrorKind::Render);
    assert!(
        err.message()
            .starts_with("front-matter `subject`: undefined value `user.name`"),
        "{err}"
    );
    assert_at(&err, "templates/fields.html", 2);

    let err = with(json!({"ref": "a\r\nBcc: x@evil.test"}));
    assert_eq!(err.kind(), ErrorKind::Address);
    assert!(
        err.message().starts_with("front-matter `headers.X-Ref`: "),
        "{err}"
    );
    assert!(!err.to_string().contains("evil"), "{err}");
    assert_at(&err, "templates/fields.html", 8);

    let err = with(json!({"user": {"name": "Ada", "email": "token-8f3a"}}));
    assert_eq!(err.kind(), ErrorKind::Address);
    assert!(
        err.message()
            .starts_with("front-matter `to[1]`: not a valid address"),
        "{err}"
    );
    assert!(!err.to_string().contains("token-8f3a"), "{err}");
    assert_at(&err, "templates/fields.html", 3);

    f.write(
        "templates/fields.html",
        "---\nsubject: Hi\ncc: \"ada@x.test, {{ user.email }}\"\n---\nx\n",
    );
    let (mailer, _) = f.mailer().unwrap();
    let err = mailer
        .render("fields", &json!({"user": {"email": "token-8f3a"}}))
        .unwrap_err();
    assert!(
        err.message()
            .starts_with("front-matter `cc`: address 2 of the 2 in the list is not valid"),
        "{err}"
    );
    assert!(!err.to_string().contains("token-8f3a"), "{err}");
    assert_at(&err, "templates/fields.html", 3);
}

/// Issue 11.3: templates that include, import or extend each other in a circle say so
/// and show the chain, instead of "could not render include: error in …".
#[test]
fn include_import_and_extends_cycles_show_the_chain() {
    let f = Fixture::new();
    f.write("templates/_a.html", "a\n{% include \"_b.html\" %}\n");
    f.write("templates/_b.html", "b\n\n{% include \"_a.html\" %}\n");
    f.write("templates/_i1.html", "{% import \"_i2.html\" as two %}\n");
    f.write("templates/_i2.html", "\n{% import \"_i1.html\" as one %}\n");
    f.write("templates/_e1.html", "{% extends \"_e2.html\" %}\n");
    f.write("templates/_e2.html", "\n{%- extends '_e1.html' %}\n");
    f.write(
        "templates/inc.html",
        "---\nsubject: Hi\n---\n{% include \"_a.html\" %}\n",
    );
    f.write(
        "templates/imp.html",
        "---\nsubject: Hi\n---\n{% import \"_i1.html\" as x %}\n",
    );
    f.write(
        "templates/ext.html",
        "---\nsubject: Hi\n---\n{% extends \"_e1.html\" %}\n",
    );
    let (mailer, _) = f.mailer().unwrap();

    let err = mailer.render("inc", &json!({})).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Render);
    assert!(
        err.message()
            .starts_with("`include`/`import` cycle: inc.html → _a.html → _b.html → _a.html"),
        "{err}"
    );
    assert_at(&err, "templates/_b.html", 3);

    let err = mailer.render("imp", &json!({})).unwrap_err();
    assert!(
        err.message()
            .starts_with("`include`/`import` cycle: imp.html → _i1.html → _i2.html → _i1.html"),
        "{err}"
    );
    assert_at(&err, "templates/_i2.html", 2);

    let err = mailer.render("ext", &json!({})).unwrap_err();
    assert!(
        err.message()
            .starts_with("`extends` cycle: _e1.html → _e2.html → _e1.html"),
        "{err}"
    );
    assert_at(&err, "templates/_e2.html", 2);
}

/// An error inside an included partial is reported where it is, not as "could not
/// render include" at the include.
#[test]
fn an_error_in_an_included_partial_points_into_the_partial() {
    let f = Fixture::new();
    f.write(
        "templates/_partials/card.html",
        "<div>\n{{ user.nickname }}</div>\n",
    );
    f.write(
        "templates/card.html",
        "---\nsubject: Hi\n---\n\n{% include \"_partials/card.html\" %}\n",
    );
    let (mailer, _) = f.mailer().unwrap();
    let err = mailer.render("card", &json!({"user": {}})).unwrap_err();
    assert!(
        err.message().starts_with("undefined value `user.nickname`"),
        "{err}"
    );
    assert!(
        err.message().contains("(included from ") && err.message().contains("card.html:5)"),
        "{err}"
    );
    assert_at(&err, "templates/_partials/card.html", 2);
}

/// Issue 11.4, for the preview's error view (a failed load): each problem once, none
/// that only follows from another file's failure.
#[test]
fn a_failed_load_has_no_follow_on_problems() {
    let f = Fixture::new();
    f.write("templates/bye.html", "---\nsubject: [unclosed\n---\nx\n");
    f.write("templates/bye.fr.html", "---\nsubject: Salut\n---\nx\n");
    f.write("schemas/broken.schema.json", "{ oops }\n");
    f.write(
        "templates/uses.html",
        "---\nsubject: Hi\nschema: broken.schema.json\n---\nx\n",
    );
    f.write("schemas/hello.schema.json", "{\n  \"type\": 7\n}\n");
    let err = f.load_error();
    let problems: Vec<String> = err.problems().map(|p| p.to_string()).collect();
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(
        problems.iter().any(|p| p.contains("bye.html:2:")),
        "{problems:#?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("broken.schema.json:1:")),
        "{problems:#?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("hello.schema.json:")),
        "{problems:#?}"
    );
}

/// Issue 11.6: html5ever (under css-inline) takes quadratic time in nesting depth and
/// recurses per level. Past `MAX_DEPTH` (512) a document is refused with an error that
/// names the file and the line; short of it, and with long flat lists, it renders.
#[test]
fn html_nested_past_the_limit_is_refused_clearly() {
    let f = Fixture::new();
    let body = |n: usize| {
        format!(
            "---\nsubject: Deep\nto: a@x.test\n---\n{{% extends \"_layouts/base.html\" %}}\n{{% block content %}}\n{}\n<p>x</p>{}{{% endblock %}}\n",
            "<div>".repeat(n),
            "</div>".repeat(n)
        )
    };
    f.write("templates/deep.html", &body(100_000));
    f.write("templates/ok.html", &body(400));
    let items = "<li>item".repeat(5_000);
    f.write(
        "templates/list.html",
        &format!(
            "---\nsubject: List\nto: a@x.test\n---\n<ul>{items}</ul><p>{}</p>\n",
            "<p>x".repeat(2_000)
        ),
    );
    let (mailer, _) = f.mailer().unwrap();
    let err = mailer.render("deep", &json!({})).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Render);
    assert!(
        err.message().contains(
            "nests elements more than 512 deep (the `<div>` on line 4 of the rendered HTML)"
        ),
        "{err}"
    );
    assert_at(&err, "templates/deep.html", 1);
    let ok = mailer.render("ok", &json!({})).unwrap();
    assert!(
        ok.html().contains("<p style=\"color: #333333;\">x</p>"),
        "{}",
        &ok.html()[..200]
    );
    let list = mailer.render("list", &json!({})).unwrap();
    assert_eq!(list.text().unwrap().matches("- item").count(), 5_000);
}

/// One file with several problems reports them all, in line order.
#[test]
fn every_problem_of_one_file_is_reported() {
    let f = Fixture::new();
    f.write(
        "templates/hello.html",
        "---\nsubject: \"{{ a }\"\nto: \"{{ b }\"\nschema: nope.schema.json\n---\n{% if %}\n",
    );
    let err = f.load_error();
    let lines: Vec<usize> = err.problems().map(|p| p.location().unwrap().line).collect();
    assert_eq!(
        lines,
        [2, 3, 4, 6],
        "{:#?}",
        err.problems().map(|p| p.to_string()).collect::<Vec<_>>()
    );
}
