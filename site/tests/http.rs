//! The recording site over plain HTTP on loopback: what it serves under
//! each host name, and that it records every request and beacon.

use std::time::{Duration, Instant};

use site::{Reply, RunningSite, SiteOptions, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HOSTS: [&str; 3] = ["shop.test", "partner.test", "elsewhere.test"];

async fn site() -> RunningSite {
    start(SiteOptions::new(HOSTS)).await.unwrap()
}

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `head` (request line and headers, without the blank line) and
/// `body` on a fresh connection, and reads the whole answer.
async fn exchange(site: &RunningSite, head: &str, body: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(site.addr()).await.unwrap();
    let mut request = format!("{head}\r\nConnection: close\r\n");
    if !body.is_empty() {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
    Answer {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

async fn get(site: &RunningSite, host: &str, path: &str, extra: &[&str]) -> Answer {
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: {host}:{}", site.port());
    for h in extra {
        head.push_str("\r\n");
        head.push_str(h);
    }
    exchange(site, &head, b"").await
}

async fn beacon(site: &RunningSite, host: &str, body: &str) -> Answer {
    let head = format!(
        "POST /tb/beacon HTTP/1.1\r\nHost: {host}:{}\r\nContent-Type: text/plain;charset=UTF-8",
        site.port()
    );
    exchange(site, &head, body.as_bytes()).await
}

/// The page view id the server put in a page.
fn view_of(page: &Answer) -> String {
    let html = page.text();
    let start = html.find("view:\"").expect("a view id in the page") + 6;
    html[start..].split('"').next().unwrap().to_owned()
}

#[tokio::test]
async fn each_host_serves_the_site_and_links_to_the_other_hosts() {
    let site = site().await;
    let port = site.port();
    for host in HOSTS {
        let page = get(&site, host, "/page/2", &[]).await;
        assert_eq!(page.status, 200);
        assert_eq!(
            page.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        let html = page.text();
        assert!(
            html.contains(&format!("<title>Article 2 · {host}</title>")),
            "{host}"
        );
        assert!(html.contains("href=\"/page/3\""));
        for other in HOSTS.iter().filter(|h| **h != host) {
            assert!(
                html.contains(&format!("href=\"http://{other}:{port}/\"")),
                "{host} → {other}"
            );
        }
        assert!(
            !html.contains(&format!("href=\"http://{host}:{port}/\"")),
            "{host} links to itself"
        );
    }
    let visits = site.visits();
    assert_eq!(
        visits.iter().map(|v| v.host.as_str()).collect::<Vec<_>>(),
        HOSTS
    );
    assert!(visits.iter().all(|v| v.path == "/page/2"));
}

#[tokio::test]
async fn every_request_is_recorded_with_its_host_path_headers_and_status() {
    let site = site().await;
    let page = get(
        &site,
        "Shop.Test",
        "/?utm=1",
        &[
            "User-Agent: TestAgent/1.0",
            "Referer: https://www.google.com/search?q=shoes",
            "X-TrafficBuster-Job: 0190f1a2-0000-7000-8000-00000000000a",
        ],
    )
    .await;
    assert_eq!(page.status, 200);
    get(&site, "shop.test", "/img/1.bmp", &[]).await;
    get(&site, "partner.test", "/nothing-here", &[]).await;

    let shop = site.requests_to("shop.test");
    assert_eq!(shop.len(), 2);
    let first = &shop[0];
    assert_eq!(
        (first.method.as_str(), first.path.as_str()),
        ("GET", "/?utm=1")
    );
    assert_eq!(first.user_agent(), Some("TestAgent/1.0"));
    assert_eq!(
        first.referer(),
        Some("https://www.google.com/search?q=shoes")
    );
    assert_eq!(first.marker(), Some("0190f1a2-0000-7000-8000-00000000000a"));
    assert_eq!(first.status, Some(200));
    assert_eq!(
        (shop[1].path.as_str(), shop[1].status),
        ("/img/1.bmp", Some(200))
    );
    assert_eq!(site.requests_to("PARTNER.test")[0].status, Some(404));
    assert_eq!(site.requests_to("elsewhere.test"), vec![]);
    let seqs: Vec<u64> = site.requests().iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [0, 1, 2]);

    let visit = &site.visits()[0];
    assert_eq!(visit.request.marker(), first.marker());
    assert_eq!(visit.request.referer(), first.referer());
}

#[tokio::test]
async fn a_host_the_site_does_not_serve_is_refused_and_still_recorded() {
    let site = site().await;
    let answer = get(&site, "unknown.test", "/", &[]).await;
    assert_eq!(answer.status, 421);
    assert!(
        answer.text().contains("does not serve unknown.test"),
        "{}",
        answer.text()
    );
    let no_host = exchange(&site, "GET / HTTP/1.0", b"").await;
    assert_eq!(no_host.status, 400);
    assert_eq!(site.requests_to("unknown.test")[0].status, Some(421));
    assert_eq!(site.requests().len(), 2);
    assert!(site.visits().is_empty());
}

#[tokio::test]
async fn a_browser_session_is_one_cookie_per_host() {
    let site = site().await;
    let first = get(&site, "shop.test", "/", &[]).await;
    let cookie = first
        .header("set-cookie")
        .expect("a session cookie")
        .to_owned();
    let pair = cookie.split(';').next().unwrap().to_owned();
    let again = get(
        &site,
        "shop.test",
        "/page/1",
        &[&format!("Cookie: a=b; {pair}")],
    )
    .await;
    assert_eq!(again.header("set-cookie"), None);
    get(&site, "shop.test", "/", &[]).await;

    let seen = site.seen();
    let sessions: Vec<Vec<&str>> = seen
        .sessions()
        .iter()
        .map(|s| s.iter().map(|v| v.path.as_str()).collect())
        .collect();
    assert_eq!(sessions, [vec!["/", "/page/1"], vec!["/"]]);
}

#[tokio::test]
async fn beacons_join_the_page_view_they_name() {
    let site = site().await;
    let page = get(&site, "shop.test", "/page/4", &[]).await;
    let view = view_of(&page);
    let client = format!(
        r#"{{"kind":"view","view":"{view}","t":35.2,"url":"http://shop.test/page/4","referrer":"https://ref.example/",
        "user_agent":"Mozilla/5.0 Test","viewport_width":390,"viewport_height":844,"screen_width":390,
        "screen_height":844,"device_pixel_ratio":3,"max_touch_points":5,"touch_events":true,
        "timezone":"Asia/Tokyo","language":"ja-JP","languages":["ja-JP"],"page_height":5200}}"#
    );
    let beacons = [
        client,
        format!(
            r#"{{"kind":"scroll","view":"{view}","t":2100,"events":[{{"y":0,"t":1500}},{{"y":640,"t":1980.5}}]}}"#
        ),
        format!(
            r#"{{"kind":"click","view":"{view}","t":9000,"href":"http://partner.test/","x":20,"y":300,"trusted":true}}"#
        ),
        format!(
            r#"{{"kind":"leave","view":"{view}","t":12345,"reason":"pagehide","page_height":5200}}"#
        ),
    ];
    for body in &beacons {
        assert_eq!(beacon(&site, "shop.test", body).await.status, 204, "{body}");
    }
    let visit = site.visits().pop().unwrap();
    let client = visit.client.as_ref().unwrap();
    assert_eq!((client.viewport_width, client.viewport_height), (390, 844));
    assert_eq!(client.device_pixel_ratio, 3.0);
    assert!(client.touch_events && client.max_touch_points == 5);
    assert_eq!(
        (client.timezone.as_str(), client.language.as_str()),
        ("Asia/Tokyo", "ja-JP")
    );
    assert_eq!(client.referrer, "https://ref.example/");
    assert_eq!(
        visit.scrolls.iter().map(|s| s.y).collect::<Vec<_>>(),
        [0.0, 640.0]
    );
    assert_eq!(
        visit.clicks[0].href.as_deref(),
        Some("http://partner.test/")
    );
    assert!(visit.clicks[0].trusted);
    assert_eq!(visit.time_on_page(), Some(Duration::from_millis(12_345)));
    assert!(site.seen().stray_beacons.is_empty());
}

#[tokio::test]
async fn beacons_that_name_no_page_view_or_cannot_be_read_are_refused_and_kept_aside() {
    let site = site().await;
    let unknown = beacon(
        &site,
        "shop.test",
        r#"{"kind":"leave","view":"v99","t":1,"reason":"pagehide","page_height":1}"#,
    )
    .await;
    assert_eq!(unknown.status, 404);
    assert_eq!(beacon(&site, "shop.test", "{not json").await.status, 400);
    let huge = "x".repeat(70 * 1024);
    assert_eq!(beacon(&site, "shop.test", &huge).await.status, 413);
    let stray = site.seen().stray_beacons;
    assert_eq!(stray.len(), 3);
    assert!(stray[0].why.contains("v99"), "{}", stray[0].why);
    assert!(stray[1].why.starts_with("not a beacon"), "{}", stray[1].why);
}

#[tokio::test]
async fn the_tracker_and_images_are_served_and_other_methods_refused() {
    let site = site().await;
    let tracker = get(&site, "shop.test", "/tb/tracker.js", &[]).await;
    assert_eq!(tracker.status, 200);
    assert!(tracker.text().contains("sendBeacon"));
    let image = get(&site, "shop.test", "/img/3.bmp", &[]).await;
    assert_eq!(
        (image.status, image.header("content-type")),
        (200, Some("image/bmp"))
    );
    assert_eq!(&image.body[..2], b"BM");
    let page = get(&site, "shop.test", "/", &[]).await;
    let images: usize = page.text().matches("<img src=\"/img/").count();
    let weight = page.body.len() + tracker.body.len() + images * image.body.len();
    assert!(
        (45_000..60_000).contains(&weight),
        "the standard page weighs {weight} bytes"
    );
    assert_eq!(
        get(&site, "shop.test", "/img/99.bmp", &[]).await.status,
        404
    );
    let post = exchange(
        &site,
        &format!("POST / HTTP/1.1\r\nHost: shop.test:{}", site.port()),
        b"x",
    )
    .await;
    assert_eq!(post.status, 405);
}

#[tokio::test]
async fn chosen_paths_answer_a_file_an_error_or_slowly_and_can_change_while_serving() {
    let token = "tb-verify-0123456789abcdef";
    let options = SiteOptions::new(HOSTS)
        .route(
            "/.well-known/trafficbuster-verification.txt",
            Reply::text(token),
        )
        .route("/page/5", Reply::Status(503));
    let site = start(options).await.unwrap();
    let file = get(
        &site,
        "partner.test",
        "/.well-known/trafficbuster-verification.txt",
        &[],
    )
    .await;
    assert_eq!((file.status, file.text()), (200, token.to_owned()));
    assert_eq!(
        get(&site, "shop.test", "/page/5?x=1", &[]).await.status,
        503
    );

    site.set_route("/page/1", Reply::Slow(Duration::from_millis(400)));
    let started = Instant::now();
    let slow = get(&site, "shop.test", "/page/1", &[]).await;
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(slow.status, 200);
    assert!(slow.text().contains("Article 1"));

    site.clear_route("/page/5");
    assert_eq!(get(&site, "shop.test", "/page/5", &[]).await.status, 200);
    let statuses: Vec<_> = site.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [Some(200), Some(503), Some(200), Some(200)]);
}

#[tokio::test]
async fn a_request_still_being_answered_is_recorded_at_once_without_a_status() {
    let site = site().await;
    site.set_route("/page/2", Reply::Slow(Duration::from_secs(30)));
    let port = site.port();
    let addr = site.addr();
    let pending = tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = format!("GET /page/2 HTTP/1.1\r\nHost: shop.test:{port}\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut buf = [0; 1];
        let _ = stream.read(&mut buf).await;
    });
    let seen = site
        .wait_until(Duration::from_secs(5), |s| s.requests.first().cloned())
        .await
        .unwrap();
    assert_eq!((seen.path.as_str(), seen.status), ("/page/2", None));
    pending.abort();
}

