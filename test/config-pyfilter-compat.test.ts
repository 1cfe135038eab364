import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { loadConfigFile } from '../src/config/load.ts';
import { SHARED } from './helpers/cli.ts';

const PYFILTER_CONFIG = path.join(SHARED, 'reference/pyfilter/config.default.json');

test("PyFilter's default config.json loads unchanged with PyFilter's semantics", () => {
  const c = loadConfigFile(PYFILTER_CONFIG, { cwd: '/opt/pyfilter' });
  assert.equal(c.database, 'sqlite');
  assert.equal(c.denyType, 'DROP');
  assert.deepEqual(c.ignoredIps, ['127.0.0.1']);
  assert.equal(c.banTime, -1, 'PyFilter bans are permanent');
  // PyFilter keeps PyFilter.db and Logs/ in its working directory.
  assert.equal(c.sqlitePath, '/opt/pyfilter/PyFilter.db');
  assert.deepEqual(c.logging, { active: true, directory: '/opt/pyfilter/Logs' });
  assert.equal(c.serverName, '1');
  assert.deepEqual(
    c.rules.map((r) => r.name),
    ['ssh', 'mysql', 'apache', 'nginx'],
  );
  for (const r of c.rules) {
    assert.deepEqual(r.policy, { failedAttempts: 5, mode: 'gap', requestTime: 5, findTime: 0 }, r.name);
    assert.equal(r.banTime, -1);
  }
  const ssh = c.rules.find((r) => r.name === 'ssh')!;
  assert.deepEqual(ssh.logFiles, ['/var/log/auth.log']);
  assert.equal(ssh.match.patterns.length, 6);
  assert.deepEqual(ssh.match.patterns[5]?.[1], true, 'the last ssh pattern is an instant ban');
  assert.equal(ssh.match.groupOrder, 'time-host');
  const mysql = c.rules.find((r) => r.name === 'mysql')!;
  assert.deepEqual(mysql.logFiles, [], 'an empty log_files disables the rule');
  const apache = c.rules.find((r) => r.name === 'apache')!;
  assert.equal(apache.match.groupOrder, 'host-time');
  assert.deepEqual(apache.match.lists, { urls: ['/login/', '/admin/'] });
  assert.deepEqual(apache.match.httpStatusBlocks, [200]);
  assert.equal(apache.match.timeFormat, '%d/%b/%Y:%H:%M:%S');
});

test('our config/config.default.json loads and opts into window counting, expiring bans and CIDR ignores', () => {
  const c = loadConfigFile(path.join(import.meta.dirname, '../config/config.default.json'));
  const ssh = c.rules.find((r) => r.name === 'ssh')!;
  assert.ok(ssh.enabled);
  assert.equal(ssh.policy.mode, 'window');
  assert.ok(ssh.policy.findTime > 0);
  assert.ok(c.banTime > 0);
  assert.ok(c.ignoredIps.some((e) => e.includes('/')), 'ships a CIDR ignore entry');
  assert.ok(ssh.match.successPatterns.length > 0, 'the SSH rule has success patterns');
  assert.ok(ssh.journal, 'the SSH rule can read the journal');
  assert.equal(c.dataDir, '/var/lib/tsfilter');
});
