import { randomBytes } from 'node:crypto';
import type { Logger } from '../util/logger.ts';
import type { FleetState } from './fleet-state.ts';
import { parseEvent, type FleetEvent, type WireSchema } from './fleet-event.ts';
import { connectRedis, describeTarget, hashReply, type RedisConn, type RedisSettings } from './redis-connect.ts';
import { TsfilterWire } from './wire-tsfilter.ts';
import { PyfilterWire } from './wire-pyfilter.ts';

/*
 * Fleet sync over Redis: this node's bans and unbans go out at once, the other nodes' come in at once, and nothing
 * is lost while Redis or this node is away.
 *  - Out: a local change is written to the SQLite outbox in the same transaction as the ban itself (BanManager's
 *    onChange), then published; it leaves the outbox only once Redis has it. Redis down: the outbox grows (it is on
 *    disk) and drains on reconnect.
 *  - In: a wake-up (pub/sub) or a timer triggers pull(); the events are applied and the cursor advanced in one
 *    SQLite transaction. Start, every reconnect and every check_time seconds pull everything (full resync).
 *  - Names: each node holds {prefix}:node:<name> (30 s lease, renewed every 10 s) with its instance id, kept in
 *    SQLite, so a restarted node is itself and a second live node with the same name is refused.
 */

export class DuplicateNodeError extends Error {
  readonly kind = 'usage' as const;
}

export interface FleetSyncOptions {
  settings: RedisSettings;
  fleet: FleetState;
  logger: Logger;
  /** Applies remote events inside `transaction` (with commit() of the cursor); returns how many changed something. */
  apply(events: FleetEvent[], commit: () => void): Promise<number>;
  now?: () => number;
  /** This node's active bans as events: published again when the fleet's ban table is gone (an empty Redis). */
  republish?: () => FleetEvent[];
  /** For tests: a connection instead of the official client. */
  connect?: (s: RedisSettings, logger: Logger) => Promise<RedisConn>;
}

const LEASE_MS = 30_000;
const HEARTBEAT_MS = 10_000;
const PEER_RECENT_MS = 60_000;
const OUTBOX_BATCH = 200;
const RETRY_MS = 5000;

const LEASE = `
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return cur end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
return false
`;

export class FleetSync {
  private conn!: RedisConn;
  private wire!: WireSchema;
  private readonly instance: string;
  private readonly now: () => number;
  private timers: NodeJS.Timeout[] = [];
  private flushing: Promise<void> | null = null;
  private pulling: Promise<void> | null = null;
  private pullAgain: 'no' | 'incremental' | 'full' = 'no';
  private stopped = false;
  private conflict: string | null = null;
  private lastLagMs: number | null = null;
  private lags: { at: number; ms: number }[] = [];
  private lastSync: number | null = null;
  private peerList: { name: string; seen: number }[] = [];
  private rejectedLogged = 0;
  private published = 0;
  private applied = 0;

  constructor(private readonly o: FleetSyncOptions) {
    this.now = o.now ?? Date.now;
    let inst = o.fleet.kvGet('instance');
    if (inst === undefined) {
      inst = randomBytes(12).toString('hex');
      o.fleet.kvSet('instance', inst);
    }
    this.instance = inst;
  }

  private get s(): RedisSettings {
    return this.o.settings;
  }

  private key(suffix: string): string {
    return `{${this.s.prefix}}:${suffix}`;
  }

