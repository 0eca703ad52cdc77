// The baseline of `trafficbuster bench runner`: the bench's standard flow in
// plain Playwright (playwright-core, the machine's Chromium), the same steps
// as the Rust side (src/bench/runner/standard_flow.rs), so the two can be
// compared side by side:
//
//   new context (the same device emulation) → load the page → three times:
//   scroll 200 px, pause 200 ms → click a visible internal link with the
//   mouse → wait for its load → close the context.
//
// `trafficbuster bench runner` copies this file next to its pinned
// playwright-core and runs it as `node playwright-flow.mjs SPEC_JSON`; it
// prints one JSON line: {"flows","failed","seconds","errors","step_ms"}
// (step_ms: milliseconds per step, summed over the flows counted).
import { chromium } from "playwright-core";

const spec = JSON.parse(process.argv[2] ?? "{}");
for (const key of ["chrome", "url", "host_rules", "concurrency", "seconds", "device"]) {
  if (spec[key] === undefined) {
    console.error(`playwright-flow.mjs: the spec has no "${key}"`);
    process.exit(2);
  }
}

// The same query as the Rust side's visible links, narrowed to internal
// ones: an http(s) link inside the viewport, not hidden, not covered.
const VISIBLE_INTERNAL_LINK = () => {
  const vw = innerWidth, vh = innerHeight;
  for (const a of document.querySelectorAll("a[href]")) {
    if (!/^https?:/i.test(a.href)) continue;
    if (new URL(a.href).hostname !== location.hostname) continue;
    const r = a.getBoundingClientRect();
    if (r.width < 1 || r.height < 1 || r.bottom <= 0 || r.right <= 0 || r.top >= vh || r.left >= vw) continue;
    const x = Math.min(Math.max(r.left + r.width / 2, 0), vw - 1);
    const y = Math.min(Math.max(r.top + r.height / 2, 0), vh - 1);
    const hit = document.elementFromPoint(x, y);
    if (!hit || (hit !== a && !a.contains(hit))) continue;
    const style = getComputedStyle(a);
    if (style.visibility === "hidden" || Number(style.opacity) === 0) continue;
    return { href: a.href, x, y };
  }
  return null;
};

const device = spec.device;
const contextOptions = {
  viewport: { width: device.width, height: device.height },
  screen: { width: device.width, height: device.height },
  deviceScaleFactor: device.scale,
  isMobile: false,
  hasTouch: false,
  userAgent: device.user_agent,
  locale: device.locale,
  timezoneId: device.timezone,
};

// Runs `work` as the step `name`, adding its milliseconds to `steps`.
async function timed(steps, name, work) {
  const started = performance.now();
  try {
    return await work();
  } finally {
    steps[name] = (steps[name] ?? 0) + performance.now() - started;
  }
}

async function flow(browser) {
  const steps = {};
  // "open" is the context and its page, as on the Rust side.
  const context = await timed(steps, "open", () => browser.newContext(contextOptions));
  try {
    const page = await timed(steps, "open", () => context.newPage());
    await timed(steps, "load", () => page.goto(spec.url, { waitUntil: "load" }));
    // Each scroll is followed by its pause, so the page has settled
    // (wheel scrolling is animated) before a link is chosen by position.
    await timed(steps, "scrolls", async () => {
      await page.mouse.move(device.width / 2, device.height / 2);
      for (let i = 0; i < 3; i++) {
        await page.mouse.wheel(0, 200);
        await page.waitForTimeout(200);
      }
    });
    const link = await timed(steps, "find link", () => page.evaluate(VISIBLE_INTERNAL_LINK));
    if (!link) throw new Error("no internal link in view");
    await timed(steps, "click and load", () =>
      Promise.all([
        page.waitForURL(link.href, { waitUntil: "load" }),
        page.mouse.click(link.x, link.y),
      ]),
    );
  } finally {
    await timed(steps, "close", () => context.close());
  }
  return steps;
}

const browser = await chromium.launch({
  executablePath: spec.chrome,
  headless: true,
  args: [`--host-resolver-rules=${spec.host_rules}`],
});
const started = performance.now();
const deadline = started + spec.seconds * 1000;
let flows = 0;
let failed = 0;
const errors = new Set();
const stepMs = {};
async function worker() {
  while (performance.now() < deadline) {
    try {
      const steps = await flow(browser);
      flows += 1;
      for (const [name, ms] of Object.entries(steps)) stepMs[name] = (stepMs[name] ?? 0) + ms;
    } catch (e) {
      failed += 1;
      if (errors.size < 5) errors.add(String(e?.message ?? e).split("\n")[0]);
    }
  }
}
await Promise.all(Array.from({ length: spec.concurrency }, worker));
const seconds = (performance.now() - started) / 1000;
await browser.close();
console.log(JSON.stringify({ flows, failed, seconds, errors: [...errors], step_ms: stepMs }));
