/*
 * The API's own read-only connection to the daemon's SQLite store. Reads never go through the daemon's connection,
 * so an API request can never be inside (or hold open) one of the daemon's write transactions; in WAL mode it sees
 * every committed change at once. Rows are mapped to the store's own BanRecord, so the API shows bans exactly as
 * `tsfilter list` and `tsfilter explain` do.
 */
import Database from 'better-sqlite3';
import { parseScope } from '../../firewall/port-scope.ts';
import type { BanOrigin, BanRecord } from '../../store/types.ts';
import type { StoredBan } from '../../store/sqlite-store.ts';

export type Db = Database.Database;

export interface ReadDb {
  readonly db: Db;
  /** Whether bans has a country_code column (schema 4 and later). */
  readonly hasCountryCode: boolean;
  /** The column list every ban query selects (see BanRow). */
  readonly columns: string;
  /** Changes whenever another connection (the daemon) commits: a cheap "has anything changed?" check. */
  dataVersion(): number;
  close(): void;
}

/** A bans row as the API queries select it (see ReadDb.columns). */
export interface BanRow {
  id: number;
  ip: string;
  rule: string;
  reason: string;
  created_at: number;
  expires_at: number | null;
  failures: number;
  ban_count: number;
  origin: string;
  server: string;
  country: string | null;
  country_code: string | null;
  lines: string | null;
  ended_at: number | null;
  end_reason: string | null;
  scope: string | null;
}

export function openReadDb(file: string): ReadDb {
  let db: Db;
  try {
    db = new Database(file, { readonly: true, fileMustExist: true });
    db.pragma('busy_timeout = 1000');
  } catch (e) {
    throw new Error(`the HTTP API cannot open the store ${file} read-only: ${(e as Error).message}`);
  }
  try {
    const cols = new Set((db.prepare('SELECT name FROM pragma_table_info(?)').all('bans') as { name: string }[]).map((r) => r.name));
    if (!cols.has('ip') || !cols.has('ended_at')) throw new Error('it has no TSFilter bans table (start the daemon once to create it)');
    const hasCountryCode = cols.has('country_code');
    const columns =
      'id, ip, rule, reason, created_at, expires_at, failures, ban_count, origin, server, country, ' +
      `${hasCountryCode ? 'country_code' : 'NULL AS country_code'}, lines, ended_at, end_reason, ${cols.has('scope') ? 'scope' : 'NULL AS scope'}`;
    const version = db.prepare('PRAGMA data_version').pluck();
    return {
      db,
      hasCountryCode,
      columns,
      dataVersion: () => version.get() as number,
      close: () => db.close(),
    };
  } catch (e) {
    db.close();
    throw new Error(`the HTTP API cannot use the store ${file}: ${(e as Error).message}`);
  }
}

function parseLines(json: string | null): string[] | undefined {
  if (json === null) return undefined;
  try {
    const v: unknown = JSON.parse(json);
    return Array.isArray(v) ? v.map(String) : undefined;
  } catch {
    return undefined;
  }
}

/** The row as the store's own StoredBan (what history() returns), so the shared formatters apply unchanged. */
export function toStoredBan(r: BanRow): StoredBan {
  const rec: BanRecord = {
    ip: r.ip,
    rule: r.rule,
    reason: r.reason,
    createdAt: r.created_at,
    expiresAt: r.expires_at,
    failures: r.failures,
    banCount: r.ban_count,
    origin: r.origin as BanOrigin,
    server: r.server,
    country: r.country,
  };
  if (r.country_code !== null) rec.countryCode = r.country_code;
  const lines = parseLines(r.lines);
  if (lines !== undefined) rec.lines = lines;
  const scope = parseScope(r.scope);
  if (scope !== null) rec.scope = scope;
  return { ...rec, id: r.id, endedAt: r.ended_at, endReason: r.end_reason };
}