  /**
   * Connects in the background. If Redis answers within `waitMs`, the node name is checked first and a live
   * duplicate throws DuplicateNodeError (the daemon refuses to start); otherwise sync starts whenever Redis comes.
   */
  async start(waitMs = 3000): Promise<void> {
    this.conn = await (this.o.connect ?? connectRedis)(this.s, this.o.logger);
    this.wire =
      this.s.schema === 'pyfilter'
        ? new PyfilterWire(this.conn, { name: this.s.sync.name, maxEventBytes: this.s.maxEventBytes })
        : new TsfilterWire(this.conn, this.o.fleet, {
            node: this.s.sync.name,
            prefix: this.s.prefix,
            maxLen: this.s.streamMaxLen,
            maxAgeS: this.s.streamMaxAge,
            maxEventBytes: this.s.maxEventBytes,
            now: this.now,
          });
    const deadline = Date.now() + waitMs;
    while (!this.conn.connected && Date.now() < deadline) await new Promise((r) => setTimeout(r, 25));
    if (this.conn.connected) {
      const other = await this.lease().catch(() => null);
      if (other !== null) {
        await this.conn.close();
        throw new DuplicateNodeError(
          `another TSFilter node named ${JSON.stringify(this.s.sync.name)} is alive on ${describeTarget(this.s)} (instance ${other}); redis.sync_bans.name must be unique per server`,
        );
      }
    } else {
      this.o.logger.warn('redis not reachable; detection and bans go on locally, changes are queued and sync starts when it comes', {
        redis: describeTarget(this.s),
        error: this.conn.lastError ?? 'no answer yet',
      });
    }
    this.conn.onChange((up) => {
      if (this.stopped) return;
      if (up) {
        this.o.logger.info('redis connected; syncing', { redis: describeTarget(this.s), outbox: this.o.fleet.outboxCount() });
        void this.onConnected();
      } else {
        this.o.logger.warn('redis connection lost; bans are queued locally until it returns', { redis: describeTarget(this.s) });
      }
    });
    // Not awaited: with Redis down the subscription completes whenever it comes back; what was announced before it
    // took effect is picked up by a full pull right after.
    if (this.s.sync.active) {
      void this.wire.listen(() => this.kick('incremental')).then(
        () => this.kick('full'),
        (e) => this.o.logger.warn('cannot subscribe', { error: e }),
      );
    }
    if (this.conn.connected) await this.onConnected();
    this.every(HEARTBEAT_MS, () => this.heartbeat());
    this.every(this.s.sync.checkTime * 1000, () => {
      this.kick('full');
      // Versions must outlive every event that could still arrive (the stream's age limit), reports likewise.
      this.o.fleet.prune(this.now() - this.s.streamMaxAge * 1000 - 86_400_000);
    });
    // A wake-up can be lost (pub/sub has no memory) and a publish can fail while connected: a cheap incremental pull
    // and an outbox flush every few seconds bound both.
    this.every(RETRY_MS, () => {
      this.kick('incremental');
      this.flush();
    });
  }

  private every(ms: number, fn: () => Promise<unknown> | unknown): void {
    const t = setInterval(() => {
      Promise.resolve()
        .then(fn)
        .catch((e) => this.o.logger.warn('fleet sync task failed', { error: e }));
    }, ms);
    t.unref();
    this.timers.push(t);
  }

  private async onConnected(): Promise<void> {
    // A refused command (an ACL without rights on our keys: NOPERM) is logged; the node keeps detecting and banning.
    await this.heartbeat().catch((e) => this.o.logger.error('redis refused the node registration', { error: e }));
    await this.republishIfEmpty().catch((e) => this.o.logger.warn('cannot check the fleet ban table', { error: e }));
    this.flush();
    this.kick('full');
    // node-redis resubscribes a moment after reconnecting; announcements made in between are only seen by a scan
    // (PyFilter's schema has no stream), so pull everything once more when the subscription is surely back.
    setTimeout(() => this.kick('full'), 2000).unref();
  }

  /** tsfilter schema: a missing ban table means a Redis that lost its data; this node's active bans go out again. */
  private async republishIfEmpty(): Promise<void> {
    if (this.s.schema !== 'tsfilter' || !this.o.republish) return;
    const exists = await this.conn.cmd(['EXISTS', this.key('bans')], this.key('bans'));
    if (Number(exists) !== 0) return;
    const events = this.o.republish();
    if (events.length === 0) return;
    this.o.logger.warn('the fleet\'s ban table in redis is gone (restarted without persistence?); publishing this node\'s active bans again', { count: events.length });
    for (const ev of events) this.o.fleet.outboxAdd(JSON.stringify(ev), this.now());
  }

  /** Renews this node's lease and its entry in the peer table; returns the other instance's id on a conflict. */
  private async lease(): Promise<string | null> {
    const other = await this.conn.cmd(
      ['EVAL', LEASE, '2', this.key(`node:${this.s.sync.name}`), this.key('nodes'), this.instance, String(LEASE_MS), this.s.sync.name, String(this.now())],
      this.key('nodes'),
    );
    return typeof other === 'string' ? other : null;
  }

  private async heartbeat(): Promise<void> {
    if (!this.conn.connected) return;
    const other = await this.lease();
    if (other !== null) {
      if (this.conflict === null) this.o.logger.error('another live node uses this node\'s name; not publishing until it is gone', { name: this.s.sync.name, instance: other });
      this.conflict = other;
      return;
    }
    this.conflict = null;
    const nodes = hashReply(await this.conn.cmd(['HGETALL', this.key('nodes')], this.key('nodes')));
    const peers: { name: string; seen: number }[] = [];
    for (const [name, at] of Object.entries(nodes)) {
      const seen = Number(at);
      if (name !== this.s.sync.name && Number.isFinite(seen)) peers.push({ name: name.slice(0, 200), seen });
    }
    this.peerList = peers;
  }

