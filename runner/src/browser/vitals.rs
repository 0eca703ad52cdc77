//! Web Vitals measured in the page: a script added before any document of
//! the page runs observes paint, largest contentful paint, layout shifts and
//! interactions; [`READ`] collects them with the navigation's TTFB.

use serde::{Deserialize, Serialize};

/// Installed with `Page.addScriptToEvaluateOnNewDocument`, so it observes a
/// document from its start. CLS is the largest session window (gaps under
/// 1 s, windows under 5 s); INP the slowest interaction seen.
pub const OBSERVE: &str = r#"(() => {
  if (window.__trafficbusterVitals) return;
  const v = { fcp: null, lcp: null, cls: 0, inp: null };
  Object.defineProperty(window, '__trafficbusterVitals', { value: v, enumerable: false });
  const watch = (type, each, extra) => {
    try {
      new PerformanceObserver(list => list.getEntries().forEach(each))
        .observe(Object.assign({ type, buffered: true }, extra || {}));
    } catch (e) { /* not supported here: stays null */ }
  };
  watch('paint', e => { if (e.name === 'first-contentful-paint') v.fcp = e.startTime; });
  watch('largest-contentful-paint', e => { v.lcp = e.startTime; });
  let window_ = 0, first = 0, last = 0;
  watch('layout-shift', e => {
    if (e.hadRecentInput) return;
    if (window_ > 0 && e.startTime - last < 1000 && e.startTime - first < 5000) {
      window_ += e.value;
    } else {
      window_ = e.value; first = e.startTime;
    }
    last = e.startTime;
    v.cls = Math.max(v.cls, window_);
  });
  watch('event', e => { if (e.interactionId) v.inp = Math.max(v.inp || 0, e.duration); },
        { durationThreshold: 16 });
})();"#;

/// Evaluated to read the page's vitals as JSON.
pub const READ: &str = r#"(() => {
  const v = window.__trafficbusterVitals || {};
  const nav = performance.getEntriesByType('navigation')[0];
  return {
    ttfb_ms: nav && nav.responseStart > 0 ? nav.responseStart : null,
    fcp_ms: v.fcp ?? null,
    lcp_ms: v.lcp ?? null,
    cls: v.cls ?? null,
    inp_ms: v.inp ?? null,
  };
})()"#;

/// One page's Web Vitals; `None` where the page gave no measure (no paint
/// yet, no interaction, a browser without the API).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct WebVitals {
    pub ttfb_ms: Option<f64>,
    pub fcp_ms: Option<f64>,
    pub lcp_ms: Option<f64>,
    pub cls: Option<f64>,
    pub inp_ms: Option<f64>,
}
