import { createWriteStream, existsSync, readFileSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/*
 * Builds a large auth log from the two real sshd logs in ../shared/corpus/ssh/, repeated with the addresses
 * varied per copy (the first octet of every IPv4 address is rotated), so each copy brings new attackers as a real
 * large log would, rather than 50 copies of the same 250 addresses.
 */
const SHARED = fileURLToPath(new URL('../../shared/corpus/ssh/', import.meta.url));

export function makeBigAuthLog(out: string, targetLines: number): Promise<number> {
  const src = ['elastic-auth.log', 'secrepo-auth-part.log'].map((f) => readFileSync(SHARED + f, 'utf8').split('\n').filter((l) => l.length > 0));
  const lines = src.flat();
  if (existsSync(out) && statSync(out).size > 0) {
    const n = readFileSync(out, 'utf8').split('\n').length - 1;
    if (n >= targetLines) return Promise.resolve(n);
  }
  const ws = createWriteStream(out);
  let written = 0;
  let copy = 0;
  const v4 = /\b(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\b/g;
  while (written < targetLines) {
    const shift = copy;
    let chunk = '';
    for (const l of lines) {
      if (written >= targetLines) break;
      chunk += (shift === 0 ? l : l.replace(v4, (_m, a, b, c, d) => `${(Number(a) + shift) % 224 || 1}.${b}.${c}.${d}`)) + '\n';
      written++;
    }
    ws.write(chunk);
    copy++;
  }
  return new Promise((resolve, reject) => ws.end(() => resolve(written)).on('error', reject));
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const out = process.argv[2] ?? '/tmp/tsfilter-bench-auth.log';
  const n = Number(process.argv[3] ?? 1_000_000);
  makeBigAuthLog(out, n).then((w) => process.stdout.write(`${out}: ${w} lines\n`));
}
