//! The JSON, frame and event routes behind the preview page.

use std::convert::Infallible;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream, StreamExt};
use missive::{Error, ErrorKind, Location, Mailer, ReloadEvent};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

/// Gmail cuts messages whose HTML is larger than this and hides the rest behind a
/// "View entire message" link.
const GMAIL_CLIP_BYTES: usize = 102 * 1024;

/// Lines shown before and after the line an error points at.
const EXCERPT_CONTEXT: usize = 3;

/// Locks down the email's own HTML when it is opened on its own: no script, no
/// plugins, no forms, no way to reach back to this server beyond images and fonts.
pub(crate) const FRAME_CSP: &str = "sandbox allow-popups allow-popups-to-escape-sandbox; \
     default-src 'none'; style-src 'unsafe-inline'; img-src * data: cid:; font-src * data:; \
     form-action 'none'; base-uri 'none'";

/// Which template, locale and example a request is about.
#[derive(Debug, Deserialize)]
pub(crate) struct Pick {
    template: String,
    #[serde(default)]
    example: usize,
    locale: Option<String>,
}

/// `POST /api/render`: a pick, with the page's edited data in place of the example.
#[derive(Debug, Deserialize)]
pub(crate) struct RenderRequest {
    template: String,
    #[serde(default)]
    example: usize,
    locale: Option<String>,
    data: Option<Value>,
}

/// `GET /api/templates`: every template with its locales and example count, and what
/// keeps the files on disk from loading, if anything.
pub(crate) async fn templates(State(mailer): State<Mailer>) -> Json<Value> {
    Json(json!({
        "templates": mailer.templates(),
        "generation": mailer.generation(),
        "error": mailer.last_reload_error().map(|e| problems(&e)),
    }))
}

/// `GET /api/example`: one sample of a template's data, to start editing from.
pub(crate) async fn example(State(mailer): State<Mailer>, Query(pick): Query<Pick>) -> Response {
    match sample(&mailer, &pick.template, pick.example) {
        Ok(data) => Json(data).into_response(),
        Err(e) => failure(stage_of(&e), &e).into_response(),
    }
}

/// `POST /api/render`: everything the page shows about one message.
pub(crate) async fn render(
    State(mailer): State<Mailer>,
    Json(request): Json<RenderRequest>,
) -> Response {
    match tokio::task::spawn_blocking(move || render_json(&mailer, request)).await {
        Ok(response) => response,
        Err(e) => failure(
            "render",
            &Error::new(ErrorKind::Render, format!("render task failed: {e}")),
        )
        .into_response(),
    }
}

fn render_json(mailer: &Mailer, request: RenderRequest) -> Response {
    // While the files on disk do not load, production keeps the last good set, but
    // the designer must see what is broken rather than a stale mail.
    if let Some(error) = mailer.last_reload_error() {
        return failure("load", &error).into_response();
    }
    let data = match request.data {
        Some(data) => data,
        None => match sample(mailer, &request.template, request.example) {
            Ok(data) => data,
            Err(e) => return failure(stage_of(&e), &e).into_response(),
        },
    };
    let mut message = mailer.template(&request.template).data(&data);
    if let Some(locale) = request.locale.as_deref().filter(|l| !l.is_empty()) {
        message = message.locale(locale);
    }
    let rendered = message.render().and_then(|r| Ok((r, message.eml()?)));
    let (rendered, eml) = match rendered {
        Ok(pair) => pair,
        Err(e) => return failure(stage_of(&e), &e).into_response(),
    };
    let html_bytes = rendered.html().len();
    let mut body = serde_json::to_value(&rendered).unwrap_or_else(|_| json!({}));
    if let Value::Object(map) = &mut body {
        map.insert("ok".into(), Value::Bool(true));
        // A template without `from` is sent from the configured default; show that.
        if rendered.from().is_none() {
            map.insert("from".into(), json!(header(&eml, "From")));
        }
        map.insert(
            "eml".into(),
            Value::String(String::from_utf8_lossy(&eml).into_owned()),
        );
        map.insert(
            "size".into(),
            json!({
                "html": html_bytes,
                "eml": eml.len(),
                "gmail_clip": GMAIL_CLIP_BYTES,
                "clipped": html_bytes > GMAIL_CLIP_BYTES,
            }),
        );
    }
    Json(body).into_response()
}

/// The unfolded value of header `name` in a raw message.
fn header(eml: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(eml);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    let mut value: Option<String> = None;
    for line in head.split("\r\n") {
        match (&mut value, line.strip_prefix([' ', '\t'])) {
            (Some(v), Some(rest)) => {
                v.push(' ');
                v.push_str(rest.trim());
            }
            (Some(_), None) => break,
            (None, _) => {
                if let Some((key, rest)) = line.split_once(':') {
                    if key.eq_ignore_ascii_case(name) {
                        value = Some(rest.trim().to_string());
                    }
                }
            }
        }
    }
    value
}

/// `GET /frame`: the email's HTML alone, rendered with an example, locked down by a
/// CSP so that opening it in its own tab is as safe as the sandboxed frame.
pub(crate) async fn frame(State(mailer): State<Mailer>, Query(pick): Query<Pick>) -> Response {
    let rendered = tokio::task::spawn_blocking(move || {
        let data = sample(&mailer, &pick.template, pick.example)?;
        let mut message = mailer.template(&pick.template).data(&data);
        if let Some(locale) = pick.locale.as_deref().filter(|l| !l.is_empty()) {
            message = message.locale(locale);
        }
        message.render()
    })
    .await;
    let (status, body) = match rendered {
        Ok(Ok(rendered)) => (StatusCode::OK, rendered.html().to_string()),
        Ok(Err(e)) => (
            status_of(&e),
            format!("<pre>{}</pre>", escape(&e.to_string())),
        ),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, escape(&e.to_string())),
    };
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, FRAME_CSP),
        ],
        body,
    )
        .into_response()
}