#[tokio::test]
async fn waiting_ends_when_the_site_sees_what_is_awaited_or_times_out() {
    let site = site().await;
    let addr = site.addr();
    let port = site.port();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "GET /short HTTP/1.1\r\nHost: elsewhere.test:{port}\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink).await;
    });
    let visit = site
        .wait_until(Duration::from_secs(5), |s| {
            s.visits_to("elsewhere.test").first().map(|v| (*v).clone())
        })
        .await
        .unwrap();
    assert_eq!(visit.path, "/short");
    let none = site
        .wait_until(Duration::from_millis(300), |s| {
            s.visits_to("partner.test").first().map(|_| ())
        })
        .await;
    assert!(none.is_err());
    site.clear();
    assert!(site.requests().is_empty() && site.visits().is_empty());
}

#[tokio::test]
async fn many_concurrent_requests_are_each_recorded_once() {
    let site = std::sync::Arc::new(site().await);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let site = site.clone();
        tasks.push(tokio::spawn(async move {
            get(&site, HOSTS[i % 3], &format!("/page/{}", i % 6 + 1), &[])
                .await
                .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let mut seqs: Vec<u64> = site.requests().iter().map(|r| r.seq).collect();
    seqs.sort();
    assert_eq!(seqs, (0..40).collect::<Vec<_>>());
    let mut views: Vec<String> = site.visits().into_iter().map(|v| v.view).collect();
    views.sort();
    views.dedup();
    assert_eq!(views.len(), 40);
}

#[tokio::test]
async fn the_site_tells_chromium_how_to_reach_its_hosts_and_stops_when_asked_or_dropped() {
    let site = site().await;
    assert_eq!(
        site.host_resolver_rules(),
        "MAP shop.test 127.0.0.1,MAP partner.test 127.0.0.1,MAP elsewhere.test 127.0.0.1"
    );
    assert_eq!(
        site.url("shop.test", "/page/1"),
        format!("http://shop.test:{}/page/1", site.port())
    );
    let addr = site.addr();
    site.stop().await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still listening after stop"
    );

    let dropped = self::site().await;
    let addr = dropped.addr();
    drop(dropped);
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still listening 5 s after drop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn options_that_cannot_serve_are_refused() {
    let none: [&str; 0] = [];
    assert!(matches!(
        start(SiteOptions::new(none)).await,
        Err(site::SiteError::NoHosts)
    ));
    let bad = start(SiteOptions::new(["shop.test:8080"])).await;
    assert!(matches!(bad, Err(site::SiteError::BadHost(h)) if h == "shop.test:8080"));
    let route = start(SiteOptions::new(["a.test"]).route("page", Reply::Status(500))).await;
    assert!(matches!(route, Err(site::SiteError::BadRoute(_))));
}
