import type { Enforcer, Enforcement, EnforcerHealth, EnforcerOptions, PortScope } from './types.ts';
import { NftError, runNft, type NftRunnerOptions } from './nft-runner.ts';
import { canonicalTarget, type Target } from './target.ts';

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

export const MAX_TIMEOUT_S = 2_147_483;
/** restore lines per ipset process: 100,000 bans take ~0.5 s in one process; this bounds one run's time and memory. */
export const CHUNK_LINES = 200_000;
export const DEFAULT_CHAIN = 'TSFILTER_IPSET';

type Family = 4 | 6;
export type DenyType = 'DROP' | 'REJECT';

export const SETS = {
  4: { ban: 'tsfilter4', ports: 'tsfilter4-ports', allow: 'tsfilter4-allow' },
  6: { ban: 'tsfilter6', ports: 'tsfilter6-ports', allow: 'tsfilter6-allow' },
} as const;

interface SetSpec {
  name: string;
  type: 'hash:net' | 'hash:net,port';
  family: 'inet' | 'inet6';
  timeout: boolean;
  fam: Family;
  role: 'ban' | 'ports' | 'allow';
}

const SPECS: SetSpec[] = ([4, 6] as const).flatMap((fam) => {
  const family = fam === 4 ? 'inet' : 'inet6';
  return [
    { name: SETS[fam].ban, type: 'hash:net', family, timeout: true, fam, role: 'ban' },
    { name: SETS[fam].ports, type: 'hash:net,port', family, timeout: true, fam, role: 'ports' },
    { name: SETS[fam].allow, type: 'hash:net', family, timeout: false, fam, role: 'allow' },
  ] as SetSpec[];
});

export interface IpsetEnforcerOptions extends EnforcerOptions {
  ipset?: string;
  iptables?: string;
  ip6tables?: string;
  chain?: string;
  maxelem?: number;
}

