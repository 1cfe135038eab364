import type { WarnFn } from './types.ts';

/** A warning function limited per key: the first warning goes out, then at most one per interval. */
export type LimitedWarn = (key: string, msg: string, fields?: Record<string, unknown>) => void;

/**
 * Rate-limits warnings so that a flood of junk lines (attacker-controlled) cannot flood the log: per key, at most
 * one warning per `intervalMs`; the next one that goes out carries `suppressed`, the number held back meanwhile.
 */
export function rateLimitedWarn(warn: WarnFn, intervalMs = 60_000, clock: () => number = Date.now): LimitedWarn {
  const state = new Map<string, { last: number; suppressed: number }>();
  return (key, msg, fields) => {
    const now = clock();
    let s = state.get(key);
    if (s === undefined) {
      if (state.size > 10_000) state.clear(); // keys are per pattern, so this never grows; belt and braces
      s = { last: -Infinity, suppressed: 0 };
      state.set(key, s);
    }
    if (now - s.last < intervalMs) {
      s.suppressed++;
      return;
    }
    const suppressed = s.suppressed;
    s.last = now;
    s.suppressed = 0;
    warn(msg, suppressed > 0 ? { ...fields, suppressed } : fields);
  };
}
