//! `missive preview`: a local page where designers see every template rendered exactly
//! as it would be sent, updated the moment they save.
//!
//! The server lives on the binary side and uses only the library's public API: the
//! same `Mailer::template(..).render()` / `.eml()` path that sending takes, a watching
//! mailer for the reloads, and its reload events for pushing them to the page over
//! server-sent events. The email's own HTML is never changed to make that work.

mod api;
mod page;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use missive::{Config, Error, ErrorKind, Mailer, Result};

/// What `missive preview` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// Open the page in the default browser once it is served.
    pub open: bool,
    /// Scan for changes every interval instead of relying on notifications.
    pub poll: Option<Duration>,
}

/// Serves the preview until the process is interrupted.
pub async fn serve(config: Config, options: Options) -> Result<()> {
    // A designer may well start the preview on a set they left broken; the page then
    // shows why, and the first good save brings the templates in.
    let builder = Mailer::builder().config(config).tolerate_broken(true);
    let builder = match options.poll {
        Some(interval) => builder.poll(interval),
        None => builder.watch(true),
    };
    let mailer = tokio::task::spawn_blocking(move || builder.build_in_memory())
        .await
        .map_err(|e| Error::new(ErrorKind::Template, format!("template loader failed: {e}")))??
        .0;
    // Loopback only: the page shows real templates and renders whatever data it is
    // posted, which is nothing to offer the network.
    let listener =
        tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, options.port)))
            .await
            .map_err(|e| {
                Error::new(
                    ErrorKind::Io,
                    format!("cannot listen on 127.0.0.1:{}: {e}", options.port),
                )
            })?;
    let address = listener
        .local_addr()
        .map_err(|e| Error::new(ErrorKind::Io, format!("cannot read the bound address: {e}")))?;
    let url = format!("http://{address}/");
    println!("missive preview: {url}  (Ctrl-C to stop)");
    if options.open {
        open_browser(&url);
    }
    let app = router(mailer, address.port());
    tokio::select! {
        served = axum::serve(listener, app) => served
            .map_err(|e| Error::new(ErrorKind::Io, format!("preview server failed: {e}"))),
        // Open event streams would hold a graceful shutdown forever; just stop.
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

fn router(mailer: Mailer, port: u16) -> Router {
    Router::new()
        .route("/", get(page::index))
        .route("/assets/preview.js", get(page::script))
        .route("/assets/preview.css", get(page::stylesheet))
        .route("/api/templates", get(api::templates))
        .route("/api/example", get(api::example))
        .route("/api/render", post(api::render))
        .route("/frame", get(api::frame))
        .route("/events", get(api::events))
        .with_state(mailer)
        .layer(middleware::from_fn_with_state(port, same_host))
}

/// Refuses requests addressed to any other host name. Listening on loopback keeps
/// other machines out, but a web page elsewhere could point a name of its own at
/// 127.0.0.1 (DNS rebinding) and read the templates through the visitor's browser;
/// such requests carry that name in `Host`.
async fn same_host(State(port): State<u16>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let ours = [format!("127.0.0.1:{port}"), format!("localhost:{port}")];
    if ours.iter().any(|o| o == host) {
        next.run(request).await
    } else {
        (
            StatusCode::MISDIRECTED_REQUEST,
            format!("this preview answers only to http://127.0.0.1:{port}/\n"),
        )
            .into_response()
    }
}

/// Best effort: the URL is printed either way.
fn open_browser(url: &str) {
    let command = if cfg!(target_os = "macos") {
        "open"
    } else if cfg!(windows) {
        "explorer"
    } else {
        "xdg-open"
    };
    if let Err(e) = std::process::Command::new(command)
        .arg(url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        tracing::warn!(%e, "cannot open a browser; open {url} yourself");
    }
}
