/**
 * The parse-only path: every line through the default ssh rule's compiled matcher (rule.match), in memory, no I/O,
 * detector or store. Input: a log file (bench/peers-throughput.ts passes the same big file as the replay and the
 * peers get), else ../shared/corpus/ssh/*.log repeated to about targetLines. Prints lines/s (best of 5 after a
 * warm-up), the CPU seconds of that run and the process's peak RSS (which includes holding the lines in memory).
 * Run: node --import tsx bench/rules-throughput.ts [targetLines | FILE]
 */
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { compileRule } from '../src/rules/compile.ts';
import { ruleConfigFromJson } from '../src/config/load.ts';
import type { SourceLine } from '../src/sources/types.ts';
import { emitResult } from './lib/result.ts';

const arg = process.argv[2] ?? process.env.BENCH_FILE;
const fromFile = arg !== undefined && existsSync(arg);
const lines: SourceLine[] = [];
let distinct: number;
if (fromFile) {
  for (const text of readFileSync(arg, 'utf8').split('\n')) if (text !== '') lines.push({ text, source: arg });
  distinct = lines.length;
} else {
  const target = Number(arg ?? 1_000_000);
  const corpus = new URL('../../shared/corpus/ssh/', import.meta.url);
  const base: SourceLine[] = [];
  for (const f of readdirSync(corpus).filter((n) => n.endsWith('.log')).sort()) {
    const source = new URL(f, corpus).pathname;
    for (const text of readFileSync(new URL(f, corpus), 'utf8').split('\n')) if (text !== '') base.push({ text, source });
  }
  while (lines.length < target) for (const l of base) lines.push(l);
  distinct = base.length;
}

const config = JSON.parse(readFileSync(new URL('../config/config.default.json', import.meta.url), 'utf8'));
const rule = compileRule(ruleConfigFromJson('ssh', config.settings.rules.ssh), { warn: () => {} });
const now = Date.now();

function run(): { matches: number; ms: number; cpuS: number } {
  let matches = 0;
  const c0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < lines.length; i++) if (rule.match(lines[i]!, now) !== null) matches++;
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  const c = process.cpuUsage(c0);
  return { matches, ms, cpuS: (c.user + c.system) / 1e6 };
}
run(); // warm-up
let best = { matches: 0, ms: Infinity, cpuS: 0 };
for (let i = 0; i < 5; i++) {
  const r = run();
  if (r.ms < best.ms) best = r;
}
const rate = Math.round(lines.length / (best.ms / 1000));
const hwm = /VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
const peakRssMb = hwm ? Number(hwm[1]) / 1024 : NaN;
console.log(
  `rules/ssh: ${lines.length} lines (${fromFile ? arg : `${distinct} distinct corpus lines`}), ${best.matches} matches, ` +
    `best of 5: ${best.ms.toFixed(1)} ms = ${rate.toLocaleString('en-US')} lines/s, cpu ${best.cpuS.toFixed(2)} s, peak RSS ${peakRssMb.toFixed(1)} MB`,
);
emitResult('rules-throughput', {
  file: fromFile ? arg : null,
  lines: lines.length,
  matched: best.matches,
  lines_per_s: rate,
  ms: +best.ms.toFixed(1),
  cpu_s: +best.cpuS.toFixed(3),
  peak_rss_mb: +peakRssMb.toFixed(1),
});