export interface IpsetHealth extends EnforcerHealth {
  ok: boolean;
  lastError?: string;
  /** Elements in the four ban sets at the last check. */
  elements?: number;
  lastCheck?: string;
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

/** One set's header from `ipset list -t`. */
export interface SetInfo {
  name: string;
  type: string;
  family: string;
  timeout: boolean;
  maxelem: number;
  entries: number;
}

export function parseSetHeaders(out: string): Map<string, SetInfo> {
  const sets = new Map<string, SetInfo>();
  let cur: SetInfo | null = null;
  for (const line of out.split('\n')) {
    const m = /^([A-Za-z ]+):\s*(.*)$/.exec(line.trim());
    if (!m) continue;
    const [, key, value] = m as unknown as [string, string, string];
    if (key === 'Name') {
      cur = { name: value, type: '', family: '', timeout: false, maxelem: 0, entries: 0 };
      sets.set(value, cur);
    } else if (cur && key === 'Type') cur.type = value;
    else if (cur && key === 'Number of entries') cur.entries = Number(value) || 0;
    else if (cur && key === 'Header') {
      const t = value.split(/\s+/);
      for (let i = 0; i < t.length; i++) {
        if (t[i] === 'family') cur.family = t[i + 1] ?? '';
        else if (t[i] === 'maxelem') cur.maxelem = Number(t[i + 1]) || 0;
        else if (t[i] === 'timeout') cur.timeout = true;
      }
    }
  }
  return sets;
}

/** The filter table from iptables-save: chain names and each chain's rules (without "-A CHAIN "). */
export function parseIptablesSave(out: string): { chains: Set<string>; rules: Map<string, string[]> } {
  const chains = new Set<string>();
  const rules = new Map<string, string[]>();
  let inFilter = false;
  for (const line of out.split('\n')) {
    if (line.startsWith('*')) inFilter = line === '*filter';
    if (!inFilter) continue;
    const c = /^:(\S+) /.exec(line);
    if (c) chains.add(c[1]!);
    const r = /^-A (\S+) (.*)$/.exec(line);
    if (r) {
      const list = rules.get(r[1]!) ?? [];
      list.push(r[2]!.trimEnd());
      rules.set(r[1]!, list);
    }
  }
  return { chains, rules };
}

/** Parses `ipset list -o save <set>`: element -> seconds left (null: permanent). */
export function parseSetElements(out: string): Map<string, number | null> {
  const els = new Map<string, number | null>();
  for (const line of out.split('\n')) {
    const m = /^add \S+ (\S+)(.*)$/.exec(line);
    if (!m || / nomatch\b/.test(m[2]!)) continue;
    const t = / timeout (\d+)/.exec(m[2]!);
    const left = t ? Number(t[1]) : null;
    els.set(m[1]!, left === 0 ? null : left);
  }
  return els;
}

const PORT_KEY = /^[a-z0-9]{1,10}:[0-9]{1,5}$/;

/** "192.0.2.7" or "192.0.2.7,tcp:22" -> canonical source and scope key ('' for a whole-source element). */
export function splitElement(el: string, memo?: Map<string, Target | null>): { source: Target; key: string } | null {
  const comma = el.indexOf(',');
  const raw = comma < 0 ? el : el.slice(0, comma);
  let source = memo?.get(raw);
  if (source === undefined) {
    source = canonicalTarget(raw);
    memo?.set(raw, source);
  }
  const key = comma < 0 ? '' : el.slice(comma + 1).toLowerCase();
  if (source === null || (key !== '' && !PORT_KEY.test(key))) return null;
  return { source, key };
}

/** The element keys of a scope: [''] (the whole source) or ['tcp:22', 'tcp:2222']. Throws on a malformed scope. */
export function scopeKeys(scope: PortScope | null | undefined): string[] {
  if (scope === null || scope === undefined) return [''];
  if (scope.protocol !== 'tcp' && scope.protocol !== 'udp') throw new TypeError(`port scope protocol must be tcp or udp, got ${JSON.stringify(scope.protocol)}`);
  if (!Array.isArray(scope.ports) || scope.ports.length === 0) throw new TypeError('port scope without ports');
  const ports = [...new Set(scope.ports)];
  for (const p of ports) if (!Number.isInteger(p) || p < 1 || p > 65535) throw new TypeError(`port out of range: ${String(p)}`);
  return ports.sort((a, b) => a - b).map((p) => `${scope.protocol}:${p}`);
}

function familyOf(source: string): Family {
  return source.includes(':') ? 6 : 4;
}

function setFor(source: string, key: string): string {
  const s = SETS[familyOf(source)];
  return key === '' ? s.ban : s.ports;
}

function elementText(source: string, key: string): string {
  return key === '' ? source : `${source},${key}`;
}

export function addLine(source: string, key: string, timeout: number | null): string {
  return `add ${setFor(source, key)} ${elementText(source, key)} timeout ${timeout ?? 0} -exist`;
}

export function delLine(source: string, key: string): string {
  return `del ${setFor(source, key)} ${elementText(source, key)} -exist`;
}

/** The allow list, validated and deduplicated; a /0 (which hash:net cannot hold) becomes its two /1 halves. */
export function allowEntries(cidrs: readonly string[]): Target[] {
  const out = new Map<string, Target>();
  const bad: string[] = [];
  for (const c of cidrs) {
    const t = canonicalTarget(c);
    if (t === null) {
      bad.push(c);
      continue;
    }
    const halves = t.prefixLength > 0 ? [t.text] : t.family === 4 ? ['0.0.0.0/1', '128.0.0.0/1'] : ['::/1', '8000::/1'];
    for (const h of halves) out.set(canonicalTarget(h)!.text, canonicalTarget(h)!);
  }
  rejectInvalid(bad, 'allow list');
  return [...out.values()];
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
const RETIME_SLACK_S = 5;

/** ipset enforcement; see the comment at the top of this file. */
export class IpsetEnforcer implements Enforcer {
  readonly name = 'ipset';
  private readonly ipset: NftRunnerOptions;
  private readonly ipt: Record<Family, { save: NftRunnerOptions; restore: NftRunnerOptions }>;
  private readonly chain: string;
  private readonly maxelem: number;
  private readonly denyType: DenyType;
  private readonly forward: boolean;
  private readonly checkIntervalMs: number;
  private readonly logger: EnforcerOptions['logger'];
  private readonly now: () => number;
  private readonly lostCallbacks: (() => void)[] = [];
  private allow: Target[];
  private held = new Map<string, Held>();
  private queue: Promise<unknown> = Promise.resolve();
  private timer: NodeJS.Timeout | null = null;
  private checking = false;
  private warnedMaxelem = new Set<string>();
  private readonly state: IpsetHealth;

  constructor(opts: IpsetEnforcerOptions) {
    if (opts.denyType !== 'DROP' && opts.denyType !== 'REJECT') throw new TypeError(`deny_type must be DROP or REJECT, got ${String(opts.denyType)}`);
    this.chain = opts.chain ?? DEFAULT_CHAIN;
    if (!/^[A-Za-z0-9_-]{1,28}$/.test(this.chain) || ['INPUT', 'FORWARD', 'OUTPUT', 'DOCKER-USER'].includes(this.chain)) {
      throw new TypeError(`bad chain name ${JSON.stringify(this.chain)}`);
    }
    this.maxelem = opts.maxelem ?? 1_048_576;
    if (!Number.isInteger(this.maxelem) || this.maxelem < 1 || this.maxelem > 2 ** 31) throw new TypeError(`bad maxelem ${String(opts.maxelem)}`);
    const runner = (bin: string): NftRunnerOptions => ({ nft: bin, netns: opts.netns, timeoutMs: opts.timeoutMs });
    this.ipset = runner(opts.ipset ?? 'ipset');
    const v4 = opts.iptables ?? 'iptables';
    const v6 = opts.ip6tables ?? 'ip6tables';
    this.ipt = {
      4: { save: runner(`${v4}-save`), restore: runner(`${v4}-restore`) },
      6: { save: runner(`${v6}-save`), restore: runner(`${v6}-restore`) },
    };
    this.denyType = opts.denyType;
    this.forward = opts.forward ?? false;
    this.checkIntervalMs = Math.round((opts.checkInterval ?? 5) * 1000);
    this.logger = opts.logger;
    this.now = opts.now ?? Date.now;
    this.allow = allowEntries(opts.allow ?? []);
    if (opts.onLost) this.lostCallbacks.push(opts.onLost);
    this.state = { ok: false, repairs: 0, denyType: this.denyType, lastError: 'not started' };
  }

  /** Creates what is missing (existing elements are kept: bans hold across a restart), then starts the watcher. */
  async start(): Promise<void> {
    try {
      await this.serial(async () => {
        await this.loadHeld();
        const i = await this.inspect();
        await this.ensure(i, true);
      });
    } catch (err) {
      this.markFailed(err);
      throw err;
    }
    this.markOk();
    if (this.timer === null && this.checkIntervalMs > 0) {
      this.timer = setInterval(() => void this.check(), this.checkIntervalMs);
      this.timer.unref();
    }
  }

  /** Stops the watcher; sets, chain and elements stay. */
  async stop(): Promise<void> {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    await this.queue.catch(() => {});
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
    const bad: string[] = [];
    for (const ip of ips) {
      const t = canonicalTarget(ip);
      if (t === null) bad.push(ip);
      // A /0 can never be in a hash:net set.
      else if (t.prefixLength > 0) sources.add(t.text);
    }
    rejectInvalid(bad, 'unban');
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
          else if (left === null ? w.timeout === null : w.timeout !== null && Math.abs(left - w.timeout) <= RETIME_SLACK_S) {
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
    await this.serial(() => this.loadHeld());
    return [...this.held.keys()];
  }

  /** Replaces the always-pass list: both allow sets flushed and refilled in one restore. */
  async setAllowed(cidrs: string[]): Promise<void> {
    const entries = allowEntries(cidrs);
    this.allow = entries;
    await this.apply(() => allowLines(entries));
  }

  onLost(cb: () => void): void {
    this.lostCallbacks.push(cb);
  }

  health(): IpsetHealth {
    return { ...this.state };
  }

  /** One watcher round, also callable directly: repairs what vanished and fires onLost. Resolves true when intact. */
  async check(): Promise<boolean> {
    if (this.checking) return this.state.ok;
    this.checking = true;
    try {
      const repaired = await this.serial(async () => {
        const i = await this.inspect();
        if (i.problems.length === 0) return false;
        this.logger.warn('ipset enforcement damaged behind our back; recreating it', { problems: i.problems.join('; ') });
        await this.ensure(i, false);
        return true;
      });
      if (repaired) this.lost();
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
   * Runs one `ipset restore` with the lines `build` returns, through the queue. When a set vanished (destroyed, not
   * yet noticed by the watcher), everything is repaired, the lines rebuilt and run again, and onLost fired.
   */
  private async apply(build: () => string[] | Promise<string[]>): Promise<void> {
    let repaired = false;
    try {
      await this.serial(async () => {
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
          repaired = true;
          await this.restore(await build());
        }
      });
    } catch (err) {
      this.markFailed(err);
      throw err;
    } finally {
      if (repaired) this.lost();
    }
  }

  /** `ipset restore`, one process per CHUNK_LINES lines. */
  private async restore(lines: string[]): Promise<void> {
    for (let i = 0; i < lines.length; i += CHUNK_LINES) await runNft(this.ipset, ['restore'], lines.slice(i, i + CHUNK_LINES).join('\n') + '\n');
  }

  private lost(): void {
    this.state.repairs++;
    for (const cb of this.lostCallbacks) {
      try {
        cb();
      } catch (err) {
        this.logger.error('onLost callback failed', { error: err instanceof Error ? err.message : String(err) });
      }
    }
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
    this.state.elements = elements;
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
    const { chains, rules } = parseIptablesSave(await runNft(this.ipt[fam].save, ['-t', 'filter']));
    const problems: string[] = [];
    const v = `IPv${fam}`;
    const want = chainRules(fam, this.denyType);
    const have = rules.get(this.chain) ?? [];
    if (!chains.has(this.chain)) problems.push(`${v} chain ${this.chain} is missing`);
    else if (have.length !== want.length || have.some((r, k) => r !== want[k])) problems.push(`${v} chain ${this.chain} has ${have.length} rules, not the expected ${want.length}`);
    const jump = `-j ${this.chain}`;
    const from = new Set(['INPUT']);
    if (this.forward) from.add(chains.has('DOCKER-USER') ? 'DOCKER-USER' : 'FORWARD');
    const jumpLines: string[] = [];
    for (const c of ['INPUT', 'FORWARD', 'DOCKER-USER']) {
      const n = (rules.get(c) ?? []).filter((r) => r === jump).length;
      const wanted = from.has(c) ? 1 : 0;
      if (n === wanted) continue;
      problems.push(`${v} ${c} has ${n} jumps to ${this.chain}, expected ${wanted}`);
      for (let k = 0; k < n; k++) jumpLines.push(`-D ${c} ${jump}`);
      if (wanted) jumpLines.push(`-I ${c} 1 ${jump}`);
    }
    if (problems.length === 0) return { script: null, problems };
    const lines = ['*filter', `:${this.chain} - [0:0]`, ...want.map((r) => `-A ${this.chain} ${r}`), ...jumpLines, 'COMMIT'];
    return { script: lines.join('\n') + '\n', problems };
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
        await runNft(this.ipt[fam].restore, ['-w', '--noflush'], `*filter\n:${this.chain} - [0:0]\nCOMMIT\n`).catch(() => {});
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
      if (script !== null) await runNft(this.ipt[fam].restore, ['-w', '--noflush'], script);
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
    const bad: string[] = [];
    for (const b of bans) {
      const t = canonicalTarget(b.ip);
      if (t === null) {
        bad.push(String(b.ip));
        continue;
      }
      if (t.prefixLength === 0) throw new TypeError(`cannot ban ${t.text}: an ipset hash:net set cannot hold a /0 prefix (ban ${t.family === 4 ? '0.0.0.0/1 and 128.0.0.0/1' : '::/1 and 8000::/1'} if you really mean everything)`);
      let timeout: number | null = null;
      if (b.expiresAt !== null) {
        const ms = b.expiresAt - now;
        if (!(ms > 0)) continue;
        timeout = Math.ceil(ms / 1000);
        if (timeout > MAX_TIMEOUT_S) timeout = null;
      }
      const prev = bySource.get(t.text);
      // The same source twice in one batch: the longer ban wins.
      if (prev && (prev.expiresAt === null || (b.expiresAt !== null && prev.expiresAt > b.expiresAt))) continue;
      bySource.set(t.text, { source: t.text, keys: scopeKeys(b.scope), timeout, expiresAt: b.expiresAt });
    }
    rejectInvalid(bad, 'ban');
    return [...bySource.values()];
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.queue.then(fn, fn);
    this.queue = p.catch(() => {});
    return p;
  }

  private markOk(): void {
    if (!this.state.ok && this.state.lastError !== 'not started') this.logger.info('ipset enforcement healthy again');
    this.state.ok = true;
    delete this.state.lastError;
    this.state.lastCheck = new Date().toISOString();
  }

  private markFailed(err: unknown): void {
    const msg = err instanceof Error ? err.message : String(err);
    if (this.state.ok || this.state.lastError !== msg) this.logger.error('ipset enforcement failing', { error: msg });
    this.state.ok = false;
    this.state.lastError = msg;
  }
}

function allowLines(entries: Target[]): string[] {
  return [`flush ${SETS[4].allow}`, `flush ${SETS[6].allow}`, ...entries.map((t) => `add ${SETS[t.family].allow} ${t.text} -exist`)];
}

function rejectInvalid(bad: string[], what: string): void {
  if (bad.length === 0) return;
  const shown = bad.slice(0, 3).map((b) => JSON.stringify(String(b).slice(0, 60)));
  throw new TypeError(`${what}: not an IP address or prefix, refused before running ipset: ${shown.join(', ')}${bad.length > 3 ? ` and ${bad.length - 3} more` : ''}`);
}
