//! The webhook signature: `X-TrafficBuster-Signature: t=<unix seconds>,v1=<hex>`
//! where the hex is HMAC-SHA256, keyed by the webhook's secret, of
//! `"<t>.<body>"` — the scheme Stripe and others use, so receivers verify
//! it with common code, and refuse a delivery signed too long ago (a replay).

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const HEADER: &str = "x-trafficbuster-signature";
/// How old a signature a receiver should accept, in seconds.
pub const TOLERANCE_S: i64 = 60;

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], t: i64, body: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length.
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The header's value for `body` sent at `t`.
pub fn sign(secret: &[u8], t: i64, body: &[u8]) -> String {
    let digest = mac(secret, t, body).finalize().into_bytes();
    format!("t={t},v1={}", hex::encode(digest))
}

/// Why a receiver refuses a delivery.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the signature header is not t=<seconds>,v1=<hex>")]
    Malformed,
    #[error("signed {age_s} s from now; more than {TOLERANCE_S} s is refused as a replay")]
    TooOld { age_s: i64 },
    #[error("no v1 signature matches the body")]
    Mismatch,
}

/// What a receiver does with a delivery, as the README shows it: the
/// header must be recent and one of its `v1` signatures must match.
pub fn verify(secret: &[u8], header: &str, body: &[u8], now: i64) -> Result<(), Refusal> {
    let mut t = None;
    let mut signatures = vec![];
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => t = Some(value.parse::<i64>().map_err(|_| Refusal::Malformed)?),
            Some(("v1", value)) => {
                signatures.push(hex::decode(value).map_err(|_| Refusal::Malformed)?)
            }
            _ => {}
        }
    }
    let t = t.ok_or(Refusal::Malformed)?;
    if signatures.is_empty() {
        return Err(Refusal::Malformed);
    }
    if (now - t).abs() > TOLERANCE_S {
        return Err(Refusal::TooOld { age_s: now - t });
    }
    // Constant-time comparison, as `verify_slice` does.
    signatures
        .iter()
        .any(|s| mac(secret, t, body).verify_slice(s).is_ok())
        .then_some(())
        .ok_or(Refusal::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_until_it_is_too_old_or_anything_changed() {
        let header = sign(b"whsec_test", 1_700_000_000, br#"{"a":1}"#);
        assert!(header.starts_with("t=1700000000,v1="));
        assert_eq!(
            verify(b"whsec_test", &header, br#"{"a":1}"#, 1_700_000_060),
            Ok(())
        );
        assert_eq!(
            verify(b"whsec_test", &header, br#"{"a":1}"#, 1_700_000_061),
            Err(Refusal::TooOld { age_s: 61 })
        );
        assert_eq!(
            verify(b"whsec_test", &header, br#"{"a":2}"#, 1_700_000_000),
            Err(Refusal::Mismatch)
        );
        assert_eq!(
            verify(b"other", &header, br#"{"a":1}"#, 1_700_000_000),
            Err(Refusal::Mismatch)
        );
        assert_eq!(
            verify(b"whsec_test", "v1=00", b"", 0),
            Err(Refusal::Malformed)
        );
    }

    #[test]
    fn it_is_hmac_sha256_of_t_dot_body_as_a_receiver_computes_it() {
        // Python: hmac.new(b"key", b"42.body", hashlib.sha256).hexdigest()
        assert_eq!(
            sign(b"key", 42, b"body"),
            "t=42,v1=b62a8bcafebc3dda9022b563e771f54e72a1eef3fd12e7bd2713899387cc26f8"
        );
    }
}
