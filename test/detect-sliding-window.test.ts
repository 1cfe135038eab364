import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createDetector } from '../src/detect/detector.ts';
import { IgnoreList } from '../src/detect/cidr-trie.ts';
import type { CountingPolicy } from '../src/detect/types.ts';
import type { Match } from '../src/rules/types.ts';

const T0 = Date.UTC(2024, 0, 1);
const win = (failedAttempts: number, findTime: number): CountingPolicy => ({ mode: 'window', failedAttempts, findTime, requestTime: 5 });
const detector = (p: CountingPolicy, forgetAfter = 86400) =>
  createDetector({ policies: new Map([['web', p]]), ignore: IgnoreList.EMPTY, maxTracked: 1000, forgetAfter });
const fail = (ip: string, sec: number): Match => ({ ip, time: T0 + sec * 1000, rule: 'web', kind: 'failure', line: `fail ${ip} @${sec}`, pattern: 0 });

function firstBan(d: ReturnType<typeof detector>, ip: string, secs: number[]): number {
  for (let i = 0; i < secs.length; i++) if (d.observe(fail(ip, secs[i]!))) return i;
  return -1;
}

test('maxretry failures within findtime ban on the maxretry-th failure', () => {
  const d = detector(win(3, 10));
  assert.equal(d.observe(fail('192.0.2.1', 0)), null);
  assert.equal(d.observe(fail('192.0.2.1', 4)), null);
  const ban = d.observe(fail('192.0.2.1', 9));
  assert.ok(ban);
  assert.equal(ban.failures, 3);
  assert.equal(ban.instant, false);
  assert.deepEqual(ban.lines, ['fail 192.0.2.1 @0', 'fail 192.0.2.1 @4', 'fail 192.0.2.1 @9']);
  assert.equal(d.size(), 0);
});

test('failures that slid out of the window do not count; the window moves on', () => {
  const d = detector(win(3, 10));
  // 0, 6, 12: the one at 0 is 12 s old at 12. Then 14: 6, 12, 14 are within 10 s.
  assert.equal(firstBan(d, '192.0.2.1', [0, 6, 12, 14]), 3);
});

test('a failure exactly findtime old is still inside the window; a millisecond more is outside', () => {
  assert.equal(firstBan(detector(win(2, 10)), '192.0.2.1', [0, 10]), 1);
  assert.equal(firstBan(detector(win(2, 10)), '192.0.2.1', [0, 10.001]), -1);
});

test('unlike gap counting, evenly spaced failures under findtime ban even when each gap is long', () => {
  // 5 failures 100 s apart within findtime 600: banned; gap mode with request_time 5 would never count them.
  assert.equal(firstBan(detector(win(5, 600)), '192.0.2.1', [0, 100, 200, 300, 400]), 4);
});

test('maxretry 1 bans on the first failure', () => {
  const d = detector(win(1, 10));
  const ban = d.observe(fail('192.0.2.1', 0));
  assert.equal(ban?.failures, 1);
  assert.equal(d.size(), 0);
});

test('an entry keeps at most maxretry timestamps, however many failures it sees', () => {
  const d = detector(win(3, 10));
  // 1000 failures 6 s apart: never three in 10 s.
  for (let i = 0; i < 1000; i++) assert.equal(d.observe(fail('192.0.2.1', i * 6)), null);
  const [st] = d.dirty().changed;
  assert.ok(st);
  assert.ok(st.state.length < 80, `state stays small: ${st.state}`);
  // and it still counts correctly: 998*6, 999*6 and one a second later are three within 10 s.
  const ban = d.observe(fail('192.0.2.1', 999 * 6 + 1));
  assert.deepEqual(ban?.lines, [998 * 6, 999 * 6, 999 * 6 + 1].map((s) => `fail 192.0.2.1 @${s}`));
});

test('an entry whose failures all left the window is dropped', () => {
  const d = detector(win(3, 10));
  d.observe(fail('192.0.2.1', 0));
  d.observe(fail('192.0.2.1', 1));
  assert.equal(d.size(), 1);
  // Another address's lines move log time on; the first entry's failures are all older than 10 s.
  for (let i = 0; i < 4; i++) d.observe(fail('198.51.100.1', 20 + i * 11));
  assert.equal(d.stats().size, 1, 'only the most recent 198.51.100.1 entry is left');
  assert.ok(d.stats().expired >= 1);
  // Counting for the dropped address starts afresh (and would anyway: its failures left the window).
  assert.equal(firstBan(d, '192.0.2.1', [60, 61]), -1);
});
