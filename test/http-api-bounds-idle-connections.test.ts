import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { apiSchema, apiSettings } from '../src/api/http/config.ts';
import { startHttpApi, type HttpApi, type ServerLimits } from '../src/api/http/server.ts';
import { silentLogger } from '../src/util/logger.ts';
import { AUTH, call, SseReader, socketHandler, startHarness, TOKEN, type Harness } from './helpers/http-api.ts';

/*
 * A client that connects and sends nothing (or dribbles its headers) holds a file descriptor; a few hundred of them
 * made the API unreachable while node checked its timeouts only every 30 s. The server now closes them, and caps
 * how many connections it holds at once.
 */

/** Opens a TCP connection and resolves once the server has closed it, with whatever it sent first. */
function idle(url: string, send?: string): Promise<{ socket: net.Socket; closed: Promise<string> }> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = net.connect(Number(u.port), u.hostname);
    let got = '';
    socket.setEncoding('utf8').on('data', (d: string) => (got += d));
    const closed = new Promise<string>((res) => socket.once('close', () => res(got)));
    socket.once('error', () => {});
    socket.once('connect', () => {
      if (send !== undefined) socket.write(send);
      resolve({ socket, closed });
    });
    socket.once('error', reject);
  });
}

/** The daemon's API again, on its store and control socket, with shorter limits. */
function secondApi(h: Harness, limits: Partial<ServerLimits>): Promise<HttpApi> {
  const s = apiSettings(apiSchema.parse({ listen: '127.0.0.1:0', token: TOKEN, heartbeat_interval: 1 }), h.dir)!;
  return startHttpApi({ control: socketHandler(h.config.controlSocket), storePath: h.config.sqlitePath, logger: silentLogger, limits }, s);
}

test('connections that never send their headers do not make the daemon\'s API unreachable, and are closed', { timeout: 60_000 }, async () => {
  const h = await startHarness();
  const held: net.Socket[] = [];
  try {
    // 140 such connections once made the API unreachable until node's 30 s check.
    const silent = await Promise.all(Array.from({ length: 200 }, () => idle(h.url)));
    const partial = await idle(h.url, 'GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\n');
    held.push(...silent.map((c) => c.socket), partial.socket);
    assert.equal((await call(h.url, 'GET', '/api/status', { token: TOKEN })).status, 200, 'served beside them');
    // Closed within the headers timeout plus a check interval; the test's own timeout is the only clock here.
    for (const c of [...silent, partial]) assert.match(await c.closed, /^(HTTP\/1\.1 408 |$)/);
    assert.equal((await call(h.url, 'GET', '/api/status', { token: TOKEN })).status, 200);
  } finally {
    for (const s of held) s.destroy();
    await h.close();
  }
});

test('an event stream outlives the request timeout, which bounds receiving the request only', { timeout: 60_000 }, async () => {
  const h = await startHarness();
  const api = await secondApi(h, { headersMs: 300, requestMs: 600, checkMs: 100 });
  const ac = new AbortController();
  try {
    const res = await fetch(`${api.url}/api/events`, { headers: AUTH, signal: ac.signal });
    assert.equal(res.status, 200);
    const sse = new SseReader(res);
    await sse.waitFor((f) => 'comment' in f && f.comment === 'connected');
    // A connection that sends nothing is closed meanwhile...
    const silent = await idle(api.url);
    await silent.closed;
    // ... while the stream, open for several request timeouts (heartbeats come every second), still delivers.
    for (let i = 0; i < 3; i++) {
      const n = sse.frames.length;
      await sse.waitFor((f) => sse.frames.indexOf(f) >= n && 'comment' in f && f.comment === 'heartbeat');
    }
    assert.equal((await call(api.url, 'POST', '/api/bans', { token: TOKEN, body: { ip: '203.0.113.90', duration: 60 } })).status, 201);
    await sse.waitFor((f) => 'event' in f && f.event === 'ban' && JSON.parse(f.data).ip === '203.0.113.90');
    await sse.cancel();
  } finally {
    ac.abort();
    await api.close();
    await h.close();
  }
});

test('connections beyond the cap are closed on arrival, and the API serves again once idle ones are reaped', { timeout: 60_000 }, async () => {
  const h = await startHarness();
  const api = await secondApi(h, { headersMs: 1000, requestMs: 2000, checkMs: 100, maxConnections: 4 });
  const held: net.Socket[] = [];
  try {
    const first = await Promise.all([0, 1, 2, 3].map(() => idle(api.url)));
    held.push(...first.map((c) => c.socket));
    // The server counts a connection once it has accepted it; a fifth is then dropped without an answer.
    let refused = false;
    for (let i = 0; i < 50 && !refused; i++) {
      const extra = await idle(api.url);
      held.push(extra.socket);
      const answer = await Promise.race([extra.closed.then((t) => ({ t })), new Promise<null>((r) => setTimeout(() => r(null), 200))]);
      refused = answer !== null && answer.t === '';
    }
    assert.ok(refused, 'a connection beyond max connections is closed');
    // The idle ones go after the headers timeout; then requests are answered again.
    await Promise.all(first.map((c) => c.closed));
    let status = 0;
    for (let i = 0; i < 100 && status !== 200; i++) {
      status = (await call(api.url, 'GET', '/api/status', { token: TOKEN }).catch(() => ({ status: 0 }))).status;
      if (status !== 200) await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(status, 200);
  } finally {
    for (const s of held) s.destroy();
    await api.close();
    await h.close();
  }
});
