import type { Enforcer, Enforcement, EnforcerHealth, PortScope } from './types.ts';
import { NftError, runNft, type NftRunnerOptions } from './nft-runner.ts';
import { canonicalTarget, prefixOf, targetContains, type Target } from './target.ts';

/*
 * The nftables backend. TSFilter owns exactly one table, `inet tsfilter`, and never lists, flushes or touches any
 * other (never `flush ruleset`):
 *
 *   table inet tsfilter {
 *     set banned4   { type ipv4_addr; flags timeout; }            whole-source address bans: 192.0.2.7 timeout 3600s
 *     set net4      { type ipv4_addr; flags interval, timeout; }  prefix bans: 198.51.100.0/24
 *     set ports4    { type ipv4_addr . inet_proto . inet_service; flags timeout; }            192.0.2.7 . tcp . 22
 *     set netports4 { type ipv4_addr . inet_proto . inet_service; flags interval, timeout; }  198.51.100.0/24 . tcp . 22
 *     set allow4    { type ipv4_addr; flags interval; }           settings.ignored_ips: always pass
 *     (and the same five sets for IPv6: banned6, net6, ports6, netports6, allow6)
 *     chain input { type filter hook input priority -10; policy accept;
 *       ip saddr @allow4 accept;  ip6 saddr @allow6 accept
 *       ip saddr @banned4 counter drop;  ip saddr @net4 counter drop
 *       ip saddr . meta l4proto . th dport @ports4 counter drop
 *       ip saddr . meta l4proto . th dport @netports4 counter drop
 *       (the same four drops for ip6) }
 *     chain forward { type filter hook forward priority -10; ... the same rules }   only with settings.forward
 *   }
 *
 * With deny_type REJECT, each drop becomes two rules: TCP is answered with a reset, anything else with an
 * ICMP/ICMPv6 administratively-prohibited error (`reject with icmpx type admin-prohibited`).
 *
 * The allow rules come first, so an ignored address inside a banned prefix still gets through. `accept` in an
 * nftables base chain only ends this chain: the admin's own chains on the same hook still see the packet.
 * The forward chain protects routed traffic (Docker containers). Docker DNATs published ports in prerouting, before
 * forward, so a port-scoped ban there matches the container's port, not the published one. (`ct original
 * proto-dst` would give the published port, but nft 1.0.6 refuses it in a concatenation: "can not use variable
 * sized data types (invalid) in concat expressions".) Without settings.forward a forward chain left by an earlier
 * run is removed at start.
 *
 * Each element carries its own timeout, so the kernel lifts a ban on time even while the daemon is down; a permanent
 * ban is an element without one. banned4/6 and ports4/6 are plain hash sets (no `interval` flag): nft 1.0.6 accepts
 * timeouts on interval sets, but deleting elements from one is quadratic in userspace (a 100,000-element add+delete
 * batch did not finish in 10 minutes, against 0.7 s for a hash set; with 5,000 prefixes in net4, one add+delete
 * takes 40 ms, 500 deletes 2.7 s, all 5,000 42 s). So only prefixes, which are few, go to interval sets.
 *
 * Interval elements must not overlap: nft refuses a prefix nested in another one of the same set ("interval
 * overlaps with an existing one"; netports: "File exists" for the same protocol and port). A nested prefix ban
 * is kept in memory as shadowed: only the outermost prefix is in the set, and when it goes (unban, new scope) the
 * prefixes it covered are put in. If the outer element's kernel timeout ends first, an inner one is missing until
 * the daemon lifts the outer ban (it does so at expiry) or reconciles at start.
 *
 * Idempotency idioms, verified on nft 1.0.6 (kernel 6.18), all inside one transaction (`nft -f -` is atomic):
 *  - start/repair: `add table`, `add set`, `add chain` succeed when the object exists with the same definition and
 *    keep set elements; `flush chain` + re-adding the rules fixes edited rules. A chain whose hook, priority or
 *    policy differs (`add chain` fails with "Operation not supported") is rebuilt with
 *    `add chain X; flush chain X; delete chain X` first (the same removes the forward chain); a set whose type or
 *    flags differ ("File exists") cannot be changed in place, so the table is rebuilt (`add table; delete table`),
 *    losing its elements (onLost fires). The allow sets are rewritten with `flush set` + `add element`.
 *  - ban: `add element` of an existing element succeeds but, depending on the kernel, keeps or replaces its timeout
 *    (6.18 replaces, older kernels keep). To set exactly the timeout asked for, every ban is
 *    `add element {a}; delete element {a}; add element {a timeout Ns}` - the first add makes the delete safe.
 *    A source with another scope or kind loses its old elements the same way in the same transaction.
 *  - unban: `delete element` of a missing element fails the whole batch ("No such file or directory"), so unban is
 *    `add element {a}; delete element {a}`.
 *  - nesting in net4/net6: nft's overlap check ignores deletes earlier in the same transaction after that idiom
 *    (`add /24; delete /24; add /16` fails), so when a prefix replaces one nested in it, or the reverse, the
 *    removals are one transaction and the additions a second, milliseconds later. netports (a kernel pipapo set)
 *    takes both in one.
 *  - timeouts: nft 1.0.6 rejects `timeout 100000000s` ("value too large"; 99,999,999 s is accepted). A longer ban
 *    is enforced as a permanent element; the daemon lifts it at expiry, and reconciliation at start removes it if
 *    the daemon was down then.
 *
 * What each source holds (whole, or which ports) is kept in memory, filled from a listing of the sets before the
 * first change on a table that already existed, and by elements()/reconcile(); unban needs it to name every element.
 * An address source missing from a later listing stays in memory (a dump of a big set can come back short), so its
 * unban still names its port elements; add+delete of an element that is gone is harmless.
 */

