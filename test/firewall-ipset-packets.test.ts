// Real packets through the ipset enforcer: a client namespace connects over a veth pair (IPv4 and IPv6) to TCP
// listeners on ports 22 and 2222 in a server namespace, where IpsetEnforcer runs. Whole-source, prefix, port-scoped,
// allowed-inside-a-prefix, expiring and forwarded cases, the watcher's repairs, and 100,000 bans that survive a
// restart. Every firewall change happens inside namespaces of the test's own.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { IpsetEnforcer, type IpsetEnforcerOptions } from '../src/firewall/ipset.ts';
import { SETS } from '../src/firewall/ipset-sets.ts';
import { canonicalTarget } from '../src/firewall/target.ts';
import type { Enforcement, FirewallLogger } from '../src/firewall/types.ts';
import { requireNetns, type NetnsLab } from './helpers/netns.ts';
import { haveCommand, requirePrereq } from './helpers/prereq.ts';
import { connectAll, dockerUserChain, expectConnects, inLab, linkPinned, listen, routed } from './helpers/packets.ts';

const CHAIN = 'TSFILTER_IPSET';
const PORTS = [22, 2222];
const SRV = { 4: '192.0.2.1', 6: '2001:db8:1::1', p4: '198.51.100.1', p6: '2001:db8:2::1' } as const;
/** Client addresses: a/b/c in the plain subnets, in/ok inside the banned prefixes (ok is allowed). */
const CL = {
  a4: '192.0.2.2',
  b4: '192.0.2.3',
  c4: '192.0.2.4',
  in4: '198.51.100.7',
  ok4: '198.51.100.8',
  a6: '2001:db8:1::2',
  b6: '2001:db8:1::3',
  c6: '2001:db8:1::4',
  in6: '2001:db8:2::7',
  ok6: '2001:db8:2::8',
} as const;

function logger(warnings: string[] = []): FirewallLogger {
  return { info() {}, warn: (m) => void warnings.push(m), error() {} };
}

function prereqs(t: Parameters<typeof requireNetns>[0]): boolean {
  if (!requireNetns(t)) return false;
  return requirePrereq(t, haveCommand('ipset') && haveCommand('iptables') && haveCommand('ip6tables'), 'ipset, iptables and ip6tables', 'apt-get install -y ipset iptables');
}

/** Server and client namespaces on one veth pair, both doc subnets of each family on it. */
async function pair(lab: NetnsLab): Promise<{ S: string; C: string }> {
  const S = lab.ns('s');
  const C = lab.ns('c');
  linkPinned(lab, S, C, [`${SRV[4]}/24`, `${SRV.p4}/24`, `${SRV[6]}/64`, `${SRV.p6}/64`], [
    ...[CL.a4, CL.b4, CL.c4].map((a) => `${a}/24`),
    ...[CL.in4, CL.ok4].map((a) => `${a}/24`),
    ...[CL.a6, CL.b6, CL.c6, CL.in6, CL.ok6].map((a) => `${a}/64`),
  ]);
  await listen(lab, S, PORTS);
  return { S, C };
}

function hostFor(src: string): string {
  if (src.startsWith('198.51.100.')) return SRV.p4;
  if (src.startsWith('2001:db8:2:')) return SRV.p6;
  return src.includes(':') ? SRV[6] : SRV[4];
}

/** Connects from ns to the server address in each source's subnet and asserts each result: [src, port, expected]. */
function expect(lab: NetnsLab, ns: string, cases: [string, number, string][], what: string, timeoutMs?: number) {
  return expectConnects(lab, ns, cases.map(([from, port, want]) => ({ from, to: hostFor(from), port, want })), what, timeoutMs);
}

/** The same port and expected result for several sources. */
const each = (srcs: string[], port: number, want: string): [string, number, string][] => srcs.map((src) => [src, port, want]);

function waitFor(cond: () => boolean | Promise<boolean>, ms: number, what: string): Promise<number> {
  const t0 = Date.now();
  return new Promise((resolve, reject) => {
    const tick = async () => {
      if (await cond()) resolve(Date.now() - t0);
      else if (Date.now() - t0 > ms) reject(new Error(`${what}: not within ${ms} ms`));
      else setTimeout(() => void tick(), 50);
    };
    void tick();
  });
}

const hour = () => Date.now() + 3600_000;
const ban = (ip: string, expiresAt: number | null = hour(), scope: Enforcement['scope'] = null): Enforcement => ({ ip, expiresAt, rule: 'test', scope });

function enforcer(ns: string, opts: Partial<IpsetEnforcerOptions> = {}): IpsetEnforcer {
  return new IpsetEnforcer({ denyType: 'DROP', netns: ns, logger: logger(), checkInterval: 0, ...opts });
}

