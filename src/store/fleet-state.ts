import type Database from 'better-sqlite3';

/*
 * Fleet sync's durable state, in the same SQLite file as the bans (so an event and the ban it describes commit
 * together, and a kill -9 loses neither):
 *   fleet_outbox(id, event JSON, created_at)  local bans/unbans not yet published (Redis down, or not yet sent)
 *   fleet_kv(key, value)                      the stream cursor, this node's instance id
 *   fleet_versions(ip, at)                    when the latest change to an address (ban or unban, local or remote)
 *                                             happened, on its node's clock: an older event never undoes a newer one
 *   fleet_reports(ip, node, at)               which nodes reported an address (sync_bans.min_servers)
 */

export const FLEET_TABLES = `
  CREATE TABLE fleet_outbox (id INTEGER PRIMARY KEY, event TEXT NOT NULL, created_at INTEGER NOT NULL);
  CREATE TABLE fleet_kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
  CREATE TABLE fleet_versions (ip TEXT PRIMARY KEY, at INTEGER NOT NULL);
  CREATE TABLE fleet_reports (ip TEXT NOT NULL, node TEXT NOT NULL, at INTEGER NOT NULL, PRIMARY KEY (ip, node));
`;

export interface FleetState {
  outboxAdd(event: string, now: number): void;
  outboxPeek(limit: number): { id: number; event: string }[];
  outboxDelete(ids: number[]): void;
  outboxCount(): number;
  kvGet(key: string): string | undefined;
  kvSet(key: string, value: string): void;
  /** The time of the latest change to `ip` this node knows of. */
  version(ip: string): number | undefined;
  /** Records a change at `at` unless a later one is known; returns whether it was the latest. */
  bumpVersion(ip: string, at: number): boolean;
  /**
   * A change made on this node, inside the store transaction that made it: its version, and the event queued in the
   * outbox for publishing (durable with the change, whether or not fleet sync is running yet).
   */
  recordLocal(ev: { ip: string; at: number }, event: string, now: number): void;
  /** Records that `node` reported `ip` and returns how many distinct nodes did since `since`. */
  report(ip: string, node: string, at: number, since: number): number;
  /** Forgets reports and versions older than `before` (bounded tables). */
  prune(before: number): void;
}

export function fleetState(db: Database.Database): FleetState {
  const s = {
    add: db.prepare<[string, number]>('INSERT INTO fleet_outbox (event, created_at) VALUES (?, ?)'),
    peek: db.prepare<[number], { id: number; event: string }>('SELECT id, event FROM fleet_outbox ORDER BY id LIMIT ?'),
    del: db.prepare<[number]>('DELETE FROM fleet_outbox WHERE id = ?'),
    count: db.prepare<[], { n: number }>('SELECT count(*) AS n FROM fleet_outbox'),
    kvGet: db.prepare<[string], { value: string }>('SELECT value FROM fleet_kv WHERE key = ?'),
    kvSet: db.prepare<[string, string]>('INSERT INTO fleet_kv (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value'),
    verGet: db.prepare<[string], { at: number }>('SELECT at FROM fleet_versions WHERE ip = ?'),
    verSet: db.prepare<[string, number]>(
      'INSERT INTO fleet_versions (ip, at) VALUES (?, ?) ON CONFLICT(ip) DO UPDATE SET at = excluded.at WHERE excluded.at > fleet_versions.at',
    ),
    report: db.prepare<[string, string, number]>(
      'INSERT INTO fleet_reports (ip, node, at) VALUES (?, ?, ?) ON CONFLICT(ip, node) DO UPDATE SET at = max(at, excluded.at)',
    ),
    reporters: db.prepare<[string, number], { n: number }>('SELECT count(*) AS n FROM fleet_reports WHERE ip = ? AND at >= ?'),
    pruneReports: db.prepare<[number]>('DELETE FROM fleet_reports WHERE at < ?'),
    pruneVersions: db.prepare<[number]>('DELETE FROM fleet_versions WHERE at < ?'),
  };
  const deleteMany = db.transaction((ids: number[]) => {
    for (const id of ids) s.del.run(id);
  });
  return {
    outboxAdd: (event, now) => void s.add.run(event, now),
    outboxPeek: (limit) => s.peek.all(limit),
    outboxDelete: (ids) => deleteMany(ids),
    outboxCount: () => s.count.get()!.n,
    kvGet: (key) => s.kvGet.get(key)?.value,
    kvSet: (key, value) => void s.kvSet.run(key, value),
    version: (ip) => s.verGet.get(ip)?.at,
    // The upsert's WHERE keeps a later version: no row changed means a later (or the same) change is known.
    bumpVersion: (ip, at) => s.verSet.run(ip, at).changes > 0,
    recordLocal: (ev, event, now) => {
      s.verSet.run(ev.ip, ev.at);
      s.add.run(event, now);
    },
    report: (ip, node, at, since) => {
      s.report.run(ip, node, at);
      return s.reporters.get(ip, since)!.n;
    },
    prune: (before) => {
      s.pruneReports.run(before);
      s.pruneVersions.run(before);
    },
  };
}
