/**
 * The daemon's durable state in one SQLite file (default `PyFilter.db`, so a PyFilter user's file keeps working).
 *
 * Durability: WAL journal with `synchronous=FULL`, so every committed transaction is fsynced before the call that
 * made it returns. Each addBan / removeBan / expireBans / saveCounters / setPosition outside `transaction()` is its
 * own committed transaction; a decided ban therefore survives kill -9 and power loss. `synchronous` is per
 * connection, not per statement, so a lone setPosition also costs one fsync: the daemon is expected to wrap the
 * positions, counters and bans of one batch of lines in a single `transaction()` (one fsync per batch).
 *
 * Schema (version 4, kept in `PRAGMA user_version`; `MIGRATIONS[i]` upgrades version i to i + 1, so a later version
 * adds a function to the list and never edits an old one):
 *
 *   banned_ip(id INTEGER PRIMARY KEY, ip text, time_banned integer, server_name text, log_msg text, country text)
 *     PyFilter's table, byte for byte. time_banned is Unix seconds.
 *   bans(id INTEGER PRIMARY KEY, ip, rule, reason, created_at ms, expires_at ms | NULL = permanent, failures,
 *        ban_count, origin, server, country, lines JSON | NULL, ended_at ms | NULL, end_reason | NULL,
 *        banned_ip_id, scope 'tcp:22,443' | NULL = all traffic, country_code ISO 3166 alpha-2 | NULL)   every ban ever; history is never deleted. A ban is "open" while ended_at IS NULL and
 *                        "active" at t while open and (expires_at IS NULL OR expires_at > t).
 *   positions(key PRIMARY KEY, inode, "offset", fingerprint, cursor, updated_at ms)
 *   counters(rule, ip, state, updated_at ms, PRIMARY KEY (rule, ip))
 *   fleet_outbox, fleet_kv, fleet_versions, fleet_reports: fleet sync (src/store/fleet-state.ts)
 *
 * PyFilter's banned_ip and our bans — how legacy rows are told apart:
 *   Every row of banned_ip is linked to exactly one open row of bans through bans.banned_ip_id (and the same ip; the
 *   ip check matters because banned_ip's `INTEGER PRIMARY KEY` without AUTOINCREMENT reuses the highest id after a
 *   delete).
 *   - Our own bans: addBan inserts the banned_ip mirror row (time_banned = createdAt in seconds, server_name = the
 *     ban's server, log_msg = reason, country) and the bans row pointing at it, in one transaction. removeBan and
 *     expiry end the bans row and delete its mirror row in one transaction.
 *   - Legacy rows (written by PyFilter, or by PyFilter-Admin / another tool while we were not running): at every
 *     read-write open, each banned_ip row that no open ban is linked to is imported as a permanent ban with origin
 *     'pyfilter', rule 'pyfilter', reason = log_msg, createdAt = time_banned * 1000, and linked to it. From then on
 *     it is an ordinary ban: unbanning it deletes the banned_ip row, so a reopen cannot resurrect it. The import
 *     is idempotent (a linked row is never imported twice).
 *   - The converse, also at open: an open ban whose linked banned_ip row has disappeared was unbanned by an external
 *     tool (PyFilter-Admin deletes the row); it is ended with end_reason 'removed from banned_ip'.
 *   Hence banned_ip always equals the set of open bans (active ones, plus expired ones expireBans has not yet
 *   marked). Both syncs run only at open; external edits while we run are seen at the next start.
 *
 * Rows of banned_ip without an ip are ignored (never imported, never deleted).
 */
import Database from 'better-sqlite3';
import { formatScope, parseScope } from '../firewall/port-scope.ts';
import type { Position } from '../sources/types.ts';
import { FLEET_TABLES, fleetState, type FleetState } from './fleet-state.ts';
import type { BanOrigin, BanRecord, CounterState, Store } from './types.ts';
import { EXPIRED, REMOVED_FROM_BANNED_IP } from '../bans/end-reasons.ts';

