/*
 * Prometheus metrics (prom-client), served at /metrics by the HTTP API.
 *
 * Nothing here runs on the hot path. At each scrape the daemon's own status snapshot (what `tsfilter status` shows)
 * is read once and copied into the metrics; bans and unbans are counted from the store's ban table (a baseline of
 * every ban it holds, then the live feed), so they agree with `tsfilter list`/`explain` and survive restarts. Only
 * the firewall batches are timed where they happen, by wrapping the enforcer (instrumentEnforcer).
 *
 * Labels are bounded: rule, source and enforcer names come from the config, origins and causes are small fixed sets,
 * and no address is ever a label. Rule names read from the store (other nodes' rules) are capped at MAX_RULES.
 */
import client from 'prom-client';
import type { Enforcer } from '../firewall/types.ts';
import type { ReadDb } from './http/read-db.ts';
import type { FeedEvent } from './http/ban-feed.ts';
import { endCause } from '../bans/end-reasons.ts';

/** Distinct rule label values taken from the store; more fall under "other". */
const MAX_RULES = 200;
const ORIGINS = new Set(['local', 'manual', 'remote', 'pyfilter']);

/** What the scrape reads from the daemon. */
export interface MetricsSource {
  /** The daemon's status snapshot (`tsfilter status --json`). */
  status(): Promise<Record<string, unknown>> | Record<string, unknown>;
}

/** A counter fed from totals that may restart from zero (a source recreated by a reload): it never goes down. */
class Monotonic {
  private readonly last = new Map<string, number>();
  private readonly base = new Map<string, number>();
  value(key: string, v: number): number {
    const prev = this.last.get(key);
    if (prev !== undefined && v < prev) this.base.set(key, (this.base.get(key) ?? 0) + prev);
    this.last.set(key, v);
    return (this.base.get(key) ?? 0) + v;
  }
}

const num = (v: unknown): number | undefined => (typeof v === 'number' && Number.isFinite(v) ? v : undefined);
const arr = (v: unknown): Record<string, unknown>[] => (Array.isArray(v) ? v.filter((x): x is Record<string, unknown> => x !== null && typeof x === 'object') : []);
const str = (v: unknown): string | undefined => (typeof v === 'string' && v !== '' ? v.slice(0, 200) : undefined);

export class Metrics {
  readonly registry = new client.Registry();
  private source: MetricsSource | null = null;
  private readonly mono = new Monotonic();
  private readonly rules = new Set<string>();

