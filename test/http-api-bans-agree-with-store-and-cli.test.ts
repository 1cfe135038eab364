import { test } from 'node:test';
import assert from 'node:assert/strict';
import Database from 'better-sqlite3';
import { openSqliteStore, type SqliteStore, type StoredBan } from '../src/store/sqlite-store.ts';
import { call, runCliAsync, withHarness, TOKEN, type Harness } from './helpers/http-api.ts';
import { jsonLines } from './helpers/cli.ts';

const HOUR = 3_600_000;
const RULES = ['ssh', 'nginx', 'mysql'];
const NODES = ['web1', 'web2'];
const ORIGINS = ['local', 'remote', 'manual'] as const;
const COUNTRIES: [string | null, string | null][] = [['Germany', 'DE'], ['China', 'CN'], [null, null]];

function addressOf(i: number): string {
  if (i % 3 === 0) return `2001:db8::${(i + 1).toString(16)}`;
  return i % 3 === 1 ? `198.51.100.${i % 250}` : `203.0.113.${i % 250}`;
}

/** Every address the seed banned. */
const seeded = new Set<string>();

/**
 * A few hundred bans over 40 days: three rules, two nodes, three origins, countries, permanent, running and expired
 * bans, unbanned ones, repeat offenders, a prefix ban, and two duplicate rows of PyFilter's table for one address.
 */
function seed(now: number): (store: SqliteStore, dbPath: string) => string[] {
  return (store, dbPath) => {
    const ips = new Set<string>();
    for (let i = 0; i < 320; i++) {
      const ip = addressOf(i);
      ips.add(ip);
      const [country, code] = COUNTRIES[Math.floor(i / 2) % 3]!;
      const createdAt = now - 40 * 24 * HOUR + i * 3 * HOUR;
      const ban = {
        ip,
        rule: RULES[i % 3]!,
        reason: `seed ${i}`,
        createdAt,
        expiresAt: i % 4 === 0 ? null : i % 4 === 1 ? now + 2 * HOUR : createdAt + HOUR,
        failures: 5,
        origin: ORIGINS[Math.floor(i / 4) % 3]!,
        server: NODES[i % 2]!,
        country,
        countryCode: code,
        lines: [`line ${i}`],
      };
      store.addBan(ban);
      if (i % 10 === 5) store.removeBan(ip, createdAt + 60_000, 'unbanned with tsfilter unban');
    }
    store.addBan({ ip: '198.51.100.0/24', rule: 'ssh', reason: 'subnet', createdAt: now - HOUR, expiresAt: null, failures: 3, origin: 'local', server: 'web1' });
    ips.add('198.51.100.0/24');
    // PyFilter's table with the same address twice: imported as two open bans when the daemon opens the store.
    const raw = new Database(dbPath);
    const t = Math.floor((now - 5 * HOUR) / 1000);
    raw.prepare('INSERT INTO banned_ip (ip, time_banned, server_name, log_msg, country) VALUES (?, ?, ?, ?, ?), (?, ?, ?, ?, ?)')
      .run('192.0.2.77', t, 'Server-1', 'dup one', 'France', '192.0.2.77', t + 1, 'Server-1', 'dup two', 'France');
    // ... and one from a PyFilter node in a country other bans carry the code of: a search by the code finds it too.
    raw.prepare('INSERT INTO banned_ip (ip, time_banned, server_name, log_msg, country) VALUES (?, ?, ?, ?, ?)').run('192.0.2.78', t, 'pyfilter-2', 'pyfilter', 'China');
    raw.close();
    ips.add('192.0.2.77');
    ips.add('192.0.2.78');
    for (const ip of ips) seeded.add(ip);
    return [...ips];
  };
}

/** Every row of the store, as the store itself reads it (history of each address). */
function truth(h: Harness): StoredBan[] {
  const s = openSqliteStore(h.config.sqlitePath, { readonly: true });
  try {
    return [...seeded].flatMap((ip) => s.history(ip));
  } finally {
    s.close();
  }
}

async function allPages(h: Harness, query: string, limit = 17): Promise<{ bans: Record<string, unknown>[]; totals: number[] }> {
  const bans: Record<string, unknown>[] = [];
  const totals: number[] = [];
  let cursor: string | null = null;
  for (let n = 0; n < 1000; n++) {
    const r = await call(h.url, 'GET', `/api/bans?${query}${query ? '&' : ''}limit=${limit}${cursor ? `&cursor=${cursor}` : ''}`, { token: TOKEN });
    assert.equal(r.status, 200, r.text);
    assert.ok(r.json.bans.length <= limit);
    bans.push(...r.json.bans);
    totals.push(r.json.total);
    cursor = r.json.next_cursor;
    if (cursor === null) return { bans, totals };
  }
  throw new Error('pagination did not end');
}

const LISTED_KEYS = (b: Record<string, unknown>) => {
  const { id: _id, active: _a, ended: _e, end_reason: _r, ...listed } = b;
  return listed;
};
const byIp = (a: { ip?: unknown }, b: { ip?: unknown }) => String(a.ip).localeCompare(String(b.ip));

