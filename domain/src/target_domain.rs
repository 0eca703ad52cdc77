//! A target domain: the consent to send traffic to it. Stream
//! `target-<domain>`.
//!
//! Consent is per account: each account that claims the domain gets its own
//! token, and only its own verified claim lets its jobs send traffic there,
//! so one account's proof never authorizes another. A super-admin's
//! allow-listing, with a stated reason, covers every account. The gateway
//! makes the token and runs the check (I/O); this module records the
//! outcome and answers, purely, whether traffic may go.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::account::Username;
use crate::decider::{Actor, Context, Decider, Role};
use crate::domain_name::DomainName;
use crate::envelope::{StreamId, StreamIdError};
use crate::reason::{Reason, one_line};

/// How much of a failed check's detail is kept, in characters.
const MAX_DETAIL: usize = 300;

/// The domain's stream: `target-<domain>`.
pub fn stream(domain: &DomainName) -> Result<StreamId, StreamIdError> {
    StreamId::for_aggregate("target", domain)
}

/// What an account publishes on the domain to prove control of it, made by
/// the gateway from the OS's randomness. Published on the site by design,
/// so not a secret; still kept out of audit lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VerificationToken(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a verification token is 32 to 128 characters of A-Z, a-z, 0-9, '-' or '_'")]
pub struct VerificationTokenError;

impl VerificationToken {
    /// 32 to 128 URL- and TXT-safe characters, so the owner can publish it
    /// unchanged in a file or a DNS record.
    pub fn parse(raw: &str) -> Result<Self, VerificationTokenError> {
        if crate::account::is_token_text(raw) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(VerificationTokenError)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for VerificationToken {
    type Error = VerificationTokenError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<VerificationToken> for String {
    fn from(t: VerificationToken) -> String {
        t.0
    }
}

/// Where the owner published the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerificationMethod {
    /// `http(s)://DOMAIN/.well-known/trafficbuster-verification.txt`
    WellKnown,
    /// A TXT record at `_trafficbuster.DOMAIN`.
    DnsTxt,
}

impl fmt::Display for VerificationMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VerificationMethod::WellKnown => "the well-known file",
            VerificationMethod::DnsTxt => "a DNS TXT record",
        })
    }
}

/// Why a check failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    NotFound,
    WrongToken,
    Timeout,
    TlsError,
    DnsError,
    RedirectToOtherHost,
    /// No connection could be made to the site (nothing listening, or
    /// no route to it).
    Unreachable,
    /// The name resolved to an address the check may not connect to
    /// (loopback, private, link-local, metadata).
    RefusedAddress,
    TooLarge,
    Other(String),
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureReason::NotFound => f.write_str("the token was not found"),
            FailureReason::WrongToken => f.write_str("a different token was found"),
            FailureReason::Timeout => f.write_str("the check timed out"),
            FailureReason::TlsError => f.write_str("TLS failed"),
            FailureReason::DnsError => f.write_str("the DNS lookup failed"),
            FailureReason::RedirectToOtherHost => f.write_str("it redirected to another host"),
            FailureReason::Unreachable => f.write_str("the site could not be reached"),
            FailureReason::RefusedAddress => {
                f.write_str("the name resolves to an address the check may not reach")
            }
            FailureReason::TooLarge => f.write_str("the answer was too large"),
            FailureReason::Other(why) => f.write_str(why),
        }
    }
}

