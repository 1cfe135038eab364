import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { BanManager, BanRefused, scopeCovers, type SubnetBanSettings } from '../src/bans/ban-manager.ts';
import { NeverBan, type Protector } from '../src/bans/never-ban.ts';
import { DryRunEnforcer } from '../src/firewall/dry-run.ts';
import type { PortScope } from '../src/firewall/types.ts';
import { openSqliteStore, SCHEMA_VERSION } from '../src/store/sqlite-store.ts';
import { silentLogger } from '../src/util/logger.ts';

/** A protector with fixed answers: which addresses are this host's own or a live SSH session's. */
function protector(entries: { ip: string; why: string }[]): Protector {
  return {
    why: (ip) => entries.find((e) => e.ip === ip)?.why ?? null,
    list: () => entries,
    sshStatus: () => ({ source: 'proc', ports: [22] }),
  };
}

const SSH: PortScope = { protocol: 'tcp', ports: [22] };
const WEB: PortScope = { protocol: 'tcp', ports: [80, 443] };

function setup(o: { subnet?: Partial<SubnetBanSettings>; ignored?: string[]; protectedIps?: { ip: string; why: string }[] } = {}) {
  const store = openSqliteStore(':memory:');
  const fw = new DryRunEnforcer(silentLogger);
  let now = Date.UTC(2026, 0, 1);
  const guard = new NeverBan(o.ignored ?? ['127.0.0.1'], protector(o.protectedIps ?? []), silentLogger);
  const scopes: Record<string, PortScope | null> = { ssh: SSH, web: WEB, any: null };
  const bans = new BanManager({
    store,
    enforcers: [fw],
    ignore: guard,
    scope: (r) => scopes[r] ?? null,
    subnetBans: o.subnet ? { enabled: true, ipv4Prefix: 24, ipv6Prefix: 64, threshold: 3, findTime: 600, ...o.subnet } : undefined,
    banTime: () => 3600,
    failedAttempts: () => 5,
    server: 'test',
    logger: silentLogger,
    now: () => now,
  });
  /** The detector's path: decide, store in one transaction, commit, enforce. */
  const detect = async (ip: string, rule = 'any') => {
    const rec = bans.decide({ ip, rule, time: now, failures: 5, instant: false, lines: [`line from ${ip}`] });
    store.transaction(() => bans.writePending());
    bans.committed();
    await bans.flush();
    return rec;
  };
  return { store, fw, bans, detect, advance: (ms: number) => (now += ms), now: () => now };
}

test('three addresses of one IPv6 /64 banned within find_time ban the /64; an address inside needs no ban of its own', async () => {
  const m = setup({ subnet: { threshold: 3 } });
  await m.detect('2001:db8:1::1');
  await m.detect('2001:db8:1::2');
  assert.equal(m.store.activeBan('2001:db8:1::/64', m.now()), undefined, 'two are not enough');
  await m.detect('2001:db8:1::3');
  const prefix = m.store.activeBan('2001:db8:1::/64', m.now());
  assert.ok(prefix, 'the /64 is banned');
  assert.equal(prefix.failures, 3);
  assert.match(prefix.reason, /Subnet 2001:db8:1::\/64 banned: 3 of its addresses/);
  assert.ok(m.fw.active.has('2001:db8:1::/64'), 'and enforced');
  // A fourth address of the prefix attacks: covered already.
  assert.equal(await m.detect('2001:db8:1::4'), null);
  // Another /64 is counted on its own.
  await m.detect('2001:db8:2::1');
  assert.equal(m.store.activeBan('2001:db8:2::/64', m.now()), undefined);
  m.store.close();
});

test('bans spread wider than find_time do not escalate; IPv4 uses its own prefix length', async () => {
  const m = setup({ subnet: { threshold: 3, findTime: 600, ipv4Prefix: 24 } });
  await m.detect('198.51.100.1');
  m.advance(400_000);
  await m.detect('198.51.100.2');
  m.advance(400_000); // the first is now 800 s old
  await m.detect('198.51.100.3');
  assert.equal(m.store.activeBan('198.51.100.0/24', m.now()), undefined);
  m.advance(1000);
  await m.detect('198.51.100.4');
  assert.ok(m.store.activeBan('198.51.100.0/24', m.now()), 'three within 600 s: .2, .3, .4');
  m.store.close();
});

test('a prefix holding a current SSH session or this host is never banned, by escalation or by hand', async () => {
  const m = setup({ subnet: { threshold: 2 }, protectedIps: [{ ip: '203.0.113.50', why: 'ssh-session' }] });
  await m.detect('203.0.113.1');
  await m.detect('203.0.113.2');
  assert.equal(m.store.activeBan('203.0.113.0/24', m.now()), undefined, 'the owner is logged in from 203.0.113.50');
  await assert.rejects(m.bans.manualBan('203.0.113.0/24', 3600), (e: Error) => e instanceof BanRefused && /holding 203\.0\.113\.50/.test(e.message));
  await assert.rejects(m.bans.manualBan('127.0.0.0/8', 3600), BanRefused);
  await assert.rejects(m.bans.manualBan('10.0.0.0/4', 3600), /too wide/);
  m.store.close();
});

