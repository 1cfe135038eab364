/**
 * `tsfilter test`: the rule author's tool (fail2ban-regex for TSFilter). Runs rules, or one ad-hoc pattern, over a
 * file and shows per line which pattern matched, its captures and the parsed time, the matches that were refused and
 * why, optionally the unmatched lines, and per pattern how many lines it matched, flagging the ones that never did.
 */
import { escapeControls, jsonLine, printable, quotePattern } from '../util/terminal-text.ts';
import { accessSync, constants, statSync } from 'node:fs';
import type { Config } from '../config/load.ts';
import { compileRuleForInspection } from '../rules/compile.ts';
import { PatternError } from '../rules/types.ts';
import type { LineInspection, MatchKind, PatternHit, RuleConfig, RuleInspector } from '../rules/types.ts';
import { readLines } from '../sources/read-lines.ts';
import { selectRules, UsageError } from './replay.ts';

/** The ad-hoc rule of `--pattern` (its name is what pattern errors show). */
export const AD_HOC_RULE = '--pattern';

export interface PatternStats {
  /** `regex_patterns[1]`. */
  pattern: string;
  kind: MatchKind;
  text: string;
  /** Lines whose text the pattern's regex matched, whatever became of them. */
  hits: number;
  /** Lines this pattern gave the rule's match for. */
  matched: number;
  /** Lines it matched whose match was refused (and no later pattern took). */
  rejected: number;
}

export interface RuleStats {
  rule: string;
  lines: number;
  failures: number;
  instant: number;
  successes: number;
  rejected: number;
  unmatched: number;
  patterns: PatternStats[];
}

interface Refused {
  pattern: string;
  reason: string;
  fields: Record<string, string>;
}

/** One line of the report; see the README ("Testing a rule") for the JSON form. */
export type TestEvent =
  | {
      kind: MatchKind;
      line: number;
      rule: string;
      pattern: string;
      ip: string;
      time: number;
      timeFrom: 'line' | 'source' | 'arrival';
      timeError?: string;
      fields: Record<string, string>;
      text: string;
      /** Earlier patterns that matched the line but were refused. */
      rejections: Refused[];
    }
  | ({ kind: 'rejected'; line: number; rule: string; text: string; rejections: Refused[] } & Refused)
  | { kind: 'unmatched'; line: number; text: string };

export interface TestSummary {
  lines: number;
  /** Lines no rule matched or refused. */
  unmatched: number;
  rules: RuleStats[];
}

const where = (i: RuleInspector, h: PatternHit) => {
  const p = i.patterns[h.pattern]!;
  return `${p.list}[${p.index}]`;
};

/** Runs each inspector over every line of `file`; events stream to `onEvent` in line order. */
export function testFile(
  inspectors: RuleInspector[],
  file: string,
  opts: { now?: number; unmatched?: boolean; onEvent?: (e: TestEvent) => void } = {},
): TestSummary {
  const now = opts.now ?? Date.now();
  const emit = opts.onEvent ?? (() => {});
  const stats: RuleStats[] = inspectors.map((i) => ({
    rule: i.name, lines: 0, failures: 0, instant: 0, successes: 0, rejected: 0, unmatched: 0,
    patterns: i.patterns.map((p) => ({ pattern: `${p.list}[${p.index}]`, kind: p.kind, text: p.text, hits: 0, matched: 0, rejected: 0 })),
  }));
  let n = 0;
  let unmatched = 0;
  for (const batch of readLines(file)) {
    for (const line of batch) {
      n++;
      let any = false;
      for (let r = 0; r < inspectors.length; r++) {
        const ins = inspectors[r]!;
        const st = stats[r]!;
        const res: LineInspection = ins.inspect(line, now);
        for (const h of res.hits) st.patterns[h.pattern]!.hits++;
        const refused = res.hits
          .filter((h) => h.outcome === 'rejected')
          .map((h) => ({ pattern: where(ins, h), reason: h.reason!, fields: h.fields }));
        const m = res.match;
        if (m !== null) {
          any = true;
          const won = res.hits.find((h) => h.outcome === 'accepted')!;
          st.patterns[won.pattern]!.matched++;
          if (m.kind === 'failure') st.failures++;
          else if (m.kind === 'instant') st.instant++;
          else st.successes++;
          emit({
            kind: m.kind, line: n, rule: ins.name, pattern: where(ins, won), ip: m.ip, time: m.time,
            timeFrom: res.timeFrom!, ...(res.timeError !== undefined ? { timeError: res.timeError } : {}),
            fields: won.fields, text: line.text, rejections: refused,
          });
        } else if (refused.length > 0) {
          any = true;
          st.rejected++;
          for (const h of res.hits) if (h.outcome === 'rejected') st.patterns[h.pattern]!.rejected++;
          emit({ kind: 'rejected', line: n, rule: ins.name, text: line.text, ...refused[0]!, rejections: refused.slice(1) });
        }
      }
      if (!any) {
        unmatched++;
        if (opts.unmatched) emit({ kind: 'unmatched', line: n, text: line.text });
      }
    }
  }
  for (const st of stats) {
    st.lines = n;
    st.unmatched = n - st.failures - st.instant - st.successes - st.rejected;
  }
  return { lines: n, unmatched, rules: stats };
}

