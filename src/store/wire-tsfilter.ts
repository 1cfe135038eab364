import type { FleetState } from './fleet-state.ts';
import { parseEvent, type FleetEvent, type WireSchema } from './fleet-event.ts';
import { hashReply, type RedisConn } from './redis-connect.ts';

/*
 * TSFilter's own schema. Every key carries the hash tag {<prefix>}, so in Cluster mode all of them live in one slot
 * and the publish script below runs atomically there:
 *
 *   {tsfilter}:events   stream; one entry per change, field e = the event's JSON; trimmed to about
 *                       redis.stream_max_len entries and redis.stream_max_age
 *   {tsfilter}:bans     hash ip -> the latest event for that address (a ban, or an unban as a tombstone): the state a
 *                       node resyncs from when the stream no longer reaches back to its cursor
 *   {tsfilter}:wake     pub/sub channel; the message ("<node> <stream id>") is only a wake-up, the stream is the truth
 *
 * A node's cursor (the last stream id it applied) is kept in SQLite, committed with the bans it applied.
 */

const PUBLISH = `
local cur = redis.call('HGET', KEYS[2], ARGV[2])
if cur then
  local ok, c = pcall(cjson.decode, cur)
  if ok and type(c) == 'table' and tonumber(c.at) and tonumber(c.at) > tonumber(ARGV[3]) then
    -- A newer change to this address is already known: the stream still records this one, the table keeps the newer.
    return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', 'e', ARGV[1])
  end
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', 'e', ARGV[1])
redis.call('PUBLISH', ARGV[5], ARGV[6] .. ' ' .. id)
return id
`;

const BATCH = 1000;
const CURSOR = 'tsfilter.cursor';

export class TsfilterWire implements WireSchema {
  readonly name = 'tsfilter' as const;
  private readonly tag: string;
  private readonly events: string;
  private readonly bans: string;
  private readonly wake: string;
  private lastTrim = 0;

  constructor(
    private readonly conn: RedisConn,
    private readonly fleet: FleetState,
    private readonly o: { node?: string; prefix: string; maxLen: number; maxAgeS: number; maxEventBytes: number; now?: () => number },
  ) {
    this.tag = `{${o.prefix}}`;
    this.events = `${this.tag}:events`;
    this.bans = `${this.tag}:bans`;
    this.wake = `${this.tag}:wake`;
  }

  async publish(ev: FleetEvent): Promise<void> {
    const json = JSON.stringify(ev);
    await this.conn.cmd(['EVAL', PUBLISH, '2', this.events, this.bans, json, ev.ip, String(ev.at), String(this.o.maxLen), this.wake, this.o.node ?? ev.node], this.events);
    const now = (this.o.now ?? Date.now)();
    if (now - this.lastTrim > 60_000) {
      this.lastTrim = now;
      // Age trim: ids are ms timestamps, so MINID drops what is older than stream_max_age.
      await this.conn.cmd(['XTRIM', this.events, 'MINID', '~', String(now - this.o.maxAgeS * 1000)], this.events).catch(() => {});
    }
  }

  /** The wake-up names its publisher ("<node> <id>"): a node's own publishes do not make it pull. */
  async listen(onWake: () => void): Promise<void> {
    const own = this.o.node === undefined ? null : `${this.o.node} `;
    await this.conn.subscribe(this.wake, (m) => {
      if (own === null || !m.startsWith(own)) onWake();
    });
  }

  async pull(full: boolean): Promise<{ events: FleetEvent[]; rejected: string[]; commit(): void; after(): Promise<void>; more: boolean }> {
    const cursor = this.fleet.kvGet(CURSOR);
    const out: FleetEvent[] = [];
    const rejected: string[] = [];
    const take = (json: unknown) => {
      if (typeof json !== 'string') {
        rejected.push('entry without an event');
        return;
      }
      const r = parseEvent(json, this.o.maxEventBytes);
      if ('error' in r) rejected.push(r.error);
      else out.push(r.event);
    };
    let next = cursor;
    let more = false;
    if (full || cursor === undefined || (await this.trimmedPast(cursor))) {
      // The id first, then the table: a change in between is in both (applied twice, harmlessly), never in neither.
      next = (await this.lastId()) ?? '0-0';
      for (const v of Object.values(hashReply(await this.conn.cmd(['HGETALL', this.bans], this.bans)))) take(v);
    } else {
      const r = (await this.conn.cmd(['XRANGE', this.events, `(${cursor}`, '+', 'COUNT', String(BATCH)], this.events)) as [string, string[]][];
      for (const [id, fields] of r) {
        next = id;
        const i = fields.indexOf('e');
        take(i >= 0 ? fields[i + 1] : undefined);
      }
      more = r.length === BATCH;
    }
    return {
      events: out,
      rejected,
      more,
      commit: () => {
        if (next !== undefined && next !== cursor) this.fleet.kvSet(CURSOR, next);
      },
      after: async () => {},
    };
  }

  /**
   * Whether trimming removed entries after `cursor` (they may be events this node never saw): a full resync is
   * needed. Redis 7 records the largest trimmed id (XINFO STREAM max-deleted-entry-id); older servers: whether the
   * oldest entry left is newer than the cursor and the cursor's own entry is gone.
   */
  private async trimmedPast(cursor: string): Promise<boolean> {
    let info: unknown[];
    try {
      info = (await this.conn.cmd(['XINFO', 'STREAM', this.events], this.events)) as unknown[];
    } catch (e) {
      if (/no such key/i.test(String(e))) return false;
      throw e;
    }
    const field = (name: string) => {
      const i = info.indexOf(name);
      return i >= 0 ? info[i + 1] : undefined;
    };
    const maxDeleted = field('max-deleted-entry-id');
    if (typeof maxDeleted === 'string') return compareIds(maxDeleted, cursor) > 0;
    const first = field('first-entry') as [string, string[]] | null | undefined;
    if (!first) return false;
    return compareIds(first[0], cursor) > 0 && !(await this.hasEntry(cursor));
  }

  private async hasEntry(id: string): Promise<boolean> {
    const r = (await this.conn.cmd(['XRANGE', this.events, id, id], this.events)) as unknown[];
    return r.length > 0;
  }

  private async lastId(): Promise<string | undefined> {
    const r = (await this.conn.cmd(['XREVRANGE', this.events, '+', '-', 'COUNT', '1'], this.events)) as [string, string[]][];
    return r[0]?.[0];
  }
}

export function compareIds(a: string, b: string): number {
  const [am, as] = a.split('-').map(BigInt) as [bigint, bigint];
  const [bm, bs] = b.split('-').map(BigInt) as [bigint, bigint];
  return am !== bm ? (am < bm ? -1 : 1) : as === bs ? 0 : as < bs ? -1 : 1;
}
