process.env.TZ = 'UTC';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { compileTimeFormat, parseIso, TimeFormatError, YEAR_SKEW_MS } from '../src/rules/time.ts';

const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());
const at = (s: string) => Date.parse(s);

test('syslog "%b %d %H:%M:%S" gets the current year when read the same year', () => {
  const p = compileTimeFormat('%b %d %H:%M:%S');
  assert.equal(iso(p.parse('Feb 12 14:10:21', at('2026-03-01T00:00:00Z'))), '2026-02-12T14:10:21.000Z');
  // Python-style whitespace: the single space in the format also matches syslog's two-space padding.
  assert.equal(iso(p.parse('Jun  8 10:44:36', at('2026-07-01T00:00:00Z'))), '2026-06-08T10:44:36.000Z');
  assert.equal(iso(p.parse('Nov 2 15:40:14', at('2026-12-01T00:00:00Z'))), '2026-11-02T15:40:14.000Z');
});

test('year rollover: December lines read in January belong to last year', () => {
  const p = compileTimeFormat('%b %d %H:%M:%S');
  const jan1 = at('2026-01-01T00:00:30Z');
  assert.equal(iso(p.parse('Dec 31 23:59:59', jan1)), '2025-12-31T23:59:59.000Z');
  assert.equal(iso(p.parse('Jan  1 00:00:10', jan1)), '2026-01-01T00:00:10.000Z');
  // The same cached string must be re-placed when `now` moves into another year.
  assert.equal(iso(p.parse('Dec 31 23:59:59', at('2025-12-31T23:59:59Z'))), '2025-12-31T23:59:59.000Z');
  assert.equal(iso(p.parse('Dec 31 23:59:59', at('2027-01-02T00:00:00Z'))), '2026-12-31T23:59:59.000Z');
});

test('yearless times up to one day in the future keep the current year (skew tolerance), later ones go back a year', () => {
  const p = compileTimeFormat('%b %d %H:%M:%S');
  const now = at('2026-03-03T12:00:00Z');
  assert.equal(YEAR_SKEW_MS, 86_400_000);
  assert.equal(iso(p.parse('Mar  4 11:00:00', now)), '2026-03-04T11:00:00.000Z'); // 23 h ahead: skew
  assert.equal(iso(p.parse('Mar  4 13:00:00', now)), '2025-03-04T13:00:00.000Z'); // 25 h ahead: last year
  // New Year's Eve: a host whose clock is slightly ahead already writes "Jan 1".
  assert.equal(iso(p.parse('Jan  1 00:00:05', at('2025-12-31T23:59:50Z'))), '2026-01-01T00:00:05.000Z');
});

test('Feb 29 without a year goes to the last leap year; an impossible date is null', () => {
  const p = compileTimeFormat('%b %d %H:%M:%S');
  assert.equal(iso(p.parse('Feb 29 10:00:00', at('2025-03-01T00:00:00Z'))), '2024-02-29T10:00:00.000Z');
  assert.equal(p.parse('Feb 30 10:00:00', at('2025-03-01T00:00:00Z')), null);
  assert.equal(compileTimeFormat('%Y-%m-%d').parse('2025-02-29', 0), null);
});

test('Python whitespace: a run of spaces in the format matches one or more whitespace characters', () => {
  const pyfilterMysql = compileTimeFormat('%Y-%m-%d  %H:%M:%S'); // PyFilter's format, two spaces
  assert.equal(iso(pyfilterMysql.parse('2026-11-21 05:04:00', 0)), '2026-11-21T05:04:00.000Z');
  assert.equal(iso(pyfilterMysql.parse('2026-11-21  5:04:00', 0)), '2026-11-21T05:04:00.000Z');
  const one = compileTimeFormat('%Y-%m-%d %H:%M:%S');
  assert.equal(iso(one.parse('2026-11-21  5:04:00', 0)), '2026-11-21T05:04:00.000Z');
  assert.equal(iso(one.parse('2026-11-21\t05:04:00', 0)), '2026-11-21T05:04:00.000Z');
  assert.equal(one.parse('2026-11-2105:04:00', 0), null);
});

