// camgate's admin pages: the claim, the setup wizard and the dashboard with
// the cameras' live view.
// Plain modern JavaScript, no framework and no build step: camgate embeds
// these files as they are. Everything goes through the admin API, and text
// from the network (camera names, DVR answers) only ever lands in
// textContent, never in HTML.

const $ = (selector, root = document) => root.querySelector(selector);

let csrf = null;

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(method, path, body) {
  // X-Requested-With: camgate answers 401 without a Basic challenge, which
  // would make the browser prompt instead of showing the sign-in form.
  const headers = { Accept: 'application/json', 'X-Requested-With': 'fetch' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (csrf && method !== 'GET') headers['X-CSRF-Token'] = csrf;
  let response;
  try {
    response = await fetch(path, {
      method, headers, credentials: 'same-origin',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, 'camgate did not answer: is it still reachable at this address?');
  }
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { error: text.trim() }; }
  if (!response.ok) {
    if (response.status === 401 && path !== '/api/login') showLogin('Your session ended: sign in again.');
    throw new ApiError(response.status, (data && data.error) || `${response.status} ${response.statusText}`);
  }
  return data;
}

// An element with attributes and children (strings become text nodes).
function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === 'onclick') node.addEventListener('click', value);
    else if (value !== null && value !== undefined && value !== false) node.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

// A table body from rows of cells; `empty` says so when there are none.
function fill(tbody, rows, empty = 'None') {
  if (!rows.length) {
    const columns = tbody.closest('table').querySelectorAll('thead th').length;
    tbody.replaceChildren(el('tr', {}, el('td', { colspan: columns }, empty)));
    return;
  }
  tbody.replaceChildren(...rows.map((cells) => el('tr', {}, cells.map((cell) => el('td', {}, cell)))));
}

function notice(text) { $('#notice').textContent = text; }

function formError(form, text) { $('.error', form).textContent = text || ''; }

// Runs a form's action with its button disabled and its error shown.
async function busy(form, button, action) {
  formError(form, '');
  if (button) button.disabled = true;
  form.setAttribute('aria-busy', 'true');
  try {
    return await action();
  } catch (e) {
    formError(form, e.message);
    return undefined;
  } finally {
    if (button) button.disabled = false;
    form.removeAttribute('aria-busy');
  }
}

const views = ['claim', 'login', 'wizard', 'dashboard'];
function show(view) {
  $('#loading').hidden = true;
  for (const name of views) $(`#view-${name}`).hidden = name !== view;
  $('#nav').hidden = view === 'claim' || view === 'login';
  if (view === 'dashboard') startDashboard(); else stopDashboard();
}

let afterLogin = null;
function showLogin(message) {
  csrf = null;
  notice(message || '');
  show('login');
  $('#login-user').focus();
}

// --- claim and sign-in ---

$('#claim-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const form = event.target;
  busy(form, $('button', form), async () => {
    const user = $('#claim-user').value.trim();
    const password = $('#claim-password').value;
    await api('POST', '/api/setup/claim', { code: $('#claim-code').value, user, password });
    const session = await api('POST', '/api/login', { user, password });
    csrf = session.csrf;
    notice(`camgate is yours, ${user}. Now tell it about your network.`);
    await openWizard();
  });
});

$('#login-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const form = event.target;
  busy(form, $('button', form), async () => {
    const session = await api('POST', '/api/login', { user: $('#login-user').value.trim(), password: $('#login-password').value });
    csrf = session.csrf;
    $('#login-password').value = '';
    notice('');
    await route(afterLogin);
  });
});

$('#logout').addEventListener('click', async () => {
  try { await api('POST', '/api/logout'); } catch { /* signed out either way */ }
  showLogin('Signed out.');
});

// --- the wizard ---

const steps = ['network', 'dvr', 'remote', 'people', 'cameras', 'review'];
const wizard = { draft: null, values: {}, diff: '', profiles: [], step: 0, host: null };

function stepForm(name) { return $(`#step-${name}`); }

function renderStepList() {
  $('#steps').replaceChildren(...steps.map((name, i) => el('li', {
    'aria-current': i === wizard.step ? 'step' : null,
  }, el('button', { type: 'button', class: 'link', onclick: () => goStep(i) }, stepForm(name).dataset.title))));
}

