import type { Enforcer, Enforcement, EnforcerOptions, PortScope } from './types.ts';
import { canonicalTarget, type Target } from './target.ts';
import { BackendState, errorText, type BackendHealth } from './backend-state.ts';
import { forEachValid, validTargets } from './ban-input.ts';
import { detectVariant, filterScript, jumpCounts, readFilter, restoreFilter, xtablesBins, type Family, type FilterTable, type Variant, type XtablesBins } from './xtables.ts';

/*
 * The iptables backend. Per family (iptables for IPv4, ip6tables for IPv6), table filter only:
 *
 *   -A INPUT -j TSFILTER                       inserted at position 1 (only when INPUT has no such jump yet)
 *   -A DOCKER-USER -j TSFILTER                 with forward, when DOCKER-USER exists (else from FORWARD): Docker
 *                                              re-inserts its own FORWARD jumps at the top when it restarts
 *   -A TSFILTER -s 192.0.2.9/32 -m comment --comment tsfilter-allow -j RETURN         one per allow (ignored) entry
 *   -A TSFILTER -s 192.0.2.7/32 -m comment --comment tsfilter -j DROP                 one per ban
 *   -A TSFILTER -s 198.51.100.0/24 -p tcp -m multiport --dports 22,443 -m comment --comment tsfilter -j DROP
 *
 * deny_type REJECT: a TCP-scoped ban is `-j REJECT --reject-with tcp-reset`, a UDP-scoped one answers
 * icmp(6)-port-unreachable; an unscoped ban is two rules, TCP gets a reset and everything else port-unreachable
 * (iptables' own REJECT default, and what PyFilter's blacklist files hold). Rules are written in iptables-save's own
 * spelling, so the rules read back from `iptables-save` compare equal to the ones we would write.
 *
 * Every change is one `<iptables>-restore --noflush` per family (stdin `*filter ... COMMIT`, applied atomically),
 * never a process per address. iptables has no per-rule timeout: the daemon lifts expired bans with unban().
 * Measured on iptables 1.8.9, kernel 6.18, 2 cores (see test/firewall-iptables-packets.test.ts for the 100k run):
 *  - appending 100,000 rules: 1.2 s / 170 MB (nf_tables variant), 0.4 s / 110 MB (legacy); appending to a big chain
 *    stays cheap (nf_tables does not fetch the chain for -A);
 *  - `-D` by rule spec is what hurts on nf_tables: restore first fetches the whole chain (3.4 s for 100,000 rules),
 *    then each delete scans it (about 0.45 us per rule in the chain): 1,000 deletes from 10,000 rules 4.4 s, from
 *    100,000 rules 48 s. Legacy: 100 deletes from 100,000 rules 0.3 s, 1,000 1.1 s;
 *  - rebuilding the chain (`-F` then re-adding the survivors, one restore, still atomic) costs about 12 us per rule
 *    on nf_tables (1.2 s for 100,000), 5.5 us on legacy. preferRebuild() picks the cheaper one from these numbers;
 *  - `iptables-save -t filter` of 100,000 rules: 3.4 s on nf_tables, 0.2 s on legacy. The watcher uses it, so it
 *    spaces its checks to at least 10 times the last check's duration (a check never takes more than ~10% of a core);
 *  - with --noflush, a `:CHAIN - [0:0]` line flushes an existing chain: it is only written when the chain is missing.
 */

export const DEFAULT_CHAIN = 'TSFILTER';
/** The comment of every ban rule: how our rules are recognised in iptables-save output. */
export const BAN_COMMENT = 'tsfilter';
export const ALLOW_COMMENT = 'tsfilter-allow';
/** Rule lines per restore when appending; a rebuild is always one restore (it must stay atomic). */
export const CHUNK = 100_000;
/** iptables' multiport match takes at most 15 ports. */
const MULTIPORT_MAX = 15;
const BUILTIN = new Set(['INPUT', 'OUTPUT', 'FORWARD', 'PREROUTING', 'POSTROUTING', 'ACCEPT', 'DROP', 'REJECT', 'RETURN', 'QUEUE', 'LOG', 'DOCKER-USER']);

export type { Variant } from './xtables.ts';

export interface IptablesEnforcerOptions extends EnforcerOptions {
  /** The iptables binary; `<iptables>-restore` and `<iptables>-save` are derived by suffix. Default "iptables". */
  iptables?: string;
  ip6tables?: string;
  /** Default "TSFILTER". */
  chain?: string;
}

