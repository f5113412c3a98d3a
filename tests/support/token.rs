//! A fake OAuth2 token endpoint on 127.0.0.1: refresh-token grant with rotation (and
//! revocation of the whole grant when an old refresh token comes back), client
//! credentials, Google's JWT bearer grant; tokens that expire in seconds; scripted
//! 500s, slow answers and `invalid_grant`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

pub const CLIENT_ID: &str = "missive-test-client";
pub const CLIENT_SECRET: &str = "client-secret-c0ffee";

/// A scripted answer to the next token request.
#[derive(Debug, Clone)]
pub enum Fault {
    Status500,
    /// Wait this long before answering normally.
    Slow(Duration),
    InvalidGrant,
}

#[derive(Debug, Clone)]
pub struct Request {
    pub grant_type: String,
    pub form: HashMap<String, String>,
    /// Whether the client authenticated with an HTTP Basic header.
    pub basic_auth: bool,
}

struct Issued {
    expires: Instant,
    family: usize,
}

#[derive(Default)]
struct State {
    ttl: Duration,
    rotate: bool,
    faults: VecDeque<Fault>,
    requests: Vec<Request>,
    access: HashMap<String, Issued>,
    /// refresh token → grant family; `used` ones were rotated away.
    refresh: HashMap<String, usize>,
    used: HashSet<String>,
    revoked_families: HashSet<usize>,
    counter: usize,
    /// Authorization codes the fake "browser" obtained, each usable once.
    codes: HashSet<String>,
    device_polls: usize,
    /// PEM public key that JWT bearer assertions must be signed with.
    jwt_public_key: Option<Vec<u8>>,
    jwt_claims: Vec<serde_json::Value>,
}

#[derive(Clone)]
pub struct FakeTokenEndpoint {
    pub url: String,
    state: Arc<Mutex<State>>,
}

impl FakeTokenEndpoint {
    /// Starts a server issuing access tokens valid for `ttl`.
    pub async fn start(ttl: Duration, rotate: bool) -> FakeTokenEndpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!(
            "http://127.0.0.1:{}/token",
            listener.local_addr().unwrap().port()
        );
        let state = Arc::new(Mutex::new(State {
            ttl,
            rotate,
            ..State::default()
        }));
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let _ = serve(socket, state).await;
                });
            }
        });
        FakeTokenEndpoint { url, state }
    }

    /// A new grant: returns its first refresh token.
    pub fn mint_refresh_token(&self) -> String {
        let mut s = self.state.lock().unwrap();
        s.counter += 1;
        let family = s.counter;
        let token = format!("rt-{family}-0");
        s.refresh.insert(token.clone(), family);
        token
    }

    /// Makes `code` a valid authorization code, once.
    pub fn add_code(&self, code: &str) {
        self.state.lock().unwrap().codes.insert(code.to_string());
    }

    pub fn fault(&self, fault: Fault) {
        self.state.lock().unwrap().faults.push_back(fault);
    }

    pub fn expect_jwt_signed_by(&self, public_pem: &[u8]) {
        self.state.lock().unwrap().jwt_public_key = Some(public_pem.to_vec());
    }

    pub fn jwt_claims(&self) -> Vec<serde_json::Value> {
        self.state.lock().unwrap().jwt_claims.clone()
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Whether `token` is a live access token (issued here, not expired, grant not revoked).
    pub fn is_valid(&self, token: &str) -> bool {
        let s = self.state.lock().unwrap();
        s.access.get(token).is_some_and(|issued| {
            Instant::now() < issued.expires && !s.revoked_families.contains(&issued.family)
        })
    }

    pub fn validator(&self) -> super::smtp::Validator {
        let me = self.clone();
        Arc::new(move |token: &str| me.is_valid(token))
    }

    /// Whether any grant was revoked because an old refresh token was reused.
    pub fn revoked_any(&self) -> bool {
        !self.state.lock().unwrap().revoked_families.is_empty()
    }

    /// Revokes every grant, as a user removing the app's access would.
    pub fn revoke_all(&self) {
        let mut s = self.state.lock().unwrap();
        let families: Vec<usize> = s.refresh.values().copied().collect();
        s.revoked_families.extend(families);
    }
}

