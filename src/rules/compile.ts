/**
 * Rule compiler: turns a rule's PyFilter-style patterns into a fast line matcher.
 *
 * Log lines are attacker-controlled, so every pattern must be runnable in linear time (checked with V8's `l`
 * flag; see regex-guard.ts, imported first so the guard is on before any user regex is compiled).
 */
import './regex-guard.ts';
import { linearCheck } from './regex-guard.ts';
import { normalizeIp } from '../detect/ip.ts';
import type { SourceLine } from '../sources/types.ts';
import { PatternError } from './types.ts';
import type { Match, MatchKind, PatternSpec, RuleConfig, RuleMatcher, WarnFn } from './types.ts';
import { foldCase, groupInfo, requiredLiteral, translatePython, TranslateError } from './pyregex.ts';
import { compileTimeFormat, TimeFormatError } from './time.ts';
import type { TimeParser } from './time.ts';
import { rateLimitedWarn } from './warn.ts';

export interface CompileOptions {
  /** Where warnings go (rate-limited here: at most one per pattern and kind per minute, with a suppressed count). */
  warn: WarnFn;
  /**
   * Resolves a host capture that is not an IP (a host name) to an address, or null. Only called when the rule's
   * `useDns` is true; the daemon supplies it (with its own cache and timeouts). Without it such lines are skipped.
   */
  resolve?: (host: string) => string | null;
  /** Minimum interval between two warnings of one kind for one pattern (default 60 s). */
  warnIntervalMs?: number;
}

/** One compiled pattern. */
interface Compiled {
  re: RegExp;
  /** Substring every match contains (a pre-filter), or null. */
  literal: string | null;
  kind: MatchKind;
  list: 'regex_patterns' | 'success_patterns';
  index: number;
  named: boolean;
  /** Positional group numbers (0 = absent) when !named. */
  hostGroup: number;
  timeGroup: number;
  statusGroup: number;
}

const LINEAR_REASON =
  'it cannot run in linear time (backreferences, lookahead/lookbehind and counted repetition above {16} are ' +
  'refused): log lines are attacker-controlled, and a crafted line could make such a pattern backtrack for ' +
  'minutes and stall the daemon';

/** Compiles one pattern; `kind` is what the spec form says. Throws PatternError. */
function compilePattern(
  cfg: RuleConfig,
  spec: PatternSpec,
  list: 'regex_patterns' | 'success_patterns',
  index: number,
): Compiled {
  const fail = (msg: string): never => {
    throw new PatternError(cfg.name, list, index, `rule "${cfg.name}" ${list}[${index}]: ${msg}`);
  };
  let pattern: string;
  let kind: MatchKind = list === 'success_patterns' ? 'success' : 'failure';
  if (typeof spec === 'string') pattern = spec;
  else if (Array.isArray(spec) && spec.length === 2 && typeof spec[0] === 'string') {
    if (list === 'success_patterns') return fail('success patterns must be plain strings');
    pattern = spec[0];
    const opt: unknown = spec[1];
    if (opt === true) kind = 'instant';
    else if (typeof opt === 'string') {
      const items = cfg.lists[opt];
      if (!Array.isArray(items)) {
        const known = Object.keys(cfg.lists);
        return fail(`refers to the list "${opt}", which the rule does not define` +
          (known.length ? ` (it has: ${known.join(', ')})` : ''));
      }
      if (!pattern.includes('{}')) return fail(`uses the list "${opt}" but has no {} to put it in`);
      if (items.length === 0) return fail(`the list "${opt}" is empty`);
      pattern = pattern.split('{}').join(items.join('|'));
    } else return fail('the second item must be true (instant ban) or the name of a list, e.g. "urls"');
  } else return fail('expected a string, [pattern, true] or [pattern, "<list>"]');

  if (pattern.length === 0) return fail('the pattern is empty');
  let source: string;
  let flags: string;
  try {
    ({ source, flags } = translatePython(pattern));
  } catch (e) {
    if (e instanceof TranslateError) return fail(e.message);
    throw e;
  }
  if (flags.includes('i')) {
    // V8's linear engine has no `i` flag: spell case-insensitivity out in the pattern instead.
    source = foldCase(source);
    flags = flags.replace('i', '');
  }
  let re: RegExp;
  try {
    re = new RegExp(source, flags);
  } catch (e) {
    return fail(`invalid regular expression: ${(e as Error).message}`);
  }
  if (linearCheck(source, flags) !== null) return fail(`the pattern is refused because ${LINEAR_REASON}`);

  const groups = groupInfo(source);
  const named = groups.names.includes('host');
  let hostGroup = 0;
  let timeGroup = 0;
  let statusGroup = 0;
  if (!named) {
    if (groups.names.length > 0) {
      return fail(`has named groups (${groups.names.join(', ')}) but no (?<host>...) group for the address`);
    }
    if (groups.count < 2) {
      return fail('no host group: name the address group (?<host>...) (or (?P<host>...)), or use PyFilter\'s ' +
        `positional groups (${cfg.groupOrder === 'host-time' ? 'host, time[, x, status]' : 'time, host'})`);
    }
    if (cfg.groupOrder === 'host-time') {
      hostGroup = 1;
      timeGroup = 2;
      statusGroup = groups.count >= 4 ? 4 : 0;
    } else {
      timeGroup = 1;
      hostGroup = 2;
    }
  }
  return { re, literal: requiredLiteral(source, flags), kind, list, index, named, hostGroup, timeGroup, statusGroup };
}

