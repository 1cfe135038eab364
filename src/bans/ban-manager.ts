import type { BanDecision } from '../detect/types.ts';
import type { Enforcer, Enforcement, PortScope } from '../firewall/types.ts';
import { canonicalTarget, normalizeSource, prefixOf, targetContains, type Target } from '../firewall/target.ts';
import type { BanRecord, Store } from '../store/types.ts';
import type { FleetEvent } from '../store/fleet-event.ts';
import type { Country } from '../geo/geoip.ts';
import type { Logger } from '../util/logger.ts';
import { BanLog, banMessage, countrySentence } from './ban-log.ts';
import { banDuration } from './duration.ts';
import { REPLACED_BY_MANUAL, replacedByRemote, UNBANNED, UNBANNED_ALL, unbannedOn, widenedTo } from './end-reasons.ts';

export interface BanManagerOptions {
  store: Store;
  enforcers: Enforcer[];
  /**
   * Addresses that must never be banned, checked again here so no path around the detector can ban them.
   * why() (optional) says why, for the message a refused manual ban gets.
   */
  ignore: { has(ip: string): boolean; why?(ip: string): string | null; whyRange?(t: Target): string | null };
  /** What a rule's bans block (its `ports`); null or absent: all traffic. */
  scope?(rule: string): PortScope | null;
  /** Subnet escalation (settings.subnet_bans); absent or disabled: none. */
  subnetBans?: SubnetBanSettings;
  /**
   * Fleet sync: called for every ban or unban made on this node (not for remote ones, nor for expiry, which every
   * node does by itself), inside the store transaction that makes it, so the event is as durable as the change.
   */
  onChange?: (ev: FleetEvent) => void;
  /** GeoIP: an address's country (null: unknown; undefined: no usable database right now). */
  country?: (ip: string) => Country | null | undefined;
  /** Called after an address is banned or unbanned by hand (the daemon: detector.forget). */
  forget?: (ip: string) => void;
  /** Seconds for a rule's bans; <= 0 is permanent. */
  banTime(rule: string): number;
  failedAttempts(rule: string): number;
  /** Escalation: each new ban of an address lasts the previous one times this (1: none), up to banTimeMax s. */
  banTimeFactor?: number;
  banTimeMax?: number;
  server: string;
  logger: Logger;
  banLog?: BanLog;
  now?: () => number;
  /** Date bans from the line that earned them instead of the clock (replay: old logs ban as they would have). */
  useEventTime?: boolean;
}

type BanInput = Omit<BanRecord, 'banCount'>;

export interface SubnetBanSettings {
  enabled: boolean;
  ipv4Prefix: number;
  ipv6Prefix: number;
  /** Distinct addresses of one prefix banned within findTime seconds that ban the prefix. */
  threshold: number;
  findTime: number;
}

/** Whether a ban with scope `have` already blocks everything a ban with scope `want` would. */
export function scopeCovers(have: PortScope | null | undefined, want: PortScope | null | undefined): boolean {
  if (!have) return true;
  if (!want) return false;
  return have.protocol === want.protocol && want.ports.every((p) => have.ports.includes(p));
}

/** The scope that blocks both: the union of the ports for one protocol, all traffic otherwise. */
function widen(a: PortScope | null | undefined, b: PortScope | null | undefined): PortScope | null {
  if (!a || !b || a.protocol !== b.protocol) return null;
  return { protocol: a.protocol, ports: [...new Set([...a.ports, ...b.ports])].sort((x, y) => x - y) };
}

/** A local ban as a fleet event. */
export function banEvent(b: BanRecord): FleetEvent {
  return {
    v: 1, kind: 'ban', ip: b.ip, node: b.server, at: b.createdAt, rule: b.rule, reason: b.reason, createdAt: b.createdAt,
    expiresAt: b.expiresAt, scope: b.scope ?? null, country: b.country ?? null, countryCode: b.countryCode ?? null,
  };
}

/** What BanManager.applyRemote needs from fleet sync's state (src/store/fleet-state.ts). */
export interface RemoteRules {
  /** The cursor, committed with the bans. */
  commit(): void;
  /** Records a change at `at` unless a later one is known (then false: the event is stale). */
  bumpVersion(ip: string, at: number): boolean;
  /** The time of the latest change to `ip` known here. */
  latest(ip: string): number | undefined;
  /** Records that `node` reported `ip`; returns how many distinct nodes did recently. */
  reporters(ip: string, node: string, at: number): number;
  minServers: number;
}

function toEnforcement(b: BanRecord, ip = b.ip): Enforcement {
  const e: Enforcement = { ip, expiresAt: b.expiresAt, rule: b.rule };
  if (b.scope) e.scope = b.scope;
  return e;
}

/** Prefixes tracked for subnet escalation at most; the oldest are dropped first (bounded memory under a flood). */
const MAX_TRACKED_PREFIXES = 50_000;

/** A request the caller may not make (ignored or protected address, not an IP): exit code 2 in the CLI. */
export class BanRefused extends Error {
  readonly kind = 'usage' as const;
}

export interface ManualBanResult {
  record: BanRecord;
  /** An active ban of the address was replaced by this one. */
  replaced: boolean;
  /** Every enforcer applied it; false: stored, and enforcement is being retried. */
  enforced: boolean;
}

