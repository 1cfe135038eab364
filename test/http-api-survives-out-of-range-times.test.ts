import { test } from 'node:test';
import assert from 'node:assert/strict';
import Database from 'better-sqlite3';
import { AUTH, call, runCliAsync, SseReader, startHarness, TOKEN } from './helpers/http-api.ts';

/*
 * Rows the store would refuse to write, put there by another tool (PyFilter's banned_ip takes any time_banned; SQL
 * takes anything): times past the year 275760, where Date.toISOString() throws, before it, and not numbers at all.
 * The list, explain, stats, metrics and the live feed must keep working, showing such times clamped to 1970..9999.
 */

type Frame = SseReader['frames'][number];
const isEvent = (type: string, ip: string) => (f: Frame) => 'event' in f && f.event === type && JSON.parse(f.data).ip === ip;
const data = (f: Frame) => JSON.parse((f as { data: string }).data);

const LAST = '9999-12-31T23:59:59.999Z';
const FIRST = '1970-01-01T00:00:00.000Z';

test('rows with times out of any date\'s range never fail the list, paging, explain, stats, metrics or the live feed', { timeout: 90_000 }, async () => {
  const now = Date.now();
  const h = await startHarness({
    metrics: true,
    seed: (_store, dbPath) => {
      // PyFilter's table, imported at the daemon's start as created_at = time_banned * 1000.
      const raw = new Database(dbPath);
      try {
        const add = raw.prepare('INSERT INTO banned_ip (ip, time_banned, server_name, log_msg, country) VALUES (?, ?, ?, ?, ?)');
        add.run('198.51.100.61', 1e14, 'Server-1', 'far future', 'China');
        add.run('198.51.100.62', -1e13, 'Server-1', 'far past', null);
      } finally {
        raw.close();
      }
    },
  });
  const ac = new AbortController();
  try {
    const res = await fetch(`${h.url}/api/events`, { headers: AUTH, signal: ac.signal });
    assert.equal(res.status, 200);
    const sse = new SseReader(res);
    await sse.waitFor((f) => 'comment' in f && f.comment === 'connected');

    // Written behind the daemon's back while it runs: the live feed reads them as new rows.
    const raw = new Database(h.config.sqlitePath);
    try {
      const add = raw.prepare(`INSERT INTO bans (ip, rule, reason, created_at, expires_at, failures, ban_count, origin, server, ended_at, end_reason)
        VALUES (?, 'ssh', 'hostile', ?, ?, 5, 1, 'remote', 'evil', ?, ?)`);
      add.run('203.0.113.50', now, 1e16, null, null);
      add.run('203.0.113.52', 1e300, null, null, null);
      add.run('203.0.113.53', now - 1000, now, 1e16, 42);
      add.run('203.0.113.54', 'yesterday', 'never', null, null);
    } finally {
      raw.close();
    }
    const far = data(await sse.waitFor(isEvent('ban', '203.0.113.50')));
    assert.equal(far.expires, LAST, 'an expiry past any date reads as the last one');
    assert.equal(far.active, true);
    assert.equal(data(await sse.waitFor(isEvent('ban', '203.0.113.52'))).since, LAST);
    const ended = data(await sse.waitFor(isEvent('unban', '203.0.113.53')));
    assert.equal(ended.ended, LAST);
    assert.equal(ended.cause, 'other', 'an end_reason that is not text');
    assert.equal(data(await sse.waitFor(isEvent('ban', '203.0.113.54'))).since, FIRST, 'a time that is not a number');

    // ... and the feed goes on: a later ban still arrives.
    assert.equal((await call(h.url, 'POST', '/api/bans', { token: TOKEN, body: { ip: '203.0.113.51', duration: 600 } })).status, 201);
    await sse.waitFor(isEvent('ban', '203.0.113.51'));

    // The list: every row, with every time a valid ISO 8601 string.
    const all = await call(h.url, 'GET', '/api/bans?state=all&limit=1000', { token: TOKEN });
    assert.equal(all.status, 200, all.text);
    const byIp = new Map((all.json.bans as { ip: string; since: string; expires: string | null }[]).map((b) => [b.ip, b]));
    assert.equal(byIp.get('198.51.100.61')!.since, FIRST, 'a PyFilter row whose time is past any date is imported as 0 (1970)');
    assert.equal(byIp.get('198.51.100.62')!.since, FIRST);
    assert.equal(byIp.get('203.0.113.50')!.expires, LAST);
    for (const b of all.json.bans as Record<string, unknown>[]) {
      for (const k of ['since', 'expires', 'ended']) if (b[k] !== null) assert.ok(!Number.isNaN(Date.parse(b[k] as string)), `${b.ip} ${k}: ${b[k]}`);
    }
    // Paging one row at a time walks past every one of them, the cursor included.
    const paged: string[] = [];
    let cursor: string | null = null;
    for (let i = 0; i < 20; i++) {
      const r = await call(h.url, 'GET', `/api/bans?state=all&limit=1${cursor ? `&cursor=${cursor}` : ''}`, { token: TOKEN });
      assert.equal(r.status, 200, r.text);
      paged.push(...(r.json.bans as { ip: string }[]).map((b) => b.ip));
      cursor = r.json.next_cursor;
      if (cursor === null) break;
    }
    assert.deepEqual(paged, (all.json.bans as { ip: string }[]).map((b) => b.ip));
    assert.equal(paged.length, all.json.total);

    for (const ip of ['198.51.100.61', '198.51.100.62', '203.0.113.50', '203.0.113.52', '203.0.113.53', '203.0.113.54']) {
      const r = await call(h.url, 'GET', `/api/bans/${ip}/explain`, { token: TOKEN });
      assert.equal(r.status, 200, `${ip}: ${r.text}`);
      assert.equal(r.json.bans.length, 1);
      assert.equal(typeof r.json.bans[0].since, 'string');
    }
    const story = (await call(h.url, 'GET', '/api/bans/203.0.113.50/explain', { token: TOKEN })).json.bans[0];
    assert.equal(story.duration_s, Math.round((Date.parse(LAST) - now) / 1000), 'the length of the ban as shown');

    const stats = await call(h.url, 'GET', '/api/stats', { token: TOKEN });
    assert.equal(stats.status, 200, stats.text);
    assert.ok((stats.json.top_offenders as { last: string }[]).some((o) => o.last === LAST));

    // The ban counters went on counting (they follow the live feed).
    const metrics = await (await fetch(`${h.url}/metrics`, { headers: AUTH })).text();
    assert.match(metrics, /^tsfilter_bans_total\{rule="ssh",origin="remote"\} 4$/m);
    assert.match(metrics, /^tsfilter_bans_total\{rule="manual",origin="manual"\} 1$/m);

    // The CLI, through the daemon and from the store, shows them too.
    const list = await runCliAsync(['list', '--json', '--config', h.configFile]);
    assert.equal(list.code, 0, list.stderr);
    assert.match(list.stdout, /"ip":"198\.51\.100\.61".*"since":"1970-01-01T00:00:00\.000Z"/);
    const explain = await runCliAsync(['explain', '203.0.113.50', '--json', '--config', h.configFile]);
    assert.equal(explain.code, 0, explain.stderr);
    assert.deepEqual(JSON.parse(explain.stdout), (await call(h.url, 'GET', '/api/bans/203.0.113.50/explain', { token: TOKEN })).json);

    assert.deepEqual(h.logs.filter((l) => /level=(warn|error)/.test(l) && /feed|api/.test(l)), [], 'nothing failed or was skipped');
    await sse.cancel();
  } finally {
    ac.abort();
    await h.close();
  }
});
