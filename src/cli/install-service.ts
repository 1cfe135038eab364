/**
 * `tsfilter install-service` / `tsfilter uninstall-service`: the systemd unit that runs the daemon.
 *
 * install-service writes <systemd dir>/tsfilter.service, then `systemctl daemon-reload` and
 * `systemctl enable --now tsfilter.service` (argv arrays through runNft's spawner, never a shell). A second install
 * with the same unit changes nothing and runs nothing but `enable --now` (which is a no-op for an enabled, running
 * unit); a changed unit is rewritten, followed by daemon-reload, enable and `restart`, so the new unit takes effect.
 * `--print` only prints the unit. uninstall-service runs `disable --now`, removes the unit and runs daemon-reload; it
 * leaves the config and the state (/etc/tsfilter, /var/lib/tsfilter) in place on purpose: reinstalling resumes the bans.
 *
 * The config: --config F (made absolute), else /etc/tsfilter/config.json. Without --config, a missing
 * /etc/tsfilter/config.json is written from the bundled config/config.default.json (0600 in a 0755 /etc/tsfilter,
 * never over a file that exists), so `npm install -g tsfilter && sudo tsfilter install-service` is a protecting
 * service. A --config F that does not exist is refused: the user named a file, and silently creating it could hide a
 * typo; a unit pointing at a missing file would crash-loop. `--print` writes nothing and only says what install
 * would do. The file is validated now (exit 2 when invalid) because its settings decide the sandbox (data_dir,
 * control socket, firewall).
 *
 * ExecStart runs process.execPath on the built CLI, dist/cli/main.js, found from this module's location (the same
 * `../../dist/cli/main.js` from src/cli under tsx and from dist/cli once built), never from the working directory:
 * the unit must keep working whatever directory `sudo tsfilter install-service` was typed in.
 *
 * For tests only (not in --help): TSFILTER_SYSTEMD_DIR replaces /etc/systemd/system, TSFILTER_SYSTEMCTL replaces
 * the systemctl binary, TSFILTER_SYSTEM_CONFIG replaces /etc/tsfilter/config.json (config-path.ts).
 */
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadConfigFile, type Config } from '../config/load.ts';
import { runNft } from '../firewall/nft-runner.ts';
import { BUNDLED_CONFIG, systemConfigPath } from './config-path.ts';
import { UsageError } from './replay.ts';

export const UNIT_NAME = 'tsfilter.service';
export const STATE_DIR = '/var/lib/tsfilter';
export const RUNTIME_DIR = '/run/tsfilter';
const XTABLES_LOCK = '/run/xtables.lock';

/** The built CLI entry that the unit runs. */
export const CLI_ENTRY = fileURLToPath(new URL('../../dist/cli/main.js', import.meta.url));

export interface UnitSpec {
  node: string;
  entry: string;
  config: string;
  /** Directories outside the state and runtime directories that the daemon writes (from the config). */
  extraWritable: string[];
  /** Sessions protection inspects sshd's processes (protect_sessions). */
  protectSessions: boolean;
  /** iptables/ipset: iptables-legacy takes /run/xtables.lock; absolute path of touch to create it, or null. */
  xtablesTouch: string | null;
}

