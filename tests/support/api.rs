//! Fake Gmail API and Microsoft Graph on 127.0.0.1 over TLS with the private test CA
//! (tests/support/keys). They check what the real APIs check (method, path, bearer
//! token, content type, body encoding), keep connections alive, record the MIME they
//! decoded, and answer with the providers' documented success and error bodies, or
//! with a scripted fault.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use super::smtp::{test_tls_acceptor, Validator};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Gmail,
    Graph,
}

/// A scripted answer to the next request (or, for `DropBeforeTls`, connection).
#[derive(Debug, Clone)]
pub enum Fault {
    /// 401 whatever the token: an expired or revoked token as the API sees it.
    Unauthorized,
    /// 403: the token lacks the sending scope (Graph: `ErrorAccessDenied`).
    InsufficientScope,
    /// 403 that is not about scopes (Gmail `rateLimitExceeded` when `rate`).
    Forbidden { rate: bool },
    /// 429 with `Retry-After: secs`.
    TooManyRequests(u64),
    /// 503 with `Retry-After: secs`.
    Unavailable(u64),
    /// 500.
    ServerError,
    /// 504: a gateway gave up waiting for the service behind it.
    GatewayTimeout,
    /// 400 with the provider's invalid-argument error.
    BadRequest,
    /// Read the whole request, then never answer.
    Stall,
    /// Read the whole request, then close the connection without an answer.
    DropAfterRequest,
    /// Close a new connection before the TLS handshake.
    DropBeforeTls,
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub content_type: String,
    pub bearer: String,
    /// The MIME message as the API decoded it from the body.
    pub mime: Vec<u8>,
    /// The connection it came on (1 for the first one accepted).
    pub connection: usize,
}

#[derive(Default)]
struct State {
    faults: VecDeque<Fault>,
    requests: Vec<Recorded>,
    connections: usize,
    validator: Option<Validator>,
}

#[derive(Clone)]
pub struct FakeApi {
    pub flavor: Flavor,
    /// `https://127.0.0.1:PORT`, for `base_url`.
    pub base_url: String,
    /// The mailbox the path must name (`me` accepted for Gmail).
    pub user: String,
    state: Arc<Mutex<State>>,
}

