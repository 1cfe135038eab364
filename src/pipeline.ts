import type { SourceLine } from './sources/types.ts';
import type { RuleMatcher } from './rules/types.ts';
import type { Detector, BanDecision } from './detect/types.ts';

/** How far ahead of the clock a line's time may be: the same day of skew the year guess allows. */
const MAX_FUTURE_MS = 86_400_000;

export interface RuleStats {
  lines: number;
  matched: number;
  successes: number;
  /** Matched lines not counted again: a further line about a login attempt already counted (same process). */
  repeats: number;
  bans: number;
}

/** Connections (rule, address, process) remembered for counting attempts, and for how long. */
const MAX_CONNECTIONS = 20_000;
const CONNECTION_TTL_MS = 10 * 60_000;

interface Connections {
  current: Map<number, Connection>;
  older: Map<number, Connection>;
}

interface Connection {
  ip: string;
  /** Matches per pattern index within this connection. */
  perPattern: number[];
  /** Failures counted for this connection so far. */
  counted: number;
  last: number;
}

/**
 * The one-way core shared by the daemon and `tsfilter replay`: a line -> a match -> the detector -> a decision.
 * What happens to a decision (store, firewall) is the caller's `onDecision`.
 */
export class Pipeline {
  readonly stats = new Map<string, RuleStats>();
  /** Per rule: connections by the logging process's id. */
  private readonly connections = new Map<string, Connections>();

  constructor(
    private readonly detector: Detector,
    private readonly onDecision: (d: BanDecision) => boolean,
  ) {}

  statsFor(rule: string): RuleStats {
    let s = this.stats.get(rule);
    if (!s) {
      s = { lines: 0, matched: 0, successes: 0, repeats: 0, bans: 0 };
      this.stats.set(rule, s);
    }
    return s;
  }

  /**
   * Counts login attempts, not log lines. One failed attempt makes sshd write several lines from the same process
   * (`Invalid user x`, `Failed password for invalid user x`, `Connection closed by invalid user x ... [preauth]`):
   * counted per line, two typos would ban a user. Within one connection (rule, address, logging process) a match
   * counts only when its pattern has now matched more often than any pattern had before: one attempt counts once,
   * three `Failed password` lines in one connection count three, a scanner's `Invalid user` + `Connection closed`
   * counts one. Lines without a process id (PyFilter's patterns, `sshd -E` logs) count one each, as in PyFilter.
   */
  private repeat(conns: Connections, ip: string, pid: number, pattern: number, time: number): boolean {
    let c = conns.current.get(pid);
    if (c === undefined) {
      c = conns.older.get(pid);
      if (c !== undefined) conns.current.set(pid, c);
    }
    // Another address, or long after: the pid was reused by a new connection.
    if (c !== undefined && (c.ip !== ip || Math.abs(time - c.last) > CONNECTION_TTL_MS)) c = undefined;
    if (c === undefined) {
      // Two generations instead of an LRU list: when the current one is full it becomes the older one and the
      // oldest is dropped, so memory stays bounded with O(1) work per line (evicting from the head of a Map that
      // keeps deleting and re-inserting costs a scan over its deleted slots).
      if (conns.current.size >= MAX_CONNECTIONS / 2) {
        conns.older = conns.current;
        conns.current = new Map();
      }
      c = { ip, perPattern: [], counted: 0, last: time };
      conns.current.set(pid, c);
    }
    c.last = time;
    const n = (c.perPattern[pattern] ?? 0) + 1;
    c.perPattern[pattern] = n;
    if (n <= c.counted) return true;
    c.counted = n;
    return false;
  }

  /** Runs a batch of lines through one rule. `now` is the arrival time of the batch (ms). */
  process(matcher: RuleMatcher, lines: readonly SourceLine[], now: number): void {
    const st = this.statsFor(matcher.name);
    st.lines += lines.length;
    let conns = this.connections.get(matcher.name);
    if (conns === undefined) {
      conns = { current: new Map(), older: new Map() };
      this.connections.set(matcher.name, conns);
    }
    for (let i = 0; i < lines.length; i++) {
      const m = matcher.match(lines[i]!, now);
      if (m === null) continue;
      // A time far in the future (a misparsed or forged timestamp) would age every other counter out at once.
      if (m.time > now + MAX_FUTURE_MS) m.time = now;
      if (m.kind === 'success') st.successes++;
      else {
        st.matched++;
        if (m.kind === 'failure' && m.pid !== undefined && this.repeat(conns, m.ip, m.pid, m.pattern, m.time)) {
          st.repeats++;
          continue;
        }
      }
      const d = this.detector.observe(m);
      if (d !== null && this.onDecision(d)) st.bans++;
    }
  }
}
