// The dashboard's live view in headless Chromium, driven by playwright-core
// (tests/tests/live_view.rs starts camgate, the cameras and runs this in the
// LAN namespace): sign in as the admin, watch $STREAM for $WATCH_SECS while
// sampling the <video>, then try $UNPLAYABLE (a stream this browser cannot
// decode), then open the live view's WebSocket from a page on another origin
// of the same host ($FOREIGN_URL), which carries the admin's cookie. Prints
// one JSON line of measurements and texts for the Rust test to check; any
// failure exits non-zero with the page's state.

const { chromium } = require('playwright-core');
const fs = require('fs');
const path = require('path');

const env = (name) => {
  const value = process.env[name];
  if (value === undefined) throw new Error(`live.js needs $${name}`);
  return value;
};

const URL = env('CAMGATE_URL');
const USER = env('ADMIN_USER');
const PASSWORD = env('ADMIN_PASSWORD');
const STREAM = env('STREAM');
const UNPLAYABLE = env('UNPLAYABLE');
const FOREIGN_URL = env('FOREIGN_URL');
const WATCH_SECS = Number(env('WATCH_SECS'));
const SHOTS = env('SHOTS');

let page;

const visible = (selector, timeout = 15000) => page.waitForSelector(`${selector}:not([hidden])`, { timeout });

// What the player shows now.
const sample = () => page.evaluate(() => {
  const video = document.querySelector('#live-video');
  const ranges = video.buffered;
  return {
    current_time: video.currentTime,
    ready_state: video.readyState,
    width: video.videoWidth,
    height: video.videoHeight,
    buffered_start: ranges.length ? ranges.start(0) : null,
    buffered_end: ranges.length ? ranges.end(ranges.length - 1) : null,
    status: document.querySelector('#live-status').textContent,
  };
});

async function watch(stream) {
  await page.click(`#stream-list button:text-is("Watch ${stream}")`);
  await visible('#live');
}

async function run(result) {
  await page.goto(URL);
  await visible('#view-login');
  await page.fill('#login-user', USER);
  await page.fill('#login-password', PASSWORD);
  await page.click('#login-form button[type=submit]');
  await visible('#view-dashboard');
  await page.waitForSelector(`#stream-list button:text-is("Watch ${STREAM}")`, { timeout: 15000 });
  result.restream_url = await page.textContent(`#stream-list tr:has(button:text-is("Watch ${STREAM}")) code`);
  result.hint = await page.textContent('#d-live + p');

  // The first frame: from the click (the camera starts on demand) to a
  // decoded picture.
  const clicked = Date.now();
  await watch(STREAM);
  await page.waitForFunction(() => {
    const video = document.querySelector('#live-video');
    return video.readyState >= 2 && video.videoWidth > 0;
  }, null, { timeout: 30000, polling: 50 });
  result.first_frame_ms = Date.now() - clicked;
  const samples = [];
  const started = Date.now();
  for (;;) {
    samples.push({ at_ms: Date.now() - started, ...(await sample()) });
    if (Date.now() - started >= WATCH_SECS * 1000) break;
    await page.waitForTimeout(1000);
  }
  result.samples = samples;
  await page.screenshot({ path: path.join(SHOTS, 'live-desktop.png'), fullPage: true });
  await page.setViewportSize({ width: 360, height: 740 });
  result.phone_width = await page.evaluate(() => document.documentElement.scrollWidth);
  await page.screenshot({ path: path.join(SHOTS, 'live-phone.png'), fullPage: true });
  await page.setViewportSize({ width: 1280, height: 900 });
  result.streams_while_watching = await page.evaluate(async () => {
    const response = await fetch('/api/streams', { headers: { 'X-Requested-With': 'fetch' } });
    return response.json();
  });

  // A stream this browser cannot play: said in words.
  result.unplayable_supported = await page.evaluate(() => MediaSource.isTypeSupported('video/mp4; codecs="hvc1.1.6.L63.90"'));
  await watch(UNPLAYABLE);
  await page.waitForFunction(() => /cannot play|Playing/.test(document.querySelector('#live-status').textContent), null, { timeout: 30000 });
  result.unplayable_status = await page.textContent('#live-status');
  await page.click('#live-stop');
  result.stopped_hidden = await page.isHidden('#live');

  // Another origin of the same host: the browser sends the admin's cookie
  // (same site) with the handshake, and its own Origin.
  const foreign = await page.context().newPage();
  result.foreign_console = [];
  foreign.on('console', (message) => result.foreign_console.push(message.text()));
  await foreign.goto(FOREIGN_URL);
  const socketUrl = `${URL.replace(/^http/, 'ws')}api/streams/${STREAM}/live`;
  result.foreign_origin = await foreign.evaluate((url) => new Promise((resolve) => {
    const socket = new WebSocket(url);
    socket.onopen = () => resolve('opened');
    socket.onclose = (event) => resolve(`closed ${event.code}`);
    setTimeout(() => resolve('no answer'), 10000);
  }), socketUrl);
  await foreign.close();

  // The session cookie, for the Rust test's own handshakes.
  const cookies = await page.context().cookies();
  result.admin_cookie = (cookies.find((cookie) => cookie.name === 'camgate-admin') || {}).value;
}

(async () => {
  fs.mkdirSync(SHOTS, { recursive: true });
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run',
      '--autoplay-policy=no-user-gesture-required'],
  });
  // One context: the foreign page shares the admin's cookies.
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  page = await context.newPage();
  const problems = [];
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error' && /Content Security Policy/.test(message.text())) problems.push(message.text());
  });
  const result = {};
  let failed = null;
  try {
    await run(result);
    if (problems.length) throw new Error(problems.join('\n'));
  } catch (error) {
    failed = error;
    await page.screenshot({ path: path.join(SHOTS, 'live-failed.png'), fullPage: true }).catch(() => {});
    const state = await page.evaluate(() => document.querySelector('main').innerText).catch(() => '(no page)');
    console.error(`${error.stack}\n--- the page said:\n${state}`);
  }
  await browser.close();
  console.log(JSON.stringify(result));
  process.exit(failed ? 1 : 0);
})();
