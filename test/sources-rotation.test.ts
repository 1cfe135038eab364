import assert from 'node:assert/strict';
import { closeSync, copyFileSync, existsSync, ftruncateSync, openSync, renameSync, statSync, writeSync } from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { createFileSource } from '../src/sources/file-source.ts';
import type { Source } from '../src/sources/types.ts';
import { Collector, MemoryPositions, numbersOnce, sleep, waitFor, warn, withTmpDir } from './sources-helpers.ts';

type Form = 'rename' | 'rename-late-writes' | 'copytruncate' | 'truncate-regrow';

/**
 * A writer appends `line <n>` every ~2 ms through an fd it keeps open (like a daemon). At a few points the file is
 * rotated in the given form; every number must reach the sink exactly once.
 */
async function rotationRun(form: Form, mode: 'inotify' | 'poll', glob = false): Promise<void> {
  await withTmpDir(async (dir) => {
    const file = path.join(dir, 'app.log');
    const N = 1200;
    const rotateAt = [200, 450, 700, 950];
    let fd = openSync(file, 'a');
    let n = 0;
    const pad = 'x'.repeat(40);
    const writeLine = () => {
      writeSync(fd, `line ${n} ${pad}\n`);
      n++;
    };
    const positions = new MemoryPositions();
    const c = new Collector(positions);
    const src: Source = createFileSource({
      name: 'rot',
      paths: glob ? [path.join(dir, 'app.log*')] : [file],
      positions,
      mode,
      pollIntervalMs: 50,
      rescanIntervalMs: 300,
      warn,
    });
    await src.start(c.sink);
    let rotations = 0;
    try {
      const caughtUp = () => {
        const f = src.status().files.find((x) => x.path === file);
        return f !== undefined && existsSync(file) && f.offset === statSync(file).size;
      };
      while (n < N) {
        if (rotations < rotateAt.length && n >= rotateAt[rotations]!) {
          rotations++;
          if (form === 'rename' || form === 'rename-late-writes') {
            if (existsSync(`${file}.1`)) renameSync(`${file}.1`, `${file}.2`);
            renameSync(file, `${file}.1`);
            if (form === 'rename-late-writes') {
              // The daemon has not reopened yet: a few more lines go to the renamed file.
              await sleep(5);
              for (let k = 0; k < 3; k++) writeLine();
              await sleep(5);
            }
            closeSync(fd);
            fd = openSync(file, 'a');
          } else {
            // Truncating loses whatever the tailer had not read yet; that is inherent to copytruncate, not what is
            // under test. So truncate when it has caught up, in the same tick as the check (no write in between).
            await waitFor(caughtUp, 'tailer caught up before truncation');
            const oldSize = statSync(file).size;
            if (form === 'copytruncate') copyFileSync(file, `${file}.1`);
            ftruncateSync(fd, 0);
            if (form === 'truncate-regrow') {
              // New lines at once: by the time the tailer looks, the file is already longer than its offset.
              while (statSync(file).size <= oldSize + 100) writeLine();
            }
          }
        }
        writeLine();
        if (n % 4 === 0) await sleep(2);
      }
      await waitFor(() => numbersOnce(c.texts(), N).missing.length === 0, `all ${N} lines delivered`, 20_000).catch((e) => {
        throw new Error(`${String(e)}; missing ${JSON.stringify(numbersOnce(c.texts(), N).missing.slice(0, 20))} status ${JSON.stringify(src.status())} ino ${statSync(file).ino} size ${statSync(file).size}`);
      });
      await sleep(300); // let any duplicate show up
      const r = numbersOnce(c.texts(), N);
      assert.deepEqual(r.missing, [], 'missing lines');
      assert.deepEqual(r.repeated, [], 'repeated lines');
      assert.deepEqual(r.junk, [], 'unexpected lines');
      assert.equal(rotations, rotateAt.length);
      const pos = positions.getPosition(file);
      assert.ok(pos);
      assert.equal(pos.inode, statSync(file).ino, 'position refers to the current file');
      assert.equal(pos.offset, statSync(file).size);
    } finally {
      closeSync(fd);
      await src.stop();
    }
  });
}

describe('rotation loses and repeats nothing', () => {
  for (const mode of ['inotify', 'poll'] as const) {
    it(`rename + re-create (${mode})`, () => rotationRun('rename', mode));
    it(`rename, writer still appends to the old file briefly (${mode})`, () => rotationRun('rename-late-writes', mode));
    it(`copytruncate (${mode})`, () => rotationRun('copytruncate', mode));
    it(`truncate followed at once by new lines (${mode})`, () => rotationRun('truncate-regrow', mode));
  }
  it('rename + re-create with a glob that also matches the rotated files (no re-read of app.log.1)', () =>
    rotationRun('rename-late-writes', 'inotify', true));
});
