/*
 * Request validation. Every query string and body is checked against a strict zod schema: an unknown or repeated
 * parameter, a malformed value or an unknown body field is a 400 naming the field, never a crash and never a 500.
 */
import { z } from 'zod';
import { MAX_BAN_SECONDS } from '../../bans/duration.ts';
import { MAX_REASON_CHARS, parseDuration, parseIp } from '../protocol.ts';
import { BAN_STATES, decodeCursor } from './queries.ts';

/** An error that is the client's: its HTTP status, message and the field at fault. */
export class ApiError extends Error {
  constructor(
    readonly status: 400 | 401 | 403 | 404 | 405 | 409 | 413 | 415 | 421 | 422 | 503,
    message: string,
    readonly field?: string,
  ) {
    super(message);
  }
}

const ORIGINS = ['local', 'manual', 'remote', 'pyfilter'] as const;

const intText = (min: number, max: number) =>
  z
    .string()
    .regex(/^\d{1,9}$/, { error: 'expected a whole number' })
    .transform(Number)
    .pipe(z.number().min(min, { error: `expected at least ${min}` }).max(max, { error: `expected at most ${max}` }));

/** ISO 8601 ("2024-05-01", "2024-05-01T12:00:00Z") or milliseconds since the epoch. */
const timeText = z.string().transform((s, ctx) => {
  let t = Number.NaN;
  if (/^\d{1,15}$/.test(s)) t = Number(s);
  else if (/^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})?)?$/.test(s)) t = Date.parse(s);
  if (!Number.isFinite(t)) {
    ctx.addIssue({ code: 'custom', message: 'expected an ISO 8601 time (2024-05-01, 2024-05-01T12:00:00Z) or milliseconds since the epoch' });
    return z.NEVER;
  }
  return t;
});

const ipText = z.string().transform((s, ctx) => {
  try {
    return parseIp(s);
  } catch (e) {
    ctx.addIssue({ code: 'custom', message: (e as Error).message });
    return z.NEVER;
  }
});

const label = z.string().min(1).max(200);

export const bansQuery = z
  .strictObject({
    state: z.enum(BAN_STATES, { error: `expected one of ${BAN_STATES.join(', ')}` }).default('active'),
    rule: label.optional(),
    country: z.string().min(2).max(100).optional(),
    node: label.optional(),
    origin: z.enum(ORIGINS, { error: `expected one of ${ORIGINS.join(', ')}` }).optional(),
    since: timeText.optional(),
    until: timeText.optional(),
    ip: ipText.optional(),
    q: z
      .string()
      .regex(/^[0-9A-Fa-f.:/]{1,50}$/, { error: 'expected the start of an address: digits, a-f, ".", ":" and "/"' })
      .transform((s) => s.toLowerCase())
      .optional(),
    limit: intText(1, 1000).default(100),
    cursor: z
      .string()
      .transform((s, ctx) => {
        const c = decodeCursor(s);
        if (c === null) {
          ctx.addIssue({ code: 'custom', message: 'not a cursor from this API (use next_cursor of the previous page)' });
          return z.NEVER;
        }
        return c;
      })
      .optional(),
    offset: intText(0, 1_000_000).optional(),
  })
  .superRefine((q, ctx) => {
    if (q.cursor !== undefined && q.offset !== undefined) ctx.addIssue({ code: 'custom', path: ['offset'], message: 'give cursor or offset, not both' });
    if (q.since !== undefined && q.until !== undefined && q.since > q.until) ctx.addIssue({ code: 'custom', path: ['until'], message: 'until is before since' });
  });

export const emptyQuery = z.strictObject({});

/** POST /api/bans. duration: seconds, "10m"/"12h"/"7d"/"permanent", or null for permanent; absent: ban_time with escalation. */
export const banBody = z.strictObject(
  {
    ip: z.string({ error: 'expected an IP address or CIDR prefix as a string' }).pipe(ipText),
    duration: z
      .union([z.number(), z.string(), z.null()], { error: 'expected seconds, a duration such as "10m" or "7d", "permanent", or null' })
      .transform((d, ctx) => {
        if (d === null) return null;
        if (typeof d === 'number') {
          if (!Number.isInteger(d) || d < 1 || d > MAX_BAN_SECONDS) {
            ctx.addIssue({ code: 'custom', message: `expected a whole number of seconds from 1 to ${MAX_BAN_SECONDS}, or null for permanent` });
            return z.NEVER;
          }
          return d;
        }
        try {
          return parseDuration(d);
        } catch (e) {
          ctx.addIssue({ code: 'custom', message: (e as Error).message });
          return z.NEVER;
        }
      })
      .optional(),
    reason: z
      .string({ error: 'expected a string' })
      .max(MAX_REASON_CHARS, { error: `expected at most ${MAX_REASON_CHARS} characters` })
      .optional(),
  },
  { error: 'expected a JSON object {"ip": ..., "duration": ..., "reason": ...}' },
);

/** Turns the first zod issue into an ApiError naming its field. */
export function check<S extends z.ZodType>(schema: S, value: unknown, what: string): z.output<S> {
  const r = schema.safeParse(value);
  if (r.success) return r.data;
  const issue = r.error.issues[0]!;
  if (issue.code === 'unrecognized_keys') {
    const key = String(issue.keys[0]).slice(0, 60);
    throw new ApiError(400, `unknown ${what} ${JSON.stringify(key)}`, key);
  }
  const field = issue.path.length > 0 ? issue.path.map(String).join('.') : undefined;
  throw new ApiError(400, field ? `${what} ${JSON.stringify(field)}: ${issue.message}` : issue.message, field);
}

/** A query string as an object of single values; a repeated parameter is refused. */
export function singleQuery(url: URL): Record<string, string> {
  // No prototype: a parameter named __proto__ is just an unknown parameter.
  const out = Object.create(null) as Record<string, string>;
  for (const [k, v] of url.searchParams) {
    if (Object.hasOwn(out, k)) throw new ApiError(400, `query parameter ${JSON.stringify(k.slice(0, 60))} is given more than once`, k.slice(0, 60));
    out[k] = v;
  }
  return out;
}

/**
 * A JSON request body: 415 unless it says it is JSON, 413 past `max` bytes whether or not a Content-Length announced
 * it (the stream is cut off there, never buffered further), 400 when it does not parse.
 */
export async function readJsonBody(req: Request, max: number): Promise<unknown> {
  if (!/^application\/json\s*(;|$)/i.test(req.headers.get('content-type') ?? '')) throw new ApiError(415, 'expected a JSON body (Content-Type: application/json)');
  const tooLarge = () => new ApiError(413, `request body larger than ${max} bytes (api.max_body_bytes)`);
  if (Number(req.headers.get('content-length') ?? 0) > max) throw tooLarge();
  const chunks: Uint8Array[] = [];
  if (req.body !== null) {
    let size = 0;
    const reader = req.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      size += value.byteLength;
      if (size > max) {
        await reader.cancel().catch(() => {});
        throw tooLarge();
      }
      chunks.push(value);
    }
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
  } catch {
    throw new ApiError(400, 'malformed JSON body');
  }
}
