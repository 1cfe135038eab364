/**
 * A Source that follows the systemd journal through `journalctl -f -o json`.
 *
 * journalctl is spawned with an argv array (never a shell). It resumes after the stored cursor, or reads the whole
 * matching journal the first time (`-n all`, as PyFilter reads files from the beginning). With --file/--directory
 * `-m` is always passed: without it, `-f` means "the current boot" and journalctl fails on journals from another
 * machine ("Data from the specified boot (+0) is not available"). If journalctl exits, it is restarted after the
 * last cursor with exponential backoff; status().error says why.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { capText, decodeLine } from './line-splitter.ts';
import type { Warn } from './tailer.ts';
import type { Position, PositionStore, Source, SourceLine, SourceStatus } from './types.ts';
import { MAX_LINE_BYTES } from './types.ts';

export interface JournalSourceOptions {
  name: string;
  /** journalctl match arguments, each its own argv item: e.g. ['_SYSTEMD_UNIT=ssh.service', '+', '_SYSTEMD_UNIT=sshd.service']. */
  matches: string[];
  /** Journal files to read (--file=F each) instead of the system journal. */
  files?: string[];
  /** A journal directory to read (--directory=D). */
  directory?: string;
  positions: PositionStore;
  /** journalctl binary (default 'journalctl' from PATH). */
  journalctl?: string;
  warn: Warn;
}

/** A JSON line longer than this is dropped with a warning (bounded buffering of journalctl output). */
export const MAX_JSON_LINE_BYTES = 4 * 1024 * 1024;
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 30_000;
/** A journalctl that ran this long before exiting restarts with the minimal backoff again. */
const HEALTHY_RUN_MS = 30_000;

type Sink = (lines: SourceLine[], positions: Map<string, Position>) => void;

/** Builds journalctl's argv (without the binary). Exported for tests and for `--print-config`-style diagnostics. */
export function journalctlArgs(opts: Pick<JournalSourceOptions, 'matches' | 'files' | 'directory'>, cursor: string | undefined): string[] {
  // --all: without it journalctl prints fields over 4096 bytes as null, and an attacker could pad a log line
  // past that to slip it past the rules. We cut MESSAGE to MAX_LINE_BYTES ourselves.
  const args = ['-f', '-o', 'json', '--all', '--no-pager'];
  const files = opts.files ?? [];
  if (files.length > 0 || opts.directory) args.push('-m');
  for (const f of files) args.push(`--file=${f}`);
  if (opts.directory) args.push(`--directory=${opts.directory}`);
  if (cursor) args.push(`--after-cursor=${cursor}`);
  else args.push('-n', 'all');
  args.push(...opts.matches);
  return args;
}

/** A journal field value as text: strings as they are, byte arrays (non-UTF-8 data) decoded leniently. */
function fieldText(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (Array.isArray(v)) {
    if (v.every((b) => typeof b === 'number')) {
      const buf = Buffer.from((v as number[]).map((b) => b & 0xff));
      return buf.toString('utf8');
    }
    // The field occurs several times in the entry: take the first value.
    return v.length > 0 ? fieldText(v[0]) : undefined;
  }
  return undefined;
}

/**
 * One journal entry is one line, whatever its MESSAGE holds. Newlines and other control characters are escaped
 * (as rsyslog writes them, `#012`) instead of split: a PAM module logs the user name the client sent, unescaped, so a
 * name holding "\nFailed password for root from <victim> ..." would otherwise become a forged line of its own.
 */
function messageLines(message: string): string[] {
  let text = message.endsWith('\n') ? message.slice(0, -1) : message;
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x1f\x7f]/.test(text)) text = text.replace(/[\x00-\x1f\x7f]/g, (c) => `#${c.charCodeAt(0).toString(8).padStart(3, '0')}`);
  return [capText(text, MAX_LINE_BYTES).text];
}

