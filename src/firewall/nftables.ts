import type { Enforcer, Enforcement, FirewallLogger } from './types.ts';
import { NftError, runNft, type NftRunnerOptions } from './nft-runner.ts';
import type { Target } from './target.ts';
import { BackendState, type BackendHealth } from './backend-state.ts';
import { forEachValid, sameTimeLeft, validTargets } from './ban-input.ts';
import { allowScript, collapseAllow, inspectTable, isIntact, rulesetScript, TABLE, type DenyType, type Inspection } from './nft-ruleset.ts';
import { parseNftJson, type NftJsonObject } from './nft-listing.ts';
import { heldOf, sameHeld, SetMemory, timeoutOf, type Change, type Plan } from './nft-set-memory.ts';

/*
 * The nftables backend: bans are elements of sets in one table of its own, `inet tsfilter`, each with its own
 * timeout, matched by a fixed handful of rules. The parts:
 *  - nft-ruleset.ts: the table, its sets and chains, and the start/repair transaction (why the sets are what they
 *    are, and the idioms that keep start and repair idempotent);
 *  - nft-set-memory.ts: what each source holds in the sets and the element writes (ban, unban, re-timing, nested
 *    prefixes in interval sets, which nft refuses to overlap);
 *  - nft-listing.ts: reading elements back from `nft -j list table`.
 *
 * What each source holds (whole, or which ports) is kept in memory, filled from a listing of the sets before the
 * first change on a table that already existed, and by elements()/reconcile(); unban needs it to name every element.
 * An address source missing from a later listing stays in memory (a dump of a big set can come back short), so its
 * unban still names its port elements; add+delete of an element that is gone is harmless.
 */

/** Distinct sources per transaction: keeps one nft process under ~60 MB; 100,000 bans are 4 transactions. */
export const CHUNK = 25_000;

export type NftLogger = FirewallLogger;

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

export interface NftablesHealth extends BackendHealth {
  /** Banned sources (addresses and prefixes) in the sets at the last listing (elements(), or every COUNT_EVERY_MS). */
  elements?: number;
  /** How many times the watcher found the table damaged and repaired it. */
  repairs: number;
  denyType: DenyType;
  forward: boolean;
  /** Entries in the allow sets (ignored_ips, nested ones merged). */
  allowed: number;
}

