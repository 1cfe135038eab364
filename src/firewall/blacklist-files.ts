import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, readdirSync, unlinkSync } from 'node:fs';
import { mkdir, open, rename, unlink } from 'node:fs/promises';
import path from 'node:path';
import type { Enforcer, Enforcement, EnforcerHealth, FirewallLogger, PortScope } from './types.ts';
import { canonicalTarget } from './target.ts';
import { formatBlacklist, parseBlacklist, type BlacklistEntry } from './pyfilter-blacklist.ts';

/*
 * PyFilter's Config/blacklist.v4 and blacklist.v6 (iptables-save format), kept current by TSFilter so that a user can
 * still unban the PyFilter way (delete the line, restart) and PyFilter itself could read them back.
 *
 * To tell a line the user deleted from a ban TSFilter never wrote, TSFilter keeps a sidecar next to the files,
 * .tsfilter-blacklist.json, listing the sources it last wrote. At start (readBlacklistChanges, before the enforcer
 * writes anything): in a file but not in the sidecar = imported (PyFilter's bans, or lines the user added); in the
 * sidecar but no longer in its file = removed (unban it). Without a sidecar (first start after PyFilter) everything is
 * imported and nothing removed. A file that does not exist says nothing: its sources are neither imported nor
 * removed (an unmounted or not yet created Config dir must not unban everything).
 *
 * Writes are atomic: temp file in the same dir, fsync, rename, then fsync of the dir; the blacklist files first and
 * the sidecar last, so a crash in between can only make the next start re-import a ban that is already in the store
 * or report as removed a source already unbanned, never resurrect an unbanned source.
 */

export const SIDECAR = '.tsfilter-blacklist.json';
const FILES = [
  ['blacklist.v4', 4],
  ['blacklist.v6', 6],
] as const;
const TMP_MARK = '.tmp-';

/** A ban read from a blacklist file, and which file. */
export interface ImportedBan extends BlacklistEntry {
  file: string;
}

export interface BlacklistSkipped {
  file: string;
  line: number;
  text: string;
  reason: string;
}

export interface BlacklistChanges {
  imported: ImportedBan[];
  removed: string[];
  skipped: BlacklistSkipped[];
}

function readFile(file: string): string | null {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new Error(`cannot read ${file}: ${(err as Error).message}`);
  }
}

/** The bans in one blacklist file (PyFilter's lines and TSFilter's port-scoped ones) and the lines skipped. */
function readOne(file: string, family: 4 | 6): { entries: ImportedBan[]; skipped: BlacklistSkipped[] } | null {
  const text = readFile(file);
  if (text === null) return null;
  const parsed = parseBlacklist(text, family);
  return { entries: parsed.entries.map((e) => ({ ...e, file })), skipped: parsed.skipped.map((s) => ({ file, ...s })) };
}

/** The sources TSFilter last wrote, or null when there is no usable sidecar. */
function readSidecar(dir: string, skipped: BlacklistSkipped[]): Set<string> | null {
  const file = path.join(dir, SIDECAR);
  const text = readFile(file);
  if (text === null) return null;
  try {
    const j = JSON.parse(text) as { sources?: unknown };
    if (!Array.isArray(j.sources)) throw new Error('no "sources" list');
    const out = new Set<string>();
    for (const s of j.sources) {
      const t = canonicalTarget(s);
      if (t !== null) out.add(t.text);
    }
    return out;
  } catch (err) {
    // Treated as absent: everything in the files is imported (bans the store may already hold), nothing removed.
    skipped.push({ file, line: 0, text: text.slice(0, 120), reason: `unreadable TSFilter state (${(err as Error).message}); treated as absent` });
    return null;
  }
}

/** Compares blacklist.v4/.v6 in `dir` with the sidecar TSFilter wrote there; see the comment at the top. */
export function readBlacklistChanges(dir: string): BlacklistChanges {
  const skipped: BlacklistSkipped[] = [];
  const inFiles = new Map<string, ImportedBan>();
  const present = new Set<4 | 6>();
  for (const [name, family] of FILES) {
    const r = readOne(path.join(dir, name), family);
    if (r === null) continue;
    present.add(family);
    skipped.push(...r.skipped);
    for (const e of r.entries) if (!inFiles.has(e.ip)) inFiles.set(e.ip, e);
  }
  const last = readSidecar(dir, skipped);
  const imported = [...inFiles.values()].filter((e) => last === null || !last.has(e.ip));
  const removed = last === null ? [] : [...last].filter((s) => !inFiles.has(s) && present.has(canonicalTarget(s)!.family));
  return { imported, removed, skipped };
}

export interface BlacklistFilesOptions {
  /** The folder holding blacklist.v4/.v6 (the daemon passes <data_dir>/Config). */
  dir: string;
  denyType: 'DROP' | 'REJECT';
  logger: FirewallLogger;
  /** Wait this long after a change before writing, so a burst of bans is one write. Default 2000. */
  debounceMs?: number;
  now?: () => number;
}

export interface BlacklistFilesHealth extends EnforcerHealth {
  ok: boolean;
  bans: number;
  lastWrite?: string;
  lastError?: string;
}

/**
 * Keeps blacklist.v4/.v6 and the sidecar equal to the active bans it is given. Call readBlacklistChanges() before
 * start(): start() seeds the map from the files, and the first write replaces what the files held.
 */
