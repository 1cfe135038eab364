import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { z } from 'zod';
import { apiSchema, apiSettings, parseListen } from '../src/api/http/config.ts';
import { startHttpApi } from '../src/api/http/server.ts';
import { silentLogger } from '../src/util/logger.ts';
import { call, socketHandler, withHarness, TOKEN } from './helpers/http-api.ts';

test('api.listen: IPv4 and bracketed IPv6 literals with a port; anything else is refused with an example', () => {
  assert.deepEqual(parseListen('127.0.0.1:9707'), { host: '127.0.0.1', port: 9707 });
  assert.deepEqual(parseListen('[::1]:9707'), { host: '::1', port: 9707 });
  assert.deepEqual(parseListen('0.0.0.0:80'), { host: '0.0.0.0', port: 80 });
  assert.deepEqual(parseListen('[::]:0'), { host: '::', port: 0 });
  assert.deepEqual(parseListen('[2001:db8::1]:9707'), { host: '2001:db8::1', port: 9707 });
  for (const bad of ['localhost:9707', '::1:9707', '127.0.0.1', '[::1]', '127.0.0.1:70000', '999.1.1.1:80', '[127.0.0.1]:80', ':9707', '127.0.0.1:80x']) {
    assert.throws(() => parseListen(bad), /expected host:port|not an IPv[46] address|out of range/, bad);
  }
});

test('the api block: off when absent or disabled, loopback by default, every field documented, contradictions refused', () => {
  assert.equal(apiSettings(apiSchema.parse(undefined), '/etc/tsfilter'), null);
  assert.equal(apiSettings(apiSchema.parse({ enabled: false }), '/etc/tsfilter'), null);
  const s = apiSettings(apiSchema.parse({ token_file: 'api.token' }), '/etc/tsfilter')!;
  assert.deepEqual(s, {
    listen: { host: '127.0.0.1', port: 9707 },
    token: null,
    tokenFile: '/etc/tsfilter/api.token',
    readRequiresToken: true,
    metrics: true,
    dashboard: true,
    allowedHosts: [],
    maxBodyBytes: 16_384,
    maxEventClients: 64,
    heartbeatMs: 15_000,
  });
  // read_requires_token follows the token unless it is set: reads are open only without a token or when told so.
  const reads = (v: unknown) => apiSettings(apiSchema.parse(v), '/etc/tsfilter')!.readRequiresToken;
  assert.equal(reads({}), false, 'no token: reads open (writes disabled)');
  assert.equal(reads({ token: 'a'.repeat(20) }), true);
  assert.equal(reads({ token: 'a'.repeat(20), read_requires_token: null }), true);
  assert.equal(reads({ token_file: 'api.token' }), true);
  assert.equal(reads({ token: 'a'.repeat(20), read_requires_token: false }), false);
  assert.equal(reads({ token_file: 'api.token', read_requires_token: true }), true);
  assert.equal(reads({ read_requires_token: false }), false);
  const fail = (v: unknown, re: RegExp) => {
    const r = apiSchema.safeParse(v);
    assert.equal(r.success, false, JSON.stringify(v));
    assert.match(r.error!.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; '), re);
  };
  fail({ token: 'a'.repeat(20), token_file: '/x' }, /token_file: give token or token_file, not both/);
  fail({ read_requires_token: true }, /read_requires_token: read_requires_token needs a token/);
  fail({ token: 'short' }, /token: expected a token of at least 16 characters/);
  fail({ token: 'has a space in it, long enough' }, /printable ASCII without spaces/);
  fail({ listen: 'localhost:80' }, /listen: expected host:port with an IP address/);
  fail({ listen: '[::1]:99999' }, /listen: port 99999 is out of range/);
  fail({ max_body_bytes: 10 }, /max_body_bytes/);
  fail({ colour: 'red' }, /Unrecognized key.*colour/i);
  // Every field carries the description the README's options table is generated from.
  const shape = (apiSchema.unwrap() as unknown as z.ZodObject).shape as Record<string, z.ZodType>;
  assert.ok(Object.keys(shape).length >= 9);
  for (const [k, v] of Object.entries(shape)) assert.ok((v.description ?? '').length > 20, `api.${k} is documented`);
  assert.match(apiSchema.description ?? '', /Absent .* nothing listens/);
});

test('the API listens on [::1] when told, and a port in use is a clear start-up error that leaves the first one running', { timeout: 60_000 }, async (t) => {
  await withHarness({}, async (h) => {
    const port = Number(new URL(h.url).port);
    const settings = apiSettings(apiSchema.parse({ listen: `127.0.0.1:${port}` }), h.dir)!;
    await assert.rejects(
      startHttpApi({ control: socketHandler(h.config.controlSocket), storePath: h.config.sqlitePath, logger: silentLogger }, settings),
      new RegExp(`api\\.listen 127\\.0\\.0\\.1:${port}: cannot listen: the address is already in use`),
    );
    assert.equal((await call(h.url, 'GET', '/api/status', { token: TOKEN })).status, 200, 'the first API still answers');

    const v6 = await new Promise<boolean>((resolve) => {
      const s = net.createServer().once('error', () => resolve(false));
      s.listen(0, '::1', () => s.close(() => resolve(true)));
    });
    if (!v6) {
      t.diagnostic('no IPv6 loopback here; the [::1] part is skipped');
      return;
    }
    const api6 = await startHttpApi(
      { control: socketHandler(h.config.controlSocket), storePath: h.config.sqlitePath, logger: silentLogger },
      apiSettings(apiSchema.parse({ listen: '[::1]:0' }), h.dir)!,
    );
    try {
      assert.match(api6.url, /^http:\/\/\[::1\]:\d+$/);
      const r = await call(api6.url, 'GET', '/api/bans');
      assert.equal(r.status, 200);
      assert.deepEqual(r.json.bans, []);
    } finally {
      await api6.close();
    }
  });
});
