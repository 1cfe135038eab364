/**
 * A Source that follows log files given as paths or globs.
 *
 * - inotify mode (default): fs.watch on every followed file and on its directory (plus the static base directory
 *   of every glob) triggers a read at once; a slow stat poll (SAFETY_POLL_MS) catches anything inotify misses.
 * - poll mode: every pollIntervalMs each file is checked.
 * - Every rescanIntervalMs, and on any create/rename event in a watched directory, the patterns are expanded again:
 *   new files are followed from offset 0 (or their stored position, if it still matches).
 *
 * See tailer.ts for how rotation and truncation are detected.
 */
import * as path from 'node:path';
import { DirWatchers, expandPatterns, staticBase } from './glob-watch.ts';
import { FileReader, FileTailer } from './tailer.ts';
import type { Claim, StartAt, TailerDeps, Warn } from './tailer.ts';
import type { Position, PositionStore, Source, SourceLine, SourceStatus } from './types.ts';

export interface FileSourceOptions {
  name: string;
  /** Paths or globs (fast-glob syntax). Relative ones are resolved against the working directory. */
  paths: string[];
  positions: PositionStore;
  /** 'inotify' (default): fs.watch plus a slow safety poll. 'poll': stat every pollIntervalMs only. */
  mode?: 'inotify' | 'poll';
  /** Poll period in poll mode (default 250 ms). */
  pollIntervalMs?: number;
  /** How often globs and missing paths are expanded again (default 5000 ms). */
  rescanIntervalMs?: number;
  warn: Warn;
  /**
   * Files without a stored position seen at start: read from the beginning (true, default, as PyFilter does) or
   * start at their end (false). Files appearing after start are always read from the beginning.
   */
  fromStart?: boolean;
}

/** Safety-net poll period in inotify mode. */
export const SAFETY_POLL_MS = 1000;
/** How long a rotated-away file is still read in case its writer has not reopened the new file yet. */
export const ROTATE_GRACE_MS = 10_000;

type Sink = (lines: SourceLine[], positions: Map<string, Position>) => void;

interface Retired {
  reader: FileReader;
  until: number;
}