/** The schema version this code writes. A file with a higher `user_version` is refused. */
export const SCHEMA_VERSION = 4;
/** `PRAGMA application_id` of a TSFilter store ('TSFI'). PyFilter's files have 0, which is accepted. */
export const APPLICATION_ID = 0x54534649;
/** The server name PyFilter writes into banned_ip.server_name. */
export const PYFILTER_SERVER_NAME = 'Server-1';

export interface SqliteStoreOptions {
  /**
   * This node's name: the server of imported PyFilter rows that lack a server_name, and the banned_ip.server_name
   * of a ban whose `server` is empty. Default "Server-1", as PyFilter.
   */
  server?: string;
  /** Open without writing anything (no migration, no import); the file must exist and be at the current schema. */
  readonly?: boolean;
  /** Milliseconds to wait for another process's write lock. Default 5000. */
  busyTimeoutMs?: number;
}

/** A ban with its row id and how it ended, as `history()` returns it. */
export interface StoredBan extends BanRecord {
  id: number;
  /** ms since the epoch; null while the ban has not ended (an expired ban is ended by expireBans). */
  endedAt: number | null;
  /** 'expired', the reason given to removeBan, or 'removed from banned_ip'. */
  endReason: string | null;
}

export interface SqliteStore extends Store {
  readonly path: string;
  /** Fleet sync's tables (absent on a read-only open). */
  readonly fleet: FleetState;
  history(ip: string): StoredBan[];
}

/** Opening or using the store failed for a reason about the file itself; the message names the path. */
export class StoreError extends Error {
  readonly path: string;
  constructor(path: string, message: string, options?: { cause?: unknown }) {
    super(`TSFilter store ${path}: ${message}`, options);
    this.name = 'StoreError';
    this.path = path;
  }
}

/** The columns every ban query selects, in this order; rows are read in raw (array) mode, which is about twice as fast
 * as better-sqlite3's object rows for activeBans() over 100k bans. */
export const BAN_COLUMNS =
  'id, ip, rule, reason, created_at, expires_at, failures, ban_count, origin, server, country, lines, ended_at, end_reason, banned_ip_id, scope, country_code';
type RawBan = [number, string, string, string, number, number | null, number, number, string, string, string | null, string | null, number | null, string | null, number | null, string | null, string | null];

function fromRaw(a: RawBan): BanRow {
  return {
    id: a[0], ip: a[1], rule: a[2], reason: a[3], created_at: a[4], expires_at: a[5], failures: a[6], ban_count: a[7],
    origin: a[8], server: a[9], country: a[10], lines: a[11], ended_at: a[12], end_reason: a[13], banned_ip_id: a[14],
    scope: a[15], country_code: a[16],
  };
}

function recordFromRaw(a: RawBan): BanRecord {
  const rec: BanRecord = {
    ip: a[1], rule: a[2], reason: a[3], createdAt: a[4], expiresAt: a[5], failures: a[6], banCount: a[7],
    origin: a[8] as BanOrigin, server: a[9], country: a[10],
  };
  if (a[16] !== null) rec.countryCode = a[16];
  const lines = parseLines(a[11]);
  if (lines !== undefined) rec.lines = lines;
  const scope = parseScope(a[15]);
  if (scope !== null) rec.scope = scope;
  return rec;
}

/** A bans row as BAN_COLUMNS selects it (object mode). */
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
  lines: string | null;
  ended_at: number | null;
  end_reason: string | null;
  banned_ip_id: number | null;
  scope: string | null;
  country_code: string | null;
}

interface LegacyRow {
  id: number;
  ip: string;
  time_banned: unknown;
  server_name: string | null;
  log_msg: string | null;
  country: string | null;
}

type Db = Database.Database;

