// Real packets: client namespaces connect over veth pairs to TCP listeners (ports 22 and 8080) in a server
// namespace where the iptables enforcer runs. Bans, prefix bans with an allowed address inside, port-scoped bans,
// REJECT, the watcher's repairs, forwarded traffic (FORWARD and Docker's DOCKER-USER), 100,000 bans in one go and the
// legacy variant. The iptables binaries are wrapped by a script that logs each call, to count restore processes.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { appendFileSync, chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { IptablesEnforcer, type IptablesEnforcerOptions } from '../src/firewall/iptables.ts';
import type { Enforcement, FirewallLogger } from '../src/firewall/types.ts';
import { NetnsLab, netnsSupport, requireNetns } from './helpers/netns.ts';
import { requirePrereq } from './helpers/prereq.ts';
import { connectAll, dockerUserChain, expectConnects, inLab, linkPinned, listen, routed, type Expected } from './helpers/packets.ts';

const quiet: FirewallLogger = { info() {}, warn() {}, error() {} };
const SRV = { 4: '192.0.2.1', 6: '2001:db8:1::1', p4: '198.51.100.1', p6: '2001:db8:2::1' } as const;
/** a: banned by address; b: never banned; p: inside the banned prefix; i: allowed (ignored) inside that prefix. */
const CL = {
  a4: '192.0.2.2',
  a6: '2001:db8:1::2',
  b4: '192.0.2.5',
  b6: '2001:db8:1::5',
  p4: '198.51.100.2',
  p6: '2001:db8:2::2',
  i4: '198.51.100.3',
  i6: '2001:db8:2::3',
} as const;
const PROBE_TIMEOUT_MS = 1000;

const lab = new NetnsLab('ipt-packets');
let S = '';
let C = '';
let wrapDir = '';
let callLog = '';

/** Ports the server listens on: 22 is what the port-scoped bans name, 8080 stays outside them. */
const PORTS = [22, 8080];

type Job = Expected & { want: 'ok' | 'timeout' | 'ECONNREFUSED' };

/** Runs every connection at once from one process in `ns` (so the timeouts overlap) and checks each outcome. */
function expectConnections(ns: string, jobs: Job[]) {
  return expectConnects(lab, ns, jobs, 'every connection behaves as expected', PROBE_TIMEOUT_MS);
}

/** From a client namespace of another lab to its server: each connect's result. */
async function results(l: NetnsLab, ns: string, jobs: { from: string; to: string; port: number }[]): Promise<string[]> {
  return (await connectAll(l, ns, jobs, PROBE_TIMEOUT_MS)).map((x) => x.result);
}

const to = (from: string): string => (from.includes(':') ? (from.startsWith('2001:db8:2:') ? SRV.p6 : SRV[6]) : from.startsWith('198.51.100.') ? SRV.p4 : SRV[4]);
const job = (from: string, want: Job['want'], what: string, port = 22): Job => ({ from, to: to(from), port, want, what });

/** Wrappers named iptables, iptables-restore, ... that log their name and run the real binary. */
function makeWrappers(names: string[]): void {
  for (const name of names) {
    const real = ['/usr/sbin', '/sbin', '/usr/bin', '/bin'].map((d) => path.join(d, name)).find((p) => existsSync(p));
    if (real === undefined) continue;
    const file = path.join(wrapDir, name);
    writeFileSync(
      file,
      `#!${process.execPath}
const { spawnSync } = require('node:child_process');
require('node:fs').appendFileSync(${JSON.stringify(callLog)}, ${JSON.stringify(name)} + '\\n');
const r = spawnSync(${JSON.stringify(real)}, process.argv.slice(2), { stdio: 'inherit' });
process.exit(r.status === null ? 1 : r.status);
`,
    );
    chmodSync(file, 0o755);
  }
}

const restores = (): number => readFileSync(callLog, 'utf8').split('\n').filter((l) => l.endsWith('-restore')).length;

