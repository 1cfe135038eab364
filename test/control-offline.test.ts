import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { DaemonProcess, sshConfig } from './helpers/daemon.ts';
import { jsonLines, runCli } from './helpers/cli.ts';

test('with the daemon stopped, ban/unban/list work on the store, say so, and the daemon applies them at start', { timeout: 120_000 }, async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'tsf-offline-'));
  const log = path.join(dir, 'auth.log');
  writeFileSync(log, '');
  const cfg = sshConfig(dir, log, { ignored_ips: ['192.0.2.0/24'] });
  const cli = (...args: string[]) => runCli([...args, '--config', cfg]);
  let d: DaemonProcess | null = null;
  try {
    // No daemon has ever run: status says so (exit 1), list is empty.
    let r = cli('status');
    assert.equal(r.code, 1, r.stdout + r.stderr);
    assert.match(r.stderr, /not running/);
    r = cli('list', '--json');
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), '');
    assert.match(r.stderr, /daemon not running/);

    // A first daemon bans 198.51.100.2; it stops (the dry-run enforcer forgets, the store remembers).
    d = new DaemonProcess(cfg);
    await d.waitFor(/msg="control socket listening"/);
    assert.equal(cli('ban', '198.51.100.2').code, 0);
    assert.equal(await d.stop(), 0, d.err);
    assert.equal(existsSync(path.join(dir, 'tsfilter.sock')), false, 'a clean stop removes the socket');

    // Offline: ban one address, unban the other; refusals still apply.
    r = cli('ban', '198.51.100.1', '--duration', '1h', '--reason', 'offline ban');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /daemon not running.*banned 198\.51\.100\.1 until .*will be applied when the daemon starts/);
    r = cli('unban', '198.51.100.2');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /daemon not running.*unbanned 198\.51\.100\.2 .*when the daemon starts/);
    r = cli('ban', '192.0.2.77');
    assert.equal(r.code, 2);
    assert.match(r.stderr, /ignored_ips \(192\.0\.2\.0\/24\)/);
    r = cli('ban', '127.0.0.2');
    assert.equal(r.code, 2);
    r = cli('list', '--json');
    assert.equal(r.code, 0);
    const listed = jsonLines(r.stdout);
    assert.deepEqual(listed.map((b) => b.ip), ['198.51.100.1']);
    assert.equal(listed[0]!.reason, 'offline ban');
    assert.equal(listed[0]!.origin, 'manual');
    assert.match(r.stderr, /daemon not running/);

    // A stale socket file (a daemon killed with SIGKILL leaves one) does not make the CLI think a daemon runs.
    d = new DaemonProcess(cfg);
    await d.waitFor(/msg="control socket listening"/);
    assert.equal(await d.stop('SIGKILL'), null);
    assert.ok(existsSync(path.join(dir, 'tsfilter.sock')), 'SIGKILL leaves the socket file');
    r = cli('ban', '198.51.100.3', '-d', '30m');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /daemon not running/);

    // Start: the offline bans are enforced, the offline unban is not.
    d = new DaemonProcess(cfg);
    await d.waitFor(/msg=started/);
    assert.match(d.out, /would block" ip=198\.51\.100\.1 rule=manual/);
    assert.match(d.out, /would block" ip=198\.51\.100\.3 rule=manual/);
    assert.doesNotMatch(d.out, /would block" ip=198\.51\.100\.2 /);
    assert.match(d.out, /msg=started .*active_bans=2/);
    r = cli('list', '--json');
    assert.deepEqual(jsonLines(r.stdout).map((b) => b.ip).sort(), ['198.51.100.1', '198.51.100.3']);
    assert.doesNotMatch(r.stderr, /not running/);
    assert.equal(cli('status').code, 0);
  } finally {
    await d?.stop('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
});
