import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createDetector } from '../src/detect/detector.ts';
import { IgnoreList } from '../src/detect/cidr-trie.ts';
import type { CountingPolicy } from '../src/detect/types.ts';
import type { Match, MatchKind } from '../src/rules/types.ts';

const T0 = Date.UTC(2024, 0, 1);
const policies = new Map<string, CountingPolicy>([
  ['ssh', { mode: 'gap', failedAttempts: 5, requestTime: 5, findTime: 600 }],
  ['web', { mode: 'window', failedAttempts: 3, requestTime: 5, findTime: 60 }],
]);
const detector = () => createDetector({ policies, ignore: IgnoreList.EMPTY, maxTracked: 100, forgetAfter: 3600 });
const ev = (ip: string, sec: number, rule: string, kind: MatchKind = 'failure'): Match => ({ ip, time: T0 + sec * 1000, rule, kind, line: `${kind} ${ip}`, pattern: 0 });

test('a user who mistyped and then got in is not banned for it', () => {
  const d = detector();
  for (let s = 0; s < 5; s++) assert.equal(d.observe(ev('192.0.2.1', s, 'ssh')), null);
  assert.equal(d.observe(ev('192.0.2.1', 5, 'ssh', 'success')), null);
  assert.equal(d.size(), 0);
  // Without the success, this failure would have been the sixth.
  assert.equal(d.observe(ev('192.0.2.1', 6, 'ssh')), null);
  // After the success it takes six more failures again.
  for (let s = 7; s < 11; s++) assert.equal(d.observe(ev('192.0.2.1', s, 'ssh')), null);
  assert.equal(d.observe(ev('192.0.2.1', 11, 'ssh'))?.failures, 6);
});

test('without a success the same sequence bans (the test above can fail)', () => {
  const d = detector();
  let ban = null;
  for (let s = 0; s < 7 && !ban; s++) if (s !== 5) ban = d.observe(ev('192.0.2.1', s, 'ssh'));
  assert.ok(ban);
});

test('a success clears failures in window mode too', () => {
  const d = detector();
  d.observe(ev('192.0.2.1', 0, 'web'));
  d.observe(ev('192.0.2.1', 1, 'web'));
  d.observe(ev('192.0.2.1', 2, 'web', 'success'));
  assert.equal(d.observe(ev('192.0.2.1', 3, 'web')), null);
  assert.equal(d.observe(ev('192.0.2.1', 4, 'web')), null);
  assert.equal(d.observe(ev('192.0.2.1', 5, 'web'))?.failures, 3);
});

test('a success clears only its own rule and its own address', () => {
  const d = detector();
  for (let s = 0; s < 5; s++) {
    d.observe(ev('192.0.2.1', s, 'ssh'));
    d.observe(ev('192.0.2.2', s, 'ssh'));
  }
  d.observe(ev('192.0.2.1', 0, 'web'));
  d.observe(ev('192.0.2.1', 5, 'web', 'success')); // web success: ssh count of .1 stays
  d.observe(ev('192.0.2.2', 5, 'ssh', 'success')); // .2 cleared on ssh
  assert.equal(d.observe(ev('192.0.2.1', 6, 'ssh'))?.ip, '192.0.2.1');
  assert.equal(d.observe(ev('192.0.2.2', 6, 'ssh')), null);
});

test('a success for an address with no failures changes nothing and tracks nothing', () => {
  const d = detector();
  assert.equal(d.observe(ev('192.0.2.1', 0, 'ssh', 'success')), null);
  assert.equal(d.size(), 0);
  assert.deepEqual(d.dirty(), { changed: [], removed: [] });
});
