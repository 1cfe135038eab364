/*
 * tsfilter ban / unban / list / status: through the running daemon's control socket, or, when no daemon answers,
 * directly on the SQLite store (ban, unban, list), applied by the daemon when it starts.
 */
import { escapeControls } from '../util/terminal-text.ts';
import { existsSync, mkdirSync } from 'node:fs';
import type { Config } from '../config/load.ts';
import { DaemonNotRunning, request } from '../api/control-client.ts';
import { parseDuration, parseIp, toListed, type ListedBan, type Request, type Response } from '../api/protocol.ts';
import { BanManager } from '../bans/ban-manager.ts';
import { NeverBan } from '../bans/never-ban.ts';
import { openSqliteStore, type SqliteStore } from '../store/sqlite-store.ts';
import { silentLogger } from '../util/logger.ts';
import { UsageError } from './replay.ts';

/** `status` when no daemon answers: exit code 1. */
export class NotRunningError extends Error {}

type Out = (s: string) => void;

/** Sends a request; null when the daemon is not running. Usage errors become UsageError (exit 2). */
async function ask(config: Config, req: Request): Promise<Exclude<Response, { ok: false }> | null> {
  let r: Response;
  try {
    r = await request(config.controlSocket, req);
  } catch (e) {
    if (e instanceof DaemonNotRunning) return null;
    throw e;
  }
  if (!r.ok) {
    if (r.kind === 'usage') throw new UsageError(r.error);
    throw new Error(r.error);
  }
  return r;
}

function usage<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    if ((e as { kind?: unknown }).kind === 'usage') throw new UsageError((e as Error).message);
    throw e;
  }
}

function until(b: ListedBan): string {
  return b.expires === null ? 'permanently' : `until ${b.expires}`;
}

function openStore(config: Config, create: boolean): SqliteStore | null {
  if (!create && !existsSync(config.sqlitePath)) return null;
  if (create) mkdirSync(config.dataDir, { recursive: true, mode: 0o700 });
  return openSqliteStore(config.sqlitePath, { server: config.serverName });
}

function offlineManager(config: Config, store: SqliteStore): { bans: BanManager; guard: NeverBan } {
  const guard = NeverBan.create(config.ignoredIps, config.protectSessions, silentLogger);
  const byName = new Map(config.rules.filter((r) => r.enabled).map((r) => [r.name, r]));
  const bans = new BanManager({
    store,
    enforcers: [],
    ignore: guard,
    banTime: (r) => byName.get(r)?.banTime ?? config.banTime,
    failedAttempts: (r) => byName.get(r)?.policy.failedAttempts ?? 5,
    banTimeFactor: config.banTimeFactor,
    banTimeMax: config.banTimeMax,
    server: config.serverName,
    logger: silentLogger,
  });
  return { bans, guard };
}

const notRunning = (config: Config) => `daemon not running (no answer on ${config.controlSocket})`;

export async function banCommand(config: Config, ipText: string, o: { duration?: string; reason?: string }, out: Out): Promise<void> {
  const ip = usage(() => parseIp(ipText));
  const duration = o.duration === undefined ? undefined : usage(() => parseDuration(o.duration!));
  const req: Request = { cmd: 'ban', ip };
  if (duration !== undefined) req.duration = duration;
  if (o.reason !== undefined) req.reason = o.reason;
  const r = await ask(config, req);
  if (r !== null) {
    const b = r.ban as ListedBan;
    out(`banned ${b.ip} ${until(b)} (ban ${b.ban_count} of this address${r.replaced ? ', replacing its previous ban' : ''})`);
    if (r.enforced === false) out('warning: the firewall change failed; the daemon retries it (see tsfilter status)');
    return;
  }
  const store = openStore(config, true)!;
  try {
    const { bans, guard } = offlineManager(config, store);
    try {
      const res = await bans.manualBan(ip, duration, o.reason);
      const b = toListed(res.record);
      out(`${notRunning(config)}: banned ${b.ip} ${until(b)} in the store ${config.sqlitePath}; it will be applied when the daemon starts`);
    } catch (e) {
      if ((e as { kind?: unknown }).kind === 'usage') throw new UsageError((e as Error).message);
      throw e;
    } finally {
      guard.stop();
    }
  } finally {
    store.close();
  }
}

export async function unbanCommand(config: Config, ipText: string | undefined, o: { all?: boolean }, out: Out): Promise<void> {
  if (o.all && ipText !== undefined) throw new UsageError('give an IP address or --all, not both');
  if (!o.all && ipText === undefined) throw new UsageError('give the IP address to unban, or --all');
  const ip = o.all ? undefined : usage(() => parseIp(ipText));
  const r = await ask(config, ip === undefined ? { cmd: 'unban', all: true } : { cmd: 'unban', ip });
  if (r !== null) {
    if (ip === undefined) out(`unbanned ${(r.unbanned as string[]).length} address(es)`);
    else out(r.removed ? `unbanned ${ip}` : `${ip} was not banned`);
    if (typeof r.still_blocked_by === 'string') out(`note: ${ip} is still blocked by the ban of ${r.still_blocked_by} (tsfilter unban ${r.still_blocked_by})`);
    if (r.enforced === false) out('warning: the firewall change failed; the daemon retries it (see tsfilter status)');
    return;
  }
  const store = openStore(config, false);
  if (store === null) {
    out(`${notRunning(config)}: no store at ${config.sqlitePath}, nothing is banned`);
    return;
  }
  try {
    const { bans, guard } = offlineManager(config, store);
    guard.stop();
    const later = 'the firewall will be updated when the daemon starts';
    if (ip === undefined) {
      const res = await bans.unbanAll();
      out(`${notRunning(config)}: unbanned ${res.ips.length} address(es) in the store ${config.sqlitePath}; ${later}`);
    } else {
      const res = await bans.unban(ip);
      out(
        res.removed
          ? `${notRunning(config)}: unbanned ${ip} in the store ${config.sqlitePath}; ${later}`
          : `${notRunning(config)}: ${ip} was not banned (store ${config.sqlitePath})`,
      );
    }
  } finally {
    store.close();
  }
}

