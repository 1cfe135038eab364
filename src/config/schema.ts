import { z } from 'zod';
import { IgnoreList } from '../detect/cidr-trie.ts';
import { MAX_BAN_SECONDS } from '../bans/duration.ts';
import { apiSchema } from '../api/http/config.ts';

/*
 * The single source of truth for TSFilter's options: their types, defaults and documentation.
 * PyFilter's config.json is a subset of this schema, so it loads unchanged; every option PyFilter lacks has a
 * default that keeps PyFilter's behaviour (gap counting, permanent bans, files in the working directory), and our
 * own config/config.default.json opts into the better behaviour explicitly.
 */

const seconds = (what: string) =>
  z
    .number({ error: `expected a number of seconds (${what})` })
    .finite({ error: 'expected a finite number' })
    .max(MAX_BAN_SECONDS, { error: `expected at most ${MAX_BAN_SECONDS} seconds (100 years)` });

const positiveSeconds = (what: string) => seconds(what).positive({ error: `expected a number of seconds > 0 (${what})` });

/** Validated by the same parser the daemon uses, so `config check` accepts exactly what `run` accepts. */
const ipOrCidr = z.string({ error: 'expected an IP address or CIDR range as a string' }).superRefine((s, ctx) => {
  try {
    IgnoreList.parse([s]);
  } catch (e) {
    ctx.addIssue({
      code: 'custom',
      message: `expected an IP address or CIDR range (e.g. 192.0.2.0/24, 2001:db8::/32): ${(e as Error).message.replace(/^ignored_ips\[0\] /, '')}`,
    });
  }
});

const patternItem = z.union(
  [
    z.string(),
    z.tuple([z.string(), z.literal(true)]),
    z.tuple([z.string(), z.string()]),
  ],
  {
    error:
      'expected a pattern string, [pattern, true] (instant ban) or [pattern, "<list key>"] ({} replaced by that list)',
  },
);

const countryAction = z.union(
  [
    z.enum(['instant', 'never', 'default']),
    z
      .number()
      .int({ error: 'expected a whole number of failed attempts (1-1000)' })
      .min(1, { error: 'expected a number of failed attempts of at least 1 ("never" stops bans)' })
      .max(1000, { error: 'expected at most 1000 failed attempts' }),
  ],
  { error: 'expected "instant", "never", "default" or a number of failed attempts (1-1000)' },
);

/** Keys are ISO 3166-1 alpha-2 codes (upper-cased here), "*" or "unknown". */
const countryPolicy = z
  .record(z.string(), countryAction)
  .superRefine((rec, ctx) => {
    const seen = new Map<string, string>();
    for (const key of Object.keys(rec)) {
      const norm = key === '*' || key === 'unknown' ? key : key.toUpperCase();
      const before = seen.get(norm);
      if (before !== undefined) {
        ctx.addIssue({ code: 'custom', path: [key], message: `${JSON.stringify(key)} is the same country as ${JSON.stringify(before)}: give each country once` });
      }
      seen.set(norm, key);
      if (key === '*' || key === 'unknown' || /^[A-Za-z]{2}$/.test(key)) continue;
      ctx.addIssue({
        code: 'custom',
        path: [key],
        message: `expected an ISO 3166-1 alpha-2 country code (e.g. "CN"), "*" (every other country) or "unknown", got ${JSON.stringify(key)}`,
      });
    }
  })
  .transform((rec) => {
    const out: Record<string, z.infer<typeof countryAction>> = {};
    for (const [k, v] of Object.entries(rec)) out[k === '*' || k === 'unknown' ? k : k.toUpperCase()] = v;
    return out;
  });

const logFiles = z.union([z.string(), z.array(z.string())], {
  error: 'expected a path or glob, or a list of them ("" disables the rule\'s files)',
});

