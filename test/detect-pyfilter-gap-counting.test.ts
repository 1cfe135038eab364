import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createDetector } from '../src/detect/detector.ts';
import { IgnoreList } from '../src/detect/cidr-trie.ts';
import { MAX_EVIDENCE_LINES, type BanDecision, type CountingPolicy } from '../src/detect/types.ts';
import type { Match, MatchKind } from '../src/rules/types.ts';

const T0 = Date.UTC(2024, 0, 1);
const gap = (failedAttempts = 5, requestTime = 5): CountingPolicy => ({ mode: 'gap', failedAttempts, requestTime, findTime: 600 });

function detector(policies: Record<string, CountingPolicy> = { ssh: gap(), mysql: gap() }) {
  return createDetector({ policies: new Map(Object.entries(policies)), ignore: IgnoreList.EMPTY, maxTracked: 1000, forgetAfter: 3600 });
}
function m(ip: string, sec: number, rule = 'ssh', kind: MatchKind = 'failure', line = `${rule} ${kind} ${ip} @${sec}`): Match {
  return { ip, time: T0 + sec * 1000, rule, kind, line, pattern: 0 };
}
/** Feeds failures at the given seconds; returns the index of the failure that banned, or -1. */
function feed(d: ReturnType<typeof detector>, ip: string, secs: number[], rule = 'ssh'): { at: number; decision: BanDecision | null } {
  for (let i = 0; i < secs.length; i++) {
    const r = d.observe(m(ip, secs[i]!, rule));
    if (r) return { at: i, decision: r };
  }
  return { at: -1, decision: null };
}

test('six failures each within 5 s of the previous one ban on the sixth, not before', () => {
  const d = detector();
  const { at, decision } = feed(d, '192.0.2.1', [0, 1, 2, 3, 4, 5, 6]);
  assert.equal(at, 5);
  assert.ok(decision);
  assert.equal(decision.ip, '192.0.2.1');
  assert.equal(decision.rule, 'ssh');
  assert.equal(decision.failures, 6);
  assert.equal(decision.instant, false);
  assert.equal(decision.time, T0 + 5000);
  assert.deepEqual(decision.lines, [0, 1, 2, 3, 4, 5].map((s) => `ssh failure 192.0.2.1 @${s}`));
  assert.equal(d.size(), 0, 'the entry is removed after the decision');
});

test('five failures are not enough', () => {
  const d = detector();
  assert.equal(feed(d, '192.0.2.1', [0, 1, 2, 3, 4]).at, -1);
  assert.equal(d.size(), 1);
});

test('a gap of exactly request_time still counts; one millisecond more does not', () => {
  assert.equal(feed(detector(), '192.0.2.1', [0, 5, 10, 15, 20, 25]).at, 5);
  assert.equal(feed(detector(), '192.0.2.1', [0, 5.001, 10.002, 15.003, 20.004, 25.005, 30.006]).at, -1);
});

test('slower failures only move the time and never reset the count', () => {
  const d = detector();
  // 0,1,2: amount 2. 100: too slow, amount stays 2 but becomes the reference. 101..103: amount 3, 4, 5 -> ban.
  const r = feed(d, '192.0.2.7', [0, 1, 2, 100, 101, 102, 103]);
  assert.equal(r.at, 6, 'a reset would have needed five more failures after t=100');
  assert.equal(r.decision!.failures, 6, 'failures = amount + 1');
  // The lines that counted: the first failure and the five that added one; not the slow one at t=100.
  assert.deepEqual(r.decision!.lines, [0, 1, 2, 101, 102, 103].map((s) => `ssh failure 192.0.2.7 @${s}`));
});

test('failures spread wider than request_time never ban, however many', () => {
  const d = detector();
  const secs = Array.from({ length: 50 }, (_, i) => i * 6);
  assert.equal(feed(d, '192.0.2.9', secs).at, -1);
});

test('the slow failure becomes the new reference for the next one', () => {
  const d = detector(); // 0: first. 100: slow (amount 0). 104: within 5 s of 100, not of 0 -> amount 1 ...
  assert.equal(feed(d, '192.0.2.9', [0, 100, 104, 108, 112, 116, 120]).at, 6);
});