const MIGRATIONS: ((db: Db) => void)[] = [
  // 0 -> 1. PyFilter's table may already exist (a PyFilter.db); ours must not (plain CREATE TABLE, so a foreign
  // file that happens to have a `bans` table is refused instead of silently misread).
  (db) => {
    db.exec(`
      CREATE TABLE IF NOT EXISTS banned_ip (id INTEGER PRIMARY KEY, ip text, time_banned integer, server_name text, log_msg text, country text);
      CREATE TABLE bans (
        id INTEGER PRIMARY KEY,
        ip TEXT NOT NULL,
        rule TEXT NOT NULL,
        reason TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER,
        failures INTEGER NOT NULL,
        ban_count INTEGER NOT NULL,
        origin TEXT NOT NULL,
        server TEXT NOT NULL,
        country TEXT,
        lines TEXT,
        ended_at INTEGER,
        end_reason TEXT,
        banned_ip_id INTEGER
      );
      CREATE INDEX bans_ip ON bans (ip, created_at);
      CREATE INDEX bans_open_ip ON bans (ip) WHERE ended_at IS NULL;
      CREATE INDEX bans_open_expiry ON bans (expires_at) WHERE ended_at IS NULL;
      CREATE INDEX bans_open_banned_ip ON bans (banned_ip_id) WHERE ended_at IS NULL;
      CREATE TABLE positions (
        key TEXT PRIMARY KEY,
        inode INTEGER NOT NULL,
        "offset" INTEGER NOT NULL,
        fingerprint TEXT NOT NULL,
        cursor TEXT,
        updated_at INTEGER NOT NULL
      );
      CREATE TABLE counters (
        rule TEXT NOT NULL,
        ip TEXT NOT NULL,
        state TEXT NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (rule, ip)
      );
    `);
  },
  // 1 -> 2. A ban may be limited to some ports of one protocol ("tcp:22,443"); NULL blocks all traffic.
  (db) => {
    db.exec('ALTER TABLE bans ADD COLUMN scope TEXT');
  },
  // 2 -> 3. Fleet sync's outbox, cursor, per-address versions and reports (src/store/fleet-state.ts).
  (db) => {
    db.exec(FLEET_TABLES);
  },
  // 3 -> 4. The country's ISO code beside its English name (`country`, which PyFilter's banned_ip also has): codes
  // are what policies, filters and other tools use. Older rows keep only the name; no lookup is made to fill them.
  // The HTTP API pages bans newest first and follows ended ones (src/api/http/): two indexes for that.
  (db) => {
    db.exec(`
      ALTER TABLE bans ADD COLUMN country_code TEXT;
      CREATE INDEX bans_created ON bans (created_at);
      CREATE INDEX bans_ended ON bans (ended_at) WHERE ended_at IS NOT NULL;
    `);
  },
];

if (MIGRATIONS.length !== SCHEMA_VERSION) throw new Error('store: MIGRATIONS does not match SCHEMA_VERSION');

/** A readable phrase for SQLite's error codes that are about the file rather than about our code. */
function describeFileError(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code !== 'string') {
    const msg = err instanceof Error ? err.message : '';
    if (/directory does not exist/i.test(msg)) return 'its directory does not exist';
    return undefined;
  }
  if (code === 'SQLITE_NOTADB') return 'not a SQLite database (or encrypted, or its header is damaged)';
  if (code.startsWith('SQLITE_CORRUPT')) return 'the database file is corrupt';
  if (code.startsWith('SQLITE_CANTOPEN')) return 'cannot open the file (missing, or no permission)';
  if (code.startsWith('SQLITE_READONLY')) return 'the file (or its directory, for the WAL) is read-only';
  if (code.startsWith('SQLITE_IOERR')) return 'I/O error reading or writing the file';
  if (code === 'SQLITE_FULL') return 'the disk is full';
  if (code.startsWith('SQLITE_BUSY') || code.startsWith('SQLITE_LOCKED')) return 'the database is locked by another process';
  if (code === 'SQLITE_PERM' || code === 'SQLITE_AUTH') return 'permission denied';
  return undefined;
}

