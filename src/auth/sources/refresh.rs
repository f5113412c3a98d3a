//! The refresh-token grant: a stored or given refresh token, rotated ones persisted
//! at once, a refused one remembered until the credentials change.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use oauth2::{RefreshToken, TokenResponse};
use secrecy::{ExposeSecret, SecretString};

use super::*;
use crate::auth::store::{self, Credentials};
use crate::auth::{BoxFuture, Issued, TokenSource};
use crate::error::{Error, ErrorKind, Result};

pub(super) enum Origin {
    Env(String),
    File(PathBuf),
}

/// Delegated access: a user's refresh token, rotated when the provider says so.
pub(super) struct RefreshGrant {
    pub(super) common: Common,
    pub(super) origin: Origin,
    /// A rotated refresh token that could not be written back (it came from the
    /// environment, or the file was not writable): used until the process ends.
    pub(super) rotated: Mutex<Option<SecretString>>,
    /// A refresh token the provider refused (`invalid_grant`), with its answer: given
    /// again without asking until the file (or variable) holds another one, so that
    /// every later send does not knock on the endpoint with a dead grant.
    pub(super) refused: Mutex<Option<(SecretString, Error)>>,
}

impl RefreshGrant {
    async fn renew(&self, reuse_stored: bool) -> Result<Issued> {
        let _lock = match &self.origin {
            Origin::File(path) => Some(store::lock_for_renewal(path).await?),
            Origin::Env(_) => None,
        };
        let file = match &self.origin {
            Origin::File(path) => Some(store::load(path)?),
            Origin::Env(_) => None,
        };
        if reuse_stored {
            if let Some(kept) = file.as_ref().and_then(|f| self.still_valid(f)) {
                return Ok(kept);
            }
        }
        let kept = self
            .rotated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let refresh = match (kept, &self.origin) {
            (Some(kept), _) => kept,
            (None, Origin::Env(var)) => self.common.env_secret(var, "refresh token")?,
            (None, Origin::File(path)) => file
                .as_ref()
                .and_then(|f| f.refresh_token.clone())
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::Auth,
                        format!(
                            "{} holds no refresh token: {}",
                            path.display(),
                            self.common.reauth_hint()
                        ),
                    )
                })?,
        };
        if let Some((dead, answer)) = &*self.refused.lock().unwrap_or_else(|p| p.into_inner()) {
            if dead.expose_secret() == refresh.expose_secret() {
                return Err(answer.clone_shallow());
            }
        }
        let client = self.common.client(file.as_ref())?;
        let http = &self.common.http;
        let token = RefreshToken::new(refresh.expose_secret().to_string());
        let response = request_with_retries(http, &self.common.reauth_hint(), || {
            client
                .exchange_refresh_token(&token)
                .add_scopes(self.common.scopes())
                .request_async(http)
        })
        .await
        .map_err(|failed| {
            if failed.grant_refused {
                *self.refused.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((refresh.clone(), failed.error.clone_shallow()));
            }
            failed.error
        })?;
        let rotated = response
            .refresh_token()
            .map(|t| SecretString::from(t.secret().to_string()))
            .filter(|t| t.expose_secret() != refresh.expose_secret());
        // The old refresh token may be dead from now on: save the new one before the
        // access token is used, so a crash right after cannot lose it.
        let issued = issued(&response);
        self.remember(file, rotated, &issued);
        Ok(issued)
    }

    /// The access token the file keeps, when it is valid for longer than the renewal
    /// margin the cache would apply to it.
    fn still_valid(&self, file: &Credentials) -> Option<Issued> {
        let token = file.access_token.clone()?;
        let expires_at = file.access_token_expires_at?;
        let now = store::now_unix();
        let lifetime = expires_at.saturating_sub(file.access_token_issued_at.unwrap_or(now));
        let margin = self
            .common
            .config
            .renew_before_secs
            .min(lifetime / 5)
            .max(1);
        (expires_at > now.saturating_add(margin)).then(|| Issued {
            access_token: token,
            expires_in: Some(Duration::from_secs(expires_at - now)),
            lifetime: Some(Duration::from_secs(lifetime)),
        })
    }

    fn remember(&self, file: Option<Credentials>, rotated: Option<SecretString>, issued: &Issued) {
        let mut kept = self.rotated.lock().unwrap_or_else(|p| p.into_inner());
        match (&self.origin, file) {
            (Origin::File(path), Some(mut credentials)) => {
                if let Some(new) = &rotated {
                    credentials.refresh_token = Some(new.clone());
                }
                let now = store::now_unix();
                // Without an expiry a later run could not tell whether it is valid.
                credentials.access_token = issued
                    .expires_in
                    .is_some()
                    .then(|| issued.access_token.clone());
                credentials.access_token_issued_at = issued.expires_in.map(|_| now);
                credentials.access_token_expires_at = issued.expires_in.map(|d| now + d.as_secs());
                match store::save(path, &credentials) {
                    Ok(()) => {
                        if rotated.is_some() {
                            tracing::info!(file = %path.display(), "rotated refresh token saved");
                        }
                        *kept = None;
                    }
                    Err(e) if rotated.is_some() => {
                        tracing::error!(
                            error = %e,
                            "cannot save the rotated refresh token; it is kept in memory, \
                             and `missive auth` will be needed after a restart"
                        );
                        *kept = rotated;
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot update the credentials file"),
                }
            }
            _ => {
                if rotated.is_some() {
                    tracing::warn!(
                        "the provider rotated the refresh token from the environment; the new \
                         one is kept in memory only: use the credentials file to keep it"
                    );
                    *kept = rotated;
                }
            }
        }
    }
}

impl TokenSource for RefreshGrant {
    fn fetch(&self, reuse_stored: bool) -> BoxFuture<'_, Result<Issued>> {
        Box::pin(self.renew(reuse_stored))
    }
    fn describe(&self) -> String {
        let from = match &self.origin {
            Origin::Env(var) => format!("${var}"),
            Origin::File(path) => path.display().to_string(),
        };
        format!(
            "{} refresh token from {from}",
            self.common.config.provider.name()
        )
    }
}
