/*
 * The web dashboard: a fixed set of static files from the package's web/ folder (HTML, one JS module, CSS, an icon),
 * served at / by the HTTP API's server. The page reads the same JSON endpoints as everyone else (/api/...), so it
 * shows what the CLI shows. Nothing is fetched from elsewhere: servers often have no internet, and the page's
 * Content-Security-Policy forbids it anyway.
 *
 * Only the paths in FILES are served: no path from the request ever reaches the file system, so nothing outside
 * web/ can be read whatever the URL holds. The page routes with the URL's fragment (#/ip/203.0.113.7), which never
 * reaches the server.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { Env, Hono } from 'hono';
import type { Logger } from '../../util/logger.ts';

/**
 * The package's web/ folder: this module is src/api/http/dashboard.ts under tsx and dist/api/http/dashboard.js once
 * built, three levels below the package root either way.
 */
export const WEB_DIR = fileURLToPath(new URL('../../../web/', import.meta.url));

/** URL path -> file in web/ and its type. */
const FILES: Record<string, { file: string; type: string }> = {
  '/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/app.js': { file: 'app.js', type: 'text/javascript; charset=utf-8' },
  '/style.css': { file: 'style.css', type: 'text/css; charset=utf-8' },
  '/favicon.svg': { file: 'favicon.svg', type: 'image/svg+xml' },
};

/**
 * Scripts, styles, images and connections from this origin only; no inline script or style, no plugins, no <base>,
 * no framing, no form posted anywhere. Trusted Types make any assignment of a string to innerHTML (or another HTML
 * sink) throw: the page puts API values in as text, and the browser enforces it.
 */
export const DASHBOARD_CSP = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self'",
  "connect-src 'self'",
  "font-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
  "require-trusted-types-for 'script'",
  'trusted-types',
].join('; ');

interface Loaded {
  body: Uint8Array<ArrayBuffer>;
  type: string;
  etag: string;
}

/** The files, read once at start: an upgrade of the package on disk does not mix new pages with a running old daemon. */
function load(dir: string): { files: Map<string, Loaded>; missing: string[] } {
  const files = new Map<string, Loaded>();
  const missing: string[] = [];
  for (const [urlPath, { file, type }] of Object.entries(FILES)) {
    try {
      const body = readFileSync(dir + file);
      const etag = `"${createHash('sha256').update(body).digest('base64url').slice(0, 22)}"`;
      files.set(urlPath, { body: new Uint8Array(body), type, etag });
    } catch {
      missing.push(file);
    }
  }
  return { files, missing };
}

/** Registers GET (and HEAD) routes for the dashboard's files on the API's app, and 405 for other methods on them. */
export function mountDashboard<E extends Env>(app: Hono<E>, o: { logger: Logger; dir?: string }): void {
  const dir = o.dir ?? WEB_DIR;
  const { files, missing } = load(dir);
  if (missing.length > 0) o.logger.warn('dashboard: files missing from the package; the dashboard is not served', { dir, missing: missing.join(',') });
  for (const urlPath of Object.keys(FILES)) {
    app.get(urlPath, (c) => {
      const f = files.get(urlPath);
      if (f === undefined || missing.length > 0) {
        return c.json({ error: `the dashboard's files are missing from ${dir} (${missing.join(', ')}): reinstall the package` }, 404);
      }
      const headers: Record<string, string> = {
        'content-type': f.type,
        'content-security-policy': DASHBOARD_CSP,
        // Revalidated every time (a 304 costs nothing), so a daemon upgrade is seen at the next load.
        'cache-control': 'no-cache',
        etag: f.etag,
        'cross-origin-opener-policy': 'same-origin',
        'cross-origin-resource-policy': 'same-origin',
      };
      const inm = c.req.header('if-none-match');
      if (inm !== undefined && inm.split(',').some((t) => t.trim() === f.etag)) return c.body(null, 304, headers);
      return c.body(f.body, 200, headers);
    });
    app.all(urlPath, (c) => c.json({ error: `method ${c.req.method.slice(0, 20)} not allowed on ${c.req.path.slice(0, 200)}; allowed: GET, HEAD` }, 405, { allow: 'GET, HEAD' }));
  }
}
