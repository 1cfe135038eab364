import { canonicalTarget, type Target } from './target.ts';

/*
 * Checks every kernel backend makes on a batch before anything reaches a command, and the element timeouts they
 * derive from a ban's expiry.
 */

/** reconcile() leaves an element alone when its remaining time is within this of the store's. */
export const RETIME_SLACK_S = 5;

/**
 * Throws when any source failed canonicalTarget, naming the first three (cut short: a crafted value can be huge), so
 * a batch with one bad source changes nothing. tool: the command that was not run; context prefixes the message.
 */
export function refuseInvalid(bad: readonly unknown[], tool: string, context?: string): void {
  if (bad.length === 0) return;
  const shown = bad.slice(0, 3).map((b) => JSON.stringify(String(b).slice(0, 60)));
  const more = bad.length > 3 ? ` and ${bad.length - 3} more` : '';
  throw new TypeError(`${context === undefined ? '' : `${context}: `}not an IP address or prefix, refused before running ${tool}: ${shown.join(', ')}${more}`);
}

/**
 * Calls fn, in order, with each item whose source is canonical; then throws naming the others (see refuseInvalid).
 * An error fn throws (a backend's own check) comes out at once, ahead of the invalid sources.
 */
export function forEachValid<T>(items: readonly T[], sourceOf: (x: T) => string, tool: string, fn: (t: Target, x: T) => void, context?: string): void {
  const bad: string[] = [];
  for (const x of items) {
    const t = canonicalTarget(sourceOf(x));
    if (t === null) bad.push(sourceOf(x));
    else fn(t, x);
  }
  refuseInvalid(bad, tool, context);
}

/** Every source canonical, or a TypeError naming the bad ones. */
export function validTargets(sources: readonly string[], tool: string, context?: string): Target[] {
  const out: Target[] = [];
  forEachValid(sources, (s) => s, tool, (t) => out.push(t), context);
  return out;
}

/**
 * Seconds left until expiresAt, rounded up: null for a permanent ban, or one longer than maxS (the kernel would
 * refuse it; the daemon lifts it at expiry instead); undefined when it has passed.
 */
export function secondsLeft(expiresAt: number | null, now: number, maxS: number): number | null | undefined {
  if (expiresAt === null) return null;
  const ms = expiresAt - now;
  if (!(ms > 0)) return undefined;
  const s = Math.ceil(ms / 1000);
  return s > maxS ? null : s;
}

/** Whether an element's listed time left (null: permanent) matches the timeout a ban asks for, within the slack. */
export function sameTimeLeft(left: number | null | undefined, timeout: number | null): boolean {
  if (left === null) return timeout === null;
  return left !== undefined && timeout !== null && Math.abs(left - timeout) <= RETIME_SLACK_S;
}
