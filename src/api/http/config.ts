/*
 * The `api` block of the config: the HTTP API, the Prometheus /metrics endpoint and the dashboard. Absent, or
 * `"enabled": false`, nothing listens. It binds to loopback unless told otherwise, and writes (ban, unban) need a
 * bearer token from `token` or a root-only `token_file`; with a token configured, reads need it too unless
 * `read_requires_token` is false.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { closeSync, fstatSync, openSync, readFileSync, constants as fsc } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { z } from 'zod';

/** A token shorter than this is refused: the API may be reachable from other hosts. */
export const MIN_TOKEN_CHARS = 16;
const MAX_TOKEN_CHARS = 4096;

export interface Listen {
  host: string;
  port: number;
}

/**
 * "127.0.0.1:9707", "[::1]:9707", "0.0.0.0:9707", "[::]:9707". Only IP literals: a name would need DNS at start and
 * could resolve to something else than the operator meant.
 */
export function parseListen(text: string): Listen {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([0-9.]+)):(\d{1,5})$/.exec(text.trim());
  if (!m) throw new Error(`expected host:port with an IP address, e.g. "127.0.0.1:9707" or "[::1]:9707", got ${JSON.stringify(text.slice(0, 100))}`);
  const host = m[1] ?? m[2]!;
  if (m[1] !== undefined ? net.isIPv6(host) === false : net.isIPv4(host) === false) {
    throw new Error(`${JSON.stringify(host)} is not an IP${m[1] !== undefined ? 'v6' : 'v4'} address (IPv6 goes in brackets: "[::1]:9707")`);
  }
  const port = Number(m[3]);
  if (port > 65535) throw new Error(`port ${port} is out of range (0-65535)`);
  return { host, port };
}

const token = z
  .string()
  .min(MIN_TOKEN_CHARS, { error: `expected a token of at least ${MIN_TOKEN_CHARS} characters (e.g. from \`openssl rand -hex 32\`)` })
  .max(MAX_TOKEN_CHARS)
  .regex(/^[\x21-\x7e]+$/, { error: 'expected printable ASCII without spaces (it is sent in an Authorization header)' });

const apiObject = z.strictObject({
  enabled: z.boolean().default(true).describe('Set false to keep the block without starting the HTTP API.'),
  listen: z
    .string()
    .default('127.0.0.1:9707')
    .superRefine((s, ctx) => {
      try {
        parseListen(s);
      } catch (e) {
        ctx.addIssue({ code: 'custom', message: (e as Error).message });
      }
    })
    .describe('Address and port of the HTTP API, /metrics and the dashboard: an IP literal, "[::1]:9707" for IPv6. Loopback by default; anything else exposes the API to the network.'),
  token: token
    .nullable()
    .default(null)
    .describe(`Bearer token for writes (ban, unban) and, unless read_requires_token is false, reads; at least ${MIN_TOKEN_CHARS} characters. Prefer token_file, which keeps it out of the config. Without a token writes are disabled and reads are open.`),
  token_file: z
    .string()
    .min(1)
    .nullable()
    .default(null)
    .describe('File holding the bearer token (surrounding whitespace ignored). It must be readable by its owner only (chmod 600), or the daemon refuses to start.'),
  read_requires_token: z
    .boolean()
    .nullable()
    .default(null)
    .describe(
      'Require the token for reads too (status, bans, explain, stats, events, /metrics). null (the default): required whenever token or token_file is set; false: reads are open to anyone who can reach the API. With no token at all reads are open, so every local user can read the log lines behind each ban, copied from root-only logs (user names tried, sometimes a password typed as one): set a token_file.',
    ),
  metrics: z.boolean().default(true).describe('Serve Prometheus metrics at /metrics.'),
  dashboard: z
    .boolean()
    .default(true)
    .describe('Serve the web dashboard at / (totals, charts, live bans, search, an address\'s story; ban and unban with the token). Its files come from the package itself: nothing is loaded from the internet.'),
  allowed_hosts: z
    .array(z.string().min(1).max(253).regex(/^[A-Za-z0-9.-]+$/, { error: 'expected a host name' }))
    .default([])
    .describe('Host names the API answers to besides IP addresses and "localhost" (a request with another Host header is refused, which defeats DNS rebinding); add the name you reach the dashboard by.'),
  max_body_bytes: z.number().int().min(256).max(1_048_576).default(16_384).describe('Larger request bodies are refused with 413.'),
  max_event_clients: z.number().int().min(1).max(10_000).default(64).describe('Live event streams (/api/events) open at once; more are refused with 503.'),
  heartbeat_interval: z.number().min(1).max(300).default(15).describe('Seconds between heartbeat comments on /api/events, so proxies keep the stream open.'),
});

