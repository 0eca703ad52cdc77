//! The well-known fetch: one GET of the verification file over a
//! connection opened here to an address the guard already checked (no
//! second lookup, so the name cannot be rebound in between), with the
//! domain as Host and as the TLS server name. HTTPS first, plain HTTP if
//! HTTPS cannot connect; redirects on the same host are followed a few
//! times, one to another host ends the check; the body is read up to a cap.
//! The caller bounds the total time.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use domain::DomainName;
use domain::target_domain::FailureReason;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::header::{ACCEPT, CONNECTION, CONTENT_LENGTH, HOST, LOCATION, USER_AGENT};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use url::Url;

use super::CheckFailed;

/// Where the owner serves the token, under the domain.
pub const WELL_KNOWN_PATH: &str = "/.well-known/trafficbuster-verification.txt";

/// How long one address may take to accept a connection before the next
/// is tried (or HTTPS is given up for HTTP).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

const AGENT: &str = concat!(
    "TrafficBuster-Verification/",
    env!("CARGO_PKG_VERSION"),
    " (domain ownership check)"
);

/// The ports a URL without one is fetched from: 443 and 80, unless a test
/// or a non-standard set-up says otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub https: u16,
    pub http: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Self {
            https: 443,
            http: 80,
        }
    }
}

/// How a fetch is made.
#[derive(Clone)]
pub struct FetchConfig {
    pub ports: Ports,
    pub tls: Arc<ClientConfig>,
    /// Bytes of body read at most; one more is too large.
    pub max_body: usize,
    /// Same-host redirects followed at most.
    pub max_redirects: u8,
}

/// What the well-known URL served.
#[derive(Debug)]
pub struct Fetched {
    /// Where it was served, after any redirects.
    pub url: Url,
    pub body: Vec<u8>,
}

/// One try at a URL went wrong: before a connection was made (so another
/// scheme may be tried), or after.
enum Attempt {
    NoConnection(String),
    Failed(CheckFailed),
}

impl From<CheckFailed> for Attempt {
    fn from(f: CheckFailed) -> Self {
        Attempt::Failed(f)
    }
}

/// Fetches the well-known file of `host`, connecting only to `addrs`.
pub async fn well_known(
    host: &DomainName,
    addrs: &[IpAddr],
    config: &FetchConfig,
) -> Result<Fetched, CheckFailed> {
    let mut url = Url::parse(&format!("https://{host}{WELL_KNOWN_PATH}"))
        .map_err(|e| CheckFailed::other("the well-known URL", e))?;
    let mut redirects = 0;
    let mut no_https = None;
    loop {
        let (response, _connection) = match get(&url, host, addrs, config).await {
            Ok(exchange) => exchange,
            Err(Attempt::Failed(failed)) => return Err(failed),
            Err(Attempt::NoConnection(why)) => match no_https.take() {
                None if redirects == 0 && url.scheme() == "https" => {
                    no_https = Some(why);
                    url.set_scheme("http")
                        .map_err(|()| CheckFailed::other("the well-known URL", "no http form"))?;
                    continue;
                }
                https => {
                    let tried = https.map(|h| format!("{h}; ")).unwrap_or_default();
                    return Err(CheckFailed::new(
                        FailureReason::Unreachable,
                        format!("{tried}{why}"),
                    ));
                }
            },
        };
        let status = response.status();
        if status.is_redirection() {
            let next = redirect_target(&url, &response, host)?;
            redirects += 1;
            if redirects > config.max_redirects {
                return Err(CheckFailed::new(
                    FailureReason::Other(format!(
                        "it redirected more than {} times",
                        config.max_redirects
                    )),
                    format!("the last redirect was to {next}"),
                ));
            }
            url = next;
            continue;
        }
        if matches!(status, StatusCode::NOT_FOUND | StatusCode::GONE) {
            return Err(CheckFailed::new(
                FailureReason::NotFound,
                format!("HTTP {status} at {url}"),
            ));
        }
        if !status.is_success() {
            return Err(CheckFailed::new(
                FailureReason::Other(format!("the site answered HTTP {status}")),
                format!("at {url}"),
            ));
        }
        let body = read_capped(response, config.max_body, &url).await?;
        return Ok(Fetched { url, body });
    }
}

