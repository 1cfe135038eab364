import type { EnforcerHealth, FirewallLogger } from './types.ts';

/** The health fields every kernel backend reports; each adds its own. */
export interface BackendHealth extends EnforcerHealth {
  ok: boolean;
  /** The last failure (check, repair or command), while not ok. */
  lastError?: string;
  /** ISO time of the last successful check. */
  lastCheck?: string;
  repairs: number;
}

export interface BackendStateOptions {
  onLost?: () => void;
  /**
   * Count a repair each time onLost fires (default). The iptables backend counts one per family it repaired
   * instead, so it turns this off and counts its own.
   */
  countRepairs?: boolean;
}

/**
 * What the kernel backends (nftables, ipset, iptables) share around their commands: one queue, so a repair never
 * interleaves with a ban; health with one log line per change of state (not one per failed batch); the onLost
 * callbacks; and the watcher's timer.
 */
export class BackendState<H extends BackendHealth> {
  private queue: Promise<unknown> = Promise.resolve();
  private readonly lostCallbacks: (() => void)[] = [];
  private readonly countRepairs: boolean;
  private timer: NodeJS.Timeout | null = null;
  private watching = false;
  private checking = false;

  /** name: "nftables", "ipset", "iptables": the subject of the health log lines. */
  constructor(
    private readonly name: string,
    readonly logger: FirewallLogger,
    readonly health: H,
    opts: BackendStateOptions = {},
  ) {
    if (opts.onLost) this.lostCallbacks.push(opts.onLost);
    this.countRepairs = opts.countRepairs ?? true;
  }

  serial<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.queue.then(fn, fn);
    this.queue = p.catch(() => {});
    return p;
  }

  /** Resolves once every queued command has finished (stop() waits for it). */
  async drained(): Promise<void> {
    await this.queue.catch(() => {});
  }

  /**
   * Runs fn through the queue; a failure is recorded in health and thrown. fn calls `repaired()` when it had to
   * recreate state that vanished; onLost then fires once fn is done, whether its retry succeeded or not.
   */
  async batch<T>(fn: (repaired: () => void) => Promise<T>): Promise<T> {
    let repaired = false;
    try {
      return await this.serial(() => fn(() => (repaired = true)));
    } catch (err) {
      this.markFailed(err);
      throw err;
    } finally {
      if (repaired) this.lost();
    }
  }

  /**
   * One watcher round: `repair` says whether it recreated something (onLost then fires), `then` runs after that.
   * Resolves true when all is intact (possibly after repair). A round asked for while one runs gets the current
   * health instead of a second concurrent round.
   */
  async check(repair: () => Promise<boolean>, then?: () => Promise<void>): Promise<boolean> {
    if (this.checking) return this.health.ok;
    this.checking = true;
    try {
      if (await repair()) this.lost();
      if (then) await then();
      this.markOk();
      return true;
    } catch (err) {
      this.markFailed(err);
      return false;
    } finally {
      this.checking = false;
    }
  }

  /** After a successful start: healthy, and the watcher runs `round` (see watch()). */
  started(intervalMs: number, round: () => Promise<unknown>, spacing = 0): void {
    this.markOk();
    this.watch(intervalMs, round, spacing);
  }

  /** Stops the watcher and waits for the commands under way; the backend's kernel state stays. */
  async stop(): Promise<void> {
    this.unwatch();
    await this.drained();
  }

  onLost(cb: () => void): void {
    this.lostCallbacks.push(cb);
  }

  /** State vanished behind our back and was recreated: the callbacks re-apply every active ban. */
  lost(): void {
    if (this.countRepairs) this.health.repairs++;
    for (const cb of this.lostCallbacks) {
      try {
        cb();
      } catch (err) {
        this.logger.error('onLost callback failed', { error: errorText(err) });
      }
    }
  }

  markOk(): void {
    if (!this.health.ok && this.health.lastError !== 'not started') this.logger.info(`${this.name} enforcement healthy again`);
    this.health.ok = true;
    delete this.health.lastError;
    this.health.lastCheck = new Date().toISOString();
  }

  markFailed(err: unknown): void {
    const msg = errorText(err);
    if (this.health.ok || this.health.lastError !== msg) this.logger.error(`${this.name} enforcement failing`, { error: msg });
    this.health.ok = false;
    this.health.lastError = msg;
  }

  /**
   * Runs `round` every intervalMs (0: never). With `spacing`, each round instead waits at least spacing times the
   * last round's duration, for checks whose cost grows with the ruleset (iptables-save of a big chain).
   */
  watch(intervalMs: number, round: () => Promise<unknown>, spacing = 0): void {
    if (this.timer !== null || intervalMs <= 0) return;
    this.watching = true;
    if (spacing === 0) {
      this.timer = setInterval(() => void round(), intervalMs);
      this.timer.unref();
      return;
    }
    const next = (delayMs: number): void => {
      if (!this.watching) return;
      this.timer = setTimeout(async () => {
        const t0 = Date.now();
        await round();
        next(Math.max(intervalMs, spacing * (Date.now() - t0)));
      }, delayMs);
      this.timer.unref();
    };
    next(intervalMs);
  }

  unwatch(): void {
    this.watching = false;
    // clearTimeout also clears an interval in Node.
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }
}

export function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
