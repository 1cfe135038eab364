import type { PortScope } from './types.ts';
import { canonicalTarget, type Target } from './target.ts';
import { secondsLeft } from './ban-input.ts';
import { PrefixIndex } from './prefix-index.ts';
import { BAN_SETS, NET_SETS, SETS, TABLE, type Kind } from './nft-ruleset.ts';
import { combineLeft, parseElement, type NftJsonObject } from './nft-listing.ts';

/*
 * What the nftables backend's ban sets hold, per source, and the scripts that change it. unban needs this to name
 * every element of a source (its scope may have been any ports), and prefixes need it to stay out of each other's way:
 *
 * Interval elements must not overlap: nft refuses a prefix nested in another one of the same set ("interval
 * overlaps with an existing one"; netports: "File exists" for the same protocol and port). A nested prefix ban
 * is kept in memory as shadowed: only the outermost prefix is in the set, and when it goes (unban, new scope) the
 * prefixes it covered are put in. If the outer element's kernel timeout ends first, an inner one is missing until
 * the daemon lifts the outer ban (it does so at expiry) or reconciles at start.
 *
 * Element writes, verified on nft 1.0.6 (kernel 6.18), each a transaction (`nft -f -` is atomic):
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
 */

/** Largest per-element timeout nft 1.0.6 accepts, in seconds. */
export const MAX_TIMEOUT_S = 99_999_999;

/**
 * What the sets hold for one source: '' is the whole-source element, 'tcp . 22' a port element. Sorted ('' first,
 * then by protocol and port). Whole-source bans share one frozen array: 100,000 of them cost no allocation each.
 */
export type Held = readonly string[];
export const WHOLE: Held = Object.freeze(['']);

/** The elements a scope asks for, or null when the scope is malformed. */
export function heldOf(scope: PortScope | null | undefined): Held | null {
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

export function sameHeld(a: Held, b: Held): boolean {
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

/** One source's change: a ban (held: what to put in) or an unban (held null). */
export interface Change {
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

/** A write: `pre` (removals that must land before the additions nested in them, see above), then `main`. */
export interface Plan {
  pre: string;
  main: string;
}

function withTimeout(key: string, timeout: number | null): string {
  return timeout === null ? key : `${key} timeout ${timeout}s`;
}

/** Seconds left for an expiry (null: permanent or longer than nft takes), or undefined when it has passed. */
export function timeoutOf(expiresAt: number | null, now: number): number | null | undefined {
  return secondsLeft(expiresAt, now, MAX_TIMEOUT_S);
}

/** Memory of the ban sets: filled by reload() from a listing, kept current by plan() for each write. */
export class SetMemory {
  /** Every source in the sets and what it holds (including shadowed prefixes, see the top comment). */
  readonly sources = new Map<string, Held>();
  /** Expiry (ms) of each prefix source: a shadowed prefix put in later needs its remaining time. */
  private readonly prefixExpiry = new Map<string, number | null>();
  /** Prefix elements in the kernel's interval sets. */
  private readonly placed = new PrefixIndex();
  /** Prefix elements of every prefix source, placed or shadowed. */
  private readonly desired = new PrefixIndex();

  constructor(private readonly now: () => number) {}

  /**
   * The nft script for these changes; updates memory as if it succeeded (after a failure the enforcer lists the sets
   * again). Address elements: removals of what the source held, then its new elements. Prefix elements: the same,
   * with nesting resolved (see the top of this file): outer prefixes first, inner ones shadowed, shadowed ones put in
   * when their cover goes.
   */
  plan(changes: Change[]): Plan {
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

  /**
   * Replaces what memory knows with a listing of the sets (`nft -j list table`); shadowed prefixes whose cover is
   * still there are kept. Returns each listed (or shadowed) source's seconds left (null: permanent; NaN when its
   * elements disagree).
   */
  reload(objs: NftJsonObject[]): Map<string, number | null> {
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
    return left;
  }

  clear(): void {
    this.sources.clear();
    this.prefixExpiry.clear();
    this.placed.clear();
    this.desired.clear();
  }
}
