process.env.TZ = 'UTC';
/**
 * CrowdSec's hub tests are an independent oracle: its sshd-logs parser marks each line as a failed auth (with a
 * source_ip), another event type, or nothing; its sshd-success-logs parser marks successful logins. Our default
 * ssh rule must agree line by line, except for the deliberate differences listed below (each with its reason).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { compileRule } from '../src/rules/compile.ts';
import { ruleConfigFromJson } from '../src/config/load.ts';
import type { Match } from '../src/rules/types.ts';

const HUB = new URL('../../shared/corpus/crowdsec-hub/tests/', import.meta.url);
const config = JSON.parse(readFileSync(new URL('../config/config.default.json', import.meta.url), 'utf8'));
const ssh = compileRule(ruleConfigFromJson('ssh', config.settings.rules.ssh), { warn: () => {} });
const NOW = Date.parse('2026-12-31T12:00:00Z'); // every test line is then placed in 2026
const match = (text: string): Match | null => ssh.match({ text, source: 'crowdsec-hub' }, NOW);

/** Lines where we deliberately differ from CrowdSec's sshd-logs parser: they do not count as failures here. */
const DELIBERATE: { re: RegExp; reason: string }[] = [
  {
    re: /: pam_unix\(sshd:auth\): authentication failure;/,
    reason: 'every PAM authentication failure is also logged by sshd itself as "Failed password/keyboard-interactive ' +
      '... from IP port N ssh2", which we count; counting the PAM line too would count each attempt twice (and its ' +
      'rhost= may be a host name from reverse DNS)',
  },
  {
    re: /: Connection closed by [0-9a-fA-F.:]+ port \d+ \[preauth\]$/,
    reason: 'a plain "Connection closed by IP port N [preauth]" (no user) means no authentication was attempted: ' +
      'ssh-keyscan, monitoring probes and users who abort at the host-key prompt write it too',
  },
];
/** CrowdSec event types that its ssh-bf scenario does not count either; we do not count them as failures. */
const OTHER_TYPES: Record<string, string> = {
  ssh_auth_timeout: 'LoginGraceTime expired: a legitimate user who leaves a password prompt open writes it too',
  ssh_dispatch_fatal: 'a transport error (MAC incorrect), not an authentication attempt',
  ssh_refused_conn: 'TCP wrappers already refused the connection; the name shown may come from reverse DNS',
};

interface LineExpect { dir: string; index: number; text: string; success: boolean; logType?: string; ip?: string }

function readParserAssert(dir: string): LineExpect[] {
  const base = new URL(dir + '/', HUB);
  const cfg = readFileSync(new URL('config.yaml', base), 'utf8');
  const logFile = /^log_file:\s*(\S+)/m.exec(cfg)![1]!;
  const lines = readFileSync(new URL(logFile, base), 'utf8').split('\n').filter((l) => l.trim() !== '');
  const byIndex = new Map<number, LineExpect>();
  const get = (i: number) => {
    let e = byIndex.get(i);
    if (!e) byIndex.set(i, (e = { dir, index: i, text: lines[i]!, success: false }));
    return e;
  };
  for (const row of readFileSync(new URL('parser.assert', base), 'utf8').split('\n')) {
    const m = /^results\["s01-parse"\]\["[^"]+"\]\[(\d+)\]\.(.*)$/.exec(row);
    if (m === null) continue;
    const i = Number(m[1]);
    const rest = m[2]!;
    let v: RegExpExecArray | null;
    if ((v = /^Success == (true|false)$/.exec(rest))) get(i).success = v[1] === 'true';
    else if ((v = /^Evt\.Meta\["log_type"\] == "(.*)"$/.exec(rest))) get(i).logType = v[1];
    else if ((v = /^Evt\.Meta\["source_ip"\] == "(.*)"$/.exec(rest))) get(i).ip = v[1];
    else if ((v = /^Evt\.Parsed\["message"\] == (".*")$/.exec(rest))) {
      assert.ok(lines[i]!.includes(JSON.parse(v[1]!)), `${dir}[${i}]: assert and log line do not line up`);
    }
  }
  assert.equal(byIndex.size, lines.length, `${dir}: one parser result per log line`);
  return [...byIndex.values()].sort((a, b) => a.index - b.index);
}

