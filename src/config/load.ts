import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { z } from 'zod';
import type { CountryPolicy } from '../geo/country-policy.ts';
import { apiSettings, type ApiSettings } from '../api/http/config.ts';
import { configSchema, ruleSchema, RULE_KNOWN_KEYS, type RawConfig, type RawRule } from './schema.ts';
import type { RuleConfig } from '../rules/types.ts';
import { PatternError } from '../rules/types.ts';
import type { CountingPolicy } from '../detect/types.ts';
import { compileRule } from '../rules/compile.ts';
import type { PortScope } from '../firewall/types.ts';
import type { RedisSettings } from '../store/redis-connect.ts';

export interface ConfigProblem {
  /** JSON path such as settings.rules.ssh.regex_patterns[2]. */
  path: string;
  message: string;
}

/** A config that cannot be used. The CLI prints every problem and exits with code 2. */
export class ConfigError extends Error {
  constructor(
    readonly file: string,
    readonly problems: ConfigProblem[],
  ) {
    super(`${file}: ${problems.map((p) => `${p.path || '(top level)'}: ${p.message}`).join('; ')}`);
  }
}

export interface JournalSettings {
  matches: string[];
  mode: 'fallback' | 'always';
  files?: string[];
  directory?: string;
  journalctl: string;
}

export interface RuleSettings {
  name: string;
  enabled: boolean;
  /** Paths and globs, absolute or as written (relative ones resolve against the working directory). */
  logFiles: string[];
  journal?: JournalSettings;
  match: RuleConfig;
  policy: CountingPolicy;
  /** Seconds; <= 0 is permanent. */
  banTime: number;
  /** What this rule's bans block: null is all traffic from the address. */
  scope: PortScope | null;
  /** The rule's country policy (needs GeoIP), or null. */
  countries: CountryPolicy | null;
}

/** The validated, normalised configuration the daemon runs on. */
export interface Config {
  /** The file it came from, or '<defaults>'. */
  file: string;
  /** The HTTP API and /metrics (the `api` block); null when off. */
  api: ApiSettings | null;
  database: 'sqlite' | 'redis';
  dataDir: string;
  sqlitePath: string;
  banTime: number;
  denyType: 'DROP' | 'REJECT';
  firewall: 'nftables' | 'iptables' | 'ipset' | 'dry-run';
  forward: boolean;
  iptables: { iptables: string; ip6tables: string; chain: string; checkInterval: number };
  ipset: { ipset: string; maxelem: number };
  subnetBans: { enabled: boolean; ipv4Prefix: number; ipv6Prefix: number; threshold: number; findTime: number };
  banTimeFactor: number;
  banTimeMax: number;
  protectSessions: boolean;
  controlSocket: string;
  nftables: { nft: string; checkInterval: number; priority: number; verifyInterval: number };
  ignoredIps: string[];
  useDns: boolean;
  /** settings.geoip_database, absolute, or null (look for PyFilter's file in the working directory). */
  geoipDatabase: string | null;
  reloadIptables: boolean;
  maxTrackedIps: number;
  forgetAfter: number;
  serverName: string;
  /** Fleet sync, used when database is "redis". */
  redis: RedisSettings;
  rules: RuleSettings[];
  logging: { active: boolean; directory: string };
  raw: RawConfig;
}

export function formatPath(p: readonly PropertyKey[]): string {
  let out = '';
  for (const k of p) {
    if (typeof k === 'number') out += `[${k}]`;
    else out += out ? `.${String(k)}` : String(k);
  }
  return out;
}