/**
 * The `api` block as it goes into src/config/schema.ts: `api: apiSchema` (it is optional there, so an absent block
 * means no API).
 */
export const apiSchema = apiObject
  .superRefine((a, ctx) => {
    if (a.token !== null && a.token_file !== null) ctx.addIssue({ code: 'custom', path: ['token_file'], message: 'give token or token_file, not both' });
    if (a.read_requires_token === true && a.token === null && a.token_file === null) {
      ctx.addIssue({ code: 'custom', path: ['read_requires_token'], message: 'read_requires_token needs a token or token_file' });
    }
  })
  .optional()
  .describe('The HTTP API, Prometheus metrics and the dashboard. Absent (the default) or enabled: false, nothing listens.');

export type RawApiConfig = z.infer<typeof apiObject>;

/** The validated settings startHttpApi() takes. */
export interface ApiSettings {
  listen: Listen;
  /** The token itself, or null. */
  token: string | null;
  /** Absolute path, or null. */
  tokenFile: string | null;
  /** Resolved: read_requires_token, or, when it is null, whether a token is configured. */
  readRequiresToken: boolean;
  metrics: boolean;
  /** Serve the web dashboard at /. */
  dashboard: boolean;
  allowedHosts: string[];
  maxBodyBytes: number;
  maxEventClients: number;
  heartbeatMs: number;
}

/** null when the API is off. Relative token_file paths are taken from `cwd`, as the other paths of the config. */
export function apiSettings(raw: RawApiConfig | undefined, cwd: string): ApiSettings | null {
  if (raw === undefined || !raw.enabled) return null;
  return {
    listen: parseListen(raw.listen),
    token: raw.token,
    tokenFile: raw.token_file === null ? null : path.resolve(cwd, raw.token_file),
    // The explain story holds raw lines of root-only logs: with a token at hand, reads are the token's too.
    readRequiresToken: raw.read_requires_token ?? (raw.token !== null || raw.token_file !== null),
    metrics: raw.metrics,
    dashboard: raw.dashboard,
    allowedHosts: raw.allowed_hosts.map((h) => h.toLowerCase()),
    maxBodyBytes: raw.max_body_bytes,
    maxEventClients: raw.max_event_clients,
    heartbeatMs: Math.round(raw.heartbeat_interval * 1000),
  };
}

/**
 * Reads the token file, refusing one that others could read or change (as ssh refuses a private key with loose
 * permissions): it must be a regular file owned by us or root with no group or other permission bits.
 */
export function readTokenFile(file: string): string {
  let fd: number;
  try {
    // O_NOFOLLOW: a symlink planted at the path cannot point us at another file; the checks below run on what we read.
    fd = openSync(file, fsc.O_RDONLY | fsc.O_NOFOLLOW);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'does not exist' : code === 'ELOOP' ? 'is a symbolic link (point api.token_file at the file itself)' : (e as Error).message;
    throw new Error(`api.token_file ${file}: ${why}`);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new Error(`api.token_file ${file}: not a regular file`);
    const uid = process.getuid?.() ?? 0;
    if (st.uid !== uid && st.uid !== 0) throw new Error(`api.token_file ${file}: owned by uid ${st.uid}; it must belong to root or to the daemon's user (uid ${uid})`);
    if ((st.mode & 0o077) !== 0) {
      throw new Error(
        `api.token_file ${file}: permissions ${(st.mode & 0o777).toString(8).padStart(4, '0')} are too open; ` +
          `it must be readable by its owner only: chmod 600 ${file}`,
      );
    }
    if (st.size > MAX_TOKEN_CHARS + 64) throw new Error(`api.token_file ${file}: too large for a token (${st.size} bytes)`);
    const text = readFileSync(fd, 'utf8').trim();
    const r = token.safeParse(text);
    if (!r.success) throw new Error(`api.token_file ${file}: ${r.error.issues[0]?.message ?? 'not a usable token'}`);
    return text;
  } finally {
    closeSync(fd);
  }
}

/** The token in force: from the config or the token file; null when none is configured (writes disabled). */
export function loadToken(s: Pick<ApiSettings, 'token' | 'tokenFile'>): string | null {
  if (s.tokenFile !== null) return readTokenFile(s.tokenFile);
  return s.token;
}

/**
 * Compares a presented token with the configured one in constant time: both are hashed first, so neither the
 * length nor any prefix of the real token can be learned from timing.
 */
export function tokenMatches(presented: string, expected: string): boolean {
  const a = createHash('sha256').update(presented, 'utf8').digest();
  const b = createHash('sha256').update(expected, 'utf8').digest();
  return timingSafeEqual(a, b);
}
