/** Shared helpers for the sources tests (not a test file itself). */
import { mkdtemp, rm } from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Position, PositionStore, Source, SourceLine } from '../src/sources/types.ts';

export class MemoryPositions implements PositionStore {
  readonly map = new Map<string, Position>();
  getPosition(key: string): Position | undefined {
    const p = this.map.get(key);
    return p ? { ...p } : undefined;
  }
  setPosition(key: string, pos: Position): void {
    this.map.set(key, { ...pos });
  }
}

/** Collects what a source delivers and persists positions after each batch, as the daemon does. */
export class Collector {
  readonly lines: SourceLine[] = [];
  readonly batches: { lines: SourceLine[]; positions: Map<string, Position> }[] = [];
  constructor(readonly positions: PositionStore) {}
  readonly sink = (lines: SourceLine[], positions: Map<string, Position>): void => {
    this.lines.push(...lines);
    this.batches.push({ lines, positions });
    for (const [k, p] of positions) this.positions.setPosition(k, p);
  };
  texts(): string[] {
    return this.lines.map((l) => l.text);
  }
}

export const warnings: { msg: string; fields?: Record<string, unknown> }[] = [];
export const warn = (msg: string, fields?: Record<string, unknown>): void => {
  warnings.push(fields ? { msg, fields } : { msg });
  if (process.env.SOURCES_TEST_VERBOSE) console.error('warn:', msg, fields ?? '');
};

export async function waitFor(cond: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for: ${what}`);
    await sleep(10);
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export async function withTmpDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tsfilter-sources-'));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Starts a source, runs fn, always stops the source. */
export async function running<T>(source: Source, collector: Collector, fn: () => Promise<T>): Promise<T> {
  await source.start(collector.sink);
  try {
    return await fn();
  } finally {
    await source.stop();
  }
}

/** Asserts every number 0..n-1 appears exactly once among lines shaped like `<prefix><number> ...`. */
export function numbersOnce(texts: string[], n: number, prefix = 'line '): { missing: number[]; repeated: number[]; junk: string[] } {
  const counts = new Map<number, number>();
  const junk: string[] = [];
  for (const t of texts) {
    const m = new RegExp(`^${prefix}(\\d+)\\b`).exec(t);
    if (!m) {
      junk.push(t);
      continue;
    }
    const k = Number(m[1]);
    counts.set(k, (counts.get(k) ?? 0) + 1);
  }
  const missing: number[] = [];
  const repeated: number[] = [];
  for (let i = 0; i < n; i++) {
    const c = counts.get(i) ?? 0;
    if (c === 0) missing.push(i);
    else if (c > 1) repeated.push(i);
  }
  return { missing, repeated, junk };
}
