/*
 * TSFilter's dashboard: one ES module, no framework, no build step, nothing loaded from elsewhere.
 *
 * Safety: every value from the API (addresses, rules, reasons, log lines: text an attacker wrote) enters the page as a
 * text node or as an attribute set with setAttribute, never as HTML. The page's Content-Security-Policy demands
 * Trusted Types, so an innerHTML assignment would throw instead of opening a hole.
 *
 * Speed: it asks only for aggregates (/api/stats, /api/status) and pages of bans (/api/bans, at most PAGE rows), never
 * for every ban, so it stays quick with 100,000 bans in the store.
 *
 * Routes live in the URL's fragment: #/ (overview), #/search?rule=ssh&q=203.0.113., #/ip/203.0.113.7.
 */

const TOKEN_KEY = 'tsfilter.token';
const LATEST = 20;
const PAGE = 50;
/** Bans and unbans come in bursts: the aggregates are fetched again once a burst has settled. */
const STATS_DELAY_MS = 1500;
/** Tracked addresses, uptime and expiries move without events: the overview refreshes at this pace. */
const REFRESH_MS = 15_000;
const SVGNS = 'http://www.w3.org/2000/svg';
const HOUR = 3_600_000;
const DAY = 86_400_000;
const Q_RE = /^[0-9A-Fa-f.:/]{1,50}$/;

const state = {
  token: readToken(),
  /** GET /api: writes_enabled, read_requires_token, token_valid. */
  info: null,
  canWrite: false,
  needToken: false,
  stats: null,
  status: null,
  /** The newest bans, newest first, kept current by the event stream. */
  latest: null,
  /** Ban ids that arrived live, highlighted once. */
  fresh: new Set(),
  view: '',
  /** Bumped at every route change: answers for an earlier view are dropped. */
  seq: 0,
  ip: null,
  /** Per search filter, the cursor of each page seen (index 0: page 1, no cursor). */
  cursors: new Map(),
};

const $ = (id) => document.getElementById(id);

/* ---------- DOM, without HTML strings ---------- */

function props(el, attrs) {
  if (!attrs) return;
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
}

function kids(children) {
  return children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false).map((c) => (c instanceof Node ? c : String(c)));
}

/** An HTML element; string children become text nodes. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  props(el, attrs);
  el.append(...kids(children));
  return el;
}

/** An SVG element. */
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVGNS, tag);
  props(el, attrs);
  el.append(...kids(children));
  return el;
}

/* ---------- formatting ---------- */

const nf = new Intl.NumberFormat('en-US');
const num = (n) => (typeof n === 'number' && Number.isFinite(n) ? nf.format(n) : '—');
const pad = (n) => String(n).padStart(2, '0');
const plural = (n, one, many = `${one}s`) => `${num(n)} ${n === 1 ? one : many}`;

function fmtTime(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function fmtUtc(iso, withHour) {
  const d = new Date(iso);
  const day = `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}`;
  return withHour ? `${day} ${pad(d.getUTCHours())}:00 UTC` : `${day} UTC`;
}

/** A <time> showing local time, with the exact UTC instant on hover. */
function when(iso) {
  return iso ? h('time', { datetime: iso, title: iso }, fmtTime(iso)) : '—';
}

function fmtDuration(sec) {
  if (sec === null || sec === undefined) return 'permanent';
  const units = [['w', 604800], ['d', 86400], ['h', 3600], ['min', 60], ['s', 1]];
  const parts = [];
  let left = Math.max(0, Math.round(sec));
  for (const [u, n] of units) {
    if (left >= n && parts.length < 2) {
      parts.push(`${Math.floor(left / n)} ${u}`);
      left %= n;
    } else if (parts.length > 0) break;
  }
  return parts.length ? parts.join(' ') : '0 s';
}

function ago(iso) {
  const t = Date.parse(iso);
  if (!Number.isFinite(t)) return '';
  const d = Math.round((Date.now() - t) / 1000);
  if (d < 0) return `in ${fmtDuration(-d)}`;
  if (d < 5) return 'just now';
  return `${fmtDuration(d)} ago`;
}

const ipHref = (ip) => `#/ip/${encodeURIComponent(ip)}`;
const ipLink = (ip) => h('a', { href: ipHref(ip), class: 'ip' }, ip);

function searchHref(params) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') p.set(k, String(v));
  const q = p.toString();
  return q ? `#/search?${q}` : '#/search';
}

function countryText(name, code) {
  if (!name && !code) return 'unknown';
  return code ? `${name ?? code} (${code})` : name;
}

/* ---------- the API ---------- */

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function readToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

function storeToken(t) {
  try {
    if (t === null) sessionStorage.removeItem(TOKEN_KEY);
    else sessionStorage.setItem(TOKEN_KEY, t);
  } catch {
    /* storage disabled: the token lasts as long as the page */
  }
}

const authHeaders = (token = state.token) => (token ? { authorization: `Bearer ${token}` } : {});

/** One API call (a path relative to the page, so the dashboard also works behind a proxy under a sub-path). */
async function api(path, o = {}) {
  const method = o.method ?? 'GET';
  const headers = { accept: 'application/json', ...authHeaders(o.token) };
  let body;
  if (o.body !== undefined) {
    headers['content-type'] = 'application/json';
    body = JSON.stringify(o.body);
  }
  let r;
  try {
    r = await fetch(path, { method, headers, body, cache: 'no-store', credentials: 'omit' });
  } catch (e) {
    throw new ApiError(0, `the daemon did not answer (${e instanceof Error ? e.message : e})`);
  }
  let data = null;
  try {
    data = await r.json();
  } catch {
    /* not JSON */
  }
  if (!r.ok) {
    if (r.status === 401 && method === 'GET') tokenNeeded();
    throw new ApiError(r.status, data && typeof data.error === 'string' ? data.error : `HTTP ${r.status}`);
  }
  return data;
}

