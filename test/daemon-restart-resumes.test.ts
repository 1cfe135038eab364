import { test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { sshConfig, until, withDaemonDir } from './helpers/daemon.ts';
import { failed } from './helpers/syslog.ts';
import { openSqliteStore } from '../src/store/sqlite-store.ts';

function savedOffset(dbFile: string): number {
  const db = new Database(dbFile, { readonly: true, fileMustExist: true });
  try {
    const r = db.prepare(`SELECT MAX("offset") AS o FROM positions`).get() as { o: number | null };
    return r.o ?? -1;
  } finally {
    db.close();
  }
}

for (const signal of ['SIGTERM', 'SIGKILL'] as const) {
  test(`after ${signal} a restart resumes where it stopped, with its counters, instead of re-reading the log`, () =>
    withDaemonDir('tsf-resume-', async ({ dir, log, start }) => {
      const dbFile = path.join(dir, 'tsfilter.db');
      // Old history that must not be counted twice: 4 failures of an address long ago, spaced so they never ban.
      const t = Date.now() - 120_000;
      writeFileSync(log, failed(t, '192.0.2.99'));
      const cfg = sshConfig(dir, log);
      let d = start(cfg);
      await d.waitFor(/msg=started/);
      for (let i = 0; i < 3; i++) appendFileSync(log, failed(t + 1000 + i * 1000, '192.0.2.20'));
      const size = statSync(log).size;
      await until(() => savedOffset(dbFile) === size, 20_000, 'the position to be saved');
      await d.stop(signal);

      d = start(cfg);
      await d.waitFor(/msg=started/);
      // 3 before the restart + 1 = 4 < 5: no ban. Re-reading the log would make it 3 + 3 + 1 and ban now.
      appendFileSync(log, failed(t + 5000, '192.0.2.20'));
      const size2 = statSync(log).size;
      await until(() => savedOffset(dbFile) === size2, 20_000, 'the new position to be saved');
      assert.equal(d.count(/msg=banned /), 0, `re-read or double counted:\n${d.out}`);
      // The fifth failure bans: the three counted before the restart were kept (lost counters would need 5 more).
      appendFileSync(log, failed(t + 6000, '192.0.2.20'));
      await d.waitFor(/msg=banned ip=192\.0\.2\.20 /);
      assert.equal(await d.stop('SIGTERM'), 0);
      const store = openSqliteStore(dbFile);
      try {
        assert.deepEqual(store.activeBans(Date.now()).map((b) => b.ip), ['192.0.2.20']);
      } finally {
        store.close();
      }
    }));
}

test('a ban the daemon reported survives an immediate kill -9', () =>
  withDaemonDir('tsf-kill-', async ({ dir, log, start }) => {
    const d = start(sshConfig(dir, log));
    await d.waitFor(/msg=started/);
    const t = Date.now();
    let burst = '';
    for (let ip = 1; ip <= 40; ip++) for (let i = 0; i < 5; i++) burst += failed(t + i, `203.0.113.${ip}`);
    appendFileSync(log, burst);
    await d.waitFor(/msg=banned ip=203\.0\.113\.\d+ /);
    d.child.kill('SIGKILL');
    await d.exited;
    const reported = [...d.out.matchAll(/msg=banned ip=(\S+) /g)].map((m) => m[1]!);
    assert.ok(reported.length > 0);
    const store = openSqliteStore(path.join(dir, 'tsfilter.db'));
    try {
      const active = new Set(store.activeBans(Date.now()).map((b) => b.ip));
      for (const ip of reported) assert.ok(active.has(ip), `${ip} was reported banned but is not in the store`);
    } finally {
      store.close();
    }
  }));
