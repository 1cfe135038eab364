// Real packets through the ipset enforcer: a client namespace connects over a veth pair (IPv4 and IPv6) to TCP
// listeners on ports 22 and 2222 in a server namespace, where IpsetEnforcer runs. Whole-source, prefix, port-scoped,
// allowed-inside-a-prefix, expiring and forwarded cases, the watcher's repairs, and 100,000 bans that survive a
// restart. Every firewall change happens inside namespaces of the test's own.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { IpsetEnforcer, SETS, type IpsetEnforcerOptions } from '../src/firewall/ipset.ts';
import { canonicalTarget } from '../src/firewall/target.ts';
import type { Enforcement, FirewallLogger } from '../src/firewall/types.ts';
import { NetnsLab, requireNetns } from './helpers/netns.ts';
import { haveCommand, requirePrereq } from './helpers/prereq.ts';

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

/** A TCP greeter listening on `ports` (dual-stack) inside ns. */
async function listen(lab: NetnsLab, ns: string, ports: number[]): Promise<void> {
  const js = `const net = require('net'); let n = 0;
    for (const p of ${JSON.stringify(ports)}) net.createServer((s) => s.end('hi\\n')).listen(p, '::', () => { if (++n === ${ports.length}) console.log('listening'); });`;
  const srv = lab.spawn(ns, [process.execPath, '-e', js]);
  srv.stdout!.setEncoding('utf8');
  const [line] = (await Promise.race([once(srv.stdout!, 'data'), once(srv, 'exit')])) as [string];
  assert.match(String(line), /listening/, 'test server started');
}

/**
 * Static neighbor entries for the peer's addresses: a banned IPv6 neighbor's own neighbor solicitations are dropped
 * too (they come from the banned address), which a real attacker behind a router never notices; pinning the entries
 * makes the lab behave like that, and removes the first-contact resolution delay from every probe.
 */
function pin(lab: NetnsLab, ns: string, ifname: string, peerNs: string, peerIf: string, peerAddrs: string[]): void {
  const [link] = JSON.parse(lab.runSync(peerNs, ['ip', '-j', 'link', 'show', 'dev', peerIf])) as { address: string }[];
  for (const a of peerAddrs) lab.runSync(ns, ['ip', 'neigh', 'replace', a.replace(/\/\d+$/, ''), 'lladdr', link!.address, 'dev', ifname, 'nud', 'permanent']);
}

/** A veth pair with the neighbors pinned on both sides. */
function link(lab: NetnsLab, a: string, b: string, addrsA: string[], addrsB: string[]): void {
  const { ifA, ifB } = lab.link(a, b, addrsA, addrsB);
  pin(lab, a, ifA, b, ifB, addrsB);
  pin(lab, b, ifB, a, ifA, addrsA);
}

/** Server and client namespaces on one veth pair, both doc subnets of each family on it. */
async function pair(lab: NetnsLab): Promise<{ S: string; C: string }> {
  const S = lab.ns('s');
  const C = lab.ns('c');
  link(lab, S, C, [`${SRV[4]}/24`, `${SRV.p4}/24`, `${SRV[6]}/64`, `${SRV.p6}/64`], [
    ...[CL.a4, CL.b4, CL.c4].map((a) => `${a}/24`),
    ...[CL.in4, CL.ok4].map((a) => `${a}/24`),
    ...[CL.a6, CL.b6, CL.c6, CL.in6, CL.ok6].map((a) => `${a}/64`),
  ]);
  await listen(lab, S, PORTS);
  return { S, C };
}

interface Probe {
  src: string;
  port: number;
  /** Defaults to the server address in the source's subnet. */
  host?: string;
}

function hostFor(src: string): string {
  if (src.startsWith('198.51.100.')) return SRV.p4;
  if (src.startsWith('2001:db8:2:')) return SRV.p6;
  return src.includes(':') ? SRV[6] : SRV[4];
}

