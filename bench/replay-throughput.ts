import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { makeBigAuthLog } from './make-big-auth-log.ts';

/*
 * Lines per second of `tsfilter replay` (the whole pipeline: read, rules, detector, bans into an in-memory SQLite
 * store, dry-run enforcer) on a large auth log built from the real logs in ../shared/corpus/ssh/, and its peak RSS.
 * Runs the built CLI (`npm run build` first for the production figure; falls back to tsx) as a child process, so
 * start-up is included, and samples the child's VmHWM (peak RSS) and CPU time from /proc.
 * Target (issue 2): at least 1,000,000 lines/s on one core.
 */

const REPO = fileURLToPath(new URL('../', import.meta.url));
const LINES = Number(process.env.BENCH_LINES ?? 2_000_000);
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const FILE = process.env.BENCH_FILE ?? '/tmp/tsfilter-bench-auth.log';

interface Run {
  wallMs: number;
  cpuMs: number;
  peakRssMb: number;
  summary: { lines: number; matched: number; bans: number };
}

function runOnce(file: string): Promise<Run> {
  const built = existsSync(REPO + 'dist/cli/main.js');
  const args = built ? [REPO + 'dist/cli/main.js'] : ['--import', 'tsx', REPO + 'src/cli/main.ts'];
  const start = process.hrtime.bigint();
  const child = spawn(process.execPath, [...args, 'replay', '--json', file], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  let peakKb = 0;
  let cpuTicks = 0;
  const sample = () => {
    try {
      const st = readFileSync(`/proc/${child.pid}/status`, 'utf8');
      const m = /VmHWM:\s+(\d+) kB/.exec(st);
      if (m) peakKb = Math.max(peakKb, Number(m[1]));
      const stat = readFileSync(`/proc/${child.pid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      cpuTicks = Number(f[11]) + Number(f[12]);
    } catch {
      /* the child has exited */
    }
  };
  const timer = setInterval(sample, 20);
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    out += d;
    if (d.includes('"summary"')) sample();
  });
  return new Promise((resolve, reject) => {
    child.on('exit', (code) => {
      clearInterval(timer);
      const wallMs = Number(process.hrtime.bigint() - start) / 1e6;
      if (code !== 0) return reject(new Error(`replay exited ${code}`));
      const last = out.trim().split('\n').at(-1)!;
      resolve({ wallMs, cpuMs: cpuTicks * 10, peakRssMb: peakKb / 1024, summary: JSON.parse(last).summary });
    });
  });
}

const n = await makeBigAuthLog(FILE, LINES);
process.stdout.write(`input: ${FILE}, ${n} lines built from ../shared/corpus/ssh/ (addresses varied per copy)\n`);
const runs: Run[] = [];
for (let i = 0; i < RUNS; i++) {
  const r = await runOnce(FILE);
  runs.push(r);
  process.stdout.write(
    `run ${i + 1}: ${(r.summary.lines / (r.wallMs / 1000)).toFixed(0)} lines/s wall (${r.wallMs.toFixed(0)} ms incl. start-up), ` +
      `cpu ${r.cpuMs} ms, peak RSS ${r.peakRssMb.toFixed(1)} MB, matched ${r.summary.matched}, bans ${r.summary.bans}\n`,
  );
}
const best = runs.reduce((a, b) => (a.wallMs < b.wallMs ? a : b));
const med = [...runs].sort((a, b) => a.wallMs - b.wallMs)[Math.floor(runs.length / 2)]!;
process.stdout.write(
  `replay throughput: median ${(med.summary.lines / (med.wallMs / 1000)).toFixed(0)} lines/s, best ${(best.summary.lines / (best.wallMs / 1000)).toFixed(0)} lines/s ` +
    `(target >= 1,000,000); peak RSS ${Math.max(...runs.map((r) => r.peakRssMb)).toFixed(1)} MB\n`,
);
