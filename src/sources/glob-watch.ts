/**
 * Which files a file source follows: expansion of paths/globs, and the directories to watch so that files which
 * appear later are noticed at once (the periodic rescan is the safety net).
 */
import { watch } from 'node:fs';
import type { FSWatcher } from 'node:fs';
import { stat } from 'node:fs/promises';
import * as path from 'node:path';
import fg from 'fast-glob';

export function isGlob(pattern: string): boolean {
  return pattern !== '' && fg.isDynamicPattern(pattern);
}

/** The deepest directory of a pattern without glob characters: where new matching files show up. */
export function staticBase(pattern: string): string {
  const abs = path.resolve(pattern);
  if (!isGlob(abs)) return path.dirname(abs);
  const parts = abs.split('/');
  const fixed: string[] = [];
  for (const part of parts.slice(0, -1)) {
    if (isGlob(part)) break;
    fixed.push(part);
  }
  return fixed.join('/') || '/';
}

/** Regular files (symlinks followed) matching the patterns now, as absolute paths. */
export async function expandPatterns(patterns: string[]): Promise<string[]> {
  const found = new Set<string>();
  for (const raw of patterns) {
    const abs = path.resolve(raw);
    // A plain path, or a literal name that merely contains glob characters.
    try {
      if ((await stat(abs)).isFile()) found.add(abs);
    } catch {
      /* not there (yet) */
    }
    if (isGlob(abs)) {
      const matches = await fg(abs, {
        absolute: true,
        onlyFiles: true,
        followSymbolicLinks: true,
        suppressErrors: true,
        dot: true,
        unique: true,
      });
      for (const m of matches) found.add(path.resolve(m));
    }
  }
  return [...found].sort();
}

/**
 * A set of fs.watch directory watchers. `ensure` (re)creates a watcher for a directory that exists; a directory that
 * does not exist yet is retried on the next `ensure` (called from every rescan). Watchers that fail are dropped.
 */
export class DirWatchers {
  private readonly watchers = new Map<string, FSWatcher>();
  private closed = false;
  private readonly warned = new Set<string>();

  constructor(
    private readonly onEvent: (dir: string, eventType: string, filename: string | null) => void,
    private readonly warn: (msg: string, fields?: Record<string, unknown>) => void,
  ) {}

  ensure(dir: string): void {
    if (this.closed || this.watchers.has(dir)) return;
    try {
      const w = watch(dir, { persistent: true }, (eventType, filename) => {
        this.onEvent(dir, eventType, filename === null ? null : String(filename));
      });
      w.on('error', (err) => {
        if (this.watchers.get(dir) === w) this.watchers.delete(dir);
        w.close();
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
          this.warn('directory watch failed; relying on polling', { dir, error: String(err) });
        }
        this.onEvent(dir, 'rename', null);
      });
      this.watchers.set(dir, w);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'ENOTDIR' && !this.warned.has(dir)) {
        this.warned.add(dir);
        this.warn('cannot watch directory; relying on polling', { dir, error: String(err) });
      }
    }
  }

  close(): void {
    this.closed = true;
    for (const w of this.watchers.values()) w.close();
    this.watchers.clear();
  }
}
