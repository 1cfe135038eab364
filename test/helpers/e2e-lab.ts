/*
 * The end-to-end lab: a real sshd attacked from other network namespaces, with TSFilter running beside it.
 *
 *        attacker (192.0.2.66, 2001:db8::66)    admin (192.0.2.10, 2001:db8::10)
 *                      eth0                                eth0
 *                       |  veth                             |  veth
 *                  [ br0, in its own "br" namespace, STP and multicast snooping off ]
 *                       |  veth
 *                      eth0
 *        server (192.0.2.1/24, 2001:db8::1/64): sshd, optionally rsyslogd, and `tsfilter run`
 *
 * Every namespace is named `tsf-e2e-<role>-<random>`; IPv6 addresses are added with `nodad` (and DAD is off), so
 * they are usable at once. sshd and rsyslogd additionally run in private mount namespaces
 * (test/fixtures/e2e/private-mounts.sh) with their own /run and /dev: the lab never creates or uses the host's
 * /dev/log, /run/sshd or firewall. Everything lives in one temp directory.
 *
 * dispose() kills every process the lab started (by PID, then whatever is left inside its namespaces), deletes the
 * namespaces and the temp directory; it runs from `finally`, and, should the test process be interrupted, from
 * exit/SIGINT/SIGTERM handlers. Labs whose owning process died without cleaning up (SIGKILL) are removed by the next
 * Lab.create().
 *
 *   const lab = await Lab.create();
 *   try {
 *     const sshd = await lab.startSshd('syslog');
 *     await lab.failLogin('attacker', 6, 'nosuchuser', 'wrong');
 *     const d = await lab.startTsfilter(sshd, { settings: { ban_time: 3 } });
 *     await d.waitFor(/msg=banned ip=2001:db8::66 /);
 *     assert.equal(await lab.canConnect('attacker', 6), false);
 *   } finally {
 *     await lab.dispose();
 *   }
 *
 * Set TSF_E2E_KEEP=1 to keep the temp directory (logs, configs, store) after dispose; namespaces and processes go
 * regardless. Set TSF_E2E_DEBUG=1 to echo every command and process output to stderr.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { CLI, REPO } from './cli.ts';

export type Role = 'server' | 'attacker' | 'admin';
export type Family = 4 | 6;
export type SshdLogging = 'file' | 'syslog';

export const ROLES: readonly Role[] = ['server', 'attacker', 'admin'];

/** Documentation ranges only (RFC 5737, RFC 3849). */
export const ADDR: Record<Role, Record<Family, string>> = {
  server: { 4: '192.0.2.1', 6: '2001:db8::1' },
  attacker: { 4: '192.0.2.66', 6: '2001:db8::66' },
  admin: { 4: '192.0.2.10', 6: '2001:db8::10' },
};

const PRIVATE_MOUNTS = fileURLToPath(new URL('../fixtures/e2e/private-mounts.sh', import.meta.url));
const SSHD = '/usr/sbin/sshd';
const DEBUG = process.env.TSF_E2E_DEBUG === '1';
const KEEP = process.env.TSF_E2E_KEEP === '1';
const LAB_PREFIX = 'tsf-e2e-';
const OWNER_FILE = 'owner.json';

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const debug = (s: string) => {
  if (DEBUG) process.stderr.write(`[e2e] ${s}\n`);
};

export interface ExecOptions {
  /** Kill the command (SIGKILL) after this long; the result then has timedOut. Default 30 s. */
  timeoutMs?: number;
  input?: string;
  /** Added to (undefined: removed from) the test process's environment. */
  env?: Record<string, string | undefined>;
  cwd?: string;
  /** Run in a private mount namespace with private /run and /dev; `devLog` is bind-mounted at /dev/log. */
  privateMounts?: { devLog?: string };
}

export interface ExecResult {
  argv: string[];
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
  ms: number;
}

/** A process started by the lab inside a namespace; output is captured, and it is killed at dispose. */
export class LabProcess {
  out = '';
  err = '';
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private done = false;

