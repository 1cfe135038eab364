/**
 * The bench suite's reporting: BENCH_RESULT lines collected from a bench's stdout, the one Markdown table built from
 * them (targets marked, missing and skipped benches said), and bench/HISTORY.md kept append-only per machine kind.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { median, parseResults } from '../bench/lib/result.ts';
import { netLinesPerS, throughputTable } from '../bench/peers-throughput.ts';
import { markdownTable, historyRow, HISTORY_HEADER } from '../bench/lib/table.ts';
import { appendHistory } from '../bench/lib/history.ts';

const peers = {
  bench: 'peers-throughput',
  rows: [
    { tool: 'TSFilter replay (full pipeline, dry-run)', lines: 2_000_000, lines_per_s: 900_000, startup_ms: 300, net_lines_per_s: 1_043_478, cpu_s: 2.5, peak_rss_mb: 160, replay_ratio: 1 },
    { tool: 'TSFilter parse-only (ssh rule, lines in memory)', lines: 2_000_000, lines_per_s: 2_700_000, cpu_s: 0.7, peak_rss_mb: 400, replay_ratio: 0.33 },
    { tool: 'sshguard 2.4.2-1+b2 sshg-parser', lines: 2_000_000, lines_per_s: 600_000, startup_ms: 2, net_lines_per_s: 600_360, cpu_s: 3.3, peak_rss_mb: 2.9, replay_ratio: 1.5 },
    { tool: 'fail2ban-regex 1.0.2-2 (sshd filter)', lines: 100_000, lines_per_s: 40_000, startup_ms: 400, net_lines_per_s: 47_619, cpu_s: 2.4, peak_rss_mb: 37, replay_ratio: 22.5, note: 'the first lines of the same file: it is slow' },
  ],
  pyfilter: { ceiling_lines_per_s: 10_000, replay_ratio_at_least: 90 },
};

test('BENCH_RESULT lines are collected from a bench output; other and broken lines are not', () => {
  const out = ['run 1: 900000 lines/s', 'BENCH_RESULT {"bench":"x","a":1}', 'BENCH_RESULT {"bench":"y",', 'BENCH_RESULT [1]', 'BENCH_RESULT {"bench":"z"}'].join('\n');
  assert.deepEqual(parseResults(out), [{ bench: 'x', a: 1 }, { bench: 'z' }]);
});

test('the table shows every figure with its target, and says which benches were not run or were skipped', () => {
  const t = markdownTable({
    'peers-throughput': peers,
    'line-to-drop': { bench: 'line-to-drop', samples: 300, median_ms: 3.7, p99_ms: 25.1 },
    'fleet-propagation': { bench: 'fleet-propagation', skipped: 'missing redis-server' },
  });
  const lines = t.split('\n');
  assert.equal(lines[0], '| figure | result | CPU s | peak RSS | vs TSFilter / target |');
  assert.equal(lines[1], '|---|---|---|---|---|');
  assert.ok(lines.slice(2).every((l) => l.startsWith('| ') && l.endsWith(' |') && l.split(' | ').length === 5), t);
  assert.match(t, /\| TSFilter replay \(full pipeline, dry-run\), 2,000,000 lines \| 900,000 lines\/s \(start-up 300 ms; net 1,043,478 lines\/s\) \| 2\.50 \| 160\.0 MB \| reference; issue 2 target >= 1,000,000 lines\/s: \*\*NOT met\*\* \|/);
  assert.match(t, /sshguard 2\.4\.2-1\+b2 sshg-parser, 2,000,000 lines \| 600,000 lines\/s .*replay is 1\.50× it; target >= 1×: met \|/);
  assert.match(t, /fail2ban-regex 1\.0\.2-2 \(sshd filter\), 100,000 lines \(the first lines of the same file: it is slow\) \| 40,000 lines\/s \(start-up 400 ms; net 47,619 lines\/s\) .*replay is 22\.50× it; target >= 15×: met \|/);
  // Parse-only has no start-up to show (no process start is timed).
  assert.match(t, /parse-only \(ssh rule, lines in memory\), 2,000,000 lines \| 2,700,000 lines\/s \|/);
  assert.match(t, /PyFilter .* \| < 10,000 lines\/s \(ceiling\) .*> 90× it/);
  assert.match(t, /line → drop .*, 300 bans \| p50 3\.70 ms \/ p99 25\.10 ms .*target p99 < 20 ms: \*\*NOT met\*\*/);
  assert.match(t, /Redis propagation .* \| skipped: missing redis-server \|/);
  assert.match(t, /100,000 bans apply \/ restore \(nftables\) \| not run \(--only nft-bulk\) \|/);
  assert.match(t, /memory with 1,000,000 tracked IPs \| not run \(--only memory\) \|/);
  assert.match(t, /daemon idle RSS .* \| not run \(--only daemon\) \|/);

  // A peer that is not installed: its row says so, and no ratio is made up (results.json turns NaN into null).
  const noPeer = JSON.parse(JSON.stringify({ ...peers, rows: [peers.rows[0], { tool: 'sshguard sshg-parser', lines: 0, lines_per_s: NaN, cpu_s: NaN, peak_rss_mb: NaN, note: 'not installed: skipped' }] }));
  const t2 = markdownTable({ 'peers-throughput': noPeer, agreement: { bench: 'agreement', skipped: 'fail2ban-regex not installed' } });
  assert.match(t2, /\| sshguard sshg-parser \| not installed: skipped \|  \|  \|  \|/);
  assert.match(t2, /\| agreement with fail2ban .* \| skipped: fail2ban-regex not installed \|/);
  const h = historyRow({ 'peers-throughput': noPeer }, { date: 'd', commit: 'c', load: 1, totalS: 1 });
  assert.deepEqual(h.slice(5, 9), ['—', '—', '—', '—']);
});

