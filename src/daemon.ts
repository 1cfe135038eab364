import { mkdirSync } from 'node:fs';
import path from 'node:path';
import fg from 'fast-glob';
import type { Config, RuleSettings } from './config/load.ts';
import { compileRule } from './rules/compile.ts';
import type { RuleMatcher } from './rules/types.ts';
import { DnsCache } from './rules/dns-cache.ts';
import { createDetector } from './detect/detector.ts';
import type { TrackingDetector } from './detect/types.ts';
import { IgnoreList } from './detect/cidr-trie.ts';
import { ProtectedAddresses } from './detect/protected-addresses.ts';
import { openSqliteStore } from './store/sqlite-store.ts';
import type { CounterState, Store } from './store/types.ts';
import { BanManager } from './bans/ban-manager.ts';
import { BanLog } from './bans/ban-log.ts';
import { NeverBan } from './bans/never-ban.ts';
import { DryRunEnforcer } from './firewall/dry-run.ts';
import { NftablesEnforcer } from './firewall/nftables.ts';
import { IpsetEnforcer } from './firewall/ipset.ts';
import { IptablesEnforcer } from './firewall/iptables.ts';
import { FleetSync } from './store/fleet-sync.ts';
import { findDatabase, GeoIp, type Country } from './geo/geoip.ts';
import { loadToken } from './api/http/config.ts';
import { startHttpApi, type HttpApi } from './api/http/server.ts';
import { createMetrics } from './api/metrics.ts';
import { countryOverrides, warnCountryPolicies } from './geo/country-policy.ts';
import { banEvent } from './bans/ban-manager.ts';
import { BlacklistFilesEnforcer, readBlacklistChanges, type BlacklistChanges } from './firewall/blacklist-files.ts';
import type { Enforcer } from './firewall/types.ts';
import { Pipeline } from './pipeline.ts';
import { createFileSource } from './sources/file-source.ts';
import { createJournalSource } from './sources/journal-source.ts';
import type { Position, PositionStore, Source, SourceLine } from './sources/types.ts';
import { startControlServer, type ControlServer, type Handler } from './api/control-server.ts';
import { toListed } from './api/protocol.ts';
import type { Logger } from './util/logger.ts';
import { normalizeIp } from './detect/ip.ts';
import { PidFile } from './util/pidfile.ts';
import { BLACKLIST_LINE_DELETED } from './bans/end-reasons.ts';

const EXPIRY_INTERVAL_MS = 1000;
const COUNTER_FLUSH_INTERVAL_MS = 2000;
const SWEEP_INTERVAL_MS = 60_000;
const STORE_BUSY_TIMEOUT_MS = 1000;
/** sync_bans.min_servers counts the nodes that reported an address within this window. */
const REPORT_WINDOW_MS = 86_400_000;
/** How often due firewall retries are looked at (the backoff itself is 1 s doubling to 60 s). */
const RETRY_TICK_MS = 250;

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
  readonly pipeline: Pipeline;
  readonly sources: Source[];
  bans: BanManager;
  /** SIGHUP: applies a validated config without losing counters or bans; throws (changing nothing) if unusable. */
  reload(next: Config): Promise<void>;
  /** What `tsfilter status` shows. */
  status(): Record<string, unknown>;
  /** The HTTP API's base URL (the `api` block), null when off. */
  readonly apiUrl: string | null;
  stop(): Promise<void>;
}

