import { runNft, type NftRunnerOptions } from './nft-runner.ts';

/*
 * What the iptables and ipset backends share about iptables itself: both keep a chain of their own in table filter,
 * jumped to from INPUT (and, with forward, from DOCKER-USER when Docker made it, else FORWARD), read it back with
 * `<iptables>-save -t filter` and change it with one `<iptables>-restore --noflush` per family (atomic).
 */

export type Family = 4 | 6;
export type Variant = 'nf_tables' | 'legacy';

/** One family's binaries. */
export interface XtablesBins {
  family: Family;
  /** iptables or ip6tables itself (or iptables-legacy, a wrapper...). */
  main: NftRunnerOptions;
  save: NftRunnerOptions;
  restore: NftRunnerOptions;
}

export interface XtablesOptions {
  /** Default "iptables"; `<iptables>-restore` and `<iptables>-save` are derived by suffix. */
  iptables?: string;
  /** Default "ip6tables". */
  ip6tables?: string;
  netns?: string;
  timeoutMs?: number;
}

/** -save and -restore by suffix: "iptables-legacy" (or a wrapper's path) brings its own pair. */
export function xtablesBins(opts: XtablesOptions): Record<Family, XtablesBins> {
  const runner = (bin: string): NftRunnerOptions => ({ nft: bin, netns: opts.netns, timeoutMs: opts.timeoutMs });
  const bins = (family: Family, bin: string): XtablesBins => ({ family, main: runner(bin), save: runner(`${bin}-save`), restore: runner(`${bin}-restore`) });
  return { 4: bins(4, opts.iptables ?? 'iptables'), 6: bins(6, opts.ip6tables ?? 'ip6tables') };
}

/** The filter table as iptables-save prints it: chain names and each chain's rules (without "-A CHAIN "). */
export interface FilterTable {
  chains: Set<string>;
  rules: Map<string, string[]>;
}

export function parseFilterTable(out: string): FilterTable {
  const chains = new Set<string>();
  const rules = new Map<string, string[]>();
  let inFilter = false;
  for (const raw of out.split('\n')) {
    const line = raw.trimEnd();
    if (line.startsWith('*')) inFilter = line === '*filter';
    if (!inFilter) continue;
    const c = /^:(\S+) /.exec(line);
    if (c) chains.add(c[1]!);
    const r = /^-A (\S+) (.*)$/.exec(line);
    if (r) {
      const list = rules.get(r[1]!) ?? [];
      list.push(r[2]!);
      rules.set(r[1]!, list);
    }
  }
  return { chains, rules };
}

/** The raw `<iptables>-save -t filter` output. */
export function saveFilter(bins: XtablesBins): Promise<string> {
  return runNft(bins.save, ['-t', 'filter']);
}

export async function readFilter(bins: XtablesBins): Promise<FilterTable> {
  return parseFilterTable(await saveFilter(bins));
}

/** A restore script for table filter: applied atomically, all or nothing. */
export function filterScript(lines: string[]): string {
  return `*filter\n${lines.join('\n')}\nCOMMIT\n`;
}

/** --wait: with legacy iptables, another tool (Docker, a package script) may hold the xtables lock for a moment. */
export const RESTORE_FLAGS: readonly string[] = ['--noflush', '--wait', '10'];

export function restoreFilter(bins: XtablesBins, script: string, flags: readonly string[] = RESTORE_FLAGS): Promise<string> {
  return runNft(bins.restore, [...flags], script);
}

/** Which variant the binary is: their costs differ (see iptables.ts). */
export async function detectVariant(bins: XtablesBins): Promise<Variant> {
  return /legacy/.test(await runNft(bins.main, ['-V'])) ? 'legacy' : 'nf_tables';
}

/** The built-in (and Docker's) chains that may jump to ours. */
export const HOOK_CHAINS = ['INPUT', 'FORWARD', 'DOCKER-USER'] as const;
export type HookChain = (typeof HOOK_CHAINS)[number];

/**
 * For each hook chain: how many `-j <chain>` rules it has and how many it should have. One from INPUT; with
 * forward, one from DOCKER-USER when it exists (Docker re-inserts its own FORWARD jumps at the top when it restarts,
 * so a jump from FORWARD could end up behind them), else from FORWARD.
 */
export function jumpCounts(t: FilterTable, chain: string, forward: boolean): { from: HookChain; have: number; want: 0 | 1 }[] {
  const jump = `-j ${chain}`;
  const from = new Set<HookChain>(['INPUT']);
  if (forward) from.add(t.chains.has('DOCKER-USER') ? 'DOCKER-USER' : 'FORWARD');
  return HOOK_CHAINS.map((c) => ({ from: c, have: (t.rules.get(c) ?? []).filter((r) => r === jump).length, want: from.has(c) ? 1 : 0 }));
}