test('DROP: addresses, prefixes, allowed addresses inside a prefix, port scopes, unban and kernel expiry', async (t) => {
  if (!prereqs(t)) return;
  await inLab('ipset-drop', async (lab) => {
    const { S, C } = await pair(lab);
    const e = enforcer(S, { allow: [CL.ok4, CL.ok6] });
    await e.start();
    const everyone = PORTS.flatMap((p) => each(Object.values(CL), p, 'ok'));
    await expect(lab, C, everyone, 'all connect before any ban');

    const tcp22 = { protocol: 'tcp' as const, ports: [22] };
    await e.ban([ban(CL.a4), ban(CL.a6, null), ban('198.51.100.0/24'), ban('2001:db8:2::/64'), ban(CL.b4, hour(), tcp22), ban(CL.b6, hour(), tcp22)]);
    // One element per source in its set: no iptables rule per ban.
    assert.match(lab.runSync(S, ['ipset', 'list', SETS[4].ports]), /192\.0\.2\.3,tcp:22 timeout \d+/);
    assert.match(lab.runSync(S, ['ipset', 'list', SETS[6].ban]), /2001:db8:1::2 timeout 0\b/, 'a permanent ban is an element with timeout 0');
    await expect(
      lab,
      C,
      [...each([CL.a4, CL.a6, CL.in4, CL.in6], 2222, 'timeout'), ...each([CL.c4, CL.c6, CL.ok4, CL.ok6, CL.b4, CL.b6], 2222, 'ok'), ...each([CL.b4, CL.b6], 22, 'timeout')],
      'banned sources dropped, others (and allowed ones inside a banned prefix) connect, a tcp/22 ban leaves 2222 open',
    );
    assert.deepEqual(new Set(await e.elements()), new Set([CL.a4, CL.a6, '198.51.100.0/24', '2001:db8:2::/64', CL.b4, CL.b6]));

    // A whole-source ban of a port-scoped source replaces its element (and back), also across a restart.
    await e.ban([ban(CL.b4)]);
    assert.doesNotMatch(lab.runSync(S, ['ipset', 'list', SETS[4].ports]), /192\.0\.2\.3,/, 'the old port element is gone');
    await e.stop();
    const e2 = enforcer(S, { allow: [CL.ok4, CL.ok6] });
    await e2.start();
    await e2.ban([ban(CL.b4, hour(), tcp22)]);
    assert.doesNotMatch(lab.runSync(S, ['ipset', 'list', SETS[4].ban]), /^192\.0\.2\.3 /m, 'the restarted enforcer knew the whole-source element');
    await expect(lab, C, [[CL.b4, 2222, 'ok'], [CL.b4, 22, 'timeout'], [CL.a4, 2222, 'timeout']], 'scope changed after a restart; other bans held');

    await e2.unban([CL.a4, CL.a6, '198.51.100.0/24', '2001:db8:2::/64', CL.b4, CL.b6, '203.0.113.9']);
    await expect(lab, C, everyone, 'all connect after unban');
    assert.deepEqual(await e2.elements(), []);

    // Kernel-side expiry: no unban call; the element's own 2 s timeout lifts the ban.
    await e2.ban([ban(CL.a4, Date.now() + 2000), ban(CL.a6, Date.now() + 2000)]);
    await expect(lab, C, [[CL.a4, 2222, 'timeout'], [CL.a6, 2222, 'timeout']], 'blocked by a 2 s ban', 600);
    const ms = await waitFor(() => !/192\.0\.2\.2|2001:db8:1::2/.test(lab.runSync(S, ['ipset', 'list', SETS[4].ban]) + lab.runSync(S, ['ipset', 'list', SETS[6].ban])), 8000, 'kernel expiry');
    t.diagnostic(`elements gone ${ms} ms after the blocked probe`);
    await expect(lab, C, [[CL.a4, 2222, 'ok'], [CL.a6, 2222, 'ok']], 'connects once the kernel expired the elements');
    assert.equal(e2.health().ok, true);
    await e2.stop();
  });
});

test('REJECT refuses at once (TCP reset), for whole-source and port-scoped bans; a /0 ban is refused', async (t) => {
  if (!prereqs(t)) return;
  await inLab('ipset-reject', async (lab) => {
    const { S, C } = await pair(lab);
    const e = enforcer(S, { denyType: 'REJECT' });
    await e.start();
    const tcp22 = { protocol: 'tcp' as const, ports: [22] };
    await e.ban([ban(CL.a4), ban(CL.a6), ban(CL.b4, hour(), tcp22), ban(CL.b6, hour(), tcp22)]);
    const refused = [...each([CL.a4, CL.a6], 2222, 'ECONNREFUSED'), ...each([CL.b4, CL.b6], 22, 'ECONNREFUSED')];
    const got = await expect(lab, C, [...refused, [CL.b4, 2222, 'ok'], [CL.c4, 22, 'ok']], 'refused with a reset, others connect', 3000);
    const slowest = Math.max(...got.slice(0, 4).map((g) => g.ms));
    t.diagnostic(`refusals took at most ${slowest} ms`);
    assert.ok(slowest < 1000, `a refusal is immediate, not a timeout (${slowest} ms)`);

    await assert.rejects(e.ban([ban('0.0.0.0/0')]), /\/0 prefix/);
    await assert.rejects(e.ban([ban('192.0.2.1;reboot')]), /not an IP address/);
    await e.stop();
  });
});

