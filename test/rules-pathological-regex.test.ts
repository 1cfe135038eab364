import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { compileRule } from '../src/rules/compile.ts';
import { ruleConfigFromJson } from '../src/config/load.ts';

const compileUrl = new URL('../src/rules/compile.ts', import.meta.url).href;

test('a catastrophic-backtracking pattern on a 50,000-char crafted line completes (regex guard active)', () => {
  // Run in a child process with a kill timeout, so that without the guard this test fails instead of hanging.
  const dir = mkdtempSync(join(tmpdir(), 'tsfilter-redos-'));
  const script = join(dir, 'redos.ts');
  writeFileSync(script, `
    import { compileRule } from ${JSON.stringify(compileUrl)};
    const rule = compileRule({ name: 'redos', patterns: ['^(?<host>\\\\S+) (a+)+$', '(?<host>\\\\d+\\\\.\\\\d+\\\\.\\\\d+\\\\.\\\\d+) ((a|a)*)*$'],
      successPatterns: [], lists: {}, groupOrder: 'time-host', useDns: false }, { warn: () => {} });
    const text = '192.0.2.1 ' + 'a'.repeat(50000) + '!';
    const t0 = Date.now();
    const m = rule.match({ text, source: 'x' }, Date.now());
    const ok = rule.match({ text: '192.0.2.1 aaaa', source: 'x' }, Date.now());
    console.log(JSON.stringify({ match: m, ok: ok && ok.ip, ms: Date.now() - t0 }));
  `);
  const r = spawnSync(process.execPath, ['--import', 'tsx', script], { timeout: 20_000, encoding: 'utf8', cwd: fileURLToPath(new URL('..', import.meta.url)) });
  assert.equal(r.signal, null, `the child was killed after 20 s: the regex guard is not working (${r.stderr})`);
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout.trim().split('\n').pop()!);
  assert.equal(out.match, null);
  assert.equal(out.ok, '192.0.2.1');
});

// A liveness bound, not a speed measurement (that is bench/'s job): catastrophic backtracking on any of these
// lines would take hours, so the test's own timeout fails it.
test('the default rules on long adversarial lines never stall (100 KB lines of repeated sshd phrases)', { timeout: 60_000 }, () => {
  const config = JSON.parse(readFileSync(new URL('../config/config.default.json', import.meta.url), 'utf8'));
  for (const [name, raw] of Object.entries<Record<string, unknown>>(config.settings.rules)) {
    const rule = compileRule(ruleConfigFromJson(name, raw), { warn: () => {} });
    const phrases = [' from 1.2.3.4 port 22', 'Invalid user ', 'Failed password for ', ' ssh2', " (using password: YES)",
      "Access denied for user 'x'@'", '"POST /login/ HTTP/1.1" 200 ', ' [preauth]', 'aaaa ', '    '];
    for (const p of phrases) {
      for (const prefix of ['', 'Feb 12 14:10:21 h sshd[1]: Invalid user ', '1.2.3.4 - - [21/Nov/2026:05:04:00 +0000] "POST /login/ HTTP/1.1" 200 ', '2026-11-21  5:04:00 8 [Warning] ']) {
        const text = prefix + p.repeat(Math.ceil(100_000 / p.length)) + '!';
        const m = rule.match({ text, source: 'x' }, Date.now());
        // Whatever matched, the address is one that the crafted text contains, never something else.
        if (m !== null) assert.ok(text.includes(m.ip), `${name}: ${m.ip}`);
      }
    }
  }
});
