/**
 * Python `re` -> JavaScript RegExp translation for PyFilter patterns, and the static analysis the compiler needs
 * (capture groups, a required literal for a fast `includes` pre-filter).
 */

export interface Translated {
  source: string;
  /** JS flags from leading inline flags: a subset of "ims". */
  flags: string;
}

/** Thrown with a message meant for the user; the compiler wraps it in a PatternError. */
export class TranslateError extends Error {}

/**
 * Translates Python syntax: `(?P<name>` -> `(?<name>`, leading inline flags `(?i)` `(?s)` `(?m)` -> JS flags
 * (`(?a)`/`(?u)` are dropped: they do not change what these ASCII patterns match), `\A` -> `^`, `\Z` -> `$`.
 * Refuses `(?P=name)` (a backreference) and `(?x)`/`(?L)`, which have no JS equivalent.
 */
export function translatePython(pattern: string): Translated {
  let src = pattern;
  let flags = '';
  for (;;) {
    const m = /^\(\?([aiLmsux]+)\)/.exec(src);
    if (m === null) break;
    for (const f of m[1]!) {
      if (f === 'i' || f === 'm' || f === 's') {
        if (!flags.includes(f)) flags += f;
      } else if (f === 'x') throw new TranslateError('the verbose flag (?x) is not supported');
      else if (f === 'L') throw new TranslateError('the locale flag (?L) is not supported');
    }
    src = src.slice(m[0].length);
  }
  let out = '';
  let inClass = false;
  for (let i = 0; i < src.length; i++) {
    const c = src[i]!;
    if (c === '\\') {
      const n = src[i + 1];
      if (n === undefined) throw new TranslateError('pattern ends with a lone backslash');
      i++;
      if (!inClass && n === 'A') out += '^';
      else if (!inClass && (n === 'Z' || n === 'z')) out += '$';
      else out += c + n;
      continue;
    }
    if (inClass) {
      if (c === ']') inClass = false;
      out += c;
      continue;
    }
    if (c === '[') {
      inClass = true;
      out += c;
      // A `]` right after `[` or `[^` is literal in Python (and in JS it would close an empty class).
      if (src[i + 1] === '^') {
        out += '^';
        i++;
      }
      if (src[i + 1] === ']') {
        out += '\\]';
        i++;
      }
      continue;
    }
    if (c === '(' && src[i + 1] === '?') {
      if (src.startsWith('(?P<', i)) {
        out += '(?<';
        i += 3;
        continue;
      }
      if (src.startsWith('(?P=', i)) throw new TranslateError('backreferences (?P=name) are not allowed');
      if (src.startsWith('(?#', i)) {
        const end = src.indexOf(')', i);
        if (end < 0) throw new TranslateError('unterminated comment (?#');
        i = end;
        continue;
      }
    }
    out += c;
  }
  return { source: out, flags };
}

export interface GroupInfo {
  /** Number of capturing groups. */
  count: number;
  /** Named capturing groups in order. */
  names: string[];
}