async function goStep(i) {
  wizard.step = i;
  steps.forEach((name, j) => { stepForm(name).hidden = j !== i; });
  renderStepList();
  const form = stepForm(steps[i]);
  formError(form, '');
  await enter[steps[i]]?.(form);
  $('h2', form).setAttribute('tabindex', '-1');
  $('h2', form).focus();
}

for (const name of steps) {
  const form = stepForm(name);
  $('.back', form)?.addEventListener('click', () => goStep(steps.indexOf(name) - 1));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    await busy(form, event.submitter, async () => {
      await leave[name](form);
      if (name !== 'review') await goStep(steps.indexOf(name) + 1);
    });
    // busy() re-enabled Apply: whether it may be used again follows the diff.
    if (name === 'review') renderReview();
  });
}

// One step's change: the draft comes back checked by camgate's config parser.
async function edit(change) {
  const answer = await api('POST', '/api/config/edit', { config: wizard.draft, edit: change });
  wizard.draft = answer.config;
  wizard.values = answer.values;
  wizard.diff = answer.diff;
  return answer;
}

async function openWizard() {
  const [config, profiles] = await Promise.all([api('GET', '/api/config'), api('GET', '/api/profiles')]);
  wizard.draft = config.config;
  wizard.values = config.values || {};
  wizard.diff = '';
  wizard.profiles = profiles;
  $('#dvr-profile').replaceChildren(...profiles.map((p) => el('option', { value: p.name }, `${p.name}: ${p.description}`)));
  location.hash = '#wizard';
  show('wizard');
  await goStep(0);
}

const text = (value) => (value === null || value === undefined ? '' : String(value));

const enter = {
  async network() {
    const nics = await api('GET', '/api/interfaces');
    fill($('#nics tbody'), nics.map((nic) => [
      `${nic.name} (${nic.kind})`,
      nic.carrier ? 'connected' : 'no cable',
      text(nic.mac),
      nic.addresses.join(', ') || '—',
    ]), 'No network ports found');
    const options = (selected) => nics.map((nic) => el('option', { value: nic.name, selected: nic.name === selected }, nic.name));
    // What the configuration says; on the first visit, a guess: the port
    // of the default route, and an unconfigured one for the cameras.
    const { uplink: configured, cameras } = wizard.values;
    const uplink = configured || (nics.find((nic) => nic.default_route) || nics[0] || {}).name;
    $('#uplink').replaceChildren(...options(uplink));
    const camera = cameras ? cameras.interface
      : configured ? '' : (nics.find((nic) => nic.name !== uplink && nic.addresses.length === 0) || {}).name;
    $('#camera-nic').replaceChildren(el('option', { value: '' }, 'No camera port (isolate nothing)'), ...options(camera));
    if (cameras) {
      $('#camera-vlan').value = text(cameras.vlan);
      $('#camera-address').value = cameras.address;
    }
  },
  dvr() {
    const { dvr } = wizard.values;
    if (dvr && !$('#dvr-upstream').value) {
      $('#dvr-upstream').value = dvr.upstream;
      $('#dvr-profile').value = dvr.profile;
      $('#dvr-address').value = text(dvr.host);
    }
    renderRules();
  },
  remote() {
    const { remote } = wizard.values;
    if (remote && !$('#remote-host').value) {
      $('#remote-host').value = text(remote.hostname);
      $('#remote-email').value = text(remote.email);
      $('#remote-challenge').value = remote.challenge || 'auto';
      $('#remote-directory').value = text(remote.directory);
      $('#remote-directory-ca').value = text(remote.directory_ca);
      wizard.host = remote.hostname;
    }
    const profile = selectedProfile();
    const challenge = $('#remote-challenge').value;
    const items = ['TCP 443 (HTTPS)'];
    if (challenge !== 'tls-alpn-01') items.push('TCP 80 (certificate checks, and redirects to HTTPS)');
    for (const forward of (profile && profile.forwards) || []) {
      items.push(`${forward.protocol.toUpperCase()} ${forward.ports} (${profile.name}${forward.stun ? ', STUN/TURN for live video' : ''})`);
    }
    $('#router-forwards').replaceChildren(...items.map((item) => el('li', {}, item)));
    $('#remote-gateway').textContent = location.hostname;
  },
  review() {
    renderReview();
    $('#confirm-box').hidden = true;
  },
};

