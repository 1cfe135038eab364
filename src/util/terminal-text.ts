// Log lines are attacker-controlled: nothing from them reaches a terminal unescaped (C0/C1 controls, DEL, line and
// paragraph separators, bidi overrides that could make a line read as something else).
const CONTROLS = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;
const UNSAFE_TEXT = /[\\"\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;
const UNSAFE_JSON = /[\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;
const SHORT: Record<string, string> = { '\\': '\\\\', '"': '\\"', '\n': '\\n', '\r': '\\r', '\t': '\\t' };
const u4 = (c: string) => '\\u' + c.charCodeAt(0).toString(16).padStart(4, '0');

/** `s` in double quotes with control characters escaped. */
export function printable(s: string): string {
  return '"' + s.replace(UNSAFE_TEXT, (c) => SHORT[c] ?? u4(c)) + '"';
}

/** `s` as it is, but with the characters a terminal would act on escaped (for text that mixes ours and a log's). */
export function escapeControls(s: string): string {
  return s.replace(CONTROLS, (c) => SHORT[c] ?? u4(c));
}

/** JSON.stringify, with the characters it leaves raw but a terminal would act on escaped too (still valid JSON). */
export function jsonLine(v: unknown): string {
  return JSON.stringify(v).replace(UNSAFE_JSON, u4);
}

/**
 * A pattern (or time format) quoted for a message: JSON-quoted, so control characters and quotes are escaped and the
 * text reads as it is written in config.json; longer than `max` characters, its middle is cut out (`…`) — the
 * patterns of one rule often share a long prefix, and the end is what tells them apart.
 */
export function quotePattern(text: string, max = 120): string {
  const chars = [...text];
  if (chars.length <= max) return JSON.stringify(text);
  const head = Math.floor(max / 3);
  return JSON.stringify(chars.slice(0, head).join('') + '…' + chars.slice(chars.length - (max - head - 1)).join(''));
}
