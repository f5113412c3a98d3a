//! The credentials file `missive auth` writes: a refresh token (and what is needed to
//! use it) and the last access token with its expiry, mode 0600, replaced atomically
//! whenever a provider issues a new token.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};

/// Where `missive auth` stores credentials when the config names no file:
/// `$XDG_CONFIG_HOME/missive/credentials.json`, else `~/.config/missive/credentials.json`.
pub fn default_credentials_file() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("missive").join("credentials.json")
}

/// `~/...` in a configured path means the home folder.
pub(crate) fn expand_home(path: &Path) -> PathBuf {
    match (path.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => path.to_path_buf(),
    }
}

/// What the file holds. Secrets stay in `SecretString`s outside this module.
#[derive(Serialize, Deserialize, Default)]
struct Stored {
    #[serde(default)]
    version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token_url: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    /// The access token issued last, reused by later runs while it is valid, so that
    /// a command run from cron does not renew (and, with a rotating provider, spend
    /// the refresh token) every time. Files written before version 2 have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    access_token: Option<String>,
    /// Unix time at which that access token expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    access_token_expires_at: Option<u64>,
    /// Unix time at which it was issued: with the expiry, its lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    access_token_issued_at: Option<u64>,
    #[serde(default)]
    updated_at: u64,
}

/// The contents of a credentials file.
#[derive(Clone, Default)]
pub(crate) struct Credentials {
    pub provider: Option<String>,
    pub user: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<SecretString>,
    pub token_url: Option<String>,
    pub scopes: Vec<String>,
    pub refresh_token: Option<SecretString>,
    pub access_token: Option<SecretString>,
    pub access_token_expires_at: Option<u64>,
    pub access_token_issued_at: Option<u64>,
    pub updated_at: u64,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("provider", &self.provider)
            .field("user", &self.user)
            .field("client_id", &self.client_id)
            .field("has_client_secret", &self.client_secret.is_some())
            .field("token_url", &self.token_url)
            .field("has_refresh_token", &self.refresh_token.is_some())
            .field("has_access_token", &self.access_token.is_some())
            .field("access_token_expires_at", &self.access_token_expires_at)
            .finish_non_exhaustive()
    }
}

pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Reads a credentials file, refusing one that others could read (as ssh does).
pub(crate) fn load(path: &Path) -> Result<Credentials> {
    let missing = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::new(
                ErrorKind::Auth,
                format!(
                    "no credentials file at {}: run `missive auth` to create it",
                    path.display()
                ),
            )
        } else {
            Error::io(path, "read credentials file", e)
        }
    };
    let meta = std::fs::metadata(path).map_err(missing)?;
    check_private(path, &meta)?;
    let text = std::fs::read_to_string(path).map_err(missing)?;
    // serde_json's message names a line and column, never the (secret) content.
    let stored: Stored = serde_json::from_str(&text).map_err(|e| {
        Error::new(
            ErrorKind::Config,
            format!("credentials file is not valid: {e}"),
        )
        .at(path, e.line(), e.column())
    })?;
    Ok(Credentials {
        provider: stored.provider,
        user: stored.user,
        client_id: stored.client_id,
        client_secret: stored.client_secret.map(SecretString::from),
        token_url: stored.token_url,
        scopes: stored.scopes,
        refresh_token: stored.refresh_token.map(SecretString::from),
        access_token: stored.access_token.map(SecretString::from),
        access_token_expires_at: stored.access_token_expires_at,
        access_token_issued_at: stored.access_token_issued_at,
        updated_at: stored.updated_at,
    })
}

/// Reads a secret file (a service account key), refusing one that others could read.
pub(crate) fn read_private(path: &Path, what: &str) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, &format!("read {what}"), e))?;
    check_private(path, &meta)?;
    std::fs::read_to_string(path).map_err(|e| Error::io(path, &format!("read {what}"), e))
}

#[cfg(unix)]
fn check_private(path: &Path, meta: &std::fs::Metadata) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::new(
            ErrorKind::Auth,
            format!(
                "{} is readable by others (mode {mode:03o}); refusing to use it: \
                 run `chmod 600 {}`",
                path.display(),
                path.display()
            ),
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path, _meta: &std::fs::Metadata) -> Result<()> {
    Ok(())
}

