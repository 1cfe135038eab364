import type { Enforcer, Enforcement, EnforcerOptions } from './types.ts';
import { NftError, runNft, type NftRunnerOptions } from './nft-runner.ts';
import type { Target } from './target.ts';
import { BackendState, type BackendHealth } from './backend-state.ts';
import { forEachValid, sameTimeLeft, secondsLeft, validTargets } from './ban-input.ts';
import { filterScript, jumpCounts, readFilter, restoreFilter, RESTORE_FLAGS, xtablesBins, type Family, type XtablesBins } from './xtables.ts';
import { addLine, allowEntries, allowLines, CHUNK_LINES, delLine, MAX_TIMEOUT_S, parseSetElements, parseSetHeaders, scopeKeys, SETS, setFor, SPECS, splitElement, type SetInfo, type SetSpec } from './ipset-sets.ts';

/*
 * The ipset backend: bans are set elements, matched by a fixed handful of iptables rules, so 100,000 bans cost one
 * `ipset restore` and no rule at all. Per family (4 shown; 6 is the same with inet6 and ip6tables):
 *
 *   tsfilter4        hash:net       timeout 0   whole-source bans: 192.0.2.7 (a /32), 198.51.100.0/24 (a subnet ban)
 *   tsfilter4-ports  hash:net,port  timeout 0   port-scoped bans: 192.0.2.7,tcp:22 (one element per port)
 *   tsfilter4-allow  hash:net                   settings.ignored_ips: pass even inside a banned prefix
 *
 *   -A TSFILTER_IPSET -m set --match-set tsfilter4-allow src -j RETURN
 *   -A TSFILTER_IPSET -m set --match-set tsfilter4 src -j DROP
 *   -A TSFILTER_IPSET -m set --match-set tsfilter4-ports src,dst -j DROP
 *   -I INPUT 1 -j TSFILTER_IPSET        (with forward: also from DOCKER-USER when it exists, else FORWARD)
 *
 * With deny_type REJECT each DROP becomes two rules, as in the nftables backend: TCP gets a reset (the client sees
 * ECONNREFUSED at once) and everything else an ICMP administratively-prohibited error.
 *
 * `timeout 0` on a set means "elements may carry a timeout", so the kernel lifts each ban on time even while the
 * daemon is down; an element with `timeout 0` is permanent. Facts verified on ipset 7.17, kernel 6.18:
 *  - the largest element timeout is 2147483 s; a longer ban becomes a permanent element that the daemon lifts at
 *    expiry (BanManager.expire(), or reconciliation at start);
 *  - `add ... -exist` of an existing element re-times it, up or down, permanent or not: no delete needed;
 *  - `del ... -exist` of a missing element is no error;
 *  - `create ... -exist` fails ("set with the same name already exists") when anything differs, even maxelem, so
 *    existing sets are inspected (`ipset list -t`) and only missing ones created;
 *  - hash:net cannot hold a /0 ("The value of the CIDR parameter of the IP address is invalid");
 *  - a set referenced by an iptables rule cannot be destroyed ("in use by a kernel component");
 *  - `ipset restore` is not atomic: lines before a failing one stay applied (so the in-memory view is reloaded).
 * iptables-restore --noflush (legacy and nf_tables variants) flushes a user chain declared with `:CHAIN - [0:0]`, so
 * one restore per family rewrites the chain atomically and adds or removes jumps.
 *
 * An in-memory map source -> elements (filled from `ipset list -o save` at start) tells ban() which elements of a
 * re-banned source must go (its scope changed) and lets the watcher notice a flushed set: fewer entries than bans
 * known to be alive. Port scopes on the forward path match the port after Docker's DNAT (the container's port).
 */

export const DEFAULT_CHAIN = 'TSFILTER_IPSET';

export type DenyType = 'DROP' | 'REJECT';

export interface IpsetEnforcerOptions extends EnforcerOptions {
  ipset?: string;
  iptables?: string;
  ip6tables?: string;
  chain?: string;
  maxelem?: number;
}

export interface IpsetHealth extends BackendHealth {
  /** Elements in the four ban sets at the last check. */
  elements?: number;
  /** How many times the watcher (or a failed batch) found state missing and recreated it. */
  repairs: number;
  denyType: DenyType;
}

