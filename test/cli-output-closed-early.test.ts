import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { CLI, REPO, SHARED } from './helpers/cli.ts';

test('`tsfilter replay FILE | head` ends quietly with exit 0 when the reader stops early', async () => {
  const log = path.join(SHARED, 'corpus/ssh/elastic-auth.log');
  const child = spawn(process.execPath, ['--import', 'tsx', CLI, 'replay', log, log, log], { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  await new Promise<void>((resolve) => child.stdout.once('data', () => resolve()));
  child.stdout.destroy();
  const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
  assert.equal(code, 0, err);
  assert.doesNotMatch(err, /EPIPE|Unhandled/);
});
