import { test } from 'node:test';
import assert from 'node:assert/strict';
import { compileRule } from '../src/rules/compile.ts';
import { DnsCache } from '../src/rules/dns-cache.ts';
import type { RuleConfig } from '../src/rules/types.ts';

const rule = (useDns: boolean): RuleConfig => ({
  name: 'ssh',
  patterns: ['^Failed password for \\S+ from (?<host>\\S+) port \\d+ ssh2$'],
  successPatterns: [],
  lists: {},
  groupOrder: 'time-host',
  useDns,
});
const line = (host: string) => ({ text: `Failed password for root from ${host} port 22 ssh2`, source: 't' });

test('a host name in a log line is never looked up unless use_dns is on', async () => {
  const asked: string[] = [];
  const dns = new DnsCache({ lookup: async (h) => (asked.push(h), '192.0.2.80') });
  const warnings: string[] = [];
  const m = compileRule(rule(false), { warn: (w) => warnings.push(w), resolve: dns.resolve });
  assert.equal(m.match(line('attacker.example'), Date.now()), null);
  await new Promise((r) => setTimeout(r, 10));
  assert.deepEqual(asked, []);
  assert.match(warnings[0]!, /not an IP address \(DNS lookups are off\)/);
});

test('with use_dns the pipeline never waits: the first sighting starts a lookup, later lines use the answer', async () => {
  const asked: string[] = [];
  const dns = new DnsCache({ lookup: async (h) => (asked.push(h), '192.0.2.80') });
  const m = compileRule(rule(true), { warn: () => {}, resolve: dns.resolve });
  assert.equal(m.match(line('attacker.example'), Date.now()), null, 'not resolved yet: skipped, not blocked');
  assert.equal(m.match(line('attacker.example'), Date.now()), null, 'one lookup in flight, not two');
  await new Promise((r) => setTimeout(r, 10));
  assert.deepEqual(asked, ['attacker.example']);
  assert.equal(m.match(line('attacker.example'), Date.now())?.ip, '192.0.2.80');
});

test('junk that is not a host name is never sent to DNS, and lookups in flight are bounded', async () => {
  const asked: string[] = [];
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const dns = new DnsCache({ maxInFlight: 2, lookup: async (h) => (asked.push(h), await gate, '192.0.2.81') });
  for (const junk of ['$(reboot)', 'a b', 'x'.repeat(300), '-leading.example', '']) assert.equal(dns.resolve(junk), null);
  for (let i = 0; i < 10; i++) dns.resolve(`h${i}.example`);
  assert.deepEqual(asked, ['h0.example', 'h1.example']);
  release();
});