/* ---------- notices ---------- */

let noticeTimer;
function notice(text, kind = 'error') {
  const el = $('notice');
  el.textContent = text;
  el.dataset.kind = kind;
  el.hidden = false;
  clearTimeout(noticeTimer);
  if (kind !== 'error') noticeTimer = setTimeout(() => (el.hidden = true), 6000);
}

function errorBox(e) {
  if (e instanceof ApiError && e.status === 401) return tokenPanel();
  return h('p', { class: 'error', role: 'alert' }, e instanceof Error ? e.message : String(e));
}

function tokenPanel() {
  return h(
    'div',
    { class: 'card needs-token', 'data-needs-token': true },
    h('h2', null, 'This daemon needs the API token to show anything'),
    h('p', null, 'With a token configured, reading needs it too (api.read_requires_token). Enter the token (api.token, or the contents of api.token_file) under "Token" at the top.'),
  );
}

/* ---------- the token ---------- */

function applyAuth() {
  document.body.classList.toggle('can-write', state.canWrite);
  $('token-summary').textContent = state.canWrite ? 'Token ✓' : state.token ? 'Token (read)' : 'Token';
  $('token').classList.toggle('valid', state.canWrite);
}

function tokenStatus(text, kind = 'info') {
  const el = $('token-status');
  el.textContent = text;
  el.dataset.kind = kind;
}

function tokenNeeded() {
  if (state.needToken) return;
  state.needToken = true;
  $('token').open = true;
  tokenStatus('Reads need the token on this daemon.', 'error');
}

async function loadInfo() {
  state.info = await api('api');
  const i = state.info;
  if (state.token && i.token_valid === false) {
    // The daemon's token changed since this tab stored it.
    state.token = null;
    storeToken(null);
    tokenStatus('The stored token is no longer valid.', 'error');
    state.info = await api('api');
  }
  state.canWrite = state.info.writes_enabled && state.info.token_valid === true;
  state.needToken = false;
  if (state.info.read_requires_token && state.info.token_valid !== true) tokenNeeded();
  else if (!state.info.writes_enabled) tokenStatus('Writes are disabled on this daemon (no api.token or api.token_file): the dashboard is read-only.');
  else if (state.canWrite) tokenStatus('Token accepted: ban and unban are enabled.', 'ok');
  applyAuth();
}

async function submitToken(ev) {
  ev.preventDefault();
  const input = $('token-input');
  const t = input.value.trim();
  if (!t) return;
  if (!/^[\x21-\x7e]+$/.test(t)) {
    tokenStatus('A token is printable ASCII without spaces.', 'error');
    return;
  }
  let info;
  try {
    // Checked before it is kept: a wrong token is never stored.
    info = await api('api', { token: t });
  } catch (e) {
    tokenStatus(e.message, 'error');
    return;
  }
  if (info.token_valid === true) {
    state.token = t;
    storeToken(t);
    input.value = '';
    state.info = info;
    state.canWrite = info.writes_enabled;
    state.needToken = false;
    applyAuth();
    tokenStatus('Token accepted: ban and unban are enabled.', 'ok');
    $('token').open = false;
    restartStream();
    route();
  } else if (info.token_valid === false) {
    tokenStatus('Wrong token.', 'error');
  } else {
    tokenStatus('This daemon has no token configured, so writes are disabled (set api.token_file).', 'error');
  }
}

function forgetToken() {
  state.token = null;
  storeToken(null);
  state.canWrite = false;
  $('token-input').value = '';
  tokenStatus('Token forgotten.');
  applyAuth();
  restartStream();
  loadInfo().then(route, (e) => notice(e.message));
}

/* ---------- writes ---------- */

const DURATIONS = [
  ['', "the rule's ban time (escalating)"],
  ['1h', '1 hour'],
  ['1d', '1 day'],
  ['7d', '7 days'],
  ['30d', '30 days'],
  ['permanent', 'permanent'],
];