test('HISTORY.md only grows: one row per run under its machine kind, a new heading when the machine kind changes', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'tsf-bench-history-'));
  try {
    const file = path.join(dir, 'HISTORY.md');
    const row = (date: string) => historyRow({ 'peers-throughput': peers }, { date, commit: 'abc1234', load: 0.5, totalS: 321 });
    appendHistory(file, 'AMD EPYC, 2 cores, 24 GiB', row('2026-01-01 10:00'));
    const first = readFileSync(file, 'utf8');
    appendHistory(file, 'AMD EPYC, 2 cores, 24 GiB', row('2026-01-02 10:00'));
    const second = readFileSync(file, 'utf8');
    assert.ok(second.startsWith(first), 'the second run only appends');
    assert.equal(second.split('\n').filter((l) => l.startsWith('## ')).length, 1);
    assert.equal(second.split('\n').filter((l) => l.startsWith('| 2026-')).length, 2);
    appendHistory(file, 'Intel Xeon, 4 cores, 16 GiB', row('2026-01-03 10:00'));
    const third = readFileSync(file, 'utf8');
    assert.ok(third.startsWith(second));
    assert.deepEqual(third.split('\n').filter((l) => l.startsWith('## ')), ['## AMD EPYC, 2 cores, 24 GiB', '## Intel Xeon, 4 cores, 16 GiB']);
    const header = `| ${HISTORY_HEADER.join(' | ')} |`;
    assert.equal(third.split('\n').filter((l) => l === header).length, 2);
    const last = third.trimEnd().split('\n').at(-1)!;
    const cells = last.slice(2, -2).split(' | ');
    assert.equal(cells.length, HISTORY_HEADER.length);
    assert.deepEqual(cells.slice(0, 9), ['2026-01-03 10:00', 'abc1234', '0.50', '900,000', '2,700,000', '600,000', '40,000', '1.50', '22.50']);
    assert.equal(cells.at(-1), '321.0');
    // A file someone wrote by hand keeps its text.
    writeFileSync(file, '# mine\n');
    appendHistory(file, 'AMD EPYC, 2 cores, 24 GiB', row('2026-01-04 10:00'));
    assert.ok(readFileSync(file, 'utf8').startsWith('# mine\n\n## AMD EPYC'));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the median of an even number of runs is the mean of the two middle ones, not the slower one', () => {
  assert.equal(median([2.4, 2.2]), 2.3);
  assert.equal(median([4, 1, 3, 2]), 2.5);
  assert.equal(median([3, 1, 2]), 2);
  assert.equal(median([7]), 7);
});

test("the peers table shows raw lines/s, the tool's start-up and net lines/s, and the ratio on the raw figure", () => {
  // 100,000 lines in 2.5 s of which 0.4 s start-up: 40,000 raw, 47,619 net.
  assert.equal(netLinesPerS(100_000, 2500, 400), 47_619);
  assert.ok(Number.isNaN(netLinesPerS(100_000, 300, 400)), 'a start-up longer than the run (a noisy machine) gives no net figure');
  const t = throughputTable(peers).split('\n');
  assert.equal(t[0], '| tool | lines | lines/s (raw) | start-up ms | net lines/s | TSFilter replay is (raw) | CPU s | peak RSS MB | reported |');
  assert.ok(t.every((l) => l.split('|').length === 11), t.join('\n'));
  assert.ok(t.some((l) => l.startsWith('| fail2ban-regex 1.0.2-2 (sshd filter) (the first lines of the same file: it is slow) | 100,000 | 40,000 | 400 | 47,619 | 22.50× |')), t.join('\n'));
  assert.ok(t.some((l) => l.startsWith('| TSFilter parse-only (ssh rule, lines in memory) | 2,000,000 | 2,700,000 | — | — | 0.33× |')), t.join('\n'));
});