const leave = {
  async network() {
    const nic = $('#camera-nic').value;
    const vlan = $('#camera-vlan').value.trim();
    await edit({
      step: 'network',
      uplink: $('#uplink').value,
      cameras: nic ? { interface: nic, vlan: vlan ? Number(vlan) : null, address: $('#camera-address').value } : null,
    });
  },
  async dvr() {
    await edit({ step: 'dvr', upstream: $('#dvr-upstream').value, profile: $('#dvr-profile').value });
  },
  async remote() {
    wizard.host = $('#remote-host').value.trim().toLowerCase();
    await edit({
      step: 'remote_access',
      hostname: wizard.host,
      email: $('#remote-email').value,
      challenge: $('#remote-challenge').value,
      directory: $('#remote-directory').value,
      directory_ca: $('#remote-directory-ca').value,
    });
  },
  async people() {},
  async cameras() {},
  async review(form) {
    const answer = await api('POST', '/api/config', { config: wizard.draft });
    wizard.diff = '';
    if (answer.unconfirmed) {
      awaitConfirmation(form, answer.unconfirmed);
    } else {
      notice(`Applied (configuration ${answer.generation}).`);
      location.hash = '#dashboard';
    }
  },
};

// The review shows the draft's diff; Apply only when there is one.
function renderReview() {
  $('#review-diff').textContent = wizard.diff || 'Nothing to change.';
  $('#apply').disabled = !wizard.diff;
}

$('#remote-challenge').addEventListener('change', () => enter.remote());

function selectedProfile() {
  return wizard.profiles.find((p) => p.name === $('#dvr-profile').value);
}

function renderRules() {
  const profile = selectedProfile();
  const rules = (profile && profile.rules) || [];
  fill($('#dvr-rules tbody'), rules.map((rule) => [rule.name, rule.paths, rule.goes_to ? `${rule.who}; ${rule.goes_to}` : rule.who]));
  const scope = profile && profile.stream_example;
  if (scope) $('#token-scope').value = scope;
}

$('#dvr-profile').addEventListener('change', () => {
  renderRules();
  const address = $('#dvr-address').value.trim();
  const profile = selectedProfile();
  if (address && profile) $('#dvr-upstream').value = `http://${hostPart(address)}:${profile.upstream_port}`;
});

function hostPart(address) { return address.includes(':') ? `[${address}]` : address; }

$('#dvr-detect').addEventListener('click', (event) => {
  const form = stepForm('dvr');
  busy(form, event.target, async () => {
    const address = $('#dvr-address').value.trim();
    $('#dvr-detected').replaceChildren(el('p', {}, el('progress', { 'aria-label': 'Probing' }), ` Looking at ${address}…`));
    const found = await api('POST', '/api/dvr/detect', { address });
    if (!found.length) {
      $('#dvr-detected').replaceChildren(el('p', {}, `Nothing answered on ${address}'s usual DVR ports. Choose the software below and type its address.`));
      return;
    }
    const best = found[0];
    const also = found.slice(1).map((d) => `${d.profile} on ${d.port}`);
    $('#dvr-detected').replaceChildren(
      el('p', {}, `Found: ${best.profile} on port ${best.port} (${best.confidence} confidence: ${best.evidence.join('; ')}).`),
      ...(also.length ? [el('p', { class: 'hint' }, `Also: ${also.join(', ')}`)] : []),
    );
    $('#dvr-profile').value = best.profile;
    $('#dvr-upstream').value = `http://${hostPart(address)}:${best.port}`;
    renderRules();
  });
});

$('#dvr-test').addEventListener('click', (event) => {
  const form = stepForm('dvr');
  busy(form, event.target, async () => {
    $('#dvr-test-result').textContent = 'Connecting…';
    try {
      const result = await api('POST', '/api/dvr/test', { upstream: $('#dvr-upstream').value.trim() });
      $('#dvr-test-result').textContent = result.reachable
        ? `It answers: ${result.summary}${result.server ? ` (server: ${result.server})` : ''}.`
        : `No: ${result.error}`;
    } catch (e) {
      $('#dvr-test-result').textContent = `No: ${e.message}`;
    }
  });
});

