import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { openSqliteStore } from '../src/store/sqlite-store.ts';
import { emitResult, median, quantile } from './lib/result.ts';

/*
 * The dashboard with 100,000 bans in the store: how long Chromium takes from navigation to "totals and charts
 * drawn" (the page's `tsfilter:overview-ready` performance mark), and what each API call the page makes costs.
 *
 * The store is seeded with BANS bans over 60 days (IPv6 from 2001:db8::/32 and the three IPv4 documentation /24s,
 * four rules, 40 countries, three nodes, four origins, about 60% active, the expired ones ended), then the daemon (`tsfilter run`, the built
 * CLI when dist/ has the dashboard, else the sources through tsx; dry-run firewall) starts with an api block on a
 * free loopback port. Loads:
 *   - cold: a new browser context, the first request for /api/stats since the start;
 *   - recomputed: a ban is made through the API before each load, so /api/stats is computed again (the usual case
 *     on a busy server);
 *   - cached: nothing changed since the previous load.
 * Then the search and an address's page, the live latency (POST /api/bans -> row in the latest list), and the API
 * endpoints alone from Node (median of REPS).
 * Usage: node --import tsx bench/dashboard-100k.ts [bans=100000]
 */
const REPO = fileURLToPath(new URL('../', import.meta.url));
const CHROMIUM = process.env.TSFILTER_CHROMIUM ?? '/usr/bin/chromium';
const TOKEN = 'bench-token-0123456789abcdef';
/** Bans attempted; repeats of the IPv4 addresses while banned are not stored, so the store holds slightly fewer. */
const BANS = Math.max(1000, Number(process.argv[2] ?? 100_000));
const LOADS = 5;
const REPS = 5;
const DAY = 86_400_000;
const RULES = ['ssh', 'nginx', 'apache', 'mysql'];
const NODES = ['web1', 'web2', 'db1'];
const ORIGINS = ['local', 'remote', 'manual', 'pyfilter'] as const;
const CODES = 'CN US RU BR IN DE FR GB NL KR VN ID TW JP UA IR TR PL RO IT ES CA AR MX TH HK SG AU ZA EG NG PK BD PH CO CL PE VE KZ SE'.split(' ');

const r1 = (x: number) => +x.toFixed(1);
const ms = (t0: bigint) => Number(process.hrtime.bigint() - t0) / 1e6;

function address(i: number): string {
  // A tenth IPv4 (the documentation /24s hold only 768 addresses, so those repeat: repeat offenders), the rest IPv6.
  if (i % 10 === 0) return `${['192.0.2', '198.51.100', '203.0.113'][i % 3]}.${(i >> 2) % 250 + 3}`;
  return `2001:db8:${(i >> 15).toString(16)}:${((i & 0x7fff) + 1).toString(16)}::${((i * 7) % 0xfff + 1).toString(16)}`;
}

/** Seeds the store; returns the time it took and the rows written (an address already banned is not banned again). */
function seed(file: string, now: number): { ms: number; rows: number } {
  const store = openSqliteStore(file);
  const t0 = process.hrtime.bigint();
  const at = Date.now();
  let rows = 0;
  try {
    store.transaction(() => {
      for (let i = 0; i < BANS; i++) {
        const createdAt = now - Math.floor(((i * 7919) % BANS) / BANS * 60 * DAY) - 60_000;
        const code = CODES[(i * 13) % CODES.length]!;
        const k = i % 3;
        const r = store.addBan({
          ip: address(i), rule: RULES[i % 4]!, reason: `Acquired 5 bad connections via ${RULES[i % 4]}.`, createdAt,
          expiresAt: k === 0 ? null : k === 1 ? createdAt + 7 * DAY : createdAt + 3600_000, failures: 5,
          origin: ORIGINS[(i >> 3) % 4]!, server: NODES[i % 3]!, country: `Country ${code}`, countryCode: code,
          lines: [`Nov 21 10:00:00 host sshd[1234]: Failed password for root from ${address(i)} port 51234 ssh2`],
        });
        if (r.added) rows++;
      }
    });
    // As a running daemon leaves them: bans whose time is up are ended, at their expiry (else the daemon's first
    // expiry pass ends tens of thousands at once, and the live feed's burst is what the first loads would measure).
    store.expireBans(at);
  } finally {
    store.close();
  }
  const db = new Database(file);
  try {
    db.prepare("UPDATE bans SET ended_at = expires_at WHERE end_reason = 'expired' AND ended_at = ?").run(at);
  } finally {
    db.close();
  }
  return { ms: ms(t0), rows };
}