/** The first retry of a failed firewall change comes after this; each failure doubles it up to RETRY_MAX_MS. */
export const RETRY_MIN_MS = 1000;
export const RETRY_MAX_MS = 60_000;

interface RetryQueue {
  bans: Map<string, Enforcement>;
  unbans: Set<string>;
}
interface Decided {
  input: BanInput;
  record: BanRecord;
  instant: boolean;
  /** Handed to the enforcers already (early, or after a failed commit). */
  enforced: boolean;
  /** Logged as banned already (after a failed commit: it was enforced before it could be stored). */
  announced: boolean;
  /** An active ban with a narrower scope is replaced by this wider one. */
  replaces?: boolean;
}

/**
 * Turns decisions into durable bans. decide() only reads the store, so detection goes on while another program
 * holds the database's write lock. The caller then writes the batch's bans with writePending() inside the same
 * store transaction as the positions and counters of the lines that earned them, and says committed() or
 * rolledBack(). Committed bans are announced and enforced; bans whose transaction failed are enforced anyway (the
 * attack is real) and written again with the next transaction, so a decided ban is never dropped and the position
 * of its lines never advances without it.
 */
export class BanManager {
  private pending: Decided[] = [];
  /** Addresses with a decided, not yet stored ban: its expiry, and how many such bans (replay can decide several). */
  private readonly pendingIps = new Map<string, { expiresAt: number | null; count: number }>();
  private written: Decided[] = [];
  private uncommitted: Decided[] = [];
  private toAnnounce: Decided[] = [];
  private readonly now: () => number;
  bansDecided = 0;
  /** Firewall changes that failed, per enforcer, retried with backoff by retry(). */
  private readonly failed = new Map<Enforcer, RetryQueue>();
  private retryDelayMs = RETRY_MIN_MS;
  private nextRetryAt = 0;
  private lastError: { enforcer: string; error: string; at: number } | null = null;
  private retrying = false;
  private readonly refusedLogged = new Set<string>();
  /** Active prefix bans (few): an address inside one needs no ban of its own. */
  private prefixBans = new Map<string, { target: Target; expiresAt: number | null; scope: PortScope | null }>();
  /** Subnet escalation: per prefix, the addresses banned in it recently and when (insertion order = age). */
  private readonly recentByPrefix = new Map<string, Map<string, number>>();

  constructor(private readonly o: BanManagerOptions) {
    this.now = o.now ?? Date.now;
    this.loadPrefixBans();
  }

  /**
   * (Re)reads the active prefix bans and, for subnet escalation, the recent address bans from the store; for a caller
   * that changed the store directly (start-up imports).
   */
  loadPrefixBans(): void {
    const now = this.now();
    this.prefixBans = new Map();
    for (const b of this.o.store.activeBans(now)) {
      const t = canonicalTarget(b.ip);
      if (t === null) continue;
      if (t.isPrefix) this.prefixBans.set(t.text, { target: t, expiresAt: b.expiresAt, scope: b.scope ?? null });
      else if (this.o.subnetBans?.enabled && b.origin === 'local') this.noteForSubnet(t.text, b.createdAt);
    }
  }

  private notePrefixBan(b: BanRecord): void {
    if (!b.ip.includes('/')) return;
    const t = canonicalTarget(b.ip);
    if (t?.isPrefix) this.prefixBans.set(t.text, { target: t, expiresAt: b.expiresAt, scope: b.scope ?? null });
  }

  /** Why a source must not be banned (ignored, protected, or a range holding such an address), or null. */
  private whyNot(t: Target): string | null {
    if (t.isPrefix) return this.o.ignore.whyRange?.(t) ?? null;
    if (this.o.ignore.why) return this.o.ignore.why(t.text);
    return this.o.ignore.has(t.text) ? 'an ignored or protected address' : null;
  }

  /** The store's country fields for an address (none for a prefix, or without a usable GeoIP database). */
  private countryFields(ip: string | undefined): { country: string | null; countryCode: string | null } {
    const c = ip === undefined ? null : (this.o.country?.(ip) ?? null);
    return { country: c?.name ?? null, countryCode: c?.iso ?? null };
  }

  private countryName(ip: string): string | null | undefined {
    const c = this.o.country?.(ip);
    return c === undefined ? undefined : (c?.name ?? null);
  }

  private scopeOf(rule: string): PortScope | null {
    return this.o.scope?.(rule) ?? null;
  }

  /** An active prefix ban that already blocks `ip` for `scope`, or undefined. */
  private coveringPrefix(ip: string, scope: PortScope | null, now: number): string | undefined {
    if (this.prefixBans.size === 0) return undefined;
    for (const [text, p] of this.prefixBans) {
      if (p.expiresAt !== null && p.expiresAt <= now) {
        this.prefixBans.delete(text);
        continue;
      }
      if (targetContains(p.target, ip) && scopeCovers(p.scope, scope)) return text;
    }
    return undefined;
  }