export const TABLE = 'tsfilter';
export const SET4 = 'banned4';
export const SET6 = 'banned6';
export const CHAIN = 'input';
export const FORWARD_CHAIN = 'forward';
/** Largest per-element timeout nft 1.0.6 accepts, in seconds. */
export const MAX_TIMEOUT_S = 99_999_999;
/** Distinct sources per transaction: keeps one nft process under ~60 MB; 100,000 bans are 4 transactions. */
export const CHUNK = 25_000;

export type DenyType = 'DROP' | 'REJECT';
type Family = 4 | 6;
type Kind = 'addr' | 'net' | 'ports' | 'netports';

/** Set names by family and kind. */
export const SETS = {
  4: { addr: SET4, net: 'net4', ports: 'ports4', netports: 'netports4', allow: 'allow4' },
  6: { addr: SET6, net: 'net6', ports: 'ports6', netports: 'netports6', allow: 'allow6' },
} as const;
const SEL = { 4: 'ip saddr', 6: 'ip6 saddr' } as const;
const KINDS: Kind[] = ['addr', 'net', 'ports', 'netports'];

interface SetDef {
  name: string;
  family: Family;
  kind: Kind | 'allow';
  type: string | string[];
  flags: string[];
}

/** Every set of the table, with the type and flags nft lists for it. */
export const SET_DEFS: SetDef[] = ([4, 6] as const).flatMap((f) => {
  const addr = f === 4 ? 'ipv4_addr' : 'ipv6_addr';
  const concat = [addr, 'inet_proto', 'inet_service'];
  return [
    { name: SETS[f].addr, family: f, kind: 'addr', type: addr, flags: ['timeout'] },
    { name: SETS[f].net, family: f, kind: 'net', type: addr, flags: ['interval', 'timeout'] },
    { name: SETS[f].ports, family: f, kind: 'ports', type: concat, flags: ['timeout'] },
    { name: SETS[f].netports, family: f, kind: 'netports', type: concat, flags: ['interval', 'timeout'] },
    { name: SETS[f].allow, family: f, kind: 'allow', type: addr, flags: ['interval'] },
  ] satisfies SetDef[];
});
/** The interval sets without a concatenation, where nft's own overlap check needs removals committed first. */
const NET_SETS = new Set<string>([SETS[4].net, SETS[6].net]);
const BAN_SETS = new Map(SET_DEFS.filter((d) => d.kind !== 'allow').map((d) => [d.name, d]));

export interface NftLogger {
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
}

export interface NftablesEnforcerOptions {
  /** The nft binary (settings.nftables.nft). Default "nft". */
  nft?: string;
  denyType: DenyType;
  /** Input (and forward) hook priority (settings.nftables.priority). Default -10. */
  priority?: number;
  /** settings.forward: also filter forwarded traffic (Docker containers) in a forward chain. Default false. */
  forward?: boolean;
  /** settings.ignored_ips: addresses and prefixes that pass ahead of every ban. */
  allow?: string[];
  /** How often the watcher checks that the table is intact (settings.nftables.check_interval). Default 2000. */
  checkIntervalMs?: number;
  /** The same in seconds, as settings.nftables.check_interval (what src/daemon.ts passes); checkIntervalMs wins. */
  checkInterval?: number;
  /** Run nft via `ip netns exec <netns> nft`: for tests and benches only; the daemon itself runs inside the namespace. */
  netns?: string;
  logger: NftLogger;
  /** Called after the watcher recreated a table, set, chain or rule that vanished: re-apply every active ban. */
  onLost?: () => void;
  /** Kill an nft command after this long. Default 30 s. */
  timeoutMs?: number;
  /** Clock for timeouts (ms since the epoch). Default Date.now. */
  now?: () => number;
}

export interface NftablesHealth extends EnforcerHealth {
  ok: boolean;
  /** The last failure (check, repair or command), while not ok. */
  lastError?: string;
  /** Banned sources (addresses and prefixes) in the sets at the last listing (elements(), or every COUNT_EVERY_MS). */
  elements?: number;
  /** ISO time of the last successful check. */
  lastCheck?: string;
  /** How many times the watcher found the table damaged and repaired it. */
  repairs: number;
  denyType: DenyType;
  forward: boolean;
  /** Entries in the allow sets (ignored_ips, nested ones merged). */
  allowed: number;
}

/** The expected rules of the input (and forward) chain, each identified by its comment. */
export function chainRules(denyType: DenyType): { comment: string; body: string }[] {
  const out: { comment: string; body: string }[] = [];
  for (const f of [4, 6] as const) out.push({ comment: `tsfilter:${SETS[f].allow}`, body: `${SEL[f]} @${SETS[f].allow} accept` });
  for (const f of [4, 6] as const) {
    for (const kind of KINDS) {
      const set = SETS[f][kind];
      const match = kind === 'addr' || kind === 'net' ? `${SEL[f]} @${set}` : `${SEL[f]} . meta l4proto . th dport @${set}`;
      if (denyType === 'DROP') {
        out.push({ comment: `tsfilter:${set}`, body: `${match} counter drop` });
      } else {
        out.push({ comment: `tsfilter:${set}-tcp`, body: `${match} meta l4proto tcp counter reject with tcp reset` });
        out.push({ comment: `tsfilter:${set}`, body: `${match} counter reject with icmpx type admin-prohibited` });
      }
    }
  }
  return out;
}

const HOOK: Record<string, string> = { [CHAIN]: 'input', [FORWARD_CHAIN]: 'forward' };

export interface RulesetOptions {
  /** Chains to delete first (their hook, priority or policy differ). */
  rebuildChains?: string[];
  /** Chains to delete and not recreate (the forward chain, when forward is off). */
  removeChains?: string[];
  /** Delete the whole table first (a set's type or flags differ; its elements are lost). */
  rebuildTable?: boolean;
  /** Also create the forward chain. */
  forward?: boolean;
  /** The allow sets' contents (canonical, not nested). */
  allow?: Target[];
}

