//! The one error type of missive.
//!
//! Every failure carries an [`ErrorKind`] a caller can match on, a message meant for
//! people, and where it applies the file and line it is about. Secrets never enter an
//! error: the code that builds one only ever has names, paths and server replies.

use std::fmt;
use std::path::{Path, PathBuf};

/// What went wrong, coarsely enough to branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// No template of that name (or no example of that index).
    NotFound,
    /// The data does not satisfy the template's JSON Schema; see [`Error::violations`].
    InvalidData,
    /// A template, its front-matter or a schema could not be loaded or compiled.
    Template,
    /// Rendering failed (an undefined value, a failing filter, ...).
    Render,
    /// An address does not parse, or a header value would break the message.
    Address,
    /// The configuration is missing, malformed or contradicts itself.
    Config,
    /// The server or token endpoint refused our credentials.
    Auth,
    /// Delivery failed in a way that may succeed later (4xx, network, timeouts).
    Transient,
    /// Delivery was refused for good (5xx); see [`Error::smtp_code`].
    Permanent,
    /// The message was handed over but the server's answer never came (the reply to
    /// the final "." was lost): it may have been delivered. Not retried blindly; a
    /// resend should keep the Message-ID ([`Error::message_id`]) so that receivers
    /// can tell the copies apart.
    DeliveryUnknown,
    /// A local file could not be read or written.
    Io,
    /// The queue's database failed: unreachable, locked, corrupt, full or refusing
    /// our credentials. Nothing was acknowledged that it did not store.
    Storage,
}

impl ErrorKind {
    fn describe(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::InvalidData => "invalid data",
            ErrorKind::Template => "template error",
            ErrorKind::Render => "render error",
            ErrorKind::Address => "address error",
            ErrorKind::Config => "configuration error",
            ErrorKind::Auth => "authentication error",
            ErrorKind::Transient => "transient delivery failure",
            ErrorKind::Permanent => "permanent delivery failure",
            ErrorKind::DeliveryUnknown => "delivery unknown",
            ErrorKind::Io => "I/O error",
            ErrorKind::Storage => "queue storage error",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// A place in a file, 1-based.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file, as found under the configured folders.
    pub file: PathBuf,
    /// Line, starting at 1.
    pub line: usize,
    /// Column, starting at 1.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// One way in which data fails a template's schema.
///
/// Errors end up in logs, and the data can hold secrets (a reset link carries its
/// token): `Display` and `Debug` give the pointer and the rule only. [`detail`]
/// (Violation::detail) quotes the offending value, for a designer's own screen.
#[derive(Clone, PartialEq, Eq)]
pub struct Violation {
    /// JSON pointer into the data (`""` is the whole document).
    pub pointer: String,
    /// The rule that fails there, without the value: `value is not a "uri"`.
    pub message: String,
    /// The same, quoting the value: `"https://…?token=…" is not a "uri"`. Never put it
    /// in logs.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pointer = if self.pointer.is_empty() {
            "(root)"
        } else {
            &self.pointer
        };
        write!(f, "{pointer}: {}", self.message)
    }
}

impl fmt::Debug for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Violation")
            .field("pointer", &self.pointer)
            .field("message", &self.message)
            .finish_non_exhaustive()
    }
}

/// The error type of every fallible missive operation.
pub struct Error {
    inner: Box<Inner>,
}