  /** Records a local ban of `ip` for subnet escalation; returns the prefix and its distinct recent addresses. */
  private noteForSubnet(ip: string, at: number): { prefix: Target; count: number } | null {
    const sb = this.o.subnetBans;
    if (!sb?.enabled) return null;
    const prefix = prefixOf(ip, ip.includes(':') ? sb.ipv6Prefix : sb.ipv4Prefix);
    if (prefix === null) return null;
    let recent = this.recentByPrefix.get(prefix.text);
    if (recent === undefined) {
      if (this.recentByPrefix.size >= MAX_TRACKED_PREFIXES) this.recentByPrefix.delete(this.recentByPrefix.keys().next().value!);
      recent = new Map();
      this.recentByPrefix.set(prefix.text, recent);
    }
    const since = at - sb.findTime * 1000;
    for (const [a, t] of recent) if (t < since) recent.delete(a);
    recent.delete(ip);
    recent.set(ip, at);
    return { prefix, count: recent.size };
  }

  /** SIGHUP: new durations and escalation settings (the functions may close over the new config). */
  reconfigure(p: Pick<BanManagerOptions, 'banTime' | 'failedAttempts' | 'banTimeFactor' | 'banTimeMax' | 'subnetBans'>): void {
    this.o.subnetBans = p.subnetBans;
    this.o.banTime = p.banTime;
    this.o.failedAttempts = p.failedAttempts;
    this.o.banTimeFactor = p.banTimeFactor;
    this.o.banTimeMax = p.banTimeMax;
  }

  /** Seconds the next ban of a rule lasts after `previous` earlier bans of the address (escalated), null: permanent. */
  private durationFor(rule: string, previous: number): number | null {
    return banDuration(this.o.banTime(rule), previous, this.o.banTimeFactor ?? 1, this.o.banTimeMax);
  }

  /** Decides a ban; returns it (not yet stored), or null when the address is ignored or already banned. */
  decide(d: BanDecision): BanRecord | null {
    if (this.o.ignore.has(d.ip)) {
      // Only protected addresses get here (the detector does not count ignored ones): say so once per address.
      if (!this.refusedLogged.has(d.ip)) {
        if (this.refusedLogged.size >= 10_000) this.refusedLogged.clear();
        this.refusedLogged.add(d.ip);
        this.o.logger.warn('not banning a protected address', { ip: d.ip, rule: d.rule, why: this.o.ignore.why?.(d.ip) ?? 'ignored' });
      }
      return null;
    }
    const now = this.o.useEventTime ? d.time : this.now();
    const unstored = this.pendingIps.get(d.ip);
    if (unstored !== undefined && (unstored.expiresAt === null || unstored.expiresAt > now)) return null;
    let scope = this.scopeOf(d.rule);
    let replaces = false;
    const active = this.o.store.activeBan(d.ip, now);
    if (active) {
      if (scopeCovers(active.scope, scope)) return null;
      // Banned for other ports by another rule, now attacking these: one ban that blocks both.
      scope = widen(active.scope, scope);
      replaces = true;
    }
    if (this.coveringPrefix(d.ip, scope, now) !== undefined) return null;
    const country = this.o.country?.(d.ip);
    const record = this.push(d.ip, d.rule, now, scope, replaces, d.instant, {
      reason: banMessage(d.ip, d.rule, d.limit ?? this.o.failedAttempts(d.rule), d.instant, country === undefined ? undefined : (country?.name ?? null)),
      country: country ?? null,
      failures: d.failures,
      lines: d.lines,
    });
    if (!replaces) this.escalateSubnet(d.ip, d.rule, now, scope);
    return record;
  }

  /** Queues a decided ban of `ip` (an address or a prefix) for writePending(). */
  private push(
    ip: string,
    rule: string,
    now: number,
    scope: PortScope | null,
    replaces: boolean,
    instant: boolean,
    what: { reason: string; failures: number; lines?: string[]; country: Country | null },
  ): BanRecord {
    const unstored = this.pendingIps.get(ip);
    const previous = this.o.store.banCount(ip) + (unstored?.count ?? 0);
    const seconds = this.durationFor(rule, previous);
    const input: BanInput = {
      ip,
      rule,
      reason: what.reason,
      createdAt: now,
      expiresAt: seconds === null ? null : now + seconds * 1000,
      failures: what.failures,
      origin: 'local',
      server: this.o.server,
      country: what.country?.name ?? null,
      countryCode: what.country?.iso ?? null,
      lines: what.lines,
    };
    if (scope) input.scope = scope;
    const record: BanRecord = { ...input, banCount: previous + 1 };
    this.pending.push({ input, record, instant, enforced: false, announced: false, replaces });
    this.pendingIps.set(ip, { expiresAt: input.expiresAt, count: (unstored?.count ?? 0) + 1 });
    this.bansDecided++;
    return record;
  }