/** The start/repair transaction: creates what is missing, keeps ban elements, rewrites rules and allow sets. */
export function rulesetScript(denyType: DenyType, priority: number, opts: RulesetOptions = {}): string {
  if (!Number.isInteger(priority)) throw new TypeError(`nftables priority must be an integer, got ${String(priority)}`);
  const t = `inet ${TABLE}`;
  const lines = [`add table ${t}`];
  if (opts.rebuildTable) lines.push(`delete table ${t}`, `add table ${t}`);
  else for (const c of [...(opts.rebuildChains ?? []), ...(opts.removeChains ?? [])]) lines.push(`add chain ${t} ${c}`, `flush chain ${t} ${c}`, `delete chain ${t} ${c}`);
  for (const d of SET_DEFS) lines.push(`add set ${t} ${d.name} { type ${typeText(d.type)}; flags ${d.flags.join(', ')}; }`);
  for (const c of opts.forward ? [CHAIN, FORWARD_CHAIN] : [CHAIN]) {
    lines.push(`add chain ${t} ${c} { type filter hook ${HOOK[c]} priority ${priority}; policy accept; }`, `flush chain ${t} ${c}`);
    for (const r of chainRules(denyType)) lines.push(`add rule ${t} ${c} ${r.body} comment "${r.comment}"`);
  }
  return lines.join('\n') + '\n' + allowScript(opts.allow ?? []);
}

function typeText(type: string | string[]): string {
  return Array.isArray(type) ? type.join(' . ') : type;
}

/** Replaces the allow sets' contents. */
export function allowScript(allow: Target[]): string {
  let s = '';
  for (const f of [4, 6] as const) {
    const set = SETS[f].allow;
    s += `flush set inet ${TABLE} ${set}\n`;
    const list = allow.filter((a) => a.family === f).map((a) => a.text);
    if (list.length > 0) s += `add element inet ${TABLE} ${set} { ${list.join(', ')} }\n`;
  }
  return s;
}

/** What is wrong with the table, from `nft -t -j list table inet tsfilter`. Empty: intact. */
export interface Inspection {
  missingTable: boolean;
  /** Sets missing: their elements are gone. */
  missingSets: string[];
  /** Sets present with another type or flags: need a table rebuild. */
  badSets: string[];
  missingChains: string[];
  /** Chains present with another type, hook, priority or policy. */
  badChains: string[];
  /** Chains that should not be there (forward while forward is off). */
  extraChains: string[];
  /** Rules missing, extra or out of order. */
  badRules: boolean;
  problems: string[];
}

interface NftJsonObject {
  table?: { family: string; name: string };
  set?: { family: string; table: string; name: string; type?: unknown; flags?: unknown; elem?: unknown[] };
  chain?: { family: string; table: string; name: string; type?: string; hook?: string; prio?: number; policy?: string };
  rule?: { family: string; table: string; chain: string; comment?: string };
}

function parseNftJson(out: string): NftJsonObject[] {
  const j = JSON.parse(out) as { nftables?: NftJsonObject[] };
  return Array.isArray(j.nftables) ? j.nftables : [];
}

export function inspectTable(objs: NftJsonObject[] | null, denyType: DenyType, priority: number, forward = false): Inspection {
  const r: Inspection = { missingTable: false, missingSets: [], badSets: [], missingChains: [], badChains: [], extraChains: [], badRules: false, problems: [] };
  const chains = forward ? [CHAIN, FORWARD_CHAIN] : [CHAIN];
  if (objs === null || !objs.some((o) => o.table?.family === 'inet' && o.table.name === TABLE)) {
    r.missingTable = true;
    r.missingSets = SET_DEFS.map((d) => d.name);
    r.missingChains = chains;
    r.badRules = true;
    r.problems.push(`table inet ${TABLE} is missing`);
    return r;
  }
  const mine = <T extends { family: string; table: string }>(x: T | undefined): x is T => x !== undefined && x.family === 'inet' && x.table === TABLE;
  for (const d of SET_DEFS) {
    const s = objs.map((o) => o.set).find((x) => mine(x) && x.name === d.name);
    if (!s) {
      r.missingSets.push(d.name);
      r.problems.push(`set ${d.name} is missing`);
      continue;
    }
    const flags = Array.isArray(s.flags) ? [...(s.flags as unknown[])].map(String).sort() : [];
    if (JSON.stringify(s.type) !== JSON.stringify(d.type) || flags.join(',') !== [...d.flags].sort().join(',')) {
      r.badSets.push(d.name);
      r.problems.push(`set ${d.name} has type ${JSON.stringify(s.type)} flags ${JSON.stringify(flags)}`);
    }
  }
  const want = chainRules(denyType).map((x) => x.comment);
  for (const name of [CHAIN, FORWARD_CHAIN]) {
    const c = objs.map((o) => o.chain).find((x) => mine(x) && x.name === name);
    if (!chains.includes(name)) {
      if (c) {
        r.extraChains.push(name);
        r.problems.push(`chain ${name} is there while forward is off`);
      }
      continue;
    }
    if (!c) {
      r.missingChains.push(name);
      r.badRules = true;
      r.problems.push(`chain ${name} is missing`);
      continue;
    }
    if (c.type !== 'filter' || c.hook !== HOOK[name] || c.prio !== priority || c.policy !== 'accept') {
      r.badChains.push(name);
      r.problems.push(`chain ${name} is ${c.type} hook ${c.hook} priority ${c.prio} policy ${c.policy}`);
    }
    const have = objs
      .map((o) => o.rule)
      .filter((x): x is NonNullable<NftJsonObject['rule']> => mine(x) && x.chain === name)
      .map((x) => x.comment ?? '');
    if (have.length !== want.length || have.some((h, i) => h !== want[i])) {
      r.badRules = true;
      r.problems.push(`chain ${name} has rules [${have.join(', ')}], expected [${want.join(', ')}]`);
    }
  }
  return r;
}