export async function listCommand(config: Config, o: { json?: boolean }, out: Out, note: Out): Promise<void> {
  const r = await ask(config, { cmd: 'list' });
  let bans: ListedBan[];
  if (r !== null) {
    bans = r.bans as ListedBan[];
  } else {
    const store = openStore(config, false);
    try {
      bans = store === null ? [] : store.activeBans(Date.now()).map(toListed);
    } finally {
      store?.close();
    }
    note(`${notRunning(config)}: bans read from the store ${config.sqlitePath}`);
  }
  if (o.json) {
    for (const b of bans) out(JSON.stringify(b));
    return;
  }
  if (bans.length === 0) {
    out('no active bans');
    return;
  }
  const rows = [['IP', 'RULE', 'BLOCKS', 'ORIGIN', 'NODE', 'SINCE', 'EXPIRES', 'BANS', 'COUNTRY', 'REASON']];
  for (const b of bans) {
    rows.push([b.ip, b.rule, b.blocks ?? 'all', b.origin, b.node ?? '-', b.since, b.expires ?? 'permanent', String(b.ban_count), b.country_code ?? b.country ?? '-', escapeControls(b.reason)]);
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((row) => row[i]!.length)));
  for (const row of rows) out(row.map((c, i) => (i === row.length - 1 ? c : c.padEnd(widths[i]!))).join('  '));
  out(`${bans.length} active ban(s)`);
}

export async function statusCommand(config: Config, o: { json?: boolean }, out: Out): Promise<void> {
  const r = await ask(config, { cmd: 'status' });
  if (r === null) throw new NotRunningError(`not running: no daemon answers on ${config.controlSocket}`);
  const s = r.status as Record<string, any>;
  if (o.json) {
    out(JSON.stringify(s));
    return;
  }
  out(`tsfilter running (pid ${s.pid}), up ${formatUptime(s.uptime_s)} since ${s.started}`);
  out(`config ${s.config}; store ${s.store}; reloads ${s.reloads}`);
  out(`active bans: ${s.active_bans}; tracked addresses: ${s.tracked_ips}`);
  for (const e of s.enforcers as Record<string, unknown>[]) {
    const { name, ok, ...rest } = e;
    out(`enforcer ${name}: ${ok ? 'ok' : 'FAILING'}${Object.keys(rest).length ? ' ' + JSON.stringify(rest) : ''}`);
  }
  const en = s.enforcement as Record<string, any>;
  if (en.pending_retries > 0) out(`firewall changes waiting for retry: ${en.pending_retries} (next in ${en.next_retry_in_s} s; last error: ${en.last_error?.error})`);
  const f = s.fleet as Record<string, any> | undefined;
  if (f) {
    const peers = (f.peers as { name: string; seen_s_ago: number }[]).map((p) => `${p.name} (${p.seen_s_ago} s ago)`).join(', ') || 'none seen in the last minute';
    out(
      `fleet: node ${f.node}, ${f.schema} schema on ${f.redis}, ${f.connected ? 'connected' : `DISCONNECTED for ${f.outage_s} s (${f.last_error ?? 'no answer'})`}; ` +
        `outbox ${f.outbox}; lag ${f.lag_ms_last ?? '-'} ms (max ${f.lag_ms_max_1m ?? '-'} ms in the last minute); peers: ${peers}` +
        (f.name_conflict ? `; NAME CONFLICT with instance ${f.name_conflict}` : ''),
    );
  }
  for (const ru of s.rules as Record<string, any>[]) {
    out(`rule ${ru.name}: lines=${ru.lines} matched=${ru.matched} successes=${ru.successes} bans=${ru.bans}`);
  }
  for (const so of s.sources as Record<string, any>[]) {
    const where = so.kind === 'journal' ? `cursor ${so.cursor ?? '-'}` : (so.files as { path: string; offset: number }[]).map((f) => `${f.path}@${f.offset}`).join(', ') || 'no file yet';
    out(`source ${so.name}: ${so.linesRead} lines read; ${where}${so.error ? `; error: ${so.error}` : ''}`);
  }
}

function formatUptime(sec: number): string {
  const d = Math.floor(sec / 86400);
  const h = Math.floor((sec % 86400) / 3600);
  const m = Math.floor((sec % 3600) / 60);
  return `${d > 0 ? `${d}d ` : ''}${h}h ${m}m ${sec % 60}s`;
}
