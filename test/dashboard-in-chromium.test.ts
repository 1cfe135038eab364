import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { appendFileSync, existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { openSqliteStore, type SqliteStore } from '../src/store/sqlite-store.ts';
import { runCliAsync, startHarness, TOKEN, type Harness } from './helpers/http-api.ts';
import { REPO } from './helpers/cli.ts';
import { requirePrereq } from './helpers/prereq.ts';
import { failed } from './helpers/syslog.ts';

/*
 * The dashboard in a real Chromium (Debian's, driven by playwright-core over CDP) against a real daemon whose store
 * holds a few hundred bans. Every figure the page shows is compared with SQL on the store; bans and unbans are made
 * from the page and elsewhere (CLI, the followed log) and must show up without a reload. Screenshots go to
 * test-artifacts/dashboard/.
 */

const CHROMIUM = process.env.TSFILTER_CHROMIUM ?? '/usr/bin/chromium';
const ARTIFACTS = path.join(REPO, 'test-artifacts/dashboard');
const HOUR = 3_600_000;
const DAY = 24 * HOUR;
const WAIT = 20_000;

type Playwright = typeof import('playwright-core');

async function prerequisites(t: TestContext): Promise<Playwright | null> {
  let pw: Playwright | null = null;
  try {
    pw = await import('playwright-core');
  } catch {
    /* not installed */
  }
  if (!requirePrereq(t, pw !== null, 'playwright-core', 'run `npm ci` (it is a devDependency)')) return null;
  if (!requirePrereq(t, existsSync(CHROMIUM), `Chromium (${CHROMIUM})`, 'apt-get install -y --no-install-recommends chromium (or set TSFILTER_CHROMIUM)')) return null;
  return pw;
}

async function launch(pw: Playwright): Promise<Browser> {
  return pw.chromium.launch({
    executablePath: CHROMIUM,
    // No sandbox: tests run as root in CI, where Chromium's sandbox refuses to start.
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
    timeout: 60_000,
  });
}

/** Console errors, failed page scripts and CSP violations of a page: a healthy dashboard makes none. */
function watch(page: Page, allow: RegExp[] = []): string[] {
  const problems: string[] = [];
  page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && !allow.some((re) => re.test(m.text()))) problems.push(`console: ${m.text()}`);
  });
  page.on('requestfailed', (r) => {
    // The event stream is cut when the page goes away; anything else failing is a bug.
    if (!r.url().endsWith('/api/events')) problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`);
  });
  return problems;
}

const STORY_IP = '203.0.113.7';
const HOSTILE = ['<img src=x onerror="window.__xss=1">', '<script>window.__xss=2</script>'];
const RULES = ['ssh', 'nginx', 'mysql', 'apache'];
const NODES = ['web1', 'web2', 'db1'];
const ORIGINS = ['local', 'remote', 'manual', 'pyfilter'] as const;
const COUNTRIES: [string | null, string | null][] = [['Germany', 'DE'], ['China', 'CN'], ['United States', 'US'], ['Brazil', 'BR'], ['Russia', 'RU'], [null, null]];

function addressOf(i: number): string {
  if (i % 4 === 0) return `2001:db8:${((i % 7) + 1).toString(16)}::${(i + 1).toString(16)}`;
  return i % 2 === 1 ? `198.51.100.${(i * 7) % 199 + 1}` : `203.0.113.${(i * 3) % 180 + 11}`;
}

/**
 * 300 bans over the last 36 days (every 2.9 hours, so both timelines have bars): four rules, three nodes, four
 * origins, six countries (one unknown), permanent, running, expired and unbanned bans, repeat offenders; one address
 * with a story of three escalating bans whose log lines hold HTML; and a prefix ban covering it.
 */
function seed(now: number, n = 300) {
  return (store: SqliteStore) => {
    store.transaction(() => {
      for (let i = 0; i < n; i++) {
        const ip = addressOf(i);
        const createdAt = now - i * 2.9 * HOUR - 5 * 60_000;
        const [country, countryCode] = COUNTRIES[(i * 5) % COUNTRIES.length]!;
        const k = i % 5;
        const expiresAt = k === 0 ? null : k === 1 ? now + 3 * HOUR : k === 2 ? createdAt + HOUR : k === 3 ? createdAt + 30 * DAY : createdAt + 2 * HOUR;
        store.addBan({
          ip, rule: RULES[i % 4]!, reason: `seed ${i}`, createdAt, expiresAt, failures: 5, origin: ORIGINS[Math.floor(i / 3) % 4]!,
          server: NODES[i % 3]!, country, countryCode, lines: [`Failed password for root from ${ip} port 22 ssh2 (seed ${i})`],
        });
        if (i % 9 === 4) store.removeBan(ip, createdAt + 60_000, 'unbanned with tsfilter unban');
      }
      const story = { ip: STORY_IP, failures: 5, origin: 'local' as const, country: 'Germany', countryCode: 'DE' };
      let t = now - 10 * DAY;
      store.addBan({ ...story, rule: 'ssh', reason: 'story 1', createdAt: t, expiresAt: t + HOUR, server: 'web1', lines: [`sshd: Invalid user ${HOSTILE[0]} from ${STORY_IP}`, `sshd: Failed password for root from ${STORY_IP}`] });
      t = now - 5 * DAY;
      store.addBan({ ...story, rule: 'ssh', reason: 'story 2', createdAt: t, expiresAt: t + 2 * HOUR, server: 'web1', lines: [`sshd: Failed password for root from ${STORY_IP}`] });
      store.removeBan(STORY_IP, t + 10 * 60_000, 'unbanned with tsfilter unban');
      t = now - 2 * HOUR;
      store.addBan({ ...story, rule: 'nginx', reason: 'story 3', createdAt: t, expiresAt: t + 4 * HOUR, server: 'web2', lines: [`GET /${HOSTILE[1]} HTTP/1.1" 401`] });
      store.addBan({ ip: '203.0.113.0/25', rule: 'ssh', reason: 'subnet', createdAt: now - 3 * HOUR, expiresAt: null, failures: 3, origin: 'manual', server: 'web1' });
      // Bans from a PyFilter node carry the country's name only.
      for (let i = 0; i < 3; i++) {
        store.addBan({ ip: `198.51.100.${230 + i}`, rule: 'pyfilter', reason: 'from a PyFilter node', createdAt: now - (20 + i) * DAY, expiresAt: null, failures: 0, origin: 'remote', server: 'pyfilter-1', country: 'China' });
      }
    });
  };
}

