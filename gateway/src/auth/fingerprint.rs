//! Keyed fingerprints of text that must not be stored as typed: a login
//! name that matches no account may be a password typed into the wrong
//! field. HMAC-SHA256 under a key derived from the gateway's secret: one
//! name always gives one fingerprint, so repeats stay visible in the audit
//! log, yet without the secret nobody can test guesses against it (a plain
//! hash of a short password is found by trying candidates).

use domain::login_attempts::NameFingerprint;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes of the MAC kept: 128 bits, ample to tell names apart.
const KEPT_BYTES: usize = 16;

#[derive(Clone)]
pub struct Fingerprints {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Fingerprints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fingerprints(..)")
    }
}

impl Fingerprints {
    /// Keyed by a key derived from `secret` for this one purpose, so the
    /// fingerprints reveal nothing about the key that signs tokens.
    pub fn from_secret(secret: &[u8]) -> Self {
        let key = Self::mac_with(secret, b"trafficbuster login-name fingerprint v1");
        Self {
            mac: Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes a key of any length"),
        }
    }

    fn mac_with(key: &[u8], message: &[u8]) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
        mac.update(message);
        mac.finalize().into_bytes().to_vec()
    }

    /// The fingerprint of a login name, exactly as typed.
    pub fn of_login_name(&self, name: &str) -> NameFingerprint {
        let mut mac = self.mac.clone();
        mac.update(name.as_bytes());
        let digest = mac.finalize().into_bytes();
        NameFingerprint(hex::encode(&digest[..KEPT_BYTES]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_name_one_fingerprint_and_none_without_the_secret() {
        let a = Fingerprints::from_secret(b"one gateway secret, 32 bytes or more");
        let b = Fingerprints::from_secret(b"another gateway secret, 32 bytes or more");
        let fp = a.of_login_name("hunter2-typed-as-a-name");
        assert_eq!(fp, a.of_login_name("hunter2-typed-as-a-name"));
        assert_eq!(fp.0.len(), 2 * KEPT_BYTES);
        assert!(!fp.0.contains("hunter2"));
        assert_ne!(fp, a.of_login_name("hunter3-typed-as-a-name"));
        // Another key, another fingerprint: the value is useless without it.
        assert_ne!(fp, b.of_login_name("hunter2-typed-as-a-name"));
    }
}
