import os from 'node:os';
import { normalizeIp } from './ip.ts';
import { readTcpSockets, scanProcesses, TCP_ESTABLISHED, TCP_LISTEN, type ProcInfo } from './proc-net.ts';

/*
 * "Never lock the owner out" (issue 3, section 3): addresses that are never banned, on top of settings.ignored_ips.
 *
 *  - loopback (127.0.0.0/8, ::1) and every address of the host's own interfaces;
 *  - with protect_sessions: the peers of current, AUTHENTICATED SSH sessions, and the SSH_CLIENT / SSH_CONNECTION
 *    client of whoever started TSFilter.
 *
 * Why only authenticated sessions: an attacker guessing passwords holds an established TCP connection to sshd
 * while each failure is logged (sshd allows several attempts per connection and keeps it open for LoginGraceTime).
 * Protecting every connected peer would make every attacker immune. So a connection counts only when one of the
 * sshd processes holding its socket has the title OpenSSH gives a post-authentication child: `sshd: USER` or
 * `sshd: USER@TTYS` (`sshd-session: ...` since OpenSSH 9.8). Pre-authentication processes are titled
 * `sshd: [accepted]`, `sshd: USER [priv]`, `sshd: USER [net]` or `[preauth]`, and the listener `... [listener] ...`
 * (or its command line on old versions). Titles are set by sshd itself, not by the client: a remote user cannot
 * forge them without first logging in.
 *
 * Only when the sshd processes cannot be inspected (not root, hidepid, no sshd visible) does a refresh fall back to
 * the peers of every established connection to port 22 and `extraSshPorts`, marked "unverified" in why().
 */

/** Names (comm) of OpenSSH server processes: the listener, the per-connection session (9.8+) and auth (10.0+). */
const SSHD_COMMS: ReadonlySet<string> = new Set(['sshd', 'sshd-session', 'sshd-auth']);

/** Title of a post-authentication sshd child: `sshd: alice`, `sshd: alice@pts/0,pts/1`, `sshd-session: alice@notty`. */
const AUTHENTICATED_TITLE = /^sshd(?:-session)?: [^\s@[\]]+(?:@\S*)?$/;

export const WHY_LOOPBACK = 'loopback';
export const WHY_LOCAL = 'local address';
export const WHY_SSH_SESSION = 'ssh session';
export const WHY_SSH_UNVERIFIED = 'ssh connection (unverified: sshd processes not readable)';
export const WHY_SSH_CLIENT = 'SSH_CLIENT of the user who started tsfilter';

export interface ProtectedAddressesOptions {
  /** settings.protect_sessions: protect SSH session peers and the starter's SSH_CLIENT. */
  protectSessions: boolean;
  /** Ports sshd listens on that the /proc scan may not see (socket activation); also used by the fallback. */
  extraSshPorts?: number[];
  /** Root of the proc filesystem; '/proc' by default. Tests point it at fixture files. */
  procRoot?: string;
  /** Environment to read SSH_CLIENT / SSH_CONNECTION from, at construction; process.env by default. */
  env?: NodeJS.ProcessEnv;
  /** Period of the background refresh started by start(); 10 s by default. */
  refreshMs?: number;
  /** has() refreshes first when the last refresh is older than this; 1 s by default. */
  maxAgeMs?: number;
  /** Source of the host's interface addresses; os.networkInterfaces by default (tests replace it). */
  networkInterfaces?: () => NodeJS.Dict<os.NetworkInterfaceInfo[]>;
}

export interface SshStatus {
  /** 'proc': sshd's ports and sessions were read from /proc; 'fallback': port 22 + extraSshPorts, unverified. */
  source: 'proc' | 'fallback';
  ports: number[];
}

export class ProtectedAddresses {
  private readonly protectSessions: boolean;
  private readonly extraSshPorts: number[];
  private readonly procRoot: string;
  private readonly refreshMs: number;
  private readonly maxAgeMs: number;
  private readonly interfaces: () => NodeJS.Dict<os.NetworkInterfaceInfo[]>;
  /** Addresses fixed at construction (the starter's SSH client). */
  private readonly fixed = new Map<string, string>();
  /** Addresses found by the last refresh. */
  private current = new Map<string, string>();
  private lastRefresh = -Infinity;
  private timer: NodeJS.Timeout | null = null;
  private ssh: SshStatus = { source: 'fallback', ports: [] };

  constructor(opts: ProtectedAddressesOptions) {
    this.protectSessions = opts.protectSessions;
    this.extraSshPorts = (opts.extraSshPorts ?? []).filter((p) => Number.isInteger(p) && p > 0 && p < 65536);
    this.procRoot = opts.procRoot ?? '/proc';
    this.refreshMs = opts.refreshMs ?? 10_000;
    this.maxAgeMs = opts.maxAgeMs ?? 1_000;
    this.interfaces = opts.networkInterfaces ?? os.networkInterfaces;
    if (this.protectSessions) {
      const env = opts.env ?? process.env;
      for (const v of [env.SSH_CLIENT, env.SSH_CONNECTION]) {
        const first = v?.trim().split(/\s+/)[0];
        const ip = first ? normalizeIp(first) : null;
        if (ip !== null && !isLoopback(ip)) this.fixed.set(ip, WHY_SSH_CLIENT);
      }
    }
  }

