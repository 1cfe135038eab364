/** The longest ban a timestamp can hold safely (JavaScript dates end in the year 275760): 100 years. */
export const MAX_BAN_SECONDS = 3_153_600_000;

/**
 * How long a new ban lasts, in seconds, or null for permanent. `base` <= 0 is permanent (PyFilter's behaviour).
 * Repeat offenders escalate: the n-th ban of an address lasts base * factor^(n-1), capped at `max`.
 */
export function banDuration(base: number, previousBans: number, factor = 1, max = MAX_BAN_SECONDS): number | null {
  if (!(base > 0)) return null;
  const cap = Math.min(max > 0 ? max : MAX_BAN_SECONDS, MAX_BAN_SECONDS);
  const scaled = factor > 1 ? base * Math.pow(factor, Math.min(previousBans, 1000)) : base;
  return Math.min(Number.isFinite(scaled) ? scaled : cap, cap);
}
