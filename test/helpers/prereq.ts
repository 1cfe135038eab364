import { existsSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import type { TestContext } from 'node:test';

export const JOURNAL_REMOTE = ['/lib/systemd/systemd-journal-remote', '/usr/lib/systemd/systemd-journal-remote'].find((p) => existsSync(p));

export function haveCommand(cmd: string): boolean {
  return spawnSync(cmd, ['--version'], { stdio: 'ignore' }).status === 0;
}

/**
 * Returns false (and skips the test) when a prerequisite is missing off CI; on CI (CI=true) a missing
 * prerequisite fails the test instead, so nothing is silently left untested.
 */
export function requirePrereq(t: TestContext, ok: boolean, what: string, howToEnable: string): boolean {
  if (ok) return true;
  const msg = `${what} is missing; ${howToEnable}`;
  if (process.env.CI === 'true') throw new Error(`prerequisite missing on CI: ${msg}`);
  process.stderr.write(`skipping "${t.name}": ${msg}\n`);
  t.skip(msg);
  return false;
}
