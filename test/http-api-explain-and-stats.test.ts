import { test } from 'node:test';
import assert from 'node:assert/strict';
import Database from 'better-sqlite3';
import { openSqliteStore, type StoredBan } from '../src/store/sqlite-store.ts';
import type { BanRecord } from '../src/store/types.ts';
import { call, runCliAsync, startHarness, TOKEN, withHarness } from './helpers/http-api.ts';

const HOUR = 3_600_000;
const DAY = 24 * HOUR;

test('GET /api/bans/:ip/explain tells the same story as `tsfilter explain --json`: every ban, escalation, the covering prefix', { timeout: 90_000 }, async () => {
  await withHarness({}, async (h) => {
    const ip = '203.0.113.40';
    // Banned twice without a duration: ban_time with escalation (the default config doubles it), unbanned between.
    assert.equal((await call(h.url, 'POST', '/api/bans', { token: TOKEN, body: { ip, reason: 'first' } })).status, 201);
    assert.equal((await call(h.url, 'DELETE', `/api/bans/${ip}`, { token: TOKEN })).status, 200);
    assert.equal((await call(h.url, 'POST', '/api/bans', { token: TOKEN, body: { ip, reason: 'second' } })).status, 201);
    assert.equal((await call(h.url, 'POST', '/api/bans', { token: TOKEN, body: { ip: '203.0.113.0/24', duration: '1d' } })).status, 201);

    for (const target of [ip, '203.0.113.0/24', '203.0.113.99', '2001:db8::99']) {
      const api = await call(h.url, 'GET', `/api/bans/${encodeURIComponent(target)}/explain`, { token: TOKEN });
      assert.equal(api.status, 200, api.text);
      const cli = await runCliAsync(['explain', target, '--json', '--config', h.configFile]);
      assert.equal(cli.code, 0, cli.stderr);
      assert.deepEqual(api.json, JSON.parse(cli.stdout), `explain ${target}: API and CLI agree`);
    }
    const story = (await call(h.url, 'GET', `/api/bans/${ip}/explain`, { token: TOKEN })).json;
    assert.deepEqual(story.bans.map((b: { reason: string; duration_s: number; active: boolean }) => [b.reason, b.duration_s, b.active]), [
      ['first', 3600, false],
      ['second', 7200, true],
    ]);
    assert.equal(story.bans[0].end_reason, 'unbanned with tsfilter unban');
    assert.deepEqual(story.covered_by, ['203.0.113.0/24']);
    assert.deepEqual((await call(h.url, 'GET', '/api/bans/2001:db8::99/explain', { token: TOKEN })).json, { ip: '2001:db8::99', bans: [], covered_by: [] });
  });
});

test('GET /api/stats counts what the store holds: per hour, per day, per rule, per country, per origin, top offenders', { timeout: 90_000 }, async () => {
  const now = Date.now();
  const ips: string[] = [];
  const h = await startHarness({
    seed: (store) => {
      const add = (ip: string, rule: string, createdAt: number, country: string | null, code: string | null, expiresAt: number | null, origin: BanRecord['origin'] = 'local') => {
        ips.push(ip);
        store.addBan({ ip, rule, reason: 'seed', createdAt, expiresAt, failures: 5, origin, server: 'n1', country, countryCode: code });
      };
      for (let i = 0; i < 60; i++) add(`198.51.100.${i}`, i % 2 ? 'nginx' : 'ssh', now - i * HOUR, i % 3 ? 'Germany' : 'China', i % 3 ? 'DE' : 'CN', null);
      for (let i = 0; i < 40; i++) add(`2001:db8::${i + 1}`, 'mysql', now - i * DAY - 1000, null, null, now - i * DAY + HOUR, 'remote');
      // A repeat offender: four bans, the last one active.
      for (let k = 0; k < 4; k++) {
        add('203.0.113.66', 'ssh', now - (10 - k) * DAY, 'France', 'FR', now - (10 - k) * DAY + HOUR);
        if (k < 3) store.removeBan('203.0.113.66', now - (10 - k) * DAY + 60_000, 'unbanned with tsfilter unban');
      }
      store.addBan({ ip: '203.0.113.66', rule: 'ssh', reason: 'again', createdAt: now - 1000, expiresAt: null, failures: 5, origin: 'manual', server: 'n1', country: 'France' });
    },
  });
  try {
    const s = (await call(h.url, 'GET', '/api/stats', { token: TOKEN })).json;
    const store = openSqliteStore(h.config.sqlitePath, { readonly: true });
    let rows: StoredBan[];
    let active: BanRecord[];
    const t = Date.parse(s.generated);
    try {
      rows = [...new Set(ips)].flatMap((ip) => store.history(ip));
      active = store.activeBans(t);
    } finally {
      store.close();
    }
    assert.equal(s.totals.bans, rows.length);
    assert.equal(s.totals.active, active.length);
    assert.equal(s.totals.addresses, new Set(rows.map((r) => r.ip)).size);
    assert.equal(s.totals.last_24h, rows.filter((r) => r.createdAt >= t - DAY).length);

    assert.equal(s.per_hour.length, 48);
    assert.equal(s.per_day.length, 30);
    const inBucket = (start: string, size: number) => rows.filter((r) => r.createdAt >= Date.parse(start) && r.createdAt < Date.parse(start) + size).length;
    for (const b of s.per_hour) assert.equal(b.bans, inBucket(b.start, HOUR), `hour ${b.start}`);
    for (const b of s.per_day) assert.equal(b.bans, inBucket(b.start, DAY), `day ${b.start}`);
    assert.ok(Date.parse(s.per_hour[47].start) <= t && t < Date.parse(s.per_hour[47].start) + HOUR, 'the current hour is last');
    assert.equal(s.per_hour.reduce((n: number, b: { bans: number }) => n + b.bans, 0), rows.filter((r) => r.createdAt >= Date.parse(s.per_hour[0].start)).length);

    const count = <K>(list: { [k: string]: unknown }[], key: (r: never) => K) => {
      const m = new Map<K, number>();
      for (const r of list) m.set(key(r as never), (m.get(key(r as never)) ?? 0) + 1);
      return m;
    };
    const totalByRule = count(rows as never, (r: StoredBan) => r.rule);
    const activeByRule = count(active as never, (r: BanRecord) => r.rule);
    assert.deepEqual(
      s.by_rule,
      [...totalByRule].map(([rule, total]) => ({ rule, active: activeByRule.get(rule) ?? 0, total })).sort((a, b) => b.total - a.total || a.rule.localeCompare(b.rule)),
    );
    const byCountry = new Map(s.by_country.map((c: { country: string | null }) => [c.country, c]));
    assert.deepEqual(byCountry.get('Germany'), { country: 'Germany', code: 'DE', active: active.filter((b) => b.country === 'Germany').length, total: rows.filter((b) => b.country === 'Germany').length });
    assert.deepEqual(byCountry.get(null), { country: null, code: null, active: active.filter((b) => !b.country).length, total: rows.filter((b) => !b.country).length });
    assert.deepEqual(
      s.by_origin.find((o: { origin: string }) => o.origin === 'remote'),
      { origin: 'remote', active: active.filter((b) => b.origin === 'remote').length, total: rows.filter((b) => b.origin === 'remote').length },
    );
    assert.deepEqual(s.top_offenders[0], { ip: '203.0.113.66', bans: 5, last: new Date(now - 1000).toISOString(), active: true, country: 'France' });
    assert.ok(s.top_offenders.length <= 10);

    // A ban made now shows at once (the cache follows the store).
    assert.equal((await call(h.url, 'POST', '/api/bans', { token: TOKEN, body: { ip: '192.0.2.99' } })).status, 201);
    const again = (await call(h.url, 'GET', '/api/stats', { token: TOKEN })).json;
    assert.equal(again.totals.bans, s.totals.bans + 1);
    assert.equal(again.totals.active, s.totals.active + 1);
  } finally {
    await h.close();
  }
});

