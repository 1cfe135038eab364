import type { Match } from '../rules/types.ts';
import type { CounterState } from '../store/types.ts';
import type { IgnoreList } from './cidr-trie.ts';
import {
  DEFAULT_POLICY,
  MAX_EVIDENCE_LINES,
  MAX_EVIDENCE_LINE_CHARS,
  type BanDecision,
  type CountingPolicy,
  type DetectorStats,
  type DirtyCounters,
  type TrackingDetector,
} from './types.ts';

export interface DetectorOptions {
  /** Counting policy per rule name. */
  policies: ReadonlyMap<string, CountingPolicy>;
  ignore: IgnoreList;
  /** Hard cap on (rule, ip) entries across all rules; the least recently used entry is evicted beyond it. */
  maxTracked: number;
  /** Seconds without a failure (in log time, against the newest event seen) after which an entry is dropped. */
  forgetAfter: number;
  /** Policy for a rule that `policies` does not name; PyFilter's defaults when absent. */
  defaultPolicy?: CountingPolicy;
  /** Per-address changes to a rule's threshold (the rule's country policy), by rule name. */
  overrides?: ReadonlyMap<string, ThresholdOverride>;
}

/**
 * Changes a rule's threshold for some addresses: `limitFor` answers a number of failures that replaces the rule's
 * failedAttempts (counted the rule's way), 'instant' (the first failure bans), 'never' (the address's failures do
 * not count), or undefined (the rule's own threshold). `maxLimit` is the largest number it can answer, which sizes
 * the per-entry rings.
 */
export interface ThresholdOverride {
  maxLimit: number;
  limitFor(ip: string): number | 'instant' | 'never' | undefined;
}

/** Shared by every gap-mode entry (gap mode never writes `times`): one less array per entry. */
const NO_TIMES = Object.freeze([]) as unknown as number[];

const GAP = 0;
const WINDOW = 1;

/** Entries examined at the LRU head per observe() for the amortised idle sweep. Must be > 1 to outrun inserts. */
const SWEEP_PER_OBSERVE = 2;

/**
 * Copies text out of whatever larger string it was sliced from. V8 represents `s.slice()` / regex captures of 13+
 * characters as views that keep the whole parent alive; keeping one such view per tracked entry would defeat the
 * memory bound (an IPv4 capture would pin its whole line, a cut evidence line its whole 8 KiB original).
 * Concatenating makes a cons string, and slicing that flattens it into a fresh copy.
 */
function detach(s: string): string {
  return (' ' + s).slice(1);
}

/**
 * A failure line as kept for evidence. Lines are kept as given unless cut: the sources decode every line on its own
 * (`buf.toString(start, end)` in sources/line-splitter.ts), so a line is not a view into a read chunk, and copying
 * every kept line would cost the flood benchmark about a third of its throughput. A cut line is a view and is copied.
 */
function evidence(line: string): string {
  return line.length > MAX_EVIDENCE_LINE_CHARS ? detach(line.slice(0, MAX_EVIDENCE_LINE_CHARS)) : line;
}

class RuleState {
  readonly mode: number;
  readonly failedAttempts: number;
  readonly requestMs: number;
  readonly findMs: number;
  /** An entry whose newest failure is older than watermark - idleMs is dropped. */
  readonly idleMs: number;
  /** The highest threshold any address can have (failedAttempts unless an override raises it). */
  readonly maxLimit: number;
  readonly entries = new Map<string, Entry>();

  constructor(
    readonly name: string,
    policy: CountingPolicy,
    forgetMs: number,
    readonly override: ThresholdOverride | null = null,
  ) {
    validatePolicy(name, policy);
    this.mode = policy.mode === 'window' ? WINDOW : GAP;
    this.failedAttempts = policy.failedAttempts;
    this.maxLimit = Math.max(policy.failedAttempts, override?.maxLimit ?? 0);
    this.requestMs = policy.requestTime * 1000;
    this.findMs = policy.findTime * 1000;
    if (this.mode === GAP) {
      // Never forget an entry while its next failure could still count (forgetAfter < requestTime would do that).
      this.idleMs = Math.max(forgetMs, this.requestMs);
    } else {
      // Once every failure has left the window the entry holds nothing that can count again.
      this.idleMs = Math.min(forgetMs, this.findMs);
    }
  }
}

