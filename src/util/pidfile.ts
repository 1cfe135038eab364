import { closeSync, openSync, readFileSync, unlinkSync, writeSync } from 'node:fs';

/**
 * One daemon per data directory: two daemons on one store and one nftables table would undo each other's work.
 * The control socket cannot guarantee it (another socket path, or two starting at once), so the daemon also holds
 * `<data_dir>/tsfilter.pid`, created exclusively. A file left by a dead process is taken over.
 */
export class PidFile {
  private constructor(private readonly path: string) {}

  static acquire(path: string): PidFile {
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        const fd = openSync(path, 'wx', 0o644);
        writeSync(fd, `${process.pid}\n`);
        closeSync(fd);
        return new PidFile(path);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw new Error(`cannot create the pid file ${path}: ${(e as Error).message}`);
      }
      const pid = Number.parseInt(safeRead(path), 10);
      if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && alive(pid)) {
        throw new Error(`another tsfilter daemon (pid ${pid}) is already using this data directory (${path})`);
      }
      try {
        unlinkSync(path); // stale: its process is gone
      } catch {
        /* someone else removed it: try again */
      }
    }
    throw new Error(`cannot take the pid file ${path}: another daemon is starting at the same time`);
  }

  release(): void {
    try {
      if (Number.parseInt(safeRead(this.path), 10) === process.pid) unlinkSync(this.path);
    } catch {
      /* already gone */
    }
  }
}

function safeRead(p: string): string {
  try {
    return readFileSync(p, 'utf8');
  } catch {
    return '';
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
  // A recycled pid of an unrelated process does not count.
  const cmd = safeRead(`/proc/${pid}/cmdline`);
  return cmd === '' || /tsfilter|cli\/main\.[jt]s/.test(cmd);
}
