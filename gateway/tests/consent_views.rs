//! The consent views projected from commands run through the real command
//! handler on real stores, and equal to themselves after a rebuild.

use std::sync::Arc;

use domain::account::Username;
use domain::click_consent::{self, ClickConsent, ClickConsentCommand};
use domain::licence::{Allowances, LicenceTerms};
use domain::target_domain::{
    self, FailureReason, TargetDomain, TargetDomainCommand, VerificationMethod,
    VerificationOutcome, VerificationToken,
};
use domain::{Actor, Context, DomainName, Reason, Role};
use gateway::{CommandHandler, CommandMeta};
use projections::{ProjectionEngine, SqlValue, ViewStore};
use store::testing::TestStore;
use store::testing::eventually;
use time::{Duration, OffsetDateTime};

fn actor(name: &str, role: Role) -> Actor {
    Actor::Account {
        account_id: uuid::Uuid::now_v7(),
        username: name.into(),
        roles: [role].into(),
    }
}

fn token(fill: char) -> VerificationToken {
    VerificationToken::parse(&fill.to_string().repeat(40)).unwrap()
}

/// Every row of `view_domains`: (domain, account, status, method,
/// expires_at, last_failure, whether failed_at is set, listed_by, listed_reason).
async fn domains(views: &ViewStore) -> Vec<Vec<SqlValue>> {
    views
        .query(
            "SELECT domain, account, status, method, expires_at, last_failure, \
             CASE WHEN failed_at IS NULL THEN 0 ELSE 1 END AS failed, listed_by, listed_reason \
             FROM view_domains ORDER BY domain, account",
            vec![],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.values().to_vec())
        .collect()
}

mod cases {
    use super::*;