/** The store, read with SQL (a connection of its own, read-only). */
function sql<T>(h: Harness, fn: (db: Database.Database) => T): T {
  const db = new Database(h.config.sqlitePath, { readonly: true, fileMustExist: true });
  try {
    return fn(db);
  } finally {
    db.close();
  }
}

/** Active bans as the store's own `activeBans` (and `tsfilter list`) count them: one per address. */
function activeNow(h: Harness) {
  const s = openSqliteStore(h.config.sqlitePath, { readonly: true });
  try {
    return s.activeBans(Date.now());
  } finally {
    s.close();
  }
}

function countBy<T>(xs: T[], key: (x: T) => string): Map<string, number> {
  const m = new Map<string, number>();
  for (const x of xs) m.set(key(x), (m.get(key(x)) ?? 0) + 1);
  return m;
}

/** data-* attributes of every element matching `selector`. */
async function rows(page: Page, selector: string): Promise<Record<string, string>[]> {
  return page.$$eval(selector, (els) => els.map((e) => ({ ...(e as HTMLElement).dataset }) as Record<string, string>));
}

async function noHorizontalOverflow(page: Page, what: string): Promise<void> {
  const m = await page.evaluate(() => ({ scroll: document.documentElement.scrollWidth, width: window.innerWidth, body: document.body.scrollWidth }));
  assert.ok(m.scroll <= m.width && m.body <= m.width, `${what}: the page is ${m.scroll}px wide in a ${m.width}px viewport`);
}

async function screenshot(page: Page, name: string): Promise<string> {
  mkdirSync(ARTIFACTS, { recursive: true });
  const file = path.join(ARTIFACTS, name);
  await page.screenshot({ path: file, fullPage: true });
  process.stdout.write(`screenshot: ${file}\n`);
  return file;
}

async function go(page: Page, url: string, hash: string, view: string): Promise<void> {
  await page.evaluate((hsh) => {
    delete document.querySelector('main')!.dataset.ready;
    location.hash = hsh;
  }, hash);
  if (!page.url().startsWith(url)) await page.goto(`${url}/${hash}`);
  await page.waitForSelector(`main[data-ready="${view}"]`, { timeout: WAIT });
}

