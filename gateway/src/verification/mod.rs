//! Domain verification: is the claiming account's token published on the
//! domain, in the well-known file or in the DNS TXT record? The gateway's
//! one reach out to sites its users name, so it goes through the SSRF
//! guard (`guard`), its own resolver (`dns`) and a bounded fetch (`fetch`).
//! It only finds out; the target domain's decider records what it found.

pub mod dns;
pub mod fetch;
pub mod guard;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use domain::DomainName;
use domain::target_domain::{FailureReason, VerificationMethod, VerificationToken};

use governor::clock::{Clock, DefaultClock};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::rate_limit::{Keyed, PRUNE_ABOVE, RateLimited, keyed};
use crate::verification::dns::{Dns, DnsSetupError};
use crate::verification::fetch::{FetchConfig, Ports};

/// Where the TXT record goes, before the domain.
pub const DNS_LABEL: &str = "_trafficbuster";

/// Longest one method's check may take, lookups included.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// The well-known file's largest accepted size: a token and some room.
const MAX_BODY: usize = 4 * 1024;
/// Same-host redirects followed (e.g. http → https, a trailing slash).
const MAX_REDIRECTS: u8 = 5;
/// Checks one account may start a minute: each reaches out to a site
/// for up to two [`CHECK_TIMEOUT`]s, at the gateway's expense.
pub const CHECKS_PER_ACCOUNT_PER_MINUTE: u32 = 10;
/// Checks in flight on one gateway, whoever asked.
pub const MAX_CHECKS_IN_FLIGHT: usize = 32;

/// How the gateway verifies domains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerificationSettings {
    /// Lets the check connect to loopback, private, link-local and other
    /// non-public addresses: for tests and private networks only.
    pub allow_private_addresses: bool,
    /// The DNS server (`ip:port`) for lookups; the system's when `None`.
    pub dns_server: Option<SocketAddr>,
    /// How long a successful check counts.
    pub valid_for: time::Duration,
    /// The ports the well-known fetch uses (443 and 80 unless a test or a
    /// non-standard set-up says otherwise).
    pub ports: Ports,
}

impl Default for VerificationSettings {
    fn default() -> Self {
        Self {
            allow_private_addresses: false,
            dns_server: None,
            valid_for: time::Duration::days(30),
            ports: Ports::default(),
        }
    }
}

/// Why a check did not find the token: the reason recorded, and what the
/// check saw (never the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckFailed {
    pub reason: FailureReason,
    pub detail: String,
}

impl CheckFailed {
    pub fn new(reason: FailureReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }

    /// Our side could not make `what` (not the site's doing).
    fn other(what: &str, e: impl fmt::Display) -> Self {
        Self::new(
            FailureReason::Other(format!("{what} could not be made")),
            e.to_string(),
        )
    }
}

/// The verifier could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Dns(#[from] DnsSetupError),
    #[error("TLS for domain verification: {0}")]
    Tls(#[from] rustls::Error),
}

/// Checks tokens on domains: one per gateway, shared by every request.
pub struct Verifier {
    dns: Dns,
    fetch: FetchConfig,
    settings: VerificationSettings,
    per_account: Keyed<String, DefaultClock>,
    in_flight: Arc<Semaphore>,
}

/// A check's place among those in flight; it frees it when dropped.
pub struct CheckPermit {
    _held: OwnedSemaphorePermit,
}

impl Verifier {
    pub fn new(settings: VerificationSettings) -> Result<Self, SetupError> {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        if settings.allow_private_addresses {
            tracing::warn!(
                "domain verification may connect to loopback and private addresses \
                 (verification_allow_private_addresses): for tests and private networks only"
            );
        }
        Ok(Self {
            dns: Dns::new(settings.dns_server)?,
            fetch: FetchConfig {
                ports: settings.ports,
                tls: Arc::new(tls),
                max_body: MAX_BODY,
                max_redirects: MAX_REDIRECTS,
            },
            settings,
            per_account: keyed(CHECKS_PER_ACCOUNT_PER_MINUTE, &DefaultClock::default()),
            in_flight: Arc::new(Semaphore::new(MAX_CHECKS_IN_FLIGHT)),
        })
    }

    /// Lets `asker` start a check, or says when to try again: no account
    /// may turn the gateway into a request cannon, and all together may
    /// not tie up more than [`MAX_CHECKS_IN_FLIGHT`] connections.
    pub fn admit(&self, asker: &str) -> Result<CheckPermit, RateLimited> {
        if let Err(not_until) = self.per_account.check_key(&asker.to_owned()) {
            return Err(RateLimited {
                scope: "domain checks for this account",
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            });
        }
        if self.per_account.len() > PRUNE_ABOVE {
            self.per_account.retain_recent();
        }
        let permit = Arc::clone(&self.in_flight)
            .try_acquire_owned()
            .map_err(|_| RateLimited {
                scope: "domain checks in flight on this gateway",
                retry_after: Duration::from_secs(1),
            })?;
        Ok(CheckPermit { _held: permit })
    }

    /// The addresses `host` may be reached at by the gateway's outbound
    /// requests (webhooks too): resolved by the verifier's resolver and
    /// checked by the guard, unless private addresses are allowed.
    pub(crate) async fn reachable(&self, host: &url::Host<&str>) -> Result<Vec<IpAddr>, String> {
        let addrs = match host {
            url::Host::Ipv4(ip) => vec![IpAddr::V4(*ip)],
            url::Host::Ipv6(ip) => vec![IpAddr::V6(*ip)],
            url::Host::Domain(name) => {
                let name = DomainName::parse(name).map_err(|e| e.to_string())?;
                self.dns
                    .addresses(&name)
                    .await
                    .map_err(|f| format!("{name}: {}", f.detail))?
            }
        };
        guard::check(&addrs, self.settings.allow_private_addresses).map_err(|refused| {
            format!("{refused}: the gateway does not send to non-public addresses")
        })?;
        Ok(addrs)
    }

