import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';

/*
 * The peer tools TSFilter is measured against: sshguard's log parser and fail2ban's fail2ban-regex with its sshd
 * filter, both from Debian's packages. Only the parser tools are ever run, on files; sshguard and fail2ban-server
 * would touch the host firewall, so they never run as daemons, and installing the packages must not start them.
 */

export const SSHG_PARSER = '/usr/libexec/sshguard/sshg-parser';
export const FAIL2BAN_REGEX = '/usr/bin/fail2ban-regex';
export const FAIL2BAN_SSHD_FILTER = '/etc/fail2ban/filter.d/sshd.conf';
const PACKAGES = ['sshguard', 'fail2ban'];
const POLICY_RC_D = '/usr/sbin/policy-rc.d';
/** Process names of the daemons the packages ship (fail2ban-server runs as python3: matched on its cmdline). */
const DAEMON = /(^|\/)(sshguard|sshg-\w+|fail2ban-server)(\s|$)/;

export interface Peer {
  name: 'sshguard' | 'fail2ban';
  /** The tool that is run. */
  path: string;
  /** Debian package version, or the tool's own --version. */
  version: string;
}

export interface Peers {
  sshguard: Peer | null;
  fail2ban: Peer | null;
  /** Why a peer is missing or what the install did, for the report. */
  notes: string[];
}

function pkgVersion(pkg: string): string | null {
  const r = spawnSync('dpkg-query', ['-W', '-f', '${Version}', pkg], { encoding: 'utf8' });
  return r.status === 0 && r.stdout.trim() !== '' ? r.stdout.trim() : null;
}

export function detectPeers(): Peers {
  const notes: string[] = [];
  let sshguard: Peer | null = null;
  let fail2ban: Peer | null = null;
  if (existsSync(SSHG_PARSER)) sshguard = { name: 'sshguard', path: SSHG_PARSER, version: pkgVersion('sshguard') ?? 'unknown' };
  else notes.push(`sshguard: ${SSHG_PARSER} not found (Debian package sshguard)`);
  if (existsSync(FAIL2BAN_REGEX) && existsSync(FAIL2BAN_SSHD_FILTER)) {
    let version = pkgVersion('fail2ban');
    if (version === null) {
      const r = spawnSync(FAIL2BAN_REGEX, ['--version'], { encoding: 'utf8' });
      version = r.stdout.trim().split('\n')[0] ?? 'unknown';
    }
    fail2ban = { name: 'fail2ban', path: FAIL2BAN_REGEX, version };
  } else notes.push(`fail2ban: ${FAIL2BAN_REGEX} or ${FAIL2BAN_SSHD_FILTER} not found (Debian package fail2ban)`);
  return { sshguard, fail2ban, notes };
}

/** Installing is allowed with BENCH_INSTALL_PEERS=1, or on CI (CI=true), and only as root with apt-get. */
export function installAllowed(env = process.env): boolean {
  return env.BENCH_INSTALL_PEERS === '1' || env.CI === 'true';
}

/** Seconds since boot at which a process started, from /proc/PID/stat (field 22, in clock ticks). */
function startTicks(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]);
  } catch {
    return null;
  }
}

function uptimeTicks(): number {
  // USER_HZ is 100 on every Linux architecture Debian ships.
  return Math.floor(Number(readFileSync('/proc/uptime', 'utf8').split(' ')[0]) * 100);
}

/** PIDs of sshguard / fail2ban-server processes now running, with their start times. */
export function daemonProcesses(): Map<number, number | null> {
  const out = new Map<number, number | null>();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    const pid = Number(d);
    if (pid === process.pid) continue;
    let cmd: string;
    try {
      cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
    } catch {
      continue;
    }
    if (DAEMON.test(cmd)) out.set(pid, startTicks(pid));
  }
  return out;
}

