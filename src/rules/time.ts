/**
 * Log timestamp parsing: Python strptime formats (as PyFilter's `time_format`) compiled once to a regex-based
 * parser, plus automatic ISO 8601 / RFC 3339 recognition (used when no format is given, and as a fallback when the
 * format does not fit, so one rule can read both `Feb 12 14:10:21` and `2026-11-21T05:04:00.123456+01:00`).
 *
 * Times without an offset are in the local time zone of this process (set TZ to change it).
 */
import './regex-guard.ts';
import { quotePattern } from '../util/terminal-text.ts';

/**
 * A yearless timestamp (`Dec 31 23:59:59`) gets the year that puts it nearest to `now` without being in the future
 * — but "the future" is judged with this tolerance: a line up to one day ahead of our clock keeps the current year
 * instead of being pushed a whole year back. That absorbs clock skew between hosts and a log written in another
 * time zone than ours (e.g. a remote host's local time up to 14 h ahead), at the price that a line written on
 * Jan 1 and read on Dec 31 (a year late) is placed in the wrong year — which cannot happen for a live log.
 */
export const YEAR_SKEW_MS = 24 * 60 * 60 * 1000;

export interface TimeParser {
  /** The strptime format this parser was compiled from (undefined: ISO 8601 only). */
  readonly format: string | undefined;
  /** ms since the epoch, or null if `s` fits neither the format nor ISO 8601. `now` places yearless times. */
  parse(s: string, now: number): number | null;
}

/** A bad `time_format` (unknown directive, dangling `%`). */
export class TimeFormatError extends Error {}

const MONTHS = ['jan', 'feb', 'mar', 'apr', 'may', 'jun', 'jul', 'aug', 'sep', 'oct', 'nov', 'dec'];
const MONTHS_LONG = ['january', 'february', 'march', 'april', 'may', 'june', 'july', 'august', 'september',
  'october', 'november', 'december'];
const WEEKDAYS = ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'];
const WEEKDAYS_LONG = ['monday', 'tuesday', 'wednesday', 'thursday', 'friday', 'saturday', 'sunday'];

/** Fields collected while parsing one string; undefined = not given by the format. */
interface Fields {
  year: number | undefined;
  month: number; // 0-11
  day: number;
  hour: number;
  minute: number;
  second: number;
  ms: number;
  hour12: number | undefined;
  pm: boolean | undefined;
  yday: number | undefined;
  /** Minutes east of UTC; undefined = local time. */
  offset: number | undefined;
  /** %s: epoch seconds, overrides everything else. */
  epoch: number | undefined;
}

type Setter = (v: string, f: Fields) => boolean;

function newFields(): Fields {
  return {
    year: undefined, month: 0, day: 1, hour: 0, minute: 0, second: 0, ms: 0, hour12: undefined, pm: undefined,
    yday: undefined, offset: undefined, epoch: undefined,
  };
}

function parseOffset(v: string): number | undefined {
  if (v === 'Z' || v === 'z') return 0;
  const sign = v.charCodeAt(0) === 45 /* - */ ? -1 : 1;
  const digits = v.slice(1).replace(/:/g, '');
  const h = Number(digits.slice(0, 2));
  const m = Number(digits.slice(2, 4) || '0');
  const s = digits.length >= 6 ? Number(digits.slice(4, 6)) : 0;
  if (h > 23 || m > 59) return undefined;
  return sign * (h * 60 + m + s / 60);
}

function fracToMs(v: string): number {
  // Python's %f: up to 6 digits, right-padded (".5" is 500000 µs); ISO may carry 9 digits.
  return Math.floor(Number((v + '000').slice(0, 3)));
}

const nameIndex = (names: string[]) => (v: string): number => names.indexOf(v.toLowerCase());

