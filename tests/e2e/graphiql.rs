//! GraphiQL comes from the gateway itself: the page and every file it
//! names are served here, and the page names no other host.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::spawn_app;

/// A GET on loopback: (status, lower-cased head, body).
async fn get(addr: &str, path: &str) -> (u16, String, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP response");
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head, raw[split + 4..].to_vec())
}

/// The values of `attribute="…"` in `html`.
fn attribute_values<'a>(html: &'a str, attribute: &str) -> Vec<&'a str> {
    let needle = format!(" {attribute}=\"");
    html.match_indices(&needle)
        .map(|(at, _)| {
            let rest = &html[at + needle.len()..];
            &rest[..rest.find('"').unwrap()]
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphiql_and_every_file_it_names_come_from_the_gateway() {
    let app = spawn_app().await;
    let (status, head, page) = get(&app.addr, "/graphiql").await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(
        head.contains("content-security-policy: default-src 'none'; script-src 'self';"),
        "{head}"
    );
    let page = String::from_utf8(page).unwrap();
    for scheme in ["http://", "https://", "//"] {
        assert!(
            !page.contains(scheme),
            "the page names another host: {page}"
        );
    }

    let mut files: Vec<&str> = attribute_values(&page, "src");
    files.extend(attribute_values(&page, "href"));
    files.retain(|f| !f.starts_with("data:"));
    assert!(files.len() >= 5, "scripts and styles: {files:?}");
    for file in files {
        assert!(file.starts_with("/graphiql/"), "{file}");
        let (status, head, body) = get(&app.addr, file).await;
        assert_eq!(status, 200, "{file}");
        assert!(!body.is_empty(), "{file}");
        let expected = if file.ends_with(".js") {
            "content-type: text/javascript"
        } else {
            "content-type: text/css"
        };
        assert!(head.contains(expected), "{file}: {head}");
        if file.contains("-3.9.0") || file.contains("-18.3.1") {
            assert!(head.contains("immutable"), "{file}: {head}");
        }
    }
    let (status, _, _) = get(&app.addr, "/graphiql/nothing-here.js").await;
    assert_eq!(status, 404);
}