async function api(base: string, p: string, o: { method?: string; body?: unknown } = {}): Promise<{ ms: number; json: any }> {
  const t0 = process.hrtime.bigint();
  const r = await fetch(base + p, {
    method: o.method ?? 'GET',
    headers: { authorization: `Bearer ${TOKEN}`, ...(o.body ? { 'content-type': 'application/json' } : {}) },
    body: o.body ? JSON.stringify(o.body) : undefined,
  });
  const json = await r.json();
  const t = ms(t0);
  if (!r.ok) throw new Error(`${o.method ?? 'GET'} ${p}: ${r.status} ${JSON.stringify(json)}`);
  return { ms: t, json };
}

let banned = 0;
/** A ban through the API: the store changes, so the next /api/stats is computed again. */
async function change(base: string): Promise<string> {
  const ip = `203.0.113.${(banned++ % 200) + 1}`;
  await api(base, '/api/bans', { method: 'POST', body: { ip, duration: 600, reason: 'bench' } });
  return ip;
}

function rss(pid: number, field = 'VmHWM'): number {
  const m = new RegExp(`${field}:\\s+(\\d+) kB`).exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

const summary = (xs: number[]) => ({ median: r1(median(xs)), p95: r1(quantile([...xs].sort((a, b) => a - b), 0.95)), max: r1(Math.max(...xs)) });

const dir = mkdtempSync(path.join(tmpdir(), 'tsf-dash-bench-'));
const result: Record<string, unknown> = {};
let child: ReturnType<typeof spawn> | undefined;
try {
  const cfg = JSON.parse(readFileSync(path.join(REPO, 'config/config.default.json'), 'utf8'));
  cfg.settings.data_dir = path.join(dir, 'data');
  cfg.settings.firewall = 'dry-run';
  cfg.settings.protect_sessions = false;
  cfg.settings.control_socket = path.join(dir, 'run', 'tsfilter.sock');
  const log = path.join(dir, 'auth.log');
  writeFileSync(log, '');
  cfg.settings.rules.ssh.log_files = log;
  delete cfg.settings.rules.ssh.journal;
  cfg.api = { listen: '127.0.0.1:0', token: TOKEN, read_requires_token: false };
  const cfgFile = path.join(dir, 'config.json');
  writeFileSync(cfgFile, JSON.stringify(cfg, null, 2));

  // The store file the daemon will open (data_dir + the default name), written before it starts.
  const { loadConfigFile } = await import('../src/config/load.ts');
  const storeFile = loadConfigFile(cfgFile).sqlitePath;
  mkdirSync(path.dirname(storeFile), { recursive: true });
  const now = Date.now();
  const seeded = seed(storeFile, now);
  result.bans = seeded.rows;
  result.seed_ms = r1(seeded.ms);
  process.stdout.write(`seeded ${seeded.rows.toLocaleString('en-US')} bans in ${result.seed_ms} ms\n`);

  const built = existsSync(REPO + 'dist/api/http/dashboard.js');
  const cli = built ? [REPO + 'dist/cli/main.js'] : ['--import', 'tsx', REPO + 'src/cli/main.ts'];
  result.cli = built ? 'dist/cli/main.js' : 'src/cli/main.ts (tsx)';
  const t0 = process.hrtime.bigint();
  const proc = spawn(process.execPath, [...cli, 'run', '--config', cfgFile], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  child = proc;
  let out = '';
  proc.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  proc.stderr!.setEncoding('utf8').on('data', (d: string) => (out += d));
  const base = await new Promise<string>((resolve, reject) => {
    const timer = setInterval(() => {
      const m = /msg="api: listening" url=(\S+)/.exec(out);
      if (m && /msg=started/.test(out)) {
        clearInterval(timer);
        resolve(m[1]!);
      } else if (proc.exitCode !== null) {
        clearInterval(timer);
        reject(new Error(`the daemon exited ${proc.exitCode}:\n${out.slice(-2000)}`));
      }
    }, 20);
    setTimeout(() => {
      clearInterval(timer);
      reject(new Error(`the daemon did not start in 60 s:\n${out.slice(-2000)}`));
    }, 60_000).unref();
  });
  result.daemon_start_ms = r1(ms(t0));
  process.stdout.write(`daemon (${result.cli}) up in ${result.daemon_start_ms} ms at ${base}\n`);
  // The first answer after the start: the daemon may still be busy with the work that follows it.
  result.first_api_ms = r1((await api(base, '/api')).ms);
  result.daemon_rss_after_start_mb = r1(rss(proc.pid!, 'VmRSS'));
  process.stdout.write(`first GET /api after the start: ${result.first_api_ms} ms; daemon RSS ${result.daemon_rss_after_start_mb} MB\n`);

  let pw: typeof import('playwright-core') | null = null;
  try {
    pw = await import('playwright-core');
  } catch {
    /* reported below */
  }
  if (!pw || !existsSync(CHROMIUM)) {
    result.browser_skipped = !pw ? 'playwright-core is not installed (npm ci)' : `no Chromium at ${CHROMIUM} (apt-get install chromium)`;
    process.stdout.write(`browser figures skipped: ${result.browser_skipped}\n`);
  } else {
    const browser = await pw.chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'] });
    try {
      result.chromium = browser.version();
      type Load = { ready: number; dcl: number; calls: Record<string, number>; ends: Record<string, number> };
      /** One page load: ms from navigation to the mark, and each API call's duration (Resource Timing). */
      const load = async (ctx: import('playwright-core').BrowserContext, hash: string, view: string): Promise<Load> => {
        const page = await ctx.newPage();
        try {
          await page.goto(`${base}/${hash}`);
          await page.waitForSelector(`main[data-ready="${view}"]`, { timeout: 60_000 });
          return await page.evaluate((v) => {
            const ready = performance.getEntriesByName(`tsfilter:${v}-ready`)[0]!.startTime;
            const calls: Record<string, number> = {};
            const ends: Record<string, number> = {};
            for (const e of performance.getEntriesByType('resource') as PerformanceResourceTiming[]) {
              const u = new URL(e.name);
              if (u.pathname !== '/api/events') ends[u.pathname + u.search] = e.responseEnd;
              if (u.pathname.startsWith('/api') && u.pathname !== '/api/events') calls[u.pathname + u.search] = e.duration;
            }
            const nav = performance.getEntriesByType('navigation')[0] as PerformanceNavigationTiming | undefined;
            return { ready, dcl: nav?.domContentLoadedEventEnd ?? NaN, calls, ends };
          }, view);
        } finally {
          await page.close();
        }
      };
      const perCall = (loads: Load[]) => {
        const names = [...new Set(loads.flatMap((l) => Object.keys(l.calls)))];
        return Object.fromEntries(names.map((n) => [n, r1(median(loads.map((l) => l.calls[n]).filter((x): x is number => x !== undefined)))]));
      };

      const cold = await load(await browser.newContext(), '', 'overview');
      const ctx = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
      const recomputed: Load[] = [];
      for (let i = 0; i < LOADS; i++) {
        await change(base);
        // The live feed sees the ban within its poll interval; the page must not race it.
        await new Promise((r) => setTimeout(r, 300));
        recomputed.push(await load(ctx, '', 'overview'));
      }
      const cached: Load[] = [];
      for (let i = 0; i < LOADS; i++) cached.push(await load(ctx, '', 'overview'));
      if (process.env.BENCH_VERBOSE) for (const l of cached) process.stdout.write(`  ${JSON.stringify({ ready: r1(l.ready), dcl: r1(l.dcl), ends: Object.fromEntries(Object.entries(l.ends).map(([k, v]) => [k, r1(v)])) })}\n`);
      const search: Load[] = [];
      for (let i = 0; i < LOADS; i++) search.push(await load(ctx, `#/search?state=all&rule=${RULES[i % 4]}&country=${CODES[i]}`, 'search'));
      const ipPage: Load[] = [];
      for (let i = 0; i < LOADS; i++) ipPage.push(await load(ctx, `#/ip/${encodeURIComponent(address(i * 10))}`, 'ip'));

      // Live: a ban through the API until its row is in the open page's latest list (the feed polls every 250 ms).
      const page = await ctx.newPage();
      await page.goto(`${base}/`);
      await page.waitForSelector('main[data-ready="overview"]');
      await page.waitForSelector('#live[data-state="live"]');
      const liveMs: number[] = [];
      for (let i = 0; i < LOADS; i++) {
        const t = process.hrtime.bigint();
        const ip = await change(base);
        await page.waitForSelector(`#latest-table tr[data-ip="${ip}"][data-active="true"]`, { timeout: 30_000 });
        liveMs.push(ms(t));
      }
      await page.close();

      result.load_cold_ms = r1(cold.ready);
      result.load_recomputed_ms = summary(recomputed.map((l) => l.ready));
      result.load_cached_ms = summary(cached.map((l) => l.ready));
      result.search_ms = summary(search.map((l) => l.ready));
      result.ip_page_ms = summary(ipPage.map((l) => l.ready));
      result.live_ms = summary(liveMs);
      result.page_calls_cold_ms = Object.fromEntries(Object.entries(cold.calls).map(([k, v]) => [k, r1(v)]));
      result.page_calls_recomputed_ms = perCall(recomputed);
      result.page_calls_search_ms = perCall(search);
      process.stdout.write(`Chromium ${result.chromium}: navigation -> totals and charts drawn\n`);
      process.stdout.write(`  cold (first load, first stats):      ${result.load_cold_ms} ms\n`);
      const line = (label: string, s: ReturnType<typeof summary>) => process.stdout.write(`  ${label.padEnd(37)} median ${s.median} ms, p95 ${s.p95} ms, max ${s.max} ms\n`);
      line('stats recomputed (a ban before each):', result.load_recomputed_ms as ReturnType<typeof summary>);
      line('stats cached:', result.load_cached_ms as ReturnType<typeof summary>);
      line('search (rule + country, all states):', result.search_ms as ReturnType<typeof summary>);
      line("an address's page (explain):", result.ip_page_ms as ReturnType<typeof summary>);
      line('live: POST /api/bans -> row shown:', result.live_ms as ReturnType<typeof summary>);
      process.stdout.write('  API calls of the page (cold load):\n');
      for (const [k, v] of Object.entries(result.page_calls_cold_ms as Record<string, number>)) process.stdout.write(`    ${k.padEnd(40)} ${v} ms\n`);
    } finally {
      await browser.close();
    }
  }

  // The endpoints alone, from Node.
  const time = async (p: string, before?: () => Promise<unknown>) => {
    const xs: number[] = [];
    for (let i = 0; i < REPS; i++) {
      await before?.();
      xs.push((await api(base, p)).ms);
    }
    return r1(median(xs));
  };
  const deepCursor = async () => {
    let cursor: string | null = null;
    const xs: number[] = [];
    for (let i = 0; i < 20; i++) {
      const r = await api(base, `/api/bans?state=all&limit=100${cursor ? `&cursor=${cursor}` : ''}`);
      xs.push(r.ms);
      cursor = r.json.next_cursor;
    }
    return r1(median(xs));
  };
  const apiMs = {
    'stats (recomputed)': await time('/api/stats', () => change(base).then(() => new Promise((r) => setTimeout(r, 300)))),
    'stats (cached)': await time('/api/stats'),
    status: await time('/api/status'),
    'bans latest 20 (all states)': await time('/api/bans?state=all&limit=20'),
    'bans active, first 50': await time('/api/bans?limit=50'),
    'bans active, offset 20,000': await time('/api/bans?limit=50&offset=20000'),
    'bans rule+country (all states)': await time('/api/bans?state=all&rule=ssh&country=CN&limit=50'),
    'bans address prefix 2001:db8:1:': await time('/api/bans?state=all&q=2001:db8:1:&limit=50'),
    'bans 20 pages by cursor (each)': await deepCursor(),
    explain: await time(`/api/bans/${encodeURIComponent(address(10))}/explain`),
  };
  result.api_ms = apiMs;
  process.stdout.write(`API alone (median of ${REPS}):\n`);
  for (const [k, v] of Object.entries(apiMs)) process.stdout.write(`  ${k.padEnd(36)} ${v} ms\n`);
  result.daemon_peak_rss_mb = r1(rss(proc.pid!));
  process.stdout.write(`daemon peak RSS ${result.daemon_peak_rss_mb} MB\n`);
} catch (e) {
  result.error = (e as Error).message.split('\n')[0];
  process.stdout.write(`failed: ${(e as Error).stack ?? e}\n`);
  process.exitCode = 1;
} finally {
  if (child && child.exitCode === null && child.signalCode === null) {
    const exited = new Promise((r) => child!.once('exit', r));
    child.kill('SIGTERM');
    const k = setTimeout(() => child!.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(k);
  }
  rmSync(dir, { recursive: true, force: true });
}
emitResult('dashboard-100k', result);
