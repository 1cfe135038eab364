import assert from 'node:assert/strict';
import { appendFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { createFileSource } from '../src/sources/file-source.ts';
import { Collector, MemoryPositions, running, sleep, waitFor, warn, withTmpDir } from './sources-helpers.ts';

for (const mode of ['inotify', 'poll'] as const) {
  describe(`file source following (${mode} mode)`, () => {
    const make = (paths: string[], positions: MemoryPositions, extra: { fromStart?: boolean } = {}) =>
      createFileSource({ name: 'test', paths, positions, mode, pollIntervalMs: 50, rescanIntervalMs: 200, warn, ...extra });

    it('reads existing lines from the start, then follows appends', async () => {
      await withTmpDir(async (dir) => {
        const file = path.join(dir, 'auth.log');
        writeFileSync(file, 'one\ntwo\r\n');
        const positions = new MemoryPositions();
        const c = new Collector(positions);
        const src = make([file], positions);
        await running(src, c, async () => {
          await waitFor(() => c.lines.length === 2, 'initial lines');
          assert.deepEqual(c.texts(), ['one', 'two']);
          assert.equal(c.lines[0]!.source, file);
          assert.equal(c.lines[0]!.time, undefined);

          appendFileSync(file, 'three\nfour\n');
          await waitFor(() => c.lines.length === 4, 'appended lines');
          assert.deepEqual(c.texts(), ['one', 'two', 'three', 'four']);

          // A partial line is held until its newline arrives.
          appendFileSync(file, 'fi');
          await sleep(mode === 'poll' ? 300 : 150);
          assert.equal(c.lines.length, 4);
          appendFileSync(file, 've\n');
          await waitFor(() => c.lines.length === 5, 'completed partial line');
          assert.equal(c.lines[4]!.text, 'five');

          const size = Buffer.byteLength('one\ntwo\r\nthree\nfour\nfive\n');
          const pos = positions.getPosition(file);
          assert.ok(pos, 'position persisted');
          assert.equal(pos.offset, size);
          assert.notEqual(pos.inode, 0);
          assert.match(pos.fingerprint, /^[0-9a-f]{40}$/);
          const st = src.status();
          assert.equal(st.kind, 'file');
          assert.equal(st.linesRead, 5);
          assert.deepEqual(st.files, [{ path: file, inode: pos.inode, offset: size }]);
        });
      });
    });

    it('position offset stops before an unterminated line', async () => {
      await withTmpDir(async (dir) => {
        const file = path.join(dir, 'a.log');
        writeFileSync(file, 'complete\npartial');
        const positions = new MemoryPositions();
        const c = new Collector(positions);
        await running(make([file], positions), c, async () => {
          await waitFor(() => c.lines.length === 1, 'first line');
          await sleep(100);
          assert.deepEqual(c.texts(), ['complete']);
          assert.equal(positions.getPosition(file)!.offset, 'complete\n'.length);
        });
      });
    });

    it('fromStart:false starts at the end of files seen at start', async () => {
      await withTmpDir(async (dir) => {
        const file = path.join(dir, 'old.log');
        writeFileSync(file, 'old 1\nold 2\n');
        const positions = new MemoryPositions();
        const c = new Collector(positions);
        await running(make([file], positions, { fromStart: false }), c, async () => {
          // The start position is reported (empty batch) so a restart would not skip lines appended meanwhile.
          await waitFor(() => positions.getPosition(file) !== undefined, 'start position reported');
          assert.equal(positions.getPosition(file)!.offset, 'old 1\nold 2\n'.length);
          appendFileSync(file, 'new 1\n');
          await waitFor(() => c.lines.length === 1, 'new line');
          assert.deepEqual(c.texts(), ['new 1']);
        });
      });
    });

    it('follows several files independently', async () => {
      await withTmpDir(async (dir) => {
        const a = path.join(dir, 'a.log');
        const b = path.join(dir, 'b.log');
        writeFileSync(a, '');
        writeFileSync(b, '');
        const positions = new MemoryPositions();
        const c = new Collector(positions);
        await running(make([a, b], positions), c, async () => {
          for (let i = 0; i < 50; i++) {
            appendFileSync(a, `a ${i}\n`);
            appendFileSync(b, `b ${i}\n`);
          }
          await waitFor(() => c.lines.length === 100, '100 lines');
          assert.deepEqual(c.lines.filter((l) => l.source === a).map((l) => l.text), Array.from({ length: 50 }, (_, i) => `a ${i}`));
          assert.deepEqual(c.lines.filter((l) => l.source === b).map((l) => l.text), Array.from({ length: 50 }, (_, i) => `b ${i}`));
        });
      });
    });

    it('stop() leaves no handles behind', async () => {
      await withTmpDir(async (dir) => {
        const file = path.join(dir, 'x.log');
        writeFileSync(file, 'x\n');
        const before = process.getActiveResourcesInfo().filter((r) => r !== 'TTYWrap');
        const positions = new MemoryPositions();
        const c = new Collector(positions);
        const src = make([file, path.join(dir, '*.glob.log')], positions);
        await src.start(c.sink);
        await waitFor(() => c.lines.length === 1, 'line');
        await src.stop();
        await sleep(20);
        const after = process.getActiveResourcesInfo().filter((r) => r !== 'TTYWrap');
        const count = (xs: string[], k: string) => xs.filter((x) => x === k).length;
        for (const kind of ['FSEventWrap', 'FileHandle', 'Timeout', 'StatWatcher']) {
          assert.ok(count(after, kind) <= count(before, kind), `${kind} leaked: before ${before.join(',')} after ${after.join(',')}`);
        }
        // No delivery after stop.
        appendFileSync(file, 'late\n');
        await sleep(mode === 'poll' ? 200 : 100);
        assert.equal(c.lines.length, 1);
      });
    });
  });
}