$('#user-add').addEventListener('click', (event) => {
  const form = stepForm('people');
  busy(form, event.target, async () => {
    const name = $('#user-name').value.trim();
    const role = $('#user-role').value;
    await edit({ step: 'user', name, password: $('#user-password').value, role });
    $('#user-password').value = '';
    renderPeople();
  });
});

$('#token-add').addEventListener('click', (event) => {
  const form = stepForm('people');
  busy(form, event.target, async () => {
    const name = $('#token-name').value.trim();
    const scope = $('#token-scope').value.trim();
    const answer = await edit({ step: 'token', name, scope: [scope], expires: null });
    const host = wizard.host || 'your-public-name';
    const url = /[*?[\]]/.test(scope.split('?')[0]) ? null
      : `https://${host}${scope}${scope.includes('?') ? '&' : '?'}token=${encodeURIComponent(answer.token)}`;
    $('#token-shown').replaceChildren(
      el('p', { role: 'alert' }, `Token ${name}: copy it now, camgate shows it only once. It works once you apply.`),
      el('code', { class: 'secret', id: 'token-secret' }, answer.token),
      ...(url ? [el('p', {}, 'Ready-made address for a smart-home MJPEG camera: ', el('code', { id: 'token-url' }, url))] : []),
    );
    renderPeople();
  });
});

// A "Remove" button for one [[user]], [[token]] or [[camera]] of the draft.
function removeButton(list, name, form, render) {
  return el('button', {
    type: 'button',
    onclick: (event) => busy(form, event.target, async () => {
      await edit({ step: 'remove', list, name });
      render();
    }),
  }, `Remove ${name}`);
}

function renderPeople() {
  const form = stepForm('people');
  const { users = [], tokens = [] } = wizard.values;
  $('#people-added').replaceChildren(
    ...users.map((user) => el('li', {}, `Person ${user.name} (${user.role}) `, removeButton('user', user.name, form, renderPeople))),
    ...tokens.map((token) => el('li', {}, `Token ${token.name}${token.expires ? `, until ${token.expires}` : ''} `, removeButton('token', token.name, form, renderPeople))),
  );
}
enter.people = renderPeople;

function renderNamedCameras() {
  const form = stepForm('cameras');
  $('#cameras-named').replaceChildren(...(wizard.values.cameras_named || []).map((camera) => el('li', {},
    `${camera.name}: ${camera.mac} at ${camera.address} `, removeButton('camera', camera.name, form, renderNamedCameras))));
}

// What the last ONVIF discovery learnt: the stream URLs, or why not.
function onvifSummary(device) {
  if (!device) return '—';
  const streams = device.profiles.filter((p) => p.stream_uri)
    .map((p) => `${p.name || p.token}: ${p.stream_uri}${p.width ? ` (${p.width}×${p.height} ${text(p.encoding)})` : ''}`);
  if (streams.length) return el('ul', {}, streams.map((line) => el('li', {}, line)));
  return device.error ? `found; ${device.error}` : 'found (give its login to read its video addresses)';
}

async function loadCameras(list) {
  const cameras = list || await api('GET', '/api/cameras');
  fill($('#camera-list tbody'), cameras.map((camera) => [
    text(camera.name), text(camera.mac), text(camera.address), camera.state, onvifSummary(camera.onvif),
    camera.mac && camera.address ? el('button', {
      type: 'button',
      onclick: () => {
        $('#camera-name').value = camera.name || '';
        $('#camera-mac').value = camera.mac;
        $('#camera-ip').value = camera.address;
        $('#camera-name').focus();
      },
    }, 'Name it') : '',
  ]), 'No cameras yet: they appear here once camgate runs the camera network (after you apply) and they ask for an address.');
}

enter.cameras = () => { renderNamedCameras(); return loadCameras(); };
$('#cameras-refresh').addEventListener('click', (event) => busy(stepForm('cameras'), event.target, () => loadCameras()));
$('#cameras-discover').addEventListener('click', (event) => busy(stepForm('cameras'), event.target, async () => {
  await api('POST', '/api/cameras/discover');
  await loadCameras();
}));