/// `GET /events`: a `state` event at once, then one event per reload: `reload` when
/// a change was swapped in, `failed` (with every problem) when it was refused.
pub(crate) async fn events(
    State(mailer): State<Mailer>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let receiver = mailer.subscribe();
    let state = Event::default().event("state").data(
        json!({
            "generation": mailer.generation(),
            "error": mailer.last_reload_error().map(|e| problems(&e)),
        })
        .to_string(),
    );
    // Holding the mailer would keep it, and its watcher, alive after a shutdown;
    // the receiver alone ends with it.
    drop(mailer);
    let updates = stream::unfold(receiver, |mut receiver| async move {
        let event = match receiver.recv().await {
            Ok(ReloadEvent::Reloaded {
                generation,
                changed,
            }) => Event::default()
                .event("reload")
                .data(json!({"generation": generation, "changed": changed}).to_string()),
            Ok(ReloadEvent::Failed { error, changed }) => Event::default()
                .event("failed")
                .data(json!({"error": problems(&error), "changed": changed}).to_string()),
            Ok(_) | Err(RecvError::Lagged(_)) => Event::default().event("reload").data("{}"),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(event), receiver))
    });
    Sse::new(stream::once(async { Ok(state) }).chain(updates)).keep_alive(KeepAlive::default())
}

/// Sample `index` of a template's data; `{}` for a template without examples, so
/// its schema or render errors show rather than a missing-example message.
fn sample(mailer: &Mailer, template: &str, index: usize) -> missive::Result<Value> {
    let has_examples = mailer
        .templates()
        .iter()
        .any(|t| t.name == template && t.examples > 0);
    if has_examples {
        mailer.example(template, index)
    } else {
        // Still reports an unknown template as not found.
        mailer.example(template, 0).or_else(|e| match e.kind() {
            ErrorKind::NotFound if mailer.template_names().iter().any(|n| n == template) => {
                Ok(json!({}))
            }
            _ => Err(e),
        })
    }
}

/// What the page tells the designer failed: a `missing` template or example, `data`
/// that breaks the schema, or the template's `render`.
fn stage_of(error: &Error) -> &'static str {
    match error.kind() {
        ErrorKind::NotFound => "missing",
        ErrorKind::InvalidData => "data",
        _ => "render",
    }
}

fn status_of(error: &Error) -> StatusCode {
    match error.kind() {
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

/// A failed render as the page shows it: which stage failed and every problem.
fn failure(stage: &str, error: &Error) -> (StatusCode, Json<Value>) {
    (
        status_of(error),
        Json(json!({"ok": false, "stage": stage, "problems": problems(error)})),
    )
}

/// Every problem of `error`, each with its file, line and the lines around it.
fn problems(error: &Error) -> Vec<Value> {
    error
        .problems()
        .map(|p| {
            json!({
                "kind": p.kind().to_string(),
                "message": p.message(),
                "location": p.location().map(|l| json!({
                    "file": l.file.display().to_string(),
                    "line": l.line,
                    "column": l.column,
                })),
                "excerpt": p.location().map(excerpt).unwrap_or_default(),
                // The designer's own sample data is on the page anyway.
                "violations": p.violations().iter().map(|v| json!({
                    "pointer": v.pointer,
                    "message": v.detail,
                })).collect::<Vec<_>>(),
            })
        })
        .collect()
}

/// The lines around `location`, read from the file as it is now.
fn excerpt(location: &Location) -> Vec<Value> {
    let Ok(text) = std::fs::read_to_string(&location.file) else {
        return Vec::new();
    };
    let lines: Vec<&str> = text.lines().collect();
    // An error at the end of input points past the last line; show the end.
    let at = location.line.min(lines.len().max(1));
    let first = at.saturating_sub(EXCERPT_CONTEXT).max(1);
    let last = (at + EXCERPT_CONTEXT).min(lines.len());
    (first..=last)
        .map(|n| {
            json!({
                "line": n,
                "text": lines.get(n - 1).copied().unwrap_or_default(),
                "hit": n == at,
            })
        })
        .collect()
}

pub(crate) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_read_unfolded_from_the_head_only() {
        let eml = b"Subject: Hi\r\nFrom: \"A very long name\"\r\n <a@example.test>\r\nTo: b@example.test\r\n\r\nFrom: body\r\n";
        assert_eq!(
            header(eml, "from").as_deref(),
            Some("\"A very long name\" <a@example.test>")
        );
        assert_eq!(header(eml, "To").as_deref(), Some("b@example.test"));
        assert_eq!(header(eml, "Cc"), None);
    }

    #[test]
    fn excerpts_mark_the_line_and_survive_errors_past_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.html");
        std::fs::write(&file, "one\ntwo\nthree\nfour\nfive\nsix\nseven\n").unwrap();
        let at = |line| Location {
            file: file.clone(),
            line,
            column: 1,
        };
        let lines = excerpt(&at(2));
        let numbers: Vec<_> = lines.iter().map(|l| l["line"].as_u64().unwrap()).collect();
        assert_eq!(numbers, [1, 2, 3, 4, 5]);
        assert_eq!(lines[1]["hit"], true);
        assert_eq!(lines[1]["text"], "two");
        let end = excerpt(&at(99));
        assert_eq!(end.last().unwrap()["text"], "seven");
        assert_eq!(end.last().unwrap()["hit"], true);
        assert!(excerpt(&Location {
            file: dir.path().join("gone.html"),
            line: 1,
            column: 1
        })
        .is_empty());
    }
}