function banForm(prefill = '') {
  const ip = h('input', { name: 'ip', required: true, value: prefill, placeholder: '203.0.113.7 or 198.51.100.0/24', spellcheck: 'false', autocomplete: 'off', maxlength: 64 });
  const dur = h('select', { name: 'duration' }, DURATIONS.map(([v, t]) => h('option', { value: v }, t)));
  const reason = h('input', { name: 'reason', maxlength: 500, placeholder: 'optional', autocomplete: 'off' });
  const out = h('p', { class: 'result', role: 'status' });
  const button = h('button', { type: 'submit' }, 'Ban');
  const form = h(
    'form',
    { class: 'ban-form', 'data-write': true, novalidate: true },
    h('label', null, 'Address or prefix', ip),
    h('label', null, 'Duration', dur),
    h('label', null, 'Reason', reason),
    h('div', { class: 'row' }, button),
    out,
  );
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const body = { ip: ip.value.trim() };
    if (!body.ip) return;
    if (dur.value) body.duration = dur.value === 'permanent' ? null : dur.value;
    if (reason.value.trim()) body.reason = reason.value.trim();
    button.disabled = true;
    out.dataset.kind = 'info';
    out.textContent = 'Banning…';
    try {
      const r = await api('api/bans', { method: 'POST', body });
      const b = r.ban;
      out.dataset.kind = 'ok';
      out.textContent =
        `Banned ${b.ip} ${b.expires ? `until ${fmtTime(b.expires)}` : 'permanently'}` +
        `${r.replaced ? ' (replacing its previous ban)' : ''}${r.enforced ? '' : '; the firewall change is being retried'}.`;
      out.dataset.ip = b.ip;
      if (state.view === 'ip') scheduleIpReload();
    } catch (e) {
      out.dataset.kind = 'error';
      out.textContent = e.message;
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

/** Armed unban buttons by address: the live list may redraw between the two taps, and the new button stays armed. */
const armed = new Map();

/** Unban in two taps: the first arms the button for a few seconds (no confirm(): it blocks the page). */
function unbanButton(ip) {
  const b = h('button', { type: 'button', class: 'danger small-button', 'data-write': true, 'data-unban': ip, title: `Lift the ban of ${ip}` }, 'Unban');
  const show = () => {
    const on = armed.has(ip);
    b.textContent = on ? 'Confirm' : 'Unban';
    b.classList.toggle('armed', on);
  };
  show();
  b.addEventListener('click', async () => {
    if (!armed.has(ip)) {
      armed.set(
        ip,
        setTimeout(() => {
          armed.delete(ip);
          for (const other of document.querySelectorAll('button[data-unban]')) if (other.dataset.unban === ip) other.dispatchEvent(new Event('tsf-disarm'));
        }, 4000),
      );
      show();
      return;
    }
    clearTimeout(armed.get(ip));
    armed.delete(ip);
    b.disabled = true;
    b.textContent = 'Unbanning…';
    try {
      const r = await api(`api/bans/${encodeURIComponent(ip)}`, { method: 'DELETE' });
      const still = r.still_blocked_by ? `; the prefix ban ${r.still_blocked_by} still blocks it` : '';
      notice(r.removed ? `Unbanned ${r.ip}${still}.` : `${r.ip} had no active ban${still}.`, 'ok');
      b.textContent = 'Unbanned';
      if (state.view === 'ip') scheduleIpReload();
    } catch (e) {
      notice(`Unban ${ip}: ${e.message}`);
      b.disabled = false;
      show();
    }
  });
  b.addEventListener('tsf-disarm', show);
  return b;
}

/* ---------- pieces ---------- */

function card(title, attrs, ...children) {
  return h('section', { class: 'card', ...attrs }, title ? h('h2', null, title) : null, ...children);
}

function table(head, rows, attrs = {}) {
  return h(
    'div',
    { class: 'table-wrap' },
    h('table', attrs, h('thead', null, h('tr', null, head.map(([t, cls]) => h('th', { class: cls, scope: 'col' }, t)))), h('tbody', null, rows)),
  );
}

/** A horizontal bar: the total, with its active part darker. */
function bar(active, total, max) {
  const w = (n) => (max > 0 ? Math.max(n > 0 ? 0.5 : 0, (n / max) * 100) : 0);
  return s(
    'svg',
    { class: 'hbar', viewBox: '0 0 100 10', preserveAspectRatio: 'none', 'aria-hidden': 'true' },
    s('rect', { class: 'hbar-total', x: 0, y: 0, width: w(total), height: 10 }),
    s('rect', { class: 'hbar-active', x: 0, y: 0, width: w(active), height: 10 }),
  );
}

function statusBadge(b) {
  if (b.active) return h('span', { class: 'badge active' }, b.expires ? 'active' : 'permanent');
  const cause = b.cause ?? (b.end_reason === 'expired' || (!b.ended && b.expires) ? 'expired' : 'ended');
  return h('span', { class: 'badge ended', title: b.end_reason ?? '' }, cause === 'manual' ? 'unbanned' : cause);
}

/* ---------- overview ---------- */

function renderTotals() {
  const el = $('totals');
  if (!el) return;
  const st = state.stats;
  const status = state.status;
  const t = st?.totals;
  const today = st?.per_day?.at(-1)?.bans;
  const rules = Array.isArray(status?.rules) ? status.rules : [];
  const matched = rules.reduce((n, r) => n + (r.matched ?? 0), 0);
  const read = rules.reduce((n, r) => n + (r.lines ?? 0), 0);
  const enforcers = Array.isArray(status?.enforcers) ? status.enforcers : [];
  const pending = status?.enforcement?.pending_retries ?? 0;
  const fwOk = enforcers.every((e) => e.ok !== false) && pending === 0;
  const items = [
    ['active', 'Active bans', t?.active, 'in force now'],
    ['today', 'Bans today', today, 'since 00:00 UTC'],
    ['last_24h', 'Last 24 hours', t?.last_24h, 'bans made'],
    ['bans', 'Bans recorded', t?.bans, 'all time'],
    ['addresses', 'Addresses banned', t?.addresses, 'distinct, all time'],
    ['tracked', 'Tracked addresses', status?.tracked_ips, 'with failures counting'],
    ['matched', 'Lines matched', status ? matched : undefined, status ? `of ${num(read)} read` : ''],
    ['uptime', 'Uptime', status ? status.uptime_s : undefined, status ? (fwOk ? `firewall ok (${enforcers.map((e) => e.name).join(', ') || 'none'})` : `firewall: ${plural(pending, 'change')} pending`) : ''],
  ];
  el.replaceChildren(
    ...items.map(([key, label, value, sub]) =>
      h(
        'div',
        { class: `stat${key === 'uptime' && status && !fwOk ? ' warn' : ''}`, 'data-total': key, 'data-value': typeof value === 'number' ? value : undefined },
        h('div', { class: 'stat-label' }, label),
        h('div', { class: 'stat-value' }, key === 'uptime' ? (typeof value === 'number' ? fmtDuration(value) : '—') : num(value)),
        h('div', { class: 'stat-sub' }, sub),
      ),
    ),
  );
}

/** Bars per time bucket; each links to the bans it counts. */
function timeline(buckets, o) {
  const max = Math.max(1, ...buckets.map((b) => b.bans));
  const H = 100;
  const W = 10;
  const n = buckets.length;
  const total = buckets.reduce((a, b) => a + b.bans, 0);
  const chart = s(
    'svg',
    { class: 'timeline', viewBox: `0 0 ${n * W} ${H}`, preserveAspectRatio: 'none', role: 'img', 'aria-label': `${o.title}: ${plural(total, 'ban')}` },
    s('line', { class: 'grid', x1: 0, x2: n * W, y1: 0.5, y2: 0.5, 'vector-effect': 'non-scaling-stroke' }),
    s('line', { class: 'grid', x1: 0, x2: n * W, y1: H / 2, y2: H / 2, 'vector-effect': 'non-scaling-stroke' }),
    buckets.map((b, i) => {
      const hgt = b.bans === 0 ? 0 : Math.max(1.5, (b.bans / max) * (H - 2));
      const start = Date.parse(b.start);
      const link = s(
        'a',
        { href: searchHref({ state: 'all', since: b.start, until: new Date(start + o.size - 1).toISOString() }), class: 'bucket', 'data-start': b.start, 'data-bans': b.bans },
        s('title', null, `${fmtUtc(b.start, o.size === HOUR)}: ${plural(b.bans, 'ban')}`),
        s('rect', { class: 'hit', x: i * W, y: 0, width: W, height: H }),
        s('rect', { class: 'bar', x: i * W + 1, y: H - hgt, width: W - 2, height: hgt }),
      );
      return link;
    }),
  );
  const first = buckets[0];
  const last = buckets.at(-1);
  return h(
    'figure',
    { class: 'chart', id: o.id, 'data-total': total },
    h('figcaption', null, h('span', null, o.title), h('span', { class: 'muted' }, `${plural(total, 'ban')} · peak ${num(max === 1 && total === 0 ? 0 : max)}`)),
    chart,
    h(
      'div',
      { class: 'axis muted small' },
      h('span', null, first ? fmtUtc(first.start, o.size === HOUR) : ''),
      h('span', null, last ? (o.size === HOUR ? 'this hour' : 'today') : ''),
    ),
  );
}

function renderTimeline() {
  const el = $('timeline');
  if (!el || !state.stats) return;
  el.replaceChildren(
    h('h2', null, 'Bans over time'),
    h(
      'div',
      { class: 'charts' },
      timeline(state.stats.per_hour, { id: 'timeline-hours', title: 'Per hour, last 48 hours (UTC)', size: HOUR }),
      timeline(state.stats.per_day, { id: 'timeline-days', title: 'Per day, last 30 days (UTC)', size: DAY }),
    ),
  );
}

/** A by_country row's search: by name, as the row was counted (bans from PyFilter nodes carry only the name). */
function countryFilter(c) {
  return c.country ?? c.code;
}

function countryHref(c) {
  return searchHref({ state: 'all', country: countryFilter(c) });
}

function renderCountries() {
  const el = $('countries');
  if (!el || !state.stats) return;
  const rows = state.stats.by_country;
  const top = rows.slice(0, 10);
  const max = Math.max(0, ...top.map((c) => c.total));
  const all = rows.reduce((a, c) => a + c.total, 0);
  const known = (c) => c.country !== null || c.code !== null;
  el.replaceChildren(
    h('h2', null, 'Bans by country'),
    h('p', { class: 'legend muted small' }, h('span', { class: 'key active' }), 'active ', h('span', { class: 'key total' }), 'all bans (top 10)'),
    h(
      'div',
      { class: 'bars', id: 'country-chart', role: 'list' },
      top.map((c) =>
        h(
          known(c) ? 'a' : 'div',
          { class: 'barrow', role: 'listitem', href: known(c) ? countryHref(c) : undefined, 'data-country': c.country ?? '', 'data-code': c.code ?? '', 'data-total': c.total, 'data-active': c.active },
          h('span', { class: 'barlabel' }, countryText(c.country, c.code)),
          bar(c.active, c.total, max),
          h('span', { class: 'barnum' }, num(c.total)),
        ),
      ),
      top.length === 0 ? h('p', { class: 'muted' }, 'No bans yet.') : null,
    ),
    h(
      'details',
      { class: 'more', open: rows.length <= 12 },
      h('summary', null, `All ${plural(rows.length, 'country', 'countries')}`),
      table(
        [['Country'], ['Code', 'opt'], ['Active', 'n'], ['Total', 'n'], ['Share', 'n opt']],
        rows.map((c) =>
          h(
            'tr',
            { 'data-country': c.country ?? '', 'data-code': c.code ?? '', 'data-active': c.active, 'data-total': c.total },
            h('td', null, known(c) ? h('a', { href: countryHref(c) }, c.country ?? c.code) : h('span', { class: 'muted' }, 'unknown')),
            h('td', { class: 'opt' }, c.code ?? ''),
            h('td', { class: 'n' }, num(c.active)),
            h('td', { class: 'n' }, num(c.total)),
            h('td', { class: 'n opt' }, all > 0 ? `${((c.total / all) * 100).toFixed(1)} %` : ''),
          ),
        ),
        { id: 'country-table' },
      ),
    ),
  );
}

function renderRules() {
  const el = $('rules');
  if (!el || !state.stats) return;
  const rows = state.stats.by_rule;
  const max = Math.max(0, ...rows.map((r) => r.total));
  el.replaceChildren(
    h('h2', null, 'Bans by rule'),
    table(
      [['Rule'], ['Active', 'n'], ['Total', 'n'], ['', 'barcell']],
      rows.map((r) =>
        h(
          'tr',
          { 'data-rule': r.rule, 'data-active': r.active, 'data-total': r.total },
          h('td', null, h('a', { href: searchHref({ state: 'all', rule: r.rule }) }, r.rule)),
          h('td', { class: 'n' }, num(r.active)),
          h('td', { class: 'n' }, num(r.total)),
          h('td', { class: 'barcell' }, bar(r.active, r.total, max)),
        ),
      ),
      { id: 'rule-table' },
    ),
    h('h3', null, 'By origin'),
    table(
      [['Origin'], ['Active', 'n'], ['Total', 'n']],
      state.stats.by_origin.map((r) =>
        h(
          'tr',
          { 'data-origin': r.origin, 'data-active': r.active, 'data-total': r.total },
          h('td', null, h('a', { href: searchHref({ state: 'all', origin: r.origin }) }, r.origin)),
          h('td', { class: 'n' }, num(r.active)),
          h('td', { class: 'n' }, num(r.total)),
        ),
      ),
      { id: 'origin-table' },
    ),
  );
}

function renderOffenders() {
  const el = $('offenders');
  if (!el || !state.stats) return;
  el.replaceChildren(
    h('h2', null, 'Banned most often'),
    table(
      [['Address'], ['Bans', 'n'], ['Last', 'opt'], ['Now']],
      state.stats.top_offenders.map((o) =>
        h(
          'tr',
          { 'data-ip': o.ip, 'data-bans': o.bans },
          h('td', { class: 'ipcell' }, ipLink(o.ip), o.country ? h('div', { class: 'muted small' }, o.country) : null),
          h('td', { class: 'n' }, num(o.bans)),
          h('td', { class: 'opt' }, when(o.last)),
          h('td', null, o.active ? h('span', { class: 'badge active' }, 'banned') : h('span', { class: 'muted' }, '—')),
        ),
      ),
    ),
  );
}

function banRow(b) {
  const fresh = state.fresh.has(b.id);
  return h(
    'tr',
    { 'data-ip': b.ip, 'data-id': b.id, 'data-active': b.active ? 'true' : 'false', class: fresh ? 'fresh' : undefined },
    h('td', { class: 'time' }, h('time', { class: 'full', datetime: b.since, title: b.since }, fmtTime(b.since)), h('div', { class: 'ago muted small', title: b.since }, ago(b.since))),
    h('td', { class: 'ipcell' }, ipLink(b.ip), b.blocks && b.blocks !== 'all' ? h('div', { class: 'muted small' }, b.blocks) : null),
    h('td', null, b.rule),
    h('td', { class: 'opt' }, countryText(b.country, b.country_code)),
    h('td', { class: 'opt' }, b.origin, h('div', { class: 'muted small' }, b.node)),
    h('td', null, statusBadge(b), b.active ? h('div', { class: 'sub muted small' }, b.expires ? `until ${fmtTime(b.expires)}` : 'no end') : b.ended ? h('div', { class: 'sub muted small' }, fmtTime(b.ended)) : null),
    h('td', { class: 'act' }, b.active ? unbanButton(b.ip) : null),
  );
}

const BAN_HEAD = [['Banned'], ['Address'], ['Rule'], ['Country', 'opt'], ['Origin · node', 'opt'], ['State'], ['', 'act']];

function renderLatest() {
  const el = $('latest');
  if (!el || !state.latest) return;
  el.replaceChildren(
    h('h2', null, 'Latest bans ', h('span', { class: 'muted small' }, 'live')),
    state.latest.length === 0 ? h('p', { class: 'muted' }, 'No bans yet.') : table(BAN_HEAD, state.latest.map((b) => banRow(b)), { id: 'latest-table' }),
    h('p', { class: 'small' }, h('a', { href: searchHref({ state: 'all' }) }, 'All bans →')),
  );
}

async function loadStats() {
  const [stats, status] = await Promise.allSettled([api('api/stats'), api('api/status')]);
  if (stats.status === 'fulfilled') state.stats = stats.value;
  if (status.status === 'fulfilled') state.status = status.value;
  if (stats.status === 'rejected') throw stats.reason;
}

function renderStats() {
  renderTotals();
  renderTimeline();
  renderCountries();
  renderRules();
  renderOffenders();
}

async function loadLatest() {
  const page = await api(`api/bans?state=all&limit=${LATEST}`);
  state.latest = page.bans;
}

async function showOverview(seq) {
  const view = $('view');
  view.replaceChildren(
    h('div', { class: 'stats', id: 'totals' }, h('p', { class: 'muted' }, 'Loading…')),
    card(null, { id: 'timeline', class: 'card wide' }),
    h('div', { class: 'grid' }, card(null, { id: 'latest', class: 'card span2' }), h('div', { class: 'col' }, card('Ban an address', { 'data-write': true, id: 'ban-card' }, banForm()), card(null, { id: 'offenders' }))),
    h('div', { class: 'grid' }, card(null, { id: 'countries', class: 'card span2' }), card(null, { id: 'rules' })),
  );
  try {
    await Promise.all([loadStats(), loadLatest()]);
  } catch (e) {
    if (seq !== state.seq) return;
    view.replaceChildren(errorBox(e));
    return;
  }
  if (seq !== state.seq) return;
  renderStats();
  renderLatest();
  ready('overview');
}

let statsTimer = null;
function scheduleStats() {
  if (statsTimer !== null) return;
  statsTimer = setTimeout(async () => {
    statsTimer = null;
    if (state.view !== 'overview') return;
    try {
      await loadStats();
      if (state.view === 'overview') renderStats();
    } catch {
      /* the next event or refresh tries again */
    }
  }, STATS_DELAY_MS);
}

/* ---------- search ---------- */

const FILTERS = ['q', 'rule', 'country', 'origin', 'node', 'state', 'since', 'until'];

function select(name, value, options) {
  const opts = options.slice();
  if (value && !opts.some(([v]) => v === value)) opts.push([value, value]);
  return h('select', { name }, opts.map(([v, t]) => h('option', { value: v, selected: v === value }, t)));
}

async function showSearch(params, seq) {
  const view = $('view');
  const f = Object.fromEntries(FILTERS.map((k) => [k, params.get(k) ?? '']));
  if (!f.state) f.state = 'all';
  const page = Math.max(1, Number(params.get('page')) || 1);
  const cursor = params.get('cursor');
  const offset = params.get('offset');
  if (!state.stats) {
    try {
      state.stats = await api('api/stats');
    } catch {
      /* the lists below are then free text */
    }
    if (seq !== state.seq) return;
  }
  const rules = state.stats?.by_rule ?? [];
  const countries = (state.stats?.by_country ?? []).filter((c) => c.country || c.code);
  const q = h('input', { name: 'q', value: f.q, placeholder: '203.0.113. or 2001:db8:', spellcheck: 'false', autocomplete: 'off', maxlength: 50, inputmode: 'url' });
  const form = h(
    'form',
    { class: 'search-form', id: 'search-form', role: 'search' },
    h('label', null, 'Address starts with', q),
    h('label', null, 'Rule', select('rule', f.rule, [['', 'any'], ...rules.map((r) => [r.rule, r.rule])])),
    h('label', null, 'Country', select('country', f.country, [['', 'any'], ...countries.map((c) => [countryFilter(c), countryText(c.country, c.code)])])),
    h('label', null, 'Origin', select('origin', f.origin, [['', 'any'], ['local', 'local'], ['manual', 'manual'], ['remote', 'remote'], ['pyfilter', 'pyfilter']])),
    h('label', null, 'Node', h('input', { name: 'node', value: f.node, autocomplete: 'off', maxlength: 200 })),
    h('label', null, 'State', select('state', f.state, [['all', 'all'], ['active', 'active'], ['ended', 'ended']])),
    h('div', { class: 'row' }, h('button', { type: 'submit' }, 'Search'), h('a', { href: '#/search', class: 'button secondary' }, 'Clear')),
  );
  const chips = ['since', 'until'].filter((k) => f[k]).map((k) => h('span', { class: 'chip' }, `${k} ${fmtTime(f[k])}`));
  const results = h('div', { id: 'results' }, h('p', { class: 'muted' }, 'Searching…'));
  view.replaceChildren(card('Search bans', { id: 'search' }, form, chips.length ? h('p', { class: 'chips' }, chips, ' ', h('a', { href: searchHref({ ...f, since: '', until: '' }) }, 'any time')) : null, results));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const data = new FormData(form);
    const next = { ...f };
    for (const k of ['q', 'rule', 'country', 'origin', 'node', 'state']) next[k] = String(data.get(k) ?? '').trim();
    if (next.q && !Q_RE.test(next.q)) {
      results.replaceChildren(h('p', { class: 'error' }, 'The address filter takes the start of an address: digits, a-f, ".", ":" and "/".'));
      return;
    }
    navigate(searchHref(next));
  });

  const apiParams = new URLSearchParams();
  for (const k of FILTERS) if (f[k]) apiParams.set(k, f[k]);
  const key = apiParams.toString();
  apiParams.set('limit', String(PAGE));
  if (cursor) apiParams.set('cursor', cursor);
  else if (offset) apiParams.set('offset', offset);
  let r;
  try {
    r = await api(`api/bans?${apiParams}`);
  } catch (e) {
    if (seq === state.seq) results.replaceChildren(errorBox(e));
    return;
  }
  if (seq !== state.seq) return;
  const seen = state.cursors.get(key) ?? [null];
  state.cursors.set(key, seen);
  if (cursor) seen[page - 1] = cursor;
  if (r.next_cursor) seen[page] = r.next_cursor;
  const pages = Math.max(1, Math.ceil(r.total / PAGE));
  const nav = (p, label, rel) => {
    const c = seen[p - 1];
    const extra = p === 1 ? {} : c ? { cursor: c } : { offset: (p - 1) * PAGE };
    return h('a', { href: searchHref({ ...f, page: p === 1 ? '' : p, ...extra }), class: 'button secondary', rel, 'data-page': p }, label);
  };
  results.replaceChildren(
    h('p', { id: 'search-total', 'data-total': r.total, 'data-page': page }, `${plural(r.total, 'ban')} ${r.total === 1 ? 'matches' : 'match'}`, r.total > PAGE ? h('span', { class: 'muted' }, ` · page ${num(page)} of ${num(pages)}`) : null),
    r.bans.length ? table(BAN_HEAD, r.bans.map((b) => banRow(b)), { id: 'results-table' }) : h('p', { class: 'muted' }, 'No ban matches.'),
    h('div', { class: 'pager' }, page > 1 ? nav(page - 1, '← Previous', 'prev') : null, r.next_cursor ? h('a', { href: searchHref({ ...f, page: page + 1, cursor: r.next_cursor }), class: 'button secondary', rel: 'next', 'data-page': page + 1 }, 'Next →') : null),
  );
  ready('search');
}