test('%z reads +hhmm, ±hh:mm and Z offsets', () => {
  const p = compileTimeFormat('%d/%b/%Y:%H:%M:%S %z');
  assert.equal(iso(p.parse('21/Nov/2026:05:04:00 +0100', 0)), '2026-11-21T04:04:00.000Z');
  assert.equal(iso(p.parse('21/Nov/2026:05:04:00 -05:30', 0)), '2026-11-21T10:34:00.000Z');
  assert.equal(iso(p.parse('21/Nov/2026:05:04:00 +0000', 0)), '2026-11-21T05:04:00.000Z');
  assert.equal(iso(p.parse('21/nov/2026:05:04:00 Z', 0)), '2026-11-21T05:04:00.000Z');
});

test('RFC 3339 / ISO 8601 is recognised without a format and as the fallback of any format', () => {
  const auto = compileTimeFormat();
  assert.equal(iso(auto.parse('2026-11-21T05:04:00.123456+01:00', 0)), '2026-11-21T04:04:00.123Z');
  assert.equal(iso(auto.parse('2026-11-21 05:04:00Z', 0)), '2026-11-21T05:04:00.000Z');
  assert.equal(iso(auto.parse('2026-11-21T05:04:00-0230', 0)), '2026-11-21T07:34:00.000Z');
  assert.equal(iso(auto.parse('2026-11-21T05:04:00', 0)), '2026-11-21T05:04:00.000Z'); // local (TZ=UTC here)
  assert.equal(iso(auto.parse('2023-11-14T00:20:42.738197+01:00', 0)), '2023-11-13T23:20:42.738Z');
  const syslog = compileTimeFormat('%b %d %H:%M:%S');
  assert.equal(iso(syslog.parse('2026-11-21T05:04:00.123456+01:00', 0)), '2026-11-21T04:04:00.123Z');
  assert.equal(auto.parse('Feb 12 14:10:21', 0), null);
  assert.equal(parseIso('2026-13-01T00:00:00Z'), null);
  assert.equal(parseIso('2026-11-21T25:00:00Z'), null);
});

test('the other strptime directives', () => {
  const cases: [string, string, string][] = [
    ['%I:%M %p %d.%m.%Y', '07:15 PM 03.04.2025', '2025-04-03T19:15:00.000Z'],
    ['%I:%M %p %d.%m.%Y', '12:15 am 03.04.2025', '2025-04-03T00:15:00.000Z'],
    ['%Y %j %H', '2024 060 05', '2024-02-29T05:00:00.000Z'],
    ['%y-%m-%d', '69-01-02', '1969-01-02T00:00:00.000Z'],
    ['%y-%m-%d', '68-01-02', '2068-01-02T00:00:00.000Z'],
    ['%A, %d %B %Y %T', 'Saturday, 21 November 2026 05:04:00', '2026-11-21T05:04:00.000Z'],
    ['%a %h %e %T %Y', 'Sat Nov  1 05:04:00 2026', '2026-11-01T05:04:00.000Z'],
    ['%F %T.%f', '2026-11-21 05:04:00.5', '2026-11-21T05:04:00.500Z'],
    ['%D %R', '11/21/26 05:04', '2026-11-21T05:04:00.000Z'],
    ['%s', '1700000000', '2023-11-14T22:13:20.000Z'],
    ['%Y-%m-%d %H:%M:%S %Z', '2026-11-21 05:04:00 UTC', '2026-11-21T05:04:00.000Z'],
    ['%%%Y%%', '%2026%', '2026-01-01T00:00:00.000Z'],
  ];
  for (const [fmt, s, want] of cases) assert.equal(iso(compileTimeFormat(fmt).parse(s, 0)), want, `${fmt} on ${s}`);
});

test('a string that fits neither the format nor ISO is null; a bad format throws', () => {
  const p = compileTimeFormat('%b %d %H:%M:%S');
  assert.equal(p.parse('Foo 12 14:10:21', 0), null);
  assert.equal(p.parse('Feb 12 14:10:21 trailing', 0), null);
  assert.equal(p.parse('', 0), null);
  assert.throws(() => compileTimeFormat('%Y-%Q'), TimeFormatError);
  assert.throws(() => compileTimeFormat('%Y %'), TimeFormatError);
});

test('a yearless Feb 29 read in a non-leap year lands in the last leap year', () => {
  const p = compileTimeFormat('%b %d %H:%M:%S');
  const now = Date.parse('2026-03-01T12:00:00Z');
  assert.equal(p.parse('Feb 29 10:00:00', now), Date.parse('2024-02-29T10:00:00Z'));
  assert.equal(p.parse('Feb 28 10:00:00', now), Date.parse('2026-02-28T10:00:00Z'));
});
