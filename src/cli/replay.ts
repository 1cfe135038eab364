import type { Config, RuleSettings } from '../config/load.ts';
import { compileRule } from '../rules/compile.ts';
import { createDetector } from '../detect/detector.ts';
import { IgnoreList } from '../detect/cidr-trie.ts';
import { openSqliteStore } from '../store/sqlite-store.ts';
import { BanManager } from '../bans/ban-manager.ts';
import { DryRunEnforcer } from '../firewall/dry-run.ts';
import { Pipeline } from '../pipeline.ts';
import { readLines } from '../sources/read-lines.ts';
import { silentLogger, type Logger } from '../util/logger.ts';
import type { BanDecision } from '../detect/types.ts';
import type { Country } from '../geo/geoip.ts';
import { countryOverrides } from '../geo/country-policy.ts';

/** A ban the replay would make: the detector's decision that the ban manager accepted. */
export type ReplayBan = BanDecision;

export interface ReplayResult {
  bans: ReplayBan[];
  lines: number;
  matched: number;
  perRule: Map<string, { lines: number; matched: number; successes: number; bans: number }>;
}

/**
 * Replays whole files through the real pipeline: rules, detector, ban manager and an in-memory SQLite store,
 * with the dry-run enforcer. Every selected rule sees every line (a replayed file has no rule of its own).
 */
export function replay(
  config: Config,
  files: string[],
  opts: {
    rule?: string;
    warn?: Logger;
    onBan?: (b: ReplayBan) => void;
    now?: number;
    /** GeoIP, for the rules' country policies and the bans' countries. */
    country?: (ip: string) => Country | null | undefined;
  } = {},
): ReplayResult {
  const rules = selectRules(config, opts.rule);
  const log = opts.warn ?? silentLogger;
  const matchers = rules.map((r) => compileRule(r.match, { warn: (m, f) => log.warn(m, f) }));
  const ignore = IgnoreList.parse(config.ignoredIps);
  const detector = createDetector({
    policies: new Map(rules.map((r) => [r.name, r.policy])),
    overrides: countryOverrides(rules, opts.country),
    ignore,
    maxTracked: config.maxTrackedIps,
    forgetAfter: config.forgetAfter,
  });
  const store = openSqliteStore(':memory:', { server: config.serverName });
  const byName = new Map(rules.map((r) => [r.name, r]));
  const bansMgr = new BanManager({
    store,
    enforcers: [new DryRunEnforcer(silentLogger)],
    ignore,
    banTime: (r) => byName.get(r)?.banTime ?? config.banTime,
    failedAttempts: (r) => byName.get(r)?.policy.failedAttempts ?? 5,
    server: config.serverName,
    logger: silentLogger,
    useEventTime: true,
    country: opts.country,
  });
  const bans: ReplayBan[] = [];
  const pipeline = new Pipeline(detector, (d: BanDecision) => {
    if (!bansMgr.decide(d)) return false;
    bans.push(d);
    opts.onBan?.(d);
    return true;
  });
  let lines = 0;
  const now = opts.now ?? Date.now();
  try {
    for (const f of files) {
      for (const batch of readLines(f)) {
        lines += batch.length;
        for (const m of matchers) pipeline.process(m, batch, now);
        store.transaction(() => bansMgr.writePending());
        bansMgr.committed();
        void bansMgr.flush();
      }
    }
  } finally {
    store.close();
  }
  let matched = 0;
  for (const s of pipeline.stats.values()) matched += s.matched;
  return { bans, lines, matched, perRule: pipeline.stats };
}

export function selectRules(config: Config, only?: string): RuleSettings[] {
  if (only !== undefined) {
    const r = config.rules.find((x) => x.name === only);
    if (!r) throw new UsageError(`no rule named "${only}" in ${config.file} (rules: ${config.rules.map((x) => x.name).join(', ')})`);
    return [r];
  }
  return config.rules.filter((r) => r.enabled);
}

/** A mistake on the command line; the CLI prints it and exits with code 2. */
export class UsageError extends Error {}
