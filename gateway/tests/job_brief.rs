//! Job briefs (protocol 2) through a real gateway, on both stores: a
//! runner is briefed before its first grant of a job, with the device
//! profiles its platform serves and the proxies' passwords, which never
//! reach an event or a log line; its work names each flow's profile and
//! how its visits arrive; a version 1 runner gets grants and never a
//! brief; a runner that connects again is briefed again on what it holds;
//! a brief too large for a frame comes in parts.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use domain::DomainName;
use domain::flow::{FlowRange, ProxyIndex};
use domain::job::{JobId, JobSettings};
use domain::job_brief::{BriefAssembly, HostMapping, JobBrief, ProxySwitching, Span};
use domain::runner::{Browser, Os, Platform};
use domain::runner_protocol::{
    ErrorCode, GatewayMessage, LeaseGrant, MAX_FRAME_BYTES, PROTOCOL_VERSION, Traffic,
    VersionRange, decode_gateway_message,
};
use runner::{Connection, Leased, Notice};
use serde_json::json;
use store::testing::TestStore;
use tokio_tungstenite::tungstenite::Message;

use support::*;

/// The password of the tests' first proxy: in a brief, nowhere else.
const PASSWORD: &str = "pw-Xq9-brief-7731-only-in-briefs";

/// Everything this test binary logs, at trace level for our own crates.
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let writer = move || Capture(sink.clone());
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "warn,gateway=trace,runner=trace,store=trace,projections=trace,domain=trace",
            ))
            .with_writer(writer)
            .with_ansi(false)
            .init();
        logs
    })
    .clone()
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn platform(os: Os, browser: Browser) -> Platform {
    Platform { os, browser }
}

/// Two targets on shop.example.com (an organic one of 4 flows, the first
/// clicking, and a referral one of 10); profiles for Linux Chromium,
/// Windows Edge and an Android phone; custom DNS; two proxies, the first
/// with credentials.
async fn briefed_job(live: &Live) -> JobId {
    live.running_job_of(
        "url,traffic_type,source,keyword,flow_target,click_target\n\
         https://shop.example.com/a,organic,google,blue shoes,4,1\n\
         https://shop.example.com/b,referral,https://blog.example.org/post,,10,0\n",
        (
            "name,os,browser,user_agent,viewport_width,viewport_height,device_scale_factor,touch,locale,timezone\n\
             desk,linux,chromium,Mozilla/5.0 (X11; Linux x86_64) Chrome/126,1920,1080,1,no,en-US,UTC\n\
             office,windows,edge,Mozilla/5.0 (Windows NT 10.0) Edg/126,1366,768,1,no,de-DE,Europe/Berlin\n\
             pixel,android,chrome,Mozilla/5.0 (Linux; Android 14) Chrome/126 Mobile,412,915,2.625,yes,en-GB,Europe/London\n",
            vec![
                platform(Os::Linux, Browser::Chromium),
                platform(Os::Windows, Browser::Edge),
                platform(Os::Android, Browser::Chrome),
            ],
        ),
        "name,instances,marker_header,proxy_switching,random_scrolling,clicks,session_duration,dns_mode,dns_hosts\n\
         full,4,yes,on_failure,yes,yes,30..90,custom,staging.shop.example.com=192.0.2.7\n",
        Some(&format!(
            "scheme,host,port,username,password,region\n\
             http,127.0.0.1,3128,alice,{PASSWORD},eu\n\
             socks5,192.0.2.10,1080,,,us\n"
        )),
        JobSettings {
            instances: 4,
            human_surfing: true,
            external_clicks: false,
            marker_header: true,
        },
    )
    .await
}

/// A grant, asked for again while the job is not in view yet.
async fn granted(connection: &mut Connection, slots: u32, flows: u64) -> LeaseGrant {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match connection.lease(slots, flows).await.unwrap() {
            Leased::Granted(grant) => return grant,
            Leased::NoWork { .. } if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Leased::Refused(e)
                if e.code == ErrorCode::Retry && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("no lease: {other:?}"),
        }
    }
}

