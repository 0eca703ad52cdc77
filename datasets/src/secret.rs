//! Proxy credentials at rest: a password is a secret while parsed and an AEAD
//! ciphertext (ChaCha20-Poly1305, a random nonce per value) once sealed, so
//! it never reaches a blob, a log or an error message in clear.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use secrecy::{ExposeSecret, SecretBox, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Binds a ciphertext to what it holds, so it cannot pass for another kind of secret.
const AAD: &[u8] = b"trafficbuster proxy password v1";
/// The same for webhooks' signing secrets.
pub const WEBHOOK_SECRET: &[u8] = b"trafficbuster webhook secret v1";

/// The 32-byte key that seals proxy credentials (from the settings).
pub struct DataKey(SecretBox<[u8; 32]>);

impl DataKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        DataKey(SecretBox::new(Box::new(bytes)))
    }

    /// A key written as 64 hex digits or as base64 of 32 bytes.
    pub fn from_text(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(text).map_err(|_| KeyError)?
        } else {
            BASE64.decode(text).map_err(|_| KeyError)?
        };
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| KeyError)?;
        Ok(Self::from_bytes(bytes))
    }

    /// A fresh random key (for a new install, and for tests).
    pub fn generate() -> Result<Self, SealError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|_| SealError)?;
        Ok(Self::from_bytes(bytes))
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(&Key::from(*self.0.expose_secret()))
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey([REDACTED])")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a data key is 32 bytes, written as 64 hex digits or in base64")]
pub struct KeyError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the operating system's random source failed")]
pub struct SealError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the sealed value does not open with this key (wrong key, or altered)")]
pub struct OpenError;

/// A secret sealed with a [`DataKey`]: base64 of nonce, ciphertext and tag.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed(String);

impl Sealed {
    pub fn seal(key: &DataKey, secret: &SecretString) -> Result<Sealed, SealError> {
        Self::seal_as(key, secret, AAD)
    }

    /// Seals a secret of the kind `kind` names (e.g. [`WEBHOOK_SECRET`]):
    /// it opens only as that kind.
    pub fn seal_as(key: &DataKey, secret: &SecretString, kind: &[u8]) -> Result<Sealed, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|_| SealError)?;
        let payload = Payload {
            msg: secret.expose_secret().as_bytes(),
            aad: kind,
        };
        let ciphertext = key
            .cipher()
            .encrypt(&Nonce::from(nonce), payload)
            .map_err(|_| SealError)?;
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&ciphertext);
        Ok(Sealed(BASE64.encode(bytes)))
    }

    /// The secret, for the runner that logs in to the proxy.
    pub fn open(&self, key: &DataKey) -> Result<SecretString, OpenError> {
        self.open_as(key, AAD)
    }

    /// Opens a secret sealed by [`Self::seal_as`] with the same `kind`.
    pub fn open_as(&self, key: &DataKey, kind: &[u8]) -> Result<SecretString, OpenError> {
        let bytes = BASE64.decode(&self.0).map_err(|_| OpenError)?;
        if bytes.len() < NONCE_LEN + TAG_LEN {
            return Err(OpenError);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_from(nonce).map_err(|_| OpenError)?;
        let payload = Payload {
            msg: ciphertext,
            aad: kind,
        };
        let plain = key
            .cipher()
            .decrypt(&nonce, payload)
            .map_err(|_| OpenError)?;
        String::from_utf8(plain)
            .map(SecretString::from)
            .map_err(|_| OpenError)
    }

    /// The base64 text as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Reads stored text back, checking only its shape.
    pub fn from_stored(text: &str) -> Option<Sealed> {
        let bytes = BASE64.decode(text).ok()?;
        (bytes.len() >= NONCE_LEN + TAG_LEN).then(|| Sealed(text.to_owned()))
    }
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sealed(..)")
    }
}

impl Serialize for Sealed {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Sealed {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Sealed::from_stored(&text).ok_or_else(|| {
            serde::de::Error::custom("not a sealed value (base64 of nonce, ciphertext, tag)")
        })
    }
}

/// A proxy password: in clear only between parsing and sealing.
#[derive(Clone)]
pub enum Password {
    Clear(SecretString),
    Sealed(Sealed),
}

impl Password {
    pub fn is_sealed(&self) -> bool {
        matches!(self, Password::Sealed(_))
    }

    /// Seals a clear password (a sealed one stays as it is).
    pub fn seal(&mut self, key: &DataKey) -> Result<(), SealError> {
        if let Password::Clear(secret) = self {
            *self = Password::Sealed(Sealed::seal(key, secret)?);
        }
        Ok(())
    }

    /// The password, whichever form it is in.
    pub fn open(&self, key: &DataKey) -> Result<SecretString, OpenError> {
        match self {
            Password::Clear(secret) => Ok(secret.clone()),
            Password::Sealed(sealed) => sealed.open(key),
        }
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Password::Clear(_) => f.write_str("Password::Clear([REDACTED])"),
            Password::Sealed(_) => f.write_str("Password::Sealed(..)"),
        }
    }
}

/// Equal when both are the same clear secret or the same ciphertext.
impl PartialEq for Password {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Password::Clear(a), Password::Clear(b)) => a.expose_secret() == b.expose_secret(),
            (Password::Sealed(a), Password::Sealed(b)) => a == b,
            _ => false,
        }
    }
}

/// Only a sealed password is ever written.
impl Serialize for Password {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Password::Sealed(sealed) => sealed.serialize(serializer),
            Password::Clear(_) => Err(serde::ser::Error::custom(
                "a password in clear is never written; seal it first",
            )),
        }
    }
}

impl<'de> Deserialize<'de> for Password {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Sealed::deserialize(deserializer).map(Password::Sealed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> DataKey {
        DataKey::from_bytes([7; 32])
    }

    #[test]
    fn a_sealed_secret_opens_with_its_key_only() {
        let sealed = Sealed::seal(&key(), &SecretString::from("hunter2")).unwrap();
        assert!(!sealed.as_str().contains("hunter2"));
        assert_eq!(sealed.open(&key()).unwrap().expose_secret(), "hunter2");
        assert_eq!(
            sealed.open(&DataKey::from_bytes([8; 32])).unwrap_err(),
            OpenError
        );
    }

    #[test]
    fn each_seal_uses_a_fresh_nonce() {
        let secret = SecretString::from("same");
        assert_ne!(
            Sealed::seal(&key(), &secret).unwrap(),
            Sealed::seal(&key(), &secret).unwrap()
        );
    }

    #[test]
    fn an_altered_ciphertext_does_not_open() {
        let sealed = Sealed::seal(&key(), &SecretString::from("hunter2")).unwrap();
        let mut bytes = BASE64.decode(sealed.as_str()).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let altered = Sealed::from_stored(&BASE64.encode(bytes)).unwrap();
        assert_eq!(altered.open(&key()).unwrap_err(), OpenError);
    }

    #[test]
    fn keys_read_from_hex_or_base64_and_never_show() {
        let hex_key = "07".repeat(32);
        let b64_key = BASE64.encode([7u8; 32]);
        let sealed = Sealed::seal(&DataKey::from_text(&hex_key).unwrap(), &"x".into()).unwrap();
        assert!(sealed.open(&DataKey::from_text(&b64_key).unwrap()).is_ok());
        assert_eq!(DataKey::from_text("0707").unwrap_err(), KeyError);
        assert_eq!(format!("{:?}", key()), "DataKey([REDACTED])");
        let clear = Password::Clear("hunter2".into());
        assert!(!format!("{clear:?}").contains("hunter2"));
        assert!(serde_json::to_string(&clear).is_err());
    }
}