function validatePolicy(rule: string, p: CountingPolicy): void {
  const bad = (why: string): never => {
    throw new Error(`detector: rule ${JSON.stringify(rule)}: ${why}`);
  };
  if (p.mode !== 'gap' && p.mode !== 'window') bad(`mode must be 'gap' or 'window'`);
  if (!Number.isInteger(p.failedAttempts) || p.failedAttempts < 1) bad('failedAttempts must be an integer >= 1');
  if (p.mode === 'gap' && !(Number.isFinite(p.requestTime) && p.requestTime >= 0)) {
    bad('requestTime must be a number >= 0');
  }
  if (p.mode === 'window' && !(Number.isFinite(p.findTime) && p.findTime > 0)) bad('findTime must be a number > 0');
}

/**
 * One (rule, ip) counter. A single class with every field initialised in the constructor keeps all entries on one
 * hidden class (monomorphic property access on the hot path). Entries are threaded on two intrusive doubly linked
 * lists: the LRU list (all entries, least recently touched first) and the dirty list (changed since `dirty()`), so
 * touching, evicting and marking dirty are O(1) and allocate nothing.
 */
class Entry {
  prev: Entry | null = null;
  next: Entry | null = null;
  dprev: Entry | null = null;
  dnext: Entry | null = null;
  dirty = false;
  /** The store holds a state for this key (it was returned by dirty() or loaded). */
  persisted = false;
  /** Newest failure time seen (ms), for forgetting. */
  seen: number;
  /** gap: PyFilter's last_request (ms); may go backwards, as in PyFilter. */
  last: number;
  /** gap: PyFilter's amount. window: timestamps held in `times`. */
  amount = 0;
  /** window: ring of failure times, oldest at `tStart`; at most `cap` long. Empty in gap mode. */
  times: number[];
  tStart = 0;
  /** Ring of evidence lines, oldest at `lStart`, at most lineCap() long (grows as needed). */
  lines: string[];
  lStart = 0;

  constructor(
    readonly rule: RuleState,
    readonly ip: string,
    time: number,
    /**
     * This address's threshold when it was created (the rule's failedAttempts, or its country's number): it sizes
     * the rings, so one large number in a policy does not grow every address's memory.
     */
    public cap: number,
  ) {
    this.seen = time;
    this.last = time;
    this.times = rule.mode === WINDOW ? [time] : NO_TIMES;
    if (rule.mode === WINDOW) this.amount = 1;
    this.lines = [];
  }

  /** Evidence lines kept: the failures that can count (gap counting bans at cap + 1). */
  private lineCap(): number {
    return Math.min(this.rule.mode === GAP ? this.cap + 1 : this.cap, MAX_EVIDENCE_LINES);
  }

  /** A higher threshold than the entry was made with (the GeoIP database changed): unwrap both rings, then grow. */
  grow(cap: number): void {
    this.times = this.times === NO_TIMES ? NO_TIMES : this.orderedTimes();
    this.tStart = 0;
    this.lines = this.orderedLines();
    this.lStart = 0;
    this.cap = cap;
  }

  pushLine(line: string): void {
    const cap = this.lineCap();
    const ls = this.lines;
    if (ls.length < cap) {
      ls.push(evidence(line));
    } else {
      ls[this.lStart] = evidence(line);
      this.lStart = this.lStart + 1 === cap ? 0 : this.lStart + 1;
    }
  }

  orderedLines(): string[] {
    const ls = this.lines;
    if (this.lStart === 0) return ls.slice();
    return ls.slice(this.lStart).concat(ls.slice(0, this.lStart));
  }

  pushTime(t: number): void {
    const cap = this.cap;
    const ts = this.times;
    if (ts.length < cap) {
      ts.push(t);
    } else {
      ts[this.tStart] = t;
      this.tStart = this.tStart + 1 === cap ? 0 : this.tStart + 1;
    }
    this.amount = ts.length;
  }

  orderedTimes(): number[] {
    const ts = this.times;
    if (this.tStart === 0) return ts.slice();
    return ts.slice(this.tStart).concat(ts.slice(0, this.tStart));
  }

  stateJson(): string {
    if (this.rule.mode === GAP) return `{"m":"g","a":${this.amount},"t":${this.last}}`;
    return `{"m":"w","t":${JSON.stringify(this.orderedTimes())}}`;
  }
}

function parseState(text: string): { m: unknown; a?: unknown; t?: unknown } | null {
  try {
    const v: unknown = JSON.parse(text);
    return typeof v === 'object' && v !== null ? (v as { m: unknown }) : null;
  } catch {
    return null;
  }
}