/// What the gateway's check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerificationOutcome {
    /// The account's token was there; it counts until `valid_until`.
    Verified { valid_until: OffsetDateTime },
    /// It was not; `detail` says what the check saw (never the token).
    Failed {
        reason: FailureReason,
        detail: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainClaimed {
    pub account: Username,
    pub token: VerificationToken,
    pub by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainVerified {
    pub account: Username,
    pub method: VerificationMethod,
    #[serde(with = "time::serde::rfc3339")]
    pub valid_until: OffsetDateTime,
    pub by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainVerificationFailed {
    pub account: Username,
    pub method: VerificationMethod,
    pub reason: FailureReason,
    pub detail: String,
    pub by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainAllowListed {
    pub by: String,
    pub reason: Reason,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainRemovedFromAllowList {
    pub by: String,
    pub reason: Reason,
}

crate::event_set! {
    /// What happens to the consent for a target domain.
    pub enum TargetDomainEvent {
        DomainClaimed(DomainClaimed) = 1,
        DomainVerified(DomainVerified) = 1,
        DomainVerificationFailed(DomainVerificationFailed) = 1,
        DomainAllowListed(DomainAllowListed) = 1,
        DomainRemovedFromAllowList(DomainRemovedFromAllowList) = 1,
    }
}

impl crate::registry::Summary for TargetDomainEvent {
    // The token and the check's detail stay out: a summary says who did
    // what, and a remote server wrote the detail.
    fn summary(&self, stream: &StreamId) -> String {
        let domain = stream
            .as_str()
            .strip_prefix("target-")
            .unwrap_or(stream.as_str());
        match self {
            Self::DomainClaimed(c) => format!("{domain} claimed for {} by {}", c.account, c.by),
            Self::DomainVerified(v) => format!(
                "{domain} verified for {} through {} by {}, valid until {}",
                v.account, v.method, v.by, v.valid_until
            ),
            Self::DomainVerificationFailed(f) => format!(
                "verification of {domain} for {} through {} by {} failed: {}",
                f.account, f.method, f.by, f.reason
            ),
            Self::DomainAllowListed(a) => {
                format!("{domain} allow-listed by {}: {}", a.by, a.reason)
            }
            Self::DomainRemovedFromAllowList(r) => {
                format!(
                    "{domain} removed from the allow-list by {}: {}",
                    r.by, r.reason
                )
            }
        }
    }
}

/// Commands on a target domain.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetDomainCommand {
    /// The account asks to prove control, with a fresh token from the
    /// gateway. A claim the account already holds keeps its token.
    Claim {
        account: Username,
        token: VerificationToken,
    },
    /// The gateway checked the account's token on the domain.
    RecordVerification {
        account: Username,
        method: VerificationMethod,
        outcome: VerificationOutcome,
    },
    /// Consent for every account without verification (a staging host).
    AllowList {
        reason: Reason,
    },
    RemoveFromAllowList {
        reason: Reason,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetDomainError {
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error("{0} has not claimed this domain; claim it first to get a verification token")]
    NotClaimed(Username),
    #[error("a verification must be valid until a time after now, and {0} is not")]
    ValidityNotInFuture(OffsetDateTime),
}

/// A check that failed, kept until a later one succeeds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub method: VerificationMethod,
    pub reason: FailureReason,
    pub detail: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the check of {} failed: {}", self.method, self.reason)?;
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        Ok(())
    }
}

/// A successful check and how long it counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    pub method: VerificationMethod,
    #[serde(with = "time::serde::rfc3339")]
    pub valid_until: OffsetDateTime,
}

/// One account's claim on the domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub token: VerificationToken,
    /// The latest successful check, even once expired (to say when it did).
    pub verified: Option<Verification>,
    /// The latest failed check since the latest success.
    pub last_failure: Option<Failure>,
}

/// A super-admin's allow-listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowListing {
    pub by: String,
    pub reason: Reason,
}

/// Every account's claim, and the allow-listing if any.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetDomainState {
    pub claims: BTreeMap<Username, Claim>,
    pub allow_listing: Option<AllowListing>,
}

pub struct TargetDomain;

inventory::submit! { crate::replay::Replayer::of::<TargetDomain>() }

impl Decider for TargetDomain {
    const SNAPSHOT_KIND: &'static str = "target_domain/1";
    type State = TargetDomainState;
    type Command = TargetDomainCommand;
    type Event = TargetDomainEvent;
    type Error = TargetDomainError;

