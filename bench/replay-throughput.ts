import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { makeBigAuthLog } from './make-big-auth-log.ts';
import { measure } from './lib/measure.ts';
import { emitResult, median } from './lib/result.ts';

/*
 * Lines per second of `tsfilter replay` (the whole pipeline: read, rules, detector, bans into an in-memory SQLite
 * store, dry-run enforcer) on a large auth log built from the real logs in ../shared/corpus/ssh/, its peak RSS and
 * CPU seconds. Runs the built CLI (`npm run build` first for the production figure; falls back to tsx) with the
 * bundled config/config.default.json as a child process, so start-up is included; RSS and CPU come from the
 * child's rusage (bench/lib/measure.ts). Target (issue 2): at least 1,000,000 lines/s on one core.
 * bench/peers-throughput.ts runs the same function on the same file beside sshguard and fail2ban.
 */

const REPO = fileURLToPath(new URL('../', import.meta.url));

export interface ReplayRun {
  wallMs: number;
  cpuS: number;
  peakRssMb: number;
  linesPerS: number;
  summary: { lines: number; matched: number; bans: number };
}

export function replayArgv(): string[] {
  const built = existsSync(REPO + 'dist/cli/main.js');
  const cli = built ? [REPO + 'dist/cli/main.js'] : ['--import', 'tsx', REPO + 'src/cli/main.ts'];
  return [process.execPath, ...cli, 'replay', '--json', '--config', REPO + 'config/config.default.json'];
}

export async function runReplay(file: string): Promise<ReplayRun> {
  const dir = mkdtempSync(path.join(tmpdir(), 'tsf-replay-'));
  try {
    const out = path.join(dir, 'bans.jsonl');
    const m = await measure([...replayArgv(), file], { stdout: out, cwd: dir });
    if (m.code !== 0) throw new Error(`replay exited ${m.code}: ${m.stderr.slice(0, 500)}`);
    const last = readFileSync(out, 'utf8').trim().split('\n').at(-1)!;
    const summary = (JSON.parse(last) as { summary: ReplayRun['summary'] }).summary;
    return { wallMs: m.wallMs, cpuS: m.cpuS, peakRssMb: m.peakRssKb / 1024, linesPerS: summary.lines / (m.wallMs / 1000), summary };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Median and best of `runs` replays (lines/s from the median wall time; peak RSS is the largest seen). */
export function summarize(runs: ReplayRun[]) {
  const byWall = [...runs].sort((a, b) => a.wallMs - b.wallMs);
  // Every run reads the same file, so the counts are the same in each.
  const fastest = byWall[0]!;
  const wallMs = median(runs.map((r) => r.wallMs));
  return {
    lines: fastest.summary.lines,
    matched: fastest.summary.matched,
    bans: fastest.summary.bans,
    runs: runs.length,
    lines_per_s: Math.round(fastest.summary.lines / (wallMs / 1000)),
    best_lines_per_s: Math.round(fastest.linesPerS),
    wall_ms: +wallMs.toFixed(1),
    cpu_s: +median(runs.map((r) => r.cpuS)).toFixed(3),
    peak_rss_mb: +Math.max(...runs.map((r) => r.peakRssMb)).toFixed(1),
  };
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const LINES = Number(process.env.BENCH_LINES ?? 2_000_000);
  const RUNS = Number(process.env.BENCH_RUNS ?? 3);
  const FILE = process.env.BENCH_FILE ?? '/tmp/tsfilter-bench-auth.log';
  const n = await makeBigAuthLog(FILE, LINES);
  process.stdout.write(`input: ${FILE}, ${n} lines built from ../shared/corpus/ssh/ (addresses varied per copy)\n`);
  const runs: ReplayRun[] = [];
  for (let i = 0; i < RUNS; i++) {
    const r = await runReplay(FILE);
    runs.push(r);
    process.stdout.write(
      `run ${i + 1}: ${r.linesPerS.toFixed(0)} lines/s wall (${r.wallMs.toFixed(0)} ms incl. start-up), ` +
        `cpu ${r.cpuS.toFixed(2)} s, peak RSS ${r.peakRssMb.toFixed(1)} MB, matched ${r.summary.matched}, bans ${r.summary.bans}\n`,
    );
  }
  const s = summarize(runs);
  process.stdout.write(
    `replay throughput: median ${s.lines_per_s} lines/s, best ${s.best_lines_per_s} lines/s (target >= 1,000,000); peak RSS ${s.peak_rss_mb} MB\n`,
  );
  emitResult('replay-throughput', { file: FILE, ...s, target_lines_per_s: 1_000_000 });
}
