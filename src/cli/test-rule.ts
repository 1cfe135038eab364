import type { Config } from '../config/load.ts';
import { compileRule } from '../rules/compile.ts';
import { readLines } from '../sources/read-lines.ts';
import type { Match } from '../rules/types.ts';
import { selectRules } from './replay.ts';

export interface RuleTestResult {
  lines: number;
  matches: { line: number; match: Match }[];
  successes: number;
}

/** Runs one rule over a file, like fail2ban-regex: which lines match, with the captured ip and time. */
export function testRule(
  config: Config,
  ruleName: string,
  file: string,
  opts: { warn?: (msg: string, fields?: Record<string, unknown>) => void; onMatch?: (n: number, m: Match) => void; now?: number } = {},
): RuleTestResult {
  const [rule] = selectRules(config, ruleName);
  const matcher = compileRule(rule!.match, { warn: opts.warn ?? (() => {}) });
  const now = opts.now ?? Date.now();
  let n = 0;
  let successes = 0;
  const matches: { line: number; match: Match }[] = [];
  for (const batch of readLines(file)) {
    for (const l of batch) {
      n++;
      const m = matcher.match(l, now);
      if (m === null) continue;
      if (m.kind === 'success') {
        successes++;
        continue;
      }
      matches.push({ line: n, match: m });
      opts.onMatch?.(n, m);
    }
  }
  return { lines: n, matches, successes };
}
