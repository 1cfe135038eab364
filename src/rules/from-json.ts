import type { PatternSpec, RuleConfig } from './types.ts';

/**
 * Builds a RuleConfig from a rule object as it appears in config.json (`settings.rules.<name>`), without
 * validation beyond shapes (the config layer validates with zod). Every array-of-strings key other than the
 * pattern lists and `log_files` is a list usable by `[pattern, "<key>"]` (e.g. `urls`). apache and nginx use
 * PyFilter's host-time positional order; every other rule time-host.
 */
export function ruleConfigFromJson(name: string, raw: Record<string, unknown>, useDns = false): RuleConfig {
  const lists: Record<string, string[]> = {};
  for (const [k, v] of Object.entries(raw)) {
    if (k === 'regex_patterns' || k === 'success_patterns' || k === 'log_files') continue;
    if (Array.isArray(v) && v.every((x) => typeof x === 'string')) lists[k] = v as string[];
  }
  const cfg: RuleConfig = {
    name,
    patterns: (raw['regex_patterns'] as PatternSpec[] | undefined) ?? [],
    successPatterns: (raw['success_patterns'] as string[] | undefined) ?? [],
    lists,
    groupOrder: name === 'apache' || name === 'nginx' ? 'host-time' : 'time-host',
    useDns,
  };
  if (typeof raw['time_format'] === 'string') cfg.timeFormat = raw['time_format'];
  if (Array.isArray(raw['http_status_blocks'])) cfg.httpStatusBlocks = (raw['http_status_blocks'] as unknown[]).map(Number);
  return cfg;
}