test('the dashboard in Chromium shows what the store holds, bans and unbans with the token, updates live, and fits a phone', { timeout: 120_000 }, async (t) => {
  const pw = await prerequisites(t);
  if (!pw) return;
  const now = Date.now();
  // Reads open without the token (writes still need it), so the page shows everything before the token is given.
  const h = await startHarness({ seed: seed(now), api: { read_requires_token: false } });
  let browser: Browser | undefined;
  try {
    browser = await launch(pw);
    const desktop: BrowserContext = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
    const page = await desktop.newPage();
    const problems = watch(page);
    await page.goto(`${h.url}/`);
    await page.waitForSelector('main[data-ready="overview"]', { timeout: WAIT });
    await page.waitForSelector('#live[data-state="live"]', { timeout: WAIT });

    // ---- totals, against SQL on the store
    const active = activeNow(h);
    const truth = sql(h, (db) => ({
      bans: db.prepare('SELECT count(*) FROM bans').pluck().get() as number,
      addresses: db.prepare('SELECT count(DISTINCT ip) FROM bans').pluck().get() as number,
      last24h: db.prepare('SELECT count(*) FROM bans WHERE created_at >= ?').pluck().get(Date.now() - DAY) as number,
      today: db.prepare('SELECT count(*) FROM bans WHERE created_at >= ?').pluck().get(Math.floor(Date.now() / DAY) * DAY) as number,
    }));
    const totals = Object.fromEntries((await rows(page, '[data-total][data-value].stat')).map((r) => [r.total!, Number(r.value)]));
    assert.equal(totals.active, active.length, 'active bans');
    assert.ok(totals.active! > 50, `a real number of active bans (${totals.active})`);
    assert.equal(totals.bans, truth.bans, 'bans recorded');
    assert.equal(totals.addresses, truth.addresses, 'addresses');
    assert.equal(totals.last_24h, truth.last24h, 'last 24 h');
    assert.equal(totals.today, truth.today, 'today');
    assert.equal(totals.tracked, (h.daemon.status() as { tracked_ips: number }).tracked_ips, 'tracked addresses, as the daemon reports them');

    // ---- the timelines: every bar is the count of bans made in its hour / day
    for (const [id, size, n] of [['timeline-hours', HOUR, 48], ['timeline-days', DAY, 30]] as const) {
      const bars = await rows(page, `#${id} .bucket`);
      assert.equal(bars.length, n, id);
      const counted = sql(h, (db) => bars.map((b) => db.prepare('SELECT count(*) FROM bans WHERE created_at >= ? AND created_at < ?').pluck().get(Date.parse(b.start!), Date.parse(b.start!) + size) as number));
      assert.deepEqual(bars.map((b) => Number(b.bans)), counted, `${id}: each bar`);
      assert.ok(counted.filter((c) => c > 0).length >= (id === 'timeline-hours' ? 10 : 25), `${id}: the seed fills the chart`);
      assert.equal(Date.parse(bars.at(-1)!.start!), Math.floor(Date.now() / size) * size, `${id}: ends with the current bucket`);
    }

    // ---- by country (chart and table) and by rule and origin
    const byCountry = sql(h, (db) => db.prepare('SELECT coalesce(country, \'\') AS country, count(*) AS total FROM bans GROUP BY country').all() as { country: string; total: number }[]);
    const activeByCountry = countBy(active, (b) => b.country ?? '');
    const table = (await rows(page, '#country-table tbody tr')).map((r) => ({ country: r.country!, total: Number(r.total), active: Number(r.active) }));
    assert.deepEqual(
      [...table].sort((a, b) => a.country.localeCompare(b.country)),
      byCountry.map((c) => ({ country: c.country, total: c.total, active: activeByCountry.get(c.country) ?? 0 })).sort((a, b) => a.country.localeCompare(b.country)),
      'the country table is the store grouped by country',
    );
    assert.equal(table.length, 6, 'five countries and unknown');
    assert.deepEqual(table.map((r) => r.total), [...table.map((r) => r.total)].sort((a, b) => b - a), 'most bans first');
    const chart = (await rows(page, '#country-chart .barrow')).map((r) => ({ country: r.country!, total: Number(r.total), active: Number(r.active) }));
    assert.deepEqual(chart, table.slice(0, 10), 'the country chart shows the top of the table');
    assert.equal(await page.locator('#country-chart .barrow svg.hbar').count(), chart.length);
    const byRule = sql(h, (db) => new Map((db.prepare('SELECT rule, count(*) AS n FROM bans GROUP BY rule').all() as { rule: string; n: number }[]).map((r) => [r.rule, r.n])));
    const activeByRule = countBy(active, (b) => b.rule);
    const rules = await rows(page, '#rule-table tbody tr');
    assert.deepEqual(new Set(rules.map((r) => r.rule)), new Set(byRule.keys()));
    for (const r of rules) {
      assert.equal(Number(r.total), byRule.get(r.rule!), `rule ${r.rule} total`);
      assert.equal(Number(r.active), activeByRule.get(r.rule!) ?? 0, `rule ${r.rule} active`);
    }
    const byOrigin = sql(h, (db) => new Map((db.prepare('SELECT origin, count(*) AS n FROM bans GROUP BY origin').all() as { origin: string; n: number }[]).map((r) => [r.origin, r.n])));
    for (const r of await rows(page, '#origin-table tbody tr')) assert.equal(Number(r.total), byOrigin.get(r.origin!), `origin ${r.origin}`);

    // ---- the latest bans: the store's newest rows, newest first
    const newest = sql(h, (db) => db.prepare('SELECT ip FROM bans ORDER BY created_at DESC, id DESC LIMIT 20').pluck().all() as string[]);
    assert.deepEqual((await rows(page, '#latest-table tbody tr')).map((r) => r.ip), newest);

    // ---- without a token, no write control shows; a wrong token changes nothing; the right one shows them
    assert.equal(await page.locator('#ban-card').isVisible(), false, 'no ban form without a token');
    assert.ok((await page.locator('[data-unban]').count()) > 0, 'unban buttons exist for active bans');
    assert.equal(await page.locator('[data-unban]:visible').count(), 0, 'but none is shown');
    await page.click('#token-summary');
    await page.fill('#token-input', 'wrong-token-0123456789abcdef');
    await page.click('#token-form button[type=submit]');
    await page.waitForFunction(() => document.getElementById('token-status')?.textContent === 'Wrong token.', null, { timeout: WAIT });
    assert.equal(await page.locator('#ban-card').isVisible(), false, 'a wrong token shows no ban form');
    assert.equal(await page.locator('[data-unban]:visible').count(), 0);
    assert.equal(await page.evaluate(() => sessionStorage.getItem('tsfilter.token')), null, 'a wrong token is not kept');
    await page.fill('#token-input', TOKEN);
    await page.click('#token-form button[type=submit]');
    await page.waitForSelector('body.can-write', { timeout: WAIT });
    await page.waitForSelector('main[data-ready="overview"]', { timeout: WAIT });
    assert.equal(await page.evaluate(() => sessionStorage.getItem('tsfilter.token')), TOKEN, 'kept in sessionStorage');
    assert.equal(await page.locator('#ban-card').isVisible(), true, 'the right token shows the ban form');
    assert.ok((await page.locator('[data-unban]:visible').count()) > 0, 'and the unban buttons');
    await screenshot(page, 'desktop-overview.png');

    // ---- ban from the page: the store has it, and the live list shows it
    await page.evaluate(() => ((window as unknown as { __sameDocument: boolean }).__sameDocument = true));
    await page.fill('#ban-card input[name=ip]', '203.0.113.200');
    await page.selectOption('#ban-card select[name=duration]', '1d');
    await page.fill('#ban-card input[name=reason]', 'from the dashboard');
    await page.click('#ban-card button[type=submit]');
    await page.waitForSelector('#ban-card .result[data-kind="ok"]', { timeout: WAIT });
    const made = sql(h, (db) => db.prepare("SELECT origin, reason, expires_at - created_at AS len FROM bans WHERE ip = '203.0.113.200' AND ended_at IS NULL").all()) as { origin: string; reason: string; len: number }[];
    assert.deepEqual(made, [{ origin: 'manual', reason: 'from the dashboard', len: DAY }], 'the store holds the ban made on the page');
    await page.waitForSelector('#latest-table tr[data-ip="203.0.113.200"][data-active="true"]', { timeout: WAIT });

    // ---- bans made elsewhere appear without a reload: the CLI, and an attack in the followed log
    const cli = await runCliAsync(['ban', '203.0.113.201', '--duration', '2h', '--reason', 'from the cli', '--config', h.configFile]);
    assert.equal(cli.code, 0, cli.stderr);
    await page.waitForSelector('#latest-table tr[data-ip="203.0.113.201"][data-active="true"]', { timeout: WAIT });
    const t0 = Date.now() - 10_000;
    for (let i = 0; i < 5; i++) appendFileSync(h.logFile, failed(t0 + i * 1000, '192.0.2.60'));
    await page.waitForSelector('#latest-table tr[data-ip="192.0.2.60"][data-active="true"]', { timeout: WAIT });
    assert.equal(await page.locator('#latest-table tr[data-ip="192.0.2.60"] td').nth(2).textContent(), 'ssh');
    // ... and the totals follow.
    const activeAfter = activeNow(h).length;
    assert.equal(activeAfter, active.length + 3);
    await page.waitForFunction((n) => document.querySelector('[data-total="active"]')?.getAttribute('data-value') === String(n), activeAfter, { timeout: WAIT });
    assert.equal(await page.evaluate(() => (window as unknown as { __sameDocument?: boolean }).__sameDocument), true, 'no reload happened');

    // ---- unban from the page (two taps): the store ends the ban, the live list shows it ended
    const unban = page.locator('#latest-table tr[data-ip="203.0.113.200"] [data-unban]');
    await unban.click();
    await unban.click();
    await page.waitForSelector('#latest-table tr[data-ip="203.0.113.200"][data-active="false"]', { timeout: WAIT });
    await page.waitForFunction(() => document.getElementById('notice')?.textContent === 'Unbanned 203.0.113.200.', null, { timeout: WAIT });
    const ended = sql(h, (db) => db.prepare("SELECT ended_at IS NOT NULL AS ended, end_reason FROM bans WHERE ip = '203.0.113.200'").all());
    assert.deepEqual(ended, [{ ended: 1, end_reason: 'unbanned with tsfilter unban' }]);

    // ---- search: an address prefix over two pages, then rule and country from the form
    await go(page, h.url, '#/search', 'search');
    await page.fill('#search-form input[name=q]', '198.51.100.');
    await page.selectOption('#search-form select[name=state]', 'all');
    await page.click('#search-form button[type=submit]');
    await page.waitForFunction(() => location.hash.includes('q=198.51.100.') && document.querySelector('main')?.dataset.ready === 'search', null, { timeout: WAIT });
    const prefixed = sql(h, (db) => db.prepare("SELECT ip FROM bans WHERE ip LIKE '198.51.100.%' ORDER BY created_at DESC, id DESC").pluck().all() as string[]);
    assert.ok(prefixed.length > 50, 'more than one page');
    assert.equal(Number(await page.getAttribute('#search-total', 'data-total')), prefixed.length);
    assert.deepEqual((await rows(page, '#results-table tbody tr')).map((r) => r.ip), prefixed.slice(0, 50));
    await page.click('.pager a[rel=next]');
    await page.waitForSelector('#search-total[data-page="2"]', { timeout: WAIT });
    await page.waitForSelector('main[data-ready="search"]', { timeout: WAIT });
    assert.deepEqual((await rows(page, '#results-table tbody tr')).map((r) => r.ip), prefixed.slice(50, 100), 'page 2 continues the list');
    await page.click('.pager a[rel=prev]');
    await page.waitForSelector('#search-total[data-page="1"]', { timeout: WAIT });
    await page.waitForSelector('main[data-ready="search"]', { timeout: WAIT });
    assert.deepEqual((await rows(page, '#results-table tbody tr')).map((r) => r.ip), prefixed.slice(0, 50), 'and back');

    // The rule and country with the most active bans between them (the form's countries go by name).
    const pairs = countBy(activeNow(h).filter((b) => b.country), (b) => `${b.rule}\t${b.country}`);
    const [rule, country] = [...pairs].sort((a, b) => b[1] - a[1])[0]![0].split('\t') as [string, string];
    await go(page, h.url, '#/search', 'search');
    await page.selectOption('#search-form select[name=rule]', rule);
    await page.selectOption('#search-form select[name=country]', country);
    await page.selectOption('#search-form select[name=state]', 'active');
    await page.click('#search-form button[type=submit]');
    await page.waitForFunction((r) => location.hash.includes(`rule=${r}`) && document.querySelector('main')?.dataset.ready === 'search', rule, { timeout: WAIT });
    const matching = activeNow(h).filter((b) => b.rule === rule && b.country === country).map((b) => b.ip).sort();
    assert.ok(matching.length > 1, `${rule} ${country}: ${matching.length}`);
    assert.equal(Number(await page.getAttribute('#search-total', 'data-total')), matching.length);
    assert.deepEqual((await rows(page, '#results-table tbody tr')).map((r) => r.ip).sort(), matching);
    // A bad address filter is refused in the page, with the reason.
    await page.fill('#search-form input[name=q]', '203.0.113.<b>');
    await page.click('#search-form button[type=submit]');
    await page.waitForSelector('#results .error', { timeout: WAIT });

    // A country's row leads to a search with its total, though some of China's bans carry only the name.
    await go(page, h.url, '#/', 'overview');
    const chinaTotal = Number(await page.getAttribute('#country-table tr[data-country="China"]', 'data-total'));
    assert.equal(chinaTotal, sql(h, (db) => db.prepare("SELECT count(*) FROM bans WHERE country = 'China'").pluck().get() as number));
    assert.ok(sql(h, (db) => db.prepare("SELECT count(*) FROM bans WHERE country = 'China' AND country_code IS NULL").pluck().get() as number) > 0);
    await page.evaluate(() => delete document.querySelector('main')!.dataset.ready);
    await page.click('#country-table tr[data-country="China"] a');
    await page.waitForSelector('main[data-ready="search"]', { timeout: WAIT });
    assert.equal(Number(await page.getAttribute('#search-total', 'data-total')), chinaTotal, 'the linked search counts what the row counts');

    // A bar of the timeline leads to the bans it counts.
    await go(page, h.url, '#/', 'overview');
    const bucket = page.locator('#timeline-hours .bucket:not([data-bans="0"])').first();
    const [start, count] = [await bucket.getAttribute('data-start'), Number(await bucket.getAttribute('data-bans'))];
    await page.evaluate(() => delete document.querySelector('main')!.dataset.ready);
    await bucket.click();
    await page.waitForSelector('main[data-ready="search"]', { timeout: WAIT });
    assert.equal(Number(await page.getAttribute('#search-total', 'data-total')), count, `the bans of the hour from ${start}`);
    assert.equal(sql(h, (db) => db.prepare('SELECT count(*) FROM bans WHERE created_at >= ? AND created_at < ?').pluck().get(Date.parse(start!), Date.parse(start!) + HOUR)), count);

    // ---- an address's story: every ban, escalation, the log lines (as text: they are attacker-written), the prefix
    await go(page, h.url, `#/ip/${STORY_IP}`, 'ip');
    const story = await rows(page, '#story article.ban');
    assert.deepEqual(story.map((b) => [b.banCount, b.rule, b.active]), [['1', 'ssh', 'false'], ['2', 'ssh', 'false'], ['3', 'nginx', 'true']]);
    assert.deepEqual(await page.$$eval('#story [data-duration]', (els) => els.map((e) => (e as HTMLElement).dataset.duration)), ['3600', '7200', '14400']);
    assert.equal(await page.textContent('[data-escalation]'), '1 h → 2 h → 4 h');
    assert.equal(await page.textContent('#ip [data-bans]'), '3 bans (ban count 3)');
    const ends = await page.$$eval('#story [data-ended]', (els) => els.map((e) => e.textContent ?? ''));
    assert.match(ends[0]!, /expired/);
    assert.match(ends[1]!, /unbanned with tsfilter unban$/);
    assert.match(ends[2]!, /^in force until /);
    const lines = await page.$$eval('#story .lines code', (els) => els.map((e) => e.textContent));
    assert.deepEqual(lines, [`sshd: Invalid user ${HOSTILE[0]} from ${STORY_IP}`, `sshd: Failed password for root from ${STORY_IP}`, `sshd: Failed password for root from ${STORY_IP}`, `GET /${HOSTILE[1]} HTTP/1.1" 401`]);
    assert.equal(await page.locator('#story img, #story script').count(), 0, 'log lines are never parsed as HTML');
    assert.equal(await page.evaluate(() => (window as unknown as { __xss?: number }).__xss), undefined);
    assert.equal(await page.getAttribute('#ip .covered', 'data-covered-by'), '203.0.113.0/25');
    const storyText = await page.textContent('#ip');
    assert.match(storyText!, /Germany \(DE\)/);
    assert.match(storyText!, /web1, web2/);
    assert.equal(await page.locator('#ip [data-unban]').isVisible(), true, 'unban offered for an active ban, with the token');
    await screenshot(page, 'desktop-ip.png');
    // A prefix and an IPv6 address have pages too.
    await go(page, h.url, `#/ip/${encodeURIComponent('203.0.113.0/25')}`, 'ip');
    assert.equal(await page.getAttribute('#ip', 'data-ip'), '203.0.113.0/25');
    assert.equal(await page.locator('#story article.ban').count(), 1);
    const v6 = addressOf(0);
    await go(page, h.url, `#/ip/${encodeURIComponent(v6)}`, 'ip');
    assert.equal(await page.getAttribute('#ip', 'data-ip'), v6);
    assert.equal(await page.locator('#story article.ban').count(), sql(h, (db) => db.prepare('SELECT count(*) FROM bans WHERE ip = ?').pluck().get(v6) as number));
    // An address never banned says so.
    await go(page, h.url, '#/ip/192.0.2.99', 'ip');
    await page.waitForSelector('#ip [data-empty]');
    assert.deepEqual(problems, [], 'no script error, failed request or CSP violation on the desktop');

    // ---- a phone: everything fits the width
    const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true });
    const mobile = await phone.newPage();
    const mobileProblems = watch(mobile);
    await mobile.goto(`${h.url}/`);
    await mobile.waitForSelector('main[data-ready="overview"]', { timeout: WAIT });
    await noHorizontalOverflow(mobile, 'overview');
    await screenshot(mobile, 'phone-overview.png');
    await go(mobile, h.url, `#/ip/${STORY_IP}`, 'ip');
    await noHorizontalOverflow(mobile, 'an address');
    await screenshot(mobile, 'phone-ip.png');
    await go(mobile, h.url, '#/search?q=2001:db8:&state=all', 'search');
    await noHorizontalOverflow(mobile, 'search');
    assert.deepEqual(mobileProblems, []);
  } finally {
    await browser?.close();
    await h.close();
  }
});