test('GET /api/bans lists the active bans exactly as `tsfilter list --json` and the store do, newest first, over every page', { timeout: 120_000 }, async () => {
  const now = Date.now();
  await withHarness({ seed: seed(now) }, async (h) => {
    // One more ban made by the running daemon, through the API, so the list is not only what was seeded.
    const made = await call(h.url, 'POST', '/api/bans', { token: TOKEN, body: { ip: '203.0.113.254', duration: 3600, reason: 'via api' } });
    assert.equal(made.status, 201, made.text);

    const { bans, totals } = await allPages(h, '');
    const cli = await runCliAsync(['list', '--json', '--config', h.configFile]);
    assert.equal(cli.code, 0, cli.stderr);
    const listed = jsonLines(cli.stdout);
    assert.ok(listed.length > 100, `a real list (${listed.length})`);
    assert.deepEqual(bans.map(LISTED_KEYS).sort(byIp), listed.sort(byIp), 'same bans, same fields, same values as tsfilter list --json');
    assert.ok(totals.every((t) => t === listed.length), 'total is the count on every page');
    assert.equal(new Set(bans.map((b) => b.id)).size, bans.length, 'no ban twice across pages');
    assert.ok(bans.every((b) => b.active === true && b.ended === null));

    // The PyFilter address with two open rows is listed once, by its oldest row, as the store lists it.
    const dup = bans.filter((b) => b.ip === '192.0.2.77');
    assert.equal(dup.length, 1);
    assert.equal(dup[0]!.reason, 'dup one');

    // Newest first: by the time of the ban, then the row.
    for (let i = 1; i < bans.length; i++) {
      const a = bans[i - 1]!;
      const b = bans[i]!;
      assert.ok(Date.parse(String(a.since)) > Date.parse(String(b.since)) || (a.since === b.since && Number(a.id) > Number(b.id)), `order at ${i}`);
    }

    // offset pagination gives the same sequence as the cursor.
    const first = await call(h.url, 'GET', '/api/bans?limit=40&offset=0', { token: TOKEN });
    const second = await call(h.url, 'GET', '/api/bans?limit=40&offset=40', { token: TOKEN });
    assert.deepEqual([...first.json.bans, ...second.json.bans].map((b: { id: number }) => b.id), bans.slice(0, 80).map((b) => b.id));
  });
});

test('GET /api/bans filters (state, rule, country, node, origin, time range, ip, address prefix) select what the store holds', { timeout: 120_000 }, async () => {
  const now = Date.now();
  await withHarness({ seed: seed(now) }, async (h) => {
    const rows = truth(h);
    const t = Date.now();
    const active = (b: StoredBan) => b.endedAt === null && (b.expiresAt === null || b.expiresAt > t);
    const cases: [string, (b: StoredBan) => boolean][] = [
      ['state=all', () => true],
      ['state=ended', (b) => !active(b)],
      ['state=all&rule=nginx', (b) => b.rule === 'nginx'],
      ['state=all&country=germany', (b) => b.country === 'Germany'],
      ['state=all&country=CN', (b) => b.countryCode === 'CN' || (b.countryCode === undefined && b.country === 'China')],
      ['state=all&country=cn', (b) => b.ip === '192.0.2.78' || b.countryCode === 'CN'],
      ['state=all&node=web2', (b) => b.server === 'web2'],
      ['state=all&origin=remote', (b) => b.origin === 'remote'],
      [`state=all&since=${new Date(now - 10 * 24 * HOUR).toISOString()}`, (b) => b.createdAt >= now - 10 * 24 * HOUR],
      [`state=all&since=${now - 20 * 24 * HOUR}&until=${now - 10 * 24 * HOUR}`, (b) => b.createdAt >= now - 20 * 24 * HOUR && b.createdAt <= now - 10 * 24 * HOUR],
      ['state=all&ip=198.51.100.4', (b) => b.ip === '198.51.100.4'],
      ['state=all&ip=198.51.100.0%2F24', (b) => b.ip === '198.51.100.0/24'],
      ['state=all&q=203.0.113.1', (b) => b.ip.startsWith('203.0.113.1')],
      ['state=all&q=2001:DB8::1', (b) => b.ip.startsWith('2001:db8::1')],
      ['state=all&rule=ssh&node=web1&origin=local', (b) => b.rule === 'ssh' && b.server === 'web1' && b.origin === 'local'],
    ];
    for (const [query, pred] of cases) {
      const want = rows.filter(pred).map((b) => b.id).sort((a, b) => a - b);
      assert.ok(want.length > 0, `${query}: the seed has matching bans`);
      const { bans, totals } = await allPages(h, query, 50);
      assert.deepEqual(bans.map((b) => Number(b.id)).sort((a, b) => a - b), want, query);
      assert.ok(totals.every((n) => n === want.length), `${query}: total`);
    }
    // Active bans filtered: the store's own active list, filtered.
    const s = openSqliteStore(h.config.sqlitePath, { readonly: true });
    const storeActive = s.activeBans(Date.now());
    s.close();
    const { bans } = await allPages(h, 'rule=mysql&country=China', 50);
    assert.deepEqual(bans.map((b) => b.ip).sort(), storeActive.filter((b) => b.rule === 'mysql' && b.country === 'China').map((b) => b.ip).sort());
    assert.ok(bans.length > 0);
    // An ended ban shows how it ended.
    const ended = (await call(h.url, 'GET', '/api/bans?state=ended&limit=1000', { token: TOKEN })).json.bans as Record<string, unknown>[];
    assert.ok(ended.some((b) => b.end_reason === 'unbanned with tsfilter unban' && typeof b.ended === 'string' && b.active === false));
  });
});
