process.env.TZ = 'UTC';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { compileRule } from '../src/rules/compile.ts';
import { PatternError } from '../src/rules/types.ts';
import type { PatternSpec, RuleConfig } from '../src/rules/types.ts';
import { requiredLiteral, translatePython } from '../src/rules/pyregex.ts';

const NOW = Date.parse('2026-03-01T00:00:00Z');

function rule(patterns: PatternSpec[], extra: Partial<RuleConfig> = {}): RuleConfig {
  return { name: 't', patterns, successPatterns: [], lists: {}, groupOrder: 'time-host', useDns: false, ...extra };
}
function warnings() {
  const list: { msg: string; fields?: Record<string, unknown> }[] = [];
  return { list, warn: (msg: string, fields?: Record<string, unknown>) => list.push({ msg, fields }) };
}
const line = (text: string, time?: number) => (time === undefined ? { text, source: 'f' } : { text, source: 'f', time });

function refused(spec: PatternSpec, re: RegExp, extra: Partial<RuleConfig> = {}, list = 'regex_patterns') {
  const cfg = list === 'regex_patterns' ? rule([spec], extra) : rule([], { successPatterns: [spec as string], ...extra });
  assert.throws(() => compileRule(cfg, { warn: () => {} }), (e: unknown) => {
    assert.ok(e instanceof PatternError, String(e));
    assert.equal(e.rule, 't');
    assert.equal(e.list, list);
    assert.equal(e.index, 0);
    assert.match(e.message, re);
    return true;
  });
}