  private readonly sourceLines = new client.Counter({ name: 'tsfilter_source_lines_read_total', help: 'Log lines read, per source.', labelNames: ['source'], registers: [this.registry] });
  private readonly ruleLines = new client.Counter({ name: 'tsfilter_rule_lines_total', help: 'Log lines given to each rule.', labelNames: ['rule'], registers: [this.registry] });
  private readonly ruleMatched = new client.Counter({ name: 'tsfilter_rule_lines_matched_total', help: 'Lines that matched a failure pattern of the rule.', labelNames: ['rule'], registers: [this.registry] });
  private readonly ruleFailures = new client.Counter({
    name: 'tsfilter_rule_failures_total',
    help: 'Failures counted towards a ban, per rule (matched lines less further lines about an attempt already counted).',
    labelNames: ['rule'],
    registers: [this.registry],
  });
  private readonly ruleSuccesses = new client.Counter({ name: 'tsfilter_rule_successes_total', help: 'Successful logins seen, per rule (they clear the address\'s failures).', labelNames: ['rule'], registers: [this.registry] });
  private readonly bans = new client.Counter({ name: 'tsfilter_bans_total', help: 'Bans recorded in the store, per rule and origin (local, manual, remote, pyfilter).', labelNames: ['rule', 'origin'], registers: [this.registry] });
  private readonly unbans = new client.Counter({
    name: 'tsfilter_unbans_total',
    help: 'Bans ended, per rule and what ended them (cause: expired, manual, remote, replaced, other).',
    labelNames: ['rule', 'cause'],
    registers: [this.registry],
  });
  private readonly activeBans = new client.Gauge({ name: 'tsfilter_active_bans', help: 'Active bans (as tsfilter list shows them).', registers: [this.registry] });
  private readonly tracked = new client.Gauge({ name: 'tsfilter_tracked_ips', help: 'Addresses whose failures are being counted.', registers: [this.registry] });
  private readonly evictions = new client.Counter({ name: 'tsfilter_tracked_ip_evictions_total', help: 'Tracked addresses dropped because max_tracked_ips was reached.', registers: [this.registry] });
  private readonly batchSeconds = new client.Histogram({
    name: 'tsfilter_enforcer_batch_duration_seconds',
    help: 'Time to apply one batch of firewall changes, per enforcer and operation.',
    labelNames: ['enforcer', 'operation'],
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [this.registry],
  });
  private readonly batchErrors = new client.Counter({ name: 'tsfilter_enforcer_errors_total', help: 'Firewall batches that failed (they are retried), per enforcer and operation.', labelNames: ['enforcer', 'operation'], registers: [this.registry] });
  private readonly enforcerUp = new client.Gauge({ name: 'tsfilter_enforcer_up', help: '1 when the enforcer reports itself healthy, else 0.', labelNames: ['enforcer'], registers: [this.registry] });
  private readonly pendingRetries = new client.Gauge({ name: 'tsfilter_enforcer_pending_retries', help: 'Firewall changes waiting for a retry.', registers: [this.registry] });
  private readonly redisUp = new client.Gauge({ name: 'tsfilter_redis_connected', help: '1 while connected to Redis (fleet sync), else 0.', labelNames: ['node'], registers: [this.registry] });
  private readonly redisOutage = new client.Gauge({ name: 'tsfilter_redis_outage_seconds', help: 'How long the current Redis outage has lasted (0 while connected).', labelNames: ['node'], registers: [this.registry] });
  private readonly syncLag = new client.Gauge({ name: 'tsfilter_sync_lag_seconds', help: 'Delay between a remote ban being made and being applied here, for the latest one.', labelNames: ['node'], registers: [this.registry] });
  private readonly outbox = new client.Gauge({ name: 'tsfilter_sync_outbox_events', help: 'Local ban changes not yet published to Redis.', labelNames: ['node'], registers: [this.registry] });
  private readonly published = new client.Counter({ name: 'tsfilter_sync_published_events_total', help: 'Ban changes published to the fleet.', labelNames: ['node'], registers: [this.registry] });
  private readonly applied = new client.Counter({ name: 'tsfilter_sync_applied_events_total', help: 'Other nodes\' ban changes applied here.', labelNames: ['node'], registers: [this.registry] });