export interface TestCommandOptions {
  config?: string;
  pattern?: string;
  timeFormat?: string;
  unmatched?: boolean;
  json?: boolean;
}

/** `tsfilter test [RULE] FILE` and `tsfilter test [RULE] --pattern REGEX FILE`. Throws UsageError (exit 2). */
export function testCommand(
  args: (string | undefined)[],
  o: TestCommandOptions,
  load: (file?: string) => Config,
  out: (s: string) => void,
): void {
  const given = args.filter((a): a is string => a !== undefined);
  if (given.length === 0) throw new UsageError('test: missing FILE (usage: tsfilter test [RULE] FILE)');
  const file = given.at(-1)!;
  const ruleName = given.length > 1 ? given[0] : undefined;
  const configs = ruleConfigs(ruleName, o, load);
  // `tsfilter test ssh` (the old form without its file) reads as FILE "ssh": say what is missing.
  const isRule = given.length === 1 && o.pattern === undefined && configs.some((c) => c.name === file);
  checkReadable(file, isRule ? ` — ${file} is a rule: name the log file too (tsfilter test ${file} FILE)` : '');
  const inspectors = configs.map((c) => {
    try {
      return compileRuleForInspection(c);
    } catch (e) {
      // A disabled rule was never compiled by the loader; and --pattern is compiled here first.
      if (e instanceof PatternError) throw new UsageError(e.message);
      throw e;
    }
  });
  const onEvent = o.json ? (e: TestEvent) => out(jsonLine(eventJson(e))) : (e: TestEvent) => textEvent(e, out);
  const summary = testFile(inspectors, file, { unmatched: o.unmatched, onEvent });
  if (o.json) out(jsonLine(summaryJson(summary)));
  else textSummary(summary, out);
}

function ruleConfigs(ruleName: string | undefined, o: TestCommandOptions, load: (file?: string) => Config): RuleConfig[] {
  if (o.pattern !== undefined) {
    // With a RULE, the pattern is tried in that rule's context: its time_format, lists, http_status_blocks.
    const base: RuleConfig = ruleName !== undefined
      ? selectRules(load(o.config), ruleName)[0]!.match
      : { name: AD_HOC_RULE, patterns: [], successPatterns: [], lists: {}, groupOrder: 'time-host', useDns: false };
    return [{
      ...base, name: AD_HOC_RULE, patterns: [o.pattern], successPatterns: [],
      timeFormat: o.timeFormat ?? base.timeFormat,
    }];
  }
  if (o.timeFormat !== undefined && ruleName === undefined) {
    throw new UsageError('test: --time-format goes with --pattern or with a RULE');
  }
  const config = load(o.config);
  const rules = selectRules(config, ruleName).map((r) => (o.timeFormat === undefined ? r.match : { ...r.match, timeFormat: o.timeFormat }));
  if (rules.length === 0) throw new UsageError(`test: no enabled rule in ${config.file}: name one (tsfilter test RULE FILE)`);
  return rules;
}

function checkReadable(file: string, hint: string): void {
  try {
    accessSync(file, constants.R_OK);
    if (statSync(file).isDirectory()) throw Object.assign(new Error(), { code: 'EISDIR' });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : code === 'EISDIR' ? 'it is a directory' : (code ?? (e as Error).message);
    throw new UsageError(`test: cannot read ${printable(file)}: ${why}${hint || ' (usage: tsfilter test [RULE] FILE)'}`);
  }
}

// ---------------------------------------------------------------- output

const iso = (ms: number) => new Date(ms).toISOString();
const fieldsText = (f: Record<string, string>) => Object.entries(f).map(([k, v]) => `${k}=${printable(v)}`).join(' ');
const INDENT = ' '.repeat(9);

