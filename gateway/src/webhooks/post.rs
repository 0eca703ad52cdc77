//! One webhook POST, through the same guard as domain verification: the
//! host is resolved by the gateway's resolver, every address is checked
//! (no private or metadata addresses unless the setting allows them), and
//! the connection goes to a checked address, so the name cannot be rebound
//! in between. Redirects are not followed: a receiver answers where it is.

use http_body_util::Full;
use hyper::Request;
use hyper::body::Bytes;
use hyper::header::{CONNECTION, CONTENT_TYPE, HOST, HeaderName, USER_AGENT};
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;
use url::Url;

use crate::verification::Verifier;
use crate::verification::fetch::{connect_first, send};

const AGENT: &str = concat!("TrafficBuster-Webhooks/", env!("CARGO_PKG_VERSION"));

/// POSTs `body` as JSON to `url` with `headers`; the receiver's status, or
/// why there was none. The caller bounds the time.
pub async fn post(
    verifier: &Verifier,
    url: &Url,
    headers: &[(HeaderName, String)],
    body: Bytes,
) -> Result<u16, String> {
    let host = url.host().ok_or("the URL names no host")?;
    let addrs = verifier.reachable(&host).await?;
    let port = url
        .port_or_known_default()
        .ok_or("the URL's scheme has no port")?;
    let tcp = connect_first(&addrs, port)
        .await
        .map_err(|failures| format!("could not connect ({failures})"))?;
    let host_header = match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_owned(),
    };
    let mut request = Request::post(&url[url::Position::BeforePath..url::Position::AfterQuery])
        .header(HOST, host_header)
        .header(USER_AGENT, AGENT)
        .header(CONTENT_TYPE, "application/json")
        .header(CONNECTION, "close");
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let request = request
        .body(Full::new(body))
        .map_err(|e| format!("the request: {e}"))?;
    let no_answer = |e: hyper::Error| format!("no HTTP answer: {e}");
    let (response, _connection) = if url.scheme() == "https" {
        let name = match host {
            url::Host::Domain(d) => ServerName::try_from(d.to_owned()),
            url::Host::Ipv4(ip) => Ok(ServerName::from(std::net::IpAddr::V4(ip))),
            url::Host::Ipv6(ip) => Ok(ServerName::from(std::net::IpAddr::V6(ip))),
        }
        .map_err(|e| format!("TLS: {e}"))?;
        let tls = TlsConnector::from(verifier.tls())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        send(tls, request).await.map_err(no_answer)?
    } else {
        send(tcp, request).await.map_err(no_answer)?
    };
    Ok(response.status().as_u16())
}
