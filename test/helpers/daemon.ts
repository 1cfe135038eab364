import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { CLI, REPO } from './cli.ts';
import { openSqliteStore } from '../../src/store/sqlite-store.ts';

/** Our default config, with the SSH rule pointed at `logFile` and all state under `dataDir`. */
export function sshConfig(dataDir: string, logFile: string, overrides: Record<string, unknown> = {}, ruleOverrides: Record<string, unknown> = {}): string {
  const cfg = JSON.parse(readFileSync(path.join(REPO, 'config/config.default.json'), 'utf8'));
  cfg.settings.data_dir = dataDir;
  // These tests are about the pipeline; the nftables tests run their daemons inside network namespaces.
  cfg.settings.firewall = 'dry-run';
  cfg.settings.control_socket = path.join(dataDir, 'tsfilter.sock');
  const ssh = cfg.settings.rules.ssh;
  ssh.log_files = logFile;
  delete ssh.journal;
  Object.assign(ssh, ruleOverrides);
  cfg.settings.rules = { ssh };
  Object.assign(cfg.settings, overrides);
  const file = path.join(dataDir, 'config.json');
  writeFileSync(file, JSON.stringify(cfg, null, 2));
  return file;
}

/** Rewrites a config file in place: `edit` changes its parsed JSON (top-level blocks, settings, rules). */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export function editConfig(file: string, edit: (c: any) => void): void {
  const c: unknown = JSON.parse(readFileSync(file, 'utf8'));
  edit(c);
  writeFileSync(file, JSON.stringify(c, null, 2));
}

/** A `tsfilter run` child process whose stdout log records can be awaited. */
export class DaemonProcess {
  readonly child: ChildProcess;
  out = '';
  err = '';
  exited: Promise<number | null>;

  constructor(configFile: string, env: Record<string, string> = {}) {
    this.child = spawn(process.execPath, ['--import', 'tsx', CLI, 'run', '--config', configFile], {
      cwd: REPO,
      env: { ...process.env, TZ: 'UTC', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child.stdout!.setEncoding('utf8').on('data', (d: string) => (this.out += d));
    this.child.stderr!.setEncoding('utf8').on('data', (d: string) => (this.err += d));
    this.exited = new Promise((resolve) => this.child.on('exit', (code) => resolve(code)));
  }

  /** Waits until a stdout record matches; fails with the output so far after `ms`. */
  async waitFor(re: RegExp, ms = 20_000): Promise<RegExpMatchArray> {
    const deadline = Date.now() + ms;
    for (;;) {
      const m = this.out.match(re);
      if (m) return m;
      if (this.child.exitCode !== null) throw new Error(`daemon exited (${this.child.exitCode}) before ${re}:\n${this.out}\n${this.err}`);
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${re}:\n${this.out}\n${this.err}`);
      await new Promise((r) => setTimeout(r, 25));
    }
  }

  count(re: RegExp): number {
    return (this.out.match(new RegExp(re.source, 'g')) ?? []).length;
  }

  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    return this.exited;
  }
}

export async function until(cond: () => boolean, ms = 20_000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Whether the store at `dbFile` holds an active ban of `ip` (opened read-only, so a running daemon can keep it). */
export function isBanned(dbFile: string, ip: string): boolean {
  const s = openSqliteStore(dbFile, { readonly: true });
  try {
    return s.activeBans(Date.now()).some((b) => b.ip === ip);
  } finally {
    s.close();
  }
}

/**
 * A temporary data directory holding an empty `auth.log`, for a test that runs daemons: every daemon started with
 * `start` is killed, and the directory removed, when `fn` ends, passed or failed.
 */
export async function withDaemonDir(
  prefix: string,
  fn: (t: { dir: string; log: string; start(configFile: string): DaemonProcess }) => Promise<void>,
): Promise<void> {
  const dir = mkdtempSync(path.join(tmpdir(), prefix));
  const log = path.join(dir, 'auth.log');
  writeFileSync(log, '');
  const started: DaemonProcess[] = [];
  const start = (configFile: string) => {
    const d = new DaemonProcess(configFile);
    started.push(d);
    return d;
  };
  try {
    await fn({ dir, log, start });
  } finally {
    for (const d of started) await d.stop('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
}
