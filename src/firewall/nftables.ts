import type { Enforcer, Enforcement, EnforcerHealth } from './types.ts';
import { canonicalAddress, NftError, runNft, type NftRunnerOptions } from './nft-runner.ts';

/*
 * The nftables backend. TSFilter owns exactly one table, `inet tsfilter`, and never lists, flushes or touches any
 * other (never `flush ruleset`):
 *
 *   table inet tsfilter {
 *     set banned4 { type ipv4_addr; flags timeout; }      elements: 192.0.2.7 timeout 3600s, 192.0.2.8 (permanent)
 *     set banned6 { type ipv6_addr; flags timeout; }
 *     chain input { type filter hook input priority -10; policy accept;
 *       ip saddr @banned4 counter drop comment "tsfilter:banned4"
 *       ip6 saddr @banned6 counter drop comment "tsfilter:banned6" }
 *   }
 *
 * With deny_type REJECT, each family gets two rules instead: TCP is answered with a reset, anything else with an
 * ICMP/ICMPv6 administratively-prohibited error (`reject with icmpx type admin-prohibited`).
 *
 * Each element carries its own timeout, so the kernel lifts a ban on time even while the daemon is down; a permanent
 * ban is an element without one. The sets are plain hash sets (no `interval` flag): nft 1.0.6 accepts timeouts on
 * interval sets, but deleting elements from one is quadratic in userspace (a 100,000-element add+delete batch did not
 * finish in 10 minutes, against 0.7 s for a hash set). Subnet bans, when they come, get their own interval sets.
 *
 * Idempotency idioms, verified on nft 1.0.6 (kernel 6.18), all inside one transaction (`nft -f -` is atomic):
 *  - start/repair: `add table`, `add set`, `add chain` succeed when the object exists with the same definition and
 *    keep set elements; `flush chain` + re-adding the rules fixes edited rules. A chain whose hook, priority or
 *    policy differs (`add chain` fails with "Operation not supported") is rebuilt with
 *    `add chain X; flush chain X; delete chain X` first; a set whose type or flags differ ("File exists") cannot be
 *    changed in place, so the table is rebuilt (`add table; delete table`), losing its elements (onLost fires).
 *  - ban: `add element` of an existing element succeeds but, depending on the kernel, keeps or replaces its timeout
 *    (6.18 replaces, older kernels keep). To set exactly the timeout asked for, every ban is
 *    `add element {a}; delete element {a}; add element {a timeout Ns}` - the first add makes the delete safe.
 *  - unban: `delete element` of a missing element fails the whole batch ("No such file or directory"), so unban is
 *    `add element {a}; delete element {a}`.
 *  - timeouts: nft 1.0.6 rejects `timeout 100000000s` ("value too large"; 99,999,999 s is accepted). A longer ban
 *    is enforced as a permanent element; the daemon lifts it at expiry, and reconciliation at start removes it if
 *    the daemon was down then.
 */

export const TABLE = 'tsfilter';
export const SET4 = 'banned4';
export const SET6 = 'banned6';
export const CHAIN = 'input';
/** Largest per-element timeout nft 1.0.6 accepts, in seconds. */
export const MAX_TIMEOUT_S = 99_999_999;
/** Distinct addresses per transaction: keeps one nft process under ~60 MB; 100,000 bans are 4 transactions. */
export const CHUNK = 25_000;

export type DenyType = 'DROP' | 'REJECT';

export interface NftLogger {
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
}

export interface NftablesEnforcerOptions {
  /** The nft binary (settings.nftables.nft). Default "nft". */
  nft?: string;
  denyType: DenyType;
  /** Input hook priority (settings.nftables.priority). Default -10. */
  priority?: number;
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
  /** Elements in banned4 + banned6 at the last count (elements(), or the watcher every COUNT_EVERY_MS). */
  elements?: number;
  /** ISO time of the last successful check. */
  lastCheck?: string;
  /** How many times the watcher found the table damaged and repaired it. */
  repairs: number;
  denyType: DenyType;
}

