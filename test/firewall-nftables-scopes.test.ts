// Prefix bans, port-scoped bans, the allow list and the forward chain of the nftables enforcer, proven with real
// packets between namespaces over IPv4 and IPv6: a banned prefix blocks the addresses inside it while an ignored
// one still connects; a port-scoped ban blocks that port only; a new scope replaces the old one; nested prefixes;
// setAllowed() at runtime; and, through a router namespace, forwarded traffic is filtered only with forward on.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { NftablesEnforcer, type NftLogger } from '../src/firewall/nftables.ts';
import type { Enforcement, PortScope } from '../src/firewall/types.ts';
import { NetnsLab, netnsSupport, requireNetns } from './helpers/netns.ts';
import { listen } from './helpers/packets.ts';

const quiet: NftLogger = { info() {}, warn() {}, error() {} };
const PORT_A = 2222;
const PORT_B = 2223;
const lab = new NetnsLab('nft-scopes');
after(() => lab.dispose());

// Input path: server S, one client namespace C with two addresses inside one small prefix per family.
const SERVER = { 4: '192.0.2.1', 6: '2001:db8:1::1' } as const;
const VICTIM = { 4: '192.0.2.66', 6: '2001:db8:1::1:66' } as const;
const OTHER = { 4: '192.0.2.67', 6: '2001:db8:1::1:67' } as const;
const INNER = { 4: '192.0.2.64/26', 6: '2001:db8:1::1:0/112' } as const;
const OUTER = { 4: '192.0.2.0/25', 6: '2001:db8:1::/96' } as const;
let S = '';
let C = '';

before(async () => {
  if (!netnsSupport().ok) return;
  S = lab.ns('s');
  C = lab.ns('c');
  lab.link(S, C, [`${SERVER[4]}/24`, `${SERVER[6]}/64`], [`${VICTIM[4]}/24`, `${OTHER[4]}/24`, `${VICTIM[6]}/64`, `${OTHER[6]}/64`]);
  await listen(lab, S, [PORT_A, PORT_B]);
  // Neighbour discovery first: the first SYN from a second IPv6 address on a fresh link can be lost (retransmitted
  // after 1 s), which a 1 s probe would take for a drop.
  await warmUp(C, [VICTIM, OTHER].flatMap((a) => [4, 6].map((f) => ({ from: a[f as 4 | 6], to: SERVER[f as 4 | 6], port: PORT_A }))));
});

async function warmUp(ns: string, probes: Probe[]): Promise<void> {
  assert.deepEqual(await probe(ns, probes, 5000), probes.map(() => 'ok'), 'every client reaches the server before any ban');
}

interface Probe {
  from: string;
  to: string;
  port: number;
}

/** TCP connects from namespace ns, all at once in one process: 'ok', 'timeout' (1 s) or the error code. */
async function probe(ns: string, probes: Probe[], timeoutMs = 1000): Promise<string[]> {
  const js = `const net = require('net');
    const specs = JSON.parse(process.argv[1]);
    Promise.all(specs.map((p) => new Promise((done) => {
      const s = net.connect({ host: p.to, port: p.port, localAddress: p.from });
      const timer = setTimeout(() => { s.destroy(); done('timeout'); }, ${timeoutMs});
      s.on('data', () => { clearTimeout(timer); s.destroy(); done('ok'); });
      s.on('error', (e) => { clearTimeout(timer); done(e.code); });
    }))).then((r) => console.log(JSON.stringify(r)));`;
  const r = await lab.run(ns, [process.execPath, '-e', js, JSON.stringify(probes)], { timeoutMs: 15_000 });
  assert.equal(r.code, 0, `probe process: ${r.stderr}`);
  return JSON.parse(r.stdout) as string[];
}

type Want = 'ok' | 'blocked';
/** Checks [from, port, want] connects to SERVER from C over both families; `blocked` is REJECT's reset. */
async function expectInput(what: string, cases: [Record<4 | 6, string>, number, Want][], blocked = 'ECONNREFUSED'): Promise<void> {
  const probes: Probe[] = [];
  const wants: string[] = [];
  for (const [from, port, want] of cases) {
    for (const f of [4, 6] as const) {
      probes.push({ from: from[f], to: SERVER[f], port });
      wants.push(`${from[f]} -> ${port}: ${want === 'ok' ? 'ok' : blocked}`);
    }
  }
  const got = await probe(C, probes);
  assert.deepEqual(
    probes.map((p, i) => `${p.from} -> ${p.port}: ${got[i]}`),
    wants,
    what,
  );
}

