/*
 * The one table `npm run bench` prints, and the one HISTORY.md row, from the BENCH_RESULT objects of the benches
 * (keyed by bench name). A bench that did not run, was skipped or failed leaves its rows saying so.
 */
// Results are parsed JSON from child processes; each figure is checked where it is read.
type R = Record<string, any>;

const int = (x: unknown) => (typeof x === 'number' && Number.isFinite(x) ? Math.round(x).toLocaleString('en-US') : '—');
const f1 = (x: unknown) => (typeof x === 'number' && Number.isFinite(x) ? x.toFixed(1) : '—');
const f2 = (x: unknown) => (typeof x === 'number' && Number.isFinite(x) ? x.toFixed(2) : '—');
const sec = (ms: unknown) => (typeof ms === 'number' && Number.isFinite(ms) ? `${(ms / 1000).toFixed(2)} s` : '—');
const met = (ok: boolean) => (ok ? 'met' : '**NOT met**');

function missing(r: R | undefined, what: string): string | null {
  if (!r) return `not run (${what})`;
  if (typeof r.skipped === 'string') return `skipped: ${r.skipped}`;
  if (typeof r.error === 'string') return `failed: ${r.error}`;
  return null;
}

export interface Row {
  figure: string;
  result: string;
  cpu?: string;
  rss?: string;
  note: string;
}