$('#camera-rtsp-test').addEventListener('click', (event) => {
  const form = stepForm('cameras');
  busy(form, event.target, async () => {
    $('#camera-rtsp-result').textContent = 'Asking the camera…';
    const result = await api('POST', '/api/cameras/rtsp-test', {
      url: $('#camera-rtsp').value.trim(),
      username: $('#camera-user').value,
      password: $('#camera-password').value,
    });
    $('#camera-rtsp-result').textContent = result.ok
      ? `It streams: ${result.summary}${result.server ? ` (${result.server})` : ''}.`
      : `No: ${result.error}`;
  });
});

$('#camera-add').addEventListener('click', (event) => {
  const form = stepForm('cameras');
  busy(form, event.target, async () => {
    await edit({
      step: 'camera',
      name: $('#camera-name').value,
      mac: $('#camera-mac').value,
      address: $('#camera-ip').value,
      username: $('#camera-user').value,
      password: $('#camera-password').value,
    });
    notice(`Camera ${$('#camera-name').value.trim()} saved in the draft.`);
    renderNamedCameras();
    $('#camera-password').value = '';
  });
});

let confirmTimer = null;
function awaitConfirmation(form, unconfirmed) {
  const box = $('#confirm-box');
  const total = unconfirmed.confirm_within_secs || 60;
  box.hidden = false;
  $('#confirm-progress').max = total;
  const tick = () => {
    const left = Math.max(0, unconfirmed.revert_at - Math.floor(Date.now() / 1000));
    $('#confirm-progress').value = left;
    $('#confirm-text').textContent = `Applied. It changes ${unconfirmed.reasons.join(', ')}: if this page still works, keep it. `
      + `Otherwise camgate goes back to the previous configuration in ${left} s.`;
    if (left === 0) {
      clearInterval(confirmTimer);
      $('#confirm').disabled = true;
      $('#confirm-text').textContent = 'Not confirmed in time: camgate is going back to the previous configuration…';
      waitForRevert();
    }
  };
  $('#confirm').disabled = false;
  clearInterval(confirmTimer);
  confirmTimer = setInterval(tick, 1000);
  tick();
  $('#confirm').focus();
}

// Asks camgate (once it answers again) whether the change is gone.
async function waitForRevert() {
  for (;;) {
    await new Promise((resolve) => { setTimeout(resolve, 2000); });
    try {
      const config = await api('GET', '/api/config');
      if (!config.unconfirmed) {
        wizard.draft = config.config;
        wizard.diff = '';
        renderReview();
        $('#confirm-text').textContent = 'Not confirmed in time: camgate went back to the previous configuration.';
        return;
      }
    } catch { /* not reachable yet */ }
  }
}

$('#confirm').addEventListener('click', (event) => {
  const form = stepForm('review');
  busy(form, event.target, async () => {
    await api('POST', '/api/config/confirm');
    clearInterval(confirmTimer);
    $('#confirm-box').hidden = true;
    notice('Change kept.');
    location.hash = '#dashboard';
  });
});

// --- the dashboard ---

let dashboardTimer = null;
function startDashboard() {
  if (dashboardTimer) return;
  refreshDashboard();
  dashboardTimer = setInterval(refreshDashboard, 3000);
}
function stopDashboard() {
  clearInterval(dashboardTimer);
  dashboardTimer = null;
  stopLive();
}

const when = (iso) => (iso ? new Date(iso).toLocaleString() : '—');
const count = (c) => (c && typeof c === 'object' ? text(c.packets ?? c.datagrams ?? JSON.stringify(c)) : text(c));

// The DVR's reachability: checked at most every 30 s (it costs the DVR a request).
let dvrCheckedAt = 0;
async function checkDvr() {
  if (Date.now() - dvrCheckedAt < 30000) return;
  dvrCheckedAt = Date.now();
  const { values } = await api('GET', '/api/config');
  const dvr = values && values.dvr;
  if (!dvr) {
    $('#dvr-reach').textContent = 'No DVR set up yet: the setup wizard does it.';
    return;
  }
  const result = await api('POST', '/api/dvr/test', { upstream: dvr.upstream });
  $('#dvr-reach').textContent = result.reachable
    ? `${dvr.profile} at ${dvr.upstream}: answers (${result.summary}).`
    : `${dvr.profile} at ${dvr.upstream}: not reachable: ${result.error}`;
}