/// Where a redirect leads, if the check may follow it: the same host,
/// over HTTP or HTTPS.
fn redirect_target(
    from: &Url,
    response: &Response<Incoming>,
    host: &DomainName,
) -> Result<Url, CheckFailed> {
    let status = response.status();
    let unreadable = |why: &str| {
        CheckFailed::new(
            FailureReason::Other(format!("HTTP {status} with {why}")),
            format!("at {from}"),
        )
    };
    let location = response
        .headers()
        .get(LOCATION)
        .ok_or_else(|| unreadable("no Location"))?
        .to_str()
        .map_err(|_| unreadable("an unreadable Location"))?;
    let next = from
        .join(location)
        .map_err(|_| unreadable("an unreadable Location"))?;
    if !matches!(next.scheme(), "http" | "https") {
        return Err(unreadable("a Location that is not HTTP"));
    }
    let same_host = next
        .host_str()
        .and_then(|h| DomainName::parse(h).ok())
        .is_some_and(|h| h == *host);
    if !same_host {
        let to = next.host_str().unwrap_or("no host");
        return Err(CheckFailed::new(
            FailureReason::RedirectToOtherHost,
            format!("{from} redirected to {to}"),
        ));
    }
    Ok(next)
}

/// Aborts the task driving a connection when the exchange is done with
/// (or abandoned at the time limit), so no connection outlives its check.
pub(crate) struct Connection(JoinHandle<()>);

impl Drop for Connection {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One GET of `url`: connects to the first of `addrs` that accepts, speaks
/// TLS for https, and returns the response head.
async fn get(
    url: &Url,
    host: &DomainName,
    addrs: &[IpAddr],
    config: &FetchConfig,
) -> Result<(Response<Incoming>, Connection), Attempt> {
    let https = url.scheme() == "https";
    let (port, standard) = match (url.port(), https) {
        (Some(port), true) => (port, 443),
        (Some(port), false) => (port, 80),
        (None, true) => (config.ports.https, 443),
        (None, false) => (config.ports.http, 80),
    };
    let tcp = connect(url.scheme(), addrs, port).await?;
    let host_header = if port == standard {
        host.to_string()
    } else {
        format!("{host}:{port}")
    };
    let path = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    };
    let request = Request::get(path)
        .header(HOST, host_header)
        .header(USER_AGENT, AGENT)
        .header(ACCEPT, "text/plain")
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| CheckFailed::other("the request", e))?;
    if !https {
        return Ok(exchange(tcp, request, url).await?);
    }
    let name = ServerName::try_from(host.as_str().to_owned())
        .map_err(|e| CheckFailed::new(FailureReason::TlsError, e.to_string()))?;
    let tls = TlsConnector::from(config.tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| CheckFailed::new(FailureReason::TlsError, format!("{url}: {e}")))?;
    Ok(exchange(tls, request, url).await?)
}

async fn connect(scheme: &str, addrs: &[IpAddr], port: u16) -> Result<TcpStream, Attempt> {
    connect_first(addrs, port).await.map_err(|failures| {
        Attempt::NoConnection(format!("{scheme} could not connect ({failures})"))
    })
}

/// Connects to the first of `addrs` that accepts on `port`; else says how
/// each failed.
pub(crate) async fn connect_first(addrs: &[IpAddr], port: u16) -> Result<TcpStream, String> {
    let mut failures = Vec::new();
    for &ip in addrs {
        let addr = SocketAddr::new(ip, port);
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => failures.push(format!("{addr}: {e}")),
            Err(_) => failures.push(format!("{addr}: no answer in {CONNECT_TIMEOUT:?}")),
        }
    }
    Err(failures.join(", "))
}

/// Sends `request` over `io` (HTTP/1.1) and waits for the response head.
async fn exchange<IO>(
    io: IO,
    request: Request<Empty<Bytes>>,
    url: &Url,
) -> Result<(Response<Incoming>, Connection), CheckFailed>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    send(io, request).await.map_err(|e| {
        CheckFailed::new(
            FailureReason::Other("the site gave no HTTP answer".into()),
            format!("{url}: {e}"),
        )
    })
}

/// Sends `request` over `io` (HTTP/1.1) and waits for the response head;
/// the connection lives as long as the returned [`Connection`].
pub(crate) async fn send<IO, B>(
    io: IO,
    request: Request<B>,
) -> Result<(Response<Incoming>, Connection), hyper::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    let connection = Connection(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let response = sender.send_request(request).await?;
    Ok((response, connection))
}