function describeIssue(iss: z.core.$ZodIssue, input: unknown): ConfigProblem[] {
  const at = formatPath(iss.path);
  if (iss.code === 'unrecognized_keys') {
    return iss.keys.map((k) => ({ path: at ? `${at}.${k}` : k, message: 'unknown option' }));
  }
  if (iss.code === 'invalid_key') {
    const keys = valueAt(input, iss.path);
    const bad = keys && typeof keys === 'object' ? Object.keys(keys).filter((k) => !/^[A-Za-z0-9_.-]+$/.test(k)) : [];
    return [{ path: at, message: `invalid rule name${bad.length ? ` ${JSON.stringify(bad[0])}` : ''}: rule names use letters, digits, _ . -` }];
  }
  if (iss.code === 'invalid_union' && iss.errors.length > 0 && iss.message.startsWith('Invalid input')) {
    return [{ path: at, message: 'expected one of the documented forms' }];
  }
  let got = '';
  if (iss.code === 'invalid_type') {
    const v = valueAt(input, iss.path);
    got = v === undefined ? ' (missing)' : `, got ${JSON.stringify(v)?.slice(0, 60)}`;
  }
  return [{ path: at, message: `${iss.message}${got}` }];
}

function valueAt(root: unknown, p: readonly PropertyKey[]): unknown {
  let v: unknown = root;
  for (const k of p) {
    if (v === null || typeof v !== 'object') return undefined;
    v = (v as Record<PropertyKey, unknown>)[k];
  }
  return v;
}

/** Where in the text a JSON.parse error happened, as "line L, column C". */
function jsonErrorWhere(text: string, err: Error): string {
  const m = /position (\d+)/.exec(err.message);
  if (!m) return err.message;
  const pos = Number(m[1]);
  const before = text.slice(0, pos);
  const line = before.split('\n').length;
  const col = pos - before.lastIndexOf('\n');
  return `invalid JSON at line ${line}, column ${col}: ${err.message.replace(/ in JSON at position \d+.*$/, '')}`;
}

export function loadConfigFile(file: string, opts: { cwd?: string } = {}): Config {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new ConfigError(file, [{ path: '', message: `cannot read the file: ${(e as Error).message}` }]);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(file, [{ path: '', message: jsonErrorWhere(text, e as Error) }]);
  }
  return parseConfig(json, file, opts);
}

export function parseConfig(json: unknown, file: string, opts: { cwd?: string } = {}): Config {
  const parsed = configSchema.safeParse(json);
  if (!parsed.success) {
    throw new ConfigError(
      file,
      parsed.error.issues.flatMap((i) => describeIssue(i, json)),
    );
  }
  const raw = parsed.data;
  const s = raw.settings;
  const cwd = opts.cwd ?? process.cwd();
  const dataDir = path.resolve(cwd, s.data_dir);
  const problems: ConfigProblem[] = [];
  const rules: RuleSettings[] = [];
  for (const [name, r] of Object.entries(s.rules)) {
    const rule = normaliseRule(name, r as RawRule, raw);
    rules.push(rule);
    if (!rule.enabled) continue;
    try {
      compileRule(rule.match, { warn: () => {} });
    } catch (e) {
      if (e instanceof PatternError) {
        const at = e.index >= 0 ? `${e.list}[${e.index}]` : e.list;
        problems.push({ path: `settings.rules.${name}.${at}`, message: e.message });
      } else {
        problems.push({ path: `settings.rules.${name}`, message: (e as Error).message });
      }
    }
  }
  if (problems.length) throw new ConfigError(file, problems);
  return {
    file,
    api: apiSettings(raw.api, cwd),
    database: s.database,
    dataDir,
    sqlitePath: s.database === 'sqlite' || s.database === 'redis' ? path.resolve(dataDir, raw.sqlite.database) : '',
    banTime: s.ban_time,
    denyType: s.deny_type,
    firewall: s.firewall,
    forward: s.forward,
    iptables: { iptables: s.iptables.iptables, ip6tables: s.iptables.ip6tables, chain: s.iptables.chain, checkInterval: s.iptables.check_interval },
    ipset: { ipset: s.ipset.ipset, maxelem: s.ipset.maxelem },
    subnetBans: {
      enabled: s.subnet_bans.enabled,
      ipv4Prefix: s.subnet_bans.ipv4_prefix,
      ipv6Prefix: s.subnet_bans.ipv6_prefix,
      threshold: s.subnet_bans.threshold,
      findTime: s.subnet_bans.find_time,
    },
    banTimeFactor: s.ban_time_factor,
    banTimeMax: s.ban_time_max,
    protectSessions: s.protect_sessions,
    controlSocket: path.resolve(cwd, s.control_socket),
    nftables: { nft: s.nftables.nft, checkInterval: s.nftables.check_interval, priority: s.nftables.priority, verifyInterval: s.nftables.verify_interval },
    ignoredIps: s.ignored_ips,
    useDns: s.use_dns,
    geoipDatabase: s.geoip_database === null ? null : path.resolve(cwd, s.geoip_database),
    reloadIptables: s.reload_iptables,
    maxTrackedIps: s.max_tracked_ips,
    forgetAfter: s.forget_after,
    serverName: raw.redis.sync_bans.name,
    redis: {
      url: raw.redis.url,
      host: raw.redis.host,
      port: raw.redis.port,
      username: raw.redis.username,
      password: raw.redis.password,
      database: raw.redis.database,
      tls: raw.redis.tls,
      tlsCaFile: raw.redis.tls_ca_file === null ? null : path.resolve(cwd, raw.redis.tls_ca_file),
      sentinel: raw.redis.sentinel,
      cluster: raw.redis.cluster,
      schema: raw.redis.schema,
      prefix: raw.redis.prefix,
      streamMaxLen: raw.redis.stream_max_len,
      streamMaxAge: raw.redis.stream_max_age,
      maxEventBytes: raw.redis.max_event_bytes,
      sync: {
        active: raw.redis.sync_bans.active,
        name: raw.redis.sync_bans.name,
        checkTime: raw.redis.sync_bans.check_time,
        minServers: raw.redis.sync_bans.min_servers,
      },
    },
    rules,
    logging: { active: raw.logging.active, directory: path.resolve(dataDir, raw.logging.directory) },
    raw,
  };
}