  /**
   * Subnet escalation: when `threshold` distinct addresses of one prefix were banned within find_time, the prefix
   * is banned too (sshguard's IPV6_SUBNET, but decided from the evidence). A prefix that would hold an ignored-wide
   * range, a loopback, this host's or a current SSH session's address is never banned (whyRange).
   */
  private escalateSubnet(ip: string, rule: string, now: number, scope: PortScope | null): void {
    const hit = this.noteForSubnet(ip, now);
    if (hit === null || hit.count < this.o.subnetBans!.threshold) return;
    const { prefix } = hit;
    const pend = this.pendingIps.get(prefix.text);
    if (pend !== undefined && (pend.expiresAt === null || pend.expiresAt > now)) return;
    const active = this.o.store.activeBan(prefix.text, now);
    if (active && scopeCovers(active.scope, scope)) return;
    const why = this.o.ignore.whyRange?.(prefix) ?? null;
    if (why !== null) {
      if (!this.refusedLogged.has(prefix.text)) {
        this.refusedLogged.add(prefix.text);
        this.o.logger.warn('not banning a prefix: it is protected', { prefix: prefix.text, rule, why });
      }
      return;
    }
    const addresses = [...this.recentByPrefix.get(prefix.text)!.keys()];
    this.recentByPrefix.delete(prefix.text);
    const banScope = active ? widen(active.scope, scope) : scope;
    this.push(prefix.text, rule, now, banScope, active !== undefined, false, {
      reason: `Subnet ${prefix.text} banned: ${addresses.length} of its addresses were banned via ${rule} within ${this.o.subnetBans!.findTime} s.`,
      failures: addresses.length,
      lines: addresses.map((a) => `banned ${a}`),
      country: null,
    });
  }

  /** Inside the caller's transaction: stores the decided bans, and again those whose transaction failed. */
  writePending(): void {
    const todo = [...this.uncommitted, ...this.pending];
    this.uncommitted = [];
    this.pending = [];
    this.pendingIps.clear();
    for (const d of todo) {
      if (d.replaces) this.o.store.removeBan(d.input.ip, d.input.createdAt, widenedTo(d.input.scope, d.input.rule));
      const { added, record } = this.o.store.addBan(d.input);
      // Not added: the address got an active ban meanwhile (another rule, the CLI): nothing more to do.
      if (added) {
        this.written.push({ ...d, record });
        this.notePrefixBan(record);
        this.o.onChange?.(banEvent(record));
      }
      else if (!d.announced) this.written.push({ ...d, record, enforced: true, announced: true });
    }
  }

  hasUncommitted(): boolean {
    return this.uncommitted.length > 0;
  }

  /** The transaction holding writePending() committed. */
  committed(): void {
    this.toAnnounce.push(...this.written);
    this.written = [];
  }

  /** The transaction holding writePending() rolled back: enforce the bans now, store them next time. */
  rolledBack(): void {
    const all = [...this.written, ...this.uncommitted, ...this.pending];
    this.written = [];
    this.pending = [];
    this.pendingIps.clear();
    for (const d of all) {
      if (d.announced) continue;
      this.o.logger.warn('ban decided but not yet stored; enforcing it and retrying the store', { ip: d.record.ip });
      this.toAnnounce.push({ ...d });
    }
    this.uncommitted = all.map((d) => ({ ...d, enforced: true, announced: true }));
  }

  /**
   * Hands the bans decided so far to the enforcers before they are stored, so the firewall change (an nft process,
   * a few ms) runs while the store's commit waits for the disk. Safe: were the commit to fail or the process to die
   * first, the lines are read again and the same bans decided again; the kernel element is already there.
   */
  enforceEarly(): void {
    const batch: Enforcement[] = [];
    for (const d of this.pending) {
      if (d.enforced) continue;
      d.enforced = true;
      batch.push(toEnforcement(d.record));
    }
    if (batch.length > 0) void this.enforce(batch);
  }

  /** Announces and enforces the bans committed since the last flush, as one batch per enforcer. */
  async flush(): Promise<void> {
    if (this.toAnnounce.length === 0) return;
    const decided = this.toAnnounce;
    this.toAnnounce = [];
    const batch: Enforcement[] = [];
    for (const d of decided) {
      const { record, instant } = d;
      if (!d.enforced) batch.push(toEnforcement(record));
      if (d.announced) continue;
      this.o.logger.info('banned', {
        ip: record.ip,
        rule: record.rule,
        failures: record.failures,
        instant,
        ban_count: record.banCount,
        until: record.expiresAt === null ? 'permanent' : new Date(record.expiresAt).toISOString(),
      });
      try {
        this.o.banLog?.write(record.reason);
      } catch (e) {
        this.o.logger.warn('cannot write the ban log', { error: (e as Error).message });
      }
    }
    if (batch.length === 0) return;
    await this.enforce(batch);
  }

  /** Puts bans into every enforcer; what fails is queued for retry with backoff. Returns whether all applied. */
  async enforce(batch: Enforcement[]): Promise<boolean> {
    let ok = true;
    for (const e of this.o.enforcers) if (!(await this.banOn(e, batch))) ok = false;
    return ok;
  }

  /** Lifts addresses from every enforcer (their bans stay in the store); a failure is queued and retried. */
  async lift(ips: string[]): Promise<boolean> {
    let ok = true;
    for (const e of this.o.enforcers) if (!(await this.unbanOn(e, ips))) ok = false;
    return ok;
  }

