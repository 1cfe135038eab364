import { normalizeIp } from '../detect/ip.ts';
import type { FleetEvent, WireSchema } from './fleet-event.ts';
import { hashReply, type RedisConn } from './redis-connect.ts';

/*
 * PyFilter's schema, byte for byte (../shared/PYFILTER.md, "Redis"), so PyFilter and TSFilter nodes share bans:
 *   a ban:  HSET <ip> <name> "YYYY-MM-DD HH:MM:SS" reason <message> banned_server <name> [country <country>]
 *           LPUSH latest_10_keys "<ip> <name>";  LTRIM latest_10_keys 0 9;  PUBLISH PyFilter "<ip> <name>"
 *   seen:   a node that applied another's ban copies the banning server's time into a field named after itself;
 *           "banned here" means the hash has that field.
 *   start:  every key that is an IP address and lacks our field is a ban we missed.
 * PyFilter's bans are permanent and it has no unban, so this schema carries bans only: an unban here stays local,
 * and an address unbanned here is not banned again by the resync (its hash's time is older than the unban).
 * Times are local wall-clock strings, as PyFilter writes them; the fleet is assumed to share a time zone.
 */

export const CHANNEL = 'PyFilter';
export const LATEST = 'latest_10_keys';
const SCAN_COUNT = '1000';

export function pyfilterTime(ms: number): string {
  const d = new Date(ms);
  const p = (n: number) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

export function parsePyfilterTime(s: string | undefined): number | null {
  const m = /^(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})$/.exec(s ?? '');
  if (!m) return null;
  const t = new Date(+m[1]!, +m[2]! - 1, +m[3]!, +m[4]!, +m[5]!, +m[6]!).getTime();
  return Number.isFinite(t) ? t : null;
}

export class PyfilterWire implements WireSchema {
  readonly name = 'pyfilter' as const;
  /** Addresses announced on the channel since the last pull. */
  private announced = new Set<string>();

  constructor(
    private readonly conn: RedisConn,
    private readonly o: { name: string; maxEventBytes: number },
  ) {}

  async publish(ev: FleetEvent): Promise<void> {
    if (ev.kind !== 'ban') return;
    const args = ['HSET', ev.ip, this.o.name, pyfilterTime(ev.at), 'reason', ev.reason ?? '', 'banned_server', this.o.name];
    if (ev.country) args.push('country', ev.country);
    await this.conn.cmd(args, ev.ip);
    const entry = `${ev.ip} ${this.o.name}`;
    await this.conn.cmd(['LPUSH', LATEST, entry], LATEST);
    await this.conn.cmd(['LTRIM', LATEST, '0', '9'], LATEST);
    await this.conn.cmd(['PUBLISH', CHANNEL, entry]);
  }

  async listen(onWake: () => void): Promise<void> {
    await this.conn.subscribe(CHANNEL, (msg) => {
      if (msg.length > 300) return;
      const [ip, server] = msg.split(' ', 2);
      if (!ip || !server || server === this.o.name) return;
      const n = normalizeIp(ip);
      if (n === null) return;
      if (this.announced.size < 100_000) this.announced.add(ip);
      onWake();
    });
  }

  async pull(full: boolean) {
    const keys = new Set(this.announced);
    this.announced = new Set();
    if (full) {
      let cursor = '0';
      do {
        const [next, batch] = (await this.conn.cmd(['SCAN', cursor, 'COUNT', SCAN_COUNT])) as [string, string[]];
        cursor = next;
        for (const k of batch) if (k.length <= 45 && normalizeIp(k) !== null) keys.add(k);
      } while (cursor !== '0');
    }
    const events: FleetEvent[] = [];
    const rejected: string[] = [];
    const seen: [string, string][] = [];
    for (const key of keys) {
      const h = hashReply(await this.conn.cmd(['HGETALL', key], key));
      if (h[this.o.name] !== undefined) continue;
      const server = h.banned_server;
      const ip = normalizeIp(key);
      if (!server || ip === null) {
        rejected.push(`key ${key.slice(0, 45)}: no banned_server field`);
        continue;
      }
      if (server === this.o.name) continue;
      const time = h[server];
      const at = parsePyfilterTime(time);
      if (at === null) {
        rejected.push(`key ${key}: the time in field ${server.slice(0, 60)} is not YYYY-MM-DD HH:MM:SS`);
        continue;
      }
      const reason = h.reason ?? '';
      if (Buffer.byteLength(reason) > this.o.maxEventBytes) {
        rejected.push(`key ${key}: reason larger than ${this.o.maxEventBytes} bytes`);
        continue;
      }
      events.push({ v: 1, kind: 'ban', ip, node: server.slice(0, 200), at, rule: 'pyfilter', reason, createdAt: at, expiresAt: null, scope: null, country: h.country ?? null });
      seen.push([key, time!]);
    }
    return {
      events,
      rejected,
      more: false,
      commit: () => {},
      // PyFilter's "banned here": our field, holding the banning server's time.
      after: async () => {
        for (const [key, time] of seen) await this.conn.cmd(['HSET', key, this.o.name, time], key);
      },
    };
  }
}