    /// TLS for outbound requests: the web's roots, HTTP/1.1.
    pub(crate) fn tls(&self) -> Arc<rustls::ClientConfig> {
        self.fetch.tls.clone()
    }

    /// How long a successful check counts.
    pub fn valid_for(&self) -> time::Duration {
        self.settings.valid_for
    }

    /// Looks for `token` on `domain` by `method`; without one, in the
    /// well-known file, then in the TXT record. Says which method found
    /// it, or which failure tells the owner most (with the other's too).
    pub async fn verify(
        &self,
        domain: &DomainName,
        token: &VerificationToken,
        method: Option<VerificationMethod>,
    ) -> (VerificationMethod, Result<(), CheckFailed>) {
        use VerificationMethod::{DnsTxt, WellKnown};
        if let Some(method) = method {
            return (method, self.check(domain, token, method).await);
        }
        let Err(file) = self.check(domain, token, WellKnown).await else {
            return (WellKnown, Ok(()));
        };
        let Err(txt) = self.check(domain, token, DnsTxt).await else {
            return (DnsTxt, Ok(()));
        };
        let ((method, mut chosen), (other_method, other)) =
            if telling(&txt.reason) > telling(&file.reason) {
                ((DnsTxt, txt), (WellKnown, file))
            } else {
                ((WellKnown, file), (DnsTxt, txt))
            };
        chosen.detail = format!(
            "{}; the check of {other_method} also failed: {} ({})",
            chosen.detail, other.reason, other.detail
        );
        (method, Err(chosen))
    }

    /// One method's check, within [`CHECK_TIMEOUT`].
    async fn check(
        &self,
        domain: &DomainName,
        token: &VerificationToken,
        method: VerificationMethod,
    ) -> Result<(), CheckFailed> {
        let work = async {
            match method {
                VerificationMethod::WellKnown => self.well_known(domain, token).await,
                VerificationMethod::DnsTxt => self.dns_txt(domain, token).await,
            }
        };
        tokio::time::timeout(CHECK_TIMEOUT, work)
            .await
            .unwrap_or_else(|_| {
                Err(CheckFailed::new(
                    FailureReason::Timeout,
                    format!("no result within {} s", CHECK_TIMEOUT.as_secs()),
                ))
            })
    }

    async fn well_known(
        &self,
        domain: &DomainName,
        token: &VerificationToken,
    ) -> Result<(), CheckFailed> {
        let addrs = self.dns.addresses(domain).await?;
        guard::check(&addrs, self.settings.allow_private_addresses).map_err(|refused| {
            CheckFailed::new(
                FailureReason::RefusedAddress,
                format!(
                    "{domain} resolves to {}, which is {}",
                    refused.addr, refused.kind
                ),
            )
        })?;
        let fetched = fetch::well_known(domain, &addrs, &self.fetch).await?;
        let body = String::from_utf8_lossy(&fetched.body);
        let body = body.trim();
        if body.contains(token.as_str()) {
            return Ok(());
        }
        let saw = if body.is_empty() {
            "an empty file".to_owned()
        } else {
            format!("{} bytes without the token", body.len())
        };
        Err(CheckFailed::new(
            FailureReason::WrongToken,
            format!("{} serves {saw}", fetched.url),
        ))
    }

    async fn dns_txt(
        &self,
        domain: &DomainName,
        token: &VerificationToken,
    ) -> Result<(), CheckFailed> {
        let name = format!("{DNS_LABEL}.{domain}");
        let records = self.dns.txt(&name).await?;
        if records.iter().any(|r| r.contains(token.as_str())) {
            return Ok(());
        }
        Err(CheckFailed::new(
            FailureReason::WrongToken,
            format!(
                "{name} has {} TXT record(s), none with the token",
                records.len()
            ),
        ))
    }
}

/// How much a failure tells the owner, to choose which to record when
/// both methods failed: a token found but not theirs says most, then what
/// kept a check from reading what is there, then the site or the lookup
/// being down, and "nothing there" least.
fn telling(reason: &FailureReason) -> u8 {
    match reason {
        FailureReason::WrongToken => 6,
        FailureReason::RedirectToOtherHost
        | FailureReason::TooLarge
        | FailureReason::TlsError
        | FailureReason::RefusedAddress => 5,
        FailureReason::Other(_) => 4,
        FailureReason::Timeout | FailureReason::Unreachable => 3,
        FailureReason::DnsError => 2,
        FailureReason::NotFound => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_gets_its_own_quota_of_checks_a_minute() {
        let verifier = Verifier::new(VerificationSettings::default()).unwrap();
        for _ in 0..CHECKS_PER_ACCOUNT_PER_MINUTE {
            verifier.admit("alice").expect("within alice's quota");
        }
        let refused = verifier
            .admit("alice")
            .err()
            .expect("alice's quota is spent");
        assert_eq!(refused.scope, "domain checks for this account");
        assert!(refused.retry_after > Duration::ZERO);
        verifier.admit("bob").expect("bob has a quota of his own");
    }

    #[test]
    fn checks_in_flight_are_capped_until_one_ends() {
        let verifier = Verifier::new(VerificationSettings::default()).unwrap();
        let held: Vec<CheckPermit> = (0..MAX_CHECKS_IN_FLIGHT)
            .map(|i| verifier.admit(&format!("user{i}")).expect("a free place"))
            .collect();
        let refused = verifier.admit("late").err().expect("every place is taken");
        assert_eq!(refused.scope, "domain checks in flight on this gateway");
        drop(held);
        verifier
            .admit("late")
            .expect("places free up when checks end");
    }
}
