//! GraphQL errors with a stable machine code in `extensions.code`.

use async_graphql::{Error, ErrorExtensionValues, ErrorExtensions};

use crate::auth::password::PasswordError;
use crate::auth::rate_limit::RateLimited;
use crate::auth::sessions::AuthError;
use crate::command_handler::CommandError;

/// The codes clients may rely on (DESIGN.md, "The gateway").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Unauthenticated,
    Forbidden,
    FeatureNotLicensed,
    RateLimited,
    Conflict,
    Validation,
    NotFound,
    SafeMode,
    Internal,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Unauthenticated => "UNAUTHENTICATED",
            Code::Forbidden => "FORBIDDEN",
            Code::FeatureNotLicensed => "FEATURE_NOT_LICENSED",
            Code::RateLimited => "RATE_LIMITED",
            Code::Conflict => "CONFLICT",
            Code::Validation => "VALIDATION",
            Code::NotFound => "NOT_FOUND",
            Code::SafeMode => "SAFE_MODE",
            Code::Internal => "INTERNAL",
        }
    }
}

/// An error with `extensions.code`.
pub fn error(code: Code, message: impl Into<String>) -> Error {
    Error::new(message).extend_with(|_, e| e.set("code", code.as_str()))
}

/// Unexpected failures: logged in full, told to the client briefly.
pub fn internal(what: &str, e: &dyn std::fmt::Display) -> Error {
    tracing::error!(error = %e, "{what}");
    error(
        Code::Internal,
        format!("{what}; the gateway log has the details"),
    )
}

pub fn rate_limited(r: RateLimited) -> Error {
    let secs = r.retry_after.as_secs().max(1);
    Error::new(r.to_string()).extend_with(|_, e| {
        e.set("code", Code::RateLimited.as_str());
        e.set("retryAfter", secs);
    })
}

/// Bad input: VALIDATION, naming the `field` and saying why.
pub fn invalid(field: &str, why: impl std::fmt::Display) -> Error {
    error(Code::Validation, format!("{field}: {why}"))
}

/// A password that could not be hashed or checked; `field` names the input.
pub fn password(field: &str, e: PasswordError) -> Error {
    match e {
        PasswordError::Busy(r) => rate_limited(r),
        PasswordError::TooShort | PasswordError::TooLong => invalid(field, e),
        PasswordError::BadHash(_) | PasswordError::Hashing(_) => {
            internal("cannot check the password", &e)
        }
    }
}

/// A decider's error knows its code. Each aggregate's GraphQL face
/// implements it, and [`command`] requires it, so a new aggregate's
/// refusals cannot reach a client without one.
pub trait Coded: std::error::Error {
    fn code(&self) -> Code;

    /// What else a client needs to show the refusal at the right field
    /// (beside `code`): e.g. the feature or limit a licence refused.
    fn extend(&self, _extensions: &mut ErrorExtensionValues) {}
}

/// A refused command, with the decider error's own code, message and
/// extensions.
pub fn refused(e: &impl Coded) -> Error {
    Error::new(e.to_string()).extend_with(|_, x| {
        x.set("code", e.code().as_str());
        e.extend(x);
    })
}

/// A command that did not go through: the decider's refusal (its code), a
/// conflict, or an internal failure (logged, told briefly).
pub fn command<E: Coded>(e: CommandError<E>) -> Error {
    match &e {
        CommandError::Rejected(inner) => refused(inner),
        CommandError::Conflict { .. } => error(Code::Conflict, e.to_string()),
        _ => internal("the command could not be carried out", &e),
    }
}

pub fn auth(e: AuthError) -> Error {
    match e {
        AuthError::WrongCredentials | AuthError::Token(_) | AuthError::SessionEnded(_) => {
            error(Code::Unauthenticated, e.to_string())
        }
        AuthError::Account(a) => refused(&a),
        AuthError::RateLimited(r) => rate_limited(r),
        AuthError::Internal(_) => internal("authentication failed", &e),
    }
}