export interface IptablesHealth extends BackendHealth {
  /** Rules in our chains (both families): allow rules, ban rules and any foreign rule found there. */
  rules: number;
  /** How many times the watcher (or a failed batch) found the chain, a jump or rules missing and recreated them. */
  repairs: number;
  variant?: Variant;
}

/** The rule specs (after `-A <chain> `) of one ban, in iptables-save's spelling. */
export function banSpecs(t: Target, denyType: 'DROP' | 'REJECT', scope?: PortScope | null): string[] {
  const src = `-s ${t.address}/${t.prefixLength}`;
  const tag = `-m comment --comment ${BAN_COMMENT}`;
  const unreachable = `REJECT --reject-with ${t.family === 4 ? 'icmp-port-unreachable' : 'icmp6-port-unreachable'}`;
  if (!scope || scope.ports.length === 0) {
    if (denyType === 'DROP') return [`${src} ${tag} -j DROP`];
    return [`${src} -p tcp ${tag} -j REJECT --reject-with tcp-reset`, `${src} ${tag} -j ${unreachable}`];
  }
  const jump = denyType === 'DROP' ? 'DROP' : scope.protocol === 'tcp' ? 'REJECT --reject-with tcp-reset' : unreachable;
  const out: string[] = [];
  for (let i = 0; i < scope.ports.length; i += MULTIPORT_MAX) {
    const ports = scope.ports.slice(i, i + MULTIPORT_MAX).join(',');
    out.push(`${src} -p ${scope.protocol} -m multiport --dports ${ports} ${tag} -j ${jump}`);
  }
  return out;
}

export function allowSpec(t: Target): string {
  return `-s ${t.address}/${t.prefixLength} -m comment --comment ${ALLOW_COMMENT} -j RETURN`;
}

/**
 * Whether flushing the chain and re-adding the survivors (one restore) is cheaper than `deletes` `-D` lines against a
 * chain of `rules` rules; from the measurements at the top of this file.
 */
export function preferRebuild(variant: Variant, rules: number, deletes: number): boolean {
  if (deletes === 0) return false;
  if (deletes * 2 >= rules) return true;
  if (variant === 'legacy') return deletes > 400;
  return rules > 20_000 || deletes > 25;
}

/** What `iptables-save -t filter` says about our chain (its jumps: xtables.ts's jumpCounts()). */
export interface ChainState {
  exists: boolean;
  /** Every rule of the chain, in order (specs after `-A <chain> `). */
  rules: string[];
  allow: string[];
  /** Canonical source -> its ban rule specs (normalised). */
  bans: Map<string, string[]>;
  /** Rules in our chain that are neither allow nor ban rules: kept on a rebuild. */
  foreign: string[];
}

const BAN_RULE = new RegExp(`^-s (\\S+) (.*-m comment --comment ${BAN_COMMENT} -j (?:DROP|REJECT)(?: --reject-with [a-z0-9-]+)?)$`);
const ALLOW_RULE = new RegExp(`^-s (\\S+) -m comment --comment ${ALLOW_COMMENT} -j RETURN$`);

export function chainState(table: FilterTable, chain: string): ChainState {
  const st: ChainState = { exists: table.chains.has(chain), rules: table.rules.get(chain) ?? [], allow: [], bans: new Map(), foreign: [] };
  for (const spec of st.rules) {
    const a = ALLOW_RULE.exec(spec);
    const b = a ? null : BAN_RULE.exec(spec);
    const t = a ? canonicalTarget(a[1]) : b ? canonicalTarget(b[1]) : null;
    if (a && t) st.allow.push(allowSpec(t));
    else if (b && t) {
      // Normalised so that the same rule always compares equal to banSpecs() output.
      const list = st.bans.get(t.text) ?? [];
      list.push(`-s ${t.address}/${t.prefixLength} ${b[2]}`);
      st.bans.set(t.text, list);
    } else st.foreign.push(spec);
  }
  return st;
}

interface FamilyState {
  family: Family;
  bins: XtablesBins;
  variant: Variant;
  /** Installed ban rules: canonical source -> specs. */
  bans: Map<string, string[]>;
  foreign: string[];
  allow: string[];
  /** What allow rules the chain holds, as far as we know (setAllowed changes `allow` first). */
  installedAllow: string[];
}

/** A restore script and what to record once it succeeded. */
interface Step {
  script: string;
  commit: () => void;
}