function enforcer(ns: string, opts: Partial<IptablesEnforcerOptions> = {}): IptablesEnforcer {
  return new IptablesEnforcer({
    denyType: 'DROP',
    netns: ns,
    logger: quiet,
    checkInterval: 0,
    iptables: path.join(wrapDir, 'iptables'),
    ip6tables: path.join(wrapDir, 'ip6tables'),
    ...opts,
  });
}

const ban = (ip: string, scope?: Enforcement['scope']): Enforcement => ({ ip, expiresAt: null, rule: 'test', scope });

/** The `-A <chain>` lines of a chain in ns. */
function ruleLines(ns: string, bin: string, chain: string): string[] {
  return lab
    .runSync(ns, [bin, '-S', chain])
    .split('\n')
    .filter((l) => l.startsWith(`-A ${chain} `));
}

function wipe(ns: string): void {
  for (const bin of ['iptables', 'ip6tables']) {
    lab.runSync(ns, [bin, '-F']);
    lab.runSync(ns, [bin, '-X']);
  }
}

before(async () => {
  wrapDir = mkdtempSync(path.join(tmpdir(), 'tsf-ipt-wrap-'));
  callLog = path.join(wrapDir, 'calls.log');
  appendFileSync(callLog, '');
  makeWrappers(['iptables', 'iptables-restore', 'iptables-save', 'ip6tables', 'ip6tables-restore', 'ip6tables-save']);
  if (!netnsSupport().ok) return;
  S = lab.ns('s');
  C = lab.ns('c');
  linkPinned(lab, S, C, [`${SRV[4]}/24`, `${SRV[6]}/64`, `${SRV.p4}/24`, `${SRV.p6}/64`], [`${CL.a4}/24`, `${CL.a6}/64`, `${CL.b4}/24`, `${CL.b6}/64`, `${CL.p4}/24`, `${CL.p6}/64`, `${CL.i4}/24`, `${CL.i6}/64`]);
  await listen(lab, S, PORTS);
});
after(() => {
  lab.dispose();
  if (wrapDir) rmSync(wrapDir, { recursive: true, force: true });
});

test('DROP: a banned address cannot connect while another can; unban restores; one restore per family per batch; jump at INPUT 1', async (t) => {
  if (!requireNetns(t)) return;
  // An ACCEPT already in INPUT: our jump must go above it, or the ban would never be reached.
  lab.runSync(S, ['iptables', '-A', 'INPUT', '-p', 'tcp', '--dport', '22', '-j', 'ACCEPT']);
  lab.runSync(S, ['ip6tables', '-A', 'INPUT', '-p', 'tcp', '--dport', '22', '-j', 'ACCEPT']);
  const e = enforcer(S);
  try {
    await e.start();
    for (const bin of ['iptables', 'ip6tables']) assert.equal(ruleLines(S, bin, 'INPUT')[0], '-A INPUT -j TSFILTER', `${bin}: the jump is rule 1 of INPUT`);
    await expectConnections(C, [job(CL.a4, 'ok', 'before the ban'), job(CL.a6, 'ok', 'before the ban')]);

    const before = restores();
    await e.ban([ban(CL.a4), ban(CL.a6)]);
    assert.equal(restores() - before, 2, 'one iptables-restore and one ip6tables-restore for the batch');
    await expectConnections(C, [
      job(CL.a4, 'timeout', 'banned v4'),
      job(CL.a6, 'timeout', 'banned v6'),
      job(CL.b4, 'ok', 'other v4'),
      job(CL.b6, 'ok', 'other v6'),
    ]);

    // Banning again adds nothing: no process, no duplicate rule.
    const again = restores();
    await e.ban([ban(CL.a4), ban(CL.a6)]);
    assert.equal(restores(), again, 'an unchanged ban runs no restore');
    assert.equal(ruleLines(S, 'iptables', 'TSFILTER').filter((l) => l.includes(`${CL.a4}/32`)).length, 1);

    // An absent source in the batch must not fail the restore (no -D for it).
    await e.unban([CL.a4, CL.a6, '192.0.2.200', '2001:db8:1::200']);
    await expectConnections(C, [job(CL.a4, 'ok', 'after unban'), job(CL.a6, 'ok', 'after unban')]);
    assert.deepEqual(await e.elements(), []);
  } finally {
    await e.stop();
    wipe(S);
  }
});

