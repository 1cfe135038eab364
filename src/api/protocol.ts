/*
 * The control socket's protocol: one JSON request per line, one JSON response per line.
 *
 *   {"cmd":"ban","ip":"192.0.2.7","duration":3600,"reason":"manual"}   duration: seconds, null = permanent,
 *                                                                        absent = ban_time with escalation
 *   {"cmd":"unban","ip":"192.0.2.7"}  |  {"cmd":"unban","all":true}
 *   {"cmd":"list"}
 *   {"cmd":"status"}
 *
 * Responses: {"ok":true,...} or {"ok":false,"error":"...","kind":"usage"|"runtime"}. "usage" errors are the caller's
 * (bad request, invalid or refused address): the CLI exits 2 for them, 1 for "runtime" ones.
 */
import { normalizeSource } from '../firewall/target.ts';
import { formatScope } from '../firewall/port-scope.ts';
import { MAX_BAN_SECONDS } from '../bans/duration.ts';
import type { BanRecord } from '../store/types.ts';
import { MAX_TIME_MS, type StoredBan } from '../store/sqlite-store.ts';

/** Longest request line accepted; a longer one is answered with an error and the connection closed. */
export const MAX_REQUEST_BYTES = 64 * 1024;
/** Longest reason kept. */
export const MAX_REASON_CHARS = 500;

export type Request =
  | { cmd: 'ban'; ip: string; duration?: number | null; reason?: string }
  | { cmd: 'unban'; ip: string }
  | { cmd: 'unban'; all: true }
  | { cmd: 'list' }
  | { cmd: 'status' };

export type ErrorKind = 'usage' | 'runtime';
export type ErrorResponse = { ok: false; error: string; kind: ErrorKind };
export type OkResponse = { ok: true; [key: string]: unknown };
export type Response = OkResponse | ErrorResponse;

/** An error that is the requester's fault (exit code 2 in the CLI). */
export class UsageProblem extends Error {
  readonly kind = 'usage' as const;
}

export function errorResponse(e: unknown): ErrorResponse {
  if (e instanceof Error && (e as { kind?: unknown }).kind === 'usage') return { ok: false, error: e.message, kind: 'usage' };
  return { ok: false, error: e instanceof Error ? e.message : String(e), kind: 'runtime' };
}

/** A normalised IP address or CIDR prefix ("2001:db8:1::/64"), or a UsageProblem saying why the text is neither. */
export function parseIp(v: unknown): string {
  if (typeof v !== 'string' || v === '') throw new UsageProblem('"ip" must be an IP address or CIDR prefix');
  const ip = normalizeSource(v.trim());
  if (ip === null) {
    const shown = JSON.stringify(v.slice(0, 100));
    throw new UsageProblem(`${shown} is not an IP address or CIDR prefix (e.g. 192.0.2.7, 198.51.100.0/24, 2001:db8:1::/64)`);
  }
  return ip;
}

const KEYS: Record<string, readonly string[]> = {
  ban: ['cmd', 'ip', 'duration', 'reason'],
  unban: ['cmd', 'ip', 'all'],
  list: ['cmd'],
  status: ['cmd'],
};

/** Parses and validates one request line; throws a UsageProblem naming what is wrong. */
export function parseRequest(line: string): Request {
  let v: unknown;
  try {
    v = JSON.parse(line);
  } catch {
    throw new UsageProblem('malformed request: not JSON (one JSON object per line)');
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new UsageProblem('malformed request: expected a JSON object');
  const o = v as Record<string, unknown>;
  const cmd = o.cmd;
  if (typeof cmd !== 'string' || !Object.hasOwn(KEYS, cmd)) {
    throw new UsageProblem(`unknown command ${JSON.stringify(typeof cmd === 'string' ? cmd.slice(0, 40) : cmd ?? null)}; expected one of ${Object.keys(KEYS).join(', ')}`);
  }
  for (const k of Object.keys(o)) {
    if (!KEYS[cmd]!.includes(k)) throw new UsageProblem(`${cmd}: unknown field ${JSON.stringify(k.slice(0, 40))}`);
  }
  switch (cmd) {
    case 'ban': {
      const ip = parseIp(o.ip);
      const req: Request = { cmd, ip };
      if (o.duration !== undefined) {
        const d = o.duration;
        if (d !== null && !(typeof d === 'number' && Number.isInteger(d) && d > 0 && d <= MAX_BAN_SECONDS)) {
          throw new UsageProblem(`ban: "duration" must be a whole number of seconds from 1 to ${MAX_BAN_SECONDS}, or null for permanent`);
        }
        req.duration = d;
      }
      if (o.reason !== undefined) {
        if (typeof o.reason !== 'string') throw new UsageProblem('ban: "reason" must be a string');
        req.reason = o.reason.slice(0, MAX_REASON_CHARS);
      }
      return req;
    }
    case 'unban':
      if (o.all !== undefined) {
        if (o.all !== true || o.ip !== undefined) throw new UsageProblem('unban: give either "ip" or "all": true');
        return { cmd, all: true };
      }
      return { cmd, ip: parseIp(o.ip) };
    case 'list':
      return { cmd };
    default:
      return { cmd: 'status' };
  }
}

const UNITS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400, w: 604800 };