class Detector implements TrackingDetector {
  private readonly rules = new Map<string, RuleState>();
  private readonly configured: ReadonlySet<string>;
  private readonly ignore: IgnoreList;
  private readonly maxTracked: number;
  private readonly forgetMs: number;
  private readonly defaultPolicy: CountingPolicy;

  private lruHead: Entry | null = null;
  private lruTail: Entry | null = null;
  private dirtyHead: Entry | null = null;
  private count = 0;
  private watermark = -Infinity;
  private evicted = 0;
  private expiredCount = 0;
  /** Keys the store holds that have since been dropped: rule -> ips. */
  private removedKeys = new Map<string, Set<string>>();

  constructor(opts: DetectorOptions) {
    if (!Number.isInteger(opts.maxTracked) || opts.maxTracked < 1) {
      throw new Error('detector: maxTracked must be an integer >= 1');
    }
    if (!(Number.isFinite(opts.forgetAfter) && opts.forgetAfter > 0)) {
      throw new Error('detector: forgetAfter must be a number of seconds > 0');
    }
    this.ignore = opts.ignore;
    this.maxTracked = opts.maxTracked;
    this.forgetMs = opts.forgetAfter * 1000;
    this.defaultPolicy = opts.defaultPolicy ?? DEFAULT_POLICY;
    if (opts.defaultPolicy) validatePolicy('(default)', opts.defaultPolicy);
    for (const [name, policy] of opts.policies) {
      this.rules.set(name, new RuleState(name, policy, this.forgetMs, opts.overrides?.get(name) ?? null));
    }
    this.configured = new Set(opts.policies.keys());
  }

  get evictions(): number {
    return this.evicted;
  }

  size(): number {
    return this.count;
  }

  stats(): DetectorStats {
    return { size: this.count, evictions: this.evicted, expired: this.expiredCount, watermark: this.watermark };
  }

  private ruleFor(name: string): RuleState {
    let rs = this.rules.get(name);
    if (rs === undefined) {
      rs = new RuleState(name, this.defaultPolicy, this.forgetMs);
      this.rules.set(name, rs);
    }
    return rs;
  }

  observe(m: Match): BanDecision | null {
    const t = m.time;
    if (t > this.watermark) this.watermark = t;
    // Amortised idle sweep: the LRU head is the entry touched longest ago, so (log time being roughly monotonic) the
    // likeliest to be idle. Two per call outpaces at most one insertion per call. Correctness does not depend on it:
    // an idle entry that is touched again is restarted below.
    for (let k = 0; k < SWEEP_PER_OBSERVE; k++) {
      const h = this.lruHead;
      if (h === null || !(h.seen + h.rule.idleMs < this.watermark)) break;
      this.expiredCount++;
      this.drop(h);
    }

    const ip = m.ip;
    if (this.ignore.has(ip)) return null;
    const rs = this.rules.get(m.rule) ?? this.ruleFor(m.rule);
    let kind = m.kind;
    let limit = rs.failedAttempts;
    if (rs.override !== null && kind !== 'success') {
      const o = rs.override.limitFor(ip);
      if (o === 'never') return null;
      if (o === 'instant') kind = 'instant';
      else if (o !== undefined) limit = o;
    }

    if (kind === 'failure') {
      let e = rs.entries.get(ip);
      if (e !== undefined && e.seen + rs.idleMs < this.watermark) {
        // Idle for longer than it may be kept (the sweep just had not reached it): same outcome as if it had.
        this.expiredCount++;
        this.drop(e);
        e = undefined;
      }
      if (e === undefined) {
        if (rs.mode === WINDOW && limit === 1) {
          const d: BanDecision = { ip, rule: rs.name, time: t, failures: 1, instant: false, lines: [evidence(m.line)] };
          if (limit !== rs.failedAttempts) d.limit = limit;
          return d;
        }
        this.create(rs, ip, t, m.line, limit);
        return null;
      }
      if (t > e.seen) e.seen = t;
      if (limit > e.cap) e.grow(limit);
      if (rs.mode === GAP) {
        // PyFilter: old = last_request; last_request = t; if (t - old) > request_time: return; amount += 1.
        // A negative difference (out-of-order lines) counts as within.
        const old = e.last;
        e.last = t;
        if (t - old > rs.requestMs) {
          this.touch(e);
          return null;
        }
        e.amount++;
        e.pushLine(m.line);
        if (e.amount >= limit) return this.banned(e, t, e.amount + 1, limit);
        this.touch(e);
        return null;
      }
      // Window: ban when the last `limit` failures all lie within findTime of this one. The ring holds the newest
      // `amount` times (oldest at tStart); only its newest `limit` count when an override lowered the threshold.
      e.pushTime(t);
      e.pushLine(m.line);
      if (e.amount >= limit) {
        const ts = e.times;
        const len = ts.length;
        const from = t - rs.findMs;
        let all = true;
        for (let k = len - limit; k < len; k++) {
          const i = e.tStart + k < len ? e.tStart + k : e.tStart + k - len;
          if (ts[i]! < from) {
            all = false;
            break;
          }
        }
        if (all) return this.banned(e, t, limit, limit);
      }
      this.touch(e);
      return null;
    }

    if (kind === 'instant') {
      const e = rs.entries.get(ip);
      if (e !== undefined) this.drop(e);
      return { ip, rule: rs.name, time: t, failures: 1, instant: true, lines: [evidence(m.line)] };
    }

    if (kind === 'success') {
      const e = rs.entries.get(ip);
      if (e !== undefined) this.drop(e);
    }
    return null;
  }

