//! Password-guessing limits: logins per client IP and per account, and
//! password changes per account, so neither one address, nor a spread of
//! addresses, nor a stolen access token can guess passwords quickly. In
//! memory, per gateway; a refused attempt says when to try again.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};

/// Login attempts per minute allowed from one client address, by default.
pub const PER_IP_PER_MINUTE: u32 = 20;
/// Login attempts per minute allowed against one account, by default; also
/// the password changes allowed per account.
pub const PER_ACCOUNT_PER_MINUTE: u32 = 5;

/// Attempts allowed per minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimits {
    pub per_address: u32,
    pub per_account: u32,
}

impl Default for LoginLimits {
    fn default() -> Self {
        Self {
            per_address: PER_IP_PER_MINUTE,
            per_account: PER_ACCOUNT_PER_MINUTE,
        }
    }
}
/// Keys kept before idle ones are pruned.
pub(crate) const PRUNE_ABOVE: usize = 10_000;

pub(crate) type Keyed<K, C> =
    RateLimiter<K, HashMapStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// Refused: try again after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many {scope}; retry after {} s", retry_after.as_secs().max(1))]
pub struct RateLimited {
    /// What there were too many of, e.g. "login attempts for this account".
    pub scope: &'static str,
    pub retry_after: Duration,
}

pub struct LoginLimiter<C: Clock = DefaultClock> {
    by_ip: Keyed<IpAddr, C>,
    by_account: Keyed<String, C>,
    /// Apart from logins: a session's own password change must not be
    /// refused because someone else is guessing at its login.
    password_changes: Keyed<String, C>,
    clock: C,
    limits: LoginLimits,
}

pub(crate) fn keyed<K: std::hash::Hash + Eq + Clone, C: Clock + Clone>(
    per_minute: u32,
    clock: &C,
) -> Keyed<K, C> {
    let quota = Quota::per_minute(NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN));
    RateLimiter::new(quota, HashMapStateStore::default(), clock.clone())
}

impl LoginLimiter<DefaultClock> {
    pub fn new(limits: LoginLimits) -> Self {
        Self::with_clock(limits, DefaultClock::default())
    }
}

impl<C: Clock + Clone> LoginLimiter<C> {
    pub fn with_clock(limits: LoginLimits, clock: C) -> Self {
        Self {
            by_ip: keyed(limits.per_address, &clock),
            by_account: keyed(limits.per_account, &clock),
            password_changes: keyed(limits.per_account, &clock),
            clock,
            limits,
        }
    }

    /// The limits it applies.
    pub fn limits(&self) -> LoginLimits {
        self.limits
    }

    fn refused(
        &self,
        scope: &'static str,
        not_until: governor::NotUntil<C::Instant>,
    ) -> RateLimited {
        RateLimited {
            scope,
            retry_after: not_until.wait_time_from(self.clock.now()),
        }
    }

    /// Counts one login attempt; refuses it if either limit is spent.
    pub fn check(&self, ip: Option<IpAddr>, username: &str) -> Result<(), RateLimited> {
        if let Some(ip) = ip
            && let Err(not_until) = self.by_ip.check_key(&ip)
        {
            return Err(self.refused("login attempts from this address", not_until));
        }
        let account = username.trim().to_ascii_lowercase();
        if let Err(not_until) = self.by_account.check_key(&account) {
            return Err(self.refused("login attempts for this account", not_until));
        }
        if self.by_account.len() > PRUNE_ABOVE || self.by_ip.len() > PRUNE_ABOVE {
            self.by_account.retain_recent();
            self.by_ip.retain_recent();
        }
        Ok(())
    }

    /// Counts one password change (a guess at the current password, if the
    /// session was stolen); refuses it if the account's limit is spent.
    pub fn check_password_change(&self, username: &str) -> Result<(), RateLimited> {
        let account = username.trim().to_ascii_lowercase();
        if let Err(not_until) = self.password_changes.check_key(&account) {
            return Err(self.refused("password changes for this account", not_until));
        }
        if self.password_changes.len() > PRUNE_ABOVE {
            self.password_changes.retain_recent();
        }
        Ok(())
    }
}

/// Refused when the store records `limit` failed logins or more from `ip`
/// in the last minute, through any gateway sharing it (the
/// `login_failures` view). A view that cannot be read refuses nothing: the
/// gateway's own limit still holds.
pub async fn address_failures(
    views: &projections::ViewStore,
    ip: IpAddr,
    limit: u32,
    now: time::OffsetDateTime,
) -> Result<(), RateLimited> {
    let window = time::Duration::minutes(1);
    let rows = match views
        .query(
            projections::login_failures_view::SINCE,
            vec![
                projections::SqlValue::from(ip.to_string()),
                projections::SqlValue::micros(now - window),
            ],
        )
        .await
    {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "cannot count an address's failed logins");
            return Ok(());
        }
    };
    let (failures, oldest) = rows.first().map_or((0, None), |row| {
        (
            row.get::<i64>("failures").unwrap_or(0),
            row.get::<Option<i64>>("oldest").ok().flatten(),
        )
    });
    if failures < i64::from(limit) {
        return Ok(());
    }
    let free_at = oldest.map_or(now + window, |micros| {
        crate::graphql::from_micros(micros) + window
    });
    Err(RateLimited {
        scope: "failed logins from this address",
        retry_after: (free_at - now).try_into().unwrap_or(Duration::from_secs(1)),
    })
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
        let limiter = LoginLimiter::with_clock(LoginLimits::default(), clock.clone());
        for n in 0..5 {
            limiter.check(ip(n), "Ada").unwrap();
        }
        let refused = limiter.check(ip(9), "ada").unwrap_err();
        assert_eq!(refused.scope, "login attempts for this account");
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
        let limiter = LoginLimiter::with_clock(LoginLimits::default(), clock);
        for n in 0..20 {
            limiter.check(ip(1), &format!("user{n}")).unwrap();
        }
        let refused = limiter.check(ip(1), "someone-else").unwrap_err();
        assert_eq!(refused.scope, "login attempts from this address");
        assert!(
            refused
                .to_string()
                .starts_with("too many login attempts from this address; retry after")
        );
        limiter.check(ip(2), "someone-else").unwrap();
    }

    #[test]
    fn the_limits_are_settings() {
        let limiter = LoginLimiter::with_clock(
            LoginLimits {
                per_address: 2,
                per_account: 1,
            },
            FakeRelativeClock::default(),
        );
        limiter.check(ip(1), "ada").unwrap();
        assert!(limiter.check(ip(2), "ada").is_err(), "one per account");
        limiter.check(ip(1), "bob").unwrap();
        assert!(limiter.check(ip(1), "carol").is_err(), "two per address");
    }

    #[test]
    fn the_sixth_password_change_on_one_account_within_a_minute_waits_apart_from_logins() {
        let clock = FakeRelativeClock::default();
        let limiter = LoginLimiter::with_clock(LoginLimits::default(), clock.clone());
        for _ in 0..5 {
            limiter.check(ip(1), "ada").unwrap();
        }
        for _ in 0..5 {
            limiter.check_password_change("ada").unwrap();
        }
        let refused = limiter.check_password_change("Ada").unwrap_err();
        assert_eq!(refused.scope, "password changes for this account");
        limiter.check_password_change("bob").unwrap();
        clock.advance(refused.retry_after);
        limiter.check_password_change("ada").unwrap();
    }
}
