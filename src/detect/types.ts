import type { Match } from '../rules/types.ts';
import type { CounterState } from '../store/types.ts';

/** The detector's verdict that an address has earned a ban. */
export interface BanDecision {
  ip: string;
  rule: string;
  /** Time of the line that tipped it over, ms since the epoch. */
  time: number;
  /** How many failures counted towards this ban (1 for an instant ban). */
  failures: number;
  instant: boolean;
  /** The threshold this address had when it differs from the rule's (a country policy's number). */
  limit?: number;
  /** The raw log lines that counted (the most recent ones, at most `MAX_EVIDENCE_LINES`). */
  lines: string[];
}

export const MAX_EVIDENCE_LINES = 20;

/** Counting policy for one rule. */
export interface CountingPolicy {
  /** PyFilter's threshold: see `mode`. */
  failedAttempts: number;
  /**
   * 'gap': PyFilter's counting. A failure within `requestTime` s of the previous one adds one; a later one only
   *   updates the time; the ban comes when the count reaches `failedAttempts` (so failedAttempts + 1 failures).
   * 'window': `failedAttempts` failures within the last `findTime` s ban (fail2ban's maxretry/findtime).
   */
  mode: 'gap' | 'window';
  requestTime: number;
  findTime: number;
}

export interface Detector {
  /** Feed one match; returns a decision when this match earns a ban. */
  observe(m: Match): BanDecision | null;
  /** Number of (rule, ip) entries currently tracked. */
  size(): number;
  /** Forget an address everywhere (after a ban or an unban). */
  forget(ip: string): void;
}

/**
 * Evidence lines longer than this are cut before the detector keeps them. Lines may be up to 8 KiB and attackers
 * choose their text (user names, URLs); without a cut, maxTracked × lines per entry × 8 KiB could reach gigabytes.
 */
export const MAX_EVIDENCE_LINE_CHARS = 512;

/** PyFilter's defaults: six failures, each within 5 s of the previous one. */
export const DEFAULT_POLICY: Readonly<CountingPolicy> = Object.freeze({
  failedAttempts: 5,
  mode: 'gap',
  requestTime: 5,
  findTime: 600,
});

/** Counter changes since the last `dirty()` call, in the shape `Store.saveCounters` takes. */
export interface DirtyCounters {
  /** Entries created or changed (upsert). */
  changed: CounterState[];
  /** Entries that were persisted before and are gone now (delete). Disjoint from `changed`. */
  removed: { rule: string; ip: string }[];
}

export interface DetectorStats {
  /** (rule, ip) entries tracked now; never above maxTracked. */
  size: number;
  /** Entries dropped because the maxTracked cap was reached (least recently used first). */
  evictions: number;
  /** Entries dropped because they were idle for forgetAfter (or, in window mode, all their failures left findTime). */
  expired: number;
  /** Newest event time seen, ms since the epoch (-Infinity before the first event). */
  watermark: number;
}

/** The detector with bounded memory, persistence and statistics. */
export interface TrackingDetector extends Detector {
  /** Changes since the previous call; marks them clean. */
  dirty(): DirtyCounters;
  /**
   * Restores counters saved by `dirty()` (at start, before any observe). States of rules that are not configured,
   * of a different counting mode than the rule has now, malformed or already idle are skipped. Returns how many
   * were loaded.
   */
  load(states: readonly CounterState[]): number;
  /** Full scan dropping idle entries; `now` (ms) first advances the watermark, e.g. from a timer when logs are quiet. */
  sweep(now?: number): number;
  stats(): DetectorStats;
  /** Same as stats().evictions. */
  readonly evictions: number;
}
