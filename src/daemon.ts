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
import type { CounterState, Store } from './store/types.ts';
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

/**
 * Starts the daemon: every part is built and checked before any source starts reading. If any step fails, what
 * was started is stopped again and the error is thrown: the daemon never runs half-started.
 */
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
  const ignore = IgnoreList.parse(config.ignoredIps);
  const rules = config.rules.filter((r) => r.enabled);
  const byName = new Map(rules.map((r) => [r.name, r]));
  const warn = (msg: string, fields?: Record<string, unknown>) => logger.warn(msg, fields);
  const dns = config.useDns ? new DnsCache() : undefined;
  const matchers = new Map<string, RuleMatcher>();
  for (const rule of rules) matchers.set(rule.name, compileRule(rule.match, { warn, resolve: dns?.resolve }));

  const store = openSqliteStore(config.sqlitePath, { server: config.serverName });
  const sources: Source[] = [];
  const timers: NodeJS.Timeout[] = [];
  const enforcers: Enforcer[] = [];
  let stopping = false;
  const cleanup = async () => {
    stopping = true;
    for (const t of timers) clearInterval(t);
    for (const s of sources) await s.stop().catch(() => {});
    for (const e of enforcers) await e.stop().catch(() => {});
  };

  try {
    const detector = createDetector({
      policies: new Map(rules.map((r) => [r.name, r.policy])),
      ignore,
      maxTracked: config.maxTrackedIps,
      forgetAfter: config.forgetAfter,
    });
    detector.load(store.loadCounters().filter((c) => byName.has(c.rule)));
    enforcers.push(new DryRunEnforcer(logger));
    if (config.firewall !== 'dry-run') {
      logger.warn(`settings.firewall is "${config.firewall}" but that enforcer is not available in this build: dry-run only`);
    }
    const bans = new BanManager({
      store,
      enforcers,
      ignore,
      banTime: (r) => byName.get(r)?.banTime ?? config.banTime,
      failedAttempts: (r) => byName.get(r)?.policy.failedAttempts ?? 5,
      banTimeFactor: config.banTimeFactor,
      banTimeMax: config.banTimeMax,
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

    // Counter changes stay buffered until the transaction that writes them commits, so a failed commit does not
    // lose them: they are written again with the next one.
    const counterBuf = new Map<string, { state: CounterState } | { removed: { rule: string; ip: string } }>();
    const writeCounters = () => {
      const { changed, removed } = detector.dirty();
      for (const c of changed) counterBuf.set(`${c.rule}\0${c.ip}`, { state: c });
      for (const r of removed) counterBuf.set(`${r.rule}\0${r.ip}`, { removed: r });
      if (counterBuf.size === 0) return;
      const ch: CounterState[] = [];
      const rm: { rule: string; ip: string }[] = [];
      for (const v of counterBuf.values()) {
        if ('state' in v) ch.push(v.state);
        else rm.push(v.removed);
      }
      store.saveCounters(ch, rm);
    };

    /**
     * One transaction per batch: the bans its lines earned, the counters they changed and the position after them
     * commit together (one fsync). If the commit fails, the bans are enforced anyway and written again with the
     * next transaction, and no later position is saved without them, so a restart re-reads rather than loses.
     */
    const commit = (work: () => void, what: Record<string, unknown>) => {
      try {
        store.transaction(() => {
          bans.writePending();
          work();
          writeCounters();
        });
        counterBuf.clear();
        bans.committed();
      } catch (e) {
        bans.rolledBack();
        logger.error('could not commit to the store; will retry with the next batch', { ...what, error: e });
      }
      bans.flush().catch((e) => logger.error('enforcing bans failed', { error: e }));
    };

    const sink = (rule: string) => {
      const matcher = matchers.get(rule)!;
      const pstore = prefixed(store, `${rule}:`);
      return (lines: SourceLine[], positions: Map<string, Position>) => {
        if (stopping) return;
        pipeline.process(matcher, lines, Date.now());
        commit(() => {
          for (const [k, p] of positions) pstore.setPosition(k, p);
        }, { rule, lines: lines.length });
      };
    };

    for (const rule of rules) {
      for (const s of sourcesFor(rule, store, warn, logger)) {
        sources.push(s);
        await s.start(sink(rule.name));
      }
    }

    const every = (ms: number, what: string, fn: () => unknown) => {
      timers.push(
        setInterval(() => {
          try {
            const r = fn();
            if (r instanceof Promise) r.catch((e) => logger.error(`${what} failed`, { error: e }));
          } catch (e) {
            logger.error(`${what} failed`, { error: e });
          }
        }, ms),
      );
    };
    every(EXPIRY_INTERVAL_MS, 'expiring bans', () => bans.expire());
    every(COUNTER_FLUSH_INTERVAL_MS, 'saving counters', () => commit(() => {}, { task: 'counters' }));
    // When the logs are quiet nothing moves the detector's clock: forget idle addresses by the wall clock too.
    every(SWEEP_INTERVAL_MS, 'forgetting idle addresses', () => detector.sweep(Date.now()));

    return {
      store,
      enforcers,
      pipeline,
      sources,
      async stop() {
        if (stopping) return;
        stopping = true;
        for (const t of timers) clearInterval(t);
        for (const s of sources) await s.stop();
        commit(() => {}, { task: 'final save' });
        await bans.flush();
        // Kernel bans stay in place on shutdown: an attacker gains nothing by getting the daemon restarted.
        for (const e of enforcers) await e.stop();
        store.close();
        logger.info('stopped');
      },
    };
  } catch (e) {
    await cleanup();
    store.close();
    throw e;
  }
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