// What a camera tried to reach and the firewall stopped: names it looked
// up, and destinations by kind (mirai, p2p-cloud, …), most tried first.
function phoneHome(camera) {
  const lines = [
    ...camera.dns.slice(0, 3).map((n) => `asked DNS for ${n.name} ×${n.count}`),
    ...camera.blocked.slice(0, 3).map((b) => `${b.kind}: ${b.protocol} ${b.address}${b.port ? `:${b.port}` : ''} ×${b.count}`),
  ];
  const more = Math.max(0, camera.dns.length - 3) + Math.max(0, camera.blocked.length - 3) + camera.blocked_unlisted;
  if (more) lines.push(`and ${more} more`);
  return lines.length ? el('ul', {}, lines.map((line) => el('li', {}, line))) : 'nothing';
}

async function refreshDashboard() {
  checkDvr().catch((e) => { $('#dvr-reach').textContent = e.message; });
  let status;
  let cameras;
  let bans;
  let events;
  let streams;
  try {
    [status, cameras, bans, events, streams] = await Promise.all([api('GET', '/api/status'), api('GET', '/api/cameras'),
      api('GET', '/api/bans'), api('GET', '/api/events?limit=20'), api('GET', '/api/streams')]);
  } catch (e) {
    notice(e.message);
    return;
  }
  const facts = [
    ['Version', status.version],
    ['Configuration', `generation ${status.generation}${status.last_reload && !status.last_reload.ok ? ` (last reload failed: ${status.last_reload.error})` : ''}`],
    ...status.subsystems.map((s) => [s.name, `${s.state}: ${s.detail}`]),
  ];
  $('#status-list').replaceChildren(...facts.flatMap(([term, value]) => [el('dt', {}, term), el('dd', {}, text(value))]));
  const acme = status.certificates.acme || [];
  fill($('#cert-list tbody'), acme.map((c) => [c.host,
    ['pending', 'issuing', 'renewing'].includes(c.state) ? el('span', {}, el('progress', { 'aria-label': 'Working' }), ` ${c.state}`) : c.state,
    when(c.not_after), when(c.next_renewal)]));
  $('#cert-errors').replaceChildren(...acme.filter((c) => c.last_error || c.detail).map((c) => el('p', {}, `${c.host}: ${c.last_error || c.detail}`)));
  fill($('#dash-cameras tbody'), cameras.map((camera) => [
    text(camera.name || camera.mac), text(camera.address), camera.state,
    phoneHome(camera),
  ]));
  fill($('#stream-list tbody'), streams.map((stream) => [
    `${stream.camera}/${stream.stream}${stream.always_on ? ' (always on)' : ''}`,
    streamState(stream),
    streamMedia(stream),
    `${stream.readers} (${stream.dropped} frames dropped)`,
    el('code', {}, `rtsp://${location.hostname}:8554${stream.path}`),
    el('button', { type: 'button', onclick: () => watch(stream) }, `Watch ${stream.camera}/${stream.stream}`),
  ]), 'No camera streams: a [[camera]] in the configuration names them (streams = { main = "/stream1" }).');
  const rows = events.events.map((e) => {
    const who = [e.fields.principal, e.fields['client.addr']].filter(Boolean).join(' from ');
    return el('tr', { class: e.level === 'info' ? null : 'warn' },
      el('td', {}, new Date(e.unix_time * 1000).toLocaleString()), el('td', {}, e.message), el('td', {}, who || '—'));
  });
  if (rows.length) $('#event-list tbody').replaceChildren(...rows);
  else fill($('#event-list tbody'), []);
  fill($('#forward-list tbody'), status.forwarding.forwards.map((f) => [f.name, `${f.protocol} ${f.listen}`, f.target, `${count(f.to_target)} / ${count(f.to_client)}`]));
  $('#ban-list').replaceChildren(...(bans.length ? bans.map((ban) => el('li', {}, `${ban.address} (${ban.remaining_secs} s left) `,
    el('button', { type: 'button', onclick: async () => { await api('DELETE', `/api/bans/${encodeURIComponent(ban.address)}`); refreshDashboard(); } }, `Unban ${ban.address}`)))
    : [el('li', {}, 'None')]));
}

const clock = (unix) => new Date(unix * 1000).toLocaleTimeString();

