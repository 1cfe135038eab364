import type { SourceLine } from '../sources/types.ts';

export type MatchKind = 'failure' | 'instant' | 'success';

/** A line that a rule recognised: who, when, and what it means. */
export interface Match {
  /** Normalised IP address (IPv4-mapped IPv6 becomes IPv4; IPv6 is lower-case and compressed). */
  ip: string;
  /** Event time in ms since the epoch (from the line, the source, or arrival). */
  time: number;
  rule: string;
  kind: MatchKind;
  status?: number;
  user?: string;
  /** The raw line, kept so a ban can show the lines that caused it. */
  line: string;
  /** Index of the pattern that matched, within the rule's failure or success list. */
  pattern: number;
  /** The logging process (a `(?<pid>)` capture, or the journal's _PID): one sshd process is one connection. */
  pid?: number;
}

export type WarnFn = (msg: string, fields?: Record<string, unknown>) => void;

/** A compiled rule: turns a source line into at most one match. */
export interface RuleMatcher {
  readonly name: string;
  /** `now` is the arrival time in ms, used for yearless timestamps and lines without a time. */
  match(line: SourceLine, now: number): Match | null;
}

/**
 * A PyFilter `regex_patterns` item: a failure pattern; `[pattern, true]` for an instant ban; or
 * `[pattern, "<key>"]` where `{}` in the pattern is replaced by the rule's list under `<key>` joined with `|`.
 */
export type PatternSpec = string | [string, true] | [string, string];

/** One rule's matching options, as the config loader hands them to the rule compiler. */
export interface RuleConfig {
  name: string;
  patterns: PatternSpec[];
  /** Patterns for successful logins; a success clears that IP's failures for this rule. */
  successPatterns: string[];
  /** strftime directives; undefined = recognise ISO 8601 / RFC 3339 (always tried as a fallback too). */
  timeFormat?: string;
  /** Lists usable by `[pattern, "<key>"]` items, e.g. `urls`. */
  lists: Record<string, string[]>;
  /** When set, a match whose status capture is not in this list is ignored. */
  httpStatusBlocks?: number[];
  /**
   * Meaning of positional (unnamed) groups, as in PyFilter: 'time-host' (ssh, mysql, everything else) or
   * 'host-time' with the 4th group the HTTP status (PyFilter decides this by the rule names apache and nginx).
   */
  groupOrder: 'time-host' | 'host-time';
  /** Resolve a host capture that is not an IP with DNS. Off by default: attackers control log text. */
  useDns: boolean;
}

/** A pattern the compiler refuses; the config loader turns it into an error at the pattern's JSON path. */
export class PatternError extends Error {
  constructor(
    readonly rule: string,
    /** 'regex_patterns', 'success_patterns' or 'time_format'. */
    readonly list: string,
    /** Index in the list; -1 for time_format. */
    readonly index: number,
    /** The whole message: it names the rule, list[index] and the pattern (or time format) text. */
    message: string,
    /** The refused pattern or time format as written in the config. */
    readonly pattern?: string,
  ) {
    super(message);
  }
}

/** One of a rule's patterns, as `tsfilter test` describes it. */
export interface PatternInfo {
  list: 'regex_patterns' | 'success_patterns';
  index: number;
  kind: MatchKind;
  /** The pattern as written in the config (before a list was put in its `{}`). */
  text: string;
}

/** What one pattern made of a line whose text it matched. */
export interface PatternHit {
  /** Index into RuleInspector.patterns. */
  pattern: number;
  /**
   * The captures: named groups by name; for PyFilter's positional groups `host`, `time` and `status` by role and
   * the others as `$N`. Groups that took no part in the match are left out.
   */
  fields: Record<string, string>;
  /**
   * 'accepted': this pattern gave the line's match; 'rejected': it matched but the match was refused (`reason`),
   * so the matcher went on to the next pattern; 'taken': an earlier pattern had already given the line's match.
   */
  outcome: 'accepted' | 'rejected' | 'taken';
  reason?: string;
}

/** Everything a rule's patterns made of one line, for rule authors. */
export interface LineInspection {
  /** Exactly what RuleMatcher.match returns for the line. */
  match: Match | null;
  /** Every pattern whose regex matched the line, in the order the matcher tries them. */
  hits: PatternHit[];
  /** Where match.time came from: the line's time capture, the source (journal), or the arrival time. */
  timeFrom?: 'line' | 'source' | 'arrival';
  /** Why a time capture could not be read, when there was one and the arrival time was used instead. */
  timeError?: string;
}

/** A compiled rule that explains its decisions (slower than RuleMatcher: every pattern runs on every line). */
export interface RuleInspector {
  readonly name: string;
  readonly patterns: readonly PatternInfo[];
  inspect(line: SourceLine, now: number): LineInspection;
}