test('iptables-legacy: -restore and -save are derived from the binary name', async (t) => {
  if (!prereqs(t)) return;
  if (!requirePrereq(t, haveCommand('iptables-legacy') && haveCommand('ip6tables-legacy'), 'iptables-legacy', 'apt-get install -y iptables')) return;
  await inLab('ipset-legacy', async (lab) => {
    const { S, C } = await pair(lab);
    const e = enforcer(S, { iptables: 'iptables-legacy', ip6tables: 'ip6tables-legacy' });
    await e.start();
    await e.ban([ban(CL.a4), ban(CL.a6)]);
    assert.match(lab.runSync(S, ['iptables-legacy-save', '-t', 'filter']), /-A INPUT -j TSFILTER_IPSET/);
    await expect(lab, C, [[CL.a4, 2222, 'timeout'], [CL.a6, 2222, 'timeout'], [CL.c4, 2222, 'ok']], 'legacy rules drop');
    assert.equal(await e.check(), true, 'the watcher finds the legacy chain intact');
    assert.equal(e.health().repairs, 0);
    await e.stop();
  });
});

test('the watcher repairs a flushed set, a flushed chain, a vanished jump and a destroyed set, and fires onLost', async (t) => {
  if (!prereqs(t)) return;
  await inLab('ipset-watch', async (lab) => {
    const { S, C } = await pair(lab);
    const active = [ban(CL.a4), ban(CL.a6), ban('198.51.100.0/24')];
    const e = enforcer(S, { checkInterval: 0.3 });
    let lost = 0;
    let reapplied: Promise<void> = Promise.resolve();
    // What the daemon does on onLost: put every active ban back.
    e.onLost(() => {
      lost++;
      reapplied = e.ban(active);
    });
    await e.start();
    await e.ban(active);
    const blocked: [string, number, string][] = [
      [CL.a4, 2222, 'timeout'],
      [CL.a6, 2222, 'timeout'],
      [CL.in4, 2222, 'timeout'],
      [CL.c4, 2222, 'ok'],
    ];

    const damage: [string, () => void][] = [
      ['ipset flush tsfilter4', () => lab.runSync(S, ['ipset', 'flush', SETS[4].ban])],
      ['iptables -F chain', () => lab.runSync(S, ['iptables', '-F', CHAIN])],
      ['ip6tables -D INPUT jump', () => lab.runSync(S, ['ip6tables', '-D', 'INPUT', '-j', CHAIN])],
      [
        'ipset destroy tsfilter4 (after removing the rules)',
        () => {
          // The watcher may put the rules back between the two commands; then destroy says "in use": try again.
          for (let i = 0; i < 50; i++) {
            lab.runSync(S, ['iptables', '-F', CHAIN]);
            try {
              lab.runSync(S, ['ipset', 'destroy', SETS[4].ban]);
              return;
            } catch {
              /* in use again */
            }
          }
          throw new Error('could not destroy the set');
        },
      ],
    ];
    for (const [what, hurt] of damage) {
      const before = lost;
      hurt();
      const ms = await waitFor(() => lost > before, 5000, `onLost after ${what}`);
      await reapplied;
      await waitFor(() => e.health().ok, 3000, `healthy after ${what}`);
      t.diagnostic(`${what}: repaired after ${ms} ms`);
      await expect(lab, C, blocked, `blocked again after ${what}`);
    }
    assert.ok(e.health().repairs >= damage.length, `repairs counted (${e.health().repairs})`);
    assert.match(lab.runSync(S, ['ipset', 'list', '-t', SETS[4].ban]), /Number of entries: 2/);
    await e.stop();
  });
});