/** A rule's matching options (what the rule compiler needs) from its entry in the config. */
function matchConfig(name: string, r: RawRule, useDns: boolean): RuleConfig {
  const lists: Record<string, string[]> = {};
  for (const [k, v] of Object.entries(r)) {
    if (!RULE_KNOWN_KEYS.has(k) && Array.isArray(v)) lists[k] = v as string[];
  }
  return {
    name,
    patterns: r.regex_patterns,
    successPatterns: r.success_patterns,
    timeFormat: r.time_format,
    lists,
    httpStatusBlocks: r.http_status_blocks,
    // PyFilter decides the meaning of positional groups by the rule's name.
    groupOrder: name === 'apache' || name === 'nginx' ? 'host-time' : 'time-host',
    useDns,
  };
}

/**
 * The RuleConfig of one `settings.rules.<name>` object as it stands in a config file, validated by the same schema
 * and built by the same code as the loader (for tests and tools that compile a single rule).
 */
export function ruleConfigFromJson(name: string, raw: unknown, useDns = false): RuleConfig {
  return matchConfig(name, ruleSchema.parse(raw), useDns);
}

function normaliseRule(name: string, r: RawRule, raw: RawConfig): RuleSettings {
  const s = raw.settings;
  const logFiles = (Array.isArray(r.log_files) ? r.log_files : [r.log_files]).filter((f) => f !== '');
  const findTime = r.find_time !== undefined ? r.find_time : s.find_time;
  const policy: CountingPolicy = {
    failedAttempts: r.failed_attempts ?? s.failed_attempts,
    mode: findTime === null ? 'gap' : 'window',
    requestTime: r.request_time ?? s.request_time,
    findTime: findTime ?? 0,
  };
  const match = matchConfig(name, r, s.use_dns);
  return {
    name,
    enabled: r.enabled,
    logFiles,
    journal: r.journal,
    match,
    policy,
    banTime: r.ban_time ?? s.ban_time,
    scope: r.ports && r.ports.length > 0 ? { protocol: r.protocol, ports: [...new Set(r.ports)].sort((a, b) => a - b) } : null,
    countries: r.countries && Object.keys(r.countries).length > 0 ? r.countries : null,
  };
}