test('a country\'s totals in /api/stats are the totals of its search, by name or by code, when some of its bans carry only the name', { timeout: 90_000 }, async () => {
  const now = Date.now();
  const h = await startHarness({
    seed: (store, dbPath) => {
      const add = (ip: string, country: string | null, countryCode: string | undefined, expiresAt: number | null = null) =>
        store.addBan({ ip, rule: 'ssh', reason: 'seed', createdAt: now - 60_000, expiresAt, failures: 5, origin: 'local', server: 'n1', country, ...(countryCode ? { countryCode } : {}) });
      add('198.51.100.1', 'China', 'CN');
      add('198.51.100.2', 'China', 'CN', now - 1000);
      // Rows from before schema 4, a PyFilter fleet node or another tool: the name only, in any case.
      add('198.51.100.3', 'China', undefined);
      add('198.51.100.4', 'china', undefined, now - 1000);
      add('198.51.100.5', 'Germany', 'DE');
      add('198.51.100.6', 'Germany', undefined);
      // A name never seen with a code stays out of every code's search.
      add('198.51.100.7', 'Atlantis', undefined);
      add('198.51.100.8', null, undefined);
      // PyFilter's own table: imported at the daemon's start with the name only.
      const raw = new Database(dbPath);
      try {
        raw.prepare('INSERT INTO banned_ip (ip, time_banned, server_name, log_msg, country) VALUES (?, ?, ?, ?, ?)').run('198.51.100.9', Math.floor(now / 1000) - 3600, 'Server-1', 'pyfilter ban', 'China');
      } finally {
        raw.close();
      }
    },
  });
  try {
    const s = (await call(h.url, 'GET', '/api/stats', { token: TOKEN })).json;
    const china = s.by_country.find((c: { country: string | null }) => c.country?.toLowerCase() === 'china');
    assert.equal(s.by_country.filter((c: { country: string | null }) => c.country?.toLowerCase() === 'china').length, 1, 'one row whatever the case');
    assert.deepEqual({ code: china.code, total: china.total, active: china.active }, { code: 'CN', total: 5, active: 3 });
    const total = async (query: string) => {
      const r = await call(h.url, 'GET', `/api/bans?${query}&limit=1`, { token: TOKEN });
      assert.equal(r.status, 200, r.text);
      return r.json.total as number;
    };
    for (const c of s.by_country as { country: string | null; code: string | null; total: number; active: number }[]) {
      if (c.country === null) continue;
      // The dashboard links a row by its name; the code, where there is one, finds the same bans.
      assert.equal(await total(`state=all&country=${encodeURIComponent(c.country)}`), c.total, `${c.country}: total by name`);
      assert.equal(await total(`state=active&country=${encodeURIComponent(c.country)}`), c.active, `${c.country}: active by name`);
      if (c.code !== null) {
        assert.equal(await total(`state=all&country=${c.code}`), c.total, `${c.country}: total by code ${c.code}`);
        assert.equal(await total(`state=active&country=${c.code.toLowerCase()}`), c.active, `${c.country}: active by code ${c.code}`);
      }
    }
    assert.deepEqual(s.by_country.find((c: { country: string | null }) => c.country === 'Atlantis'), { country: 'Atlantis', code: null, active: 1, total: 1 });
    assert.equal(await total('state=all&country=CN'), 5);
    assert.equal(await total('state=all&country=DE'), 2);
  } finally {
    await h.close();
  }
});