/* ---------- an address ---------- */

let ipTimer = null;
function scheduleIpReload() {
  if (ipTimer !== null) return;
  ipTimer = setTimeout(() => {
    ipTimer = null;
    if (state.view === 'ip') route();
  }, 300);
}

function escalation(bans) {
  const steps = bans.map((b) => fmtDuration(b.duration_s));
  return steps.length > 8 ? [...steps.slice(0, 3), '…', ...steps.slice(-4)].join(' → ') : steps.join(' → ');
}

function howItEnded(b) {
  if (b.active) return b.expires ? `in force until ${fmtTime(b.expires)} (${ago(b.expires)})` : 'in force, permanently';
  if (b.ended) return `${fmtTime(b.ended)}: ${b.end_reason ?? 'ended'}`;
  return b.expires ? `expired at ${fmtTime(b.expires)}` : 'ended';
}

function banStory(b, prev) {
  const longer = prev && b.duration_s !== null && prev.duration_s !== null && b.duration_s > prev.duration_s;
  const dl = (pairs) => h('dl', { class: 'facts' }, pairs.filter(Boolean).map(([k, v]) => [h('dt', null, k), h('dd', null, v)]));
  return h(
    'article',
    { class: `ban${b.active ? ' is-active' : ''}`, 'data-ban-count': b.ban_count, 'data-rule': b.rule, 'data-active': b.active ? 'true' : 'false' },
    h('h3', null, `Ban ${num(b.ban_count)}`, h('span', { class: 'muted' }, ` · ${b.rule}`), ' ', statusBadge(b)),
    dl([
      ['Banned', when(b.since)],
      ['Length', h('span', { 'data-duration': b.duration_s ?? 'permanent' }, fmtDuration(b.duration_s), longer ? h('span', { class: 'muted' }, ' (escalated)') : b.duration_s === null && prev ? h('span', { class: 'muted' }, ' (escalated)') : null)],
      ['How it ended', h('span', { 'data-ended': b.ended ?? '' }, howItEnded(b))],
      ['Origin', `${b.origin} · node ${b.node}`],
      ['Country', countryText(b.country, b.country_code)],
      ['Blocks', b.blocks === 'all' ? 'all traffic' : b.blocks],
      ['Failures', num(b.failures)],
      ['Reason', h('span', { class: 'reason' }, b.reason)],
    ]),
    b.lines.length
      ? h('div', { class: 'lines' }, h('h4', null, `Log lines that counted (${num(b.lines.length)})`), h('ol', null, b.lines.map((l) => h('li', null, h('code', null, l)))))
      : h('p', { class: 'muted small' }, 'No log lines recorded (a manual, imported or remote ban).'),
  );
}