/// The body, if it is at most `max` bytes; reading stops at the first
/// byte past that.
async fn read_capped(
    response: Response<Incoming>,
    max: usize,
    url: &Url,
) -> Result<Vec<u8>, CheckFailed> {
    let too_large = || {
        CheckFailed::new(
            FailureReason::TooLarge,
            format!("{url} serves more than {max} bytes"),
        )
    };
    let announced = response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let mut body = response.into_body();
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            CheckFailed::new(
                FailureReason::Other("the answer broke off".into()),
                format!("{url}: {e}"),
            )
        })?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > max {
                return Err(too_large());
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::sync::Mutex;

    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;

    use super::*;

    /// A raw HTTP/1.1 server on loopback answering each path with a canned
    /// response, and noting the paths asked for.
    struct Site {
        port: u16,
        asked: Arc<Mutex<Vec<String>>>,
    }

    impl Site {
        async fn start(answer: impl Fn(&str, u16) -> String + Send + Sync + 'static) -> Self {
            Self::serve(None, answer).await
        }

        /// The site over TLS, with `cert` for `key`.
        async fn start_tls(
            cert: CertificateDer<'static>,
            key: &rcgen::KeyPair,
            answer: impl Fn(&str, u16) -> String + Send + Sync + 'static,
        ) -> Self {
            let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
            let config = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
            Self::serve(Some(TlsAcceptor::from(Arc::new(config))), answer).await
        }

        async fn serve(
            tls: Option<TlsAcceptor>,
            answer: impl Fn(&str, u16) -> String + Send + Sync + 'static,
        ) -> Self {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let asked = Arc::new(Mutex::new(Vec::new()));
            let seen = asked.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let head = match &tls {
                        None => reply(stream, |path| answer(path, port)).await,
                        Some(tls) => match tls.accept(stream).await {
                            Ok(stream) => reply(stream, |path| answer(path, port)).await,
                            Err(e) => format!("TLS refused: {e}"),
                        },
                    };
                    seen.lock().unwrap().push(head);
                }
            });
            Self { port, asked }
        }

        fn heads(&self) -> Vec<String> {
            self.asked.lock().unwrap().clone()
        }
    }

    /// Reads a request's head and writes `answer(path)`; returns the head.
    async fn reply<S: AsyncRead + AsyncWrite + Unpin>(
        mut stream: S,
        answer: impl Fn(&str) -> String,
    ) -> String {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        // Until the head ends, or the client stops sending (a TLS client
        // waits for an answer after its hello).
        while !head.ends_with(b"\r\n\r\n") {
            let read = stream.read(&mut byte);
            match tokio::time::timeout(Duration::from_millis(300), read).await {
                Ok(Ok(1)) => head.push(byte[0]),
                _ => break,
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let path = head.split_whitespace().nth(1).unwrap_or("");
        let _ = stream.write_all(answer(path).as_bytes()).await;
        let _ = stream.shutdown().await;
        head
    }

    fn ok(body: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    fn redirect(to: &str) -> String {
        format!(
            "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
    }

    /// A port with nothing listening on it.
    async fn closed_port() -> u16 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        listener.local_addr().unwrap().port()
    }

    fn host() -> DomainName {
        DomainName::parse("site.test.example").unwrap()
    }

    async fn fetch(https: u16, http: u16) -> Result<Fetched, CheckFailed> {
        let tls = crate::verification::Verifier::new(Default::default())
            .unwrap()
            .fetch
            .tls;
        fetch_trusting(tls, https, http).await
    }

    async fn fetch_trusting(
        tls: Arc<ClientConfig>,
        https: u16,
        http: u16,
    ) -> Result<Fetched, CheckFailed> {
        let config = FetchConfig {
            ports: Ports { https, http },
            tls,
            max_body: 16,
            max_redirects: 2,
        };
        well_known(&host(), &[IpAddr::V4(Ipv4Addr::LOCALHOST)], &config).await
    }

    #[tokio::test]
    async fn https_that_cannot_connect_falls_back_to_http_with_the_domain_as_host() {
        let site = Site::start(|_, _| ok("the token")).await;
        let fetched = fetch(closed_port().await, site.port).await.unwrap();
        assert_eq!(fetched.body, b"the token");
        let heads = site.heads();
        assert!(
            heads[0].starts_with(&format!("GET {WELL_KNOWN_PATH} HTTP/1.1")),
            "{heads:?}"
        );
        let want = format!("host: site.test.example:{}", site.port);
        assert!(heads[0].to_ascii_lowercase().contains(&want), "{heads:?}");
    }

    #[tokio::test]
    async fn nothing_listening_is_unreachable_and_a_404_is_not_found() {
        let failed = fetch(closed_port().await, closed_port().await)
            .await
            .unwrap_err();
        assert_eq!(failed.reason, FailureReason::Unreachable, "{failed:?}");
        assert!(
            failed.detail.contains("https could not connect"),
            "{failed:?}"
        );
        assert!(
            failed.detail.contains("http could not connect"),
            "{failed:?}"
        );
        let site =
            Site::start(|_, _| "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".into()).await;
        let failed = fetch(closed_port().await, site.port).await.unwrap_err();
        assert_eq!(failed.reason, FailureReason::NotFound, "{failed:?}");
    }

    #[tokio::test]
    async fn a_body_past_the_cap_is_too_large_announced_or_not() {
        let exact = Site::start(|_, _| ok(&"x".repeat(16))).await;
        assert_eq!(
            fetch(closed_port().await, exact.port)
                .await
                .unwrap()
                .body
                .len(),
            16
        );
        let announced = Site::start(|_, _| ok(&"x".repeat(17))).await;
        let failed = fetch(closed_port().await, announced.port)
            .await
            .unwrap_err();
        assert_eq!(failed.reason, FailureReason::TooLarge, "{failed:?}");
        // No length given: reading stops at the first byte past the cap.
        let streamed = Site::start(|_, _| {
            format!(
                "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{}",
                "x".repeat(100_000)
            )
        })
        .await;
        let failed = fetch(closed_port().await, streamed.port).await.unwrap_err();
        assert_eq!(failed.reason, FailureReason::TooLarge, "{failed:?}");
    }

    #[tokio::test]
    async fn a_same_host_redirect_is_followed_a_bounded_number_of_times() {
        let site = Site::start(|path, port| match path {
            WELL_KNOWN_PATH => redirect("/moved"),
            "/moved" => redirect(&format!("http://SITE.test.example:{port}/final?x=1")),
            _ => ok("the token"),
        })
        .await;
        let fetched = fetch(closed_port().await, site.port).await.unwrap();
        assert_eq!(fetched.body, b"the token");
        assert_eq!(fetched.url.path(), "/final");
        assert_eq!(site.heads().len(), 3);

        let looping = Site::start(|_, _| redirect("/again")).await;
        let failed = fetch(closed_port().await, looping.port).await.unwrap_err();
        assert_eq!(
            failed.reason,
            FailureReason::Other("it redirected more than 2 times".into())
        );
        assert_eq!(looping.heads().len(), 3);
    }

    #[tokio::test]
    async fn a_redirect_to_another_host_or_an_address_ends_the_check() {
        for to in [
            "https://elsewhere.example/.well-known/trafficbuster-verification.txt",
            "//sub.site.test.example/x",
            "http://127.0.0.1/x",
        ] {
            let site = Site::start(move |_, _| redirect(to)).await;
            let failed = fetch(closed_port().await, site.port).await.unwrap_err();
            assert_eq!(
                failed.reason,
                FailureReason::RedirectToOtherHost,
                "{to}: {failed:?}"
            );
            assert_eq!(site.heads().len(), 1, "{to}");
        }
    }

    #[tokio::test]
    async fn a_port_that_does_not_speak_tls_is_a_tls_error_not_a_fallback() {
        let plain = Site::start(|_, _| ok("the token")).await;
        let http = Site::start(|_, _| ok("the token")).await;
        let failed = fetch(plain.port, http.port).await.unwrap_err();
        assert_eq!(failed.reason, FailureReason::TlsError, "{failed:?}");
        assert!(http.heads().is_empty());
    }

    /// A client that trusts only `cert` (a test's own certificate).
    fn trusting(cert: CertificateDer<'static>) -> Arc<ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        Arc::new(config)
    }

    #[tokio::test]
    async fn https_is_spoken_to_the_domain_by_name_and_a_certificate_for_another_fails() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = |name: &str| {
            rcgen::CertificateParams::new(vec![name.to_owned()])
                .unwrap()
                .self_signed(&key)
                .unwrap()
                .der()
                .clone()
        };
        let ours = cert("site.test.example");
        let site = Site::start_tls(ours.clone(), &key, |_, _| ok("the token")).await;
        let fetched = fetch_trusting(trusting(ours), site.port, closed_port().await)
            .await
            .unwrap();
        assert_eq!(fetched.body, b"the token");
        assert_eq!(fetched.url.scheme(), "https");

        let theirs = cert("elsewhere.example");
        let site = Site::start_tls(theirs.clone(), &key, |_, _| ok("the token")).await;
        let http = Site::start(|_, _| ok("the token")).await;
        let failed = fetch_trusting(trusting(theirs), site.port, http.port)
            .await
            .unwrap_err();
        assert_eq!(failed.reason, FailureReason::TlsError, "{failed:?}");
        assert!(failed.detail.contains("certificate"), "{failed:?}");
        assert!(http.heads().is_empty());
    }
}
