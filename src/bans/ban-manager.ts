import type { BanDecision } from '../detect/types.ts';
import type { Enforcer, Enforcement } from '../firewall/types.ts';
import type { BanRecord, Store } from '../store/types.ts';
import type { Logger } from '../util/logger.ts';
import { BanLog, banMessage } from './ban-log.ts';

export interface BanManagerOptions {
  store: Store;
  enforcers: Enforcer[];
  /** Addresses that must never be banned, checked again here so no path around the detector can ban them. */
  ignore: { has(ip: string): boolean };
  /** Seconds for a rule's bans; <= 0 is permanent. */
  banTime(rule: string): number;
  failedAttempts(rule: string): number;
  server: string;
  logger: Logger;
  banLog?: BanLog;
  now?: () => number;
  /** Date bans from the line that earned them instead of the clock (replay: old logs ban as they would have). */
  useEventTime?: boolean;
}

/**
 * Turns decisions into durable bans. A ban is committed to the store before anything else happens, so a crash
 * at any later point loses nothing: the firewall is reconciled from the store at the next start.
 */
export class BanManager {
  private pending: { record: BanRecord; instant: boolean }[] = [];
  private readonly now: () => number;
  bansDecided = 0;

  constructor(private readonly o: BanManagerOptions) {
    this.now = o.now ?? Date.now;
  }

  /**
   * Records a ban for a decision; returns it, or null when the address is ignored or already banned.
   * Callers run decide() inside the store transaction of their batch and call flush() after it committed, so
   * a ban is only announced and enforced once it is durable.
   */
  decide(d: BanDecision): BanRecord | null {
    if (this.o.ignore.has(d.ip)) return null;
    const now = this.o.useEventTime ? d.time : this.now();
    const seconds = this.o.banTime(d.rule);
    const failedAttempts = this.o.failedAttempts(d.rule);
    const reason = banMessage(d.ip, d.rule, failedAttempts, d.instant);
    const { added, record } = this.o.store.addBan({
      ip: d.ip,
      rule: d.rule,
      reason,
      createdAt: now,
      expiresAt: seconds > 0 ? now + seconds * 1000 : null,
      failures: d.failures,
      origin: 'local',
      server: this.o.server,
      lines: d.lines,
    });
    if (!added) return null;
    this.bansDecided++;
    this.pending.push({ record, instant: d.instant });
    return record;
  }

  /** Announces and enforces the bans decided since the last flush, as one batch per enforcer. */
  async flush(): Promise<void> {
    if (this.pending.length === 0) return;
    const decided = this.pending;
    this.pending = [];
    for (const { record, instant } of decided) {
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
    const batch: Enforcement[] = decided.map(({ record }) => ({ ip: record.ip, expiresAt: record.expiresAt, rule: record.rule }));
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

  /** Puts every active ban from the store into the enforcers (at start: the store is the truth). */
  async restore(): Promise<number> {
    const active = this.o.store.activeBans(this.now());
    const batch = active.map((b) => ({ ip: b.ip, expiresAt: b.expiresAt, rule: b.rule }));
    for (const e of this.o.enforcers) await e.ban(batch);
    return batch.length;
  }
}
