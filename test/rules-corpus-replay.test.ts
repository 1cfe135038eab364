process.env.TZ = 'UTC';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { compileRule } from '../src/rules/compile.ts';
import { ruleConfigFromJson } from '../src/config/load.ts';
import type { Match } from '../src/rules/types.ts';

const config = JSON.parse(readFileSync(new URL('../config/config.default.json', import.meta.url), 'utf8'));
const pyfilter = JSON.parse(readFileSync(new URL('../../shared/reference/pyfilter/config.default.json', import.meta.url), 'utf8'));
const NOW = Date.parse('2026-12-31T12:00:00Z');
const IP_RE = /\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\b/g;
/** Words in an sshd line that mean "something was refused"; an IP never on such a line only ever logged in. */
const SUSPICIOUS = /Failed |[Ii]nvalid user|Did not receive|Bad protocol|maximum authentication|Unable to negotiate|authentication failure|\[preauth\]|Too many authentication|not allowed because|banner exchange/;

for (const file of ['elastic-auth.log', 'secrepo-auth-part.log']) {
  test(`replaying ${file} through the default ssh rule`, (t) => {
    const warns: string[] = [];
    const ssh = compileRule(ruleConfigFromJson('ssh', config.settings.rules.ssh), { warn: (m) => warns.push(m) });
    const text = readFileSync(new URL('../../shared/corpus/ssh/' + file, import.meta.url), 'utf8');
    const lines = text.split('\n');
    const matches: (Match | null)[] = lines.map((l) => ssh.match({ text: l, source: file }, NOW));

    // Every sshd "Accepted" line is a success, with an address from the line.
    let accepted = 0;
    lines.forEach((l, i) => {
      if (!/ sshd\[\d+\]: Accepted /.test(l)) return;
      accepted++;
      assert.equal(matches[i]?.kind, 'success', l);
      assert.ok(l.includes(` from ${matches[i]!.ip} port `), l);
    });

    // Every "Failed password"/"Invalid user"/"maximum authentication attempts" line from sshd counts, with its address.
    for (const [re, kind] of [[/ sshd\[\d+\]: Invalid user .* from (\S+)( port \d+)?$/, 'failure'],
      [/ sshd\[\d+\]: (?:message repeated \d+ times: \[ )?Failed password for .* from (\S+) port \d+ ssh2\]?$/, 'failure'],
      [/ sshd\[\d+\]: Did not receive identification string from (\S+)$/, 'failure'],
      [/ sshd\[\d+\]: error: maximum authentication attempts exceeded for .* from (\S+) port \d+ ssh2 \[preauth\]$/, 'instant']] as const) {
      lines.forEach((l, i) => {
        const m = re.exec(l);
        if (m === null) return;
        assert.deepEqual([matches[i]?.kind, matches[i]?.ip], [kind, m[1]], l);
      });
    }

    // Failures: each captured address is in the line; none is an address that only ever logged in normally.
    const suspicious = new Set<string>();
    for (const l of lines) if (SUSPICIOUS.test(l)) for (const ip of l.match(IP_RE) ?? []) suspicious.add(ip);
    const innocent = new Set<string>();
    lines.forEach((l, i) => {
      if (matches[i]?.kind === 'success' && !suspicious.has(matches[i]!.ip)) innocent.add(matches[i]!.ip);
    });
    const failures = matches.filter((m): m is Match => m !== null && m.kind !== 'success');
    for (const f of failures) {
      assert.ok(f.line.includes(f.ip), f.line);
      assert.ok(!innocent.has(f.ip), `innocent ${f.ip} counted: ${f.line}`);
    }
    // Their times are the lines' (syslog, yearless, placed in 2026), never the arrival time.
    for (const f of failures) assert.ok(f.time < NOW && f.time > Date.parse('2026-01-01T00:00:00Z'), f.line);

    // For comparison, PyFilter's own ssh patterns count legitimate logouts ("Received disconnect ... disconnected by user").
    const py = compileRule(ruleConfigFromJson('ssh', pyfilter.settings.rules.ssh), { warn: () => {} });
    const pyInnocent = lines.filter((l) => { const m = py.match({ text: l, source: file }, NOW); return m !== null && innocent.has(m.ip); }).length;

    const byPattern = new Map<number, number>();
    for (const f of failures) byPattern.set(f.pattern, (byPattern.get(f.pattern) ?? 0) + 1);
    const ips = new Set(failures.map((f) => f.ip));
    t.diagnostic(`${file}: ${lines.length} lines, ${accepted} Accepted (all success), ${failures.length} failure matches ` +
      `(${failures.filter((f) => f.kind === 'instant').length} instant) from ${ips.size} addresses; by pattern ` +
      `${JSON.stringify(Object.fromEntries([...byPattern].sort((a, b) => a[0] - b[0])))}; ${innocent.size} innocent ` +
      `addresses never counted (PyFilter's patterns count ${pyInnocent} of their lines); ${warns.length} warnings`);
    assert.ok(failures.length > 0);
    if (accepted > 0) assert.ok(innocent.size > 0, 'the corpus has addresses that only logged in: the check above is not vacuous');
  });
}