async fn serve(socket: tokio::net::TcpStream, state: Arc<Mutex<State>>) -> std::io::Result<()> {
    let mut reader = BufReader::new(socket);
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        if line == "\r\n" {
            break;
        }
        head.push(line.trim_end().to_string());
    }
    let header = |name: &str| {
        head.iter().find_map(|h| {
            let (k, v) = h.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await?;
    let form: HashMap<String, String> = oauth2::url::form_urlencoded::parse(&body)
        .into_owned()
        .collect();
    let basic = header("authorization").and_then(|v| v.strip_prefix("Basic ").map(str::to_string));
    state.lock().unwrap().requests.push(Request {
        grant_type: form.get("grant_type").cloned().unwrap_or_default(),
        form: form.clone(),
        basic_auth: basic.is_some(),
    });
    let path = head
        .first()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("/")
        .to_string();
    let fault = state.lock().unwrap().faults.pop_front();
    let (status, json) = match fault {
        Some(Fault::Status500) => (500, r#"<html>internal error</html>"#.to_string()),
        Some(Fault::InvalidGrant) => (
            400,
            r#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#
                .to_string(),
        ),
        Some(Fault::Slow(delay)) => {
            tokio::time::sleep(delay).await;
            answer(&state, &form, basic.as_deref())
        }
        None if path.ends_with("/device") => (
            200,
            serde_json::json!({
                "device_code": "device-code-1",
                "user_code": "WDJB-MJHT",
                "verification_uri": "https://id.example.test/device",
                "expires_in": 300,
                "interval": 1,
            })
            .to_string(),
        ),
        None => answer(&state, &form, basic.as_deref()),
    };
    let reason = if status == 200 { "OK" } else { "Error" };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{json}",
        json.len()
    );
    reader.get_mut().write_all(response.as_bytes()).await?;
    reader.get_mut().shutdown().await
}

fn error(code: &str, description: &str) -> (u16, String) {
    (
        400,
        serde_json::json!({"error": code, "error_description": description}).to_string(),
    )
}

fn client_ok(form: &HashMap<String, String>, basic: Option<&str>) -> bool {
    let (id, secret) = match basic {
        Some(b64) => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&decoded).into_owned();
            let (id, secret) = text.split_once(':').unwrap_or_default();
            (id.to_string(), secret.to_string())
        }
        None => (
            form.get("client_id").cloned().unwrap_or_default(),
            form.get("client_secret").cloned().unwrap_or_default(),
        ),
    };
    id == CLIENT_ID && secret == CLIENT_SECRET
}

fn answer(
    state: &Mutex<State>,
    form: &HashMap<String, String>,
    basic: Option<&str>,
) -> (u16, String) {
    let mut s = state.lock().unwrap();
    let grant = form
        .get("grant_type")
        .map(String::as_str)
        .unwrap_or_default();
    let family = match grant {
        "refresh_token" => {
            if !client_ok(form, basic) {
                return error("invalid_client", "bad client credentials");
            }
            let presented = form.get("refresh_token").cloned().unwrap_or_default();
            let Some(&family) = s.refresh.get(&presented) else {
                return error("invalid_grant", "unknown refresh token");
            };
            if s.revoked_families.contains(&family) {
                return error("invalid_grant", "grant revoked");
            }
            if s.used.contains(&presented) {
                // Reuse of a rotated refresh token: assume theft, kill the whole grant.
                s.revoked_families.insert(family);
                return error("invalid_grant", "refresh token reused; grant revoked");
            }
            family
        }
        "authorization_code" => {
            let code = form.get("code").cloned().unwrap_or_default();
            if !s.codes.remove(&code) {
                return error("invalid_grant", "unknown authorization code");
            }
            if form.get("code_verifier").is_none_or(|v| v.len() < 43) {
                return error("invalid_request", "PKCE code_verifier missing");
            }
            s.counter += 1;
            let family = s.counter;
            s.refresh.insert(format!("rt-{family}-0"), family);
            family
        }
        "urn:ietf:params:oauth:grant-type:device_code" => {
            s.device_polls += 1;
            if s.device_polls == 1 {
                return error("authorization_pending", "the user has not signed in yet");
            }
            s.counter += 1;
            let family = s.counter;
            s.refresh.insert(format!("rt-{family}-0"), family);
            family
        }
        "client_credentials" => {
            if !client_ok(form, basic) {
                return error("invalid_client", "bad client credentials");
            }
            0
        }
        "urn:ietf:params:oauth:grant-type:jwt-bearer" => {
            let assertion = form.get("assertion").cloned().unwrap_or_default();
            let Some(key) = s.jwt_public_key.clone() else {
                return error("unsupported_grant_type", "no JWT key configured");
            };
            let key = jsonwebtoken::DecodingKey::from_rsa_pem(&key).expect("test public key");
            let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
            validation.validate_aud = false;
            match jsonwebtoken::decode::<serde_json::Value>(&assertion, &key, &validation) {
                Ok(data) => s.jwt_claims.push(data.claims),
                Err(e) => return error("invalid_grant", &format!("bad assertion: {e}")),
            }
            0
        }
        _ => return error("unsupported_grant_type", grant),
    };
    s.counter += 1;
    let n = s.counter;
    let access = format!("at-{n}");
    let ttl = s.ttl;
    s.access.insert(
        access.clone(),
        Issued {
            expires: Instant::now() + ttl,
            family,
        },
    );
    let mut json = serde_json::json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": ttl.as_secs(),
    });
    if grant == "authorization_code" || grant.ends_with("device_code") {
        json["refresh_token"] = format!("rt-{family}-0").into();
    }
    if grant == "refresh_token" && s.rotate {
        let presented = form.get("refresh_token").cloned().unwrap_or_default();
        s.used.insert(presented);
        let rotated = format!("rt-{family}-{n}");
        s.refresh.insert(rotated.clone(), family);
        json["refresh_token"] = rotated.into();
    }
    (200, json.to_string())
}