const sameList = (a: readonly string[], b: readonly string[] | undefined): boolean => b !== undefined && a.length === b.length && a.every((x, i) => x === b[i]);

/** iptables enforcement in a chain of its own; see the comment at the top of this file. */
export class IptablesEnforcer implements Enforcer {
  readonly name = 'iptables';
  private readonly chain: string;
  private readonly denyType: 'DROP' | 'REJECT';
  private readonly forward: boolean;
  private readonly intervalMs: number;
  private readonly now: () => number;
  private readonly fams: Record<Family, FamilyState>;
  private started = false;
  private readonly state: BackendState<IptablesHealth>;

  constructor(opts: IptablesEnforcerOptions) {
    if (opts.denyType !== 'DROP' && opts.denyType !== 'REJECT') throw new TypeError(`deny_type must be DROP or REJECT, got ${String(opts.denyType)}`);
    this.chain = opts.chain ?? DEFAULT_CHAIN;
    if (!/^[A-Za-z0-9_-]{1,28}$/.test(this.chain) || BUILTIN.has(this.chain.toUpperCase())) throw new TypeError(`bad iptables chain name ${JSON.stringify(this.chain)}`);
    this.denyType = opts.denyType;
    this.forward = opts.forward === true;
    this.intervalMs = Math.round((opts.checkInterval ?? 0) * 1000);
    this.now = opts.now ?? Date.now;
    const allow = allowSpecs(opts.allow ?? []);
    const bins = xtablesBins(opts);
    const fam = (family: Family): FamilyState => ({ family, bins: bins[family], variant: 'nf_tables', bans: new Map(), foreign: [], allow: allow[family], installedAllow: [] });
    this.fams = { 4: fam(4), 6: fam(6) };
    // ensure() counts a repair per family it fixed, not one per onLost.
    this.state = new BackendState('iptables', opts.logger, { ok: false, rules: 0, repairs: 0, lastError: 'not started' }, { onLost: opts.onLost, countRepairs: false });
  }

  /** Creates the chain, its jumps and allow rules where missing; ban rules already there are kept and adopted. */
  async start(): Promise<void> {
    await this.state.batch(async () => {
      for (const f of this.families()) {
        f.variant = await detectVariant(f.bins);
        await this.ensure(f);
      }
    });
    this.state.health.variant = this.fams[4].variant;
    this.started = true;
    // Spaced to at least 10x the last check's duration: iptables-save of a big chain is slow.
    this.state.started(this.intervalMs, () => this.check(), 10);
  }

  /** Stops the watcher; the chain and its rules stay, so bans hold while the daemon is down. */
  stop(): Promise<void> {
    return this.state.stop();
  }

  /** Adds a rule per new source, replaces the rules of a source banned with another scope. Throws on a bad source. */
  async ban(bans: Enforcement[]): Promise<void> {
    await this.applyBans(bans);
  }

  /** Cheap for sources already present with the same rules: only missing or changed ones reach iptables. */
  async reconcile(active: Enforcement[]): Promise<{ added: number; replaced: number; unchanged: number }> {
    return this.applyBans(active);
  }

  /** Removes every rule of these sources; an absent source is skipped (its -D would fail the whole restore). */
  async unban(ips: string[]): Promise<void> {
    const gone = new Set(validTargets(ips, 'iptables').map((t) => t.text));
    await this.withFamilies((f) => {
      const victims = [...gone].filter((s) => f.bans.has(s));
      const specs = victims.flatMap((s) => f.bans.get(s)!);
      if (specs.length === 0) return [];
      const commit = () => victims.forEach((s) => f.bans.delete(s));
      if (preferRebuild(f.variant, this.ruleCount(f), specs.length)) {
        const keep = new Map([...f.bans].filter(([s]) => !gone.has(s)));
        return [{ script: this.rebuildScript(f, keep), commit }];
      }
      // preferRebuild() caps -D batches at a few hundred lines: no chunking needed.
      return [{ script: filterScript(specs.map((s) => `-D ${this.chain} ${s}`)), commit }];
    });
  }

  /** Replaces the RETURN rules for always-pass sources (one restore per family whose list changed). */
  async setAllowed(cidrs: string[]): Promise<void> {
    const allow = allowSpecs(cidrs);
    await this.withFamilies((f) => {
      if (sameList(allow[f.family], f.installedAllow)) {
        f.allow = allow[f.family];
        return [];
      }
      return [{ script: this.rebuildScript(f, f.bans, allow[f.family]), commit: () => ((f.allow = allow[f.family]), (f.installedAllow = allow[f.family])) }];
    });
  }