export function tableRows(res: Record<string, R>): Row[] {
  const rows: Row[] = [];
  const p = res['peers-throughput'];
  const pm = missing(p, '--only peers');
  if (pm) rows.push({ figure: 'parsing throughput (replay, parse-only, sshguard, fail2ban-regex)', result: pm, note: '' });
  else {
    const replay = (p!.rows as R[])[0]!;
    for (const x of p!.rows as R[]) {
      const isReplay = x === replay;
      const isParse = String(x.tool).startsWith('TSFilter parse-only');
      const isSg = String(x.tool).startsWith('sshguard');
      const isFb = String(x.tool).startsWith('fail2ban');
      let note = '';
      if (isReplay) note = `reference; issue 2 target >= 1,000,000 lines/s: ${met(x.lines_per_s >= 1_000_000)}`;
      else if (!Number.isFinite(x.lines_per_s)) note = '';
      else if (isParse) note = `in memory, no I/O or start-up; ${f1(x.lines_per_s / replay.lines_per_s)}× replay's lines/s`;
      else if (isSg) note = `replay is ${f2(x.replay_ratio)}× it; target >= 1×: ${met(x.replay_ratio >= 1)}`;
      else if (isFb) note = `replay is ${f2(x.replay_ratio)}× it; target >= 15×: ${met(x.replay_ratio >= 15)}`;
      // Raw (start-up included) is the figure the ratios use; net takes the tool's start-up on an empty file off.
      const startup = typeof x.startup_ms === 'number' ? ` (start-up ${int(x.startup_ms)} ms; net ${int(x.net_lines_per_s)} lines/s)` : '';
      const result = Number.isFinite(x.lines_per_s) ? `${int(x.lines_per_s)} lines/s${startup}` : String(x.note ?? 'not run');
      const input = Number.isFinite(x.lines_per_s) ? `, ${int(x.lines)} lines` : '';
      rows.push({
        figure: `${x.tool}${input}${isFb && x.note ? ` (${x.note})` : ''}`,
        result,
        cpu: Number.isFinite(x.cpu_s) ? f2(x.cpu_s) : undefined,
        rss: Number.isFinite(x.peak_rss_mb) ? `${f1(x.peak_rss_mb)} MB` : undefined,
        note,
      });
    }
    rows.push({
      figure: 'PyFilter (not run: sleeps 0.1 ms after every line)',
      result: `< ${int(p!.pyfilter.ceiling_lines_per_s)} lines/s (ceiling)`,
      note: `replay is > ${p!.pyfilter.replay_ratio_at_least}× it`,
    });
  }

  const a = res.agreement;
  const am = missing(a, '--only agreement');
  if (am) rows.push({ figure: 'agreement with fail2ban (same maxretry/findtime)', result: am, note: '' });
  else {
    const n = a!.totals.normal;
    const g = a!.totals.aggressive;
    rows.push({
      figure: `bans agreement vs fail2ban ${a!.fail2ban_version} sshd filter, maxretry ${a!.maxretry} / findtime ${a!.findtime} s, corpus logs`,
      result: `normal mode: both ${n.both}, TSFilter only ${n.tsfilterOnly}, fail2ban only ${n.fail2banOnly}`,
      note: `aggressive mode: both ${g.both}, TSFilter only ${g.tsfilterOnly}, fail2ban only ${g.fail2banOnly}; differences listed above`,
    });
  }

  const l = res['line-to-drop'];
  rows.push({
    figure: `line → drop (log append → nft element)${l && !missing(l, '') ? `, ${l.samples} bans` : ''}`,
    result: missing(l, '--only line-to-drop') ?? `p50 ${f2(l!.median_ms)} ms / p99 ${f2(l!.p99_ms)} ms`,
    note: missing(l, '') ? '' : `target p99 < 20 ms: ${met(l!.p99_ms < 20)}; fail2ban polls up to 1 s, PyFilter sleeps 1 s at EOF`,
  });

  const b = res['nft-bulk'];
  rows.push({
    figure: `${b && !missing(b, '') ? int(b.bans) : '100,000'} bans apply / restore (nftables)`,
    result: missing(b, '--only nft-bulk') ?? `${sec(b!.ban_ms)} / ${sec(b!.restore_ms)}`,
    note: missing(b, '') ? '' : `target < 2 s each: ${met(b!.ban_ms < 2000 && b!.restore_ms < 2000)}; restart with table intact ${sec(b!.restart_ms)}`,
  });

  const fl = res['fleet-propagation'];
  const flm = missing(fl, '--only fleet');
  rows.push({
    figure: "Redis propagation (A's ban → element in B's nft set)",
    result: flm ?? `p50 ${f2(fl!.propagation_ms.median)} ms / p99 ${f2(fl!.propagation_ms.p99)} ms`,
    note: flm ? '' : `target p99 < 50 ms: ${met(fl!.propagation_ms.p99 < 50)}; PyFilter: next check_time poll, up to 600 s`,
  });
  if (!flm) {
    rows.push({
      figure: `Redis catch-up of ${int(fl!.catchup.bans)} missed bans (B spawn → all in its store)`,
      result: sec(fl!.catchup.b_all_stored_polled_ms),
      note: `target < 2 s: ${met(fl!.catchup.b_all_stored_polled_ms < 2000)}; includes B's start-up (tsx) ${sec(fl!.catchup.b_startup_ms)}`,
    });
  }

  const m = res['detect-memory'];
  const mm = missing(m, '--only memory');
  if (mm) rows.push({ figure: 'memory with 1,000,000 tracked IPs', result: mm, note: '' });
  else {
    const t = m!.tracked_1m;
    rows.push({
      figure: 'memory with 1,000,000 tracked IPs (max_tracked_ips raised to 1,000,000)',
      result: `heap +${int(t.heap_after_mb - t.heap_before_mb)} MB (${int(t.heap_bytes_per_entry)} B per IP)`,
      rss: `${int(t.rss_after_mb)} MB (+${int(t.rss_after_mb - t.rss_before_mb)})`,
      note: 'RSS column: the bench process after the flood (not its peak), and its growth during it',
    });
    const fd = m!.flood;
    rows.push({
      figure: `1,000,000-IP flood at the default cap (${int(fd.cap)})`,
      result: `tracked ${int(fd.max_size)} at most, heap +${int(fd.heap_after_mb - fd.heap_before_mb)} MB`,
      note: `bounded: ${met(fd.max_size <= fd.cap)}; ${int(fd.obs_per_s)} observations/s`,
    });
  }

  const d = res['daemon-idle'];
  const dm = missing(d, '--only daemon');
  rows.push({ figure: 'daemon idle RSS (defaults, dry-run firewall)', result: dm ?? `${f1(d!.idle_rss_mb)} MB`, note: dm ? '' : `VmRSS ${d!.idle_s} s after start-up, median of ${d!.runs}` });
  rows.push({ figure: 'daemon start-up (spawn → `started` line)', result: dm ?? `${int(d!.startup_ms)} ms`, note: dm ? '' : `built CLI, median of ${d!.runs} (min ${int(d!.startup_min_ms)} ms)` });

  const tl = res['tail-latency'];
  if (tl && !missing(tl, '')) rows.push({ figure: 'tail latency, append → pipeline (inotify)', result: `p50 ${f2(tl.inotify.median_ms)} ms / p99 ${f2(tl.inotify.p99_ms)} ms`, note: `poll fallback p50 ${f1(tl.poll?.median_ms)} ms` });
  const st = res['store-bans'];
  if (st && !missing(st, '')) rows.push({ figure: `SQLite: ${int(st.bans)} bans in one transaction`, result: `${int(st.add_ms)} ms`, note: `reopen ${int(st.reopen_ms)} ms; one committed ban ${f2(st.committed_ban_ms)} ms` });
  const fw = res['firewall-backends'];
  if (fw && !missing(fw, '') && Array.isArray(fw.results)) {
    const parts = (fw.results as R[])
      .filter((x) => x.loaded && x.baseline && x.loaded.perSec > 0)
      .map((x) => `${x.backend.replace(/^PyFilter: .*/, 'PyFilter')} ${f2(x.baseline.perSec / x.loaded.perSec)}×`);
    rows.push({ figure: `per-packet cost with ${int(fw.bans)} bans (connects/s, none ÷ loaded)`, result: parts.join(', ') || '—', note: 'firewall-backends table above' });
  }
  return rows;
}

