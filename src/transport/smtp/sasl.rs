//! SMTP authentication: OAuth2 bearer tokens (XOAUTH2, OAUTHBEARER) with the
//! providers' error challenges, and passwords (PLAIN, LOGIN).

use std::fmt;

use base64::Engine as _;
use lettre::transport::smtp::response::Response;
use secrecy::{ExposeSecret, SecretString};

use crate::error::{Error, ErrorKind};
use crate::transport::smtp::conn::{Endpoint, Failure, Session, Stage};
use crate::transport::smtp::settings::Mechanism;

/// A line sent as is. Used for SASL exchanges that lettre has no command for; lettre
/// is built without its `tracing` feature, so it never logs what we write.
struct Line<'a>(&'a str);

impl fmt::Display for Line<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\r\n", self.0)
    }
}

impl Endpoint {
    /// Authenticates with an OAuth2 bearer token. `Ok(Some(..))` is the server's
    /// refusal of the token (the caller renews it and tries once more).
    pub async fn oauth(
        &self,
        session: &mut Session,
        mechanism: Mechanism,
        user: &str,
        token: &SecretString,
    ) -> Result<Option<Rejection>, Failure> {
        let conn = &mut session.smtp;
        let b64 = base64::engine::general_purpose::STANDARD;
        let (initial, dummy) = match mechanism {
            Mechanism::Oauthbearer => {
                let user = user.replace('=', "=3D").replace(',', "=2C");
                (
                    SecretString::from(b64.encode(format!(
                        "n,a={user},\x01host={}\x01port={}\x01auth=Bearer {}\x01\x01",
                        self.host,
                        self.port,
                        token.expose_secret()
                    ))),
                    // RFC 7628 3.2.3: a failed exchange is closed with a single %x01.
                    "AQ==",
                )
            }
            _ => (
                SecretString::from(b64.encode(format!(
                    "user={user}\x01auth=Bearer {}\x01\x01",
                    token.expose_secret()
                ))),
                // Gmail's XOAUTH2 error challenge is answered with an empty line.
                "",
            ),
        };
        let command = SecretString::from(format!(
            "AUTH {} {}",
            mechanism.name(),
            initial.expose_secret()
        ));
        let first = self
            .step(Stage::Auth, conn.command(Line(command.expose_secret())))
            .await;
        match first {
            Ok(response) if response.has_code(334) => {
                let challenge = decode_challenge(&response);
                match self.step(Stage::Auth, conn.command(Line(dummy))).await {
                    Err(Failure::Reply { code, text, .. }) if code >= 500 => Ok(Some(Rejection {
                        code,
                        text,
                        challenge,
                    })),
                    Err(other) => Err(other),
                    Ok(response) => Err(Failure::Fatal(Error::new(
                        ErrorKind::Auth,
                        format!(
                            "unexpected answer to the {} error challenge: {}",
                            mechanism.name(),
                            response.code()
                        ),
                    ))),
                }
            }
            Ok(_) => Ok(None),
            Err(Failure::Reply { code, text, .. }) if matches!(code, 530 | 534 | 535) => {
                Ok(Some(Rejection {
                    code,
                    text,
                    challenge: None,
                }))
            }
            Err(Failure::Reply { code, text, .. }) if code >= 500 => Err(Failure::Fatal(
                Error::new(
                    ErrorKind::Auth,
                    format!(
                        "the server refused AUTH {} ({code} {text}); is the mechanism enabled \
                         for this account?",
                        mechanism.name()
                    ),
                )
                .with_smtp_code(code),
            )),
            Err(other) => Err(other),
        }
    }

    /// Authenticates with user name and password (PLAIN or LOGIN).
    pub async fn password(
        &self,
        session: &mut Session,
        mechanism: Mechanism,
        user: &str,
        password: &SecretString,
    ) -> Result<(), Failure> {
        let conn = &mut session.smtp;
        use lettre::transport::smtp::authentication::{Credentials, Mechanism as M};
        let lettre_mechanism = match mechanism {
            Mechanism::Login => M::Login,
            _ => M::Plain,
        };
        if !conn.server_info().supports_auth_mechanism(lettre_mechanism) {
            return Err(Failure::Fatal(Error::new(
                ErrorKind::Auth,
                format!("the server does not offer AUTH {}", mechanism.name()),
            )));
        }
        let credentials = Credentials::new(user.to_string(), password.expose_secret().to_string());
        match self
            .step(Stage::Auth, conn.auth(&[lettre_mechanism], &credentials))
            .await
        {
            Ok(_) => Ok(()),
            Err(Failure::Reply { code, text, .. }) if code >= 500 => Err(Failure::Fatal(
                Error::new(
                    ErrorKind::Auth,
                    format!("the server refused the password of {user}: {code} {text}"),
                )
                .with_smtp_code(code),
            )),
            Err(other) => Err(other),
        }
    }
}

/// A server's refusal of an access token.
#[derive(Debug)]
pub(crate) struct Rejection {
    pub code: u16,
    pub text: String,
    /// The decoded JSON of an XOAUTH2/OAUTHBEARER error challenge, e.g.
    /// `{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}`.
    pub challenge: Option<String>,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.text)?;
        if let Some(challenge) = &self.challenge {
            write!(f, " (challenge: {challenge})")?;
        }
        Ok(())
    }
}

/// The JSON status in a `334 <base64>` error challenge, as compact text.
fn decode_challenge(response: &Response) -> Option<String> {
    let encoded: String = response.message().collect::<Vec<_>>().join("");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(json) => Some(json.to_string()),
        Err(_) => Some(text.chars().filter(|c| !c.is_control()).take(300).collect()),
    }
}