  constructor(opts: { processMetrics?: boolean } = {}) {
    if (opts.processMetrics !== false) {
      client.collectDefaultMetrics({ register: this.registry });
      // Gauges named like counters (promtool rejects them); the same figures remain per type without the suffix.
      for (const name of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']) this.registry.removeSingleMetric(name);
    }
  }

  readonly contentType = client.Registry.PROMETHEUS_CONTENT_TYPE;

  /** Wraps an enforcer: each ban/unban/reconcile batch is timed, and a failed one counted. */
  instrumentEnforcer<E extends Enforcer>(e: E): E {
    const timed = new Set<PropertyKey>(['ban', 'unban', 'reconcile']);
    return new Proxy(e, {
      get: (target, prop, receiver) => {
        const v = Reflect.get(target, prop, receiver) as unknown;
        if (typeof v !== 'function') return v;
        if (!timed.has(prop)) return v.bind(target);
        const labels = { enforcer: target.name, operation: String(prop) };
        return async (...args: unknown[]) => {
          const end = this.batchSeconds.startTimer(labels);
          try {
            return await (v as (...a: unknown[]) => Promise<unknown>).apply(target, args);
          } catch (err) {
            this.batchErrors.inc(labels);
            throw err;
          } finally {
            end();
          }
        };
      },
    });
  }

  /** Where scrapes read the daemon's state from (startHttpApi sets it). */
  attach(source: MetricsSource): void {
    this.source = source;
  }

  private rule(r: string): string {
    if (this.rules.has(r)) return r;
    if (this.rules.size >= MAX_RULES) return 'other';
    this.rules.add(r);
    return r;
  }

  /** Every ban and unban the store holds: the counters' baseline, read where the live feed starts. */
  countStore(rdb: ReadDb): void {
    for (const r of rdb.db.prepare('SELECT rule, origin, count(*) AS n FROM bans GROUP BY rule, origin').all() as { rule: string; origin: string; n: number }[]) {
      this.bans.inc({ rule: this.rule(r.rule), origin: ORIGINS.has(r.origin) ? r.origin : 'other' }, r.n);
    }
    const ended = rdb.db.prepare('SELECT rule, end_reason, count(*) AS n FROM bans WHERE ended_at IS NOT NULL GROUP BY rule, end_reason').all() as { rule: string; end_reason: string | null; n: number }[];
    for (const r of ended) this.unbans.inc({ rule: this.rule(r.rule), cause: endCause(r.end_reason) }, r.n);
  }

  /** The live feed's events (FeedListener). */
  countEvents = (events: FeedEvent[]): void => {
    for (const ev of events) {
      if (ev.type === 'ban') this.bans.inc({ rule: this.rule(ev.ban.rule), origin: ORIGINS.has(ev.ban.origin) ? ev.ban.origin : 'other' });
      else this.unbans.inc({ rule: this.rule(ev.ban.rule), cause: ev.cause });
    }
  };

  /** Copies the daemon's status into the metrics. */
  private async refresh(): Promise<void> {
    if (this.source === null) return;
    const s = await this.source.status();
    // The status already counts them as `tsfilter list` does (store.countActiveBans).
    this.activeBans.set(num(s.active_bans) ?? 0);
    this.sourceLines.reset();
    for (const src of arr(s.sources)) {
      const name = str(src.name);
      const lines = num(src.linesRead);
      if (name !== undefined && lines !== undefined) this.sourceLines.inc({ source: name }, this.mono.value(`source\0${name}`, lines));
    }
    for (const c of [this.ruleLines, this.ruleMatched, this.ruleFailures, this.ruleSuccesses]) c.reset();
    for (const r of arr(s.rules)) {
      const rule = str(r.name);
      if (rule === undefined) continue;
      const put = (c: client.Counter<'rule'>, key: string, v: number | undefined) => {
        if (v !== undefined && v >= 0) c.inc({ rule }, this.mono.value(`${key}\0${rule}`, v));
      };
      put(this.ruleLines, 'lines', num(r.lines));
      put(this.ruleMatched, 'matched', num(r.matched));
      const matched = num(r.matched);
      put(this.ruleFailures, 'failures', matched === undefined ? undefined : matched - (num(r.repeats) ?? 0));
      put(this.ruleSuccesses, 'successes', num(r.successes));
    }
    this.tracked.set(num(s.tracked_ips) ?? 0);
    this.evictions.reset();
    this.evictions.inc(this.mono.value('evictions', num(s.evictions) ?? 0));
    this.enforcerUp.reset();
    for (const e of arr(s.enforcers)) {
      const name = str(e.name);
      if (name !== undefined) this.enforcerUp.set({ enforcer: name }, e.ok === false ? 0 : 1);
    }
    const enforcement = s.enforcement as Record<string, unknown> | undefined;
    this.pendingRetries.set(num(enforcement?.pending_retries) ?? 0);
    for (const g of [this.redisUp, this.redisOutage, this.syncLag, this.outbox, this.published, this.applied]) g.reset();
    const fleet = s.fleet as Record<string, unknown> | undefined;
    const node = fleet ? str(fleet.node) : undefined;
    if (fleet && node !== undefined) {
      const l = { node };
      this.redisUp.set(l, fleet.connected === true ? 1 : 0);
      this.redisOutage.set(l, num(fleet.outage_s) ?? 0);
      const lag = num(fleet.lag_ms_last);
      if (lag !== undefined) this.syncLag.set(l, lag / 1000);
      this.outbox.set(l, num(fleet.outbox) ?? 0);
      this.published.inc(l, this.mono.value('published', num(fleet.published) ?? 0));
      this.applied.inc(l, this.mono.value('applied', num(fleet.applied) ?? 0));
    }
  }

  /** The exposition text for GET /metrics. */
  async render(): Promise<string> {
    await this.refresh();
    return this.registry.metrics();
  }
}

/** Created by the daemon before its enforcers (to wrap them), attached to the daemon by startHttpApi. */
export function createMetrics(opts: { processMetrics?: boolean } = {}): Metrics {
  return new Metrics(opts);
}
