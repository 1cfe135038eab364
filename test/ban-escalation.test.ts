import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BanManager } from '../src/bans/ban-manager.ts';
import { banDuration } from '../src/bans/duration.ts';
import { openSqliteStore } from '../src/store/sqlite-store.ts';
import { silentLogger } from '../src/util/logger.ts';
import { IgnoreList } from '../src/detect/cidr-trie.ts';

function manager(banTime: number, factor: number, max: number) {
  const store = openSqliteStore(':memory:');
  let now = Date.UTC(2024, 0, 1);
  const bans = new BanManager({
    store,
    enforcers: [],
    ignore: IgnoreList.EMPTY,
    banTime: () => banTime,
    failedAttempts: () => 5,
    banTimeFactor: factor,
    banTimeMax: max,
    server: 'test',
    logger: silentLogger,
    now: () => now,
  });
  /** Bans `ip` through the detector path, lets the ban run out, returns its length in seconds (null: permanent). */
  const banOnce = async (ip: string): Promise<number | null> => {
    const rec = bans.decide({ ip, rule: 'ssh', time: now, failures: 5, instant: false, lines: [] });
    assert.ok(rec, 'decided');
    store.transaction(() => bans.writePending());
    bans.committed();
    await bans.flush();
    const active = store.activeBan(ip, now)!;
    const secs = active.expiresAt === null ? null : (active.expiresAt - active.createdAt) / 1000;
    if (secs !== null) {
      now = active.expiresAt! + 1000;
      assert.equal((await bans.expire()).length, 1);
    }
    return secs;
  };
  return { store, bans, banOnce, advance: (ms: number) => (now += ms) };
}

test('repeat bans escalate by ban_time_factor up to ban_time_max', async () => {
  const m = manager(600, 2, 5000);
  const got = [];
  for (let i = 0; i < 6; i++) got.push(await m.banOnce('192.0.2.1'));
  assert.deepEqual(got, [600, 1200, 2400, 4800, 5000, 5000]);
  assert.equal(m.store.banCount('192.0.2.1'), 6);
  // Escalation is per address.
  assert.equal(await m.banOnce('192.0.2.2'), 600);
  m.store.close();
});

test('factor 1 never escalates; a fractional factor is treated as 1', async () => {
  for (const factor of [1, 0.5]) {
    const m = manager(300, factor, 100_000);
    const got = [];
    for (let i = 0; i < 4; i++) got.push(await m.banOnce('192.0.2.1'));
    assert.deepEqual(got, [300, 300, 300, 300], `factor ${factor}`);
    m.store.close();
  }
});

test('ban_time <= 0 is permanent, whatever the factor', async () => {
  for (const base of [0, -1]) {
    const m = manager(base, 3, 1000);
    assert.equal(await m.banOnce('192.0.2.1'), null);
    m.store.close();
  }
  assert.equal(banDuration(0, 5, 2, 100), null);
  assert.equal(banDuration(-1, 0, 2, 100), null);
});

test('banDuration: the cap, huge counts and the 100-year limit', () => {
  assert.equal(banDuration(60, 0, 3, 10_000), 60);
  assert.equal(banDuration(60, 2, 3, 10_000), 540);
  assert.equal(banDuration(60, 10_000, 3, 10_000), 10_000);
  assert.equal(banDuration(60, 10_000, 3, 0), 3_153_600_000, 'max <= 0: only the 100-year limit');
});

test('manual bans escalate too when no duration is given, and an explicit duration is used as is', async () => {
  const m = manager(100, 2, 10_000);
  assert.equal(await m.banOnce('198.51.100.1'), 100);
  const r = await m.bans.manualBan('198.51.100.1', undefined, 'again');
  assert.equal(r.record.banCount, 2);
  assert.equal((r.record.expiresAt! - r.record.createdAt) / 1000, 200);
  const r2 = await m.bans.manualBan('198.51.100.1', 42, 'replace');
  assert.equal(r2.replaced, true);
  assert.equal((r2.record.expiresAt! - r2.record.createdAt) / 1000, 42);
  const r3 = await m.bans.manualBan('198.51.100.1', null, 'forever');
  assert.equal(r3.record.expiresAt, null);
  m.store.close();
});
