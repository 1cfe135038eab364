import { spawn, spawnSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { appendHistory } from './lib/history.ts';
import { parseResults } from './lib/result.ts';
import { historyRow, markdownTable } from './lib/table.ts';
import { ensurePeers } from './peers.ts';

/*
 * `npm run bench`: every benchmark in bench/, one child process each (so one's heap does not skew the next), then
 * one Markdown table of the figures, bench/results.json, and a row in bench/HISTORY.md. Each bench prints its own
 * figures and ends with a `BENCH_RESULT {json}` line (bench/lib/result.ts), which is what is collected here.
 *
 *   npm run bench                              everything (under 10 minutes on 2 cores)
 *   npm run bench -- --only peers,agreement    a subset: prints the table, writes no file unless --write
 *   npm run bench -- --list                    the bench ids
 * Options: --no-build (use dist/ as it is), --no-history (do not append to HISTORY.md), --write (write
 * results.json for a subset too), --install-peers (as BENCH_INSTALL_PEERS=1: apt-get install sshguard fail2ban).
 */
const REPO = fileURLToPath(new URL('../', import.meta.url));
const BUDGET_S = 600;

interface Bench {
  id: string;
  name: string;
  args: string[];
  timeoutS: number;
  /** Not in the default run (covered by another bench). */
  extra?: boolean;
}

const BENCHES: Bench[] = [
  { id: 'peers', name: 'parsing throughput: TSFilter replay and parse-only vs sshguard and fail2ban-regex, same file', args: ['bench/peers-throughput.ts'], timeoutS: 240 },
  { id: 'agreement', name: 'agreement: the addresses TSFilter bans vs fail2ban at the same maxretry/findtime', args: ['bench/agreement.ts'], timeoutS: 120 },
  { id: 'memory', name: 'detector: a flood of 1M distinct IPs (bounded memory), and 1M tracked', args: ['--expose-gc', 'bench/detect-memory.ts'], timeoutS: 120 },
  { id: 'store', name: 'SQLite store: 100,000 bans', args: ['bench/store-bans.ts'], timeoutS: 120 },
  { id: 'tail', name: 'tail latency: append -> pipeline (inotify, poll)', args: ['bench/tail-latency.ts', '500'], timeoutS: 120 },
  { id: 'line-to-drop', name: 'line-to-drop: log line -> nft element (issue 3: p99 < 20 ms; needs root, runs in a netns)', args: ['bench/line-to-drop.ts', '300'], timeoutS: 120 },
  { id: 'nft-bulk', name: 'nftables: 100,000 bans applied / restored (issue 3: < 2 s each; needs root, runs in a netns)', args: ['bench/nft-bulk.ts'], timeoutS: 120 },
  { id: 'fleet', name: "fleet sync: ban on A -> element in B's nft set, and B catching up on 10,000 bans (issue 5: p99 < 50 ms, < 2 s; needs root and redis-server, runs in a netns)", args: ['bench/fleet-propagation.ts', '200'], timeoutS: 180 },
  { id: 'firewall', name: 'firewall backends (nftables, ipset, iptables, PyFilter) on the same 100,000 bans (needs root, runs in netns)', args: ['bench/firewall-backends.ts'], timeoutS: 180 },
  { id: 'daemon', name: 'daemon: start-up time and idle RSS (defaults, dry-run firewall)', args: ['bench/daemon-idle.ts', '3', '3'], timeoutS: 120 },
  { id: 'dashboard', name: 'dashboard: Chromium load to totals and charts drawn with 100,000 bans, and the API calls it makes (needs chromium)', args: ['bench/dashboard-100k.ts'], timeoutS: 180 },
  { id: 'replay', name: 'replay throughput alone (2M lines; the peers bench runs it beside the peers)', args: ['bench/replay-throughput.ts'], timeoutS: 180, extra: true },
  { id: 'rules', name: 'rules only (parse path) on the corpus repeated', args: ['bench/rules-throughput.ts'], timeoutS: 120, extra: true },
];

function parseArgs(argv: string[]) {
  const o = { only: null as string[] | null, build: true, history: true, write: false, list: false, installPeers: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--only') o.only = (argv[++i] ?? '').split(',').filter(Boolean);
    else if (a.startsWith('--only=')) o.only = a.slice(7).split(',').filter(Boolean);
    else if (a === '--no-build') o.build = false;
    else if (a === '--no-history') o.history = false;
    else if (a === '--write') o.write = true;
    else if (a === '--list') o.list = true;
    else if (a === '--install-peers') o.installPeers = true;
    else {
      process.stderr.write(`unknown option ${a}; see the comment at the top of bench/run.ts\n`);
      process.exit(2);
    }
  }
  return o;
}

/** Runs one bench, echoing its output (less its BENCH_RESULT line) and returning what it reported. */
function runBench(b: Bench): Promise<{ status: string; seconds: number; result: Record<string, unknown> | null }> {
  const t = Date.now();
  const child = spawn(process.execPath, ['--import', 'tsx', ...b.args], { cwd: REPO, stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  let buf = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    out += d;
    buf += d;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl + 1);
      buf = buf.slice(nl + 1);
      if (!line.startsWith('BENCH_RESULT ')) process.stdout.write(line);
    }
  });
  const timer = setTimeout(() => child.kill('SIGTERM'), b.timeoutS * 1000);
  return new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      if (buf && !buf.startsWith('BENCH_RESULT ')) process.stdout.write(buf + '\n');
      const seconds = (Date.now() - t) / 1000;
      const result = parseResults(out).at(-1) ?? null;
      const status = code === 0 ? 'ok' : signal ? `killed by ${signal}${signal === 'SIGTERM' ? ` after the ${b.timeoutS} s limit` : ''}` : `exit ${code}`;
      resolve({ status, seconds, result });
    });
  });
}

