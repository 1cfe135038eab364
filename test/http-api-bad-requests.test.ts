import { test } from 'node:test';
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { openSqliteStore } from '../src/store/sqlite-store.ts';
import { call, withHarness, TOKEN } from './helpers/http-api.ts';

/** A request with a body streamed in chunks, without Content-Length (Transfer-Encoding: chunked). */
function chunked(url: string, body: string, chunk: number): Promise<{ status: number; json: { error: string } }> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const req = request(
      { host: u.hostname, port: u.port, path: u.pathname, method: 'POST', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' } },
      (res) => {
        let text = '';
        res.setEncoding('utf8').on('data', (d: string) => (text += d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, json: JSON.parse(text) }));
      },
    );
    // The server may answer and close before the whole body is sent.
    req.on('error', (e: NodeJS.ErrnoException) => (e.code === 'EPIPE' || e.code === 'ECONNRESET' ? undefined : reject(e)));
    for (let i = 0; i < body.length; i += chunk) req.write(body.slice(i, i + chunk));
    req.end();
  });
}

test('bad requests get a 4xx with a JSON error naming the field, and the daemon keeps serving', { timeout: 90_000 }, async () => {
  await withHarness({ api: { max_body_bytes: 1024 } }, async (h) => {
    const post = (body: unknown) => call(h.url, 'POST', '/api/bans', { token: TOKEN, body });
    const expect = async (r: Promise<{ status: number; json: { error?: unknown; field?: unknown } }>, status: number, field: string | undefined, re: RegExp, what: string) => {
      const got = await r;
      assert.equal(got.status, status, `${what}: ${JSON.stringify(got.json)}`);
      assert.equal(typeof got.json.error, 'string', what);
      assert.match(got.json.error as string, re, what);
      assert.equal(got.json.field, field, `${what}: field`);
    };

    // Addresses.
    await expect(post({ ip: 'not-an-ip' }), 400, 'ip', /not an IP address or CIDR prefix/, 'bad ip');
    await expect(post({ ip: '198.51.100.300' }), 400, 'ip', /not an IP address/, 'octet out of range');
    await expect(post({ ip: 12 }), 400, 'ip', /expected an IP address or CIDR prefix as a string/, 'ip not a string');
    await expect(post({}), 400, 'ip', /expected an IP address/, 'no ip');
    await expect(call(h.url, 'DELETE', '/api/bans/nope', { token: TOKEN }), 400, 'ip', /not an IP address/, 'bad ip to unban');
    await expect(call(h.url, 'GET', '/api/bans/1.2.3/explain', { token: TOKEN }), 400, 'ip', /not an IP address/, 'bad ip to explain');
    // Refused by the daemon's own rules, as `tsfilter ban` would be.
    await expect(post({ ip: '127.0.0.1' }), 422, 'ip', /refusing to ban it/, 'loopback');
    await expect(post({ ip: '10.0.0.0/4' }), 422, 'ip', /wider than/, 'prefix too wide');

    // Durations.
    for (const [d, re] of [
      [0, /whole number of seconds from 1/],
      [-5, /whole number of seconds from 1/],
      [1.5, /whole number of seconds from 1/],
      [1e12, /whole number of seconds from 1/],
      ['10x', /invalid duration/],
      ['0', /must be more than 0/],
      [true, /expected seconds, a duration/],
    ] as [unknown, RegExp][]) {
      await expect(post({ ip: '203.0.113.20', duration: d }), 400, 'duration', re, `duration ${JSON.stringify(d)}`);
    }
    await expect(post({ ip: '203.0.113.20', reason: 5 }), 400, 'reason', /expected a string/, 'reason not a string');
    await expect(post({ ip: '203.0.113.20', reason: 'x'.repeat(501) }), 400, 'reason', /at most 500/, 'reason too long');
    await expect(post({ ip: '203.0.113.20', cmd: 'unban' }), 400, 'cmd', /unknown field "cmd"/, 'unknown body field');
    await expect(post([{ ip: '203.0.113.20' }]), 400, undefined, /expected a JSON object/, 'an array body');
    await expect(post(null), 400, undefined, /expected a JSON object/, 'null body');

    // Bodies.
    await expect(call(h.url, 'POST', '/api/bans', { token: TOKEN, raw: '{"ip": "203.0.113.20",', headers: { 'content-type': 'application/json' } }), 400, undefined, /malformed JSON/, 'malformed JSON');
    await expect(call(h.url, 'POST', '/api/bans', { token: TOKEN, raw: '', headers: { 'content-type': 'application/json' } }), 400, undefined, /malformed JSON/, 'empty body');
    await expect(call(h.url, 'POST', '/api/bans', { token: TOKEN, raw: 'ip=203.0.113.20', headers: { 'content-type': 'application/x-www-form-urlencoded' } }), 415, undefined, /expected a JSON body/, 'a form');
    await expect(post({ ip: '203.0.113.20', reason: 'x'.repeat(2000) }), 413, undefined, /larger than 1024 bytes/, 'oversized body');
    const big = await chunked(`${h.url}/api/bans`, JSON.stringify({ ip: '203.0.113.20', reason: 'y'.repeat(5000) }), 512);
    assert.equal(big.status, 413, 'oversized chunked body, no Content-Length');
    assert.match(big.json.error, /larger than 1024 bytes/);

    // Queries.
    await expect(call(h.url, 'GET', '/api/bans?limit=0', { token: TOKEN }), 400, 'limit', /at least 1/, 'limit 0');
    await expect(call(h.url, 'GET', '/api/bans?limit=1001', { token: TOKEN }), 400, 'limit', /at most 1000/, 'limit too large');
    await expect(call(h.url, 'GET', '/api/bans?limit=ten', { token: TOKEN }), 400, 'limit', /whole number/, 'limit not a number');
    await expect(call(h.url, 'GET', '/api/bans?limit=1e2', { token: TOKEN }), 400, 'limit', /whole number/, 'limit in exponent form');
    await expect(call(h.url, 'GET', '/api/bans?offset=-1', { token: TOKEN }), 400, 'offset', /whole number/, 'negative offset');
    await expect(call(h.url, 'GET', '/api/bans?cursor=garbage!', { token: TOKEN }), 400, 'cursor', /not a cursor/, 'bad cursor');
    await expect(call(h.url, 'GET', `/api/bans?cursor=${Buffer.from('1.x').toString('base64url')}`, { token: TOKEN }), 400, 'cursor', /not a cursor/, 'forged cursor');
    await expect(call(h.url, 'GET', `/api/bans?cursor=${Buffer.from('r2').toString('base64url')}&offset=3`, { token: TOKEN }), 400, 'offset', /not both/, 'cursor and offset');
    await expect(call(h.url, 'GET', '/api/bans?colour=red', { token: TOKEN }), 400, 'colour', /unknown query parameter "colour"/, 'unknown filter');
    await expect(call(h.url, 'GET', '/api/bans?__proto__=x', { token: TOKEN }), 400, '__proto__', /unknown query parameter/, '__proto__');
    await expect(call(h.url, 'GET', '/api/bans?rule=a&rule=b', { token: TOKEN }), 400, 'rule', /more than once/, 'repeated filter');
    await expect(call(h.url, 'GET', '/api/bans?state=maybe', { token: TOKEN }), 400, 'state', /active, ended, all/, 'bad state');
    await expect(call(h.url, 'GET', '/api/bans?origin=martian', { token: TOKEN }), 400, 'origin', /local, manual, remote, pyfilter/, 'bad origin');
    await expect(call(h.url, 'GET', '/api/bans?since=yesterday', { token: TOKEN }), 400, 'since', /ISO 8601/, 'bad time');
    await expect(call(h.url, 'GET', '/api/bans?since=2024-02-30T25:00:00Z', { token: TOKEN }), 400, 'since', /ISO 8601/, 'impossible time');
    await expect(call(h.url, 'GET', '/api/bans?since=2024-05-02&until=2024-05-01', { token: TOKEN }), 400, 'until', /before since/, 'reversed range');
    await expect(call(h.url, 'GET', '/api/bans?q=%27%20OR%201%3D1', { token: TOKEN }), 400, 'q', /start of an address/, 'search text');
    await expect(call(h.url, 'GET', '/api/bans?ip=x', { token: TOKEN }), 400, 'ip', /not an IP/, 'bad ip filter');
    await expect(call(h.url, 'GET', '/api/stats?days=3', { token: TOKEN }), 400, 'days', /unknown query parameter/, 'stats take no parameters');

    // Routes and methods.
    await expect(call(h.url, 'GET', '/api/nothing', { token: TOKEN }), 404, undefined, /not found: GET \/api\/nothing/, 'unknown route');
    await expect(call(h.url, 'GET', '/index.php', { token: TOKEN }), 404, undefined, /not found/, 'unknown page');
    await expect(call(h.url, 'PUT', '/api/bans', { token: TOKEN }), 405, undefined, /not allowed.*GET, HEAD, POST/, 'wrong method');
    assert.equal((await call(h.url, 'PATCH', '/api/bans/203.0.113.20')).headers.get('allow'), 'DELETE');
    await expect(call(h.url, 'GET', '/metrics', { token: TOKEN }), 404, undefined, /not found/, 'metrics off');

    // Nothing was banned by any of it, and the daemon still answers.
    const store = openSqliteStore(h.config.sqlitePath, { readonly: true });
    try {
      assert.deepEqual(store.activeBans(Date.now()), []);
    } finally {
      store.close();
    }
    assert.equal((await call(h.url, 'GET', '/api/status', { token: TOKEN })).status, 200);
    assert.equal((await call(h.url, 'POST', '/api/bans', { token: TOKEN, body: { ip: '203.0.113.20', duration: null } })).status, 201);
    const listed = await call(h.url, 'GET', '/api/bans', { token: TOKEN });
    assert.equal(listed.json.bans[0].ip, '203.0.113.20');
    assert.equal(listed.json.bans[0].expires, null, 'duration null: permanent');
  });
});

test('every JSON answer carries nosniff and no-store, and an unencoded prefix works in the path', { timeout: 60_000 }, async () => {
  await withHarness({}, async (h) => {
    const made = await call(h.url, 'POST', '/api/bans', { token: TOKEN, body: { ip: '198.51.100.0/24', duration: '2h' } });
    assert.equal(made.status, 201, made.text);
    const r = await call(h.url, 'GET', '/api/bans/198.51.100.0/24/explain', { token: TOKEN });
    assert.equal(r.status, 200);
    assert.equal(r.json.ip, '198.51.100.0/24');
    assert.equal(r.json.bans.length, 1);
    assert.equal(r.headers.get('x-content-type-options'), 'nosniff');
    assert.equal(r.headers.get('cache-control'), 'no-store');
    assert.match(r.headers.get('content-type') ?? '', /^application\/json/);
    const inside = await call(h.url, 'GET', '/api/bans/198.51.100.7/explain', { token: TOKEN });
    assert.deepEqual(inside.json.covered_by, ['198.51.100.0/24']);
    const del = await call(h.url, 'DELETE', '/api/bans/198.51.100.0/24', { token: TOKEN });
    assert.equal(del.status, 200);
    assert.equal(del.json.removed, true);
  });
});