test('manual prefix bans: canonical form, ignored_ips wholly covering refuses, partially inside is allowed', async () => {
  const m = setup({ ignored: ['127.0.0.1', '198.51.100.7', '192.0.2.0/25'] });
  const r = await m.bans.manualBan('2001:DB8:1::5/64', 600);
  assert.equal(r.record.ip, '2001:db8:1::/64', 'host bits cleared, lower case');
  assert.ok(m.fw.active.has('2001:db8:1::/64'));
  // 198.51.100.7 is ignored but only inside: the ban stands, the enforcers let it through (their allow lists).
  const r2 = await m.bans.manualBan('198.51.100.0/24', 600);
  assert.equal(r2.record.ip, '198.51.100.0/24');
  await assert.rejects(m.bans.manualBan('192.0.2.0/26', 600), /inside ignored_ips \(192\.0\.2\.0\/25\)/);
  // /32 is an address.
  assert.equal((await m.bans.manualBan('203.0.113.9/32', 600)).record.ip, '203.0.113.9');
  // Unbanning an address inside a banned prefix says the prefix still blocks it.
  const u = await m.bans.unban('2001:db8:1::77');
  assert.equal(u.stillBlockedBy, '2001:db8:1::/64');
  const u2 = await m.bans.unban('2001:db8:1::/64');
  assert.equal(u2.removed, true);
  assert.ok(!m.fw.active.has('2001:db8:1::/64'));
  m.store.close();
});

test('a rule with ports bans only those ports; the same address attacking another rule widens the ban, never narrows it', async () => {
  const m = setup();
  const first = await m.detect('192.0.2.77', 'ssh');
  assert.deepEqual(first?.scope, SSH);
  assert.deepEqual(m.fw.active.get('192.0.2.77')?.scope, SSH, 'the enforcer gets the scope');
  // The same rule again: covered.
  assert.equal(await m.detect('192.0.2.77', 'ssh'), null);
  // The web rule: 22 does not cover 80/443, so one ban now blocks 22, 80 and 443.
  const widened = await m.detect('192.0.2.77', 'web');
  assert.deepEqual(widened?.scope, { protocol: 'tcp', ports: [22, 80, 443] });
  const active = m.store.activeBan('192.0.2.77', m.now())!;
  assert.deepEqual(active.scope, { protocol: 'tcp', ports: [22, 80, 443] });
  assert.deepEqual(m.fw.active.get('192.0.2.77')?.scope, { protocol: 'tcp', ports: [22, 80, 443] });
  assert.equal(m.store.history('192.0.2.77').length, 2, 'the narrower ban was ended, not lost');
  // A rule without ports blocks everything; after that, no scoped rule changes it.
  await m.detect('192.0.2.77', 'any');
  assert.equal(m.store.activeBan('192.0.2.77', m.now())!.scope, undefined);
  assert.equal(await m.detect('192.0.2.77', 'ssh'), null);
  m.store.close();
});

test('scopeCovers', () => {
  assert.equal(scopeCovers(null, SSH), true);
  assert.equal(scopeCovers(SSH, null), false);
  assert.equal(scopeCovers(WEB, { protocol: 'tcp', ports: [443] }), true);
  assert.equal(scopeCovers(WEB, { protocol: 'udp', ports: [443] }), false);
});

test('the store keeps a ban\'s scope across a reopen, and a schema 1 file is upgraded in place', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'tsf-scope-'));
  try {
    const file = path.join(dir, 'v1.db');
    // A store as the previous release wrote it (schema 1: no scope column), with one ban.
    const s1 = openSqliteStore(file);
    s1.addBan({ ip: '192.0.2.5', rule: 'ssh', reason: 'r', createdAt: 1000, expiresAt: null, failures: 5, origin: 'local', server: 's' });
    s1.close();
    const raw = new Database(file);
    raw.exec('ALTER TABLE bans DROP COLUMN scope; ALTER TABLE bans DROP COLUMN country_code; DROP INDEX bans_created; DROP INDEX bans_ended; DROP TABLE fleet_outbox; DROP TABLE fleet_kv; DROP TABLE fleet_versions; DROP TABLE fleet_reports;');
    raw.pragma('user_version = 1');
    raw.close();
    const s2 = openSqliteStore(file);
    assert.equal(s2.activeBan('192.0.2.5', 2000)?.scope, undefined, 'old bans block all traffic');
    s2.addBan({ ip: '192.0.2.6', rule: 'web', reason: 'r', createdAt: 1000, expiresAt: null, failures: 5, origin: 'local', server: 's', scope: WEB });
    s2.close();
    const s3 = openSqliteStore(file);
    assert.deepEqual(s3.activeBan('192.0.2.6', 2000)?.scope, WEB);
    assert.deepEqual(s3.activeBans(2000).find((b) => b.ip === '192.0.2.6')?.scope, WEB);
    s3.close();
    const check = new Database(file, { readonly: true });
    assert.equal(check.pragma('user_version', { simple: true }), SCHEMA_VERSION);
    check.close();
    const bad = openSqliteStore(':memory:');
    assert.throws(() => bad.addBan({ ip: '192.0.2.8', rule: 'x', reason: '', createdAt: 1, expiresAt: null, failures: 0, origin: 'local', server: '', scope: { protocol: 'tcp', ports: [0] } }), /scope/);
    bad.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