/** The expected rules of the input chain, each identified by its comment. */
export function chainRules(denyType: DenyType): { comment: string; body: string }[] {
  const fams = [
    { sel: 'ip saddr', set: SET4 },
    { sel: 'ip6 saddr', set: SET6 },
  ];
  const out: { comment: string; body: string }[] = [];
  for (const f of fams) {
    if (denyType === 'DROP') {
      out.push({ comment: `tsfilter:${f.set}`, body: `${f.sel} @${f.set} counter drop` });
    } else {
      out.push({ comment: `tsfilter:${f.set}-tcp`, body: `${f.sel} @${f.set} meta l4proto tcp counter reject with tcp reset` });
      out.push({ comment: `tsfilter:${f.set}`, body: `${f.sel} @${f.set} counter reject with icmpx type admin-prohibited` });
    }
  }
  return out;
}

/**
 * The start/repair transaction: creates what is missing, keeps set elements, rewrites the chain's rules.
 * `rebuildChain` deletes the chain first (its hook, priority or policy differ); `rebuildTable` deletes the whole
 * table first (a set's type or flags differ; its elements are lost).
 */
export function rulesetScript(
  denyType: DenyType,
  priority: number,
  opts: { rebuildChain?: boolean; rebuildTable?: boolean } = {},
): string {
  if (!Number.isInteger(priority)) throw new TypeError(`nftables priority must be an integer, got ${String(priority)}`);
  const t = `inet ${TABLE}`;
  const lines = [`add table ${t}`];
  if (opts.rebuildTable) lines.push(`delete table ${t}`, `add table ${t}`);
  else if (opts.rebuildChain) lines.push(`add chain ${t} ${CHAIN}`, `flush chain ${t} ${CHAIN}`, `delete chain ${t} ${CHAIN}`);
  lines.push(
    `add set ${t} ${SET4} { type ipv4_addr; flags timeout; }`,
    `add set ${t} ${SET6} { type ipv6_addr; flags timeout; }`,
    `add chain ${t} ${CHAIN} { type filter hook input priority ${priority}; policy accept; }`,
    `flush chain ${t} ${CHAIN}`,
  );
  for (const r of chainRules(denyType)) lines.push(`add rule ${t} ${CHAIN} ${r.body} comment "${r.comment}"`);
  return lines.join('\n') + '\n';
}

