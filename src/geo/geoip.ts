import { existsSync, statSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import maxmind, { type Reader, type Response } from 'maxmind';
import { normalizeIp } from '../detect/ip.ts';
import type { Logger } from '../util/logger.ts';

export interface Country {
  /** ISO 3166-1 alpha-2 code, e.g. "GB". */
  iso: string;
  /** English name, e.g. "United Kingdom". */
  name: string;
}

export interface GeoIpOptions {
  /** How often the file is checked for a replacement, in ms. */
  pollMs?: number;
  /** Called after every attempt to (re)load a changed file; tests wait on it instead of sleeping. */
  onLoad?: (result: { ok: boolean; path: string }) => void;
}

/** PyFilter's file name, looked up in the working directory when no path is configured. */
export const PYFILTER_DATABASE = 'GeoLite2-Country.mmdb';

/**
 * The configured path (relative to `cwd`), else PyFilter's `GeoLite2-Country.mmdb` in `cwd` when it exists, else
 * null (no GeoIP). A configured path is returned even when missing, so open() can say why it is unusable.
 */
export function findDatabase(configured: string | null, cwd: string): string | null {
  if (configured !== null && configured !== '') return resolve(cwd, configured);
  const fallback = join(cwd, PYFILTER_DATABASE);
  try {
    return existsSync(fallback) && statSync(fallback).isFile() ? fallback : null;
  } catch {
    return null;
  }
}

const ISO = /^[A-Z]{2}$/;

/**
 * The country of one database record. Country and City databases (MaxMind and DB-IP alike) carry `country`;
 * `registered_country` (where the block is registered) is the fallback for blocks with no located country, e.g.
 * anycast ranges. Records come from a file, so every field is checked rather than trusted.
 */
export function countryOf(record: unknown): Country | null {
  if (typeof record !== 'object' || record === null) return null;
  const r = record as Record<string, unknown>;
  return pick(r.country) ?? pick(r.registered_country);
}

function pick(c: unknown): Country | null {
  if (typeof c !== 'object' || c === null) return null;
  const { iso_code: iso, names } = c as { iso_code?: unknown; names?: unknown };
  if (typeof iso !== 'string' || !ISO.test(iso)) return null;
  const en = typeof names === 'object' && names !== null ? (names as Record<string, unknown>).en : undefined;
  return { iso, name: typeof en === 'string' && en !== '' ? en : iso };
}

/** Identity of the file on disk: a rename over it changes ino, a rewrite in place changes size or mtime. */
type Signature = string;
const MISSING: Signature = 'missing';

async function signature(path: string): Promise<Signature> {
  try {
    const s = await stat(path);
    return `${s.ino}:${s.size}:${s.mtimeMs}:${s.ctimeMs}`;
  } catch {
    return MISSING;
  }
}

function reason(err: unknown): string {
  const code = (err as NodeJS.ErrnoException | null)?.code;
  if (code === 'ENOENT') return 'file not found';
  if (code === 'EACCES' || code === 'EPERM') return 'permission denied';
  if (code === 'EISDIR') return 'is a directory, not a file';
  const msg = err instanceof Error ? err.message : String(err);
  return `not a valid MaxMind database (${msg})`;
}

// A few lookups right after parsing: a file whose metadata parses but whose search tree is garbage fails here,
// at load time, rather than on the first ban.
const PROBES = ['1.1.1.1', '81.2.69.142', '203.0.113.1', '2001:218::1', '2001:db8::1'];

async function load(path: string): Promise<Reader<Response>> {
  const reader = await maxmind.open<Response>(path);
  for (const ip of PROBES) reader.get(ip);
  return reader;
}

/**
 * Country lookups from a MaxMind-format database (GeoLite2/GeoIP2/DB-IP, Country or City).
 *
 * GeoIP is optional: a missing, unreadable or corrupt file is one warning and lookups answer null, so the daemon
 * keeps banning without countries. The file is polled (stat every `pollMs`) rather than watched with fs.watch:
 * geoipupdate and similar tools rename a new file over the old one, which an inotify watch on the file loses, a
 * directory watch needs the directory to exist and sees every neighbour, and inotify is silent on NFS and some
 * container mounts; one stat every 30 s costs nothing for a file updated weekly. Polling also picks up a database
 * that appears after start. A new file is parsed completely before it replaces the old reader in one assignment,
 * so a lookup never sees a half-loaded database; a replacement that fails to parse keeps the old one.
 */
export class GeoIp {
  private reader: Reader<Response> | null = null;
  private sig: Signature = MISSING;
  private timer: NodeJS.Timeout | null = null;
  private checking = false;
  private closed = false;
  private lookupFailed = false;

  private constructor(
    readonly path: string,
    private readonly logger: Logger,
    private readonly opts: GeoIpOptions,
  ) {}

  /** Never throws: an unusable file is logged once and yields an instance whose lookups return null. */
  static async open(path: string, logger: Logger, opts: GeoIpOptions = {}): Promise<GeoIp> {
    const g = new GeoIp(path, logger, opts);
    g.sig = await signature(path);
    try {
      g.install(await load(path));
    } catch (err) {
      logger.warn('GeoIP database unusable; running without countries', { path, reason: reason(err) });
    }
    const pollMs = opts.pollMs ?? 30_000;
    g.timer = setInterval(() => void g.check(), pollMs);
    g.timer.unref();
    return g;
  }

  /** The loaded database's type (e.g. "GeoLite2-Country"), or null when none is loaded. */
  get databaseType(): string | null {
    return this.reader?.metadata.databaseType ?? null;
  }

  /**
   * What bans and country policies use: the address's country, null when the database does not know it, undefined
   * while no usable database is loaded (then no country sentence and no policy, as PyFilter without one).
   */
  country(ip: string): Country | null | undefined {
    return this.reader === null ? undefined : this.lookup(ip);
  }

  /** Country of a single address; null for a prefix, a non-address, an unknown address or no database. */
  lookup(ip: string): Country | null {
    const reader = this.reader;
    if (reader === null) return null;
    const addr = normalizeIp(ip);
    if (addr === null) return null;
    try {
      return countryOf(reader.get(addr));
    } catch (err) {
      // Corruption the load-time probes missed: say so once per database, not once per ban.
      if (!this.lookupFailed) {
        this.lookupFailed = true;
        this.logger.warn('GeoIP lookup failed; the database may be corrupt', { path: this.path, ip: addr, error: err });
      }
      return null;
    }
  }

  /** Stops polling; lookups keep answering from the database already loaded. */
  close(): void {
    this.closed = true;
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }

  private install(reader: Reader<Response>): void {
    this.reader = reader;
    this.lookupFailed = false;
    const epoch = reader.metadata.buildEpoch;
    const built = Number.isFinite(epoch.getTime()) ? epoch.toISOString().slice(0, 10) : 'unknown';
    this.logger.info('GeoIP database loaded', { path: this.path, type: reader.metadata.databaseType, built });
  }

  private async check(): Promise<void> {
    if (this.checking || this.closed) return;
    this.checking = true;
    try {
      const before = await signature(this.path);
      if (before === this.sig) return;
      this.sig = before;
      if (before === MISSING) {
        // A rename-based update never leaves the path missing, so this is a deletion: keep answering.
        if (this.reader !== null) this.logger.warn('GeoIP database file removed; keeping the loaded copy', { path: this.path });
        return;
      }
      let ok = false;
      try {
        const reader = await load(this.path);
        if (this.closed) return;
        this.install(reader);
        ok = true;
      } catch (err) {
        // A file still being written in place fails to parse; stay quiet and let the next poll retry it.
        if ((await signature(this.path)) !== before) {
          this.sig = 'retry';
          return;
        }
        this.logger.warn(
          this.reader !== null
            ? 'GeoIP database changed but is unusable; keeping the previous one'
            : 'GeoIP database unusable; running without countries',
          { path: this.path, reason: reason(err) },
        );
      }
      this.opts.onLoad?.({ ok, path: this.path });
    } finally {
      this.checking = false;
    }
  }
}
