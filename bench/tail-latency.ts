/**
 * Append -> sink latency of the file source, inotify vs poll mode.
 * Appends one line at a time to a followed file (waiting for each to arrive before the next), and prints the
 * median and p99 latency in ms. Usage: node --import tsx bench/tail-latency.ts [lines=300] [pollIntervalMs=250]
 */
import { appendFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { createFileSource } from '../src/sources/file-source.ts';
import type { Position, PositionStore } from '../src/sources/types.ts';
import { emitResult } from './lib/result.ts';

const LINES = Number(process.argv[2] ?? 300);
const POLL_MS = Number(process.argv[3] ?? 250);

function quantile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

async function measure(mode: 'inotify' | 'poll', count: number): Promise<{ median: number; p99: number; max: number }> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'tsfilter-bench-'));
  const file = path.join(dir, 'bench.log');
  writeFileSync(file, '');
  const store = new Map<string, Position>();
  const positions: PositionStore = { getPosition: (k) => store.get(k), setPosition: (k, p) => void store.set(k, p) };
  let resolveLine: (() => void) | null = null;
  const src = createFileSource({ name: 'bench', paths: [file], positions, mode, pollIntervalMs: POLL_MS, warn: () => {} });
  await src.start((lines) => {
    if (lines.length > 0 && resolveLine) resolveLine();
  });
  await new Promise((r) => setTimeout(r, 100));
  const samples: number[] = [];
  try {
    for (let i = 0; i < count; i++) {
      const arrived = new Promise<void>((r) => (resolveLine = r));
      const t0 = performance.now();
      appendFileSync(file, `Failed password for root from 203.0.113.${i % 250} port 22 ssh2 #${i}\n`);
      await arrived;
      samples.push(performance.now() - t0);
      // Decorrelate the next append from the poll phase (else it always lands just after a tick).
      await new Promise((r) => setTimeout(r, Math.random() * (mode === 'poll' ? POLL_MS : 5)));
    }
  } finally {
    await src.stop();
    rmSync(dir, { recursive: true, force: true });
  }
  samples.sort((a, b) => a - b);
  return { median: quantile(samples, 0.5), p99: quantile(samples, 0.99), max: samples[samples.length - 1]! };
}

const figures: Record<string, unknown> = {};
for (const mode of ['inotify', 'poll'] as const) {
  // Poll mode costs ~pollIntervalMs per line: fewer samples.
  const count = mode === 'poll' ? Math.min(LINES, 80) : LINES;
  const r = await measure(mode, count);
  console.log(
    `${mode.padEnd(8)} lines=${count} median=${r.median.toFixed(2)} ms  p99=${r.p99.toFixed(2)} ms  max=${r.max.toFixed(2)} ms` +
      (mode === 'poll' ? `  (pollIntervalMs=${POLL_MS})` : ''),
  );
  figures[mode] = { lines: count, median_ms: +r.median.toFixed(3), p99_ms: +r.p99.toFixed(3), max_ms: +r.max.toFixed(3), ...(mode === 'poll' ? { poll_interval_ms: POLL_MS } : {}) };
}
emitResult('tail-latency', figures);
