//! One token cache per mailer, shared by every pooled connection.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use secrecy::SecretString;
use tracing::Instrument;

use crate::auth::TokenSource;
use crate::error::{Error, Result};

/// Lifetime assumed when a provider does not say; short, so that a wrong guess costs
/// an early renewal rather than a rejected send.
const ASSUMED_LIFETIME: Duration = Duration::from_secs(300);

/// An access token handed to one connection.
#[derive(Clone)]
pub(crate) struct Token {
    secret: SecretString,
    /// Which renewal produced it, so that a rejection only drops the token it is about.
    generation: u64,
    renew_at: Instant,
}

impl Token {
    pub fn secret(&self) -> &SecretString {
        &self.secret
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// Access tokens, renewed ahead of expiry, with one renewal at a time however many
/// sends want a token.
pub(crate) struct TokenCache {
    source: Box<dyn TokenSource>,
    renew_before: Duration,
    state: Mutex<State>,
    /// Held for the whole of a renewal: later callers wait and take its result.
    renewing: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    current: Option<Token>,
    /// Renewals finished so far, successful or not.
    renewals: u64,
    /// The outcome of the last renewal when it failed, for the callers that waited on it.
    failure: Option<Error>,
    /// Set when a server refused a token: the next renewal asks the provider rather
    /// than taking the token the credentials file keeps.
    refused: bool,
}

impl TokenCache {
    pub fn new(source: Box<dyn TokenSource>, renew_before: Duration) -> TokenCache {
        TokenCache {
            source,
            renew_before,
            state: Mutex::new(State::default()),
            renewing: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fresh(&self) -> Option<Token> {
        self.lock()
            .current
            .as_ref()
            .filter(|t| Instant::now() < t.renew_at)
            .cloned()
    }

    /// A token that is not about to expire, renewing it first when needed.
    pub async fn get(&self) -> Result<Token> {
        if let Some(token) = self.fresh() {
            return Ok(token);
        }
        let seen = self.lock().renewals;
        let _renewing = self.renewing.lock().await;
        {
            let state = self.lock();
            if let Some(token) = state
                .current
                .as_ref()
                .filter(|t| Instant::now() < t.renew_at)
            {
                return Ok(token.clone());
            }
            // A renewal finished while we waited and failed: share its answer rather
            // than asking the endpoint again for every waiting send.
            if state.renewals != seen {
                if let Some(failure) = &state.failure {
                    return Err(failure.clone_shallow());
                }
            }
        }
        let span = tracing::info_span!("token_renewal", credential = %self.source.describe());
        let reuse_stored = !self.lock().refused;
        let result = self
            .source
            .fetch(reuse_stored)
            .instrument(span.clone())
            .await;
        let _entered = span.enter();
        let mut state = self.lock();
        state.renewals += 1;
        match result {
            Ok(issued) => {
                let remaining = issued.expires_in.unwrap_or(ASSUMED_LIFETIME);
                let lifetime = issued.lifetime.unwrap_or(remaining);
                let margin = self.renew_before.min(lifetime / 5);
                let token = Token {
                    secret: issued.access_token,
                    generation: state.renewals,
                    renew_at: Instant::now() + remaining.saturating_sub(margin),
                };
                if issued.lifetime.is_some() {
                    tracing::info!(
                        expires_in_secs = remaining.as_secs(),
                        "access token kept from the credentials file"
                    );
                } else {
                    tracing::info!(
                        expires_in_secs = remaining.as_secs(),
                        "access token renewed"
                    );
                }
                state.current = Some(token.clone());
                state.failure = None;
                state.refused = false;
                Ok(token)
            }
            Err(e) => {
                // The error goes back to the caller, which reports it: here only a detail.
                tracing::info!(error = %e, "access token renewal failed");
                state.current = None;
                state.failure = Some(e.clone_shallow());
                Err(e)
            }
        }
    }

    /// Forgets `token` after a server refused it, unless a newer one replaced it already.
    pub fn reject(&self, token: &Token) {
        let mut state = self.lock();
        if state.current.as_ref().map(|t| t.generation) == Some(token.generation) {
            state.current = None;
            state.refused = true;
        }
    }

    pub fn describe(&self) -> String {
        self.source.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{BoxFuture, Issued};
    use crate::ErrorKind;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    struct Counting {
        calls: Arc<AtomicU32>,
        fail: bool,
    }

    impl TokenSource for Counting {
        fn fetch(&self, _reuse_stored: bool) -> BoxFuture<'_, Result<Issued>> {
            Box::pin(async move {
                let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::task::yield_now().await;
                if self.fail {
                    return Err(Error::new(ErrorKind::Auth, "invalid_grant"));
                }
                Ok(Issued {
                    access_token: SecretString::from(format!("token-{n}")),
                    expires_in: Some(Duration::from_secs(3600)),
                    lifetime: None,
                })
            })
        }
        fn describe(&self) -> String {
            "counting".into()
        }
    }

    fn cache(fail: bool) -> (Arc<TokenCache>, Arc<AtomicU32>) {
        let calls = Arc::new(AtomicU32::new(0));
        let source = Counting {
            calls: calls.clone(),
            fail,
        };
        (
            Arc::new(TokenCache::new(Box::new(source), Duration::from_secs(60))),
            calls,
        )
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_renewal() {
        let (cache, calls) = cache(false);
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.get().await.map(|t| t.generation) })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap(), 1);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn rejecting_a_stale_token_keeps_the_newer_one() {
        let (cache, calls) = cache(false);
        let first = cache.get().await.unwrap();
        cache.reject(&first);
        let second = cache.get().await.unwrap();
        cache.reject(&first);
        assert_eq!(cache.get().await.unwrap().generation, second.generation);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn waiters_share_a_failed_renewal() {
        let (cache, calls) = cache(true);
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.get().await.map(|_| ()) })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap_err().kind(), ErrorKind::Auth);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
