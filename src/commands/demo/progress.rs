//! The job's progress in the terminal, as the gateway pushes it on its
//! `jobProgress` subscription: a bar for the job (flows finished, at
//! work, failed, the gateway's ETA) and one per target, named by its path
//! (flows done of its target, clicks done of its target, flows failed,
//! its own ETA), until the job ends.
//! Off a terminal the bars stay hidden (indicatif's rule) and only the
//! final state is returned.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::graphql_client::{next_data, subscribe};

const PROGRESS: &str = "subscription($id: ID!) { jobProgress(id: $id) { status failure \
     flows finished succeeded failed clicked inProgress eta \
     targetProgress { target flowDone flowFailed flowTarget clickDone clickTarget } } }";

/// Statuses a job does not leave.
const ENDED: [&str; 3] = ["DONE", "FAILED", "STOPPED"];

/// Shows the job's progress until it ends; its final state.
pub async fn watch(
    addr: SocketAddr,
    token: &str,
    job: &str,
    targets: &[String],
) -> anyhow::Result<Value> {
    let mut ws = subscribe(addr, token, PROGRESS, json!({ "id": job }))
        .await
        .context("cannot watch the job's progress")?;
    let bars = Bars::new(targets);
    loop {
        let Some(data) = next_data(&mut ws).await? else {
            bail!("the gateway ended the progress subscription before the job ended");
        };
        let info = &data["jobProgress"];
        bars.show(info);
        if info["status"]
            .as_str()
            .is_some_and(|status| ENDED.contains(&status))
        {
            bars.finish();
            return Ok(info.clone());
        }
    }
}

struct Bars {
    job: ProgressBar,
    targets: Vec<ProgressBar>,
}

impl Bars {
    fn new(targets: &[String]) -> Self {
        let all = MultiProgress::new();
        let width = targets.iter().map(String::len).max().unwrap_or(3);
        let style = |template: &str| {
            // The templates are constants; the fallback only guards a typo.
            ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("█▉▊▋▌▍▎▏ ")
        };
        let job = all.add(ProgressBar::new(0));
        job.set_style(style(&format!(
            "  {{prefix:<{width}}} {{bar:20}} {{pos:>3}}/{{len}} flows  {{msg}}"
        )));
        job.set_prefix("job");
        job.enable_steady_tick(Duration::from_millis(250));
        let targets = targets
            .iter()
            .map(|url| {
                let bar = all.add(ProgressBar::new(0));
                bar.set_style(style(&format!(
                    "  {{prefix:<{width}}} {{bar:20}} {{pos:>3}}/{{len}} flows  {{msg}}, eta {{eta}}"
                )));
                bar.set_prefix(url.clone());
                bar
            })
            .collect();
        Self { job, targets }
    }

    fn show(&self, info: &Value) {
        let n = |v: &Value| v.as_u64().unwrap_or_default();
        self.job.set_length(n(&info["flows"]));
        self.job.set_position(n(&info["finished"]));
        let eta = info["eta"]
            .as_str()
            .and_then(|at| OffsetDateTime::parse(at, &Rfc3339).ok())
            .map(|at| {
                let left = (at - OffsetDateTime::now_utc()).whole_seconds().max(0);
                format!(", eta {left}s")
            })
            .unwrap_or_default();
        self.job.set_message(format!(
            "{} · {} at work · {} failed{eta}",
            info["status"].as_str().unwrap_or("?"),
            n(&info["inProgress"]),
            n(&info["failed"]),
        ));
        let rows = info["targetProgress"]
            .as_array()
            .map_or(&[][..], Vec::as_slice);
        for row in rows {
            let Some(bar) = usize::try_from(n(&row["target"]))
                .ok()
                .and_then(|i| self.targets.get(i))
            else {
                continue;
            };
            bar.set_length(n(&row["flowTarget"]));
            bar.set_position(n(&row["flowDone"]));
            bar.set_message(format!(
                "{}/{} clicks · {} failed",
                n(&row["clickDone"]),
                n(&row["clickTarget"]),
                n(&row["flowFailed"]),
            ));
        }
    }

    /// Leaves the final state drawn.
    fn finish(&self) {
        for bar in std::iter::once(&self.job).chain(&self.targets) {
            bar.finish();
        }
    }
}
