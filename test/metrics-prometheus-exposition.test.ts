import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { appendFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { BanManager } from '../src/bans/ban-manager.ts';
import { IgnoreList } from '../src/detect/cidr-trie.ts';
import { DryRunEnforcer } from '../src/firewall/dry-run.ts';
import { NftablesEnforcer } from '../src/firewall/nftables.ts';
import { openSqliteStore } from '../src/store/sqlite-store.ts';
import { loadConfigFile } from '../src/config/load.ts';
import { startDaemon } from '../src/daemon.ts';
import { silentLogger } from '../src/util/logger.ts';
import { createMetrics } from '../src/api/metrics.ts';
import { failed } from './helpers/syslog.ts';
import { haveCommand, requirePrereq } from './helpers/prereq.ts';
import { RedisServer, requireRedis } from './helpers/redis.ts';
import { sshConfig } from './helpers/daemon.ts';
import { AUTH, call, socketHandler, startHarness, TOKEN, type Harness, withHarness } from './helpers/http-api.ts';

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}
interface Family {
  name: string;
  type: string;
  help: string;
  samples: Sample[];
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

/**
 * A strict parser of the Prometheus text format (0.0.4): every line is a HELP, a TYPE or a sample of a declared
 * family; names, label names and escapes are checked; a series appears once.
 */
function parseExposition(text: string): Map<string, Family> {
  assert.ok(text.endsWith('\n'), 'ends with a newline');
  const families = new Map<string, Family>();
  const series = new Set<string>();
  const owner = (sample: string): Family | undefined => {
    for (const suffix of ['', '_bucket', '_sum', '_count']) {
      if (suffix !== '' && !sample.endsWith(suffix)) continue;
      const f = families.get(sample.slice(0, sample.length - suffix.length));
      if (f && (suffix === '' || f.type === 'histogram' || f.type === 'summary')) return f;
    }
    return undefined;
  };
  for (const [i, line] of text.slice(0, -1).split('\n').entries()) {
    const where = `line ${i + 1}: ${line}`;
    if (line === '') continue;
    let m: RegExpExecArray | null;
    if ((m = /^# HELP (\S+) (.*)$/.exec(line))) {
      assert.match(m[1]!, NAME, where);
      assert.ok(!families.has(m[1]!) || families.get(m[1]!)!.help === '', `HELP once: ${where}`);
      families.set(m[1]!, { name: m[1]!, type: families.get(m[1]!)?.type ?? '', help: m[2]!, samples: [] });
      continue;
    }
    if ((m = /^# TYPE (\S+) (counter|gauge|histogram|summary|untyped)$/.exec(line))) {
      const f = families.get(m[1]!);
      assert.ok(f && f.type === '', `TYPE once, after HELP: ${where}`);
      f.type = m[2]!;
      continue;
    }
    assert.ok(!line.startsWith('#'), `unknown comment: ${where}`);
    m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)(?: (-?\d+))?$/.exec(line);
    assert.ok(m, `sample syntax: ${where}`);
    const labels: Record<string, string> = {};
    let rest = m[2] ?? '';
    while (rest !== '') {
      const l = /^([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)/.exec(rest);
      assert.ok(l, `labels: ${where}`);
      assert.match(l[1]!, LABEL);
      assert.ok(!(l[1]! in labels), `label once: ${where}`);
      labels[l[1]!] = l[2]!.replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
      rest = rest.slice(l[0].length);
    }
    const v = m[3]!;
    // Go's ParseFloat, which Prometheus uses, takes NaN and Inf in any case (prom-client writes "Nan").
    assert.ok(/^(nan|[+-]inf|-?\d+(\.\d+)?(e[+-]?\d+)?)$/i.test(v), `value: ${where}`);
    const f = owner(m[1]!);
    assert.ok(f, `sample of a declared family: ${where}`);
    const key = `${m[1]}${JSON.stringify(Object.entries(labels).sort())}`;
    assert.ok(!series.has(key), `series once: ${where}`);
    series.add(key);
    f.samples.push({ name: m[1]!, labels, value: /^\+inf$/i.test(v) ? Infinity : /^-inf$/i.test(v) ? -Infinity : /^nan$/i.test(v) ? NaN : Number(v) });
  }
  for (const f of families.values()) assert.notEqual(f.type, '', `${f.name} has a TYPE`);
  return families;
}

function value(fams: Map<string, Family>, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const f of fams.values()) {
    for (const s of f.samples) {
      if (s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v) && Object.keys(s.labels).length === Object.keys(labels).length) return s.value;
    }
  }
  return undefined;
}

/** Prometheus's naming rules for TSFilter's own metrics, and no label that could hold an address. */
function checkConventions(fams: Map<string, Family>): void {
  const ours = [...fams.values()].filter((f) => f.name.startsWith('tsfilter_'));
  assert.ok(ours.length >= 15, `TSFilter's metrics are there (${ours.length})`);
  for (const f of ours) {
    assert.ok(f.help.length > 10, `${f.name} has help`);
    if (f.type === 'counter') assert.match(f.name, /_total$/, `${f.name}: counters end in _total`);
    else assert.doesNotMatch(f.name, /_total$/, `${f.name}: only counters end in _total`);
    if (f.type === 'histogram') assert.match(f.name, /_seconds$/, `${f.name}: durations in seconds`);
    for (const s of f.samples) {
      for (const [k, v] of Object.entries(s.labels)) {
        assert.ok(['source', 'rule', 'origin', 'cause', 'enforcer', 'operation', 'node', 'le'].includes(k), `${f.name}: bounded label ${k}`);
        assert.doesNotMatch(v, /^\d+\.\d+\.\d+\.\d+|:.*:/, `${f.name}: no address as a label value (${k}=${v})`);
      }
    }
  }
}

async function scrape(h: Harness): Promise<{ text: string; fams: Map<string, Family> }> {
  const r = await fetch(`${h.url}/metrics`, { headers: AUTH });
  assert.equal(r.status, 200);
  assert.match(r.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
  const text = await r.text();
  return { text, fams: parseExposition(text) };
}

async function until<T>(fn: () => Promise<T | undefined>, what: string, ms = 20_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test('/metrics: lines read and matched per source and rule, failures, bans per rule and origin, unbans per rule and cause, active bans, process metrics', { timeout: 90_000 }, async () => {
  const h = await startHarness({
    metrics: true,
    // Bans already in the store count from the start: the counters agree with the store across restarts.
    seed: (store) => {
      store.addBan({ ip: '198.51.100.1', rule: 'nginx', reason: 'old', createdAt: Date.now() - 7_200_000, expiresAt: null, failures: 5, origin: 'remote', server: 'other' });
      store.addBan({ ip: '198.51.100.2', rule: 'nginx', reason: 'old', createdAt: Date.now() - 7_200_000, expiresAt: null, failures: 5, origin: 'remote', server: 'other' });
      store.removeBan('198.51.100.2', Date.now() - 3_600_000, 'unbanned on other');
    },
  });
  try {
    const before = await scrape(h);
    assert.equal(value(before.fams, 'tsfilter_bans_total', { rule: 'nginx', origin: 'remote' }), 2);
    assert.equal(value(before.fams, 'tsfilter_unbans_total', { rule: 'nginx', cause: 'remote' }), 1);
    assert.equal(value(before.fams, 'tsfilter_active_bans'), 1);
    assert.equal(value(before.fams, 'tsfilter_source_lines_read_total', { source: 'ssh:files' }), 0);

    // Five failures and an unrelated line: one ban by the ssh rule.
    const t = Date.now() - 10_000;
    appendFileSync(h.logFile, 'an unrelated line\n');
    for (let i = 0; i < 5; i++) appendFileSync(h.logFile, failed(t + i * 1000, '192.0.2.60'));
    const after = await until(async () => {
      const s = await scrape(h);
      return value(s.fams, 'tsfilter_bans_total', { rule: 'ssh', origin: 'local' }) === 1 && value(s.fams, 'tsfilter_source_lines_read_total', { source: 'ssh:files' }) === 6 ? s : undefined;
    }, 'the ban to be counted');
    assert.equal(value(after.fams, 'tsfilter_rule_lines_total', { rule: 'ssh' }), 6);
    assert.equal(value(after.fams, 'tsfilter_rule_lines_matched_total', { rule: 'ssh' }), 5);
    assert.equal(value(after.fams, 'tsfilter_rule_failures_total', { rule: 'ssh' }), 5);
    assert.equal(value(after.fams, 'tsfilter_active_bans'), 2);
    assert.equal(value(after.fams, 'tsfilter_tracked_ips'), 0, 'the banned address is forgotten');
    assert.equal(value(after.fams, 'tsfilter_enforcer_up', { enforcer: 'dry-run' }), 1);
    assert.equal(value(after.fams, 'tsfilter_enforcer_pending_retries'), 0);
    assert.ok((value(after.fams, 'process_cpu_seconds_total') ?? -1) >= 0, 'process metrics');
    assert.ok((value(after.fams, 'nodejs_heap_size_used_bytes') ?? 0) > 0);
    assert.equal(value(after.fams, 'tsfilter_redis_connected', { node: '1' }), undefined, 'no fleet gauges without a fleet');

    // Manual ban and unban through the API.
    assert.equal((await call(h.url, 'POST', '/api/bans', { token: TOKEN, body: { ip: '203.0.113.61' } })).status, 201);
    assert.equal((await call(h.url, 'DELETE', '/api/bans/192.0.2.60', { token: TOKEN })).status, 200);
    const last = await until(async () => {
      const s = await scrape(h);
      return value(s.fams, 'tsfilter_unbans_total', { rule: 'ssh', cause: 'manual' }) === 1 ? s : undefined;
    }, 'the unban to be counted');
    assert.equal(value(last.fams, 'tsfilter_bans_total', { rule: 'manual', origin: 'manual' }), 1);
    assert.equal(value(last.fams, 'tsfilter_active_bans'), 2);
    checkConventions(last.fams);
    assert.doesNotMatch(last.text, /192\.0\.2\.60|203\.0\.113\.61|198\.51\.100\./, 'no address anywhere in the output');
  } finally {
    await h.close();
  }
});

test('/metrics passes `promtool check metrics`', { timeout: 90_000 }, async (t) => {
  if (!requirePrereq(t, haveCommand('promtool'), 'promtool', 'install it (apt-get install prometheus)')) return;
  await withHarness({ metrics: true }, async (h) => {
    await call(h.url, 'POST', '/api/bans', { token: TOKEN, body: { ip: '203.0.113.62' } });
    appendFileSync(h.logFile, failed(Date.now(), '192.0.2.62'));
    const { text } = await scrape(h);
    const r = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
    assert.equal(r.status, 0, `promtool: ${r.stdout}${r.stderr}`);
  });
});

test('enforcer batches are timed and failures counted, per enforcer and operation, by wrapping the real enforcers', { timeout: 60_000 }, async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'tsf-metrics-'));
  const store = openSqliteStore(path.join(dir, 'tsfilter.db'));
  try {
    const metrics = createMetrics({ processMetrics: false });
    const dry = metrics.instrumentEnforcer(new DryRunEnforcer(silentLogger));
    // A real nftables enforcer whose binary is missing: every batch fails, as with a broken nft.
    const broken = metrics.instrumentEnforcer(new NftablesEnforcer({ nft: path.join(dir, 'no-such-nft'), denyType: 'DROP', logger: silentLogger, checkIntervalMs: 0 }));
    assert.equal(dry.name, 'dry-run', 'the wrapper keeps the enforcer\'s fields');
    assert.equal(typeof dry.elements, 'function', '... and its optional methods');
    const bans = new BanManager({ store, enforcers: [dry, broken], ignore: IgnoreList.EMPTY, banTime: () => 600, failedAttempts: () => 5, server: 't', logger: silentLogger });
    const r = await bans.manualBan('192.0.2.70', 600);
    assert.equal(r.enforced, false, 'the broken enforcer failed');
    assert.ok(dry.active.has('192.0.2.70'), 'the dry-run enforcer applied it through the wrapper');
    await bans.unban('192.0.2.70');
    const fams = parseExposition(await metrics.render());
    assert.equal(value(fams, 'tsfilter_enforcer_batch_duration_seconds_count', { enforcer: 'dry-run', operation: 'ban' }), 1);
    assert.equal(value(fams, 'tsfilter_enforcer_batch_duration_seconds_count', { enforcer: 'dry-run', operation: 'unban' }), 1);
    assert.equal(value(fams, 'tsfilter_enforcer_batch_duration_seconds_count', { enforcer: 'nftables', operation: 'ban' }), 1);
    assert.equal(value(fams, 'tsfilter_enforcer_errors_total', { enforcer: 'nftables', operation: 'ban' }), 1);
    assert.equal(value(fams, 'tsfilter_enforcer_errors_total', { enforcer: 'dry-run', operation: 'ban' }), undefined);
    assert.equal(value(fams, 'tsfilter_enforcer_batch_duration_seconds_bucket', { enforcer: 'dry-run', operation: 'ban', le: '+Inf' }), 1);
  } finally {
    store.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('fleet metrics: Redis connection state, outbox and sync lag per node, from a real redis-server and a second node', { timeout: 120_000 }, async (t) => {
  if (!requireRedis(t)) return;
  const redis = await RedisServer.start();
  const otherDir = mkdtempSync(path.join(tmpdir(), 'tsf-metrics-b-'));
  let other: Awaited<ReturnType<typeof startDaemon>> | undefined;
  const fleet = (name: string) => (cfg: Record<string, unknown>) => {
    (cfg.settings as Record<string, unknown>).database = 'redis';
    cfg.redis = { port: redis.port, sync_bans: { active: true, name, check_time: 600 } };
  };
  const h = await startHarness({ metrics: true, editConfig: fleet('node-a') });
  try {
    const connected = await until(async () => {
      const s = await scrape(h);
      return value(s.fams, 'tsfilter_redis_connected', { node: 'node-a' }) === 1 ? s : undefined;
    }, 'node-a connected');
    assert.equal(value(connected.fams, 'tsfilter_sync_outbox_events', { node: 'node-a' }), 0);

    // Node B bans; node A applies it, and its lag is measured.
    const log = path.join(otherDir, 'auth.log');
    appendFileSync(log, '');
    const cfgB = sshConfig(otherDir, log, { protect_sessions: false });
    const raw = JSON.parse((await import('node:fs')).readFileSync(cfgB, 'utf8')) as Record<string, unknown>;
    fleet('node-b')(raw);
    (await import('node:fs')).writeFileSync(cfgB, JSON.stringify(raw));
    other = await startDaemon(loadConfigFile(cfgB), silentLogger);
    await socketHandler(loadConfigFile(cfgB).controlSocket)({ cmd: 'ban', ip: '203.0.113.80', duration: 600 });
    const synced = await until(async () => {
      const s = await scrape(h);
      const counted = value(s.fams, 'tsfilter_bans_total', { rule: 'manual', origin: 'remote' }) === 1;
      return counted && value(s.fams, 'tsfilter_sync_lag_seconds', { node: 'node-a' }) !== undefined ? s : undefined;
    }, 'a remote ban applied and counted');
    assert.ok(value(synced.fams, 'tsfilter_sync_lag_seconds', { node: 'node-a' })! >= 0);
    assert.ok(value(synced.fams, 'tsfilter_sync_applied_events_total', { node: 'node-a' })! >= 1);
    checkConventions(synced.fams);

    // Redis goes away: the gauge says so.
    await redis.crash();
    const down = await until(async () => {
      const s = await scrape(h);
      return value(s.fams, 'tsfilter_redis_connected', { node: 'node-a' }) === 0 ? s : undefined;
    }, 'node-a disconnected');
    assert.ok(value(down.fams, 'tsfilter_redis_outage_seconds', { node: 'node-a' })! >= 0);
  } finally {
    await other?.stop();
    await h.close();
    await redis.dispose();
    rmSync(otherDir, { recursive: true, force: true });
  }
});