/** The chain's rules as iptables-save prints them (without "-A CHAIN "): compared verbatim by the watcher. */
export function chainRules(fam: Family, denyType: DenyType): string[] {
  const s = SETS[fam];
  const icmp = fam === 4 ? 'icmp-admin-prohibited' : 'icmp6-adm-prohibited';
  const out = [`-m set --match-set ${s.allow} src -j RETURN`];
  for (const [set, dir] of [
    [s.ban, 'src'],
    [s.ports, 'src,dst'],
  ] as const) {
    if (denyType === 'DROP') out.push(`-m set --match-set ${set} ${dir} -j DROP`);
    else out.push(`-p tcp -m set --match-set ${set} ${dir} -j REJECT --reject-with tcp-reset`, `-m set --match-set ${set} ${dir} -j REJECT --reject-with ${icmp}`);
  }
  return out;
}

interface Want {
  source: string;
  keys: string[];
  /** Seconds; null: permanent element. */
  timeout: number | null;
  expiresAt: number | null;
}

/** What the sets hold of one source (from our own writes or the last listing). */
interface Held {
  keys: Set<string>;
  expiresAt: number | null;
}

interface Inspection {
  sets: Map<string, SetInfo>;
  missingSets: SetSpec[];
  badSets: SetSpec[];
  /** Ban sets with fewer entries than bans known to be alive: flushed or emptied behind our back. */
  shortSets: string[];
  /** Families whose allow set lacks entries. */
  allowShort: Family[];
  /** Per family: the iptables restore that fixes the chain and jumps, or null when intact. */
  iptables: Record<Family, string | null>;
  problems: string[];
}

const NO_SET = /set with the given name does not exist/i;
const ALIVE_SLACK_MS = 1000;

/** ipset enforcement; see the comment at the top of this file. */
export class IpsetEnforcer implements Enforcer {
  readonly name = 'ipset';
  private readonly ipset: NftRunnerOptions;
  private readonly ipt: Record<Family, XtablesBins>;
  private readonly chain: string;
  private readonly maxelem: number;
  private readonly denyType: DenyType;
  private readonly forward: boolean;
  private readonly checkIntervalMs: number;
  private readonly logger: EnforcerOptions['logger'];
  private readonly now: () => number;
  private allow: Target[];
  private held = new Map<string, Held>();
  private warnedMaxelem = new Set<string>();
  private readonly state: BackendState<IpsetHealth>;

  constructor(opts: IpsetEnforcerOptions) {
    if (opts.denyType !== 'DROP' && opts.denyType !== 'REJECT') throw new TypeError(`deny_type must be DROP or REJECT, got ${String(opts.denyType)}`);
    this.chain = opts.chain ?? DEFAULT_CHAIN;
    if (!/^[A-Za-z0-9_-]{1,28}$/.test(this.chain) || ['INPUT', 'FORWARD', 'OUTPUT', 'DOCKER-USER'].includes(this.chain)) {
      throw new TypeError(`bad chain name ${JSON.stringify(this.chain)}`);
    }
    this.maxelem = opts.maxelem ?? 1_048_576;
    if (!Number.isInteger(this.maxelem) || this.maxelem < 1 || this.maxelem > 2 ** 31) throw new TypeError(`bad maxelem ${String(opts.maxelem)}`);
    this.ipset = { nft: opts.ipset ?? 'ipset', netns: opts.netns, timeoutMs: opts.timeoutMs };
    this.ipt = xtablesBins(opts);
    this.denyType = opts.denyType;
    this.forward = opts.forward ?? false;
    this.checkIntervalMs = Math.round((opts.checkInterval ?? 5) * 1000);
    this.logger = opts.logger;
    this.now = opts.now ?? Date.now;
    this.allow = allowEntries(opts.allow ?? []);
    this.state = new BackendState('ipset', opts.logger, { ok: false, repairs: 0, denyType: this.denyType, lastError: 'not started' }, { onLost: opts.onLost });
  }

  /** Creates what is missing (existing elements are kept: bans hold across a restart), then starts the watcher. */
  async start(): Promise<void> {
    await this.state.batch(async () => {
      await this.loadHeld();
      const i = await this.inspect();
      await this.ensure(i, true);
    });
    this.state.started(this.checkIntervalMs, () => this.check());
  }

  /** Stops the watcher; sets, chain and elements stay. */
  stop(): Promise<void> {
    return this.state.stop();
  }

  /** Adds or re-times each ban's elements and removes the source's elements of another scope. */
  async ban(bans: Enforcement[]): Promise<void> {
    const wants = this.plan(bans);
    await this.apply(() => {
      const lines: string[] = [];
      for (const w of wants) {
        for (const k of this.held.get(w.source)?.keys ?? []) if (!w.keys.includes(k)) lines.push(delLine(w.source, k));
        for (const k of w.keys) lines.push(addLine(w.source, k, w.timeout));
      }
      return lines;
    });
    for (const w of wants) this.held.set(w.source, { keys: new Set(w.keys), expiresAt: w.expiresAt });
  }