export function createFileSource(opts: FileSourceOptions): Source {
  const mode = opts.mode ?? 'inotify';
  const pollMs = mode === 'poll' ? (opts.pollIntervalMs ?? 250) : SAFETY_POLL_MS;
  const rescanMs = opts.rescanIntervalMs ?? 5000;
  const fromStart = opts.fromStart ?? true;
  const warn = opts.warn;

  const tailers = new Map<string, FileTailer>();
  let retired: Retired[] = [];
  let sink: Sink | null = null;
  let stopped = false;
  let started = false;
  let linesRead = 0;
  let lastError: string | undefined;
  let pollTimer: NodeJS.Timeout | null = null;
  let rescanTimer: NodeJS.Timeout | null = null;
  let rescanRunning: Promise<void> | null = null;
  let rescanAgain = false;
  let retiredRunning: Promise<void> | null = null;
  const dirs = new DirWatchers(onDirEvent, warn);

  const deps: TailerDeps = {
    warn,
    watchFile: mode === 'inotify',
    deliver(tailer, reader, lines) {
      if (stopped || !sink) return;
      linesRead += lines.length;
      const positions = new Map<string, Position>();
      if (tailer.reader === reader) positions.set(tailer.path, reader.position());
      sink(lines, positions);
    },
    retire(reader) {
      if (stopped) {
        void reader.close();
        return;
      }
      retired.push({ reader, until: Date.now() + ROTATE_GRACE_MS });
      // The file may live on under a name our patterns match (auth.log -> auth.log.1): look for it now.
      scheduleRescan();
    },
    claim(self, ino, dev): Claim {
      const idx = retired.findIndex((r) => r.reader.ino === ino && r.reader.dev === dev);
      if (idx !== -1) {
        const [r] = retired.splice(idx, 1);
        return { kind: 'retired', reader: r!.reader };
      }
      for (const t of tailers.values()) {
        if (t !== self && t.reader && t.reader.ino === ino && t.reader.dev === dev) return { kind: 'busy', holder: t };
      }
      return { kind: 'none' };
    },
  };

  function track(file: string, startAt: StartAt): FileTailer {
    const t = new FileTailer(file, startAt, deps);
    tailers.set(file, t);
    if (mode === 'inotify') dirs.ensure(path.dirname(file));
    return t;
  }

  function check(t: FileTailer): void {
    void t.requestCheck();
  }

  function onDirEvent(dir: string, eventType: string, filename: string | null): void {
    if (stopped) return;
    if (filename !== null) {
      const t = tailers.get(path.join(dir, filename));
      if (t) check(t);
      else if (eventType === 'rename') scheduleRescan();
      else if (eventType === 'change') return;
    } else {
      for (const t of tailers.values()) if (path.dirname(t.path) === dir) check(t);
      scheduleRescan();
    }
    // A rename of a followed file may mean a new file under that name: the tailer's check sees it.
  }

  function scheduleRescan(): void {
    if (stopped) return;
    if (rescanRunning) {
      rescanAgain = true;
      return;
    }
    const run = async () => {
      try {
        do {
          rescanAgain = false;
          await rescanOnce();
        } while (rescanAgain && !stopped);
      } catch (err) {
        lastError = `rescan failed: ${String(err)}`;
        warn('rescanning log file patterns failed', { source: opts.name, error: String(err) });
      } finally {
        rescanRunning = null;
      }
    };
    rescanRunning = run();
  }

  async function rescanOnce(): Promise<void> {
    if (mode === 'inotify') for (const p of opts.paths) dirs.ensure(staticBase(p));
    const found = await expandPatterns(opts.paths);
    if (stopped) return;
    // Retired readers might be adopted by a new tailer: do not race with their grace-period reads.
    if (retiredRunning) await retiredRunning;
    if (stopped) return;
    const seen = new Set(found);
    for (const file of found) {
      if (!tailers.has(file)) {
        check(track(file, { kind: 'stored', pos: opts.positions.getPosition(file), fromStartIfUnknown: true }));
      }
    }
    for (const t of [...tailers.values()]) {
      if (seen.has(t.path)) continue;
      if (t.gone && !t.reader && Date.now() - t.goneSince >= rescanMs) {
        // Missing for a whole rescan interval: the file is finished (already drained) and dropped. Until then the
        // tailer retries on every poll tick, so a file re-created under the name (rotation) is picked up at once
        // even in poll mode, and even if it is rotated away again before the next rescan.
        tailers.delete(t.path);
        await t.stop();
      } else {
        check(t);
      }
    }
  }

  function pollRetired(): void {
    if (retiredRunning || retired.length === 0) return;
    const run = async () => {
      try {
        const now = Date.now();
        for (const r of [...retired]) {
          if (stopped) return;
          if (!retired.includes(r)) continue;
          const emit = (lines: SourceLine[]) => {
            if (stopped || !sink) return;
            linesRead += lines.length;
            sink(lines, new Map());
          };
          try {
            await r.reader.readAvailable(emit);
          } catch (err) {
            warn('error reading rotated log file', { path: r.reader.label, error: String(err) });
          }
          if (now >= r.until && retired.includes(r)) {
            retired = retired.filter((x) => x !== r);
            const last = r.reader.flushPartial();
            if (last) emit([last]);
            await r.reader.close();
          }
        }
      } finally {
        retiredRunning = null;
      }
    };
    retiredRunning = run();
  }

  return {
    name: opts.name,

    async start(s: Sink): Promise<void> {
      if (started) throw new Error(`file source ${opts.name} already started`);
      started = true;
      sink = s;
      const initial = await expandPatterns(opts.paths);
      // Watchers first, then the first read: an append between the two is then never missed.
      if (mode === 'inotify') for (const p of opts.paths) dirs.ensure(staticBase(p));
      for (const file of initial) {
        track(file, { kind: 'stored', pos: opts.positions.getPosition(file), fromStartIfUnknown: fromStart });
      }
      for (const t of tailers.values()) check(t);
      pollTimer = setInterval(() => {
        for (const t of tailers.values()) check(t);
        pollRetired();
      }, pollMs);
      rescanTimer = setInterval(scheduleRescan, rescanMs);
    },

    async stop(): Promise<void> {
      if (stopped) return;
      stopped = true;
      if (pollTimer) clearInterval(pollTimer);
      if (rescanTimer) clearInterval(rescanTimer);
      dirs.close();
      if (rescanRunning) await rescanRunning;
      if (retiredRunning) await retiredRunning;
      await Promise.all([...tailers.values()].map((t) => t.stop()));
      tailers.clear();
      await Promise.all(retired.map((r) => r.reader.close()));
      retired = [];
      sink = null;
    },

    status(): SourceStatus {
      const files: SourceStatus['files'] = [];
      for (const t of tailers.values()) {
        if (t.reader) files.push({ path: t.path, inode: t.reader.ino, offset: t.reader.offset });
      }
      files.sort((a, b) => a.path.localeCompare(b.path));
      const st: SourceStatus = { name: opts.name, kind: 'file', files, linesRead };
      if (lastError) st.error = lastError;
      return st;
    },
  };
}