async function showIp(ip, seq) {
  const view = $('view');
  state.ip = ip;
  view.replaceChildren(h('h1', { class: 'ip-title' }, ip), h('p', { class: 'muted' }, 'Loading…'));
  let r;
  try {
    r = await api(`api/bans/${encodeURIComponent(ip)}/explain`);
  } catch (e) {
    if (seq === state.seq) view.replaceChildren(h('h1', { class: 'ip-title' }, ip), errorBox(e));
    return;
  }
  if (seq !== state.seq) return;
  state.ip = r.ip;
  const bans = r.bans;
  const active = bans.some((b) => b.active);
  const last = bans.at(-1);
  const country = [...bans].reverse().find((b) => b.country || b.country_code);
  const uniq = (xs) => [...new Set(xs)].join(', ');
  const summary = bans.length
    ? h(
        'dl',
        { class: 'facts summary' },
        h('dt', null, 'Bans'),
        h('dd', { 'data-bans': bans.length }, plural(bans.length, 'ban'), bans.length > 1 ? ` (ban count ${num(last.ban_count)})` : ''),
        h('dt', null, 'First / last'),
        h('dd', null, when(bans[0].since), ' / ', when(last.since)),
        h('dt', null, 'Escalation'),
        h('dd', { 'data-escalation': true }, escalation(bans)),
        h('dt', null, 'Rules'),
        h('dd', null, uniq(bans.map((b) => b.rule))),
        h('dt', null, 'Country'),
        h('dd', null, country ? countryText(country.country, country.country_code) : 'unknown'),
        h('dt', null, 'Nodes'),
        h('dd', null, uniq(bans.map((b) => b.node))),
      )
    : h('p', { class: 'muted', 'data-empty': true }, `No ban of ${r.ip} is recorded.`);
  view.replaceChildren(
    h(
      'section',
      { class: 'card', id: 'ip', 'data-ip': r.ip, 'data-active': active ? 'true' : 'false' },
      h('h1', { class: 'ip-title' }, r.ip, ' ', active ? h('span', { class: 'badge active' }, 'banned now') : h('span', { class: 'badge' }, 'not banned')),
      r.covered_by.length
        ? h('p', { class: 'covered', 'data-covered-by': r.covered_by.join(' ') }, 'Also blocked by the prefix ', r.covered_by.map((p, i) => [i ? ', ' : '', ipLink(p)]), '.')
        : null,
      summary,
      h('div', { class: 'actions', 'data-write': true }, active ? unbanButton(r.ip) : null, h('details', { class: 'more' }, h('summary', null, active ? 'Ban again (replace)' : 'Ban this address'), banForm(r.ip))),
    ),
    bans.length ? card('The story, oldest first', { id: 'story' }, bans.map((b, i) => banStory(b, bans[i - 1]))) : null,
  );
  ready('ip');
}