  /** The decision for an entry that has earned its ban (gap or window counting); the entry is dropped. */
  private banned(e: Entry, time: number, failures: number, limit: number): BanDecision {
    // Only the lines of the failures that counted (a lowered threshold leaves older ones in the ring).
    const lines = e.orderedLines();
    const d: BanDecision = { ip: e.ip, rule: e.rule.name, time, failures, instant: false, lines: lines.length > failures ? lines.slice(-failures) : lines };
    if (limit !== e.rule.failedAttempts) d.limit = limit;
    this.drop(e);
    return d;
  }

  forget(ip: string): void {
    for (const rs of this.rules.values()) {
      const e = rs.entries.get(ip);
      if (e !== undefined) this.drop(e);
    }
  }

  sweep(now?: number): number {
    if (now !== undefined && now > this.watermark) this.watermark = now;
    let dropped = 0;
    let e = this.lruHead;
    while (e !== null) {
      const next = e.next;
      if (e.seen + e.rule.idleMs < this.watermark) {
        this.drop(e);
        dropped++;
      }
      e = next;
    }
    this.expiredCount += dropped;
    return dropped;
  }

  dirty(): DirtyCounters {
    const states: CounterState[] = [];
    for (let e = this.dirtyHead; e !== null; ) {
      const next = e.dnext;
      states.push({ rule: e.rule.name, ip: e.ip, state: e.stateJson(), updatedAt: e.seen });
      e.dirty = false;
      e.persisted = true;
      e.dprev = e.dnext = null;
      e = next;
    }
    this.dirtyHead = null;
    const removed: { rule: string; ip: string }[] = [];
    for (const [rule, ips] of this.removedKeys) {
      const live = this.rules.get(rule)?.entries;
      // A key dropped and then created again is in `changed` (a new entry is always dirty): upsert, not delete.
      for (const ip of ips) if (live === undefined || !live.has(ip)) removed.push({ rule, ip });
    }
    this.removedKeys.clear();
    return { changed: states, removed };
  }