test('with a token configured the dashboard asks for it before reading anything (the default), then reads and follows events with it', { timeout: 90_000 }, async (t) => {
  const pw = await prerequisites(t);
  if (!pw) return;
  // No read_requires_token in the config: a token is configured, so reads need it.
  const h = await startHarness({ seed: seed(Date.now(), 40) });
  let browser: Browser | undefined;
  try {
    browser = await launch(pw);
    const page = await (await browser.newContext({ viewport: { width: 1200, height: 900 } })).newPage();
    // The reads refused before the token is given are expected here.
    const problems = watch(page, [/status of 401/]);
    await page.goto(`${h.url}/`);
    await page.waitForSelector('[data-needs-token]', { timeout: WAIT });
    await page.waitForSelector('#live[data-state="off"]', { timeout: WAIT });
    assert.equal(await page.locator('#totals').count(), 0, 'nothing is shown without the token');
    await page.fill('#token-input', TOKEN);
    await page.click('#token-form button[type=submit]');
    await page.waitForSelector('main[data-ready="overview"]', { timeout: WAIT });
    assert.equal(Number(await page.getAttribute('[data-total="active"]', 'data-value')), activeNow(h).length);
    // The event stream carries the token too (EventSource could not): a CLI ban shows up live.
    await page.waitForSelector('#live[data-state="live"]', { timeout: WAIT });
    const cli = await runCliAsync(['ban', '203.0.113.202', '--config', h.configFile]);
    assert.equal(cli.code, 0, cli.stderr);
    await page.waitForSelector('#latest-table tr[data-ip="203.0.113.202"]', { timeout: WAIT });
    // Forgetting the token hides everything again.
    await page.click('#token-summary');
    await page.click('#token-forget');
    await page.waitForSelector('[data-needs-token]', { timeout: WAIT });
    assert.deepEqual(problems, []);
  } finally {
    await browser?.close();
    await h.close();
  }
});