export const journalSchema = z
  .strictObject({
    matches: z
      .array(z.string().regex(/^(\+|[A-Z0-9_]+=.*)$/, { error: 'expected FIELD=value or "+" (journalctl match syntax)' }))
      .min(1)
      .describe('journalctl matches, e.g. ["_SYSTEMD_UNIT=ssh.service", "+", "_SYSTEMD_UNIT=sshd.service"].'),
    mode: z
      .enum(['fallback', 'always'])
      .default('fallback')
      .describe('"fallback": read the journal only when none of the rule\'s log_files exists at start (Debian 12 has no auth.log); "always": read it as well.'),
    files: z.array(z.string()).optional().describe('Read these journal files instead of the system journal (journalctl --file).'),
    directory: z.string().optional().describe('Read the journal in this directory instead of the system journal (journalctl --directory).'),
    journalctl: z.string().default('journalctl').describe('The journalctl binary.'),
  })
  .describe('Read this rule\'s lines from the systemd journal (journalctl -f -o json), resuming by cursor.');

const ruleKnownKeys = {
  enabled: z.boolean().default(true).describe('Set false to keep a rule in the file without running it.'),
  log_files: logFiles
    .default('')
    .describe('A path, a glob (/var/log/*.log) or a list of them. "" means no file (PyFilter: "No file to check").'),
  journal: journalSchema.optional(),
  regex_patterns: z
    .array(patternItem)
    .default([])
    .describe('Failure patterns: a string, [pattern, true] for an instant ban, or [pattern, "<key>"] to splice a list in at {}.'),
  success_patterns: z
    .array(z.string())
    .default([])
    .describe('Successful-login patterns; a success clears that IP\'s failures for the rule.'),
  time_format: z.string().optional().describe('strftime directives for the time capture; ISO 8601 / RFC 3339 is always recognised.'),
  http_status_blocks: z
    .array(z.number().int().min(100).max(599))
    .optional()
    .describe('Only count matches whose status capture is one of these codes.'),
  failed_attempts: z.number().int().min(1).optional().describe('Per-rule override of settings.failed_attempts.'),
  request_time: positiveSeconds('request_time').optional().describe('Per-rule override of settings.request_time.'),
  find_time: positiveSeconds('find_time').nullable().optional().describe('Per-rule override of settings.find_time (null: gap counting).'),
  ban_time: seconds('ban_time').optional().describe('Per-rule override of settings.ban_time.'),
  ports: z
    .array(z.number().int().min(1).max(65535), { error: 'expected a list of port numbers 1-65535' })
    .max(15, { error: 'expected at most 15 ports (one iptables multiport match)' })
    .optional()
    .describe('Block only these ports for this rule\'s bans (e.g. [22], [80, 443]); absent: all traffic from the address.'),
  protocol: z
    .enum(['tcp', 'udp'], { error: 'expected "tcp" or "udp"' })
    .default('tcp')
    .describe('The protocol of `ports`.'),
  countries: countryPolicy
    .optional()
    .describe(
      'Country policy (needs a GeoIP database): ISO country code -> "instant" (the first failure bans), a number ' +
        '(replaces failed_attempts), "never" (never banned by this rule) or "default"; "*" is every other country, ' +
        '"unknown" an address without one. E.g. {"CN": "instant", "RU": 2, "GB": "never"}; ' +
        '{"FR": "default", "*": "never"} bans only addresses from FR. Without a usable database the rule counts as if it had no policy.',
    ),
};

/** Keys of a rule other than the known ones must be lists of strings, usable as `[pattern, "<key>"]` (e.g. urls). */
export const ruleSchema = z
  .object(ruleKnownKeys)
  .catchall(
    z.array(z.string(), {
      error: 'unknown rule option: only lists of strings (used by [pattern, "<key>"]) may have other names',
    }),
  );

