import { test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFileSync } from 'node:fs';
import { failed } from './helpers/syslog.ts';
import { AUTH, call, runCliAsync, SseReader, startHarness, TOKEN } from './helpers/http-api.ts';

type Frame = SseReader['frames'][number];
const isEvent = (type: string, ip: string) => (f: Frame) => 'event' in f && f.event === type && JSON.parse(f.data).ip === ip;

test('/api/events streams bans and unbans live: from the log, from the API, from the CLI, and expiry; with heartbeats', { timeout: 90_000 }, async () => {
  const h = await startHarness();
  const ac = new AbortController();
  try {
    const res = await fetch(`${h.url}/api/events`, { headers: AUTH, signal: ac.signal });
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^text\/event-stream/);
    assert.equal(res.headers.get('cache-control'), 'no-store');
    const sse = new SseReader(res);
    await sse.waitFor((f) => 'comment' in f && f.comment === 'connected');

    // An attack in the followed log: the daemon bans, the stream shows it with the same fields as the list.
    const t = Date.now() - 10_000;
    for (let i = 0; i < 5; i++) appendFileSync(h.logFile, failed(t + i * 1000, '192.0.2.50'));
    const fromLog = await sse.waitFor(isEvent('ban', '192.0.2.50'));
    const ban = JSON.parse((fromLog as { data: string }).data);
    assert.equal(ban.rule, 'ssh');
    assert.equal(ban.origin, 'local');
    assert.equal(ban.active, true);
    const listed = (await call(h.url, 'GET', '/api/bans?ip=192.0.2.50', { token: TOKEN })).json.bans[0];
    assert.deepEqual(ban, listed, 'the event is the ban as GET /api/bans shows it');

    // Through the API.
    assert.equal((await call(h.url, 'POST', '/api/bans', { token: TOKEN, body: { ip: '203.0.113.30', duration: 2 } })).status, 201);
    await sse.waitFor(isEvent('ban', '203.0.113.30'));
    // ... and it expires: the daemon ends it, and the stream says why.
    const expired = await sse.waitFor(isEvent('unban', '203.0.113.30'));
    assert.equal(JSON.parse((expired as { data: string }).data).cause, 'expired');

    // Through the CLI and the control socket: the stream does not depend on who made the change.
    const cli = await runCliAsync(['unban', '192.0.2.50', '--config', h.configFile]);
    assert.equal(cli.code, 0, cli.stderr);
    const unban = JSON.parse(((await sse.waitFor(isEvent('unban', '192.0.2.50'))) as { data: string }).data);
    assert.equal(unban.cause, 'manual');
    assert.equal(unban.active, false);
    assert.equal(unban.end_reason, 'unbanned with tsfilter unban');

    // A ban replaced by a longer one: the old one's unban comes before the new ban.
    await call(h.url, 'POST', '/api/bans', { token: TOKEN, body: { ip: '203.0.113.31', duration: 60 } });
    await sse.waitFor(isEvent('ban', '203.0.113.31'));
    const before = sse.frames.length;
    await call(h.url, 'POST', '/api/bans', { token: TOKEN, body: { ip: '203.0.113.31', duration: null } });
    await sse.waitFor((f) => isEvent('ban', '203.0.113.31')(f) && JSON.parse((f as { data: string }).data).expires === null);
    const after = sse.frames.slice(before).filter((f) => 'event' in f).map((f) => [(f as { event: string }).event, JSON.parse((f as { data: string }).data).cause ?? null]);
    assert.deepEqual(after, [['unban', 'replaced'], ['ban', null]]);

    // Heartbeat comments keep the stream alive (heartbeat_interval is 1 s in this harness).
    await sse.waitFor((f) => 'comment' in f && f.comment === 'heartbeat');
    await sse.cancel();
  } finally {
    ac.abort();
    await h.close();
  }
});

test('/api/events refuses more than max_event_clients streams (503) and frees the slot when a client leaves', { timeout: 60_000 }, async () => {
  const h = await startHarness({ api: { max_event_clients: 2 } });
  const acs = [new AbortController(), new AbortController(), new AbortController()];
  try {
    // HEAD requests answer with the headers and hold no stream open.
    for (let i = 0; i < 5; i++) {
      const head = await fetch(`${h.url}/api/events`, { method: 'HEAD', headers: AUTH });
      assert.equal(head.status, 200);
      assert.match(head.headers.get('content-type') ?? '', /^text\/event-stream/);
    }
    const a = await fetch(`${h.url}/api/events`, { headers: AUTH, signal: acs[0]!.signal });
    const b = await fetch(`${h.url}/api/events`, { headers: AUTH, signal: acs[1]!.signal });
    assert.equal(a.status, 200);
    assert.equal(b.status, 200);
    const c = await call(h.url, 'GET', '/api/events', { token: TOKEN });
    assert.equal(c.status, 503);
    assert.match(c.json.error, /too many event streams open \(api\.max_event_clients = 2\)/);
    // One client goes away; its slot is freed once the server notices the closed connection.
    const ra = new SseReader(a);
    await ra.waitFor((f) => 'comment' in f && f.comment === 'connected');
    await ra.cancel();
    acs[0]!.abort();
    let status = 0;
    for (let i = 0; i < 200 && status !== 200; i++) {
      await new Promise((r) => setTimeout(r, 50));
      const r = await fetch(`${h.url}/api/events`, { headers: AUTH, signal: acs[2]!.signal }).catch(() => null);
      status = r?.status ?? 0;
      if (status !== 200) await r?.text();
    }
    assert.equal(status, 200, 'a new client gets the freed slot');
  } finally {
    for (const ac of acs) ac.abort();
    await h.close();
  }
});
