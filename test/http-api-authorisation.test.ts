import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { openSqliteStore } from '../src/store/sqlite-store.ts';
import { readTokenFile, tokenMatches } from '../src/api/http/config.ts';
import { call, startHarness, TOKEN, withHarness } from './helpers/http-api.ts';

function isBanned(dbFile: string, ip: string): boolean {
  const s = openSqliteStore(dbFile, { readonly: true });
  try {
    return s.activeBan(ip, Date.now()) !== undefined;
  } finally {
    s.close();
  }
}

test('writes need the bearer token: none or a wrong one is 401 and changes nothing, the right one bans and unbans', { timeout: 60_000 }, async () => {
  await withHarness({}, async (h) => {
    const ip = '203.0.113.10';
    const none = await call(h.url, 'POST', '/api/bans', { body: { ip } });
    assert.equal(none.status, 401);
    assert.match(none.json.error, /bearer token is required/);
    assert.match(none.headers.get('www-authenticate') ?? '', /^Bearer /);
    for (const bad of ['wrong-token-0123456789abcdef', TOKEN + 'x', TOKEN.slice(0, -1), '']) {
      const r = await call(h.url, 'POST', '/api/bans', { body: { ip }, headers: { authorization: `Bearer ${bad}` } });
      assert.equal(r.status, 401, `token ${JSON.stringify(bad)}`);
    }
    const basic = await call(h.url, 'POST', '/api/bans', { body: { ip }, headers: { authorization: `Basic ${Buffer.from(`x:${TOKEN}`).toString('base64')}` } });
    assert.equal(basic.status, 401, 'only the Bearer scheme');
    assert.equal(isBanned(h.config.sqlitePath, ip), false, 'refused requests changed nothing');

    const ok = await call(h.url, 'POST', '/api/bans', { token: TOKEN, body: { ip, duration: '1h', reason: 'from the API' } });
    assert.equal(ok.status, 201, ok.text);
    assert.equal(ok.json.ban.ip, ip);
    assert.equal(ok.json.ban.origin, 'manual');
    assert.equal(ok.json.ban.reason, 'from the API');
    assert.equal(Date.parse(ok.json.ban.expires) - Date.parse(ok.json.ban.since), 3_600_000);
    assert.equal(ok.json.enforced, true);
    assert.equal(isBanned(h.config.sqlitePath, ip), true);
    assert.ok(h.logs.some((l) => /msg="api: ban" ip=203\.0\.113\.10 remote=127\.0\.0\.1/.test(l)), 'writes are logged');
    assert.ok(h.logs.some((l) => /api: request refused: missing or wrong token/.test(l)), 'refusals are logged');

    const delNone = await call(h.url, 'DELETE', `/api/bans/${ip}`);
    assert.equal(delNone.status, 401);
    const delWrong = await call(h.url, 'DELETE', `/api/bans/${ip}`, { token: 'wrong-token-0123456789abcdef' });
    assert.equal(delWrong.status, 401);
    assert.equal(isBanned(h.config.sqlitePath, ip), true);
    const del = await call(h.url, 'DELETE', `/api/bans/${ip}`, { token: TOKEN });
    assert.equal(del.status, 200, del.text);
    assert.deepEqual(del.json, { ip, removed: true, enforced: true, still_blocked_by: null });
    assert.equal(isBanned(h.config.sqlitePath, ip), false);

    // GET /api tells a client whether its token is valid.
    assert.equal((await call(h.url, 'GET', '/api')).json.token_valid, null);
    assert.equal((await call(h.url, 'GET', '/api', { token: TOKEN })).json.token_valid, true);
    assert.equal((await call(h.url, 'GET', '/api', { token: 'wrong-token-0123456789abcdef' })).json.token_valid, false);
  });
});

