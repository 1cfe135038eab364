/**
 * Byte-level line splitting shared by the file and journal sources.
 *
 * Lines are split on the byte 0x0A, never on decoded text, so a multi-byte character can never be torn by a chunk
 * boundary. Decoding is lenient (invalid UTF-8 becomes U+FFFD, NUL and other control bytes pass through) and never
 * throws. Memory is bounded: an unterminated line is held up to MAX_LINE_BYTES (+1 for a possible '\r'), everything
 * beyond that up to the next newline is dropped.
 */
import { createHash } from 'node:crypto';
import { MAX_LINE_BYTES } from './types.ts';

/** How many bytes of a file's head the fingerprint covers at most. */
export const FINGERPRINT_BYTES = 256;

/**
 * Fingerprint of a file from its first bytes: sha1 (hex) of the first line including its newline, or of the first
 * FINGERPRINT_BYTES bytes if the first line is longer. Returns '' while it cannot be known yet (first line still
 * incomplete and shorter than FINGERPRINT_BYTES). Once known it never changes for an append-only file.
 */
export function fingerprintOf(head: Buffer): string {
  const nl = head.indexOf(10);
  let len: number;
  if (nl !== -1 && nl < FINGERPRINT_BYTES) len = nl + 1;
  else if (head.length >= FINGERPRINT_BYTES) len = FINGERPRINT_BYTES;
  else return '';
  return createHash('sha1').update(head.subarray(0, len)).digest('hex');
}

/**
 * Decodes buf[start, end) as one line: strips one trailing '\r', cuts to `cap` bytes (backing off to a UTF-8
 * character boundary so the cut does not leave a dangling partial character), decodes leniently.
 */
export function decodeLine(buf: Buffer, start: number, end: number, cap = MAX_LINE_BYTES): { text: string; cut: boolean } {
  if (end > start && buf[end - 1] === 13) end--;
  let cut = false;
  if (end - start > cap) {
    cut = true;
    end = start + cap;
    // buf[end] is the first byte dropped; if it is a continuation byte the character began before the cut.
    let backoff = 0;
    while (backoff < 3 && end > start && ((buf[end] ?? 0) & 0xc0) === 0x80) {
      end--;
      backoff++;
    }
  }
  return { text: buf.toString('utf8', start, end), cut };
}

/** Cuts a decoded string to at most `cap` UTF-8 bytes on a character boundary. */
export function capText(text: string, cap = MAX_LINE_BYTES): { text: string; cut: boolean } {
  // Fast path: every UTF-16 unit is at most 3 UTF-8 bytes.
  if (text.length * 3 <= cap) return { text, cut: false };
  const buf = Buffer.from(text, 'utf8');
  if (buf.length <= cap) return { text, cut: false };
  return decodeLine(buf, 0, buf.length, cap);
}

/**
 * Incremental splitter. `push` calls `onLine(text, cut, endIndex)` for every complete line, where endIndex is the
 * index in the pushed chunk just past the line's newline (so the caller can track the file offset of the last
 * complete line). Bytes after the last newline are held until their newline arrives.
 */
export class LineSplitter {
  private readonly pending: Buffer;
  private pendingLen = 0;
  private overflow = false;

  constructor(private readonly cap = MAX_LINE_BYTES) {
    // cap + 1: room for a '\r' that is stripped, so a line of exactly `cap` bytes plus "\r\n" is not reported as cut.
    this.pending = Buffer.alloc(cap + 1);
  }

  /** True when bytes of an unterminated line are held. */
  get hasPending(): boolean {
    return this.pendingLen > 0 || this.overflow;
  }

  reset(): void {
    this.pendingLen = 0;
    this.overflow = false;
  }

  push(chunk: Buffer, onLine: (text: string, cut: boolean, endIndex: number) => void): void {
    const n = chunk.length;
    let start = 0;
    while (start < n) {
      const idx = chunk.indexOf(10, start);
      if (idx === -1) {
        this.append(chunk, start, n);
        return;
      }
      if (!this.hasPending) {
        // Whole line inside this chunk: decode straight from it, no copy.
        const { text, cut } = decodeLine(chunk, start, idx, this.cap);
        onLine(text, cut, idx + 1);
      } else {
        this.append(chunk, start, idx);
        const { text, cut } = decodeLine(this.pending, 0, this.pendingLen, this.cap);
        const wasOverflow = this.overflow;
        this.reset();
        onLine(text, cut || wasOverflow, idx + 1);
      }
      start = idx + 1;
    }
  }

  /** Returns the held unterminated line (if any) as a final line, and forgets it. */
  flush(): { text: string; cut: boolean } | undefined {
    if (!this.hasPending) return undefined;
    const { text, cut } = decodeLine(this.pending, 0, this.pendingLen, this.cap);
    const wasOverflow = this.overflow;
    this.reset();
    return { text, cut: cut || wasOverflow };
  }

  private append(buf: Buffer, start: number, end: number): void {
    const room = this.pending.length - this.pendingLen;
    const len = end - start;
    if (len > room) this.overflow = true;
    const take = Math.min(len, room);
    if (take > 0) {
      buf.copy(this.pending, this.pendingLen, start, start + take);
      this.pendingLen += take;
    }
  }
}