export function markdownTable(res: Record<string, R>): string {
  const out = ['| figure | result | CPU s | peak RSS | vs TSFilter / target |', '|---|---|---|---|---|'];
  for (const r of tableRows(res)) out.push(`| ${r.figure} | ${r.result} | ${r.cpu ?? ''} | ${r.rss ?? ''} | ${r.note} |`);
  return out.join('\n');
}

/** The HISTORY.md columns: short, one row per full run. */
export const HISTORY_HEADER = [
  'date',
  'commit',
  'load',
  'replay lines/s',
  'parse-only lines/s',
  'sshguard lines/s',
  'fail2ban lines/s',
  'replay ÷ sshguard',
  'replay ÷ fail2ban',
  'agreement both/TS only/f2b only',
  'line→drop p50/p99 ms',
  'nft 100k apply/restore s',
  'Redis p50/p99 ms',
  '1M IPs heap MB',
  'idle RSS MB',
  'start-up ms',
  'total s',
];

export function historyRow(res: Record<string, R>, meta: { date: string; commit: string; load: number; totalS: number }): string[] {
  const p = res['peers-throughput'];
  const rows = (p?.rows ?? []) as R[];
  const tool = (pre: string) => rows.find((x) => String(x.tool).startsWith(pre));
  const l = res['line-to-drop'];
  const b = res['nft-bulk'];
  const fl = res['fleet-propagation'];
  const m = res['detect-memory'];
  const d = res['daemon-idle'];
  const a = res.agreement?.totals?.normal;
  const ok = (r: R | undefined) => r !== undefined && !missing(r, '');
  return [
    meta.date,
    meta.commit,
    f2(meta.load),
    int(tool('TSFilter replay')?.lines_per_s),
    int(tool('TSFilter parse-only')?.lines_per_s),
    int(tool('sshguard')?.lines_per_s),
    int(tool('fail2ban')?.lines_per_s),
    f2(tool('sshguard')?.replay_ratio),
    f2(tool('fail2ban')?.replay_ratio),
    a ? `${a.both}/${a.tsfilterOnly}/${a.fail2banOnly}` : '—',
    ok(l) ? `${f2(l!.median_ms)}/${f2(l!.p99_ms)}` : '—',
    ok(b) ? `${f2(b!.ban_ms / 1000)}/${f2(b!.restore_ms / 1000)}` : '—',
    ok(fl) ? `${f2(fl!.propagation_ms.median)}/${f2(fl!.propagation_ms.p99)}` : '—',
    ok(m) ? int(m!.tracked_1m.heap_after_mb - m!.tracked_1m.heap_before_mb) : '—',
    ok(d) ? f1(d!.idle_rss_mb) : '—',
    ok(d) ? int(d!.startup_ms) : '—',
    f1(meta.totalS),
  ];
}
