/**
 * Replays ../shared/corpus/ssh/*.log, repeated to about 1M lines, through the default ssh rule and prints lines/s.
 * Run: node --import tsx bench/rules-throughput.ts [targetLines]
 */
import { readFileSync, readdirSync } from 'node:fs';
import { compileRule } from '../src/rules/compile.ts';
import { ruleConfigFromJson } from '../src/config/load.ts';
import type { SourceLine } from '../src/sources/types.ts';

const target = Number(process.argv[2] ?? 1_000_000);
const corpus = new URL('../../shared/corpus/ssh/', import.meta.url);
const base: SourceLine[] = [];
for (const f of readdirSync(corpus).filter((n) => n.endsWith('.log')).sort()) {
  const source = new URL(f, corpus).pathname;
  for (const text of readFileSync(new URL(f, corpus), 'utf8').split('\n')) if (text !== '') base.push({ text, source });
}
const lines: SourceLine[] = [];
while (lines.length < target) for (const l of base) lines.push(l);

const config = JSON.parse(readFileSync(new URL('../config/config.default.json', import.meta.url), 'utf8'));
const rule = compileRule(ruleConfigFromJson('ssh', config.settings.rules.ssh), { warn: () => {} });
const now = Date.now();

function run(): { matches: number; ms: number } {
  let matches = 0;
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < lines.length; i++) if (rule.match(lines[i]!, now) !== null) matches++;
  return { matches, ms: Number(process.hrtime.bigint() - t0) / 1e6 };
}
run(); // warm-up
let best = Infinity;
let matches = 0;
for (let i = 0; i < 5; i++) {
  const r = run();
  best = Math.min(best, r.ms);
  matches = r.matches;
}
const rate = Math.round(lines.length / (best / 1000));
console.log(`rules/ssh: ${lines.length} lines (${base.length} distinct corpus lines), ${matches} matches, ` +
  `best of 5: ${best.toFixed(1)} ms = ${rate.toLocaleString('en-US')} lines/s`);
