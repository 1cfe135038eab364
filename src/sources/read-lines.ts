import { closeSync, openSync, readSync } from 'node:fs';
import { MAX_LINE_BYTES, type SourceLine } from './types.ts';

const CHUNK = 1 << 20;

/**
 * Reads a whole file as batches of lines, for `tsfilter replay` and `tsfilter test`: the same line rules as the
 * tailer (cut at MAX_LINE_BYTES, trailing \r stripped, invalid UTF-8 replaced, a last line without a newline kept),
 * without watching. Decoding one chunk at a time and splitting the string is several times faster than decoding
 * line by line; a chunk is cut after its last newline so no UTF-8 sequence is split.
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
        if (carry > 0 && !skipping) batch.push(line(buf.toString('utf8', 0, carry), source));
        break;
      }
      let start = 0;
      if (skipping) {
        const nl = buf.indexOf(10, 0);
        if (nl < 0 || nl >= end) {
          carry = 0;
          continue;
        }
        start = nl + 1;
        skipping = false;
      }
      const lastNl = buf.lastIndexOf(10, end - 1);
      if (lastNl >= start) {
        const text = buf.toString('utf8', start, lastNl);
        const parts = text.split('\n');
        for (let i = 0; i < parts.length; i++) {
          let t = parts[i]!;
          if (t.length > MAX_LINE_BYTES / 4 && Buffer.byteLength(t) > MAX_LINE_BYTES) t = cut(t);
          batch.push(line(t, source));
        }
        start = lastNl + 1;
        if (batch.length >= batchSize) {
          yield batch;
          batch = [];
        }
      }
      const rest = end - start;
      if (rest > MAX_LINE_BYTES) {
        batch.push(line(cut(buf.toString('utf8', start, start + MAX_LINE_BYTES)), source));
        skipping = true;
        carry = 0;
      } else {
        buf.copy(buf, 0, start, end);
        carry = rest;
      }
    }
    if (batch.length) yield batch;
  } finally {
    closeSync(fd);
  }
}

function line(text: string, source: string): SourceLine {
  const l = text.length;
  if (l > 0 && text.charCodeAt(l - 1) === 13) text = text.slice(0, l - 1);
  return { text, source };
}

/** Cuts a string to at most MAX_LINE_BYTES of UTF-8 without splitting a character. */
function cut(t: string): string {
  const b = Buffer.from(t, 'utf8');
  if (b.length <= MAX_LINE_BYTES) return t;
  let e = MAX_LINE_BYTES;
  while (e > 0 && (b[e]! & 0xc0) === 0x80) e--;
  return b.toString('utf8', 0, e);
}