function isIntact(i: Inspection): boolean {
  return i.problems.length === 0;
}

const NO_SUCH = /No such file or directory/;
const COUNT_EVERY_MS = 60_000;
/** reconcile() leaves an element alone when its remaining time is within this of the store's. */
const RETIME_SLACK_S = 5;

/**
 * What the sets hold for one source: '' is the whole-source element, 'tcp . 22' a port element. Sorted ('' first,
 * then by protocol and port). Whole-source bans share one frozen array: 100,000 of them cost no allocation each.
 */
type Held = readonly string[];
const WHOLE: Held = Object.freeze(['']);

/** The elements a scope asks for, or null when the scope is malformed. */
function heldOf(scope: PortScope | null | undefined): Held | null {
  if (scope === undefined || scope === null) return WHOLE;
  if ((scope.protocol !== 'tcp' && scope.protocol !== 'udp') || !Array.isArray(scope.ports)) return null;
  if (scope.ports.length === 0) return WHOLE;
  if (scope.ports.some((p) => !Number.isInteger(p) || p < 1 || p > 65535)) return null;
  return [...new Set(scope.ports)].sort((a, b) => a - b).map((p) => `${scope.protocol} . ${p}`);
}

function sortHeld(entries: Iterable<string>): Held {
  const list = [...new Set(entries)];
  if (list.length === 1 && list[0] === '') return WHOLE;
  return list.sort((a, b) => {
    if (a === '' || b === '') return a === '' ? -1 : 1;
    const [pa, na] = a.split(' . ');
    const [pb, nb] = b.split(' . ');
    return pa !== pb ? (pa! < pb! ? -1 : 1) : Number(na) - Number(nb);
  });
}

function sameHeld(a: Held, b: Held): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

function setOf(t: Target, entry: string): string {
  const kind: Kind = t.isPrefix ? (entry === '' ? 'net' : 'netports') : entry === '' ? 'addr' : 'ports';
  return SETS[t.family][kind];
}

function elemKey(source: string, entry: string): string {
  return entry === '' ? source : `${source} . ${entry}`;
}

/** Interval elements group by set and port: only elements of one group can overlap. */
function groupOf(t: Target, entry: string): string {
  return `${setOf(t, entry)}|${entry}`;
}

/**
 * Prefix elements by group, prefix length and network address: nesting is found with one lookup per prefix length
 * in use (usually one or two), not a scan of every element.
 */
class PrefixIndex {
  private readonly groups = new Map<string, Map<number, Set<string>>>();

  add(group: string, t: Target): void {
    let lens = this.groups.get(group);
    if (!lens) this.groups.set(group, (lens = new Map()));
    let addrs = lens.get(t.prefixLength);
    if (!addrs) lens.set(t.prefixLength, (addrs = new Set()));
    addrs.add(t.address);
  }

  delete(group: string, t: Target): void {
    const lens = this.groups.get(group);
    const addrs = lens?.get(t.prefixLength);
    if (!lens || !addrs) return;
    addrs.delete(t.address);
    if (addrs.size === 0) lens.delete(t.prefixLength);
    if (lens.size === 0) this.groups.delete(group);
  }

  has(group: string, t: Target): boolean {
    return this.groups.get(group)?.get(t.prefixLength)?.has(t.address) ?? false;
  }

  /** Whether an element of the group strictly contains t. */
  covers(group: string, t: Target): boolean {
    for (const [len, addrs] of this.groups.get(group) ?? []) {
      if (len >= t.prefixLength) continue;
      const p = prefixOf(t.address, len);
      if (p !== null && addrs.has(p.address)) return true;
    }
    return false;
  }

  /** The group's elements strictly inside t, outermost first. */
  inside(group: string, t: Target): Target[] {
    const out: Target[] = [];
    for (const [len, addrs] of this.groups.get(group) ?? []) {
      if (len <= t.prefixLength) continue;
      for (const a of addrs) if (targetContains(t, a)) out.push(canonicalTarget(`${a}/${len}`)!);
    }
    return out.sort((a, b) => a.prefixLength - b.prefixLength);
  }

  clear(): void {
    this.groups.clear();
  }
}

/** One source's change: a ban (held: what to put in) or an unban (held null). */
interface Change {
  t: Target;
  held: Held | null;
  timeout: number | null;
  expiresAt: number | null;
}

/** Element lists per set, in the order first used. */
class SetLists {
  readonly m = new Map<string, string[]>();
  push(set: string, item: string): void {
    let l = this.m.get(set);
    if (!l) this.m.set(set, (l = []));
    l.push(item);
  }
  /** add then delete: deleting an element that is not there would fail the whole transaction. */
  removeScript(only?: Set<string>, except = false): string {
    let s = '';
    for (const [set, l] of this.m) if (only === undefined || only.has(set) !== except) s += `add element inet ${TABLE} ${set} { ${l.join(', ')} }\ndelete element inet ${TABLE} ${set} { ${l.join(', ')} }\n`;
    return s;
  }
  addScript(): string {
    let s = '';
    for (const [set, l] of this.m) s += `add element inet ${TABLE} ${set} { ${l.join(', ')} }\n`;
    return s;
  }
}

/** A write: `pre` (removals that must land before the additions nested in them, see the top comment), then `main`. */
interface Plan {
  pre: string;
  main: string;
}

function withTimeout(key: string, timeout: number | null): string {
  return timeout === null ? key : `${key} timeout ${timeout}s`;
}

/** Seconds left for an expiry (null: permanent or longer than nft takes), or undefined when it has passed. */
function timeoutOf(expiresAt: number | null, now: number): number | null | undefined {
  if (expiresAt === null) return null;
  const ms = expiresAt - now;
  if (!(ms > 0)) return undefined;
  const s = Math.ceil(ms / 1000);
  return s > MAX_TIMEOUT_S ? null : s;
}