    pub async fn the_domains_view_follows_claims_checks_and_allow_listing(store: &TestStore) {
        let events = store.open().await;
        let views = ViewStore::open(&store.open_backend().await).await.unwrap();
        let engine =
            ProjectionEngine::start(events.clone(), views, projections::all_views()).unwrap();
        let handler = CommandHandler::new(events, Arc::new(domain::event_registry()));
        let meta = CommandMeta::default();
        let now = OffsetDateTime::now_utc();
        let run = |domain: &str, command, who: Actor| {
            let handler = &handler;
            let meta = &meta;
            let stream = target_domain::stream(&DomainName::parse(domain).unwrap()).unwrap();
            async move {
                handler
                    .handle::<TargetDomain>(&stream, command, &Context::new(now, who), meta)
                    .await
                    .unwrap();
            }
        };
        let ada = Username::parse("ada").unwrap();
        let bob = Username::parse("bob").unwrap();
        let valid_until = now + Duration::days(30);
        let claim = |account: &Username, fill| TargetDomainCommand::Claim {
            account: account.clone(),
            token: token(fill),
        };
        let record = |account: &Username, outcome| TargetDomainCommand::RecordVerification {
            account: account.clone(),
            method: VerificationMethod::WellKnown,
            outcome,
        };
        let failed = || VerificationOutcome::Failed {
            reason: FailureReason::NotFound,
            detail: "404".into(),
        };
        let reason = |r: &str| Reason::parse(r).unwrap();

        // ada verifies, then a later check fails: still verified until it expires.
        run("shop.example", claim(&ada, 'a'), Actor::System).await;
        run(
            "shop.example",
            record(&ada, VerificationOutcome::Verified { valid_until }),
            Actor::System,
        )
        .await;
        run("shop.example", record(&ada, failed()), Actor::System).await;
        // bob's check of the same domain fails: his claim alone is failed.
        run("shop.example", claim(&bob, 'b'), Actor::System).await;
        run("shop.example", record(&bob, failed()), Actor::System).await;
        // bob claims another domain, never checked.
        run("blog.example", claim(&bob, 'c'), Actor::System).await;
        // A staging host is allow-listed; another is listed, then removed.
        let root = actor("root", Role::SuperAdmin);
        let list = |r| TargetDomainCommand::AllowList { reason: reason(r) };
        run("staging.example", list("our own staging"), root.clone()).await;
        run("old.example", list("for a week"), root.clone()).await;
        run(
            "old.example",
            TargetDomainCommand::RemoveFromAllowList {
                reason: reason("the week is over"),
            },
            root,
        )
        .await;

        let text = |s: &str| SqlValue::Text(s.into());
        let failure = text(r#"{"method":"well_known","reason":"not_found","detail":"404"}"#);
        let (no_failure, failed) = (SqlValue::Int(0), SqlValue::Int(1));
        let expected = vec![
            vec![
                text("blog.example"),
                text("bob"),
                text("claimed"),
                SqlValue::Null,
                SqlValue::Null,
                SqlValue::Null,
                no_failure.clone(),
                SqlValue::Null,
                SqlValue::Null,
            ],
            vec![
                text("shop.example"),
                text("ada"),
                text("verified"),
                text("well_known"),
                SqlValue::micros(valid_until),
                failure.clone(),
                failed.clone(),
                SqlValue::Null,
                SqlValue::Null,
            ],
            vec![
                text("shop.example"),
                text("bob"),
                text("failed"),
                SqlValue::Null,
                SqlValue::Null,
                failure,
                failed,
                SqlValue::Null,
                SqlValue::Null,
            ],
            vec![
                text("staging.example"),
                text(""),
                text("allow_listed"),
                SqlValue::Null,
                SqlValue::Null,
                SqlValue::Null,
                no_failure,
                text("root"),
                text("our own staging"),
            ],
        ];
        // Live once: the tables exist, and a view that failed says so here.
        engine.wait_until_live().await.unwrap();
        let v = engine.views();
        eventually("the domains view", || async {
            domains(v).await == expected
        })
        .await;

        engine.rebuild("domains").await.unwrap();
        engine.wait_until_live().await.unwrap();
        eventually("the rebuilt domains view", || async {
            domains(v).await == expected
        })
        .await;
        engine.shutdown().await;
    }
    pub async fn the_consents_view_holds_the_grants_in_force(store: &TestStore) {
        let events = store.open().await;
        let views = ViewStore::open(&store.open_backend().await).await.unwrap();
        let engine =
            ProjectionEngine::start(events.clone(), views, projections::all_views()).unwrap();
        let handler = CommandHandler::new(events, Arc::new(domain::event_registry()));
        let now = OffsetDateTime::now_utc();
        // An admin acts for both accounts.
        let licensed = Context::new(now, actor("root", Role::Admin)).with_licence(LicenceTerms {
            allows: Allowances {
                external_clicks: true,
                ..Allowances::default()
            },
            expires_at: now + Duration::days(1),
        });
        let run = |account: &str,
                   command: fn(Username, DomainName, Reason) -> ClickConsentCommand,
                   domain: &str,
                   why: &str| {
            let handler = &handler;
            let licensed = &licensed;
            let account = Username::parse(account).unwrap();
            let stream = click_consent::stream(&account).unwrap();
            let command = command(
                account,
                DomainName::parse(domain).unwrap(),
                Reason::parse(why).unwrap(),
            );
            async move {
                handler
                    .handle::<ClickConsent>(&stream, command, licensed, &CommandMeta::default())
                    .await
                    .unwrap();
            }
        };
        let grant = |account, domain, reason| ClickConsentCommand::Grant {
            account,
            domain,
            reason,
        };
        let revoke = |account, domain, reason| ClickConsentCommand::Revoke {
            account,
            domain,
            reason,
        };
        run("ada", grant, "partner.example", "our affiliate").await;
        run("ada", grant, "cdn.example", "images").await;
        run("ada", revoke, "partner.example", "contract ended").await;
        run("bob", grant, "partner.example", "his affiliate").await;

        let text = |s: &str| SqlValue::Text(s.into());
        let expected = vec![
            vec![
                text("ada"),
                text("cdn.example"),
                text("root"),
                text("images"),
            ],
            vec![
                text("bob"),
                text("partner.example"),
                text("root"),
                text("his affiliate"),
            ],
        ];
        let rows = || async {
            engine
                .views()
                .query(
                    "SELECT account, domain, granted_by, reason FROM view_consents ORDER BY account, domain",
                    vec![],
                )
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.values().to_vec())
                .collect::<Vec<_>>()
        };
        engine.wait_until_live().await.unwrap();
        eventually("the consents view", || async { rows().await == expected }).await;
        engine.rebuild("consents").await.unwrap();
        engine.wait_until_live().await.unwrap();
        eventually("the rebuilt consents view", || async {
            rows().await == expected
        })
        .await;
        engine.shutdown().await;
    }
}

store::each_backend!(
    the_domains_view_follows_claims_checks_and_allow_listing,
    the_consents_view_holds_the_grants_in_force
);
