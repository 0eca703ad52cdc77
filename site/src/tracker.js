// The site's tracker: tells the site what the browser showed and did on
// this page view. Every report is a beacon to /tb/beacon on this page's own
// host, tagged with the view id the server put in the page.
(function () {
  "use strict";
  var view = window.__tb && window.__tb.view;
  if (!view) return;
  var endpoint = "/tb/beacon";

  function send(kind, data) {
    data.kind = kind;
    data.view = view;
    data.t = performance.now();
    var body = JSON.stringify(data);
    if (navigator.sendBeacon && navigator.sendBeacon(endpoint, body)) return;
    fetch(endpoint, { method: "POST", body: body, keepalive: true }).catch(function () {});
  }

  function height() {
    var d = document.documentElement;
    return Math.max(d.scrollHeight, document.body ? document.body.scrollHeight : 0);
  }

  var languages = navigator.languages ? Array.prototype.slice.call(navigator.languages) : [];
  send("view", {
    url: location.href,
    referrer: document.referrer,
    user_agent: navigator.userAgent,
    viewport_width: window.innerWidth,
    viewport_height: window.innerHeight,
    screen_width: screen.width,
    screen_height: screen.height,
    device_pixel_ratio: window.devicePixelRatio,
    max_touch_points: navigator.maxTouchPoints || 0,
    touch_events: "ontouchstart" in window,
    timezone: Intl.DateTimeFormat().resolvedOptions().timeZone || "",
    language: navigator.language || "",
    languages: languages,
    page_height: height(),
  });
  document.documentElement.setAttribute("data-tb-view", view);

  // Scroll positions, at most one per 100 ms plus the last one of a burst,
  // sent in batches once a second and when the page is left.
  var pending = [];
  var last = -Infinity;
  var lastY = null;
  var trailing = null;
  function note() {
    if (window.scrollY === lastY) return;
    lastY = window.scrollY;
    pending.push({ y: lastY, t: performance.now() });
    last = performance.now();
  }
  window.addEventListener("scroll", function () {
    if (trailing) clearTimeout(trailing);
    if (performance.now() - last >= 100) note();
    trailing = setTimeout(note, 100);
  }, { passive: true });
  function flush() {
    if (pending.length === 0) return;
    send("scroll", { events: pending });
    pending = [];
  }
  setInterval(flush, 1000);

  document.addEventListener("click", function (e) {
    var a = e.target && e.target.closest ? e.target.closest("a") : null;
    send("click", {
      href: a ? a.href : null,
      x: e.clientX,
      y: e.clientY,
      trusted: e.isTrusted,
    });
  }, true);

  function leave(reason) {
    flush();
    send("leave", { reason: reason, page_height: height() });
  }
  window.addEventListener("pagehide", function () { leave("pagehide"); });
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "hidden") leave("hidden");
  });
})();
