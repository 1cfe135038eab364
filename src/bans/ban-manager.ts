import type { BanDecision } from '../detect/types.ts';
import { normalizeIp } from '../detect/ip.ts';
import type { Enforcer, Enforcement } from '../firewall/types.ts';
import type { BanRecord, Store } from '../store/types.ts';
import type { Logger } from '../util/logger.ts';
import { BanLog, banMessage } from './ban-log.ts';
import { banDuration } from './duration.ts';

export interface BanManagerOptions {
  store: Store;
  enforcers: Enforcer[];
  /** Addresses that must never be banned, checked again here so no path around the detector can ban them. */
  ignore: { has(ip: string): boolean };
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
interface Decided {
  input: BanInput;
  record: BanRecord;
  instant: boolean;
  enforced: boolean;
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
  private readonly pendingIps = new Set<string>();
  private written: Decided[] = [];
  private uncommitted: Decided[] = [];
  private toAnnounce: Decided[] = [];
  private readonly now: () => number;
  bansDecided = 0;

  constructor(private readonly o: BanManagerOptions) {
    this.now = o.now ?? Date.now;
  }

  /** Decides a ban; returns it (not yet stored), or null when the address is ignored or already banned. */
  decide(d: BanDecision): BanRecord | null {
    if (this.o.ignore.has(d.ip) || this.pendingIps.has(d.ip)) return null;
    const now = this.o.useEventTime ? d.time : this.now();
    if (this.o.store.activeBan(d.ip, now)) return null;
    const previous = this.o.store.banCount(d.ip);
    const seconds = banDuration(this.o.banTime(d.rule), previous, this.o.banTimeFactor ?? 1, this.o.banTimeMax);
    const input: BanInput = {
      ip: d.ip,
      rule: d.rule,
      reason: banMessage(d.ip, d.rule, this.o.failedAttempts(d.rule), d.instant),
      createdAt: now,
      expiresAt: seconds === null ? null : now + seconds * 1000,
      failures: d.failures,
      origin: 'local',
      server: this.o.server,
      country: null,
      lines: d.lines,
    };
    const record: BanRecord = { ...input, banCount: previous + 1 };
    this.pending.push({ input, record, instant: d.instant, enforced: false });
    this.pendingIps.add(d.ip);
    this.bansDecided++;
    return record;
  }

  /** Inside the caller's transaction: stores the decided bans, and again those whose transaction failed. */
  writePending(): void {
    const todo = [...this.uncommitted, ...this.pending];
    this.uncommitted = [];
    this.pending = [];
    this.pendingIps.clear();
    for (const d of todo) {
      const { added, record } = this.o.store.addBan(d.input);
      // Not added: the address got an active ban meanwhile (another rule, the CLI): nothing more to do.
      if (added) this.written.push({ ...d, record });
      else if (!d.enforced) this.written.push({ ...d, record, enforced: true });
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
      if (d.enforced) continue;
      this.o.logger.warn('ban decided but not yet stored; enforcing it and retrying the store', { ip: d.record.ip });
      this.toAnnounce.push({ ...d });
    }
    this.uncommitted = all.map((d) => ({ ...d, enforced: true }));
  }

  /** Announces and enforces the bans committed since the last flush, as one batch per enforcer. */
  async flush(): Promise<void> {
    if (this.toAnnounce.length === 0) return;
    const decided = this.toAnnounce;
    this.toAnnounce = [];
    const batch: Enforcement[] = [];
    for (const d of decided) {
      if (d.enforced) continue;
      const { record, instant } = d;
      batch.push({ ip: record.ip, expiresAt: record.expiresAt, rule: record.rule });
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
    for (const e of this.o.enforcers) {
      try {
        await e.ban(batch);
      } catch (err) {
        // The bans are in the store; the next start (or the next issue's retry loop) re-applies them.
        this.o.logger.error('enforcer failed to apply bans', { enforcer: e.name, count: batch.length, error: err });
      }
    }
  }

  /** Ends bans whose time is up and lifts them from the firewall. */
  async expire(): Promise<BanRecord[]> {
    const ended = this.o.store.expireBans(this.now());
    if (ended.length === 0) return ended;
    const ips = ended.map((b) => b.ip);
    for (const e of this.o.enforcers) {
      try {
        await e.unban(ips);
      } catch (err) {
        this.o.logger.error('enforcer failed to lift expired bans', { enforcer: e.name, error: err });
      }
    }
    for (const b of ended) this.o.logger.info('ban expired', { ip: b.ip, rule: b.rule });
    return ended;
  }

  /**
   * The active bans of the store that may be enforced: valid addresses, never an ignored one. An address that was
   * banned and later added to ignored_ips is left out, so adding yourself there and restarting gets you back in.
   */
  enforceable(): Enforcement[] {
    const out: Enforcement[] = [];
    for (const b of this.o.store.activeBans(this.now())) {
      const ip = normalizeIp(b.ip);
      if (ip === null) {
        this.o.logger.warn('active ban is not an IP address; not enforced', { value: b.ip.slice(0, 100), rule: b.rule });
        continue;
      }
      if (this.o.ignore.has(ip)) {
        this.o.logger.warn('active ban of an ignored address is not enforced', { ip, rule: b.rule });
        continue;
      }
      out.push({ ip, expiresAt: b.expiresAt, rule: b.rule });
    }
    return out;
  }

  /** Puts every enforceable active ban from the store into the enforcers (at start: the store is the truth). */
  async restore(): Promise<number> {
    const batch = this.enforceable();
    for (const e of this.o.enforcers) await e.ban(batch);
    return batch.length;
  }
}