function streamState(stream) {
  const state = {
    idle: stream.always_on ? 'idle' : 'idle (the camera starts when someone watches)',
    connecting: 'connecting to the camera',
    playing: `playing since ${stream.since ? clock(stream.since) : '—'}`,
    backoff: `failed; trying again at ${stream.retry_at ? clock(stream.retry_at) : '—'}`,
  }[stream.state] || stream.state;
  return [state, stream.last_error ? el('p', { class: 'hint' }, `Last error: ${stream.last_error}`) : null];
}

const bitrate = (bits) => (bits >= 1e6 ? `${(bits / 1e6).toFixed(1)} Mbit/s` : `${Math.round(bits / 1000)} kbit/s`);

function streamMedia(stream) {
  const tracks = stream.tracks.map((t) => (t.width ? `${t.codec} ${t.width}×${t.height}` : `${t.codec} ${t.clock_rate / 1000} kHz`));
  if (!tracks.length) return '— (known once it plays)';
  const rates = stream.state === 'playing' ? `; ${stream.fps.toFixed(1)} fps, ${bitrate(stream.bitrate)}` : '';
  return `${tracks.join(', ')}${rates}`;
}

// --- the live view ---
// One stream at a time, from GET /api/streams/{camera}/{stream}/live: a
// WebSocket sending a TEXT header (the MIME type), the fMP4 init segment,
// then media segments, appended in order to a Media Source Extensions
// SourceBuffer through a small queue. A new header starts a new MediaSource.

const LIVE_EDGE_SECS = 3; // further behind the newest frame, playback jumps to it
const KEEP_SECS = 10; // video kept behind the playing position
const MAX_QUEUED_BYTES = 8 << 20; // waiting for the SourceBuffer; more: start over
const live = { stream: null, socket: null, media: null, buffer: null, queue: [], queued: 0, error: null, retries: 0 };

function liveStatus(message) { $('#live-status').textContent = message; }

function watch(stream) {
  stopLive();
  live.stream = stream;
  live.retries = 0;
  $('#live').hidden = false;
  $('#live-title').textContent = `Live: ${stream.camera}/${stream.stream}`;
  if (!window.MediaSource) {
    liveStatus('This browser cannot play live video here (it has no Media Source Extensions). Watch the RTSP address with VLC or your DVR instead.');
    return;
  }
  connectLive();
  $('#live').scrollIntoView({ block: 'nearest' });
}

function connectLive() {
  const { camera, stream } = live.stream;
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const socket = new WebSocket(`${scheme}://${location.host}/api/streams/${encodeURIComponent(camera)}/${encodeURIComponent(stream)}/live`);
  socket.binaryType = 'arraybuffer';
  live.socket = socket;
  live.error = null;
  liveStatus('Starting the camera…');
  socket.addEventListener('message', (event) => {
    if (socket !== live.socket) return;
    if (typeof event.data === 'string') {
      const message = JSON.parse(event.data);
      if (message.error) live.error = message.error;
      else startMedia(message);
      return;
    }
    live.queue.push(event.data);
    live.queued += event.data.byteLength;
    if (live.queued > MAX_QUEUED_BYTES) {
      // The browser cannot append as fast as the camera sends: start over at a key frame.
      closeLive();
      liveStatus('This browser fell behind: starting over…');
      connectLive();
      return;
    }
    appendNext();
  });
  socket.addEventListener('close', (event) => {
    if (socket !== live.socket) return;
    live.socket = null;
    // 1012: the stream restarted on camgate (its configuration changed).
    if (event.code === 1012 && live.retries < 3) {
      live.retries += 1;
      liveStatus('The stream restarted: reconnecting…');
      setTimeout(() => { if (live.stream && !live.socket) connectLive(); }, 1000);
      return;
    }
    const why = live.error || event.reason || 'camgate could not be reached, or refused (are you still signed in?)';
    liveStatus(`The live view stopped: ${why}.`);
  });
}