test('a banned /24 and /64 block addresses inside while an allowed address inside still connects; setAllowed rewrites it', async (t) => {
  if (!requireNetns(t)) return;
  const e = enforcer(S, { allow: [CL.i4, CL.i6, '127.0.0.1'] });
  try {
    await e.start();
    await e.ban([ban('198.51.100.0/24'), ban('2001:db8:2::/64')]);
    assert.deepEqual((await e.elements()).sort(), ['198.51.100.0/24', '2001:db8:2::/64']);
    await expectConnections(C, [
      job(CL.p4, 'timeout', 'inside the banned /24'),
      job(CL.p6, 'timeout', 'inside the banned /64'),
      job(CL.i4, 'ok', 'allowed inside the /24'),
      job(CL.i6, 'ok', 'allowed inside the /64'),
      job(CL.b4, 'ok', 'outside the prefix'),
    ]);
    const before = restores();
    await e.setAllowed([]);
    assert.ok(restores() - before <= 2, 'one restore per family');
    await expectConnections(C, [job(CL.i4, 'timeout', 'no longer allowed'), job(CL.i6, 'timeout', 'no longer allowed')]);
    await e.setAllowed([CL.i4, CL.i6]);
    assert.match(ruleLines(S, 'iptables', 'TSFILTER')[0]!, /^-A TSFILTER -s 198\.51\.100\.3\/32 .*-j RETURN$/, 'the allow rule comes first');
    await expectConnections(C, [job(CL.i4, 'ok', 'allowed again'), job(CL.i6, 'ok', 'allowed again'), job(CL.p4, 'timeout', 'still banned')]);
  } finally {
    await e.stop();
    wipe(S);
  }
});

test('a port-scoped ban (tcp 22) blocks 22 while 8080 connects; a new scope replaces the rules in one restore', async (t) => {
  if (!requireNetns(t)) return;
  const e = enforcer(S);
  const ssh = { protocol: 'tcp' as const, ports: [22] };
  try {
    await e.start();
    await e.ban([ban(CL.a4, ssh), ban(CL.a6, ssh)]);
    await expectConnections(C, [
      job(CL.a4, 'timeout', 'v4 to 22'),
      job(CL.a6, 'timeout', 'v6 to 22'),
      job(CL.a4, 'ok', 'v4 to 8080', 8080),
      job(CL.a6, 'ok', 'v6 to 8080', 8080),
    ]);
    const before = restores();
    await e.ban([ban(CL.a4), ban(CL.a6)]);
    assert.equal(restores() - before, 2, 'delete + append in one restore per family');
    assert.equal(ruleLines(S, 'iptables', 'TSFILTER').length, 1, 'the scoped rule was replaced, not kept');
    await expectConnections(C, [job(CL.a4, 'timeout', 'v4 to 8080, all ports banned', 8080), job(CL.a6, 'timeout', 'v6 to 8080, all ports banned', 8080)]);
    await e.ban([ban(CL.a4, ssh), ban(CL.a6, ssh)]);
    await expectConnections(C, [job(CL.a4, 'ok', 'v4 to 8080 again', 8080), job(CL.a6, 'ok', 'v6 to 8080 again', 8080), job(CL.a4, 'timeout', 'v4 to 22 still')]);
  } finally {
    await e.stop();
    wipe(S);
  }
});

