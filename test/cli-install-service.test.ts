import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { REPO, runCli } from './helpers/cli.ts';
import { haveCommand, requirePrereq } from './helpers/prereq.ts';

const ENTRY = path.join(REPO, 'dist/cli/main.js');

/** The unit's ExecStart names dist/cli/main.js, and verify checks that it exists: build it when a checkout has none. */
function ensureBuilt(): void {
  if (existsSync(ENTRY)) return;
  const r = spawnSync(process.execPath, [path.join(REPO, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.build.json'], { cwd: REPO, encoding: 'utf8' });
  assert.equal(r.status, 0, `build failed: ${r.stdout}${r.stderr}`);
}

function tmp(t: { after: (fn: () => void) => void }): string {
  const d = mkdtempSync(path.join(tmpdir(), 'tsfilter-svc-'));
  t.after(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

/**
 * systemd is not PID 1 on the test machines, so the real systemctl cannot enable or start anything: this script,
 * which only records its argv (one call per line) and can be told to fail, is the one fake in this file.
 */
function recordingSystemctl(dir: string, failOn?: string): { bin: string; calls: () => string[] } {
  const log = path.join(dir, 'systemctl.log');
  const bin = path.join(dir, 'systemctl');
  writeFileSync(
    bin,
    `#!/bin/sh\nprintf '%s\\n' "$*" >> '${log}'\n` + (failOn ? `[ "$1" = '${failOn}' ] && { echo "Failed to ${failOn}: boom" >&2; exit 1; }\n` : '') + 'exit 0\n',
  );
  chmodSync(bin, 0o755);
  return { bin, calls: () => (existsSync(log) ? readFileSync(log, 'utf8').trim().split('\n').filter(Boolean) : []) };
}

function writeConfig(dir: string, name: string, settings: Record<string, unknown>): string {
  const f = path.join(dir, name);
  writeFileSync(f, JSON.stringify({ settings }));
  return f;
}


/** As root, with the CLI built: a temp dir with an empty systemd unit directory and a recording systemctl (null: skipped). */
function installLab(t: TestContext, failOn?: string): { dir: string; sys: string; ctl: ReturnType<typeof recordingSystemctl> } | null {
  if (!requirePrereq(t, process.getuid?.() === 0, 'root', 'run the tests as root (install-service refuses otherwise)')) return null;
  ensureBuilt();
  const dir = tmp(t);
  const sys = path.join(dir, 'system');
  mkdirSync(sys, { recursive: true });
  return { dir, sys, ctl: recordingSystemctl(dir, failOn) };
}

test('--print shows a complete hardened unit with absolute paths and changes nothing', (t) => {
  const dir = tmp(t);
  writeConfig(dir, 'cfg.json', { data_dir: '/var/lib/tsfilter' });
  const sys = path.join(dir, 'system');
  const ctl = recordingSystemctl(dir);
  // A relative --config must become absolute: the service does not start in this directory.
  const r = runCli(['install-service', '--print', '--config', path.relative(REPO, path.join(dir, 'cfg.json'))], { env: { TSFILTER_SYSTEMD_DIR: sys, TSFILTER_SYSTEMCTL: ctl.bin } });
  assert.equal(r.code, 0, r.stderr);
  const unit = r.stdout;
  const lines = new Set(unit.split('\n'));
  assert.ok(lines.has(`ExecStart=${process.execPath} ${ENTRY} run --config ${path.join(dir, 'cfg.json')}`), unit);
  assert.ok(path.isAbsolute(process.execPath));
  for (const l of [
    '[Unit]',
    'Wants=network-online.target',
    'After=network-online.target',
    '[Service]',
    'User=root',
    'Restart=on-failure',
    'RestartSec=5',
    'ExecReload=/bin/kill -HUP $MAINPID',
    'StateDirectory=tsfilter',
    'RuntimeDirectory=tsfilter',
    'StandardOutput=journal',
    'NoNewPrivileges=yes',
    'ProtectSystem=strict',
    'ReadWritePaths=/var/lib/tsfilter /run/tsfilter',
    'ProtectHome=read-only',
    'PrivateTmp=yes',
    'ProtectKernelTunables=yes',
    'ProtectKernelModules=yes',
    'ProtectControlGroups=yes',
    'RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK',
    'CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW CAP_DAC_READ_SEARCH CAP_SYS_PTRACE',
    'SystemCallArchitectures=native',
    'LockPersonality=yes',
    '[Install]',
    'WantedBy=multi-user.target',
  ]) {
    assert.ok(lines.has(l), `missing ${JSON.stringify(l)} in:\n${unit}`);
  }
  assert.equal(existsSync(sys), false, '--print must not create the systemd directory');
  assert.deepEqual(ctl.calls(), [], '--print must not run systemctl');
});

test('the config decides the writable paths and capabilities', (t) => {
  const dir = tmp(t);
  const cfg = writeConfig(dir, 'c.json', { firewall: 'iptables', data_dir: '/srv/ts data', protect_sessions: false });
  const r = runCli(['install-service', '--print', '--config', cfg]);
  assert.equal(r.code, 0, r.stderr);
  const lines = new Set(r.stdout.split('\n'));
  assert.ok(lines.has('ReadWritePaths=/var/lib/tsfilter /run/tsfilter "/srv/ts data" /run/xtables.lock'), r.stdout);
  assert.ok(lines.has('CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW CAP_DAC_READ_SEARCH'), r.stdout);
  assert.ok([...lines].some((l) => /^ExecStartPre=\+\/(usr\/)?bin\/touch \/run\/xtables\.lock$/.test(l)), r.stdout);
});

test('systemd-analyze verify accepts the unit without a warning', (t) => {
  if (!requirePrereq(t, haveCommand('systemd-analyze'), 'systemd-analyze', 'install systemd (apt-get install systemd)')) return;
  ensureBuilt();
  const dir = tmp(t);
  const configs = [
    path.join(REPO, 'config/config.default.json'),
    writeConfig(dir, 'ipt.json', { firewall: 'iptables', data_dir: '/srv/ts data', control_socket: '/run/tsfilter/x.sock' }),
  ];
  for (const [i, cfg] of configs.entries()) {
    const r = runCli(['install-service', '--print', '--config', cfg]);
    assert.equal(r.code, 0, r.stderr);
    const unitDir = path.join(dir, `u${i}`);
    mkdirSync(unitDir, { recursive: true });
    writeFileSync(path.join(unitDir, 'tsfilter.service'), r.stdout);
    const v = spawnSync('systemd-analyze', ['verify', path.join(unitDir, 'tsfilter.service')], { encoding: 'utf8' });
    assert.equal(v.status, 0, v.stderr);
    assert.equal(v.stderr.trim(), '', `verify warned about the unit for ${cfg}:\n${v.stderr}`);
  }
  // The check can fail: verify does complain about a broken unit.
  const bad = path.join(dir, 'bad');
  mkdirSync(bad, { recursive: true });
  const unit = readFileSync(path.join(dir, 'u0/tsfilter.service'), 'utf8').replace('Restart=on-failure', 'Restart=on-failure\nProtectSytem=strict');
  writeFileSync(path.join(bad, 'tsfilter.service'), unit);
  const v = spawnSync('systemd-analyze', ['verify', path.join(bad, 'tsfilter.service')], { encoding: 'utf8' });
  assert.match(v.stderr, /ProtectSytem/);
});

test('install writes, reloads and enables; a second install does nothing; a change restarts; uninstall reverses', (t) => {
  const lab = installLab(t);
  if (lab === null) return;
  const { dir, sys, ctl } = lab;
  const env = { TSFILTER_SYSTEMD_DIR: sys, TSFILTER_SYSTEMCTL: ctl.bin };
  const cfg = writeConfig(dir, 'a.json', { data_dir: '/var/lib/tsfilter' });
  const unitFile = path.join(sys, 'tsfilter.service');

  const first = runCli(['install-service', '--config', cfg], { env });
  assert.equal(first.code, 0, first.stderr);
  assert.deepEqual(ctl.calls(), ['daemon-reload', 'enable --now tsfilter.service']);
  const printed = runCli(['install-service', '--print', '--config', cfg]).stdout;
  assert.equal(readFileSync(unitFile, 'utf8'), printed);
  assert.equal(statSync(unitFile).mode & 0o777, 0o644);
  for (const hint of ['systemctl status tsfilter', 'journalctl -u tsfilter -f', 'tsfilter status']) assert.ok(first.stdout.includes(hint), first.stdout);

  const mtime = statSync(unitFile).mtimeMs;
  const again = runCli(['install-service', '--config', cfg], { env });
  assert.equal(again.code, 0, again.stderr);
  assert.deepEqual(ctl.calls().slice(2), ['enable --now tsfilter.service'], 'same unit: no daemon-reload, no restart');
  assert.equal(statSync(unitFile).mtimeMs, mtime, 'same unit: not rewritten');

  const other = writeConfig(dir, 'b.json', { data_dir: '/var/lib/tsfilter' });
  const changed = runCli(['install-service', '--config', other], { env });
  assert.equal(changed.code, 0, changed.stderr);
  assert.deepEqual(ctl.calls().slice(3), ['daemon-reload', 'enable --now tsfilter.service', 'restart tsfilter.service']);
  assert.match(readFileSync(unitFile, 'utf8'), new RegExp(`--config ${other}$`, 'm'));

  const un = runCli(['uninstall-service'], { env });
  assert.equal(un.code, 0, un.stderr);
  assert.deepEqual(ctl.calls().slice(6), ['disable --now tsfilter.service', 'daemon-reload']);
  assert.equal(existsSync(unitFile), false);
  assert.ok(existsSync(other), 'uninstall leaves the config');
  assert.match(un.stdout, /Left in place/);

  const unAgain = runCli(['uninstall-service'], { env });
  assert.equal(unAgain.code, 0, unAgain.stderr);
  assert.equal(ctl.calls().length, 8, 'nothing to uninstall: no systemctl call');
});

test('install refuses a missing config, and reports a failing systemctl', (t) => {
  const lab = installLab(t, 'enable');
  if (lab === null) return;
  const { dir, sys, ctl } = lab;
  const env = { TSFILTER_SYSTEMD_DIR: sys, TSFILTER_SYSTEMCTL: ctl.bin };

  const missing = runCli(['install-service', '--config', path.join(dir, 'nope.json')], { env });
  assert.equal(missing.code, 2);
  assert.match(missing.stderr, /nope\.json does not exist/);
  assert.match(missing.stderr, /--config \S+config\.default\.json/, 'it names the bundled-defaults alternative');
  assert.deepEqual(ctl.calls(), []);
  assert.equal(existsSync(path.join(sys, 'tsfilter.service')), false);

  const cfg = writeConfig(dir, 'a.json', {});
  const failed = runCli(['install-service', '--config', cfg], { env });
  assert.equal(failed.code, 1);
  assert.match(failed.stderr, /enable --now tsfilter\.service.*boom/s);
});

test('not root: install and uninstall refuse, naming what needs root; --print still works', (t) => {
  if (!requirePrereq(t, process.getuid?.() === 0 && haveCommand('setpriv'), 'root and setpriv', 'run as root with util-linux installed')) return;
  const dir = tmp(t);
  chmodSync(dir, 0o755);
  const sys = path.join(dir, 'system');
  const cfg = writeConfig(dir, 'a.json', {});
  chmodSync(cfg, 0o644);
  const asNobody = (args: string[]) =>
    spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, '--import', 'tsx', path.join(REPO, 'src/cli/main.ts'), ...args], {
      cwd: REPO,
      encoding: 'utf8',
      env: { ...process.env, TSFILTER_SYSTEMD_DIR: sys, TSFILTER_SYSTEMCTL: '/bin/false', TSFILTER_SYSTEM_CONFIG: path.join(dir, 'etc/tsfilter/config.json') },
    });
  for (const cmd of [['install-service', '--config', cfg], ['install-service'], ['uninstall-service']]) {
    const r = asNobody(cmd);
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`${cmd[0]} must run as root .*tsfilter\\.service`));
  }
  assert.equal(existsSync(path.join(dir, 'etc')), false, 'not root: the default config is not written either');
  const p = asNobody(['install-service', '--print', '--config', cfg]);
  assert.equal(p.status, 0, p.stderr);
  assert.match(p.stdout, /^ExecStart=/m);
  assert.equal(existsSync(sys), false);
});

test('without --config, a missing default config is written from the bundled defaults (0600 in a 0755 directory), never over an existing one', (t) => {
  const lab = installLab(t);
  if (lab === null) return;
  const { dir, sys, ctl } = lab;
  // The parent of etc/tsfilter does not exist either: a fresh machine has no /etc/tsfilter.
  const cfg = path.join(dir, 'etc/tsfilter/config.json');
  const env = { TSFILTER_SYSTEMD_DIR: sys, TSFILTER_SYSTEMCTL: ctl.bin, TSFILTER_SYSTEM_CONFIG: cfg };
  const bundled = readFileSync(path.join(REPO, 'config/config.default.json'), 'utf8');

  // sudo may keep a restrictive umask: the directory must still come out readable (0755), the file private (0600).
  const oldMask = process.umask(0o077);
  let first;
  try {
    first = runCli(['install-service'], { env });
  } finally {
    process.umask(oldMask);
  }
  assert.equal(first.code, 0, first.stderr);
  assert.equal(readFileSync(cfg, 'utf8'), bundled, 'the config is the bundled one, byte for byte');
  assert.equal(statSync(cfg).mode & 0o777, 0o600);
  assert.equal(statSync(path.dirname(cfg)).mode & 0o777, 0o755);
  assert.match(first.stdout, new RegExp(`^wrote ${cfg} \\(mode 0600\\), a copy of the bundled defaults: firewall nftables, bans 3600 s`, 'm'));
  assert.match(first.stdout, /systemctl reload tsfilter/);
  const unit = readFileSync(path.join(sys, 'tsfilter.service'), 'utf8');
  assert.match(unit, new RegExp(`^ExecStart=\\S+ ${ENTRY} run --config ${cfg}$`, 'm'));
  assert.deepEqual(ctl.calls(), ['daemon-reload', 'enable --now tsfilter.service']);

  // The operator's edits survive a second install: the file exists, so it is used, not replaced.
  const edited = JSON.parse(bundled) as { settings: { ignored_ips: string[] } };
  edited.settings.ignored_ips.push('198.51.100.0/24');
  writeFileSync(cfg, JSON.stringify(edited));
  const again = runCli(['install-service'], { env });
  assert.equal(again.code, 0, again.stderr);
  assert.deepEqual(JSON.parse(readFileSync(cfg, 'utf8')), edited);
  assert.doesNotMatch(again.stdout, /^wrote /m);
  assert.match(again.stdout, /is already up to date/);

  // A broken existing config is reported (exit 2) and left as it is.
  writeFileSync(cfg, '{"settings": {"ban_time": "soon"}}');
  const broken = runCli(['install-service'], { env });
  assert.equal(broken.code, 2);
  assert.match(broken.stderr, /settings\.ban_time/);
  assert.equal(readFileSync(cfg, 'utf8'), '{"settings": {"ban_time": "soon"}}');
});

test('an explicit --config that does not exist is still refused, and the default config is not written for it', (t) => {
  const lab = installLab(t);
  if (lab === null) return;
  const { dir, sys, ctl } = lab;
  const def = path.join(dir, 'etc/tsfilter/config.json');
  const env = { TSFILTER_SYSTEMD_DIR: sys, TSFILTER_SYSTEMCTL: ctl.bin, TSFILTER_SYSTEM_CONFIG: def };
  const r = runCli(['install-service', '--config', path.join(dir, 'typo.json')], { env });
  assert.equal(r.code, 2);
  assert.match(r.stderr, /typo\.json does not exist/);
  assert.match(r.stderr, new RegExp(`leave out --config to have them written to ${def}`));
  assert.equal(existsSync(path.join(dir, 'typo.json')), false);
  assert.equal(existsSync(path.join(dir, 'etc')), false);
  assert.deepEqual(ctl.calls(), []);
});

test('--print with the default config missing says it will be written, writes nothing, and derives the unit from the bundled defaults', (t) => {
  const dir = tmp(t);
  const def = path.join(dir, 'etc/tsfilter/config.json');
  const r = runCli(['install-service', '--print'], { env: { TSFILTER_SYSTEM_CONFIG: def, TSFILTER_SYSTEMD_DIR: path.join(dir, 'system') } });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, new RegExp(`${def} does not exist; install-service without --print writes the bundled defaults there`));
  assert.match(r.stdout, new RegExp(`^ExecStart=\\S+ \\S+ run --config ${def}$`, 'm'));
  // The bundled config keeps protect_sessions on: the unit grants what reading sshd's sockets needs.
  assert.match(r.stdout, /^CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW CAP_DAC_READ_SEARCH CAP_SYS_PTRACE$/m);
  assert.equal(existsSync(path.join(dir, 'etc')), false);
  assert.equal(existsSync(path.join(dir, 'system')), false);
});