  /**
   * One enforcer, one batch of bans. Queued changes for these addresses are older than this one: a queued unban is
   * dropped before, a queued ban (a shorter expiry, say) after it succeeded; a failure queues the batch.
   */
  private async banOn(e: Enforcer, batch: Enforcement[]): Promise<boolean> {
    const q = this.failed.get(e);
    if (q) for (const b of batch) q.unbans.delete(b.ip);
    try {
      await e.ban(batch);
    } catch (err) {
      this.enqueue(e, err, batch, []);
      return false;
    }
    const after = this.failed.get(e);
    if (after) for (const b of batch) after.bans.delete(b.ip);
    return true;
  }

  /** One enforcer, one batch of unbans; the mirror of banOn. */
  private async unbanOn(e: Enforcer, ips: string[]): Promise<boolean> {
    const q = this.failed.get(e);
    if (q) for (const ip of ips) q.bans.delete(ip);
    try {
      await e.unban(ips);
    } catch (err) {
      this.enqueue(e, err, [], ips);
      return false;
    }
    const after = this.failed.get(e);
    if (after) for (const ip of ips) after.unbans.delete(ip);
    return true;
  }

  private enqueue(e: Enforcer, err: unknown, bans: Enforcement[], unbans: string[]): void {
    let q = this.failed.get(e);
    if (!q) {
      q = { bans: new Map(), unbans: new Set() };
      this.failed.set(e, q);
    }
    for (const b of bans) {
      q.unbans.delete(b.ip);
      q.bans.set(b.ip, b);
    }
    for (const ip of unbans) {
      q.bans.delete(ip);
      q.unbans.add(ip);
    }
    const message = err instanceof Error ? err.message : String(err);
    this.lastError = { enforcer: e.name, error: message, at: this.now() };
    if (this.nextRetryAt === 0) this.nextRetryAt = this.now() + this.retryDelayMs;
    this.o.logger.error('firewall change failed; will retry', {
      enforcer: e.name,
      bans: bans.length,
      unbans: unbans.length,
      pending: q.bans.size + q.unbans.size,
      retry_in_s: Math.max(0, Math.round((this.nextRetryAt - this.now()) / 1000)),
      error: message,
    });
  }

  /**
   * Retries the firewall changes that failed, once their backoff (1 s, doubling up to 60 s) is due. Bans that
   * ended meanwhile are not re-applied. The daemon calls this from a timer.
   */
  async retry(): Promise<void> {
    if (this.retrying || this.failed.size === 0 || this.now() < this.nextRetryAt) return;
    this.retrying = true;
    try {
      let allOk = true;
      const now = this.now();
      for (const [e, q] of [...this.failed]) {
        // Rebuilt from the store's current ban, not the queued snapshot: the ban may have been replaced (a longer or
        // permanent one) or ended meanwhile, or the address may be ignored or protected now.
        const bans: Enforcement[] = [];
        for (const ip of q.bans.keys()) {
          const cur = this.o.store.activeBan(ip, now);
          if (cur === undefined || this.o.ignore.has(ip)) continue;
          bans.push(toEnforcement(cur, ip));
        }
        const unbans = [...q.unbans];
        q.bans.clear();
        q.unbans.clear();
        try {
          if (bans.length > 0) await e.ban(bans);
        } catch (err) {
          allOk = false;
          for (const b of bans) if (!q.unbans.has(b.ip)) q.bans.set(b.ip, b);
          this.lastError = { enforcer: e.name, error: err instanceof Error ? err.message : String(err), at: now };
        }
        try {
          if (unbans.length > 0) await e.unban(unbans);
        } catch (err) {
          allOk = false;
          for (const ip of unbans) if (!q.bans.has(ip)) q.unbans.add(ip);
          this.lastError = { enforcer: e.name, error: err instanceof Error ? err.message : String(err), at: now };
        }
        if (q.bans.size === 0 && q.unbans.size === 0) {
          this.failed.delete(e);
          if (bans.length + unbans.length > 0) this.o.logger.info('firewall changes applied after retry', { enforcer: e.name, bans: bans.length, unbans: unbans.length });
        }
      }
      if (allOk && this.failed.size === 0) {
        this.retryDelayMs = RETRY_MIN_MS;
        this.nextRetryAt = 0;
      } else {
        this.retryDelayMs = Math.min(this.retryDelayMs * 2, RETRY_MAX_MS);
        this.nextRetryAt = this.now() + this.retryDelayMs;
        this.o.logger.error('firewall changes still failing; will retry', {
          pending: this.pendingEnforcement(),
          retry_in_s: this.retryDelayMs / 1000,
          error: this.lastError?.error,
        });
      }
    } finally {
      this.retrying = false;
    }
  }

  /** Firewall changes waiting for a retry. */
  pendingEnforcement(): number {
    let n = 0;
    for (const q of this.failed.values()) n += q.bans.size + q.unbans.size;
    return n;
  }

  /** For `tsfilter status`. */
  enforcementStatus(): Record<string, unknown> {
    const pending = this.pendingEnforcement();
    return {
      pending_retries: pending,
      next_retry_in_s: pending > 0 ? Math.max(0, Math.ceil((this.nextRetryAt - this.now()) / 1000)) : null,
      last_error: this.lastError === null ? null : { ...this.lastError, at: new Date(this.lastError.at).toISOString() },
    };
  }