test('REJECT: a banned client is refused at once (TCP reset), unscoped and port-scoped', async (t) => {
  if (!requireNetns(t)) return;
  const e = enforcer(S, { denyType: 'REJECT' });
  try {
    await e.start();
    await e.ban([ban(CL.a4), ban(CL.a6)]);
    const r = await expectConnections(C, [job(CL.a4, 'ECONNREFUSED', 'v4 refused'), job(CL.a6, 'ECONNREFUSED', 'v6 refused'), job(CL.b4, 'ok', 'other v4')]);
    assert.ok(r[0]!.ms < PROBE_TIMEOUT_MS / 2 && r[1]!.ms < PROBE_TIMEOUT_MS / 2, `refused fast (${r[0]!.ms} ms, ${r[1]!.ms} ms)`);
    await e.ban([ban(CL.a4, { protocol: 'tcp', ports: [8080] }), ban(CL.a6, { protocol: 'tcp', ports: [8080] })]);
    await expectConnections(C, [
      job(CL.a4, 'ok', 'v4 to 22, outside the scope'),
      job(CL.a6, 'ok', 'v6 to 22, outside the scope'),
      job(CL.a4, 'ECONNREFUSED', 'v4 to 8080', 8080),
      job(CL.a6, 'ECONNREFUSED', 'v6 to 8080', 8080),
    ]);
  } finally {
    await e.stop();
    wipe(S);
  }
});

/** onLost as awaitable events. */
function lostEvents(e: IptablesEnforcer): { next: (ms: number) => Promise<void>; count: () => number } {
  let n = 0;
  const waiters: (() => void)[] = [];
  e.onLost(() => {
    n++;
    for (const w of waiters.splice(0)) w();
  });
  return {
    count: () => n,
    next: (ms) =>
      new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`onLost did not fire within ${ms} ms`)), ms);
        waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      }),
  };
}

test('the watcher repairs a flushed chain, a deleted jump and a flushed table, and fires onLost', async (t) => {
  if (!requireNetns(t)) return;
  // The real binaries: wrappers would slow each check, and the watcher spaces its checks by their duration.
  const e = enforcer(S, { allow: [CL.i4], checkInterval: 0.2, iptables: 'iptables', ip6tables: 'ip6tables' });
  const lost = lostEvents(e);
  try {
    await e.start();
    await e.ban([ban(CL.a4), ban(CL.a6), ban('198.51.100.0/24')]);

    let next = lost.next(10_000);
    lab.runSync(S, ['iptables', '-F', 'TSFILTER']);
    await next;
    assert.equal(ruleLines(S, 'iptables', 'TSFILTER')[0], `-A TSFILTER -s ${CL.i4}/32 -m comment --comment tsfilter-allow -j RETURN`);
    // The bans it had installed are back without waiting for the daemon.
    await expectConnections(C, [job(CL.a4, 'timeout', 'banned again after -F TSFILTER'), job(CL.i4, 'ok', 'allowed again'), job(CL.p4, 'timeout', 'prefix back')]);

    next = lost.next(10_000);
    lab.runSync(S, ['ip6tables', '-D', 'INPUT', '-j', 'TSFILTER']);
    await next;
    assert.equal(ruleLines(S, 'ip6tables', 'INPUT')[0], '-A INPUT -j TSFILTER');
    await expectConnections(C, [job(CL.a6, 'timeout', 'v6 banned again after the jump came back')]);

    // A ruleset reload (netfilter-persistent, a saved ruleset): the whole table flushed and user chains deleted at
    // once, as `iptables -F; iptables -X` would do without the watcher getting a chance in between.
    next = lost.next(10_000);
    lab.runSync(S, ['iptables-restore'], '*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n');
    assert.deepEqual(ruleLines(S, 'iptables', 'INPUT'), [], 'the table was emptied');
    await next;
    assert.equal(ruleLines(S, 'iptables', 'INPUT')[0], '-A INPUT -j TSFILTER');
    await expectConnections(C, [job(CL.a4, 'timeout', 'banned again after iptables -F; iptables -X'), job(CL.b4, 'ok', 'other')]);
    const h = e.health();
    assert.equal(h.ok, true);
    assert.ok(h.repairs >= 3 && lost.count() >= 3, `repairs counted (${h.repairs}, onLost ${lost.count()})`);
  } finally {
    await e.stop();
    wipe(S);
  }
});