/** Counts the capturing groups of a JS regex source. */
export function groupInfo(source: string): GroupInfo {
  let count = 0;
  const names: string[] = [];
  let inClass = false;
  for (let i = 0; i < source.length; i++) {
    const c = source[i];
    if (c === '\\') {
      i++;
      continue;
    }
    if (inClass) {
      if (c === ']') inClass = false;
      continue;
    }
    if (c === '[') {
      inClass = true;
      continue;
    }
    if (c !== '(') continue;
    if (source[i + 1] !== '?') {
      count++;
      continue;
    }
    const m = /^\(\?<([A-Za-z_$][\w$]*)>/.exec(source.slice(i, i + 40));
    if (m !== null) {
      count++;
      names.push(m[1]!);
    }
  }
  return { count, names };
}

const QUANT_RE = /^\{(\d+)(?:,(\d*))?\}/;

/**
 * A literal substring that every match must contain, found among the pattern's top-level (not grouped, not
 * alternated, not optional) characters; the longest one of at least 3 characters, or null. Used as a cheap
 * `String.prototype.includes` pre-filter so most lines never reach the regex engine.
 */
export function requiredLiteral(source: string, flags: string): string | null {
  if (flags.includes('i')) return null;
  let best = '';
  let run = '';
  let depth = 0;
  let inClass = false;
  const flush = () => {
    if (run.length > best.length) best = run;
    run = '';
  };
  for (let i = 0; i < source.length; i++) {
    const c = source[i]!;
    if (inClass) {
      if (c === '\\') i++;
      else if (c === ']') inClass = false;
      continue;
    }
    if (depth > 0) {
      if (c === '\\') i++;
      else if (c === '[') inClass = true;
      else if (c === '(') depth++;
      else if (c === ')') depth--;
      continue;
    }
    // Top level.
    if (c === '*' || c === '+' || c === '?') {
      // A quantifier on a group, class or escape (those on a literal character are consumed below).
      flush();
      continue;
    }
    if (c === '{') {
      const q = QUANT_RE.exec(source.slice(i, i + 20));
      if (q !== null) {
        flush();
        i += q[0].length - 1;
        continue;
      }
    }
    let lit: string | null = null;
    if (c === '\\') {
      const n = source[i + 1];
      i++;
      if (n !== undefined && !/[A-Za-z0-9]/.test(n)) lit = n;
      else if (n === 't') lit = '\t';
      else {
        flush();
        if (n === 'x') i += 2;
        else if (n === 'u') i += source[i + 1] === '{' ? source.indexOf('}', i) - i : 4;
        else if (n === 'c') i += 1;
        else if (n === 'k') i = Math.max(i, source.indexOf('>', i));
        else if (n !== undefined && /[0-9]/.test(n)) while (/[0-9]/.test(source[i + 1] ?? '')) i++;
        continue;
      }
    } else if (c === '|') return null;
    else if (c === '(') {
      flush();
      depth++;
      continue;
    } else if (c === '[') {
      flush();
      inClass = true;
      continue;
    } else if (c === '.' || c === '^' || c === '$') {
      flush();
      continue;
    } else lit = c;
    // A quantifier after this literal character?
    const next = source[i + 1];
    let min = 1;
    let quantified = false;
    if (next === '*' || next === '?') {
      min = 0;
      quantified = true;
      i++;
    } else if (next === '+') {
      quantified = true;
      i++;
    } else if (next === '{') {
      const q = QUANT_RE.exec(source.slice(i + 1, i + 20));
      if (q !== null) {
        min = Number(q[1]);
        quantified = true;
        i += q[0].length;
      }
    }
    if (quantified && source[i + 1] === '?') i++; // lazy
    if (!quantified) {
      run += lit;
      continue;
    }
    if (min >= 1) run += lit;
    flush();
  }
  flush();
  return best.length >= 3 ? best : null;
}

function otherCase(c: string): string | null {
  const u = c.toUpperCase();
  const l = c.toLowerCase();
  const o = c === u ? l : u;
  return o !== c && o.length === 1 ? o : null;
}

/**
 * Rewrites a JS regex source so that it matches case-insensitively without the `i` flag (which V8's linear engine
 * does not support): each letter `a` becomes `[aA]`, and letters and letter ranges in classes get their other case.
 * Group names and escapes are left alone.
 */
export function foldCase(source: string): string {
  let out = '';
  let inClass = false;
  let classExtra = '';
  for (let i = 0; i < source.length; i++) {
    const c = source[i]!;
    if (c === '\\') {
      const n = source[i + 1] ?? '';
      let len = 2;
      if (n === 'x') len = 4;
      else if (n === 'u') len = source[i + 2] === '{' ? source.indexOf('}', i) - i + 1 : 6;
      else if (n === 'c') len = 3;
      else if (n === 'k' || n === 'p' || n === 'P') {
        const close = source.indexOf(n === 'k' ? '>' : '}', i);
        len = close < 0 ? 2 : close - i + 1;
      }
      out += source.slice(i, i + len);
      i += len - 1;
      continue;
    }
    if (inClass) {
      if (c === ']') {
        out += classExtra + c;
        inClass = false;
        continue;
      }
      const next = source[i + 1];
      const end = source[i + 2];
      if (next === '-' && end !== undefined && end !== ']' && end !== '\\') {
        // A range: add the other-case range when both ends are letters of one case.
        out += c + '-' + end;
        const oc = otherCase(c);
        const oe = otherCase(end);
        if (oc !== null && oe !== null && (c === c.toLowerCase()) === (end === end.toLowerCase())) {
          classExtra += oc + '-' + oe;
        }
        i += 2;
        continue;
      }
      out += c;
      const o = otherCase(c);
      if (o !== null) classExtra += o;
      continue;
    }
    if (c === '[') {
      inClass = true;
      classExtra = '';
      out += c;
      if (source[i + 1] === '^') {
        out += '^';
        i++;
      }
      continue;
    }
    if (c === '(' && source[i + 1] === '?' && source[i + 2] === '<' && source[i + 3] !== '=' && source[i + 3] !== '!') {
      const close = source.indexOf('>', i);
      out += source.slice(i, close + 1);
      i = close;
      continue;
    }
    const o = otherCase(c);
    out += o === null ? c : `[${c}${o}]`;
  }
  return out;
}
