// Firewall backends compared on the same bans (default 100,000: half IPv4 in 10.0.0.0/8, half IPv6 in 2001:db8::/32,
// 90% with ~1 h timeouts): time to apply them with one ban() call, time to remove them with one unban() call, and
// what they cost every packet: TCP connects per second from a NON-banned client namespace (192.0.2.2) to a listener
// in the server namespace over a veth pair, with the bans in place against no rules at all.
// Backends: nftables sets, iptables (nf_tables and legacy) and ipset, each through its Enforcer; and PyFilter's way,
// one `iptables -I INPUT -s <ip> -j DROP` process per ban, which cannot do 100,000 in the time budget: its apply and
// remove times are EXTRAPOLATED from a few thousand processes on short chains and ten on the full one (cost grows
// with the chain), and its per-packet cost is measured on all the rules
// loaded at once by iptables-restore (what PyFilter's reload_iptables does at start).
// Every backend gets fresh namespaces, removed in finally (with every process left inside them, killed by PID); the
// iptables/ipset backends are imported dynamically, so a missing or failing one is reported and the bench goes on.
// Needs root, iproute2, nft, iptables, ipset. Run: node --import tsx bench/firewall-backends.ts [count] [seconds]
import { spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { pathToFileURL } from 'node:url';
import { NftablesEnforcer } from '../src/firewall/nftables.ts';
import { runNft } from '../src/firewall/nft-runner.ts';
import { canonicalTarget } from '../src/firewall/target.ts';
import type { Enforcement, Enforcer } from '../src/firewall/types.ts';
import { NetnsLab, netnsSupport } from '../test/helpers/netns.ts';
import { addresses } from './nft-bulk.ts';
import { emitResult } from './lib/result.ts';

const quiet = { info() {}, warn() {}, error() {} };
const PORT = 2222;
const SERVER = '192.0.2.1';
const CLIENT = '192.0.2.2';
const CONCURRENCY = 4;
/** A phase (apply, remove, list) that takes longer is abandoned: the namespace and what runs in it are removed. */
const PHASE_CAP_MS = 40_000;
/** run.ts kills a bench after 180 s: the enforcer backends share what is left once PyFilter's ~50 s are set aside,
 *  and one is skipped when less than MIN_LEFT_MS remains. */
const TOTAL_BUDGET_MS = 165_000;
const PYFILTER_RESERVE_MS = 55_000;
const MIN_LEFT_MS = 20_000;
/** PyFilter's one-process-per-ban loop stops after this long, whatever count it reached. */
const PER_PROCESS_BUDGET_MS = { insert: 18_000, delete: 6_000 };
/** ... and against the full chain, per direction. */
const AT_SIZE_BUDGET_MS = 5_000;

export interface Rate {
  connects: number;
  failed: number;
  ms: number;
  perSec: number;
}

export interface BackendResult {
  backend: string;
  /** Why the backend could not be measured (missing module, a failing phase): the table says "not available". */
  error?: string;
  applyMs?: number;
  /** Set when applyMs/removeMs are extrapolated rather than measured. */
  extrapolated?: boolean;
  removeMs?: number;
  listMs?: number;
  listed?: number;
  baseline?: Rate;
  loaded?: Rate;
  /** Banning the client itself made its connect time out: its packets do reach the backend's rules. */
  clientDropped?: boolean;
  /** PyFilter only. */
  perProcess?: PerProcessResult;
}

export interface PerProcessResult {
  inserts: Segment[];
  deletes: Segment[];
  /** ms per process as a + b * chainLength, the line through the shortest and the full chain measured. */
  insertFit: { a: number; b: number };
  deleteFit: { a: number; b: number };
  /** iptables-restore + ip6tables-restore of all the rules at once. */
  restoreMs: number;
}

function ms(t0: bigint): number {
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

type Capped<T> = { ok: true; ms: number; value: T } | { ok: false; ms: number; error: string };

/** Waits for p at most capMs; a late or failed p is reported, never left as an unhandled rejection. */
async function capped<T>(p: Promise<T>, capMs: number): Promise<Capped<T>> {
  const t0 = process.hrtime.bigint();
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<'late'>((r) => (timer = setTimeout(() => r('late'), capMs)));
  try {
    const v = await Promise.race([p.then((value) => ({ value })), late]);
    if (v === 'late') {
      p.catch(() => {});
      return { ok: false, ms: ms(t0), error: `gave up after ${(capMs / 1000).toFixed(0)} s` };
    }
    return { ok: true, ms: ms(t0), value: v.value };
  } catch (e) {
    return { ok: false, ms: ms(t0), error: firstLine(e) };
  } finally {
    clearTimeout(timer);
  }
}

function firstLine(e: unknown): string {
  const s = e instanceof Error ? e.message : String(e);
  const l = s.split('\n').find((x) => x.trim() !== '') ?? s;
  return l.length > 200 ? `${l.slice(0, 200)}…` : l;
}

// Namespaces of this bench: whatever still runs inside one (an abandoned iptables-restore, the listener) is killed
// by PID before the namespace goes, also when run.ts's timeout or ^C ends the bench. Registered before the first
// NetnsLab, so these handlers run before the lab's own (which deletes the names).
const mine = new Set<string>();
function killInside(names: Iterable<string>): void {
  for (const ns of names) {
    const r = spawnSync('ip', ['netns', 'pids', ns], { encoding: 'utf8' });
    for (const pid of (r.stdout ?? '').split(/\s+/).filter((x) => /^\d+$/.test(x))) {
      try {
        process.kill(Number(pid), 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
  }
}
process.on('exit', () => killInside(mine));
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    killInside(mine);
    // NetnsLab's handler, when there is one, deletes the namespaces and re-raises; otherwise die of the signal here.
    if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
  });
}

interface Lab {
  lab: NetnsLab;
  S: string;
  C: string;
}

async function makeLab(): Promise<Lab> {
  const lab = new NetnsLab('fwb');
  const S = lab.ns('s');
  mine.add(S);
  const C = lab.ns('c');
  mine.add(C);
  lab.link(S, C, [`${SERVER}/24`, '2001:db8:1::1/64'], [`${CLIENT}/24`, '2001:db8:1::2/64']);
  // Thousands of short connections in a few seconds: never run out of client ports.
  lab.runSync(C, ['sysctl', '-qw', 'net.ipv4.ip_local_port_range=1024 65000']);
  lab.runSync(C, ['sysctl', '-qw', 'net.ipv4.tcp_tw_reuse=1']);
  const srv = lab.spawn(S, [
    process.execPath,
    '-e',
    `require('net').createServer((s) => { s.on('error', () => {}); s.end('hi\\n'); }).listen(${PORT}, '::', () => console.log('listening'))`,
  ]);
  srv.stdout!.setEncoding('utf8');
  const [line] = (await Promise.race([once(srv.stdout!, 'data'), once(srv, 'exit')])) as [unknown];
  if (!/listening/.test(String(line))) throw new Error(`the listener in ${S} did not start`);
  return { lab, S, C };
}

function disposeLab(l: Lab): void {
  killInside([l.S, l.C]);
  l.lab.dispose();
  mine.delete(l.S);
  mine.delete(l.C);
}

/** Connects (each waits for the server's greeting) per second, CONCURRENCY at a time, for `seconds`. */
async function connectRate(l: Lab, seconds: number): Promise<Rate> {
  const js = `const net = require('net');
    let ok = 0, failed = 0, live = ${CONCURRENCY}, last = Date.now();
    const t0 = Date.now(), end = t0 + ${Math.round(seconds * 1000)};
    function one() {
      if (Date.now() >= end) { if (--live === 0) console.log(JSON.stringify({ connects: ok, failed, ms: last - t0 })); return; }
      let done = false;
      const s = net.connect({ host: '${SERVER}', port: ${PORT}, localAddress: '${CLIENT}' });
      const fin = (good) => { if (done) return; done = true; good ? ok++ : failed++; last = Date.now(); s.destroy(); setImmediate(one); };
      s.setTimeout(1000, () => fin(false));
      s.on('data', () => fin(true));
      s.on('error', () => fin(false));
    }
    for (let i = 0; i < ${CONCURRENCY}; i++) one();`;
  const r = await l.lab.run(l.C, [process.execPath, '-e', js], { timeoutMs: seconds * 1000 + 15_000 });
  const j = JSON.parse(r.stdout.trim() || 'null') as Omit<Rate, 'perSec'> | null;
  if (j === null) throw new Error(`connect loop failed (exit ${r.code}): ${r.stderr.trim()}`);
  return { ...j, perSec: j.ms > 0 ? (j.connects * 1000) / j.ms : 0 };
}

/** The baseline, after a short discarded run: the listener's first connections are slower (cold JIT, caches). */
async function warmBaseline(l: Lab, seconds: number): Promise<Rate> {
  await connectRate(l, 0.5);
  return connectRate(l, seconds);
}

/** One connect from the client: 'ok', 'timeout' (dropped) or an error code. */
async function probe(l: Lab): Promise<string> {
  const js = `const s = require('net').connect({ host: '${SERVER}', port: ${PORT}, localAddress: '${CLIENT}' });
    const done = (r) => { console.log(r); process.exit(0); };
    setTimeout(() => done('timeout'), 1000);
    s.on('data', () => done('ok'));
    s.on('error', (e) => done(e.code));`;
  const r = await l.lab.run(l.C, [process.execPath, '-e', js], { timeoutMs: 10_000 });
  return r.stdout.trim() || `exit ${r.code}: ${r.stderr.trim()}`;
}

const base = (netns: string) => ({ denyType: 'DROP' as const, netns, logger: quiet, timeoutMs: PHASE_CAP_MS + 5000 });

interface BackendSpec {
  name: string;
  /** Loads the backend's module; the result builds the enforcer for a namespace. */
  load(): Promise<(netns: string) => Enforcer>;
}

/** A backend written by someone else, possibly not there yet: loaded at run time, so its absence is a table row. */
async function dynamicEnforcer(file: string, exportName: string, opts: Record<string, unknown>): Promise<(netns: string) => Enforcer> {
  let mod: Record<string, unknown>;
  try {
    mod = (await import(new URL(`../src/firewall/${file}`, import.meta.url).href)) as Record<string, unknown>;
  } catch (e) {
    if ((e as { code?: string }).code === 'ERR_MODULE_NOT_FOUND' && String((e as Error).message).includes(file)) {
      throw new Error(`src/firewall/${file} does not exist`);
    }
    throw e;
  }
  const Ctor = mod[exportName];
  if (typeof Ctor !== 'function') throw new Error(`src/firewall/${file} exports no ${exportName}`);
  return (netns) => new (Ctor as new (o: Record<string, unknown>) => Enforcer)({ ...base(netns), checkInterval: 0, ...opts });
}

export const BACKENDS: BackendSpec[] = [
  { name: 'nftables (sets)', load: async () => (netns) => new NftablesEnforcer({ ...base(netns), checkIntervalMs: 0 }) },
  { name: 'ipset', load: () => dynamicEnforcer('ipset.ts', 'IpsetEnforcer', {}) },
  { name: 'iptables (nf_tables)', load: () => dynamicEnforcer('iptables.ts', 'IptablesEnforcer', {}) },
  { name: 'iptables-legacy', load: () => dynamicEnforcer('iptables.ts', 'IptablesEnforcer', { iptables: 'iptables-legacy', ip6tables: 'ip6tables-legacy' }) },
];

async function runBackend(spec: BackendSpec, bans: Enforcement[], seconds: number, deadline: number): Promise<BackendResult> {
  const res: BackendResult = { backend: spec.name };
  const cap = () => Math.max(5000, Math.min(PHASE_CAP_MS, deadline - Date.now() - MIN_LEFT_MS));
  let make: (netns: string) => Enforcer;
  try {
    make = await spec.load();
  } catch (err) {
    return { ...res, error: `not available: ${firstLine(err)}` };
  }
  let l: Lab | undefined;
  try {
    l = await makeLab();
    res.baseline = await warmBaseline(l, seconds);
    let e: Enforcer;
    try {
      e = make(l.S);
    } catch (err) {
      return { ...res, error: `not available: ${firstLine(err)}` };
    }
    const started = await capped(e.start(), cap());
    if (!started.ok) return { ...res, error: `not available: start() failed: ${started.error}` };
    const applied = await capped(e.ban(bans), cap());
    if (!applied.ok) return { ...res, error: `ban() of ${bans.length} failed: ${applied.error}` };
    res.applyMs = applied.ms;
    if (e.elements) {
      const listed = await capped(e.elements(), cap());
      if (listed.ok) {
        res.listMs = listed.ms;
        res.listed = listed.value.length;
      }
    }
    res.loaded = await connectRate(l, seconds);
    // The client's own ban must drop it: its packets do go through this backend's rules.
    await e.ban([{ ip: CLIENT, expiresAt: null, rule: 'bench' }]);
    res.clientDropped = (await probe(l)) === 'timeout';
    await e.unban([CLIENT]);
    const removed = await capped(e.unban(bans.map((b) => b.ip)), cap());
    if (!removed.ok) return { ...res, error: `unban() of ${bans.length} failed: ${removed.error}` };
    res.removeMs = removed.ms;
    await capped(e.stop(), 10_000);
    return res;
  } catch (err) {
    return { ...res, error: firstLine(err) };
  } finally {
    if (l) disposeLab(l);
  }
}

/** Runs inside the server namespace, as PyFilter does: one iptables/ip6tables process per rule, one at a time. */
const ONE_PROCESS = `const { spawnSync } = require('child_process');
const one = (op, ip) => {
  const t = process.hrtime.bigint();
  const r = spawnSync(ip.includes(':') ? 'ip6tables' : 'iptables', [op, 'INPUT', '-s', ip, '-j', 'DROP'], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(op + ' ' + ip + ': ' + (r.stderr || r.error));
  return Number(process.hrtime.bigint() - t) / 1e6;
};
let input = '';
process.stdin.setEncoding('utf8').on('data', (d) => (input += d)).on('end', () => main(JSON.parse(input)));
`;
/**
 * Inserts up to c1 rules, deletes the k oldest (one `-D` each, the order bans expire), inserts up to c2, deletes the k
 * oldest again: insert and delete costs at two chain lengths. Prints each segment: processes, ms, chain length.
 */
const PER_PROCESS_DRIVER = `${ONE_PROCESS}
function main({ ips, c1, c2, k, budget }) {
  const t0 = Date.now();
  let chain = 0, next = 0, oldest = 0;
  const inserts = [], deletes = [];
  const insertTo = (count) => {
    const seg = { n: 0, ms: 0, lenFrom: chain, lenTo: chain };
    while (next < count && Date.now() - t0 < budget.insert) { seg.ms += one('-I', ips[next++]); chain++; seg.n++; }
    seg.lenTo = chain;
    inserts.push(seg);
  };
  const deleteOldest = () => {
    const seg = { n: 0, ms: 0, lenFrom: chain, lenTo: chain };
    while (seg.n < k && oldest < next && seg.ms < budget.delete) { seg.ms += one('-D', ips[oldest++]); chain--; seg.n++; }
    seg.lenTo = chain;
    deletes.push(seg);
  };
  insertTo(c1); deleteOldest(); insertTo(c2); deleteOldest();
  console.log(JSON.stringify({ inserts, deletes }));
}`;

/** The same processes against the full chain (loaded by iptables-restore): `-D` of some rules, then `-I` them back. */
const AT_SIZE_DRIVER = `${ONE_PROCESS}
function main({ ips, budgetMs }) {
  const del = { n: 0, ms: 0 }, ins = { n: 0, ms: 0 };
  for (const ip of ips) { if (del.ms > budgetMs) break; del.ms += one('-D', ip); del.n++; }
  for (const ip of ips.slice(0, del.n)) { if (ins.ms > budgetMs) break; ins.ms += one('-I', ip); ins.n++; }
  console.log(JSON.stringify({ del, ins }));
}`;

export interface Segment {
  /** Processes run. */
  n: number;
  ms: number;
  /** Rules in INPUT (IPv4 + IPv6 chains together) before and after. */
  lenFrom: number;
  lenTo: number;
}

/**
 * ms per process = a + b * chainLength, the line through the first and the last segment (the shortest and the longest
 * chain measured); b = 0 and a = the mean when there is no upward trend.
 */
function fit(segs: Segment[]): { a: number; b: number } {
  const per = segs.filter((s) => s.n > 0).map((s) => ({ m: s.ms / s.n, len: (s.lenFrom + s.lenTo) / 2 }));
  const lo = per[0];
  const hi = per[per.length - 1];
  const b = lo && hi && hi.len !== lo.len ? (hi.m - lo.m) / (hi.len - lo.len) : 0;
  if (b <= 0 || !lo) {
    const n = segs.reduce((x, s) => x + s.n, 0);
    return { a: n > 0 ? segs.reduce((x, s) => x + s.ms, 0) / n : 0, b: 0 };
  }
  return { a: Math.max(0, lo.m - b * lo.len), b };
}

/** Sum of a + b * len over chain lengths 1..n: n processes inserting into a growing chain, or deleting it to empty. */
const total = (f: { a: number; b: number }, n: number) => f.a * n + (f.b * n * n) / 2;

async function runPyFilter(bans: Enforcement[], seconds: number): Promise<BackendResult> {
  const res: BackendResult = { backend: 'PyFilter: iptables -I per ban', extrapolated: true };
  let l: Lab | undefined;
  try {
    l = await makeLab();
    res.baseline = await warmBaseline(l, seconds);
    const targets = bans.map((b) => {
      const t = canonicalTarget(b.ip);
      if (t === null) throw new Error(`not an address: ${b.ip}`);
      return t;
    });
    const c2 = Math.min(3000, bans.length);
    const c1 = Math.min(1000, Math.floor(c2 / 3));
    const k = Math.max(1, Math.min(200, Math.floor(c1 / 4)));
    const r = await l.lab.run(l.S, [process.execPath, '-e', PER_PROCESS_DRIVER], {
      input: JSON.stringify({ ips: targets.slice(0, c2).map((t) => t.text), c1, c2, k, budget: PER_PROCESS_BUDGET_MS }),
      timeoutMs: PER_PROCESS_BUDGET_MS.insert + 2 * PER_PROCESS_BUDGET_MS.delete + 30_000,
    });
    const pp = JSON.parse(r.stdout.trim() || 'null') as { inserts: Segment[]; deletes: Segment[] } | null;
    if (pp === null) throw new Error(`per-process loop failed (exit ${r.code}${r.timedOut ? ', timed out' : ''}): ${r.stderr.trim().slice(0, 200)}`);
    // PyFilter at start (reload_iptables): every rule at once through iptables-restore, then packets against it.
    const script = (fam: 4 | 6) =>
      ['*filter', ':INPUT ACCEPT [0:0]', ...targets.filter((t) => t.family === fam).map((t) => `-A INPUT -s ${t.text} -j DROP`), 'COMMIT', ''].join('\n');
    const t0 = process.hrtime.bigint();
    await runNft({ nft: 'iptables-restore', netns: l.S, timeoutMs: PHASE_CAP_MS }, [], script(4));
    await runNft({ nft: 'ip6tables-restore', netns: l.S, timeoutMs: PHASE_CAP_MS }, [], script(6));
    const restoreMs = ms(t0);
    res.loaded = await connectRate(l, seconds);
    // Appended after every other rule: a drop proves the client's packets walk the whole chain.
    l.lab.runSync(l.S, ['iptables', '-A', 'INPUT', '-s', CLIENT, '-j', 'DROP']);
    res.clientDropped = (await probe(l)) === 'timeout';
    l.lab.runSync(l.S, ['iptables', '-D', 'INPUT', '-s', CLIENT, '-j', 'DROP']);

    // The per-process cost at the full size: rules from the middle of both chains, a few seconds' worth at most.
    const mid = Math.floor(targets.length / 2) & ~1;
    const r2 = await l.lab.run(l.S, [process.execPath, '-e', AT_SIZE_DRIVER], {
      input: JSON.stringify({ ips: targets.slice(mid, mid + 10).map((t) => t.text), budgetMs: AT_SIZE_BUDGET_MS }),
      timeoutMs: 2 * AT_SIZE_BUDGET_MS + 60_000,
    });
    const at = JSON.parse(r2.stdout.trim() || 'null') as { del: { n: number; ms: number }; ins: { n: number; ms: number } } | null;
    if (at === null) throw new Error(`per-process loop on the full chain failed (exit ${r2.code}${r2.timedOut ? ', timed out' : ''}): ${r2.stderr.trim().slice(0, 200)}`);
    const N = targets.length;
    pp.deletes.push({ ...at.del, lenFrom: N, lenTo: N - at.del.n });
    pp.inserts.push({ ...at.ins, lenFrom: N - at.del.n, lenTo: N - at.del.n + at.ins.n });
    const insertFit = fit(pp.inserts);
    const deleteFit = fit(pp.deletes);
    res.applyMs = total(insertFit, N);
    res.removeMs = total(deleteFit, N);
    res.perProcess = { inserts: pp.inserts, deletes: pp.deletes, insertFit, deleteFit, restoreMs };
    return res;
  } catch (err) {
    return { ...res, error: firstLine(err) };
  } finally {
    if (l) disposeLab(l);
  }
}

export async function runFirewallBackendsBench(n = 100_000, seconds = 3): Promise<BackendResult[]> {
  const sup = netnsSupport();
  if (!sup.ok) throw new Error(`needs ${sup.why}`);
  const deadline = Date.now() + TOTAL_BUDGET_MS - PYFILTER_RESERVE_MS;
  const bans = addresses(n);
  const out: BackendResult[] = [];
  for (const spec of BACKENDS) {
    if (deadline - Date.now() < MIN_LEFT_MS) out.push({ backend: spec.name, error: 'skipped: out of time budget' });
    else out.push(await runBackend(spec, bans, seconds, deadline));
  }
  out.push(await runPyFilter(bans, seconds));
  return out;
}

const sec = (x: number | undefined) =>
  x === undefined ? '—' : x >= 7_200_000 ? `${(x / 3_600_000).toFixed(1)} h` : x >= 100_000 ? `${(x / 60_000).toFixed(0)} min` : `${(x / 1000).toFixed(2)} s`;
const int = (x: number) => Math.round(x).toLocaleString('en');

export function table(n: number, rs: BackendResult[]): string {
  const N = n.toLocaleString('en');
  const rows = [`| backend | apply ${N} | remove ${N} | connects/s with ${N} bans | vs no bans |`, '|---|---|---|---|---|'];
  for (const r of rs) {
    if (r.error !== undefined && r.loaded === undefined) {
      rows.push(`| ${r.backend} | ${r.error.replace(/\|/g, '\\|')} | | | |`);
      continue;
    }
    const x = r.extrapolated ? '~' : '';
    const note = r.extrapolated ? ' (extrapolated)' : '';
    const loaded = r.loaded && r.baseline ? `${int(r.loaded.perSec)} (no bans: ${int(r.baseline.perSec)})` : '—';
    const factor = r.loaded && r.baseline && r.loaded.perSec > 0 ? `${(r.baseline.perSec / r.loaded.perSec).toFixed(2)}× slower` : '—';
    const err = r.error !== undefined ? ` (${r.error})` : '';
    rows.push(`| ${r.backend} | ${x}${sec(r.applyMs)}${note} | ${x}${sec(r.removeMs)}${note}${err} | ${loaded} | ${factor} |`);
  }
  return rows.join('\n');
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const n = Number(process.argv[2] ?? 100_000);
  const seconds = Number(process.argv[3] ?? 3);
  const rs = await runFirewallBackendsBench(n, seconds);
  const lines = [
    `${n.toLocaleString('en')} bans (half IPv4, half IPv6; 90% with ~1 h timeouts); connects: ${CONCURRENCY} at a time for ${seconds} s from a`,
    `non-banned IPv4 client (${CLIENT}), each waiting for the server's greeting, over a veth pair; each backend in fresh namespaces.`,
    '',
    table(n, rs),
    '',
  ];
  for (const r of rs) {
    if (r.listed !== undefined) {
      const short = r.listed === n ? '' : ` (NOT ${n.toLocaleString('en')}: listed right after the ban() call)`;
      lines.push(`${r.backend}: elements() listed ${int(r.listed)} in ${sec(r.listMs)}${short}`);
    }
    if (r.clientDropped === false) lines.push(`${r.backend}: WARNING: banning the client did not drop its connect`);
  }
  const p = rs.find((r) => r.perProcess)?.perProcess;
  if (p) {
    const seg = (ss: Segment[]) =>
      ss.map((x) => `${int(x.n)} in ${sec(x.ms)} = ${(x.ms / Math.max(1, x.n)).toFixed(2)} ms each (chain ${int(x.lenFrom)} -> ${int(x.lenTo)})`).join('; ');
    const f = (x: { a: number; b: number }) => `${x.a.toFixed(2)} ms + ${(x.b * 1000).toFixed(3)} ms per 1,000 rules in INPUT`;
    lines.push(
      `PyFilter, measured (one process per rule, IPv4 and IPv6 alternating):`,
      `  inserts (iptables -I): ${seg(p.inserts)}`,
      `  deletes, oldest first (iptables -D): ${seg(p.deletes)}`,
      `  fitted per process: insert ${f(p.insertFit)}; delete ${f(p.deleteFit)};`,
      `  (the last segment of each is on the full ${n.toLocaleString('en')}-rule chain); apply/remove of ${n.toLocaleString('en')} in the table are EXTRAPOLATED:`,
      `  the sum of the fitted cost over the chain growing to / shrinking from ${n.toLocaleString('en')} rules.`,
      `  its connects/s are measured with all ${n.toLocaleString('en')} rules loaded by iptables-restore + ip6tables-restore in ${sec(p.restoreMs)} (PyFilter's reload_iptables).`,
    );
  }
  process.stdout.write(lines.join('\n') + '\n');
  emitResult('firewall-backends', { bans: n, seconds, concurrency: CONCURRENCY, results: rs });
  process.exit(0);
}
