import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { emitResult, median } from './lib/result.ts';

/*
 * Start-up time and idle memory of the daemon: `tsfilter run` (the built CLI) on config/config.default.json with
 * the firewall set to dry-run and every path (data_dir, control socket, the ssh rule's log file, an empty file)
 * in a temporary directory, which is also its working directory. Start-up is spawn -> the `msg=started` line on
 * its stdout; idle RSS is VmRSS from /proc/PID/status IDLE_S seconds later (VmHWM is its peak so far). Each run is
 * stopped with SIGTERM by its PID. Runs RUNS times and keeps the medians.
 * Usage: node --import tsx bench/daemon-idle.ts [runs=3] [idleSeconds=3]
 */
const REPO = fileURLToPath(new URL('../', import.meta.url));

export interface IdleRun {
  startupMs: number;
  idleRssMb: number;
  peakRssMb: number;
}

function status(pid: number, field: string): number {
  const m = new RegExp(`${field}:\\s+(\\d+) kB`).exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

export async function runIdleOnce(idleS: number): Promise<IdleRun> {
  const dir = mkdtempSync(path.join(tmpdir(), 'tsf-idle-'));
  const cfg = JSON.parse(readFileSync(path.join(REPO, 'config/config.default.json'), 'utf8'));
  cfg.settings.data_dir = path.join(dir, 'data');
  cfg.settings.firewall = 'dry-run';
  cfg.settings.control_socket = path.join(dir, 'run', 'tsfilter.sock');
  const log = path.join(dir, 'auth.log');
  writeFileSync(log, '');
  cfg.settings.rules.ssh.log_files = log;
  delete cfg.settings.rules.ssh.journal;
  writeFileSync(path.join(dir, 'config.json'), JSON.stringify(cfg, null, 2));
  const built = existsSync(REPO + 'dist/cli/main.js');
  const cli = built ? [REPO + 'dist/cli/main.js'] : ['--import', 'tsx', REPO + 'src/cli/main.ts'];
  const t0 = process.hrtime.bigint();
  const child = spawn(process.execPath, [...cli, 'run', '--config', path.join(dir, 'config.json')], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  let out = '';
  try {
    const startupMs = await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no msg=started after 30 s:\n${out.slice(-2000)}`)), 30_000);
      child.stdout!.setEncoding('utf8').on('data', (d: string) => {
        const t = process.hrtime.bigint();
        out += d;
        if (/(^|\n)level=info msg=started/.test(out) && timer.hasRef()) {
          clearTimeout(timer);
          timer.unref();
          resolve(Number(t - t0) / 1e6);
        }
      });
      child.stderr!.setEncoding('utf8').on('data', (d: string) => (out += d));
      child.once('exit', (code) => reject(new Error(`daemon exited ${code} before starting:\n${out.slice(-2000)}`)));
    });
    await new Promise((r) => setTimeout(r, idleS * 1000));
    const idleRssMb = status(child.pid!, 'VmRSS');
    const peakRssMb = status(child.pid!, 'VmHWM');
    return { startupMs, idleRssMb, peakRssMb };
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    const k = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(k);
    rmSync(dir, { recursive: true, force: true });
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const runs = Math.max(1, Number(process.argv[2] ?? 3));
  const idleS = Number(process.argv[3] ?? 3);
  const rs: IdleRun[] = [];
  for (let i = 0; i < runs; i++) {
    const r = await runIdleOnce(idleS);
    rs.push(r);
    process.stdout.write(`run ${i + 1}: start-up ${r.startupMs.toFixed(0)} ms, idle RSS ${r.idleRssMb.toFixed(1)} MB after ${idleS} s (peak ${r.peakRssMb.toFixed(1)} MB)\n`);
  }
  const s = {
    runs,
    idle_s: idleS,
    startup_ms: +median(rs.map((r) => r.startupMs)).toFixed(1),
    startup_min_ms: +Math.min(...rs.map((r) => r.startupMs)).toFixed(1),
    idle_rss_mb: +median(rs.map((r) => r.idleRssMb)).toFixed(1),
    peak_rss_mb: +Math.max(...rs.map((r) => r.peakRssMb)).toFixed(1),
    cli: existsSync(REPO + 'dist/cli/main.js') ? 'dist/cli/main.js' : 'src/cli/main.ts (tsx)',
  };
  process.stdout.write(`daemon (defaults, dry-run firewall): start-up median ${s.startup_ms} ms (min ${s.startup_min_ms}), idle RSS median ${s.idle_rss_mb} MB\n`);
  emitResult('daemon-idle', s);
}
