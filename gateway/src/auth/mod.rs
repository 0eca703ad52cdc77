//! Authentication: password hashing and tokens.

pub mod password;
pub mod sessions;
pub mod tokens;