struct Inner {
    kind: ErrorKind,
    message: String,
    location: Option<Location>,
    violations: Vec<Violation>,
    smtp_code: Option<u16>,
    message_id: Option<String>,
    /// Retried already where it arose (a token endpoint): a direct send does not
    /// multiply those retries with its own.
    retried: bool,
    /// The least wait before another attempt that the server asked for (`Retry-After`).
    retry_after: Option<std::time::Duration>,
    related: Vec<Error>,
    /// Caused only by another file's failure, which has an error of its own.
    follow_on: bool,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    /// A new error of `kind` with a message for people.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            inner: Box::new(Inner {
                kind,
                message: message.into(),
                location: None,
                violations: Vec::new(),
                smtp_code: None,
                message_id: None,
                retried: false,
                retry_after: None,
                related: Vec::new(),
                follow_on: false,
                source: None,
            }),
        }
    }

    /// Sets the file, line and column (from 1) the error is about.
    pub fn at(mut self, file: impl Into<PathBuf>, line: usize, column: usize) -> Error {
        self.inner.location = Some(Location {
            file: file.into(),
            line: line.max(1),
            column: column.max(1),
        });
        self
    }

    /// Attaches a location only where there is none yet.
    pub(crate) fn or_at(self, file: &Path, line: usize) -> Error {
        if self.inner.location.is_some() {
            self
        } else {
            self.at(file, line, 1)
        }
    }

    pub(crate) fn with_source(
        mut self,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Error {
        self.inner.source = Some(Box::new(source));
        self
    }

    pub(crate) fn with_violations(mut self, violations: Vec<Violation>) -> Error {
        self.inner.violations = violations;
        self
    }

    pub(crate) fn with_smtp_code(mut self, code: u16) -> Error {
        self.inner.smtp_code = Some(code);
        self
    }

    pub(crate) fn retried(mut self) -> Error {
        self.inner.retried = true;
        self
    }

    pub(crate) fn was_retried(&self) -> bool {
        self.inner.retried
    }

    pub(crate) fn with_retry_after(mut self, wait: std::time::Duration) -> Error {
        self.inner.retry_after = Some(wait);
        self
    }

    /// How long the server asked us to wait before trying again (an HTTP
    /// `Retry-After`), for [`ErrorKind::Transient`] failures that said so.
    pub(crate) fn retry_after(&self) -> Option<std::time::Duration> {
        self.inner.retry_after
    }

    pub(crate) fn with_message_id(mut self, message_id: &str) -> Error {
        self.inner.message_id = Some(message_id.to_string());
        self
    }

    /// Adds context after the message, e.g. which example data was used.
    pub(crate) fn note(mut self, note: impl fmt::Display) -> Error {
        self.inner.message = format!("{} ({note})", self.inner.message);
        self
    }

    /// Marks an error caused only by another file's failure: `missive check` reports
    /// that one, not this.
    pub(crate) fn follow_on(mut self) -> Error {
        self.inner.follow_on = true;
        self
    }

    /// Whether this error only follows from another file's failure (see
    /// [`follow_on`](Self::follow_on)).
    pub(crate) fn is_follow_on(&self) -> bool {
        self.inner.follow_on
    }

    /// A copy without the underlying source error (which need not be `Clone`).
    pub(crate) fn clone_shallow(&self) -> Error {
        Error {
            inner: Box::new(Inner {
                kind: self.inner.kind,
                message: self.inner.message.clone(),
                location: self.inner.location.clone(),
                violations: self.inner.violations.clone(),
                smtp_code: self.inner.smtp_code,
                message_id: self.inner.message_id.clone(),
                retried: self.inner.retried,
                retry_after: self.inner.retry_after,
                related: Vec::new(),
                follow_on: self.inner.follow_on,
                source: None,
            }),
        }
    }

    /// Folds a list of problems into one error: the first, with the others related.
    pub(crate) fn from_many(mut errors: Vec<Error>) -> Option<Error> {
        if errors.is_empty() {
            return None;
        }
        let mut first = errors.remove(0);
        first.inner.related.extend(errors);
        Some(first)
    }

    pub(crate) fn io(path: &Path, what: &str, err: std::io::Error) -> Error {
        Error::new(
            ErrorKind::Io,
            format!("cannot {what} {}: {err}", path.display()),
        )
        .at(path, 1, 1)
        .with_source(err)
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The message, without location.
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// The file and line the error is about, where there is one.
    pub fn location(&self) -> Option<&Location> {
        self.inner.location.as_ref()
    }

    /// Every schema violation, for [`ErrorKind::InvalidData`].
    pub fn violations(&self) -> &[Violation] {
        &self.inner.violations
    }

    /// The SMTP reply code, for delivery failures the server answered.
    pub fn smtp_code(&self) -> Option<u16> {
        self.inner.smtp_code
    }

    /// The Message-ID (with angle brackets) of the message a delivery error is about;
    /// a resend after [`ErrorKind::DeliveryUnknown`] should reuse it
    /// (`TemplateMessage::message_id`).
    pub fn message_id(&self) -> Option<&str> {
        self.inner.message_id.as_deref()
    }

    /// Whether retrying the same operation later may succeed. Not for
    /// [`ErrorKind::DeliveryUnknown`]: the first try may have succeeded already.
    pub fn is_retryable(&self) -> bool {
        self.inner.kind == ErrorKind::Transient
    }

    /// Whether the message may have reached the server although this is an error
    /// ([`ErrorKind::DeliveryUnknown`]).
    pub fn may_have_been_delivered(&self) -> bool {
        self.inner.kind == ErrorKind::DeliveryUnknown
    }

    /// This problem followed by every other one found in the same pass (loading a
    /// template set reports all broken files at once).
    pub fn problems(&self) -> impl Iterator<Item = &Error> {
        std::iter::once(self).chain(self.inner.related.iter())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(location) = &self.inner.location {
            write!(f, "{location}: ")?;
        }
        f.write_str(&self.inner.message)?;
        for violation in &self.inner.violations {
            write!(f, "\n  {violation}")?;
        }
        if !self.inner.related.is_empty() {
            write!(f, " (and {} more problems)", self.inner.related.len())?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Error");
        s.field("kind", &self.inner.kind)
            .field("message", &self.inner.message);
        if let Some(location) = &self.inner.location {
            s.field("location", &format_args!("{location}"));
        }
        if !self.inner.violations.is_empty() {
            s.field("violations", &self.inner.violations);
        }
        if let Some(code) = self.inner.smtp_code {
            s.field("smtp_code", &code);
        }
        if let Some(id) = &self.inner.message_id {
            s.field("message_id", id);
        }
        if !self.inner.related.is_empty() {
            s.field("related", &self.inner.related);
        }
        s.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// A TLS failure that no retry can fix (an untrusted or mismatched certificate, no
/// common protocol version) anywhere in `err`'s sources, through any `io::Error` a
/// client library wrapped it in.
pub(crate) fn certificate_problem<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = err.source();
    while let Some(mut err) = current {
        while let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            err = inner;
        }
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return matches!(
                tls,
                rustls::Error::InvalidCertificate(_)
                    | rustls::Error::NoCertificatesPresented
                    | rustls::Error::PeerIncompatible(_)
            )
            .then_some(tls);
        }
        current = err.source();
    }
    None
}

/// `Result` with missive's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_leads_with_location_and_lists_violations() {
        let err = Error::new(ErrorKind::InvalidData, "data for `welcome` is invalid")
            .at("schemas/welcome.schema.json", 3, 0)
            .with_violations(vec![
                Violation {
                    pointer: "/user/email".into(),
                    message: "value is not a \"email\"".into(),
                    detail: "\"x@secret\" is not a \"email\"".into(),
                },
                Violation {
                    pointer: String::new(),
                    message: "\"user\" is a required property".into(),
                    detail: "{} has no \"user\"".into(),
                },
            ]);
        assert_eq!(
            err.to_string(),
            "schemas/welcome.schema.json:3:1: data for `welcome` is invalid\n  \
             /user/email: value is not a \"email\"\n  (root): \"user\" is a required property"
        );
        assert!(!format!("{err:?}").contains("x@secret"), "{err:?}");
        assert_eq!(err.kind(), ErrorKind::InvalidData);
    }

    #[test]
    fn many_problems_fold_into_one() {
        let err = Error::from_many(vec![
            Error::new(ErrorKind::Template, "a"),
            Error::new(ErrorKind::Render, "b"),
        ])
        .expect("two problems");
        assert_eq!(err.problems().count(), 2);
        assert!(err.to_string().ends_with("(and 1 more problems)"));
        assert!(Error::from_many(Vec::new()).is_none());
    }
}