type Obj = Record<string, any>;
/** Every element of our ban sets as text ("192.0.2.7", "198.51.100.0/24 . tcp . 22"), by set, sorted. */
function setContents(ns: string): Record<string, string[]> {
  const objs: Obj[] = JSON.parse(lab.runSync(ns, ['nft', '-j', 'list', 'table', 'inet', 'tsfilter'])).nftables;
  const text = (v: any): string => (typeof v === 'string' || typeof v === 'number' ? String(v) : v.prefix ? `${v.prefix.addr}/${v.prefix.len}` : v.concat.map(text).join(' . '));
  const out: Record<string, string[]> = {};
  for (const o of objs) {
    if (!o.set || !o.set.elem) continue;
    out[o.set.name] = o.set.elem.map((e: any) => text(typeof e === 'object' && 'elem' in e ? e.elem.val : e)).sort();
  }
  return out;
}

function bans(ips: readonly string[], scope: PortScope | null = null, expiresAt: number | null = null): Enforcement[] {
  return ips.map((ip) => ({ ip, expiresAt, rule: 'test', scope }));
}

const both = (r: Record<4 | 6, string>) => [r[4], r[6]];
const tcpA: PortScope = { protocol: 'tcp', ports: [PORT_A] };

/** A started REJECT enforcer on the server; its table is deleted afterwards so every test starts clean. */
async function withEnforcer(allow: string[], fn: (e: NftablesEnforcer) => Promise<void>): Promise<void> {
  const e = new NftablesEnforcer({ denyType: 'REJECT', netns: S, logger: quiet, checkIntervalMs: 0, allow });
  await e.start();
  try {
    await fn(e);
  } finally {
    await e.stop();
    lab.runSync(S, ['nft', 'delete', 'table', 'inet', 'tsfilter']);
  }
}

test('a banned prefix blocks the addresses inside it; an ignored address inside it still connects; unban restores', async (t) => {
  if (!requireNetns(t)) return;
  await withEnforcer(both(OTHER), async (e) => {
    await expectInput('before any ban', [
      [VICTIM, PORT_A, 'ok'],
      [OTHER, PORT_A, 'ok'],
    ]);
    await e.ban(bans(both(INNER), null, Date.now() + 3600_000));
    assert.deepEqual(setContents(S).net4, [INNER[4]]);
    assert.deepEqual(setContents(S).allow6, [OTHER[6]]);
    await expectInput('prefix banned, OTHER allowed', [
      [VICTIM, PORT_A, 'blocked'],
      [VICTIM, PORT_B, 'blocked'],
      [OTHER, PORT_A, 'ok'],
    ]);
    assert.deepEqual((await e.elements()).sort(), [INNER[4], INNER[6]].sort());
    await e.unban(both(INNER));
    await expectInput('prefix unbanned', [[VICTIM, PORT_A, 'ok']]);
    assert.deepEqual(setContents(S).net4 ?? [], []);
    assert.deepEqual(await e.elements(), []);
  });
});

test('a port-scoped ban blocks that port only; ports -> whole -> ports takes effect; unban restores', async (t) => {
  if (!requireNetns(t)) return;
  await withEnforcer([], async (e) => {
    await e.ban(bans(both(VICTIM), tcpA));
    await expectInput('tcp PORT_A only', [
      [VICTIM, PORT_A, 'blocked'],
      [VICTIM, PORT_B, 'ok'],
      [OTHER, PORT_A, 'ok'],
    ]);
    assert.deepEqual(setContents(S).ports4, [`${VICTIM[4]} . tcp . ${PORT_A}`]);

    await e.ban(bans(both(VICTIM)));
    await expectInput('whole source', [
      [VICTIM, PORT_A, 'blocked'],
      [VICTIM, PORT_B, 'blocked'],
    ]);
    let sets = setContents(S);
    assert.deepEqual([sets.banned4, sets.ports4 ?? [], sets.ports6 ?? []], [[VICTIM[4]], [], []], 'the port elements went with the new scope');

    await e.ban(bans(both(VICTIM), { protocol: 'tcp', ports: [PORT_B] }));
    await expectInput('tcp PORT_B only', [
      [VICTIM, PORT_A, 'ok'],
      [VICTIM, PORT_B, 'blocked'],
    ]);
    sets = setContents(S);
    assert.deepEqual([sets.banned4 ?? [], sets.ports6], [[], [`${VICTIM[6]} . tcp . ${PORT_B}`]]);
    assert.deepEqual((await e.elements()).sort(), both(VICTIM).sort(), 'a source with port elements is listed once');

    // A fresh enforcer (a restart) learns the scope from the sets, so its unban removes the port elements too.
    const e2 = new NftablesEnforcer({ denyType: 'REJECT', netns: S, logger: quiet, checkIntervalMs: 0 });
    await e2.start();
    await e2.unban(both(VICTIM));
    await e2.stop();
    await expectInput('unbanned', [
      [VICTIM, PORT_A, 'ok'],
      [VICTIM, PORT_B, 'ok'],
    ]);
    assert.deepEqual(setContents(S), {});
  });
});

