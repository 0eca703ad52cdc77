//! A job's brief as a runner of one platform gets it (protocol 2): read
//! from the job's dataset versions (immutable), the consents of its target
//! domains and of its owner's external clicks, and its proxy pool's health,
//! when it is sent. Proxy passwords are opened here for the runner only:
//! nothing here logs a brief or puts one in an event, and no error carries
//! a password.

use std::collections::BTreeSet;

use datasets::{Dns, Rows};
use domain::click_consent::{self, ClickConsent};
use domain::job::Job;
use domain::job_brief::{
    Behaviour, DeviceProfile, HostMapping, JobBrief, Proxy, ProxyPassword, ProxyScheme,
    ProxySwitching, Span, Viewport,
};
use domain::proxy_pool::{self, ProxyPool};
use domain::runner::Platform;
use domain::target_domain::{Consent, consent_covering};
use domain::{DatasetKind, DomainName};
use secrecy::ExposeSecret;
use time::OffsetDateTime;

use crate::job_datasets;
use crate::state::AppState;

/// The brief of `job` for a runner on `platform`; why not, in words a
/// runner may read (never a secret).
pub(crate) async fn build(
    app: &AppState,
    job: &Job,
    platform: Platform,
) -> Result<JobBrief, String> {
    let spec = &job.spec;
    let (behaviour, hosts) = settings(app, job).await?;
    Ok(JobBrief {
        job: job.id,
        behaviour,
        profiles: profiles(app, job, platform).await?,
        proxies: proxies(app, job).await?,
        hosts,
        domains: consented_domains(app, job).await?,
        external_click_domains: if spec.settings.external_clicks {
            external_click_domains(app, job).await?
        } else {
            Vec::new()
        },
    })
}

fn span(s: datasets::Span) -> Span {
    Span {
        min: s.min,
        max: s.max,
    }
}

/// The behaviour and host mappings of the job's settings profile (the
/// version's first, as the job was created with).
async fn settings(app: &AppState, job: &Job) -> Result<(Behaviour, Vec<HostMapping>), String> {
    let (_, rows) = job_datasets::rows(
        app,
        job.spec.settings_profile,
        DatasetKind::SettingsProfiles,
    )
    .await
    .map_err(|e| format!("the settings profile: {e}"))?;
    let Some(p) = (match &*rows {
        Rows::SettingsProfiles(p) => p.first(),
        _ => None,
    }) else {
        return Err("the settings profile version holds no profile".into());
    };
    let behaviour = Behaviour {
        session_duration_s: span(p.session_duration),
        pages_per_session: span(p.pages_per_session),
        delay_between_flows_s: span(p.delay_between_flows),
        random_scrolling: p.human_surfing.random_scrolling,
        clicks: p.human_surfing.clicks,
        external_click_share: p.human_surfing.external_click_share,
        click_delay_ms: span(p.human_surfing.click_delay_ms),
        // The job's own settings, as it was created and is checked to run.
        instances: job.spec.settings.instances,
        proxy_switching: match p.proxy_switching {
            datasets::ProxySwitching::PerFlow => ProxySwitching::PerFlow,
            datasets::ProxySwitching::StickySession => ProxySwitching::StickySession,
            datasets::ProxySwitching::OnFailure => ProxySwitching::OnFailure,
        },
        marker_header: job.spec.settings.marker_header,
    };
    let mut hosts = Vec::new();
    if let Dns::Custom { hosts: mapped } = &p.dns {
        for (host, &address) in mapped {
            let host = DomainName::parse(host)
                .map_err(|e| format!("the settings profile maps {host:?}: {e}"))?;
            hosts.push(HostMapping { host, address });
        }
    }
    Ok((behaviour, hosts))
}

