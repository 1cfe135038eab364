/**
 * Regex safety for attacker-controlled log lines. Importing this module (first, before any user regex is
 * compiled) turns on V8's linear-time regexp engine:
 *  - `--enable-experimental-regexp-engine` makes the `l` (linear) flag available, which we use to check that a
 *    pattern can run in linear time (no backreferences, no lookaround, counted repetition at most {,16});
 *  - `--enable-experimental-regexp-engine-on-excessive-backtracks` makes an ordinary (fast, backtracking) regexp
 *    fall back to the linear engine once it has backtracked too much, so a crafted line cannot stall the daemon
 *    with catastrophic backtracking (`(a+)+$` on 50,000 'a's returns in milliseconds instead of never).
 * The fallback only works for patterns the linear engine accepts, which is why every pattern must compile with `l`.
 */
import v8 from 'node:v8';

v8.setFlagsFromString('--enable-experimental-regexp-engine');
v8.setFlagsFromString('--enable-experimental-regexp-engine-on-excessive-backtracks');

let linearAvailable: boolean;
try {
  new RegExp('a', 'l');
  linearAvailable = true;
} catch {
  linearAvailable = false;
}

/** True when this V8 accepts the `l` flag (the guard is active). */
export const LINEAR_ENGINE_AVAILABLE: boolean = linearAvailable;

/**
 * Returns null when `source` (JS syntax) with `flags` can run on the linear engine, else the engine's reason.
 * When the engine is unavailable (a V8 without it), returns a reason too: we refuse rather than run unguarded.
 */
export function linearCheck(source: string, flags: string): string | null {
  if (!LINEAR_ENGINE_AVAILABLE) return 'this Node.js has no linear-time regexp engine (V8 flag refused)';
  try {
    new RegExp(source, flags + 'l');
    return null;
  } catch (e) {
    return (e as Error).message;
  }
}
