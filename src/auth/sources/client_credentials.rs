//! The client-credentials grant (Microsoft 365 app-only, generic providers).

use super::*;
use crate::auth::store::{self};
use crate::auth::{BoxFuture, Issued, TokenSource};
use crate::error::Result;

/// App-only access with the client's own id and secret.
pub(super) struct ClientCredentialsGrant {
    pub(super) common: Common,
}

impl ClientCredentialsGrant {
    async fn renew(&self) -> Result<Issued> {
        let file = match &self.common.config.client_secret_env {
            Some(_) => None,
            None => Some(store::load(&credentials_path(&self.common.config))?),
        };
        let client = self.common.client(file.as_ref())?;
        let http = &self.common.http;
        let response = request_with_retries(http, "check the client secret", || {
            client
                .exchange_client_credentials()
                .add_scopes(self.common.scopes())
                .request_async(http)
        })
        .await?;
        Ok(issued(&response))
    }
}

impl TokenSource for ClientCredentialsGrant {
    fn fetch(&self, _reuse_stored: bool) -> BoxFuture<'_, Result<Issued>> {
        Box::pin(self.renew())
    }
    fn describe(&self) -> String {
        format!(
            "{} client credentials of {}",
            self.common.config.provider.name(),
            self.common
                .config
                .client_id
                .as_deref()
                .unwrap_or("the stored client")
        )
    }
}