  /** After the transaction committed: publish what is queued. */
  flush(): void {
    if (this.stopped || this.flushing || !this.conn?.connected || this.conflict !== null) return;
    this.flushing = this.drain().finally(() => {
      this.flushing = null;
    });
  }

  private async drain(): Promise<void> {
    for (;;) {
      const batch = this.o.fleet.outboxPeek(OUTBOX_BATCH);
      if (batch.length === 0) return;
      // The whole batch goes out pipelined (one connection keeps the order); what failed stays for the next drain.
      // Should a later event land before an earlier failed one, the per-address versions keep the later change.
      const results = await Promise.allSettled(
        batch.map(async (row) => {
          const r = parseEvent(row.event, Number.MAX_SAFE_INTEGER);
          if ('event' in r) await this.wire.publish(r.event);
          return row.id;
        }),
      );
      const done = results.filter((r): r is PromiseFulfilledResult<number> => r.status === 'fulfilled').map((r) => r.value);
      if (done.length > 0) this.o.fleet.outboxDelete(done);
      this.published += done.length;
      const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (failed) {
        this.o.logger.warn('publishing to redis failed; kept in the outbox', { error: failed.reason, queued: this.o.fleet.outboxCount() });
        return;
      }
    }
  }

  /** Schedules a pull; several wake-ups during one pull make one more. */
  kick(kind: 'incremental' | 'full'): void {
    if (this.stopped || !this.s.sync.active) return;
    if (this.pulling) {
      if (kind === 'full' || this.pullAgain === 'no') this.pullAgain = kind;
      return;
    }
    this.pulling = this.pullLoop(kind === 'full').finally(() => {
      this.pulling = null;
      const again = this.pullAgain;
      this.pullAgain = 'no';
      if (again !== 'no') this.kick(again);
    });
  }

  private async pullLoop(full: boolean): Promise<void> {
    if (!this.conn.connected) return;
    try {
      for (let first = true; ; first = false) {
        const r = await this.wire.pull(full && first);
        if (r.rejected.length > 0 && this.rejectedLogged < 100) {
          this.rejectedLogged += r.rejected.length;
          this.o.logger.warn('ignored malformed or oversized fleet events', { count: r.rejected.length, first: r.rejected[0] });
        }
        const mine = this.s.sync.name;
        const remote = r.events.filter((e) => e.node !== mine);
        const n = await this.o.apply(remote, r.commit);
        this.applied += n;
        await r.after();
        const now = this.now();
        for (const e of remote) this.noteLag(now - e.at, now);
        this.lastSync = now;
        if (!r.more) return;
      }
    } catch (e) {
      this.o.logger.warn('pulling fleet events failed; retrying later', { error: e });
    }
  }

  private noteLag(ms: number, now: number): void {
    this.lastLagMs = ms;
    this.lags.push({ at: now, ms });
    if (this.lags.length > 1000) this.lags.splice(0, this.lags.length - 1000);
  }

  status(): Record<string, unknown> {
    const now = this.now();
    const recent = this.lags.filter((l) => now - l.at < 60_000).map((l) => l.ms);
    return {
      node: this.s.sync.name,
      schema: this.s.schema,
      redis: describeTarget(this.s),
      connected: this.conn?.connected ?? false,
      outage_s: this.conn && !this.conn.connected ? Math.round((now - this.conn.since) / 1000) : 0,
      last_error: this.conn?.lastError ?? null,
      name_conflict: this.conflict,
      applying_remote_bans: this.s.sync.active,
      outbox: this.o.fleet.outboxCount(),
      published: this.published,
      applied: this.applied,
      last_sync: this.lastSync === null ? null : new Date(this.lastSync).toISOString(),
      lag_ms_last: this.lastLagMs,
      lag_ms_max_1m: recent.length > 0 ? Math.max(...recent) : null,
      peers: this.peerList
        .filter((p) => now - p.seen < PEER_RECENT_MS)
        .map((p) => ({ name: p.name, seen_s_ago: Math.max(0, Math.round((now - p.seen) / 1000)) })),
    };
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const t of this.timers) clearInterval(t);
    await this.flushing?.catch(() => {});
    await this.pulling?.catch(() => {});
    await this.conn?.close();
  }
}