test('forward: a banned client cannot connect through the router; the jump goes to DOCKER-USER when Docker made it', async (t) => {
  if (!requireNetns(t)) return;
  await inLab('ipt-forward', async (fl) => {
    const { c, r, s } = routed(fl, {
      client: ['203.0.113.2/24', '2001:db8:3::2/64'],
      routerToClient: ['203.0.113.1/24', '2001:db8:3::1/64'],
      routerToServer: ['192.0.2.1/24', '2001:db8:4::1/64'],
      server: ['192.0.2.10/24', '2001:db8:4::10/64'],
    });
    await listen(fl, s, PORTS);
    const probe = async (want: Job['want'], what: string): Promise<void> => {
      const got = await results(fl, c, [
        { from: '203.0.113.2', to: '192.0.2.10', port: 8080 },
        { from: '2001:db8:3::2', to: '2001:db8:4::10', port: 8080 },
      ]);
      assert.deepEqual(got, [want, want], what);
    };
    const bans = [ban('203.0.113.2'), ban('2001:db8:3::2')];
    await probe('ok', 'routed before any ban');

    // Without forward, the INPUT jump alone does not see routed traffic: the forward jump is what blocks below.
    const inputOnly = enforcer(r);
    await inputOnly.start();
    await inputOnly.ban(bans);
    await probe('ok', 'routed while banned, forward off');
    await inputOnly.stop();

    const fwd = enforcer(r, { forward: true });
    await fwd.start();
    for (const bin of ['iptables', 'ip6tables']) assert.equal(ruleLines(r, bin, 'FORWARD')[0], '-A FORWARD -j TSFILTER', `${bin}: FORWARD jump first`);
    await probe('timeout', 'routed while banned, forward on (bans kept across the restart)');
    await fwd.stop();

    // Docker starts: a new enforcer moves its jump to DOCKER-USER.
    dockerUserChain(fl, r);
    const docker = enforcer(r, { forward: true });
    await docker.start();
    for (const bin of ['iptables', 'ip6tables']) {
      assert.equal(ruleLines(r, bin, 'DOCKER-USER')[0], '-A DOCKER-USER -j TSFILTER', `${bin}: DOCKER-USER jump first`);
      assert.deepEqual(ruleLines(r, bin, 'FORWARD'), ['-A FORWARD -j DOCKER-USER'], `${bin}: our FORWARD jump moved to DOCKER-USER`);
    }
    await probe('timeout', 'routed while banned, via DOCKER-USER');
    await docker.unban(['203.0.113.2', '2001:db8:3::2']);
    await probe('ok', 'routed after unban');
    await docker.stop();
  });
});

