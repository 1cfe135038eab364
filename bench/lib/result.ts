/*
 * How a bench hands its figures to bench/run.ts: one line `BENCH_RESULT {json}` on stdout, after its human-readable
 * output. run.ts runs each bench in its own process and collects these lines; run alone, a bench prints it too.
 */
export const RESULT_PREFIX = 'BENCH_RESULT ';

export function emitResult(bench: string, figures: Record<string, unknown>): void {
  process.stdout.write(`${RESULT_PREFIX}${JSON.stringify({ bench, ...figures })}\n`);
}

/** Every BENCH_RESULT object in a bench's stdout (a line that is not valid JSON is skipped). */
export function parseResults(stdout: string): Record<string, unknown>[] {
  const out: Record<string, unknown>[] = [];
  for (const line of stdout.split('\n')) {
    if (!line.startsWith(RESULT_PREFIX)) continue;
    try {
      const v = JSON.parse(line.slice(RESULT_PREFIX.length)) as unknown;
      if (v !== null && typeof v === 'object' && !Array.isArray(v)) out.push(v as Record<string, unknown>);
    } catch {
      /* a truncated line: the figure is missing, and the table says so */
    }
  }
  return out;
}

/** Sorted-sample quantile, the same nearest-rank rule every bench here uses. */
export function quantile(sorted: readonly number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

/** The middle value; with an even count, the mean of the two middle values (not the upper one, as quantile gives). */
export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}
