/**
 * Floods one million distinct addresses (IPv4 and IPv6 mixed) through the detector with maxTracked = 100000 and
 * reports throughput, the final size (must stay <= the cap), evictions, and heap / RSS before and after; then the
 * same million kept (maxTracked = 1,000,000): the memory of one million tracked addresses.
 *
 *   node --import tsx --expose-gc bench/detect-memory.ts
 *
 * Lines are built as the sources hand them over (one string per line) and the address is a slice of its line, as a
 * regex capture is: the figures include the detector copying the address out of the line. Building the lines is
 * not timed; only observe() is.
 */
import { createDetector } from '../src/detect/detector.ts';
import { IgnoreList } from '../src/detect/cidr-trie.ts';
import type { Match } from '../src/rules/types.ts';
import { emitResult } from './lib/result.ts';

const TOTAL = 1_000_000;
const CAP = 100_000;
const BATCH = 10_000;
const T0 = Date.UTC(2024, 0, 1);

const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) console.warn('run with --expose-gc for meaningful heap figures');
const mem = () => {
  gc?.();
  gc?.();
  const m = process.memoryUsage();
  return { heapMB: m.heapUsed / 2 ** 20, rssMB: m.rss / 2 ** 20 };
};
const fmt = (m: { heapMB: number; rssMB: number }) => `heap ${m.heapMB.toFixed(1)} MB, rss ${m.rssMB.toFixed(1)} MB`;

function ipOf(i: number): string {
  // Two in three IPv4, one in three IPv6: all distinct.
  if (i % 3 !== 2) return `${1 + ((i >>> 24) & 127)}.${(i >>> 16) & 255}.${(i >>> 8) & 255}.${i & 255}`;
  return `2001:db8:${(i >>> 16).toString(16)}:${(i & 0xffff).toString(16)}::${(i % 997).toString(16)}`;
}

/** One batch of matches, as the rules produce them from one batch of source lines. */
function batch(from: number, n: number, timeOf: (i: number) => number): Match[] {
  const texts: string[] = [];
  for (let i = from; i < from + n; i++) {
    texts.push(`Jan  1 00:00:00 host sshd[${1000 + (i % 30000)}]: Failed password for invalid user admin${i % 50} from ${ipOf(i)} port ${1024 + (i % 60000)} ssh2`);
  }
  // Flat strings, as Buffer#toString returns them in sources/line-splitter.ts.
  const lines = texts.map((t) => Buffer.from(t).toString('utf8'));
  const out: Match[] = new Array(n);
  for (let k = 0; k < n; k++) {
    const line = lines[k]!;
    const a = line.indexOf(' from ') + 6;
    const ip = line.slice(a, line.indexOf(' port ', a));
    out[k] = { ip, time: timeOf(from + k), rule: 'ssh', kind: 'failure', line, pattern: 0 };
  }
  return out;
}

const ignore = IgnoreList.parse([
  '127.0.0.0/8',
  '10.0.0.0/8',
  '192.168.0.0/16',
  '172.16.0.0/12',
  '::1',
  'fe80::/10',
  ...Array.from({ length: 100 }, (_, i) => `198.51.${i}.0/24`),
]);
const policies = new Map([['ssh', { mode: 'gap' as const, failedAttempts: 5, requestTime: 5, findTime: 600 }]]);

function run(label: string, timeOf: (i: number) => number, ipIndex: (i: number) => number, cap = CAP): Record<string, number> {
  const before = mem();
  const d = createDetector({ policies, ignore, maxTracked: cap, forgetAfter: 86_400 });
  let ns = 0n;
  let bans = 0;
  let maxSize = 0;
  for (let from = 0; from < TOTAL; from += BATCH) {
    const ms = batch(from, BATCH, timeOf).map((m, k) => (ipIndex(from + k) === from + k ? m : { ...m, ip: ipOf(ipIndex(from + k)) }));
    const t = process.hrtime.bigint();
    for (let k = 0; k < ms.length; k++) if (d.observe(ms[k]!) !== null) bans++;
    ns += process.hrtime.bigint() - t;
    if (d.size() > maxSize) maxSize = d.size();
  }
  const after = mem();
  const s = d.stats();
  const secs = Number(ns) / 1e9;
  console.log(`\n== ${label}`);
  console.log(`observations     ${TOTAL.toLocaleString('en')} in ${secs.toFixed(3)} s = ${Math.round(TOTAL / secs).toLocaleString('en')} obs/s`);
  console.log(`final size       ${s.size.toLocaleString('en')} (cap ${cap.toLocaleString('en')}, max seen ${maxSize.toLocaleString('en')}) ${maxSize <= cap ? 'OK' : 'EXCEEDED'}`);
  console.log(`evictions        ${s.evictions.toLocaleString('en')}, expired ${s.expired.toLocaleString('en')}, bans ${bans}`);
  console.log(`before           ${fmt(before)}`);
  console.log(`after            ${fmt(after)}`);
  console.log(`retained         ${((after.heapMB - before.heapMB) * 2 ** 20 / Math.max(1, s.size)).toFixed(0)} bytes of heap per tracked entry`);
  if (maxSize > cap) process.exitCode = 1;
  // Keep d alive until after the measurement.
  if (d.size() < 0) console.log(d);
  return {
    observations: TOTAL,
    obs_per_s: Math.round(TOTAL / secs),
    cap,
    final_size: s.size,
    max_size: maxSize,
    evictions: s.evictions,
    heap_before_mb: +before.heapMB.toFixed(1),
    heap_after_mb: +after.heapMB.toFixed(1),
    rss_before_mb: +before.rssMB.toFixed(1),
    rss_after_mb: +after.rssMB.toFixed(1),
    heap_bytes_per_entry: Math.round(((after.heapMB - before.heapMB) * 2 ** 20) / Math.max(1, s.size)),
  };
}

console.log(`node ${process.version}, ${TOTAL.toLocaleString('en')} observations, maxTracked ${CAP.toLocaleString('en')}`);
// 1. Flood: one failure from each of a million distinct addresses, all within one second of log time.
const flood = run('flood: 1,000,000 distinct addresses, one failure each', (i) => T0 + Math.floor(i / 1000), (i) => i);
// 2. Hot path: 50,000 addresses failing again and again, every 6 s (too slow to count: no bans, no new entries).
const steady = run('steady: 50,000 addresses x 20 failures each (existing entries)', (i) => T0 + Math.floor(i / 50_000) * 6000, (i) => i % 50_000);
// 3. One million addresses tracked at once (max_tracked_ips raised to 1,000,000): what a million costs.
const tracked = run('tracked: 1,000,000 distinct addresses kept (maxTracked 1,000,000)', (i) => T0 + Math.floor(i / 1000), (i) => i, TOTAL);
emitResult('detect-memory', { node: process.version, flood, steady, tracked_1m: tracked });
