// The setup wizard's whole journey in headless Chromium, driven by
// playwright-core (tests/tests/wizard.rs starts camgate and the peers and
// runs this in the LAN namespace). Every step is photographed at a desktop
// and a phone width into $SHOTS. Prints one JSON line of what the Rust
// test checks afterwards; any failure exits non-zero with the page's
// state.
//
// Phases ($PHASE):
//   setup  claim → network → DVR (detected) → remote access → person and
//          token → cameras → review → apply → confirm → dashboard shows the
//          certificate; then the DHCP'd camera is named and applied, and
//          the dashboard lists it.
//   revert a bad network change applied and not confirmed: the page sees
//          camgate go back to the previous configuration.

const { chromium } = require('playwright-core');
const fs = require('fs');
const path = require('path');

const env = (name) => {
  const value = process.env[name];
  if (value === undefined) throw new Error(`journey.js needs $${name}`);
  return value;
};

const URL = env('CAMGATE_URL');
const SHOTS = env('SHOTS');
const PHASE = env('PHASE');
const USER = 'admin';
const PASSWORD = 'a long admin password';

const DESKTOP = { width: 1280, height: 900 };
const PHONE = { width: 360, height: 740 };

let page;
let shot = 0;

async function snap(name) {
  shot += 1;
  // Values the page forgot to turn into words.
  const slip = await page.evaluate(() => document.querySelector('main').innerText.match(/\b(null|undefined|NaN)\b|\[object Object\]/));
  if (slip) throw new Error(`${name}: the page shows "${slip[0]}"`);
  // For screen readers: every visible control has a label, every button words.
  const unnamed = await page.evaluate(() => [
    ...[...document.querySelectorAll('input, select, textarea')]
      .filter((c) => c.offsetParent !== null && c.labels.length === 0 && !c.getAttribute('aria-label'))
      .map((c) => `control #${c.id}`),
    ...[...document.querySelectorAll('button, a')]
      .filter((b) => b.offsetParent !== null && !b.textContent.trim() && !b.getAttribute('aria-label'))
      .map((b) => `${b.tagName} #${b.id}`),
  ]);
  if (unnamed.length) throw new Error(`${name}: nothing names ${unnamed.join(', ')}`);
  const base = path.join(SHOTS, `${PHASE}-${String(shot).padStart(2, '0')}-${name}`);
  await page.screenshot({ path: `${base}-desktop.png`, fullPage: true });
  await page.setViewportSize(PHONE);
  await page.screenshot({ path: `${base}-phone.png`, fullPage: true });
  // Nothing may be wider than the phone's screen.
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth);
  if (overflow > PHONE.width) {
    const wide = await page.evaluate((width) => [...document.querySelectorAll('body *')]
      .filter((node) => node.getBoundingClientRect().right > width)
      .slice(0, 5).map((node) => `${node.tagName}#${node.id}.${node.className}`), PHONE.width);
    throw new Error(`${name}: the page is ${overflow} px wide on a ${PHONE.width} px phone: ${wide.join(', ')}`);
  }
  await page.setViewportSize(DESKTOP);
}

const visible = (selector, timeout = 15000) => page.waitForSelector(`${selector}:not([hidden])`, { timeout });

async function waitText(selector, pattern, timeout = 15000) {
  await page.waitForFunction(([s, p]) => {
    const node = document.querySelector(s);
    return node && new RegExp(p).test(node.textContent);
  }, [selector, pattern.source], { timeout, polling: 250 });
  return page.textContent(selector);
}

async function next(step) {
  await page.click(`#step-${step} button[type=submit]`);
}

async function signIn() {
  await page.goto(URL);
  await visible('#view-login');
  await page.fill('#login-user', USER);
  await page.fill('#login-password', PASSWORD);
  await page.click('#login-form button[type=submit]');
  await visible('#view-dashboard');
}