test('100,000 bans apply in one go, are all listed by elements(), and large unbans rebuild the chain', async (t) => {
  if (!requireNetns(t)) return;
  await inLab('ipt-100k', async (bl) => {
    const s = bl.ns('s');
    const c = bl.ns('c');
    linkPinned(bl, s, c, ['192.0.2.1/24', '2001:db8:1::1/64'], ['192.0.2.2/24', '2001:db8:1::2/64']);
    await listen(bl, s, PORTS);
    const client = [
      { from: '192.0.2.2', to: '192.0.2.1', port: 22 },
      { from: '2001:db8:1::2', to: '2001:db8:1::1', port: 22 },
    ];
    const ips: string[] = [];
    for (const net of ['192.0.2', '198.51.100', '203.0.113']) for (let i = 0; i < 256; i++) ips.push(`${net}.${i}`);
    ips.push('2001:db8:1::2');
    for (let i = 0; ips.length < 100_000; i++) ips.push(`2001:db8:${(0x100 + (i >> 8)).toString(16)}:${(0x100 + (i & 255)).toString(16)}::2`);
    const e = enforcer(s);
    await e.start();

    // What one restore process costs here, to compare with one process per address.
    let t0 = Date.now();
    await e.ban([ban('203.0.113.77')]);
    const single = Date.now() - t0;

    let before = restores();
    t0 = Date.now();
    await e.ban(ips.map((ip) => ban(ip)));
    const bulk = Date.now() - t0;
    const procs = restores() - before;
    t.diagnostic(`ban of ${ips.length} sources: ${bulk} ms, ${procs} restore process(es); one single-address ban: ${single} ms`);
    assert.ok(procs <= 4, `a handful of restore processes, got ${procs}`);
    assert.ok(bulk < (ips.length * single) / 100, `${bulk} ms is far below ${ips.length} x ${single} ms`);
    assert.deepEqual(await results(bl, c, client), ['timeout', 'timeout'], 'the client is among the banned');

    t0 = Date.now();
    const listed = await e.elements();
    t.diagnostic(`elements(): ${listed.length} sources in ${Date.now() - t0} ms`);
    assert.equal(listed.length, new Set(ips).size);
    assert.deepEqual(new Set(listed), new Set(ips));

    before = restores();
    t0 = Date.now();
    const gone = ips.filter((ip) => ip.includes(':') && ip !== '2001:db8:1::2').slice(0, 60_000);
    await e.unban(gone);
    t.diagnostic(`unban of ${gone.length}: ${Date.now() - t0} ms, ${restores() - before} restore process(es)`);
    assert.ok(restores() - before <= 2);

    before = restores();
    t0 = Date.now();
    await e.unban(['192.0.2.2', '2001:db8:1::2']);
    t.diagnostic(`unban of 2 from a chain of ${e.health().rules}: ${Date.now() - t0} ms`);
    assert.equal(restores() - before, 2);
    assert.deepEqual(await results(bl, c, client), ['ok', 'ok'], 'connects after unban');
    assert.equal((await e.elements()).length, new Set(ips).size - gone.length - 2);
    await e.stop();
  });
});

test('iptables-legacy: the same enforcer with the legacy binaries', async (t) => {
  if (!requireNetns(t)) return;
  await inLab('ipt-legacy', async (ll) => {
    const s = ll.ns('s');
    const c = ll.ns('c');
    const probeOk = await ll.run(s, ['iptables-legacy-save', '-t', 'filter'], { timeoutMs: 10_000 });
    if (!requirePrereq(t, probeOk.code === 0, `iptables-legacy in a namespace (${probeOk.stderr.trim()})`, 'install iptables (legacy variant) and load ip_tables')) return;
    linkPinned(ll, s, c, ['192.0.2.1/24', '2001:db8:1::1/64'], ['192.0.2.2/24', '2001:db8:1::2/64', '192.0.2.5/24']);
    await listen(ll, s, PORTS);
    const probe = async (want: string[], what: string): Promise<void> => {
      const jobs = [
        { from: '192.0.2.2', to: '192.0.2.1', port: 22 },
        { from: '2001:db8:1::2', to: '2001:db8:1::1', port: 22 },
        { from: '192.0.2.5', to: '192.0.2.1', port: 22 },
      ];
      assert.deepEqual(await results(ll, c, jobs), want, what);
    };
    makeWrappers(['iptables-legacy', 'iptables-legacy-restore', 'iptables-legacy-save', 'ip6tables-legacy', 'ip6tables-legacy-restore', 'ip6tables-legacy-save']);
    const e = enforcer(s, { iptables: path.join(wrapDir, 'iptables-legacy'), ip6tables: path.join(wrapDir, 'ip6tables-legacy') });
    await e.start();
    assert.equal(e.health().variant, 'legacy');
    const before = restores();
    await e.ban([ban('192.0.2.2'), ban('2001:db8:1::2')]);
    assert.equal(restores() - before, 2);
    assert.deepEqual(ruleLines(s, 'iptables-legacy', 'INPUT'), ['-A INPUT -j TSFILTER']);
    await probe(['timeout', 'timeout', 'ok'], 'banned v4 and v6 blocked, the other address connects');
    await e.unban(['192.0.2.2', '2001:db8:1::2']);
    await probe(['ok', 'ok', 'ok'], 'after unban');
    await e.stop();
  });
});
