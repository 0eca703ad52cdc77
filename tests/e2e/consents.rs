//! External-click consents over GraphQL: refused with FEATURE_NOT_LICENSED
//! naming `externalClicks` until the account's licence includes it, then
//! granted, listed, revoked and audited.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{PASSWORD, TestApp, code, spawn_app};
use crate::safe_mode::audited;

const GRANT: &str =
    "mutation($d: String!, $r: String!) { grantExternalClicks(domain: $d, reason: $r) }";
const REVOKE: &str =
    "mutation($d: String!, $r: String!) { revokeExternalClicks(domain: $d, reason: $r) }";
const ISSUE: &str = "mutation($u: String!, $l: LicenceInput!) { issueLicence(username: $u, licence: $l) { licensed } }";

fn licence(external_clicks: bool) -> Value {
    json!({ "maxInstances": 2, "humanSurfing": true, "importProxy": false, "scheduler": false,
        "externalClicks": external_clicks, "maxTargets": 3, "maxFlowsPerDay": 100,
        "expiresAt": "2099-01-01T00:00:00Z" })
}

/// Waits until the token holder's consented domains are `expected`.
async fn expect_consents(app: &TestApp, token: &str, expected: &[&str]) {
    let list = "{ externalClickConsents { domain grantedBy reason } }";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = app.gql(list, json!({}), Some(token)).await;
        let domains: Vec<&str> = r["data"]["externalClickConsents"]
            .as_array()
            .unwrap_or_else(|| panic!("{r}"))
            .iter()
            .map(|c| c["domain"].as_str().unwrap())
            .collect();
        if domains == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "consents are {domains:?}, not {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_clicks_need_the_licence_feature_and_each_account_sees_its_own() {
    let app = spawn_app().await;
    let root = app.with_accounts().await;
    let ada = app.token("ada", PASSWORD).await;
    let partner = json!({ "d": "Partner.Example", "r": "our affiliate" });

    let unlicensed = app.gql(GRANT, partner.clone(), Some(&ada)).await;
    assert_eq!(code(&unlicensed), "FEATURE_NOT_LICENSED", "{unlicensed}");
    assert_eq!(
        unlicensed["errors"][0]["extensions"]["feature"], "externalClicks",
        "{unlicensed}"
    );
    assert_eq!(
        unlicensed["errors"][0]["message"],
        "externalClicks is not licensed: no licence is in force"
    );
    let r = app
        .gql(
            ISSUE,
            json!({ "u": "ada", "l": licence(false) }),
            Some(&root),
        )
        .await;
    assert_eq!(r["data"]["issueLicence"]["licensed"], true, "{r}");
    let without = app.gql(GRANT, partner.clone(), Some(&ada)).await;
    assert_eq!(code(&without), "FEATURE_NOT_LICENSED", "{without}");
    assert_eq!(
        without["errors"][0]["extensions"],
        json!({ "code": "FEATURE_NOT_LICENSED", "feature": "externalClicks" })
    );

    let r = app
        .gql(
            ISSUE,
            json!({ "u": "ada", "l": licence(true) }),
            Some(&root),
        )
        .await;
    assert_eq!(r["data"]["issueLicence"]["licensed"], true, "{r}");
    let r = app.gql(GRANT, partner.clone(), Some(&ada)).await;
    assert_eq!(r["data"]["grantExternalClicks"], true, "{r}");
    let r = app
        .gql(
            GRANT,
            json!({ "d": "http://x.example/", "r": "why" }),
            Some(&ada),
        )
        .await;
    assert_eq!(code(&r), "VALIDATION", "{r}");
    assert!(
        r["errors"][0]["message"]
            .as_str()
            .unwrap()
            .starts_with("domain: ")
    );
    let r = app
        .gql(GRANT, json!({ "d": "cdn.example", "r": "" }), Some(&ada))
        .await;
    assert_eq!(code(&r), "VALIDATION", "{r}");
    let r = app
        .gql(
            GRANT,
            json!({ "d": "cdn.example", "r": "images" }),
            Some(&ada),
        )
        .await;
    assert_eq!(r["data"]["grantExternalClicks"], true, "{r}");
    expect_consents(&app, &ada, &["cdn.example", "partner.example"]).await;
    // Each account lists its own grants only.
    expect_consents(&app, &root, &[]).await;

    // A subdomain is covered by its parent's grant: revoke the parent.
    let r = app
        .gql(
            REVOKE,
            json!({ "d": "shop.partner.example", "r": "done" }),
            Some(&ada),
        )
        .await;
    assert_eq!(code(&r), "CONFLICT", "{r}");
    let r = app
        .gql(
            REVOKE,
            json!({ "d": "partner.example", "r": "contract ended" }),
            Some(&ada),
        )
        .await;
    assert_eq!(r["data"]["revokeExternalClicks"], true, "{r}");
    expect_consents(&app, &ada, &["cdn.example"]).await;

    let auditor = app.token("audrey", PASSWORD).await;
    assert_eq!(
        audited(&app, &auditor, "ExternalClicksGranted", 2).await,
        [
            "external clicks to partner.example allowed for ada by ada: our affiliate",
            "external clicks to cdn.example allowed for ada by ada: images"
        ]
    );
    assert_eq!(
        audited(&app, &auditor, "ExternalClicksRevoked", 1).await,
        ["external clicks to partner.example withdrawn for ada by ada: contract ended"]
    );
}