/// The device profiles a runner on `platform` serves, in row order.
async fn profiles(
    app: &AppState,
    job: &Job,
    platform: Platform,
) -> Result<Vec<DeviceProfile>, String> {
    let (_, rows) = job_datasets::rows(app, job.spec.device_profiles, DatasetKind::DeviceProfiles)
        .await
        .map_err(|e| format!("the device profiles: {e}"))?;
    let Rows::DeviceProfiles(rows) = &*rows else {
        return Err("the device profiles version holds no device profiles".into());
    };
    if rows.len() != job.spec.platforms.len() {
        return Err(format!(
            "the device profiles version has {} rows; the job was created with {}",
            rows.len(),
            job.spec.platforms.len()
        ));
    }
    Ok(job
        .spec
        .served_profiles(platform)
        .into_iter()
        .map(|row| {
            let p = &rows[row as usize];
            DeviceProfile {
                row,
                name: p.name.clone(),
                platform: job.spec.platforms[row as usize],
                user_agent: p.user_agent.clone(),
                viewport: Viewport {
                    width: p.viewport.width,
                    height: p.viewport.height,
                },
                device_scale_factor: p.device_scale_factor,
                touch: p.touch,
                locale: p.locale.clone(),
                timezone: p.timezone.clone(),
            }
        })
        .collect())
}

/// Every proxy of the job's version, its password opened and its health
/// as the pool's stream has it now.
async fn proxies(app: &AppState, job: &Job) -> Result<Vec<Proxy>, String> {
    let Some(pool) = job.spec.proxies else {
        return Ok(Vec::new());
    };
    let (_, rows) = job_datasets::rows(app, pool.version, DatasetKind::Proxies)
        .await
        .map_err(|e| format!("the proxies: {e}"))?;
    let Rows::Proxies(rows) = &*rows else {
        return Err("the proxies version holds no proxies".into());
    };
    let stream = proxy_pool::stream(pool.version).map_err(|e| e.to_string())?;
    let (_, health) = app
        .handler
        .load::<ProxyPool>(&stream)
        .await
        .map_err(|e| format!("the proxies' health: {e}"))?;
    let disabled = health.disabled();
    let mut proxies = Vec::with_capacity(rows.len());
    for (row, p) in (0u32..).zip(rows) {
        let password = match &p.password {
            None => None,
            Some(sealed) => {
                let key = app.data_key.as_deref().ok_or(
                    "the gateway has no data key to open the proxies' passwords: set data_key (TB_DATA_KEY) as when they were published",
                )?;
                let open = sealed
                    .open(key)
                    .map_err(|e| format!("proxy #{row}'s password: {e}"))?;
                Some(ProxyPassword::new(open.expose_secret()))
            }
        };
        let row = domain::flow::ProxyIndex(row);
        proxies.push(Proxy {
            row,
            scheme: match p.scheme {
                datasets::ProxyScheme::Http => ProxyScheme::Http,
                datasets::ProxyScheme::Https => ProxyScheme::Https,
                datasets::ProxyScheme::Socks5 => ProxyScheme::Socks5,
            },
            host: p.host.clone(),
            port: p.port,
            username: p.username.clone(),
            password,
            region: p.region.clone(),
            disabled: disabled.contains(&row),
        });
    }
    Ok(proxies)
}

/// The names that consent, now, to traffic for the job's owner to each of
/// its target domains: the domain itself or the parent verified or
/// allow-listed. A domain without consent any more is left out, so its
/// traffic is blocked in the browser.
async fn consented_domains(app: &AppState, job: &Job) -> Result<Vec<DomainName>, String> {
    let domains = job.plan.domains();
    let states = crate::domain_consents::states(app, domains)
        .await
        .map_err(|e| format!("the target domains' consent: {e}"))?;
    let now = OffsetDateTime::now_utc();
    let mut consented = BTreeSet::new();
    for domain in domains {
        match consent_covering(domain, &job.spec.owner, now, |n| states.get(n)) {
            Ok(Consent::AllowListed { domain, .. } | Consent::Verified { domain, .. }) => {
                consented.insert(domain);
            }
            Err(refusal) => {
                tracing::warn!(job = %job.id, %domain, why = %refusal.why, "a target domain lost its consent; runners will block it");
            }
        }
    }
    Ok(consented.into_iter().collect())
}

/// The owner's consented external-click domains.
async fn external_click_domains(app: &AppState, job: &Job) -> Result<Vec<DomainName>, String> {
    let stream = click_consent::stream(&job.spec.owner).map_err(|e| e.to_string())?;
    let (_, state) = app
        .handler
        .load::<ClickConsent>(&stream)
        .await
        .map_err(|e| format!("the owner's external-click consent: {e}"))?;
    Ok(state.grants.into_keys().collect())
}