/** Validated allow entries with those inside another entry dropped (interval sets refuse nesting). */
function collapseAllow(cidrs: string[]): Target[] {
  const bad: string[] = [];
  const ts: Target[] = [];
  for (const c of cidrs) {
    const t = canonicalTarget(c);
    if (t === null) bad.push(c);
    else ts.push(t);
  }
  rejectInvalid(bad);
  ts.sort((a, b) => a.prefixLength - b.prefixLength);
  const idx = new PrefixIndex();
  const out: Target[] = [];
  for (const t of ts) {
    const g = String(t.family);
    if (idx.has(g, t) || idx.covers(g, t)) continue;
    idx.add(g, t);
    out.push(t);
  }
  return out;
}

/** nftables enforcement in `table inet tsfilter`; see the comment at the top of this file. */
export class NftablesEnforcer implements Enforcer {
  readonly name = 'nftables';
  private readonly runner: NftRunnerOptions;
  private readonly denyType: DenyType;
  private readonly priority: number;
  private readonly forward: boolean;
  private allow: Target[];
  private readonly checkIntervalMs: number;
  private readonly logger: NftLogger;
  private readonly now: () => number;
  private readonly lostCallbacks: (() => void)[] = [];
  /** Every source in the sets and what it holds (including shadowed prefixes, see the top comment). */
  private readonly sources = new Map<string, Held>();
  /** Expiry (ms) of each prefix source: a shadowed prefix put in later needs its remaining time. */
  private readonly prefixExpiry = new Map<string, number | null>();
  /** Prefix elements in the kernel's interval sets. */
  private readonly placed = new PrefixIndex();
  /** Prefix elements of every prefix source, placed or shadowed. */
  private readonly desired = new PrefixIndex();
  /** Whether the maps above describe the sets; if not, the next change lists them first. */
  private loaded = false;
  /** Every nft command goes through this queue: a repair never interleaves with a ban. */
  private queue: Promise<unknown> = Promise.resolve();
  private timer: NodeJS.Timeout | null = null;
  private checking = false;
  private lastCount = 0;
  private readonly state: NftablesHealth;

  constructor(opts: NftablesEnforcerOptions) {
    if (opts.denyType !== 'DROP' && opts.denyType !== 'REJECT') throw new TypeError(`deny_type must be DROP or REJECT, got ${String(opts.denyType)}`);
    this.runner = { nft: opts.nft ?? 'nft', netns: opts.netns, timeoutMs: opts.timeoutMs };
    this.denyType = opts.denyType;
    this.priority = opts.priority ?? -10;
    if (!Number.isInteger(this.priority)) throw new TypeError(`nftables priority must be an integer, got ${String(this.priority)}`);
    this.forward = opts.forward ?? false;
    this.allow = collapseAllow(opts.allow ?? []);
    this.checkIntervalMs = opts.checkIntervalMs ?? (opts.checkInterval !== undefined ? Math.round(opts.checkInterval * 1000) : 2000);
    this.logger = opts.logger;
    this.now = opts.now ?? Date.now;
    if (opts.onLost) this.lostCallbacks.push(opts.onLost);
    this.state = { ok: false, repairs: 0, denyType: this.denyType, forward: this.forward, allowed: this.allow.length, lastError: 'not started' };
  }

  /** Creates or repairs the table in one transaction (ban elements kept, allow sets rewritten), then starts the watcher. */
  async start(): Promise<void> {
    await this.serial(async () => {
      const before = await this.inspect();
      // The allow sets are always rewritten: ignored_ips may have changed while the daemon was down.
      await this.ensure(before, true);
    });
    this.markOk();
    if (this.timer === null && this.checkIntervalMs > 0) {
      this.timer = setInterval(() => void this.check(), this.checkIntervalMs);
      this.timer.unref();
    }
  }

  /** Stops the watcher. The table and its elements stay: bans hold while the daemon is down. */
  async stop(): Promise<void> {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    await this.queue.catch(() => {});
  }

  /**
   * Adds (or re-times, or re-scopes) each ban's elements; bans already expired are skipped. Throws on an invalid
   * source or scope. A source this enforcer does not know in its sets gets a plain add (about 3.5 ms for nft); only
   * a known one is re-timed with add+delete+add, which costs about 15 ms (the delete waits for the kernel's set
   * garbage collection) and would otherwise dominate the line-to-drop latency.
   */
  async ban(bans: Enforcement[]): Promise<void> {
    await this.apply(this.toChanges(bans));
  }

  /** Deletes every element of these sources, whatever their scope; a missing one is not an error. Throws on an invalid source. */
  async unban(ips: string[]): Promise<void> {
    const by = new Map<string, Change>();
    const bad: string[] = [];
    for (const ip of ips) {
      const t = canonicalTarget(ip);
      if (t === null) bad.push(ip);
      else by.set(t.text, { t, held: null, timeout: null, expiresAt: null });
    }
    rejectInvalid(bad);
    await this.apply([...by.values()]);
  }

  /**
   * At start: makes the sets hold every active ban, with the store's remaining time and scope. Elements of other
   * sources are left alone; removing ended bans is the caller's job (unban).
   */
  async reconcile(active: Enforcement[]): Promise<{ added: number; retimed: number; unchanged: number }> {
    const want = this.toChanges(active);
    // One listing (with each element's remaining time) instead of re-timing everything: after a restart with the
    // table intact, nearly every element is already right, and add+delete+add of 100,000 costs twice a plain add.
    const left = await this.serial(() => this.load());
    const todo: Change[] = [];
    let added = 0;
    for (const c of want) {
      const held = this.sources.get(c.t.text);
      if (held === undefined || !left.has(c.t.text)) {
        // Missing: added (a plain add, unless memory still knows the source from before: add+delete+add).
        added++;
        todo.push(c);
        continue;
      }
      const l = left.get(c.t.text);
      const sameTime = l === null ? c.timeout === null : l !== undefined && c.timeout !== null && Math.abs(l - c.timeout) <= RETIME_SLACK_S;
      if (!sameTime || !sameHeld(held, c.held!)) todo.push(c);
    }
    await this.apply(todo);
    return { added, retimed: todo.length - added, unchanged: want.length - todo.length };
  }

