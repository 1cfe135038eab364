import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { jsonLines, runCli, SHARED } from './helpers/cli.ts';

const LOGS = ['elastic-auth.log', 'secrepo-auth-part.log'].map((f) => path.join(SHARED, 'corpus/ssh', f));
const text = LOGS.map((f) => readFileSync(f, 'utf8'));
const allLines = text.flatMap((t) => t.split('\n').filter((l, i, a) => l !== '' || i < a.length - 1));

const IP = String.raw`(\d{1,3}(?:\.\d{1,3}){3}|[0-9a-fA-F:]*:[0-9a-fA-F:.]+)`;
const ACCEPTED = new RegExp(String.raw`sshd\[\d+\]: Accepted \S+ for \S+ from ${IP} port`);
const HOSTILE = /Failed|[Ii]nvalid|Did not receive|Bad protocol|Unable to negotiate|authentication failure|maximum authentication|banner exchange|\[preauth\]|POSSIBLE BREAK-IN|not allowed/;

/** Addresses that logged in and never did anything that looks hostile, anywhere in the logs. */
function successOnlyAddresses(): Set<string> {
  const accepted = new Set<string>();
  for (const l of allLines) {
    const m = ACCEPTED.exec(l);
    if (m) accepted.add(m[1]!);
  }
  for (const l of allLines) {
    if (!HOSTILE.test(l)) continue;
    for (const ip of accepted) if (l.includes(` ${ip} `) || l.includes(`=${ip} `) || l.endsWith(` ${ip}`)) accepted.delete(ip);
  }
  return accepted;
}

test('replaying the real SSH logs with the default config gives plausible bans and never bans an address that only logged in', () => {
  const r = runCli(['replay', '--json', ...LOGS]);
  assert.equal(r.code, 0, r.stderr);
  const out = jsonLines(r.stdout);
  const summary = out.at(-1)!.summary as { lines: number; matched: number; bans: number };
  const bans = out.slice(0, -1) as { ip: string; rule: string; time: string; failures: number }[];
  assert.equal(summary.lines, allLines.length);
  assert.equal(summary.bans, bans.length);
  assert.ok(summary.matched > 1000, `matched ${summary.matched}`);
  // The logs hold roughly 250 attacking addresses; a sane rule bans a good share of them, not thousands.
  assert.ok(bans.length >= 50 && bans.length <= 400, `bans: ${bans.length}`);
  const successOnly = successOnlyAddresses();
  assert.ok(successOnly.size > 0, 'the logs have addresses that only ever logged in');
  for (const b of bans) {
    assert.equal(Object.keys(b).sort().join(','), 'failures,ip,rule,time');
    assert.equal(b.rule, 'ssh');
    assert.ok(!Number.isNaN(Date.parse(b.time)), b.time);
    assert.ok(b.failures === 5 || b.failures === 1, `failures ${b.failures}`);
    assert.ok(!successOnly.has(b.ip), `${b.ip} only ever logged in successfully but was banned`);
    const mentions = allLines.filter((l) => l.includes(b.ip)).length;
    assert.ok(mentions >= b.failures, `${b.ip} appears in ${mentions} lines only`);
  }
  // An address may be banned again after its ban (3600 s in the default config) ran out, never while it runs.
  const last = new Map<string, number>();
  for (const b of bans) {
    const t = Date.parse(b.time);
    const prev = last.get(b.ip);
    if (prev !== undefined) assert.ok(t - prev >= 3600_000, `${b.ip} banned again ${(t - prev) / 1000} s after its ban`);
    last.set(b.ip, t);
  }
});

test('replay in text mode shows each ban with the lines that caused it, and a summary', () => {
  const r = runCli(['replay', '--rule', 'ssh', LOGS[0]!]);
  assert.equal(r.code, 0, r.stderr);
  const blocks = r.stdout.split('\n');
  const first = blocks.findIndex((l) => l.startsWith('ban '));
  assert.ok(first >= 0, r.stdout.slice(0, 500));
  const m = /^ban (\S+) rule=ssh time=\S+ failures=(\d+)/.exec(blocks[first]!);
  assert.ok(m);
  const evidence = blocks.slice(first + 1, first + 1 + Number(m[2])).filter((l) => l.startsWith('    '));
  assert.equal(evidence.length, Number(m[2]));
  for (const l of evidence) assert.ok(l.includes(m[1]!), `evidence line names the address: ${l}`);
  assert.match(r.stdout, /^summary: lines=7121 matched=\d+ bans=\d+$/m);
});

test('an unknown --rule is a usage error with exit code 2', () => {
  const r = runCli(['replay', '--rule', 'nope', LOGS[0]!]);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /no rule named "nope"/);
});
