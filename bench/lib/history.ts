import { appendFileSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { HISTORY_HEADER } from './table.ts';

/*
 * bench/HISTORY.md is append-only: each full `npm run bench` adds one row under the heading of its machine kind
 * (CPU model, cores, memory). When the last heading in the file is another machine kind, or the columns changed, a
 * new heading and table header are appended first; nothing already in the file is rewritten.
 */
export const PREAMBLE = `# Benchmark history

Appended by every full \`npm run bench\` (see bench/README.md). One table per machine kind; compare rows within a
table, not across tables. Absolute figures move with the machine and its load (the \`load\` column is the 1-minute
load average when the run started); the ratios are what is tracked.
`;

export function machineHeading(kind: string): string {
  return `## ${kind}`;
}

export function appendHistory(file: string, kind: string, cells: string[]): void {
  if (!existsSync(file)) writeFileSync(file, PREAMBLE);
  const text = readFileSync(file, 'utf8');
  const heading = machineHeading(kind);
  const header = `| ${HISTORY_HEADER.join(' | ')} |`;
  const lastHeading = text.split('\n').filter((l) => l.startsWith('## ')).at(-1);
  const lastHeader = text.split('\n').filter((l) => l.startsWith('| date |')).at(-1);
  let add = '';
  if (lastHeading !== heading || lastHeader !== header) {
    add += `${text.endsWith('\n') ? '' : '\n'}\n${heading}\n\n${header}\n|${HISTORY_HEADER.map(() => '---').join('|')}|\n`;
  }
  add += `| ${cells.map((c) => c.replace(/\|/g, '\\|')).join(' | ')} |\n`;
  appendFileSync(file, add);
}
