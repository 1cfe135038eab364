import { test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { DaemonProcess, until } from './helpers/daemon.ts';
import { jsonLines, runCli } from './helpers/cli.ts';
import { failed } from './helpers/syslog.ts';
import { fleetNodeConfig, requireRedis, RedisServer } from './helpers/redis.ts';
import { openSqliteStore } from '../src/store/sqlite-store.ts';
import type { BanRecord } from '../src/store/types.ts';

/*
 * Three real daemons A, B and C (dry-run enforcer, their own SQLite stores) on one real redis-server, driven through
 * the CLI, their logs and redis-cli. Each step builds on the state the previous ones left.
 */

interface FleetNode {
  name: string;
  dir: string;
  cfg: string;
  log: string;
  db: string;
  d: DaemonProcess;
}

const EVENTS = '{tsfilter}:events';
const BANS = '{tsfilter}:bans';
const WAKE = '{tsfilter}:wake';
/** Propagation between live nodes is a pub/sub wake-up away; this bound is generous for a loaded 2-core machine. */
const LIVE_MS = 3000;

function activeBan(n: FleetNode, ip: string): BanRecord | undefined {
  const s = openSqliteStore(n.db, { readonly: true });
  try {
    return s.activeBan(ip, Date.now());
  } finally {
    s.close();
  }
}
const has = (n: FleetNode, ip: string) => activeBan(n, ip) !== undefined;

function cli(n: FleetNode, ...args: string[]): string {
  const r = runCli([...args, '--config', n.cfg]);
  assert.equal(r.code, 0, `tsfilter ${args.join(' ')} on ${n.name}: ${r.stdout}${r.stderr}`);
  return r.stdout;
}
const listed = (n: FleetNode, ip: string) => jsonLines(cli(n, 'list', '--json')).find((b) => b.ip === ip);
const fleetStatus = (n: FleetNode) => JSON.parse(cli(n, 'status', '--json')).fleet as Record<string, unknown>;

/** Five failures within find_time: the default SSH rule bans on the fifth. */
function attack(n: FleetNode, ip: string): void {
  const t = Date.now() - 10_000;
  for (let i = 0; i < 5; i++) appendFileSync(n.log, failed(t + i * 1000, ip));
}

/** A well-formed ban event as another node would publish it, for XADD by hand. */
function banEvent(ip: string, node: string, at: number, extra: Record<string, unknown> = {}): string {
  return JSON.stringify({ v: 1, kind: 'ban', ip, node, at, rule: 'manual', reason: 'written by hand', createdAt: at, expiresAt: Date.now() + 3_600_000, scope: null, country: null, ...extra });
}

test('fleet sync: three daemons on one real Redis share bans and unbans, catch up, survive a Redis crash, and trust nothing blindly', { timeout: 150_000 }, async (t) => {
  if (!requireRedis(t)) return;
  const redis = await RedisServer.start();
  const root = mkdtempSync(path.join(tmpdir(), 'tsf-fleet-'));
  const daemons: DaemonProcess[] = [];
  const launch = (n: Omit<FleetNode, 'd'>): DaemonProcess => {
    const d = new DaemonProcess(n.cfg);
    daemons.push(d);
    return d;
  };
  const node = (name: string, o: Parameters<typeof fleetNodeConfig>[3] = {}): FleetNode => {
    const dir = path.join(root, name);
    const n = { name, dir, ...fleetNodeConfig(dir, redis.port, name, { ...o, redis: { max_event_bytes: 1024, ...o.redis } }) };
    return { ...n, d: launch(n) };
  };
  const restart = async (n: FleetNode, o: Parameters<typeof fleetNodeConfig>[3] = {}) => {
    fleetNodeConfig(n.dir, redis.port, n.name, { ...o, redis: { max_event_bytes: 1024, ...o.redis } });
    n.d = launch(n);
    await n.d.waitFor(/msg=started/);
  };

  try {
    // B never bans 203.0.113.128/25, whoever asks.
    const A = node('A');
    const B = node('B', { settings: { ignored_ips: ['127.0.0.1', '203.0.113.128/25'] } });
    const C = node('C');
    await Promise.all([A, B, C].map((n) => n.d.waitFor(/msg=started/, 30_000)));
    // The daemons subscribe in the background; "at once" is measured from when they listen.
    const allListening = () => until(() => redis.subscribers(WAKE) === 3, 10_000, 'three subscribers on the wake-up channel');
    await allListening();

    await t.test('1. a ban on A (CLI and log lines) reaches B and C at once; an unban on B reaches A and C', async () => {
      cli(A, 'ban', '198.51.100.10', '--duration', '1h', '--reason', 'fleet test');
      cli(A, 'ban', '2001:db8::10', '--duration', 'permanent');
      let t0 = Date.now();
      await until(() => [B, C].every((n) => has(n, '198.51.100.10') && has(n, '2001:db8::10')), LIVE_MS, 'the CLI bans on B and C');
      t.diagnostic(`CLI ban on A -> stored on B and C: ${Date.now() - t0} ms after the command returned`);
      const onA = activeBan(A, '198.51.100.10')!;
      for (const n of [B, C]) {
        const b = activeBan(n, '198.51.100.10')!;
        assert.equal(b.origin, 'remote');
        assert.equal(b.server, 'A');
        assert.equal(b.reason, 'fleet test');
        assert.equal(b.expiresAt, onA.expiresAt, 'the expiry travels with the ban');
        assert.equal(activeBan(n, '2001:db8::10')!.expiresAt, null);
        const l = listed(n, '198.51.100.10')!;
        assert.equal(l.origin, 'remote');
        assert.equal(l.node, 'A', `list --json on ${n.name} names the node that banned: ${JSON.stringify(l)}`);
        await n.d.waitFor(/msg="dry-run: would block" ip=198\.51\.100\.10 /, LIVE_MS);
      }

      t0 = Date.now();
      attack(A, '198.51.100.11');
      await A.d.waitFor(/msg=banned ip=198\.51\.100\.11 rule=ssh/);
      await until(() => has(B, '198.51.100.11') && has(C, '198.51.100.11'), LIVE_MS, 'the log-line ban on B and C');
      t.diagnostic(`log-line ban on A -> stored on B and C: ${Date.now() - t0} ms after the lines were written`);
      for (const n of [B, C]) {
        const b = activeBan(n, '198.51.100.11')!;
        assert.deepEqual([b.origin, b.server, b.rule], ['remote', 'A', 'ssh']);
      }

      cli(B, 'unban', '198.51.100.10');
      t0 = Date.now();
      await until(() => !has(A, '198.51.100.10') && !has(C, '198.51.100.10'), LIVE_MS, 'the unban on A and C');
      t.diagnostic(`unban on B -> lifted on A and C: ${Date.now() - t0} ms`);
      await A.d.waitFor(/msg=unbanned ip=198\.51\.100\.10 origin=remote/, LIVE_MS);
      assert.ok(has(A, '2001:db8::10') && has(C, '198.51.100.11'), 'only that address was lifted');
    });

    await t.test('4. a second daemon with a live node\'s name refuses to start and names the name', async () => {
      const dir = path.join(root, 'A-twin');
      const twin = launch({ name: 'A', dir, ...fleetNodeConfig(dir, redis.port, 'A') });
      const code = await Promise.race([twin.exited, new Promise<'hung'>((r) => setTimeout(() => r('hung'), 20_000))]);
      assert.notEqual(code, 'hung', `the twin kept running:\n${twin.out}`);
      assert.ok(code !== 0 && code !== null, `exit code ${code}`);
      assert.match(twin.out + twin.err, /node named "A" is alive/);
      assert.match(twin.out + twin.err, /must be unique/);
      // The real A kept its name: it still publishes.
      cli(A, 'ban', '198.51.100.13');
      await until(() => has(B, '198.51.100.13'), LIVE_MS, 'A still publishing after the twin was refused');
    });

    await t.test('6. a stale ban event never undoes a newer manual unban', async () => {
      const tomb = JSON.parse(redis.cli(['HGET', BANS, '198.51.100.10'])) as { kind: string; at: number; node: string };
      assert.deepEqual([tomb.kind, tomb.node], ['unban', 'B'], 'the ban table keeps the unban as the address\'s latest change');
      // A's ban, replayed late: valid in every field, still unexpired, but older than B's unban.
      redis.cli(['XADD', EVENTS, '*', 'e', banEvent('198.51.100.10', 'A', tomb.at - 60_000)]);
      // A marker published after it: once it is stored, the stale event (earlier in the stream) was processed.
      cli(A, 'ban', '198.51.100.12');
      await until(() => has(B, '198.51.100.12') && has(C, '198.51.100.12'), LIVE_MS, 'the marker after the stale event');
      for (const n of [A, B, C]) assert.equal(has(n, '198.51.100.10'), false, `the stale event re-banned 198.51.100.10 on ${n.name}`);
    });

    await t.test('2. a stopped node catches up on restart, without re-banning what was unbanned or expired meanwhile', async () => {
      assert.ok(has(C, '198.51.100.11'));
      assert.equal(await C.d.stop('SIGTERM'), 0, C.d.err);
      cli(A, 'ban', '198.51.100.21', '--duration', '2s');
      const expires = activeBan(A, '198.51.100.21')!.expiresAt!;
      cli(A, 'ban', '198.51.100.22');
      cli(A, 'unban', '198.51.100.22');
      cli(B, 'unban', '198.51.100.11');
      attack(A, '198.51.100.23');
      await A.d.waitFor(/msg=banned ip=198\.51\.100\.23 /);
      // Published last, so once C has it, C has processed everything above.
      cli(A, 'ban', '198.51.100.20', '--duration', 'permanent');
      await until(() => has(B, '198.51.100.20') && !has(B, '198.51.100.22') && has(B, '198.51.100.23'), LIVE_MS, 'B up to date');
      // C comes back only after the 2 s ban ended: it must not bring it back.
      await until(() => Date.now() > expires + 100, 5000, 'the 2 s ban to end');

      const t0 = Date.now();
      await restart(C);
      await until(() => has(C, '198.51.100.20'), 10_000, 'C to catch up');
      await allListening();
      t.diagnostic(`C restart -> caught up: ${Date.now() - t0} ms (daemon start included)`);
      assert.ok(has(C, '198.51.100.23'), 'the log-line ban made while C was down');
      assert.equal(has(C, '198.51.100.11'), false, 'unbanned on B while C was down, yet still banned on C');
      assert.equal(has(C, '198.51.100.22'), false, 'banned and unbanned while C was down, yet banned on C');
      assert.equal(has(C, '198.51.100.21'), false, 'expired while C was down, yet banned on C');
      await C.d.waitFor(/msg=banned ip=198\.51\.100\.20 /, LIVE_MS);
      assert.equal(C.d.count(/msg=banned ip=198\.51\.100\.2[12] /), 0, C.d.out);
      await C.d.waitFor(/msg=unbanned ip=198\.51\.100\.11 origin=remote/, LIVE_MS);
      const l = listed(C, '198.51.100.20')!;
      assert.deepEqual([l.origin, l.node, l.expires], ['remote', 'A', null]);
    });

    await t.test('3. Redis killed mid-run: changes queue in the outbox and all arrive after its restart', async () => {
      await redis.crash();
      await A.d.waitFor(/msg="redis connection lost/, 10_000);
      await B.d.waitFor(/msg="redis connection lost/, 10_000);
      const downAt = Date.now();
      cli(A, 'ban', '198.51.100.30', '--reason', 'while redis was down');
      attack(A, '198.51.100.31');
      await A.d.waitFor(/msg=banned ip=198\.51\.100\.31 /);
      cli(B, 'unban', '198.51.100.20');
      const s = fleetStatus(A);
      assert.equal(s.connected, false, JSON.stringify(s));
      assert.equal(s.outbox, 2, `A queues its two bans: ${JSON.stringify(s)}`);
      assert.equal(fleetStatus(B).outbox, 1, 'B queues its unban');
      assert.ok(has(A, '198.51.100.30') && !has(B, '198.51.100.20'), 'both nodes act locally meanwhile');

      // Restarted empty (no persistence): only the outboxes can bring these changes back.
      await redis.restart();
      const t0 = Date.now();
      t.diagnostic(`redis was down ${t0 - downAt} ms`);
      await until(
        () => [B, C].every((n) => has(n, '198.51.100.30') && has(n, '198.51.100.31')) && !has(A, '198.51.100.20') && !has(C, '198.51.100.20'),
        20_000,
        'the queued changes to arrive after the restart',
      );
      t.diagnostic(`redis restart -> queued changes applied everywhere: ${Date.now() - t0} ms`);
      assert.equal(activeBan(C, '198.51.100.30')!.reason, 'while redis was down');
      await until(() => (fleetStatus(A).outbox as number) === 0 && (fleetStatus(B).outbox as number) === 0, 10_000, 'the outboxes to drain');
      const after = fleetStatus(A);
      assert.equal(after.connected, true);
      assert.ok(after.published as number >= 2);
      await allListening();
    });

    await t.test('3b. with appendonly (fsync always), a crash loses no published event: a node that was down meanwhile still gets it', async () => {
      await redis.persistFromNow();
      assert.equal(await C.d.stop('SIGTERM'), 0);
      cli(A, 'ban', '198.51.100.35', '--reason', 'published before the crash');
      // Once B has it, it is in Redis and gone from A's outbox: only Redis's own data can bring it to C.
      await until(() => has(B, '198.51.100.35'), LIVE_MS, 'B to apply it');
      await until(() => (fleetStatus(A).outbox as number) === 0, 5000, 'A\'s outbox to drain');
      const entries = Number(redis.cli(['XLEN', EVENTS]));
      await redis.restart({ persistent: true });
      assert.equal(Number(redis.cli(['XLEN', EVENTS])), entries, 'the stream survived the crash');
      await restart(C);
      await until(() => has(C, '198.51.100.35'), 10_000, 'C to get the ban published before the crash');
      assert.equal(activeBan(C, '198.51.100.35')!.reason, 'published before the crash');
      assert.ok(has(C, '198.51.100.30') && !has(C, '198.51.100.20'), 'C keeps the earlier state');
      await allListening();
    });

    await t.test('5a. a remote ban of an address ignored here is never applied', async () => {
      cli(A, 'ban', '203.0.113.200');
      await until(() => has(C, '203.0.113.200'), LIVE_MS, 'C to apply it');
      await B.d.waitFor(/msg="not applying a remote ban of a protected address" ip=203\.0\.113\.200 node=A/, LIVE_MS);
      assert.equal(has(B, '203.0.113.200'), false);
      assert.equal(B.d.count(/would block" ip=203\.0\.113\.200 /), 0);
    });

    await t.test('5b. malformed events are ignored with a warning and do not stop the ones after them', async () => {
      // After Redis came back (3, 3b) every node pulls everything once more 2 s after reconnecting (src/store/fleet-sync.ts:
      // onConnected). A full pull reads the ban table, not the stream, and moves the cursor past whatever the stream
      // holds, so bad entries written inside that window would never be read (or warned about): let it pass first.
      await new Promise((r) => setTimeout(r, 2500));
      const bad = [
        'this is not JSON',
        // Valid in every field but too large (max_event_bytes 1024 here).
        banEvent('198.51.100.40', 'A', Date.now(), { reason: 'x'.repeat(1500) }),
        banEvent('198.51.100.300', 'A', Date.now()),
      ];
      for (const e of bad) redis.cli(['XADD', EVENTS, '*', 'e', e]);
      // An entry without the e field at all.
      redis.cli(['XADD', EVENTS, '*', 'x', banEvent('198.51.100.42', 'A', Date.now())]);
      cli(A, 'ban', '198.51.100.41');
      await until(() => has(B, '198.51.100.41') && has(C, '198.51.100.41'), LIVE_MS, 'the event after the bad ones');
      for (const n of [B, C]) {
        assert.equal(has(n, '198.51.100.40'), false, `an oversized event was applied on ${n.name}`);
        // Logged after the warnings (the store can be seen before the daemon's stdout reaches us).
        await n.d.waitFor(/msg=banned ip=198\.51\.100\.41 /, LIVE_MS);
        const warned = [...n.d.out.matchAll(/msg="ignored malformed or oversized fleet events" count=(\d+)/g)].reduce((s, m) => s + Number(m[1]), 0);
        assert.equal(warned, 4, `${n.name} warns about exactly the four bad entries:\n${n.d.out}`);
        assert.equal(has(n, '198.51.100.42'), false);
      }
      assert.match(B.d.out, /first="(not JSON|entry without an event|event larger than 1024 bytes[^"]*|ip is not an IP address or CIDR prefix)"/);
    });

    await t.test('5c. with min_servers 2, a ban reported by A alone is not applied; once B reports it too, it is', async () => {
      assert.equal(await C.d.stop('SIGTERM'), 0);
      await restart(C, { sync: { min_servers: 2 } });
      const reported = (ip: string, by: string) => {
        const db = new Database(C.db, { readonly: true, fileMustExist: true });
        try {
          return db.prepare('SELECT 1 FROM fleet_reports WHERE ip = ? AND node = ?').get(ip, by) !== undefined;
        } finally {
          db.close();
        }
      };
      cli(A, 'ban', '198.51.100.50');
      await until(() => has(B, '198.51.100.50') && reported('198.51.100.50', 'A'), LIVE_MS, 'B to apply it and C to note A\'s report');
      assert.equal(has(C, '198.51.100.50'), false, 'applied on C with one reporter of two required');
      cli(B, 'ban', '198.51.100.50', '--reason', 'seen here too');
      await until(() => has(C, '198.51.100.50'), LIVE_MS, 'C to apply it after the second report');
      const b = activeBan(C, '198.51.100.50')!;
      assert.deepEqual([b.origin, b.server, b.reason], ['remote', 'B', 'seen here too']);
    });
  } finally {
    for (const d of daemons) await d.stop('SIGKILL');
    await redis.dispose();
    rmSync(root, { recursive: true, force: true });
  }
});
