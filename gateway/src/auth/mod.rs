//! Authentication: password hashing and tokens.

pub mod fingerprint;
pub mod password;
pub mod rate_limit;
pub mod sessions;
pub mod tokens;