test('without any token configured writes are disabled (403) and GET /api says so; reads still work, with a warning', { timeout: 60_000 }, async () => {
  await withHarness({ api: { token: null } }, async (h) => {
    const r = await call(h.url, 'POST', '/api/bans', { token: TOKEN, body: { ip: '203.0.113.11' } });
    assert.equal(r.status, 403);
    assert.match(r.json.error, /writes are disabled.*token_file/);
    assert.equal((await call(h.url, 'DELETE', '/api/bans/203.0.113.11')).status, 403);
    assert.equal(isBanned(h.config.sqlitePath, '203.0.113.11'), false);
    assert.deepEqual((await call(h.url, 'GET', '/api')).json, { writes_enabled: false, read_requires_token: false, metrics: false, token_valid: null });
    assert.equal((await call(h.url, 'GET', '/api/status')).status, 200);
    assert.equal((await call(h.url, 'GET', '/api/bans/192.0.2.9/explain')).status, 200);
    assert.ok(h.logs.some((l) => /level=warn msg="api: no token configured: every local user can read the bans and the log lines behind them/.test(l)), h.logs.join('\n'));
  });
});

/** Every read endpoint: 401 without the token or with a wrong one, 200 with it. */
async function readsNeedTheToken(url: string): Promise<void> {
  for (const p of ['/api/status', '/api/bans', '/api/bans/192.0.2.9/explain', '/api/stats', '/api/events', '/metrics']) {
    assert.equal((await call(url, 'GET', p)).status, 401, p);
    assert.equal((await call(url, 'GET', p, { token: 'wrong-token-0123456789abcdef' })).status, 401, p);
    if (p === '/api/events') {
      const ac = new AbortController();
      const r = await fetch(url + p, { headers: { authorization: `Bearer ${TOKEN}` }, signal: ac.signal });
      assert.equal(r.status, 200);
      ac.abort();
    } else {
      assert.equal((await call(url, 'GET', p, { token: TOKEN })).status, 200, p);
    }
  }
  // The discovery endpoint stays open, so a dashboard can ask for a token.
  assert.equal((await call(url, 'GET', '/api')).json.read_requires_token, true);
}

test('with a token configured, every read (status, bans, explain, stats, events, metrics) needs it by default, as with read_requires_token: true', { timeout: 90_000 }, async () => {
  // The explain story holds raw lines of root-only logs: no read_requires_token setting must not open them.
  for (const api of [{}, { read_requires_token: null }, { read_requires_token: true }]) {
    await withHarness({ api, metrics: true }, async (h) => {
      await readsNeedTheToken(h.url);
    });
  }
});

test('with a token_file configured, reads need the token by default too', { timeout: 60_000 }, async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'tsf-token-'));
  try {
    const file = path.join(dir, 'api.token');
    writeFileSync(file, `${TOKEN}\n`, { mode: 0o600 });
    await withHarness({ api: { token: null, token_file: file }, metrics: true }, async (h) => {
      await readsNeedTheToken(h.url);
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('read_requires_token: false opens every read to anyone, while writes still need the token', { timeout: 60_000 }, async () => {
  await withHarness({ api: { read_requires_token: false }, metrics: true }, async (h) => {
    for (const p of ['/api/status', '/api/bans', '/api/bans/192.0.2.9/explain', '/api/stats', '/metrics']) {
      assert.equal((await call(h.url, 'GET', p)).status, 200, p);
    }
    const ac = new AbortController();
    const r = await fetch(`${h.url}/api/events`, { signal: ac.signal });
    assert.equal(r.status, 200);
    ac.abort();
    assert.equal((await call(h.url, 'GET', '/api')).json.read_requires_token, false);
    assert.equal((await call(h.url, 'POST', '/api/bans', { body: { ip: '203.0.113.13' } })).status, 401);
    assert.equal(isBanned(h.config.sqlitePath, '203.0.113.13'), false);
  });
});

test('token_file: read when it is root-only (0600); group- or world-readable, a symlink, or a short token stop the start', { timeout: 60_000 }, async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'tsf-token-'));
  try {
    const file = path.join(dir, 'api.token');
    writeFileSync(file, `${TOKEN}\n`);
    for (const mode of [0o644, 0o640, 0o604, 0o620]) {
      chmodSync(file, mode);
      assert.throws(() => readTokenFile(file), new RegExp(`permissions 0${mode.toString(8)} are too open.*chmod 600 ${file.replace(/[.]/g, '\\.')}`));
      await assert.rejects(startHarness({ api: { token: null, token_file: file } }), /api\.token_file .*too open/);
    }
    chmodSync(file, 0o600);
    assert.equal(readTokenFile(file), TOKEN, 'the trailing newline is not part of the token');
    const link = path.join(dir, 'link.token');
    symlinkSync(file, link);
    assert.throws(() => readTokenFile(link), /symbolic link/);
    assert.throws(() => readTokenFile(path.join(dir, 'missing')), /does not exist/);
    writeFileSync(path.join(dir, 'short'), 'abc', { mode: 0o600 });
    assert.throws(() => readTokenFile(path.join(dir, 'short')), /at least 16 characters/);

    await withHarness({ api: { token: null, token_file: file } }, async (h) => {
      assert.equal((await call(h.url, 'POST', '/api/bans', { token: 'wrong-token-0123456789abcdef', body: { ip: '203.0.113.12' } })).status, 401);
      assert.equal((await call(h.url, 'POST', '/api/bans', { token: TOKEN, body: { ip: '203.0.113.12' } })).status, 201);
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a Host header naming something else than an IP, localhost or allowed_hosts is refused (DNS rebinding)', { timeout: 60_000 }, async () => {
  await withHarness({ api: { allowed_hosts: ['tsfilter.example.org'] } }, async (h) => {
    const port = new URL(h.url).port;
    const get = (host: string) =>
      new Promise<number>((resolve, reject) => {
        // fetch() will not send a foreign Host header; node:http will.
        import('node:http').then(({ request }) => {
          const req = request({ host: '127.0.0.1', port, path: '/api/bans', headers: { host, authorization: `Bearer ${TOKEN}` } }, (res) => {
            res.resume();
            resolve(res.statusCode ?? 0);
          });
          req.on('error', reject);
          req.end();
        }, reject);
      });
    assert.equal(await get('evil.example:' + port), 403);
    assert.equal(await get(`127.0.0.1:${port}`), 200);
    assert.equal(await get(`localhost:${port}`), 200);
    assert.equal(await get(`[::1]:${port}`), 200);
    assert.equal(await get('TSFilter.example.org'), 200);
  });
});

test('tokens are compared whole: equal only when identical', () => {
  assert.equal(tokenMatches(TOKEN, TOKEN), true);
  assert.equal(tokenMatches(TOKEN + 'a', TOKEN), false);
  assert.equal(tokenMatches(TOKEN.slice(1), TOKEN), false);
  assert.equal(tokenMatches('', TOKEN), false);
  assert.equal(tokenMatches(TOKEN.toUpperCase(), TOKEN), false);
});
