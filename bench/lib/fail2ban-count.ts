import { normalizeIp } from '../../src/detect/ip.ts';

/*
 * The pure half of the agreement bench: what fail2ban would ban, from fail2ban-regex's output, and how that differs
 * from TSFilter's bans. fail2ban-regex only says which lines are failures (and of which address, at what time); the
 * ban decision lives in fail2ban-server's FailManager, which is re-done here line for line from fail2ban 1.0's
 * server/failmanager.py and server/ticket.py:
 *
 *  - A failure of an address without a ticket opens one: retry = 1, first = last = its time.
 *  - A further failure first runs FailTicket.adjustTime(t, findtime): when t is later than the last failure and the
 *    ticket's first failure is older than t - findtime, retry becomes round(retry / (t - first) * findtime) (Python's
 *    round: half to even) and first = t - findtime, i.e. the count is scaled to the rate seen so far rather than
 *    counted exactly; then retry += 1.
 *  - FailManager.cleanup(now) drops tickets whose last failure is at or before now - findtime. The server runs it at
 *    most every 5 s; here it is applied when the address's next failure arrives (as if the server were running live
 *    with now = the line's time), which is what a cleanup between the two failures would have done.
 *  - retry >= maxretry bans (Filter.performBan -> FailManager.toBan), and the ticket is deleted. A later failure of
 *    the same address opens a new ticket (fail2ban-server would log "already banned" while the ban lasts).
 *
 * One row of `fail2ban-regex -o row` is one failure the server would add (FailTicket with one attempt).
 */

export interface Failure {
  ip: string;
  /** Seconds since the epoch, as fail2ban read it from the line. */
  time: number;
}

export interface Fail2banBan {
  ip: string;
  /** Time of the failure that reached maxretry (s). */
  time: number;
  /** retry when it reached maxretry. */
  retry: number;
}

/** Python 3's round(): to the nearest integer, halves to the even one. */
export function pyRound(x: number): number {
  const f = Math.floor(x);
  const d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** `fail2ban-regex -o row` lines: `['203.0.113.5',\t1700000000.0,\t{...}],` -> one failure each, in order. */
export function parseRows(text: string): Failure[] {
  const out: Failure[] = [];
  for (const line of text.split('\n')) {
    const m = /^\['([^']*)',\t(-?\d+(?:\.\d+)?),\t/.exec(line);
    if (!m) continue;
    const ip = normalizeIp(m[1]!) ?? m[1]!;
    out.push({ ip, time: Number(m[2]) });
  }
  return out;
}

/**
 * `fail2ban-regex -o '<fid>\t<time>\t<msg>'` lines -> the log lines fail2ban counted, per address. A failure built
 * from several lines (sshd's `Disconnecting: Too many authentication failures` joined to the connection's earlier
 * line) prints one row per line, so this is for sample lines, not for counting.
 */
export function parseMsgRows(text: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const line of text.split('\n')) {
    const a = line.indexOf('\t');
    const b = line.indexOf('\t', a + 1);
    if (a <= 0 || b <= a) continue;
    const ip = normalizeIp(line.slice(0, a)) ?? line.slice(0, a);
    const msg = line.slice(b + 1);
    let l = out.get(ip);
    if (!l) out.set(ip, (l = []));
    if (!l.includes(msg)) l.push(msg);
  }
  return out;
}

/** fail2ban's FailManager over failures in log order: every ban it would decide (see the comment at the top). */
export function countFail2banBans(failures: readonly Failure[], opts: { maxretry: number; findtime: number }): Fail2banBan[] {
  const tickets = new Map<string, { first: number; last: number; retry: number }>();
  const bans: Fail2banBan[] = [];
  for (const f of failures) {
    let t = tickets.get(f.ip);
    if (t && t.last <= f.time - opts.findtime) {
      tickets.delete(f.ip);
      t = undefined;
    }
    if (!t) {
      t = { first: f.time, last: f.time, retry: 1 };
      tickets.set(f.ip, t);
    } else {
      if (f.time > t.last) {
        if (t.first < f.time - opts.findtime) {
          t.retry = pyRound((t.retry / (f.time - t.first)) * opts.findtime);
          t.first = f.time - opts.findtime;
        }
        t.last = f.time;
      }
      t.retry += 1;
    }
    if (t.retry >= opts.maxretry) {
      bans.push({ ip: f.ip, time: f.time, retry: t.retry });
      tickets.delete(f.ip);
    }
  }
  return bans;
}

/** What TSFilter decided for one address (its first ban) and the lines of the file its rule matched for it. */
export interface TsfilterSide {
  bans: Map<string, { time: number; failures: number; instant: boolean; lines: string[] }>;
  /** Failure (and instant) lines the rule matched, per address, in file order. */
  failureLines: Map<string, string[]>;
  /** Success lines (a success clears the address's failures), per address. */
  successLines: Map<string, string[]>;
}

export interface Fail2banSide {
  bans: Map<string, Fail2banBan>;
  /** Lines fail2ban counted as failures, per address. */
  lines: Map<string, string[]>;
  /** Failures (rows) per address. */
  failures: Map<string, number>;
}