fn briefs_in(notices: &[Notice]) -> Vec<JobId> {
    notices
        .iter()
        .filter_map(|n| match n {
            Notice::Briefed(job) => Some(*job),
            _ => None,
        })
        .collect()
}

mod cases {
    use super::*;

    pub async fn a_runner_is_briefed_before_its_first_grant_and_passwords_stay_out_of_events_and_logs(
        store: &TestStore,
    ) {
        let logs = logs();
        let live = Live::start(store).await;
        let (_, key) = live.key().await;
        let job = briefed_job(&live).await;
        let mut linux = Connection::open(&live.config(new_runner(), &key))
            .await
            .unwrap();
        assert_eq!(linux.terms().protocol, PROTOCOL_VERSION);
        let grant = granted(&mut linux, 1, 8).await;
        assert_eq!(briefs_in(&linux.notices()), [job], "briefed once, first");
        let brief = linux.brief(job).expect("a brief before the grant");
        assert_eq!(brief.job, job);
        // Only the profiles a Linux Chromium runner serves: its own and the phone.
        let rows: Vec<(u32, &str)> = brief
            .profiles
            .iter()
            .map(|p| (p.row, p.name.as_str()))
            .collect();
        assert_eq!(rows, [(0, "desk"), (2, "pixel")]);
        let pixel = brief.profile(2).unwrap();
        assert_eq!(
            (pixel.viewport.width, pixel.touch, pixel.locale.as_str()),
            (412, true, "en-GB")
        );
        assert_eq!(pixel.timezone, "Europe/London");
        assert_eq!(pixel.device_scale_factor, 2.625);
        // The proxies, the first with its password opened for the runner.
        let first = brief.proxy(ProxyIndex(0)).unwrap();
        assert_eq!(first.username.as_deref(), Some("alice"));
        assert_eq!(first.password.as_ref().map(|p| p.expose()), Some(PASSWORD));
        assert!(!first.disabled);
        let second = brief.proxy(ProxyIndex(1)).unwrap();
        assert_eq!((second.host.as_str(), second.port), ("192.0.2.10", 1080));
        assert!(second.password.is_none() && second.username.is_none());
        assert!(!format!("{brief:?}").contains(PASSWORD));
        // Behaviour, DNS, and the domains traffic may go to.
        assert_eq!(
            brief.behaviour.session_duration_s,
            Span { min: 30, max: 90 }
        );
        assert_eq!(brief.behaviour.proxy_switching, ProxySwitching::OnFailure);
        assert!(brief.behaviour.random_scrolling && brief.behaviour.clicks);
        assert!(brief.behaviour.marker_header);
        assert_eq!(brief.behaviour.instances, 4);
        assert_eq!(
            brief.hosts,
            [HostMapping {
                host: DomainName::parse("staging.shop.example.com").unwrap(),
                address: "192.0.2.7".parse().unwrap(),
            }]
        );
        assert_eq!(
            brief.domains,
            [DomainName::parse("shop.example.com").unwrap()]
        );
        assert!(brief.external_click_domains.is_empty());
        // The work: each flow's profile in turn over rows 0 and 2, and how
        // its visits arrive.
        let work: Vec<_> = grant
            .work
            .iter()
            .map(|w| (w.flows, w.traffic.clone(), w.profiles.clone()))
            .collect();
        let organic = Traffic::Organic {
            engine: "google".into(),
            keyword: "blue shoes".into(),
        };
        let referral = Traffic::Referral {
            source: "https://blog.example.org/post".into(),
        };
        assert_eq!(
            work,
            [
                (FlowRange::new(0, 1).unwrap(), organic.clone(), vec![0]),
                (FlowRange::new(1, 4).unwrap(), organic, vec![2, 0, 2]),
                (FlowRange::new(4, 8).unwrap(), referral, vec![0, 2, 0, 2]),
            ]
        );
        // A Windows Edge runner is briefed on its own profile only.
        let mut windows_config = live.config(new_runner(), &key);
        windows_config.capabilities.platform = platform(Os::Windows, Browser::Edge);
        let mut windows = Connection::open(&windows_config).await.unwrap();
        let windows_grant = granted(&mut windows, 1, 3).await;
        assert_eq!(windows_grant.work[0].flows, FlowRange::new(8, 11).unwrap());
        let rows: Vec<u32> = windows
            .brief(job)
            .unwrap()
            .profiles
            .iter()
            .map(|p| p.row)
            .collect();
        assert_eq!(rows, [1]);
        assert!(
            windows_grant
                .work
                .iter()
                .all(|w| w.profiles == vec![1; w.flows.len() as usize])
        );
        // Its next grant comes without a brief: the connection has it.
        let _ = granted(&mut linux, 0, 2).await;
        assert!(briefs_in(&linux.notices()).is_empty());
        // The password is in no event (payload or metadata) and no log line.
        let events = live.store_events().await;
        assert!(!events.is_empty());
        for e in &events {
            let text = format!("{} {:?}", e.data, e.metadata);
            assert!(
                !text.contains(PASSWORD),
                "{} of {} holds the password",
                e.event_type,
                e.stream_id
            );
        }
        drop((linux, windows));
        live.stop().await;
        let logged = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
        assert!(
            logged.contains("runner connected"),
            "the capture sees the gateway's logs"
        );
        assert!(!logged.contains(PASSWORD), "a log line holds the password");
    }

