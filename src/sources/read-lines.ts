import { closeSync, openSync, readSync } from 'node:fs';
import { MAX_LINE_BYTES, type SourceLine } from './types.ts';

const CHUNK = 1 << 20;

/**
 * Reads a whole file as batches of lines, for `tsfilter replay` and `tsfilter test`: the same line rules as the
 * tailer (cut at MAX_LINE_BYTES, trailing \r stripped, invalid UTF-8 replaced, a last line without a newline kept),
 * without watching. Each line is decoded on its own rather than split out of a decoded chunk: V8 would make the
 * pieces slices of the chunk, and one line kept as evidence would pin the whole megabyte in memory.
 */
export function* readLines(path: string, source = path, batchSize = 4096): Generator<SourceLine[]> {
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.allocUnsafe(CHUNK + MAX_LINE_BYTES);
    let carry = 0; // bytes of an unfinished line at the start of buf
    let skipping = false; // inside an overlong line: discard up to the next newline
    let batch: SourceLine[] = [];
    for (;;) {
      const n = readSync(fd, buf, carry, CHUNK, null);
      const end = carry + n;
      if (n === 0) {
        if (carry > 0 && !skipping) batch.push(line(buf, 0, carry, source));
        break;
      }
      let start = 0;
      for (;;) {
        const nl = buf.indexOf(10, start);
        if (nl < 0 || nl >= end) break;
        if (skipping) skipping = false;
        else batch.push(line(buf, start, nl, source));
        start = nl + 1;
      }
      const rest = end - start;
      if (skipping) {
        carry = 0;
      } else if (rest >= MAX_LINE_BYTES) {
        batch.push(line(buf, start, start + MAX_LINE_BYTES, source));
        skipping = true;
        carry = 0;
      } else {
        buf.copy(buf, 0, start, end);
        carry = rest;
      }
      if (batch.length >= batchSize) {
        yield batch;
        batch = [];
      }
    }
    if (batch.length) yield batch;
  } finally {
    closeSync(fd);
  }
}

function line(buf: Buffer, start: number, end: number, source: string): SourceLine {
  if (end - start > MAX_LINE_BYTES) end = start + MAX_LINE_BYTES;
  if (end > start && buf[end - 1] === 13) end--;
  // Do not cut inside a UTF-8 sequence when the cap fell in the middle of one.
  if (end - start === MAX_LINE_BYTES) while (end > start && (buf[end]! & 0xc0) === 0x80) end--;
  return { text: buf.toString('utf8', start, end), source };
}