impl FakeApi {
    pub async fn start(flavor: Flavor, user: &str) -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base_url = format!(
            "https://127.0.0.1:{}",
            listener.local_addr().unwrap().port()
        );
        let state = Arc::new(Mutex::new(State::default()));
        let api = FakeApi {
            flavor,
            base_url,
            user: user.to_string(),
            state,
        };
        let me = api.clone();
        let acceptor = test_tls_acceptor();
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let _ = socket.set_nodelay(true);
                let connection = {
                    let mut s = me.state.lock().unwrap();
                    if matches!(s.faults.front(), Some(Fault::DropBeforeTls)) {
                        s.faults.pop_front();
                        drop(socket);
                        continue;
                    }
                    s.connections += 1;
                    s.connections
                };
                let (me, acceptor) = (me.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(socket).await else {
                        return;
                    };
                    let _ = me.serve(tls, connection).await;
                });
            }
        });
        api
    }

    /// Accepts only bearer tokens that `validator` accepts (the fake token endpoint's).
    pub fn validate_with(&self, validator: Validator) {
        self.state.lock().unwrap().validator = Some(validator);
    }

    pub fn fault(&self, fault: Fault) {
        self.state.lock().unwrap().faults.push_back(fault);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().connections
    }

    async fn serve(
        &self,
        tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        connection: usize,
    ) -> std::io::Result<()> {
        let mut reader = BufReader::new(tls);
        loop {
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
                head.iter()
                    .skip(1)
                    .find_map(|h| {
                        let (k, v) = h.split_once(':')?;
                        k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                    })
                    .unwrap_or_default()
            };
            let mut parts = head.first().map(String::as_str).unwrap_or("").split(' ');
            let method = parts.next().unwrap_or_default().to_string();
            let path = parts.next().unwrap_or_default().to_string();
            // The APIs want a length; a chunked upload would be refused by them too.
            let Ok(length) = header("content-length").parse::<usize>() else {
                self.reply(&mut reader, 411, "", "{}").await?;
                continue;
            };
            let mut body = vec![0; length];
            reader.read_exact(&mut body).await?;
            let request = Request {
                method,
                path,
                content_type: header("content-type"),
                bearer: header("authorization")
                    .strip_prefix("Bearer ")
                    .unwrap_or_default()
                    .to_string(),
                body,
            };
            let fault = self.state.lock().unwrap().faults.pop_front();
            let (status, extra, json) = match self.check(&request, connection) {
                Err(refusal) => refusal,
                Ok(()) => match fault {
                    None => self.success(),
                    Some(Fault::Stall) => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return Ok(());
                    }
                    Some(Fault::DropAfterRequest) => return Ok(()),
                    Some(fault) => self.failure(&fault),
                },
            };
            self.reply(&mut reader, status, &extra, &json).await?;
        }
    }

    async fn reply<S: AsyncWriteExt + Unpin>(
        &self,
        stream: &mut S,
        status: u16,
        extra: &str,
        json: &str,
    ) -> std::io::Result<()> {
        let response = format!(
            "HTTP/1.1 {status} {}\r\ncontent-type: application/json; charset=UTF-8\r\n\
             content-length: {}\r\n{extra}\r\n{json}",
            reason(status),
            json.len()
        );
        stream.write_all(response.as_bytes()).await?;
        stream.flush().await
    }

    /// What the real API checks before it looks at the message.
    fn check(&self, request: &Request, connection: usize) -> Result<(), (u16, String, String)> {
        let (expected_path, content_type) = match self.flavor {
            Flavor::Gmail => {
                let user = if request.path.contains("/users/me/") {
                    "me"
                } else {
                    &self.user
                };
                if request.path.starts_with("/upload/") {
                    (
                        format!("/upload/gmail/v1/users/{user}/messages/send?uploadType=media"),
                        "message/rfc822",
                    )
                } else {
                    (
                        format!("/gmail/v1/users/{user}/messages/send"),
                        "application/json",
                    )
                }
            }
            Flavor::Graph => (format!("/v1.0/users/{}/sendMail", self.user), "text/plain"),
        };
        if request.method != "POST" || request.path != expected_path {
            return Err(self.not_found(&request.path));
        }
        let valid = {
            let s = self.state.lock().unwrap();
            !request.bearer.is_empty() && s.validator.as_ref().is_none_or(|v| v(&request.bearer))
        };
        if !valid {
            return Err(self.unauthorized());
        }
        if !request.content_type.starts_with(content_type) {
            return Err(self.invalid(&format!(
                "unexpected content type {} (want {content_type})",
                request.content_type
            )));
        }
        let mime = match (self.flavor, content_type) {
            (Flavor::Gmail, "application/json") => {
                let json: serde_json::Value = serde_json::from_slice(&request.body)
                    .map_err(|_| self.invalid("Invalid JSON payload received."))?;
                let raw = json["raw"].as_str().unwrap_or_default();
                if json.as_object().is_none_or(|o| o.len() != 1) || raw.is_empty() {
                    return Err(self.invalid("'raw' RFC822 payload message string or uploading message via /upload/* URL required"));
                }
                base64::engine::general_purpose::URL_SAFE
                    .decode(raw)
                    .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(raw))
                    .map_err(|_| self.invalid("Invalid value for ByteString"))?
            }
            (Flavor::Gmail, _) => request.body.clone(),
            (Flavor::Graph, _) => base64::engine::general_purpose::STANDARD
                .decode(&request.body)
                .map_err(|_| self.invalid("Invalid base64 string for MIME content."))?,
        };
        self.state.lock().unwrap().requests.push(Recorded {
            method: request.method.clone(),
            path: request.path.clone(),
            content_type: request.content_type.clone(),
            bearer: request.bearer.clone(),
            mime,
            connection,
        });
        Ok(())
    }

    fn success(&self) -> (u16, String, String) {
        match self.flavor {
            Flavor::Gmail => (
                200,
                String::new(),
                r#"{"id":"18c2f0a1b2c3d4e5","threadId":"18c2f0a1b2c3d4e5","labelIds":["SENT"]}"#
                    .into(),
            ),
            Flavor::Graph => (
                202,
                "request-id: 5a7d3f00-1111-2222-3333-444455556666\r\n".into(),
                String::new(),
            ),
        }
    }

    fn failure(&self, fault: &Fault) -> (u16, String, String) {
        match (self.flavor, fault) {
            (_, Fault::Unauthorized) => self.unauthorized(),
            (Flavor::Gmail, Fault::InsufficientScope) => (
                403,
                "www-authenticate: Bearer realm=\"https://accounts.google.com/\", \
                 error=\"insufficient_scope\", scope=\"https://www.googleapis.com/auth/gmail.send\"\r\n"
                    .into(),
                google_error(
                    403,
                    "Request had insufficient authentication scopes.",
                    "PERMISSION_DENIED",
                    "insufficientPermissions",
                ),
            ),
            (Flavor::Graph, Fault::InsufficientScope) => (
                403,
                String::new(),
                graph_error("ErrorAccessDenied", "Access is denied. Check credentials and try again."),
            ),
            (Flavor::Gmail, Fault::Forbidden { rate: true }) => (
                403,
                String::new(),
                google_error(403, "User-rate limit exceeded.", "PERMISSION_DENIED", "userRateLimitExceeded"),
            ),
            (Flavor::Gmail, Fault::Forbidden { rate: false }) => (
                403,
                String::new(),
                google_error(403, "Delegation denied for sender@acme.test", "PERMISSION_DENIED", "forbidden"),
            ),
            (Flavor::Graph, Fault::Forbidden { .. }) => (
                403,
                String::new(),
                graph_error("ErrorAccessDenied", "Access to OData is disabled: [RAOP] : Blocked by tenant configured AppOnly AccessPolicy settings."),
            ),
            (Flavor::Gmail, Fault::TooManyRequests(secs)) => (
                429,
                format!("retry-after: {secs}\r\n"),
                google_error(429, "Too many concurrent requests for user.", "RESOURCE_EXHAUSTED", "rateLimitExceeded"),
            ),
            (Flavor::Graph, Fault::TooManyRequests(secs)) => (
                429,
                format!("retry-after: {secs}\r\n"),
                graph_error("ApplicationThrottled", "Application is over its MailboxConcurrency limit."),
            ),
            (Flavor::Gmail, Fault::Unavailable(secs)) => (
                503,
                format!("retry-after: {secs}\r\n"),
                google_error(503, "The service is currently unavailable.", "UNAVAILABLE", "backendError"),
            ),
            (Flavor::Graph, Fault::Unavailable(secs)) => (
                503,
                format!("retry-after: {secs}\r\n"),
                graph_error("ServiceNotAvailable", "The service is temporarily unavailable."),
            ),
            (Flavor::Gmail, Fault::ServerError) => (
                500,
                String::new(),
                google_error(500, "Internal error encountered.", "INTERNAL", "backendError"),
            ),
            (Flavor::Graph, Fault::ServerError) => (
                500,
                String::new(),
                graph_error("generalException", "An internal server error occurred."),
            ),
            (Flavor::Gmail, Fault::GatewayTimeout) => (
                504,
                String::new(),
                google_error(504, "Deadline exceeded.", "DEADLINE_EXCEEDED", "deadlineExceeded"),
            ),
            (Flavor::Graph, Fault::GatewayTimeout) => (
                504,
                String::new(),
                graph_error("UnknownError", "Gateway Timeout"),
            ),
            (_, Fault::BadRequest) => match self.flavor {
                Flavor::Gmail => self.invalid("Invalid To header"),
                Flavor::Graph => (
                    400,
                    String::new(),
                    graph_error("ErrorInvalidRecipients", "At least one recipient isn't valid."),
                ),
            },
            (_, Fault::Stall | Fault::DropAfterRequest | Fault::DropBeforeTls) => {
                unreachable!("handled by the connection")
            }
        }
    }

    fn unauthorized(&self) -> (u16, String, String) {
        match self.flavor {
            Flavor::Gmail => (
                401,
                "www-authenticate: Bearer realm=\"https://accounts.google.com/\", error=\"invalid_token\"\r\n".into(),
                google_error(
                    401,
                    "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
                    "UNAUTHENTICATED",
                    "authError",
                ),
            ),
            Flavor::Graph => (
                401,
                "www-authenticate: Bearer realm=\"\", error=\"invalid_token\"\r\n".into(),
                graph_error("InvalidAuthenticationToken", "Access token has expired or is not yet valid."),
            ),
        }
    }

    fn invalid(&self, message: &str) -> (u16, String, String) {
        match self.flavor {
            Flavor::Gmail => (
                400,
                String::new(),
                google_error(400, message, "INVALID_ARGUMENT", "invalidArgument"),
            ),
            Flavor::Graph => (
                400,
                String::new(),
                graph_error("ErrorMimeContentInvalid", message),
            ),
        }
    }

    fn not_found(&self, path: &str) -> (u16, String, String) {
        match self.flavor {
            Flavor::Gmail => (
                404,
                String::new(),
                google_error(
                    404,
                    &format!("no such method {path}"),
                    "NOT_FOUND",
                    "notFound",
                ),
            ),
            Flavor::Graph => (
                404,
                String::new(),
                graph_error(
                    "ErrorInvalidUser",
                    &format!("The requested user '{path}' is invalid."),
                ),
            ),
        }
    }
}

struct Request {
    method: String,
    path: String,
    content_type: String,
    bearer: String,
    body: Vec<u8>,
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        411 => "Length Required",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        504 => "Gateway Timeout",
        _ => "Service Unavailable",
    }
}

/// Google's JSON error body (https://cloud.google.com/apis/design/errors).
fn google_error(code: u16, message: &str, status: &str, reason: &str) -> String {
    serde_json::json!({
        "error": {
            "code": code,
            "message": message,
            "errors": [{"message": message, "domain": "global", "reason": reason}],
            "status": status,
        }
    })
    .to_string()
}

/// Graph's JSON error body.
fn graph_error(code: &str, message: &str) -> String {
    serde_json::json!({
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": "2026-12-01T12:00:00",
                "request-id": "5a7d3f00-1111-2222-3333-444455556666",
                "client-request-id": "5a7d3f00-1111-2222-3333-444455556666",
            }
        }
    })
    .to_string()
}