    pub async fn a_version_1_runner_gets_grants_but_never_a_brief(store: &TestStore) {
        let live = Live::start(store).await;
        let (_, key) = live.key().await;
        let job = briefed_job(&live).await;
        let mut config = live.config(new_runner(), &key);
        config.protocol = VersionRange {
            oldest: 1,
            newest: 1,
        };
        let mut old = Connection::open(&config).await.unwrap();
        assert_eq!(old.terms().protocol, 1);
        let grant = granted(&mut old, 1, 4).await;
        assert_eq!(grant.job, job);
        assert!(old.brief(job).is_none());
        assert!(briefs_in(&old.notices()).is_empty());
        // On the wire: the grant is the first answer, no job_brief before it.
        let runner = new_runner();
        let mut raw = raw_registered(&live, runner, &key).await;
        send(
            &mut raw,
            json!({"type": "lease_request", "request": 1, "slots": 1, "flows": 2}),
        )
        .await;
        let answer = next(&mut raw).await.unwrap();
        assert_eq!(answer["type"], "lease_granted", "{answer}");
        assert!(!answer.to_string().contains(PASSWORD));
        live.stop().await;
    }

    pub async fn a_runner_that_connects_again_is_briefed_again_on_the_jobs_it_holds(
        store: &TestStore,
    ) {
        let live = Live::start(store).await;
        let (_, key) = live.key().await;
        let job = briefed_job(&live).await;
        let runner = new_runner();
        let mut first = Connection::open(&live.config(runner, &key)).await.unwrap();
        let _ = granted(&mut first, 1, 4).await;
        drop(first);
        let mut again = Connection::open(&live.config(runner, &key)).await.unwrap();
        // Unasked: it holds flows of the job.
        let notice = again.next_notice(Duration::from_secs(5)).await.unwrap();
        assert_eq!(notice, Some(Notice::Briefed(job)));
        let brief = again.brief(job).unwrap();
        assert_eq!(brief.proxies.len(), 2);
        // A runner holding nothing is briefed on nothing.
        let mut idle = Connection::open(&live.config(new_runner(), &key))
            .await
            .unwrap();
        assert_eq!(
            idle.next_notice(Duration::from_millis(500)).await.unwrap(),
            None
        );
        live.stop().await;
    }