/// Writes `credentials` to `path` atomically: a 0600 temporary file beside it, flushed
/// to disk, then renamed over the old one, so a crash leaves the old or the new file,
/// never half of one, and the secret is never readable by others even for a moment.
pub(crate) fn save(path: &Path, credentials: &Credentials) -> Result<()> {
    let stored = Stored {
        version: 2,
        provider: credentials.provider.clone(),
        user: credentials.user.clone(),
        client_id: credentials.client_id.clone(),
        client_secret: credentials
            .client_secret
            .as_ref()
            .map(|s| s.expose_secret().to_string()),
        token_url: credentials.token_url.clone(),
        scopes: credentials.scopes.clone(),
        refresh_token: credentials
            .refresh_token
            .as_ref()
            .map(|s| s.expose_secret().to_string()),
        access_token: credentials
            .access_token
            .as_ref()
            .map(|s| s.expose_secret().to_string()),
        access_token_expires_at: credentials.access_token_expires_at,
        access_token_issued_at: credentials.access_token_issued_at,
        updated_at: now_unix(),
    };
    let mut json = serde_json::to_vec_pretty(&stored)
        .map_err(|e| Error::new(ErrorKind::Io, format!("cannot encode credentials: {e}")))?;
    json.push(b'\n');
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    create_private_dir(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "credentials.json".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let mut file = private_file(&tmp)?;
        file.write_all(&json)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    result.map_err(|e: std::io::Error| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, "write credentials file", e)
    })
}

/// An exclusive lock on a file beside the credentials file, held while a refresh
/// token is read, spent and replaced: processes (or mailers) sharing the file never
/// present the same refresh token twice, which a rotating provider may punish by
/// revoking the whole grant.
pub(crate) struct RenewalLock {
    _file: std::fs::File,
}

pub(crate) async fn lock_for_renewal(path: &Path) -> Result<RenewalLock> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "credentials.json".into());
    let lock_path = dir.join(format!(".{name}.lock"));
    create_private_dir(dir)?;
    let mut options = std::fs::OpenOptions::new();
    options.create(true).truncate(false).write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options
        .open(&lock_path)
        .map_err(|e| Error::io(&lock_path, "open lock file", e))?;
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match fs4::FileExt::try_lock(&file) {
            Ok(()) => return Ok(RenewalLock { _file: file }),
            Err(fs4::TryLockError::WouldBlock) if std::time::Instant::now() < give_up => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(fs4::TryLockError::WouldBlock) => {
                return Err(Error::new(
                    ErrorKind::Io,
                    format!(
                        "{} stayed locked by another renewal for a minute",
                        lock_path.display()
                    ),
                ))
            }
            Err(fs4::TryLockError::Error(e)) => {
                return Err(Error::io(&lock_path, "lock", e));
            }
        }
    }
}

#[cfg(unix)]
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

fn create_private_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .map_err(|e| Error::io(dir, "create folder", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Credentials {
        Credentials {
            provider: Some("generic".into()),
            client_id: Some("cid".into()),
            refresh_token: Some(SecretString::from("rt-1")),
            ..Credentials::default()
        }
    }

    #[test]
    fn round_trip_is_private_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/credentials.json");
        save(&path, &sample()).unwrap();
        let back = load(&path).unwrap();
        assert_eq!(back.refresh_token.unwrap().expose_secret(), "rt-1");
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[cfg(unix)]
    #[test]
    fn group_readable_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials.json");
        save(&path, &sample()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = load(&path).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Auth);
        assert!(err.message().contains("chmod 600"), "{err}");
    }

    #[test]
    fn debug_shows_no_secret() {
        let mut credentials = sample();
        credentials.access_token = Some(SecretString::from("at-1"));
        let shown = format!("{credentials:?}");
        assert!(
            !shown.contains("rt-1") && !shown.contains("at-1"),
            "{shown}"
        );
    }

    #[test]
    fn a_version_1_file_without_an_access_token_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials.json");
        std::fs::write(
            &path,
            r#"{"version":1,"provider":"generic","client_id":"cid","refresh_token":"rt-1",
                "access_token_expires_at":1700000000,"updated_at":1699990000}"#,
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let back = load(&path).unwrap();
        assert_eq!(back.refresh_token.unwrap().expose_secret(), "rt-1");
        assert!(back.access_token.is_none());
        assert_eq!(back.access_token_expires_at, Some(1_700_000_000));
    }

    #[test]
    fn the_access_token_and_its_times_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials.json");
        let mut credentials = sample();
        credentials.access_token = Some(SecretString::from("at-1"));
        credentials.access_token_issued_at = Some(100);
        credentials.access_token_expires_at = Some(3700);
        save(&path, &credentials).unwrap();
        let back = load(&path).unwrap();
        assert_eq!(back.access_token.unwrap().expose_secret(), "at-1");
        assert_eq!(back.access_token_issued_at, Some(100));
        assert_eq!(back.access_token_expires_at, Some(3700));
    }
}