  /** The sources in the ban sets, canonical: addresses and prefixes ("198.51.100.0/24"), each once. */
  async elements(): Promise<string[]> {
    return [...(await this.serial(() => this.load())).keys()];
  }

  /** Replaces the allow sets (settings.ignored_ips changed). Throws on an invalid entry before running nft. */
  async setAllowed(cidrs: string[]): Promise<void> {
    const allow = collapseAllow(cidrs);
    // Set first: a repair during this write recreates the table with the new list.
    this.allow = allow;
    this.state.allowed = allow.length;
    await this.write(() => ({ pre: '', main: allowScript(allow) }), false);
  }

  /** Registers a callback for a repaired table (in addition to the constructor's onLost). */
  onLost(cb: () => void): void {
    this.lostCallbacks.push(cb);
  }

  health(): NftablesHealth {
    return { ...this.state };
  }

  /**
   * One watcher round, also callable directly: inspects the table (`nft -t`, without set contents) and, if anything
   * is missing or altered, repairs it and calls onLost. Resolves true when the table is intact (possibly after repair).
   */
  async check(): Promise<boolean> {
    if (this.checking) return this.state.ok;
    this.checking = true;
    try {
      const repaired = await this.serial(async () => {
        const i = await this.inspect();
        if (isIntact(i)) return false;
        this.logger.warn('nftables table damaged behind our back; recreating it', { problems: i.problems.join('; ') });
        await this.ensure(i);
        return true;
      });
      if (repaired) this.lost();
      if (Date.now() - this.lastCount >= COUNT_EVERY_MS) await this.serial(() => this.load()).catch(() => {});
      this.markOk();
      return true;
    } catch (err) {
      this.markFailed(err);
      return false;
    } finally {
      this.checking = false;
    }
  }

  private async apply(changes: Change[]): Promise<void> {
    for (let i = 0; i < changes.length; i += CHUNK) {
      const chunk = changes.slice(i, i + CHUNK);
      await this.write(() => this.plan(chunk), true);
    }
  }

  /**
   * Plans (from memory, listed first if stale) and runs one write through the queue; a failure is recorded in
   * health() and thrown. When it fails because the table or a set vanished (flushed ruleset, not yet noticed by the
   * watcher), the table is repaired, the write planned again and retried once, and onLost fired: the ban lands now
   * instead of at the next retry.
   */
  private async write(make: () => Plan, needsMemory: boolean): Promise<void> {
    let repaired = false;
    const once = async () => {
      if (needsMemory && !this.loaded) await this.load();
      const p = make();
      if (p.pre !== '') await runNft(this.runner, ['-f', '-'], p.pre);
      if (p.main !== '') await runNft(this.runner, ['-f', '-'], p.main);
    };
    try {
      await this.serial(async () => {
        try {
          await once();
        } catch (err) {
          // The plan already updated memory; list again before the next change.
          this.loaded = false;
          if (!(err instanceof NftError && NO_SUCH.test(err.stderr))) throw err;
          const i = await this.inspect();
          if (isIntact(i)) throw err;
          this.logger.warn('nftables table damaged behind our back; recreating it', { problems: i.problems.join('; ') });
          await this.ensure(i);
          repaired = true;
          await once();
        }
      });
    } catch (err) {
      this.loaded = false;
      this.markFailed(err);
      throw err;
    } finally {
      if (repaired) this.lost();
    }
  }

  /**
   * The nft script for these changes; updates memory as if it succeeded (write() marks memory stale on failure).
   * Address elements: removals of what the source held, then its new elements. Prefix elements: the same, with
   * nesting resolved (see the top comment): outer prefixes first, inner ones shadowed, shadowed ones put in when
   * their cover goes.
   */
  private plan(changes: Change[]): Plan {
    const rm = new SetLists();
    const add = new SetLists();
    const removed: { group: string; t: Target; entry: string }[] = [];
    const fresh: { t: Target; entry: string; timeout: number | null }[] = [];
    for (const c of changes) {
      const text = c.t.text;
      const old = this.sources.get(text);
      if (!c.t.isPrefix) {
        if (old) for (const x of old) rm.push(setOf(c.t, x), elemKey(text, x));
        else if (c.held === null) rm.push(setOf(c.t, ''), text); // unknown: harmless, and catches one added behind our back
        if (c.held) {
          for (const x of c.held) add.push(setOf(c.t, x), withTimeout(elemKey(text, x), c.timeout));
          this.sources.set(text, c.held);
        } else this.sources.delete(text);
        continue;
      }
      for (const x of old ?? []) {
        const group = groupOf(c.t, x);
        this.desired.delete(group, c.t);
        if (!this.placed.has(group, c.t)) continue;
        this.placed.delete(group, c.t);
        rm.push(setOf(c.t, x), elemKey(text, x));
        removed.push({ group, t: c.t, entry: x });
      }
      if (c.held) {
        this.sources.set(text, c.held);
        this.prefixExpiry.set(text, c.expiresAt);
        for (const x of c.held) fresh.push({ t: c.t, entry: x, timeout: c.timeout });
      } else {
        this.sources.delete(text);
        this.prefixExpiry.delete(text);
      }
    }
    const rmNet = new PrefixIndex();
    for (const r of removed) if (r.entry === '') rmNet.add(r.group, r.t);
    let split = false;
    const place = (t: Target, entry: string, timeout: number | null) => {
      const group = groupOf(t, entry);
      if (this.placed.has(group, t) || this.placed.covers(group, t)) return;
      for (const inner of this.placed.inside(group, t)) {
        this.placed.delete(group, inner);
        rm.push(setOf(inner, entry), elemKey(inner.text, entry));
        if (entry === '') rmNet.add(group, inner);
      }
      this.placed.add(group, t);
      add.push(setOf(t, entry), withTimeout(elemKey(t.text, entry), timeout));
      if (entry === '' && (rmNet.covers(group, t) || rmNet.inside(group, t).length > 0)) split = true;
    };
    fresh.sort((a, b) => a.t.prefixLength - b.t.prefixLength);
    for (const f of fresh) {
      this.desired.add(groupOf(f.t, f.entry), f.t);
      place(f.t, f.entry, f.timeout);
    }
    const now = this.now();
    for (const r of removed) {
      for (const inner of this.desired.inside(r.group, r.t)) {
        const timeout = timeoutOf(this.prefixExpiry.get(inner.text) ?? null, now);
        if (timeout !== undefined) place(inner, r.entry, timeout);
      }
    }
    // A prefix added in net4/net6 next to the removal of one nested with it must wait for that removal to commit;
    // everything else stays in the second, atomic transaction.
    if (!split) return { pre: '', main: rm.removeScript() + add.addScript() };
    return { pre: rm.removeScript(NET_SETS), main: rm.removeScript(NET_SETS, true) + add.addScript() };
  }

