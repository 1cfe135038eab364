process.env.TZ = 'UTC';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { Pipeline } from '../src/pipeline.ts';
import { compileRule } from '../src/rules/compile.ts';
import { ruleConfigFromJson } from '../src/config/load.ts';
import { createDetector } from '../src/detect/detector.ts';
import { IgnoreList } from '../src/detect/cidr-trie.ts';
import type { BanDecision } from '../src/detect/types.ts';

const config = JSON.parse(readFileSync(new URL('../config/config.default.json', import.meta.url), 'utf8'));
const ssh = compileRule(ruleConfigFromJson('ssh', config.settings.rules.ssh), { warn: () => {} });
const NOW = Date.parse('2026-11-21T10:00:00Z');

function run(lines: string[], failedAttempts = 3) {
  const detector = createDetector({
    policies: new Map([['ssh', { mode: 'window', failedAttempts, findTime: 600, requestTime: 5 }]]),
    ignore: IgnoreList.parse([]),
    maxTracked: 1000,
    forgetAfter: 3600,
  });
  const bans: BanDecision[] = [];
  const p = new Pipeline(detector, (d) => (bans.push(d), true));
  p.process(ssh, lines.map((text) => ({ text, source: 't' })), NOW);
  return { bans, stats: p.statsFor('ssh') };
}

/** The lines sshd 9.2 writes for one password attempt as a user that does not exist (seen in the e2e lab). */
const invalidUserAttempt = (pid: number, ip: string) => [
  `Nov 21 09:59:0${pid % 10} server sshd[${pid}]: Invalid user nosuchuser from ${ip} port ${40000 + pid}`,
  `Nov 21 09:59:0${pid % 10} server sshd[${pid}]: Failed password for invalid user nosuchuser from ${ip} port ${40000 + pid} ssh2`,
  `Nov 21 09:59:0${pid % 10} server sshd[${pid}]: Connection closed by invalid user nosuchuser ${ip} port ${40000 + pid} [preauth]`,
];

test('one failed login is counted once, however many lines sshd writes about it', () => {
  // Two typos of a user name: six matching lines, two attempts, no ban at 3.
  const r = run([...invalidUserAttempt(101, '192.0.2.5'), ...invalidUserAttempt(102, '192.0.2.5')]);
  assert.equal(r.stats.matched, 6);
  assert.equal(r.stats.repeats, 4);
  assert.deepEqual(r.bans, []);
  // The third attempt bans.
  const r3 = run([101, 102, 103].flatMap((pid) => invalidUserAttempt(pid, '192.0.2.5')));
  assert.deepEqual(r3.bans.map((b) => b.ip), ['192.0.2.5']);
});

test('several password attempts in one connection each count', () => {
  const conn = (n: number) =>
    Array.from({ length: n }, (_, i) => `Nov 21 09:59:1${i} server sshd[200]: Failed password for root from 192.0.2.6 port 50000 ssh2`);
  assert.equal(run(conn(2)).bans.length, 0);
  assert.deepEqual(run([...conn(3), 'Nov 21 09:59:19 server sshd[200]: Connection closed by authenticating user root 192.0.2.6 port 50000 [preauth]']).bans.map((b) => b.ip), ['192.0.2.6']);
});

test('a scanner that only probes user names still counts once per connection', () => {
  const probe = (pid: number) => [
    `Nov 21 09:59:00 server sshd[${pid}]: Invalid user admin from 192.0.2.7 port ${pid}`,
    `Nov 21 09:59:00 server sshd[${pid}]: Connection closed by invalid user admin 192.0.2.7 port ${pid} [preauth]`,
  ];
  assert.deepEqual(run([300, 301, 302].flatMap(probe)).bans.map((b) => b.ip), ['192.0.2.7']);
  assert.equal(run([300, 301].flatMap(probe)).bans.length, 0);
});

test('lines without a process id (PyFilter patterns, sshd -E logs) count one each, as PyFilter does', () => {
  const noHeader = invalidUserAttempt(400, '192.0.2.8').map((l) => l.replace(/^.*?sshd\[\d+\]: /, ''));
  assert.deepEqual(run(noHeader).bans.map((b) => b.ip), ['192.0.2.8']);
});