export const settingsSchema = z.strictObject({
  database: z
    .enum(['sqlite', 'redis'], { error: 'expected "sqlite" or "redis"' })
    .default('sqlite')
    .describe('Where bans are shared: "sqlite" (this server) or "redis" (a fleet; SQLite stays the local copy).'),
  data_dir: z
    .string()
    .default('.')
    .describe('Directory for the SQLite store and the ban log. Relative paths are taken from the working directory, as PyFilter does.'),
  failed_attempts: z
    .number({ error: 'expected a whole number >= 1' })
    .int({ error: 'expected a whole number >= 1' })
    .min(1, { error: 'expected a whole number >= 1' })
    .default(5)
    .describe('Gap counting: ban when the count reaches this (PyFilter: 5, i.e. the 6th close failure). Window: ban at this many failures within find_time.'),
  request_time: positiveSeconds('request_time')
    .default(5)
    .describe('Gap counting: a failure within this many seconds of the previous one adds to the count (PyFilter).'),
  find_time: positiveSeconds('find_time')
    .nullable()
    .default(null)
    .describe('Sliding window: ban at failed_attempts failures within this many seconds. null keeps PyFilter\'s gap counting.'),
  ban_time: seconds('ban_time')
    .default(-1)
    .describe('Ban duration in seconds; 0 or negative is permanent (PyFilter\'s bans are permanent).'),
  deny_type: z
    .string()
    .transform((s) => s.toUpperCase())
    .pipe(z.enum(['DROP', 'REJECT'], { error: 'expected "DROP" or "REJECT"' }))
    .default('DROP')
    .describe('What the firewall does with a banned address: DROP, or REJECT with a reset/unreachable reply.'),
  firewall: z
    .enum(['nftables', 'iptables', 'ipset', 'dry-run'], { error: 'expected "nftables", "iptables", "ipset" or "dry-run"' })
    .default('nftables')
    .describe('The enforcer: "nftables" (table inet tsfilter, sets with per-element timeouts), "iptables" (a TSFILTER chain, one rule per ban, batches through iptables-restore), "ipset" (hash:net sets with timeouts, one iptables rule each) or "dry-run", which only logs.'),
  forward: z
    .boolean()
    .default(false)
    .describe('Also block banned sources on the forward path, so containers published by Docker are protected (nftables: a forward hook; iptables/ipset: a jump from DOCKER-USER if it exists, else FORWARD).'),
  ban_time_factor: z
    .number()
    .min(1, { error: 'expected a number >= 1' })
    .default(1)
    .describe('Escalation: each new ban of the same address lasts the previous one times this factor (1: no escalation).'),
  ban_time_max: positiveSeconds('ban_time_max')
    .default(2_592_000)
    .describe('Escalation never makes a ban longer than this many seconds.'),
  protect_sessions: z
    .boolean()
    .default(true)
    .describe('Never ban the addresses of current SSH sessions (established connections to sshd, $SSH_CLIENT of whoever started TSFilter).'),
  control_socket: z
    .string()
    .min(1)
    .default('/run/tsfilter/tsfilter.sock')
    .describe('Root-only Unix socket of the running daemon, used by tsfilter ban/unban/list/status.'),
  nftables: z
    .strictObject({
      nft: z.string().default('nft').describe('The nft binary.'),
      check_interval: positiveSeconds('check_interval')
        .default(2)
        .describe('Seconds between checks that the table is intact; a flushed ruleset is restored within this time.'),
      priority: z.number().int().default(-10).describe('Priority of the input hook (lower runs earlier).'),
      verify_interval: positiveSeconds('verify_interval')
        .default(60)
        .describe('Seconds between comparisons of the sets\' contents with the store; elements deleted behind our back (nft flush set) are put back.'),
    })
    .default({ nft: 'nft', check_interval: 2, priority: -10, verify_interval: 60 })
    .describe('The nftables enforcer (table inet tsfilter).'),
  iptables: z
    .strictObject({
      iptables: z.string().min(1).default('iptables').describe('The iptables binary; <binary>-restore and <binary>-save are used too (e.g. "iptables-legacy").'),
      ip6tables: z.string().min(1).default('ip6tables').describe('The ip6tables binary, as iptables.'),
      chain: z
        .string()
        .regex(/^[A-Za-z0-9_-]{1,28}$/, { error: 'expected a chain name of letters, digits, _ and - (at most 28)' })
        .default('TSFILTER')
        .describe('The chain holding TSFilter\'s rules, jumped to from INPUT (and FORWARD/DOCKER-USER with forward).'),
      check_interval: positiveSeconds('check_interval')
        .default(5)
        .describe('Seconds between checks that the chain, its jumps and the sets are intact; what vanished is recreated.'),
    })
    .default({ iptables: 'iptables', ip6tables: 'ip6tables', chain: 'TSFILTER', check_interval: 5 })
    .describe('The iptables and ipset enforcers.'),
  ipset: z
    .strictObject({
      ipset: z.string().min(1).default('ipset').describe('The ipset binary.'),
      maxelem: z.number().int().min(1024).max(16_777_216).default(1_048_576).describe('Capacity of each set.'),
    })
    .default({ ipset: 'ipset', maxelem: 1_048_576 })
    .describe('The ipset enforcer (sets tsfilter4, tsfilter6, their -ports and -allow companions).'),
  subnet_bans: z
    .strictObject({
      enabled: z.boolean().default(false).describe('Ban a whole prefix when enough of its addresses were banned.'),
      ipv4_prefix: z.number().int().min(8).max(31).default(24).describe('IPv4 prefix length to escalate to.'),
      ipv6_prefix: z.number().int().min(16).max(127).default(64).describe('IPv6 prefix length to escalate to (attackers rotate through a /64).'),
      threshold: z.number().int().min(2).default(3).describe('Distinct addresses of one prefix banned within find_time that ban the prefix.'),
      find_time: positiveSeconds('find_time').default(3600).describe('The window, in seconds, in which those bans must fall.'),
    })
    .default({ enabled: false, ipv4_prefix: 24, ipv6_prefix: 64, threshold: 3, find_time: 3600 })
    .describe('Subnet escalation, as sshguard\'s IPV6_SUBNET but automatic. ignored_ips inside a banned prefix still pass.'),
  ignored_ips: z
    .array(ipOrCidr, { error: 'expected a list of IP addresses or CIDR ranges' })
    .default(['127.0.0.1'])
    .describe('Addresses and CIDR ranges (IPv4 and IPv6) that are never counted or banned.'),
  reload_iptables: z
    .boolean()
    .default(true)
    .describe('PyFilter: with the iptables or ipset enforcer, import <data_dir>/Config/blacklist.v4/.v6 at start (iptables-save format) and keep them current; delete a line and restart to unban.'),
  use_dns: z
    .boolean()
    .default(false)
    .describe('Resolve a host capture that is not an IP with DNS. Off: attackers control log text.'),
  geoip_database: z
    .string()
    .min(1)
    .nullable()
    .default(null)
    .describe('A MaxMind-format .mmdb (GeoLite2/GeoIP2 Country or City, DB-IP); null: PyFilter\'s GeoLite2-Country.mmdb in the working directory if there is one. Reloaded when the file changes.'),
  max_tracked_ips: z
    .number()
    .int()
    .min(1)
    .default(100_000)
    .describe('Hard cap on (rule, IP) counters in memory; the least recently seen are forgotten first.'),
  forget_after: positiveSeconds('forget_after')
    .default(86_400)
    .describe('Forget an IP\'s failures after this many seconds without a new one (PyFilter never forgets).'),
  rules: z.record(z.string().regex(/^[A-Za-z0-9_.-]+$/, { error: 'rule names use letters, digits, _ . -' }), ruleSchema).default({}),
});

