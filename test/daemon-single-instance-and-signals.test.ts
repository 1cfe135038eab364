import { test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFileSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { isBanned, sshConfig, until, withDaemonDir } from './helpers/daemon.ts';
import { failed } from './helpers/syslog.ts';
import { runCli } from './helpers/cli.ts';

test('a second daemon on the same data directory is refused, even with another control socket', () =>
  withDaemonDir('tsf-one-', async ({ dir, log, start }) => {
    const cfg = sshConfig(dir, log);
    const d = start(cfg);
    await d.waitFor(/msg=started/);
    const c = JSON.parse(readFileSync(cfg, 'utf8'));
    c.settings.control_socket = path.join(dir, 'other.sock');
    const other = path.join(dir, 'other.json');
    writeFileSync(other, JSON.stringify(c));
    const r = runCli(['run', '--config', other]);
    assert.equal(r.code, 1, r.stdout + r.stderr);
    assert.match(r.stderr, /another tsfilter daemon \(pid \d+\) is already using this data directory/);
    assert.equal(d.child.exitCode, null, 'the first daemon is untouched');
  }));

test('the daemon keeps protecting when its stdout pipe breaks (a dead log shipper)', () =>
  withDaemonDir('tsf-epipe-', async ({ dir, log, start }) => {
    const d = start(sshConfig(dir, log));
    await d.waitFor(/msg=started/);
    d.child.stdout!.destroy();
    const t = Date.now();
    for (let i = 0; i < 5; i++) appendFileSync(log, failed(t + i, '192.0.2.91'));
    const banned = () => isBanned(path.join(dir, 'tsfilter.db'), '192.0.2.91');
    await until(banned, 20_000, 'the ban to be stored');
    assert.equal(d.child.exitCode, null, 'still running');
  }));

test('SIGHUP: a ban lifted because its address became ignored is enforced again when the entry is removed', () =>
  withDaemonDir('tsf-hup2-', async ({ dir, log, start }) => {
    const cfg = sshConfig(dir, log);
    const d = start(cfg);
    await d.waitFor(/msg=started/);
    const b = runCli(['ban', '203.0.113.62', '--duration', '1h', '--config', cfg]);
    assert.equal(b.code, 0, b.stderr);
    await d.waitFor(/would block" ip=203\.0\.113\.62 /);
    const c = JSON.parse(readFileSync(cfg, 'utf8'));
    const original = [...c.settings.ignored_ips];
    c.settings.ignored_ips = [...original, '203.0.113.62'];
    writeFileSync(cfg, JSON.stringify(c));
    d.child.kill('SIGHUP');
    await d.waitFor(/would unblock" ip=203\.0\.113\.62/);
    const mark = d.out.length;
    c.settings.ignored_ips = original;
    writeFileSync(cfg, JSON.stringify(c));
    d.child.kill('SIGHUP');
    await until(() => /would block" ip=203\.0\.113\.62 /.test(d.out.slice(mark)), 20_000, 'the ban to be enforced again');
  }));