test('a port-scoped prefix ban (netports) blocks that port for the whole prefix, not the allowed address', async (t) => {
  if (!requireNetns(t)) return;
  await withEnforcer(both(OTHER), async (e) => {
    await e.ban(bans(both(INNER), tcpA, Date.now() + 600_000));
    assert.deepEqual(setContents(S).netports4, [`${INNER[4]} . tcp . ${PORT_A}`]);
    await expectInput('prefix, tcp PORT_A only', [
      [VICTIM, PORT_A, 'blocked'],
      [VICTIM, PORT_B, 'ok'],
      [OTHER, PORT_A, 'ok'],
    ]);
    // Whole prefix now: the netports element goes, the net element comes.
    await e.ban(bans(both(INNER)));
    assert.deepEqual([setContents(S).netports4 ?? [], setContents(S).net6], [[], [INNER[6]]]);
    await expectInput('whole prefix', [[VICTIM, PORT_B, 'blocked']]);
    await e.unban(both(INNER));
    await expectInput('unbanned', [[VICTIM, PORT_B, 'ok']]);
    assert.deepEqual(setContents(S), { allow4: [OTHER[4]], allow6: [OTHER[6]] });
  });
});

test('nested prefixes: only the outer one is in the set; unbanning it puts the inner one in', async (t) => {
  if (!requireNetns(t)) return;
  await withEnforcer([], async (e) => {
    // Inner first, then the outer one replaces it in the set (removal and addition are two transactions).
    await e.ban(bans(both(INNER)));
    await e.ban(bans(both(OUTER), null, Date.now() + 3600_000));
    assert.deepEqual([setContents(S).net4, setContents(S).net6], [[OUTER[4]], [OUTER[6]]]);
    assert.deepEqual((await e.elements()).sort(), [...both(INNER), ...both(OUTER)].sort(), 'the shadowed prefix is still reported');
    await e.unban(both(OUTER));
    assert.deepEqual([setContents(S).net4, setContents(S).net6], [[INNER[4]], [INNER[6]]]);
    await expectInput('inner prefix still banned after the outer one went', [[VICTIM, PORT_A, 'blocked']]);
    // Outer first, then inner: shadowed at once; and one batch can name both.
    await e.unban(both(INNER));
    await e.ban([...bans(both(INNER)), ...bans(both(OUTER))]);
    assert.deepEqual(setContents(S).net4, [OUTER[4]]);
    await e.unban([...both(INNER), ...both(OUTER)]);
    assert.deepEqual(setContents(S), {});
    await expectInput('all unbanned', [[VICTIM, PORT_A, 'ok']]);
  });
});

test('setAllowed() replaces the allow list at runtime', async (t) => {
  if (!requireNetns(t)) return;
  await withEnforcer([], async (e) => {
    await e.ban(bans(both(INNER)));
    await expectInput('nobody allowed', [
      [VICTIM, PORT_A, 'blocked'],
      [OTHER, PORT_A, 'blocked'],
    ]);
    // Duplicates and an address inside a listed prefix are merged away (an interval set refuses nested elements).
    await e.setAllowed([...both(OTHER), '192.0.2.67/32', '2001:db8:1::1:1', '2001:db8:1::1:0/126']);
    assert.deepEqual(setContents(S).allow6, ['2001:db8:1::1:0/126', OTHER[6]]);
    assert.equal(e.health().allowed, 3);
    await expectInput('OTHER allowed', [
      [VICTIM, PORT_A, 'blocked'],
      [OTHER, PORT_A, 'ok'],
    ]);
    await e.setAllowed([]);
    await expectInput('allow list emptied', [[OTHER, PORT_A, 'blocked']]);
    // A restart with another list rewrites it (ignored_ips changed while the daemon was down).
    const e2 = new NftablesEnforcer({ denyType: 'REJECT', netns: S, logger: quiet, checkIntervalMs: 0, allow: both(VICTIM) });
    await e2.start();
    await e2.stop();
    await expectInput('allow list from the new start', [
      [VICTIM, PORT_A, 'ok'],
      [OTHER, PORT_A, 'blocked'],
    ]);
  });
});

