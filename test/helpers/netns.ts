/*
 * Network namespaces for tests and benches: firewall rules are only ever changed inside namespaces created here,
 * never in the host's own ruleset.
 *
 *   const lab = new NetnsLab('nft-packets');          // namespaces are named tsf-nft-packets-<role>-<random>
 *   try {
 *     const s = lab.ns('s');                          // created with lo up and IPv6 DAD off
 *     const c = lab.ns('c');
 *     lab.link(s, c, ['192.0.2.1/24', '2001:db8:1::1/64'], ['192.0.2.2/24', '2001:db8:1::2/64']);  // veth pair
 *     const srv = lab.spawn(s, ['node', '-e', '...']);  // tracked by PID, killed by dispose()
 *     const r = await lab.run(c, ['nft', 'list', 'ruleset'], { timeoutMs: 5000 });
 *   } finally {
 *     lab.dispose();                                   // kills what spawn() started, deletes the namespaces
 *   }
 *
 * API: netnsSupport() (can we?), requireNetns(t) (skip, or fail on CI), NetnsLab: ns(role), link(a, b, addrsA,
 * addrsB), bridge(members), run(ns, argv, opts), runSync(ns, argv), spawn(ns, argv), dispose().
 * Addresses must be documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32).
 * dispose() also runs on process exit/SIGINT/SIGTERM, so an interrupted test leaves nothing behind.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import type { TestContext } from 'node:test';
import { requirePrereq } from './prereq.ts';

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

export interface RunOptions {
  /** SIGKILL the command after this long; the result then has timedOut. Default 30 s. */
  timeoutMs?: number;
  input?: string;
}

let cached: { ok: boolean; why: string } | null = null;

/** Whether this process can create namespaces and run nft in them (root, iproute2, nft, netns support). */
export function netnsSupport(): { ok: boolean; why: string } {
  if (cached) return cached;
  const has = (cmd: string, args: string[]) => spawnSync(cmd, args, { stdio: 'ignore' }).status === 0;
  if (!has('ip', ['-V'])) cached = { ok: false, why: 'the ip command (iproute2)' };
  else if (!has('nft', ['--version'])) cached = { ok: false, why: 'the nft command (nftables)' };
  else {
    const name = `tsf-probe-${randomBytes(4).toString('hex')}`;
    const r = spawnSync('ip', ['netns', 'add', name], { encoding: 'utf8' });
    if (r.status !== 0) cached = { ok: false, why: `network namespace support (ip netns add: ${(r.stderr || '').trim() || 'needs root'})` };
    else {
      const n = spawnSync('ip', ['netns', 'exec', name, 'nft', 'list', 'ruleset'], { encoding: 'utf8' });
      spawnSync('ip', ['netns', 'del', name], { stdio: 'ignore' });
      cached = n.status === 0 ? { ok: true, why: '' } : { ok: false, why: `nft inside a namespace (${(n.stderr || '').trim()})` };
    }
  }
  return cached;
}

/** For a test: true when namespaces work; otherwise skips it (off CI) or fails it (CI=true), saying why. */
export function requireNetns(t: TestContext): boolean {
  const s = netnsSupport();
  return requirePrereq(t, s.ok, s.why || 'network namespace support', 'run as root with iproute2 and nftables installed (apt-get install -y iproute2 nftables)');
}

const live = new Set<NetnsLab>();
let hooked = false;
function hookExit(): void {
  if (hooked) return;
  hooked = true;
  const all = () => {
    for (const l of live) l.dispose();
  };
  process.on('exit', all);
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      all();
      process.kill(process.pid, sig);
    });
  }
}

