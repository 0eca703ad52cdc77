//! Authentication: password hashing now; tokens and sessions join it here.

pub mod password;