async function setup(result) {
  await page.goto(URL);
  await visible('#view-claim');
  await snap('claim');
  await page.fill('#claim-code', env('SETUP_CODE'));
  await page.fill('#claim-user', USER);
  await page.fill('#claim-password', PASSWORD);
  await page.click('#claim-form button[type=submit]');

  await visible('#step-network');
  await waitText('#nics tbody', new RegExp(env('CAMERA_NIC')));
  await page.selectOption('#uplink', env('UPLINK'));
  await page.selectOption('#camera-nic', env('CAMERA_NIC'));
  await page.fill('#camera-address', '10.77.0.1/24');
  await snap('network');
  await next('network');

  await visible('#step-dvr');
  await page.fill('#dvr-address', env('DVR_ADDRESS'));
  await page.click('#dvr-detect');
  result.detected = await waitText('#dvr-detected', /Found|Nothing/, 30000);
  await page.click('#dvr-test');
  result.connection = await waitText('#dvr-test-result', /It answers|No:/);
  await snap('dvr');
  await next('dvr');

  await visible('#step-remote');
  await page.fill('#remote-host', env('PUBLIC_HOST'));
  await page.fill('#remote-email', 'owner@example.org');
  await page.click('#step-remote summary');
  await page.fill('#remote-directory', env('ACME_DIRECTORY'));
  await page.fill('#remote-directory-ca', env('ACME_CA'));
  result.router_forwards = await page.textContent('#router-forwards');
  await snap('remote-access');
  await next('remote');

  await visible('#step-people');
  await page.fill('#user-name', 'viewer1');
  await page.fill('#user-password', 'short');
  await page.click('#user-add');
  result.short_password = await waitText('#step-people .error', /at least 10/);
  await page.fill('#user-password', 'a long viewer password');
  await page.click('#user-add');
  await waitText('#people-added', /viewer1/);
  await page.fill('#token-name', 'homeassistant');
  // The scope defaults to the DVR profile's MJPEG stream.
  result.token_scope = await page.inputValue('#token-scope');
  await page.click('#token-add');
  result.token = (await waitText('#token-secret', /\S{20,}/)).trim();
  result.token_url = await page.textContent('#token-url');
  await snap('people');
  await next('people');

  await visible('#step-cameras');
  await snap('cameras-before-apply');
  await next('cameras');

  await visible('#step-review');
  result.diff = await page.textContent('#review-diff');
  await snap('review');
  await page.click('#apply');
  await visible('#confirm-box', 30000);
  result.confirm_text = await page.textContent('#confirm-text');
  await snap('confirm');
  await page.click('#confirm');
  await visible('#view-dashboard');

  // The certificate from the ACME CA, with progress shown until then.
  const host = env('PUBLIC_HOST');
  await page.waitForFunction((name) => [...document.querySelectorAll('#cert-list tbody tr')]
    .some((row) => row.cells[0].textContent === name && row.cells[1].textContent.trim() === 'valid'), host, { timeout: 90000, polling: 500 });
  await snap('dashboard-certificate');

  // The camera, DHCP'd now that the camera network runs, gets its name.
  await page.click('#nav-wizard');
  await visible('#step-network');
  await page.click('#steps li:nth-child(5) button');
  await visible('#step-cameras');
  const mac = env('CAMERA_MAC');
  for (let i = 0; ; i += 1) {
    const rows = await page.textContent('#camera-list tbody');
    if (rows.includes(mac)) break;
    if (i === 60) throw new Error(`the camera ${mac} never appeared: ${rows}`);
    await page.click('#cameras-refresh');
    await page.waitForTimeout(500);
  }
  await page.click(`#camera-list tbody tr:has-text("${mac}") button`);
  await page.fill('#camera-name', 'porch');
  // Its video: a wrong password is refused in words, the right one shows the stream.
  const rtsp = `rtsp://${await page.inputValue('#camera-ip')}:8554/stream1`;
  await page.fill('#camera-rtsp', rtsp);
  await page.fill('#camera-user', 'admin');
  await page.fill('#camera-password', 'wrong');
  await page.click('#camera-rtsp-test');
  result.rtsp_refused = await waitText('#camera-rtsp-result', /^No:/);
  await page.fill('#camera-password', env('CAMERA_PASSWORD'));
  await page.click('#camera-rtsp-test');
  result.rtsp = await waitText('#camera-rtsp-result', /^It streams|^No:/);
  await page.click('#camera-add');
  await waitText('#notice', /porch saved/);
  await snap('cameras');
  await next('cameras');
  await visible('#step-review');
  result.camera_diff = await page.textContent('#review-diff');
  await page.click('#apply');
  await visible('#view-dashboard');
  await page.waitForFunction(() => [...document.querySelectorAll('#dash-cameras tbody tr')]
    .some((row) => row.cells[0].textContent === 'porch' && /mirai/.test(row.cells[3].textContent)), null, { timeout: 20000, polling: 500 });
  result.dashboard_dvr = await waitText('#dvr-reach', /answers|not reachable/);
  result.dashboard_cameras = await page.textContent('#dash-cameras tbody');
  result.dashboard_certificates = await page.textContent('#cert-list tbody');
  result.dashboard_events = await waitText('#event-list tbody', /configuration change confirmed/);
  await snap('dashboard');

  // Backup and restore: the file as camgate has it; a broken one is refused
  // with its line before anything changes.
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#backup')]);
  result.backup = fs.readFileSync(await download.path(), 'utf8');
  await page.setInputFiles('#restore-file', {
    name: 'camgate.toml', mimeType: 'text/plain', buffer: Buffer.from('[daemon]\nmode = "turbo"\n'),
  });
  result.restore_error = await waitText('#restore-error', /Not restored/);
  await snap('restore-refused');
}

