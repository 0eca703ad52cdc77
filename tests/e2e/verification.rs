//! Domain verification end to end: a real gateway checks a real HTTP site
//! and a real DNS server, both on loopback under test host names, records
//! each outcome, shows it in the `domains` view and pushes it on
//! `domainStatusChanged`.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{Value, json};
use site::dns::DnsServer;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::graphql::{Ws, ws_connect, ws_next};
use crate::helpers::{PASSWORD, TestApp, TestStore, code, spawn_app};
use crate::safe_mode::create_account;

const WELL_KNOWN: &str = "/.well-known/trafficbuster-verification.txt";

const ROW: &str = "domain account status method verifiedAt expiresAt \
                   lastFailure { method reason detail message at }";

fn verify_query() -> String {
    format!(
        "mutation($d: String!, $m: VerificationMethodName, $a: String) \
         {{ verifyDomain(domain: $d, method: $m, account: $a) {{ {ROW} }} }}"
    )
}

fn changes_query() -> String {
    format!("subscription {{ domainStatusChanged {{ domain account row {{ {ROW} }} }} }}")
}

/// A web site on 127.0.0.1 serving, per Host, the raw HTTP responses a
/// test gives it (404 for anything else), and noting every request.
struct Site {
    port: u16,
    pages: Arc<Mutex<HashMap<String, String>>>,
    requests: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Site {
    async fn start() -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let pages = Arc::new(Mutex::new(HashMap::<String, String>::new()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (served, noted) = (pages.clone(), requests.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (served, noted) = (served.clone(), noted.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match stream.read(&mut byte).await {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                    let path = head.split_whitespace().nth(1).unwrap_or_default();
                    let host = head
                        .lines()
                        .find_map(|l| l.strip_prefix("host: "))
                        .and_then(|h| h.trim().split(':').next())
                        .unwrap_or_default()
                        .to_owned();
                    noted.lock().unwrap().push(format!("{host}{path}"));
                    let page = (path == WELL_KNOWN)
                        .then(|| served.lock().unwrap().get(&host).cloned())
                        .flatten()
                        .unwrap_or_else(|| {
                            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".into()
                        });
                    let _ = stream.write_all(page.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Self {
            port,
            pages,
            requests,
            task,
        }
    }

    /// Serves `response` as `host`'s well-known file.
    fn serve(&self, host: &str, response: String) {
        self.pages.lock().unwrap().insert(host.to_owned(), response);
    }

    /// The requests so far, as `host/path`.
    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn ok(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A port on 127.0.0.1 with nothing listening.
async fn closed_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    listener.local_addr().unwrap().port()
}

/// A gateway that resolves through `dns` and fetches well-known files
/// from `site` (HTTPS on a closed port, so plain HTTP after it).
async fn gateway(dns: &DnsServer, site: &Site, store: TestStore, extra: &[&str]) -> TestApp {
    let dns_addr = dns.addr().to_string();
    let https = closed_port().await.to_string();
    let http = site.port.to_string();
    let mut flags = vec![
        "--verification-dns-server",
        &dns_addr,
        "--verification-https-port",
        &https,
        "--verification-http-port",
        &http,
    ];
    flags.extend_from_slice(extra);
    spawn_app().store(store).flags(&flags).await
}

async fn claim(app: &TestApp, token: &str, domain: &str) -> String {
    let r = app
        .gql(
            "mutation($d: String!) { claimDomain(domain: $d) { token } }",
            json!({ "d": domain }),
            Some(token),
        )
        .await;
    r["data"]["claimDomain"]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned()
}

/// `verifyDomain` as `token`'s holder: the whole response.
async fn verify(
    app: &TestApp,
    token: &str,
    domain: &str,
    method: Option<&str>,
    account: Option<&str>,
) -> Value {
    app.gql(
        &verify_query(),
        json!({ "d": domain, "m": method, "a": account }),
        Some(token),
    )
    .await
}

async fn subscribe(ws: &mut Ws) {
    let msg = json!({ "id": "1", "type": "subscribe", "payload": { "query": changes_query() } });
    ws.send(Message::text(msg.to_string())).await.unwrap();
    // The subscription starts watching once the server has read this.
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// The next `domainStatusChanged` item.
async fn next_change(ws: &mut Ws) -> Value {
    let msg = ws_next(ws).await;
    assert_eq!(msg["type"], "next", "{msg}");
    msg["payload"]["data"]["domainStatusChanged"].clone()
}

fn at(v: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(v.as_str().unwrap_or_else(|| panic!("{v}")), &Rfc3339).unwrap()
}

/// A verified row: its method, and valid for `days` from its verification.
fn assert_verified(row: &Value, method: &str, days: i64) {
    assert_eq!(row["status"], "VERIFIED", "{row}");
    assert_eq!(row["method"], method, "{row}");
    assert!(row["lastFailure"].is_null(), "{row}");
    let verified = at(&row["verifiedAt"]);
    assert!(
        (OffsetDateTime::now_utc() - verified).abs() < time::Duration::minutes(1),
        "{row}"
    );
    // Valid from the decision; verifiedAt is when the event was stored, a moment after.
    let valid_for = at(&row["expiresAt"]) - verified;
    assert!(
        (valid_for - time::Duration::days(days)).abs() < time::Duration::seconds(1),
        "{row}"
    );
}

/// A row whose only check failed by `method` for `reason`.
fn assert_failed(row: &Value, method: &str, reason: &str) {
    assert_eq!(row["status"], "FAILED", "{row}");
    assert!(row["method"].is_null(), "{row}");
    assert!(
        row["verifiedAt"].is_null() && row["expiresAt"].is_null(),
        "{row}"
    );
    let failure = &row["lastFailure"];
    assert_eq!(failure["method"], method, "{row}");
    assert_eq!(failure["reason"], reason, "{row}");
    assert!(
        (OffsetDateTime::now_utc() - at(&failure["at"])).abs() < time::Duration::minutes(1),
        "{row}"
    );
}

/// One check: a name resolving to `address` (or to nothing), set up by `setup(name,
/// token)` once its token is known, verified by `method`.
struct Case<'a> {
    name: &'static str,
    address: Option<Ipv4Addr>,
    setup: Setup<'a>,
    method: Option<&'static str>,
    expect: Expect,
}

/// Serves what a case needs: `(name, token)`.
type Setup<'a> = Box<dyn Fn(&str, &str) + 'a>;

/// What the check must conclude.
enum Expect {
    /// Verified by this method.
    Verified(&'static str),
    /// Failed by this method, for this reason.
    Failed(&'static str, &'static str),
}
use Expect::{Failed, Verified};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_outcome_of_a_check_is_recorded_shown_and_pushed_live_on_sqlite() {
    each_outcome_of_a_check_is_recorded_shown_and_pushed_live(TestStore::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_outcome_of_a_check_is_recorded_shown_and_pushed_live_on_postgres() {
    let test = "each_outcome_of_a_check_is_recorded_shown_and_pushed_live_on_postgres";
    if let Some(store) = TestStore::postgres(test).await {
        each_outcome_of_a_check_is_recorded_shown_and_pushed_live(store).await;
    }
}

async fn each_outcome_of_a_check_is_recorded_shown_and_pushed_live(store: TestStore) {
    let dns = DnsServer::start().await.unwrap();
    let site = Site::start().await;
    let mut app = gateway(
        &dns,
        &site,
        store,
        &[
            "--verification-allow-private-addresses",
            "true",
            "--verification-valid-days",
            "7",
        ],
    )
    .await;
    let root = app.with_accounts().await;
    let bob = create_account(&app, &root, "bob", "USER").await;
    let ada = app.token("ada", PASSWORD).await;
    let mut ada_ws = ws_connect(&app.addr, "graphql-transport-ws", &ada).await;
    subscribe(&mut ada_ws).await;
    let mut bob_ws = ws_connect(&app.addr, "graphql-transport-ws", &bob).await;
    subscribe(&mut bob_ws).await;

    let site_ip = Some(Ipv4Addr::LOCALHOST);
    let cases = [
        Case {
            name: "ok.tb-test.example",
            address: site_ip,
            setup: Box::new(|name, token| site.serve(name, ok(&format!("\n  {token}\n")))),
            method: None,
            expect: Verified("WELL_KNOWN"),
        },
        Case {
            name: "wrong.tb-test.example",
            address: site_ip,
            setup: Box::new(|name, _| site.serve(name, ok(&"another-token-".repeat(4)))),
            method: Some("WELL_KNOWN"),
            expect: Failed("WELL_KNOWN", "WRONG_TOKEN"),
        },
        Case {
            name: "missing.tb-test.example",
            address: site_ip,
            setup: Box::new(|_, _| {}),
            method: Some("WELL_KNOWN"),
            expect: Failed("WELL_KNOWN", "NOT_FOUND"),
        },
        Case {
            name: "moved.tb-test.example",
            address: site_ip,
            setup: Box::new(|name, _| {
                let elsewhere = format!("https://elsewhere.example{WELL_KNOWN}");
                site.serve(
                    name,
                    format!(
                        "HTTP/1.1 302 Found\r\nLocation: {elsewhere}\r\nContent-Length: 0\r\n\r\n"
                    ),
                );
                dns.a("elsewhere.example", Ipv4Addr::LOCALHOST);
            }),
            method: Some("WELL_KNOWN"),
            expect: Failed("WELL_KNOWN", "REDIRECT_TO_OTHER_HOST"),
        },
        Case {
            // A loopback address where nothing listens.
            name: "down.tb-test.example",
            address: Some(Ipv4Addr::new(127, 0, 0, 2)),
            setup: Box::new(|_, _| {}),
            method: None,
            expect: Failed("WELL_KNOWN", "UNREACHABLE"),
        },
        Case {
            // Unknown to DNS: the address lookup fails, which says more
            // than the missing TXT record.
            name: "unknown.tb-test.example",
            address: None,
            setup: Box::new(|_, _| {}),
            method: None,
            expect: Failed("WELL_KNOWN", "DNS_ERROR"),
        },
        Case {
            name: "txt.tb-test.example",
            address: site_ip,
            setup: Box::new(|name, token| dns.txt(&format!("_trafficbuster.{name}"), token)),
            method: Some("DNS_TXT"),
            expect: Verified("DNS_TXT"),
        },
        Case {
            name: "badtxt.tb-test.example",
            address: site_ip,
            setup: Box::new(|name, _| dns.txt(&format!("_trafficbuster.{name}"), "v=spf1 -all")),
            method: Some("DNS_TXT"),
            expect: Failed("DNS_TXT", "WRONG_TOKEN"),
        },
        Case {
            // No file (404), but the TXT record: without a method, the
            // well-known file is tried, then the record.
            name: "either.tb-test.example",
            address: site_ip,
            setup: Box::new(|name, token| dns.txt(&format!("_trafficbuster.{name}"), token)),
            method: None,
            expect: Verified("DNS_TXT"),
        },
    ];

    let mut rows = Vec::new();
    for Case {
        name,
        address,
        setup,
        method,
        expect,
    } in cases
    {
        if let Some(address) = address {
            dns.a(name, address);
        }
        let token = claim(&app, &ada, name).await;
        let claimed = next_change(&mut ada_ws).await;
        assert_eq!(
            (
                &claimed["domain"],
                &claimed["account"],
                &claimed["row"]["status"]
            ),
            (&json!(name), &json!("ada"), &json!("CLAIMED")),
            "{claimed}"
        );
        setup(name, &token);
        let r = verify(&app, &ada, name, method, None).await;
        let row = r["data"]["verifyDomain"].clone();
        assert_eq!(row["domain"], name, "{r}");
        match expect {
            Verified(method) => assert_verified(&row, method, 7),
            Failed(method, reason) => assert_failed(&row, method, reason),
        }
        assert!(
            !row.to_string().contains(&token),
            "a row shows the token: {row}"
        );
        let pushed = next_change(&mut ada_ws).await;
        assert_eq!(pushed["row"], row, "{name}");
        rows.push(row);
    }
    let redirected: Vec<String> = site
        .requests()
        .into_iter()
        .filter(|r| r.contains("moved.") || r.contains("elsewhere."))
        .collect();
    assert_eq!(redirected, [format!("moved.tb-test.example{WELL_KNOWN}")]);

    // The view shows what verifyDomain returned, in domain order.
    let page = app
        .gql(
            &format!("{{ domains {{ entries {{ {ROW} }} }} }}"),
            json!({}),
            Some(&ada),
        )
        .await;
    rows.sort_by_key(|r| r["domain"].as_str().unwrap().to_owned());
    assert_eq!(page["data"]["domains"]["entries"], json!(rows), "{page}");

    // Only the claiming account, or an admin for it, may verify.
    let r = verify(&app, &bob, "ok.tb-test.example", None, Some("ada")).await;
    assert_eq!(code(&r), "FORBIDDEN", "{r}");
    let r = verify(&app, &bob, "ok.tb-test.example", None, None).await;
    assert_eq!(code(&r), "NOT_FOUND", "{r}");
    let r = verify(&app, &root, "ok.tb-test.example", None, Some("ada")).await;
    assert_verified(&r["data"]["verifyDomain"], "WELL_KNOWN", 7);
    assert_eq!(
        next_change(&mut ada_ws).await["row"],
        r["data"]["verifyDomain"]
    );

    // Bob saw none of Ada's changes: his first is his own claim.
    claim(&app, &bob, "bobs.tb-test.example").await;
    let first = next_change(&mut bob_ws).await;
    assert_eq!(
        (&first["domain"], &first["account"]),
        (&json!("bobs.tb-test.example"), &json!("bob")),
        "{first}"
    );

    // An allow-listing, and its removal, reach every account.
    let list = "mutation($d: String!) { allowListDomain(domain: $d, reason: \"staging\") }";
    let unlist = "mutation($d: String!) { removeFromAllowList(domain: $d, reason: \"done\") }";
    let staging = json!({ "d": "staging.tb-test.example" });
    let r = app.gql(list, staging.clone(), Some(&root)).await;
    assert_eq!(r["data"]["allowListDomain"], true, "{r}");
    for ws in [&mut ada_ws, &mut bob_ws] {
        let listed = next_change(ws).await;
        assert_eq!(listed["domain"], "staging.tb-test.example", "{listed}");
        assert!(listed["account"].is_null(), "{listed}");
        assert_eq!(listed["row"]["status"], "ALLOW_LISTED", "{listed}");
    }
    let r = app.gql(unlist, staging, Some(&root)).await;
    assert_eq!(r["data"]["removeFromAllowList"], true, "{r}");
    for ws in [&mut ada_ws, &mut bob_ws] {
        let removed = next_change(ws).await;
        assert_eq!(removed["domain"], "staging.tb-test.example", "{removed}");
        assert!(removed["row"].is_null(), "{removed}");
    }
    app.terminate().await;
    app.store.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_private_addresses_refused_a_name_on_loopback_is_never_contacted() {
    let dns = DnsServer::start().await.unwrap();
    let site = Site::start().await;
    // The default: private addresses refused.
    let app = gateway(&dns, &site, TestStore::sqlite(), &[]).await;
    app.with_accounts().await;
    let ada = app.token("ada", PASSWORD).await;
    let name = "local.tb-test.example";
    dns.a(name, Ipv4Addr::LOCALHOST);
    let token = claim(&app, &ada, name).await;
    site.serve(name, ok(&token));

    let r = verify(&app, &ada, name, None, None).await;
    let row = &r["data"]["verifyDomain"];
    // The refusal tells more than the missing TXT record, so it is kept.
    assert_failed(row, "WELL_KNOWN", "REFUSED_ADDRESS");
    let detail = row["lastFailure"]["detail"].as_str().unwrap();
    assert!(
        detail.contains("127.0.0.1") && detail.contains("loopback"),
        "{row}"
    );
    assert!(
        site.requests().is_empty(),
        "the site was contacted: {:?}",
        site.requests()
    );
}