  /** Deletes every element of these sources from the ban and ports sets; absent ones are no error. */
  async unban(ips: string[]): Promise<void> {
    const sources = new Set<string>();
    // A /0 can never be in a hash:net set.
    for (const t of validTargets(ips, 'ipset', 'unban')) if (t.prefixLength > 0) sources.add(t.text);
    await this.apply(async () => {
      // Elements added behind our back: one listing finds their port elements.
      if ([...sources].some((s) => !this.held.has(s))) await this.loadHeld();
      const lines: string[] = [];
      for (const s of sources) {
        const keys = new Set(this.held.get(s)?.keys ?? []);
        keys.add('');
        for (const k of keys) lines.push(delLine(s, k));
      }
      return lines;
    });
    for (const s of sources) this.held.delete(s);
  }

  /**
   * At start: the sets get exactly these bans' elements with the store's remaining time (only missing or mistimed
   * ones are written, and elements of another scope of these sources removed). Other sources are left alone.
   */
  async reconcile(active: Enforcement[]): Promise<{ added: number; retimed: number; removed: number; unchanged: number }> {
    const wants = this.plan(active);
    const counts = { added: 0, retimed: 0, removed: 0, unchanged: 0 };
    await this.apply(async () => {
      // Runs again after a repair: count only the last run.
      Object.assign(counts, { added: 0, retimed: 0, removed: 0, unchanged: 0 });
      const current = await this.loadHeld();
      const lines: string[] = [];
      for (const w of wants) {
        const have = current.get(w.source);
        for (const k of have?.keys() ?? []) {
          if (!w.keys.includes(k)) {
            lines.push(delLine(w.source, k));
            counts.removed++;
          }
        }
        for (const k of w.keys) {
          const left = have?.get(k);
          if (left === undefined) counts.added++;
          else if (sameTimeLeft(left, w.timeout)) {
            counts.unchanged++;
            continue;
          } else counts.retimed++;
          lines.push(addLine(w.source, k, w.timeout));
        }
      }
      return lines;
    });
    for (const w of wants) this.held.set(w.source, { keys: new Set(w.keys), expiresAt: w.expiresAt });
    return counts;
  }

  /** Canonical sources in the ban and ports sets (a /32 or /128 entry is a plain address). */
  async elements(): Promise<string[]> {
    await this.state.serial(() => this.loadHeld());
    return [...this.held.keys()];
  }

  /** Replaces the always-pass list: both allow sets flushed and refilled in one restore. */
  async setAllowed(cidrs: string[]): Promise<void> {
    const entries = allowEntries(cidrs);
    this.allow = entries;
    await this.apply(() => allowLines(entries));
  }

  onLost(cb: () => void): void {
    this.state.onLost(cb);
  }

  health(): IpsetHealth {
    return { ...this.state.health };
  }

  /** One watcher round, also callable directly: repairs what vanished and fires onLost. Resolves true when intact. */
  async check(): Promise<boolean> {
    return this.state.check(() =>
      this.state.serial(async () => {
        const i = await this.inspect();
        if (i.problems.length === 0) return false;
        this.logger.warn('ipset enforcement damaged behind our back; recreating it', { problems: i.problems.join('; ') });
        await this.ensure(i, false);
        return true;
      }),
    );
  }

  /**
   * Runs one `ipset restore` with the lines `build` returns, through the queue. When a set vanished (destroyed, not
   * yet noticed by the watcher), everything is repaired, the lines rebuilt and run again, and onLost fired.
   */
  private async apply(build: () => string[] | Promise<string[]>): Promise<void> {
    await this.state.batch(async (repaired) => {
      const lines = await build();
      if (lines.length === 0) return;
      try {
        await this.restore(lines);
      } catch (err) {
        if (!(err instanceof NftError && NO_SET.test(err.stderr))) {
          // Lines before the failing one were applied: re-read what the sets hold.
          await this.loadHeld().catch(() => {});
          throw err;
        }
        const i = await this.inspect();
        if (i.missingSets.length === 0 && i.badSets.length === 0) throw err;
        this.logger.warn('ipset enforcement damaged behind our back; recreating it', { problems: i.problems.join('; ') });
        await this.ensure(i, false);
        repaired();
        await this.restore(await build());
      }
    });
  }

  /** `ipset restore`, one process per CHUNK_LINES lines. */
  private async restore(lines: string[]): Promise<void> {
    for (let i = 0; i < lines.length; i += CHUNK_LINES) await runNft(this.ipset, ['restore'], lines.slice(i, i + CHUNK_LINES).join('\n') + '\n');
  }

