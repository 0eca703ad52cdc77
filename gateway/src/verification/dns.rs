//! The verification check's DNS: the TXT record where an owner may publish
//! the token, and the addresses the well-known fetch may connect to. One
//! resolver, the system's or the configured server, answers both.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use domain::DomainName;
use domain::target_domain::FailureReason;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig,
};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver, TokioResolver};

use super::CheckFailed;

/// How long one query waits for an answer, and how often it is sent.
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);
const ATTEMPTS: usize = 2;

/// The resolver could not be set up.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot read the system's DNS configuration for domain verification ({0}); \
     name a server with verification_dns_server (--verification-dns-server)"
)]
pub struct DnsSetupError(NetError);

pub struct Dns {
    resolver: TokioResolver,
}

impl Dns {
    /// Asks `server` (`ip:port`), or the servers the system names.
    pub fn new(server: Option<SocketAddr>) -> Result<Self, DnsSetupError> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = match server {
            Some(server) => {
                let connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
                    .into_iter()
                    .map(|mut c| {
                        c.port = server.port();
                        c
                    })
                    .collect();
                let name_server = NameServerConfig::new(server.ip(), true, connections);
                Resolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![name_server]),
                    provider,
                )
            }
            None => Resolver::builder(provider).map_err(DnsSetupError)?,
        };
        let options = builder.options_mut();
        options.timeout = QUERY_TIMEOUT;
        options.attempts = ATTEMPTS;
        // Every address is checked by the guard, so ask for both families.
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        // A check right after the owner published the record must see it,
        // not a cached "nothing there".
        options.cache_size = 0;
        let resolver = builder.build().map_err(DnsSetupError)?;
        Ok(Self { resolver })
    }

    /// Every address `domain` resolves to.
    pub async fn addresses(&self, domain: &DomainName) -> Result<Vec<IpAddr>, CheckFailed> {
        let lookup = self
            .resolver
            .lookup_ip(fqdn(domain.as_str()))
            .await
            .map_err(|e| failed(&e, format!("looking up {domain}")))?;
        let addrs: Vec<IpAddr> = lookup.iter().collect();
        if addrs.is_empty() {
            return Err(CheckFailed::new(
                FailureReason::DnsError,
                format!("{domain} has no address"),
            ));
        }
        Ok(addrs)
    }

    /// The TXT records at `name`, each record's strings joined (as a long
    /// value is split into several strings).
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, CheckFailed> {
        match self.resolver.txt_lookup(fqdn(name)).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    RData::TXT(txt) => Some(
                        txt.txt_data
                            .iter()
                            .map(|part| String::from_utf8_lossy(part))
                            .collect(),
                    ),
                    _ => None,
                })
                .collect()),
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => Err(CheckFailed::new(
                FailureReason::NotFound,
                format!("no TXT record at {name}"),
            )),
            Err(e) => Err(failed(&e, format!("looking up the TXT record at {name}"))),
        }
    }
}

/// Why a lookup failed: nothing there, no answer in time, or else.
fn failed(e: &NetError, what: String) -> CheckFailed {
    if e.is_nx_domain() || e.is_no_records_found() {
        CheckFailed::new(FailureReason::DnsError, format!("{what}: no such record"))
    } else if matches!(e, NetError::Timeout) {
        CheckFailed::new(
            FailureReason::Timeout,
            format!("{what}: the DNS server did not answer"),
        )
    } else {
        CheckFailed::new(FailureReason::DnsError, format!("{what}: {e}"))
    }
}

/// The name with its root dot, so no search domain is tried after it.
fn fqdn(name: &str) -> String {
    format!("{name}.")
}
