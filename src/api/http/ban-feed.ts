/*
 * Live ban and unban events, read from the store rather than hooked into the daemon: every ban that is committed,
 * whoever made it (a rule, `tsfilter ban`, the API, another node, an import), and every ban that ends (unbanned,
 * expired, replaced), is seen, and only once it is committed. The store is polled on this connection; between
 * changes a poll costs one `PRAGMA data_version` (which moves only when another connection commits).
 *
 * New bans are rows past the last row id seen. Ended bans are found by ended_at, looking back SLACK_MS so that a
 * change committed a little after the time it records is still caught; ids already reported are remembered for
 * that long. A ban that ends with an ended_at more than SLACK_MS in the past (a stale row closed with its own old
 * time) is not reported.
 */
import type { Logger } from '../../util/logger.ts';
import { toApiBan, type ApiBan } from './queries.ts';
import { toStored, type BanRow } from '../../store/sqlite-store.ts';
import type { ReadDb } from './read-db.ts';
import type { Statement } from 'better-sqlite3';
import { endCause, type EndCause } from '../../bans/end-reasons.ts';

export const POLL_MS = 250;
const SLACK_MS = 60_000;
/** New rows read per query; a flood is delivered as several batches. */
const CHUNK = 1000;


export type FeedEvent = { type: 'ban'; ban: ApiBan } | { type: 'unban'; ban: ApiBan; cause: EndCause };

export type FeedListener = (events: FeedEvent[]) => void;

export interface BanFeedOptions {
  intervalMs?: number;
  clock?: () => number;
  logger?: Logger;
  /** Runs inside the read transaction that fixes the feed's starting point: a baseline that matches it exactly. */
  onStart?: (rdb: ReadDb) => void;
}

export class BanFeed {
  private lastId: number;
  private version: number;
  /** Ended bans already reported (or already ended at start), by id, with their ended_at. */
  private readonly seen = new Map<number, number>();
  private readonly listeners = new Set<FeedListener>();
  private readonly timer: NodeJS.Timeout;
  private readonly clock: () => number;
  private failing = false;
  private changeCount = 0;
  // Prepared once: read() runs on every committed change.
  // Ids first (the bans_ended index answers it), whole rows only for those not yet reported: after a mass end
  // (unban --all, the first expiry pass after downtime) every poll for a minute would otherwise re-read them all.
  private readonly endedIds: Statement;
  private readonly byId: Statement;
  private readonly added: Statement;

  constructor(
    private readonly rdb: ReadDb,
    private readonly o: BanFeedOptions = {},
  ) {
    this.clock = o.clock ?? Date.now;
    const { db, columns } = rdb;
    this.endedIds = db.prepare('SELECT id FROM bans WHERE ended_at >= ? AND id <= ? ORDER BY ended_at, id').pluck();
    this.byId = db.prepare(`SELECT ${columns} FROM bans b WHERE b.id = ?`);
    this.added = db.prepare(`SELECT ${columns} FROM bans b WHERE b.id > ? ORDER BY b.id LIMIT ${CHUNK}`);
    this.version = rdb.dataVersion();
    this.lastId = db.transaction(() => {
      const last = (db.prepare('SELECT max(id) FROM bans').pluck().get() as number | null) ?? 0;
      for (const r of db.prepare('SELECT id, ended_at FROM bans WHERE ended_at >= ?').all(this.clock() - SLACK_MS) as { id: number; ended_at: number }[]) {
        this.seen.set(r.id, r.ended_at);
      }
      o.onStart?.(rdb);
      return last;
    })();
    this.timer = setInterval(() => this.poll(), o.intervalMs ?? POLL_MS);
    this.timer.unref();
  }

  /** Grows whenever bans were made or ended: a cache key for answers derived from the ban table. */
  get changes(): number {
    return this.changeCount;
  }

  /** Calls `fn` with each batch of events, oldest first. Returns the unsubscribe function. */
  subscribe(fn: FeedListener): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** Looks for changes now (after a write through the API, so its own event is not a poll interval late). */
  poll(): void {
    let version: number;
    try {
      version = this.rdb.dataVersion();
    } catch {
      return; // closed
    }
    if (version === this.version) return;
    let batches: FeedEvent[][];
    try {
      batches = this.read();
      this.version = version;
      this.failing = false;
    } catch (e) {
      // The store busy or briefly unreadable: the next poll tries again from the same place.
      if (!this.failing) this.o.logger?.warn('reading ban changes for the live feed failed; retrying', { error: e });
      this.failing = true;
      return;
    }
    for (const batch of batches) {
      if (batch.length === 0) continue;
      this.changeCount++;
      for (const fn of this.listeners) {
        try {
          fn(batch);
        } catch (e) {
          this.o.logger?.error('a live feed listener failed', { error: e });
        }
      }
    }
  }

  private read(): FeedEvent[][] {
    const { db } = this.rdb;
    const { endedIds: ended, byId, added } = this;
    const now = this.clock();
    // Applied only once everything was read: a failed read is retried from the same place, losing nothing.
    const seen: [number, number][] = [];
    // A row that cannot be shown is skipped (and counted as seen), never retried: the store busy is worth a retry,
    // a row another tool wrote with values nothing can render is not, and it must not stall the feed behind it.
    const skipped: { id: number; error: unknown }[] = [];
    const view = (r: BanRow): ApiBan | undefined => {
      try {
        return toApiBan(toStored(r), now);
      } catch (error) {
        skipped.push({ id: r.id, error });
        return undefined;
      }
    };
    const endedAt = (r: BanRow) => (typeof r.ended_at === 'number' && Number.isFinite(r.ended_at) ? r.ended_at : now);
    const out = db.transaction(() => {
      const batches: FeedEvent[][] = [];
      // Bans that existed before and ended since: first, so a replaced ban's unban comes before its replacement.
      const first: FeedEvent[] = [];
      for (const id of ended.all(now - SLACK_MS, this.lastId) as number[]) {
        if (this.seen.has(id)) continue;
        const r = byId.get(id) as BanRow;
        seen.push([r.id, endedAt(r)]);
        const ban = view(r);
        if (ban) first.push({ type: 'unban', ban, cause: endCause(r.end_reason) });
      }
      batches.push(first);
      let lastId = this.lastId;
      for (;;) {
        const rows = added.all(lastId) as BanRow[];
        const batch: FeedEvent[] = [];
        for (const r of rows) {
          // Made and already ended before this poll: both events, in that order.
          if (r.ended_at !== null) seen.push([r.id, endedAt(r)]);
          const ban = view(r);
          if (!ban) continue;
          batch.push({ type: 'ban', ban });
          if (r.ended_at !== null) batch.push({ type: 'unban', ban, cause: endCause(r.end_reason) });
        }
        batches.push(batch);
        if (rows.length > 0) lastId = rows[rows.length - 1]!.id;
        if (rows.length < CHUNK) break;
      }
      return { batches, lastId };
    })();
    this.lastId = out.lastId;
    for (const [id, at] of seen) this.seen.set(id, at);
    if (skipped.length > 0) {
      this.o.logger?.warn('the live feed skipped bans it cannot show (rows written by another tool?)', {
        ids: skipped.slice(0, 10).map((x) => x.id).join(','),
        count: skipped.length,
        error: skipped[0]!.error,
      });
    }
    for (const [id, at] of this.seen) if (at < now - SLACK_MS) this.seen.delete(id);
    return out.batches;
  }

  close(): void {
    clearInterval(this.timer);
    this.listeners.clear();
  }
}