test('rules count separately: 3 on ssh + 2 on mysql is no ban', () => {
  const d = detector();
  const seq: [string, number][] = [['ssh', 0], ['mysql', 0.5], ['ssh', 1], ['mysql', 1.5], ['ssh', 2]];
  for (const [rule, s] of seq) assert.equal(d.observe(m('198.51.100.4', s, rule)), null);
  assert.equal(d.size(), 2);
  // Five each, interleaved within a second, still no ban; the sixth on ssh bans on ssh only.
  const d2 = detector();
  for (let i = 0; i < 5; i++) {
    assert.equal(d2.observe(m('198.51.100.4', i, 'ssh')), null);
    assert.equal(d2.observe(m('198.51.100.4', i + 0.5, 'mysql')), null);
  }
  const ban = d2.observe(m('198.51.100.4', 5, 'ssh'));
  assert.equal(ban?.rule, 'ssh');
  assert.equal(d2.size(), 1, 'the mysql entry is still tracked');
});

test('addresses count separately', () => {
  const d = detector();
  for (let i = 0; i < 5; i++) {
    assert.equal(d.observe(m('203.0.113.1', i)), null);
    assert.equal(d.observe(m('203.0.113.2', i)), null);
  }
  assert.equal(d.observe(m('203.0.113.2', 5))?.ip, '203.0.113.2');
  assert.equal(d.observe(m('203.0.113.1', 5))?.ip, '203.0.113.1');
});

test('negative time differences (out-of-order lines) count as within', () => {
  assert.equal(feed(detector(), '192.0.2.1', [100, 99, 98, 97, 96, 95]).at, 5);
  // 100, then 90 (-10 s: counts, and 90 becomes the reference), then 96 is +6 s from 90: too slow.
  const d = detector();
  const r = feed(d, '192.0.2.1', [100, 90, 96, 97, 98, 99, 100]);
  // amounts: 90 -> 1, 96 -> 1 (slow), 97 -> 2, 98 -> 3, 99 -> 4, 100 -> 5: ban on the last.
  assert.equal(r.at, 6);
});

test('failed_attempts is the number of counted gaps: 2 means three failures', () => {
  const d = detector({ ssh: gap(2, 5) });
  assert.equal(feed(d, '192.0.2.1', [0, 1, 2]).at, 2);
});

test('an instant-ban pattern bans on its first match and drops that rule\'s count', () => {
  const d = detector();
  feed(d, '192.0.2.5', [0, 1, 2]);
  const ban = d.observe(m('192.0.2.5', 3, 'ssh', 'instant', 'instant line'));
  assert.deepEqual(ban, { ip: '192.0.2.5', rule: 'ssh', time: T0 + 3000, failures: 1, instant: true, lines: ['instant line'] });
  assert.equal(d.size(), 0);
  // Counting afterwards starts from nothing.
  assert.equal(feed(d, '192.0.2.5', [4, 5, 6, 7, 8]).at, -1);
  // An instant match for an address never seen before bans too.
  assert.equal(d.observe(m('192.0.2.6', 0, 'mysql', 'instant'))?.instant, true);
});

test('evidence keeps only the most recent MAX_EVIDENCE_LINES lines', () => {
  const d = detector({ ssh: gap(30, 5) });
  const secs = Array.from({ length: 31 }, (_, i) => i);
  const r = feed(d, '192.0.2.1', secs);
  assert.equal(r.at, 30);
  assert.equal(r.decision!.failures, 31);
  assert.equal(r.decision!.lines.length, MAX_EVIDENCE_LINES);
  assert.deepEqual(r.decision!.lines, secs.slice(-MAX_EVIDENCE_LINES).map((s) => `ssh failure 192.0.2.1 @${s}`));
});

test('a rule without a configured policy counts with PyFilter\'s defaults', () => {
  const d = detector({});
  assert.equal(feed(d, '192.0.2.1', [0, 1, 2, 3, 4, 5], 'apache').at, 5);
});
