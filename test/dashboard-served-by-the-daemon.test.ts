import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { call, withHarness, TOKEN } from './helpers/http-api.ts';
import { REPO } from './helpers/cli.ts';
import { apiSchema, apiSettings } from '../src/api/http/config.ts';
import { DASHBOARD_CSP, WEB_DIR } from '../src/api/http/dashboard.ts';

const FILES: [string, string, string][] = [
  ['/', 'index.html', 'text/html; charset=utf-8'],
  ['/app.js', 'app.js', 'text/javascript; charset=utf-8'],
  ['/style.css', 'style.css', 'text/css; charset=utf-8'],
  ['/favicon.svg', 'favicon.svg', 'image/svg+xml'],
];

/** A request with a raw request target, so nothing normalises `..` or percent-escapes on the way. */
function rawGet(url: string, target: string): Promise<{ status: number; body: string }> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const sock = net.connect(Number(u.port), u.hostname, () => sock.write(`GET ${target} HTTP/1.1\r\nHost: ${u.host}\r\nConnection: close\r\n\r\n`));
    let data = '';
    sock.setEncoding('utf8').on('data', (d: string) => (data += d));
    sock.on('end', () => resolve({ status: Number(/^HTTP\/1\.1 (\d{3})/.exec(data)?.[1] ?? 0), body: data.slice(data.indexOf('\r\n\r\n') + 4) }));
    sock.on('error', reject);
  });
}

test('the daemon serves the dashboard at / from the package\'s web/ folder, with its content types, a strict CSP and revalidation', { timeout: 60_000 }, async () => {
  assert.equal(WEB_DIR, path.join(REPO, 'web') + path.sep, 'web/ is found three levels above src/api/http');
  // A token is configured, so reads need it: the page's own files do not (it asks for the token itself).
  await withHarness({}, async (h) => {
    assert.equal((await call(h.url, 'GET', '/api/stats')).status, 401);
    for (const [p, file, type] of FILES) {
      const r = await call(h.url, 'GET', p);
      assert.equal(r.status, 200, `${p}: ${r.text.slice(0, 200)}`);
      assert.equal(r.headers.get('content-type'), type, p);
      assert.equal(r.text, readFileSync(path.join(REPO, 'web', file), 'utf8'), `${p} is web/${file}`);
      assert.equal(r.headers.get('content-security-policy'), DASHBOARD_CSP, p);
      assert.equal(r.headers.get('x-content-type-options'), 'nosniff');
      assert.equal(r.headers.get('x-frame-options'), 'DENY');
      assert.equal(r.headers.get('cache-control'), 'no-cache');
      const etag = r.headers.get('etag');
      assert.match(etag ?? '', /^"[A-Za-z0-9_-]{22}"$/);
      const again = await fetch(h.url + p, { headers: { 'if-none-match': etag! } });
      assert.equal(again.status, 304, `${p}: unchanged, not sent again`);
      assert.equal(await again.text(), '');
      const head = await fetch(h.url + p, { method: 'HEAD' });
      assert.equal(head.status, 200);
      assert.equal(head.headers.get('content-type'), type);
      assert.equal(await head.text(), '');
      const post = await call(h.url, 'POST', p, { body: {} });
      assert.equal(post.status, 405, p);
      assert.equal(post.headers.get('allow'), 'GET, HEAD');
    }
    // The CSP: this origin only, no inline code, no framing, Trusted Types.
    for (const d of ["default-src 'self'", "script-src 'self'", "style-src 'self'", "connect-src 'self'", "object-src 'none'", "frame-ancestors 'none'", "require-trusted-types-for 'script'"]) {
      assert.ok(DASHBOARD_CSP.split('; ').includes(d), d);
    }
    assert.doesNotMatch(DASHBOARD_CSP, /unsafe|https?:|\*/);

    // The page references only its own files, relatively, and nothing on another host.
    const html = readFileSync(path.join(REPO, 'web/index.html'), 'utf8');
    assert.doesNotMatch(html, /<script(?![^>]*\bsrc="app\.js")[^>]*>/, 'no inline script');
    assert.doesNotMatch(html, /<style|\sstyle=|\son[a-z]+=/i, 'no inline style or handler');
    for (const f of ['index.html', 'app.js', 'style.css', 'favicon.svg']) {
      const text = readFileSync(path.join(REPO, 'web', f), 'utf8');
      assert.doesNotMatch(text.replace(/http:\/\/www\.w3\.org\/2000\/svg/g, ''), /https?:\/\/|\/\/[a-z0-9-]+\.[a-z]{2,}\//i, `${f} loads nothing from elsewhere`);
    }
    assert.doesNotMatch(readFileSync(path.join(REPO, 'web/app.js'), 'utf8'), /\.(innerHTML|outerHTML)\s*[+]?=|insertAdjacentHTML\(|document\.write(ln)?\(|createContextualFragment|DOMParser/, 'app.js never builds HTML from strings');

    // Nothing else of the package (or the system) is reachable, however the path is spelled.
    for (const target of ['/../package.json', '/%2e%2e/package.json', '/web/app.js', '/index.html', '/app.js/../../package.json', '/%2e%2e%2fsrc%2fdaemon.ts', '/..%2f..%2fetc%2fpasswd', '/style.css%00.js', '/config/config.default.json', '/README.md']) {
      const r = await rawGet(h.url, target);
      assert.ok(r.status === 404 || r.status === 400, `${target}: ${r.status}`);
      assert.doesNotMatch(r.body, /"name":\s*"tsfilter"|root:x:0|export async function startDaemon|"settings"/, target);
    }
    // The API is untouched beside it.
    assert.equal((await call(h.url, 'GET', '/api')).status, 200);
    assert.equal((await call(h.url, 'GET', '/nope')).json.error, 'not found: GET /nope');
  });
});

test('api.dashboard: on by default, and false serves no dashboard while the API keeps working', { timeout: 60_000 }, async () => {
  assert.equal(apiSettings(apiSchema.parse({}), '/etc/tsfilter')!.dashboard, true);
  assert.equal(apiSettings(apiSchema.parse({ dashboard: false }), '/etc/tsfilter')!.dashboard, false);
  assert.equal(apiSchema.safeParse({ dashboard: 'yes' }).success, false);
  await withHarness({ api: { dashboard: false } }, async (h) => {
    for (const p of ['/', '/app.js', '/style.css']) {
      const r = await call(h.url, 'GET', p);
      assert.equal(r.status, 404, p);
      assert.equal(r.headers.get('content-security-policy'), null);
    }
    assert.equal((await call(h.url, 'GET', '/api/stats', { token: TOKEN })).status, 200);
  });
});
