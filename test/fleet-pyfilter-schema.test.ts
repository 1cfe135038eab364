import { test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { DaemonProcess, until } from './helpers/daemon.ts';
import { jsonLines, runCli } from './helpers/cli.ts';
import { failed } from './helpers/syslog.ts';
import { fleetNodeConfig, requireRedis, RedisServer } from './helpers/redis.ts';
import { openSqliteStore } from '../src/store/sqlite-store.ts';
import type { BanRecord } from '../src/store/types.ts';

/*
 * redis.schema "pyfilter": a real TSFilter daemon named ts1 and PyFilter nodes played by redis-cli, writing exactly
 * the commands PyFilter writes (../shared/PYFILTER.md, "Redis"). The daemons run with TZ=UTC, so PyFilter's local
 * wall-clock times are written here in UTC.
 */

const CHANNEL = 'PyFilter';
const LATEST = 'latest_10_keys';
const LIVE_MS = 3000;

const p2 = (n: number) => String(n).padStart(2, '0');
function pyTime(ms: number): string {
  const d = new Date(ms);
  return `${d.getUTCFullYear()}-${p2(d.getUTCMonth() + 1)}-${p2(d.getUTCDate())} ${p2(d.getUTCHours())}:${p2(d.getUTCMinutes())}:${p2(d.getUTCSeconds())}`;
}

function hash(redis: RedisServer, key: string): Record<string, string> {
  const lines = redis.cli(['HGETALL', key]).split('\n');
  const h: Record<string, string> = {};
  for (let i = 0; i + 1 < lines.length; i += 2) h[lines[i]!] = lines[i + 1]!;
  return h;
}

/** What PyFilter does when `server` bans `ip`, command for command. */
function pyfilterBan(redis: RedisServer, ip: string, server: string, time: string, reason: string): void {
  redis.cli(['HSET', ip, server, time, 'reason', reason, 'banned_server', server]);
  redis.cli(['LPUSH', LATEST, `${ip} ${server}`]);
  redis.cli(['LTRIM', LATEST, '0', '9']);
  redis.cli(['PUBLISH', CHANNEL, `${ip} ${server}`]);
}

test('redis.schema "pyfilter": TSFilter and PyFilter nodes share bans through PyFilter\'s own keys and channel', { timeout: 90_000 }, async (t) => {
  if (!requireRedis(t)) return;
  const redis = await RedisServer.start();
  const root = mkdtempSync(path.join(tmpdir(), 'tsf-pyfleet-'));
  const dir = path.join(root, 'ts1');
  const n = fleetNodeConfig(dir, redis.port, 'ts1', { redis: { schema: 'pyfilter' } });
  const daemons: DaemonProcess[] = [];
  const start = async () => {
    const d = new DaemonProcess(n.cfg);
    daemons.push(d);
    await d.waitFor(/msg=started/);
    return d;
  };
  const activeBan = (ip: string): BanRecord | undefined => {
    const s = openSqliteStore(n.db, { readonly: true });
    try {
      return s.activeBan(ip, Date.now());
    } finally {
      s.close();
    }
  };
  const cli = (...args: string[]) => {
    const r = runCli([...args, '--config', n.cfg]);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    return r.stdout;
  };

  try {
    let d = await start();
    await until(() => redis.subscribers(CHANNEL) === 1, 10_000, 'ts1 to subscribe to PyFilter');

    await t.test('a ban PyFilter node pyf1 writes is applied on ts1, which marks it seen with pyf1\'s time', async () => {
      const time = pyTime(Date.now() - 5000);
      const reason = 'IP: 198.51.100.60 has been blacklisted and the firewall rules have been updated. Acquired 5 bad connections via ssh.';
      pyfilterBan(redis, '198.51.100.60', 'pyf1', time, reason);
      await until(() => activeBan('198.51.100.60') !== undefined, LIVE_MS, 'ts1 to ban it');
      const b = activeBan('198.51.100.60')!;
      assert.deepEqual([b.origin, b.server, b.reason, b.expiresAt], ['remote', 'pyf1', reason, null], 'PyFilter\'s bans are permanent');
      assert.equal(pyTime(b.createdAt), time);
      const l = jsonLines(cli('list', '--json')).find((x) => x.ip === '198.51.100.60')!;
      assert.deepEqual([l.origin, l.node], ['remote', 'pyf1']);
      // PyFilter's "banned here": a field named after this node, holding the banning server's time.
      await until(() => hash(redis, '198.51.100.60').ts1 !== undefined, LIVE_MS, 'the ts1 field');
      assert.deepEqual(hash(redis, '198.51.100.60'), { pyf1: time, reason, banned_server: 'pyf1', ts1: time });
      await d.waitFor(/msg="dry-run: would block" ip=198\.51\.100\.60 /, LIVE_MS);
      // A remote ban is not announced again as ts1's.
      assert.doesNotMatch(redis.cli(['LRANGE', LATEST, '0', '-1']), /198\.51\.100\.60 ts1/);
    });

    await t.test('ts1\'s own bans are written as PyFilter writes them: hash, latest_10_keys, a message on PyFilter', async () => {
      const sub = redis.spawnCli(['SUBSCRIBE', CHANNEL]);
      await until(() => redis.subscribers(CHANNEL) === 2, 10_000, 'redis-cli to subscribe');
      const before = Date.now();
      cli('ban', '198.51.100.61', '--reason', 'banned by hand on ts1');
      const after = Date.now();
      const lo = pyTime(Math.floor(before / 1000) * 1000);
      const hi = pyTime(after);
      // The ban from the log follows PyFilter's wording in reason.
      const tAttack = Date.now() - 10_000;
      for (let i = 0; i < 5; i++) appendFileSync(n.log, failed(tAttack + i * 1000, '198.51.100.62'));

      await until(() => /198\.51\.100\.61 ts1/.test(sub.out()) && /198\.51\.100\.62 ts1/.test(sub.out()), LIVE_MS, 'both bans on the PyFilter channel');
      // redis-cli prints each message as three lines: message, channel, payload.
      assert.match(sub.out(), /^message\nPyFilter\n198\.51\.100\.61 ts1$/m);
      const h = hash(redis, '198.51.100.61');
      assert.deepEqual(Object.keys(h).sort(), ['banned_server', 'reason', 'ts1']);
      assert.equal(h.banned_server, 'ts1');
      assert.equal(h.reason, 'banned by hand on ts1');
      assert.match(h.ts1!, /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$/);
      assert.ok(h.ts1! >= lo && h.ts1! <= hi, `${h.ts1} is the ban's local time (between ${lo} and ${hi})`);
      const h62 = hash(redis, '198.51.100.62');
      assert.equal(h62.banned_server, 'ts1');
      assert.match(h62.reason!, /^IP: 198\.51\.100\.62 has been blacklisted and the firewall rules have been updated\. Acquired 5 bad connections via ssh\./);
      const latest = redis.cli(['LRANGE', LATEST, '0', '-1']).split('\n');
      assert.deepEqual(latest.slice(0, 2).sort(), ['198.51.100.61 ts1', '198.51.100.62 ts1']);
      assert.ok(latest.includes('198.51.100.60 pyf1'));
    });

    await t.test('keys PyFilter nodes wrote while ts1 was down are picked up by the scan at start', async () => {
      assert.equal(await d.stop('SIGTERM'), 0, d.err);
      const time = pyTime(Date.now() - 60_000);
      pyfilterBan(redis, '198.51.100.63', 'pyf2', time, 'IP: 198.51.100.63 has been blacklisted');
      pyfilterBan(redis, '2001:db8::63', 'pyf2', time, 'IP: 2001:db8::63 has been blacklisted');
      // Already marked as banned here (a field named ts1): PyFilter's rule is to skip it.
      redis.cli(['HSET', '198.51.100.64', 'pyf2', time, 'reason', 'seen', 'banned_server', 'pyf2', 'ts1', time]);
      // Keys that are not addresses are none of the scan's business.
      redis.cli(['SET', 'unrelated', 'x']);
      redis.cli(['HSET', 'not-an-ip', 'pyf2', time, 'reason', 'x', 'banned_server', 'pyf2']);

      d = await start();
      await until(() => activeBan('198.51.100.63') !== undefined && activeBan('2001:db8::63') !== undefined, 10_000, 'the scan to find them');
      const b = activeBan('2001:db8::63')!;
      assert.deepEqual([b.origin, b.server, b.expiresAt], ['remote', 'pyf2', null]);
      await until(() => hash(redis, '198.51.100.63').ts1 === time && hash(redis, '2001:db8::63').ts1 === time, LIVE_MS, 'the ts1 fields');
      assert.equal(activeBan('198.51.100.64'), undefined, 'a key already marked with ts1 is not banned again');
      assert.equal(hash(redis, 'not-an-ip').ts1, undefined);
      // The bans from before the restart are still there.
      assert.ok(activeBan('198.51.100.60') && activeBan('198.51.100.61'));
    });
  } finally {
    for (const x of daemons) await x.stop('SIGKILL');
    await redis.dispose();
    rmSync(root, { recursive: true, force: true });
  }
});
