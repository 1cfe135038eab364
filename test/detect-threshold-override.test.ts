import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createDetector, type ThresholdOverride } from '../src/detect/detector.ts';
import { IgnoreList } from '../src/detect/cidr-trie.ts';
import type { CountingPolicy } from '../src/detect/types.ts';
import type { Match } from '../src/rules/types.ts';

// The detector half of a rule's country policy: a per-address threshold (src/geo/country-policy.ts supplies it).
const T0 = Date.UTC(2024, 0, 1);
const win = (failedAttempts: number, findTime: number): CountingPolicy => ({ mode: 'window', failedAttempts, findTime, requestTime: 5 });
const gap = (failedAttempts: number): CountingPolicy => ({ mode: 'gap', failedAttempts, findTime: 0, requestTime: 5 });
const fail = (ip: string, sec: number): Match => ({ ip, time: T0 + sec * 1000, rule: 'ssh', kind: 'failure', line: `fail ${ip} @${sec}`, pattern: 0 });

function detector(p: CountingPolicy, limits: Record<string, number | 'instant' | 'never'>, maxLimit: number) {
  const override: ThresholdOverride = { maxLimit, limitFor: (ip) => limits[ip] };
  return createDetector({ policies: new Map([['ssh', p]]), overrides: new Map([['ssh', override]]), ignore: IgnoreList.EMPTY, maxTracked: 1000, forgetAfter: 86400 });
}

test('a large number in a policy does not grow the memory of addresses on the rule\'s own threshold', () => {
  // failed_attempts 5 in 600 s; some country may fail 50 times. An address on the default, failing every 160 s (never
  // 5 within 600 s), keeps at most 5 times, not 50.
  const d = detector(win(5, 600), {}, 50);
  for (let i = 0; i < 60; i++) assert.equal(d.observe(fail('192.0.2.1', i * 160)), null);
  const saved = d.dirty().changed.find((c) => c.ip === '192.0.2.1')!;
  assert.equal((JSON.parse(saved.state) as { t: number[] }).t.length, 5);
});

test('a lowered threshold bans on the newest failures within find_time, and its evidence is only the lines that counted', () => {
  const d = detector(win(8, 600), { '192.0.2.3': 3 }, 8);
  const secs = [0, 350, 700, 1050];
  for (const s of secs) assert.equal(d.observe(fail('192.0.2.3', s)), null, `no ban at ${s}`);
  const ban = d.observe(fail('192.0.2.3', 1060));
  assert.ok(ban);
  assert.equal(ban.failures, 3);
  assert.equal(ban.limit, 3);
  assert.deepEqual(ban.lines, ['fail 192.0.2.3 @700', 'fail 192.0.2.3 @1050', 'fail 192.0.2.3 @1060']);
});

test('an address whose threshold rises while it is tracked (a new GeoIP database) grows its rings and bans at the new number', () => {
  const limits: Record<string, number> = {};
  const d = detector(win(3, 600), limits, 6);
  assert.equal(d.observe(fail('192.0.2.4', 0)), null);
  assert.equal(d.observe(fail('192.0.2.4', 1)), null);
  limits['192.0.2.4'] = 6;
  for (let s = 2; s < 5; s++) assert.equal(d.observe(fail('192.0.2.4', s)), null, `no ban at ${s}`);
  const ban = d.observe(fail('192.0.2.4', 5));
  assert.ok(ban, 'the 6th failure within find_time bans');
  assert.equal(ban.failures, 6);
  assert.deepEqual(ban.lines, [0, 1, 2, 3, 4, 5].map((s) => `fail 192.0.2.4 @${s}`));
});

test('gap counting: a country number replaces failed_attempts, "instant" bans at once, "never" never', () => {
  const d = detector(gap(5), { '192.0.2.5': 2, '192.0.2.6': 'instant', '192.0.2.7': 'never' }, 2);
  assert.equal(d.observe(fail('192.0.2.5', 0)), null);
  assert.equal(d.observe(fail('192.0.2.5', 1)), null);
  assert.equal(d.observe(fail('192.0.2.5', 2))?.failures, 3, 'gap counting bans at the count + 1');
  const instant = d.observe(fail('192.0.2.6', 0));
  assert.equal(instant?.instant, true);
  for (let s = 0; s < 30; s++) assert.equal(d.observe(fail('192.0.2.7', s)), null);
  assert.equal(d.size(), 0, '"never" addresses are not even tracked');
});
