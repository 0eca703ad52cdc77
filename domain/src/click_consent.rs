//! External-click consent: per account, the domains its flows may follow an
//! external link to. Stream `consent-<username>`.
//!
//! Granting needs the `externalClicks` feature of the licence in force;
//! revoking never does, so consent can always be withdrawn. A grant of a
//! domain covers its subdomains.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::account::Username;
use crate::decider::{Context, Decider};
use crate::domain_name::DomainName;
use crate::envelope::{StreamId, StreamIdError};
use crate::licence::{Feature, NotLicensed};
use crate::reason::Reason;

/// The account's consent stream: `consent-<username>`.
pub fn stream(account: &Username) -> Result<StreamId, StreamIdError> {
    StreamId::for_aggregate("consent", account)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExternalClicksGranted {
    pub domain: DomainName,
    pub reason: Reason,
    pub by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExternalClicksRevoked {
    pub domain: DomainName,
    pub reason: Reason,
    pub by: String,
}

crate::event_set! {
    /// What happens to an account's external-click consents.
    pub enum ClickConsentEvent {
        ExternalClicksGranted(ExternalClicksGranted) = 1,
        ExternalClicksRevoked(ExternalClicksRevoked) = 1,
    }
}

impl crate::registry::Summary for ClickConsentEvent {
    fn summary(&self, stream: &StreamId) -> String {
        let account = stream
            .as_str()
            .strip_prefix("consent-")
            .unwrap_or(stream.as_str());
        match self {
            Self::ExternalClicksGranted(g) => format!(
                "external clicks to {} allowed for {account} by {}: {}",
                g.domain, g.by, g.reason
            ),
            Self::ExternalClicksRevoked(r) => format!(
                "external clicks to {} withdrawn for {account} by {}: {}",
                r.domain, r.by, r.reason
            ),
        }
    }
}

/// Commands on an account's external-click consents.
#[derive(Debug, Clone, PartialEq)]
pub enum ClickConsentCommand {
    Grant {
        account: Username,
        domain: DomainName,
        reason: Reason,
    },
    Revoke {
        account: Username,
        domain: DomainName,
        reason: Reason,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClickConsentError {
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error(transparent)]
    NotLicensed(#[from] NotLicensed),
    #[error(
        "{domain} has no grant of its own; the grant of {covered_by} covers it, so revoke that"
    )]
    CoveredByParent {
        domain: DomainName,
        covered_by: DomainName,
    },
}

/// Who granted a domain, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub by: String,
    pub reason: Reason,
}

/// The domains granted, each with its grant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClickConsentState {
    pub grants: BTreeMap<DomainName, Grant>,
}

/// May a flow of this account follow an external link to `domain`?
pub fn allows(state: &ClickConsentState, domain: &DomainName) -> bool {
    state.grants.keys().any(|granted| granted.covers(domain))
}

pub struct ClickConsent;

inventory::submit! { crate::replay::Replayer::of::<ClickConsent>() }

impl Decider for ClickConsent {
    const SNAPSHOT_KIND: &'static str = "click_consent/1";
    type State = ClickConsentState;
    type Command = ClickConsentCommand;
    type Event = ClickConsentEvent;
    type Error = ClickConsentError;

    fn evolve(mut state: ClickConsentState, event: &ClickConsentEvent) -> ClickConsentState {
        match event {
            ClickConsentEvent::ExternalClicksGranted(e) => {
                state.grants.insert(
                    e.domain.clone(),
                    Grant {
                        by: e.by.clone(),
                        reason: e.reason.clone(),
                    },
                );
            }
            ClickConsentEvent::ExternalClicksRevoked(e) => {
                state.grants.remove(&e.domain);
            }
        }
        state
    }

    fn decide(
        state: &ClickConsentState,
        command: ClickConsentCommand,
        ctx: &Context,
    ) -> Result<Vec<ClickConsentEvent>, ClickConsentError> {
        let by = ctx.actor.name();
        match command {
            ClickConsentCommand::Grant {
                account,
                domain,
                reason,
            } => {
                require_acts_for(ctx, &account)?;
                ctx.require(Feature::ExternalClicks)?;
                if state.grants.contains_key(&domain) {
                    return Ok(vec![]);
                }
                Ok(vec![ClickConsentEvent::ExternalClicksGranted(
                    ExternalClicksGranted { domain, reason, by },
                )])
            }
            ClickConsentCommand::Revoke {
                account,
                domain,
                reason,
            } => {
                require_acts_for(ctx, &account)?;
                if !state.grants.contains_key(&domain) {
                    // Saying "done" while a parent's grant still lets clicks
                    // through would mislead; nothing to do is fine otherwise.
                    return match state.grants.keys().find(|g| g.covers(&domain)) {
                        Some(parent) => Err(ClickConsentError::CoveredByParent {
                            domain,
                            covered_by: parent.clone(),
                        }),
                        None => Ok(vec![]),
                    };
                }
                Ok(vec![ClickConsentEvent::ExternalClicksRevoked(
                    ExternalClicksRevoked { domain, reason, by },
                )])
            }
        }
    }
}

