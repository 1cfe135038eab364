import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, lstatSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';

/*
 * Installing Debian packages whose services must never start by themselves (sshguard and fail2ban-server would ban on
 * the host firewall): a policy-rc.d that exits 101 keeps invoke-rc.d from starting them during the install, and
 * disableAtBoot undoes the boot links their postinst made, since policy-rc.d does not stop those.
 */

export const POLICY_RC_D = '/usr/sbin/policy-rc.d';
export const DEB_SYSTEMD_HELPER = '/usr/bin/deb-systemd-helper';
const STOP_SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
const POLICY_TEXT = '#!/bin/sh\n# written by TSFilter bench/ while it installs sshguard and fail2ban: start no service\nexit 101\n';

export interface GroupRun {
  status: number | null;
  signal: NodeJS.Signals | null;
  /** The last 4,000 characters of stdout and stderr. */
  out: string;
}

export interface Held {
  /** Runs a command in its own process group (apt-get, dpkg and the maintainer scripts stop together). */
  run(cmd: string, args: string[]): Promise<GroupRun>;
  /** The signal this process got during the install, if any: no further step should start. */
  interrupted(): NodeJS.Signals | null;
}

function signalGroup(child: ChildProcess | null, sig: NodeJS.Signals): void {
  if (child?.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(-child.pid, sig);
  } catch {
    /* gone */
  }
}

/**
 * Runs `work` with `path` (/usr/sbin/policy-rc.d) replaced by a script that exits 101, then puts back what was there
 * (byte for byte and its mode) or removes it, and calls `after` (which sees the signal, if there was one).
 *
 * A SIGINT, SIGTERM or SIGHUP meanwhile is passed on to the running command's process group; once it has exited, the
 * file is put back, `after` runs, and the signal is raised again so this process ends as it was told to. Left to
 * its default, the signal would end this process before any `finally` ran and leave the "exit 101" file behind,
 * and no later apt upgrade would (re)start a service, sshd's included. Policy-rc.d stays as long as the command
 * runs, so it cannot start a service on the way out; a second signal kills the group at once. Only a SIGKILL of
 * this process can still leave the file behind.
 */
export async function withPolicyRcD<T>(
  work: (held: Held) => Promise<T>,
  opts: { path?: string; log?: (s: string) => void; after?: (signal: NodeJS.Signals | null) => void; timeoutMs?: number } = {},
): Promise<T> {
  const file = opts.path ?? POLICY_RC_D;
  const log = opts.log ?? ((s: string) => process.stderr.write(s + '\n'));
  const timeoutMs = opts.timeoutMs ?? 300_000;
  const saved = existsSync(file) ? { text: readFileSync(file), mode: statSync(file).mode & 0o7777 } : null;
  let current: ChildProcess | null = null;
  let stop: NodeJS.Signals | null = null;
  const onSignal = (sig: NodeJS.Signals) => {
    if (stop === null) {
      stop = sig;
      log(`${sig}: stopping the install; ${file} is put back once it has ended`);
      signalGroup(current, sig);
    } else {
      log(`${sig} again: killing the install`);
      signalGroup(current, 'SIGKILL');
    }
  };
  const held: Held = {
    run: (cmd, args) =>
      new Promise((resolve) => {
        const child = spawn(cmd, args, { env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
        current = child;
        let out = '';
        const keep = (d: string) => {
          out = (out + d).slice(-4000);
        };
        child.stdout!.setEncoding('utf8').on('data', keep);
        child.stderr!.setEncoding('utf8').on('data', keep);
        const timer = setTimeout(() => signalGroup(child, 'SIGTERM'), timeoutMs);
        child.on('error', (e) => {
          clearTimeout(timer);
          resolve({ status: null, signal: null, out: String(e) });
        });
        child.on('close', (status, signal) => {
          clearTimeout(timer);
          resolve({ status, signal, out });
        });
      }),
    interrupted: () => stop,
  };
  for (const sig of STOP_SIGNALS) process.on(sig, onSignal);
  let result: T;
  try {
    writeFileSync(file, POLICY_TEXT);
    chmodSync(file, 0o755);
    result = await work(held);
  } finally {
    if (saved) {
      writeFileSync(file, saved.text);
      chmodSync(file, saved.mode);
    } else rmSync(file, { force: true });
    try {
      opts.after?.(stop);
    } finally {
      for (const sig of STOP_SIGNALS) process.off(sig, onSignal);
    }
  }
  const sig = stop as NodeJS.Signals | null;
  if (sig !== null) {
    // No listener is left (unless the caller has its own), so this ends the process the way the signal meant to.
    if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
    throw new Error(`install interrupted by ${sig}`);
  }
  return result;
}

/** The symlinks that have systemd start `unit` at boot (ROOT/etc/systemd/system/*.wants/UNIT and *.requires/UNIT). */
export function bootLinks(unit: string, root = ''): string[] {
  const etc = path.join(root || '/', 'etc/systemd/system');
  let dirs: string[];
  try {
    dirs = readdirSync(etc).filter((d) => /\.(wants|requires)$/.test(d));
  } catch {
    return [];
  }
  return dirs
    .map((d) => path.join(etc, d, unit))
    .filter((p) => {
      try {
        return lstatSync(p).isSymbolicLink();
      } catch {
        return false;
      }
    });
}

function unitExists(unit: string, root: string): boolean {
  return ['lib/systemd/system', 'usr/lib/systemd/system'].some((d) => existsSync(path.join(root || '/', d, unit)));
}

/**
 * Keeps the service of each package in `pkgs` (PKG.service) from starting at boot, which its postinst enabled with
 * `deb-systemd-helper enable`. `deb-systemd-helper disable` (it works without systemd running) removes the links
 * and keeps its state file, so the package's later upgrades see a unit its admin disabled and leave it so; without
 * the helper the links are removed by hand, to the same effect. Not masked: whoever wants the service later only
 * needs `systemctl enable`. `root` is an alternative root directory (DPKG_ROOT), for tests.
 */
export function disableAtBoot(pkgs: readonly string[], opts: { root?: string; helper?: string | null } = {}): string[] {
  const root = opts.root ?? '';
  const helper = opts.helper === undefined ? (existsSync(DEB_SYSTEMD_HELPER) ? DEB_SYSTEMD_HELPER : null) : opts.helper;
  const notes: string[] = [];
  const done: string[] = [];
  for (const pkg of pkgs) {
    const unit = `${pkg}.service`;
    if (!unitExists(unit, root) && bootLinks(unit, root).length === 0) continue;
    if (helper) {
      // It refuses to run outside a maintainer script unless told which package it acts for.
      const env = { ...process.env, DPKG_MAINTSCRIPT_PACKAGE: pkg, DPKG_ROOT: root };
      spawnSync(helper, ['disable', unit], { env, stdio: 'ignore' });
    }
    for (const link of bootLinks(unit, root)) rmSync(link, { force: true });
    const left = bootLinks(unit, root);
    if (left.length === 0) done.push(unit);
    else notes.push(`WARNING: ${unit} is still enabled at boot (${left.join(', ')}): run \`systemctl disable ${pkg}\``);
  }
  if (done.length > 0) {
    const how = helper ? 'deb-systemd-helper disable' : 'boot links removed';
    notes.push(`${done.join(', ')} disabled for boot (${how}; not masked: \`systemctl enable\` turns one back on)`);
  }
  return notes;
}
