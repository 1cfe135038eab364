import assert from 'node:assert/strict';
import { appendFileSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { createFileSource } from '../src/sources/file-source.ts';
import { Collector, MemoryPositions, running, sleep, waitFor, warn, withTmpDir } from './sources-helpers.ts';

for (const mode of ['inotify', 'poll'] as const) {
  describe(`globs and late files (${mode})`, () => {
    const make = (paths: string[], positions: MemoryPositions) =>
      createFileSource({ name: 'glob', paths, positions, mode, pollIntervalMs: 50, rescanIntervalMs: 200, warn });

    it('a glob picks up matching files created later, read from 0; non-matching files are ignored', async () => {
      await withTmpDir(async (dir) => {
        writeFileSync(path.join(dir, 'a.log'), 'a1\n');
        writeFileSync(path.join(dir, 'ignore.txt'), 'nope\n');
        const positions = new MemoryPositions();
        const c = new Collector(positions);
        await running(make([path.join(dir, '*.log')], positions), c, async () => {
          await waitFor(() => c.lines.length === 1, 'a1');
          writeFileSync(path.join(dir, 'b.log'), 'b1\nb2\n');
          writeFileSync(path.join(dir, 'other.txt'), 'nope\n');
          await waitFor(() => c.lines.length === 3, 'late file b.log');
          appendFileSync(path.join(dir, 'b.log'), 'b3\n');
          await waitFor(() => c.lines.length === 4, 'b3');
          await sleep(100);
          assert.deepEqual(c.texts().sort(), ['a1', 'b1', 'b2', 'b3']);
          assert.equal(c.lines.find((l) => l.text === 'b1')!.source, path.join(dir, 'b.log'));
          assert.deepEqual(
            c.lines.filter((l) => l.text.startsWith('b')).map((l) => l.text),
            ['b1', 'b2', 'b3'],
          );
        });
      });
    });

    it('a plain path that does not exist yet is followed once created, even in a directory created later', async () => {
      await withTmpDir(async (dir) => {
        const later = path.join(dir, 'sub', 'late.log');
        const positions = new MemoryPositions();
        const c = new Collector(positions);
        const src = make([later], positions);
        await running(src, c, async () => {
          await sleep(100);
          assert.deepEqual(src.status().files, []);
          mkdirSync(path.join(dir, 'sub'));
          writeFileSync(later, 'first\n');
          await waitFor(() => c.lines.length === 1, 'late file');
          appendFileSync(later, 'second\n');
          await waitFor(() => c.lines.length === 2, 'appended to late file');
          assert.deepEqual(c.texts(), ['first', 'second']);
        });
      });
    });

    it('a file that disappears is finished and dropped; a new one under the name is read from 0', async () => {
      await withTmpDir(async (dir) => {
        const f = path.join(dir, 'gone.log');
        writeFileSync(f, 'g1\n');
        const positions = new MemoryPositions();
        const c = new Collector(positions);
        const src = make([path.join(dir, '*.log')], positions);
        await running(src, c, async () => {
          await waitFor(() => c.lines.length === 1, 'g1');
          appendFileSync(f, 'g2\n');
          rmSync(f);
          await waitFor(() => src.status().files.length === 0, 'file dropped');
          writeFileSync(f, 'h1\n');
          await waitFor(() => c.lines.length === 3, 'new file under the same name');
          assert.deepEqual(c.texts(), ['g1', 'g2', 'h1']);
        });
      });
    });

    it('a ** glob finds files in subdirectories created later', async () => {
      await withTmpDir(async (dir) => {
        const positions = new MemoryPositions();
        const c = new Collector(positions);
        await running(make([path.join(dir, '**', '*.log')], positions), c, async () => {
          mkdirSync(path.join(dir, 'x', 'y'), { recursive: true });
          writeFileSync(path.join(dir, 'x', 'y', 'deep.log'), 'deep\n');
          await waitFor(() => c.lines.length === 1, 'deep file');
          assert.equal(c.lines[0]!.source, path.join(dir, 'x', 'y', 'deep.log'));
        });
      });
    });
  });
}