  private lost(): void {
    this.state.repairs++;
    for (const cb of this.lostCallbacks) {
      try {
        cb();
      } catch (err) {
        this.logger.error('onLost callback failed', { error: err });
      }
    }
  }

  private async inspect(): Promise<Inspection> {
    let objs: NftJsonObject[] | null;
    try {
      objs = parseNftJson(await runNft(this.runner, ['-t', '-j', 'list', 'table', 'inet', TABLE]));
    } catch (err) {
      if (err instanceof NftError && NO_SUCH.test(err.stderr)) objs = null;
      else throw err;
    }
    return inspectTable(objs, this.denyType, this.priority, this.forward);
  }

  /** Repairs what the inspection found (also rewriting the allow sets when `always`), and checks the result. */
  private async ensure(i: Inspection, always = false): Promise<void> {
    if (isIntact(i)) {
      // Only the allow sets to rewrite: no second inspection (it costs ~0.35 s with 100,000 elements).
      if (always) await runNft(this.runner, ['-f', '-'], allowScript(this.allow));
      return;
    }
    const rebuildTable = i.badSets.length > 0;
    if (rebuildTable) this.logger.warn('a set in table inet tsfilter has another type or flags: rebuilding the table (its elements are lost)', { sets: i.badSets.join(',') });
    await runNft(
      this.runner,
      ['-f', '-'],
      rulesetScript(this.denyType, this.priority, { rebuildTable, rebuildChains: i.badChains, removeChains: i.extraChains, forward: this.forward, allow: this.allow }),
    );
    if (rebuildTable || i.missingTable) {
      // Empty sets: nothing to list.
      this.clearMemory();
      this.loaded = true;
    } else this.loaded = false;
    const after = await this.inspect();
    if (!isIntact(after)) throw new Error(`nftables table still wrong after repair: ${after.problems.join('; ')}`);
  }

  private clearMemory(): void {
    this.sources.clear();
    this.prefixExpiry.clear();
    this.placed.clear();
    this.desired.clear();
  }

  /**
   * Lists every ban set (`nft -j list table`) and updates memory from it; shadowed prefixes whose cover is still
   * there are kept. Returns each listed (or shadowed) source's seconds left (null: permanent; NaN when its
   * elements disagree).
   */
  private async load(): Promise<Map<string, number | null>> {
    let objs: NftJsonObject[];
    try {
      objs = parseNftJson(await runNft(this.runner, ['-j', 'list', 'table', 'inet', TABLE]));
    } catch (err) {
      if (err instanceof NftError && NO_SUCH.test(err.stderr)) objs = [];
      else throw err;
    }
    const now = this.now();
    const shadowed: [string, Held, number | null][] = [];
    for (const [src, held] of this.sources) {
      if (src.includes('/')) shadowed.push([src, held, this.prefixExpiry.get(src) ?? null]);
    }
    // Address sources missing from the listing stay known: a dump of a large set can come back short while the
    // kernel's garbage collector walks it, and unban must still name a port-scoped source's elements (add+delete of
    // an element that is gone is harmless). Prefix sources are few; they are rebuilt from the listing.
    for (const src of this.sources.keys()) if (src.includes('/')) this.sources.delete(src);
    this.prefixExpiry.clear();
    this.placed.clear();
    this.desired.clear();
    const left = new Map<string, number | null>();
    for (const o of objs) {
      const s = o.set;
      const def = s && s.family === 'inet' && s.table === TABLE ? BAN_SETS.get(s.name) : undefined;
      if (!def || !Array.isArray(s!.elem)) continue;
      for (const raw of s!.elem) {
        const e = parseElement(raw, def);
        if (e === null) continue;
        const src = e.t.text;
        const seen = left.has(src);
        this.sources.set(src, seen ? sortHeld([...this.sources.get(src)!, e.entry]) : e.entry === '' ? WHOLE : [e.entry]);
        left.set(src, seen ? combineLeft(left.get(src), e.left) : e.left);
        if (e.t.isPrefix) {
          this.placed.add(groupOf(e.t, e.entry), e.t);
          this.desired.add(groupOf(e.t, e.entry), e.t);
          const l = left.get(src);
          this.prefixExpiry.set(src, l === null || l === undefined || Number.isNaN(l) ? null : now + l * 1000);
        }
      }
    }
    // Prefixes that were shadowed stay known while their cover is in the set; otherwise they are gone (the
    // daemon's verification or reconciliation puts back what should be there).
    for (const [src, held, exp] of shadowed) {
      if (exp !== null && exp <= now) continue;
      const t = canonicalTarget(src)!;
      const listed = left.has(src);
      const have = new Set(this.sources.get(src) ?? []);
      let kept = false;
      for (const x of held) {
        if (have.has(x) || !this.placed.covers(groupOf(t, x), t)) continue;
        have.add(x);
        this.desired.add(groupOf(t, x), t);
        kept = true;
      }
      if (!kept) continue;
      this.sources.set(src, sortHeld(have));
      if (!listed) {
        this.prefixExpiry.set(src, exp);
        left.set(src, exp === null ? null : (exp - now) / 1000);
      }
    }
    this.loaded = true;
    this.state.elements = left.size;
    this.lastCount = Date.now();
    return left;
  }

