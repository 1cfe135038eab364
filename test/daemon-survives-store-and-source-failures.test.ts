import { test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { isBanned, sshConfig, until, withDaemonDir, editConfig } from './helpers/daemon.ts';
import { failed } from './helpers/syslog.ts';
import { runCli } from './helpers/cli.ts';

test('a store locked by another program delays a ban but never loses it, and the daemon keeps running', () =>
  withDaemonDir('tsf-busy-', async ({ dir, log, start }) => {
    const dbFile = path.join(dir, 'tsfilter.db');
    const d = start(sshConfig(dir, log));
    let other: Database.Database | undefined;
    try {
      await d.waitFor(/msg=started/);
      // Another program (an admin's sqlite3, a backup) holds the write lock for longer than the busy timeout.
      other = new Database(dbFile);
      other.exec('BEGIN IMMEDIATE');
      const t = Date.now();
      for (let i = 0; i < 5; i++) appendFileSync(log, failed(t + i, '192.0.2.77'));
      await d.waitFor(/msg="could not commit to the store/, 30_000);
      // The attack is real: the ban is enforced even before it could be stored.
      await d.waitFor(/msg="dry-run: would block" ip=192\.0\.2\.77 /, 30_000);
      other.exec('COMMIT');
      const stored = () => isBanned(dbFile, '192.0.2.77');
      await until(stored, 30_000, 'the delayed ban to be stored');
      assert.equal(d.child.exitCode, null, 'the daemon is still running');
      assert.equal(await d.stop('SIGTERM'), 0, d.err);
    } finally {
      other?.close();
    }
  }));

test('after a restart, a ban of an address now in ignored_ips is not enforced (how an owner lets himself back in)', () =>
  withDaemonDir('tsf-ign-', async ({ dir, log, start }) => {
    const cfg = sshConfig(dir, log);
    let d = start(cfg);
    await d.waitFor(/msg=started/);
    const t = Date.now();
    for (let i = 0; i < 5; i++) appendFileSync(log, failed(t + i, '198.51.100.23'));
    await d.waitFor(/msg=banned ip=198\.51\.100\.23 /);
    await d.stop();
    editConfig(cfg, (c) => {
      c.settings.ignored_ips.push('198.51.100.0/24');
    });
    d = start(cfg);
    await d.waitFor(/msg=started .*active_bans=0/);
    assert.match(d.out, /msg="active ban of an ignored or protected address is not enforced" ip=198\.51\.100\.23/);
    assert.doesNotMatch(d.out, /would block" ip=198\.51\.100\.23 /);
  }));

test('a source that cannot start stops the daemon with an error instead of leaving it half-started', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'tsf-half-'));
  try {
    const log = path.join(dir, 'auth.log');
    writeFileSync(log, '');
    const cfg = sshConfig(dir, log);
    editConfig(cfg, (c) => {
      c.settings.rules.ssh.journal = { matches: ['_SYSTEMD_UNIT=ssh.service'], mode: 'always', journalctl: path.join(dir, 'no-such-journalctl') };
    });
    const r = runCli(['run', '--config', cfg]);
    assert.equal(r.code, 1, `${r.stdout}\n${r.stderr}`);
    assert.match(r.stderr, /no-such-journalctl/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
