import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { renderOptionsTable, optionRows } from '../src/config/docs.ts';

const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');

test('the README options table is the one generated from the schema (run `npm run docs` after changing it)', () => {
  assert.ok(readme.includes(renderOptionsTable()), 'README.md options table is stale: run `npm run docs`');
});

test('every option PyFilter lacks is documented in the README', () => {
  for (const opt of ['find_time', 'ban_time', 'data_dir', 'ignored_ips', 'success_patterns', 'journal', 'use_dns', 'max_tracked_ips', 'forget_after']) {
    assert.ok(optionRows().some((r) => r.path.endsWith(`.${opt}`) && r.doc.length > 0), `${opt} has a description in the schema`);
    assert.ok(readme.includes(`\`${opt}\``), `${opt} appears in the README`);
  }
  assert.match(readme, /CIDR/);
  assert.match(readme, /per-rule/i);
});

test('the quick start has exactly two commands', () => {
  const m = /## Quick start\n\n```sh\n([\s\S]*?)```/.exec(readme);
  assert.ok(m, 'a Quick start code block');
  assert.equal(m[1]!.trim().split('\n').length, 2);
});