/**
 * Compiles a rule. Throws PatternError for a pattern it refuses (bad syntax, no host group, a construct that
 * cannot run in linear time, an unknown list) and PatternError with list "time_format" and index -1 for a bad
 * time format.
 *
 * The matcher tries the failure and instant patterns in order, then the success patterns; the first that matches
 * (and whose host is an address, and whose status is in httpStatusBlocks when both exist) gives the line's match.
 */
export function compileRule(cfg: RuleConfig, opts: CompileOptions): RuleMatcher {
  const patterns: Compiled[] = [];
  cfg.patterns.forEach((p, i) => patterns.push(compilePattern(cfg, p, 'regex_patterns', i)));
  cfg.successPatterns.forEach((p, i) => patterns.push(compilePattern(cfg, p, 'success_patterns', i)));

  let timeParser: TimeParser;
  try {
    timeParser = compileTimeFormat(cfg.timeFormat);
  } catch (e) {
    if (e instanceof TimeFormatError) throw new PatternError(cfg.name, 'time_format', -1, e.message);
    throw e;
  }

  const warn = rateLimitedWarn(opts.warn, opts.warnIntervalMs ?? 60_000);
  const resolve = cfg.useDns ? opts.resolve : undefined;
  const statusBlocks = cfg.httpStatusBlocks && cfg.httpStatusBlocks.length > 0 ? new Set(cfg.httpStatusBlocks) : null;
  const name = cfg.name;
  const n = patterns.length;

  function hostToIp(p: Compiled, host: string): string | null {
    let h = host;
    if (h.charCodeAt(0) === 91 /* [ */ && h.charCodeAt(h.length - 1) === 93) h = h.slice(1, -1);
    const ip = normalizeIp(h);
    if (ip !== null) return ip;
    if (resolve !== undefined) {
      const r = resolve(h);
      const rip = r === null ? null : normalizeIp(r);
      if (rip !== null) return rip;
      warn(`host:${p.list}:${p.index}`, `rule ${name}: cannot resolve host "${h.slice(0, 100)}"; line skipped`,
        { rule: name, list: p.list, pattern: p.index });
      return null;
    }
    warn(`host:${p.list}:${p.index}`,
      `rule ${name}: captured host "${h.slice(0, 100)}" is not an IP address (DNS lookups are off); line skipped`,
      { rule: name, list: p.list, pattern: p.index });
    return null;
  }

  function build(p: Compiled, m: RegExpExecArray, line: SourceLine, now: number): Match | null {
    let host: string | undefined;
    let timeStr: string | undefined;
    let statusStr: string | undefined;
    let user: string | undefined;
    let pidStr: string | undefined;
    if (p.named) {
      const g = m.groups!;
      host = g['host'];
      timeStr = g['time'];
      statusStr = g['status'];
      user = g['user'];
      pidStr = g['pid'];
    } else {
      host = m[p.hostGroup];
      timeStr = p.timeGroup ? m[p.timeGroup] : undefined;
      statusStr = p.statusGroup ? m[p.statusGroup] : undefined;
    }
    let status: number | undefined;
    if (statusStr !== undefined && statusStr !== '') {
      status = Number(statusStr);
      if (statusBlocks !== null && !statusBlocks.has(status)) return null;
    }
    if (host === undefined || host === '') return null;
    const ip = hostToIp(p, host);
    if (ip === null) return null;
    let time: number | null = null;
    if (timeStr !== undefined && timeStr !== '') {
      time = timeParser.parse(timeStr, now);
      if (time === null) {
        warn(`time:${p.list}:${p.index}`,
          `rule ${name}: cannot parse time "${timeStr.slice(0, 100)}" with format ${JSON.stringify(cfg.timeFormat ?? 'ISO 8601')}; using the arrival time`,
          { rule: name, list: p.list, pattern: p.index });
      }
    }
    if (time === null) time = line.time ?? now;
    const match: Match = { ip, time, rule: name, kind: p.kind, line: line.text, pattern: p.index };
    if (status !== undefined) match.status = status;
    if (user !== undefined) match.user = user;
    if (pidStr !== undefined && pidStr !== '') match.pid = Number(pidStr);
    else if (line.pid !== undefined) match.pid = line.pid;
    return match;
  }

  // One scan for "could any pattern match?" is cheaper than one includes() per pattern, and most log lines
  // match nothing. Only possible when every pattern has a required literal.
  const literals = patterns.map((p) => p.literal);
  const anyLiteral =
    n > 0 && literals.every((l) => l !== null && l !== '')
      ? new RegExp([...new Set(literals as string[])].map((l) => l.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')).join('|'))
      : null;

  return {
    name,
    match(line: SourceLine, now: number): Match | null {
      const text = line.text;
      if (anyLiteral !== null && !anyLiteral.test(text)) return null;
      for (let i = 0; i < n; i++) {
        const p = patterns[i]!;
        if (p.literal !== null && !text.includes(p.literal)) continue;
        const m = p.re.exec(text);
        if (m === null) continue;
        const r = build(p, m, line, now);
        if (r !== null) return r;
      }
      return null;
    },
  };
}