function eventJson(e: TestEvent): Record<string, unknown> {
  if (e.kind === 'unmatched') return { line: e.line, kind: e.kind, text: e.text };
  const rejections = e.rejections.map((r) => ({ pattern: r.pattern, reason: r.reason, fields: r.fields }));
  if (e.kind === 'rejected') {
    return { line: e.line, rule: e.rule, kind: e.kind, pattern: e.pattern, reason: e.reason, fields: e.fields, text: e.text,
      ...(rejections.length ? { rejections } : {}) };
  }
  return {
    line: e.line, rule: e.rule, kind: e.kind, pattern: e.pattern, ip: e.ip, time: iso(e.time), time_from: e.timeFrom,
    ...(e.timeError !== undefined ? { time_error: e.timeError } : {}),
    fields: e.fields, text: e.text, ...(rejections.length ? { rejections } : {}),
  };
}

function textEvent(e: TestEvent, out: (s: string) => void): void {
  const head = String(e.line).padStart(7) + '  ';
  if (e.kind === 'unmatched') {
    out(`${head}unmatched  ${printable(e.text)}`);
    return;
  }
  if (e.kind === 'rejected') {
    out(`${head}${e.rule}  rejected  ${e.pattern}: ${escapeControls(e.reason)}`);
    if (Object.keys(e.fields).length) out(INDENT + fieldsText(e.fields));
    for (const r of e.rejections) out(`${INDENT}also ${r.pattern}: ${escapeControls(r.reason)}`);
    out(`${INDENT}line ${printable(e.text)}`);
    return;
  }
  const from = e.timeFrom === 'line' ? 'from the line' : e.timeFrom === 'source' ? 'from the source'
    : `arrival time: ${escapeControls(e.timeError ?? 'the pattern captures no time')}`;
  out(`${head}${e.rule}  ${e.kind.padEnd(7)}  ${e.pattern}  ${e.ip}  ${iso(e.time)} (${from})`);
  out(INDENT + fieldsText(e.fields));
  for (const r of e.rejections) out(`${INDENT}${r.pattern} matched first but was rejected: ${escapeControls(r.reason)}`);
}

const flagOf = (p: PatternStats): string | null =>
  p.hits === 0 ? 'never matched a line'
    : p.matched === 0 && p.rejected === 0 ? `never decides: earlier patterns take ${p.hits === 1 ? 'the line' : `all ${p.hits} lines`} it matches`
      : null;

function summaryJson(s: TestSummary): Record<string, unknown> {
  let matched = 0;
  let successes = 0;
  let rejected = 0;
  const rules = s.rules.map((r) => {
    matched += r.failures + r.instant;
    successes += r.successes;
    rejected += r.rejected;
    return {
      rule: r.rule, lines: r.lines, matched: r.failures + r.instant, failures: r.failures, instant: r.instant,
      successes: r.successes, rejected: r.rejected, unmatched: r.unmatched,
      patterns: r.patterns.map((p) => ({
        pattern: p.pattern, kind: p.kind, text: p.text, matched: p.matched, rejected: p.rejected, hits: p.hits,
        never_matched: p.hits === 0, shadowed: p.hits > 0 && p.matched === 0 && p.rejected === 0,
      })),
    };
  });
  return { summary: { lines: s.lines, matched, successes, rejected, unmatched: s.unmatched, rules } };
}

function textSummary(s: TestSummary, out: (s: string) => void): void {
  let matched = 0;
  let successes = 0;
  let rejected = 0;
  let flagged = 0;
  out('');
  for (const r of s.rules) {
    matched += r.failures + r.instant;
    successes += r.successes;
    rejected += r.rejected;
    out(`rule ${r.rule}: ${r.lines} lines, ${r.failures + r.instant} matched (${r.failures} failures, ${r.instant} instant), ` +
      `${r.successes} successes, ${r.rejected} rejected, ${r.unmatched} unmatched`);
    const width = Math.max(...r.patterns.map((p) => p.pattern.length));
    for (const p of r.patterns) {
      const flag = flagOf(p);
      if (flag !== null) flagged++;
      out(`  ${p.pattern.padEnd(width)}  ${p.kind.padEnd(7)}  ${String(p.matched).padStart(7)} lines` +
        (p.rejected ? `, ${p.rejected} rejected` : '') + (flag === null ? '' : `  !! ${flag}: ${quotePattern(p.text)}`));
    }
  }
  if (flagged > 0) out(`${flagged} pattern${flagged === 1 ? '' : 's'} never matched or never decided a line of this sample (marked !!)`);
  out(`Lines: ${s.lines} lines, ${matched} matched, ${successes} successful logins, ${rejected} rejected, ${s.unmatched} unmatched`);
}