async function revert(result) {
  await signIn();
  await page.click('#nav-wizard');
  await visible('#step-network');
  // The uplink on the port to the internet: the admin's own network loses
  // camgate's admin interface.
  await page.selectOption('#uplink', env('WRONG_UPLINK'));
  await page.selectOption('#camera-nic', env('CAMERA_NIC'));
  await snap('bad-network');
  await next('network');
  await visible('#step-dvr');
  await page.click('#steps li:nth-child(6) button');
  await visible('#step-review');
  result.diff = await page.textContent('#review-diff');
  await page.click('#apply');
  await visible('#confirm-box', 30000);
  result.confirm_text = await page.textContent('#confirm-text');
  await snap('unconfirmed');
  result.reverted_text = await waitText('#confirm-text', /went back to the previous configuration\.$/, 150000);
  // Nothing is left to apply: the draft is the running configuration again.
  result.reverted_diff = await page.textContent('#review-diff');
  result.apply_disabled = await page.isDisabled('#apply');
  await snap('reverted');
  await page.click('#nav-dashboard');
  await visible('#view-dashboard');
  await waitText('#status-list', /generation/);
}

(async () => {
  fs.mkdirSync(SHOTS, { recursive: true });
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run'],
  });
  page = await browser.newPage({ viewport: DESKTOP });
  const problems = [];
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  const requests = [];
  page.on('request', (request) => requests.push(`${request.method()} ${request.url()}`));
  page.on('requestfinished', async (request) => {
    const response = await request.response();
    requests.push(`  ${response ? response.status() : '?'} ${request.url()}`);
  });
  page.on('requestfailed', (request) => requests.push(`  failed (${request.failure().errorText}) ${request.url()}`));
  page.on('console', (message) => {
    // A CSP violation is a bug; failed fetches during the bad change are expected.
    if (message.type() === 'error' && /Content Security Policy/.test(message.text())) problems.push(message.text());
  });
  const result = {};
  let failed = null;
  try {
    if (PHASE === 'setup') await setup(result);
    else if (PHASE === 'revert') await revert(result);
    else throw new Error(`unknown phase ${PHASE}`);
    if (problems.length) throw new Error(problems.join('\n'));
  } catch (error) {
    failed = error;
    await page.screenshot({ path: path.join(SHOTS, `${PHASE}-failed.png`), fullPage: true }).catch(() => {});
    const state = await page.evaluate(() => document.querySelector('main').innerText).catch(() => '(no page)');
    console.error(`${error.stack}\n--- the page said:\n${state}\n--- requests:\n${requests.slice(-40).join('\n')}`);
  }
  await browser.close();
  console.log(JSON.stringify(result));
  process.exit(failed ? 1 : 0);
})();