  /** Sources with ban rules in our chains (both families), read from iptables-save. */
  async elements(): Promise<string[]> {
    return this.state.serial(async () => {
      const out: string[] = [];
      for (const f of this.families()) {
        const st = chainState(await readFilter(f.bins), this.chain);
        for (const [s, specs] of st.bans) if (!f.bans.has(s)) f.bans.set(s, specs);
        out.push(...st.bans.keys());
      }
      return out;
    });
  }

  onLost(cb: () => void): void {
    this.state.onLost(cb);
  }

  health(): IptablesHealth {
    let rules = 0;
    for (const f of this.families()) rules += this.ruleCount(f);
    return { ...this.state.health, rules };
  }

  /**
   * One watcher round, also callable directly: reads both families with iptables-save and recreates a missing chain,
   * jump, allow rule or ban rule (from what this enforcer installed). Resolves true when all is intact (possibly
   * after repair); fires onLost when something had vanished.
   */
  async check(): Promise<boolean> {
    return this.state.check(() =>
      this.state.serial(async () => {
        let lost = false;
        for (const f of this.families()) if (await this.ensure(f)) lost = true;
        return lost;
      }),
    );
  }

  private async applyBans(bans: Enforcement[]): Promise<{ added: number; replaced: number; unchanged: number }> {
    const want = this.wanted(bans);
    const per = new Map<Family, { added: number; replaced: number; unchanged: number }>();
    await this.withFamilies((f) => {
      // Recomputed from scratch when a failed batch is retried.
      const counts = { added: 0, replaced: 0, unchanged: 0 };
      per.set(f.family, counts);
      const add: [string, string[]][] = [];
      const del: string[] = [];
      for (const [src, w] of want) {
        if (w.family !== f.family) continue;
        const cur = f.bans.get(src);
        if (sameList(w.specs, cur)) counts.unchanged++;
        else {
          add.push([src, w.specs]);
          if (cur) {
            del.push(...cur);
            counts.replaced++;
          } else counts.added++;
        }
      }
      if (add.length === 0) return [];
      if (preferRebuild(f.variant, this.ruleCount(f), del.length)) {
        const next = new Map(f.bans);
        for (const [s, specs] of add) next.set(s, specs);
        return [{ script: this.rebuildScript(f, next), commit: () => add.forEach(([s, specs]) => f.bans.set(s, specs)) }];
      }
      // Deletes go first, in the same restore as the appends of the first chunk (a scope change is atomic).
      const steps: Step[] = [];
      let lines = del.map((s) => `-D ${this.chain} ${s}`);
      let batch: [string, string[]][] = [];
      const flush = () => {
        const done = batch;
        steps.push({ script: filterScript(lines), commit: () => done.forEach(([s, specs]) => f.bans.set(s, specs)) });
        lines = [];
        batch = [];
      };
      for (const entry of add) {
        if (lines.length > 0 && lines.length + entry[1].length > CHUNK) flush();
        batch.push(entry);
        for (const s of entry[1]) lines.push(`-A ${this.chain} ${s}`);
      }
      flush();
      return steps;
    });
    const total = { added: 0, replaced: 0, unchanged: 0 };
    for (const c of per.values()) (total.added += c.added), (total.replaced += c.replaced), (total.unchanged += c.unchanged);
    return total;
  }

  /** Validated, deduplicated (last wins) bans with their rule specs; already expired bans are left out. */
  private wanted(bans: Enforcement[]): Map<string, { family: Family; specs: string[] }> {
    const now = this.now();
    const out = new Map<string, { family: Family; specs: string[] }>();
    forEachValid(bans, (b) => b.ip, 'iptables', (t, b) => {
      if (b.expiresAt === null || b.expiresAt > now) out.set(t.text, { family: t.family, specs: banSpecs(t, this.denyType, b.scope) });
    });
    return out;
  }

  /**
   * Runs each family's steps in the queue. When a restore fails, the state may have changed behind our back (chain
   * flushed or deleted, a rule removed by hand, so a -D has nothing to match): the family is read again and repaired,
   * and its steps recomputed and run once more. The error (naming the command and iptables' message) is thrown when
   * the retry fails too.
   */
  private async withFamilies(plan: (f: FamilyState) => Step[]): Promise<void> {
    await this.state.batch(async (repaired) => {
      for (const f of this.families()) {
        try {
          for (const step of plan(f)) {
            await restoreFilter(f.bins, step.script);
            step.commit();
          }
        } catch (err) {
          this.state.logger.warn('iptables batch failed; re-reading the chain and retrying once', { family: f.family, error: errorText(err) });
          if (await this.ensure(f)) repaired();
          for (const step of plan(f)) {
            await restoreFilter(f.bins, step.script);
            step.commit();
          }
        }
      }
      if (!this.state.health.ok && this.started) this.state.markOk();
    });
  }