/** The enforcer settings.firewall names. */
export function createEnforcer(config: Config, logger: Logger): Enforcer {
  if (config.firewall === 'dry-run') return new DryRunEnforcer(logger);
  const common = { denyType: config.denyType, forward: config.forward, allow: config.ignoredIps, logger };
  if (config.firewall === 'iptables') {
    return new IptablesEnforcer({
      ...common,
      iptables: config.iptables.iptables,
      ip6tables: config.iptables.ip6tables,
      chain: config.iptables.chain,
      checkInterval: config.iptables.checkInterval,
    });
  }
  if (config.firewall === 'ipset') {
    // The ipset backend has its own chain (TSFILTER_IPSET), so switching from the iptables backend never mixes the two.
    return new IpsetEnforcer({
      ...common,
      ipset: config.ipset.ipset,
      maxelem: config.ipset.maxelem,
      iptables: config.iptables.iptables,
      ip6tables: config.iptables.ip6tables,
      checkInterval: config.iptables.checkInterval,
    });
  }
  return new NftablesEnforcer({
    nft: config.nftables.nft,
    denyType: config.denyType,
    priority: config.nftables.priority,
    checkIntervalMs: config.nftables.checkInterval * 1000,
    forward: config.forward,
    allow: config.ignoredIps,
    logger,
  });
}

/** Where PyFilter's blacklist files are kept current: only with the iptables-family backends and reload_iptables. */
export function pyfilterBlacklistDir(config: Config): string | null {
  if (!config.reloadIptables || (config.firewall !== 'iptables' && config.firewall !== 'ipset')) return null;
  return path.join(config.dataDir, 'Config');
}

/**
 * At start: lines added to the blacklist files (PyFilter's own, or an admin's) become permanent bans; lines deleted
 * since TSFilter last wrote the files are unbanned, PyFilter's way of unbanning.
 */
function applyBlacklistChanges(ch: BlacklistChanges, bans: BanManager, store: Store, logger: Logger): void {
  for (const s of ch.skipped) logger.warn('blacklist file line skipped', { file: s.file, line: s.line, reason: s.reason, text: s.text });
  if (ch.imported.length > 0) {
    const r = bans.importBans(
      ch.imported.map((e) => ({ ip: e.ip, scope: e.scope ?? null, reason: `imported from ${path.basename(e.file)} line ${e.line} (-j ${e.action})` })),
      'pyfilter-blacklist',
    );
    if (r.imported.length > 0) logger.info('bans imported from the blacklist files', { count: r.imported.length });
    for (const s of r.skipped) if (s.why !== 'already banned') logger.warn('blacklist entry not imported', { ip: s.ip, why: s.why });
  }
  const now = Date.now();
  for (const ip of ch.removed) {
    if (store.removeBan(ip, now, BLACKLIST_LINE_DELETED)) logger.info('unbanned: its line was deleted from the blacklist file', { ip });
  }
}

/** What one config makes of rules: checked completely before anything is swapped in (start and SIGHUP). */
interface Built {
  config: Config;
  rules: RuleSettings[];
  byName: Map<string, RuleSettings>;
  matchers: Map<string, RuleMatcher>;
  ignore: IgnoreList;
}

function build(config: Config, logger: Logger): Built {
  const ignore = IgnoreList.parse(config.ignoredIps);
  const rules = config.rules.filter((r) => r.enabled);
  const byName = new Map(rules.map((r) => [r.name, r]));
  const warn = (msg: string, fields?: Record<string, unknown>) => logger.warn(msg, fields);
  const dns = config.useDns ? new DnsCache() : undefined;
  const matchers = new Map<string, RuleMatcher>();
  for (const rule of rules) matchers.set(rule.name, compileRule(rule.match, { warn, resolve: dns?.resolve }));
  return { config, rules, byName, matchers, ignore };
}

function newDetector(b: Built, country: ((ip: string) => Country | null | undefined) | undefined): TrackingDetector {
  return createDetector({
    policies: new Map(b.rules.map((r) => [r.name, r.policy])),
    overrides: countryOverrides(b.rules, country),
    ignore: b.ignore,
    maxTracked: b.config.maxTrackedIps,
    forgetAfter: b.config.forgetAfter,
  });
}

