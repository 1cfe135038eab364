import assert from 'node:assert/strict';
import { appendFileSync, statSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { createFileSource } from '../src/sources/file-source.ts';
import { LineSplitter, decodeLine } from '../src/sources/line-splitter.ts';
import { MAX_LINE_BYTES } from '../src/sources/types.ts';
import { Collector, MemoryPositions, running, sleep, waitFor, warn, withTmpDir } from './sources-helpers.ts';

const make = (file: string, positions: MemoryPositions) =>
  createFileSource({ name: 'hostile', paths: [file], positions, rescanIntervalMs: 200, warn });

describe('hostile input', () => {
  it('overlong lines are cut at MAX_LINE_BYTES and the rest of the line dropped, also across reads', async () => {
    await withTmpDir(async (dir) => {
      const file = path.join(dir, 'big.log');
      const huge = 'A'.repeat(5 * 1024 * 1024); // far more than one read chunk
      writeFileSync(file, `before\n${huge}\nafter\n`);
      const positions = new MemoryPositions();
      const c = new Collector(positions);
      await running(make(file, positions), c, async () => {
        await waitFor(() => c.lines.length === 3, 'three lines');
        assert.equal(c.lines[0]!.text, 'before');
        assert.equal(c.lines[1]!.text, 'A'.repeat(MAX_LINE_BYTES));
        assert.equal(c.lines[2]!.text, 'after');
        // Now an overlong line that arrives in small pieces while we follow.
        for (let i = 0; i < 40; i++) {
          appendFileSync(file, 'B'.repeat(1000));
          if (i % 10 === 0) await sleep(20);
        }
        appendFileSync(file, '\nend\n');
        await waitFor(() => c.lines.length === 5, 'piecewise overlong line');
        assert.equal(c.lines[3]!.text, 'B'.repeat(MAX_LINE_BYTES));
        assert.equal(c.lines[4]!.text, 'end');
        assert.equal(positions.getPosition(file)!.offset, statSync(file).size);
      });
    });
  });

  it('a cut never leaves half a UTF-8 character; exactly MAX_LINE_BYTES plus \\r\\n is not cut', () => {
    const s = new LineSplitter(10);
    const got: { text: string; cut: boolean }[] = [];
    s.push(Buffer.from('123456789é+more\n0123456789\r\n'), (text, cut) => got.push({ text, cut }));
    assert.deepEqual(got, [
      { text: '123456789', cut: true },
      { text: '0123456789', cut: false },
    ]);
    assert.deepEqual(decodeLine(Buffer.from('ab\r'), 0, 3), { text: 'ab', cut: false });
  });

  it('invalid UTF-8, NUL bytes and binary junk are delivered leniently, never throw', async () => {
    await withTmpDir(async (dir) => {
      const file = path.join(dir, 'bin.log');
      const junk = Buffer.concat([
        Buffer.from('bad \xff\xfe utf8 from 10.0.0.1\n', 'latin1'),
        Buffer.from([0x6e, 0x75, 0x6c, 0x00, 0x00, 0x6c, 0x0a]), // "nul\0\0l\n"
        Buffer.from([0xc3, 0x0a]), // truncated 2-byte sequence
        Buffer.from('ok ünïcødé\n', 'utf8'),
        Buffer.from(Array.from({ length: 256 }, (_, i) => (i === 10 ? 32 : i))),
        Buffer.from('\n'),
      ]);
      writeFileSync(file, junk);
      const positions = new MemoryPositions();
      const c = new Collector(positions);
      await running(make(file, positions), c, async () => {
        await waitFor(() => c.lines.length === 5, 'five lines');
        assert.equal(c.lines[0]!.text, 'bad \uFFFD\uFFFD utf8 from 10.0.0.1');
        assert.equal(c.lines[1]!.text, 'nul\0\0l');
        assert.equal(c.lines[2]!.text, '\uFFFD');
        assert.equal(c.lines[3]!.text, 'ok ünïcødé');
        assert.ok(c.lines[4]!.text.includes('\uFFFD'));
        assert.equal(positions.getPosition(file)!.offset, junk.length);
      });
    });
  });

  it('a multi-byte character split across two writes is decoded whole', async () => {
    await withTmpDir(async (dir) => {
      const file = path.join(dir, 'split.log');
      writeFileSync(file, '');
      const positions = new MemoryPositions();
      const c = new Collector(positions);
      await running(make(file, positions), c, async () => {
        const euro = Buffer.from('€', 'utf8');
        appendFileSync(file, Buffer.concat([Buffer.from('price '), euro.subarray(0, 1)]));
        await sleep(100);
        appendFileSync(file, Buffer.concat([euro.subarray(1), Buffer.from('5\n')]));
        await waitFor(() => c.lines.length === 1, 'line');
        assert.equal(c.lines[0]!.text, 'price €5');
      });
    });
  });

  it('a last line without newline is held (not delivered, not counted in the offset)', async () => {
    await withTmpDir(async (dir) => {
      const file = path.join(dir, 'nonl.log');
      writeFileSync(file, 'done\nnot yet');
      const positions = new MemoryPositions();
      const c = new Collector(positions);
      await running(make(file, positions), c, async () => {
        await waitFor(() => c.lines.length === 1, 'first line');
        await sleep(300);
        assert.deepEqual(c.texts(), ['done']);
        assert.equal(positions.getPosition(file)!.offset, 5);
        appendFileSync(file, '\n');
        await waitFor(() => c.lines.length === 2, 'completed');
        assert.equal(c.lines[1]!.text, 'not yet');
      });
    });
  });

  it('empty lines and a file of only newlines are fine', async () => {
    await withTmpDir(async (dir) => {
      const file = path.join(dir, 'empty.log');
      writeFileSync(file, '\n\n\r\n');
      const positions = new MemoryPositions();
      const c = new Collector(positions);
      await running(make(file, positions), c, async () => {
        await waitFor(() => c.lines.length === 3, 'three empty lines');
        assert.deepEqual(c.texts(), ['', '', '']);
      });
    });
  });
});
