import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { compileRule } from '../src/rules/compile.ts';
import { ruleConfigFromJson } from '../src/config/load.ts';
import type { RuleMatcher } from '../src/rules/types.ts';

const config = JSON.parse(readFileSync(new URL('../config/config.default.json', import.meta.url), 'utf8'));
const pyfilter = JSON.parse(readFileSync(new URL('../../shared/reference/pyfilter/config.default.json', import.meta.url), 'utf8'));
const rules: RuleMatcher[] = [];
for (const cfg of [config, pyfilter]) {
  for (const [name, raw] of Object.entries<Record<string, unknown>>(cfg.settings.rules)) {
    rules.push(compileRule(ruleConfigFromJson(name, raw), { warn: () => {} }));
  }
}

function junk(): string[] {
  const out: string[] = ['', ' ', '\0', '\uFFFD', '\uD800', 'Invalid user \uD800 from 1.2.3.4 port 22\uDFFF'];
  out.push(Buffer.from([0xff, 0xfe, 0xc3, 0x28, 0xa0, 0xa1, 0xe2, 0x28, 0xa1, 0xf0, 0x90, 0x28, 0xbc]).toString('utf8'));
  out.push('Feb 12 14:10:21 h sshd[1]: Invalid user ' + Buffer.from([0xc0, 0xaf, 0xed, 0xa0, 0x80]).toString('utf8') + ' from 192.0.2.1 port 22');
  out.push('Feb 12 14:10:21 h sshd[1]: Failed password for \x00\x01\x7f from 192.0.2.1 port 22 ssh2');
  let seed = 12345;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
  for (let i = 0; i < 200; i++) {
    const b = Buffer.alloc(Math.floor(rnd() * 300));
    for (let j = 0; j < b.length; j++) b[j] = Math.floor(rnd() * 256);
    out.push(b.toString('utf8'), b.toString('latin1'));
  }
  out.push('x'.repeat(100_000));
  out.push('Feb 12 14:10:21 h sshd[1]: Invalid user ' + 'a '.repeat(50_000) + 'from 192.0.2.1 port 22');
  out.push('Feb 12 14:10:21 h sshd[1]: Invalid user x from ' + '1'.repeat(100_000));
  out.push('1.2.3.4 - - [' + '9'.repeat(100_000) + '] "POST /login/ HTTP/1.1" 401 1');
  out.push("2026-11-21  5:04:00 8 [Warning] Access denied for user '" + "'@'".repeat(30_000) + "' (using password: YES)");
  out.push('Feb 12 14:10:21 h sshd[1]: Invalid user x from 999.999.999.999 port 22');
  out.push('Feb 12 14:10:21 h sshd[1]: Invalid user x from ' + ':'.repeat(60) + ' port 22');
  return out;
}

test('invalid UTF-8, binary junk and 100 KB lines never throw', () => {
  const lines = junk();
  let matched = 0;
  for (const rule of rules) {
    for (const text of lines) {
      for (const now of [0, Date.now(), Number.MAX_SAFE_INTEGER]) {
        const m = rule.match({ text, source: 'junk' }, now);
        if (m !== null) {
          matched++;
          assert.equal(typeof m.ip, 'string');
          assert.ok(Number.isFinite(m.time), `time ${m.time} for ${text.slice(0, 80)}`);
        }
      }
    }
  }
  // The two well-formed sshd lines with junk user names still count, on our rule and (Failed password) PyFilter's.
  assert.ok(matched >= 2 * 3);
});

test('an address that is not a valid IP is never returned', () => {
  const ssh = rules[0]!;
  for (const text of ['Invalid user x from 999.999.999.999 port 22', 'Invalid user x from 1.2.3 port 22',
    'Invalid user x from 01.2.3.4 port 22', 'Invalid user x from 1.2.3.4.5 port 22', 'Invalid user x from ::::: port 22',
    'Invalid user x from 0x7f.1.1.1 port 22']) {
    assert.equal(ssh.match({ text, source: 'f' }, 0), null, text);
  }
});
