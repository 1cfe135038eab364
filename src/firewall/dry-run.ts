import type { Enforcer, Enforcement, EnforcerHealth } from './types.ts';
import type { Logger } from '../util/logger.ts';

const DETAIL_LIMIT = 20;

/** Logs what it would do and touches nothing: for replay, testing a config, and hosts where another tool enforces. */
export class DryRunEnforcer implements Enforcer {
  readonly name = 'dry-run';
  /** Addresses this enforcer would currently block; lets tests and `status` see its state. */
  readonly active = new Map<string, Enforcement>();

  constructor(private readonly logger: Logger) {}

  async start(): Promise<void> {}

  async ban(bans: Enforcement[]): Promise<void> {
    // A restore at start can hold 100,000 bans: log the first few and a count, not a line each.
    let logged = 0;
    for (const b of bans) {
      this.active.set(b.ip, b);
      if (++logged > DETAIL_LIMIT) continue;
      this.logger.info('dry-run: would block', {
        ip: b.ip,
        rule: b.rule,
        until: b.expiresAt === null ? 'permanent' : new Date(b.expiresAt).toISOString(),
      });
    }
    if (logged > DETAIL_LIMIT) this.logger.info('dry-run: would block more addresses', { count: logged - DETAIL_LIMIT });
  }

  async unban(ips: string[]): Promise<void> {
    for (const ip of ips) {
      this.active.delete(ip);
      this.logger.info('dry-run: would unblock', { ip });
    }
  }

  async stop(): Promise<void> {}

  async elements(): Promise<string[]> {
    return [...this.active.keys()];
  }

  health(): EnforcerHealth {
    return { ok: true, blocked: this.active.size };
  }
}