  /**
   * A ban by hand (`tsfilter ban`): origin 'manual', stored and enforced at once. `seconds`: the duration, null for
   * permanent, undefined for ban_time with escalation. Refuses ignored and protected addresses with the reason. An
   * active ban of the address is replaced (so a ban can be made longer or permanent).
   */
  async manualBan(ipText: string, seconds: number | null | undefined, reason?: string): Promise<ManualBanResult> {
    const ip = normalizeSource(ipText);
    if (ip === null) throw new BanRefused(`${JSON.stringify(ipText.slice(0, 100))} is not an IP address or CIDR prefix`);
    const target = canonicalTarget(ip)!;
    const why = this.whyNot(target);
    if (why !== null) throw new BanRefused(`${ip} is ${why}: refusing to ban it`);
    const now = this.now();
    const previous = this.o.store.banCount(ip);
    const duration = seconds === undefined ? this.durationFor('manual', previous) : seconds;
    const input: BanInput = {
      ip,
      rule: 'manual',
      reason: reason && reason.trim() !== '' ? reason : 'banned with tsfilter ban',
      createdAt: now,
      expiresAt: duration === null ? null : now + duration * 1000,
      failures: 0,
      origin: 'manual',
      server: this.o.server,
      ...this.countryFields(target.isPrefix ? undefined : ip),
    };
    let replaced = false;
    const { record } = this.o.store.transaction(() => {
      replaced = this.o.store.removeBan(ip, now, REPLACED_BY_MANUAL);
      const r = this.o.store.addBan(input);
      this.o.onChange?.(banEvent(r.record));
      return r;
    });
    this.notePrefixBan(record);
    this.o.forget?.(ip);
    this.o.logger.info('banned', {
      ip,
      rule: 'manual',
      origin: 'manual',
      reason: record.reason,
      ban_count: record.banCount,
      replaced,
      until: record.expiresAt === null ? 'permanent' : new Date(record.expiresAt).toISOString(),
    });
    const enforced = await this.enforce([toEnforcement(record, ip)]);
    return { record, replaced, enforced };
  }

  /**
   * Stores bans found outside TSFilter (PyFilter's blacklist files at start) as permanent bans, origin 'pyfilter', in
   * one transaction; they reach the firewall with the start-up reconciliation. Ignored and protected sources, and
   * sources already banned, are skipped with the reason.
   */
  importBans(
    entries: { ip: string; scope?: PortScope | null; reason: string }[],
    rule: string,
  ): { imported: string[]; skipped: { ip: string; why: string }[] } {
    const now = this.now();
    const imported: string[] = [];
    const skipped: { ip: string; why: string }[] = [];
    this.o.store.transaction(() => {
      for (const e of entries) {
        const ip = normalizeSource(e.ip);
        if (ip === null) {
          skipped.push({ ip: e.ip.slice(0, 100), why: 'not an IP address or CIDR prefix' });
          continue;
        }
        const why = this.whyNot(canonicalTarget(ip)!);
        if (why !== null) {
          skipped.push({ ip, why });
          continue;
        }
        const input: BanInput = { ip, rule, reason: e.reason, createdAt: now, expiresAt: null, failures: 0, origin: 'pyfilter', server: this.o.server, country: null };
        if (e.scope) input.scope = e.scope;
        const { added, record } = this.o.store.addBan(input);
        if (!added) {
          skipped.push({ ip, why: 'already banned' });
          continue;
        }
        this.notePrefixBan(record);
        this.o.onChange?.(banEvent(record));
        imported.push(ip);
      }
    });
    return { imported, skipped };
  }

