//! A proxy a flow goes through: scheme, host, port, optional credentials and
//! a region label. Its password is a [`Password`]: never quoted in an error.

use std::net::IpAddr;

use domain::DomainName;
use percent_encoding::percent_decode_str;
use serde::{Deserialize, Serialize};

use crate::record::{Cell, Column, Fields, Row, parse_uint};
use crate::rows::Rows;
use crate::secret::Password;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyScheme {
    Http,
    Https,
    Socks5,
}

impl ProxyScheme {
    fn parse(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "http" => Ok(ProxyScheme::Http),
            "https" => Ok(ProxyScheme::Https),
            "socks5" | "socks" | "socks5h" => Ok(ProxyScheme::Socks5),
            _ => Err(format!("{s:?} is not a proxy scheme (http, https, socks5)")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proxy {
    pub scheme: ProxyScheme,
    /// A domain name (lowercase, punycode) or an IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Password>,
    /// A free label the operator groups proxies by (`us-east`, `DE`…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

const MAX_LABEL: usize = 64;
const MAX_CREDENTIAL: usize = 256;

static SCHEME: Column = Column::new("scheme", &["protocol", "type", "proxy_type"]);
static HOST: Column = Column::new("host", &["hostname", "ip", "address", "server"]).required();
static PORT: Column = Column::new("port", &[]).required();
static USERNAME: Column = Column::new("username", &["user", "login"]);
static PASSWORD: Column = Column::new("password", &["pass", "pwd"]);
static REGION: Column = Column::new("region", &["country", "location", "label", "geo"]);

/// An IP address, or a domain name in its canonical form.
fn parse_host(s: &str) -> Result<String, String> {
    let unbracketed = s
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(s);
    match unbracketed.parse::<IpAddr>() {
        Ok(ip) => Ok(ip.to_string()),
        Err(_) => DomainName::parse(s)
            .map(|d| d.as_str().to_owned())
            .map_err(|e| e.to_string()),
    }
}

fn parse_label(s: &str) -> Result<String, String> {
    if s.chars().count() > MAX_LABEL || s.chars().any(char::is_control) {
        Err(format!(
            "a region is a label of at most {MAX_LABEL} characters"
        ))
    } else {
        Ok(s.to_owned())
    }
}

impl Row for Proxy {
    const COLUMNS: &'static [&'static Column] =
        &[&SCHEME, &HOST, &PORT, &USERNAME, &PASSWORD, &REGION];

    fn read(f: &mut Fields<'_>) -> Option<Self> {
        let scheme = f
            .parsed(&SCHEME, ProxyScheme::parse)
            .unwrap_or(ProxyScheme::Http);
        let host = f.required_as(&HOST, parse_host);
        let port = f.required_as(&PORT, |s| {
            parse_uint(s, 1, 65_535)
                .map(|p| p as u16)
                .map_err(|_| format!("{s:?} is not a port (1 to 65535)"))
        });
        let username = f.parsed(&USERNAME, |s| {
            if s.len() > MAX_CREDENTIAL || s.chars().any(char::is_control) {
                Err(format!(
                    "a user name is at most {MAX_CREDENTIAL} printable characters"
                ))
            } else {
                Ok(s.to_owned())
            }
        });
        // Read raw and never echoed: a password may hold anything but control characters.
        let password = f.parsed(&PASSWORD, |s| {
            if s.len() > MAX_CREDENTIAL || s.chars().any(char::is_control) {
                Err(format!(
                    "a password is at most {MAX_CREDENTIAL} printable characters"
                ))
            } else {
                Ok(Password::Clear(s.into()))
            }
        });
        let region = f.parsed(&REGION, parse_label);
        if f.ok() && password.is_some() && username.is_none() {
            f.error(&USERNAME, "a password needs a user name");
        }
        f.finish(|| {
            Some(Proxy {
                scheme,
                host: host?,
                port: port?,
                username,
                password,
                region,
            })
        })
    }

    fn into_rows(rows: Vec<Self>) -> Rows {
        Rows::Proxies(rows)
    }
}

/// Splits one txt line into the proxy's cells, in column order: `scheme://user:pass@host:port`,
/// `host:port` or `host:port:user:pass`, each optionally followed by a region.
/// Never quotes the line (it may hold a password).
pub(crate) fn txt_cells(line: &str) -> Result<[Cell; 6], String> {
    let (address, region) = match line.split_once(char::is_whitespace) {
        Some((a, r)) => (a, r.trim()),
        None => (line, ""),
    };
    let (scheme, rest) = match address.split_once("://") {
        Some((s, r)) => (s, r),
        None => ("http", address),
    };
    let (userinfo, hostport) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    let hostport = hostport.trim_end_matches('/');
    let (host, port, user, pass) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, port) = v6
            .split_once("]:")
            .ok_or("an IPv6 proxy is written [address]:port")?;
        (host, port, None, None)
    } else {
        let mut parts = hostport.splitn(4, ':');
        let host = parts.next().unwrap_or_default();
        let port = parts.next().ok_or("expected host:port")?;
        match (parts.next(), parts.next()) {
            (Some(_), None) => return Err("expected host:port or host:port:user:password".into()),
            (user, pass) if userinfo.is_none() => (host, port, user, pass),
            (None, None) => (host, port, None, None),
            _ => return Err("give the credentials once: user:password@host:port".into()),
        }
    };
    let (user, pass) = match userinfo {
        Some(info) => {
            let (u, p) = match info.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (info, None),
            };
            let decode = |s: &str| {
                percent_decode_str(s)
                    .decode_utf8()
                    .map(|s| s.into_owned())
                    .map_err(|_| "the credentials are not UTF-8 once percent-decoded".to_owned())
            };
            (Some(decode(u)?), p.map(decode).transpose()?)
        }
        None => (user.map(str::to_owned), pass.map(str::to_owned)),
    };
    let text = |s: Option<String>| s.map_or(Cell::Empty, Cell::Text);
    Ok([
        Cell::Text(scheme.to_owned()),
        Cell::Text(host.to_owned()),
        Cell::Text(port.to_owned()),
        text(user),
        text(pass),
        Cell::Text(region.to_owned()),
    ])
}