function machine() {
  const cpus = os.cpus();
  const kind = `${cpus[0]?.model.trim() ?? 'unknown CPU'}, ${cpus.length} cores, ${Math.round(os.totalmem() / 2 ** 30)} GiB`;
  return {
    kind,
    cpu_model: cpus[0]?.model.trim() ?? 'unknown',
    cores: cpus.length,
    memory_gib: +(os.totalmem() / 2 ** 30).toFixed(1),
    kernel: os.release(),
    node: process.version,
    loadavg_at_start: os.loadavg().map((x) => +x.toFixed(2)),
  };
}

function commit(): string {
  const r = spawnSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: REPO, encoding: 'utf8' });
  if (r.status !== 0) return 'unknown';
  const dirty = spawnSync('git', ['status', '--porcelain', '--untracked-files=no'], { cwd: REPO, encoding: 'utf8' }).stdout.trim() !== '';
  return `${r.stdout.trim()}${dirty ? '+dirty' : ''}`;
}

const opts = parseArgs(process.argv.slice(2));
if (opts.list) {
  for (const b of BENCHES) process.stdout.write(`${b.id.padEnd(13)} ${b.extra ? '(extra) ' : ''}${b.name}\n`);
  process.exit(0);
}
const unknown = (opts.only ?? []).filter((id) => !BENCHES.some((b) => b.id === id));
if (unknown.length > 0) {
  process.stderr.write(`unknown bench ${unknown.join(', ')}; ids: ${BENCHES.map((b) => b.id).join(', ')}\n`);
  process.exit(2);
}
const selected = opts.only ? BENCHES.filter((b) => opts.only!.includes(b.id)) : BENCHES.filter((b) => !b.extra);
const full = opts.only === null;
const started = Date.now();
const mach = machine();
const date = new Date().toISOString();

if (opts.build || !existsSync(REPO + 'dist/cli/main.js')) {
  // The throughput, line-to-drop and daemon figures are of the built CLI, so it must be today's code.
  process.stdout.write('building dist/ (npm run build; --no-build to skip)\n');
  const r = spawnSync('npm', ['run', 'build'], { cwd: REPO, stdio: 'inherit' });
  if (r.status !== 0) process.stdout.write('build failed: the benches run what dist/ holds\n');
}
if (opts.installPeers) process.env.BENCH_INSTALL_PEERS = '1';
const peers = selected.some((b) => b.id === 'peers' || b.id === 'agreement') ? await ensurePeers((s) => process.stdout.write(s + '\n')) : null;
if (peers) {
  process.stdout.write(
    `peers: sshguard ${peers.sshguard ? `${peers.sshguard.version} (${peers.sshguard.path})` : 'not found'}; ` +
      `fail2ban ${peers.fail2ban ? `${peers.fail2ban.version} (${peers.fail2ban.path})` : 'not found'}\n`,
  );
  for (const n of peers.notes) process.stdout.write(`note: ${n}\n`);
}

const benches: Record<string, { name: string; status: string; seconds: number; result: Record<string, unknown> | null }> = {};
const results: Record<string, Record<string, unknown>> = {};
for (const b of selected) {
  process.stdout.write(`\n## ${b.name}\n`);
  const r = await runBench(b);
  process.stdout.write(`(${r.seconds.toFixed(1)} s${r.status === 'ok' ? '' : `, ${r.status}`})\n`);
  benches[b.id] = { name: b.name, ...r };
  if (r.result && typeof r.result.bench === 'string') results[r.result.bench] = r.result;
  else if (r.status !== 'ok') {
    const key = { peers: 'peers-throughput', memory: 'detect-memory', store: 'store-bans', tail: 'tail-latency', fleet: 'fleet-propagation', firewall: 'firewall-backends', daemon: 'daemon-idle', dashboard: 'dashboard-100k', replay: 'replay-throughput', rules: 'rules-throughput' }[b.id] ?? b.id;
    results[key] = { bench: key, error: r.status };
  }
}

const totalS = (Date.now() - started) / 1000;
const table = markdownTable(results);
process.stdout.write(`\n# Results (${date}, ${mach.kind}, node ${mach.node}, load ${mach.loadavg_at_start.join(' ')})\n\n${table}\n\n`);
process.stdout.write(`total: ${totalS.toFixed(0)} s${totalS > BUDGET_S ? ` — OVER the ${BUDGET_S} s budget` : ` (budget ${BUDGET_S} s)`}\n`);

if (full || opts.write) {
  const doc = {
    date,
    commit: commit(),
    machine: mach,
    peers: peers && { sshguard: peers.sshguard, fail2ban: peers.fail2ban, notes: peers.notes },
    subset: full ? null : selected.map((b) => b.id),
    total_s: +totalS.toFixed(1),
    table_markdown: table,
    benches,
  };
  writeFileSync(REPO + 'bench/results.json', JSON.stringify(doc, null, 2) + '\n');
  process.stdout.write('wrote bench/results.json\n');
}
if (full && opts.history) {
  appendHistory(REPO + 'bench/HISTORY.md', mach.kind, historyRow(results, { date: date.slice(0, 16).replace('T', ' '), commit: commit(), load: mach.loadavg_at_start[0]!, totalS }));
  process.stdout.write('appended a row to bench/HISTORY.md\n');
} else if (!full) process.stdout.write('subset run: bench/results.json and bench/HISTORY.md left as they are (--write writes results.json)\n');