  /**
   * Applies other nodes' bans and unbans (fleet sync), and commits the sync cursor in the same transaction. A ban is
   * skipped when it already expired, when the source is ignored or protected here, when fewer than minServers nodes
   * reported it, or when a later change to the address is known (an older event never undoes a newer one, so a
   * manual unban is not undone by a stale ban). Returns how many events changed something.
   */
  async applyRemote(events: FleetEvent[], r: RemoteRules): Promise<number> {
    const now = this.now();
    const toBan: Enforcement[] = [];
    const toLift: string[] = [];
    const announced: BanRecord[] = [];
    this.o.store.transaction(() => {
      for (const ev of events) {
        const t = canonicalTarget(ev.ip);
        if (t === null) continue;
        const ip = t.text;
        if (ev.kind === 'unban') {
          if (!r.bumpVersion(ip, ev.at)) continue;
          if (this.o.store.removeBan(ip, now, unbannedOn(ev.node))) {
            toLift.push(ip);
            this.prefixBans.delete(ip);
            this.o.forget?.(ip);
          }
          continue;
        }
        if (ev.expiresAt !== null && ev.expiresAt !== undefined && ev.expiresAt <= now) continue;
        const why = this.whyNot(t);
        if (why !== null) {
          if (!this.refusedLogged.has(ip)) {
            this.refusedLogged.add(ip);
            this.o.logger.warn('not applying a remote ban of a protected address', { ip, node: ev.node, why });
          }
          continue;
        }
        // A stale event is not even a report: a replayed old ban must not count towards min_servers.
        const latest = r.latest(ip);
        if (latest !== undefined && latest >= ev.at) continue;
        if (r.reporters(ip, ev.node, ev.at) < r.minServers) continue;
        if (!r.bumpVersion(ip, ev.at)) continue;
        const scope = ev.scope ?? null;
        const active = this.o.store.activeBan(ip, now);
        if (active && scopeCovers(active.scope, scope) && (active.expiresAt === null || (ev.expiresAt != null && active.expiresAt >= ev.expiresAt))) continue;
        if (active) this.o.store.removeBan(ip, now, replacedByRemote(ev.node));
        const input: BanInput = {
          ip, rule: ev.rule ?? 'remote', reason: ev.reason ?? '', createdAt: ev.createdAt ?? ev.at, expiresAt: ev.expiresAt ?? null,
          failures: 0, origin: 'remote', server: ev.node,
          // The banning node's country, else our own lookup (PyFilter nodes send only a name).
          ...(ev.country ? { country: ev.country, countryCode: ev.countryCode ?? null } : this.countryFields(t.isPrefix ? undefined : ip)),
        };
        if (scope) input.scope = scope;
        const { added, record } = this.o.store.addBan(input);
        if (!added) continue;
        this.notePrefixBan(record);
        toBan.push(toEnforcement(record));
        announced.push(record);
      }
      r.commit();
    });
    for (const b of announced) {
      this.o.logger.info('banned', { ip: b.ip, rule: b.rule, origin: 'remote', node: b.server, until: b.expiresAt === null ? 'permanent' : new Date(b.expiresAt).toISOString() });
      try {
        this.o.banLog?.write(`Found IP: ${b.ip} from server: ${b.server} - Blacklisting.${countrySentence(b.country ?? this.countryName(b.ip))}`);
      } catch (e) {
        this.o.logger.warn('cannot write the ban log', { error: (e as Error).message });
      }
    }
    for (const ip of toLift) this.o.logger.info('unbanned', { ip, origin: 'remote' });
    if (toBan.length > 0) await this.enforce(toBan);
    if (toLift.length > 0) await this.lift(toLift);
    return toBan.length + toLift.length;
  }

  /** Lifts the ban of an address (store and firewall) and forgets its failures. Returns whether it was banned. */
  async unban(ipText: string, reason = UNBANNED): Promise<{ ip: string; removed: boolean; enforced: boolean; stillBlockedBy?: string }> {
    const ip = normalizeSource(ipText);
    if (ip === null) throw new BanRefused(`${JSON.stringify(ipText.slice(0, 100))} is not an IP address or CIDR prefix`);
    const at = this.now();
    const removed = this.o.store.transaction(() => {
      const r = this.o.store.removeBan(ip, at, reason);
      // An unban is news to the fleet even when this node had no ban (a remote one that was never applied here).
      this.o.onChange?.({ v: 1, kind: 'unban', ip, node: this.o.server, at });
      return r;
    });
    this.prefixBans.delete(ip);
    // A ban decided but not yet stored (its commit comes on the next turn of the event loop, or after a failed one)
    // is dropped too, or the commit would store it again after the operator was told it was lifted.
    const notYetStored = this.dropUnstored((x) => x === ip).length > 0;
    this.o.forget?.(ip);
    let enforced = true;
    // An element without a ban in the store is still lifted from our own sets (a ban that ended while its removal
    // failed); without a ban and without a way to list elements, there is nothing to lift.
    let inFirewall = removed || notYetStored;
    if (!removed) {
      for (const e of this.o.enforcers) {
        if (!e.elements) continue;
        try {
          if ((await e.elements()).some((x) => normalizeSource(x) === ip)) inFirewall = true;
        } catch {
          /* the unban below reports enforcer failures */
        }
      }
    }
    if (inFirewall) enforced = await this.lift([ip]);
    if (removed || inFirewall) this.o.logger.info('unbanned', { ip, reason });
    // Lifting an address inside a banned prefix does not lift the prefix: say so rather than pretend it is free.
    const stillBlockedBy = ip.includes('/') ? undefined : this.coveringPrefix(ip, null, this.now());
    return stillBlockedBy === undefined ? { ip, removed: removed || inFirewall, enforced } : { ip, removed: removed || inFirewall, enforced, stillBlockedBy };
  }

  /** Drops decided-but-unstored bans of the addresses `which` selects; returns their addresses. */
  private dropUnstored(which: (ip: string) => boolean): string[] {
    const out: string[] = [];
    const keep = (list: Decided[]) =>
      list.filter((d) => {
        if (!which(d.record.ip)) return true;
        out.push(d.record.ip);
        this.pendingIps.delete(d.record.ip);
        return false;
      });
    this.pending = keep(this.pending);
    this.written = keep(this.written);
    this.uncommitted = keep(this.uncommitted);
    return out;
  }

