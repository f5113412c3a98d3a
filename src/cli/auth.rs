//! `missive auth google|microsoft|generic` signs in once and stores a refresh token;
//! `missive auth status` says what is configured, without secrets.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use missive::auth::{self, LoginOptions, OAuthConfig, Provider};
use missive::{Config, Result, TransportConfig};

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Sign in with a Google account (Gmail or Google Workspace user).
    Google(LoginArgs),
    /// Sign in with a Microsoft 365 / Outlook account.
    Microsoft(LoginArgs),
    /// Sign in with any OAuth2 provider (give --auth-url and --token-url).
    Generic(LoginArgs),
    /// Show which credential the config uses and when its access token expires.
    Status {
        /// Also ask the provider for a new access token and say what it answered.
        #[arg(long)]
        check: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// OAuth2 client id (default: the config's `client_id`).
    #[arg(long, value_name = "ID")]
    client_id: Option<String>,
    /// Environment variable holding the client secret, when the client has one.
    #[arg(long, value_name = "VAR")]
    client_secret_env: Option<String>,
    /// The mailbox that will send (default: the config's `auth.user`).
    #[arg(long, value_name = "EMAIL")]
    user: Option<String>,
    /// Microsoft tenant id or domain (default: the config's, else `common`).
    #[arg(long, value_name = "TENANT")]
    tenant: Option<String>,
    /// Scope to ask for instead of the preset's (repeatable).
    #[arg(long = "scope", value_name = "SCOPE")]
    scopes: Vec<String>,
    /// Authorization endpoint (generic provider).
    #[arg(long, value_name = "URL")]
    auth_url: Option<String>,
    /// Token endpoint (generic provider).
    #[arg(long, value_name = "URL")]
    token_url: Option<String>,
    /// Device authorization endpoint (generic provider, with --device).
    #[arg(long, value_name = "URL")]
    device_url: Option<String>,
    /// The redirect URI registered with the provider, e.g.
    /// http://127.0.0.1:8765/callback (default: http://127.0.0.1:<random port>/).
    #[arg(long, value_name = "URL")]
    redirect_uri: Option<String>,
    /// Where to store the refresh token (default: the config's, else
    /// ~/.config/missive/credentials.json).
    #[arg(long, value_name = "FILE")]
    credentials: Option<PathBuf>,
    /// Use the device-code flow (for machines without a browser).
    #[arg(long)]
    device: bool,
}

/// The transport's token settings and user, when the config has them: SMTP's
/// `auth.oauth` and `auth.user`; the API transports' `oauth` with their narrow scopes
/// (`gmail.send`, Graph's `Mail.Send`); the first such member of a failover.
fn configured(config: &Config) -> (Option<OAuthConfig>, Option<String>, Option<PathBuf>) {
    fn of(transport: &TransportConfig) -> (Option<OAuthConfig>, Option<String>, Option<PathBuf>) {
        match transport {
            TransportConfig::Smtp(smtp) => (
                smtp.auth.oauth.clone(),
                smtp.auth.user.clone(),
                smtp.ca_file.clone(),
            ),
            TransportConfig::Gmail(gmail) => (
                gmail.token_settings().ok(),
                gmail.user.clone().filter(|u| u != "me"),
                gmail.ca_file.clone(),
            ),
            TransportConfig::Graph(graph) => (
                graph.token_settings().ok(),
                Some(graph.user.clone()).filter(|u| u != "me"),
                graph.ca_file.clone(),
            ),
            TransportConfig::Failover { transports, .. } => transports
                .iter()
                .map(of)
                .find(|found| found.0.is_some())
                .unwrap_or((None, None, None)),
            _ => (None, None, None),
        }
    }
    of(&config.transport)
}

pub async fn run(config: &Config, command: AuthCommand) -> Result<ExitCode> {
    let (provider, args) = match command {
        AuthCommand::Status { check } => return status(config, check).await,
        AuthCommand::Google(args) => (Provider::Google, args),
        AuthCommand::Microsoft(args) => (Provider::Microsoft, args),
        AuthCommand::Generic(args) => (Provider::Generic, args),
    };
    let (oauth, user, ca_file) = configured(config);
    // The config's settings apply when they are for the same provider.
    let mut oauth = oauth
        .filter(|o| o.provider == provider)
        .unwrap_or_else(|| OAuthConfig::new(provider));
    oauth.client_id = args.client_id.or(oauth.client_id);
    oauth.client_secret_env = args.client_secret_env.or(oauth.client_secret_env);
    oauth.tenant = args.tenant.or(oauth.tenant);
    oauth.auth_url = args.auth_url.or(oauth.auth_url);
    oauth.token_url = args.token_url.or(oauth.token_url);
    oauth.device_url = args.device_url.or(oauth.device_url);
    oauth.redirect_uri = args.redirect_uri.or(oauth.redirect_uri);
    oauth.credentials_file = args.credentials.or(oauth.credentials_file);
    if !args.scopes.is_empty() {
        oauth.scopes = Some(args.scopes);
    }
    let options = LoginOptions {
        oauth,
        user: args.user.or(user),
        device: args.device,
        ca_file,
    };
    let path = auth::login(&options, |what| eprintln!("{what}")).await?;
    println!(
        "signed in; refresh token stored in {} (mode 0600)",
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

async fn status(config: &Config, check: bool) -> Result<ExitCode> {
    let (Some(oauth), user, ca_file) = configured(config) else {
        println!(
            "no OAuth2 credential configured: the transport is not gmail, graph or SMTP with \
             `auth.oauth`"
        );
        return Ok(ExitCode::FAILURE);
    };
    let status = auth::status(&oauth, user.as_deref())?;
    println!("credential: {}", status.credential);
    if let Some(user) = &status.user {
        println!("user:       {user}");
    }
    if let Some(client_id) = &status.client_id {
        println!("client id:  {client_id}");
    }
    if let Some(updated) = status.updated_at.filter(|t| *t > 0) {
        println!("saved:      {}", format_time(updated));
    }
    let now = now();
    match status.access_token_expires_at {
        Some(at) if at > now => println!(
            "access token: expires {} (in {} min)",
            format_time(at),
            (at - now) / 60
        ),
        Some(at) => println!(
            "access token: expired {}; the next send renews it",
            format_time(at)
        ),
        None => println!("access token: none issued yet; the first send gets one"),
    }
    if let Some(problem) = &status.problem {
        println!("problem:    {problem}");
        return Ok(ExitCode::FAILURE);
    }
    if !check {
        // Without asking, "ready" means complete, not honoured: say so.
        println!(
            "ready:      {} (not checked with the provider: --check asks it)",
            if status.ready { "yes" } else { "no" }
        );
        return Ok(if status.ready {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    match auth::check(&oauth, user.as_deref(), ca_file.as_deref()).await {
        Ok(answer) => {
            match answer.expires_in {
                Some(valid) => println!(
                    "check:      the provider issued an access token, valid {} s",
                    valid.as_secs()
                ),
                None => println!("check:      the provider issued an access token"),
            }
            println!("ready:      yes");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("check:      {}", e.message());
            println!("ready:      no");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC`.
fn format_time(secs: u64) -> String {
    let ms = i64::try_from(secs).unwrap_or(i64::MAX).saturating_mul(1000);
    // `Timestamp` writes RFC 3339 (`…T…Z`); people read this one.
    missive::Timestamp::from_unix_millis(ms)
        .to_string()
        .replacen('T', " ", 1)
        .replacen('Z', " UTC", 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_shown_in_utc() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_time(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(format_time(951_782_400), "2000-02-29 00:00:00 UTC");
    }
}