/** A path as one systemd word: specifiers and variables escaped, quoted when it has spaces. */
function word(p: string): string {
  // Newlines or other control characters cannot be expressed in a unit line at all.
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x1f\x7f]/.test(p)) throw new UsageError(`path ${JSON.stringify(p)} contains a control character; a systemd unit cannot name it`);
  const e = p.replace(/%/g, '%%').replace(/\$/g, '$$$$');
  return /[\s"'\\;]/.test(e) ? `"${e.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"` : e;
}

export function renderUnit(s: UnitSpec): string {
  const caps = ['CAP_NET_ADMIN', 'CAP_NET_RAW', 'CAP_DAC_READ_SEARCH', ...(s.protectSessions ? ['CAP_SYS_PTRACE'] : [])];
  const writable = [STATE_DIR, RUNTIME_DIR, ...s.extraWritable, ...(s.xtablesTouch ? [XTABLES_LOCK] : [])];
  const lines = [
    '# Written by `tsfilter install-service`; `tsfilter install-service --print` shows what it would write now.',
    '# Check it: systemctl status tsfilter; journalctl -u tsfilter -f; tsfilter status',
    '[Unit]',
    'Description=TSFilter log-driven intrusion prevention',
    'Documentation=https://www.npmjs.com/package/tsfilter',
    // Wants= pulls network-online.target in (After= alone only orders): journal/file sources do not need the network,
    // but Redis fleet sync and DNS lookups do, and banning before interfaces exist gains nothing.
    'Wants=network-online.target',
    'After=network-online.target',
    '',
    '[Service]',
    // exec: systemctl reports a missing node/CLI as a failed start instead of a started service that dies.
    'Type=exec',
    // Managing the firewall needs root (CAP_NET_ADMIN on the host network namespace); the sandbox below limits the rest.
    'User=root',
    // Relative paths in a PyFilter-style config (data_dir ".") land in the state directory, not in /.
    `WorkingDirectory=${STATE_DIR}`,
    `ExecStart=${word(s.node)} ${word(s.entry)} run --config ${word(s.config)}`,
    // The daemon reloads its configuration on SIGHUP without dropping bans (systemctl reload tsfilter).
    'ExecReload=/bin/kill -HUP $MAINPID',
    ...(s.xtablesTouch
      ? [
          // iptables-legacy opens /run/xtables.lock with O_CREAT, and ProtectSystem=strict makes /run read-only. The
          // lock is shared with Docker/ufw, so it must be that file, not one of ours: '+' creates it unsandboxed
          // (after a reboot it may not exist yet), then ReadWritePaths below opens it up.
          `ExecStartPre=+${word(s.xtablesTouch)} ${XTABLES_LOCK}`,
        ]
      : []),
    // A crash must not leave the host unprotected for long, but a config that fails at once must not spin forever
    // (StartLimit* defaults stop it after 5 failures in 10 s; RestartSec=5 keeps those well apart).
    'Restart=on-failure',
    'RestartSec=5',
    // Stopping finishes the queued firewall changes and closes the store (the kernel bans stay): give it time.
    'TimeoutStopSec=30',
    // Log lines (level=… msg=… key=value) go to stdout: journald keeps them (journalctl -u tsfilter).
    'StandardOutput=journal',
    'StandardError=journal',
    // systemd creates these (0700, root) before every start: the store and the root-only control socket live here.
    'StateDirectory=tsfilter',
    'StateDirectoryMode=0700',
    'RuntimeDirectory=tsfilter',
    'RuntimeDirectoryMode=0700',
    'UMask=0077',
    '',
    '# Hardening: root, but only with what banning needs.',
    // NET_ADMIN/NET_RAW: nft, iptables, ipset. DAC_READ_SEARCH: read logs owned by other users (e.g. mysql:adm 0640)
    // without the power to write them. SYS_PTRACE (only with protect_sessions): sshd makes itself non-dumpable, and
    // reading its /proc/PID/fd to find authenticated sessions needs it; without it lock-out protection degrades.
    `CapabilityBoundingSet=${caps.join(' ')}`,
    'NoNewPrivileges=yes',
    // The whole filesystem read-only (logs, journal and config stay readable); only the daemon's own state is writable.
    'ProtectSystem=strict',
    `ReadWritePaths=${writable.map(word).join(' ')}`,
    // Logs under /home (a user's app) can still be followed; nothing there is ever written.
    'ProtectHome=read-only',
    'PrivateTmp=yes',
    // nft/iptables talk netlink and setsockopt, not /dev; the kernel autoloads netfilter modules itself, so denying
    // module loading and /proc/sys writes costs nothing.
    'PrivateDevices=yes',
    'ProtectKernelTunables=yes',
    'ProtectKernelModules=yes',
    'ProtectKernelLogs=yes',
    'ProtectControlGroups=yes',
    'ProtectClock=yes',
    'ProtectHostname=yes',
    // Not ProtectProc=invisible or PrivateNetwork: the sshd sessions in /proc and the host's own network are the point.
    // AF_NETLINK: nftables and ipset; AF_INET/AF_INET6: iptables' sockopts, Redis, DNS; AF_UNIX: control socket, journald.
    'RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK',
    'RestrictNamespaces=yes',
    'RestrictRealtime=yes',
    'RestrictSUIDSGID=yes',
    'LockPersonality=yes',
    'SystemCallArchitectures=native',
    // Not MemoryDenyWriteExecute: V8's JIT needs writable+executable memory. No SystemCallFilter either: node, the
    // better-sqlite3 addon and every firewall tool would have to be covered, and a missed call kills the protection.
    '',
    '[Install]',
    'WantedBy=multi-user.target',
    '',
  ];
  return lines.join('\n');
}

export interface InstallOptions {
  config?: string;
  print?: boolean;
}

type Print = (s: string) => void;

function systemdDir(): string {
  return process.env.TSFILTER_SYSTEMD_DIR || '/etc/systemd/system';
}

function systemctl(args: string[]): Promise<string> {
  return runNft({ nft: process.env.TSFILTER_SYSTEMCTL || 'systemctl', timeoutMs: 120_000 }, args);
}

function requireRoot(what: string): void {
  if (typeof process.getuid === 'function' && process.getuid() !== 0) {
    throw new Error(`${what} must run as root (it writes ${path.join(systemdDir(), UNIT_NAME)} and runs systemctl); try: sudo tsfilter ${what}`);
  }
}

/** `p` unless it lies inside one of `dirs`. */
const outside = (p: string, dirs: string[]) => !dirs.some((d) => p === d || p.startsWith(d + '/'));

/** The unit for `config` (an absolute path; null settings when it does not exist, for --print). */
export function unitSpecFor(configFile: string, config: Config | null): UnitSpec {
  const extra: string[] = [];
  if (config) {
    for (const d of [config.dataDir, path.dirname(config.sqlitePath || config.dataDir), config.logging.directory, path.dirname(config.controlSocket)]) {
      if (outside(d, [STATE_DIR, RUNTIME_DIR, ...extra])) extra.push(d);
    }
  }
  const iptables = config !== null && (config.firewall === 'iptables' || config.firewall === 'ipset');
  return {
    node: process.execPath,
    entry: CLI_ENTRY,
    config: configFile,
    extraWritable: extra,
    protectSessions: config?.protectSessions ?? true,
    xtablesTouch: iptables ? (['/usr/bin/touch', '/bin/touch'].find((p) => existsSync(p)) ?? null) : null,
  };
}

/**
 * Writes the bundled defaults to `file`: 0600 (the config may hold a Redis password) in a directory that is 0755
 * when we create it. O_EXCL: a file that appeared since the check (an admin, a second install) is never replaced.
 * Returns false when it already existed.
 */
function writeDefaultConfig(file: string): boolean {
  const dir = path.dirname(file);
  // mkdirSync's mode passes through the umask (sudo may keep a 077 one); only a directory we made is chmod-ed.
  if (mkdirSync(dir, { recursive: true, mode: 0o755 }) !== undefined) chmodSync(dir, 0o755);
  try {
    writeFileSync(file, readFileSync(BUNDLED_CONFIG), { mode: 0o600, flag: 'wx' });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw e;
  }
  chmodSync(file, 0o600);
  return true;
}

export async function installServiceCommand(o: InstallOptions, out: Print, note: Print): Promise<void> {
  const configFile = path.resolve(o.config ?? systemConfigPath());
  const exists = existsSync(configFile);
  if (!exists && o.config !== undefined) {
    const why =
      `config file ${configFile} does not exist. Create it first (sudo install -D -m 600 ${BUNDLED_CONFIG} ${configFile}, ` +
      `then edit it; or: sudo tsfilter import pyfilter --from DIR --config ${configFile}), run on the bundled defaults with ` +
      `--config ${BUNDLED_CONFIG}, or leave out --config to have them written to ${systemConfigPath()}`;
    if (!o.print) throw new UsageError(why);
    note(`tsfilter: warning: ${why}`);
    process.stdout.write(renderUnit(unitSpecFor(configFile, null)));
    return;
  }
  // Relative paths resolve as the daemon will see them: from WorkingDirectory. A config still to be written is the
  // bundled one, byte for byte, so the unit is derived from that.
  let config = loadConfigFile(exists ? configFile : BUNDLED_CONFIG, { cwd: STATE_DIR });
  if (o.print) {
    if (!exists) note(`tsfilter: ${configFile} does not exist; install-service without --print writes the bundled defaults there`);
    process.stdout.write(renderUnit(unitSpecFor(configFile, config)));
    return;
  }
  requireRoot('install-service');
  if (!existsSync(CLI_ENTRY)) {
    throw new Error(`${CLI_ENTRY} does not exist: build the CLI first (npm run build), or install the npm package (npm install -g tsfilter)`);
  }
  if (!exists) {
    if (writeDefaultConfig(configFile)) {
      const ban = config.banTime > 0 ? `${config.banTime} s${config.banTimeFactor > 1 ? `, x${config.banTimeFactor} for each repeat up to ${config.banTimeMax} s` : ''}` : 'permanent';
      out(`wrote ${configFile} (mode 0600), a copy of the bundled defaults: firewall ${config.firewall}, bans ${ban}, store ${config.sqlitePath}`);
      out('  Edit it (your own addresses into ignored_ips, log_files for the rules you need), then: sudo systemctl reload tsfilter');
    } else {
      // Created between the check and the write: use it as it is.
      config = loadConfigFile(configFile, { cwd: STATE_DIR });
    }
  }
  const spec = unitSpecFor(configFile, config);
  const unit = renderUnit(spec);
  const file = path.join(systemdDir(), UNIT_NAME);
  const before = existsSync(file) ? readFileSync(file, 'utf8') : null;
  const changed = before !== unit;
  if (changed) {
    // Directories outside the state directory must exist before start: ReadWritePaths cannot create them.
    for (const d of spec.extraWritable) mkdirSync(d, { recursive: true, mode: 0o700 });
    // Atomic: systemd (or a crash) never sees half a unit.
    writeFileSync(file + '.tmp', unit, { mode: 0o644 });
    renameSync(file + '.tmp', file);
    out(`${before === null ? 'wrote' : 'updated'} ${file}`);
    await systemctl(['daemon-reload']);
  } else {
    out(`${file} is already up to date`);
  }
  await systemctl(['enable', '--now', UNIT_NAME]);
  if (changed && before !== null) await systemctl(['restart', UNIT_NAME]);
  out(`tsfilter.service is enabled and ${changed && before !== null ? 'restarted' : 'started'} (config ${configFile}).`);
  out('Check it with:');
  out('  systemctl status tsfilter');
  out('  journalctl -u tsfilter -f');
  out('  sudo tsfilter status');
  out('Reload the config after editing it: sudo systemctl reload tsfilter');
}

export async function uninstallServiceCommand(out: Print): Promise<void> {
  requireRoot('uninstall-service');
  const file = path.join(systemdDir(), UNIT_NAME);
  if (!existsSync(file)) {
    out(`${file} does not exist: nothing to uninstall`);
    return;
  }
  await systemctl(['disable', '--now', UNIT_NAME]);
  rmSync(file);
  await systemctl(['daemon-reload']);
  out(`stopped and disabled tsfilter.service; removed ${file}`);
  out(`Left in place: the config (${systemConfigPath()} or the one given at install) and the state in ${STATE_DIR} (bans, log positions).`);
  out('Remove them by hand if you no longer need them.');
}
