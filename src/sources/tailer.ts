/**
 * Following one log file.
 *
 * Hand-written on purpose: the npm tailers we looked at (tail, always-tail, tail-file, ...) each get at least one of
 * these wrong: copytruncate (the file shrinks under us), truncate-then-regrow (the file is already longer than our
 * offset when we look, so only the first line's fingerprint shows it is a new file), rename-and-recreate without
 * losing the last lines of the old file, resuming from a persisted {inode, offset, fingerprint}, bounded memory on
 * hostile (overlong / binary) input, and reporting the offset of the last *complete* line so a crash re-reads rather
 * than loses.
 *
 * FileReader = one open fd and its read state. FileTailer = one path: notices when the path now names another file
 * (rotation) or nothing (deletion), drains the old reader and switches to the new file.
 */
import { watch } from 'node:fs';
import type { FSWatcher, Stats } from 'node:fs';
import * as fsp from 'node:fs/promises';
import { stat } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { FINGERPRINT_BYTES, LineSplitter, fingerprintOf } from './line-splitter.ts';
import type { Position, SourceLine } from './types.ts';
import { MAX_LINE_BYTES } from './types.ts';

/** Read size per fs.read call. */
export const CHUNK_BYTES = 64 * 1024;

export type Warn = (msg: string, fields?: Record<string, unknown>) => void;

/** Where a newly opened reader starts. */
export type StartAt =
  | { kind: 'beginning' }
  | { kind: 'end' }
  | { kind: 'stored'; pos: Position | undefined; fromStartIfUnknown: boolean };

