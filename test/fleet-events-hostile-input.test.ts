import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseEvent } from '../src/store/fleet-event.ts';

const ok = { v: 1, kind: 'ban', ip: '192.0.2.7', node: 'A', at: 1_700_000_000_000, rule: 'ssh', reason: 'r', createdAt: 1_700_000_000_000, expiresAt: null };

test('a valid event parses, with its address canonical and its scope normalised', () => {
  const r = parseEvent(JSON.stringify({ ...ok, ip: '2001:DB8::0007', scope: { protocol: 'tcp', ports: [443, 22, 22] } }), 16384);
  assert.ok('event' in r);
  assert.equal(r.event.ip, '2001:db8::7');
  assert.deepEqual(r.event.scope, { protocol: 'tcp', ports: [22, 443] });
  assert.equal(r.event.countryCode, null, 'older nodes send no ISO code');
  const c = parseEvent(JSON.stringify({ ...ok, country: 'United Kingdom', countryCode: 'GB' }), 16384);
  assert.ok('event' in c && c.event.country === 'United Kingdom' && c.event.countryCode === 'GB');
  const u = parseEvent(JSON.stringify({ v: 1, kind: 'unban', ip: '198.51.100.0/24', node: 'B', at: 5 }), 16384);
  assert.ok('event' in u && u.event.kind === 'unban' && u.event.ip === '198.51.100.0/24');
});

test('hostile or broken events are refused with the reason, never thrown', () => {
  const cases: [unknown, RegExp][] = [
    ['not json', /not JSON/],
    [JSON.stringify([1]), /not a JSON object/],
    [JSON.stringify({ ...ok, v: 2 }), /version/],
    [JSON.stringify({ ...ok, kind: 'drop table' }), /kind/],
    [JSON.stringify({ ...ok, ip: '999.1.1.1' }), /ip/],
    [JSON.stringify({ ...ok, ip: '192.0.2.7; rm -rf /' }), /ip/],
    [JSON.stringify({ ...ok, node: 'a\nb' }), /node/],
    [JSON.stringify({ ...ok, node: '' }), /node/],
    [JSON.stringify({ ...ok, at: 'now' }), /at/],
    [JSON.stringify({ ...ok, rule: 'x'.repeat(101) }), /rule/],
    [JSON.stringify({ ...ok, expiresAt: '2030' }), /expiresAt/],
    [JSON.stringify({ ...ok, scope: { protocol: 'icmp', ports: [1] } }), /scope/],
    [JSON.stringify({ ...ok, scope: { protocol: 'tcp', ports: [0] } }), /scope/],
    [JSON.stringify({ ...ok, scope: { protocol: 'tcp', ports: Array.from({ length: 16 }, (_, i) => i + 1) } }), /scope/],
    [JSON.stringify({ ...ok, reason: 'x'.repeat(20_000) }), /larger than/],
    [JSON.stringify({ ...ok, countryCode: 'gb; drop' }), /countryCode/],
    [JSON.stringify({ ...ok, countryCode: 44 }), /countryCode/],
  ];
  for (const [text, why] of cases) {
    const r = parseEvent(text as string, 16384);
    assert.ok('error' in r, `accepted: ${String(text).slice(0, 80)}`);
    assert.match(r.error, why, String(text).slice(0, 80));
  }
});

test('times a JavaScript date cannot show, or a ban longer than 100 years, are refused: a hostile node cannot wedge the views', () => {
  const YEAR_9999_END = 253_402_300_799_999;
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ ...ok, expiresAt: 1e16 }, /expiresAt must be null \(permanent\) or a time in ms after 1970 and not after the year 9999/],
    [{ ...ok, createdAt: 1e16, expiresAt: null }, /createdAt must be a time/],
    [{ ...ok, at: 1e16 }, /at must be a time/],
    [{ ...ok, at: 8.64e15 + 1 }, /at must be a time/],
    [{ ...ok, createdAt: 0 }, /createdAt/],
    [{ ...ok, createdAt: -5 }, /createdAt/],
    [{ ...ok, expiresAt: -1 }, /expiresAt/],
    [{ ...ok, expiresAt: YEAR_9999_END + 1 }, /expiresAt/],
    [{ ...ok, createdAt: 1_700_000_000_000, expiresAt: 1_700_000_000_000 + 3_153_600_000_000 + 2 * 86_400_000 }, /expiresAt lies more than 3153600000 s \(100 years/],
    [{ v: 1, kind: 'unban', ip: '192.0.2.7', node: 'B', at: 1e300 }, /at must be a time/],
  ];
  for (const [ev, why] of cases) {
    const r = parseEvent(JSON.stringify(ev), 16384);
    assert.ok('error' in r, `accepted: ${JSON.stringify(ev)}`);
    assert.match(r.error, why, JSON.stringify(ev));
  }
  // The longest ban there is, and the last representable times, still pass.
  for (const ev of [
    { ...ok, expiresAt: ok.createdAt + 3_153_600_000_000 },
    { ...ok, createdAt: YEAR_9999_END, expiresAt: YEAR_9999_END, at: YEAR_9999_END },
  ]) {
    assert.ok('event' in parseEvent(JSON.stringify(ev), 16384), JSON.stringify(ev));
  }
});
