/*
 * `tsfilter test` as a rule author uses it: per matching line the rule, the pattern, the captures and the parsed time
 * (and where it came from); refused matches with the reason; unmatched lines on request; per pattern the lines it
 * matched, flagging patterns that never match; ad-hoc `--pattern`; exit codes. Real logs from the corpus.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { jsonLines, runCli, SHARED } from './helpers/cli.ts';

const ELASTIC = path.join(SHARED, 'corpus/ssh/elastic-auth.log');
const fileLines = (f: string) => {
  const l = readFileSync(f, 'utf8').split('\n');
  if (l.at(-1) === '') l.pop();
  return l;
};

interface Event {
  line: number;
  kind: string;
  rule?: string;
  pattern?: string;
  ip?: string;
  time?: string;
  time_from?: string;
  time_error?: string;
  reason?: string;
  fields?: Record<string, string>;
  text: string;
  rejections?: { pattern: string; reason: string }[];
}
interface PatternSummary { pattern: string; kind: string; text: string; matched: number; rejected: number; hits: number; never_matched: boolean; shadowed: boolean }
interface RuleSummary { rule: string; lines: number; matched: number; failures: number; instant: number; successes: number; rejected: number; unmatched: number; patterns: PatternSummary[] }
interface Summary { lines: number; matched: number; successes: number; rejected: number; unmatched: number; rules: RuleSummary[] }

function runJson(args: string[]): { events: Event[]; summary: Summary } {
  const r = runCli([...args, '--json']);
  assert.equal(r.code, 0, r.stderr);
  const out = jsonLines(r.stdout);
  return { events: out.slice(0, -1) as unknown as Event[], summary: out.at(-1)!.summary as Summary };
}

function withDir<T>(fn: (dir: string) => T): T {
  const dir = mkdtempSync(path.join(tmpdir(), 'tsf-rule-authoring-'));
  try {
    return fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('tsfilter test ssh FILE shows per line the pattern, the captures and the parsed time; per pattern its count, flagging the ones that never matched', () => {
  const lines = fileLines(ELASTIC);
  const { events, summary } = runJson(['test', 'ssh', ELASTIC]);
  const ssh = summary.rules[0]!;
  assert.equal(summary.rules.length, 1);
  assert.equal(ssh.rule, 'ssh');

  // An "Invalid user" line: pattern 0, with every named capture and the time read from the line.
  const e = events.find((x) => x.text.includes('Invalid user support from 95.152.57.58'))!;
  assert.deepEqual(
    { kind: e.kind, rule: e.rule, pattern: e.pattern, ip: e.ip, time_from: e.time_from, fields: e.fields },
    { kind: 'failure', rule: 'ssh', pattern: 'regex_patterns[0]', ip: '95.152.57.58', time_from: 'line',
      fields: { time: 'Mar 27 14:54:57', pid: '2967', user: 'support', host: '95.152.57.58' } },
  );
  assert.match(e.time!, /^\d{4}-03-27T14:54:57\.000Z$/);
  assert.equal(lines[e.line - 1], e.text);
  // The instant-ban pattern and the success pattern are named as such.
  assert.ok(events.some((x) => x.kind === 'instant' && x.pattern === 'regex_patterns[10]' && x.text.includes('maximum authentication attempts')));
  assert.ok(events.some((x) => x.kind === 'success' && x.pattern === 'success_patterns[0]' && x.text.includes('Accepted ')));

  // Counts: per pattern, per kind, and the lines that are left.
  const count = (k: string) => events.filter((x) => x.kind === k).length;
  assert.equal(ssh.failures, count('failure'));
  assert.equal(ssh.instant, count('instant'));
  assert.equal(ssh.matched, ssh.failures + ssh.instant);
  assert.equal(ssh.successes, count('success'));
  assert.equal(ssh.lines, lines.length);
  assert.equal(ssh.unmatched, lines.length - events.length);
  for (const p of ssh.patterns) {
    assert.equal(p.matched, events.filter((x) => x.pattern === p.pattern && x.kind !== 'rejected').length, p.pattern);
    assert.equal(p.never_matched, p.hits === 0);
  }
  // This log has no "Magic value check failed" (obfuscated handshake) line: that pattern is flagged, the others that
  // matched are not.
  const never = ssh.patterns.filter((p) => p.never_matched).map((p) => p.pattern);
  assert.ok(never.includes('regex_patterns[9]'), never.join());
  assert.ok(!never.includes('regex_patterns[0]') && !never.includes('regex_patterns[10]') && !never.includes('success_patterns[0]'));

  // Text mode says the same, with the flagged pattern's distinguishing end visible despite the truncation.
  const t = runCli(['test', 'ssh', ELASTIC]);
  assert.equal(t.code, 0, t.stderr);
  assert.match(t.stdout, /^ +\d+ {2}ssh {2}failure {2}regex_patterns\[0\] {2}95\.152\.57\.58 {2}\d{4}-03-27T14:54:57\.000Z \(from the line\)\n {9}time="Mar 27 14:54:57" pid="2967" user="support" host="95\.152\.57\.58"$/m);
  const flagged = t.stdout.split('\n').filter((l) => l.includes('!! never matched a line'));
  assert.equal(flagged.length, never.length);
  const magic = flagged.find((l) => l.includes('regex_patterns[9] '))!;
  assert.match(magic, /^ {2}regex_patterns\[9\] +failure +0 lines {2}!! never matched a line: "\^\(\?:\(\?<time>.{0,60}….*obfuscated handshake from \(\?<host>\\\\S\+\) port \\\\d\+\$"$/);
  assert.ok(magic.length < 220, 'the pattern is truncated');
  assert.match(t.stdout, new RegExp(`^rule ssh: ${lines.length} lines, ${ssh.matched} matched \\(${ssh.failures} failures, ${ssh.instant} instant\\), ${ssh.successes} successes, 0 rejected, ${ssh.unmatched} unmatched$`, 'm'));
  assert.match(t.stdout, /^\d+ patterns never matched or never decided a line of this sample \(marked !!\)$/m);
});

test('tsfilter test FILE runs every enabled rule; --unmatched lists each line nothing matched, with its number and text', () => {
  const lines = fileLines(ELASTIC);
  const { events, summary } = runJson(['test', ELASTIC, '--unmatched']);
  assert.deepEqual(summary.rules.map((r) => r.rule), ['ssh', 'apache', 'nginx', 'mysql']);
  // The web and database rules never match an auth log, and say so.
  for (const r of summary.rules.slice(1)) assert.ok(r.patterns.every((p) => p.never_matched), r.rule);
  const unmatched = events.filter((e) => e.kind === 'unmatched');
  assert.equal(unmatched.length, summary.unmatched);
  assert.ok(unmatched.length > 1000);
  for (const u of unmatched) {
    assert.deepEqual(Object.keys(u).sort(), ['kind', 'line', 'text']);
    assert.equal(u.text, lines[u.line - 1]);
  }
  const seen = new Set(events.map((e) => e.line));
  assert.equal(seen.size, lines.length, 'every line is either reported or listed as unmatched');
  // Without --unmatched they are counted, not listed.
  const quiet = runJson(['test', ELASTIC]);
  assert.equal(quiet.events.filter((e) => e.kind === 'unmatched').length, 0);
  assert.equal(quiet.summary.unmatched, summary.unmatched);
  const text = runCli(['test', 'ssh', ELASTIC, '--unmatched']);
  const first = unmatched[0]!;
  assert.ok(text.stdout.includes(`${String(first.line).padStart(7)}  unmatched  ${JSON.stringify(first.text)}\n`), first.text);
});

test('tsfilter test --pattern tries an ad-hoc pattern: named groups, or positional ones with --time-format', () => {
  const lines = fileLines(ELASTIC);
  const re = /Failed password for (?:invalid user )?(\S+) from (\d+\.\d+\.\d+\.\d+) port \d+/;
  const expected = lines.flatMap((l, i) => (re.test(l) ? [i + 1] : []));
  assert.ok(expected.length > 100);

  const named = runJson(['test', '--pattern', 'Failed password for (?:invalid user )?(?<user>\\S+) from (?<host>\\S+) port \\d+', ELASTIC]);
  assert.deepEqual(named.events.map((e) => e.line), expected);
  for (const e of named.events) {
    const m = re.exec(e.text)!;
    assert.deepEqual([e.rule, e.kind, e.pattern, e.ip, e.fields], ['--pattern', 'failure', 'regex_patterns[0]', m[2], { user: m[1], host: m[2] }]);
    assert.equal(e.time_from, 'arrival', 'no time group: the arrival time');
  }
  assert.equal(named.summary.rules[0]!.patterns[0]!.matched, expected.length);
  const namedText = runCli(['test', '--pattern', 'Failed password for (?<user>\\S+) from (?<host>\\S+) port', ELASTIC]);
  assert.match(namedText.stdout, /\(arrival time: the pattern captures no time\)/);

  // PyFilter style: positional (time, host) groups, and a strptime format for the time.
  const loose = lines.flatMap((l, i) => (/Failed password for .* from \S+ port \d+/.test(l) ? [i + 1] : [])); // also "user  from"
  assert.ok(loose.length > expected.length);
  const positional = runJson(['test', '--pattern', '^(\\w{3} +\\d+ [\\d:]+) .*Failed password for .* from (\\S+) port \\d+',
    '--time-format', '%b %d %H:%M:%S', ELASTIC]);
  assert.deepEqual(positional.events.map((e) => e.line), loose);
  for (const e of positional.events) {
    assert.deepEqual(Object.keys(e.fields!), ['time', 'host']);
    assert.equal(e.time_from, 'line');
    const d = new Date(e.time!);
    const stamp = `${d.toLocaleString('en-US', { month: 'short', timeZone: 'UTC' })} ${String(d.getUTCDate()).padStart(2)} ${e.time!.slice(11, 19)}`;
    assert.equal(e.fields!['time'], stamp, 'the parsed time is the one on the line');
  }
  // With a RULE, the pattern runs in that rule's context (here its time_format).
  const inRule = runJson(['test', 'ssh', '--pattern', '^(?<time>\\w{3} +\\d+ [\\d:]+) .*Failed password for .* from (?<host>\\S+) port', ELASTIC]);
  assert.deepEqual(inRule.events.map((e) => e.line), loose);
  assert.ok(inRule.events.every((e) => e.time_from === 'line'));
});

test('a match that is refused is shown as rejected with the reason; an unreadable time says it fell back to the arrival time; hostile text is escaped', () => {
  withDir((dir) => {
    const log = path.join(dir, 'demo.log');
    writeFileSync(log, [
      'user bob from 203.0.113.1',
      'user eve from host.example',
      'login from 198.51.100.2',
      'user mal from 192.0.2.5x',
      'nothing \u001b]0;owned\u0007 here \u009b2J \u202egnp.exe',
      'Feb 30 10:00:00 user joe from 203.0.113.3',
    ].join('\n') + '\n');
    const config = path.join(dir, 'config.json');
    writeFileSync(config, JSON.stringify({
      settings: {
        rules: {
          demo: {
            log_files: '',
            regex_patterns: [
              '^(?:(?<time>\\w{3} \\d+ [\\d:]+) )?user (?<user>\\S+) from (?<host>\\S+)',
              'from (?<host>\\d+\\.\\d+\\.\\d+\\.\\d+)',
              'user .* from (?<host>\\S+)',
              'user (?<user>\\S+) from (?<host>[\\d.]+)$',
              'never (?<host>\\S+) here',
            ],
            time_format: '%b %d %H:%M:%S',
          },
        },
      },
    }));
    const { events, summary } = runJson(['test', '-c', config, 'demo', log, '--unmatched']);
    const at = (n: number) => events.find((e) => e.line === n)!;
    assert.equal(at(1).kind, 'failure');
    assert.deepEqual([at(2).kind, at(2).pattern, at(2).reason], ['rejected', 'regex_patterns[0]', 'captured host "host.example" is not an IP address (use_dns is off)']);
    assert.deepEqual(at(2).rejections?.map((r) => r.pattern), ['regex_patterns[2]']);
    assert.deepEqual([at(3).kind, at(3).pattern, at(3).ip], ['failure', 'regex_patterns[1]', '198.51.100.2']);
    // Pattern 0 captured "192.0.2.5x" and was refused; pattern 1 then took the line.
    assert.deepEqual([at(4).kind, at(4).pattern, at(4).ip], ['failure', 'regex_patterns[1]', '192.0.2.5']);
    assert.deepEqual(at(4).rejections, [{ pattern: 'regex_patterns[0]', reason: 'captured host "192.0.2.5x" is not an IP address (use_dns is off)', fields: { user: 'mal', host: '192.0.2.5x' } }]);
    assert.equal(at(5).kind, 'unmatched');
    assert.deepEqual([at(6).kind, at(6).time_from, at(6).fields?.['time']], ['failure', 'arrival', 'Feb 30 10:00:00']);
    assert.match(at(6).time_error!, /cannot read time "Feb 30 10:00:00" with time_format "%b %d %H:%M:%S"/);

    const p = summary.rules[0]!.patterns;
    assert.deepEqual(p.map((x) => [x.matched, x.rejected, x.hits]), [[2, 1, 4], [2, 0, 4], [0, 1, 4], [0, 0, 2], [0, 0, 0]]);
    assert.deepEqual(p.map((x) => x.shadowed), [false, false, false, true, false]);
    assert.deepEqual(p.map((x) => x.never_matched), [false, false, false, false, true]);
    assert.deepEqual([summary.matched, summary.rejected, summary.unmatched], [4, 1, 1]);

    const t = runCli(['test', '-c', config, 'demo', log, '--unmatched']);
    assert.equal(t.code, 0, t.stderr);
    assert.match(t.stdout, /^ +2 {2}demo {2}rejected {2}regex_patterns\[0\]: captured host "host\.example" is not an IP address \(use_dns is off\)$/m);
    assert.match(t.stdout, /^ {9}also regex_patterns\[2\]: captured host "host\.example"/m);
    assert.match(t.stdout, /^ {9}line "user eve from host\.example"$/m);
    assert.match(t.stdout, /^ {9}regex_patterns\[0\] matched first but was rejected: captured host "192\.0\.2\.5x"/m);
    assert.match(t.stdout, /\(arrival time: cannot read time "Feb 30 10:00:00" with time_format "%b %d %H:%M:%S" nor as ISO 8601\)/);
    assert.match(t.stdout, /^ {2}regex_patterns\[3\] +failure +0 lines {2}!! never decides: earlier patterns take all 2 lines it matches: /m);
    assert.match(t.stdout, /^ {2}regex_patterns\[4\] +failure +0 lines {2}!! never matched a line: "never \(\?<host>\\\\S\+\) here"$/m);
    assert.match(t.stdout, /^Lines: 6 lines, 4 matched, 0 successful logins, 1 rejected, 1 unmatched$/m);
    // The control characters of line 5 reach neither output raw.
    for (const out of [t.stdout, runCli(['test', '-c', config, 'demo', log, '--unmatched', '--json']).stdout]) {
      assert.doesNotMatch(out, /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u202e]/);
      assert.ok(out.includes('\\u001b]0;owned\\u0007 here \\u009b2J \\u202egnp.exe'), out);
    }
  });
});

test('a status capture outside http_status_blocks is a rejected match, with the status shown', () => {
  withDir((dir) => {
    const log = path.join(dir, 'access.log');
    writeFileSync(log,
      '203.0.113.5 - - [21/Nov/2026:05:04:00 +0000] "POST /wp-login.php HTTP/1.1" 401 123 "-" "x"\n' +
      '203.0.113.6 - - [21/Nov/2026:05:04:01 +0000] "POST /wp-login.php HTTP/1.1" 500 123 "-" "x"\n');
    const { events } = runJson(['test', 'apache', log]);
    assert.deepEqual([events[0]!.kind, events[0]!.ip, events[0]!.time, events[0]!.time_from, events[0]!.fields?.['status']],
      ['failure', '203.0.113.5', '2026-11-21T05:04:00.000Z', 'line', '401']);
    assert.equal(events[1]!.kind, 'rejected');
    assert.match(events[1]!.reason!, /^status 500 is not in http_status_blocks \[200, 401, 403, 405, 429\]$/);
  });
});

test('tsfilter test exits 2 on usage mistakes and bad patterns, naming what is wrong', () => {
  const cases: [string[], RegExp][] = [
    [['test'], /^tsfilter: test: missing FILE \(usage: tsfilter test \[RULE\] FILE\)$/m],
    [['test', '/nonexistent/auth.log'], /^tsfilter: test: cannot read "\/nonexistent\/auth\.log": no such file/m],
    [['test', 'ssh'], /cannot read "ssh": no such file — ssh is a rule: name the log file too \(tsfilter test ssh FILE\)/],
    [['test', 'nosuchrule', ELASTIC], /no rule named "nosuchrule"/],
    [['test', '--time-format', '%b', ELASTIC], /--time-format goes with --pattern or with a RULE/],
    [['test', '--pattern', 'from (?<host>\\S+', ELASTIC], /^tsfilter: rule "--pattern" regex_patterns\[0\] "from \(\?<host>\\\\S\+": invalid regular expression: Unterminated group$/m],
  ];
  for (const [args, re] of cases) {
    const r = runCli(args);
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, re, args.join(' '));
    assert.equal(r.stdout, '', 'nothing on stdout');
  }
});