fn require_acts_for(ctx: &Context, account: &Username) -> Result<(), ClickConsentError> {
    if ctx.actor.acts_for(account.as_str()) {
        Ok(())
    } else {
        Err(ClickConsentError::Forbidden(
            "external-click consents are granted and revoked by the account itself or an admin",
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use time::{Duration, OffsetDateTime};
    use uuid::Uuid;

    use super::*;
    use crate::decider::{Actor, Role};
    use crate::licence::{Allowances, LicenceTerms};
    use crate::registry::Summary;
    use crate::spec::Spec;

    fn now() -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + Duration::days(20_000)
    }

    fn licence(external_clicks: bool) -> LicenceTerms {
        LicenceTerms {
            allows: Allowances {
                external_clicks,
                ..Allowances::default()
            },
            expires_at: now() + Duration::days(30),
        }
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

    /// Ada herself, with a licence that includes external clicks.
    fn ada() -> Context {
        as_account("ada", Role::User).with_licence(licence(true))
    }

    fn name(s: &str) -> DomainName {
        DomainName::parse(s).unwrap()
    }

    fn reason() -> Reason {
        Reason::parse("our partner shop").unwrap()
    }

    fn grant(domain: &str) -> ClickConsentCommand {
        ClickConsentCommand::Grant {
            account: Username::parse("ada").unwrap(),
            domain: name(domain),
            reason: reason(),
        }
    }

    fn revoke(domain: &str) -> ClickConsentCommand {
        ClickConsentCommand::Revoke {
            account: Username::parse("ada").unwrap(),
            domain: name(domain),
            reason: reason(),
        }
    }

    fn granted(domain: &str, by: &str) -> ClickConsentEvent {
        ClickConsentEvent::ExternalClicksGranted(ExternalClicksGranted {
            domain: name(domain),
            reason: reason(),
            by: by.into(),
        })
    }

    fn revoked(domain: &str, by: &str) -> ClickConsentEvent {
        ClickConsentEvent::ExternalClicksRevoked(ExternalClicksRevoked {
            domain: name(domain),
            reason: reason(),
            by: by.into(),
        })
    }

    #[test]
    fn an_account_grants_external_clicks_to_a_domain_and_its_subdomains() {
        let state = Spec::<ClickConsent>::given([])
            .in_context(ada())
            .when(grant("partner.example"))
            .then([granted("partner.example", "ada")]);
        assert!(allows(&state, &name("partner.example")));
        assert!(allows(&state, &name("shop.partner.example")));
        assert!(!allows(&state, &name("otherpartner.example")));
        assert!(!allows(
            &ClickConsentState::default(),
            &name("partner.example")
        ));
    }

    #[test]
    fn granting_needs_the_external_clicks_feature_of_a_licence_in_force() {
        let refused = |ctx: Context, why: &str| {
            let why = why.to_owned();
            Spec::<ClickConsent>::given([])
                .in_context(ctx)
                .when(grant("partner.example"))
                .then_err(move |e| {
                    matches!(e, ClickConsentError::NotLicensed(n)
                        if n.feature == "externalClicks" && n.reason.contains(&why))
                });
        };
        refused(as_account("ada", Role::User), "no licence is in force");
        refused(
            as_account("ada", Role::User).with_licence(licence(false)),
            "does not include it",
        );
        let mut expired = ada();
        expired.now = now() + Duration::days(31);
        refused(expired, "expired");
    }

    #[test]
    fn revoking_needs_no_licence() {
        let state = Spec::<ClickConsent>::given([granted("partner.example", "ada")])
            .in_context(as_account("ada", Role::User))
            .when(revoke("partner.example"))
            .then([revoked("partner.example", "ada")]);
        assert!(!allows(&state, &name("partner.example")));
    }

    #[test]
    fn only_the_account_itself_or_an_admin_grants_and_revokes() {
        for command in [grant("partner.example"), revoke("partner.example")] {
            for role in [Role::User, Role::Auditor] {
                Spec::<ClickConsent>::given([granted("partner.example", "ada")])
                    .in_context(as_account("bob", role).with_licence(licence(true)))
                    .when(command.clone())
                    .then_err(|e| matches!(e, ClickConsentError::Forbidden(_)));
            }
        }
        Spec::<ClickConsent>::given([])
            .in_context(as_account("root", Role::Admin).with_licence(licence(true)))
            .when(grant("partner.example"))
            .then([granted("partner.example", "root")]);
    }

    #[test]
    fn granting_twice_or_revoking_what_was_never_granted_records_nothing() {
        Spec::<ClickConsent>::given([granted("partner.example", "ada")])
            .in_context(ada())
            .when(grant("partner.example"))
            .then([]);
        Spec::<ClickConsent>::given([])
            .in_context(ada())
            .when(revoke("partner.example"))
            .then([]);
    }

    #[test]
    fn a_subdomain_covered_by_a_parents_grant_is_revoked_through_the_parent() {
        Spec::<ClickConsent>::given([granted("partner.example", "ada")])
            .in_context(ada())
            .when(revoke("shop.partner.example"))
            .then_err(|e| {
                e.to_string()
                    == "shop.partner.example has no grant of its own; the grant of partner.example covers it, so revoke that"
            });
    }

    #[test]
    fn a_subdomains_own_grant_outlives_its_parents_revocation() {
        let state = ClickConsent::fold(&[
            granted("partner.example", "ada"),
            granted("shop.partner.example", "ada"),
            revoked("partner.example", "ada"),
        ]);
        assert!(allows(&state, &name("shop.partner.example")));
        assert!(!allows(&state, &name("partner.example")));
    }

    #[test]
    fn summaries_say_who_consented_to_what_and_why() {
        let stream = stream(&Username::parse("ada").unwrap()).unwrap();
        assert_eq!(stream.as_str(), "consent-ada");
        assert_eq!(
            granted("partner.example", "root").summary(&stream),
            "external clicks to partner.example allowed for ada by root: our partner shop"
        );
        assert_eq!(
            revoked("partner.example", "ada").summary(&stream),
            "external clicks to partner.example withdrawn for ada by ada: our partner shop"
        );
    }
}