/* ---------- routing ---------- */

/** Marks a view as drawn: for tests (data-ready) and for timing (a performance mark the benchmark reads). */
function ready(name) {
  $('view').dataset.ready = name;
  try {
    performance.mark(`tsfilter:${name}-ready`);
  } catch {
    /* no User Timing */
  }
}

/** Goes to a route; the view is marked not ready at once, not only when the hashchange event comes. */
function navigate(href) {
  delete $('view').dataset.ready;
  if (location.hash === href) route();
  else location.hash = href;
}

function route() {
  const seq = ++state.seq;
  const view = $('view');
  delete view.dataset.ready;
  const hash = location.hash.replace(/^#/, '') || '/';
  const qi = hash.indexOf('?');
  const path = qi < 0 ? hash : hash.slice(0, qi);
  const query = new URLSearchParams(qi < 0 ? '' : hash.slice(qi + 1));
  let name = 'overview';
  let run;
  if (path.startsWith('/ip/')) {
    name = 'ip';
    let ip;
    try {
      ip = decodeURIComponent(path.slice(4));
    } catch {
      ip = path.slice(4);
    }
    if (ip) run = () => showIp(ip, seq);
    else {
      name = 'search';
      run = () => showSearch(new URLSearchParams(), seq);
    }
  } else if (path === '/search') {
    name = 'search';
    run = () => showSearch(query, seq);
  } else run = () => showOverview(seq);
  state.view = name;
  document.body.dataset.view = name;
  for (const a of document.querySelectorAll('[data-nav]')) a.classList.toggle('current', a.dataset.nav === name);
  if (state.needToken) {
    view.replaceChildren(tokenPanel());
    return;
  }
  run().catch((e) => seq === state.seq && view.replaceChildren(errorBox(e)));
}

/* ---------- live events: fetch() and a stream reader, so the token can be sent (EventSource cannot) ---------- */

const live = { ac: null, restart: false, wake: null, retryMs: 3000, connectedOnce: false };

function setLive(st, text) {
  const el = $('live');
  el.dataset.state = st;
  el.textContent = text;
}

function pause(ms) {
  return new Promise((resolve) => {
    const t = Number.isFinite(ms) ? setTimeout(done, ms) : null;
    function done() {
      clearTimeout(t);
      live.wake = null;
      resolve();
    }
    live.wake = done;
  });
}

function restartStream() {
  live.restart = true;
  live.ac?.abort();
  live.wake?.();
}

async function readEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      let type = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (line === '' || line.startsWith(':')) continue;
        const c = line.indexOf(':');
        const field = c < 0 ? line : line.slice(0, c);
        let v = c < 0 ? '' : line.slice(c + 1);
        if (v.startsWith(' ')) v = v.slice(1);
        if (field === 'event') type = v;
        else if (field === 'data') data.push(v);
        else if (field === 'retry' && /^\d{1,7}$/.test(v)) live.retryMs = Number(v);
      }
      if (data.length) onEvent(type, data.join('\n'));
    }
    // The server frames every event on one line; anything this large is not an event stream.
    if (buf.length > 4 * 1024 * 1024) throw new Error('event stream out of step');
  }
}