function wrapError(path: string, err: unknown, doing: string): unknown {
  if (err instanceof StoreError) return err;
  const what = describeFileError(err);
  if (what === undefined) return err;
  const detail = err instanceof Error ? err.message : String(err);
  return new StoreError(path, `${doing}: ${what} (${detail})`, { cause: err });
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

function toRecord(r: BanRow): BanRecord {
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
  return rec;
}

/** A row as the store's StoredBan: what history() returns (the HTTP API maps its own reads with it too). */
export function toStored(r: BanRow): StoredBan {
  return { ...toRecord(r), id: r.id, endedAt: r.ended_at, endReason: r.end_reason };
}

/**
 * The latest time (ms) the store accepts: the end of the year 9999. Every time below it renders as a four-digit-year
 * ISO 8601 string, where JavaScript's Date gives up (RangeError) past the year 275760.
 */
export const MAX_TIME_MS = 253_402_300_799_999;

/** Also checks counts (failures): 0 and up to MAX_TIME_MS cover both, and nothing sane lies outside. */
function checkTime(name: string, v: unknown, nullable: boolean): void {
  if (nullable && v === null) return;
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new TypeError(`store: ${name} must be a finite number${nullable ? ' or null' : ''}, got ${String(v)}`);
  if (v < 0 || v > MAX_TIME_MS) throw new TypeError(`store: ${name} must be from 0 to ${MAX_TIME_MS} (the end of the year 9999 in ms), got ${String(v)}`);
}

function checkString(name: string, v: unknown, allowEmpty: boolean): void {
  if (typeof v !== 'string' || (!allowEmpty && v === '')) throw new TypeError(`store: ${name} must be a ${allowEmpty ? '' : 'non-empty '}string, got ${String(v)}`);
}

/** Everything a NOT NULL column needs, checked before the first write (see `failedInside`). */
function checkBan(ban: Omit<BanRecord, 'banCount'>): void {
  checkString('ban ip', ban.ip, false);
  checkString('ban rule', ban.rule, true);
  checkString('ban reason', ban.reason, true);
  checkString('ban origin', ban.origin, false);
  checkString('ban server', ban.server, true);
  checkTime('ban createdAt', ban.createdAt, false);
  checkTime('ban expiresAt', ban.expiresAt, true);
  checkTime('ban failures', ban.failures, false);
  if (ban.country !== undefined && ban.country !== null) checkString('ban country', ban.country, true);
  if (ban.countryCode !== undefined && ban.countryCode !== null && !/^[A-Z]{2}$/.test(ban.countryCode)) {
    throw new TypeError(`store: ban countryCode must be an ISO 3166-1 alpha-2 code such as "GB", got ${String(ban.countryCode)}`);
  }
  if (ban.scope && (parseScope(formatScope(ban.scope)) === null || ban.scope.ports.some((p) => !Number.isInteger(p)))) {
    throw new TypeError('store: ban scope must be { protocol: "tcp" | "udp", ports: [1..65535] }');
  }
  if (ban.lines !== undefined && (!Array.isArray(ban.lines) || ban.lines.some((l) => typeof l !== 'string'))) {
    throw new TypeError('store: ban lines must be an array of strings');
  }
}

function checkCounter(c: CounterState): void {
  checkString('counter rule', c.rule, false);
  checkString('counter ip', c.ip, false);
  checkString('counter state', c.state, true);
  checkTime('counter updatedAt', c.updatedAt, false);
}

export function openSqliteStore(path: string, opts: SqliteStoreOptions = {}): SqliteStore {
  const readonly = opts.readonly === true;
  const defaultServer = opts.server ?? PYFILTER_SERVER_NAME;
  let db: Db;
  try {
    db = new Database(path, readonly ? { readonly: true, fileMustExist: true } : {});
  } catch (err) {
    throw wrapError(path, err, 'cannot open');
  }
  try {
    prepareConnection(db, path, readonly, opts.busyTimeoutMs ?? 5000);
    if (!readonly) {
      migrate(db, path);
      syncBannedIp(db, defaultServer);
    }
  } catch (err) {
    try {
      db.close();
    } catch {
      /* already failing */
    }
    throw wrapError(path, err, 'cannot open');
  }
  return buildStore(db, path, readonly, defaultServer);
}

function prepareConnection(db: Db, path: string, readonly: boolean, busyTimeoutMs: number): void {
  db.pragma(`busy_timeout = ${Math.max(0, Math.floor(busyTimeoutMs))}`);
  // The first real read: a text file or a damaged header fails here with SQLITE_NOTADB.
  const appId = db.pragma('application_id', { simple: true }) as number;
  const version = db.pragma('user_version', { simple: true }) as number;
  if (appId !== 0 && appId !== APPLICATION_ID) {
    throw new StoreError(path, `not a TSFilter or PyFilter database (application_id 0x${appId.toString(16)})`);
  }
  if (version > SCHEMA_VERSION) {
    throw new StoreError(path, `schema version ${version} is newer than this TSFilter supports (${SCHEMA_VERSION}); upgrade TSFilter or use the matching version`);
  }
  if (readonly) {
    if (version < SCHEMA_VERSION) {
      throw new StoreError(path, `schema version ${version} needs upgrading to ${SCHEMA_VERSION}, which a read-only open cannot do; start the daemon once (or open read-write)`);
    }
  } else {
    db.pragma('journal_mode = WAL');
  }
  db.pragma('synchronous = FULL');
  db.pragma('foreign_keys = ON');
  db.pragma('cache_size = -16384'); // 16 MiB page cache (default 2 MiB): big batches and scans stop spilling
  // Corruption past the header otherwise only shows when the damaged page is read; check the whole file now, while
  // the error can still be reported as "this file is corrupt" (a whole reopen of a 100k-ban, 33 MiB store, this check
  // included, takes about 0.15 s).
  const check = db.pragma('quick_check', { simple: true }) as string;
  if (check !== 'ok') throw new StoreError(path, `the database file is corrupt (quick_check: ${check})`);
}

function migrate(db: Db, path: string): void {
  const run = db.transaction(() => {
    // Re-read inside the write lock: another process may have migrated meanwhile.
    let version = db.pragma('user_version', { simple: true }) as number;
    if (version > SCHEMA_VERSION) throw new StoreError(path, `schema version ${version} is newer than this TSFilter supports (${SCHEMA_VERSION})`);
    if (version === SCHEMA_VERSION) return;
    while (version < SCHEMA_VERSION) {
      const step = MIGRATIONS[version]!;
      try {
        step(db);
      } catch (err) {
        if (err instanceof StoreError || describeFileError(err) !== undefined) throw err;
        const detail = err instanceof Error ? err.message : String(err);
        throw new StoreError(path, `cannot upgrade schema from version ${version} to ${version + 1}: ${detail}`, { cause: err });
      }
      version++;
    }
    db.pragma(`user_version = ${SCHEMA_VERSION}`);
    db.pragma(`application_id = ${APPLICATION_ID}`);
  });
  run.immediate();
}

/** The open-time reconciliation of banned_ip with bans described at the top of this file. */
function syncBannedIp(db: Db, defaultServer: string): void {
  const orphans = db.prepare<[], LegacyRow>(`
    SELECT id, ip, time_banned, server_name, log_msg, country FROM banned_ip AS b
    WHERE ip IS NOT NULL AND ip <> ''
      AND NOT EXISTS (SELECT 1 FROM bans WHERE ended_at IS NULL AND banned_ip_id = b.id AND ip = b.ip)
    ORDER BY id`);
  const vanished = db.prepare<[], { id: number }>(`
    SELECT id FROM bans AS x
    WHERE ended_at IS NULL AND banned_ip_id IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM banned_ip WHERE id = x.banned_ip_id AND ip = x.ip)`);
  const end = db.prepare<[number, string, number]>('UPDATE bans SET ended_at = ?, end_reason = ? WHERE id = ?');
  const count = db.prepare<[string], { n: number }>('SELECT count(*) AS n FROM bans WHERE ip = ?');
  const insert = db.prepare(`
    INSERT INTO bans (ip, rule, reason, created_at, expires_at, failures, ban_count, origin, server, country, lines, banned_ip_id)
    VALUES (?, 'pyfilter', ?, ?, NULL, 0, ?, 'pyfilter', ?, ?, NULL, ?)`);
  db.transaction(() => {
    const now = Date.now();
    // First end the bans whose row vanished (so an id reused by a new external row is not taken as still linked).
    for (const { id } of vanished.all()) end.run(now, REMOVED_FROM_BANNED_IP, id);
    for (const row of orphans.all()) {
      const secs = Number(row.time_banned);
      // Another tool wrote this row: a time outside what the store accepts becomes 0 (shown as 1970).
      const createdAt = Number.isFinite(secs) && secs >= 0 && secs * 1000 <= MAX_TIME_MS ? Math.round(secs * 1000) : 0;
      const banCount = count.get(row.ip)!.n + 1;
      insert.run(row.ip, row.log_msg ?? '', createdAt, banCount, row.server_name ?? defaultServer, row.country ?? null, row.id);
    }
  }).immediate();
}

function buildStore(db: Db, path: string, readonly: boolean, defaultServer: string): SqliteStore {
  const s = {
    openByIp: db.prepare<[string], BanRow>(`SELECT ${BAN_COLUMNS} FROM bans WHERE ip = ? AND ended_at IS NULL ORDER BY id`),
    activeByIp: db.prepare<[string, number], BanRow>(
      `SELECT ${BAN_COLUMNS} FROM bans WHERE ip = ? AND ended_at IS NULL AND (expires_at IS NULL OR expires_at > ?) ORDER BY id LIMIT 1`,
    ),
    activeAll: db.prepare<[number], RawBan>(
      `SELECT ${BAN_COLUMNS} FROM bans WHERE ended_at IS NULL AND (expires_at IS NULL OR expires_at > ?) ORDER BY id`,
    ).raw(),
    due: db.prepare<[number], RawBan>(
      `SELECT ${BAN_COLUMNS} FROM bans WHERE ended_at IS NULL AND expires_at IS NOT NULL AND expires_at <= ? ORDER BY id`,
    ).raw(),
    countActive: db.prepare<[number], number>(
      'SELECT count(DISTINCT ip) FROM bans WHERE ended_at IS NULL AND (expires_at IS NULL OR expires_at > ?)',
    ).pluck(),
    history: db.prepare<[string], BanRow>(`SELECT ${BAN_COLUMNS} FROM bans WHERE ip = ? ORDER BY created_at, id`),
    countByIp: db.prepare<[string], { n: number }>('SELECT count(*) AS n FROM bans WHERE ip = ?'),
    insertMirror: db.prepare<[string, number, string, string, string | null]>(
      'INSERT INTO banned_ip (ip, time_banned, server_name, log_msg, country) VALUES (?, ?, ?, ?, ?)',
    ),
    deleteMirror: db.prepare<[number, string]>('DELETE FROM banned_ip WHERE id = ? AND ip = ?'),
    insertBan: db.prepare<[string, string, string, number, number | null, number, number, string, string, string | null, string | null, number | bigint, string | null, string | null]>(`
      INSERT INTO bans (ip, rule, reason, created_at, expires_at, failures, ban_count, origin, server, country, lines, banned_ip_id, scope, country_code)
      VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`),
    endBan: db.prepare<[number, string, number]>('UPDATE bans SET ended_at = ?, end_reason = ? WHERE id = ?'),
    getPos: db.prepare<[string], { inode: number; offset: number; fingerprint: string; cursor: string | null }>(
      'SELECT inode, "offset" AS offset, fingerprint, cursor FROM positions WHERE key = ?',
    ),
    setPos: db.prepare<[string, number, number, string, string | null, number]>(`
      INSERT INTO positions (key, inode, "offset", fingerprint, cursor, updated_at) VALUES (?, ?, ?, ?, ?, ?)
      ON CONFLICT (key) DO UPDATE SET inode = excluded.inode, "offset" = excluded."offset",
        fingerprint = excluded.fingerprint, cursor = excluded.cursor, updated_at = excluded.updated_at`),
    putCounter: db.prepare<[string, string, string, number]>(`
      INSERT INTO counters (rule, ip, state, updated_at) VALUES (?, ?, ?, ?)
      ON CONFLICT (rule, ip) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at`),
    delCounter: db.prepare<[string, string]>('DELETE FROM counters WHERE rule = ? AND ip = ?'),
    allCounters: db.prepare<[], { rule: string; ip: string; state: string; updated_at: number }>(
      'SELECT rule, ip, state, updated_at FROM counters ORDER BY rule, ip',
    ),
  };

  // One wrapper reused for every transaction; better-sqlite3 turns nested calls into SAVEPOINTs. IMMEDIATE takes the
  // write lock up front, so a read-then-write transaction cannot fail with SQLITE_BUSY half-way when a CLI process
  // writes concurrently (busy_timeout then applies to BEGIN).
  const txRaw = db.transaction((fn: () => unknown) => fn()).immediate;
  // A multi-statement write of the store itself (addBan: mirror row + ban row) is atomic on its own outside a
  // transaction. Inside the caller's transaction() it runs inline, without a SAVEPOINT of its own: savepoints cost
  // 60% of a batched addBan (100k bans: 2.2 s with, 0.9 s without). Inputs are checked before the first write, so
  // only SQLite itself can fail part-way (disk full, I/O error); should the caller catch that error and carry on,
  // `failedInside` makes the outermost transaction() roll everything back instead of committing half a ban.
  let failedInside: unknown = undefined;
  const tx = <T>(fn: () => T): T => {
    if (!db.inTransaction) return txRaw(fn) as T;
    try {
      return fn();
    } catch (err) {
      failedInside ??= err;
      throw err;
    }
  };
  let closed = false;

  const guard = <T>(doing: string, fn: () => T): T => {
    if (closed) throw new StoreError(path, `${doing}: the store is closed`);
    try {
      return fn();
    } catch (err) {
      throw wrapError(path, err, doing);
    }
  };

  /** Ends a ban row and deletes its banned_ip mirror. */
  const endRow = (row: BanRow, at: number, reason: string): void => {
    s.endBan.run(at, reason, row.id);
    if (row.banned_ip_id !== null) s.deleteMirror.run(row.banned_ip_id, row.ip);
  };

  let fleet: FleetState | undefined;
  const store: SqliteStore = {
    path,
    get fleet(): FleetState {
      if (readonly) throw new StoreError(path, 'fleet state needs a read-write open');
      return (fleet ??= fleetState(db));
    },

    addBan(ban) {
      return guard('addBan', () => {
        checkBan(ban);
        return tx(() => {
          const open = s.openByIp.all(ban.ip);
          let active: BanRow | undefined;
          for (const row of open) {
            if (row.expires_at === null || row.expires_at > ban.createdAt) {
              active ??= row;
            } else {
              // Expired but not yet marked by expireBans: mark it now, so that a later expireBans cannot hand the
              // daemon a stale ban to unban while this new one is in force.
              endRow(row, ban.createdAt, EXPIRED);
            }
          }
          if (active !== undefined) return { added: false, record: toRecord(active) };
          const banCount = s.countByIp.get(ban.ip)!.n + 1;
          const server = ban.server || defaultServer;
          const country = ban.country ?? null;
          const mirror = s.insertMirror.run(ban.ip, Math.floor(ban.createdAt / 1000), server, ban.reason, country);
          s.insertBan.run(
            ban.ip, ban.rule, ban.reason, ban.createdAt, ban.expiresAt, ban.failures, banCount, ban.origin, server,
            country, ban.lines === undefined ? null : JSON.stringify(ban.lines), mirror.lastInsertRowid,
            formatScope(ban.scope), ban.countryCode ?? null,
          );
          const record: BanRecord = {
            ip: ban.ip, rule: ban.rule, reason: ban.reason, createdAt: ban.createdAt, expiresAt: ban.expiresAt,
            failures: ban.failures, banCount, origin: ban.origin, server, country,
          };
          if (ban.scope) record.scope = { protocol: ban.scope.protocol, ports: [...ban.scope.ports] };
          if (ban.countryCode) record.countryCode = ban.countryCode;
          if (ban.lines !== undefined) record.lines = [...ban.lines];
          return { added: true, record };
        });
      });
    },

    activeBan(ip, now) {
      return guard('activeBan', () => {
        const row = s.activeByIp.get(ip, now);
        return row === undefined ? undefined : toRecord(row);
      });
    },

    countActiveBans(now) {
      return guard('countActiveBans', () => s.countActive.get(now) as number);
    },

    activeBans(now) {
      return guard('activeBans', () => {
        // One record per address (duplicate PyFilter rows for one ip import as several open bans: keep the oldest).
        const seen = new Set<string>();
        const out: BanRecord[] = [];
        for (const raw of s.activeAll.all(now)) {
          if (seen.has(raw[1])) continue;
          seen.add(raw[1]);
          out.push(recordFromRaw(raw));
        }
        return out;
      });
    },

    removeBan(ip, now, reason) {
      return guard('removeBan', () =>
        tx(() => {
          let removed = false;
          for (const row of s.openByIp.all(ip)) {
            if (row.expires_at !== null && row.expires_at <= now) continue; // expired: left for expireBans
            endRow(row, now, reason || 'removed');
            removed = true;
          }
          return removed;
        }),
      );
    },

    expireBans(now) {
      return guard('expireBans', () =>
        tx(() => {
          const rows = s.due.all(now).map(fromRaw);
          for (const row of rows) endRow(row, now, EXPIRED);
          return rows.map(toRecord);
        }),
      );
    },

    banCount(ip) {
      return guard('banCount', () => s.countByIp.get(ip)!.n);
    },

    history(ip) {
      return guard('history', () => s.history.all(ip).map(toStored));
    },

    getPosition(key) {
      return guard('getPosition', () => {
        const r = s.getPos.get(key);
        if (r === undefined) return undefined;
        const pos: Position = { inode: r.inode, offset: r.offset, fingerprint: r.fingerprint };
        if (r.cursor !== null) pos.cursor = r.cursor;
        return pos;
      });
    },

    setPosition(key, pos) {
      guard('setPosition', () => {
        s.setPos.run(key, pos.inode, pos.offset, pos.fingerprint, pos.cursor ?? null, Date.now());
      });
    },

    saveCounters(states, removed) {
      guard('saveCounters', () => {
        if (states.length === 0 && removed.length === 0) return;
        for (const c of states) checkCounter(c);
        for (const r of removed) {
          checkString('counter rule', r.rule, false);
          checkString('counter ip', r.ip, false);
        }
        tx(() => {
          for (const r of removed) s.delCounter.run(r.rule, r.ip);
          for (const c of states) s.putCounter.run(c.rule, c.ip, c.state, c.updatedAt);
        });
      });
    },

    loadCounters() {
      return guard('loadCounters', () =>
        s.allCounters.all().map((r): CounterState => ({ rule: r.rule, ip: r.ip, state: r.state, updatedAt: r.updated_at })),
      );
    },

    transaction<T>(fn: () => T): T {
      if (closed) throw new StoreError(path, 'transaction: the store is closed');
      try {
        if (db.inTransaction) {
          // Nested: a SAVEPOINT. If it rolls back, so does any half-done store write inside it.
          const before = failedInside;
          try {
            return txRaw(fn) as T;
          } catch (err) {
            failedInside = before;
            throw err;
          }
        }
        failedInside = undefined;
        try {
          return txRaw(() => {
            const result = fn();
            if (failedInside !== undefined) {
              throw new StoreError(path, 'transaction: a store write failed part-way inside this transaction; all of it was rolled back', { cause: failedInside });
            }
            return result;
          }) as T;
        } finally {
          failedInside = undefined;
        }
      } catch (err) {
        throw wrapError(path, err, 'transaction');
      }
    },

    close() {
      if (closed) return;
      closed = true;
      try {
        if (!readonly && db.inTransaction === false && path !== ':memory:' && path !== '') {
          db.pragma('wal_checkpoint(TRUNCATE)');
        }
      } catch {
        // A checkpoint can fail with SQLITE_BUSY while a reader holds the WAL; the data is committed either way.
      } finally {
        db.close();
      }
    },
  };
  return store;
}