test('line by line agreement with CrowdSec\'s sshd parsers (sshd-logs, sshd-logs-fp, sshd-invalid-bf, sshd-success-logs)', (t) => {
  let compared = 0;
  let agreed = 0;
  const deliberate: string[] = [];
  const other: string[] = [];
  for (const dir of ['sshd-logs', 'sshd-logs-fp', 'sshd-invalid-bf', 'sshd-success-logs']) {
    for (const e of readParserAssert(dir)) {
      compared++;
      const m = match(e.text);
      const where = `${dir}[${e.index}] ${e.text}`;
      const d = DELIBERATE.find((x) => x.re.test(e.text));
      if (e.success && (e.logType === 'ssh_failed-auth' || e.logType === 'ssh_bad_keyexchange') && d === undefined) {
        assert.ok(m && (m.kind === 'failure' || m.kind === 'instant'), `CrowdSec: failed auth; we: ${m?.kind ?? 'no match'}: ${where}`);
        assert.equal(m.ip, e.ip, where);
        agreed++;
      } else if (e.success && e.logType === 'auth_success') {
        assert.equal(m?.kind, 'success', where);
        assert.equal(m.ip, e.ip, where);
        agreed++;
      } else if (e.success && d !== undefined) {
        assert.equal(m, null, `deliberate difference no longer holds: ${where}`);
        deliberate.push(`${where} — reason: ${d.reason}`);
      } else if (e.success) {
        assert.ok(e.logType !== undefined && e.logType in OTHER_TYPES, `unexpected CrowdSec type ${e.logType}: ${where}`);
        assert.equal(m, null, where);
        other.push(`${where} (CrowdSec ${e.logType}: ${OTHER_TYPES[e.logType]})`);
        agreed++;
      } else {
        assert.equal(m, null, `CrowdSec: not parsed; we: ${m?.kind}: ${where}`);
        agreed++;
      }
    }
  }
  t.diagnostic(`compared ${compared} lines, agreed on ${agreed}, ${deliberate.length} deliberate differences`);
  for (const o of other) t.diagnostic(`not a failure for either: ${o}`);
  for (const d of deliberate) t.diagnostic(`deliberate: ${d}`);
  assert.equal(compared, 24 + 6 + 6 + 4);
  assert.equal(agreed + deliberate.length, compared);
  assert.equal(deliberate.length, 3); // 2 pam_unix lines, 1 plain "Connection closed by IP port N [preauth]"
});

/** Events of the ssh brute-force alerts in a scenario.assert, as "ip MM-DDThh:mm:ss" with their multiplicity. */
function scenarioEvents(dir: string, scenarios: RegExp): Map<string, number> {
  const text = readFileSync(new URL(dir + '/scenario.assert', HUB), 'utf8');
  const perAlert = new Map<number, Map<number, { ip?: string; ts?: string }>>();
  const names = new Map<number, string>();
  for (const row of text.split('\n')) {
    let m = /^results\[(\d+)\]\.Overflow\.Alert\.GetScenario\(\) == "(.*)"$/.exec(row);
    if (m) names.set(Number(m[1]), m[2]!);
    // The timestamp is asserted whole ("2026-02-12T14:10:21Z") or without its year (GetMeta("timestamp")[4:]).
    m = /^results\[(\d+)\]\.Overflow\.Alert\.Events\[(\d+)\]\.GetMeta\("(source_ip|timestamp)"\)(?:\[4:\])? == "(.*)"$/.exec(row);
    if (!m) continue;
    const a = perAlert.get(Number(m[1])) ?? new Map();
    perAlert.set(Number(m[1]), a);
    const ev = a.get(Number(m[2])) ?? {};
    a.set(Number(m[2]), ev);
    if (m[3] === 'source_ip') ev.ip = m[4];
    else ev.ts = m[4]!.replace(/^\d{4}/, '').slice(1, 15); // MM-DDThh:mm:ss
  }
  const result = new Map<string, number>();
  for (const [k, evs] of perAlert) {
    if (!scenarios.test(names.get(k) ?? '')) continue;
    const counts = new Map<string, number>();
    for (const ev of evs.values()) counts.set(`${ev.ip} ${ev.ts}`, (counts.get(`${ev.ip} ${ev.ts}`) ?? 0) + 1);
    for (const [key, n] of counts) result.set(key, Math.max(result.get(key) ?? 0, n));
  }
  return result;
}

function ourFailures(dir: string): Map<string, number> {
  const base = new URL(dir + '/', HUB);
  const logFile = /^log_file:\s*(\S+)/m.exec(readFileSync(new URL('config.yaml', base), 'utf8'))![1]!;
  const out = new Map<string, number>();
  for (const line of readFileSync(new URL(logFile, base), 'utf8').split('\n')) {
    const m = match(line);
    if (m === null || m.kind === 'success') continue;
    const key = `${m.ip} ${new Date(m.time).toISOString().slice(5, 19)}`;
    out.set(key, (out.get(key) ?? 0) + 1);
  }
  return out;
}

test('the events of CrowdSec\'s ssh-bf alerts are exactly our failure matches (ssh-bf, sshd-invalid-bf, sshd_banner_exchange)', () => {
  for (const dir of ['ssh-bf', 'sshd-invalid-bf', 'sshd_banner_exchange']) {
    const theirs = scenarioEvents(dir, /^crowdsecurity\/ssh-bf/);
    assert.ok(theirs.size > 0, dir);
    assert.deepEqual([...ourFailures(dir)].sort(), [...theirs].sort(), dir);
  }
});

test('every event of CrowdSec\'s bad-key-exchange alerts is one of our failure matches', () => {
  const theirs = scenarioEvents('sshd-bad-keyexchange-bf', /keyexchange/);
  const ours = ourFailures('sshd-bad-keyexchange-bf');
  assert.ok(theirs.size > 0);
  for (const [key, n] of theirs) assert.ok((ours.get(key) ?? 0) >= n, `${key}: CrowdSec ${n}, us ${ours.get(key) ?? 0}`);
});
