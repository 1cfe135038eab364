import type { Match } from '../rules/types.ts';

/** The detector's verdict that an address has earned a ban. */
export interface BanDecision {
  ip: string;
  rule: string;
  /** Time of the line that tipped it over, ms since the epoch. */
  time: number;
  /** How many failures counted towards this ban (1 for an instant ban). */
  failures: number;
  instant: boolean;
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
