//! What a failed flow keeps for debugging: the page's console errors and
//! its request log (URL, status, timing, size: a HAR-like record), gathered
//! from the page's events as they happen, plus a screenshot taken on demand.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chromiumoxide::cdp::browser_protocol::log::{EventEntryAdded, LogEntryLevel};
use chromiumoxide::cdp::browser_protocol::network::{
    EventLoadingFailed, EventLoadingFinished, EventRequestWillBeSent, EventResponseReceived,
};
use chromiumoxide::cdp::browser_protocol::page::EventFrameAttached;
use chromiumoxide::cdp::js_protocol::runtime::{
    ConsoleApiCalledType, EventConsoleApiCalled, EventExceptionThrown,
};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::interception::Guard;

const MAX_REQUESTS: usize = 1_000;
const MAX_CONSOLE_ERRORS: usize = 200;
const MAX_TEXT: usize = 2_000;

/// One request the page made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub url: String,
    pub method: String,
    pub resource_type: String,
    pub status: Option<u16>,
    /// From the request's start to its last byte (or failure).
    pub duration_ms: Option<f64>,
    /// Bytes received on the wire.
    pub bytes: Option<u64>,
    /// Chromium's error (`net::ERR_…`) when it failed.
    pub error: Option<String>,
}

/// What a failed flow leaves behind.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FailureArtifacts {
    /// A PNG of the viewport, when the page could still be captured.
    #[serde(skip)]
    pub screenshot_png: Option<Vec<u8>>,
    pub console_errors: Vec<String>,
    pub requests: Vec<RequestRecord>,
}

impl FailureArtifacts {
    /// Blanks out what must never leave the runner: any user name and
    /// password in a request's URL, and each of `secrets` (the flow's proxy
    /// credentials) wherever it appears in the text. Secrets shorter than
    /// [`MIN_SECRET`] characters are blanked only as whole URL credentials,
    /// as replacing them everywhere would garble the record.
    pub fn redact(&mut self, secrets: &[&str]) {
        let secrets: Vec<&str> = secrets
            .iter()
            .copied()
            .filter(|s| s.chars().count() >= MIN_SECRET)
            .collect();
        let scrub = |text: &mut String| {
            for secret in &secrets {
                if text.contains(secret) {
                    *text = text.replace(secret, REDACTED);
                }
            }
        };
        for record in &mut self.requests {
            if let Ok(mut url) = url::Url::parse(&record.url)
                && (!url.username().is_empty() || url.password().is_some())
            {
                let _ = url.set_username("");
                let _ = url.set_password(None);
                record.url = url.to_string();
            }
            scrub(&mut record.url);
            if let Some(error) = &mut record.error {
                scrub(error);
            }
        }
        for line in &mut self.console_errors {
            scrub(line);
        }
    }
}

/// Shortest secret blanked out of free text.
pub const MIN_SECRET: usize = 4;
const REDACTED: &str = "[redacted]";

#[derive(Default)]
pub(crate) struct PageLog {
    console_errors: Vec<String>,
    requests: Vec<RequestRecord>,
    /// Network request id → (index in `requests`, start timestamp in s).
    open: HashMap<String, (usize, f64)>,
}

impl PageLog {
    pub fn console_errors(&self) -> Vec<String> {
        self.console_errors.clone()
    }

    pub fn requests(&self) -> Vec<RequestRecord> {
        self.requests.clone()
    }

    fn console(&mut self, text: String) {
        if self.console_errors.len() < MAX_CONSOLE_ERRORS {
            self.console_errors.push(truncate(text));
        }
    }

    fn started(&mut self, ev: &EventRequestWillBeSent) {
        let id = ev.request_id.as_ref().to_owned();
        // A redirect reuses the id: the earlier hop ends here.
        if let (Some(redirect), Some((i, start))) = (&ev.redirect_response, self.open.get(&id)) {
            let record = &mut self.requests[*i];
            record.status = u16::try_from(redirect.status).ok();
            record.duration_ms = Some((*ev.timestamp.inner() - start) * 1000.0);
        }
        if self.requests.len() >= MAX_REQUESTS {
            return;
        }
        self.requests.push(RequestRecord {
            url: truncate(ev.request.url.clone()),
            method: ev.request.method.clone(),
            resource_type: ev
                .r#type
                .as_ref()
                .map_or_else(|| "Other".to_owned(), |t| t.as_ref().to_owned()),
            status: None,
            duration_ms: None,
            bytes: None,
            error: None,
        });
        self.open
            .insert(id, (self.requests.len() - 1, *ev.timestamp.inner()));
    }

    fn responded(&mut self, ev: &EventResponseReceived) {
        if let Some((i, _)) = self.open.get(ev.request_id.as_ref()) {
            self.requests[*i].status = u16::try_from(ev.response.status).ok();
        }
    }