  private async inspect(): Promise<Inspection> {
    const sets = parseSetHeaders(await runNft(this.ipset, ['list', '-t']));
    const i: Inspection = { sets, missingSets: [], badSets: [], shortSets: [], allowShort: [], iptables: { 4: null, 6: null }, problems: [] };
    const expected = this.expectedCounts();
    let elements = 0;
    for (const spec of SPECS) {
      const s = sets.get(spec.name);
      if (!s) {
        i.missingSets.push(spec);
        i.problems.push(`set ${spec.name} is missing`);
        continue;
      }
      if (s.type !== spec.type || s.family !== spec.family || (spec.timeout && !s.timeout)) {
        i.badSets.push(spec);
        i.problems.push(`set ${spec.name} is ${s.type} family ${s.family}${s.timeout ? ' with timeouts' : ''}, expected ${spec.type} family ${spec.family}${spec.timeout ? ' with timeouts' : ''}`);
        continue;
      }
      if (s.maxelem !== this.maxelem && !this.warnedMaxelem.has(spec.name)) {
        this.warnedMaxelem.add(spec.name);
        this.logger.warn('an ipset set exists with another maxelem; keeping it (destroy it to apply the setting)', { set: spec.name, maxelem: s.maxelem, wanted: this.maxelem });
      }
      if (spec.role === 'allow') {
        const want = this.allow.filter((a) => a.family === spec.fam).length;
        if (s.entries < want) {
          i.allowShort.push(spec.fam);
          i.problems.push(`set ${spec.name} has ${s.entries} entries, expected ${want}`);
        }
        continue;
      }
      elements += s.entries;
      const want = expected.get(spec.name) ?? 0;
      if (s.entries < want) {
        i.shortSets.push(spec.name);
        i.problems.push(`set ${spec.name} has ${s.entries} entries, ${want} bans are active`);
      }
    }
    this.state.health.elements = elements;
    for (const fam of [4, 6] as const) {
      const r = await this.inspectIptables(fam);
      i.iptables[fam] = r.script;
      i.problems.push(...r.problems);
    }
    return i;
  }

  /** Entries each ban set must hold at least: elements of bans that have not expired. */
  private expectedCounts(): Map<string, number> {
    const cutoff = this.now() + ALIVE_SLACK_MS;
    const out = new Map<string, number>();
    for (const [source, h] of this.held) {
      if (h.expiresAt !== null && h.expiresAt <= cutoff) continue;
      for (const k of h.keys) {
        const set = setFor(source, k);
        out.set(set, (out.get(set) ?? 0) + 1);
      }
    }
    return out;
  }

  /** The restore script that fixes this family's chain and jumps (null: intact), with what is wrong. */
  private async inspectIptables(fam: Family): Promise<{ script: string | null; problems: string[] }> {
    const table = await readFilter(this.ipt[fam]);
    const problems: string[] = [];
    const v = `IPv${fam}`;
    const want = chainRules(fam, this.denyType);
    const have = table.rules.get(this.chain) ?? [];
    if (!table.chains.has(this.chain)) problems.push(`${v} chain ${this.chain} is missing`);
    else if (have.length !== want.length || have.some((r, k) => r !== want[k])) problems.push(`${v} chain ${this.chain} has ${have.length} rules, not the expected ${want.length}`);
    const jumpLines: string[] = [];
    for (const j of jumpCounts(table, this.chain, this.forward)) {
      if (j.have === j.want) continue;
      problems.push(`${v} ${j.from} has ${j.have} jumps to ${this.chain}, expected ${j.want}`);
      for (let k = 0; k < j.have; k++) jumpLines.push(`-D ${j.from} -j ${this.chain}`);
      if (j.want) jumpLines.push(`-I ${j.from} 1 -j ${this.chain}`);
    }
    if (problems.length === 0) return { script: null, problems };
    // `:CHAIN - [0:0]` flushes the chain even with --noflush: it is rewritten whole.
    return { script: filterScript([`:${this.chain} - [0:0]`, ...want.map((r) => `-A ${this.chain} ${r}`), ...jumpLines]), problems };
  }