  /** Re-reads interface addresses and (with protectSessions) SSH sessions. Synchronous; never throws. */
  refresh(): void {
    const next = new Map<string, string>();
    try {
      for (const list of Object.values(this.interfaces())) {
        for (const a of list ?? []) {
          const ip = normalizeIp(a.address);
          if (ip !== null && !isLoopback(ip)) next.set(ip, WHY_LOCAL);
        }
      }
    } catch {
      // getifaddrs failing leaves loopback, sessions and the previous interface addresses.
      for (const [ip, why] of this.current) if (why === WHY_LOCAL) next.set(ip, why);
    }
    if (this.protectSessions) {
      try {
        this.readSessions(next);
      } catch {
        // Never throw from a refresh; keep the previous sessions rather than forget them.
        for (const [ip, why] of this.current) if (!next.has(ip)) next.set(ip, why);
      }
    }
    this.current = next;
    this.lastRefresh = Date.now();
  }

  private readSessions(into: Map<string, string>): void {
    const sockets = readTcpSockets(this.procRoot);
    const { procs, unreadable } = scanProcesses(this.procRoot, SSHD_COMMS);
    const verified = procs.length > 0 && unreadable === 0;

    const listenInodes = new Map<number, number>();
    for (const s of sockets) if (s.state === TCP_LISTEN && s.inode !== 0) listenInodes.set(s.inode, s.localPort);

    const ports = new Set<number>(this.extraSshPorts);
    const sessionInodes = new Set<number>();
    let found = 0;
    for (const p of procs) {
      if (isAuthenticated(p)) {
        for (const i of p.sockets) sessionInodes.add(i);
      } else {
        // A remote forward (ssh -R) listens in the authenticated child, so only non-session processes count.
        for (const i of p.sockets) {
          const port = listenInodes.get(i);
          if (port !== undefined) {
            ports.add(port);
            found++;
          }
        }
      }
    }
    // No listener found (socket activation with Accept=yes: systemd holds it, or sshd not visible): assume 22.
    if (found === 0) ports.add(22);
    this.ssh = { source: verified ? 'proc' : 'fallback', ports: [...ports].sort((a, b) => a - b) };

    for (const s of sockets) {
      if (s.state !== TCP_ESTABLISHED || !ports.has(s.localPort)) continue;
      if (verified) {
        if (sessionInodes.has(s.inode)) into.set(s.remoteIp, WHY_SSH_SESSION);
      } else if (!into.has(s.remoteIp)) {
        into.set(s.remoteIp, WHY_SSH_UNVERIFIED);
      }
    }
  }

  /** Starts the periodic refresh (unref'd: it never keeps the process alive). Refreshes once at once. */
  start(): void {
    if (this.timer) return;
    this.refresh();
    this.timer = setInterval(() => this.refresh(), this.refreshMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** Whether `ip` (normalised text) must never be banned. Refreshes first if the last refresh is stale. */
  has(ip: string): boolean {
    return this.why(ip) !== null;
  }

  /** Why `ip` (normalised text) is protected, or null when it is not. */
  why(ip: string): string | null {
    if (isLoopback(ip)) return WHY_LOOPBACK;
    if (Date.now() - this.lastRefresh > this.maxAgeMs) this.refresh();
    return this.current.get(ip) ?? this.fixed.get(ip) ?? null;
  }

  /** Every protected address with its reason; loopback as the prefixes 127.0.0.0/8 and ::1. */
  list(): { ip: string; why: string }[] {
    if (Date.now() - this.lastRefresh > this.maxAgeMs) this.refresh();
    const out = [
      { ip: '127.0.0.0/8', why: WHY_LOOPBACK },
      { ip: '::1', why: WHY_LOOPBACK },
    ];
    const seen = new Set<string>();
    for (const [ip, why] of this.current) {
      seen.add(ip);
      out.push({ ip, why });
    }
    for (const [ip, why] of this.fixed) if (!seen.has(ip)) out.push({ ip, why });
    return out;
  }

  /** How SSH sessions were found by the last refresh (for `tsfilter status` and a warning on fallback). */
  sshStatus(): SshStatus {
    return { source: this.ssh.source, ports: [...this.ssh.ports] };
  }
}

export function isLoopback(ip: string): boolean {
  return ip === '::1' || ip.startsWith('127.');
}

function isAuthenticated(p: ProcInfo): boolean {
  return AUTHENTICATED_TITLE.test(p.title);
}
