import { mkdirSync } from 'node:fs';
import path from 'node:path';
import fg from 'fast-glob';
import type { Config, RuleSettings } from './config/load.ts';
import { compileRule } from './rules/compile.ts';
import type { RuleMatcher } from './rules/types.ts';
import { DnsCache } from './rules/dns-cache.ts';
import { createDetector } from './detect/detector.ts';
import { IgnoreList } from './detect/cidr-trie.ts';
import { openSqliteStore } from './store/sqlite-store.ts';
import type { Store } from './store/types.ts';
import { BanManager } from './bans/ban-manager.ts';
import { BanLog } from './bans/ban-log.ts';
import { DryRunEnforcer } from './firewall/dry-run.ts';
import type { Enforcer } from './firewall/types.ts';
import { Pipeline } from './pipeline.ts';
import { createFileSource } from './sources/file-source.ts';
import { createJournalSource } from './sources/journal-source.ts';
import type { Position, PositionStore, Source, SourceLine } from './sources/types.ts';
import type { Logger } from './util/logger.ts';

const EXPIRY_INTERVAL_MS = 1000;
const COUNTER_FLUSH_INTERVAL_MS = 2000;
const SWEEP_INTERVAL_MS = 60_000;

/** Positions of different rules live under different keys, so two rules may follow the same file. */
function prefixed(store: PositionStore, prefix: string): PositionStore {
  return {
    getPosition: (k) => store.getPosition(prefix + k),
    setPosition: (k, p) => store.setPosition(prefix + k, p),
  };
}

function anyFileExists(patterns: string[]): boolean {
  return patterns.some((p) => fg.sync(p, { onlyFiles: true, suppressErrors: true }).length > 0);
}

export interface DaemonHandle {
  store: Store;
  enforcers: Enforcer[];
  pipeline: Pipeline;
  sources: Source[];
  stop(): Promise<void>;
}

