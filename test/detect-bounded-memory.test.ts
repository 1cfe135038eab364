import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createDetector } from '../src/detect/detector.ts';
import { IgnoreList } from '../src/detect/cidr-trie.ts';
import type { CountingPolicy } from '../src/detect/types.ts';
import type { Match } from '../src/rules/types.ts';

const T0 = Date.UTC(2019, 5, 1); // old log times: replaying old logs must behave like live
const gap: CountingPolicy = { mode: 'gap', failedAttempts: 5, requestTime: 5, findTime: 600 };
const detector = (maxTracked: number, forgetAfter = 3600) =>
  createDetector({ policies: new Map([['ssh', gap], ['mysql', gap]]), ignore: IgnoreList.EMPTY, maxTracked, forgetAfter });
const fail = (ip: string, sec: number, rule = 'ssh'): Match => ({ ip, time: T0 + sec * 1000, rule, kind: 'failure', line: `fail ${ip}`, pattern: 0 });
const v4 = (i: number) => `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`;

test('the number of tracked entries never exceeds maxTracked; the excess is evicted', () => {
  const d = detector(100);
  for (let i = 0; i < 1000; i++) {
    d.observe(fail(i % 2 ? v4(i) : `2001:db8::${i.toString(16)}`, i / 1000));
    assert.ok(d.size() <= 100, `size ${d.size()} after ${i + 1}`);
  }
  assert.equal(d.size(), 100);
  assert.equal(d.evictions, 900);
  assert.equal(d.stats().evictions, 900);
});

test('eviction is least-recently-used: an address that keeps failing keeps its count', () => {
  const d = detector(10);
  const attacker = '192.0.2.66';
  let ban = null;
  let t = 0;
  // Between each of its failures, nine other addresses fail once: with LRU it is never the oldest.
  for (let k = 0; k < 6 && !ban; k++) {
    ban = d.observe(fail(attacker, (t += 0.01)));
    for (let j = 0; j < 9; j++) d.observe(fail(v4(k * 100 + j), (t += 0.01)));
  }
  assert.equal(ban?.ip, attacker);
  assert.ok(d.evictions > 0, 'others were evicted meanwhile');
});

test('an evicted entry has lost its count (FIFO would keep nothing better; this shows eviction is real)', () => {
  const d = detector(10);
  for (let s = 0; s < 5; s++) d.observe(fail('192.0.2.66', s * 0.1)); // amount 4: one more bans
  for (let j = 0; j < 10; j++) d.observe(fail(v4(j), 0.6)); // pushes it out
  assert.equal(d.observe(fail('192.0.2.66', 0.7)), null);
  // Control: with room, the same sixth failure bans.
  const roomy = detector(100);
  for (let s = 0; s < 5; s++) roomy.observe(fail('192.0.2.66', s * 0.1));
  for (let j = 0; j < 10; j++) roomy.observe(fail(v4(j), 0.6));
  assert.ok(roomy.observe(fail('192.0.2.66', 0.7)));
});

test('size counts (rule, address) pairs', () => {
  const d = detector(100);
  d.observe(fail('192.0.2.1', 0, 'ssh'));
  d.observe(fail('192.0.2.1', 0, 'mysql'));
  d.observe(fail('192.0.2.2', 0, 'ssh'));
  assert.equal(d.size(), 3);
  d.forget('192.0.2.1');
  assert.equal(d.size(), 1);
});

test('entries idle for forgetAfter (in log time) are dropped without a full scan', () => {
  const d = detector(1000, 60);
  for (let i = 0; i < 50; i++) d.observe(fail(v4(i), i * 0.01));
  assert.equal(d.size(), 50);
  // Log time moves 100 s on: each new line drops up to two idle entries from the LRU head.
  for (let i = 0; i < 30; i++) d.observe(fail(v4(1000 + i), 100 + i * 0.01));
  assert.equal(d.size(), 30, 'all 50 idle entries are gone after 25+ further lines');
  assert.equal(d.stats().expired, 50);
  assert.equal(d.evictions, 0);
});

test('idleness is judged by log time, not by the wall clock', () => {
  // Times in 2019, far behind the clock: nothing is forgotten while the log's own time has not moved on.
  const d = detector(1000, 60);
  for (let i = 0; i < 20; i++) d.observe(fail(v4(i), 0));
  for (let i = 0; i < 20; i++) d.observe(fail(v4(i), 59));
  d.sweep();
  assert.equal(d.size(), 20);
  // sweep(now) moves the watermark on when the logs are quiet.
  assert.equal(d.sweep(T0 + 200_000), 20);
  assert.equal(d.size(), 0);
});

test('a forgotten entry counts afresh', () => {
  const d = detector(1000, 60);
  for (let s = 0; s < 5; s++) d.observe(fail('192.0.2.7', s)); // amount 4
  d.observe(fail('198.51.100.1', 200)); // log time moves on
  // Had the count been kept, 200.5 (slow: only moves the time) and 201 (amount 5) would ban. It was forgotten.
  assert.equal(d.observe(fail('192.0.2.7', 200.5)), null);
  assert.equal(d.observe(fail('192.0.2.7', 201)), null);
  // Control with a long forgetAfter: the same lines ban.
  const keep = detector(1000, 3600);
  for (let s = 0; s < 5; s++) keep.observe(fail('192.0.2.7', s));
  keep.observe(fail('198.51.100.1', 200));
  assert.equal(keep.observe(fail('192.0.2.7', 200.5)), null);
  assert.ok(keep.observe(fail('192.0.2.7', 201)));
});

test('a huge line is not kept whole as evidence', () => {
  const d = detector(10);
  const huge = 'x'.repeat(8192);
  let ban = null;
  for (let s = 0; s < 6; s++) ban = d.observe({ ...fail('192.0.2.7', s), line: huge });
  assert.ok(ban);
  for (const l of ban.lines) assert.ok(l.length <= 512 && huge.startsWith(l));
});