export function createJournalSource(opts: JournalSourceOptions): Source {
  const key = `journal:${opts.name}`;
  const binary = opts.journalctl ?? 'journalctl';
  const warn = opts.warn;
  let cursor: string | undefined = opts.positions.getPosition(key)?.cursor || undefined;
  let sink: Sink | null = null;
  let child: ChildProcess | null = null;
  let childExited: Promise<void> | null = null;
  let stopped = false;
  let started = false;
  let linesRead = 0;
  let error: string | undefined;
  let backoffMs = BACKOFF_MIN_MS;
  let restartTimer: NodeJS.Timeout | null = null;
  let malformedWarned = 0;

  function handleJsonLine(buf: Buffer, start: number, end: number, out: SourceLine[]): void {
    const raw = buf.toString('utf8', start, end).trim();
    if (raw === '') return;
    let entry: Record<string, unknown>;
    try {
      const parsed: unknown = JSON.parse(raw);
      if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new Error('not an object');
      entry = parsed as Record<string, unknown>;
    } catch (err) {
      // Warn for the first few, then only every 1000th, so a broken journalctl cannot flood the log.
      if (malformedWarned++ < 5 || malformedWarned % 1000 === 0) {
        warn('skipping malformed journalctl output line', { source: opts.name, error: String(err), line: decodeLine(buf, start, end, 200).text });
      }
      return;
    }
    if (typeof entry.__CURSOR === 'string') cursor = entry.__CURSOR;
    const message = fieldText(entry.MESSAGE);
    if (message === undefined) return; // no MESSAGE, or too large (null): nothing for a rule to match
    const ts = Number(fieldText(entry.__REALTIME_TIMESTAMP));
    const pid = Number(fieldText(entry._PID));
    for (const text of messageLines(message)) {
      const line: SourceLine = { text, source: key };
      if (Number.isFinite(ts) && ts > 0) line.time = ts / 1000;
      if (Number.isInteger(pid) && pid > 0) line.pid = pid;
      out.push(line);
    }
  }

  function spawnJournalctl(): Promise<void> {
    const args = journalctlArgs(opts, cursor);
    const startedAt = Date.now();
    const proc = spawn(binary, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, SYSTEMD_COLORS: '0', SYSTEMD_PAGER: '', LC_ALL: 'C.UTF-8' },
    });
    child = proc;
    let pending: Buffer[] = [];
    let pendingLen = 0;
    let discarding = false;
    let stderrTail = '';

    proc.stdout!.on('data', (chunk: Buffer) => {
      if (stopped) return;
      const lines: SourceLine[] = [];
      let start = 0;
      const before = cursor;
      while (start < chunk.length) {
        const nl = chunk.indexOf(10, start);
        if (nl === -1) {
          if (!discarding) {
            pending.push(chunk.subarray(start));
            pendingLen += chunk.length - start;
            if (pendingLen > MAX_JSON_LINE_BYTES) {
              warn('journalctl output line too long; skipped', { source: opts.name, maxBytes: MAX_JSON_LINE_BYTES });
              discarding = true;
              pending = [];
              pendingLen = 0;
            }
          }
          break;
        }
        if (discarding) {
          discarding = false;
        } else if (pendingLen > 0) {
          pending.push(chunk.subarray(start, nl));
          const whole = Buffer.concat(pending);
          pending = [];
          pendingLen = 0;
          handleJsonLine(whole, 0, whole.length, lines);
        } else {
          handleJsonLine(chunk, start, nl, lines);
        }
        start = nl + 1;
      }
      if (lines.length > 0 || cursor !== before) {
        backoffMs = BACKOFF_MIN_MS;
        error = undefined;
      }
      if (lines.length > 0 && sink) {
        linesRead += lines.length;
        const positions = new Map<string, Position>();
        if (cursor) positions.set(key, { inode: 0, offset: 0, fingerprint: '', cursor });
        sink(lines, positions);
      }
    });
    proc.stderr!.on('data', (chunk: Buffer) => {
      stderrTail = (stderrTail + chunk.toString('utf8')).slice(-2000);
    });

    let settled = false;
    const spawned = new Promise<void>((resolve, reject) => {
      proc.once('spawn', () => {
        settled = true;
        resolve();
      });
      proc.once('error', (err) => {
        if (!settled) {
          settled = true;
          reject(err);
        }
      });
    });
    childExited = new Promise<void>((resolve) => {
      proc.once('close', (code, signal) => {
        if (child === proc) child = null;
        resolve();
        if (stopped) return;
        const why = stderrTail.trim().split('\n').pop() ?? '';
        error = `journalctl exited (${signal ?? `code ${code}`})${why ? `: ${why}` : ''}`;
        if (Date.now() - startedAt >= HEALTHY_RUN_MS) backoffMs = BACKOFF_MIN_MS;
        warn('journalctl exited; restarting', { source: opts.name, error, retryInMs: backoffMs });
        scheduleRestart();
      });
    });
    return spawned;
  }

  function scheduleRestart(): void {
    if (stopped || restartTimer) return;
    const delay = backoffMs;
    backoffMs = Math.min(backoffMs * 2, BACKOFF_MAX_MS);
    restartTimer = setTimeout(() => {
      restartTimer = null;
      if (stopped) return;
      spawnJournalctl().catch((err: unknown) => {
        // 'close' follows a failed spawn and schedules the next attempt.
        error = `cannot run ${binary}: ${String(err)}`;
      });
    }, delay);
  }

  return {
    name: opts.name,

    /** Rejects if journalctl cannot be run at all (e.g. not installed); later exits are retried with backoff. */
    async start(s: Sink): Promise<void> {
      if (started) throw new Error(`journal source ${opts.name} already started`);
      started = true;
      sink = s;
      try {
        await spawnJournalctl();
      } catch (err) {
        stopped = true;
        error = `cannot run ${binary}: ${String(err)}`;
        throw new Error(`journal source ${opts.name}: ${error}`);
      }
    },

    async stop(): Promise<void> {
      if (stopped && !child) return;
      stopped = true;
      if (restartTimer) clearTimeout(restartTimer);
      restartTimer = null;
      const proc = child;
      if (proc && proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGTERM');
        const killTimer = setTimeout(() => proc.kill('SIGKILL'), 2000);
        await childExited;
        clearTimeout(killTimer);
      } else if (childExited) {
        await childExited;
      }
      child = null;
      sink = null;
    },

    status(): SourceStatus {
      const st: SourceStatus = { name: opts.name, kind: 'journal', files: [], linesRead };
      if (cursor) st.cursor = cursor;
      if (error) st.error = error;
      return st;
    },
  };
}