test('bad patterns are refused with a PatternError naming rule, list and index', () => {
  refused('(?<host>\\d+', /invalid regular expression/);
  refused('from \\S+ port', /no host group/);
  refused('(?<time>\\S+) from (?<ip>\\S+)', /no \(\?<host>/);
  refused('(?P<host>\\S+) (?P=host)', /backreference/);
  refused('(?<host>\\S+) (?=x)', /linear time.*stall the daemon/);
  refused('(?<host>\\S+) (?<!x)y', /linear time/);
  refused('(\\S+) (\\S+) \\2', /linear time/);
  refused('(?<host>\\S+) a{1,100}', /linear time/);
  refused(['POST ({}) (?<host>\\S+)', 'paths'], /list "paths".*does not define.*urls/, { lists: { urls: ['/a'] } });
  refused(['POST (?<host>\\S+)', 'urls'], /no \{\}/, { lists: { urls: ['/a'] } });
  refused(['(?<host>\\S+)', 5 as unknown as true], /second item/);
  refused(['(?<host>\\S+)', true], /plain strings/, {}, 'success_patterns');
  refused('(?x)(?<host>\\S+)', /verbose/);
  refused('', /empty/);
  assert.throws(() => compileRule(rule(['(?<host>\\S+)'], { timeFormat: '%Q' }), { warn: () => {} }),
    (e: unknown) => e instanceof PatternError && e.list === 'time_format');
});

test('Python syntax is translated: (?P<name>), leading (?i), \\A and \\Z', () => {
  assert.deepEqual(translatePython('(?i)(?s)\\Afrom (?P<host>\\S+)\\Z'), { source: '^from (?<host>\\S+)$', flags: 'is' });
  assert.deepEqual(translatePython('[\\A(?P<x>]'), { source: '[\\A(?P<x>]', flags: '' });
  const m = compileRule(rule(['(?i)\\AFAILED for (?P<user>\\w+) from (?P<host>\\S+)\\Z']), { warn: () => {} });
  const r = m.match(line('failed for bob from 192.0.2.1'), NOW);
  assert.equal(r?.ip, '192.0.2.1');
  assert.equal(r?.user, 'bob');
  assert.equal(m.match(line('x failed for bob from 192.0.2.1'), NOW), null); // \A anchors
});

test('patterns search (unanchored) like Python findall; positional time-host groups', () => {
  const m = compileRule(rule(['(\\w{3} \\d+ [\\d:]+) .*Failed for \\w+ from (\\S+)'], { timeFormat: '%b %d %H:%M:%S' }), { warn: () => {} });
  const r = m.match(line('junk Feb 12 14:10:21 host x: Failed for a from 198.51.100.4'), NOW);
  assert.deepEqual(r, { ip: '198.51.100.4', time: Date.parse('2026-02-12T14:10:21Z'), rule: 't', kind: 'failure',
    line: 'junk Feb 12 14:10:21 host x: Failed for a from 198.51.100.4', pattern: 0 });
});

test('first matching failure pattern wins; instant ban kind; success patterns come after failures', () => {
  const m = compileRule(rule(['bad (?<host>\\S+)', ['very bad (?<host>\\S+)', true]], {
    successPatterns: ['good (?<host>\\S+)'],
  }), { warn: () => {} });
  assert.equal(m.match(line('bad 192.0.2.1'), NOW)?.kind, 'failure');
  const inst = m.match(line('very bad 192.0.2.2'), NOW);
  assert.equal(inst?.kind, 'failure'); // "bad (?<host>)" also matches and comes first
  assert.equal(inst?.pattern, 0);
  const m2 = compileRule(rule([['very bad (?<host>\\S+)', true], 'bad (?<host>\\S+)'], { successPatterns: ['good (?<host>\\S+)', 'bad (?<host>\\S+)'] }), { warn: () => {} });
  assert.deepEqual([m2.match(line('very bad 192.0.2.2'), NOW)?.kind, m2.match(line('very bad 192.0.2.2'), NOW)?.pattern], ['instant', 0]);
  assert.deepEqual([m2.match(line('bad 192.0.2.2'), NOW)?.kind, m2.match(line('bad 192.0.2.2'), NOW)?.pattern], ['failure', 1]);
  assert.deepEqual([m2.match(line('good 192.0.2.3'), NOW)?.kind, m2.match(line('good 192.0.2.3'), NOW)?.pattern], ['success', 0]);
  assert.equal(m2.match(line('neutral 192.0.2.3'), NOW), null);
});

test('[pattern, "key"] substitutes the list joined with |', () => {
  const m = compileRule(rule([['^(?<host>\\S+) "POST ({}) ', 'urls']], { lists: { urls: ['/login/', '/admin/'] } }), { warn: () => {} });
  assert.equal(m.match(line('192.0.2.1 "POST /admin/ HTTP/1.1"'), NOW)?.ip, '192.0.2.1');
  assert.equal(m.match(line('192.0.2.1 "POST /other/ HTTP/1.1"'), NOW), null);
});

test('host-time positional order with the 4th group as HTTP status checked against httpStatusBlocks', () => {
  const cfg = rule(['^(\\S+) \\[([^\\]]+)\\] "POST (\\S+) [^"]*" (\\d{3})'], {
    groupOrder: 'host-time', httpStatusBlocks: [401, 403], timeFormat: '%d/%b/%Y:%H:%M:%S %z',
  });
  const m = compileRule(cfg, { warn: () => {} });
  const r = m.match(line('203.0.113.5 [21/Nov/2025:05:04:00 +0100] "POST /login HTTP/1.1" 401 12'), NOW);
  assert.deepEqual([r?.ip, r?.status, r?.time], ['203.0.113.5', 401, Date.parse('2025-11-21T04:04:00Z')]);
  assert.equal(m.match(line('203.0.113.5 [21/Nov/2025:05:04:00 +0100] "POST /login HTTP/1.1" 302 12'), NOW), null);
});

test('IPv6 brackets are stripped and IPv4-mapped addresses become IPv4', () => {
  const m = compileRule(rule(['from (?<host>\\S+) port']), { warn: () => {} });
  assert.equal(m.match(line('from [2001:DB8::0:1] port 22'), NOW)?.ip, '2001:db8::1');
  assert.equal(m.match(line('from ::ffff:198.51.100.9 port 22'), NOW)?.ip, '198.51.100.9');
  assert.equal(m.match(line('from 2001:db8:0:0:0:0:0:2 port 22'), NOW)?.ip, '2001:db8::2');
});

test('a host that is not an IP is skipped with a rate-limited warning (one per pattern per interval, with a suppressed count)', () => {
  const w = warnings();
  const m = compileRule(rule(['from (?<host>\\S+) port', 'by (?<host>\\S+)']), { warn: w.warn, warnIntervalMs: 50 });
  for (let i = 0; i < 1000; i++) assert.equal(m.match(line(`from evil${i}.example port 22`), NOW), null);
  assert.equal(w.list.length, 1);
  assert.match(w.list[0]!.msg, /not an IP address/);
  m.match(line('by 1.2.3'), NOW); // another pattern: its own budget
  assert.equal(w.list.length, 2);
  const until = Date.now() + 60;
  while (Date.now() < until) { /* wait for the interval */ }
  m.match(line('from again.example port 22'), NOW);
  assert.equal(w.list.length, 3);
  assert.equal(w.list[2]!.fields?.['suppressed'], 999);
});

test('host names are resolved only when the rule opts into DNS and a resolver is given', () => {
  const calls: string[] = [];
  const resolve = (h: string) => (calls.push(h), h === 'good.example' ? '::ffff:192.0.2.77' : null);
  const off = compileRule(rule(['from (?<host>\\S+) port']), { warn: () => {}, resolve });
  assert.equal(off.match(line('from good.example port 22'), NOW), null);
  assert.deepEqual(calls, []);
  const w = warnings();
  const on = compileRule(rule(['from (?<host>\\S+) port'], { useDns: true }), { warn: w.warn, resolve });
  assert.equal(on.match(line('from good.example port 22'), NOW)?.ip, '192.0.2.77');
  assert.equal(on.match(line('from bad.example port 22'), NOW), null);
  assert.deepEqual(calls, ['good.example', 'bad.example']);
  assert.match(w.list[0]!.msg, /cannot resolve/);
});

test('time: captured, else the source time, else arrival; unparseable captured time warns and uses source/arrival', () => {
  const w = warnings();
  const m = compileRule(rule(['^(?:(?<time>\\w{3} +\\d+ [\\d:]+) )?x (?<host>\\S+)$'], { timeFormat: '%b %d %H:%M:%S' }), { warn: w.warn });
  assert.equal(m.match(line('Feb 12 14:10:21 x 192.0.2.1'), NOW)?.time, Date.parse('2026-02-12T14:10:21Z'));
  assert.equal(m.match(line('x 192.0.2.1', 1234), NOW)?.time, 1234);
  assert.equal(m.match(line('x 192.0.2.1'), NOW)?.time, NOW);
  assert.equal(m.match(line('Foo 12 14:10:21 x 192.0.2.1', 777), NOW)?.time, 777);
  assert.equal(m.match(line('Foo 12 14:10:21 x 192.0.2.1'), NOW)?.time, NOW);
  assert.equal(w.list.length, 1);
  assert.match(w.list[0]!.msg, /cannot parse time "Foo 12 14:10:21"/);
});

test('the includes() pre-filter literal is a substring every match must contain', () => {
  const lit = (s: string) => requiredLiteral(translatePython(s).source, translatePython(s).flags);
  assert.equal(lit('^(?:hdr )?Failed (?:password|none) for (?<user>.*) from (?<host>\\S+) port \\d+$'), 'Failed ');
  assert.equal(lit('Invalid user (?<user>.*) from'), 'Invalid user ');
  assert.equal(lit('abcdx?yz (?<host>\\S+)'), 'abcd');
  assert.equal(lit('abcd+ (?<host>\\S+)'), 'abcd');
  assert.equal(lit('a|bcdefg'), null);
  assert.equal(lit('(?i)Failed password'), null);
  assert.equal(lit('\\x41\\x42\\x43(?<host>\\S+)'), null);
  assert.equal(lit('\\[preauth\\] (?<host>\\S+)'), '[preauth] ');
  assert.equal(lit('x{0,3}yyy(?:zzzz)?'), 'yyy');
  // Property check: for the literal found, every string the regex matches contains it.
  const samples = ['Failed password for a from 1.2.3.4 port 2', 'hdr Failed none for  from x port 9'];
  const src = '^(?:hdr )?Failed (?:password|none) for (?<user>.*) from (?<host>\\S+) port \\d+$';
  for (const s of samples) {
    assert.ok(new RegExp(src).test(s));
    assert.ok(s.includes(lit(src)!));
  }
});

test('(?i) is honoured by spelling out both cases (the linear engine has no i flag)', async () => {
  const { foldCase } = await import('../src/rules/pyregex.ts');
  assert.equal(foldCase('ab(?<host>x)[a-c\\d]\\x41'), '[aA][bB](?<host>[xX])[a-c\\dA-C]\\x41');
  const m = compileRule(rule(['(?i)invalid USER (?P<user>[a-z]+) from (?P<host>\\S+)']), { warn: () => {} });
  assert.equal(m.match(line('INVALID user BoB from 192.0.2.1'), NOW)?.user, 'BoB');
  assert.equal(m.match(line('invalid user b0b from 192.0.2.1'), NOW), null);
});
