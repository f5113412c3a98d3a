//! The default transport: one `.eml` file per message, for machines with no mail server.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::message::Outgoing;
use crate::transport::Delivery;

/// Writes each message to `DIR/<time>-<id>.eml`.
#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    dir: PathBuf,
}

impl Outbox {
    pub fn new(dir: impl Into<PathBuf>) -> Outbox {
        Outbox { dir: dir.into() }
    }

    pub async fn send(&self, message: &Outgoing) -> Result<Delivery> {
        let dir = self.dir.clone();
        let raw = message.raw.clone();
        let id = message
            .message_id
            .trim_matches(['<', '>'])
            .split('@')
            .next()
            .unwrap_or("message")
            .to_string();
        let path = tokio::task::spawn_blocking(move || write_atomically(&dir, &id, &raw))
            .await
            .map_err(|e| {
                Error::new(crate::ErrorKind::Io, format!("outbox writer failed: {e}"))
            })??;
        Ok(Delivery {
            accepted: message.recipients(),
            reply: format!("written to {}", path.display()),
            attempts: 1,
        })
    }
}

/// Write to a hidden temporary file, flush it to disk, then rename: a reader (or a crash)
/// sees the whole message or none of it.
fn write_atomically(dir: &Path, id: &str, raw: &[u8]) -> Result<PathBuf> {
    use std::io::Write;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "create outbox folder", e))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let name = format!("{stamp}-{id}.eml");
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(&name);
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(raw)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(&path, "write", e)
    })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_whole_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let path =
            write_atomically(&dir.path().join("out"), "abc", b"Subject: x\r\n\r\nhi").unwrap();
        assert!(path
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .ends_with("-abc.eml"));
        assert_eq!(std::fs::read(&path).unwrap(), b"Subject: x\r\n\r\nhi");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("out")).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left behind");
    }

    #[test]
    fn unwritable_outbox_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, "x").unwrap();
        let err = write_atomically(&blocker.join("out"), "abc", b"x").unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Io);
    }
}