  /** Validated, deduplicated changes with their timeouts; expired bans dropped. Throws on an invalid source or scope. */
  private toChanges(bans: Enforcement[]): Change[] {
    const now = this.now();
    const by = new Map<string, Change>();
    const bad: string[] = [];
    const badScope: string[] = [];
    for (const b of bans) {
      const t = canonicalTarget(b.ip);
      if (t === null) {
        bad.push(b.ip);
        continue;
      }
      const held = heldOf(b.scope);
      if (held === null) {
        badScope.push(`${t.text} ${JSON.stringify(b.scope).slice(0, 80)}`);
        continue;
      }
      const timeout = timeoutOf(b.expiresAt, now);
      if (timeout === undefined) continue;
      const prev = by.get(t.text);
      // The same source twice in one batch: the longer ban wins.
      if (prev && (prev.timeout === null || (timeout !== null && prev.timeout >= timeout))) continue;
      by.set(t.text, { t, held, timeout, expiresAt: b.expiresAt });
    }
    rejectInvalid(bad);
    if (badScope.length > 0) throw new TypeError(`invalid port scope, refused before running nft: ${badScope.slice(0, 3).join(', ')}`);
    return [...by.values()];
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.queue.then(fn, fn);
    this.queue = p.catch(() => {});
    return p;
  }

  private markOk(): void {
    if (!this.state.ok && this.state.lastError !== 'not started') this.logger.info('nftables enforcement healthy again');
    this.state.ok = true;
    delete this.state.lastError;
    this.state.lastCheck = new Date().toISOString();
  }

  private markFailed(err: unknown): void {
    const msg = err instanceof Error ? err.message : String(err);
    if (this.state.ok || this.state.lastError !== msg) this.logger.error('nftables enforcement failing', { error: msg });
    this.state.ok = false;
    this.state.lastError = msg;
  }
}

/** Two elements of one source: the remaining time to compare with the store's; NaN when they disagree. */
function combineLeft(a: number | null | undefined, b: number | null): number | null {
  if (a === undefined) return b;
  if (a === null || b === null) return a === b ? null : NaN;
  return Math.abs(a - b) <= RETIME_SLACK_S ? Math.min(a, b) : NaN;
}

const V4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;
const V6_PLAIN = /^[0-9a-f:]{2,39}$/;

/**
 * A listed address as a Target. nft prints addresses with inet_ntop, which for IPv4 and for IPv6 without an
 * embedded dotted quad is already the canonical text (RFC 5952 rules), so those skip the parser: listing 100,000
 * elements would otherwise spend about 0.3 s canonicalizing.
 */
function listedAddress(s: string, family: Family): Target | null {
  if (family === 4 ? V4.test(s) : V6_PLAIN.test(s) && s.includes(':')) return { family, text: s, address: s, prefixLength: family === 4 ? 32 : 128, isPrefix: false };
  return canonicalTarget(s);
}

const PROTO: Record<string, string> = { tcp: 'tcp', udp: 'udp', '6': 'tcp', '17': 'udp' };

/** One listed element of a ban set: its source, held entry and seconds left; null for what we never add. */
function parseElement(raw: unknown, def: SetDef): { t: Target; entry: string; left: number | null } | null {
  let val: unknown = raw;
  let left: number | null = null;
  if (raw !== null && typeof raw === 'object' && 'elem' in raw) {
    const el = (raw as { elem?: { val?: unknown; expires?: unknown; timeout?: unknown } }).elem;
    val = el?.val;
    left = typeof el?.expires === 'number' ? el.expires : typeof el?.timeout === 'number' ? el.timeout : null;
  }
  let entry = '';
  if (def.kind === 'ports' || def.kind === 'netports') {
    const c = (val as { concat?: unknown[] } | null)?.concat;
    if (!Array.isArray(c) || c.length !== 3) return null;
    const proto = PROTO[String(c[1])];
    const port = c[2];
    if (proto === undefined || typeof port !== 'number' || !Number.isInteger(port) || port < 0 || port > 65535) return null;
    val = c[0];
    entry = `${proto} . ${port}`;
  }
  let t: Target | null = null;
  if (typeof val === 'string') t = listedAddress(val, def.family);
  else {
    const p = (val as { prefix?: { addr?: unknown; len?: unknown } } | null)?.prefix;
    if (typeof p?.addr === 'string' && typeof p.len === 'number') t = canonicalTarget(`${p.addr}/${p.len}`);
  }
  const wantPrefix = def.kind === 'net' || def.kind === 'netports';
  if (t === null || t.family !== def.family || t.isPrefix !== wantPrefix) return null;
  return { t, entry, left };
}

function rejectInvalid(bad: string[]): void {
  if (bad.length === 0) return;
  const shown = bad.slice(0, 3).map((b) => JSON.stringify(String(b).slice(0, 60)));
  throw new TypeError(`not an IP address or prefix, refused before running nft: ${shown.join(', ')}${bad.length > 3 ? ` and ${bad.length - 3} more` : ''}`);
}
