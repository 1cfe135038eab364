// An admin flushes the ruleset or deletes our table behind the daemon's back (fail2ban loses its bans this way: its
// issues #1680 and #2459): the watcher notices within a few seconds, recreates the table and calls onLost so the
// daemon re-applies every active ban. All of it inside a namespace of the test's own.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { NftablesEnforcer, type NftLogger } from '../src/firewall/nftables.ts';
import { NetnsLab, requireNetns } from './helpers/netns.ts';

const quiet: NftLogger = { info() {}, warn() {}, error() {} };
const lab = new NetnsLab('nft-repair');
after(() => lab.dispose());

function waitFor(cond: () => boolean, ms: number): Promise<number> {
  const t0 = Date.now();
  return new Promise((resolve, reject) => {
    const tick = () => {
      if (cond()) resolve(Date.now() - t0);
      else if (Date.now() - t0 > ms) reject(new Error(`not within ${ms} ms`));
      else setTimeout(tick, 25);
    };
    tick();
  });
}

const damage: [string, string][] = [
  ['nft flush ruleset', 'flush ruleset\n'],
  ['nft delete table inet tsfilter', 'delete table inet tsfilter\n'],
  ['a rule deleted (chain flushed)', 'flush chain inet tsfilter input\n'],
  ['a set deleted', 'flush chain inet tsfilter input\ndelete set inet tsfilter banned6\n'],
  ['a prefix set deleted', 'flush chain inet tsfilter input\ndelete set inet tsfilter net6\n'],
  ['a port set deleted', 'flush chain inet tsfilter input\ndelete set inet tsfilter netports4\n'],
  // Another definition cannot be changed in place: the table is rebuilt (elements lost) and onLost puts them back.
  ['a set redefined', 'flush chain inet tsfilter input\ndelete set inet tsfilter ports4\nadd set inet tsfilter ports4 { type ipv4_addr . inet_service; }\n'],
];

for (const [what, script] of damage) {
  test(`after "${what}" the watcher recreates the table and calls onLost`, async (t) => {
    if (!requireNetns(t)) return;
    const ns = lab.ns(`r${damage.findIndex((d) => d[0] === what)}`);
    let lost = 0;
    const active = [
      { ip: '192.0.2.5', expiresAt: Date.now() + 3600_000, rule: 'ssh' },
      { ip: '2001:db8::5', expiresAt: null, rule: 'ssh' },
      { ip: '198.51.100.0/24', expiresAt: null, rule: 'ssh', scope: { protocol: 'tcp' as const, ports: [22] } },
      { ip: '192.0.2.9', expiresAt: null, rule: 'ssh', scope: { protocol: 'udp' as const, ports: [53, 123] } },
      { ip: '2001:db8:5::/64', expiresAt: Date.now() + 3600_000, rule: 'ssh' },
    ];
    const e: NftablesEnforcer = new NftablesEnforcer({
      denyType: 'DROP',
      netns: ns,
      logger: quiet,
      // The flush-ruleset case runs with the default interval (2 s), the others faster.
      checkIntervalMs: what === 'nft flush ruleset' ? undefined : 250,
      // What the daemon does: put every active ban back.
      onLost: () => {
        lost++;
        void e.ban(active);
      },
    });
    try {
      await e.start();
      await e.ban(active);
      lab.runSync(ns, ['nft', '-f', '-'], script);
      const ms = await waitFor(() => lost > 0, 3000);
      t.diagnostic(`noticed after ${ms} ms`);
      await waitFor(() => e.health().ok, 2000);
      assert.equal(e.health().repairs, 1);
      // The table is whole again and, after onLost, holds the bans.
      await waitFor(() => false, 300).catch(() => {});
      const want = active.map((b) => b.ip).sort();
      assert.deepEqual((await e.elements()).sort(), want);
      assert.equal(await e.check(), true);
      assert.equal(lost, 1, 'repaired once');
      const rules = JSON.parse(lab.runSync(ns, ['nft', '-j', 'list', 'chain', 'inet', 'tsfilter', 'input'])).nftables.filter((o: { rule?: unknown }) => o.rule);
      assert.equal(rules.length, 10);
      // Every element is back in its set, not merely reported: a fresh enforcer lists them from the kernel.
      const fresh = new NftablesEnforcer({ denyType: 'DROP', netns: ns, logger: quiet, checkIntervalMs: 0 });
      assert.deepEqual((await fresh.elements()).sort(), want);
      const sets = lab.runSync(ns, ['nft', 'list', 'table', 'inet', 'tsfilter']);
      assert.match(sets, /198\.51\.100\.0\/24 \. tcp \. 22/);
      assert.match(sets, /192\.0\.2\.9 \. udp \. 53/);
    } finally {
      await e.stop();
    }
  });
}

test('a ban while the table is gone repairs it at once instead of failing', async (t) => {
  if (!requireNetns(t)) return;
  const ns = lab.ns('now');
  let lost = 0;
  const e = new NftablesEnforcer({ denyType: 'REJECT', netns: ns, logger: quiet, checkIntervalMs: 60_000, onLost: () => lost++ });
  try {
    await e.start();
    lab.runSync(ns, ['nft', 'flush', 'ruleset']);
    await e.ban([{ ip: '198.51.100.7', expiresAt: null, rule: 'ssh' }]);
    assert.deepEqual(await e.elements(), ['198.51.100.7']);
    assert.equal(lost, 1);
  } finally {
    await e.stop();
  }
});
