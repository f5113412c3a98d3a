//! The socket under an SMTP connection, instrumented: it records when it last wrote
//! and whether it has since started reading, which tells "the server never got the
//! whole message" from "the server's reply to it was lost".

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

// lettre marks `AsyncNetworkStream` deprecated for outside use, but it is the one way
// to run lettre's TLS over a socket of our own (see `TokioIo`) in lettre 0.11.
#[allow(deprecated)]
use lettre::transport::smtp::client::AsyncNetworkStream;
use lettre::transport::smtp::client::AsyncTokioStream;

/// When the socket last wrote, how much, and since when it has been reading (after
/// the last write): set by [`Tracked`], read by [`Endpoint::finish_data`].
#[derive(Debug)]
pub(crate) struct Progress {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    last_write: Instant,
    reading_since: Option<Instant>,
    /// Bytes handed to the kernel since the connection opened (TLS records included).
    written: u64,
}

impl Progress {
    pub(super) fn new() -> Arc<Progress> {
        Arc::new(Progress {
            state: Mutex::new(State {
                last_write: Instant::now(),
                reading_since: None,
                written: 0,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Some(since)` once everything written so far has been handed to the kernel and
    /// the connection waits for an answer.
    pub(super) fn reading_since(&self) -> Option<Instant> {
        self.lock().reading_since
    }

    pub(super) fn last_write(&self) -> Instant {
        self.lock().last_write
    }

    /// Bytes handed to the kernel so far. Under TLS each record adds its overhead, so
    /// fewer than `n` bytes after a mark proves the peer cannot have the first `n`
    /// bytes of plain text written after it.
    pub(super) fn written(&self) -> u64 {
        self.lock().written
    }
}

/// A TCP stream that records its reads and writes in a [`Progress`].
#[derive(Debug)]
pub(crate) struct Tracked {
    pub tcp: tokio::net::TcpStream,
    pub progress: Arc<Progress>,
}

impl tokio::io::AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        {
            let mut state = self.progress.lock();
            if state.reading_since.is_none() {
                state.reading_since = Some(Instant::now());
            }
        }
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.tcp).poll_write(cx, buf);
        let mut state = self.progress.lock();
        state.reading_since = None;
        if let Poll::Ready(Ok(n)) = result {
            if n > 0 {
                state.last_write = Instant::now();
                state.written += n as u64;
            }
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

impl AsyncTokioStream for Tracked {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.tcp.peer_addr()
    }
}

/// lettre's TLS stream (futures-io) seen as a tokio stream, so that implicit TLS runs
/// over a [`Tracked`] socket too.
#[derive(Debug)]
#[allow(deprecated)]
pub(crate) struct TokioIo(pub AsyncNetworkStream);

impl tokio::io::AsyncRead for TokioIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let unfilled = buf.initialize_unfilled();
        match futures_io::AsyncRead::poll_read(Pin::new(&mut self.0), cx, unfilled) {
            Poll::Ready(Ok(n)) => {
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl tokio::io::AsyncWrite for TokioIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        futures_io::AsyncWrite::poll_write(Pin::new(&mut self.0), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        futures_io::AsyncWrite::poll_flush(Pin::new(&mut self.0), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        futures_io::AsyncWrite::poll_close(Pin::new(&mut self.0), cx)
    }
}

impl AsyncTokioStream for TokioIo {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.0.peer_addr()
    }
}
