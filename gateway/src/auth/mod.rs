//! Authentication: password hashing and tokens.

pub mod password;
pub mod tokens;
