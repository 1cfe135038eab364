import { closeSync, openSync, readSync } from 'node:fs';
import { LineSplitter } from './line-splitter.ts';
import type { SourceLine } from './types.ts';

const CHUNK = 1 << 20;

/**
 * Reads a whole file as batches of lines, for `tsfilter replay` and `tsfilter test`: the tailer's own LineSplitter
 * (cut at MAX_LINE_BYTES, trailing \r stripped, invalid UTF-8 replaced, a last line without a newline kept), without
 * watching. Each line is decoded on its own: V8 would make slices of a decoded chunk, and one line kept as evidence
 * would pin the whole megabyte in memory.
 */
export function* readLines(path: string, source = path, batchSize = 4096): Generator<SourceLine[]> {
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.allocUnsafe(CHUNK);
    const splitter = new LineSplitter();
    let batch: SourceLine[] = [];
    const onLine = (text: string) => {
      batch.push({ text, source });
    };
    for (;;) {
      const n = readSync(fd, buf, 0, CHUNK, null);
      if (n === 0) break;
      splitter.push(buf.subarray(0, n), onLine);
      if (batch.length >= batchSize) {
        yield batch;
        batch = [];
      }
    }
    const last = splitter.flush();
    if (last !== undefined) batch.push({ text: last.text, source });
    if (batch.length) yield batch;
  } finally {
    closeSync(fd);
  }
}