    fn evolve(mut state: TargetDomainState, event: &TargetDomainEvent) -> TargetDomainState {
        use TargetDomainEvent as E;
        match event {
            E::DomainClaimed(e) => {
                state.claims.insert(
                    e.account.clone(),
                    Claim {
                        token: e.token.clone(),
                        verified: None,
                        last_failure: None,
                    },
                );
            }
            E::DomainVerified(e) => {
                if let Some(claim) = state.claims.get_mut(&e.account) {
                    claim.verified = Some(Verification {
                        method: e.method,
                        valid_until: e.valid_until,
                    });
                    claim.last_failure = None;
                }
            }
            E::DomainVerificationFailed(e) => {
                // An earlier success still counts until it expires: a site
                // down for a minute does not stop jobs already consented.
                if let Some(claim) = state.claims.get_mut(&e.account) {
                    claim.last_failure = Some(Failure {
                        method: e.method,
                        reason: e.reason.clone(),
                        detail: e.detail.clone(),
                    });
                }
            }
            E::DomainAllowListed(e) => {
                state.allow_listing = Some(AllowListing {
                    by: e.by.clone(),
                    reason: e.reason.clone(),
                });
            }
            E::DomainRemovedFromAllowList(_) => state.allow_listing = None,
        }
        state
    }

    fn decide(
        state: &TargetDomainState,
        command: TargetDomainCommand,
        ctx: &Context,
    ) -> Result<Vec<TargetDomainEvent>, TargetDomainError> {
        use TargetDomainCommand as C;
        match command {
            C::Claim { account, token } => claim(state, account, token, ctx),
            C::RecordVerification {
                account,
                method,
                outcome,
            } => record_verification(state, account, method, outcome, ctx),
            C::AllowList { reason } => {
                require_super_admin(ctx)?;
                if state.allow_listing.is_some() {
                    return Ok(vec![]);
                }
                Ok(vec![TargetDomainEvent::DomainAllowListed(
                    DomainAllowListed {
                        by: ctx.actor.name(),
                        reason,
                    },
                )])
            }
            C::RemoveFromAllowList { reason } => {
                require_super_admin(ctx)?;
                if state.allow_listing.is_none() {
                    return Ok(vec![]);
                }
                Ok(vec![TargetDomainEvent::DomainRemovedFromAllowList(
                    DomainRemovedFromAllowList {
                        by: ctx.actor.name(),
                        reason,
                    },
                )])
            }
        }
    }
}

fn require_super_admin(ctx: &Context) -> Result<(), TargetDomainError> {
    if ctx.actor.has(Role::SuperAdmin) {
        Ok(())
    } else {
        Err(TargetDomainError::Forbidden(
            "only a super-admin allow-lists a domain or removes it from the allow-list",
        ))
    }
}

fn claim(
    state: &TargetDomainState,
    account: Username,
    token: VerificationToken,
    ctx: &Context,
) -> Result<Vec<TargetDomainEvent>, TargetDomainError> {
    if !ctx.actor.acts_for(account.as_str()) {
        return Err(TargetDomainError::Forbidden(
            "a domain is claimed by the account itself or by an admin for it",
        ));
    }
    // A repeated claim keeps the token the owner may already have
    // published (or be publishing), so a retried request cannot void it.
    if state.claims.contains_key(&account) {
        return Ok(vec![]);
    }
    Ok(vec![TargetDomainEvent::DomainClaimed(DomainClaimed {
        account,
        token,
        by: ctx.actor.name(),
    })])
}

fn record_verification(
    state: &TargetDomainState,
    account: Username,
    method: VerificationMethod,
    outcome: VerificationOutcome,
    ctx: &Context,
) -> Result<Vec<TargetDomainEvent>, TargetDomainError> {
    token_to_check(state, &account, &ctx.actor)?;
    let by = ctx.actor.name();
    let event = match outcome {
        VerificationOutcome::Verified { valid_until } => {
            if valid_until <= ctx.now {
                return Err(TargetDomainError::ValidityNotInFuture(valid_until));
            }
            TargetDomainEvent::DomainVerified(DomainVerified {
                account,
                method,
                valid_until,
                by,
            })
        }
        VerificationOutcome::Failed { reason, detail } => {
            // Both come from what a remote server answered: one bounded line.
            let reason = match reason {
                FailureReason::Other(why) => FailureReason::Other(one_line(&why, MAX_DETAIL)),
                known => known,
            };
            TargetDomainEvent::DomainVerificationFailed(DomainVerificationFailed {
                account,
                method,
                reason,
                detail: one_line(&detail, MAX_DETAIL),
                by,
            })
        }
    };
    Ok(vec![event])
}