  /**
   * Reads the family with iptables-save and writes what is missing in one restore. Resolves true when something we
   * had installed (chain, jump, allow or ban rules) had vanished.
   */
  private async ensure(f: FamilyState): Promise<boolean> {
    const table = await readFilter(f.bins);
    const st = chainState(table, this.chain);
    const problems: string[] = [];
    const lines: string[] = [];
    if (!st.exists) {
      problems.push(`chain ${this.chain} is missing`);
      lines.push(`:${this.chain} - [0:0]`);
    }
    // A jump left by an earlier configuration (forward off, or Docker started since) is removed, not a loss.
    const stale: string[] = [];
    for (const j of jumpCounts(table, this.chain, this.forward)) {
      if (j.want === 1 && j.have === 0) {
        problems.push(`the ${j.from} jump is missing`);
        lines.push(`-I ${j.from} 1 -j ${this.chain}`);
      } else if (j.want === 0 && j.have > 0) stale.push(`-D ${j.from} -j ${this.chain}`);
    }
    const missing = [...f.bans].filter(([s, specs]) => !sameList(specs, st.bans.get(s)));
    if (missing.length > 0) problems.push(`${missing.length} ban source(s) lost their rules`);
    const allowOk = sameList(f.allow, st.rules.slice(0, f.allow.length)) && st.allow.length === f.allow.length;
    if (!allowOk) problems.push('allow rules missing or out of place');

    const merged = new Map(st.bans);
    for (const [s, specs] of f.bans) merged.set(s, specs);
    if (!allowOk || missing.some(([s]) => st.bans.has(s))) {
      // Rebuilt from what is there plus what we had: allow rules first, ban rules of a changed source replaced.
      lines.push(...this.rebuildLines({ ...f, foreign: st.foreign }, merged, f.allow, st.exists));
    } else {
      for (const [, specs] of missing) for (const s of specs) lines.push(`-A ${this.chain} ${s}`);
    }
    lines.push(...stale);
    if (lines.length > 0) await restoreFilter(f.bins, filterScript(lines));
    f.bans = merged;
    f.foreign = st.foreign;
    f.installedAllow = f.allow;
    if (problems.length === 0) return false;
    // Before start() completed nothing was installed by us: creating the chain is not a loss.
    const hadState = this.started;
    if (hadState) {
      this.state.health.repairs++;
      this.state.logger.warn('iptables state damaged behind our back; recreated it', { family: f.family, problems: problems.join('; ') });
    }
    return hadState;
  }

  private rebuildScript(f: FamilyState, bans: Map<string, string[]>, allow = f.allow): string {
    return filterScript(this.rebuildLines(f, bans, allow, true));
  }

  /** Flush (when the chain exists) and re-add, in one restore: atomic, so no packet sees a half-built chain. */
  private rebuildLines(f: Pick<FamilyState, 'foreign'>, bans: Map<string, string[]>, allow: string[], exists: boolean): string[] {
    const lines = exists ? [`-F ${this.chain}`] : [];
    for (const s of allow) lines.push(`-A ${this.chain} ${s}`);
    for (const s of f.foreign) lines.push(`-A ${this.chain} ${s}`);
    for (const specs of bans.values()) for (const s of specs) lines.push(`-A ${this.chain} ${s}`);
    return lines;
  }

  private ruleCount(f: FamilyState): number {
    let n = f.installedAllow.length + f.foreign.length;
    for (const specs of f.bans.values()) n += specs.length;
    return n;
  }

  private families(): FamilyState[] {
    return [this.fams[4], this.fams[6]];
  }
}

function allowSpecs(cidrs: string[]): Record<Family, string[]> {
  const out: Record<Family, string[]> = { 4: [], 6: [] };
  const seen = new Set<string>();
  for (const t of validTargets(cidrs, 'iptables')) {
    if (seen.has(t.text)) continue;
    seen.add(t.text);
    out[t.family].push(allowSpec(t));
  }
  return out;
}