    pub async fn a_brief_too_large_for_one_frame_comes_in_parts(store: &TestStore) {
        let live = Live::start(store).await;
        let (_, key) = live.key().await;
        let mut proxies = String::from("host,port,username,password\n");
        for i in 0..3000 {
            proxies.push_str(&format!(
                "proxy-{i}.pool.example.net,3128,user-{i},{}{i}\n",
                "p".repeat(120)
            ));
        }
        let job = live
            .running_job_of(
                "url,flow_target\nhttps://shop.example.com/,10\n",
                (
                    "name,os,browser,user_agent,viewport_width,viewport_height\n\
                     desk,linux,chromium,Mozilla/5.0 (X11; Linux x86_64) Chrome/126,1920,1080\n",
                    vec![platform(Os::Linux, Browser::Chromium)],
                ),
                "name,instances\nbig,2\n",
                Some(&proxies),
                JobSettings {
                    instances: 2,
                    human_surfing: false,
                    external_clicks: false,
                    marker_header: true,
                },
            )
            .await;
        // On the wire: parts in order, each within the frame limit.
        let mut raw = raw(&live).await;
        send(
            &mut raw,
            json!({"type": "hello", "protocol": {"oldest": 1, "newest": 2}, "runner": new_runner(),
                   "key": key.expose(), "name": "raw", "software": "test"}),
        )
        .await;
        assert_eq!(next(&mut raw).await.unwrap()["protocol"], 2);
        send(
            &mut raw,
            json!({"type": "register", "capabilities": serde_json::to_value(capabilities()).unwrap()}),
        )
        .await;
        assert_eq!(next(&mut raw).await.unwrap()["type"], "registered");
        let (mut frames, mut assembly, mut whole) = (0, BriefAssembly::default(), None);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut request = 1;
        send(
            &mut raw,
            json!({"type": "lease_request", "request": request, "slots": 1, "flows": 4}),
        )
        .await;
        loop {
            let frame = tokio::time::timeout(
                Duration::from_secs(10),
                futures_util::StreamExt::next(&mut raw),
            )
            .await
            .unwrap();
            let Some(Ok(Message::Text(text))) = frame else {
                continue;
            };
            assert!(text.len() <= MAX_FRAME_BYTES, "{} bytes", text.len());
            match decode_gateway_message(&text).unwrap() {
                GatewayMessage::JobBrief { part, parts, brief } => {
                    frames += 1;
                    whole = assembly.take(part, parts, brief).unwrap();
                }
                GatewayMessage::LeaseGranted { .. } => break,
                GatewayMessage::NoWork { .. } | GatewayMessage::Error(_)
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    request += 1;
                    send(
                        &mut raw,
                        json!({"type": "lease_request", "request": request, "slots": 1, "flows": 4}),
                    )
                    .await;
                }
                GatewayMessage::HeartbeatAck { .. } => {}
                other => panic!("unexpected {}", other.kind()),
            }
        }
        assert!(frames > 1, "{frames} parts");
        let whole: JobBrief = whole.expect("every part before the grant");
        assert_eq!(whole.job, job);
        assert_eq!(whole.proxies.len(), 3000);
        let last = &whole.proxies[2999];
        assert_eq!(
            (last.row, last.username.as_deref()),
            (ProxyIndex(2999), Some("user-2999"))
        );
        assert_eq!(
            last.password.as_ref().unwrap().expose(),
            format!("{}2999", "p".repeat(120))
        );
        // The client puts the parts together too.
        let mut client = Connection::open(&live.config(new_runner(), &key))
            .await
            .unwrap();
        let _ = granted(&mut client, 1, 2).await;
        assert_eq!(client.brief(job).unwrap().proxies.len(), 3000);
        live.stop().await;
    }
}

store::each_backend!(
    a_runner_is_briefed_before_its_first_grant_and_passwords_stay_out_of_events_and_logs,
    a_version_1_runner_gets_grants_but_never_a_brief,
    a_runner_that_connects_again_is_briefed_again_on_the_jobs_it_holds,
    a_brief_too_large_for_one_frame_comes_in_parts
);
