import { spawn } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

/*
 * Wall time, CPU seconds (user + sys) and peak RSS of one child process, the same way for TSFilter and the peers.
 * GNU time (/usr/bin/time, Debian's `time` package) reads them from wait4()'s rusage when the child is reaped, so
 * nothing is missed at the end; without it, /proc/PID is sampled every 10 ms (VmHWM, utime + stime), which can
 * miss the last few ms of CPU. Stdin and stdout are files handed to the child directly: no bytes pass through this
 * process, so its own work does not show in the figures.
 */
export const GNU_TIME = '/usr/bin/time';

export interface Measured {
  wallMs: number;
  userS: number;
  sysS: number;
  cpuS: number;
  peakRssKb: number;
  code: number | null;
  /** 'rusage' (GNU time) or 'proc-sampling'. */
  method: 'rusage' | 'proc-sampling';
  stderr: string;
}

export interface MeasureOptions {
  /** A file to read as stdin (else /dev/null). */
  stdin?: string;
  /** A file to write stdout to (else discarded). */
  stdout?: string;
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  timeoutMs?: number;
}

function sampleProc(pid: number, acc: { peakKb: number; ticks: number }): void {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    if (m) acc.peakKb = Math.max(acc.peakKb, Number(m[1]));
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    acc.ticks = Number(f[11]) + Number(f[12]);
  } catch {
    /* exited between two samples */
  }
}

/*
 * Each measured tool runs in its own process group (spawned detached), so that a timeout stops the tool itself and
 * not only GNU time, its parent. Being detached, it no longer gets the terminal's Ctrl-C with this process, so the
 * groups still running are killed when this process is told to stop, and on exit (their scratch directories removed).
 */
const live = new Map<number, string>();
const STOP_SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

function killGroup(pid: number): void {
  try {
    process.kill(-pid, 'SIGKILL');
  } catch {
    /* the group is already gone */
  }
}

function onStop(sig: NodeJS.Signals): void {
  onExit();
  untrack();
  // Default action again, so this process ends as the signal meant it to.
  if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
}

function onExit(): void {
  for (const [pid, dir] of live) {
    killGroup(pid);
    rmSync(dir, { recursive: true, force: true });
  }
}

function track(pid: number, dir: string): void {
  if (live.size === 0) {
    for (const s of STOP_SIGNALS) process.on(s, onStop);
    process.on('exit', onExit);
  }
  live.set(pid, dir);
}

function untrack(pid?: number): void {
  if (pid === undefined) live.clear();
  else live.delete(pid);
  if (live.size === 0) {
    for (const s of STOP_SIGNALS) process.off(s, onStop);
    process.off('exit', onExit);
  }
}

export function measure(argv: string[], opts: MeasureOptions = {}): Promise<Measured> {
  // BENCH_NO_GNU_TIME=1 forces the /proc fallback (to compare the two, or where GNU time misbehaves).
  const useTime = existsSync(GNU_TIME) && process.env.BENCH_NO_GNU_TIME !== '1';
  const dir = mkdtempSync(path.join(tmpdir(), 'tsf-measure-'));
  const timeFile = path.join(dir, 'rusage');
  const inFd = openSync(opts.stdin ?? '/dev/null', 'r');
  const outFd = openSync(opts.stdout ?? '/dev/null', 'w');
  const cmd = useTime ? [GNU_TIME, '-f', '%e %U %S %M', '-o', timeFile, ...argv] : argv;
  const t0 = process.hrtime.bigint();
  const child = spawn(cmd[0]!, cmd.slice(1), { cwd: opts.cwd, env: opts.env, stdio: [inFd, outFd, 'pipe'], detached: true });
  if (child.pid !== undefined) track(child.pid, dir);
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => {
    if (stderr.length < 20_000) stderr += d;
  });
  const acc = { peakKb: 0, ticks: 0 };
  // With GNU time, the child measured is time's own child: /proc sampling is only the fallback.
  const timer = useTime ? undefined : setInterval(() => sampleProc(child.pid!, acc), 10);
  let timedOut = false;
  const killer = opts.timeoutMs
    ? setTimeout(() => {
        timedOut = true;
        if (child.pid !== undefined) killGroup(child.pid);
      }, opts.timeoutMs)
    : undefined;
  return new Promise((resolve, reject) => {
    child.on('error', (e) => {
      if (child.pid !== undefined) untrack(child.pid);
      clearInterval(timer);
      clearTimeout(killer);
      closeSync(inFd);
      closeSync(outFd);
      rmSync(dir, { recursive: true, force: true });
      reject(e);
    });
    child.on('exit', (code) => {
      const wallMs = Number(process.hrtime.bigint() - t0) / 1e6;
      if (child.pid !== undefined) untrack(child.pid);
      if (timedOut) stderr = `timed out after ${opts.timeoutMs} ms: process group killed\n${stderr}`;
      clearInterval(timer);
      clearTimeout(killer);
      closeSync(inFd);
      closeSync(outFd);
      try {
        if (useTime) {
          // GNU time writes "Command exited with non-zero status N" first when the command failed.
          const last = readFileSync(timeFile, 'utf8').trim().split('\n').at(-1) ?? '';
          const [, user, sys, rss] = last.split(' ').map(Number);
          resolve({ wallMs, userS: user ?? NaN, sysS: sys ?? NaN, cpuS: (user ?? NaN) + (sys ?? NaN), peakRssKb: rss ?? NaN, code, method: 'rusage', stderr });
        } else {
          const cpuS = acc.ticks / 100;
          resolve({ wallMs, userS: NaN, sysS: NaN, cpuS, peakRssKb: acc.peakKb, code, method: 'proc-sampling', stderr });
        }
      } catch (e) {
        reject(e);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  });
}