async function readAt(fh: FileHandle, length: number, position: number): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  let got = 0;
  while (got < length) {
    const { bytesRead } = await fh.read(buf, got, length - got, position + got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  return buf.subarray(0, got);
}

export class FileReader {
  /** Offset of the next byte to read. */
  private readPos: number;
  /** Offset just after the last complete line delivered. */
  private committed: number;
  /** First bytes of the file as we read them, until the fingerprint is known. */
  private head: Buffer = Buffer.alloc(0);
  private readonly splitter = new LineSplitter(MAX_LINE_BYTES);
  private buf: Buffer | null = null;
  private closed = false;

  private constructor(
    private readonly fh: FileHandle,
    readonly ino: number,
    readonly dev: number,
    /** Label put on lines: the path we follow the file under (changes when a rotated file is adopted). */
    public label: string,
    offset: number,
    private fingerprint: string,
    private readonly warn: Warn,
  ) {
    this.readPos = offset;
    this.committed = offset;
  }

  /**
   * Opens `path` and decides where to start. Returns null if the path is not a regular file. Throws fs errors
   * (ENOENT, EACCES...) to the caller.
   */
  static async open(path: string, startAt: StartAt, warn: Warn): Promise<{ reader: FileReader; how: string } | null> {
    const fh = await fsp.open(path, 'r');
    try {
      const st = await fh.stat();
      if (!st.isFile()) {
        await fh.close();
        return null;
      }
      const headFp = async () => fingerprintOf(await readAt(fh, FINGERPRINT_BYTES, 0));
      let offset = 0;
      let fp = '';
      let how = 'beginning';
      if (startAt.kind === 'stored' && startAt.pos) {
        const pos = startAt.pos;
        const nowFp = await headFp();
        if (pos.inode === st.ino && st.size >= pos.offset && nowFp === pos.fingerprint) {
          offset = pos.offset;
          fp = pos.fingerprint;
          how = 'resumed';
        } else {
          how = 'replaced';
        }
      } else if (startAt.kind === 'end' || (startAt.kind === 'stored' && !startAt.fromStartIfUnknown)) {
        // Start after the last complete line, so a line being written right now is still delivered whole.
        const tailLen = Math.min(st.size, MAX_LINE_BYTES + 1);
        const tail = await readAt(fh, tailLen, st.size - tailLen);
        const nl = tail.lastIndexOf(10);
        offset = nl === -1 ? st.size : st.size - tail.length + nl + 1;
        fp = await headFp();
        how = 'end';
      }
      const reader = new FileReader(fh, st.ino, st.dev, path, offset, fp, warn);
      return { reader, how };
    } catch (err) {
      await fh.close().catch(() => {});
      throw err;
    }
  }

  position(): Position {
    return { inode: this.ino, offset: this.committed, fingerprint: this.fingerprint };
  }

  get offset(): number {
    return this.committed;
  }

  private resetToStart(reason: string, fields: Record<string, unknown>): void {
    this.warn(reason, { path: this.label, ...fields });
    this.readPos = 0;
    this.committed = 0;
    this.fingerprint = '';
    this.head = Buffer.alloc(0);
    this.splitter.reset();
  }

  /** True if the file's head still has the fingerprint we know. */
  private async headUnchanged(): Promise<boolean> {
    const head = await readAt(this.fh, FINGERPRINT_BYTES, 0);
    return fingerprintOf(head) === this.fingerprint;
  }

  /**
   * Reads everything available, calling `emit` once per chunk that completed at least one line. Detects in-place
   * truncation: size below our offset (copytruncate), or first-line fingerprint changed (truncated and already
   * regrown past our offset). Checking the fingerprint *after* each read and before emitting makes this race-free:
   * if the file was rewritten before the read, the check sees it and the chunk is dropped.
   */
  async readAvailable(emit: (lines: SourceLine[]) => void): Promise<number> {
    if (this.closed) return 0;
    let total = 0;
    const st = await this.fh.stat();
    if (st.size < this.readPos) {
      this.resetToStart('file truncated (copytruncate?); reading it from the start', { size: st.size, offset: this.readPos });
    }
    this.buf ??= Buffer.allocUnsafe(CHUNK_BYTES);
    const buf = this.buf;
    for (;;) {
      if (this.closed) break;
      const { bytesRead } = await this.fh.read(buf, 0, buf.length, this.readPos);
      if (bytesRead === 0) break;
      if (this.fingerprint !== '' && !(await this.headUnchanged())) {
        this.resetToStart('file rewritten in place (first line changed); reading it from the start', { offset: this.readPos });
        continue;
      }
      const chunkStart = this.readPos;
      const chunk = buf.subarray(0, bytesRead);
      this.readPos += bytesRead;
      if (this.fingerprint === '' && chunkStart < FINGERPRINT_BYTES && chunkStart === this.head.length) {
        this.head = Buffer.concat([this.head, chunk.subarray(0, FINGERPRINT_BYTES - chunkStart)]);
        this.fingerprint = fingerprintOf(this.head);
      } else if (this.fingerprint === '' && chunkStart > 0) {
        // Started mid-file (at the end) before the first line was complete: look at the head directly.
        this.fingerprint = fingerprintOf(await readAt(this.fh, FINGERPRINT_BYTES, 0));
      }
      const lines: SourceLine[] = [];
      let cuts = 0;
      this.splitter.push(chunk, (text, cut, end) => {
        lines.push({ text, source: this.label });
        this.committed = chunkStart + end;
        if (cut) cuts++;
      });
      if (cuts > 0) this.warn('overlong line(s) cut', { path: this.label, count: cuts, maxBytes: MAX_LINE_BYTES });
      if (lines.length > 0) {
        total += lines.length;
        emit(lines);
      }
      if (bytesRead < buf.length) break;
    }
    return total;
  }

  /** The unterminated last line, for a file that will never grow again (rotated away and done). */
  flushPartial(): SourceLine | undefined {
    const rest = this.splitter.flush();
    return rest ? { text: rest.text, source: this.label } : undefined;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.fh.close().catch(() => {});
  }
}

/** What the source knows about a file identity another tailer may hold. */
export type Claim = { kind: 'none' } | { kind: 'retired'; reader: FileReader } | { kind: 'busy'; holder: FileTailer };

export interface TailerDeps {
  warn: Warn;
  /** Lines read from `reader`; `current` says whether the reader is the tailer's current file (positions apply). */
  deliver(tailer: FileTailer, reader: FileReader, lines: SourceLine[]): void;
  /** Hands over a reader whose path now names another file or nothing: drained further for a grace period. */
  retire(reader: FileReader): void;
  /** Is this file identity already being read by someone else (another tailer, or a retired reader)? */
  claim(tailer: FileTailer, ino: number, dev: number): Claim;
  /** fs.watch the file itself (inotify mode). */
  watchFile: boolean;
}

function errCode(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err ? String((err as { code: unknown }).code) : undefined;
}

/**
 * Follows one path. Every event (inotify, poll tick, rescan) calls requestCheck(); checks are serialized, and a
 * request that arrives during a check makes the check run once more afterwards, so no event is lost.
 */
export class FileTailer {
  reader: FileReader | null = null;
  /**
   * Set while the path names no file (deleted or rotated away and not re-created yet). The tailer keeps trying on
   * every check, so a re-created file is picked up by the next poll tick even without a rescan; the source drops
   * it when a rescan does not find the path either.
   */
  gone = false;
  /** When `gone` was last set (ms since the epoch). */
  goneSince = 0;
  private running: Promise<void> | null = null;
  private again = false;
  private stopped = false;
  private openWarned = false;
  private watcher: FSWatcher | null = null;

  constructor(
    readonly path: string,
    private nextStart: StartAt,
    private readonly deps: TailerDeps,
  ) {}

  requestCheck(): Promise<void> {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    const run = async () => {
      try {
        do {
          this.again = false;
          if (this.stopped) break;
          try {
            await this.checkOnce();
          } catch (err) {
            this.deps.warn('error reading log file', { path: this.path, error: String(err) });
          }
        } while (this.again && !this.stopped);
      } finally {
        this.running = null;
      }
    };
    this.running = run();
    return this.running;
  }

  /** Stops watching and reading; closes the fd. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.closeWatcher();
    if (this.running) await this.running;
    if (this.reader) await this.reader.close();
    this.reader = null;
  }

  private markGone(): void {
    if (!this.gone) this.goneSince = Date.now();
    this.gone = true;
  }

  private closeWatcher(): void {
    if (this.watcher) {
      this.watcher.close();
      this.watcher = null;
    }
  }

  private startWatcher(): void {
    if (!this.deps.watchFile || this.stopped || this.watcher) return;
    try {
      const w = watch(this.path, { persistent: true }, () => void this.requestCheck());
      w.on('error', () => {
        // The file went away (or inotify gave up): the directory watch and the poll tick take over.
        if (this.watcher === w) this.closeWatcher();
        void this.requestCheck();
      });
      this.watcher = w;
    } catch (err) {
      const code = errCode(err);
      if (code !== 'ENOENT') this.deps.warn('cannot watch log file; relying on polling', { path: this.path, error: String(err) });
    }
  }

  private deliver(reader: FileReader) {
    return (lines: SourceLine[]) => this.deps.deliver(this, reader, lines);
  }

  /** Opens the path (or adopts the reader that already follows that file). False if there is nothing to read now. */
  private async open(): Promise<boolean> {
    let opened: Awaited<ReturnType<typeof FileReader.open>>;
    try {
      opened = await FileReader.open(this.path, this.nextStart, this.deps.warn);
    } catch (err) {
      const code = errCode(err);
      if (code === 'ENOENT' || code === 'ENOTDIR') {
        this.markGone();
      } else if (!this.openWarned) {
        this.openWarned = true;
        this.deps.warn('cannot open log file; will retry', { path: this.path, error: String(err) });
      }
      return false;
    }
    if (!opened) {
      this.markGone();
      return false;
    }
    this.openWarned = false;
    this.gone = false;
    const { reader, how } = opened;
    const claim = this.deps.claim(this, reader.ino, reader.dev);
    if (claim.kind === 'retired') {
      // This path now names a file we were already reading under another name (e.g. auth.log -> auth.log.1 with
      // a glob matching both): continue where that reader was instead of reading it again.
      await reader.close();
      claim.reader.label = this.path;
      this.reader = claim.reader;
    } else if (claim.kind === 'busy') {
      // Another tailer still holds this file under its old name and has not noticed the rename yet: let it
      // notice and retire it, then try again.
      await reader.close();
      void claim.holder.requestCheck().then(() => this.requestCheck());
      return false;
    } else {
      if (how === 'replaced') this.deps.warn('log file changed since its stored position; reading it from the start', { path: this.path });
      this.reader = reader;
      // Starting at the end reads no line; report the position anyway so a restart does not skip what comes next.
      if (how === 'end') this.deps.deliver(this, reader, []);
    }
    this.nextStart = { kind: 'beginning' };
    this.startWatcher();
    return true;
  }

  private async checkOnce(): Promise<void> {
    if (!this.reader && !(await this.open())) return;
    let reader = this.reader!;
    let st: Stats | null = null;
    try {
      st = await stat(this.path);
    } catch (err) {
      const code = errCode(err);
      if (code !== 'ENOENT' && code !== 'ENOTDIR') throw err;
    }
    if (!st || st.ino !== reader.ino || st.dev !== reader.dev) {
      // Rotated (renamed/deleted, maybe re-created): finish the old file first, then hand it over for a grace
      // period in case its writer still appends, then start on the new file from offset 0.
      await reader.readAvailable(this.deliver(reader));
      this.reader = null;
      this.closeWatcher();
      this.deps.retire(reader);
      if (!st) {
        this.markGone();
        return;
      }
      this.nextStart = { kind: 'beginning' };
      if (!(await this.open())) return;
      reader = this.reader!;
    }
    await reader.readAvailable(this.deliver(reader));
  }
}
