import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BanManager, BanRefused, RETRY_MAX_MS } from '../src/bans/ban-manager.ts';
import { NeverBan, type Protector } from '../src/bans/never-ban.ts';
import { WHY_SSH_CLIENT, WHY_SSH_SESSION, WHY_SSH_UNVERIFIED } from '../src/detect/protected-addresses.ts';
import type { Enforcement, Enforcer } from '../src/firewall/types.ts';
import { openSqliteStore } from '../src/store/sqlite-store.ts';
import { createLogger, silentLogger } from '../src/util/logger.ts';
import { IgnoreList } from '../src/detect/cidr-trie.ts';

/** An enforcer with a set of elements that can be told to fail. */
class FakeEnforcer implements Enforcer {
  readonly name = 'fake';
  readonly set = new Map<string, Enforcement>();
  failing = false;
  calls = 0;
  async start() {}
  async stop() {}
  async ban(bans: Enforcement[]) {
    this.calls++;
    if (this.failing) throw new Error('nft: Operation not permitted');
    for (const b of bans) this.set.set(b.ip, b);
  }
  async unban(ips: string[]) {
    this.calls++;
    if (this.failing) throw new Error('nft: Operation not permitted');
    for (const ip of ips) this.set.delete(ip);
  }
  async elements() {
    return [...this.set.keys()];
  }
}

function setup(ignore: { has(ip: string): boolean; why?(ip: string): string | null } = IgnoreList.EMPTY) {
  const store = openSqliteStore(':memory:');
  const e = new FakeEnforcer();
  const lines: string[] = [];
  let now = Date.UTC(2024, 0, 1);
  const bans = new BanManager({
    store,
    enforcers: [e],
    ignore,
    banTime: () => 3600,
    failedAttempts: () => 5,
    server: 'test',
    logger: createLogger({ write: (l) => lines.push(l) }),
    now: () => now,
  });
  return { store, e, bans, lines, tick: (ms: number) => (now += ms), now: () => now };
}

test('start-up reconcile: missing bans added, ended ones removed, foreign elements left alone', async () => {
  const { store, e, bans, tick } = setup();
  await bans.manualBan('192.0.2.1', 600); // active: must be enforced
  await bans.manualBan('192.0.2.2', 600);
  await bans.manualBan('192.0.2.3', 60); // will expire
  store.removeBan('192.0.2.2', Date.UTC(2024, 0, 1), 'offline unban'); // ended while the daemon was down
  tick(120_000);
  // The kernel set as a restart finds it: our old elements, plus one somebody else added by hand.
  e.set.clear();
  for (const ip of ['192.0.2.2', '192.0.2.3', '203.0.113.9']) e.set.set(ip, { ip, expiresAt: null, rule: 'x' });
  const r = await bans.reconcile();
  assert.deepEqual(r, { restored: 1, removed: 2, foreign: 1 });
  assert.deepEqual([...e.set.keys()].sort(), ['192.0.2.1', '203.0.113.9']);
  store.close();
});

test('a failed firewall change is retried with backoff (1 s doubling to 60 s), reported, never dropped', async () => {
  const { store, e, bans, lines, tick } = setup();
  e.failing = true;
  const r = await bans.manualBan('192.0.2.7', 600, 'x');
  assert.equal(r.enforced, false);
  assert.ok(store.activeBan('192.0.2.7', Date.UTC(2024, 0, 1)), 'stored even though the firewall failed');
  assert.equal(bans.pendingEnforcement(), 1);
  assert.match(lines.join('\n'), /level=error msg="firewall change failed; will retry" enforcer=fake bans=1 .*error="nft: Operation not permitted"/);

  // Not before the backoff is due; then each failure doubles the wait, up to 60 s.
  const waits: number[] = [];
  let wait = 1000;
  for (let i = 0; i < 9; i++) {
    const before = e.calls;
    tick(wait - 1);
    await bans.retry();
    assert.equal(e.calls, before, `no retry before ${wait} ms`);
    tick(1);
    await bans.retry();
    assert.equal(e.calls, before + 1, `a retry at ${wait} ms`);
    waits.push(wait);
    const st = bans.enforcementStatus() as { pending_retries: number; next_retry_in_s: number; last_error: { error: string } };
    assert.equal(st.pending_retries, 1);
    assert.equal(st.last_error.error, 'nft: Operation not permitted');
    wait = st.next_retry_in_s * 1000;
  }
  assert.deepEqual(waits, [1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000]);
  assert.equal(wait, RETRY_MAX_MS);

  // A ban unbanned meanwhile is not re-applied; the firewall recovers and the rest goes in.
  await bans.manualBan('192.0.2.8', 600);
  await bans.unban('192.0.2.8');
  e.failing = false;
  tick(60_000);
  await bans.retry();
  assert.deepEqual([...e.set.keys()], ['192.0.2.7']);
  assert.equal(bans.pendingEnforcement(), 0);
  assert.match(lines.join('\n'), /firewall changes applied after retry/);
  // Back to a 1 s backoff for the next failure.
  e.failing = true;
  await bans.manualBan('192.0.2.9', 600);
  tick(1000);
  const c = e.calls;
  await bans.retry();
  assert.equal(e.calls, c + 1);
  store.close();
});