  constructor(
    readonly role: Role | 'bridge',
    readonly argv: string[],
    readonly child: ChildProcess,
    readonly name: string,
  ) {
    child.stdout?.setEncoding('utf8').on('data', (d: string) => {
      this.out += d;
      if (DEBUG) process.stderr.write(`[${name}] ${d}`);
    });
    child.stderr?.setEncoding('utf8').on('data', (d: string) => {
      this.err += d;
      if (DEBUG) process.stderr.write(`[${name}!] ${d}`);
    });
    this.exited = new Promise((resolve) => {
      child.on('exit', (code, signal) => {
        this.done = true;
        resolve({ code, signal });
      });
      child.on('error', (e) => {
        this.err += `spawn error: ${e.message}\n`;
        this.done = true;
        resolve({ code: null, signal: null });
      });
    });
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get running(): boolean {
    return !this.done;
  }

  /** Current length of stdout: pass it as `since` to wait only for output written after this point. */
  mark(): number {
    return this.out.length;
  }

  /** Waits until stdout (from `since` on) matches; fails with the output so far after `ms` or when the process exits. */
  async waitFor(re: RegExp, ms = 20_000, since = 0): Promise<RegExpMatchArray> {
    const deadline = Date.now() + ms;
    for (;;) {
      const m = this.out.slice(since).match(re);
      if (m) return m;
      if (!this.running) throw new Error(`${this.name} exited before ${re}:\n--- stdout\n${this.out}\n--- stderr\n${this.err}`);
      if (Date.now() > deadline) throw new Error(`${this.name}: timed out (${ms} ms) waiting for ${re}:\n--- stdout\n${this.out}\n--- stderr\n${this.err}`);
      await sleep(20);
    }
  }

  count(re: RegExp, since = 0): number {
    return (this.out.slice(since).match(new RegExp(re.source, re.flags.includes('g') ? re.flags : re.flags + 'g')) ?? []).length;
  }

  /** Sends `signal` and waits for the exit (SIGKILL after `graceMs` if it is still running). */
  async stop(signal: NodeJS.Signals = 'SIGTERM', graceMs = 5000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (this.running && this.child.pid !== undefined) {
      try {
        process.kill(this.child.pid, signal);
      } catch {
        /* already gone */
      }
      const t = setTimeout(() => {
        if (this.running && this.child.pid !== undefined) {
          try {
            process.kill(this.child.pid, 'SIGKILL');
          } catch {
            /* already gone */
          }
        }
      }, graceMs);
      try {
        return await this.exited;
      } finally {
        clearTimeout(t);
      }
    }
    return this.exited;
  }
}

/** A running sshd in the server namespace. */
export interface Sshd {
  logging: SshdLogging;
  /** The file sshd's failure lines land in: sshd -E's file, or the syslog daemon's output file. */
  logFile: string;
  process: LabProcess;
  /** The private rsyslogd (syslog variant). */
  syslog?: LabProcess;
  /** Reads the log file ('' while it does not exist). */
  read(): string;
}

export interface TsfilterOverrides {
  /** Merged into `settings` (after the lab's own settings). */
  settings?: Record<string, unknown>;
  /** Merged into the ssh rule. */
  rule?: Record<string, unknown>;
  /** Reuse this data directory (restart); default: a fresh one. */
  dataDir?: string;
}

/** `tsfilter run` inside the server namespace. */
export class TsfilterDaemon {
  constructor(
    private readonly lab: Lab,
    readonly configFile: string,
    readonly dataDir: string,
    public process: LabProcess,
  ) {}

  waitFor(re: RegExp, ms = 20_000, since = 0): Promise<RegExpMatchArray> {
    return this.process.waitFor(re, ms, since);
  }

  mark(): number {
    return this.process.mark();
  }

  get out(): string {
    return this.process.out;
  }

  /** Stops the daemon (SIGTERM by default; SIGKILL for a crash). */
  stop(signal: NodeJS.Signals = 'SIGTERM') {
    return this.process.stop(signal);
  }

  /** Starts a new `tsfilter run` with the same config and data directory, and waits for `msg=started`. */
  async restart(): Promise<void> {
    if (this.process.running) throw new Error('restart() needs the daemon stopped first');
    this.process = this.lab.spawnTsfilter(this.configFile);
    await this.process.waitFor(/msg=started/, 30_000);
  }

  /** Runs `tsfilter <args> --config <this config>` inside the server namespace. */
  cli(args: string[], opts: ExecOptions = {}): Promise<ExecResult> {
    return this.lab.tsfilterCli([...args, '--config', this.configFile], opts);
  }
}

interface OwnerRecord {
  pid: number;
  namespaces: string[];
}

const live = new Set<Lab>();
let handlersInstalled = false;

function installExitHandlers(): void {
  if (handlersInstalled) return;
  handlersInstalled = true;
  process.on('exit', () => {
    for (const lab of live) lab.disposeSync();
  });
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      for (const lab of live) lab.disposeSync();
      process.kill(process.pid, sig);
    });
  }
}

function run(argv: string[], opts: { timeoutMs?: number; input?: string } = {}): ReturnType<typeof spawnSync> {
  debug(`$ ${argv.join(' ')}`);
  return spawnSync(argv[0]!, argv.slice(1), {
    encoding: 'utf8',
    timeout: opts.timeoutMs ?? 15_000,
    input: opts.input,
    stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
  });
}