export const configSchema = z.strictObject({
  settings: settingsSchema,
  sqlite: z
    .strictObject({
      database: z.string().min(1).default('tsfilter.db').describe('SQLite file name, relative to data_dir (PyFilter: PyFilter.db).'),
    })
    .default({ database: 'tsfilter.db' }),
  redis: z
    .strictObject({
      host: z.string().min(1).default('127.0.0.1').describe('Redis host (fleet sync).'),
      port: z.number().int().min(1).max(65535).default(6379).describe('Redis port.'),
      password: z.string().nullable().default(null).describe('Redis password, or null.'),
      username: z.string().min(1).nullable().default(null).describe('Redis ACL user name, or null (the default user).'),
      database: z.number().int().min(0).default(0).describe('Redis database number (not with cluster).'),
      url: z
        .string()
        .regex(/^rediss?:\/\//, { error: 'expected a redis:// or rediss:// URL' })
        .nullable()
        .default(null)
        .describe('A connection URL (redis://user:pass@host:port/db, rediss:// for TLS); replaces host, port, username, password and database.'),
      tls: z.boolean().default(false).describe('Connect with TLS (as a rediss:// URL does).'),
      tls_ca_file: z.string().min(1).nullable().default(null).describe('PEM file of the CA that signed the server\'s certificate (TLS); null: the system\'s CAs.'),
      sentinel: z
        .strictObject({
          name: z.string().min(1).describe('The master\'s name in Sentinel.'),
          nodes: z.array(z.string().regex(/^\S+:\d{1,5}$/, { error: 'expected host:port' })).min(1).describe('Sentinels, as host:port.'),
        })
        .nullable()
        .default(null)
        .describe('Find the master through Redis Sentinel instead of host/port.'),
      cluster: z
        .strictObject({
          nodes: z.array(z.string().regex(/^\S+:\d{1,5}$/, { error: 'expected host:port' })).min(1).describe('Some cluster nodes, as host:port.'),
        })
        .nullable()
        .default(null)
        .describe('Redis Cluster: keys carry a hash tag so each operation stays on one slot.'),
      schema: z
        .enum(['tsfilter', 'pyfilter'], { error: 'expected "tsfilter" or "pyfilter"' })
        .default('tsfilter')
        .describe('"tsfilter": a stream of ban/unban events with expiries (instant, lossless); "pyfilter": PyFilter\'s keys and channel, so PyFilter nodes share bans with this one.'),
      prefix: z
        .string()
        .regex(/^[A-Za-z0-9_.:-]{1,64}$/, { error: 'expected letters, digits and _ . : -' })
        .default('tsfilter')
        .describe('Key prefix of the tsfilter schema (keys are {prefix}:events, {prefix}:bans, ...).'),
      stream_max_len: z.number().int().min(1000).default(1_000_000).describe('The event stream is trimmed to about this many events.'),
      stream_max_age: positiveSeconds('stream_max_age').default(30 * 86_400).describe('Events older than this many seconds are trimmed; a node offline longer resyncs from the ban table.'),
      max_event_bytes: z.number().int().min(512).max(1_048_576).default(16_384).describe('Larger events are ignored with a warning (a poisoned or broken node).'),
      sync_bans: z
        .strictObject({
          active: z.boolean().default(false).describe('Apply the other servers\' bans here (with settings.database "redis"; this server\'s bans are always published).'),
          name: z.string().min(1).max(200).default('1').describe('This server\'s name in the fleet; must be unique (a second live node with the same name is refused).'),
          check_time: positiveSeconds('check_time').default(600).describe('Seconds between full resyncs with Redis (a safety net: bans arrive at once).'),
          min_servers: z.number().int().min(1).default(1).describe('Apply a remote ban only once this many distinct servers reported the address (DenyHosts\' sync threshold).'),
        })
        .default({ active: false, name: '1', check_time: 600, min_servers: 1 }),
    })
    .default({
      host: '127.0.0.1', port: 6379, password: null, username: null, database: 0, url: null, tls: false, tls_ca_file: null,
      sentinel: null, cluster: null, schema: 'tsfilter', prefix: 'tsfilter', stream_max_len: 1_000_000, stream_max_age: 30 * 86_400,
      max_event_bytes: 16_384, sync_bans: { active: false, name: '1', check_time: 600, min_servers: 1 },
    })
    .describe('Fleet sync (settings.database "redis"): PyFilter\'s redis block plus connection and schema options. SQLite stays the local store.'),
  logging: z
    .strictObject({
      active: z.boolean().default(false).describe('Write PyFilter\'s ban log (Logs/<YYYY-Mon>/<YYYY-MM-DD>/<YYYY-MM-DD HH>.log).'),
      directory: z.string().min(1).default('Logs').describe('Ban log directory, relative to data_dir.'),
    })
    .default({ active: false, directory: 'Logs' }),
  api: apiSchema,
});

export type RawConfig = z.infer<typeof configSchema>;
export type RawRule = z.infer<typeof ruleSchema>;
export const RULE_KNOWN_KEYS = new Set(Object.keys(ruleKnownKeys));
