/*
 * The read-only queries behind GET /api/bans and /api/bans/:ip/explain. Each is one indexed SQL query with a LIMIT:
 * nothing loads the whole bans table, so they stay fast with 100,000 bans.
 *
 * "Active" means what the store means (and `tsfilter list` shows): not ended, and permanent or not yet expired; an
 * address with several open rows (duplicate PyFilter rows) counts once, by its oldest row.
 */
import { explained, isActive, isoTime, toListed, type ExplainedBan, type ListedBan } from '../protocol.ts';
import { canonicalTarget, targetContains } from '../../firewall/target.ts';
import { toStored, type BanRow, type StoredBan } from '../../store/sqlite-store.ts';
import type { ReadDb } from './read-db.ts';

export const BAN_STATES = ['active', 'ended', 'all'] as const;
export type BanState = (typeof BAN_STATES)[number];

export interface BanFilter {
  state: BanState;
  rule?: string;
  /** An ISO 3166 code ("GB", matched against country_code) or a country name (case-insensitive). */
  country?: string;
  node?: string;
  origin?: string;
  /** created_at range, ms since the epoch, inclusive. */
  since?: number;
  until?: number;
  /** An exact address or prefix (normalised). */
  ip?: string;
  /** The start of an address as typed ("203.0.113.", "2001:db8:"). */
  q?: string;
}

/** Where the next page starts: after this row, in the list's order. */
export interface Cursor {
  id: number;
}

/** A ban as GET /api/bans shows it: `tsfilter list --json`'s object plus its row id and how it ended. */
export interface ApiBan extends ListedBan {
  id: number;
  active: boolean;
  ended: string | null;
  end_reason: string | null;
}

/** SQL for "a row of bans (alias `t`) is active at ?now" — one parameter. */
export const activeOf = (t: string) => `${t}.ended_at IS NULL AND (${t}.expires_at IS NULL OR ${t}.expires_at > ?)`;
/**
 * SQL for "no older active row of the same address" (one parameter): an address counts once, by its oldest active
 * row, as `tsfilter list` shows it.
 */
export const noOlderActive = (t: string) => `NOT EXISTS (SELECT 1 FROM bans c WHERE c.ip = ${t}.ip AND ${activeOf('c')} AND c.id < ${t}.id)`;

const ACTIVE = activeOf('b');
/** ... and the oldest active row of its address (two parameters). */
const ACTIVE_FIRST = `${ACTIVE} AND ${noOlderActive('b')}`;

export function toApiBan(b: StoredBan, now: number): ApiBan {
  return {
    ...toListed(b),
    id: b.id,
    active: isActive(b, now),
    ended: b.endedAt === null ? null : isoTime(b.endedAt),
    end_reason: b.endReason,
  };
}

function where(rdb: ReadDb, f: BanFilter, now: number): { sql: string; params: unknown[] } {
  const parts: string[] = [];
  const params: unknown[] = [];
  if (f.state === 'active') {
    parts.push(ACTIVE_FIRST);
    params.push(now, now);
  } else if (f.state === 'ended') {
    parts.push(`NOT (${ACTIVE})`);
    params.push(now);
  }
  const eq = (col: string, v: string | undefined) => {
    if (v === undefined) return;
    parts.push(`b.${col} = ?`);
    params.push(v);
  };
  eq('rule', f.rule);
  eq('server', f.node);
  eq('origin', f.origin);
  eq('ip', f.ip);
  if (f.country !== undefined) {
    if (/^[A-Za-z]{2}$/.test(f.country)) {
      // Rows before schema 4 and bans from PyFilter nodes hold only the name: a code also matches those whose name
      // other rows give that code, so the count agrees with the per-country figure of /api/stats (grouped by name).
      const code = f.country.toUpperCase();
      parts.push('(b.country_code = ? OR (b.country_code IS NULL AND b.country COLLATE NOCASE IN (SELECT n.country FROM bans n WHERE n.country_code = ?)))');
      params.push(code, code);
    } else {
      parts.push('b.country = ? COLLATE NOCASE');
      params.push(f.country);
    }
  }
  if (f.since !== undefined) {
    parts.push('b.created_at >= ?');
    params.push(f.since);
  }
  if (f.until !== undefined) {
    parts.push('b.created_at <= ?');
    params.push(f.until);
  }
  if (f.q !== undefined) {
    // A range on the ip index; addresses are stored lower-case. Text comparison is bytewise, and U+FFFF sorts after
    // every character an address can hold.
    parts.push('b.ip >= ? AND b.ip < ?');
    params.push(f.q, f.q + '\uffff');
  }
  return { sql: parts.length === 0 ? '1' : parts.join(' AND '), params };
}