/** Regex fragment and setter for each directive (regexes follow CPython's _strptime where it has one). */
const DIRECTIVES: Record<string, [string, Setter]> = {
  Y: ['(\\d\\d\\d\\d)', (v, f) => ((f.year = Number(v)), true)],
  y: ['(\\d\\d)', (v, f) => {
    const n = Number(v);
    f.year = n <= 68 ? 2000 + n : 1900 + n; // as Python: 69-99 -> 1900s
    return true;
  }],
  m: ['(1[0-2]|0[1-9]|[1-9])', (v, f) => ((f.month = Number(v) - 1), true)],
  d: ['(3[01]|[12]\\d|0[1-9]|[1-9]| [1-9])', (v, f) => ((f.day = Number(v)), true)],
  e: ['(3[01]|[12]\\d|0[1-9]|[1-9]| [1-9])', (v, f) => ((f.day = Number(v)), true)],
  H: ['(2[0-3]|[0-1]\\d|\\d)', (v, f) => ((f.hour = Number(v)), true)],
  I: ['(1[0-2]|0[1-9]|[1-9])', (v, f) => ((f.hour12 = Number(v)), true)],
  p: ['(am|pm)', (v, f) => ((f.pm = v.toLowerCase() === 'pm'), true)],
  M: ['([0-5]\\d|\\d)', (v, f) => ((f.minute = Number(v)), true)],
  S: ['(6[0-1]|[0-5]\\d|\\d)', (v, f) => ((f.second = Math.min(59, Number(v))), true)],
  f: ['(\\d{1,6})', (v, f) => ((f.ms = fracToMs(v)), true)],
  b: [`(${MONTHS.join('|')})`, (v, f) => ((f.month = nameIndex(MONTHS)(v)), true)],
  h: [`(${MONTHS.join('|')})`, (v, f) => ((f.month = nameIndex(MONTHS)(v)), true)],
  B: [`(${MONTHS_LONG.join('|')})`, (v, f) => ((f.month = nameIndex(MONTHS_LONG)(v)), true)],
  a: [`(?:${WEEKDAYS.join('|')})`, () => true],
  A: [`(?:${WEEKDAYS_LONG.join('|')})`, () => true],
  j: ['(36[0-6]|3[0-5]\\d|[12]\\d\\d|0[1-9]\\d|00[1-9]|[1-9]\\d|0[1-9]|[1-9])', (v, f) => ((f.yday = Number(v)), true)],
  z: ['([+-]\\d\\d:?[0-5]\\d(?::?[0-5]\\d(?:\\.\\d{1,6})?)?|Z)', (v, f) => {
    const o = parseOffset(v);
    if (o === undefined) return false;
    f.offset = o;
    return true;
  }],
  // Python accepts only UTC/GMT and the local zone names; we read UTC/GMT/Z as UTC and any other name as local.
  Z: ['([a-z]{1,6})', (v, f) => {
    const u = v.toUpperCase();
    if (u === 'UTC' || u === 'GMT' || u === 'Z' || u === 'UT') f.offset = 0;
    return true;
  }],
  s: ['(-?\\d{1,12}(?:\\.\\d{1,9})?)', (v, f) => ((f.epoch = Number(v)), true)],
};
const EXPANSIONS: Record<string, string> = { T: '%H:%M:%S', D: '%m/%d/%y', F: '%Y-%m-%d', R: '%H:%M' };

const SUPPORTED = [...Object.keys(DIRECTIVES), ...Object.keys(EXPANSIONS), '%'].map((d) => '%' + d).join(' ');


function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
}

function compileFormat(format: string): { re: RegExp; setters: Setter[] } {
  let src = '^';
  const setters: Setter[] = [];
  let fmt = format;
  for (let i = 0; i < fmt.length; i++) {
    const c = fmt[i]!;
    if (c === '%') {
      const d = fmt[i + 1];
      i++;
      if (d === undefined) throw new TimeFormatError(`time_format ${quotePattern(format)}: ends with a lone % (write %% for a literal %)`);
      if (d === '%') {
        src += '%';
        continue;
      }
      const exp = EXPANSIONS[d];
      if (exp !== undefined) {
        fmt = fmt.slice(0, i - 1) + exp + fmt.slice(i + 1);
        i -= 2;
        continue;
      }
      const spec = DIRECTIVES[d];
      if (!spec) {
        throw new TimeFormatError(`time_format ${quotePattern(format)}: unknown directive ${JSON.stringify('%' + d).slice(1, -1)} ` +
          `(known: ${SUPPORTED})`);
      }
      src += spec[0];
      if (spec[0].startsWith('(') && !spec[0].startsWith('(?:')) setters.push(spec[1]);
      continue;
    }
    if (/\s/.test(c)) {
      // As Python: any run of whitespace in the format matches one or more whitespace characters.
      while (i + 1 < fmt.length && /\s/.test(fmt[i + 1]!)) i++;
      src += '\\s+';
      continue;
    }
    src += escapeRe(c);
  }
  src += '$';
  return { re: new RegExp(src, 'i'), setters };
}

function daysInMonth(y: number, m: number): number {
  return m === 1 ? ((y % 4 === 0 && y % 100 !== 0) || y % 400 === 0 ? 29 : 28) : [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][m]!;
}

/** Epoch ms of the fields in `year`, or NaN when the date does not exist in that year (Feb 29). */
function timeIn(f: Fields, year: number): number {
  let month = f.month;
  let day = f.day;
  if (f.yday !== undefined) {
    month = 0;
    day = f.yday;
    const leap = daysInMonth(year, 1) === 29;
    if (day > (leap ? 366 : 365)) return NaN;
  } else if (day > daysInMonth(year, month)) return NaN;
  let hour = f.hour;
  if (f.hour12 !== undefined) hour = (f.hour12 % 12) + (f.pm ? 12 : 0);
  if (f.offset !== undefined) {
    return Date.UTC(year, month, day, hour, f.minute, f.second, f.ms) - f.offset * 60_000;
  }
  const d = new Date(year, month, day, hour, f.minute, f.second, f.ms);
  if (year < 100) d.setFullYear(year);
  return d.getTime();
}

