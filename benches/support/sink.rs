//! An SMTP sink for benches that answers like Postfix's smtp-sink.

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// A minimal SMTP sink: accepts every message, offers PIPELINING, and writes the
/// replies to a batch of commands at once; with `tls`, TLS from the first byte. Returns
/// its port. Not the tests' `FakeSmtp`: that one keeps every message it receives for
/// assertions, and a bench sends hundreds of thousands.
pub async fn sink(tls: Option<TlsAcceptor>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let _ = socket.set_nodelay(true);
            let tls = tls.clone();
            tokio::spawn(async move {
                let _ = match tls {
                    None => session(socket).await,
                    Some(tls) => match tls.accept(socket).await {
                        Ok(stream) => session(stream).await,
                        Err(_) => Ok(()),
                    },
                };
            });
        }
    });
    port
}

async fn session(socket: impl AsyncRead + AsyncWrite + Unpin) -> std::io::Result<()> {
    let mut reader = BufReader::new(socket);
    let mut replies = b"220 sink ESMTP\r\n".to_vec();
    let mut line = String::new();
    let mut in_data = false;
    loop {
        if reader.buffer().is_empty() && !replies.is_empty() {
            reader.get_mut().write_all(&replies).await?;
            replies.clear();
        }
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let command = line.trim_end().to_ascii_uppercase();
        if in_data {
            if command == "." {
                in_data = false;
                replies.extend_from_slice(b"250 2.0.0 queued\r\n");
            }
            continue;
        }
        match command.split(' ').next().unwrap_or("") {
            "EHLO" => replies.extend_from_slice(b"250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n"),
            "DATA" => {
                in_data = true;
                replies.extend_from_slice(b"354 go ahead\r\n");
            }
            "QUIT" => {
                reader.get_mut().write_all(b"221 bye\r\n").await?;
                return Ok(());
            }
            _ => replies.extend_from_slice(b"250 2.0.0 ok\r\n"),
        }
    }
}
