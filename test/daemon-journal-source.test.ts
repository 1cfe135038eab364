import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { sshConfig, withDaemonDir, editConfig } from './helpers/daemon.ts';
import { JOURNAL_REMOTE, haveCommand, requirePrereq } from './helpers/prereq.ts';
import { openSqliteStore } from '../src/store/sqlite-store.ts';

/** Appends entries to a journal file with the real systemd-journal-remote, from Journal Export Format. */
function writeJournal(file: string, entries: { unit: string; message: string; usec: number }[]): void {
  const input = entries
    .map((e) => `__REALTIME_TIMESTAMP=${e.usec}\n_SYSTEMD_UNIT=${e.unit}\nSYSLOG_IDENTIFIER=sshd\n_HOSTNAME=server\nMESSAGE=${e.message}\n\n`)
    .join('');
  const r = spawnSync(JOURNAL_REMOTE!, ['-o', file, '-'], { input, encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
}

test('on a host without auth.log the SSH rule reads the journal (journal messages, no syslog header) and bans', async (t) => {
  if (!requirePrereq(t, !!JOURNAL_REMOTE && haveCommand('journalctl'), 'systemd-journal-remote or journalctl', 'install them with `apt-get install -y systemd-journal-remote`')) return;
  await withDaemonDir('tsf-journal-', async ({ dir, start }) => {
    const journal = path.join(dir, 'remote.journal');
    // A journal's entries are in time order; each gets the next second. They start in the past: journald (and
    // systemd-journal-remote) treat a file whose last entry lies in the future as corrupt and replace it.
    let usec = (Date.now() - 120_000) * 1000;
    const at = () => (usec += 1e6);
    // Before the daemon starts: three failures from the attacker, and noise from another unit.
    writeJournal(journal, [0, 1, 2, 3, 4, 5].flatMap((i) => [
      ...(i < 3 ? [{ unit: 'ssh.service', message: `Failed password for root from 192.0.2.60 port ${5000 + i} ssh2`, usec: at() }] : []),
      { unit: 'cron.service', message: `Failed password for root from 192.0.2.61 port ${5000 + i} ssh2`, usec: at() },
    ]));
    const cfg = sshConfig(dir, path.join(dir, 'no-such-auth.log'));
    editConfig(cfg, (c) => {
      c.settings.rules.ssh.journal = { matches: ['_SYSTEMD_UNIT=ssh.service', '+', '_SYSTEMD_UNIT=sshd.service'], mode: 'fallback', files: [journal] };
    });
    const d = start(cfg);
    await d.waitFor(/msg=started/);
    await d.waitFor(/msg="following the journal"/);
    // Two more, appended while the daemon follows the journal: the fifth failure bans.
    writeJournal(journal, [3, 4].map((i) => ({ unit: 'sshd.service', message: `Invalid user admin from 192.0.2.60 port ${5000 + i}`, usec: at() })));
    await d.waitFor(/msg=banned ip=192\.0\.2\.60 /);
    assert.equal(d.count(/msg=banned /), 1, 'the other unit\'s entries are not read');
    assert.equal(await d.stop(), 0);
    const store = openSqliteStore(path.join(dir, 'tsfilter.db'));
    try {
      const [ban] = store.activeBans(Date.now());
      assert.equal(ban?.ip, '192.0.2.60');
      assert.equal(ban?.failures, 5);
      const pos = store.getPosition('ssh:journal:ssh:journal');
      assert.ok(pos?.cursor, `a journal cursor is saved: ${JSON.stringify(pos)}`);
    } finally {
      store.close();
    }
  });
});