/**
 * `--duration`: seconds ("3600"), with a unit ("30s", "10m", "12h", "7d", "2w"), or "permanent".
 * Returns seconds, or null for permanent. Zero and negative values are refused (say "permanent").
 */
export function parseDuration(text: string): number | null {
  const t = text.trim().toLowerCase();
  if (t === 'permanent' || t === 'perm' || t === 'forever') return null;
  const m = /^(\d{1,12})([smhdw]?)$/.exec(t);
  if (!m) {
    throw new UsageProblem(`invalid duration ${JSON.stringify(text)}: use seconds (3600), a number with s/m/h/d/w (30s, 10m, 12h, 7d) or "permanent"`);
  }
  const seconds = Number(m[1]) * UNITS[m[2] || 's']!;
  if (seconds <= 0) throw new UsageProblem(`invalid duration ${JSON.stringify(text)}: must be more than 0 (for a permanent ban say "permanent")`);
  if (seconds > MAX_BAN_SECONDS) throw new UsageProblem(`invalid duration ${JSON.stringify(text)}: at most ${MAX_BAN_SECONDS} s (100 years); say "permanent"`);
  return seconds;
}

/** A stored time brought into the range the views show (see isoTime), in ms. */
export function clampTime(ms: unknown): number {
  // What the store's own import does with a time it cannot read (a PyFilter time_banned that is not a number).
  if (typeof ms !== 'number' || !Number.isFinite(ms)) return 0;
  return Math.min(Math.max(ms, 0), MAX_TIME_MS);
}

/**
 * A stored time as ISO 8601, never throwing. The store refuses times outside 1970 to 9999, but rows it did not write
 * (PyFilter's time_banned * 1000, edited by another tool) can hold anything, and Date.toISOString() throws past the
 * year 275760: one such row must not fail a whole list, an explain or the live feed. Such a time is shown clamped
 * to that range (a huge expiry reads as 9999-12-31T23:59:59.999Z: practically never), so every field keeps its type.
 */
export function isoTime(ms: unknown): string {
  return new Date(clampTime(ms)).toISOString();
}

/** A ban as `list` returns it. Times are ISO 8601; expires null means permanent. */
export interface ListedBan {
  ip: string;
  rule: string;
  reason: string;
  since: string;
  expires: string | null;
  ban_count: number;
  /** English name, as PyFilter records it. */
  country: string | null;
  /** ISO 3166-1 alpha-2, e.g. "GB". */
  country_code: string | null;
  origin: string;
  failures: number;
  /** "tcp:22,443" when only those ports are blocked; "all" otherwise. */
  blocks: string;
  /** The node (redis.sync_bans.name) that made the ban. */
  node: string;
}

export function toListed(b: BanRecord): ListedBan {
  return {
    ip: b.ip,
    rule: b.rule,
    reason: b.reason,
    since: isoTime(b.createdAt),
    expires: b.expiresAt === null ? null : isoTime(b.expiresAt),
    ban_count: b.banCount,
    country: b.country ?? null,
    country_code: b.countryCode ?? null,
    origin: b.origin,
    failures: b.failures,
    blocks: formatScope(b.scope) ?? 'all',
    node: b.server,
  };
}

/** One ban of `tsfilter explain --json` and GET /api/bans/:ip/explain. */
export interface ExplainedBan {
  ip: string;
  ban_count: number;
  rule: string;
  origin: string;
  node: string;
  country: string | null;
  country_code: string | null;
  since: string;
  expires: string | null;
  /** Seconds the ban was set to last; null: permanent. Growing from one ban to the next: escalation. */
  duration_s: number | null;
  ended: string | null;
  end_reason: string | null;
  active: boolean;
  blocks: string;
  failures: number;
  reason: string;
  lines: string[];
}


/** Whether a stored ban is in force at `now`: not ended, and permanent or not yet expired. */
export function isActive(b: Pick<StoredBan, 'endedAt' | 'expiresAt'>, now: number): boolean {
  return b.endedAt === null && (b.expiresAt === null || b.expiresAt > now);
}
export function explained(b: StoredBan, now: number): ExplainedBan {
  return {
    ip: b.ip,
    ban_count: b.banCount,
    rule: b.rule,
    origin: b.origin,
    node: b.server,
    country: b.country ?? null,
    country_code: b.countryCode ?? null,
    since: isoTime(b.createdAt),
    expires: b.expiresAt === null ? null : isoTime(b.expiresAt),
    // From the times shown, so the three always agree.
    duration_s: b.expiresAt === null ? null : Math.round((clampTime(b.expiresAt) - clampTime(b.createdAt)) / 1000),
    ended: b.endedAt === null ? null : isoTime(b.endedAt),
    end_reason: b.endReason,
    active: isActive(b, now),
    blocks: formatScope(b.scope) ?? 'all',
    failures: b.failures,
    reason: b.reason,
    lines: b.lines ?? [],
  };
}