/** Connects for every probe in parallel from one node process in ns: 'ok', 'timeout' or the error code each. */
async function probe(lab: NetnsLab, ns: string, probes: Probe[], timeoutMs = 1000): Promise<{ result: string; ms: number }[]> {
  const jobs = probes.map((p) => ({ host: p.host ?? hostFor(p.src), port: p.port, localAddress: p.src }));
  const js = `const net = require('net'); const jobs = JSON.parse(process.argv[1]); const out = []; let left = jobs.length;
    jobs.forEach((j, i) => {
      const t0 = Date.now(); let done = false;
      const s = net.connect(j);
      const fin = (r) => { if (done) return; done = true; clearTimeout(timer); s.destroy(); out[i] = { result: r, ms: Date.now() - t0 };
        if (--left === 0) { console.log(JSON.stringify(out)); process.exit(0); } };
      const timer = setTimeout(() => fin('timeout'), ${timeoutMs});
      s.on('data', () => fin('ok'));
      s.on('error', (e) => fin(e.code));
    });`;
  const r = await lab.run(ns, [process.execPath, '-e', js, JSON.stringify(jobs)], { timeoutMs: 15_000 });
  assert.equal(r.code, 0, `probe ran: ${r.stderr}`);
  return JSON.parse(r.stdout) as { result: string; ms: number }[];
}

/** Probes and asserts each result: [src, port, expected]. */
async function expect(lab: NetnsLab, ns: string, cases: [string, number, string][], what: string, timeoutMs?: number): Promise<{ result: string; ms: number }[]> {
  const got = await probe(lab, ns, cases.map(([src, port]) => ({ src, port })), timeoutMs);
  const want = cases.map(([src, port, r]) => `${src} -> ${port}: ${r}`);
  const have = cases.map(([src, port], i) => `${src} -> ${port}: ${got[i]!.result}`);
  assert.deepEqual(have, want, what);
  return got;
}

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
  const lab = new NetnsLab('ipset-drop');
  try {
    const { S, C } = await pair(lab);
    const e = enforcer(S, { allow: [CL.ok4, CL.ok6] });
    await e.start();
    const everyone: [string, number, string][] = Object.values(CL).flatMap((a) => PORTS.map((p): [string, number, string] => [a, p, 'ok']));
    await expect(lab, C, everyone, 'all connect before any ban');

    const tcp22 = { protocol: 'tcp' as const, ports: [22] };
    await e.ban([ban(CL.a4), ban(CL.a6, null), ban('198.51.100.0/24'), ban('2001:db8:2::/64'), ban(CL.b4, hour(), tcp22), ban(CL.b6, hour(), tcp22)]);
    // One element per source in its set: no iptables rule per ban.
    assert.match(lab.runSync(S, ['ipset', 'list', SETS[4].ports]), /192\.0\.2\.3,tcp:22 timeout \d+/);
    assert.match(lab.runSync(S, ['ipset', 'list', SETS[6].ban]), /2001:db8:1::2 timeout 0\b/, 'a permanent ban is an element with timeout 0');
    await expect(
      lab,
      C,
      [
        [CL.a4, 2222, 'timeout'],
        [CL.a6, 2222, 'timeout'],
        [CL.c4, 2222, 'ok'],
        [CL.c6, 2222, 'ok'],
        [CL.in4, 2222, 'timeout'],
        [CL.in6, 2222, 'timeout'],
        [CL.ok4, 2222, 'ok'],
        [CL.ok6, 2222, 'ok'],
        [CL.b4, 22, 'timeout'],
        [CL.b6, 22, 'timeout'],
        [CL.b4, 2222, 'ok'],
        [CL.b6, 2222, 'ok'],
      ],
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
  } finally {
    lab.dispose();
  }
});

test('REJECT refuses at once (TCP reset), for whole-source and port-scoped bans; a /0 ban is refused', async (t) => {
  if (!prereqs(t)) return;
  const lab = new NetnsLab('ipset-reject');
  try {
    const { S, C } = await pair(lab);
    const e = enforcer(S, { denyType: 'REJECT' });
    await e.start();
    const tcp22 = { protocol: 'tcp' as const, ports: [22] };
    await e.ban([ban(CL.a4), ban(CL.a6), ban(CL.b4, hour(), tcp22), ban(CL.b6, hour(), tcp22)]);
    const got = await expect(
      lab,
      C,
      [
        [CL.a4, 2222, 'ECONNREFUSED'],
        [CL.a6, 2222, 'ECONNREFUSED'],
        [CL.b4, 22, 'ECONNREFUSED'],
        [CL.b6, 22, 'ECONNREFUSED'],
        [CL.b4, 2222, 'ok'],
        [CL.c4, 22, 'ok'],
      ],
      'refused with a reset, others connect',
      3000,
    );
    const slowest = Math.max(...got.slice(0, 4).map((g) => g.ms));
    t.diagnostic(`refusals took at most ${slowest} ms`);
    assert.ok(slowest < 1000, `a refusal is immediate, not a timeout (${slowest} ms)`);

    await assert.rejects(e.ban([ban('0.0.0.0/0')]), /\/0 prefix/);
    await assert.rejects(e.ban([ban('192.0.2.1;reboot')]), /not an IP address/);
    await e.stop();
  } finally {
    lab.dispose();
  }
});

