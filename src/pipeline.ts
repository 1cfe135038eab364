import type { SourceLine } from './sources/types.ts';
import type { RuleMatcher } from './rules/types.ts';
import type { Detector, BanDecision } from './detect/types.ts';

/** How far ahead of the clock a line's time may be: the same day of skew the year guess allows. */
const MAX_FUTURE_MS = 86_400_000;

export interface RuleStats {
  lines: number;
  matched: number;
  successes: number;
  bans: number;
}

/**
 * The one-way core shared by the daemon and `tsfilter replay`: a line -> a match -> the detector -> a decision.
 * What happens to a decision (store, firewall) is the caller's `onDecision`.
 */
export class Pipeline {
  readonly stats = new Map<string, RuleStats>();

  constructor(
    private readonly detector: Detector,
    private readonly onDecision: (d: BanDecision) => boolean,
  ) {}

  statsFor(rule: string): RuleStats {
    let s = this.stats.get(rule);
    if (!s) {
      s = { lines: 0, matched: 0, successes: 0, bans: 0 };
      this.stats.set(rule, s);
    }
    return s;
  }

  /** Runs a batch of lines through one rule. `now` is the arrival time of the batch (ms). */
  process(matcher: RuleMatcher, lines: readonly SourceLine[], now: number): void {
    const st = this.statsFor(matcher.name);
    st.lines += lines.length;
    for (let i = 0; i < lines.length; i++) {
      const m = matcher.match(lines[i]!, now);
      if (m === null) continue;
      // A time far in the future (a misparsed or forged timestamp) would age every other counter out at once.
      if (m.time > now + MAX_FUTURE_MS) m.time = now;
      if (m.kind === 'success') st.successes++;
      else st.matched++;
      const d = this.detector.observe(m);
      if (d !== null && this.onDecision(d)) st.bans++;
    }
  }
}
