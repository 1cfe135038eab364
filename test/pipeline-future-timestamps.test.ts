import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Pipeline } from '../src/pipeline.ts';
import { compileRule } from '../src/rules/compile.ts';
import { createDetector } from '../src/detect/detector.ts';
import { IgnoreList } from '../src/detect/cidr-trie.ts';
import type { BanDecision } from '../src/detect/types.ts';

test('a line dated far in the future cannot age every other counter out of the detector', () => {
  const matcher = compileRule(
    {
      name: 'ssh',
      patterns: ['^(?<time>\\S+) Failed password for \\S+ from (?<host>\\S+) port \\d+ ssh2$'],
      successPatterns: [],
      lists: {},
      groupOrder: 'time-host',
      useDns: false,
    },
    { warn: () => {} },
  );
  const detector = createDetector({
    policies: new Map([['ssh', { mode: 'window', failedAttempts: 3, findTime: 600, requestTime: 5 }]]),
    ignore: IgnoreList.parse([]),
    maxTracked: 1000,
    forgetAfter: 3600,
  });
  const bans: BanDecision[] = [];
  const p = new Pipeline(detector, (d) => (bans.push(d), true));
  const now = Date.parse('2026-11-21T10:00:00Z');
  const at = (s: number) => new Date(now + s * 1000).toISOString();
  const line = (t: string, ip: string) => ({ text: `${t} Failed password for root from ${ip} port 22 ssh2`, source: 't' });
  p.process(matcher, [line(at(0), '192.0.2.1'), line(at(1), '192.0.2.1')], now);
  p.process(matcher, [line('2099-01-01T00:00:00Z', '203.0.113.66')], now);
  p.process(matcher, [line(at(2), '192.0.2.1')], now);
  assert.deepEqual(bans.map((b) => b.ip), ['192.0.2.1'], 'the first two failures were still counted');
});