test('iptables-legacy: -restore and -save are derived from the binary name', async (t) => {
  if (!prereqs(t)) return;
  if (!requirePrereq(t, haveCommand('iptables-legacy') && haveCommand('ip6tables-legacy'), 'iptables-legacy', 'apt-get install -y iptables')) return;
  const lab = new NetnsLab('ipset-legacy');
  try {
    const { S, C } = await pair(lab);
    const e = enforcer(S, { iptables: 'iptables-legacy', ip6tables: 'ip6tables-legacy' });
    await e.start();
    await e.ban([ban(CL.a4), ban(CL.a6)]);
    assert.match(lab.runSync(S, ['iptables-legacy-save', '-t', 'filter']), /-A INPUT -j TSFILTER_IPSET/);
    await expect(lab, C, [[CL.a4, 2222, 'timeout'], [CL.a6, 2222, 'timeout'], [CL.c4, 2222, 'ok']], 'legacy rules drop');
    assert.equal(await e.check(), true, 'the watcher finds the legacy chain intact');
    assert.equal(e.health().repairs, 0);
    await e.stop();
  } finally {
    lab.dispose();
  }
});

test('the watcher repairs a flushed set, a flushed chain, a vanished jump and a destroyed set, and fires onLost', async (t) => {
  if (!prereqs(t)) return;
  const lab = new NetnsLab('ipset-watch');
  try {
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
  } finally {
    lab.dispose();
  }
});

test('forward: a router namespace blocks a banned client from FORWARD, or from DOCKER-USER when it exists', async (t) => {
  if (!prereqs(t)) return;
  const lab = new NetnsLab('ipset-fwd');
  try {
    const c = lab.ns('c');
    const r = lab.ns('r');
    const s = lab.ns('s');
    link(lab, c, r, ['203.0.113.2/24', '2001:db8:3::2/64'], ['203.0.113.1/24', '2001:db8:3::1/64']);
    link(lab, r, s, ['198.51.100.1/24', '2001:db8:4::1/64'], ['198.51.100.2/24', '2001:db8:4::2/64']);
    lab.runSync(c, ['ip', 'route', 'add', 'default', 'via', '203.0.113.1']);
    lab.runSync(c, ['ip', '-6', 'route', 'add', 'default', 'via', '2001:db8:3::1']);
    lab.runSync(s, ['ip', 'route', 'add', 'default', 'via', '198.51.100.1']);
    lab.runSync(s, ['ip', '-6', 'route', 'add', 'default', 'via', '2001:db8:4::1']);
    lab.runSync(r, ['sysctl', '-qw', 'net.ipv4.ip_forward=1']);
    lab.runSync(r, ['sysctl', '-qw', 'net.ipv6.conf.all.forwarding=1']);
    await listen(lab, s, [2222]);
    const through = async (want: string, what: string) => {
      const got = await probe(lab, c, [
        { src: '203.0.113.2', host: '198.51.100.2', port: 2222 },
        { src: '2001:db8:3::2', host: '2001:db8:4::2', port: 2222 },
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

    // As Docker does: DOCKER-USER, jumped to from FORWARD. A new enforcer moves its jump there.
    for (const bin of ['iptables', 'ip6tables']) {
      lab.runSync(r, [bin, '-N', 'DOCKER-USER']);
      lab.runSync(r, [bin, '-A', 'DOCKER-USER', '-j', 'RETURN']);
      lab.runSync(r, [bin, '-I', 'FORWARD', '1', '-j', 'DOCKER-USER']);
    }
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
  } finally {
    lab.dispose();
  }
});

test('100,000 bans in one go; elements() lists them all; they survive a restart; a set of the wrong type is recreated', async (t) => {
  if (!prereqs(t)) return;
  const lab = new NetnsLab('ipset-bulk');
  try {
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
  } finally {
    lab.dispose();
  }
});
