import { normalizeSource } from '../firewall/target.ts';
import type { PortScope } from '../firewall/types.ts';
import { MAX_BAN_SECONDS } from '../bans/duration.ts';
import { MAX_TIME_MS } from './sqlite-store.ts';

/** One change to the fleet's bans, as it travels between nodes. Times are ms since the epoch. */
export interface FleetEvent {
  v: 1;
  kind: 'ban' | 'unban';
  /** Canonical address or prefix. */
  ip: string;
  /** The node where the change happened (redis.sync_bans.name). */
  node: string;
  /** When it happened, on that node's clock: of two changes to one address, the later wins. */
  at: number;
  rule?: string;
  reason?: string;
  createdAt?: number;
  /** null: permanent. */
  expiresAt?: number | null;
  scope?: PortScope | null;
  country?: string | null;
  /** ISO 3166-1 alpha-2; absent from older nodes and PyFilter's schema. */
  countryCode?: string | null;
}

const NAME = /^[^\u0000-\u001f\u007f]{1,200}$/;

/**
 * How far an expiry may lie past its ban's creation: the longest ban (100 years) plus a day for the sending node's
 * own rounding and clock. Anything later is no ban this code makes; "permanent" is null.
 */
const MAX_EXPIRY_AFTER_MS = MAX_BAN_SECONDS * 1000 + 86_400_000;

/** A time in ms the store can hold and every view can render: after 1970, not after the year 9999. */
function isTime(v: unknown): v is number {
  return typeof v === 'number' && Number.isFinite(v) && v > 0 && v <= MAX_TIME_MS;
}
const TIME_RANGE = `a time in ms after 1970 and not after the year 9999 (at most ${MAX_TIME_MS})`;

/**
 * Parses an event from the wire. Everything in Redis may have been written by a broken or hostile node: the size is
 * capped, every field is checked, and what is not understood is refused with the reason (never thrown).
 */
export function parseEvent(text: string, maxBytes: number): { event: FleetEvent } | { error: string } {
  if (Buffer.byteLength(text, 'utf8') > maxBytes) return { error: `event larger than ${maxBytes} bytes (redis.max_event_bytes)` };
  let j: Record<string, unknown>;
  try {
    const v = JSON.parse(text) as unknown;
    if (v === null || typeof v !== 'object' || Array.isArray(v)) return { error: 'not a JSON object' };
    j = v as Record<string, unknown>;
  } catch {
    return { error: 'not JSON' };
  }
  if (j.v !== 1) return { error: `unknown event version ${JSON.stringify(j.v)?.slice(0, 20)}` };
  if (j.kind !== 'ban' && j.kind !== 'unban') return { error: 'kind must be "ban" or "unban"' };
  const ip = typeof j.ip === 'string' ? normalizeSource(j.ip) : null;
  if (ip === null) return { error: 'ip is not an IP address or CIDR prefix' };
  if (typeof j.node !== 'string' || !NAME.test(j.node)) return { error: 'node must be a name of 1-200 printable characters' };
  if (!isTime(j.at)) return { error: `at must be ${TIME_RANGE}` };
  const ev: FleetEvent = { v: 1, kind: j.kind, ip, node: j.node, at: j.at };
  if (j.kind === 'unban') return { event: ev };
  if (typeof j.rule !== 'string' || j.rule.length > 100) return { error: 'rule must be a string of at most 100 characters' };
  if (typeof j.reason !== 'string' || j.reason.length > 2000) return { error: 'reason must be a string of at most 2000 characters' };
  if (!isTime(j.createdAt)) return { error: `createdAt must be ${TIME_RANGE}` };
  if (j.expiresAt !== null && !isTime(j.expiresAt)) return { error: `expiresAt must be null (permanent) or ${TIME_RANGE}` };
  if (j.expiresAt !== null && j.expiresAt - j.createdAt > MAX_EXPIRY_AFTER_MS) {
    return { error: `expiresAt lies more than ${MAX_BAN_SECONDS} s (100 years, the longest ban) after createdAt` };
  }
  if (j.country !== undefined && j.country !== null && (typeof j.country !== 'string' || j.country.length > 100)) return { error: 'country must be a short string or null' };
  if (j.countryCode !== undefined && j.countryCode !== null && (typeof j.countryCode !== 'string' || !/^[A-Z]{2}$/.test(j.countryCode))) {
    return { error: 'countryCode must be an ISO 3166-1 alpha-2 code or null' };
  }
  let scope: PortScope | null = null;
  if (j.scope !== undefined && j.scope !== null) {
    const sc = j.scope as { protocol?: unknown; ports?: unknown };
    const ports = sc.ports;
    if (
      (sc.protocol !== 'tcp' && sc.protocol !== 'udp') ||
      !Array.isArray(ports) ||
      ports.length === 0 ||
      ports.length > 15 ||
      ports.some((p) => !Number.isInteger(p) || (p as number) < 1 || (p as number) > 65535)
    ) {
      return { error: 'scope must be { protocol: "tcp" | "udp", ports: [1-15 ports] }' };
    }
    scope = { protocol: sc.protocol, ports: [...new Set(ports as number[])].sort((a, b) => a - b) };
  }
  Object.assign(ev, { rule: j.rule, reason: j.reason, createdAt: j.createdAt, expiresAt: j.expiresAt, scope, country: (j.country as string | null | undefined) ?? null, countryCode: (j.countryCode as string | null | undefined) ?? null });
  return { event: ev };
}

/**
 * How a schema talks to Redis. Both are written as the Redis commands they are (src/store/redis-connect.ts).
 *  - publish: this node's change, durable in Redis before it resolves.
 *  - listen: wake-ups when other nodes publish (pub/sub: a message may be lost; pull() never loses an event).
 *  - pull(full): other nodes' changes since the last commit; full also resyncs everything (start, reconnect,
 *    check_time). commit() runs inside the store transaction that applies them (the cursor); after() runs once it
 *    committed (PyFilter's "seen here" field).
 */
export interface WireSchema {
  readonly name: 'tsfilter' | 'pyfilter';
  publish(ev: FleetEvent): Promise<void>;
  listen(onWake: () => void): Promise<void>;
  pull(full: boolean): Promise<{ events: FleetEvent[]; rejected: string[]; commit(): void; after(): Promise<void>; more: boolean }>;
}
