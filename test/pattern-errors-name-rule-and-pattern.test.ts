/*
 * A pattern or time format that TSFilter refuses is reported with the rule, the pattern's place (regex_patterns[2])
 * and its text, JSON-quoted (control characters escaped) and cut in the middle when long — by `tsfilter config check`,
 * by the daemon's loader (same code), and by `tsfilter test --pattern` for an ad-hoc pattern.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { compileRule } from '../src/rules/compile.ts';
import { PatternError } from '../src/rules/types.ts';
import { runCli, SHARED } from './helpers/cli.ts';

const LOG = path.join(SHARED, 'corpus/ssh/elastic-auth.log');
const SSH_PREFIX = '^(?:(?<time>[A-Z][a-z]{2} {1,2}\\d{1,2} \\d{2}:\\d{2}:\\d{2}) \\S+ sshd\\[(?<pid>\\d+)\\]: )?';
const LONG = SSH_PREFIX + 'Failed password for (?<user>.*) from (?<host>\\S+ port \\d+ ssh2$';

function withConfig<T>(rules: Record<string, unknown>, fn: (file: string) => T): T {
  const dir = mkdtempSync(path.join(tmpdir(), 'tsf-pattern-errors-'));
  try {
    const file = path.join(dir, 'config.json');
    writeFileSync(file, JSON.stringify({ settings: { rules } }));
    return fn(file);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const rule = (regex_patterns: unknown[], extra: Record<string, unknown> = {}) => ({ log_files: '', regex_patterns, ...extra });

test('tsfilter config check names the rule, the pattern place and the pattern text for every kind of refused pattern', () => {
  withConfig({
    syntax: rule(['ok from (?<host>\\S+)', 'x (?<host>\\S+)', 'Failed password for (?<host>']),
    named: rule(['Failed password for (?<user>\\S+) from (?<ip>\\S+)']),
    positional: rule(['from (\\S+) port']),
    timefmt: rule(['from (?<host>\\S+)'], { time_format: '%Y %Q' }),
    lone: rule(['from (?<host>\\S+)'], { time_format: '%Y %' }),
    long: rule([LONG]),
    success: rule(['from (?<host>\\S+)'], { success_patterns: ['Accepted (?<host>'] }),
    list: rule([['POST ({}) from (?<host>\\S+)', 'urls']], { urls: ['/a(', '/b'] }),
    ctrl: rule(['\u001b(?<host>']),
    linear: rule(['(?<host>\\S+) (?=x)']),
  }, (file) => {
    const r = runCli(['config', 'check', '--config', file]);
    assert.equal(r.code, 2, r.stderr);
    assert.equal(r.stdout, '');
    const lines = r.stderr.split('\n');
    const line = (p: string) => {
      const l = lines.find((x) => x.startsWith(`  settings.rules.${p}: `));
      assert.ok(l !== undefined, `no problem at ${p}:\n${r.stderr}`);
      return l.slice(`  settings.rules.${p}: `.length);
    };
    assert.equal(line('syntax.regex_patterns[2]'),
      'rule "syntax" regex_patterns[2] "Failed password for (?<host>": invalid regular expression: Unterminated group');
    assert.equal(line('named.regex_patterns[0]'),
      'rule "named" regex_patterns[0] "Failed password for (?<user>\\\\S+) from (?<ip>\\\\S+)": has named groups (user, ip) but ' +
      'no (?<host>...) group: the address must be captured by a group named host (rename (?<ip>...) to (?<host>...))');
    assert.equal(line('positional.regex_patterns[0]'),
      'rule "positional" regex_patterns[0] "from (\\\\S+) port": no host group: name the address group (?<host>...) ' +
      "(or (?P<host>...)), or use PyFilter's positional groups (time, host)");
    assert.match(line('timefmt.time_format'), /^rule "timefmt" time_format "%Y %Q": unknown directive %Q \(known: %Y %y %m %d .*%b .*%z .*%%\)$/);
    assert.equal(line('lone.time_format'), 'rule "lone" time_format "%Y %": ends with a lone % (write %% for a literal %)');
    // A long pattern is cut in the middle: the start and the distinguishing end stay.
    const long = line('long.regex_patterns[0]');
    const quoted = /^rule "long" regex_patterns\[0\] ("[^"]*"): invalid regular expression: Unterminated group$/.exec(long);
    assert.ok(quoted !== null, long);
    const shown = JSON.parse(quoted[1]!) as string;
    assert.equal([...shown].length, 120);
    assert.ok(shown.startsWith('^(?:(?<time>[A-Z]'), shown);
    assert.ok(shown.endsWith('from (?<host>\\S+ port \\d+ ssh2$'), shown);
    assert.ok(shown.includes('…'));
    assert.equal(line('success.success_patterns[0]'),
      'rule "success" success_patterns[0] "Accepted (?<host>": invalid regular expression: Unterminated group');
    assert.equal(line('list.regex_patterns[0]'),
      'rule "list" regex_patterns[0] "POST ({}) from (?<host>\\\\S+)" (with the list "urls" put in its {}): invalid regular expression: Unterminated group');
    assert.equal(line('ctrl.regex_patterns[0]'), 'rule "ctrl" regex_patterns[0] "\\u001b(?<host>": invalid regular expression: Unterminated group');
    assert.doesNotMatch(r.stderr, /\u001b/, 'no raw escape character reaches the terminal');
    assert.match(line('linear.regex_patterns[0]'), /^rule "linear" regex_patterns\[0\] "\(\?<host>\\\\S\+\) \(\?=x\)": the pattern is refused because it cannot run in linear time/);
  });
});

test('tsfilter test --pattern reports a bad ad-hoc pattern or time format the same way, as rule "--pattern"', () => {
  const cases: [string[], string][] = [
    [['--pattern', 'Failed password for (?<host>'], 'rule "--pattern" regex_patterns[0] "Failed password for (?<host>": invalid regular expression: Unterminated group'],
    [['--pattern', 'from (?<ip>\\S+)'], 'rule "--pattern" regex_patterns[0] "from (?<ip>\\\\S+)": has named groups (ip) but no (?<host>...) group: the address must be captured by a group named host (rename (?<ip>...) to (?<host>...))'],
    [['--pattern', 'from (?<host>\\S+)', '--time-format', '%Y %Q'], 'rule "--pattern" time_format "%Y %Q": unknown directive %Q (known: '],
  ];
  for (const [args, want] of cases) {
    const r = runCli(['test', ...args, LOG]);
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.ok(r.stderr.startsWith(`tsfilter: ${want}`), `${args.join(' ')}:\n${r.stderr}\nwanted: ${want}`);
    assert.equal(r.stdout, '');
  }
  const long = runCli(['test', '--pattern', LONG, LOG]);
  assert.equal(long.code, 2);
  assert.match(long.stderr, /^tsfilter: rule "--pattern" regex_patterns\[0\] "\^\(\?:\(\?<time>[^…\n]{20,60}…[^…\n]+ssh2\$": invalid regular expression: Unterminated group\n$/);
});

test('a disabled rule is not compiled by config check, but tsfilter test RULE names its bad pattern', () => {
  withConfig({ on: rule(['from (?<host>\\S+)']), off: rule(['from (?<host>\\S+'], { enabled: false }) }, (file) => {
    assert.equal(runCli(['config', 'check', '--config', file]).code, 0);
    const r = runCli(['test', '--config', file, 'off', LOG]);
    assert.equal(r.code, 2, r.stderr);
    assert.equal(r.stderr, 'tsfilter: rule "off" regex_patterns[0] "from (?<host>\\\\S+": invalid regular expression: Unterminated group\n');
  });
});

test('PatternError carries the rule, the place and the pattern as written', () => {
  const cfg = { name: 'ssh', patterns: ['ok (?<host>\\S+)', 'bad (?<host>'], successPatterns: [], lists: {}, groupOrder: 'time-host' as const, useDns: false };
  assert.throws(() => compileRule(cfg, { warn: () => {} }), (e: unknown) => {
    assert.ok(e instanceof PatternError);
    assert.deepEqual([e.rule, e.list, e.index, e.pattern], ['ssh', 'regex_patterns', 1, 'bad (?<host>']);
    assert.equal(e.message, 'rule "ssh" regex_patterns[1] "bad (?<host>": invalid regular expression: Unterminated group');
    return true;
  });
  assert.throws(() => compileRule({ ...cfg, patterns: ['ok (?<host>\\S+)'], timeFormat: '%b %Q' }, { warn: () => {} }), (e: unknown) => {
    assert.ok(e instanceof PatternError);
    assert.deepEqual([e.list, e.index, e.pattern], ['time_format', -1, '%b %Q']);
    assert.match(e.message, /^rule "ssh" time_format "%b %Q": unknown directive %Q /);
    return true;
  });
});
