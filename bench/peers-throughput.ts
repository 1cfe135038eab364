import { createReadStream, createWriteStream, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { makeBigAuthLog } from './make-big-auth-log.ts';
import { measure, type Measured } from './lib/measure.ts';
import { emitResult, median, parseResults } from './lib/result.ts';
import { ensurePeers, FAIL2BAN_SSHD_FILTER, type Peers } from './peers.ts';
import { runReplay, summarize, type ReplayRun } from './replay-throughput.ts';

/*
 * Parsing throughput side by side, on one big auth log built from ../shared/corpus/ssh/ (addresses varied per
 * copy): `tsfilter replay` (whole pipeline, dry-run enforcer), TSFilter's parse-only path (the ssh rule's matcher
 * over the lines in memory: bench/rules-throughput.ts), sshguard's parser (`sshg-parser < FILE`) and fail2ban-regex
 * with fail2ban's sshd filter (`fail2ban-regex -o row --usedns=no FILE sshd.conf`; it is slow, so it reads the
 * first BENCH_F2B_LINES lines of the same file). Each runs as its own process; lines/s is lines / wall time
 * including start-up, CPU s and peak RSS come from the child's rusage. Each tool runs BENCH_RUNS (3) times and the
 * median wall time is kept (with an even count, the mean of the two middle ones). Each process tool also runs once
 * on an empty file: its start-up time, which "net" lines/s subtracts from the median wall time. The ratios and the
 * targets are on the raw lines/s, start-up included, as a user running the tool on a file sees it.
 * Targets (issue 8): replay >= sshguard's parser in lines/s, and >= 15x fail2ban-regex.
 * PyFilter is not run: it sleeps 0.1 ms after every line it reads, so it stays below 10,000 lines/s.
 */
const REPO = fileURLToPath(new URL('../', import.meta.url));
const PYFILTER_CEILING = 10_000;

export interface ToolFigures {
  tool: string;
  version?: string;
  lines: number;
  /** Lines (or attacks, failures) the tool reported. */
  found?: number;
  found_what?: string;
  /** Lines / median wall time, start-up included. */
  lines_per_s: number;
  /** Wall time on an empty input (one run), for the process tools. */
  startup_ms?: number;
  /** Lines / (median wall time - start-up). */
  net_lines_per_s?: number;
  cpu_s: number;
  peak_rss_mb: number;
  runs: number;
  /** TSFilter replay's lines/s divided by this tool's. */
  replay_ratio?: number;
  note?: string;
}

/** The first n lines of file, written once next to it. */
async function slice(file: string, n: number): Promise<string> {
  const out = `${file}.first-${n}`;
  if (existsSync(out) && statSync(out).mtimeMs >= statSync(file).mtimeMs) return out;
  const ws = createWriteStream(out);
  let k = 0;
  for await (const line of createInterface({ input: createReadStream(file), crlfDelay: Infinity })) {
    if (k++ >= n) break;
    ws.write(line + '\n');
  }
  await new Promise<void>((resolve, reject) => ws.end(() => resolve()).on('error', reject));
  return out;
}

function countLines(file: string): number {
  const b = readFileSync(file);
  let n = 0;
  for (let i = b.indexOf(10); i !== -1; i = b.indexOf(10, i + 1)) n++;
  return n;
}

interface Timed {
  wallMs: number;
  found: number;
  all: Measured[];
}

/** Runs argv `runs` times, each with its stdout to a file; `found` counts the output lines (the same in every run). */
async function timeTool(argv: string[], runs: number, opts: { stdin?: string }): Promise<Timed> {
  const dir = mkdtempSync(path.join(tmpdir(), 'tsf-peer-'));
  try {
    const all: Measured[] = [];
    let found = 0;
    for (let i = 0; i < runs; i++) {
      const out = path.join(dir, `out-${i}`);
      const m = await measure(argv, { stdin: opts.stdin, stdout: out, cwd: dir, timeoutMs: 300_000 });
      if (m.code !== 0) throw new Error(`${argv[0]} exited ${m.code}: ${m.stderr.slice(0, 400)}`);
      all.push(m);
      found = countLines(out);
    }
    return { wallMs: median(all.map((m) => m.wallMs)), found, all };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Wall ms of one run of argv on empty input: what the tool costs before it reads a line. */
async function startupMs(argv: string[], opts: { stdin?: string } = {}): Promise<number> {
  const m = await measure(argv, { stdin: opts.stdin, timeoutMs: 60_000 });
  if (m.code !== 0) throw new Error(`${argv[0]} on an empty input exited ${m.code}: ${m.stderr.slice(0, 400)}`);
  return m.wallMs;
}

/** Lines/s once start-up is taken off; NaN when start-up is not below the run's wall time (a noisy machine). */
export function netLinesPerS(lines: number, wallMs: number, startup: number): number {
  return wallMs > startup ? Math.round(lines / ((wallMs - startup) / 1000)) : NaN;
}

function figures(tool: string, lines: number, t: Timed, startup: number, extra: Partial<ToolFigures>): ToolFigures {
  return {
    tool,
    lines,
    found: t.found,
    lines_per_s: Math.round(lines / (t.wallMs / 1000)),
    startup_ms: +startup.toFixed(1),
    net_lines_per_s: netLinesPerS(lines, t.wallMs, startup),
    cpu_s: +median(t.all.map((m) => m.cpuS)).toFixed(3),
    peak_rss_mb: +(Math.max(...t.all.map((m) => m.peakRssKb)) / 1024).toFixed(1),
    runs: t.all.length,
    ...extra,
  };
}

export async function runPeersThroughput(opts: { file: string; lines: number; f2bLines: number; runs: number; peers: Peers }) {
  const n = await makeBigAuthLog(opts.file, opts.lines);
  const rows: ToolFigures[] = [];
  const notes: string[] = [...opts.peers.notes];
  const emptyDir = mkdtempSync(path.join(tmpdir(), 'tsf-empty-'));
  const empty = path.join(emptyDir, 'empty.log');
  writeFileSync(empty, '');
  try {
    // TSFilter replay: the reference every ratio is taken against.
    const rr: ReplayRun[] = [];
    for (let i = 0; i < opts.runs; i++) rr.push(await runReplay(opts.file));
    const rs = summarize(rr);
    const replayStartup = (await runReplay(empty)).wallMs;
    const replay: ToolFigures = {
      tool: 'TSFilter replay (full pipeline, dry-run)',
      lines: rs.lines,
      found: rs.matched,
      found_what: `matched lines, ${rs.bans} bans`,
      lines_per_s: rs.lines_per_s,
      startup_ms: +replayStartup.toFixed(1),
      net_lines_per_s: netLinesPerS(rs.lines, rs.wall_ms, replayStartup),
      cpu_s: rs.cpu_s,
      peak_rss_mb: rs.peak_rss_mb,
      runs: rs.runs,
      replay_ratio: 1,
    };
    rows.push(replay);

    // Parse-only: its own process, so its RSS is its own (it holds every line in memory).
    const dir = mkdtempSync(path.join(tmpdir(), 'tsf-parse-'));
    try {
      const out = path.join(dir, 'out');
      const m = await measure([process.execPath, '--import', 'tsx', REPO + 'bench/rules-throughput.ts', opts.file], { stdout: out, cwd: REPO, timeoutMs: 300_000 });
      const r = parseResults(readFileSync(out, 'utf8'))[0];
      if (m.code !== 0 || !r) notes.push(`parse-only: failed (exit ${m.code}) ${m.stderr.slice(0, 300)}`);
      else
        rows.push({
          tool: 'TSFilter parse-only (ssh rule, lines in memory)',
          lines: Number(r.lines),
          found: Number(r.matched),
          found_what: 'matched lines',
          lines_per_s: Number(r.lines_per_s),
          cpu_s: Number(r.cpu_s),
          peak_rss_mb: +(m.peakRssKb / 1024).toFixed(1),
          runs: 5,
          note: 'best of 5 timed loops after a warm-up, no I/O or start-up; CPU s is one loop\'s; RSS holds all lines',
        });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }

    const sg = opts.peers.sshguard;
    if (sg) {
      const t = await timeTool([sg.path], opts.runs, { stdin: opts.file });
      const st = await startupMs([sg.path], { stdin: empty });
      rows.push(figures(`sshguard ${sg.version} sshg-parser`, n, t, st, { version: sg.version, found_what: 'attacks reported' }));
    } else rows.push({ tool: 'sshguard sshg-parser', lines: 0, lines_per_s: NaN, cpu_s: NaN, peak_rss_mb: NaN, runs: 0, note: 'not installed: skipped' });

    const fb = opts.peers.fail2ban;
    if (fb) {
      const part = opts.f2bLines < n ? await slice(opts.file, opts.f2bLines) : opts.file;
      const k = Math.min(opts.f2bLines, n);
      const argv = (f: string) => [fb.path, '-o', 'row', '--usedns=no', f, FAIL2BAN_SSHD_FILTER];
      const t = await timeTool(argv(part), opts.runs, {});
      const st = await startupMs(argv(empty));
      rows.push(
        figures(`fail2ban-regex ${fb.version} (sshd filter)`, k, t, st, {
          version: fb.version,
          found_what: 'failures reported',
          note: k < n ? 'the first lines of the same file: it is slow' : undefined,
        }),
      );
    } else rows.push({ tool: 'fail2ban-regex (sshd filter)', lines: 0, lines_per_s: NaN, cpu_s: NaN, peak_rss_mb: NaN, runs: 0, note: 'not installed: skipped' });

    for (const r of rows) if (Number.isFinite(r.lines_per_s) && r.replay_ratio === undefined) r.replay_ratio = +(replay.lines_per_s / r.lines_per_s).toFixed(2);
    const sgRow = rows.find((r) => r.tool.startsWith('sshguard') && Number.isFinite(r.lines_per_s));
    const fbRow = rows.find((r) => r.tool.startsWith('fail2ban') && Number.isFinite(r.lines_per_s));
    const targets = {
      replay_vs_sshguard: sgRow ? { ratio: sgRow.replay_ratio!, target: 1, met: sgRow.replay_ratio! >= 1 } : null,
      replay_vs_fail2ban: fbRow ? { ratio: fbRow.replay_ratio!, target: 15, met: fbRow.replay_ratio! >= 15 } : null,
    };
    const pyfilter = { ceiling_lines_per_s: PYFILTER_CEILING, replay_ratio_at_least: +(replay.lines_per_s / PYFILTER_CEILING).toFixed(1), note: 'not run: PyFilter sleeps 0.1 ms after every line' };
    return { file: opts.file, lines: n, rows, targets, pyfilter, notes };
  } finally {
    rmSync(emptyDir, { recursive: true, force: true });
  }
}

const fmt = (x: number) => (Number.isFinite(x) ? Math.round(x).toLocaleString('en-US') : '—');

export function throughputTable(r: { rows: readonly Omit<ToolFigures, 'runs'>[]; pyfilter: { ceiling_lines_per_s: number; replay_ratio_at_least: number } }): string {
  const out = [
    '| tool | lines | lines/s (raw) | start-up ms | net lines/s | TSFilter replay is (raw) | CPU s | peak RSS MB | reported |',
    '|---|---|---|---|---|---|---|---|---|',
  ];
  for (const x of r.rows) {
    const ratio = x.replay_ratio === undefined ? '—' : `${x.replay_ratio.toFixed(2)}×`;
    const found = x.found === undefined ? '' : `${fmt(x.found)} ${x.found_what ?? ''}`;
    const startup = x.startup_ms === undefined ? '—' : fmt(x.startup_ms);
    const net = x.net_lines_per_s === undefined ? '—' : fmt(x.net_lines_per_s);
    out.push(
      `| ${x.tool}${x.note ? ` (${x.note})` : ''} | ${fmt(x.lines)} | ${fmt(x.lines_per_s)} | ${startup} | ${net} | ${ratio} | ${Number.isFinite(x.cpu_s) ? x.cpu_s.toFixed(2) : '—'} | ${Number.isFinite(x.peak_rss_mb) ? x.peak_rss_mb.toFixed(1) : '—'} | ${found} |`,
    );
  }
  out.push(`| PyFilter (not run: sleeps 0.1 ms per line) | — | < ${fmt(r.pyfilter.ceiling_lines_per_s)} (ceiling) | — | — | > ${r.pyfilter.replay_ratio_at_least}× | — | — | |`);
  return out.join('\n');
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const file = process.env.BENCH_FILE ?? '/tmp/tsfilter-bench-auth.log';
  const lines = Number(process.env.BENCH_LINES ?? 2_000_000);
  const f2bLines = Number(process.env.BENCH_F2B_LINES ?? 100_000);
  const runs = Number(process.env.BENCH_RUNS ?? 3);
  const peers = await ensurePeers((s) => process.stdout.write(s + '\n'));
  const r = await runPeersThroughput({ file, lines, f2bLines, runs, peers });
  process.stdout.write(`input: ${r.file}, ${r.lines.toLocaleString('en-US')} lines built from ../shared/corpus/ssh/ (addresses varied per copy)\n\n`);
  process.stdout.write(throughputTable(r) + '\n\n');
  process.stdout.write(
    `lines/s: lines / median wall time of ${runs} runs, start-up included; net: the same with the tool's start-up (one run on an empty file) taken off; the ratios and targets use the raw figure\n`,
  );
  const t = r.targets;
  if (t.replay_vs_sshguard) process.stdout.write(`target replay >= sshguard's parser: ${t.replay_vs_sshguard.ratio}× — ${t.replay_vs_sshguard.met ? 'met' : 'NOT met'}\n`);
  if (t.replay_vs_fail2ban) process.stdout.write(`target replay >= 15× fail2ban-regex: ${t.replay_vs_fail2ban.ratio}× — ${t.replay_vs_fail2ban.met ? 'met' : 'NOT met'}\n`);
  for (const n of r.notes) process.stdout.write(`note: ${n}\n`);
  emitResult('peers-throughput', { ...r, peers: { sshguard: peers.sshguard, fail2ban: peers.fail2ban } });
}