export interface BanPage {
  bans: ApiBan[];
  /** How many bans match the filter (all pages). */
  total: number;
  /** Pass as ?cursor= for the next page; null on the last one. */
  next_cursor: string | null;
}

export function encodeCursor(c: Cursor): string {
  return Buffer.from(`r${c.id}`).toString('base64url');
}

/** null when the text is not a cursor this API made. */
export function decodeCursor(text: string): Cursor | null {
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(text)) return null;
  const m = /^r(\d{1,16})$/.exec(Buffer.from(text, 'base64url').toString('latin1'));
  if (!m) return null;
  const id = Number(m[1]);
  return Number.isSafeInteger(id) ? { id } : null;
}

/**
 * Answers derived from the ban table, kept while the bans do not change (`version`: the live feed's change count,
 * which an API write bumps at once) and for at most `ttlMs` (expiry moves the active set with the clock); at most
 * `max` keys, the oldest dropped first.
 */
export class VersionedCache<T> {
  private readonly m = new Map<string, { version: number; at: number; value: T }>();
  constructor(
    private readonly version: () => number,
    private readonly ttlMs: number,
    private readonly max: number,
    private readonly clock: () => number = Date.now,
  ) {}

  get(key: string, compute: (now: number) => T): T {
    const v = this.version();
    const now = this.clock();
    const hit = this.m.get(key);
    if (hit && hit.version === v && now - hit.at < this.ttlMs && now >= hit.at) return hit.value;
    const value = compute(now);
    this.m.delete(key);
    if (this.m.size >= this.max) this.m.delete(this.m.keys().next().value!);
    this.m.set(key, { version: v, at: now, value });
    return value;
  }
}

/** Totals of recent filters: paging through a list counts its total once. */
export class TotalCache extends VersionedCache<number> {
  constructor(version: () => number, clock: () => number = Date.now) {
    super(version, 2000, 64, clock);
  }
}

/** Newest first (by the ban's time, then its row). Either a cursor (keyset, fast at any depth) or an offset. */
export function listBans(
  rdb: ReadDb,
  f: BanFilter,
  page: { limit: number; cursor?: Cursor; offset?: number },
  now: number,
  totals?: TotalCache,
): BanPage {
  const w = where(rdb, f, now);
  let sql = `SELECT ${rdb.columns} FROM bans b WHERE ${w.sql}`;
  const params = [...w.params];
  if (page.cursor) {
    // The row's own sort key, read by SQL: a row another tool wrote may hold any value in created_at (a number past
    // every date, text), which would not survive a trip through the cursor's text and back.
    sql += ' AND (b.created_at, b.id) < (SELECT k.created_at, k.id FROM bans k WHERE k.id = ?)';
    params.push(page.cursor.id);
  }
  // One row more than asked tells whether there is a next page without a second query.
  sql += ' ORDER BY b.created_at DESC, b.id DESC LIMIT ? OFFSET ?';
  params.push(page.limit + 1, page.offset ?? 0);
  const rows = rdb.db.prepare(sql).all(...params) as BanRow[];
  const more = rows.length > page.limit;
  if (more) rows.pop();
  const count = () => rdb.db.prepare(`SELECT count(*) FROM bans b WHERE ${w.sql}`).pluck().get(...w.params) as number;
  const total = totals ? totals.get(JSON.stringify(f), count) : count();
  const last = rows[rows.length - 1];
  return {
    bans: rows.map((r) => toApiBan(toStored(r), now)),
    total,
    next_cursor: more && last ? encodeCursor({ id: last.id }) : null,
  };
}

/**
 * `tsfilter explain IP --json`, from this connection: every ban of the address oldest first, and the active prefix
 * bans that cover it.
 */
export function explainIp(rdb: ReadDb, ip: string, now: number): { ip: string; bans: ExplainedBan[]; covered_by: string[] } {
  const rows = rdb.db.prepare(`SELECT ${rdb.columns} FROM bans b WHERE b.ip = ? ORDER BY b.created_at, b.id`).all(ip) as BanRow[];
  const bans = rows.map((r) => explained(toStored(r), now));
  const self = canonicalTarget(ip);
  let coveredBy: string[] = [];
  if (self && !self.isPrefix) {
    // Prefix bans are few; in the order `tsfilter list` has them (by their oldest active row).
    const prefixes = rdb.db
      .prepare(`SELECT b.ip, min(b.id) AS first FROM bans b WHERE ${ACTIVE} AND instr(b.ip, '/') > 0 GROUP BY b.ip ORDER BY first`)
      .pluck()
      .all(now) as string[];
    coveredBy = prefixes.filter((p) => {
      const t = canonicalTarget(p);
      return t !== null && targetContains(t, ip);
    });
  }
  return { ip, bans, covered_by: coveredBy };
}