function sortLatest(list) {
  return list.sort((a, b) => Date.parse(b.since) - Date.parse(a.since) || b.id - a.id).slice(0, LATEST);
}

function onEvent(type, text) {
  let ev;
  try {
    ev = JSON.parse(text);
  } catch {
    return;
  }
  if (type === 'resync') {
    resync();
    return;
  }
  if ((type !== 'ban' && type !== 'unban') || !ev || typeof ev.ip !== 'string') return;
  if (state.latest) {
    const i = state.latest.findIndex((b) => b.id === ev.id);
    const row = type === 'unban' ? { ...ev, active: false } : ev;
    if (i >= 0) state.latest[i] = { ...state.latest[i], ...row };
    else if (type === 'ban') {
      state.fresh.add(ev.id);
      setTimeout(() => state.fresh.delete(ev.id), 3000);
      state.latest = sortLatest([...state.latest, row]);
    }
    if (state.view === 'overview') renderLatest();
  }
  scheduleStats();
  if (state.view === 'ip' && state.ip === ev.ip) scheduleIpReload();
}

async function resync() {
  if (state.view !== 'overview') return;
  try {
    await Promise.all([loadLatest(), loadStats()]);
    if (state.view === 'overview') {
      renderLatest();
      renderStats();
    }
  } catch {
    /* shown at the next refresh */
  }
}

