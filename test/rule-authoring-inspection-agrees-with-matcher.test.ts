/*
 * `tsfilter test` must show what the daemon would do: its inspector (compileRuleForInspection) is compiled by the same
 * code as the daemon's matcher (compileRule), and on every line of the real corpus, with our default rules and
 * PyFilter's own (positional groups, lists), it makes exactly the same decision — and explains it.
 */
process.env.TZ = 'UTC';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { compileRule, compileRuleForInspection } from '../src/rules/compile.ts';
import { ruleConfigFromJson } from '../src/config/load.ts';
import type { RuleConfig } from '../src/rules/types.ts';
import { testFile, type TestEvent } from '../src/cli/test-rule.ts';
import { REPO, SHARED } from './helpers/cli.ts';

const NOW = Date.parse('2026-12-31T12:00:00Z');
const ours = JSON.parse(readFileSync(path.join(REPO, 'config/config.default.json'), 'utf8'));
const pyfilter = JSON.parse(readFileSync(path.join(SHARED, 'reference/pyfilter/config.default.json'), 'utf8'));
const rulesOf = (c: { settings: { rules: Record<string, unknown> } }): RuleConfig[] =>
  Object.entries(c.settings.rules).map(([name, raw]) => ruleConfigFromJson(name, raw));

// PyFilter's ssh patterns all want "port", which the older OpenSSH of secrepo-auth-part.log does not write.
for (const [file, configs] of [
  ['elastic-auth.log', [['TSFilter', ours], ['PyFilter', pyfilter]]],
  ['secrepo-auth-part.log', [['TSFilter', ours]]],
] as const) {
  for (const [which, config] of configs) {
    test(`on ${file}, tsfilter test reports exactly the matches of the daemon's matcher (${which}'s default rules)`, () => {
      const log = path.join(SHARED, 'corpus/ssh', file);
      const lines = readFileSync(log, 'utf8').split('\n');
      if (lines.at(-1) === '') lines.pop();
      const rules = rulesOf(config);
      const events: TestEvent[] = [];
      const summary = testFile(rules.map((r) => compileRuleForInspection(r)), log, { now: NOW, unmatched: true, onEvent: (e) => events.push(e) });
      assert.equal(summary.lines, lines.length);

      let checked = 0;
      for (const [ri, rule] of rules.entries()) {
        const matcher = compileRule(rule, { warn: () => {} });
        const byLine = new Map(events.filter((e) => e.kind !== 'unmatched' && e.rule === rule.name).map((e) => [e.line, e]));
        let failures = 0;
        let successes = 0;
        lines.forEach((text, i) => {
          const m = matcher.match({ text, source: log }, NOW);
          const e = byLine.get(i + 1);
          if (m === null) {
            assert.ok(e === undefined || e.kind === 'rejected', `line ${i + 1}: the matcher has no match, test shows ${JSON.stringify(e)}`);
            return;
          }
          checked++;
          if (m.kind === 'success') successes++;
          else failures++;
          assert.ok(e !== undefined && e.kind !== 'rejected' && e.kind !== 'unmatched', `line ${i + 1}: ${text}`);
          assert.equal(e.kind, m.kind);
          assert.equal(e.ip, m.ip);
          assert.equal(e.time, m.time);
          const list = m.kind === 'success' ? 'success_patterns' : 'regex_patterns';
          assert.equal(e.pattern, `${list}[${m.pattern}]`);
          // The captures shown are the ones the decision was made from.
          assert.ok(text.includes(e.fields['host']!), `host capture ${e.fields['host']} is on line ${i + 1}`);
          if (m.user !== undefined) assert.equal(e.fields['user'], m.user);
          if (e.timeFrom === 'line') assert.ok(text.includes(e.fields['time']!));
          else assert.equal(e.time, NOW, 'a file line without a readable time gets the arrival time');
        });
        const st = summary.rules[ri]!;
        assert.equal(st.failures + st.instant, failures);
        assert.equal(st.successes, successes);
        assert.equal(st.patterns.reduce((a, p) => a + p.matched, 0), failures + successes);
      }
      assert.ok(checked > 300, `only ${checked} matches: the corpus was not exercised`);
      // Every line is either reported by some rule or listed as unmatched, once.
      const unmatched = new Set(events.filter((e) => e.kind === 'unmatched').map((e) => e.line));
      const reported = new Set(events.filter((e) => e.kind !== 'unmatched').map((e) => e.line));
      assert.equal(unmatched.size, summary.unmatched);
      for (let n = 1; n <= lines.length; n++) assert.ok(unmatched.has(n) !== reported.has(n), `line ${n}`);
    });
  }
}

test("PyFilter's positional groups are shown by role: time, host, and $3 for the port", () => {
  const log = path.join(SHARED, 'corpus/ssh/elastic-auth.log');
  const events: TestEvent[] = [];
  const ssh = rulesOf(pyfilter).find((r) => r.name === 'ssh')!;
  testFile([compileRuleForInspection(ssh)], log, { now: NOW, onEvent: (e) => events.push(e) });
  const failed = events.filter((e) => e.kind === 'failure' && e.pattern === 'regex_patterns[1]'); // Failed password
  assert.ok(failed.length > 100);
  for (const e of failed) {
    assert.ok(e.kind === 'failure');
    assert.deepEqual(Object.keys(e.fields), ['time', 'host', '$3']);
    const f = e.fields;
    assert.ok(e.text.startsWith(f['time']!), e.text);
    assert.ok(e.text.endsWith(` from ${f['host']} port ${f['$3']}`), e.text);
    assert.equal(e.ip, f['host']);
    assert.equal(e.timeFrom, 'line');
  }
});