test('detector bans whose enforcement fails are queued too', async () => {
  const { store, e, bans } = setup();
  e.failing = true;
  bans.decide({ ip: '192.0.2.50', rule: 'ssh', time: 0, failures: 5, instant: false, lines: [] });
  store.transaction(() => bans.writePending());
  bans.committed();
  await bans.flush();
  assert.equal(bans.pendingEnforcement(), 1);
  store.close();
});

class FakeProtector implements Protector {
  constructor(
    public source: 'proc' | 'fallback',
    public entries: Map<string, string>,
  ) {}
  why(ip: string) {
    return this.entries.get(ip) ?? null;
  }
  list() {
    return [...this.entries].map(([ip, why]) => ({ ip, why }));
  }
  sshStatus() {
    return { source: this.source, ports: [22] };
  }
}

test('protected addresses: SSH sessions and SSH_CLIENT are never banned, by the detector or by hand; unverified peers are not protected', async () => {
  const lines: string[] = [];
  const logger = createLogger({ write: (l) => lines.push(l) });
  const p = new FakeProtector('proc', new Map([['198.51.100.1', WHY_SSH_SESSION], ['198.51.100.2', WHY_SSH_CLIENT]]));
  const guard = new NeverBan(['192.0.2.0/24', '2001:db8::/32'], p, logger);
  guard.start();
  assert.equal(guard.why('192.0.2.10'), 'in ignored_ips (192.0.2.0/24)');
  assert.equal(guard.why('2001:db8::1'), 'in ignored_ips (2001:db8::/32)');
  assert.equal(guard.why('127.0.0.1'), 'a loopback address');
  assert.equal(guard.why('198.51.100.1'), 'the address of a current SSH session');
  assert.match(guard.why('198.51.100.2')!, /SSH_CLIENT/);
  assert.equal(guard.why('203.0.113.1'), null);
  assert.equal(lines.length, 0, 'no fallback warning when sessions are verified');

  const { store, bans } = setup(guard);
  await assert.rejects(bans.manualBan('198.51.100.1', 60), (e: Error) => e instanceof BanRefused && /198\.51\.100\.1 is the address of a current SSH session/.test(e.message));
  await assert.rejects(bans.manualBan('::ffff:127.0.0.1', 60), /loopback/);
  assert.equal(bans.decide({ ip: '198.51.100.1', rule: 'ssh', time: 0, failures: 5, instant: false, lines: [] }), null);
  assert.equal(store.banCount('198.51.100.1'), 0);

  // Fallback (sshd not verifiable): an unverified connected peer is NOT protected (it may be the attacker), with
  // one warning; the starter's SSH_CLIENT still is.
  const fb = new FakeProtector('fallback', new Map([['203.0.113.7', WHY_SSH_UNVERIFIED], ['198.51.100.2', WHY_SSH_CLIENT]]));
  const lines2: string[] = [];
  const g2 = new NeverBan([], fb, createLogger({ write: (l) => lines2.push(l) }));
  g2.start();
  assert.equal(g2.has('203.0.113.7'), false);
  assert.equal(g2.has('198.51.100.2'), true);
  g2.why('203.0.113.7');
  assert.equal(lines2.filter((l) => /NOT protected/.test(l)).length, 1, lines2.join('\n'));
  store.close();
  void silentLogger;
});

test('a queued retry never overwrites a newer ban: a permanent ban stays permanent in the firewall', async () => {
  const { e, bans, tick } = setup();
  e.failing = true;
  await bans.manualBan('192.0.2.50', 600); // stored; the firewall change fails and is queued
  e.failing = false;
  await bans.manualBan('192.0.2.50', null); // replaced by a permanent ban, applied at once
  assert.equal(e.set.get('192.0.2.50')?.expiresAt, null);
  tick(RETRY_MAX_MS);
  await bans.retry();
  assert.equal(e.set.get('192.0.2.50')?.expiresAt, null, 'the retry re-applied the old 10-minute ban');
});

test('a queued retry never bans an address that became ignored meanwhile', async () => {
  const ignored = new Set<string>();
  const { e, bans, tick } = setup({ has: (ip) => ignored.has(ip) });
  e.failing = true;
  await bans.manualBan('192.0.2.60', 3600);
  ignored.add('192.0.2.60'); // SIGHUP with the address added to ignored_ips
  e.failing = false;
  tick(RETRY_MAX_MS);
  await bans.retry();
  assert.equal(e.set.has('192.0.2.60'), false);
});

test('a lift that fails is retried', async () => {
  const { e, bans, tick } = setup();
  await bans.manualBan('192.0.2.61', 3600);
  e.failing = true;
  assert.equal(await bans.lift(['192.0.2.61']), false);
  e.failing = false;
  tick(RETRY_MAX_MS);
  await bans.retry();
  assert.equal(e.set.has('192.0.2.61'), false);
});

test('an unban between a decision and its commit is not undone by the commit', async () => {
  const { store, e, bans, now } = setup();
  const d = bans.decide({ ip: '192.0.2.70', rule: 'ssh', time: now(), failures: 5, instant: false, lines: [] });
  assert.ok(d);
  bans.enforceEarly();
  await new Promise((r) => setImmediate(r));
  assert.ok(e.set.has('192.0.2.70'), 'enforced early');
  const r = await bans.unban('192.0.2.70');
  assert.equal(r.removed, true);
  store.transaction(() => bans.writePending());
  bans.committed();
  await bans.flush();
  assert.equal(store.activeBan('192.0.2.70', now()), undefined, 'the commit stored the unbanned ban again');
  assert.equal(e.set.has('192.0.2.70'), false);
});