/** Settings only a restart applies. */
const RESTART_ONLY: [string, (c: Config) => unknown][] = [
  ['settings.data_dir / sqlite.database', (c) => c.sqlitePath],
  ['settings.firewall', (c) => c.firewall],
  ['settings.nftables', (c) => JSON.stringify(c.nftables)],
  ['settings.iptables', (c) => JSON.stringify(c.iptables)],
  ['settings.ipset', (c) => JSON.stringify(c.ipset)],
  ['settings.forward', (c) => c.forward],
  ['settings.reload_iptables', (c) => c.reloadIptables],
  ['settings.deny_type', (c) => c.denyType],
  ['settings.control_socket', (c) => c.controlSocket],
  ['settings.database', (c) => c.database],
  ['settings.geoip_database', (c) => c.geoipDatabase],
  ['redis', (c) => JSON.stringify(c.redis)],
  ['logging', (c) => JSON.stringify(c.logging)],
  ['api', (c) => JSON.stringify(c.api)],
];

/**
 * Starts the daemon: every part is built and checked before any source starts reading. If any step fails, what
 * was started is stopped again and the error is thrown: the daemon never runs half-started.
 */
export async function startDaemon(initial: Config, logger: Logger): Promise<DaemonHandle> {
  try {
    mkdirSync(initial.dataDir, { recursive: true, mode: 0o700 });
  } catch (e) {
    throw new Error(
      `cannot create the data directory ${initial.dataDir} (settings.data_dir in ${initial.file}): ${(e as Error).message}; ` +
        'run as root or point data_dir at a writable directory',
    );
  }
  // Another daemon on this data directory or answering on our socket: refuse before touching the store or firewall.
  const pidFile = PidFile.acquire(path.join(initial.dataDir, 'tsfilter.pid'));
  // A token file with loose permissions fails here, before anything starts.
  if (initial.api) loadToken(initial.api);
  // The control socket listens from the start, answering once the daemon is up: a `tsfilter unban` during start-up
  // must reach this daemon, not edit the store behind a reconcile that already ran.
  let handleWhenUp: Handler | null = null;
  let up!: () => void;
  let startFailed!: (e: unknown) => void;
  const upP = new Promise<void>((res, rej) => {
    up = res;
    startFailed = rej;
  });
  upP.catch(() => {});
  let control: ControlServer | null = null;
  let http: HttpApi | null = null;
  let apiError: string | null = null;
  let apiRetry: NodeJS.Timeout | null = null;
  let opened: ReturnType<typeof openSqliteStore> | undefined;
  let cur: Built;
  const startedAt = Date.now();
  const sources: Source[] = [];
  const timers: NodeJS.Timeout[] = [];
  const enforcers: Enforcer[] = [];
  let sync: FleetSync | undefined;
  let geo: GeoIp | undefined;
  const guard = NeverBan.create(initial.ignoredIps, initial.protectSessions, logger);
  let stopping = false;
  const cleanup = async () => {
    stopping = true;
    if (apiRetry !== null) clearTimeout(apiRetry);
    await http?.close().catch(() => {});
    for (const t of timers) clearInterval(t);
    for (const s of sources) await s.stop().catch(() => {});
    await sync?.stop().catch(() => {});
    geo?.close();
    for (const e of enforcers) await e.stop().catch(() => {});
    await control?.close().catch(() => {});
    guard.stop();
  };

  // Whatever fails below, what was started is stopped again: the daemon never runs half-started.
  try {
    control = await startControlServer(
      initial.controlSocket,
      async (req) => {
        await upP;
        return handleWhenUp!(req);
      },
      logger,
    );
    cur = build(initial, logger);
    // A short busy timeout: while another program holds the write lock, each attempt blocks the event loop this long.
    const store = openSqliteStore(initial.sqlitePath, { server: initial.serverName, busyTimeoutMs: STORE_BUSY_TIMEOUT_MS });
    opened = store;
    const dbFile = findDatabase(initial.geoipDatabase, process.cwd());
    geo = dbFile === null ? undefined : await GeoIp.open(dbFile, logger);
    // No usable database (missing, corrupt, not yet there): undefined, so no country, no sentence (as PyFilter
    // without one) and no country policy.
    const country = geo ? (ip: string) => geo!.country(ip) : undefined;
    warnCountryPolicies(cur, geo, logger);
    let detector = newDetector(cur, country);
    detector.load(store.loadCounters().filter((c) => cur.byName.has(c.rule)));
    guard.start();
    const metrics = initial.api?.metrics ? createMetrics() : undefined;
    const enforcer = createEnforcer(initial, logger);
    enforcers.push(metrics ? metrics.instrumentEnforcer(enforcer) : enforcer);
    // PyFilter's Config/blacklist.v4/.v6: read before anything writes them (the sidecar tells deleted lines apart).
    const blacklistDir = pyfilterBlacklistDir(initial);
    const blacklistChanges = blacklistDir === null ? null : readBlacklistChanges(blacklistDir);
    if (blacklistDir !== null) enforcers.push(new BlacklistFilesEnforcer({ dir: blacklistDir, denyType: initial.denyType, logger }));
    const bans = new BanManager({
      store,
      enforcers,
      ignore: guard,
      forget: (ip) => detector.forget(ip),
      banTime: (r) => cur.byName.get(r)?.banTime ?? cur.config.banTime,
      failedAttempts: (r) => cur.byName.get(r)?.policy.failedAttempts ?? 5,
      banTimeFactor: initial.banTimeFactor,
      banTimeMax: initial.banTimeMax,
      scope: (r) => cur.byName.get(r)?.scope ?? null,
      subnetBans: initial.subnetBans,
      server: initial.serverName,
      logger,
      banLog: initial.logging.active ? new BanLog(initial.logging.directory) : undefined,
      country,
      onChange:
        initial.database === 'redis'
          ? (ev) => {
              // Straight into the store's outbox: changes made before fleet sync starts (the blacklist files'
              // import at start) are published too once it does.
              store.fleet.recordLocal(ev, JSON.stringify(ev), Date.now());
              // Runs once the synchronous transaction holding this change has committed (or rolled it back).
              queueMicrotask(() => sync?.flush());
            }
          : undefined,
    });
    let pipeline = new Pipeline(detector, (d) => bans.decide(d) !== null);

    // The table was flushed or nftables reloaded behind our back: the enforcer recreated it; put every ban back.
    for (const e of enforcers) {
      e.onLost?.(() => {
        if (stopping) return;
        logger.warn('firewall state lost (ruleset flushed?); re-applying every active ban', { enforcer: e.name });
        bans.reapply(e).then(
          (n) => logger.info('bans re-applied', { enforcer: e.name, count: n }),
          (err) => logger.error('re-applying bans failed', { enforcer: e.name, error: err }),
        );
      });
    }
    if (blacklistChanges !== null) {
      applyBlacklistChanges(blacklistChanges, bans, store, logger);
      bans.loadPrefixBans();
    }
    for (const e of enforcers) await e.start();
    const rec = await bans.reconcile();
    if (initial.database === 'redis') {
      const r = initial.redis;
      sync = new FleetSync({
        settings: r,
        fleet: store.fleet,
        logger,
        apply: (events, commit) =>
          bans.applyRemote(events, {
            commit,
            bumpVersion: (ip, at) => store.fleet.bumpVersion(ip, at),
            latest: (ip) => store.fleet.version(ip),
            reporters: (ip, node, at) => store.fleet.report(ip, node, at, Date.now() - REPORT_WINDOW_MS),
            minServers: r.sync.minServers,
          }),
        // A Redis that came back empty (restarted without persistence) learns this node's active bans again.
        republish: () =>
          store
            .activeBans(Date.now())
            .filter((b) => b.origin !== 'remote' && b.server === r.sync.name)
            .map(banEvent),
      });
      await sync.start();
    }
    logger.info('started', {
      config: initial.file,
      store: initial.sqlitePath,
      enforcer: enforcers.map((e) => e.name).join(','),
      active_bans: rec.restored,
      removed_elements: rec.removed,
      foreign_elements: rec.foreign,
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
    const commit = (work: () => void, what: Record<string, unknown>): boolean => {
      let ok = true;
      try {
        store.transaction(() => {
          bans.writePending();
          work();
          writeCounters();
        });
        counterBuf.clear();
        bans.committed();
      } catch (e) {
        ok = false;
        bans.rolledBack();
        logger.error('could not commit to the store; will retry with the next batch', { ...what, error: e });
      }
      bans.flush().catch((e) => logger.error('enforcing bans failed', { error: e }));
      return ok;
    };

    /**
     * Position updates of batches whose bans are being enforced, committed together in one transaction on the next
     * turn of the event loop (and at once by the counter timer, reload and stop), so the counters written with a
     * commit never run ahead of the positions written with it.
     */
    const deferred: { work: () => void; lines: number }[] = [];
    const drainDeferred = () => {
      if (deferred.length === 0) return;
      const batch = deferred.splice(0);
      commit(() => {
        for (const d of batch) d.work();
      }, { batches: batch.length, lines: batch.reduce((n, d) => n + d.lines, 0) });
    };

    const sink = (rule: string) => {
      const pstore = prefixed(store, `${rule}:`);
      return (lines: SourceLine[], positions: Map<string, Position>) => {
        if (stopping) return;
        const matcher = cur.matchers.get(rule);
        if (matcher === undefined) return; // a source of a rule removed by a reload, delivering its last lines
        pipeline.process(matcher, lines, Date.now());
        bans.enforceEarly();
        // The store's commit waits for the disk; let the firewall change start first (it is queued in a microtask).
        deferred.push({
          work: () => {
            for (const [k, p] of positions) pstore.setPosition(k, p);
          },
          lines: lines.length,
        });
        if (deferred.length === 1) setImmediate(drainDeferred);
      };
    };

    const startSources = async (rules: RuleSettings[]) => {
      const warn = (msg: string, fields?: Record<string, unknown>) => logger.warn(msg, fields);
      for (const rule of rules) {
        for (const s of sourcesFor(rule, store, warn, logger)) {
          sources.push(s);
          await s.start(sink(rule.name));
        }
      }
    };
    await startSources(cur.rules);

    /**
     * A periodic task. One that fails (the store locked by another program, a full disk) backs off, 1 s doubling
     * to 30 s: each attempt can block the event loop for the store's busy timeout, and tasks retrying every second
     * would starve the log sources, which must keep reading.
     */
    const every = (ms: number, what: string, fn: () => unknown) => {
      let delay = 0;
      let notBefore = 0;
      const failed = (e: unknown) => {
        delay = Math.min(delay === 0 ? 1000 : delay * 2, 30_000);
        notBefore = Date.now() + delay;
        logger.error(`${what} failed`, { error: e, retry_in_ms: delay });
      };
      timers.push(
        setInterval(() => {
          if (Date.now() < notBefore) return;
          try {
            const r = fn();
            if (r === false) failed('see the error above');
            else if (r instanceof Promise) r.then(() => (delay = 0), failed);
            else delay = 0;
          } catch (e) {
            failed(e);
          }
        }, ms),
      );
    };
    every(EXPIRY_INTERVAL_MS, 'expiring bans', () => bans.expire());
    every(COUNTER_FLUSH_INTERVAL_MS, 'saving counters', () => {
      drainDeferred();
      return commit(() => {}, { task: 'counters' });
    });
    // When the logs are quiet nothing moves the detector's clock: forget idle addresses by the wall clock too.
    every(SWEEP_INTERVAL_MS, 'forgetting idle addresses', () => detector.sweep(Date.now()));
    every(RETRY_TICK_MS, 'retrying firewall changes', () => bans.retry());
    // The watcher checks the table's structure every few seconds; this compares its contents with the store.
    every(initial.nftables.verifyInterval * 1000, 'verifying the firewall', () => bans.verify());

    let reloads = 0;
    let lastReload: string | null = null;
    let reloading: Promise<void> = Promise.resolve();

    const status = (): Record<string, unknown> => {
      const now = Date.now();
      const ds = detector.stats();
      return {
        pid: process.pid,
        started: new Date(startedAt).toISOString(),
        uptime_s: Math.floor((now - startedAt) / 1000),
        config: cur.config.file,
        store: cur.config.sqlitePath,
        reloads,
        last_reload: lastReload,
        sources: sources.map((s) => s.status()),
        rules: cur.rules.map((r) => ({ name: r.name, ...pipeline.statsFor(r.name) })),
        tracked_ips: ds.size,
        evictions: ds.evictions,
        active_bans: store.countActiveBans(now),
        bans_decided: bans.bansDecided,
        enforcers: enforcers.map((e) => ({ name: e.name, ...(e.health?.() ?? { ok: true }) })),
        enforcement: bans.enforcementStatus(),
        protection: guard.status(),
        ...(sync ? { fleet: sync.status() } : {}),
        ...(initial.api ? { api: { url: http?.url ?? null, error: apiError } } : {}),
      };
    };

    const reload = (next: Config): Promise<void> => {
      const run = async () => {
        if (stopping) throw new Error('the daemon is stopping');
        // Everything that can fail is built first; nothing is swapped in until it has all succeeded.
        const b = build(next, logger);
        const nextDetector = newDetector(b, country);
        warnCountryPolicies(b, geo, logger);
        const protector =
          next.protectSessions !== cur.config.protectSessions ? new ProtectedAddresses({ protectSessions: next.protectSessions }) : undefined;
        for (const [name, get] of RESTART_ONLY) {
          if (get(next) !== get(cur.config)) logger.warn(`${name} changed: it takes effect at the next restart, not on SIGHUP`, { config: next.file });
        }
        // Old sources stop (their last lines go through the old rules and are committed), then every counter is
        // written, so the new detector starts from exactly the old one's state for the rules that remain.
        const old = sources.splice(0);
        for (const s of old) await s.stop().catch((e) => logger.error('stopping a source failed', { source: s.name, error: e }));
        drainDeferred();
        commit(() => {}, { task: 'reload' });
        nextDetector.load(store.loadCounters().filter((c) => b.byName.has(c.rule)));
        const nextPipeline = new Pipeline(nextDetector, (d) => bans.decide(d) !== null);
        for (const r of b.rules) {
          const st = pipeline.stats.get(r.name);
          if (st) nextPipeline.stats.set(r.name, st);
        }
        // The addresses of the active bans, judged against the old ignore list now and the new one below: those newly
        // ignored are lifted, those no longer ignored go back into the firewall.
        const activeIps = store
          .activeBans(Date.now())
          .map((r) => normalizeIp(r.ip))
          .filter((ip): ip is string => ip !== null);
        const wasGuarded = new Set(activeIps.filter((ip) => guard.has(ip)));
        guard.reconfigure(next.ignoredIps, protector);
        detector = nextDetector;
        pipeline = nextPipeline;
        cur = b;
        bans.reconfigure({
          banTime: (r) => cur.byName.get(r)?.banTime ?? cur.config.banTime,
          failedAttempts: (r) => cur.byName.get(r)?.policy.failedAttempts ?? 5,
          banTimeFactor: next.banTimeFactor,
          banTimeMax: next.banTimeMax,
          subnetBans: next.subnetBans,
        });
        // ignored_ips pass ahead of every ban, prefix bans included: the enforcers' always-pass lists follow it.
        for (const e of enforcers) {
          await e.setAllowed?.(next.ignoredIps).catch((err: unknown) => logger.error('updating the always-allowed addresses failed', { enforcer: e.name, error: err }));
        }
        // Addresses now ignored or protected are lifted from the firewall, as a restart would (their bans stay in
        // the store and come back when the entry is removed again).
        const lift = activeIps.filter((ip) => guard.has(ip));
        if (lift.length > 0) {
          logger.info('lifting bans of addresses that are now ignored or protected', { count: lift.length });
          await bans.lift(lift);
        }
        // And the other way round: bans of addresses no longer ignored are enforced again, as a restart would.
        const back = bans.enforceable().filter((b) => wasGuarded.has(b.ip));
        if (back.length > 0) {
          logger.info('enforcing again the bans of addresses no longer ignored', { count: back.length });
          await bans.enforce(back);
        }
        try {
          await startSources(cur.rules);
        } catch (e) {
          logger.error('starting a source after reload failed', { error: e });
        }
        reloads++;
        lastReload = new Date().toISOString();
        logger.info('reloaded', { config: next.file, rules: cur.rules.map((r) => r.name).join(','), tracked: detector.size() });
      };
      const p = reloading.then(run);
      reloading = p.catch(() => {});
      return p;
    };

    const handle: Handler = async (req) => {
      switch (req.cmd) {
        case 'ban': {
          const r = await bans.manualBan(req.ip, req.duration, req.reason);
          return { ban: toListed(r.record), replaced: r.replaced, enforced: r.enforced };
        }
        case 'unban': {
          if ('all' in req) {
            const r = await bans.unbanAll();
            return { unbanned: r.ips, enforced: r.enforced };
          }
          const r = await bans.unban(req.ip);
          return { ip: r.ip, removed: r.removed, enforced: r.enforced, still_blocked_by: r.stillBlockedBy ?? null };
        }
        case 'list':
          return { bans: store.activeBans(Date.now()).map(toListed) };
        case 'status':
          return { status: status() };
      }
    };
    // The API is a window on the daemon, not part of the protection: when it cannot start (its port taken, even by
    // an unprivileged local user), the daemon runs on without it and keeps retrying, instead of exiting and leaving
    // the server unprotected in a restart loop.
    const api = initial.api;
    const startApi = async (attempt: number): Promise<void> => {
      apiRetry = null;
      if (stopping || api === null) return;
      try {
        const h = await startHttpApi({ control: handle, storePath: initial.sqlitePath, logger, metrics }, api);
        if (stopping) {
          await h.close();
          return;
        }
        http = h;
        apiError = null;
      } catch (e) {
        apiError = (e as Error).message;
        const delayMs = Math.min(60_000, 1000 * 2 ** Math.min(attempt, 6));
        logger.error('api: cannot start; protection goes on without it, retrying', { error: apiError, retry_in_s: delayMs / 1000 });
        apiRetry = setTimeout(() => void startApi(attempt + 1), delayMs);
      }
    };
    await startApi(0);
    handleWhenUp = handle;
    up();

    return {
      store,
      enforcers,
      bans,
      get pipeline() {
        return pipeline;
      },
      get sources() {
        return sources;
      },
      reload,
      status,
      get apiUrl() {
        return http?.url ?? null;
      },
      async stop() {
        if (stopping) return;
        await reloading;
        stopping = true;
        for (const t of timers) clearInterval(t);
        if (apiRetry !== null) clearTimeout(apiRetry);
        await http?.close();
        await control?.close();
        for (const s of sources) await s.stop();
        drainDeferred();
        commit(() => {}, { task: 'final save' });
        await bans.flush();
        await sync?.stop();
        geo?.close();
        // Kernel bans stay in place on shutdown: an attacker gains nothing by getting the daemon restarted.
        for (const e of enforcers) await e.stop();
        guard.stop();
        store.close();
        pidFile.release();
        logger.info('stopped');
      },
    };
  } catch (e) {
    startFailed(new Error('the daemon failed to start'));
    await cleanup();
    opened?.close();
    pidFile.release();
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
