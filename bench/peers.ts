import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { bootLinks, disableAtBoot, withPolicyRcD } from './lib/hold-services.ts';

/*
 * The peer tools TSFilter is measured against: sshguard's log parser and fail2ban's fail2ban-regex with its sshd
 * filter, both from Debian's packages. Only the parser tools are ever run, on files; sshguard and fail2ban-server
 * would touch the host firewall, so they never run as daemons, and installing the packages must not start them, now
 * or at the next boot.
 */

export const SSHG_PARSER = '/usr/libexec/sshguard/sshg-parser';
export const FAIL2BAN_REGEX = '/usr/bin/fail2ban-regex';
export const FAIL2BAN_SSHD_FILTER = '/etc/fail2ban/filter.d/sshd.conf';
const PACKAGES = ['sshguard', 'fail2ban'];
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
  // Said, not changed: a peer found installed may be a service its admin runs on purpose.
  for (const peer of [sshguard, fail2ban]) {
    if (peer && bootLinks(`${peer.name}.service`).length > 0) notes.push(`${peer.name}.service is enabled at boot on this machine (left as found; \`systemctl disable ${peer.name}\` turns it off)`);
  }
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

/** Installed (not merely known to dpkg, or removed with its configuration left). */
function pkgInstalled(pkg: string): boolean {
  const r = spawnSync('dpkg-query', ['-W', '-f', '${db:Status-Status}', pkg], { encoding: 'utf8' });
  return r.status === 0 && r.stdout.trim() === 'installed';
}

/**
 * apt-get install of the peers' packages without starting their services, now or at boot: a policy-rc.d that exits
 * 101 stands in for the duration and a signal meanwhile is handled (lib/hold-services.ts withPolicyRcD), the
 * packages this install added get their services disabled for boot (disableAtBoot), and any sshguard or
 * fail2ban-server process that was not running before and started during the install is stopped, by PID.
 */
export async function installPeers(log: (s: string) => void = (s) => process.stderr.write(s + '\n')): Promise<{ ok: boolean; notes: string[] }> {
  const notes: string[] = [];
  if (process.getuid?.() !== 0) return { ok: false, notes: ['install skipped: not root'] };
  if (spawnSync('apt-get', ['--version'], { stdio: 'ignore' }).status !== 0) return { ok: false, notes: ['install skipped: no apt-get'] };
  // Only what this install adds is disabled: a service the admin already had stays as it was.
  const added = PACKAGES.filter((p) => !pkgInstalled(p));
  const before = daemonProcesses();
  const t0 = uptimeTicks();
  const install = ['install', '-y', '--no-install-recommends', ...PACKAGES];
  log('installing sshguard and fail2ban with apt-get (policy-rc.d keeps their services from starting; they are then disabled for boot)');
  const ok = await withPolicyRcD(
    async (held) => {
      let r = await held.run('apt-get', install);
      if (r.status !== 0 && !held.interrupted()) {
        // A fresh machine has no package lists yet.
        await held.run('apt-get', ['update']);
        if (!held.interrupted()) r = await held.run('apt-get', install);
      }
      if (r.status !== 0) notes.push(`apt-get install failed (exit ${r.status ?? r.signal}): ${r.out.trim().split('\n').slice(-3).join(' / ')}`);
      else {
        const what = added.length > 0 ? `installed ${added.join(', ')}` : 'nothing to install';
        notes.push(`apt-get: ${what} (${PACKAGES.map((p) => `${p} ${pkgVersion(p) ?? '?'}`).join(', ')}), no service started (policy-rc.d)`);
      }
      return r.status === 0;
    },
    {
      log,
      // Also after a failed or interrupted install: a package configured before the failure was enabled all the same.
      after: (signal) => {
        notes.push(...disableAtBoot(added), ...stopStartedDaemons(before, t0));
        if (signal) for (const n of notes) log(n);
      },
    },
  );
  return { ok, notes };
}

/** Proof of origin: absent from the snapshot taken before, and started after the install began. */
function stopStartedDaemons(before: Map<number, number | null>, t0: number): string[] {
  const notes: string[] = [];
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
  return notes;
}

/** Detects the peers, installing them first when some are missing and installing is allowed. */
export async function ensurePeers(log?: (s: string) => void): Promise<Peers> {
  let p = detectPeers();
  if (p.sshguard && p.fail2ban) return p;
  if (!installAllowed()) {
    p.notes.push('peers are not installed automatically: set BENCH_INSTALL_PEERS=1 (or CI=true) to install them with apt-get');
    return p;
  }
  const inst = await installPeers(log);
  p = detectPeers();
  p.notes.push(...inst.notes);
  return p;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  // node --import tsx bench/peers.ts [--install]
  let p: Peers;
  if (process.argv.includes('--install')) {
    const inst = await installPeers();
    p = detectPeers();
    p.notes.push(...inst.notes);
  } else p = detectPeers();
  process.stdout.write(JSON.stringify(p, null, 2) + '\n');
  const running = daemonProcesses();
  process.stdout.write(running.size === 0 ? 'no sshguard/fail2ban process runs\n' : `RUNNING: ${[...running.keys()].join(' ')}\n`);
}
