//! Fakes for the SMTP and OAuth2 tests: a scripted SMTP server and a token endpoint,
//! both tokio tasks on 127.0.0.1 with an ephemeral port.
#![allow(dead_code)]

pub mod api;
pub mod postgres;
pub mod smtp;
pub mod token;

use std::path::{Path, PathBuf};

/// A `missive.yaml` in a temporary folder; templates and schemas are the repository's.
pub fn config_file(dir: &Path, transport_yaml: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = format!(
        "templates: {}\nschemas: {}\nfrom: \"Acme <noreply@acme.test>\"\ntransport:\n{}",
        root.join("templates").display(),
        root.join("schemas").display(),
        transport_yaml
    );
    let path = dir.join("missive.yaml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// Writes a 0600 credentials file holding `refresh_token` for the fake endpoint's client.
pub fn credentials_file(dir: &Path, refresh_token: &str) -> PathBuf {
    let path = dir.join("credentials.json");
    let json = serde_json::json!({
        "version": 1,
        "provider": "generic",
        "client_id": token::CLIENT_ID,
        "client_secret": token::CLIENT_SECRET,
        "refresh_token": refresh_token,
    });
    std::fs::write(&path, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    set_mode(&path, 0o600);
    path
}

pub fn set_mode(path: &Path, mode: u32) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

pub fn stored_refresh_token(path: &Path) -> String {
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    json["refresh_token"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Makes the access token a credentials file keeps look expired, as it is once its
/// lifetime has passed: the next renewal must spend the refresh token.
pub fn expire_stored_access_token(path: &Path) {
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    json["access_token_expires_at"] = 1.into();
    std::fs::write(path, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    set_mode(path, 0o600);
}

pub fn stored_access_token(path: &Path) -> Option<String> {
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    json["access_token"].as_str().map(str::to_string)
}
