/*
 * GET /api/stats: what a dashboard draws. A few GROUP BY queries over the bans table (about 0.1 s with 100,000 bans),
 * so the answer is cached until a ban is made or ends, or CACHE_MS pass (the hour and day buckets move with the
 * clock).
 */
import type { ReadDb } from './read-db.ts';
import { isoTime } from '../protocol.ts';
import { activeOf, noOlderActive, VersionedCache } from './queries.ts';

const HOUR = 3_600_000;
const DAY = 86_400_000;
const CACHE_MS = 30_000;
const TOP = 10;

export interface Stats {
  generated: string;
  totals: {
    /** Active bans (as `tsfilter list` counts them). */
    active: number;
    /** Bans ever recorded. */
    bans: number;
    /** Distinct addresses and prefixes ever banned. */
    addresses: number;
    last_24h: number;
  };
  /** The last 48 hours (UTC), oldest first, the current hour last; by when each ban was made. */
  per_hour: { start: string; bans: number }[];
  /** The last 30 days (UTC), oldest first, today last. */
  per_day: { start: string; bans: number }[];
  by_rule: { rule: string; active: number; total: number }[];
  /** country null: unknown (no GeoIP database, or an address it does not know). */
  by_country: { country: string | null; code: string | null; active: number; total: number }[];
  by_origin: { origin: string; active: number; total: number }[];
  /** The addresses banned most often. */
  top_offenders: { ip: string; bans: number; last: string; active: boolean; country: string | null }[];
}

function buckets(rdb: ReadDb, size: number, count: number, now: number): { start: string; bans: number }[] {
  const first = Math.floor(now / size) * size - (count - 1) * size;
  const rows = rdb.db
    .prepare('SELECT CAST((created_at - ?) / ? AS INTEGER) AS k, count(*) AS n FROM bans WHERE created_at >= ? AND created_at < ? GROUP BY k')
    .all(first, size, first, first + count * size) as { k: number; n: number }[];
  const out = Array.from({ length: count }, (_, i) => ({ start: new Date(first + i * size).toISOString(), bans: 0 }));
  for (const r of rows) if (r.k >= 0 && r.k < count) out[r.k]!.bans = r.n;
  return out;
}


interface Group {
  rule: string;
  country: string | null;
  code: string | null;
  origin: string;
  total: number;
  active: number;
}

interface Sum {
  total: number;
  active: number;
  code: string | null;
  /** What the first group of the key called it (a key may fold several spellings). */
  name: string | null;
}

function sumBy<K>(groups: Group[], key: (g: Group) => K, name: (g: Group) => string | null = () => null): Map<K, Sum> {
  const m = new Map<K, Sum>();
  for (const g of groups) {
    const e = m.get(key(g)) ?? { total: 0, active: 0, code: null, name: name(g) };
    e.total += g.total;
    e.active += g.active;
    e.code ??= g.code;
    m.set(key(g), e);
  }
  return m;
}

const byTotal = <T extends { total: number }>(name: (x: T) => string) => (a: T, b: T) => b.total - a.total || name(a).localeCompare(name(b));

export function computeStats(rdb: ReadDb, now: number): Stats {
  const { db } = rdb;
  // One read transaction: every figure comes from the same snapshot of the store.
  return db.transaction(() => {
    // One pass over the table for every breakdown. "Active" counts an address once, by its oldest active row, as
    // `tsfilter list` and GET /api/bans do, so by_rule[x].active is the total of /api/bans?rule=x.
    const groups = db
      .prepare(
        `SELECT b.rule, b.country, max(b.country_code) AS code, b.origin, count(*) AS total,
           sum(CASE WHEN ${activeOf('b')} THEN ${noOlderActive('b')} ELSE 0 END) AS active
         FROM bans b GROUP BY b.rule, b.country COLLATE NOCASE, b.origin`,
      )
      .all(now, now) as Group[];
    const totals = db.prepare('SELECT count(DISTINCT ip) AS addresses, sum(created_at >= ?) AS day FROM bans').get(now - DAY) as { addresses: number; day: number | null };
    // The index on (ip, created_at) covers the grouping; only the top rows are looked up again.
    const top = db
      .prepare(
        `SELECT t.ip, t.n, t.last,
           EXISTS (SELECT 1 FROM bans b WHERE b.ip = t.ip AND ${activeOf('b')}) AS active,
           (SELECT country FROM bans b WHERE b.ip = t.ip ORDER BY b.created_at DESC, b.id DESC LIMIT 1) AS country
         FROM (SELECT ip, count(*) AS n, max(created_at) AS last FROM bans GROUP BY ip ORDER BY n DESC, last DESC LIMIT ?) t
         ORDER BY t.n DESC, t.last DESC`,
      )
      .all(now, TOP) as { ip: string; n: number; last: number; active: number; country: string | null }[];
    const all = sumBy(groups, () => 0).get(0) ?? { total: 0, active: 0 };
    return {
      generated: new Date(now).toISOString(),
      totals: { active: all.active, bans: all.total, addresses: totals.addresses, last_24h: totals.day ?? 0 },
      per_hour: buckets(rdb, HOUR, 48, now),
      per_day: buckets(rdb, DAY, 30, now),
      by_rule: [...sumBy(groups, (g) => g.rule)].map(([rule, v]) => ({ rule, active: v.active, total: v.total })).sort(byTotal((x) => x.rule)),
      // By name as GET /api/bans?country=<name> matches it (SQLite's NOCASE folds ASCII only), so each row's total
      // is the total of the search it links to; the code is any code those rows carry.
      by_country: [...sumBy(groups, (g) => g.country?.replace(/[A-Z]/g, (c) => c.toLowerCase()) ?? null, (g) => g.country)]
        .map(([, v]) => ({ country: v.name, code: v.code, active: v.active, total: v.total }))
        .sort(byTotal((x) => x.country ?? '')),
      by_origin: [...sumBy(groups, (g) => g.origin)].map(([origin, v]) => ({ origin, active: v.active, total: v.total })).sort(byTotal((x) => x.origin)),
      top_offenders: top.map((r) => ({ ip: r.ip, bans: r.n, last: isoTime(r.last), active: r.active === 1, country: r.country })),
    };
  })();
}

/** computeStats, cached until the bans change or CACHE_MS pass. */
export function statsCache(rdb: ReadDb, version: () => number, clock: () => number = Date.now): () => Stats {
  const cache = new VersionedCache<Stats>(version, CACHE_MS, 1, clock);
  return () => cache.get('', (now) => computeStats(rdb, now));
}
