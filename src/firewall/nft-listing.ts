import { canonicalTarget, type Target } from './target.ts';
import { RETIME_SLACK_S } from './ban-input.ts';
import type { Family, SetDef } from './nft-ruleset.ts';

/* Reading `nft -j list table inet tsfilter` back: the objects, and each ban set's elements as sources. */

/** The objects of a listing that the backend looks at. */
export interface NftJsonObject {
  table?: { family: string; name: string };
  set?: { family: string; table: string; name: string; type?: unknown; flags?: unknown; elem?: unknown[] };
  chain?: { family: string; table: string; name: string; type?: string; hook?: string; prio?: number; policy?: string };
  rule?: { family: string; table: string; chain: string; comment?: string };
}

export function parseNftJson(out: string): NftJsonObject[] {
  const j = JSON.parse(out) as { nftables?: NftJsonObject[] };
  return Array.isArray(j.nftables) ? j.nftables : [];
}

/** Two elements of one source: the remaining time to compare with the store's; NaN when they disagree. */
export function combineLeft(a: number | null | undefined, b: number | null): number | null {
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
export function parseElement(raw: unknown, def: SetDef): { t: Target; entry: string; left: number | null } | null {
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