  load(states: readonly CounterState[]): number {
    const usable: { rs: RuleState; s: CounterState; parsed: { m: unknown; a?: unknown; t?: unknown } }[] = [];
    let newest = this.watermark;
    for (const s of states) {
      if (typeof s.rule !== 'string' || typeof s.ip !== 'string') continue;
      // Whatever cannot be used is deleted from the store at the next dirty(), so stale rows do not pile up.
      const rs = this.configured.has(s.rule) ? this.rules.get(s.rule) : undefined;
      const p = rs === undefined || !Number.isFinite(s.updatedAt) ? null : parseState(s.state);
      const ok =
        rs !== undefined &&
        p !== null &&
        (rs.mode === GAP
          ? p.m === 'g' && Number.isInteger(p.a) && (p.a as number) >= 0 && Number.isFinite(p.t)
          : p.m === 'w' && Array.isArray(p.t) && p.t.length > 0 && p.t.every(Number.isFinite));
      if (!ok) {
        this.addRemoved(s.rule, s.ip);
        continue;
      }
      usable.push({ rs: rs!, s, parsed: p! });
      if (s.updatedAt > newest) newest = s.updatedAt;
    }
    this.watermark = newest;
    // Oldest first, so that the LRU order is by last failure and the cap keeps the newest.
    usable.sort((x, y) => x.s.updatedAt - y.s.updatedAt);
    let loaded = 0;
    for (const { rs, s, parsed } of usable) {
      if (s.updatedAt + rs.idleMs < this.watermark) {
        this.addRemoved(rs.name, s.ip);
        continue;
      }
      const old = rs.entries.get(s.ip);
      if (old !== undefined) this.drop(old);
      this.removedKeys.get(rs.name)?.delete(s.ip);
      const saved = rs.mode === GAP ? 0 : (parsed.t as number[]).length;
      const e = this.insert(rs, detach(s.ip), s.updatedAt, Math.min(rs.maxLimit, Math.max(rs.failedAttempts, saved)));
      if (rs.mode === GAP) {
        // A count at or above the threshold (failedAttempts lowered since) would ban on the next counted failure.
        e.amount = Math.min(parsed.a as number, rs.maxLimit - 1);
        e.last = parsed.t as number;
      } else {
        e.times.length = 0;
        e.amount = 0;
        const ts = parsed.t as number[];
        for (let i = Math.max(0, ts.length - rs.maxLimit); i < ts.length; i++) e.pushTime(ts[i]!);
      }
      e.persisted = true;
      loaded++;
    }
    return loaded;
  }

  // --- list plumbing -------------------------------------------------------------------------------------------

  private create(rs: RuleState, ip: string, t: number, line: string, cap: number): Entry {
    const e = this.insert(rs, detach(ip), t, cap);
    e.pushLine(line);
    this.markDirty(e);
    return e;
  }

  /** Adds a new entry at the LRU tail, first making room under the cap. */
  private insert(rs: RuleState, ip: string, t: number, cap: number): Entry {
    while (this.count >= this.maxTracked) {
      const h = this.lruHead!;
      if (h.seen + h.rule.idleMs < this.watermark) this.expiredCount++;
      else this.evicted++;
      this.drop(h);
    }
    const e = new Entry(rs, ip, t, cap);
    rs.entries.set(ip, e);
    e.prev = this.lruTail;
    if (this.lruTail === null) this.lruHead = e;
    else this.lruTail.next = e;
    this.lruTail = e;
    this.count++;
    return e;
  }

  /** Moves to the LRU tail and marks dirty. */
  private touch(e: Entry): void {
    if (this.lruTail !== e) {
      const p = e.prev;
      const n = e.next!;
      if (p === null) this.lruHead = n;
      else p.next = n;
      n.prev = p;
      e.prev = this.lruTail;
      e.next = null;
      this.lruTail!.next = e;
      this.lruTail = e;
    }
    if (!e.dirty) this.markDirty(e);
  }

  private markDirty(e: Entry): void {
    e.dirty = true;
    e.dprev = null;
    e.dnext = this.dirtyHead;
    if (this.dirtyHead !== null) this.dirtyHead.dprev = e;
    this.dirtyHead = e;
  }

  private drop(e: Entry): void {
    e.rule.entries.delete(e.ip);
    const p = e.prev;
    const n = e.next;
    if (p === null) this.lruHead = n;
    else p.next = n;
    if (n === null) this.lruTail = p;
    else n.prev = p;
    e.prev = e.next = null;
    if (e.dirty) {
      const dp = e.dprev;
      const dn = e.dnext;
      if (dp === null) this.dirtyHead = dn;
      else dp.dnext = dn;
      if (dn !== null) dn.dprev = dp;
      e.dprev = e.dnext = null;
      e.dirty = false;
    }
    if (e.persisted) this.addRemoved(e.rule.name, e.ip);
    this.count--;
  }

  private addRemoved(rule: string, ip: string): void {
    let set = this.removedKeys.get(rule);
    if (set === undefined) {
      set = new Set();
      this.removedKeys.set(rule, set);
    }
    set.add(ip);
  }
}

/**
 * Counts failures per (rule, ip) and decides bans: PyFilter's gap counting or a fail2ban-style sliding window per
 * rule, instant bans, successes that clear, an ignore list; memory bounded by `maxTracked` (LRU) and `forgetAfter`.
 */
export function createDetector(opts: DetectorOptions): TrackingDetector {
  return new Detector(opts);
}
