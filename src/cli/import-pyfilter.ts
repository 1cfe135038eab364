/*
 * tsfilter import pyfilter: a one-shot migration from a PyFilter install directory (Config/config.json, PyFilter.db,
 * Config/blacklist.v4/.v6) to TSFilter's config file and store.
 *
 * Everything is read and checked before anything is written: a bad config, an unreadable or corrupt PyFilter.db, or a
 * broken target store stops the import with nothing changed. The bans then go into the store in one transaction, so
 * an interrupted import leaves either all of them or none; a second run finds them "already banned" and adds nothing.
 */
import { randomBytes } from 'node:crypto';
import { chmodSync, closeSync, existsSync, fsyncSync, linkSync, mkdirSync, openSync, readFileSync, renameSync, statSync, unlinkSync, writeSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { loadConfigFile, parseConfig, type Config } from '../config/load.ts';
import { NeverBan, type Protector } from '../bans/never-ban.ts';
import { parseBlacklist } from '../firewall/pyfilter-blacklist.ts';
import { canonicalTarget, normalizeSource } from '../firewall/target.ts';
import { MAX_TIME_MS, openSqliteStore, StoreError, type SqliteStore } from '../store/sqlite-store.ts';
import { silentLogger } from '../util/logger.ts';
import { SYSTEM_CONFIG } from './config-path.ts';
import { UsageError } from './replay.ts';

export const DEFAULT_DATA_DIR = '/var/lib/tsfilter';
export const NEXT_STEP = 'restart tsfilter to enforce the imported bans';
/** Skips listed in the text report; --json always has all of them. */
const LIST_CAP = 50;

export interface ImportOptions {
  from?: string;
  config?: string;
  dataDir?: string;
  force?: boolean;
  dryRun?: boolean;
  json?: boolean;
}

export interface ImportSkip {
  source: string;
  value: string;
  reason: string;
}

export interface ImportedBan {
  source: string;
  ip: string;
  rule: string;
}

export interface ImportReport {
  from: string;
  dry_run: boolean;
  found: { config: string | null; database: string | null; blacklist_v4: string | null; blacklist_v6: string | null };
  config: {
    source: string | null;
    target: string;
    action: 'written' | 'overwritten' | 'would write' | 'would overwrite' | 'skipped';
    reason?: string;
    data_dir: string;
    store: string;
  };
  bans: { imported: number; from_database: number; from_blacklists: number; list: ImportedBan[]; skipped: ImportSkip[] };
  warnings: string[];
  next_step: string;
}

interface Candidate {
  source: string;
  /** As found, for the report. */
  value: string;
  rule: 'pyfilter' | 'pyfilter-blacklist';
  createdAt: number;
  server: string;
  reason: string;
  country: string | null;
}

interface LegacyRow {
  id: number;
  ip: unknown;
  time_banned: unknown;
  server_name: unknown;
  log_msg: unknown;
  country: unknown;
}

const isFile = (p: string): boolean => {
  try {
    return statSync(p).isFile();
  } catch {
    return false;
  }
};

const shown = (v: unknown): string => {
  const s = typeof v === 'string' ? v : v === null || v === undefined ? String(v) : JSON.stringify(v) ?? String(v);
  return s.length > 100 ? `${s.slice(0, 100)}…` : s;
};

const str = (v: unknown): string | null => (typeof v === 'string' ? v : typeof v === 'number' ? String(v) : null);


/** Where the daemon reads its config from, for writing: an existing file is not required (unlike resolveConfigPath). */
function targetConfigPath(explicit?: string): string {
  return path.resolve(explicit || process.env.TSFILTER_CONFIG || SYSTEM_CONFIG);
}

/** The PyFilter files under `dir`; a UsageError when there is nothing to import from. */
function locate(dir: string): { config: string | null; dbCandidates: string[]; v4: string | null; v6: string | null } {
  let st;
  try {
    st = statSync(dir);
  } catch {
    throw new UsageError(`--from ${dir}: no such directory (give the PyFilter install directory, the one holding Config/config.json and PyFilter.db)`);
  }
  if (!st.isDirectory()) throw new UsageError(`--from ${dir}: not a directory (give the PyFilter install directory)`);
  const config = path.join(dir, 'Config', 'config.json');
  const db = [path.join(dir, 'PyFilter.db'), path.join(dir, 'Config', 'PyFilter.db')];
  const v4 = path.join(dir, 'Config', 'blacklist.v4');
  const v6 = path.join(dir, 'Config', 'blacklist.v6');
  const found = { config: isFile(config) ? config : null, dbCandidates: db, v4: isFile(v4) ? v4 : null, v6: isFile(v6) ? v6 : null };
  if (found.config === null && !db.some(isFile) && found.v4 === null && found.v6 === null) {
    throw new UsageError(`no PyFilter installation found in ${dir}: looked for ${[config, ...db, v4, v6].join(', ')}`);
  }
  return found;
}

function sqliteProblem(e: unknown): string {
  const code = (e as { code?: unknown }).code;
  const msg = e instanceof Error ? e.message : String(e);
  if (code === 'SQLITE_NOTADB') return `not a SQLite database (or encrypted, or its header is damaged) (${msg})`;
  if (typeof code === 'string' && code.startsWith('SQLITE_CORRUPT')) return `the database file is corrupt (${msg})`;
  return msg;
}

/** PyFilter's banned_ip rows, read through a read-only connection (the source is never modified). */
function readPyfilterDb(file: string): LegacyRow[] {
  let db: Database.Database;
  try {
    db = new Database(file, { readonly: true, fileMustExist: true });
  } catch (e) {
    throw new Error(`PyFilter database ${file}: cannot open: ${sqliteProblem(e)}`);
  }
  try {
    const check = db.pragma('quick_check', { simple: true }) as string;
    if (check !== 'ok') throw new Error(`the database file is corrupt (quick_check: ${check})`);
    const table = db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'banned_ip'").get();
    if (table === undefined) throw new Error('it has no banned_ip table: not a PyFilter database');
    return db.prepare<[], LegacyRow>('SELECT id, ip, time_banned, server_name, log_msg, country FROM banned_ip ORDER BY id').all();
  } catch (e) {
    throw new Error(`PyFilter database ${file}: ${sqliteProblem(e)}`);
  } finally {
    db.close();
  }
}

/** PyFilter's settings with data_dir set (placed after `database` when it was absent); everything else as it was. */
function withDataDir(json: Record<string, unknown>, dataDir: string): Record<string, unknown> {
  const settings = json.settings as Record<string, unknown>;
  const out: Record<string, unknown> = {};
  const had = Object.hasOwn(settings, 'data_dir');
  if (!had && !Object.hasOwn(settings, 'database')) out.data_dir = dataDir;
  for (const [k, v] of Object.entries(settings)) {
    out[k] = k === 'data_dir' ? dataDir : v;
    if (k === 'database' && !had) out.data_dir = dataDir;
  }
  return { ...json, settings: out };
}

/** Writes `text` to `file` atomically (temp file + rename), mode 0600; without `replace`, never clobbers a file. */
function writeConfigAtomically(file: string, text: string, replace: boolean): void {
  const dir = path.dirname(file);
  if (!existsSync(dir)) {
    mkdirSync(dir, { recursive: true, mode: 0o755 });
    chmodSync(dir, 0o755); // the umask may have narrowed it
  }
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  const fd = openSync(tmp, 'wx', 0o600);
  try {
    try {
      writeSync(fd, text);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    if (replace) {
      renameSync(tmp, file);
    } else {
      // link() fails with EEXIST instead of replacing: no window in which a config written meanwhile is lost.
      try {
        linkSync(tmp, file);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'EEXIST') throw new Error(`${file} appeared while importing; not overwritten (use --force)`);
        throw e;
      }
      unlinkSync(tmp);
    }
  } catch (e) {
    try {
      unlinkSync(tmp);
    } catch {
      /* renamed or never made */
    }
    throw e;
  }
  try {
    const dfd = openSync(dir, 'r');
    try {
      fsyncSync(dfd);
    } finally {
      closeSync(dfd);
    }
  } catch {
    // Some filesystems cannot fsync a directory; the file itself is synced.
  }
}

/** The environment-independent part of the never-ban rules: ignored_ips, loopback, too-wide prefixes. */
const NO_SESSIONS: Protector = { why: () => null, list: () => [], sshStatus: () => ({ source: 'proc', ports: [] }) };

/** "Is this address already actively banned in the target store?", without writing to it (for --dry-run). */
function readOnlyBanCheck(sqlitePath: string, now: number): { banned: (ip: string) => boolean; close: () => void } {
  if (!existsSync(sqlitePath)) return { banned: () => false, close: () => {} };
  let version = -1;
  try {
    const db = new Database(sqlitePath, { readonly: true, fileMustExist: true });
    try {
      version = db.pragma('user_version', { simple: true }) as number;
      if (version === 0) {
        // A PyFilter.db not yet opened by TSFilter: its first read-write open imports every banned_ip row as an active
        // permanent ban, so those are what the real import would find.
        const has = db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'banned_ip'").get();
        const ips = has === undefined ? [] : db.prepare<[], { ip: unknown }>('SELECT ip FROM banned_ip').all();
        const set = new Set(ips.map((r) => (typeof r.ip === 'string' ? normalizeSource(r.ip.trim()) : null)).filter((x) => x !== null));
        return { banned: (ip) => set.has(ip), close: () => {} };
      }
    } finally {
      db.close();
    }
  } catch {
    // Let the store's own open report what is wrong with the file.
  }
  const store = openSqliteStore(sqlitePath, { readonly: true });
  return { banned: (ip) => store.activeBan(ip, now) !== undefined, close: () => store.close() };
}

interface Resolved {
  effective: Config;
  action: ImportReport['config']['action'];
  reason?: string;
  /** The config file text to write; null when the config is skipped. */
  text: string | null;
}

/** Which config the daemon will run with after the import, and what (if anything) to write. */
function resolveConfig(o: ImportOptions, configFile: string | null, target: string, dataDir: string, from: string, warnings: string[]): Resolved {
  const exists = existsSync(target);
  if (exists && (!o.force || configFile === null)) {
    const effective = loadConfigFile(target);
    if (o.dataDir !== undefined && effective.dataDir !== dataDir) {
      throw new UsageError(
        `--data-dir ${dataDir} conflicts with the existing config ${target}, whose data_dir is ${effective.dataDir}; the bans must go where the daemon reads them (use --force to replace that config, or drop --data-dir)`,
      );
    }
    const reason = configFile === null ? `${target} exists and ${from} has no Config/config.json` : `${target} exists (use --force to replace it)`;
    return { effective, action: 'skipped', reason, text: null };
  }
  if (configFile === null) {
    throw new UsageError(
      `${path.join(from, 'Config', 'config.json')} not found and there is no TSFilter config at ${target}: cannot tell where the daemon will keep its bans (copy PyFilter's config.json there, or point --config at an existing TSFilter config)`,
    );
  }
  // Validated as PyFilter ran it: relative paths from its install directory.
  const pyConfig = loadConfigFile(configFile, { cwd: from });
  const json = JSON.parse(readFileSync(configFile, 'utf8')) as Record<string, unknown>;
  const next = withDataDir(json, dataDir);
  const effective = parseConfig(next, target);
  for (const r of pyConfig.rules) {
    const raw = (json.settings as { rules: Record<string, { log_files?: unknown }> }).rules[r.name]?.log_files;
    const list = Array.isArray(raw) ? raw : [raw];
    for (const f of list) {
      if (typeof f === 'string' && f !== '' && !path.isAbsolute(f)) {
        warnings.push(
          `settings.rules.${r.name}.log_files ${JSON.stringify(f)} is relative: PyFilter read ${path.resolve(from, f)}, TSFilter resolves it against its own working directory; make it absolute in ${target}`,
        );
      }
    }
  }
  if (pyConfig.database === 'redis') {
    warnings.push('settings.database is "redis": bans PyFilter kept only in Redis are not in PyFilter.db; TSFilter learns them from Redis when redis.sync_bans.active is true');
  }
  const action = exists ? (o.dryRun ? 'would overwrite' : 'overwritten') : o.dryRun ? 'would write' : 'written';
  return { effective, action, text: JSON.stringify(next, null, 2) + '\n' };
}

export function importPyfilter(o: ImportOptions): ImportReport {
  const from = path.resolve(o.from ?? '.');
  const dataDir = path.resolve(o.dataDir ?? DEFAULT_DATA_DIR);
  const target = targetConfigPath(o.config);
  const dryRun = o.dryRun === true;
  const warnings: string[] = [];
  const now = Date.now();

  // 1. Read and check every source; nothing is written until all of it is known to be usable.
  const found = locate(from);
  const dbFiles = found.dbCandidates.filter(isFile);
  const dbFile = dbFiles[0] ?? null;
  for (const extra of dbFiles.slice(1)) warnings.push(`${extra} also exists and was not imported (${dbFile} was); PyFilter uses the one in its working directory`);
  const rows = dbFile === null ? [] : readPyfilterDb(dbFile);
  const lists = ([[found.v4, 4], [found.v6, 6]] as const).flatMap(([file, family]) => {
    if (file === null) return [];
    return [{ file, family, ...parseBlacklist(readFileSync(file, 'utf8'), family) }];
  });
  const resolved = resolveConfig(o, found.config, target, dataDir, from, warnings);
  const cfg = resolved.effective;

  // 2. Decide every ban against the target store as it is now.
  const rel = (f: string) => path.relative(from, f) || f;
  const skipped: ImportSkip[] = [];
  let candidates: (Candidate & { ip: string })[] = [];
  const firstSource = new Map<string, string>();
  const never = new NeverBan(cfg.ignoredIps, NO_SESSIONS, silentLogger);
  let check: { banned: (ip: string) => boolean; close: () => void };
  let store: SqliteStore | null = null;
  if (dryRun) {
    check = readOnlyBanCheck(cfg.sqlitePath, now);
  } else {
    mkdirSync(cfg.dataDir, { recursive: true, mode: 0o700 });
    const s = openSqliteStore(cfg.sqlitePath, { server: cfg.serverName });
    store = s;
    check = { banned: (ip) => s.activeBan(ip, now) !== undefined, close: () => {} };
  }
  let rejects = 0;
  try {
    const consider = (raw: unknown, c: Candidate): void => {
      const ip = typeof raw === 'string' ? normalizeSource(raw.trim()) : null;
      if (ip === null) {
        skipped.push({ source: c.source, value: c.value, reason: 'not an IP address' });
        return;
      }
      const t = canonicalTarget(ip)!;
      const why = never.whyRange(t);
      if (why !== null) {
        skipped.push({ source: c.source, value: c.value, reason: `${why}: TSFilter never bans it` });
        return;
      }
      if (check.banned(ip)) {
        skipped.push({ source: c.source, value: c.value, reason: `${ip} is already banned in ${cfg.sqlitePath}` });
        return;
      }
      const first = firstSource.get(ip);
      if (first !== undefined) {
        skipped.push({ source: c.source, value: c.value, reason: `duplicate of ${first}` });
        return;
      }
      firstSource.set(ip, c.source);
      candidates.push({ ...c, ip });
    };

    const dbName = dbFile === null ? '' : rel(dbFile);
    for (const r of rows) {
      const secs = typeof r.time_banned === 'number' ? r.time_banned : Number(str(r.time_banned) ?? NaN);
      consider(r.ip, {
        source: `${dbName} row ${r.id}`,
        value: shown(r.ip),
        rule: 'pyfilter',
        createdAt: Number.isFinite(secs) && secs > 0 && secs * 1000 <= MAX_TIME_MS ? Math.round(secs * 1000) : now,
        server: str(r.server_name) ?? '',
        reason: str(r.log_msg) ?? '',
        country: str(r.country),
      });
    }
    for (const l of lists) {
      const name = rel(l.file);
      for (const s of l.skipped) skipped.push({ source: `${name}:${s.line}`, value: s.text, reason: s.reason });
      for (const e of l.entries) {
        const before = candidates.length;
        consider(e.ip, {
          source: `${name}:${e.line}`,
          value: e.ip,
          rule: 'pyfilter-blacklist',
          // The file records no time: the ban is at least as old as the import.
          createdAt: now,
          server: '',
          reason: `imported from PyFilter's ${path.basename(l.file)} (-j ${e.action})`,
          country: null,
        });
        if (candidates.length > before && e.action !== cfg.denyType) rejects++;
      }
    }

    // 3. Write: the config, then every ban in one transaction.
    const lost = new Set<Candidate>();
    if (!dryRun && resolved.text !== null) writeConfigAtomically(target, resolved.text, resolved.action === 'overwritten');
    if (store !== null && candidates.length > 0) {
      const s = store;
      s.transaction(() => {
        for (const c of candidates) {
          const ban = { ip: c.ip, rule: c.rule, reason: c.reason, createdAt: c.createdAt, expiresAt: null, failures: 0, origin: 'pyfilter' as const, server: c.server, country: c.country };
          let r = s.addBan(ban);
          // addBan judges "active" at the ban's createdAt: a timed ban that has run out but is not yet marked expired
          // would swallow an old PyFilter ban. Ban from now instead, which ends that stale one.
          if (!r.added && r.record.expiresAt !== null && r.record.expiresAt <= now) r = s.addBan({ ...ban, createdAt: now });
          // Banned meanwhile (by the running daemon, say): report it as such rather than as imported.
          if (!r.added) lost.add(c);
        }
      });
    }
    for (const c of lost) skipped.push({ source: c.source, value: c.value, reason: `already banned in ${cfg.sqlitePath}` });
    candidates = candidates.filter((c) => !lost.has(c));
    skipped.sort((a, b) => order(a.source) - order(b.source));
  } finally {
    check.close();
    store?.close();
  }
  if (rejects > 0) warnings.push(`${rejects} blacklist ban(s) used a different target than settings.deny_type; TSFilter applies ${cfg.denyType} to every ban`);

  const imported = candidates.length;
  const list = candidates.map((c) => ({ source: c.source, ip: c.ip, rule: c.rule }));
  const configReport: ImportReport['config'] = {
    source: found.config,
    target,
    action: resolved.action,
    data_dir: cfg.dataDir,
    store: cfg.sqlitePath,
  };
  if (resolved.reason !== undefined) configReport.reason = resolved.reason;
  const changed = imported > 0 || resolved.text !== null;
  return {
    from,
    dry_run: dryRun,
    found: { config: found.config, database: dbFile, blacklist_v4: found.v4, blacklist_v6: found.v6 },
    config: configReport,
    bans: {
      imported,
      from_database: candidates.filter((c) => c.rule === 'pyfilter').length,
      from_blacklists: candidates.filter((c) => c.rule === 'pyfilter-blacklist').length,
      list,
      skipped,
    },
    warnings,
    next_step: dryRun
      ? `nothing was written: run again without --dry-run, then ${NEXT_STEP}`
      : changed
        ? NEXT_STEP
        : 'nothing was imported; no restart needed',
  };
}

/** Report order: the database rows, then blacklist.v4, then blacklist.v6, each in file order. */
function order(source: string): number {
  const row = / row (\d+)$/.exec(source);
  if (row) return Number(row[1]);
  const line = /:(\d+)$/.exec(source);
  return (source.includes('blacklist.v6') ? 2e15 : 1e15) + Number(line?.[1] ?? 0);
}

export function formatReport(r: ImportReport): string[] {
  const out: string[] = [];
  const verb = r.dry_run ? 'would import' : 'imported';
  out.push(`PyFilter install ${r.from}${r.dry_run ? ' (dry run: nothing is written)' : ''}`);
  out.push(`  config    ${r.found.config ?? '(none)'}`);
  out.push(`  database  ${r.found.database ?? '(none)'}`);
  out.push(`  blacklist ${[r.found.blacklist_v4, r.found.blacklist_v6].filter((x) => x !== null).join(', ') || '(none)'}`);
  const c = r.config;
  if (c.action === 'skipped') out.push(`config skipped: ${c.reason}; the bans go to the data dir it names: ${c.data_dir}`);
  else {
    const done = { written: 'written', overwritten: 'overwritten', 'would write': 'would be written', 'would overwrite': 'would be overwritten' }[c.action];
    out.push(`config ${done}: ${c.target} (PyFilter's config with settings.data_dir = ${c.data_dir}, mode 0600)`);
  }
  const b = r.bans;
  out.push(`bans: ${verb} ${b.imported} into ${c.store} (${b.from_database} from the database, ${b.from_blacklists} from the blacklists); skipped ${b.skipped.length}`);
  for (const s of b.skipped.slice(0, LIST_CAP)) out.push(`  skipped ${s.source} ${JSON.stringify(s.value)}: ${s.reason}`);
  if (b.skipped.length > LIST_CAP) out.push(`  ... and ${b.skipped.length - LIST_CAP} more (--json lists them all)`);
  for (const w of r.warnings) out.push(`warning: ${w}`);
  out.push(`next step: ${r.next_step}`);
  return out;
}

export function importPyfilterCommand(o: ImportOptions, out: (s: string) => void): void {
  try {
    const r = importPyfilter(o);
    if (o.json) out(JSON.stringify(r));
    else for (const l of formatReport(r)) out(l);
  } catch (e) {
    if (e instanceof StoreError) throw new Error(`${e.message}; no ban was imported`);
    throw e;
  }
}