function must(argv: string[]): string {
  const r = run(argv);
  if (r.status !== 0) throw new Error(`lab setup: \`${argv.join(' ')}\` failed (${r.status ?? r.signal}): ${String(r.stderr).trim()}`);
  return String(r.stdout);
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function netnsExists(ns: string): boolean {
  return existsSync(path.join('/run/netns', ns));
}

/** Kills whatever still runs inside `ns` (only ever called for the lab's own, uniquely named namespaces). */
function killNamespacePids(ns: string): void {
  if (!netnsExists(ns)) return;
  const r = run(['ip', 'netns', 'pids', ns]);
  for (const s of String(r.stdout ?? '').split(/\s+/)) {
    const pid = Number(s);
    if (Number.isInteger(pid) && pid > 1 && pid !== process.pid) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  }
}

function deleteNamespace(ns: string): void {
  if (!netnsExists(ns)) return;
  killNamespacePids(ns);
  // A namespace with a just-killed process can take a moment to release.
  for (let i = 0; i < 20 && netnsExists(ns); i++) {
    const r = run(['ip', 'netns', 'del', ns]);
    if (r.status === 0) break;
    spawnSync('sleep', ['0.05']);
  }
}

/** Removes labs left behind by test processes that died without cleaning up (their owner PID is gone). */
export function reapStaleLabs(): string[] {
  const reaped: string[] = [];
  let entries: string[] = [];
  try {
    entries = readdirSync(tmpdir()).filter((e) => e.startsWith(LAB_PREFIX));
  } catch {
    return reaped;
  }
  for (const e of entries) {
    const dir = path.join(tmpdir(), e);
    let owner: OwnerRecord;
    try {
      owner = JSON.parse(readFileSync(path.join(dir, OWNER_FILE), 'utf8')) as OwnerRecord;
    } catch {
      continue;
    }
    if (!Number.isInteger(owner.pid) || pidAlive(owner.pid)) continue;
    for (const ns of owner.namespaces) {
      if (typeof ns === 'string' && ns.startsWith(LAB_PREFIX)) deleteNamespace(ns);
    }
    rmSync(dir, { recursive: true, force: true });
    reaped.push(dir);
  }
  return reaped;
}

/** Which prerequisites of the lab are missing on this machine (empty: all there). */
export function missingPrerequisites(opts: { syslog?: boolean; nft?: boolean } = {}): string[] {
  const missing: string[] = [];
  if (process.getuid?.() !== 0) missing.push('root (network namespaces, nftables)');
  const has = (cmd: string, args: string[]) => spawnSync(cmd, args, { stdio: 'ignore' }).error === undefined;
  if (!has('ip', ['-V'])) missing.push('ip (iproute2)');
  if (!has('unshare', ['--version'])) missing.push('unshare (util-linux)');
  if (!has('sysctl', ['--version'])) missing.push('sysctl (procps)');
  if (!existsSync(SSHD)) missing.push(`${SSHD} (openssh-server)`);
  if (!has('ssh', ['-V'])) missing.push('ssh (openssh-client)');
  if (!has('ssh-keygen', ['-?'])) missing.push('ssh-keygen (openssh-client)');
  if (!has('sshpass', ['-V'])) missing.push('sshpass');
  if (opts.nft !== false && !has('nft', ['--version'])) missing.push('nft (nftables)');
  if (opts.syslog !== false && !has('rsyslogd', ['-v'])) missing.push('rsyslogd (rsyslog)');
  if (missing.length === 0) {
    // Can we really create a namespace with a veth pair here (a container without CAP_NET_ADMIN or CAP_SYS_ADMIN cannot)?
    const ns = `${LAB_PREFIX}probe-${randomBytes(4).toString('hex')}`;
    try {
      const a = run(['ip', 'netns', 'add', ns]);
      if (a.status !== 0) missing.push(`permission to create network namespaces (${String(a.stderr).trim()})`);
      else {
        const v = run(['ip', '-n', ns, 'link', 'add', 'p0', 'type', 'veth', 'peer', 'name', 'p1']);
        if (v.status !== 0) missing.push(`veth support (${String(v.stderr).trim()})`);
        const b = run(['ip', '-n', ns, 'link', 'add', 'b0', 'type', 'bridge']);
        if (b.status !== 0) missing.push(`bridge support (${String(b.stderr).trim()})`);
        const u = run(['ip', 'netns', 'exec', ns, 'unshare', '--mount', '--propagation', 'private', '--', 'sh', '-c', 'mount -t tmpfs tsf-e2e-probe /mnt']);
        if (u.status !== 0) missing.push(`private mount namespaces (${String(u.stderr).trim()})`);
      }
    } finally {
      deleteNamespace(ns);
    }
  }
  return missing;
}

export const HOW_TO_ENABLE =
  'run the end-to-end tests as root on Linux with: apt-get install -y openssh-server openssh-client sshpass nftables iproute2 rsyslog procps util-linux ' +
  '(CI=true turns a missing prerequisite into a failure)';

/** The lab; see the top of this file. */
export class Lab {
  readonly id: string;
  readonly dir: string;
  readonly ns: Record<Role | 'bridge', string>;
  private readonly procs: LabProcess[] = [];
  private disposed = false;
  private daemons = 0;

  private constructor() {
    this.id = randomBytes(4).toString('hex');
    this.dir = mkdtempSync(path.join(tmpdir(), `${LAB_PREFIX}${this.id}-`));
    this.ns = {
      server: `${LAB_PREFIX}server-${this.id}`,
      attacker: `${LAB_PREFIX}attacker-${this.id}`,
      admin: `${LAB_PREFIX}admin-${this.id}`,
      bridge: `${LAB_PREFIX}br-${this.id}`,
    };
  }

  /** Creates the namespaces, the bridge and the addresses, and checks that every role reaches the server. */
  static async create(): Promise<Lab> {
    reapStaleLabs();
    const lab = new Lab();
    live.add(lab);
    installExitHandlers();
    const owner: OwnerRecord = { pid: process.pid, namespaces: Object.values(lab.ns) };
    writeFileSync(path.join(lab.dir, OWNER_FILE), JSON.stringify(owner));
    try {
      lab.build();
      await lab.waitForNetwork();
    } catch (e) {
      await lab.dispose();
      throw e;
    }
    return lab;
  }

  /** Runs `fn` with a fresh lab and always disposes of it. */
  static async with<T>(fn: (lab: Lab) => Promise<T>): Promise<T> {
    const lab = await Lab.create();
    try {
      return await fn(lab);
    } finally {
      await lab.dispose();
    }
  }

  addr(role: Role, family: Family): string {
    return ADDR[role][family];
  }

  private build(): void {
    const br = this.ns.bridge;
    for (const ns of Object.values(this.ns)) {
      must(['ip', 'netns', 'add', ns]);
      // No duplicate address detection: addresses are usable at once (nodad below does the same per address).
      must(['ip', 'netns', 'exec', ns, 'sysctl', '-q', '-w', 'net.ipv6.conf.all.accept_dad=0', 'net.ipv6.conf.default.accept_dad=0']);
      must(['ip', '-n', ns, 'link', 'set', 'lo', 'up']);
    }
    must(['ip', '-n', br, 'link', 'add', 'br0', 'type', 'bridge', 'stp_state', '0', 'forward_delay', '0', 'mcast_snooping', '0']);
    // The bridge namespace only switches frames; no addresses, no router advertisements, no IPv6 on its ports.
    must(['ip', 'netns', 'exec', br, 'sysctl', '-q', '-w', 'net.ipv6.conf.all.disable_ipv6=1', 'net.ipv6.conf.default.disable_ipv6=1']);
    must(['ip', '-n', br, 'link', 'set', 'br0', 'up']);
    for (const role of ROLES) {
      const port = `p-${role}`;
      must(['ip', '-n', br, 'link', 'add', port, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', this.ns[role]]);
      must(['ip', '-n', br, 'link', 'set', port, 'master', 'br0']);
      must(['ip', '-n', br, 'link', 'set', port, 'up']);
      const ns = this.ns[role];
      must(['ip', '-n', ns, 'addr', 'add', `${ADDR[role][4]}/24`, 'dev', 'eth0']);
      must(['ip', '-n', ns, 'addr', 'add', `${ADDR[role][6]}/64`, 'dev', 'eth0', 'nodad']);
      must(['ip', '-n', ns, 'link', 'set', 'eth0', 'up']);
    }
  }

  private async waitForNetwork(): Promise<void> {
    // Addresses are there at once (nodad); wait until the links are up and not "tentative".
    const deadline = Date.now() + 5000;
    for (const role of ROLES) {
      for (;;) {
        const r = run(['ip', '-n', this.ns[role], '-o', 'addr', 'show', 'dev', 'eth0']);
        const s = String(r.stdout);
        if (s.includes(ADDR[role][4] + '/') && s.includes(ADDR[role][6] + '/') && !s.includes('tentative')) break;
        if (Date.now() > deadline) throw new Error(`lab: addresses of ${role} not ready:\n${s}`);
        await sleep(20);
      }
    }
  }

  /** argv prefixed with `ip netns exec <ns>` (and the private-mounts wrapper when asked). */
  private wrap(role: Role, argv: string[], opts: ExecOptions = {}): string[] {
    const pm = opts.privateMounts;
    const inner = pm ? ['unshare', '--mount', '--propagation', 'private', '--', 'sh', PRIVATE_MOUNTS, this.dir, pm.devLog ?? '-', '--', ...argv] : argv;
    return ['ip', 'netns', 'exec', this.ns[role], ...inner];
  }

  private check(): void {
    if (this.disposed) throw new Error('lab already disposed');
  }

  /** Runs argv (no shell) inside the role's namespace and waits for it. */
  exec(role: Role, argv: string[], opts: ExecOptions = {}): Promise<ExecResult> {
    this.check();
    const full = this.wrap(role, argv, opts);
    debug(`${role}$ ${argv.join(' ')}`);
    const start = Date.now();
    return new Promise((resolve) => {
      const child = spawn(full[0]!, full.slice(1), {
        cwd: opts.cwd ?? REPO,
        env: { ...process.env, ...opts.env },
        stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
      });
      let stdout = '';
      let stderr = '';
      let timedOut = false;
      child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
      child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
      if (opts.input !== undefined) child.stdin!.end(opts.input);
      const timer = setTimeout(() => {
        timedOut = true;
        child.kill('SIGKILL');
      }, opts.timeoutMs ?? 30_000);
      const finish = (code: number | null, signal: NodeJS.Signals | null) => {
        clearTimeout(timer);
        const r: ExecResult = { argv, code, signal, stdout, stderr, timedOut, ms: Date.now() - start };
        debug(`${role}$ ${argv[0]} -> ${code ?? signal} in ${r.ms} ms${stderr ? `: ${stderr.trim().slice(0, 300)}` : ''}`);
        resolve(r);
      };
      child.on('error', (e) => {
        stderr += `spawn error: ${e.message}\n`;
        finish(null, null);
      });
      child.on('close', finish);
    });
  }

  /** Starts argv (no shell) inside the role's namespace; tracked and killed at dispose. */
  spawn(role: Role, argv: string[], opts: Omit<ExecOptions, 'timeoutMs' | 'input'> & { name?: string } = {}): LabProcess {
    this.check();
    const full = this.wrap(role, argv, opts);
    debug(`${role}& ${argv.join(' ')}`);
    // `ip netns exec`, `unshare` (without --fork) and the wrapper all exec: the child's PID is the command's PID.
    const child = spawn(full[0]!, full.slice(1), {
      cwd: opts.cwd ?? REPO,
      env: { ...process.env, ...opts.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const p = new LabProcess(role, argv, child, opts.name ?? `${role}:${path.basename(argv[0]!)}`);
    this.procs.push(p);
    return p;
  }

  // ---------------------------------------------------------------- sshd

  /**
   * Starts sshd in the server namespace, listening on 0.0.0.0:22 and [::]:22, password authentication on, no PAM.
   *   'file':   `sshd -D -E <dir>/sshd-auth.log`: lines without a syslog header (`Failed password for ...`).
   *   'syslog': sshd logs through syslog(3) to /dev/log, which (in its private mount namespace only) is the socket of
   *             a private rsyslogd writing RFC 3339 lines (`2026-11-21T06:48:20.240296+01:00 host sshd[9205]: ...`)
   *             to <dir>/syslog-auth.log. rsyslogd runs with TZ=`syslogTz` (default Europe/Berlin when tzdata is
   *             installed, so the offset is not +00:00).
   * Resolves once sshd listens on both families and answers with its banner from the server namespace.
   */
  async startSshd(logging: SshdLogging, opts: { syslogTz?: string; extraConfig?: string[] } = {}): Promise<Sshd> {
    this.check();
    const dir = path.join(this.dir, `sshd-${logging}`);
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const hostKey = path.join(dir, 'ssh_host_ed25519_key');
    must(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', 'tsf-e2e', '-f', hostKey]);
    const config = path.join(dir, 'sshd_config');
    writeFileSync(
      config,
      [
        'Port 22',
        'ListenAddress 0.0.0.0',
        'ListenAddress ::',
        `HostKey ${hostKey}`,
        'PidFile none',
        'PasswordAuthentication yes',
        'KbdInteractiveAuthentication no',
        'PubkeyAuthentication no',
        'AuthorizedKeysFile none',
        // No PAM in a test namespace; root (locked password "*" on most images) and nonexistent users fail
        // password authentication without any account being created.
        'UsePAM no',
        'PermitRootLogin yes',
        'UseDNS no',
        'LogLevel INFO',
        'SyslogFacility AUTH',
        // Many quick attempts from one address must all reach authentication.
        'MaxStartups 200:30:400',
        'MaxAuthTries 6',
        'LoginGraceTime 20',
        ...(opts.extraConfig ?? []),
        '',
      ].join('\n'),
    );
    // Checked where it will run: with the private /run that holds /run/sshd (the host's may have none).
    const sshdTest = (f: string) => run(this.wrap('server', [SSHD, '-t', '-f', f], { privateMounts: {} }));
    const t = sshdTest(config);
    if (t.status !== 0) throw new Error(`sshd -t rejects the lab config: ${String(t.stderr)}`);
    // OpenSSH 9.8+ penalises addresses that fail authentication by refusing their connections for a while; here
    // only TSFilter may keep anyone out (the admin fails as often as the attacker and must still connect).
    const withPenaltiesOff = readFileSync(config, 'utf8') + 'PerSourcePenalties no\n';
    writeFileSync(config + '.probe', withPenaltiesOff);
    if (sshdTest(config + '.probe').status === 0) writeFileSync(config, withPenaltiesOff);
    rmSync(config + '.probe', { force: true });

    let logFile: string;
    let syslog: LabProcess | undefined;
    let proc: LabProcess;
    if (logging === 'file') {
      logFile = path.join(this.dir, 'sshd-auth.log');
      proc = this.spawn('server', [SSHD, '-D', '-f', config, '-E', logFile], { privateMounts: {}, name: 'sshd(file)' });
    } else {
      logFile = path.join(this.dir, 'syslog-auth.log');
      const work = path.join(dir, 'rsyslog-work');
      mkdirSync(work, { recursive: true });
      const sock = path.join(dir, 'log.sock');
      const conf = path.join(dir, 'rsyslog.conf');
      writeFileSync(
        conf,
        [
          `global(workDirectory="${work}")`,
          // Only this socket: no kernel log, no /dev/log of the host, no network input.
          `module(load="imuxsock" SysSock.Name="${sock}" SysSock.RateLimit.Interval="0" SysSock.UsePIDFromSystem="on")`,
          // RSYSLOG_FileFormat: RFC 3339 timestamps with microseconds and the UTC offset (Debian 12's default look).
          'module(load="builtin:omfile" Template="RSYSLOG_FileFormat")',
          `auth,authpriv.* action(type="omfile" file="${logFile}")`,
          '',
        ].join('\n'),
      );
      const n = run(['rsyslogd', '-N1', '-f', conf]);
      if (n.status !== 0) throw new Error(`rsyslogd -N1 rejects the lab config: ${String(n.stderr)}`);
      const tz = opts.syslogTz ?? (existsSync('/usr/share/zoneinfo/Europe/Berlin') ? 'Europe/Berlin' : 'UTC');
      syslog = this.spawn('server', ['rsyslogd', '-n', '-f', conf, '-i', path.join(dir, 'rsyslogd.pid')], {
        privateMounts: {},
        env: { TZ: tz },
        name: 'rsyslogd',
      });
      await until(() => existsSync(sock), 10_000, () => `rsyslogd socket ${sock}:\n${syslog!.err}`, syslog);
      proc = this.spawn('server', [SSHD, '-D', '-f', config], { privateMounts: { devLog: sock }, name: 'sshd(syslog)' });
    }
    const read = () => (existsSync(logFile) ? readFileSync(logFile, 'utf8') : '');
    await until(
      () => /Server listening on 0\.0\.0\.0 port 22\./.test(read()) && /Server listening on :: port 22\./.test(read()),
      10_000,
      () => `sshd (${logging}) to listen; log so far:\n${read()}\nsshd stderr:\n${proc.err}${syslog ? `\nrsyslogd stderr:\n${syslog.err}` : ''}`,
      proc,
    );
    for (const f of [4, 6] as const) {
      const r = await this.probe('server', f, 22, 3000);
      if (!r.ok || !r.banner.startsWith('SSH-2.0-')) throw new Error(`sshd does not answer on ${ADDR.server[f]} from the server namespace: ${JSON.stringify(r)}`);
    }
    return { logging, logFile, process: proc, syslog, read };
  }

  // ---------------------------------------------------------------- attack and probe helpers

  /**
   * One failed password login (sshpass + ssh, NumberOfPasswordPrompts=1) from the role's namespace to the server over
   * `family`. As a nonexistent user sshd logs `Invalid user U from IP port P`, `Failed password for invalid user U
   * from IP port P ssh2` and `Connection closed by invalid user U IP port P [preauth]`; as root with a wrong password
   * `Failed password for root from IP port P ssh2` and `Connection closed by authenticating user root IP port P
   * [preauth]`. Exit code 255 either way (5 from sshpass on some versions); a banned client times out after 3 s.
   */
  failLogin(role: Role, family: Family, user: string, password: string, opts: { timeoutMs?: number } = {}): Promise<ExecResult> {
    return this.exec(
      role,
      [
        'sshpass',
        '-p',
        password,
        'ssh',
        '-o', 'StrictHostKeyChecking=no',
        '-o', 'UserKnownHostsFile=/dev/null',
        '-o', 'GlobalKnownHostsFile=/dev/null',
        '-o', 'PreferredAuthentications=password',
        '-o', 'PubkeyAuthentication=no',
        '-o', 'ConnectTimeout=3',
        '-o', 'NumberOfPasswordPrompts=1',
        '-o', 'LogLevel=ERROR',
        '-F', '/dev/null',
        `${user}@${ADDR.server[family]}`,
        'true',
      ],
      { timeoutMs: opts.timeoutMs ?? 15_000, env: { HOME: this.dir } },
    );
  }

  /**
   * A TCP connection from the role's namespace to the server: connected (and, within the time left, sshd's banner
   * line), or the error (ETIMEDOUT for DROP, ECONNREFUSED/EHOSTUNREACH etc. for REJECT).
   */
  async probe(role: Role, family: Family, port = 22, timeoutMs = 1500): Promise<{ ok: boolean; error: string; banner: string; ms: number }> {
    const script = `
      const net = require('node:net');
      const [host, port, ms] = process.argv.slice(1);
      const t0 = Date.now();
      let banner = '', connected = false, done = false;
      const finish = (ok, error) => {
        if (done) return; done = true;
        process.stdout.write(JSON.stringify({ ok, error, banner: banner.split('\\r\\n')[0].slice(0, 100), ms: Date.now() - t0 }));
        s.destroy(); process.exit(0);
      };
      const s = net.connect({ host, port: Number(port) });
      s.setEncoding('latin1');
      s.on('connect', () => { connected = true; });
      s.on('data', (d) => { banner += d; if (banner.includes('\\n')) finish(true, ''); });
      s.on('error', (e) => finish(connected, connected ? '' : (e.code || e.message)));
      s.on('close', () => finish(connected, connected ? '' : 'closed'));
      setTimeout(() => finish(connected, connected ? '' : 'ETIMEDOUT'), Number(ms));
    `;
    const r = await this.exec(role, [process.execPath, '-e', script, ADDR.server[family], String(port), String(timeoutMs)], {
      timeoutMs: timeoutMs + 10_000,
    });
    try {
      return JSON.parse(r.stdout) as { ok: boolean; error: string; banner: string; ms: number };
    } catch {
      throw new Error(`probe from ${role} failed to run (${r.code ?? r.signal}): ${r.stdout} ${r.stderr}`);
    }
  }

  /** True when a TCP connection from the role's namespace to the server's port (over `family`) succeeds in time. */
  async canConnect(role: Role, family: Family, port = 22, timeoutMs = 1500): Promise<boolean> {
    return (await this.probe(role, family, port, timeoutMs)).ok;
  }

  /**
   * Polls canConnect until it returns `want` (a ban or unban takes effect a moment after the log line); resolves to
   * the last probe so a failing assertion can show it.
   */
  async waitConnect(role: Role, family: Family, want: boolean, ms = 5000, port = 22): Promise<{ ok: boolean; error: string; banner: string; ms: number }> {
    const deadline = Date.now() + ms;
    for (;;) {
      const r = await this.probe(role, family, port, want ? 1500 : 1000);
      if (r.ok === want || Date.now() > deadline) return r;
      await sleep(100);
    }
  }

  // ---------------------------------------------------------------- nftables (server namespace)

  /** `nft <args>` inside the server namespace. */
  nft(args: string[], opts: ExecOptions = {}): Promise<ExecResult> {
    return this.exec('server', ['nft', ...args], opts);
  }

  /** The text of `nft list table inet tsfilter` in the server namespace ('' when there is no such table). */
  async nftTable(): Promise<string> {
    const r = await this.nft(['list', 'table', 'inet', 'tsfilter']);
    return r.code === 0 ? r.stdout : '';
  }

  /** Whether `ip` is an element of a set in the server's `inet tsfilter` table. */
  async nftHasElement(ip: string): Promise<boolean> {
    // The allow sets hold ignored_ips (the admin, in these tests): an address there is let through, not banned.
    const t = (await this.nftTable()).replace(/set allow[46] \{[\s\S]*?\n\t\}/g, '');
    const esc = ip.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    return new RegExp(`elements = \\{[^}]*(?<![0-9a-f:.])${esc}(?![0-9a-f:.])`, 's').test(t);
  }

  // ---------------------------------------------------------------- TSFilter

  /**
   * Writes a config for `tsfilter run` in the server namespace: config/config.default.json with data_dir, the control
   * socket and the store in a fresh directory of the lab, only the ssh rule (following `sshd.logFile`, no journal),
   * firewall "nftables", nftables.check_interval 1, the admin's addresses added to ignored_ips, then `overrides`.
   */
  writeTsfilterConfig(sshd: Sshd, overrides: TsfilterOverrides = {}): { configFile: string; dataDir: string } {
    const n = ++this.daemons;
    const dataDir = overrides.dataDir ?? path.join(this.dir, `tsfilter-${n}`);
    mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    const cfg = JSON.parse(readFileSync(path.join(REPO, 'config/config.default.json'), 'utf8'));
    const s = cfg.settings;
    s.data_dir = dataDir;
    s.control_socket = path.join(dataDir, 'tsfilter.sock');
    s.firewall = 'nftables';
    s.nftables = { ...(s.nftables ?? {}), check_interval: 1 };
    s.ignored_ips = [...(s.ignored_ips ?? []), ADDR.admin[4], ADDR.admin[6]];
    const ssh = s.rules.ssh;
    ssh.log_files = sshd.logFile;
    delete ssh.journal;
    Object.assign(ssh, overrides.rule ?? {});
    s.rules = { ssh };
    Object.assign(s, overrides.settings ?? {});
    const configFile = path.join(dataDir, 'config.json');
    writeFileSync(configFile, JSON.stringify(cfg, null, 2));
    return { configFile, dataDir };
  }

  /** `tsfilter run --config <file>` inside the server namespace (tracked). */
  spawnTsfilter(configFile: string): LabProcess {
    return this.spawn('server', [process.execPath, '--import', 'tsx', CLI, 'run', '--config', configFile], {
      env: { TZ: 'UTC', SSH_CLIENT: undefined, SSH_CONNECTION: undefined },
      name: 'tsfilter',
    });
  }

  /** Starts `tsfilter run` (see writeTsfilterConfig) and waits for `msg=started`. */
  async startTsfilter(sshd: Sshd, overrides: TsfilterOverrides = {}): Promise<TsfilterDaemon> {
    const { configFile, dataDir } = this.writeTsfilterConfig(sshd, overrides);
    const d = new TsfilterDaemon(this, configFile, dataDir, this.spawnTsfilter(configFile));
    await d.waitFor(/msg=started/, 30_000);
    return d;
  }

  /** `tsfilter <args>` (the CLI, from source) inside the server namespace. */
  tsfilterCli(args: string[], opts: ExecOptions = {}): Promise<ExecResult> {
    return this.exec('server', [process.execPath, '--import', 'tsx', CLI, ...args], {
      timeoutMs: 30_000,
      ...opts,
      env: { TZ: 'UTC', SSH_CLIENT: undefined, SSH_CONNECTION: undefined, ...opts.env },
    });
  }

  // ---------------------------------------------------------------- cleanup

  /** Kills every process, deletes the namespaces and (unless TSF_E2E_KEEP=1) the temp directory. Idempotent. */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    // Daemons and servers first, gently (SIGTERM), then anything that does not go within 3 s is SIGKILLed.
    await Promise.all(this.procs.map((p) => p.stop('SIGTERM', 3000).catch(() => undefined)));
    this.cleanupSync();
  }

  /** Synchronous cleanup for exit and signal handlers. */
  disposeSync(): void {
    this.disposed = true;
    for (const p of this.procs) {
      if (p.running && p.pid !== undefined) {
        try {
          process.kill(p.pid, 'SIGKILL');
        } catch {
          /* gone */
        }
      }
    }
    this.cleanupSync();
  }

  private cleanupSync(): void {
    // Per-connection sshd children, a probe still running, ...: everything left in the lab's namespaces.
    for (const ns of Object.values(this.ns)) killNamespacePids(ns);
    for (const ns of Object.values(this.ns)) deleteNamespace(ns);
    live.delete(this);
    const left = Object.values(this.ns).filter(netnsExists);
    if (!KEEP && left.length === 0) rmSync(this.dir, { recursive: true, force: true });
    else if (KEEP) process.stderr.write(`[e2e] kept ${this.dir}\n`);
    if (left.length) process.stderr.write(`[e2e] could not delete namespaces ${left.join(', ')}; ${this.dir} keeps their owner record\n`);
  }

  /** Whether every namespace of this lab is gone (for tests of the cleanup). */
  namespacesGone(): boolean {
    return Object.values(this.ns).every((ns) => !netnsExists(ns));
  }
}

/** Polls `cond` every 20 ms; fails after `ms` (or as soon as `proc` exits) with what(). */
export async function until(cond: () => boolean, ms: number, what: () => string, proc?: LabProcess): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (proc && !proc.running) throw new Error(`${proc.name} exited while waiting for ${what()}`);
    if (Date.now() > deadline) throw new Error(`timed out (${ms} ms) waiting for ${what()}`);
    await sleep(20);
  }
}