const NO_SUCH = /No such file or directory/;
const COUNT_EVERY_MS = 60_000;

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
  private readonly memory: SetMemory;
  /** Whether memory describes the sets; if not, the next change lists them first. */
  private loaded = false;
  /** Every nft command goes through its queue: a repair never interleaves with a ban. */
  private readonly state: BackendState<NftablesHealth>;
  private lastCount = 0;

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
    this.memory = new SetMemory(this.now);
    const health = { ok: false, repairs: 0, denyType: this.denyType, forward: this.forward, allowed: this.allow.length, lastError: 'not started' };
    this.state = new BackendState('nftables', opts.logger, health, { onLost: opts.onLost });
  }

  /** Creates or repairs the table in one transaction (ban elements kept, allow sets rewritten), then starts the watcher. */
  async start(): Promise<void> {
    await this.state.serial(async () => {
      const before = await this.inspect();
      // The allow sets are always rewritten: ignored_ips may have changed while the daemon was down.
      await this.ensure(before, true);
    });
    this.state.started(this.checkIntervalMs, () => this.check());
  }

  /** Stops the watcher. The table and its elements stay: bans hold while the daemon is down. */
  stop(): Promise<void> {
    return this.state.stop();
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
    for (const t of validTargets(ips, 'nft')) by.set(t.text, { t, held: null, timeout: null, expiresAt: null });
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
    const left = await this.state.serial(() => this.load());
    const todo: Change[] = [];
    let added = 0;
    for (const c of want) {
      const held = this.memory.sources.get(c.t.text);
      if (held === undefined || !left.has(c.t.text)) {
        // Missing: added (a plain add, unless memory still knows the source from before: add+delete+add).
        added++;
        todo.push(c);
        continue;
      }
      if (!sameTimeLeft(left.get(c.t.text), c.timeout) || !sameHeld(held, c.held!)) todo.push(c);
    }
    await this.apply(todo);
    return { added, retimed: todo.length - added, unchanged: want.length - todo.length };
  }

  /** The sources in the ban sets, canonical: addresses and prefixes ("198.51.100.0/24"), each once. */
  async elements(): Promise<string[]> {
    return [...(await this.state.serial(() => this.load())).keys()];
  }

  /** Replaces the allow sets (settings.ignored_ips changed). Throws on an invalid entry before running nft. */
  async setAllowed(cidrs: string[]): Promise<void> {
    const allow = collapseAllow(cidrs);
    // Set first: a repair during this write recreates the table with the new list.
    this.allow = allow;
    this.state.health.allowed = allow.length;
    await this.write(() => ({ pre: '', main: allowScript(allow) }), false);
  }

  /** Registers a callback for a repaired table (in addition to the constructor's onLost). */
  onLost(cb: () => void): void {
    this.state.onLost(cb);
  }

  health(): NftablesHealth {
    return { ...this.state.health };
  }

  /**
   * One watcher round, also callable directly: inspects the table (`nft -t`, without set contents) and, if anything
   * is missing or altered, repairs it and calls onLost. Resolves true when the table is intact (possibly after repair).
   */
  async check(): Promise<boolean> {
    return this.state.check(
      () =>
        this.state.serial(async () => {
          const i = await this.inspect();
          if (isIntact(i)) return false;
          this.logger.warn('nftables table damaged behind our back; recreating it', { problems: i.problems.join('; ') });
          await this.ensure(i);
          return true;
        }),
      async () => {
        if (Date.now() - this.lastCount >= COUNT_EVERY_MS) await this.state.serial(() => this.load()).catch(() => {});
      },
    );
  }

  private async apply(changes: Change[]): Promise<void> {
    for (let i = 0; i < changes.length; i += CHUNK) {
      const chunk = changes.slice(i, i + CHUNK);
      await this.write(() => this.memory.plan(chunk), true);
    }
  }

  /**
   * Plans (from memory, listed first if stale) and runs one write through the queue; a failure is recorded in
   * health() and thrown. When it fails because the table or a set vanished (flushed ruleset, not yet noticed by the
   * watcher), the table is repaired, the write planned again and retried once, and onLost fired: the ban lands now
   * instead of at the next retry.
   */
  private async write(make: () => Plan, needsMemory: boolean): Promise<void> {
    const once = async () => {
      if (needsMemory && !this.loaded) await this.load();
      const p = make();
      if (p.pre !== '') await runNft(this.runner, ['-f', '-'], p.pre);
      if (p.main !== '') await runNft(this.runner, ['-f', '-'], p.main);
    };
    await this.state.batch(async (repaired) => {
      try {
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
          repaired();
          await once();
        }
      } catch (err) {
        // Also when the repair or the retry failed: a repair may have marked memory fresh.
        this.loaded = false;
        throw err;
      }
    });
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
      this.memory.clear();
      this.loaded = true;
    } else this.loaded = false;
    const after = await this.inspect();
    if (!isIntact(after)) throw new Error(`nftables table still wrong after repair: ${after.problems.join('; ')}`);
  }

  /** Lists every ban set (`nft -j list table`) into memory; returns each source's seconds left (see SetMemory.reload). */
  private async load(): Promise<Map<string, number | null>> {
    let objs: NftJsonObject[];
    try {
      objs = parseNftJson(await runNft(this.runner, ['-j', 'list', 'table', 'inet', TABLE]));
    } catch (err) {
      if (err instanceof NftError && NO_SUCH.test(err.stderr)) objs = [];
      else throw err;
    }
    const left = this.memory.reload(objs);
    this.loaded = true;
    this.state.health.elements = left.size;
    this.lastCount = Date.now();
    return left;
  }

  /** Validated, deduplicated changes with their timeouts; expired bans dropped. Throws on an invalid source or scope. */
  private toChanges(bans: Enforcement[]): Change[] {
    const now = this.now();
    const by = new Map<string, Change>();
    const badScope: string[] = [];
    forEachValid(bans, (b) => b.ip, 'nft', (t, b) => {
      const held = heldOf(b.scope);
      if (held === null) {
        badScope.push(`${t.text} ${JSON.stringify(b.scope).slice(0, 80)}`);
        return;
      }
      const timeout = timeoutOf(b.expiresAt, now);
      if (timeout === undefined) return;
      const prev = by.get(t.text);
      // The same source twice in one batch: the longer ban wins.
      if (prev && (prev.timeout === null || (timeout !== null && prev.timeout >= timeout))) return;
      by.set(t.text, { t, held, timeout, expiresAt: b.expiresAt });
    });
    if (badScope.length > 0) throw new TypeError(`invalid port scope, refused before running nft: ${badScope.slice(0, 3).join(', ')}`);
    return [...by.values()];
  }
}