/**
 * apt-get install of the peers' packages without starting their services: a policy-rc.d that exits 101 stands in
 * for the duration (an existing one is put back byte for byte, a missing one removed again), and any sshguard or
 * fail2ban-server process that was not running before and started during the install is stopped, by PID.
 */
export function installPeers(log: (s: string) => void = (s) => process.stderr.write(s + '\n')): { ok: boolean; notes: string[] } {
  const notes: string[] = [];
  if (process.getuid?.() !== 0) return { ok: false, notes: ['install skipped: not root'] };
  if (spawnSync('apt-get', ['--version'], { stdio: 'ignore' }).status !== 0) return { ok: false, notes: ['install skipped: no apt-get'] };
  const before = daemonProcesses();
  const t0 = uptimeTicks();
  const saved = existsSync(POLICY_RC_D) ? { text: readFileSync(POLICY_RC_D), mode: statSync(POLICY_RC_D).mode & 0o7777 } : null;
  let ok = false;
  try {
    writeFileSync(POLICY_RC_D, '#!/bin/sh\n# written by TSFilter bench/peers.ts while it installs sshguard and fail2ban: start no service\nexit 101\n');
    chmodSync(POLICY_RC_D, 0o755);
    const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
    const apt = (args: string[]) => spawnSync('apt-get', args, { env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 300_000 });
    log('installing sshguard and fail2ban with apt-get (services kept from starting by policy-rc.d)');
    let r = apt(['install', '-y', '--no-install-recommends', ...PACKAGES]);
    if (r.status !== 0) {
      // A fresh machine has no package lists yet.
      apt(['update']);
      r = apt(['install', '-y', '--no-install-recommends', ...PACKAGES]);
    }
    ok = r.status === 0;
    if (!ok) notes.push(`apt-get install failed (exit ${r.status}): ${(r.stderr || r.stdout).trim().split('\n').slice(-3).join(' / ')}`);
    else notes.push(`installed ${PACKAGES.map((p) => `${p} ${pkgVersion(p) ?? '?'}`).join(', ')} with apt-get (policy-rc.d: no service started)`);
  } finally {
    if (saved) {
      writeFileSync(POLICY_RC_D, saved.text);
      chmodSync(POLICY_RC_D, saved.mode);
    } else rmSync(POLICY_RC_D, { force: true });
  }
  // Proof of origin: absent from the snapshot taken before, and started after the install began.
  for (const [pid, start] of daemonProcesses()) {
    if (before.has(pid) || start === null || start < t0) {
      if (!before.has(pid)) notes.push(`WARNING: pid ${pid} (sshguard/fail2ban) runs, but not started by this install: left alone`);
      continue;
    }
    try {
      process.kill(pid, 'SIGTERM');
      notes.push(`WARNING: the install started pid ${pid} (sshguard/fail2ban) despite policy-rc.d: stopped it`);
    } catch {
      /* already gone */
    }
  }
  return { ok, notes };
}

/** Detects the peers, installing them first when some are missing and installing is allowed. */
export function ensurePeers(log?: (s: string) => void): Peers {
  let p = detectPeers();
  if (p.sshguard && p.fail2ban) return p;
  if (!installAllowed()) {
    p.notes.push('peers are not installed automatically: set BENCH_INSTALL_PEERS=1 (or CI=true) to install them with apt-get');
    return p;
  }
  const inst = installPeers(log);
  p = detectPeers();
  p.notes.push(...inst.notes);
  return p;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  // node --import tsx bench/peers.ts [--install]
  const p = process.argv.includes('--install') ? (() => {
    const inst = installPeers();
    const d = detectPeers();
    d.notes.push(...inst.notes);
    return d;
  })() : detectPeers();
  process.stdout.write(JSON.stringify(p, null, 2) + '\n');
  const running = daemonProcesses();
  process.stdout.write(running.size === 0 ? 'no sshguard/fail2ban process runs\n' : `RUNNING: ${[...running.keys()].join(' ')}\n`);
}
