//! Target domains over GraphQL: claims with their tokens, allow-listing by
//! super-admins only, and the `domains` view as each account may see it.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{PASSWORD, TestApp, code, spawn_app};
use crate::safe_mode::{audited, create_account};

const CLAIM: &str =
    "mutation($d: String!) { claimDomain(domain: $d) { domain token wellKnownUrl dnsRecordName } }";
const LIST: &str = "mutation($d: String!, $r: String!) { allowListDomain(domain: $d, reason: $r) }";
const UNLIST: &str =
    "mutation($d: String!, $r: String!) { removeFromAllowList(domain: $d, reason: $r) }";

/// Waits until the (domain, account, status) rows the token's holder sees,
/// paging by `first` rows, are `expected` (the view follows the log).
async fn expect_domains(
    app: &TestApp,
    token: &str,
    first: i32,
    expected: &[(String, Value, String)],
) {
    let page = "query($f: Int!, $a: String) { domains(first: $f, after: $a) { entries { domain account status } nextCursor } }";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut seen = Vec::new();
        let mut after = Value::Null;
        loop {
            let r = app
                .gql(page, json!({ "f": first, "a": after }), Some(token))
                .await;
            let entries = r["data"]["domains"]["entries"]
                .as_array()
                .unwrap_or_else(|| panic!("{r}"));
            assert!(entries.len() <= first as usize);
            seen.extend(entries.iter().map(|e| {
                (
                    e["domain"].as_str().unwrap().to_owned(),
                    e["account"].clone(),
                    e["status"].as_str().unwrap().to_owned(),
                )
            }));
            after = r["data"]["domains"]["nextCursor"].clone();
            if after.is_null() {
                break;
            }
        }
        if seen == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the domains view shows {seen:?}, not {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn row(domain: &str, account: Option<&str>, status: &str) -> (String, Value, String) {
    (domain.into(), json!(account), status.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_keep_their_token_only_super_admins_allow_list_and_accounts_see_their_own() {
    let app = spawn_app().await;
    let root = app.with_accounts().await;
    let admin = create_account(&app, &root, "adam", "ADMIN").await;
    let bob = create_account(&app, &root, "bob", "USER").await;
    let ada = app.token("ada", PASSWORD).await;

    let claimed = app
        .gql(CLAIM, json!({ "d": " Shop.Example. " }), Some(&ada))
        .await;
    let claim = &claimed["data"]["claimDomain"];
    assert_eq!(claim["domain"], "shop.example", "{claimed}");
    let token = claim["token"].as_str().unwrap();
    assert_eq!(token.len(), 64, "{claimed}");
    assert_eq!(
        claim["wellKnownUrl"],
        "https://shop.example/.well-known/trafficbuster-verification.txt"
    );
    assert_eq!(claim["dnsRecordName"], "_trafficbuster.shop.example");
    let again = app
        .gql(CLAIM, json!({ "d": "shop.example" }), Some(&ada))
        .await;
    assert_eq!(again["data"]["claimDomain"]["token"], token, "{again}");
    let bobs = app
        .gql(CLAIM, json!({ "d": "shop.example" }), Some(&bob))
        .await;
    assert_ne!(bobs["data"]["claimDomain"]["token"], token, "{bobs}");
    let r = app
        .gql(CLAIM, json!({ "d": "blog.example" }), Some(&bob))
        .await;
    assert!(r["data"]["claimDomain"]["token"].is_string(), "{r}");

    for bad in ["https://shop.example/cart", "127.0.0.1", "localhost", ""] {
        let r = app.gql(CLAIM, json!({ "d": bad }), Some(&ada)).await;
        assert_eq!(code(&r), "VALIDATION", "{bad}: {r}");
        let message = r["errors"][0]["message"].as_str().unwrap();
        assert!(message.starts_with("domain: "), "{message}");
    }
    let anonymous = app.gql(CLAIM, json!({ "d": "shop.example" }), None).await;
    assert_eq!(code(&anonymous), "UNAUTHENTICATED", "{anonymous}");

    let reason = json!({ "d": "staging.example", "r": "our own staging host" });
    for refused in [&ada, &admin] {
        let r = app.gql(LIST, reason.clone(), Some(refused)).await;
        assert_eq!(code(&r), "FORBIDDEN", "{r}");
    }
    let r = app
        .gql(
            LIST,
            json!({ "d": "staging.example", "r": "" }),
            Some(&root),
        )
        .await;
    assert_eq!(code(&r), "VALIDATION", "{r}");
    let r = app.gql(LIST, reason.clone(), Some(&root)).await;
    assert_eq!(r["data"]["allowListDomain"], true, "{r}");
    let old = json!({ "d": "old.example", "r": "for a week" });
    let r = app.gql(LIST, old.clone(), Some(&root)).await;
    assert_eq!(r["data"]["allowListDomain"], true, "{r}");
    let r = app.gql(UNLIST, old.clone(), Some(&admin)).await;
    assert_eq!(code(&r), "FORBIDDEN", "{r}");
    let r = app.gql(UNLIST, old, Some(&root)).await;
    assert_eq!(r["data"]["removeFromAllowList"], true, "{r}");

    // Admins see every row, one per page here to walk the cursor.
    let everything = [
        row("blog.example", Some("bob"), "CLAIMED"),
        row("shop.example", Some("ada"), "CLAIMED"),
        row("shop.example", Some("bob"), "CLAIMED"),
        row("staging.example", None, "ALLOW_LISTED"),
    ];
    expect_domains(&app, &admin, 1, &everything).await;
    expect_domains(&app, &root, 3, &everything).await;
    let e = |i: usize| everything[i].clone();
    expect_domains(&app, &ada, 10, &[e(1), e(3)]).await;
    expect_domains(&app, &bob, 10, &[e(0), e(2), e(3)]).await;

    let auditor = app.token("audrey", PASSWORD).await;

    assert_eq!(
        audited(&app, &auditor, "DomainAllowListed", 2).await,
        [
            "staging.example allow-listed by root: our own staging host",
            "old.example allow-listed by root: for a week"
        ]
    );
    let claims = audited(&app, &auditor, "DomainClaimed", 3).await;
    assert_eq!(claims[0], "shop.example claimed for ada by ada");
    assert!(claims.iter().all(|c| !c.contains(token)), "{claims:?}");
}
