//! missive against real servers on loopback (issue 3, point 10): Postfix submission
//! (STARTTLS and implicit TLS, private CA) delegating SASL to Dovecot, which checks
//! bearer tokens by introspection at panva's oidc-provider (short-lived tokens,
//! refresh-token rotation). `tests/interop/up.sh` installs and starts all of it.
//! The `missive` command against the same provider (issue 10, points 8 to 11):
//! signing in at a standard OpenID client, `auth status --check`, a refused grant
//! not asked again, access tokens kept between runs.
//!
//! Needs root (apt-get, Postfix). Where that is impossible, set
//! `MISSIVE_SKIP_INTEROP=1`: the tests then say why and pass; without it they fail
//! with the harness's error. A harness that is already up and answering is reused;
//! `MISSIVE_INTEROP_FRESH=1` restarts it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use missive::{ErrorKind, Mailer};

use crate::support;

type Env = HashMap<String, String>;

fn state_dir() -> PathBuf {
    std::env::var_os("MISSIVE_INTEROP_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/missive-interop"))
}

fn read_env() -> Result<Env, String> {
    let path = state_dir().join("env.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn healthy(env: &Env) -> bool {
    let port = |key: &str| env.get(key).and_then(|p| p.parse::<u16>().ok());
    let issuer_port = env
        .get("INTEROP_OAUTH_ISSUER")
        .and_then(|u| u.rsplit(':').next())
        .and_then(|p| p.parse::<u16>().ok());
    // A harness started by an older up.sh lacks the strict OpenID client.
    env.contains_key("INTEROP_OAUTH_OIDC_CLIENT_ID")
        && [
            issuer_port,
            port("INTEROP_SMTP_SUBMISSION_PORT"),
            port("INTEROP_SMTP_SMTPS_PORT"),
        ]
        .into_iter()
        .all(|p| {
            p.is_some_and(|p| {
                std::net::TcpStream::connect_timeout(
                    &std::net::SocketAddr::from(([127, 0, 0, 1], p)),
                    Duration::from_secs(1),
                )
                .is_ok()
            })
        })
}

fn bring_up() -> Result<Env, String> {
    if std::env::var_os("MISSIVE_INTEROP_FRESH").is_none() {
        if let Ok(env) = read_env() {
            if healthy(&env) {
                return Ok(env);
            }
        }
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/up.sh");
    let output = Command::new("bash")
        .arg(&script)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !output.status.success() {
        return Err(format!(
            "{} failed ({}):\n{}{}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    read_env()
}

/// The running harness, started once per test binary. `None` means skip.
fn harness() -> Option<&'static Env> {
    if std::env::var("MISSIVE_SKIP_INTEROP").as_deref() == Ok("1") {
        eprintln!("skipping interop test: MISSIVE_SKIP_INTEROP=1");
        return None;
    }
    static HARNESS: OnceLock<Result<Env, String>> = OnceLock::new();
    match HARNESS.get_or_init(bring_up) {
        Ok(env) => Some(env),
        Err(e) => panic!(
            "the interop harness (Postfix, Dovecot, oidc-provider) is not available:\n{e}\n\
             Run as root, or set MISSIVE_SKIP_INTEROP=1 to skip these tests."
        ),
    }
}

/// A new grant at the OIDC server for `client_id`: (refresh token, grant id).
async fn mint(env: &Env, client_id: &str) -> (String, String) {
    let body = serde_json::json!({ "user": env["INTEROP_OAUTH_USER"], "client_id": client_id });
    let response = reqwest::Client::new()
        .post(&env["INTEROP_OAUTH_TEST_GRANT_URL"])
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("mint a grant");
    assert!(response.status().is_success(), "{}", response.status());
    let json: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    (
        json["refresh_token"].as_str().unwrap().to_string(),
        json["grant_id"].as_str().unwrap().to_string(),
    )
}

async fn revoke(env: &Env, grant_id: &str) {
    let response = reqwest::Client::new()
        .post(&env["INTEROP_OAUTH_TEST_REVOKE_URL"])
        .header("content-type", "application/json")
        .body(serde_json::json!({ "grant_id": grant_id }).to_string())
        .send()
        .await
        .expect("revoke the grant");
    assert!(response.status().is_success(), "{}", response.status());
}

struct Sender {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Sender {
    /// A config for `mechanism` over `tls` with a fresh grant of `client_id` in its
    /// credentials file. Pooled connections are not reused, so every send
    /// authenticates with the cached token.
    async fn new(env: &Env, mechanism: &str, tls: &str, client_id: &str) -> (Sender, String) {
        let dir = tempfile::tempdir().unwrap();
        let (refresh, grant) = mint(env, client_id).await;
        let credentials = dir.path().join("credentials.json");
        let json = serde_json::json!({
            "version": 1,
            "provider": "generic",
            "client_id": client_id,
            "client_secret": env["INTEROP_OAUTH_CLIENT_SECRET"],
            "refresh_token": refresh,
        });
        std::fs::write(&credentials, json.to_string()).unwrap();
        support::set_mode(&credentials, 0o600);
        let port = match tls {
            "implicit" => &env["INTEROP_SMTP_SMTPS_PORT"],
            _ => &env["INTEROP_SMTP_SUBMISSION_PORT"],
        };
        let yaml = format!(
            "  type: smtp\n  host: {host}\n  port: {port}\n  tls: {tls}\n  tls_name: {name}\n  \
             ca_file: {ca}\n  timeout_secs: 15\n  pool: {{ idle_timeout_secs: 0 }}\n  \
             retry: {{ attempts: 3, initial_backoff_ms: 200, max_backoff_ms: 1000 }}\n  auth:\n    \
             mechanism: {mechanism}\n    user: {user}\n    oauth:\n      provider: generic\n      \
             token_url: {token_url}\n      credentials_file: {credentials}\n",
            host = env["INTEROP_SMTP_HOST"],
            name = env["INTEROP_SMTP_TLS_NAME"],
            ca = env["INTEROP_SMTP_CA_FILE"],
            user = env["INTEROP_OAUTH_USER"],
            token_url = env["INTEROP_OAUTH_TOKEN_URL"],
            credentials = credentials.display(),
        );
        let config = support::config_file(dir.path(), &yaml);
        (Sender { dir, config }, grant)
    }

    async fn mailer(&self) -> Mailer {
        Mailer::from_config(&self.config)
            .await
            .expect("mailer builds")
    }

    fn refresh_token(&self) -> String {
        support::stored_refresh_token(&self.dir.path().join("credentials.json"))
    }
}

const RCPT: &str = "bob@missive.test";

async fn send(mailer: &Mailer) -> missive::Result<missive::Receipt> {
    let data = mailer.example("welcome", 0)?;
    mailer.template("welcome").to(RCPT).data(&data).send().await
}

/// The delivered copy of `message_id` in the harness's Maildir.
async fn delivered(env: &Env, message_id: &str) -> String {
    let new = Path::new(&env["INTEROP_MAILDIR"]).join("new");
    for _ in 0..150 {
        if let Ok(entries) = std::fs::read_dir(&new) {
            for entry in entries.flatten() {
                if let Ok(text) = std::fs::read_to_string(entry.path()) {
                    if text.contains(message_id) {
                        return text.replace("\r\n", "\n");
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{message_id} never reached {}", new.display());
}

/// The decoded bodies of a multipart message, by content type.
fn parts(message: &str) -> HashMap<String, String> {
    let boundary = message
        .split("boundary=")
        .nth(1)
        .map(|rest| rest.trim_start_matches('"'))
        .and_then(|rest| rest.split(['"', '\n', ';']).next())
        .expect("a multipart message");
    let mut out = HashMap::new();
    for part in message.split(&format!("--{boundary}")).skip(1) {
        let Some((head, body)) = part.split_once("\n\n") else {
            continue;
        };
        let head_lower = head.to_ascii_lowercase();
        let Some(kind) = head_lower
            .split("content-type:")
            .nth(1)
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_string())
        else {
            continue;
        };
        let body = if head_lower.contains("quoted-printable") {
            decode_qp(body)
        } else if head_lower.contains("base64") {
            use base64::Engine as _;
            let compact: String = body.split_whitespace().collect();
            String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(compact)
                    .unwrap(),
            )
            .unwrap()
        } else {
            body.to_string()
        };
        out.insert(kind, body);
    }
    out
}

fn decode_qp(text: &str) -> String {
    let joined = text.replace("=\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&joined[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xoauth2_and_oauthbearer_mail_lands_intact_in_the_maildir() {
    let Some(env) = harness() else { return };
    for (mechanism, tls) in [("xoauth2", "starttls"), ("oauthbearer", "implicit")] {
        let (sender, _grant) =
            Sender::new(env, mechanism, tls, &env["INTEROP_OAUTH_CLIENT_ID"]).await;
        let mailer = sender.mailer().await;
        let receipt = send(&mailer)
            .await
            .unwrap_or_else(|e| panic!("{mechanism} over {tls}: {e}"));
        assert_eq!(receipt.accepted, [RCPT]);
        assert_eq!(receipt.attempts, 1);
        let copy = delivered(env, &receipt.message_id).await;
        let rendered = mailer
            .render("welcome", &mailer.example("welcome", 0).unwrap())
            .unwrap();
        assert!(
            copy.contains(&format!("Subject: {}", rendered.subject())),
            "{mechanism}: subject"
        );
        let parts = parts(&copy);
        let html = &parts["text/html"];
        let text = &parts["text/plain"];
        assert_eq!(
            html.trim_end(),
            rendered.html().replace("\r\n", "\n").trim_end()
        );
        assert_eq!(
            text.trim_end(),
            rendered.text().unwrap().replace("\r\n", "\n").trim_end()
        );
        assert!(html.contains("style=\""), "{mechanism}: CSS was inlined");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailer_keeps_sending_across_several_token_lifetimes() {
    let Some(env) = harness() else { return };
    let ttl: u64 = env["INTEROP_OAUTH_SHORT_ACCESS_TOKEN_TTL"].parse().unwrap();
    let (sender, _grant) = Sender::new(
        env,
        "xoauth2",
        "starttls",
        &env["INTEROP_OAUTH_SHORT_CLIENT_ID"],
    )
    .await;
    let mailer = sender.mailer().await;
    let mut refresh_tokens = vec![sender.refresh_token()];
    // Three and a half token lifetimes, one message a second.
    for _ in 0..(ttl * 7 / 2) {
        let receipt = send(&mailer).await.expect("every send succeeds");
        assert_eq!(receipt.attempts, 1);
        let current = sender.refresh_token();
        if refresh_tokens.last() != Some(&current) {
            refresh_tokens.push(current);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Each renewal rotated the refresh token, and each was saved.
    assert!(
        refresh_tokens.len() >= 4,
        "expected at least 3 renewals, saw {}",
        refresh_tokens.len() - 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_survives_a_restart() {
    let Some(env) = harness() else { return };
    let (sender, _grant) =
        Sender::new(env, "xoauth2", "starttls", &env["INTEROP_OAUTH_CLIENT_ID"]).await;
    let first = sender.refresh_token();
    send(&sender.mailer().await).await.unwrap();
    let second = sender.refresh_token();
    assert_ne!(
        first, second,
        "the provider rotated the refresh token and it was saved"
    );
    // A new mailer (as after a restart, once the access token the file keeps has
    // expired) starts from the file: had it kept the old, consumed refresh token,
    // the provider would have revoked the whole grant.
    support::expire_stored_access_token(&sender.dir.path().join("credentials.json"));
    let receipt = send(&sender.mailer().await).await.unwrap();
    assert_eq!(receipt.attempts, 1);
    assert_ne!(sender.refresh_token(), second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_grant_ends_in_the_reauth_error() {
    let Some(env) = harness() else { return };
    let (sender, grant) =
        Sender::new(env, "xoauth2", "starttls", &env["INTEROP_OAUTH_CLIENT_ID"]).await;
    let mailer = sender.mailer().await;
    send(&mailer).await.unwrap();
    revoke(env, &grant).await;
    // The cached access token died with the grant: the server refuses it, the
    // renewal meets invalid_grant, and that is the end.
    let err = send(&mailer).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    assert!(err.message().contains("invalid_grant"), "{err}");
    assert!(err.message().contains("missive auth"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_certificate_is_verified() {
    let Some(env) = harness() else { return };
    let (sender, _grant) =
        Sender::new(env, "xoauth2", "starttls", &env["INTEROP_OAUTH_CLIENT_ID"]).await;
    let original = std::fs::read_to_string(&sender.config).unwrap();
    let ca_line = format!("  ca_file: {}\n", env["INTEROP_SMTP_CA_FILE"]);
    let name_line = format!("  tls_name: {}\n", env["INTEROP_SMTP_TLS_NAME"]);
    for (what, config) in [
        (
            "no trust anchor for the private CA",
            original.replace(&ca_line, ""),
        ),
        (
            "a name the certificate does not carry",
            original.replace(&name_line, "  tls_name: wrong.example\n"),
        ),
    ] {
        std::fs::write(&sender.config, config).unwrap();
        let err = send(&sender.mailer().await).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{what}: {err}");
        assert!(err.message().contains("TLS"), "{what}: {err}");
        assert!(
            err.to_string().contains("after 1 attempt"),
            "{what}: not retried: {err}"
        );
    }
}

/// A mailer with no TLS and the given auth toward a loopback port of the harness.
async fn plain_mailer(port: &str, auth: &str) -> (Mailer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "  type: smtp\n  host: 127.0.0.1\n  port: {port}\n  tls: none\n  timeout_secs: 15\n  \
         retry: {{ attempts: 3, initial_backoff_ms: 50, max_backoff_ms: 100 }}\n{auth}"
    );
    let mailer = Mailer::from_config(support::config_file(dir.path(), &yaml))
        .await
        .expect("mailer builds");
    (mailer, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_password_auth_from_the_environment_delivers() {
    let Some(env) = harness() else { return };
    std::env::set_var("MISSIVE_INTEROP_PASSWORD", &env["INTEROP_SMTP_PASSWORD"]);
    let auth = format!(
        "  auth: {{ mechanism: plain, user: {}, password_env: MISSIVE_INTEROP_PASSWORD }}\n",
        env["INTEROP_SMTP_USER"]
    );
    let (mailer, _dir) = plain_mailer(&env["INTEROP_SMTP_PLAIN_PORT"], &auth).await;
    let receipt = send(&mailer).await.unwrap();
    delivered(env, &receipt.message_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_4xx_is_retried_and_real_5xx_is_not() {
    let Some(env) = harness() else { return };
    let (mailer, _dir) = plain_mailer(&env["INTEROP_SINK_TEMPFAIL_PORT"], "").await;
    let err = send(&mailer).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert_eq!(err.smtp_code(), Some(450));
    assert!(err.to_string().contains("after 3 attempts"), "{err}");

    let (mailer, _dir) = plain_mailer(&env["INTEROP_SINK_PERMFAIL_PORT"], "").await;
    let err = send(&mailer).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert_eq!(err.smtp_code(), Some(500));
    assert!(err.to_string().contains("after 1 attempt"), "{err}");

    let (mailer, _dir) = plain_mailer(&env["INTEROP_SINK_PORT"], "").await;
    let receipt = send(&mailer).await.unwrap();
    assert_eq!(receipt.attempts, 1);
}

/// How many copies of `message_id` are in the harness's Maildir, once at least one is.
async fn copies_delivered(env: &Env, message_id: &str) -> usize {
    delivered(env, message_id).await;
    let new = Path::new(&env["INTEROP_MAILDIR"]).join("new");
    std::fs::read_dir(&new)
        .unwrap()
        .flatten()
        .filter(|entry| {
            std::fs::read_to_string(entry.path()).is_ok_and(|text| text.contains(message_id))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_one_pooled_connection_arrives_once_each() {
    let Some(env) = harness() else { return };
    std::env::set_var("MISSIVE_INTEROP_PASSWORD", &env["INTEROP_SMTP_PASSWORD"]);
    let auth = format!(
        "  pool: {{ max_connections: 1 }}\n  \
         auth: {{ mechanism: plain, user: {}, password_env: MISSIVE_INTEROP_PASSWORD }}\n",
        env["INTEROP_SMTP_USER"]
    );
    let (mailer, _dir) = plain_mailer(&env["INTEROP_SMTP_PLAIN_PORT"], &auth).await;
    // Postfix takes the next MAIL, RCPT and DATA behind a final dot (RFC 2920), which
    // a burst on one connection sends; each message must still arrive exactly once.
    let sends: Vec<_> = (0..30)
        .map(|_| {
            let mailer = mailer.clone();
            tokio::spawn(async move { send(&mailer).await })
        })
        .collect();
    let mut ids = Vec::new();
    for send in sends {
        let receipt = send.await.unwrap().unwrap();
        assert_eq!(receipt.attempts, 1, "{receipt:?}");
        assert_eq!(receipt.accepted, [RCPT]);
        ids.push(receipt.message_id);
    }
    for id in &ids {
        assert_eq!(copies_delivered(env, id).await, 1, "{id}");
    }
}

// ---- the `missive` command against the provider (issue 10, points 8 to 11) ----

/// The secret of the provider's missive clients, for configs that name a variable.
const SECRET_VAR: &str = "MISSIVE_INTEROP_CLIENT_SECRET";

fn missive(env: &Env) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_missive"));
    command
        .env_remove("RUST_LOG")
        .env_remove("MISSIVE_CONFIG")
        .env(SECRET_VAR, &env["INTEROP_OAUTH_CLIENT_SECRET"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    command
}

/// A config sending over STARTTLS with XOAUTH2 as the harness's user, its token
/// endpoint at `token_url`, its credentials file in `dir`, `oauth_extra` added.
fn cli_config(env: &Env, dir: &Path, token_url: &str, oauth_extra: &str) -> PathBuf {
    let yaml = format!(
        "  type: smtp\n  host: {host}\n  port: {port}\n  tls: starttls\n  tls_name: {name}\n  \
         ca_file: {ca}\n  timeout_secs: 15\n  pool: {{ idle_timeout_secs: 0 }}\n  auth:\n    \
         mechanism: xoauth2\n    user: {user}\n    \
         oauth:\n      provider: generic\n      token_url: {token_url}\n      \
         credentials_file: {credentials}\n{oauth_extra}",
        host = env["INTEROP_SMTP_HOST"],
        port = env["INTEROP_SMTP_SUBMISSION_PORT"],
        name = env["INTEROP_SMTP_TLS_NAME"],
        ca = env["INTEROP_SMTP_CA_FILE"],
        user = env["INTEROP_OAUTH_USER"],
        credentials = dir.join("credentials.json").display(),
    );
    support::config_file(dir, &yaml)
}

/// A 0600 credentials file in `dir` with a fresh grant of `client_id`; its grant id.
async fn minted_credentials(env: &Env, dir: &Path, client_id: &str) -> String {
    let (refresh, grant) = mint(env, client_id).await;
    let path = dir.join("credentials.json");
    let json = serde_json::json!({
        "version": 1,
        "provider": "generic",
        "client_id": client_id,
        "client_secret": env["INTEROP_OAUTH_CLIENT_SECRET"],
        "refresh_token": refresh,
    });
    std::fs::write(&path, json.to_string()).unwrap();
    support::set_mode(&path, 0o600);
    grant
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn run(command: &mut tokio::process::Command) -> Run {
    let output = command.output().await.expect("run missive");
    Run {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

async fn cli_send(env: &Env, config: &Path) -> Run {
    run(missive(env)
        .arg("--config")
        .arg(config)
        .args(["send", "welcome", "--to", RCPT]))
    .await
}

/// Plays the browser from the sign-in URL until the provider redirects to
/// `redirect_uri`: the login and consent steps of the harness's provider need no
/// user, only its cookies. Returns the URL it redirected to.
async fn sign_in_headless(start: &str, redirect_uri: &str) -> String {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut cookies: HashMap<String, String> = HashMap::new();
    let mut url = start.to_string();
    for _ in 0..10 {
        let cookie = cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let response = client
            .get(&url)
            .header("cookie", cookie)
            .send()
            .await
            .expect("the provider answers");
        for value in response.headers().get_all("set-cookie") {
            let pair = value.to_str().unwrap().split(';').next().unwrap();
            if let Some((name, value)) = pair.split_once('=') {
                cookies.insert(name.to_string(), value.to_string());
            }
        }
        let status = response.status();
        let Some(location) = response.headers().get("location").cloned() else {
            panic!(
                "the provider did not redirect ({status}): {}",
                response.text().await.unwrap_or_default()
            );
        };
        let next = oauth2::url::Url::parse(&url)
            .unwrap()
            .join(location.to_str().unwrap())
            .unwrap()
            .to_string();
        if next.starts_with(redirect_uri) {
            return next;
        }
        url = next;
    }
    panic!("no redirect to {redirect_uri} after 10 steps");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missive_auth_generic_signs_in_at_a_standard_openid_provider() {
    let Some(env) = harness() else { return };
    let dir = tempfile::tempdir().unwrap();
    let redirect_uri = &env["INTEROP_OAUTH_OIDC_REDIRECT_URI"];
    let oauth = format!(
        "      auth_url: {}\n      client_id: {}\n      client_secret_env: {SECRET_VAR}\n      \
         scopes: [openid, offline_access, smtp]\n      redirect_uri: {redirect_uri}\n",
        env["INTEROP_OAUTH_AUTHORIZATION_URL"], env["INTEROP_OAUTH_OIDC_CLIENT_ID"]
    );
    let config = cli_config(env, dir.path(), &env["INTEROP_OAUTH_TOKEN_URL"], &oauth);
    let mut child = missive(env)
        .arg("--config")
        .arg(&config)
        .args(["auth", "generic"])
        .spawn()
        .unwrap();
    // The command prints the URL to open; the "browser" follows it.
    let start = {
        use tokio::io::AsyncBufReadExt;
        let stderr = child.stderr.as_mut().unwrap();
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        loop {
            let line = lines.next_line().await.unwrap().expect("a URL is printed");
            if let Some(at) = line.find("http://") {
                break line[at..].trim().to_string();
            }
        }
    };
    let query: HashMap<String, String> = oauth2::url::Url::parse(&start)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    assert_eq!(&query["redirect_uri"], redirect_uri);
    assert_eq!(
        query["prompt"], "consent",
        "OpenID drops offline_access without it"
    );
    let back = sign_in_headless(&start, redirect_uri).await;
    reqwest::get(&back)
        .await
        .expect("missive takes the redirect");
    let output = child.wait_with_output().await.unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let credentials = dir.path().join("credentials.json");
    let refresh = support::stored_refresh_token(&credentials);
    assert!(!refresh.is_empty(), "a refresh token was issued and stored");

    // The refresh token works: --check renews with it rather than taking the
    // access token the sign-in stored, and a send delivers.
    let check = run(missive(env)
        .arg("--config")
        .arg(&config)
        .args(["auth", "status", "--check"]))
    .await;
    assert!(check.ok, "{}{}", check.stdout, check.stderr);
    assert!(
        check.stdout.contains("issued an access token"),
        "{}",
        check.stdout
    );
    assert_ne!(
        support::stored_refresh_token(&credentials),
        refresh,
        "the provider rotated the refresh token at the check, and it was saved"
    );
    let sent = cli_send(env, &config).await;
    assert!(sent.ok, "{}", sent.stderr);
    assert!(sent.stdout.starts_with("sent welcome"), "{}", sent.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_status_names_an_unset_variable_and_check_tells_a_revoked_grant() {
    let Some(env) = harness() else { return };
    let dir = tempfile::tempdir().unwrap();
    let grant = minted_credentials(env, dir.path(), &env["INTEROP_OAUTH_CLIENT_ID"]).await;
    let token_url = &env["INTEROP_OAUTH_TOKEN_URL"];
    let status = |config: &Path, check: bool| {
        let mut command = missive(env);
        command.arg("--config").arg(config).args(["auth", "status"]);
        if check {
            command.arg("--check");
        }
        command
    };

    let unset = cli_config(
        env,
        dir.path(),
        token_url,
        "      client_secret_env: MISSIVE_INTEROP_UNSET_SECRET\n",
    );
    let out = run(status(&unset, false).env_remove("MISSIVE_INTEROP_UNSET_SECRET")).await;
    assert!(!out.ok, "{}", out.stdout);
    assert!(
        out.stdout
            .contains("MISSIVE_INTEROP_UNSET_SECRET (the client secret) is not set"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("ready:      yes"), "{}", out.stdout);

    let config = cli_config(env, dir.path(), token_url, "");
    let out = run(&mut status(&config, true)).await;
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("issued an access token, valid"),
        "{}",
        out.stdout
    );

    revoke(env, &grant).await;
    let out = run(&mut status(&config, false)).await;
    assert!(
        out.stdout.contains("not checked with the provider"),
        "without asking, status does not claim more: {}",
        out.stdout
    );
    let out = run(&mut status(&config, true)).await;
    assert!(!out.ok, "{}", out.stdout);
    assert!(out.stdout.contains("invalid_grant"), "{}", out.stdout);
    assert!(out.stdout.contains("ready:      no"), "{}", out.stdout);
    assert!(
        !out.stdout.contains(&env["INTEROP_OAUTH_CLIENT_SECRET"]),
        "{}",
        out.stdout
    );
}

/// A TCP relay to the provider that counts the token requests going through it.
async fn counting_relay(env: &Env) -> (String, Arc<AtomicUsize>) {
    let upstream = oauth2::url::Url::parse(&env["INTEROP_OAUTH_TOKEN_URL"]).unwrap();
    let target = format!("127.0.0.1:{}", upstream.port().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://127.0.0.1:{}{}",
        listener.local_addr().unwrap().port(),
        upstream.path()
    );
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let target = target.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                    return;
                };
                let (mut from_server, mut to_server) = server.into_split();
                let (mut from_client, mut to_client) = client.split();
                let up = async {
                    let mut buf = vec![0u8; 16384];
                    loop {
                        let n = match from_client.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        counter.fetch_add(
                            memchr::memmem::find_iter(&buf[..n], b"POST /token ").count(),
                            Ordering::SeqCst,
                        );
                        if to_server.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = to_server.shutdown().await;
                };
                let down = tokio::io::copy(&mut from_server, &mut to_client);
                let _ = tokio::join!(up, down);
            });
        }
    });
    (url, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_grant_is_not_asked_again_until_the_credentials_file_changes() {
    let Some(env) = harness() else { return };
    let dir = tempfile::tempdir().unwrap();
    let grant = minted_credentials(env, dir.path(), &env["INTEROP_OAUTH_CLIENT_ID"]).await;
    let (relay, requests) = counting_relay(env).await;
    let config = cli_config(env, dir.path(), &relay, "");
    let mailer = Mailer::from_config(&config).await.unwrap();
    send(&mailer).await.unwrap();
    assert_eq!(requests.load(Ordering::SeqCst), 1);
    revoke(env, &grant).await;
    // The server refuses the cached token (it died with the grant), the renewal meets
    // invalid_grant; the sends after that get the same answer without a request.
    for _ in 0..3 {
        let err = send(&mailer).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
        assert!(err.message().contains("invalid_grant"), "{err}");
    }
    assert_eq!(requests.load(Ordering::SeqCst), 2);
    // `missive auth` (here: a new grant) rewrote the file: the same mailer goes on.
    minted_credentials(env, dir.path(), &env["INTEROP_OAUTH_CLIENT_ID"]).await;
    send(&mailer).await.unwrap();
    assert_eq!(requests.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_style_sends_reuse_the_access_token_instead_of_rotating_each_run() {
    let Some(env) = harness() else { return };
    let dir = tempfile::tempdir().unwrap();
    minted_credentials(env, dir.path(), &env["INTEROP_OAUTH_CLIENT_ID"]).await;
    let (relay, requests) = counting_relay(env).await;
    let config = cli_config(env, dir.path(), &relay, "");
    let credentials = dir.path().join("credentials.json");
    let first = support::stored_refresh_token(&credentials);
    let mut rotated = None;
    for run_number in 1..=3 {
        let sent = cli_send(env, &config).await;
        assert!(sent.ok, "run {run_number}: {}", sent.stderr);
        let now = support::stored_refresh_token(&credentials);
        assert_ne!(now, first, "the first run rotated the refresh token");
        assert_eq!(rotated.get_or_insert(now.clone()), &now, "run {run_number}");
    }
    assert_eq!(
        requests.load(Ordering::SeqCst),
        1,
        "three runs, one renewal: the access token was kept in the file"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&credentials)
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }
    // Once it has expired, the next run renews (and rotates) once.
    support::expire_stored_access_token(&credentials);
    let sent = cli_send(env, &config).await;
    assert!(sent.ok, "{}", sent.stderr);
    assert_eq!(requests.load(Ordering::SeqCst), 2);
    assert_ne!(Some(support::stored_refresh_token(&credentials)), rotated);
}