test('forward: a router filters forwarded connections only with forward on', async (t) => {
  if (!requireNetns(t)) return;
  // client (two addresses) -> router (runs the enforcer, forwards) -> server
  const CL = { 4: ['203.0.113.2', '203.0.113.3'], 6: ['2001:db8:3::2', '2001:db8:3::3'] } as const;
  const SRV = { 4: '198.51.100.2', 6: '2001:db8:4::2' } as const;
  const R = lab.ns('r');
  const cl = lab.ns('cl');
  const srv = lab.ns('srv');
  lab.link(R, cl, ['203.0.113.1/24', '2001:db8:3::1/64'], ['203.0.113.2/24', '203.0.113.3/24', '2001:db8:3::2/64', '2001:db8:3::3/64']);
  lab.link(R, srv, ['198.51.100.1/24', '2001:db8:4::1/64'], ['198.51.100.2/24', '2001:db8:4::2/64']);
  for (const k of ['net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1']) lab.runSync(R, ['sysctl', '-qw', k]);
  lab.runSync(cl, ['ip', 'route', 'add', 'default', 'via', '203.0.113.1']);
  lab.runSync(cl, ['ip', '-6', 'route', 'add', 'default', 'via', '2001:db8:3::1']);
  lab.runSync(srv, ['ip', 'route', 'add', 'default', 'via', '198.51.100.1']);
  lab.runSync(srv, ['ip', '-6', 'route', 'add', 'default', 'via', '2001:db8:4::1']);
  await listen(lab, srv, [PORT_A, PORT_B]);
  const check = async (what: string, want: string[]) => {
    const probes: Probe[] = [];
    for (const f of [4, 6] as const) for (const from of CL[f]) for (const port of [PORT_A, PORT_B]) probes.push({ from, to: SRV[f], port });
    const got = await probe(cl, probes);
    assert.deepEqual(got, want, what);
  };
  // Per family: banned client A, B; other client A, B.
  const all = (x: string[]) => [...x, ...x];
  await warmUp(cl, [4, 6].flatMap((f) => CL[f as 4 | 6].map((from) => ({ from, to: SRV[f as 4 | 6], port: PORT_A }))));
  await check('routed before any ban', all(['ok', 'ok', 'ok', 'ok']));

  const e = new NftablesEnforcer({ denyType: 'DROP', netns: R, logger: quiet, checkIntervalMs: 0, forward: true });
  await e.start();
  await e.ban([...bans([CL[4][0], CL[6][0]]), ...bans([CL[4][1], CL[6][1]], tcpA)]);
  await check('forward on: banned client dropped, other one only on PORT_A', all(['timeout', 'timeout', 'timeout', 'ok']));
  assert.equal(e.health().forward, true);
  await e.stop();

  // forward off: the forward chain of the earlier run is removed; the bans stay in the sets, routed traffic passes.
  const off = new NftablesEnforcer({ denyType: 'DROP', netns: R, logger: quiet, checkIntervalMs: 0 });
  await off.start();
  const chains = JSON.parse(lab.runSync(R, ['nft', '-j', 'list', 'table', 'inet', 'tsfilter'])).nftables.filter((o: Obj) => o.chain).map((o: Obj) => o.chain.name);
  assert.deepEqual(chains, ['input']);
  assert.deepEqual((await off.elements()).sort(), [...CL[4], ...CL[6]].sort());
  await check('forward off: routed traffic left alone', all(['ok', 'ok', 'ok', 'ok']));
  await off.stop();
});

test('a prefix set deleted behind our back: the watcher recreates it, onLost re-bans, the prefix is blocked again', async (t) => {
  if (!requireNetns(t)) return;
  const active = [...bans(both(INNER)), ...bans(both(VICTIM), tcpA)];
  let lost = 0;
  let reapplied: Promise<void> = Promise.resolve();
  const e: NftablesEnforcer = new NftablesEnforcer({
    denyType: 'REJECT',
    netns: S,
    logger: quiet,
    checkIntervalMs: 200,
    allow: both(OTHER),
    onLost: () => {
      lost++;
      reapplied = e.ban(active);
    },
  });
  try {
    await e.start();
    await e.ban(active);
    lab.runSync(S, ['nft', '-f', '-'], 'flush chain inet tsfilter input\ndelete set inet tsfilter net4\ndelete set inet tsfilter ports6\n');
    const t0 = Date.now();
    while (lost === 0) {
      assert.ok(Date.now() - t0 < 5000, 'the watcher noticed within 5 s');
      await new Promise((r) => setTimeout(r, 50));
    }
    await reapplied;
    await expectInput('repaired and re-banned', [
      [VICTIM, PORT_A, 'blocked'],
      [VICTIM, PORT_B, 'blocked'],
      [OTHER, PORT_A, 'ok'],
    ]);
    assert.deepEqual(setContents(S).ports6, [`${VICTIM[6]} . tcp . ${PORT_A}`]);
    assert.equal(lost, 1);
  } finally {
    await e.stop();
    lab.runSync(S, ['nft', 'delete', 'table', 'inet', 'tsfilter']);
  }
});
