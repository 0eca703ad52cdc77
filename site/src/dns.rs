//! A real DNS server on loopback: a UDP responder, built on hickory-proto's
//! message types, that answers the A and TXT records it is given, NXDOMAIN
//! for names it does not know, and an empty answer for a known name's
//! other types. Tests and the demo point the gateway's domain verification
//! at it (`--verification-dns-server`), so the site's host names resolve
//! to loopback for the check as they do for the browser. Nothing a client
//! sends can make it panic.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::{A, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// Records by lower-case name with its root dot.
type Zone = HashMap<String, Vec<RData>>;

/// A DNS server answering on 127.0.0.1; stops when dropped.
pub struct DnsServer {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    task: JoinHandle<()>,
}

impl DnsServer {
    /// Starts answering on a UDP port of 127.0.0.1 the OS picks.
    pub async fn start() -> std::io::Result<Self> {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = socket.local_addr()?;
        let zone = Arc::new(Mutex::new(Zone::new()));
        let task = tokio::spawn(serve(socket, zone.clone()));
        Ok(Self { addr, zone, task })
    }

    /// Where it answers.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// An A record: `name` → `ip`.
    pub fn a(&self, name: &str, ip: Ipv4Addr) {
        self.add(name, RData::A(A(ip)));
    }

    /// A TXT record at `name` holding `text` (one string).
    pub fn txt(&self, name: &str, text: &str) {
        self.add(name, RData::TXT(TXT::new(vec![text.to_owned()])));
    }

    fn add(&self, name: &str, data: RData) {
        let key = format!("{}.", name.to_ascii_lowercase());
        self.zone
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key)
            .or_default()
            .push(data);
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(socket: UdpSocket, zone: Arc<Mutex<Zone>>) {
    let mut buf = [0u8; 4096];
    loop {
        let Ok((len, from)) = socket.recv_from(&mut buf).await else {
            return;
        };
        let Ok(query) = Message::from_vec(&buf[..len]) else {
            continue;
        };
        let answer = answer(&query, &zone.lock().unwrap_or_else(PoisonError::into_inner));
        if let Ok(bytes) = answer.to_vec() {
            let _ = socket.send_to(&bytes, from).await;
        }
    }
}

fn answer(query: &Message, zone: &Zone) -> Message {
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.metadata.authoritative = true;
    for q in &query.queries {
        reply.add_query(q.clone());
        let name = q.name().to_ascii().to_ascii_lowercase();
        let Some(records) = zone.get(&name) else {
            reply.metadata.response_code = ResponseCode::NXDomain;
            continue;
        };
        // A name the zone holds is one a query's name parses back into.
        let Ok(owner) = Name::from_ascii(&name) else {
            continue;
        };
        for data in records {
            let wanted = matches!(
                (q.query_type(), data),
                (RecordType::A, RData::A(_)) | (RecordType::TXT, RData::TXT(_))
            );
            if wanted {
                reply.add_answer(Record::from_rdata(owner.clone(), 60, data.clone()));
            }
        }
    }
    reply
}
