//! The `missive` command with OAuth2: `auth` sign-in with PKCE and a loopback
//! redirect, `auth status`, and logs that never show a secret even at TRACE.

use crate::support;

use std::process::Stdio;
use std::time::Duration;

use support::smtp::{FakeSmtp, Options};
use support::token::{FakeTokenEndpoint, CLIENT_ID, CLIENT_SECRET};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn missive() -> Command {
    // `$MISSIVE_BIN` (relative to the crate) runs these against another build, e.g. release.
    let bin = std::env::var_os("MISSIVE_BIN").map_or_else(
        || env!("CARGO_BIN_EXE_missive").into(),
        |bin| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(bin),
    );
    let mut command = Command::new(bin);
    command
        .env_remove("RUST_LOG")
        .env_remove("MISSIVE_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// `missive auth generic` with the fake client secret, waiting for the browser step.
fn spawn_auth(config: &std::path::Path) -> tokio::process::Child {
    missive()
        .arg("--config")
        .arg(config)
        .args(["auth", "generic"])
        .env("MISSIVE_TEST_SECRET", CLIENT_SECRET)
        .spawn()
        .unwrap()
}

fn config(dir: &std::path::Path, smtp_port: u16, token_url: &str) -> std::path::PathBuf {
    let yaml = format!(
        "  type: smtp\n  host: 127.0.0.1\n  port: {smtp_port}\n  tls: none\n  auth:\n    \
         mechanism: xoauth2\n    user: sender@acme.test\n    oauth:\n      provider: generic\n      \
         token_url: {token_url}\n      auth_url: {}\n      client_id: {CLIENT_ID}\n      \
         client_secret_env: MISSIVE_TEST_SECRET\n      scopes: [smtp, offline_access]\n      \
         credentials_file: {}\n",
        token_url.replace("/token", "/authorize"),
        dir.join("credentials.json").display()
    );
    support::config_file(dir, &yaml)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_of_a_send_hold_no_secret() {
    let tokens = FakeTokenEndpoint::start(Duration::from_secs(3600), true).await;
    let smtp = FakeSmtp::start(Options {
        validator: Some(tokens.validator()),
        ..Options::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), smtp.port, &tokens.url);
    let refresh = tokens.mint_refresh_token();
    support::credentials_file(dir.path(), &refresh);
    let output = missive()
        .args(["--config"])
        .arg(&config)
        .args(["send", "welcome", "--to", "ada@example.test"])
        .env("RUST_LOG", "trace")
        .env("MISSIVE_TEST_SECRET", CLIENT_SECRET)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(smtp.received().len(), 1);
    let access = &smtp.auths()[0].secret;
    let rotated = support::stored_refresh_token(&dir.path().join("credentials.json"));
    assert!(
        stderr.contains("token_renewal"),
        "trace output is on: {stderr}"
    );
    for secret in [
        access.as_str(),
        &refresh,
        &rotated,
        CLIENT_SECRET,
        "XOAUTH2 ",
    ] {
        assert!(!stderr.contains(secret), "`{secret}` leaked:\n{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_signs_in_with_pkce_on_a_loopback_redirect_and_status_tells_no_secret() {
    let tokens = FakeTokenEndpoint::start(Duration::from_secs(3600), false).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), 25, &tokens.url);
    let mut child = spawn_auth(&config);
    let url = authorize_url(&mut child).await;
    let query = |name: &str| {
        url.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    assert_eq!(query("code_challenge_method"), "S256");
    assert_eq!(query("scope"), "smtp offline_access");
    assert_eq!(
        query("prompt"),
        "consent",
        "offline_access asks for consent"
    );
    assert_eq!(query("client_id"), CLIENT_ID);
    let redirect = query("redirect_uri");
    assert!(redirect.starts_with("http://127.0.0.1:"), "{redirect}");
    // Play the browser: the provider redirects back with a code and the state.
    tokens.add_code("code-123");
    let back = format!("{redirect}?code=code-123&state={}", query("state"));
    http_get(&back).await;
    let output = child.wait_with_output().await.unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let requests = tokens.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].grant_type, "authorization_code");
    let path = dir.path().join("credentials.json");
    assert!(support::stored_refresh_token(&path).starts_with("rt-"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    // The config names the client secret's variable: unset, the credential is not ready.
    let status = missive()
        .arg("--config")
        .arg(&config)
        .args(["auth", "status"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(!status.status.success(), "{stdout}");
    assert!(
        stdout.contains("MISSIVE_TEST_SECRET (the client secret) is not set"),
        "{stdout}"
    );
    let status = missive()
        .arg("--config")
        .arg(&config)
        .args(["auth", "status"])
        .env("MISSIVE_TEST_SECRET", CLIENT_SECRET)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{stdout}");
    assert!(stdout.contains("credentials.json"), "{stdout}");
    assert!(stdout.contains("access token: expires"), "{stdout}");
    assert!(
        !stdout.contains("rt-") && !stdout.contains(CLIENT_SECRET),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_with_the_wrong_state_is_refused() {
    let tokens = FakeTokenEndpoint::start(Duration::from_secs(3600), false).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), 25, &tokens.url);
    let mut child = spawn_auth(&config);
    let url = authorize_url(&mut child).await;
    let redirect = url
        .query_pairs()
        .find(|(k, _)| k == "redirect_uri")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    tokens.add_code("code-123");
    http_get(&format!("{redirect}?code=code-123&state=forged")).await;
    let output = child.wait_with_output().await.unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("state"));
    assert!(tokens.requests().is_empty(), "the code was not exchanged");
    assert!(!dir.path().join("credentials.json").exists());
}

/// Reads the sign-in URL the command prints on stderr.
async fn authorize_url(child: &mut tokio::process::Child) -> oauth2::url::Url {
    let stderr = child.stderr.as_mut().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    while let Some(line) = lines.next_line().await.unwrap() {
        if let Some(start) = line.find("http://") {
            return oauth2::url::Url::parse(line[start..].trim()).unwrap();
        }
    }
    panic!("no URL printed");
}

async fn http_get(url: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let parsed = oauth2::url::Url::parse(url).unwrap();
    let mut socket =
        tokio::net::TcpStream::connect((parsed.host_str().unwrap(), parsed.port().unwrap()))
            .await
            .unwrap();
    let target = format!("{}?{}", parsed.path(), parsed.query().unwrap_or_default());
    socket
        .write_all(format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = Vec::new();
    let _ = socket.read_to_end(&mut response).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_device_flow_shows_the_code_and_stores_the_token() {
    let tokens = FakeTokenEndpoint::start(Duration::from_secs(3600), false).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), 25, &tokens.url);
    let output = missive()
        .arg("--config")
        .arg(&config)
        .args(["auth", "generic", "--device", "--device-url"])
        .arg(tokens.url.replace("/token", "/device"))
        .env("MISSIVE_TEST_SECRET", CLIENT_SECRET)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("https://id.example.test/device"),
        "{stderr}"
    );
    assert!(stderr.contains("WDJB-MJHT"), "{stderr}");
    let grants: Vec<String> = tokens
        .requests()
        .into_iter()
        .map(|r| r.grant_type)
        .collect();
    assert_eq!(
        grants.iter().filter(|g| g.ends_with("device_code")).count(),
        2,
        "polled until the user signed in: {grants:?}"
    );
    let path = dir.path().join("credentials.json");
    assert!(support::stored_refresh_token(&path).starts_with("rt-"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_device_flow_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let output = missive()
        .current_dir(dir.path())
        .args([
            "auth",
            "google",
            "--device",
            "--client-id",
            "x.apps.googleusercontent.com",
        ])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("device flow does not allow the Gmail scope"),
        "{stderr}"
    );
}

/// A config whose grant the provider has revoked, so that every send fails.
async fn revoked_setup() -> (
    FakeTokenEndpoint,
    FakeSmtp,
    tempfile::TempDir,
    std::path::PathBuf,
) {
    let tokens = FakeTokenEndpoint::start(Duration::from_secs(3600), false).await;
    let smtp = FakeSmtp::start(Options {
        validator: Some(tokens.validator()),
        ..Options::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), smtp.port, &tokens.url);
    support::credentials_file(dir.path(), &tokens.mint_refresh_token());
    tokens.revoke_all();
    (tokens, smtp, dir, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_send_is_one_plain_line_and_the_details_come_with_v() {
    let (_tokens, smtp, _dir, config) = revoked_setup().await;
    let run = |verbose: bool| {
        let mut command = missive();
        command.arg("--config").arg(&config);
        if verbose {
            command.arg("-v");
        }
        command
            .args(["send", "welcome", "--to", "ada@example.test"])
            .env("MISSIVE_TEST_SECRET", CLIENT_SECRET)
            .output()
    };
    let output = run(false).await.unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line per failure:\n{stderr}");
    assert!(lines[0].starts_with("missive: "), "{stderr}");
    assert!(lines[0].contains("invalid_grant"), "{stderr}");
    assert!(lines[0].contains("missive auth generic"), "{stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "no colour codes into a pipe: {stderr:?}"
    );

    let output = run(true).await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.lines().count() > 1 && stderr.contains("token_renewal"),
        "-v shows the details: {stderr}"
    );
    assert!(
        !stderr.contains('\x1b'),
        "no colour codes into a pipe: {stderr:?}"
    );
    assert_eq!(smtp.connections(), 0);
}

/// Runs `missive ARGS` on a pseudo-terminal (util-linux `script`), returning what
/// the terminal showed.
async fn on_a_terminal(args: Vec<String>, env: Vec<(&'static str, &'static str)>) -> String {
    let mut command_line = String::from(env!("CARGO_BIN_EXE_missive"));
    for arg in &args {
        command_line.push_str(&format!(" '{arg}'"));
    }
    let mut script = Command::new("script");
    script
        .args(["-qec", &command_line, "/dev/null"])
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    for (key, value) in env {
        script.env(key, value);
    }
    let output = script.output().await.unwrap_or_else(|e| {
        panic!("cannot run `script` (util-linux): {e}; install it with `apt-get install bsdutils`")
    });
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colour_on_a_terminal_unless_no_color() {
    let (_tokens, _smtp, _dir, config) = revoked_setup().await;
    let args: Vec<String> = [
        "--config",
        &config.display().to_string(),
        "-v",
        "send",
        "welcome",
    ]
    .map(String::from)
    .to_vec();
    let coloured = on_a_terminal(args.clone(), vec![("MISSIVE_TEST_SECRET", CLIENT_SECRET)]).await;
    assert!(coloured.contains("token_renewal"), "{coloured}");
    assert!(
        coloured.contains("\x1b["),
        "a terminal gets colour: {coloured:?}"
    );
    let plain = on_a_terminal(
        args,
        vec![("MISSIVE_TEST_SECRET", CLIENT_SECRET), ("NO_COLOR", "1")],
    )
    .await;
    assert!(plain.contains("token_renewal"), "{plain}");
    assert!(!plain.contains('\x1b'), "NO_COLOR is honoured: {plain:?}");
}