test('forward: a router namespace blocks a banned client from FORWARD, or from DOCKER-USER when it exists', async (t) => {
  if (!prereqs(t)) return;
  await inLab('ipset-fwd', async (lab) => {
    const { c, r, s } = routed(lab, {
      client: ['203.0.113.2/24', '2001:db8:3::2/64'],
      routerToClient: ['203.0.113.1/24', '2001:db8:3::1/64'],
      routerToServer: ['198.51.100.1/24', '2001:db8:4::1/64'],
      server: ['198.51.100.2/24', '2001:db8:4::2/64'],
    });
    await listen(lab, s, [2222]);
    const through = async (want: string, what: string) => {
      const got = await connectAll(lab, c, [
        { from: '203.0.113.2', to: '198.51.100.2', port: 2222 },
        { from: '2001:db8:3::2', to: '2001:db8:4::2', port: 2222 },
      ]);
      assert.deepEqual(got.map((g) => g.result), [want, want], what);
    };
    const save = (bin: string) => lab.runSync(r, [`${bin}-save`, '-t', 'filter']);

    await through('ok', 'forwarded before any ban');
    const e = enforcer(r, { forward: true });
    await e.start();
    await e.ban([ban('203.0.113.2'), ban('2001:db8:3::0/64')]);
    await through('timeout', 'a banned client is dropped on the forward path');
    for (const bin of ['iptables', 'ip6tables']) assert.match(save(bin), /^-A FORWARD -j TSFILTER_IPSET$/m, `${bin}: jump from FORWARD`);
    await e.stop();

    // Docker starts: a new enforcer moves its jump to DOCKER-USER.
    dockerUserChain(lab, r);
    const e2 = enforcer(r, { forward: true });
    await e2.start();
    for (const bin of ['iptables', 'ip6tables']) {
      const out = save(bin);
      assert.match(out, /^-A DOCKER-USER -j TSFILTER_IPSET\n-A DOCKER-USER -j RETURN$/m, `${bin}: jump first in DOCKER-USER`);
      assert.doesNotMatch(out, /^-A FORWARD -j TSFILTER_IPSET$/m, `${bin}: no direct jump from FORWARD any more`);
    }
    await through('timeout', 'still dropped via DOCKER-USER');
    await e2.unban(['203.0.113.2', '2001:db8:3::/64']);
    await through('ok', 'forwarded again after unban');
    await e2.stop();
  });
});

test('100,000 bans in one go; elements() lists them all; they survive a restart; a set of the wrong type is recreated', async (t) => {
  if (!prereqs(t)) return;
  await inLab('ipset-bulk', async (lab) => {
    const ns = lab.ns('b');
    // A stale set of another type: recreated with a warning.
    lab.runSync(ns, ['ipset', 'create', SETS[6].ports, 'hash:ip', 'family', 'inet6']);
    const warnings: string[] = [];
    const e = enforcer(ns, { logger: logger(warnings) });
    await e.start();
    assert.ok(warnings.some((w) => /another type/.test(w)), `warned: ${warnings.join('; ')}`);
    assert.match(lab.runSync(ns, ['ipset', 'list', '-t', SETS[6].ports]), /Type: hash:net,port/);

    // A set of the wrong type that something else uses cannot be recreated: start() says so.
    const x = lab.ns('x');
    lab.runSync(x, ['ipset', 'create', SETS[4].allow, 'hash:ip', 'family', 'inet']);
    lab.runSync(x, ['iptables', '-A', 'OUTPUT', '-m', 'set', '--match-set', SETS[4].allow, 'dst', '-j', 'ACCEPT']);
    const stuck = enforcer(x);
    await assert.rejects(stuck.start(), /tsfilter4-allow exists as hash:ip .* must be hash:net .*could not be recreated/);
    assert.equal(stuck.health().ok, false);

    const bans: Enforcement[] = [];
    for (let i = 0; i < 256; i++) bans.push(ban(`203.0.113.${i}`));
    for (let i = 0; bans.length < 100_000; i++) {
      const scope = i % 10 === 0 ? { protocol: 'tcp' as const, ports: [22, 443] } : null;
      bans.push(ban(`2001:db8:${(i >> 16).toString(16)}:${(i & 0xffff).toString(16)}::1`, i % 3 === 0 ? null : hour(), scope));
    }
    let t0 = Date.now();
    await e.ban(bans);
    const banMs = Date.now() - t0;
    t0 = Date.now();
    const listed = await e.elements();
    const listMs = Date.now() - t0;
    t.diagnostic(`ban(100,000): ${banMs} ms; elements(): ${listMs} ms`);
    console.log(`# ipset: 100,000 bans applied in ${banMs} ms, listed in ${listMs} ms`);
    assert.equal(listed.length, 100_000);
    assert.deepEqual(new Set(listed), new Set(bans.map((b) => canonicalTarget(b.ip)!.text)));
    await e.stop();

    t0 = Date.now();
    const e2 = enforcer(ns);
    await e2.start();
    const again = await e2.elements();
    t.diagnostic(`restart + elements(): ${Date.now() - t0} ms`);
    assert.deepEqual(new Set(again), new Set(listed), 'bans hold across a restart');

    t0 = Date.now();
    await e2.unban(bans.map((b) => b.ip));
    t.diagnostic(`unban(100,000): ${Date.now() - t0} ms`);
    assert.deepEqual(await e2.elements(), []);
    await e2.stop();
  });
});