/// The token to look for when `actor` asks to verify the domain for
/// `account`: the account's own claim's, asked for by the account or an
/// admin for it. The gateway asks before it reaches out to the site, so
/// nobody sets off a check whose result they could not record.
pub fn token_to_check<'a>(
    state: &'a TargetDomainState,
    account: &Username,
    actor: &Actor,
) -> Result<&'a VerificationToken, TargetDomainError> {
    if !actor.acts_for(account.as_str()) {
        return Err(TargetDomainError::Forbidden(
            "a domain's verification is asked for by the claiming account or by an admin for it",
        ));
    }
    state
        .claims
        .get(account)
        .map(|claim| &claim.token)
        .ok_or_else(|| TargetDomainError::NotClaimed(account.clone()))
}

/// Why traffic for an account may go to a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Consent {
    /// `domain` (the target or a parent) is allow-listed.
    AllowListed {
        domain: DomainName,
        listing: AllowListing,
    },
    /// The account verified `domain` (the target or a parent).
    Verified {
        domain: DomainName,
        verification: Verification,
    },
}

/// Why traffic for `account` may not go to `domain`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{account} has no consent to send traffic to {domain}: {why}")]
pub struct NoConsent {
    pub domain: DomainName,
    pub account: Username,
    pub why: NoConsentWhy,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoConsentWhy {
    #[error("the account has not claimed it; claim it and publish the verification token")]
    NotClaimed,
    #[error("it is claimed but not verified yet{}", since_failure(.last_failure))]
    Unverified { last_failure: Option<Failure> },
    #[error("its verification expired at {at}; verify it again{}", since_failure(.last_failure))]
    Expired {
        at: OffsetDateTime,
        last_failure: Option<Failure>,
    },
}

fn since_failure(failure: &Option<Failure>) -> String {
    failure
        .as_ref()
        .map(|f| format!("; {f}"))
        .unwrap_or_default()
}

/// May traffic for `account` go to `domain` at `now`, judging by this
/// domain's own state only? Allow-listing, or the account's own
/// unexpired verification, consents.
pub fn consent_for(
    domain: &DomainName,
    state: &TargetDomainState,
    account: &Username,
    now: OffsetDateTime,
) -> Result<Consent, NoConsent> {
    let refuse = |why| NoConsent {
        domain: domain.clone(),
        account: account.clone(),
        why,
    };
    if let Some(listing) = &state.allow_listing {
        return Ok(Consent::AllowListed {
            domain: domain.clone(),
            listing: listing.clone(),
        });
    }
    let claim = state
        .claims
        .get(account)
        .ok_or_else(|| refuse(NoConsentWhy::NotClaimed))?;
    let last_failure = claim.last_failure.clone();
    match &claim.verified {
        Some(v) if now < v.valid_until => Ok(Consent::Verified {
            domain: domain.clone(),
            verification: v.clone(),
        }),
        Some(v) => Err(refuse(NoConsentWhy::Expired {
            at: v.valid_until,
            last_failure,
        })),
        None => Err(refuse(NoConsentWhy::Unverified { last_failure })),
    }
}

/// May traffic for `account` go to `domain`, consented for itself or
/// through a parent (a consent covers subdomains)? `state_of` gives each
/// name's state as the gateway loaded it (`None`: nothing recorded); the
/// nearest name that consents wins. A refusal names the nearest name with
/// any history for the account, as that is the one to fix, else `domain`.
pub fn consent_covering<'a>(
    domain: &DomainName,
    account: &Username,
    now: OffsetDateTime,
    state_of: impl Fn(&DomainName) -> Option<&'a TargetDomainState>,
) -> Result<Consent, NoConsent> {
    let empty = TargetDomainState::default();
    let consent =
        |name: &DomainName| consent_for(name, state_of(name).unwrap_or(&empty), account, now);
    let mut refusal = match consent(domain) {
        Ok(consent) => return Ok(consent),
        Err(refusal) => refusal,
    };
    for parent in domain.parents() {
        match consent(&parent) {
            Ok(consent) => return Ok(consent),
            Err(parents)
                if refusal.why == NoConsentWhy::NotClaimed
                    && parents.why != NoConsentWhy::NotClaimed =>
            {
                refusal = parents;
            }
            Err(_) => {}
        }
    }
    Err(refusal)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use time::Duration;
    use uuid::Uuid;

    use super::*;
    use crate::decider::Actor;
    use crate::registry::Summary;
    use crate::spec::Spec;

    fn now() -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + Duration::days(20_000)
    }

    fn user(name: &str) -> Username {
        Username::parse(name).unwrap()
    }

    fn as_account(name: &str, role: Role) -> Context {
        Context::new(
            now(),
            Actor::Account {
                account_id: Uuid::nil(),
                username: name.into(),
                roles: BTreeSet::from([role]),
            },
        )
    }

    fn token(n: char) -> VerificationToken {
        VerificationToken::parse(&n.to_string().repeat(64)).unwrap()
    }

    fn reason(s: &str) -> Reason {
        Reason::parse(s).unwrap()
    }

    fn claimed(account: &str, t: char) -> TargetDomainEvent {
        TargetDomainEvent::DomainClaimed(DomainClaimed {
            account: user(account),
            token: token(t),
            by: account.into(),
        })
    }

    fn verified(account: &str, until: OffsetDateTime) -> TargetDomainEvent {
        TargetDomainEvent::DomainVerified(DomainVerified {
            account: user(account),
            method: VerificationMethod::WellKnown,
            valid_until: until,
            by: account.into(),
        })
    }

    fn failed(account: &str, reason: FailureReason) -> TargetDomainEvent {
        TargetDomainEvent::DomainVerificationFailed(DomainVerificationFailed {
            account: user(account),
            method: VerificationMethod::DnsTxt,
            reason,
            detail: "no TXT record".into(),
            by: account.into(),
        })
    }

    fn allow_listed() -> TargetDomainEvent {
        TargetDomainEvent::DomainAllowListed(DomainAllowListed {
            by: "root".into(),
            reason: reason("our staging host"),
        })
    }

    fn claim(account: &str, t: char) -> TargetDomainCommand {
        TargetDomainCommand::Claim {
            account: user(account),
            token: token(t),
        }
    }

    fn record(account: &str, outcome: VerificationOutcome) -> TargetDomainCommand {
        TargetDomainCommand::RecordVerification {
            account: user(account),
            method: VerificationMethod::WellKnown,
            outcome,
        }
    }

    fn in_a_day() -> VerificationOutcome {
        VerificationOutcome::Verified {
            valid_until: now() + Duration::days(1),
        }
    }

    fn name(s: &str) -> DomainName {
        DomainName::parse(s).unwrap()
    }

    #[test]
    fn the_stream_is_named_for_the_domain_and_fits_the_longest_name() {
        assert_eq!(
            stream(&name("Bücher.example")).unwrap().as_str(),
            "target-xn--bcher-kva.example"
        );
        let longest = name(&["a".repeat(63).as_str(); 4].join(".")[2..]);
        assert!(stream(&longest).is_ok());
    }

    #[test]
    fn tokens_are_long_and_safe_to_publish() {
        assert!(VerificationToken::parse(&"a1-_".repeat(8)).is_ok());
        for bad in ["short", &"a".repeat(129), &format!("{} x", "a".repeat(40))] {
            assert_eq!(VerificationToken::parse(bad), Err(VerificationTokenError));
        }
    }

    #[test]
    fn an_account_claims_a_domain_with_its_own_token() {
        let state = Spec::<TargetDomain>::given([])
            .in_context(as_account("ada", Role::User))
            .when(claim("ada", 'a'))
            .then([claimed("ada", 'a')]);
        assert_eq!(state.claims[&user("ada")].token, token('a'));
    }

    #[test]
    fn a_second_account_gets_its_own_claim_beside_the_first() {
        let state = Spec::<TargetDomain>::given([claimed("ada", 'a')])
            .in_context(as_account("bob", Role::User))
            .when(claim("bob", 'b'))
            .then([claimed("bob", 'b')]);
        assert_eq!(state.claims[&user("ada")].token, token('a'));
        assert_eq!(state.claims[&user("bob")].token, token('b'));
    }

    #[test]
    fn claiming_again_keeps_the_first_token_whether_verified_or_not() {
        for history in [
            vec![claimed("ada", 'a')],
            vec![
                claimed("ada", 'a'),
                verified("ada", now() + Duration::days(1)),
            ],
        ] {
            let state = Spec::<TargetDomain>::given(history)
                .in_context(as_account("ada", Role::User))
                .when(claim("ada", 'z'))
                .then([]);
            assert_eq!(state.claims[&user("ada")].token, token('a'));
        }
    }

    #[test]
    fn a_user_cannot_claim_for_another_account_but_an_admin_can() {
        Spec::<TargetDomain>::given([])
            .in_context(as_account("bob", Role::User))
            .when(claim("ada", 'a'))
            .then_err(|e| matches!(e, TargetDomainError::Forbidden(_)));
        Spec::<TargetDomain>::given([])
            .in_context(as_account("eve", Role::Auditor))
            .when(claim("ada", 'a'))
            .then_err(|e| matches!(e, TargetDomainError::Forbidden(_)));
        Spec::<TargetDomain>::given([])
            .in_context(as_account("root", Role::Admin))
            .when(claim("ada", 'a'))
            .then([TargetDomainEvent::DomainClaimed(DomainClaimed {
                account: user("ada"),
                token: token('a'),
                by: "root".into(),
            })]);
    }

    #[test]
    fn a_found_token_verifies_the_domain_for_that_account_until_the_given_time() {
        let until = now() + Duration::days(1);
        let state = Spec::<TargetDomain>::given([claimed("ada", 'a')])
            .in_context(as_account("ada", Role::User))
            .when(record("ada", in_a_day()))
            .then([verified("ada", until)]);
        assert_eq!(
            state.claims[&user("ada")].verified,
            Some(Verification {
                method: VerificationMethod::WellKnown,
                valid_until: until
            })
        );
    }

    #[test]
    fn a_verification_already_over_is_refused() {
        Spec::<TargetDomain>::given([claimed("ada", 'a')])
            .in_context(as_account("ada", Role::User))
            .when(record(
                "ada",
                VerificationOutcome::Verified { valid_until: now() },
            ))
            .then_err(|e| *e == TargetDomainError::ValidityNotInFuture(now()));
    }

    #[test]
    fn a_check_for_an_account_without_a_claim_is_refused() {
        // Bob's claim does not let Ada verify.
        Spec::<TargetDomain>::given([claimed("bob", 'b')])
            .in_context(as_account("ada", Role::User))
            .when(record("ada", in_a_day()))
            .then_err(|e| *e == TargetDomainError::NotClaimed(user("ada")));
        Spec::<TargetDomain>::given([claimed("ada", 'a')])
            .in_context(as_account("bob", Role::User))
            .when(record("ada", in_a_day()))
            .then_err(|e| matches!(e, TargetDomainError::Forbidden(_)));
    }

    #[test]
    fn the_token_to_check_is_the_accounts_own_asked_for_by_it_or_an_admin() {
        let state = TargetDomain::fold(&[claimed("ada", 'a'), claimed("bob", 'b')]);
        let check = |who: &str, role, account: &str| {
            token_to_check(&state, &user(account), &as_account(who, role).actor).cloned()
        };
        assert_eq!(check("ada", Role::User, "ada"), Ok(token('a')));
        assert_eq!(check("root", Role::Admin, "bob"), Ok(token('b')));
        assert!(matches!(
            check("ada", Role::User, "bob"),
            Err(TargetDomainError::Forbidden(_))
        ));
        assert_eq!(
            check("root", Role::Admin, "carl"),
            Err(TargetDomainError::NotClaimed(user("carl")))
        );
    }

    #[test]
    fn a_failed_check_is_recorded_and_keeps_an_earlier_verification() {
        let until = now() + Duration::hours(1);
        let state = Spec::<TargetDomain>::given([claimed("ada", 'a'), verified("ada", until)])
            .when(record(
                "ada",
                VerificationOutcome::Failed {
                    reason: FailureReason::Timeout,
                    detail: "no answer in 10 s".into(),
                },
            ))
            .then([TargetDomainEvent::DomainVerificationFailed(
                DomainVerificationFailed {
                    account: user("ada"),
                    method: VerificationMethod::WellKnown,
                    reason: FailureReason::Timeout,
                    detail: "no answer in 10 s".into(),
                    by: "system".into(),
                },
            )]);
        let ada = &state.claims[&user("ada")];
        assert_eq!(ada.verified.as_ref().unwrap().valid_until, until);
        assert_eq!(
            ada.last_failure.as_ref().unwrap().reason,
            FailureReason::Timeout
        );
        assert!(consent_for(&name("example.com"), &state, &user("ada"), now()).is_ok());
    }

    #[test]
    fn what_a_remote_server_said_is_recorded_as_one_bounded_line() {
        let long = format!("HTTP 404\r\nX-Forged: yes\n{}", "x".repeat(1000));
        Spec::<TargetDomain>::given([claimed("ada", 'a')])
            .when(record(
                "ada",
                VerificationOutcome::Failed {
                    reason: FailureReason::Other(long.clone()),
                    detail: long.clone(),
                },
            ))
            .then([TargetDomainEvent::DomainVerificationFailed(
                DomainVerificationFailed {
                    account: user("ada"),
                    method: VerificationMethod::WellKnown,
                    reason: FailureReason::Other(one_line(&long, MAX_DETAIL)),
                    detail: one_line(&long, MAX_DETAIL),
                    by: "system".into(),
                },
            )]);
        assert!(!one_line(&long, MAX_DETAIL).contains('\n'));
    }

    #[test]
    fn a_later_success_clears_the_last_failure() {
        let state = TargetDomain::fold(&[
            claimed("ada", 'a'),
            failed("ada", FailureReason::NotFound),
            verified("ada", now() + Duration::days(1)),
        ]);
        assert_eq!(state.claims[&user("ada")].last_failure, None);
    }

    #[test]
    fn only_a_super_admin_allow_lists_a_domain_with_a_reason() {
        for role in [Role::User, Role::Admin, Role::Auditor] {
            Spec::<TargetDomain>::given([])
                .in_context(as_account("root", role))
                .when(TargetDomainCommand::AllowList {
                    reason: reason("our staging host"),
                })
                .then_err(|e| matches!(e, TargetDomainError::Forbidden(_)));
        }
        let state = Spec::<TargetDomain>::given([])
            .in_context(as_account("root", Role::SuperAdmin))
            .when(TargetDomainCommand::AllowList {
                reason: reason("our staging host"),
            })
            .then([allow_listed()]);
        assert!(state.allow_listing.is_some());
    }

    #[test]
    fn allow_listing_twice_or_removing_what_is_not_listed_records_nothing() {
        Spec::<TargetDomain>::given([allow_listed()])
            .in_context(as_account("root", Role::SuperAdmin))
            .when(TargetDomainCommand::AllowList {
                reason: reason("again"),
            })
            .then([]);
        Spec::<TargetDomain>::given([])
            .in_context(as_account("root", Role::SuperAdmin))
            .when(TargetDomainCommand::RemoveFromAllowList {
                reason: reason("done"),
            })
            .then([]);
    }

    #[test]
    fn only_a_super_admin_removes_a_domain_from_the_allow_list_with_a_reason() {
        Spec::<TargetDomain>::given([allow_listed()])
            .in_context(as_account("root", Role::Admin))
            .when(TargetDomainCommand::RemoveFromAllowList {
                reason: reason("staging is gone"),
            })
            .then_err(|e| matches!(e, TargetDomainError::Forbidden(_)));
        let state = Spec::<TargetDomain>::given([allow_listed()])
            .in_context(as_account("boss", Role::SuperAdmin))
            .when(TargetDomainCommand::RemoveFromAllowList {
                reason: reason("staging is gone"),
            })
            .then([TargetDomainEvent::DomainRemovedFromAllowList(
                DomainRemovedFromAllowList {
                    by: "boss".into(),
                    reason: reason("staging is gone"),
                },
            )]);
        assert_eq!(state.allow_listing, None);
    }

    fn consent(events: &[TargetDomainEvent], account: &str) -> Result<Consent, NoConsent> {
        let state = TargetDomain::fold(events);
        consent_for(&name("example.com"), &state, &user(account), now())
    }

    #[test]
    fn allow_listing_consents_for_every_account() {
        let ok = consent(&[allow_listed()], "anyone").unwrap();
        assert!(matches!(ok, Consent::AllowListed { listing, .. } if listing.by == "root"));
    }

    #[test]
    fn one_accounts_verification_never_consents_for_another() {
        let history = [
            claimed("ada", 'a'),
            verified("ada", now() + Duration::days(1)),
        ];
        assert!(matches!(
            consent(&history, "ada"),
            Ok(Consent::Verified { .. })
        ));
        let err = consent(&history, "bob").unwrap_err();
        assert_eq!(err.why, NoConsentWhy::NotClaimed);
        assert_eq!(
            err.to_string(),
            "bob has no consent to send traffic to example.com: the account has not claimed it; claim it and publish the verification token"
        );
    }

    #[test]
    fn an_unverified_claim_says_how_its_last_check_failed() {
        let err = consent(&[claimed("ada", 'a')], "ada").unwrap_err();
        assert_eq!(err.why, NoConsentWhy::Unverified { last_failure: None });
        let err = consent(
            &[
                claimed("ada", 'a'),
                failed("ada", FailureReason::WrongToken),
            ],
            "ada",
        )
        .unwrap_err();
        assert!(
            err.to_string().ends_with(
                "claimed but not verified yet; the check of a DNS TXT record failed: a different token was found (no TXT record)"
            ),
            "{err}"
        );
    }

    #[test]
    fn an_expired_verification_says_when_it_expired() {
        let at = now() - Duration::seconds(1);
        let err = consent(&[claimed("ada", 'a'), verified("ada", at)], "ada").unwrap_err();
        assert_eq!(
            err.why,
            NoConsentWhy::Expired {
                at,
                last_failure: None
            }
        );
        // The last moment is excluded: valid *until*.
        let err = consent(&[claimed("ada", 'a'), verified("ada", now())], "ada").unwrap_err();
        assert!(err.to_string().contains("expired at"), "{err}");
    }

    #[test]
    fn a_parents_consent_covers_its_subdomains_nearest_first() {
        let verified_parent = TargetDomain::fold(&[
            claimed("ada", 'a'),
            verified("ada", now() + Duration::days(1)),
        ]);
        let listed_grandparent = TargetDomain::fold(&[allow_listed()]);
        let states = HashMap::from([
            (name("shop.example.com"), verified_parent),
            (name("example.com"), listed_grandparent),
        ]);
        let covering =
            |d: &str, who: &str| consent_covering(&name(d), &user(who), now(), |n| states.get(n));
        assert!(matches!(
            covering("a.shop.example.com", "ada"),
            Ok(Consent::Verified { domain, .. }) if domain == name("shop.example.com")
        ));
        // Bob has no claim on shop.example.com; example.com's listing covers him.
        assert!(matches!(
            covering("a.shop.example.com", "bob"),
            Ok(Consent::AllowListed { domain, .. }) if domain == name("example.com")
        ));
        assert!(covering("badexample.com", "ada").is_err());
    }

    #[test]
    fn a_refusal_over_a_chain_names_the_nearest_domain_with_history() {
        let expired = TargetDomain::fold(&[claimed("ada", 'a'), verified("ada", now())]);
        let states = HashMap::from([(name("example.com"), expired)]);
        let err = consent_covering(&name("a.b.example.com"), &user("ada"), now(), |n| {
            states.get(n)
        })
        .unwrap_err();
        assert_eq!(err.domain, name("example.com"));
        assert!(matches!(err.why, NoConsentWhy::Expired { .. }));
        let err =
            consent_covering(&name("a.b.example.com"), &user("ada"), now(), |_| None).unwrap_err();
        assert_eq!(
            (err.domain, err.why),
            (name("a.b.example.com"), NoConsentWhy::NotClaimed)
        );
    }

    #[test]
    fn summaries_say_who_did_what_but_never_show_the_token() {
        let stream = stream(&name("example.com")).unwrap();
        let lines: Vec<String> = [
            claimed("ada", 'q'),
            verified("ada", now() + Duration::days(1)),
            failed("ada", FailureReason::NotFound),
            allow_listed(),
        ]
        .iter()
        .map(|e| e.summary(&stream))
        .collect();
        assert_eq!(lines[0], "example.com claimed for ada by ada");
        assert!(
            lines[2].ends_with("failed: the token was not found"),
            "{}",
            lines[2]
        );
        assert_eq!(
            lines[3],
            "example.com allow-listed by root: our staging host"
        );
        assert!(
            lines.iter().all(|l| !l.contains(&"q".repeat(64))),
            "{lines:?}"
        );
    }
}