/** Starts the daemon: every part is built and checked before any source starts reading. */
export async function startDaemon(config: Config, logger: Logger): Promise<DaemonHandle> {
  try {
    mkdirSync(config.dataDir, { recursive: true, mode: 0o700 });
  } catch (e) {
    throw new Error(
      `cannot create the data directory ${config.dataDir} (settings.data_dir in ${config.file}): ${(e as Error).message}; ` +
        'run as root or point data_dir at a writable directory',
    );
  }
  if (config.database === 'redis') {
    logger.warn('settings.database is "redis" but fleet sync over Redis is not available yet: using the local SQLite store only', {
      store: config.sqlitePath,
    });
  }
  const store = openSqliteStore(config.sqlitePath, { server: config.serverName });
  const ignore = IgnoreList.parse(config.ignoredIps);
  const rules = config.rules.filter((r) => r.enabled);
  const byName = new Map(rules.map((r) => [r.name, r]));
  const detector = createDetector({
    policies: new Map(rules.map((r) => [r.name, r.policy])),
    ignore,
    maxTracked: config.maxTrackedIps,
    forgetAfter: config.forgetAfter,
  });
  detector.load(store.loadCounters().filter((c) => byName.has(c.rule)));
  const enforcers: Enforcer[] = [new DryRunEnforcer(logger)];
  const bans = new BanManager({
    store,
    enforcers,
    ignore,
    banTime: (r) => byName.get(r)?.banTime ?? config.banTime,
    failedAttempts: (r) => byName.get(r)?.policy.failedAttempts ?? 5,
    server: config.serverName,
    logger,
    banLog: config.logging.active ? new BanLog(config.logging.directory) : undefined,
  });
  const pipeline = new Pipeline(detector, (d) => bans.decide(d) !== null);

  for (const e of enforcers) await e.start();
  const restored = await bans.restore();
  logger.info('started', {
    config: config.file,
    store: config.sqlitePath,
    enforcer: enforcers.map((e) => e.name).join(','),
    active_bans: restored,
    tracked: detector.size(),
  });

  const warn = (msg: string, fields?: Record<string, unknown>) => logger.warn(msg, fields);
  const sources: Source[] = [];
  const matchers = new Map<string, RuleMatcher>();
  const dns = config.useDns ? new DnsCache() : undefined;
  for (const rule of rules) {
    const matcher = compileRule(rule.match, { warn, resolve: dns?.resolve });
    matchers.set(rule.name, matcher);
    sources.push(...sourcesFor(rule, store, warn, logger));
  }

  let stopping = false;
  const sink = (rule: string) => (lines: SourceLine[], positions: Map<string, Position>) => {
    if (stopping) return;
    const matcher = matchers.get(rule)!;
    const pstore = prefixed(store, `${rule}:`);
    // One transaction per batch: the bans it decided, the counters it changed and the positions after it commit
    // together (one fsync). A crash before the commit re-reads the batch at the next start and decides the same
    // bans again; a crash after it loses nothing. Bans are announced and enforced only once committed.
    try {
      store.transaction(() => {
        pipeline.process(matcher, lines, Date.now());
        for (const [k, p] of positions) pstore.setPosition(k, p);
        saveCounters();
      });
    } catch (e) {
      logger.error('could not commit a batch to the store; its lines will be read again at the next start', {
        rule,
        lines: lines.length,
        error: e,
      });
    }
    void bans.flush();
  };
  const saveCounters = () => {
    const { changed, removed } = detector.dirty();
    if (changed.length || removed.length) store.saveCounters(changed, removed);
  };

  const ruleOfSource = new Map<Source, string>();
  for (const rule of rules) for (const s of sources) if (s.name.startsWith(`${rule.name}:`)) ruleOfSource.set(s, rule.name);
  for (const s of sources) await s.start(sink(ruleOfSource.get(s)!));

  const expiryTimer = setInterval(() => void bans.expire(), EXPIRY_INTERVAL_MS);
  const counterTimer = setInterval(() => store.transaction(saveCounters), COUNTER_FLUSH_INTERVAL_MS);
  // When the logs are quiet nothing moves the detector's clock: forget idle addresses by the wall clock too.
  const sweepTimer = setInterval(() => detector.sweep(Date.now()), SWEEP_INTERVAL_MS);

  return {
    store,
    enforcers,
    pipeline,
    sources,
    async stop() {
      if (stopping) return;
      stopping = true;
      clearInterval(expiryTimer);
      clearInterval(counterTimer);
      clearInterval(sweepTimer);
      for (const s of sources) await s.stop();
      await bans.flush();
      store.transaction(saveCounters);
      // Kernel bans stay in place on shutdown: an attacker gains nothing by getting the daemon restarted.
      for (const e of enforcers) await e.stop();
      store.close();
      logger.info('stopped');
    },
  };
}

function sourcesFor(rule: RuleSettings, store: Store, warn: (m: string, f?: Record<string, unknown>) => void, logger: Logger): Source[] {
  const out: Source[] = [];
  const positions = prefixed(store, `${rule.name}:`);
  const files = rule.logFiles.map((f) => path.resolve(f));
  const useJournal = rule.journal && (rule.journal.mode === 'always' || !anyFileExists(files));
  if (files.length > 0 && !(useJournal && rule.journal?.mode === 'fallback')) {
    out.push(createFileSource({ name: `${rule.name}:files`, paths: files, positions, warn }));
    logger.info('following files', { rule: rule.name, files: files.join(',') });
  }
  if (useJournal && rule.journal) {
    out.push(
      createJournalSource({
        name: `${rule.name}:journal`,
        matches: rule.journal.matches,
        files: rule.journal.files,
        directory: rule.journal.directory,
        journalctl: rule.journal.journalctl,
        positions,
        warn,
      }),
    );
    logger.info('following the journal', { rule: rule.name, matches: rule.journal.matches.join(' ') });
  }
  if (out.length === 0) logger.info(`No file to check within rule: ${rule.name}`, { rule: rule.name });
  return out;
}
