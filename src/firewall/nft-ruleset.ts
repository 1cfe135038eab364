import type { Target } from './target.ts';
import { validTargets } from './ban-input.ts';
import { PrefixIndex } from './prefix-index.ts';
import type { NftJsonObject } from './nft-listing.ts';

/*
 * The table the nftables backend owns, `inet tsfilter` (it never lists, flushes or touches any other table, never
 * `flush ruleset`), and how it is created, checked and repaired:
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
 * Start and repair, verified on nft 1.0.6 (kernel 6.18), in one transaction (`nft -f -` is atomic): `add table`,
 * `add set`, `add chain` succeed when the object exists with the same definition and keep set elements; `flush
 * chain` + re-adding the rules fixes edited rules. A chain whose hook, priority or policy differs (`add chain` fails
 * with "Operation not supported") is rebuilt with `add chain X; flush chain X; delete chain X` first (the same
 * removes the forward chain); a set whose type or flags differ ("File exists") cannot be changed in place, so the
 * table is rebuilt (`add table; delete table`), losing its elements (onLost fires). The allow sets are rewritten with
 * `flush set` + `add element`.
 */

export const TABLE = 'tsfilter';
export const SET4 = 'banned4';
export const SET6 = 'banned6';
export const CHAIN = 'input';
export const FORWARD_CHAIN = 'forward';

export type DenyType = 'DROP' | 'REJECT';
export type Family = 4 | 6;
export type Kind = 'addr' | 'net' | 'ports' | 'netports';

/** Set names by family and kind. */
export const SETS = {
  4: { addr: SET4, net: 'net4', ports: 'ports4', netports: 'netports4', allow: 'allow4' },
  6: { addr: SET6, net: 'net6', ports: 'ports6', netports: 'netports6', allow: 'allow6' },
} as const;
const SEL = { 4: 'ip saddr', 6: 'ip6 saddr' } as const;
const KINDS: Kind[] = ['addr', 'net', 'ports', 'netports'];

export interface SetDef {
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
export const NET_SETS = new Set<string>([SETS[4].net, SETS[6].net]);
export const BAN_SETS = new Map(SET_DEFS.filter((d) => d.kind !== 'allow').map((d) => [d.name, d]));

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

export function isIntact(i: Inspection): boolean {
  return i.problems.length === 0;
}

/** Validated allow entries with those inside another entry dropped (interval sets refuse nesting). */
export function collapseAllow(cidrs: string[]): Target[] {
  const ts = validTargets(cidrs, 'nft');
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