async function runStream() {
  for (;;) {
    if (state.needToken) {
      setLive('off', 'needs token');
      await pause(Infinity);
      live.restart = false;
      continue;
    }
    const ac = new AbortController();
    live.ac = ac;
    let status = 0;
    try {
      const r = await fetch('api/events', { headers: { accept: 'text/event-stream', ...authHeaders() }, cache: 'no-store', credentials: 'omit', signal: ac.signal });
      status = r.status;
      if (!r.ok || !r.body) throw new ApiError(r.status, `HTTP ${r.status}`);
      setLive('live', 'live');
      // Events may have been missed while the stream was down.
      if (live.connectedOnce) resync();
      live.connectedOnce = true;
      await readEvents(r.body);
    } catch {
      /* the connection dropped, or restartStream() aborted it */
    }
    live.ac = null;
    if (live.restart) {
      live.restart = false;
      continue;
    }
    if (status === 401) tokenNeeded();
    setLive('down', status === 503 ? 'too many viewers; retrying' : 'reconnecting…');
    await pause(live.retryMs);
    live.restart = false;
  }
}

/* ---------- start ---------- */

async function start() {
  $('token-form').addEventListener('submit', submitToken);
  $('token-forget').addEventListener('click', forgetToken);
  window.addEventListener('hashchange', route);
  applyAuth();
  // The view's data is asked for at once, beside GET /api: a daemon that wants the token answers 401 and the view
  // shows the token panel.
  const info = loadInfo();
  route();
  try {
    await info;
  } catch (e) {
    notice(`The API did not answer: ${e.message}`);
  }
  if (state.needToken) route();
  runStream();
  setInterval(() => {
    if (state.view === 'overview' && document.visibilityState === 'visible' && !state.needToken) {
      loadStats().then(() => state.view === 'overview' && renderStats(), () => {});
    }
  }, REFRESH_MS);
}

start();
