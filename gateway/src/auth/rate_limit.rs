//! Login rate limits: per client IP and per account, so neither one address
//! nor a spread of addresses can guess passwords quickly. In memory, per
//! gateway; a refused attempt says when to try again.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};

/// Attempts per minute allowed from one client address.
pub const PER_IP_PER_MINUTE: u32 = 20;
/// Attempts per minute allowed against one account.
pub const PER_ACCOUNT_PER_MINUTE: u32 = 5;
/// Keys kept before idle ones are pruned.
const PRUNE_ABOVE: usize = 10_000;

type Keyed<K, C> = RateLimiter<K, HashMapStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// Refused: try again after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many login attempts from {scope}; retry after {} s", retry_after.as_secs().max(1))]
pub struct RateLimited {
    pub scope: &'static str,
    pub retry_after: Duration,
}

pub struct LoginLimiter<C: Clock = DefaultClock> {
    by_ip: Keyed<IpAddr, C>,
    by_account: Keyed<String, C>,
    clock: C,
}

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN))
}

impl LoginLimiter<DefaultClock> {
    pub fn new() -> Self {
        Self::with_clock(
            PER_IP_PER_MINUTE,
            PER_ACCOUNT_PER_MINUTE,
            DefaultClock::default(),
        )
    }
}

impl Default for LoginLimiter<DefaultClock> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: Clock + Clone> LoginLimiter<C> {
    pub fn with_clock(per_ip: u32, per_account: u32, clock: C) -> Self {
        Self {
            by_ip: RateLimiter::new(
                per_minute(per_ip),
                HashMapStateStore::default(),
                clock.clone(),
            ),
            by_account: RateLimiter::new(
                per_minute(per_account),
                HashMapStateStore::default(),
                clock.clone(),
            ),
            clock,
        }
    }

    /// Counts one login attempt; refuses it if either limit is spent.
    pub fn check(&self, ip: Option<IpAddr>, username: &str) -> Result<(), RateLimited> {
        if let Some(ip) = ip
            && let Err(not_until) = self.by_ip.check_key(&ip)
        {
            return Err(RateLimited {
                scope: "this address",
                retry_after: not_until.wait_time_from(self.clock.now()),
            });
        }
        let account = username.trim().to_ascii_lowercase();
        if let Err(not_until) = self.by_account.check_key(&account) {
            return Err(RateLimited {
                scope: "for this account",
                retry_after: not_until.wait_time_from(self.clock.now()),
            });
        }
        if self.by_account.len() > PRUNE_ABOVE || self.by_ip.len() > PRUNE_ABOVE {
            self.by_account.retain_recent();
            self.by_ip.retain_recent();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn ip(n: u8) -> Option<IpAddr> {
        Some(IpAddr::from([127, 0, 0, n]))
    }

    #[test]
    fn the_sixth_attempt_on_one_account_within_a_minute_waits() {
        let clock = FakeRelativeClock::default();
        let limiter = LoginLimiter::with_clock(20, 5, clock.clone());
        for n in 0..5 {
            limiter.check(ip(n), "Ada").unwrap();
        }
        let refused = limiter.check(ip(9), "ada").unwrap_err();
        assert_eq!(refused.scope, "for this account");
        assert!(
            refused.retry_after > Duration::ZERO && refused.retry_after <= Duration::from_secs(12)
        );
        clock.advance(refused.retry_after);
        limiter.check(ip(9), "ada").unwrap();
        // Other accounts are not affected.
        limiter.check(ip(9), "bob").unwrap();
    }

    #[test]
    fn the_twenty_first_attempt_from_one_address_waits() {
        let clock = FakeRelativeClock::default();
        let limiter = LoginLimiter::with_clock(20, 5, clock);
        for n in 0..20 {
            limiter.check(ip(1), &format!("user{n}")).unwrap();
        }
        let refused = limiter.check(ip(1), "someone-else").unwrap_err();
        assert_eq!(refused.scope, "this address");
        assert!(
            refused
                .to_string()
                .starts_with("too many login attempts from this address; retry after")
        );
        limiter.check(ip(2), "someone-else").unwrap();
    }
}