const ISO_RE = /^(\d{4})-(\d\d)-(\d\d)(?:[Tt ](\d\d):(\d\d)(?::(\d\d)(?:[.,](\d{1,9}))?)?)?\s?([Zz]|[+-]\d\d(?::?\d\d)?)?$/;

/** Parses ISO 8601 / RFC 3339 (`2026-11-21T05:04:00.123456+01:00`, `2026-11-21 05:04:00Z`, local if no offset). */
export function parseIso(s: string): number | null {
  const m = ISO_RE.exec(s);
  if (m === null) return null;
  const f = newFields();
  f.year = Number(m[1]);
  f.month = Number(m[2]) - 1;
  f.day = Number(m[3]);
  if (f.month > 11 || f.day < 1) return null;
  if (m[4] !== undefined) {
    f.hour = Number(m[4]);
    f.minute = Number(m[5]);
    if (f.hour > 23 || f.minute > 59) return null;
    if (m[6] !== undefined) f.second = Math.min(59, Number(m[6]));
    if (f.second > 60) return null;
    if (m[7] !== undefined) f.ms = fracToMs(m[7]);
  }
  if (m[8] !== undefined) {
    const o = parseOffset(m[8]);
    if (o === undefined) return null;
    f.offset = o;
  }
  const t = timeIn(f, f.year);
  return Number.isNaN(t) ? null : t;
}

/**
 * Compiles a strptime format (or undefined for ISO 8601 only) into a parser. Throws TimeFormatError for an
 * unsupported directive. The parser caches the last string it parsed: log lines come in runs of equal seconds.
 */
export function compileTimeFormat(format?: string): TimeParser {
  const compiled = format === undefined || format === '' ? null : compileFormat(format);

  // Cache of the last string: either a fixed time, or yearless fields.
  let lastStr: string | null = null;
  let lastFixed: number | null = null;
  let lastFields: Fields | null = null;
  // The local year of the last `now` seen, and the span [yearLo, yearHi) of times in it.
  let year = 0;
  let yearLo = 0;
  let yearHi = -1;
  // Per yearless string: its time in `year` - 1, `year`, `year` + 1, computed when first needed (NaN: not yet).
  let candYear = 0;
  const cands = [NaN, NaN, NaN];

  function cand(f: Fields, k: 0 | 1 | 2): number {
    let t = cands[k]!;
    if (Number.isNaN(t)) {
      t = timeIn(f, year - 1 + k);
      cands[k] = Number.isNaN(t) ? Infinity : t; // Infinity: the date does not exist that year
    }
    return t;
  }

  /**
   * Places a yearless time: the latest of (year of now + 1, year of now, year of now - 1) that is not more than
   * YEAR_SKEW_MS after `now`. Usually one Date computation per distinct string: next year is only a candidate in
   * the last day of the year.
   */
  function yearlessFor(f: Fields, now: number): number | null {
    if (now < yearLo || now >= yearHi) {
      year = new Date(now).getFullYear();
      yearLo = new Date(year, 0, 1).getTime();
      yearHi = new Date(year + 1, 0, 1).getTime();
    }
    if (candYear !== year) {
      candYear = year;
      cands[0] = cands[1] = cands[2] = NaN;
    }
    const limit = now + YEAR_SKEW_MS;
    if (limit >= yearHi) {
      const next = cand(f, 2);
      if (next <= limit) return next;
    }
    const cur = cand(f, 1);
    if (cur <= limit) return cur;
    const prev = cand(f, 0);
    if (prev <= limit) return prev;
    // Feb 29 read in a year after a leap year: go back to the last year in which the date exists.
    for (let back = 2; back <= 8; back++) {
      const t = timeIn(f, year - back);
      if (!Number.isNaN(t) && t <= limit) return t;
    }
    return null;
  }

  function parseWithFormat(s: string): Fields | null {
    if (compiled === null) return null;
    const m = compiled.re.exec(s);
    if (m === null) return null;
    const f = newFields();
    const setters = compiled.setters;
    for (let i = 0; i < setters.length; i++) {
      const v = m[i + 1];
      if (v !== undefined && !setters[i]!(v, f)) return null;
    }
    return f;
  }

  return {
    format,
    parse(s: string, now: number): number | null {
      if (s === lastStr) return lastFields !== null ? yearlessFor(lastFields, now) : lastFixed;
      lastStr = s;
      lastFields = null;
      lastFixed = null;
      candYear = NaN;
      const f = parseWithFormat(s);
      if (f !== null) {
        if (f.epoch !== undefined) lastFixed = Math.floor(f.epoch * 1000);
        else if (f.year !== undefined) {
          const t = timeIn(f, f.year);
          lastFixed = Number.isNaN(t) ? null : t;
        } else {
          lastFields = f;
          return yearlessFor(f, now);
        }
        return lastFixed;
      }
      lastFixed = parseIso(s.trim());
      return lastFixed;
    },
  };
}