  /** Lifts every active ban. Returns the addresses. */
  async unbanAll(reason = UNBANNED_ALL): Promise<{ ips: string[]; enforced: boolean }> {
    const now = this.now();
    const ips = this.o.store.transaction(() => {
      const out: string[] = [];
      for (const b of this.o.store.activeBans(now)) {
        if (!this.o.store.removeBan(b.ip, now, reason)) continue;
        out.push(b.ip);
        this.o.onChange?.({ v: 1, kind: 'unban', ip: b.ip, node: this.o.server, at: now });
      }
      return out;
    });
    for (const ip of this.dropUnstored(() => true)) if (!ips.includes(ip)) ips.push(ip);
    for (const ip of ips) this.o.forget?.(ip);
    this.prefixBans.clear();
    const normal = ips.map((ip) => normalizeSource(ip)).filter((ip): ip is string => ip !== null);
    const enforced = normal.length === 0 ? true : await this.lift(normal);
    this.o.logger.info('unbanned every address', { count: ips.length, reason });
    return { ips, enforced };
  }

  /** The enforcer lost its state (ruleset flushed): puts every enforceable active ban back. */
  async reapply(e: Enforcer): Promise<number> {
    const batch = this.enforceable();
    await this.banOn(e, batch);
    return batch.length;
  }

  /** Ends bans whose time is up and lifts them from the firewall. */
  async expire(): Promise<BanRecord[]> {
    const ended = this.o.store.expireBans(this.now());
    if (ended.length === 0) return ended;
    for (const b of ended) this.prefixBans.delete(b.ip);
    const ips = ended.map((b) => normalizeSource(b.ip)).filter((ip): ip is string => ip !== null);
    if (ips.length > 0) await this.lift(ips);
    for (const b of ended) this.o.logger.info('ban expired', { ip: b.ip, rule: b.rule });
    return ended;
  }

  /**
   * The active bans of the store that may be enforced: valid addresses, never an ignored one. An address that was
   * banned and later added to ignored_ips is left out, so adding yourself there and restarting gets you back in.
   */
  enforceable(opts: { quiet?: boolean } = {}): Enforcement[] {
    const out: Enforcement[] = [];
    for (const b of this.o.store.activeBans(this.now())) {
      const ip = normalizeSource(b.ip);
      if (ip === null) {
        if (!opts.quiet) this.o.logger.warn('active ban is not an IP address; not enforced', { value: b.ip.slice(0, 100), rule: b.rule });
        continue;
      }
      const t = canonicalTarget(ip)!;
      if (t.isPrefix ? this.whyNot(t) !== null : this.o.ignore.has(ip)) {
        if (!opts.quiet) this.o.logger.warn('active ban of an ignored or protected address is not enforced', { ip, rule: b.rule });
        continue;
      }
      out.push(toEnforcement(b, ip));
    }
    return out;
  }

  /**
   * While running: puts back elements that went missing behind our back (an admin's `nft flush set`, a deleted
   * element). Only adds, never removes. An element counts as missing only when two listings agree: a listing of a
   * large set can come back short while the kernel's garbage collector walks it.
   */
  async verify(): Promise<{ added: number }> {
    let added = 0;
    const active = this.enforceable({ quiet: true });
    if (active.length === 0) return { added };
    for (const e of this.o.enforcers) {
      if (!e.elements) continue;
      const first = new Set(await e.elements());
      let missing = active.filter((b) => !first.has(b.ip));
      if (missing.length === 0) continue;
      const second = new Set(await e.elements());
      missing = missing.filter((b) => !second.has(b.ip));
      // Still absent from the store's view? A ban that ended meanwhile is not put back.
      const now = this.now();
      missing = missing.filter((b) => b.expiresAt === null || b.expiresAt > now);
      if (missing.length === 0) continue;
      if (await this.banOn(e, missing)) added += missing.length;
    }
    if (added > 0) this.o.logger.warn('bans were missing from the firewall; put back', { added });
    return { added };
  }

  /**
   * At start, the store is the truth: every enforceable active ban is put into the enforcers, and elements of our
   * sets whose address the store banned but no longer does (ended, expired, unbanned while the daemon was down,
   * or now ignored) are removed. Elements of addresses the store has never banned are foreign and stay. A failure
   * is retried with backoff, not fatal.
   */
  async reconcile(): Promise<{ restored: number; removed: number; foreign: number }> {
    const batch = this.enforceable();
    const want = new Set(batch.map((b) => b.ip));
    let removed = 0;
    let foreign = 0;
    for (const e of this.o.enforcers) {
      if (e.elements) {
        try {
          const stale: string[] = [];
          for (const raw of await e.elements()) {
            const ip = normalizeSource(raw);
            if (ip === null || want.has(ip)) continue;
            if (this.o.store.banCount(ip) > 0) stale.push(ip);
            else foreign++;
          }
          if (stale.length > 0) {
            removed += stale.length;
            this.o.logger.info('removing firewall elements whose bans ended', { enforcer: e.name, count: stale.length });
            await this.unbanOn(e, stale);
          }
        } catch (err) {
          this.o.logger.warn('cannot list the firewall elements to reconcile them with the store', { enforcer: e.name, error: err });
        }
      }
      try {
        if (e.reconcile) await e.reconcile(batch);
        else await e.ban(batch);
      } catch (err) {
        this.enqueue(e, err, batch, []);
      }
    }
    if (foreign > 0) this.o.logger.info('firewall elements unknown to the store left in place', { count: foreign });
    return { restored: batch.length, removed, foreign };
  }
}