// A header: a new MediaSource of its type (the init segment comes next).
function startMedia(header) {
  resetMedia();
  const what = [header.codec, header.width ? `${header.width}×${header.height}` : null].filter(Boolean).join(' ');
  if (!MediaSource.isTypeSupported(header.mime)) {
    closeLive();
    liveStatus(`This browser cannot play this camera's ${what} video (${header.mime}). `
      + 'Watch the RTSP address with VLC or your DVR, or try another browser.');
    return;
  }
  const media = new MediaSource();
  live.media = media;
  const video = $('#live-video');
  video.src = URL.createObjectURL(media);
  media.addEventListener('sourceopen', () => {
    URL.revokeObjectURL(video.src);
    if (media !== live.media) return;
    try {
      live.buffer = media.addSourceBuffer(header.mime);
    } catch (e) {
      closeLive();
      liveStatus(`This browser cannot play this camera's ${what} video: ${e.message}`);
      return;
    }
    live.buffer.mode = 'segments';
    live.buffer.addEventListener('updateend', appendNext);
    appendNext();
  }, { once: true });
  liveStatus(`Playing ${what}.`);
}

// The next queued segment, once the SourceBuffer is idle; keeps playback
// near the newest frame and the buffer short.
function appendNext() {
  const { buffer, media } = live;
  if (!buffer || buffer.updating || media.readyState !== 'open') return;
  const video = $('#live-video');
  const ranges = buffer.buffered;
  if (ranges.length) {
    const start = ranges.start(0);
    const end = ranges.end(ranges.length - 1);
    if (end - video.currentTime > LIVE_EDGE_SECS || video.currentTime < start) video.currentTime = Math.max(start, end - 0.5);
    if (video.currentTime - start > 2 * KEEP_SECS) {
      buffer.remove(start, video.currentTime - KEEP_SECS);
      return; // updateend comes back here
    }
  }
  if (!live.queue.length) return;
  const segment = live.queue.shift();
  live.queued -= segment.byteLength;
  try {
    buffer.appendBuffer(segment);
  } catch (e) {
    closeLive();
    liveStatus(`The browser refused the video: ${e.message}`);
    return;
  }
  if (video.paused) video.play().catch(() => {});
}

function resetMedia() {
  live.queue = [];
  live.queued = 0;
  live.buffer = null;
  live.media = null;
  const video = $('#live-video');
  video.removeAttribute('src');
  video.load();
}

function closeLive() {
  const { socket } = live;
  live.socket = null;
  if (socket) socket.close();
  resetMedia();
}

function stopLive() {
  closeLive();
  live.stream = null;
  $('#live').hidden = true;
}

$('#live-stop').addEventListener('click', stopLive);
$('#live-video').addEventListener('error', () => {
  const { error } = $('#live-video');
  if (live.media && error) liveStatus(`The browser could not play the video: ${error.message || `error ${error.code}`}`);
});

$('#backup').addEventListener('click', async () => {
  const config = await api('GET', '/api/config');
  const link = el('a', { href: URL.createObjectURL(new Blob([config.config], { type: 'text/plain' })), download: 'camgate.toml' });
  document.body.append(link);
  link.click();
  link.remove();
});

$('#restore-file').addEventListener('change', async (event) => {
  const file = event.target.files[0];
  if (!file) return;
  $('#restore-error').textContent = '';
  try {
    const answer = await api('POST', '/api/config', { config: await file.text() });
    if (answer.unconfirmed) {
      location.hash = '#wizard';
      await openWizard();
      await goStep(steps.indexOf('review'));
      awaitConfirmation(stepForm('review'), answer.unconfirmed);
    } else {
      notice(`Backup restored (configuration ${answer.generation}).`);
    }
  } catch (e) {
    $('#restore-error').textContent = `Not restored: ${e.message}`;
  }
  event.target.value = '';
});

// --- where to start ---

async function route(hash) {
  const target = (hash || location.hash || '#dashboard').slice(1);
  afterLogin = `#${target}`;
  try {
    const session = await api('GET', '/api/session');
    csrf = session.csrf || csrf;
  } catch (e) {
    if (e.status !== 401) notice(e.message);
    return;
  }
  if (target === 'wizard') await openWizard();
  else show('dashboard');
}

window.addEventListener('hashchange', () => {
  if (!$('#view-claim').hidden || !$('#view-login').hidden) return;
  route(location.hash).catch((e) => notice(e.message));
});

async function start() {
  const status = await api('GET', '/api/status');
  if (status.setup) {
    show('claim');
    $('#claim-code').focus();
    return;
  }
  await route(location.hash);
}

start().catch((e) => { $('#loading').textContent = e.message; });
