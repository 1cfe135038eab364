import { readFileSync } from 'node:fs';

/** Whether a process has ended: gone from /proc, or a zombie (ended; only its parent's wait is missing). */
export function processGone(pid: number): boolean {
  try {
    return /^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return true;
  }
}
