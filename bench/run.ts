import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/*
 * `npm run bench`: every benchmark in bench/, one child process each (so one's heap does not skew the next), in
 * well under 10 minutes on 2 cores. Each prints its own figures; this only runs them in order and times them.
 */
const REPO = fileURLToPath(new URL('../', import.meta.url));

if (!existsSync(REPO + 'dist/cli/main.js')) {
  process.stdout.write('building dist/ first (the replay benchmark measures the built CLI)\n');
  spawnSync('npm', ['run', 'build'], { cwd: REPO, stdio: 'inherit' });
}

const benches: { name: string; args: string[] }[] = [
  { name: 'replay throughput and peak RSS (issue 2: >= 1,000,000 lines/s)', args: ['bench/replay-throughput.ts'] },
  { name: 'rules only (parse path)', args: ['bench/rules-throughput.ts'] },
  { name: 'detector flood of 1M distinct IPs (bounded memory)', args: ['--expose-gc', 'bench/detect-memory.ts'] },
  { name: 'SQLite store: 100,000 bans', args: ['bench/store-bans.ts'] },
  { name: 'tail latency: append -> pipeline (inotify)', args: ['bench/tail-latency.ts', '500'] },
  { name: 'line-to-drop: log line -> nft element (issue 3: p99 < 20 ms; needs root, runs in a netns)', args: ['bench/line-to-drop.ts', '300'] },
  { name: 'nftables: 100,000 bans applied / restored (issue 3: < 2 s each; needs root, runs in a netns)', args: ['bench/nft-bulk.ts'] },
  { name: 'fleet sync: ban on A -> element in B\'s nft set, and B catching up on 10,000 bans (issue 5: p99 < 50 ms, < 2 s; needs root and redis-server, runs in a netns)', args: ['bench/fleet-propagation.ts', '200'] },
  { name: 'firewall backends (nftables, ipset, iptables, PyFilter) on the same 100,000 bans (needs root, runs in netns)', args: ['bench/firewall-backends.ts'] },
];

for (const b of benches) {
  process.stdout.write(`\n## ${b.name}\n`);
  const t = Date.now();
  const r = spawnSync(process.execPath, ['--import', 'tsx', ...b.args], { cwd: REPO, stdio: 'inherit', timeout: 180_000 });
  process.stdout.write(`(${((Date.now() - t) / 1000).toFixed(1)} s${r.status === 0 ? '' : `, exit ${r.status ?? r.signal}`})\n`);
}