export type DiffReason =
  /** TSFilter banned on one line: sshd's own `maximum authentication attempts exceeded`. */
  | 'tsfilter-instant-ban'
  /** TSFilter counted lines fail2ban's filter does not count as failures. */
  | 'only-tsfilter-counts-line'
  /** fail2ban counted lines TSFilter's rule does not match. */
  | 'only-fail2ban-counts-line'
  /** A successful login from the address cleared TSFilter's count. */
  | 'tsfilter-success-cleared'
  /** Both saw the same lines; the counting differs (attempts per connection vs lines, exact window vs rate). */
  | 'counting';

export interface DiffEntry {
  ip: string;
  /** Who banned the address. */
  bannedBy: 'tsfilter' | 'fail2ban';
  reason: DiffReason;
  sample: string;
  /** Lines TSFilter's rule matched as failures for the address, failures fail2ban counted for it. */
  tsfilterLines: number;
  fail2banFailures: number;
}

export interface Agreement {
  both: string[];
  tsfilterOnly: DiffEntry[];
  fail2banOnly: DiffEntry[];
}

/** The addresses each side bans and the other does not, each with why and one line of the log that shows it. */
export function diffBans(ts: TsfilterSide, fb: Fail2banSide): Agreement {
  const both: string[] = [];
  const tsfilterOnly: DiffEntry[] = [];
  const fail2banOnly: DiffEntry[] = [];
  const empty: string[] = [];
  for (const [ip, b] of ts.bans) {
    if (fb.bans.has(ip)) {
      both.push(ip);
      continue;
    }
    const fbLines = new Set(fb.lines.get(ip) ?? empty);
    const mine = ts.failureLines.get(ip) ?? b.lines;
    const extra = mine.find((l) => !fbLines.has(l));
    let reason: DiffReason;
    let sample: string;
    if (b.instant) {
      reason = 'tsfilter-instant-ban';
      sample = b.lines.at(-1) ?? extra ?? '';
    } else if (extra !== undefined) {
      reason = 'only-tsfilter-counts-line';
      sample = extra;
    } else {
      reason = 'counting';
      sample = b.lines.at(-1) ?? '';
    }
    tsfilterOnly.push({ ip, bannedBy: 'tsfilter', reason, sample, tsfilterLines: mine.length, fail2banFailures: fb.failures.get(ip) ?? 0 });
  }
  for (const ip of fb.bans.keys()) {
    if (ts.bans.has(ip)) continue;
    const mine = new Set(ts.failureLines.get(ip) ?? empty);
    const theirs = fb.lines.get(ip) ?? empty;
    const extra = theirs.find((l) => !mine.has(l));
    const success = ts.successLines.get(ip);
    let reason: DiffReason;
    let sample: string;
    if (extra !== undefined) {
      reason = 'only-fail2ban-counts-line';
      sample = extra;
    } else if (success && success.length > 0) {
      reason = 'tsfilter-success-cleared';
      sample = success[0]!;
    } else {
      reason = 'counting';
      sample = theirs.at(-1) ?? '';
    }
    fail2banOnly.push({ ip, bannedBy: 'fail2ban', reason, sample, tsfilterLines: mine.size, fail2banFailures: fb.failures.get(ip) ?? 0 });
  }
  both.sort();
  return { both, tsfilterOnly, fail2banOnly };
}

/**
 * A line with its variable parts replaced (time, host, pid, addresses, ports, user names), so that differences
 * of the same kind group together: `Did not receive identification string from <IP>`.
 */
export function lineShape(line: string): string {
  let s = line.replace(/^(?:[A-Z][a-z]{2} {1,2}\d{1,2} \d{2}:\d{2}:\d{2}|\d{4}-\d{2}-\d{2}T\S+) \S+ /, '');
  s = s.replace(/^([\w-]+)\[\d+\]: /, '$1: ');
  s = s.replace(/\b(?:\d{1,3}\.){3}\d{1,3}\b/g, '<IP>').replace(/\b[0-9a-f]{0,4}(?::[0-9a-f]{0,4}){2,7}\b/gi, '<IP>');
  s = s.replace(/\b(invalid user|user|for) (?!invalid\b)\S+/g, '$1 <USER>');
  s = s.replace(/\bport \d+/g, 'port <N>').replace(/\b\d+\b/g, '<N>');
  return s;
}

/** Differences grouped by (who banned, reason, shape of the sample line): count, addresses and one sample. */
export function groupDiffs(entries: readonly DiffEntry[]): { bannedBy: string; reason: DiffReason; shape: string; count: number; ips: string[]; sample: string }[] {
  const groups = new Map<string, { bannedBy: string; reason: DiffReason; shape: string; count: number; ips: string[]; sample: string }>();
  for (const e of entries) {
    const shape = lineShape(e.sample);
    const key = `${e.bannedBy}\0${e.reason}\0${shape}`;
    let g = groups.get(key);
    if (!g) groups.set(key, (g = { bannedBy: e.bannedBy, reason: e.reason, shape, count: 0, ips: [], sample: e.sample }));
    g.count++;
    g.ips.push(e.ip);
  }
  return [...groups.values()].sort((a, b) => a.bannedBy.localeCompare(b.bannedBy) || b.count - a.count);
}