export class BlacklistFilesEnforcer implements Enforcer {
  readonly name = 'pyfilter-blacklist';
  private readonly bans = new Map<string, PortScope | null>();
  private readonly dir: string;
  private readonly debounceMs: number;
  private timer: NodeJS.Timeout | null = null;
  private dirty = false;
  private writing: Promise<void> = Promise.resolve();
  private readonly state: BlacklistFilesHealth = { ok: true, bans: 0 };

  constructor(private readonly opts: BlacklistFilesOptions) {
    if (opts.denyType !== 'DROP' && opts.denyType !== 'REJECT') throw new TypeError(`deny_type must be DROP or REJECT, got ${String(opts.denyType)}`);
    this.dir = opts.dir;
    this.debounceMs = opts.debounceMs ?? 2000;
  }

  /** Seeds the map from the files (so elements() lists them for reconciliation) and removes stale temp files. */
  async start(): Promise<void> {
    for (const [name, family] of FILES) {
      const r = readOne(path.join(this.dir, name), family);
      for (const e of r?.entries ?? []) this.bans.set(e.ip, e.scope ?? null);
    }
    this.removeStaleTemps();
  }

  async ban(bans: Enforcement[]): Promise<void> {
    const now = (this.opts.now ?? Date.now)();
    const valid: [string, PortScope | null][] = [];
    const bad: string[] = [];
    for (const b of bans) {
      const t = canonicalTarget(b.ip);
      if (t === null) bad.push(b.ip);
      else if (b.expiresAt === null || b.expiresAt > now) valid.push([t.text, b.scope && b.scope.ports.length > 0 ? b.scope : null]);
    }
    if (bad.length > 0) throw new TypeError(`not an IP address or prefix: ${bad.slice(0, 3).map((b) => JSON.stringify(String(b).slice(0, 60))).join(', ')}`);
    let changed = false;
    for (const [ip, scope] of valid) {
      const prev = this.bans.get(ip);
      if (prev === undefined || JSON.stringify(prev) !== JSON.stringify(scope)) {
        this.bans.set(ip, scope);
        changed = true;
      }
    }
    if (changed) this.changed();
  }

  async reconcile(active: Enforcement[]): Promise<void> {
    await this.ban(active);
  }

  async unban(ips: string[]): Promise<void> {
    let changed = false;
    for (const ip of ips) {
      const t = canonicalTarget(ip);
      if (t !== null && this.bans.delete(t.text)) changed = true;
    }
    if (changed) this.changed();
  }

  /** Writes any pending change now; never throws (a failure is logged and kept for the next try). */
  async flush(): Promise<void> {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    const run = this.writing.then(() => (this.dirty ? this.write() : undefined));
    this.writing = run;
    await run;
  }

  async stop(): Promise<void> {
    await this.flush();
  }

  async elements(): Promise<string[]> {
    return [...this.bans.keys()];
  }

  health(): BlacklistFilesHealth {
    return { ...this.state, bans: this.bans.size };
  }

  private changed(): void {
    this.dirty = true;
    if (this.timer !== null) return;
    this.timer = setTimeout(() => void this.flush(), this.debounceMs);
    this.timer.unref();
  }

  private async write(): Promise<void> {
    this.dirty = false;
    const list = [...this.bans].map(([ip, scope]) => ({ ip, scope }));
    const now = new Date((this.opts.now ?? Date.now)());
    try {
      await mkdir(this.dir, { recursive: true, mode: 0o700 });
      for (const [name, family] of FILES) await writeAtomic(path.join(this.dir, name), formatBlacklist(list, family, this.opts.denyType, now));
      await writeAtomic(path.join(this.dir, SIDECAR), JSON.stringify({ version: 1, written: now.toISOString(), sources: list.map((b) => b.ip) }) + '\n');
      await fsyncDir(this.dir);
      this.state.ok = true;
      this.state.lastWrite = now.toISOString();
      delete this.state.lastError;
    } catch (err) {
      // Retried at the next change or at stop().
      this.dirty = true;
      this.state.ok = false;
      this.state.lastError = (err as Error).message;
      this.opts.logger.error('cannot write the PyFilter blacklist files', { dir: this.dir, error: (err as Error).message });
    }
  }

  private removeStaleTemps(): void {
    let names: string[];
    try {
      names = readdirSync(this.dir);
    } catch {
      return;
    }
    for (const n of names) {
      if (!n.includes(TMP_MARK) || ![...FILES.map(([f]) => f), SIDECAR].some((f) => n.startsWith(`.${f}${TMP_MARK}`))) continue;
      try {
        unlinkSync(path.join(this.dir, n));
      } catch {
        /* gone already */
      }
    }
  }
}

/** Temp file in the same dir (so rename is atomic), 0600, fsynced, renamed over `file`. */
async function writeAtomic(file: string, text: string): Promise<void> {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}${TMP_MARK}${process.pid}-${randomBytes(4).toString('hex')}`);
  const fh = await open(tmp, 'wx', 0o600);
  try {
    await fh.writeFile(text, 'utf8');
    await fh.sync();
  } catch (err) {
    await fh.close().catch(() => {});
    await unlink(tmp).catch(() => {});
    throw err;
  }
  await fh.close();
  try {
    await rename(tmp, file);
  } catch (err) {
    await unlink(tmp).catch(() => {});
    throw err;
  }
}

/** Makes the renames durable. */
async function fsyncDir(dir: string): Promise<void> {
  if (!existsSync(dir)) return;
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
