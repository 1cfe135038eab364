import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { jsonLines, runCli, SHARED } from './helpers/cli.ts';

const LOG = path.join(SHARED, 'corpus/ssh/secrepo-auth-part.log');

test('`tsfilter test ssh FILE --json` lists each matching line with its ip and time, then a summary', () => {
  const r = runCli(['test', 'ssh', LOG, '--json']);
  assert.equal(r.code, 0, r.stderr);
  const out = jsonLines(r.stdout);
  const summary = out.at(-1)!.summary as { lines: number; matched: number; successes: number };
  const events = out.slice(0, -1) as { line: number; kind: string; rule: string; ip: string; time: string }[];
  const matches = events.filter((e) => e.kind === 'failure' || e.kind === 'instant');
  const lines = readFileSync(LOG, 'utf8').split('\n');
  if (lines.at(-1) === '') lines.pop();
  assert.equal(summary.lines, lines.length);
  assert.equal(summary.matched, matches.length);
  assert.equal(summary.successes, events.filter((e) => e.kind === 'success').length);
  assert.ok(matches.length > 100);
  let prev = 0;
  for (const m of matches) {
    assert.equal(m.rule, 'ssh');
    for (const k of ['line', 'rule', 'kind', 'pattern', 'ip', 'time', 'time_from', 'fields', 'text']) assert.ok(k in m, `${k} in ${JSON.stringify(m)}`);
    assert.ok(m.line > prev, 'line numbers increase');
    prev = m.line;
    const text = lines[m.line - 1]!;
    assert.ok(text.includes(m.ip), `line ${m.line} names ${m.ip}: ${text}`);
    assert.match(text, /sshd\[\d+\]:/);
    // The file spans Nov 30 - Dec 2: every parsed time is on one of those days.
    const d = new Date(m.time);
    assert.ok((d.getUTCMonth() === 10 && d.getUTCDate() === 30) || (d.getUTCMonth() === 11 && d.getUTCDate() <= 2), m.time);
  }
});

test('`tsfilter test` in text mode ends with the unmatched count, and every command has --help with an example', () => {
  const r = runCli(['test', 'ssh', LOG]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /Lines: \d+ lines, \d+ matched, \d+ successful logins, \d+ rejected, \d+ unmatched/);
  for (const cmd of [['run'], ['replay'], ['test'], ['config', 'check']]) {
    const h = runCli([...cmd, '--help']);
    assert.equal(h.code, 0, `${cmd.join(' ')} --help: ${h.stderr}`);
    assert.match(h.stdout, /Example/, `${cmd.join(' ')} --help has an example`);
  }
});
