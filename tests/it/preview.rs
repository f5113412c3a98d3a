//! `missive preview` over HTTP: every route, against the real binary serving a copy of
//! the repository's templates (plus a few made for the test) in a temp folder.

use crate::common;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

/// Only a server that never answers hits this.
const PATIENCE: Duration = Duration::from_secs(30);

struct Server {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

impl Server {
    fn start() -> Server {
        Server::start_with(|_| ())
    }

    /// A server over the fixture templates after `prepare` changed them.
    fn start_with(prepare: impl FnOnce(&Path)) -> Server {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = tempfile::tempdir().unwrap();
        common::copy_dir(&root.join("templates"), &dir.path().join("templates"));
        common::copy_dir(&root.join("schemas"), &dir.path().join("schemas"));
        fs::write(
            dir.path().join("templates/oops.html"),
            "---\nsubject: Oops\nto: a@example.test\n---\n<p>fine</p>\n<p>{{ missing.value }}</p>\n",
        )
        .unwrap();
        fs::write(
            dir.path().join("templates/big.html"),
            "---\nsubject: Big\nto: a@example.test\n---\n\
             {% for i in range(3000) %}<p>Line {{ i }} of a very long newsletter.</p>\n{% endfor %}",
        )
        .unwrap();
        prepare(dir.path());
        let mut child = Command::new(common::missive_bin())
            .arg("--templates")
            .arg(dir.path().join("templates"))
            .arg("--schemas")
            .arg(dir.path().join("schemas"))
            .args(["preview", "--port", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in {line:?}"));
        let rest = url
            .strip_prefix("http://127.0.0.1:")
            .unwrap_or_else(|| panic!("not on 127.0.0.1: {url}"));
        let port = rest.trim_end_matches('/').parse().unwrap();
        Server { child, port, dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn connect(&self, method: &str, path: &str, body: Option<&Value>) -> TcpStream {
        self.connect_as(&format!("127.0.0.1:{}", self.port), method, path, body)
    }

    fn connect_as(&self, host: &str, method: &str, path: &str, body: Option<&Value>) -> TcpStream {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let body = body.map(Value::to_string).unwrap_or_default();
        // HTTP/1.0: the server closes when done, so no chunked decoding is needed.
        write!(
            stream,
            "{method} {path} HTTP/1.0\r\nHost: {host}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        stream
    }

    fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Response {
        let mut raw = String::new();
        self.connect(method, path, body)
            .read_to_string(&mut raw)
            .unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect();
        Response {
            status,
            headers,
            body: body.to_string(),
        }
    }

    fn get(&self, path: &str) -> Response {
        self.request("GET", path, None)
    }

    fn render(&self, body: Value) -> Response {
        self.request("POST", "/api/render", Some(&body))
    }
}

/// Server-sent events, read as they come.
struct Events(BufReader<TcpStream>);

impl Events {
    /// The next event's name and parsed data, skipping keep-alive comments.
    fn next(&mut self) -> (String, Value) {
        let (mut name, mut data) = (String::new(), String::new());
        loop {
            let mut line = String::new();
            assert!(
                self.0.read_line(&mut line).unwrap() > 0,
                "event stream ended"
            );
            let line = line.trim_end_matches(['\r', '\n']);
            if let Some(v) = line.strip_prefix("event:") {
                name = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            } else if line.is_empty() && !name.is_empty() {
                return (name, serde_json::from_str(&data).unwrap());
            }
        }
    }
}

fn example(server: &Server, name: &str, index: usize) -> Value {
    let schema: Value = serde_json::from_str(
        &fs::read_to_string(server.path(&format!("schemas/{name}.schema.json"))).unwrap(),
    )
    .unwrap();
    schema["examples"][index].clone()
}

#[test]
fn the_index_lists_every_template_with_examples_and_locales() {
    let server = Server::start();
    let page = server.get("/");
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-eval") && !csp.contains("script-src 'self' 'unsafe-inline'"));
    for name in [
        "welcome",
        "account/password-reset",
        "orders/receipt",
        "digest",
        "oops",
    ] {
        assert!(
            page.body.contains(&format!("data-template=\"{name}\"")),
            "{name} missing"
        );
    }
    assert!(page.body.contains("href=\"/?t=welcome&amp;example=2\""));
    assert!(page.body.contains("href=\"/?t=welcome&amp;locale=fr\""));
    assert!(page
        .body
        .contains("href=\"/?t=orders/receipt&amp;example=0\""));
    // The email frame is sandboxed without scripts, and the page injects nothing into it.
    let frame = page
        .body
        .split("<iframe")
        .nth(1)
        .unwrap()
        .split('>')
        .next()
        .unwrap();
    assert!(frame.contains("sandbox=\""), "{frame}");
    assert!(!frame.contains("allow-scripts"), "{frame}");
    assert!(page.body.contains("<script src=\"/assets/preview.js\""));
}

#[test]
fn the_page_assets_are_served() {
    let server = Server::start();
    let js = server.get("/assets/preview.js");
    assert_eq!(js.status, 200);
    assert!(js
        .header("content-type")
        .unwrap()
        .starts_with("text/javascript"));
    assert!(js.body.contains("new EventSource(\"/events\")"));
    let css = server.get("/assets/preview.css");
    assert_eq!(css.status, 200);
    assert!(css.header("content-type").unwrap().starts_with("text/css"));
    assert_eq!(server.get("/assets/nope.js").status, 404);
}

#[test]
fn templates_lists_names_locales_and_example_counts() {
    let server = Server::start();
    let body = server.get("/api/templates").json();
    assert_eq!(body["error"], Value::Null);
    let welcome = body["templates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "welcome")
        .unwrap();
    assert_eq!(welcome["locales"], json!(["fr"]));
    assert_eq!(welcome["examples"], 3);
    let names: Vec<_> = body["templates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].clone())
        .collect();
    assert!(names.contains(&json!("account/password-reset")));
}

#[test]
fn example_returns_the_schema_sample() {
    let server = Server::start();
    let response = server.get("/api/example?template=welcome&example=1");
    assert_eq!(response.status, 200);
    assert_eq!(response.json(), example(&server, "welcome", 1));
    let response = server.get("/api/example?template=orders/receipt&example=0");
    assert_eq!(response.json(), example(&server, "orders/receipt", 0));
    let missing = server.get("/api/example?template=nope");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["ok"], false);
    assert_eq!(
        server
            .get("/api/example?template=welcome&example=99")
            .status,
        404
    );
}

#[test]
fn render_shows_exactly_what_the_library_sends() {
    let server = Server::start();
    let response = server.render(json!({"template": "welcome", "example": 0}));
    assert_eq!(response.status, 200, "{}", response.body);
    let body = response.json();
    assert_eq!(body["ok"], true);
    assert_eq!(body["subject"], "Welcome to Acme Cloud, Ada!");
    assert_eq!(body["to"], json!(["Ada Lovelace <ada@example.com>"]));
    assert_eq!(body["from"], "Missive <missive@localhost>");
    assert_eq!(body["tags"], json!(["welcome", "onboarding"]));
    assert!(body["eml"]
        .as_str()
        .unwrap()
        .contains("Subject: Welcome to Acme Cloud, Ada!"));
    assert_eq!(body["size"]["clipped"], false);
    assert_eq!(body["size"]["html"], body["html"].as_str().unwrap().len());
    assert!(body["size"]["eml"].as_u64().unwrap() > body["size"]["html"].as_u64().unwrap());

    // The same path as sending: the library renders the same message from the same files.
    let (mailer, _) = missive::Mailer::builder()
        .templates(server.path("templates"))
        .schemas(server.path("schemas"))
        .build_in_memory()
        .unwrap();
    let rendered = mailer
        .render("welcome", &example(&server, "welcome", 0))
        .unwrap();
    assert_eq!(body["html"], rendered.html());
    assert_eq!(body["text"], rendered.text().unwrap());

    // Edited data and a locale.
    let mut data = example(&server, "welcome", 0);
    data["user"]["first_name"] = json!("Grace");
    let body = server
        .render(json!({"template": "welcome", "locale": "fr", "data": data}))
        .json();
    assert!(
        body["subject"].as_str().unwrap().starts_with("Bienvenue"),
        "{}",
        body["subject"]
    );
    assert!(body["subject"].as_str().unwrap().contains("Grace"));
    assert_eq!(body["locale"], "fr");
}

#[test]
fn render_lists_schema_violations_with_pointers() {
    let server = Server::start();
    let response =
        server.render(json!({"template": "welcome", "data": {"user": {"email": "nope"}}}));
    assert_eq!(response.status, 422);
    let body = response.json();
    assert_eq!(body["ok"], false);
    assert_eq!(body["stage"], "data");
    let violations = body["problems"][0]["violations"].as_array().unwrap();
    let pointers: Vec<_> = violations
        .iter()
        .map(|v| v["pointer"].as_str().unwrap())
        .collect();
    assert!(pointers.contains(&""), "{pointers:?}");
    assert!(pointers.contains(&"/user"), "{pointers:?}");
    assert!(pointers.contains(&"/user/email"), "{pointers:?}");
}

#[test]
fn render_errors_carry_file_line_and_excerpt() {
    let server = Server::start();
    let response = server.render(json!({"template": "oops"}));
    assert_eq!(response.status, 422);
    let body = response.json();
    assert_eq!(body["stage"], "render");
    let problem = &body["problems"][0];
    assert!(
        problem["message"]
            .as_str()
            .unwrap()
            .contains("missing.value"),
        "{problem}"
    );
    assert!(problem["location"]["file"]
        .as_str()
        .unwrap()
        .ends_with("oops.html"));
    assert_eq!(problem["location"]["line"], 6);
    let hit: Vec<_> = problem["excerpt"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["hit"] == true)
        .collect();
    assert_eq!(hit.len(), 1);
    assert_eq!(hit[0]["text"], "<p>{{ missing.value }}</p>");

    let missing = server.render(json!({"template": "nope"}));
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["stage"], "missing");
}

#[test]
fn a_message_past_gmails_clipping_limit_is_flagged() {
    let server = Server::start();
    let body = server.render(json!({"template": "big"})).json();
    assert_eq!(body["ok"], true);
    assert!(body["size"]["html"].as_u64().unwrap() > 102 * 1024);
    assert_eq!(body["size"]["clipped"], true);
}

#[test]
fn the_frame_serves_the_mail_alone_under_a_locking_csp() {
    let server = Server::start();
    let frame = server.get("/frame?template=welcome&example=1");
    assert_eq!(frame.status, 200);
    let csp = frame.header("content-security-policy").unwrap();
    assert!(csp.starts_with("sandbox"), "{csp}");
    assert!(!csp.contains("allow-scripts"), "{csp}");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(
        frame.body.contains("Welcome aboard, Élodie!"),
        "example 1 is rendered"
    );
    assert!(
        !frame.body.contains("EventSource"),
        "nothing is injected into the mail"
    );
    assert_eq!(server.get("/frame?template=nope").status, 404);
    assert_eq!(server.get("/frame?template=oops").status, 422);
}

#[test]
fn events_report_breakage_and_recovery_and_render_shows_the_load_error() {
    let server = Server::start();
    let mut events = Events(BufReader::new(server.connect("GET", "/events", None)));
    let (name, state) = events.next();
    assert_eq!(name, "state");
    assert_eq!(state["error"], Value::Null);

    let file = server.path("templates/welcome.html");
    let good = fs::read_to_string(&file).unwrap();
    fs::write(
        &file,
        good.replace("{% block content %}", "{% block content %}{% if user %}"),
    )
    .unwrap();
    let (name, data) = events.next();
    assert_eq!(name, "failed", "{data}");
    let problem = &data["error"][0];
    assert!(
        problem["location"]["file"]
            .as_str()
            .unwrap()
            .ends_with("welcome.html"),
        "{problem}"
    );
    assert!(!problem["excerpt"].as_array().unwrap().is_empty());

    // While broken, every render shows the load error instead of a stale mail.
    let response = server.render(json!({"template": "orders/receipt"}));
    assert_eq!(response.status, 422);
    assert_eq!(response.json()["stage"], "load");
    assert!(server.get("/api/templates").json()["error"].is_array());

    fs::write(&file, good.replace("Welcome aboard", "Hello there")).unwrap();
    let (name, data) = events.next();
    assert_eq!(name, "reload", "{data}");
    assert!(data["generation"].as_u64().unwrap() >= 1);
    let body = server.render(json!({"template": "welcome"})).json();
    assert!(body["html"].as_str().unwrap().contains("Hello there, Ada!"));
    assert_eq!(server.get("/api/templates").json()["error"], Value::Null);
}

#[test]
fn a_preview_started_on_broken_templates_shows_why_and_recovers() {
    let server = Server::start_with(|dir| {
        fs::write(
            dir.join("templates/_partials/ui.html"),
            "{% macro button( %}\n",
        )
        .unwrap();
    });
    let mut events = Events(BufReader::new(server.connect("GET", "/events", None)));
    let (_, state) = events.next();
    let problem = &state["error"][0];
    assert!(
        problem["location"]["file"]
            .as_str()
            .unwrap()
            .ends_with("ui.html"),
        "{state}"
    );
    assert_eq!(server.get("/").status, 200);
    let response = server.render(json!({"template": "welcome"}));
    assert_eq!(response.status, 422);
    assert_eq!(response.json()["stage"], "load");

    let good = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/_partials/ui.html"),
    )
    .unwrap();
    fs::write(server.path("templates/_partials/ui.html"), good).unwrap();
    let (name, _) = events.next();
    assert_eq!(name, "reload");
    assert_eq!(server.render(json!({"template": "welcome"})).status, 200);
}

#[test]
fn requests_for_other_host_names_are_refused() {
    let server = Server::start();
    for host in ["rebound.example:80", "rebound.example", "127.0.0.1"] {
        let mut raw = String::new();
        server
            .connect_as(host, "GET", "/api/templates", None)
            .read_to_string(&mut raw)
            .unwrap();
        assert!(
            raw.starts_with("HTTP/1.0 421") || raw.starts_with("HTTP/1.1 421"),
            "{host}: {raw}"
        );
        assert!(!raw.contains("welcome"), "{host} must not read templates");
    }
    let mut raw = String::new();
    server
        .connect_as(
            &format!("localhost:{}", server.port),
            "GET",
            "/api/templates",
            None,
        )
        .read_to_string(&mut raw)
        .unwrap();
    assert!(raw.contains(" 200 "), "{raw}");
}

#[cfg(target_os = "linux")]
#[test]
fn the_server_listens_on_loopback_only() {
    let server = Server::start();
    let table = fs::read_to_string("/proc/net/tcp").unwrap();
    let port = format!(":{:04X}", server.port);
    let listening: Vec<_> = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f[1].ends_with(&port) && f[3] == "0A")
        .map(|f| f[1].to_string())
        .collect();
    assert_eq!(listening, [format!("0100007F{port}")]);
    let table6 = fs::read_to_string("/proc/net/tcp6").unwrap_or_default();
    assert!(!table6
        .lines()
        .any(|l| l.contains(&port) && l.contains(" 0A ")));
}
