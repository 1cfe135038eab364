import assert from 'node:assert/strict';
import { appendFileSync, renameSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { createFileSource } from '../src/sources/file-source.ts';
import { Collector, MemoryPositions, running, sleep, waitFor, warn, withTmpDir } from './sources-helpers.ts';

const make = (file: string, positions: MemoryPositions, fromStart?: boolean) =>
  createFileSource({ name: 'resume', paths: [file], positions, rescanIntervalMs: 200, warn, ...(fromStart === undefined ? {} : { fromStart }) });

describe('restart resumes from the stored position', () => {
  it('only lines appended while stopped arrive after a restart', async () => {
    await withTmpDir(async (dir) => {
      const file = path.join(dir, 'auth.log');
      writeFileSync(file, 'a1\na2\n');
      const positions = new MemoryPositions();
      const c1 = new Collector(positions);
      await running(make(file, positions), c1, async () => {
        await waitFor(() => c1.lines.length === 2, 'first run lines');
        appendFileSync(file, 'a3\npart');
        await waitFor(() => c1.lines.length === 3, 'a3');
      });
      assert.deepEqual(c1.texts(), ['a1', 'a2', 'a3']);
      assert.equal(positions.getPosition(file)!.offset, 'a1\na2\na3\n'.length);

      // While stopped: the partial line is completed and more lines are appended.
      appendFileSync(file, 'ial\nb1\nb2\n');
      const c2 = new Collector(positions);
      await running(make(file, positions), c2, async () => {
        await waitFor(() => c2.lines.length === 3, 'second run lines');
        await sleep(150);
        assert.deepEqual(c2.texts(), ['partial', 'b1', 'b2']);
        appendFileSync(file, 'c1\n');
        await waitFor(() => c2.lines.length === 4, 'c1');
      });
      assert.equal(positions.getPosition(file)!.offset, statSync(file).size);
    });
  });

  it('a file replaced while stopped (new inode) is read from 0', async () => {
    await withTmpDir(async (dir) => {
      const file = path.join(dir, 'auth.log');
      writeFileSync(file, 'old1\nold2\nold3\n');
      const positions = new MemoryPositions();
      const c1 = new Collector(positions);
      await running(make(file, positions), c1, async () => {
        await waitFor(() => c1.lines.length === 3, 'first run');
      });
      renameSync(file, `${file}.1`);
      writeFileSync(file, 'new1\nnew2\nnew3\nnew4\n'); // longer than the old offset
      const c2 = new Collector(positions);
      await running(make(file, positions), c2, async () => {
        await waitFor(() => c2.lines.length === 4, 'replaced file read from 0');
        await sleep(100);
        assert.deepEqual(c2.texts(), ['new1', 'new2', 'new3', 'new4']);
      });
    });
  });

  it('a file truncated and regrown while stopped (same inode, other first line) is read from 0', async () => {
    await withTmpDir(async (dir) => {
      const file = path.join(dir, 'auth.log');
      writeFileSync(file, 'old1\nold2\n');
      const positions = new MemoryPositions();
      const c1 = new Collector(positions);
      await running(make(file, positions), c1, async () => {
        await waitFor(() => c1.lines.length === 2, 'first run');
      });
      const ino = statSync(file).ino;
      truncateSync(file, 0);
      appendFileSync(file, 'fresh1\nfresh2\nfresh3\n');
      assert.equal(statSync(file).ino, ino);
      const c2 = new Collector(positions);
      await running(make(file, positions), c2, async () => {
        await waitFor(() => c2.lines.length === 3, 'regrown file read from 0');
        assert.deepEqual(c2.texts(), ['fresh1', 'fresh2', 'fresh3']);
      });
    });
  });

  it('a file that shrank below the stored offset while stopped is read from 0', async () => {
    await withTmpDir(async (dir) => {
      const file = path.join(dir, 'auth.log');
      writeFileSync(file, 'line one\nline two\n');
      const positions = new MemoryPositions();
      const c1 = new Collector(positions);
      await running(make(file, positions), c1, async () => {
        await waitFor(() => c1.lines.length === 2, 'first run');
      });
      truncateSync(file, 0);
      appendFileSync(file, 'line one\n'); // same first line, but shorter than the offset
      const c2 = new Collector(positions);
      await running(make(file, positions), c2, async () => {
        await waitFor(() => c2.lines.length === 1, 'shrunk file read from 0');
        assert.deepEqual(c2.texts(), ['line one']);
      });
    });
  });

  it('fromStart:false still resumes a file with a stored position', async () => {
    await withTmpDir(async (dir) => {
      const file = path.join(dir, 'auth.log');
      writeFileSync(file, 'x1\n');
      const positions = new MemoryPositions();
      const c1 = new Collector(positions);
      await running(make(file, positions, false), c1, async () => {
        await waitFor(() => positions.getPosition(file) !== undefined, 'position');
      });
      assert.equal(c1.lines.length, 0);
      appendFileSync(file, 'x2\n');
      const c2 = new Collector(positions);
      await running(make(file, positions, false), c2, async () => {
        await waitFor(() => c2.lines.length === 1, 'line appended while stopped');
        assert.deepEqual(c2.texts(), ['x2']);
      });
    });
  });
});
