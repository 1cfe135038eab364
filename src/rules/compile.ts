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
import type {
  LineInspection, Match, MatchKind, PatternHit, PatternInfo, PatternSpec, RuleConfig, RuleInspector, RuleMatcher, WarnFn,
} from './types.ts';
import { foldCase, groupInfo, requiredLiteral, translatePython, TranslateError } from './pyregex.ts';
import { compileTimeFormat, TimeFormatError } from './time.ts';
import type { TimeParser } from './time.ts';
import { quotePattern } from '../util/terminal-text.ts';
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
  /** The pattern as written in the config, for messages. */
  text: string;
  /** Number of capturing groups (for showing positional captures). */
  groupCount: number;
}

/** V8 repeats the whole source in its message (`Invalid regular expression: /src/flags: reason`); keep the reason. */
function regexReason(e: unknown): string {
  const msg = (e as Error).message;
  const m = /^Invalid regular expression: \/.*\/[a-z]*: (.*)$/s.exec(msg);
  return m === null ? msg : m[1]!;
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
  const text = typeof spec === 'string' ? spec : Array.isArray(spec) && typeof spec[0] === 'string' ? spec[0] : JSON.stringify(spec) ?? String(spec);
  let expandedFrom: string | null = null;
  const fail = (msg: string): never => {
    const where = expandedFrom === null ? '' : ` (with the list "${expandedFrom}" put in its {})`;
    throw new PatternError(cfg.name, list, index, `rule ${JSON.stringify(cfg.name)} ${list}[${index}] ${quotePattern(text)}${where}: ${msg}`, text);
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
      expandedFrom = opt;
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
    return fail(`invalid regular expression: ${regexReason(e)}`);
  }
  if (linearCheck(source, flags) !== null) return fail(`the pattern is refused because ${LINEAR_REASON}`);

  const groups = groupInfo(source);
  const named = groups.names.includes('host');
  let hostGroup = 0;
  let timeGroup = 0;
  let statusGroup = 0;
  if (!named) {
    if (groups.names.length > 0) {
      const alias = groups.names.find((g) => /^(?:ip|addr|address|src|source|client|remote|rhost)$/i.test(g));
      return fail(`has named groups (${groups.names.join(', ')}) but no (?<host>...) group: the address must be ` +
        `captured by a group named host${alias === undefined ? '' : ` (rename (?<${alias}>...) to (?<host>...))`}`);
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
  return {
    re, literal: requiredLiteral(source, flags), kind, list, index, named, hostGroup, timeGroup, statusGroup, text,
    groupCount: groups.count,
  };
}

/** What compileRule and compileRuleForInspection share: the compiled patterns and the time parser. */
interface CompiledRule {
  patterns: Compiled[];
  timeParser: TimeParser;
}

function compileParts(cfg: RuleConfig): CompiledRule {
  const patterns: Compiled[] = [];
  cfg.patterns.forEach((p, i) => patterns.push(compilePattern(cfg, p, 'regex_patterns', i)));
  cfg.successPatterns.forEach((p, i) => patterns.push(compilePattern(cfg, p, 'success_patterns', i)));
  let timeParser: TimeParser;
  try {
    timeParser = compileTimeFormat(cfg.timeFormat);
  } catch (e) {
    if (e instanceof TimeFormatError) {
      throw new PatternError(cfg.name, 'time_format', -1, `rule ${JSON.stringify(cfg.name)} ${e.message}`, cfg.timeFormat);
    }
    throw e;
  }
  return { patterns, timeParser };
}

/**
 * Why a pattern's match was refused (the matcher then tries the next pattern): a status capture not in
 * http_status_blocks, an empty host capture, a host that is not an address (and was not resolved).
 */
type Refusal = 'status' | 'no-host' | 'not-ip';

/** The step from a regex match to a Match, or the reason it is refused; shared by the matcher and the inspector. */
type Build = (p: Compiled, m: RegExpExecArray, line: SourceLine, now: number) => Match | Refusal;

function makeBuild(cfg: RuleConfig, timeParser: TimeParser, opts: CompileOptions): Build {
  const warn = rateLimitedWarn(opts.warn, opts.warnIntervalMs ?? 60_000);
  const resolve = cfg.useDns ? opts.resolve : undefined;
  const statusBlocks = cfg.httpStatusBlocks && cfg.httpStatusBlocks.length > 0 ? new Set(cfg.httpStatusBlocks) : null;
  const name = cfg.name;

  function hostToIp(p: Compiled, host: string): string | null {
    const h = unbracket(host);
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

  return function build(p, m, line, now) {
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
      if (statusBlocks !== null && !statusBlocks.has(status)) return 'status';
    }
    if (host === undefined || host === '') return 'no-host';
    const ip = hostToIp(p, host);
    if (ip === null) return 'not-ip';
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
  };
}

function unbracket(h: string): string {
  return h.charCodeAt(0) === 91 /* [ */ && h.charCodeAt(h.length - 1) === 93 ? h.slice(1, -1) : h;
}

/**
 * Compiles a rule. Throws PatternError for a pattern it refuses (bad syntax, no host group, a construct that
 * cannot run in linear time, an unknown list) and PatternError with list "time_format" and index -1 for a bad
 * time format; every message names the rule, the pattern's place (`regex_patterns[2]`) and its text.
 *
 * The matcher tries the failure and instant patterns in order, then the success patterns; the first that matches
 * (and whose host is an address, and whose status is in httpStatusBlocks when both exist) gives the line's match.
 */
export function compileRule(cfg: RuleConfig, opts: CompileOptions): RuleMatcher {
  const { patterns, timeParser } = compileParts(cfg);
  const build = makeBuild(cfg, timeParser, opts);
  const n = patterns.length;

  // One scan for "could any pattern match?" is cheaper than one includes() per pattern, and most log lines
  // match nothing. Only possible when every pattern has a required literal.
  const literals = patterns.map((p) => p.literal);
  const anyLiteral =
    n > 0 && literals.every((l) => l !== null && l !== '')
      ? new RegExp([...new Set(literals as string[])].map((l) => l.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')).join('|'))
      : null;

  return {
    name: cfg.name,
    match(line: SourceLine, now: number): Match | null {
      const text = line.text;
      if (anyLiteral !== null && !anyLiteral.test(text)) return null;
      for (let i = 0; i < n; i++) {
        const p = patterns[i]!;
        if (p.literal !== null && !text.includes(p.literal)) continue;
        const m = p.re.exec(text);
        if (m === null) continue;
        const r = build(p, m, line, now);
        if (typeof r === 'object') return r;
      }
      return null;
    },
  };
}

/** The captures of one match, for showing: named groups by name, positional ones by role or as `$N`. */
function fieldsOf(p: Compiled, m: RegExpExecArray): Record<string, string> {
  const fields: Record<string, string> = {};
  if (p.named) {
    for (const [k, v] of Object.entries(m.groups ?? {})) if (v !== undefined) fields[k] = v;
    return fields;
  }
  for (let g = 1; g <= p.groupCount; g++) {
    const v = m[g];
    if (v === undefined) continue;
    const role = g === p.hostGroup ? 'host' : g === p.timeGroup ? 'time' : g === p.statusGroup ? 'status' : `$${g}`;
    fields[role] = v;
  }
  return fields;
}

/**
 * Compiles a rule for `tsfilter test`: the same patterns, compiled by the same code, with the same decision per
 * line as compileRule's matcher (`inspect(...).match` equals `match(...)`), and, for the rule's author, every pattern
 * that matched the line, its captures, why a match was refused and where the time came from. Never warns and never
 * resolves host names: it reports instead. Throws PatternError as compileRule does.
 */
export function compileRuleForInspection(cfg: RuleConfig): RuleInspector {
  const { patterns, timeParser } = compileParts(cfg);
  const build = makeBuild(cfg, timeParser, { warn: () => {} }); // no resolve: no DNS
  const statusList = (cfg.httpStatusBlocks ?? []).join(', ');
  const infos: PatternInfo[] = patterns.map((p) => ({ list: p.list, index: p.index, kind: p.kind, text: p.text }));

  function why(r: Refusal, fields: Record<string, string>): string {
    if (r === 'status') return `status ${fields['status']} is not in http_status_blocks [${statusList}]`;
    if (r === 'no-host') return 'the host group captured nothing';
    return `captured host ${JSON.stringify(unbracket(fields['host'] ?? ''))} is not an IP address` +
      (cfg.useDns ? ' (use_dns is on: the daemon would look it up; tsfilter test does not)' : ' (use_dns is off)');
  }

  return {
    name: cfg.name,
    patterns: infos,
    inspect(line: SourceLine, now: number): LineInspection {
      const out: LineInspection = { match: null, hits: [] };
      for (let i = 0; i < patterns.length; i++) {
        const p = patterns[i]!;
        const m = p.re.exec(line.text);
        if (m === null) continue;
        const hit: PatternHit = { pattern: i, fields: fieldsOf(p, m), outcome: 'taken' };
        out.hits.push(hit);
        if (out.match !== null) continue;
        const r = build(p, m, line, now);
        if (typeof r !== 'object') {
          hit.outcome = 'rejected';
          hit.reason = why(r, hit.fields);
          continue;
        }
        hit.outcome = 'accepted';
        out.match = r;
        const timeText = hit.fields['time'];
        if (timeText !== undefined && timeText !== '' && timeParser.parse(timeText, now) !== null) out.timeFrom = 'line';
        else {
          out.timeFrom = line.time !== undefined ? 'source' : 'arrival';
          if (timeText !== undefined && timeText !== '') {
            out.timeError = `cannot read time ${JSON.stringify(timeText)} ` + (cfg.timeFormat === undefined
              ? 'as ISO 8601 (the rule has no time_format)'
              : `with time_format ${JSON.stringify(cfg.timeFormat)} nor as ISO 8601`);
          }
        }
      }
      return out;
    },
  };
}