    fn finished(&mut self, id: &str, at: f64, bytes: Option<f64>, error: Option<String>) {
        if let Some((i, start)) = self.open.remove(id) {
            let record = &mut self.requests[i];
            record.duration_ms = Some((at - start) * 1000.0);
            record.bytes = bytes.map(|b| b.max(0.0) as u64);
            record.error = error;
        }
    }
}

fn truncate(mut text: String) -> String {
    if text.len() > MAX_TEXT {
        let mut end = MAX_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// Follows one page's events into its log, and tells the gate about the
/// page's frames. Subscribes before returning, so nothing the page does
/// after this call is missed; the task ends with the page.
pub(crate) async fn follow(
    page: &chromiumoxide::Page,
    log: Arc<Mutex<PageLog>>,
    guard: Arc<Guard>,
    context: String,
) -> Result<tokio::task::JoinHandle<()>, chromiumoxide::error::CdpError> {
    let mut console = page.event_listener::<EventConsoleApiCalled>().await?;
    let mut exceptions = page.event_listener::<EventExceptionThrown>().await?;
    let mut entries = page.event_listener::<EventEntryAdded>().await?;
    let mut sent = page.event_listener::<EventRequestWillBeSent>().await?;
    let mut responses = page.event_listener::<EventResponseReceived>().await?;
    let mut finished = page.event_listener::<EventLoadingFinished>().await?;
    let mut failed = page.event_listener::<EventLoadingFailed>().await?;
    let mut frames = page.event_listener::<EventFrameAttached>().await?;
    fn lock(log: &Mutex<PageLog>) -> std::sync::MutexGuard<'_, PageLog> {
        log.lock().unwrap_or_else(|e| e.into_inner())
    }
    Ok(tokio::spawn(async move {
        loop {
            // In the order Chromium sends them: a request's start before its
            // response before its end, whichever stream is polled first.
            tokio::select! {
                biased;
                Some(ev) = frames.next() => guard.note_frame(ev.frame_id.as_ref(), &context),
                Some(ev) = sent.next() => lock(&log).started(&ev),
                Some(ev) = responses.next() => lock(&log).responded(&ev),
                Some(ev) = finished.next() => {
                    lock(&log).finished(ev.request_id.as_ref(), *ev.timestamp.inner(), Some(ev.encoded_data_length), None);
                }
                Some(ev) = failed.next() => {
                    lock(&log).finished(ev.request_id.as_ref(), *ev.timestamp.inner(), None, Some(ev.error_text.clone()));
                }
                Some(ev) = console.next() => {
                    if matches!(ev.r#type, ConsoleApiCalledType::Error | ConsoleApiCalledType::Assert) {
                        let text = ev
                            .args
                            .iter()
                            .map(|a| match &a.value {
                                Some(serde_json::Value::String(s)) => s.clone(),
                                Some(v) => v.to_string(),
                                None => a.description.clone().unwrap_or_default(),
                            })
                            .collect::<Vec<_>>()
                            .join(" ");
                        lock(&log).console(text);
                    }
                }
                Some(ev) = exceptions.next() => {
                    let details = &ev.exception_details;
                    let text = details
                        .exception
                        .as_ref()
                        .and_then(|e| e.description.clone())
                        .unwrap_or_else(|| details.text.clone());
                    lock(&log).console(text);
                }
                Some(ev) = entries.next() => {
                    if ev.entry.level == LogEntryLevel::Error {
                        let url = ev.entry.url.as_deref().map(|u| format!(" ({u})")).unwrap_or_default();
                        lock(&log).console(format!("{}{url}", ev.entry.text));
                    }
                }
                else => break,
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(url: &str) -> RequestRecord {
        RequestRecord {
            url: url.into(),
            method: "GET".into(),
            resource_type: "Document".into(),
            status: Some(200),
            duration_ms: Some(3.0),
            bytes: Some(10),
            error: None,
        }
    }

    #[test]
    fn redacting_blanks_url_credentials_and_the_proxys_secrets_everywhere() {
        let mut a = FailureArtifacts {
            screenshot_png: None,
            console_errors: vec!["proxy said s3cret-pw to bob".into()],
            requests: vec![
                request("http://alice:hunter2@shop.example/a?b=1"),
                request("http://shop.example/?token=s3cret-pw"),
            ],
        };
        a.requests[1].error = Some("net::ERR with s3cret-pw".into());
        a.redact(&["s3cret-pw", "bob"]);
        assert_eq!(a.requests[0].url, "http://shop.example/a?b=1");
        assert_eq!(a.requests[1].url, "http://shop.example/?token=[redacted]");
        assert_eq!(
            a.requests[1].error.as_deref(),
            Some("net::ERR with [redacted]")
        );
        assert_eq!(
            a.console_errors,
            ["proxy said [redacted] to bob"],
            "`bob` is too short to blank in text"
        );
        let json = serde_json::to_string(&a).unwrap();
        assert!(
            !json.contains("s3cret-pw") && !json.contains("hunter2"),
            "{json}"
        );
    }
}
