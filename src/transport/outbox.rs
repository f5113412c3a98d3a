//! The default transport: one `.eml` file per message, for machines with no mail server.
//!
//! Written the way Maildir delivers: into `DIR/tmp/` first, synced, renamed into
//! `DIR/`, and the folder synced, so that a message reported written survives a crash
//! or power loss, and a reader never sees half a file. What a crash leaves in `tmp/`
//! is swept when the next outbox opens.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};
use crate::transport::{async_trait, Delivery, Email, Transport};

/// Writes each message to `DIR/<time>-<id>.eml`.
#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    dir: PathBuf,
}

impl Outbox {
    pub fn new(dir: impl Into<PathBuf>) -> Outbox {
        let outbox = Outbox { dir: dir.into() };
        sweep(&outbox.dir.join("tmp"));
        outbox
    }
}

#[async_trait]
impl Transport for Outbox {
    async fn send(&self, email: &Email) -> Result<Delivery> {
        let dir = self.dir.clone();
        let raw = email.clone();
        let id = email
            .message_id()
            .trim_matches(['<', '>'])
            .split('@')
            .next()
            .unwrap_or("message")
            .to_string();
        let path = tokio::task::spawn_blocking(move || write_durably(&dir, &id, raw.raw()))
            .await
            .map_err(|e| Error::new(ErrorKind::Io, format!("outbox writer failed: {e}")))??;
        Ok(
            Delivery::new(email.recipients(), format!("written to {}", path.display()))
                .via("outbox"),
        )
    }

    fn name(&self) -> &str {
        "outbox"
    }
}

/// Writes `raw` to `tmp/`, syncs it, renames it into `dir` and syncs `dir`.
fn write_durably(dir: &Path, id: &str, raw: &[u8]) -> Result<PathBuf> {
    let tmp_dir = dir.join("tmp");
    std::fs::create_dir_all(&tmp_dir).map_err(|e| Error::io(dir, "create outbox folder", e))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let name = format!("{stamp}-{id}.eml");
    // The writer's pid in the name lets a later sweep tell an abandoned file from one
    // another process is still writing.
    let tmp = tmp_dir.join(format!("{}.{name}", std::process::id()));
    let path = dir.join(&name);
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(raw)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        File::open(dir)?.sync_all()
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(&path, "write", e)
    })?;
    Ok(path)
}

/// Removes what crashed writers left in `tmp/`: files whose writing process is gone.
fn sweep(tmp_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.split_once('.'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok());
        let abandoned = match pid {
            Some(pid) => pid != std::process::id() && !process_alive(pid),
            None => true,
        };
        if abandoned {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::info!(file = %entry.path().display(), "removed a partly written outbox file")
                }
                Err(e) => {
                    tracing::warn!(file = %entry.path().display(), error = %e, "cannot remove a partly written outbox file")
                }
            }
        }
    }
}

/// Where there is no `/proc` to ask, every writer counts as alive: nothing is removed.
fn process_alive(pid: u32) -> bool {
    !Path::new("/proc").is_dir() || Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_whole_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let path = write_durably(&out, "abc", b"Subject: x\r\n\r\nhi").unwrap();
        assert!(path
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .ends_with("-abc.eml"));
        assert_eq!(path.parent().unwrap(), out);
        assert_eq!(std::fs::read(&path).unwrap(), b"Subject: x\r\n\r\nhi");
        let left: Vec<_> = std::fs::read_dir(out.join("tmp")).unwrap().collect();
        assert!(left.is_empty(), "no temporary file left behind");
    }

    #[test]
    fn opening_sweeps_what_dead_writers_left() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        // pid 0 is never a writer's; the live one is this process.
        std::fs::write(tmp.join("0.1-dead.eml"), "half").unwrap();
        std::fs::write(tmp.join("junk"), "?").unwrap();
        let live = tmp.join(format!("{}.2-live.eml", std::process::id()));
        std::fs::write(&live, "being written").unwrap();
        Outbox::new(dir.path());
        let mut left: Vec<_> = std::fs::read_dir(&tmp)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        left.sort();
        assert_eq!(left, [live]);
    }

    #[test]
    fn unwritable_outbox_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, "x").unwrap();
        let err = write_durably(&blocker.join("out"), "abc", b"x").unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Io);
    }
}