  /**
   * Fixes what the inspection found: sets of the wrong type are destroyed (after emptying our chain, which
   * references them) and recreated, missing sets created, allow sets refilled, chains rewritten. At start the allow
   * sets are always refilled (the configuration may have changed).
   */
  private async ensure(i: Inspection, starting: boolean): Promise<void> {
    const iptFix = { ...i.iptables };
    if (i.badSets.length > 0) {
      this.logger.warn('ipset sets exist with another type or family: recreating them (their elements are lost)', { sets: i.badSets.map((s) => s.name).join(',') });
      for (const fam of new Set(i.badSets.map((s) => s.fam))) {
        await restoreFilter(this.ipt[fam], filterScript([`:${this.chain} - [0:0]`]), RESTORE_FLAGS).catch(() => {});
        iptFix[fam] = null;
      }
      for (const s of i.badSets) {
        const found = i.sets.get(s.name)!;
        try {
          await runNft(this.ipset, ['destroy', s.name]);
        } catch (err) {
          throw new Error(
            `ipset set ${s.name} exists as ${found.type} family ${found.family}${found.timeout ? '' : ' without timeouts'} but must be ${s.type} family ${s.family}${s.timeout ? ' with timeouts' : ''}; ` +
              `it could not be recreated (${err instanceof NftError ? err.stderr : String(err)}): remove whatever uses it, or destroy it`,
          );
        }
      }
    }
    const create = [...i.missingSets, ...i.badSets].map((s) => `create ${s.name} ${s.type} family ${s.family}${s.timeout ? ' timeout 0' : ''} maxelem ${this.maxelem} -exist`);
    await this.restore(create);
    const refill = starting || i.allowShort.length > 0 || [...i.missingSets, ...i.badSets].some((s) => s.role === 'allow');
    if (refill) await this.restore(allowLines(this.allow));
    for (const fam of [4, 6] as const) {
      const setsRecreated = i.badSets.some((s) => s.fam === fam);
      let script = iptFix[fam];
      if (setsRecreated) script = (await this.inspectIptables(fam)).script;
      if (script !== null) await restoreFilter(this.ipt[fam], script, RESTORE_FLAGS);
    }
    const lostElements = i.shortSets.length > 0 || [...i.missingSets, ...i.badSets].some((s) => s.role !== 'allow');
    if (lostElements) await this.loadHeld();
    const after = await this.inspect();
    if (after.problems.length > 0) throw new Error(`ipset enforcement still wrong after repair: ${after.problems.join('; ')}`);
  }

  /**
   * Lists the ban and ports sets and replaces the in-memory map with what they hold.
   * Returns source -> (scope key -> seconds left, null: permanent).
   */
  private async loadHeld(): Promise<Map<string, Map<string, number | null>>> {
    const now = this.now();
    const detail = new Map<string, Map<string, number | null>>();
    const held = new Map<string, Held>();
    // A source with several port elements is validated once.
    const memo = new Map<string, Target | null>();
    for (const spec of SPECS) {
      if (spec.role === 'allow') continue;
      let out: string;
      try {
        out = await runNft(this.ipset, ['list', '-o', 'save', spec.name]);
      } catch (err) {
        if (err instanceof NftError && NO_SET.test(err.stderr)) continue;
        throw err;
      }
      for (const [el, left] of parseSetElements(out)) {
        const e = splitElement(el, memo);
        if (e === null || (e.key === '') !== (spec.role === 'ban')) continue;
        const src = e.source.text;
        const d = detail.get(src) ?? new Map<string, number | null>();
        d.set(e.key, left);
        detail.set(src, d);
        const h = held.get(src) ?? { keys: new Set<string>(), expiresAt: 0 };
        h.keys.add(e.key);
        const exp = left === null ? null : now + left * 1000;
        if (h.expiresAt !== null) h.expiresAt = exp === null ? null : Math.max(h.expiresAt, exp);
        held.set(src, h);
      }
    }
    this.held = held;
    return detail;
  }

  /** Validated, deduplicated bans with their timeouts; expired ones dropped. Throws on an invalid source or a /0. */
  private plan(bans: Enforcement[]): Want[] {
    const now = this.now();
    const bySource = new Map<string, Want>();
    forEachValid(bans, (b) => b.ip, 'ipset', (t, b) => {
      if (t.prefixLength === 0) throw new TypeError(`cannot ban ${t.text}: an ipset hash:net set cannot hold a /0 prefix (ban ${t.family === 4 ? '0.0.0.0/1 and 128.0.0.0/1' : '::/1 and 8000::/1'} if you really mean everything)`);
      const timeout = secondsLeft(b.expiresAt, now, MAX_TIMEOUT_S);
      if (timeout === undefined) return;
      const prev = bySource.get(t.text);
      // The same source twice in one batch: the longer ban wins.
      if (prev && (prev.expiresAt === null || (b.expiresAt !== null && prev.expiresAt > b.expiresAt))) return;
      bySource.set(t.text, { source: t.text, keys: scopeKeys(b.scope), timeout, expiresAt: b.expiresAt });
    }, 'ban');
    return [...bySource.values()];
  }
}