/** What is wrong with the table, from `nft -t -j list table inet tsfilter`. Empty: intact. */
export interface Inspection {
  missingTable: boolean;
  /** Sets missing: their elements are gone. */
  missingSets: string[];
  /** Sets present with another type or flags: need a table rebuild. */
  badSets: string[];
  /** The chain is missing. */
  missingChain: boolean;
  /** The chain exists with another type, hook, priority or policy. */
  badChain: boolean;
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

export function inspectTable(objs: NftJsonObject[] | null, denyType: DenyType, priority: number): Inspection {
  const r: Inspection = { missingTable: false, missingSets: [], badSets: [], missingChain: false, badChain: false, badRules: false, problems: [] };
  if (objs === null || !objs.some((o) => o.table?.family === 'inet' && o.table.name === TABLE)) {
    r.missingTable = true;
    r.missingSets = [SET4, SET6];
    r.missingChain = true;
    r.badRules = true;
    r.problems.push(`table inet ${TABLE} is missing`);
    return r;
  }
  const mine = <T extends { family: string; table: string }>(x: T | undefined): x is T => x !== undefined && x.family === 'inet' && x.table === TABLE;
  for (const [name, type] of [
    [SET4, 'ipv4_addr'],
    [SET6, 'ipv6_addr'],
  ] as const) {
    const s = objs.map((o) => o.set).find((x) => mine(x) && x.name === name);
    if (!s) {
      r.missingSets.push(name);
      r.problems.push(`set ${name} is missing`);
    } else {
      const flags = Array.isArray(s.flags) ? s.flags : [];
      if (s.type !== type || flags.length !== 1 || flags[0] !== 'timeout') {
        r.badSets.push(name);
        r.problems.push(`set ${name} has type ${JSON.stringify(s.type)} flags ${JSON.stringify(flags)}`);
      }
    }
  }
  const c = objs.map((o) => o.chain).find((x) => mine(x) && x.name === CHAIN);
  if (!c) {
    r.missingChain = true;
    r.badRules = true;
    r.problems.push(`chain ${CHAIN} is missing`);
    return r;
  }
  if (c.type !== 'filter' || c.hook !== 'input' || c.prio !== priority || c.policy !== 'accept') {
    r.badChain = true;
    r.problems.push(`chain ${CHAIN} is ${c.type} hook ${c.hook} priority ${c.prio} policy ${c.policy}`);
  }
  const have = objs
    .map((o) => o.rule)
    .filter((x): x is NonNullable<NftJsonObject['rule']> => mine(x) && x.chain === CHAIN)
    .map((x) => x.comment ?? '');
  const want = chainRules(denyType).map((x) => x.comment);
  if (have.length !== want.length || have.some((h, i) => h !== want[i])) {
    r.badRules = true;
    r.problems.push(`chain ${CHAIN} has rules [${have.join(', ')}], expected [${want.join(', ')}]`);
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

/** A ban turned into an element: canonical address and its timeout in seconds (null: permanent). */
export interface NftElement {
  family: 4 | 6;
  text: string;
  timeout: number | null;
}

/** nftables enforcement in `table inet tsfilter`; see the comment at the top of this file. */
export class NftablesEnforcer implements Enforcer {
  readonly name = 'nftables';
  private readonly runner: NftRunnerOptions;
  private readonly denyType: DenyType;
  private readonly priority: number;
  private readonly checkIntervalMs: number;
  private readonly logger: NftLogger;
  private readonly now: () => number;
  private readonly lostCallbacks: (() => void)[] = [];
  /** Addresses this enforcer put in its sets (since start, or seen by reconcile): these need re-timing on a new ban. */
  private readonly known = new Set<string>();
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
    this.checkIntervalMs = opts.checkIntervalMs ?? (opts.checkInterval !== undefined ? Math.round(opts.checkInterval * 1000) : 2000);
    this.logger = opts.logger;
    this.now = opts.now ?? Date.now;
    if (opts.onLost) this.lostCallbacks.push(opts.onLost);
    this.state = { ok: false, repairs: 0, denyType: this.denyType, lastError: 'not started' };
  }

  /** Creates or repairs the table in one transaction (set elements kept), then starts the watcher. */
  async start(): Promise<void> {
    await this.serial(async () => {
      const before = await this.inspect();
      await this.ensure(before);
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
   * Adds (or re-times) an element per ban; bans already expired are skipped. Throws on an invalid address.
   * An address this enforcer has not put in the sets gets a plain add (about 3.5 ms for nft); only one it may have
   * added before is re-timed with add+delete+add, which costs about 15 ms (the delete waits for the kernel's set
   * garbage collection) and would otherwise dominate the line-to-drop latency.
   */
  async ban(bans: Enforcement[]): Promise<void> {
    const els = this.toElements(bans);
    for (let i = 0; i < els.length; i += CHUNK) {
      const chunk = els.slice(i, i + CHUNK);
      const fresh = chunk.filter((e) => !this.known.has(e.text));
      const again = chunk.filter((e) => this.known.has(e.text));
      await this.batch(addScript(fresh) + banScript(again));
      for (const e of chunk) this.known.add(e.text);
    }
  }

  /** Deletes the addresses' elements; a missing element is not an error. Throws on an invalid address. */
  async unban(ips: string[]): Promise<void> {
    const els = new Map<string, NftElement>();
    const bad: string[] = [];
    for (const ip of ips) {
      const a = canonicalAddress(ip);
      if (a === null) bad.push(ip);
      else els.set(a.text, { family: a.family, text: a.text, timeout: null });
    }
    rejectInvalid(bad);
    const all = [...els.values()];
    for (let i = 0; i < all.length; i += CHUNK) await this.batch(unbanScript(all.slice(i, i + CHUNK)));
    for (const e of all) this.known.delete(e.text);
  }

  /**
   * At start: makes the sets hold every active ban, with the store's remaining time. Elements unknown to the
   * caller are left alone; removing ended bans is the caller's job (unban).
   */
  async reconcile(active: Enforcement[]): Promise<{ added: number; retimed: number; unchanged: number }> {
    const els = this.toElements(active);
    // One listing (with each element's remaining time) instead of re-timing everything: after a restart with the
    // table intact, nearly every element is already right, and add+delete+add of 100,000 costs twice a plain add.
    const current = await this.serial(() => this.listDetailed());
    const missing: NftElement[] = [];
    const retime: NftElement[] = [];
    for (const e of els) {
      if (!current.has(e.text)) missing.push(e);
      else {
        const left = current.get(e.text)!;
        const same = left === null ? e.timeout === null : e.timeout !== null && Math.abs(left - e.timeout) <= RETIME_SLACK_S;
        if (!same) retime.push(e);
      }
    }
    // A plain add is enough for a missing element; should it appear meanwhile, add keeps it and nothing fails.
    for (let i = 0; i < missing.length; i += CHUNK) await this.batch(addScript(missing.slice(i, i + CHUNK)));
    for (let i = 0; i < retime.length; i += CHUNK) await this.batch(banScript(retime.slice(i, i + CHUNK)));
    for (const k of current.keys()) this.known.add(k);
    for (const e of els) this.known.add(e.text);
    return { added: missing.length, retimed: retime.length, unchanged: els.length - missing.length - retime.length };
  }

  /** The addresses in banned4 and banned6 (canonical text). An absent table has none. */
  async elements(): Promise<string[]> {
    return [...(await this.serial(() => this.listDetailed())).keys()];
  }

  /** Registers a callback for a repaired table (in addition to the constructor's onLost). */
  onLost(cb: () => void): void {
    this.lostCallbacks.push(cb);
  }

  health(): NftablesHealth {
    return { ...this.state, elements: this.state.elements };
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
      if (Date.now() - this.lastCount >= COUNT_EVERY_MS) await this.serial(() => this.listDetailed()).catch(() => {});
      this.markOk();
      return true;
    } catch (err) {
      this.markFailed(err);
      return false;
    } finally {
      this.checking = false;
    }
  }

  /**
   * `nft -f -` with this script, through the queue; a failure is recorded in health() and thrown. When the batch
   * fails because the table or a set vanished (flushed ruleset, not yet noticed by the watcher), the table is
   * repaired, the batch retried once, and onLost fired: the ban lands now instead of at the next retry.
   */
  private async batch(script: string): Promise<void> {
    let repaired = false;
    try {
      await this.serial(async () => {
        try {
          await runNft(this.runner, ['-f', '-'], script);
        } catch (err) {
          if (!(err instanceof NftError && NO_SUCH.test(err.stderr))) throw err;
          const i = await this.inspect();
          if (isIntact(i)) throw err;
          this.logger.warn('nftables table damaged behind our back; recreating it', { problems: i.problems.join('; ') });
          await this.ensure(i);
          repaired = true;
          await runNft(this.runner, ['-f', '-'], script);
        }
      });
    } catch (err) {
      this.markFailed(err);
      throw err;
    } finally {
      if (repaired) this.lost();
    }
  }

  private lost(): void {
    this.known.clear();
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
    return inspectTable(objs, this.denyType, this.priority);
  }

  private async ensure(i: Inspection): Promise<void> {
    if (isIntact(i)) return;
    const rebuildTable = i.badSets.length > 0;
    if (rebuildTable) this.logger.warn('a set in table inet tsfilter has another type or flags: rebuilding the table (its elements are lost)', { sets: i.badSets.join(',') });
    await runNft(this.runner, ['-f', '-'], rulesetScript(this.denyType, this.priority, { rebuildTable, rebuildChain: i.badChain }));
    const after = await this.inspect();
    if (!isIntact(after)) throw new Error(`nftables table still wrong after repair: ${after.problems.join('; ')}`);
  }

  /** Canonical address -> seconds left (null: permanent), from one `nft -j list table`. */
  private async listDetailed(): Promise<Map<string, number | null>> {
    let objs: NftJsonObject[];
    try {
      objs = parseNftJson(await runNft(this.runner, ['-j', 'list', 'table', 'inet', TABLE]));
    } catch (err) {
      if (err instanceof NftError && NO_SUCH.test(err.stderr)) objs = [];
      else throw err;
    }
    const out = new Map<string, number | null>();
    for (const o of objs) {
      const s = o.set;
      if (!s || s.family !== 'inet' || s.table !== TABLE || (s.name !== SET4 && s.name !== SET6) || !Array.isArray(s.elem)) continue;
      for (const e of s.elem) {
        if (typeof e === 'string') out.set(e, null);
        else {
          const el = (e as { elem?: { val?: unknown; expires?: unknown; timeout?: unknown } })?.elem;
          if (typeof el?.val !== 'string') continue;
          const left = typeof el.expires === 'number' ? el.expires : typeof el.timeout === 'number' ? el.timeout : null;
          out.set(el.val, left);
        }
      }
    }
    this.state.elements = out.size;
    this.lastCount = Date.now();
    return out;
  }

  /** Validated, deduplicated elements with their timeouts; expired bans dropped. Throws on an invalid address. */
  private toElements(bans: Enforcement[]): NftElement[] {
    const now = this.now();
    const byIp = new Map<string, NftElement>();
    const bad: string[] = [];
    for (const b of bans) {
      const a = canonicalAddress(b.ip);
      if (a === null) {
        bad.push(b.ip);
        continue;
      }
      let timeout: number | null = null;
      if (b.expiresAt !== null) {
        const ms = b.expiresAt - now;
        if (!(ms > 0)) continue;
        timeout = Math.ceil(ms / 1000);
        if (timeout > MAX_TIMEOUT_S) timeout = null;
      }
      const prev = byIp.get(a.text);
      // The same address twice in one batch: the longer ban wins.
      if (prev && (prev.timeout === null || (timeout !== null && prev.timeout >= timeout))) continue;
      byIp.set(a.text, { family: a.family, text: a.text, timeout });
    }
    rejectInvalid(bad);
    return [...byIp.values()];
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

function rejectInvalid(bad: string[]): void {
  if (bad.length === 0) return;
  const shown = bad.slice(0, 3).map((b) => JSON.stringify(String(b).slice(0, 60)));
  throw new TypeError(`not an IP address, refused before running nft: ${shown.join(', ')}${bad.length > 3 ? ` and ${bad.length - 3} more` : ''}`);
}

function elementList(els: NftElement[], withTimeout: boolean): string {
  return els.map((e) => (withTimeout && e.timeout !== null ? `${e.text} timeout ${e.timeout}s` : e.text)).join(', ');
}

function perFamily(els: NftElement[]): [string, NftElement[]][] {
  return [
    [SET4, els.filter((e) => e.family === 4)],
    [SET6, els.filter((e) => e.family === 6)],
  ];
}

/**
 * Removes the elements (add first, so the delete cannot fail) and adds them again with the wanted timeout, in one
 * transaction: exact timeouts on every kernel.
 */
export function banScript(els: NftElement[]): string {
  return unbanScript(els) + addScript(els);
}

/** Plain add, for elements known to be missing (reconcile). */
export function addScript(els: NftElement[]): string {
  let s = '';
  for (const [set, list] of perFamily(els)) {
    if (list.length > 0) s += `add element inet ${TABLE} ${set} { ${elementList(list, true)} }\n`;
  }
  return s;
}

/** add then delete: deleting an element that is not there would fail the whole transaction. */
export function unbanScript(els: NftElement[]): string {
  let s = '';
  for (const [set, list] of perFamily(els)) {
    if (list.length === 0) continue;
    const plain = elementList(list, false);
    s += `add element inet ${TABLE} ${set} { ${plain} }\n`;
    s += `delete element inet ${TABLE} ${set} { ${plain} }\n`;
  }
  return s;
}
