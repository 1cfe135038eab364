/*
 * Structured log lines for journald and any collector: `level=info msg="banned" ip=192.0.2.7 rule=ssh`.
 * Values come from attacker-controlled log text, so every value is quoted when needed and control characters are
 * escaped: a crafted line can never forge a second log record.
 */

export type Level = 'debug' | 'info' | 'warn' | 'error';
const ORDER: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
}

export function formatValue(v: unknown): string {
  let s: string;
  if (typeof v === 'string') s = v;
  else if (v instanceof Error) s = v.message;
  else if (typeof v === 'number' || typeof v === 'boolean' || v === null || v === undefined) return String(v);
  else s = JSON.stringify(v) ?? String(v);
  if (s !== '' && /^[\w.:\/@+\-\[\]]+$/.test(s)) return s;
  // JSON string quoting escapes quotes, backslashes and control characters (newlines included).
  // eslint-disable-next-line no-control-regex
  return JSON.stringify(s).replace(/[\u007f-\u009f\u2028\u2029]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

export function formatRecord(level: Level, msg: string, fields?: Record<string, unknown>): string {
  let line = `level=${level} msg=${formatValue(msg)}`;
  if (fields) for (const [k, v] of Object.entries(fields)) if (v !== undefined) line += ` ${k}=${formatValue(v)}`;
  return line;
}

export function createLogger(opts: { level?: Level; write?: (line: string) => void } = {}): Logger {
  const min = ORDER[opts.level ?? 'info'];
  const write = opts.write ?? ((line: string) => process.stdout.write(line + '\n'));
  const emit = (level: Level) => (msg: string, fields?: Record<string, unknown>) => {
    if (ORDER[level] >= min) write(formatRecord(level, msg, fields));
  };
  return { debug: emit('debug'), info: emit('info'), warn: emit('warn'), error: emit('error') };
}

/** A logger that drops everything (replay's quiet mode, tests). */
export const silentLogger: Logger = { debug() {}, info() {}, warn() {}, error() {} };