function must(argv: string[]): string {
  const r = spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${argv.join(' ')} failed (exit ${r.status}): ${(r.stderr || r.error?.message || '').trim()}`);
  return r.stdout;
}

const DOC_RANGE = /^(192\.0\.2\.|198\.51\.100\.|203\.0\.113\.|2001:db8:)/i;

/** A set of namespaces and processes owned by one test; dispose() removes all of them. */
export class NetnsLab {
  readonly id = randomBytes(3).toString('hex');
  private readonly names: string[] = [];
  private readonly procs: ChildProcess[] = [];
  private links = 0;

  /** purpose: a short word naming the test ([a-z0-9-]); namespaces are tsf-<purpose>-<role>-<id>. */
  constructor(readonly purpose: string) {
    if (!/^[a-z0-9-]{1,20}$/.test(purpose)) throw new Error(`bad namespace purpose ${JSON.stringify(purpose)}`);
    live.add(this);
    hookExit();
  }

  /** Creates a namespace (lo up, IPv6 DAD off) and returns its name. */
  ns(role: string): string {
    if (!/^[a-z0-9]{1,8}$/.test(role)) throw new Error(`bad namespace role ${JSON.stringify(role)}`);
    const name = `tsf-${this.purpose}-${role}-${this.id}`;
    must(['ip', 'netns', 'add', name]);
    this.names.push(name);
    must(['ip', '-n', name, 'link', 'set', 'lo', 'up']);
    for (const k of ['all', 'default']) spawnSync('ip', ['netns', 'exec', name, 'sysctl', '-qw', `net.ipv6.conf.${k}.accept_dad=0`], { stdio: 'ignore' });
    return name;
  }

  /** A veth pair between namespaces a and b (eth<N> on both sides), with these CIDR addresses, up. */
  link(a: string, b: string, addrsA: string[], addrsB: string[]): { ifA: string; ifB: string } {
    const n = this.links++;
    const ifA = `veth${n}a`;
    const ifB = `veth${n}b`;
    must(['ip', '-n', a, 'link', 'add', ifA, 'type', 'veth', 'peer', 'name', ifB, 'netns', b]);
    this.configure(a, ifA, addrsA);
    this.configure(b, ifB, addrsB);
    return { ifA, ifB };
  }

  /** A bridge (in its own namespace) joining every member, each with its addresses on a veth "eth0"-like link. */
  bridge(members: { ns: string; addrs: string[] }[]): string {
    const br = this.ns('br');
    must(['ip', '-n', br, 'link', 'add', 'br0', 'type', 'bridge', 'stp_state', '0', 'mcast_snooping', '0']);
    must(['ip', '-n', br, 'link', 'set', 'br0', 'up']);
    for (const m of members) {
      const { ifA } = this.link(br, m.ns, [], m.addrs);
      must(['ip', '-n', br, 'link', 'set', ifA, 'master', 'br0']);
    }
    return br;
  }

  /** Runs argv inside ns (no shell); never throws on a non-zero exit. */
  run(ns: string, argv: string[], opts: RunOptions = {}): Promise<RunResult> {
    return new Promise((resolve) => {
      const child = spawn('ip', ['netns', 'exec', ns, ...argv], { stdio: ['pipe', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      let timedOut = false;
      const timer = setTimeout(() => {
        timedOut = true;
        child.kill('SIGKILL');
      }, opts.timeoutMs ?? 30_000);
      child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
      child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
      child.on('error', (e) => {
        clearTimeout(timer);
        resolve({ code: null, stdout, stderr: stderr + e.message, timedOut });
      });
      child.on('close', (code) => {
        clearTimeout(timer);
        resolve({ code, stdout, stderr, timedOut });
      });
      child.stdin.on('error', () => {});
      child.stdin.end(opts.input ?? '');
    });
  }

  /** Runs argv inside ns synchronously; throws with its stderr on a non-zero exit; returns stdout. */
  runSync(ns: string, argv: string[], input?: string): string {
    const r = spawnSync('ip', ['netns', 'exec', ns, ...argv], { encoding: 'utf8', input });
    if (r.status !== 0) throw new Error(`[${ns}] ${argv.join(' ')} failed (exit ${r.status}): ${(r.stderr || '').trim()}`);
    return r.stdout;
  }

  /** Starts a long-running process inside ns; dispose() kills it by PID. */
  spawn(ns: string, argv: string[]): ChildProcess {
    const child = spawn('ip', ['netns', 'exec', ns, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.procs.push(child);
    return child;
  }

  /** Kills the processes spawn() started (by PID), then deletes the namespaces. Idempotent. */
  dispose(): void {
    for (const p of this.procs) {
      if (p.pid !== undefined && p.exitCode === null && p.signalCode === null) {
        try {
          process.kill(p.pid, 'SIGKILL');
        } catch {
          /* already gone */
        }
      }
    }
    this.procs.length = 0;
    for (const name of this.names.splice(0)) spawnSync('ip', ['netns', 'del', name], { stdio: 'ignore' });
    live.delete(this);
  }

  private configure(ns: string, ifname: string, addrs: string[]): void {
    for (const a of addrs) {
      if (!DOC_RANGE.test(a)) throw new Error(`${a}: use documentation ranges only (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32)`);
      must(['ip', '-n', ns, 'addr', 'add', a, 'dev', ifname, ...(a.includes(':') ? ['nodad'] : [])]);
    }
    must(['ip', '-n', ns, 'link', 'set', ifname, 'up']);
  }
}
