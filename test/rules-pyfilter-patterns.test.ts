process.env.TZ = 'UTC';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { compileRule } from '../src/rules/compile.ts';
import { ruleConfigFromJson } from '../src/config/load.ts';
import type { RuleMatcher } from '../src/rules/types.ts';

// PyFilter's own default configuration, byte for byte: its patterns must compile and capture as PyFilter would.
const pyfilter = JSON.parse(readFileSync(new URL('../../shared/reference/pyfilter/config.default.json', import.meta.url), 'utf8'));
const NOW = Date.parse('2026-12-01T00:00:00Z');
const rules: Record<string, RuleMatcher> = {};
for (const [name, raw] of Object.entries<Record<string, unknown>>(pyfilter.settings.rules)) {
  rules[name] = compileRule(ruleConfigFromJson(name, raw), { warn: () => {} });
}
const m = (rule: string, text: string) => rules[rule]!.match({ text, source: 'f' }, NOW);

test('all of PyFilter\'s default rules compile', () => {
  assert.deepEqual(Object.keys(rules).sort(), ['apache', 'mysql', 'nginx', 'ssh']);
});

test('PyFilter ssh patterns: group 1 is the time, group 2 the address; the last pattern is an instant ban', () => {
  const cases: [string, string, number, 'failure' | 'instant'][] = [
    ['Feb 12 14:10:21 host sshd[1]: Invalid user pascal from 35.188.49.176 port 53502', '35.188.49.176', 0, 'failure'],
    ['Feb 12 14:10:21 host sshd[1]: Failed password for root from 192.0.2.1 port 22 ssh2', '192.0.2.1', 1, 'failure'],
    ['Feb 12 14:10:21 host sshd[1]: Did not receive identification string from 192.0.2.2 port 4000', '192.0.2.2', 2, 'failure'],
    // PyFilter counts a normal logout as a failure (a known weakness, kept for compatibility of its own pattern).
    ['Feb 12 14:10:21 host sshd[1]: Received disconnect from 192.0.2.3 port 4000:11: disconnected by user', '192.0.2.3', 3, 'failure'],
    ['Feb 12 14:10:21 host sshd[1]: Unable to negotiate with 192.0.2.4 port 4000: no matching key exchange method found.', '192.0.2.4', 4, 'failure'],
    ['Feb 12 14:10:21 host sshd[1]: error: maximum authentication attempts exceeded for root from 192.0.2.5 port 4000 ssh2 [preauth]', '192.0.2.5', 5, 'instant'],
  ];
  for (const [text, ip, pattern, kind] of cases) {
    const r = m('ssh', text);
    assert.ok(r, text);
    assert.deepEqual([r.ip, r.pattern, r.kind, r.time], [ip, pattern, kind, Date.parse('2026-02-12T14:10:21Z')], text);
  }
  // Old sshd without "port": PyFilter's Invalid user pattern needs "port", so this does not match.
  assert.equal(m('ssh', 'Feb 12 14:10:21 host sshd[1]: Invalid user test from 192.0.2.9'), null);
  assert.equal(m('ssh', 'Feb 12 14:10:21 host sshd[1]: Accepted password for bob from 192.0.2.9 port 22 ssh2'), null);
});

test('PyFilter mysql pattern with its two-space time format reads a one-space timestamp', () => {
  const r = m('mysql', "2026-11-21 05:04:00 8 [Warning] Access denied for user 'root'@'192.0.2.20' (using password: YES)");
  assert.deepEqual([r?.ip, r?.time], ['192.0.2.20', Date.parse('2026-11-21T05:04:00Z')]);
});

test('PyFilter apache/nginx: group 1 is the address, group 2 the time, {} is replaced by the urls list', () => {
  for (const rule of ['apache', 'nginx']) {
    for (const url of ['/login/', '/admin/']) {
      const text = `192.0.2.30 - - [21/Nov/2026:05:04:00 +0000] "POST ${url} HTTP/1.1" 200 512 "-" "curl/8"`;
      const r = m(rule, text);
      assert.deepEqual([r?.ip, r?.time, r?.kind], ['192.0.2.30', Date.parse('2026-11-21T05:04:00Z'), 'failure'], `${rule} ${url}`);
      assert.equal(r?.status, undefined); // PyFilter's pattern has no 4th group: the status is not read
    }
    // Its 3rd group is the url, so http_status_blocks is never applied (PyFilter's known weakness): 404 still counts.
    assert.equal(m(rule, '192.0.2.31 - - [21/Nov/2026:05:04:00 +0000] "POST /login/ HTTP/1.1" 404 5 "-" "-"')?.ip, '192.0.2.31');
    assert.equal(m(rule, '192.0.2.32 - - [21/Nov/2026:05:04:00 +0000] "POST /other/ HTTP/1.1" 200 5 "-" "-"'), null);
    assert.equal(m(rule, '192.0.2.33 - - [21/Nov/2026:05:04:00 +0100] "POST /login/ HTTP/1.1" 200 5 "-" "-"'), null); // +0000 hard-coded
    assert.equal(m(rule, '192.0.2.34 - - [21/Nov/2026:05:04:00 +0000] "GET /login/ HTTP/1.1" 200 5 "-" "-"'), null);
  }
});

test('a PyFilter-style positional apache pattern with a 4th status group is checked against http_status_blocks', () => {
  const raw = {
    regex_patterns: [['(\\S+) \\S+ \\S+ \\[(.*) \\+0000\\] "POST ({}) HTTP/1\\.1" (\\d+) .*', 'urls']],
    time_format: '%d/%b/%Y:%H:%M:%S', urls: ['/login/'], http_status_blocks: [401],
  };
  const rule = compileRule(ruleConfigFromJson('apache', raw), { warn: () => {} });
  const line = (s: number) => ({ text: `192.0.2.40 - - [21/Nov/2026:05:04:00 +0000] "POST /login/ HTTP/1.1" ${s} 5 "-" "-"`, source: 'f' });
  assert.deepEqual([rule.match(line(401), NOW)?.ip, rule.match(line(401), NOW)?.status], ['192.0.2.40', 401]);
  assert.equal(rule.match(line(200), NOW), null);
});
