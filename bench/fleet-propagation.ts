import { spawnSync, type ChildProcess } from 'node:child_process';
import { appendFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { NetnsLab, netnsSupport } from '../test/helpers/netns.ts';
import { emitResult } from './lib/result.ts';

/*
 * Fleet sync over Redis (issue 5): how fast a ban made on node A is enforced on node B, and how fast a restarted B
 * catches up. Everything runs inside one network namespace made here: a real redis-server on its loopback (a port
 * of our own, never the machine's Redis), daemon A (`tsfilter run`, dry-run enforcer: it decides, stores and
 * publishes real bans but touches no firewall) and daemon B (nftables enforcer, so its table lives only in the
 * namespace). Both run from source (`node --import tsx src/cli/main.ts run`).
 *
 *  1. Propagation: each sample appends one instant-ban line for a fresh address to A's followed log. A's decision
 *     time is the arrival of A's own `banned` line: A logs it right after the SQLite commit that also queues the
 *     event in the outbox, and before the publish starts (a microtask), so it is the earliest moment the fleet
 *     could know. Stdout pipes are synchronous on Linux and this process is idle while waiting, so the line's
 *     arrival lags its writing by well under a millisecond. B's end is `nft monitor` in the namespace reporting
 *     the element in banned4 (the kernel has it). Also reported: append -> element (end to end, A's detection
 *     included), append -> A's `banned` (A's own line-to-decision) and A `banned` -> B's `banned origin=remote`
 *     (B's store committed). Samples are spaced 20-60 ms apart, after a few unreported warm-up bans.
 *     Target: p99 < 50 ms. PyFilter: a remote ban waits for the next check_time poll, up to 600 s by default.
 *  2. Catch-up: B is stopped (SIGTERM); 10,000 instant-ban lines for distinct IPv6 addresses are appended to A's
 *     log; once A has banned them all and Redis's ban table holds them, B is started again. Timed from B's spawn:
 *     its store holding all 10,000 (B's SQLite read-only, polled every 10 ms; target < 2 s), `started` (full
 *     start-up), its first and 10,000th `banned origin=remote` lines (logged after the commit that stored them)
 *     and its nft set holding them all (polled). The counts are then checked exactly in the store and the set.
 *
 * Usage: node --import tsx bench/fleet-propagation.ts [samples=200] [catch-up bans=10000]
 */
const REPO = fileURLToPath(new URL('../', import.meta.url));
const SAMPLES = Math.max(1, Math.min(Number(process.argv[2] ?? 200) || 200, 700));
const CATCHUP = Math.max(1, Math.min(Number(process.argv[3] ?? 10_000) || 10_000, 50_000));
const WARMUP = 5;
const PREFIX = 'tsfilter';

const sup = netnsSupport();
if (!sup.ok) {
  process.stdout.write(`fleet-propagation: skipped, missing ${sup.why} (run as root with nftables and iproute2)\n`);
  emitResult('fleet-propagation', { skipped: `missing ${sup.why}` });
  process.exit(0);
}
if (spawnSync('redis-server', ['--version'], { stdio: 'ignore' }).status !== 0) {
  process.stdout.write('fleet-propagation: skipped, missing redis-server (apt-get install -y redis-server)\n');
  emitResult('fleet-propagation', { skipped: 'missing redis-server' });
  process.exit(0);
}

const ms = (a: bigint, b: bigint) => Number(b - a) / 1e6;
const sleep = (n: number) => new Promise((r) => setTimeout(r, n));
/** p, or a rejection with why() after timeoutMs; the timer never outlives the race. */
function within<T>(p: Promise<T>, timeoutMs: number, why: () => string): Promise<T> {
  let timer: NodeJS.Timeout;
  const t = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(why())), timeoutMs)));
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

/** A child whose stdout lines are timestamped on arrival and offered to listeners. */
class Proc {
  private tail: string[] = [];
  private listeners = new Set<(line: string, t: bigint) => void>();
  readonly exited: Promise<void>;

  constructor(
    readonly name: string,
    readonly child: ChildProcess,
  ) {
    let buf = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      const t = process.hrtime.bigint();
      buf += d;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        this.keep(line);
        for (const l of this.listeners) l(line, t);
      }
    });
    child.stderr!.setEncoding('utf8').on('data', (d: string) => this.keep(`[stderr] ${d.trimEnd()}`));
    this.exited = new Promise((r) => child.once('exit', () => r()));
  }

  /** The daemon's warnings and errors (the first few): printed with the figures, so a degraded run shows. */
  readonly problems: string[] = [];

  private keep(line: string): void {
    // protect_sessions finds no sshd in the namespace: expected here, and said at every start.
    const expected = line.includes('msg="protect_sessions: no sshd process is visible');
    if (/^level=(warn|error)|^\[stderr\]/.test(line) && !expected && this.problems.length < 5) this.problems.push(line.slice(0, 300));
    this.tail.push(line);
    if (this.tail.length > 60) this.tail.shift();
  }

  on(fn: (line: string, t: bigint) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  waitFor(re: RegExp, timeoutMs: number): Promise<bigint> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => (off(), reject(new Error(`${this.name}: no line matching ${re} after ${timeoutMs} ms\n${this.recent()}`))), timeoutMs);
      const off = this.on((line, t) => {
        if (re.test(line)) {
          clearTimeout(timer);
          off();
          resolve(t);
        }
      });
    });
  }

  recent(): string {
    return this.tail.join('\n');
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill('SIGTERM');
    const t = setTimeout(() => this.child.kill('SIGKILL'), 10_000);
    await this.exited;
    clearTimeout(t);
  }
}

const months = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
function failLine(ip: string, n: number): string {
  const d = new Date();
  const stamp = `${months[d.getMonth()]} ${String(d.getDate()).padStart(2, ' ')} ${d.toTimeString().slice(0, 8)}`;
  return `${stamp} web1 sshd[${1000 + (n % 60000)}]: error: maximum authentication attempts exceeded for root from ${ip} port ${40000 + (n % 20000)} ssh2 [preauth]\n`;
}

/** 762 distinct documentation IPv4 addresses for the propagation samples (and warm-up). */
const v4Pool: string[] = [];
for (const net of ['198.51.100', '203.0.113', '192.0.2']) for (let h = 1; h <= 254; h++) v4Pool.push(`${net}.${h}`);
/** Catch-up addresses: canonical IPv6 text, one per ban, all inside 2001:db8:c::/48. */
const v6 = (i: number) => `2001:db8:c::${(i + 1).toString(16)}`;

const q = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!;
const stats = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return { n: s.length, median: q(s, 0.5), p99: q(s, 0.99), max: s.at(-1)! };
};
const f = (x: number) => x.toFixed(2);

const dir = mkdtempSync(path.join(tmpdir(), 'tsf-fleet-'));
const lab = new NetnsLab('fleet');
const procs: Proc[] = [];
const benchStart = Date.now();
try {
  const ns = lab.ns('fleet');
  // The namespace's loopback is its own: any port is free there, and the host's Redis (6379) is unreachable.
  const port = 20000 + Math.floor(Math.random() * 20000);
  const redisDir = path.join(dir, 'redis');
  mkdirSync(redisDir);
  const redis = new Proc(
    'redis',
    lab.spawn(ns, ['redis-server', '--port', String(port), '--bind', '127.0.0.1', '--dir', redisDir, '--save', '', '--appendonly', 'no', '--daemonize', 'no']),
  );
  procs.push(redis);
  await redis.waitFor(/Ready to accept connections/, 10_000);
  const redisCli = async (...args: string[]) => {
    const r = await lab.run(ns, ['redis-cli', '-p', String(port), ...args], { timeoutMs: 5000 });
    if (r.code !== 0) throw new Error(`redis-cli ${args.join(' ')}: ${r.stderr}`);
    return r.stdout.trim();
  };

  const base = JSON.parse(readFileSync(path.join(REPO, 'config/config.default.json'), 'utf8'));
  const node = (name: 'A' | 'B', firewall: 'dry-run' | 'nftables') => {
    const d = path.join(dir, name);
    mkdirSync(d);
    const log = path.join(d, 'auth.log');
    writeFileSync(log, '');
    const cfg = structuredClone(base);
    cfg.settings.database = 'redis';
    cfg.settings.firewall = firewall;
    cfg.settings.data_dir = path.join(d, 'data');
    cfg.settings.control_socket = path.join(d, 'tsfilter.sock');
    cfg.settings.rules = { ssh: { ...cfg.settings.rules.ssh, log_files: log } };
    delete cfg.settings.rules.ssh.journal;
    cfg.redis.host = '127.0.0.1';
    cfg.redis.port = port;
    cfg.redis.sync_bans = { ...cfg.redis.sync_bans, active: true, name };
    const file = path.join(d, 'config.json');
    writeFileSync(file, JSON.stringify(cfg, null, 2));
    return { name, log, file, db: path.join(d, 'data', cfg.sqlite.database) };
  };
  const A = node('A', 'dry-run');
  const B = node('B', 'nftables');
  const cli = path.join(REPO, 'src/cli/main.ts');
  const startDaemon = (n: typeof A) => {
    const p = new Proc(n.name, lab.spawn(ns, [process.execPath, '--import', 'tsx', cli, 'run', '--config', n.file]));
    procs.push(p);
    return p;
  };

  const a = startDaemon(A);
  let b = startDaemon(B);
  await Promise.all([a.waitFor(/msg=started/, 30_000), b.waitFor(/msg=started/, 30_000)]);

  // ---- 1. propagation ----------------------------------------------------------------------------------------
  const elementAt = new Map<string, bigint>();
  const elementWaiters = new Map<string, () => void>();
  const monitor = new Proc('nft monitor', lab.spawn(ns, ['nft', 'monitor', 'elements']));
  procs.push(monitor);
  monitor.on((line, t) => {
    const m = /^add element inet tsfilter banned[46] \{ (\S+)/.exec(line);
    if (m && !elementAt.has(m[1]!)) {
      elementAt.set(m[1]!, t);
      elementWaiters.get(m[1]!)?.();
    }
  });
  const aBanned = new Map<string, bigint>();
  const aWaiters = new Map<string, () => void>();
  a.on((line, t) => {
    const m = /^level=info msg=banned ip=(\S+)/.exec(line);
    if (m && !line.includes('origin=remote') && !aBanned.has(m[1]!)) {
      aBanned.set(m[1]!, t);
      aWaiters.get(m[1]!)?.();
    }
  });
  const bStored = new Map<string, bigint>();
  b.on((line, t) => {
    const m = /^level=info msg=banned ip=(\S+) .*origin=remote/.exec(line);
    if (m) bStored.set(m[1]!, t);
  });
  const until = (map: Map<string, bigint>, waiters: Map<string, () => void>, ip: string, what: string, p: Proc) =>
    new Promise<bigint>((resolve, reject) => {
      const have = map.get(ip);
      if (have !== undefined) return resolve(have);
      const t = setTimeout(() => (waiters.delete(ip), reject(new Error(`${what} for ${ip} after 5 s:\n${p.recent()}`))), 5000);
      waiters.set(ip, () => {
        clearTimeout(t);
        waiters.delete(ip);
        resolve(map.get(ip)!);
      });
    });

  // The monitor reports elements only once it is listening: the first warm-up ban waits for it (or times out).
  await sleep(300);
  const prop: number[] = [];
  const toStore: number[] = [];
  const e2e: number[] = [];
  const aDecide: number[] = [];
  for (let i = 0; i < WARMUP + SAMPLES; i++) {
    const ip = v4Pool[i]!;
    const t0 = process.hrtime.bigint();
    appendFileSync(A.log, failLine(ip, i));
    const [tA, tB] = await Promise.all([until(aBanned, aWaiters, ip, "A's banned line", a), until(elementAt, elementWaiters, ip, "element in B's set", b)]);
    if (i >= WARMUP) {
      prop.push(ms(tA, tB));
      e2e.push(ms(t0, tB));
      aDecide.push(ms(t0, tA));
      const ts = bStored.get(ip);
      if (ts !== undefined) toStore.push(ms(tA, ts));
    }
    await sleep(20 + Math.random() * 40);
  }
  const propDone = Date.now();

  // ---- 2. catch-up -------------------------------------------------------------------------------------------
  await b.stop();
  const before = Number(await redisCli('HLEN', `{${PREFIX}}:bans`));
  let aCount = 0;
  const aAllBanned = new Promise<void>((resolve) => {
    const off = a.on((line) => {
      if (/^level=info msg=banned ip=2001:db8:c::/.test(line) && ++aCount === CATCHUP) {
        off();
        resolve();
      }
    });
  });
  const tAppend = process.hrtime.bigint();
  const CHUNK = 1000;
  for (let i = 0; i < CATCHUP; i += CHUNK) {
    let text = '';
    for (let j = i; j < Math.min(CATCHUP, i + CHUNK); j++) text += failLine(v6(j), j);
    appendFileSync(A.log, text);
  }
  await within(aAllBanned, 60_000, () => `A banned only ${aCount} of ${CATCHUP}:\n${a.recent()}`);
  const tABanned = process.hrtime.bigint();
  // A publishes from its outbox after each commit: wait until Redis's ban table holds every one.
  let inRedis = before;
  for (const deadline = Date.now() + 60_000; inRedis < before + CATCHUP; await sleep(50)) {
    if (Date.now() > deadline) throw new Error(`Redis holds ${inRedis - before} of ${CATCHUP} new bans after 60 s:\n${a.recent()}`);
    inRedis = Number(await redisCli('HLEN', `{${PREFIX}}:bans`));
  }
  const tPublished = process.hrtime.bigint();
  if (inRedis !== before + CATCHUP) throw new Error(`Redis holds ${inRedis - before} new bans, expected ${CATCHUP}`);

  // The store itself, polled every 10 ms beside the log lines: the moment its count of active remote catch-up bans
  // reaches CATCHUP (read-only; WAL lets this read beside the running daemon).
  const COUNT = "SELECT COUNT(*) AS n, COUNT(DISTINCT ip) AS d FROM bans WHERE origin = 'remote' AND server = 'A' AND ended_at IS NULL AND ip LIKE '2001:db8:c::%'";
  const db = new Database(B.db, { readonly: true, fileMustExist: true });
  const countStmt = db.prepare(COUNT);
  let tPolled = 0n;
  const poller = setInterval(() => {
    try {
      if ((countStmt.get() as { n: number }).n >= CATCHUP) {
        tPolled = process.hrtime.bigint();
        clearInterval(poller);
      }
    } catch {
      /* busy during B's start-up: the next poll reads again */
    }
  }, 10);
  poller.unref();
  let remote = 0;
  let tStarted = 0n;
  let tFirstStored = 0n;
  const tSpawn = process.hrtime.bigint();
  b = startDaemon(B);
  const bAll = new Promise<bigint>((resolve) => {
    const off = b.on((line, t) => {
      if (tStarted === 0n && /msg=started/.test(line)) tStarted = t;
      if (/^level=info msg=banned ip=2001:db8:c::\S* .*origin=remote/.test(line)) {
        if (remote === 0) tFirstStored = t;
        if (++remote === CATCHUP) {
          off();
          resolve(t);
        }
      }
    });
  });
  const tAllStored = await within(bAll, 60_000, () => `B stored only ${remote} of ${CATCHUP} remote bans after 60 s:\n${b.recent()}`);
  if (tStarted === 0n) tStarted = await b.waitFor(/msg=started/, 30_000);
  // B's firewall: polled, so this figure carries up to one poll (and one `nft list`) of slack.
  const setCount = async () => {
    const r = await lab.run(ns, ['nft', '-j', 'list', 'set', 'inet', 'tsfilter', 'banned6'], { timeoutMs: 10_000 });
    if (r.code !== 0) return -1;
    const j = JSON.parse(r.stdout) as { nftables: { set?: { elem?: unknown[] } }[] };
    return j.nftables.find((x) => x.set)?.set?.elem?.length ?? 0;
  };
  let inSet = 0;
  for (const deadline = Date.now() + 30_000; (inSet = await setCount()) < CATCHUP; await sleep(20)) {
    if (Date.now() > deadline) throw new Error(`B's nft set holds ${inSet} of ${CATCHUP} after 30 s:\n${b.recent()}`);
  }
  const tInSet = process.hrtime.bigint();

  // Exact counts, from B's own store and its nft set.
  clearInterval(poller);
  const stored = countStmt.get() as { n: number; d: number };
  db.close();
  if (tPolled === 0n) throw new Error('the store poll never saw all the remote bans');
  if (stored.n !== CATCHUP || stored.d !== CATCHUP) throw new Error(`B's store holds ${stored.n} remote bans (${stored.d} distinct), expected exactly ${CATCHUP}`);
  if (inSet !== CATCHUP) throw new Error(`B's nft set banned6 holds ${inSet} elements, expected exactly ${CATCHUP}`);

  // ---- report ------------------------------------------------------------------------------------------------
  const P = stats(prop);
  const S = stats(toStore);
  const E = stats(e2e);
  const D = stats(aDecide);
  const c = {
    b_startup_ms: ms(tSpawn, tStarted),
    b_all_stored_polled_ms: ms(tSpawn, tPolled),
    b_all_stored_ms: ms(tSpawn, tAllStored),
    b_first_stored_ms: ms(tSpawn, tFirstStored),
    b_started_to_all_stored_ms: ms(tStarted, tPolled),
    b_all_in_nft_set_ms: ms(tSpawn, tInSet),
    a_append_to_all_banned_ms: ms(tAppend, tABanned),
    a_append_to_all_in_redis_ms: ms(tAppend, tPublished),
  };
  const row = (name: string, s: ReturnType<typeof stats>) => `| ${name} | ${s.n} | ${f(s.median)} | ${f(s.p99)} | ${f(s.max)} |`;
  process.stdout.write(
    [
      `fleet-propagation: Redis ${(await redisCli('INFO', 'server')).match(/redis_version:(\S+)/)?.[1] ?? '?'} in a namespace, A (dry-run enforcer) -> B (nftables), ${SAMPLES} samples after ${WARMUP} warm-up`,
      '',
      '| propagation (ms) | samples | median | p99 | max |',
      '|---|---|---|---|---|',
      row("A's `banned` line -> element in B's nft set (target p99 < 50 ms)", P),
      row("A's `banned` line -> B's store (B's `banned origin=remote`)", S),
      row("append to A's log -> element in B's nft set (end to end)", E),
      row("append to A's log -> A's `banned` line (A's own detection)", D),
      '',
      `| catch-up of ${CATCHUP.toLocaleString('en-US')} bans (ms) | time |`,
      '|---|---|',
      `| B spawn -> store holds all ${CATCHUP.toLocaleString('en-US')} remote bans, SQLite polled every 10 ms (target < 2000) | ${f(c.b_all_stored_polled_ms)} |`,
      `| B spawn -> last of B's ${CATCHUP.toLocaleString('en-US')} \`banned origin=remote\` lines (logged after the commit) | ${f(c.b_all_stored_ms)} |`,
      `| B spawn -> \`started\` (full start-up) | ${f(c.b_startup_ms)} |`,
      `| B \`started\` -> all stored (polled) | ${f(c.b_started_to_all_stored_ms)} |`,
      `| B spawn -> first \`banned origin=remote\` line | ${f(c.b_first_stored_ms)} |`,
      `| B spawn -> B's nft set holds all (polled) | ${f(c.b_all_in_nft_set_ms)} |`,
      `| A: append ${CATCHUP.toLocaleString('en-US')} lines -> all banned / all in Redis | ${f(c.a_append_to_all_banned_ms)} / ${f(c.a_append_to_all_in_redis_ms)} |`,
      `| exact check: B's store / B's nft set banned6 | ${stored.n} / ${inSet} of ${CATCHUP} |`,
      '',
      'PyFilter, for scale: a remote ban reaches another server at its next check_time poll (600 s by default).',
      ...procs
        .filter((p) => p.name === 'A' || p.name === 'B')
        .flatMap((p) => p.problems.map((l) => `${p.name} warned: ${l}`)),
      '',
    ].join('\n'),
  );
  emitResult('fleet-propagation', {
    samples: SAMPLES,
    warmup: WARMUP,
    propagation_ms: { ...P, raw: prop.map((x) => +x.toFixed(3)) },
    a_banned_to_b_store_ms: { ...S, raw: toStore.map((x) => +x.toFixed(3)) },
    append_to_b_element_ms: { ...E, raw: e2e.map((x) => +x.toFixed(3)) },
    append_to_a_banned_ms: { ...D, raw: aDecide.map((x) => +x.toFixed(3)) },
    catchup: { bans: CATCHUP, ...Object.fromEntries(Object.entries(c).map(([k, v]) => [k, +v.toFixed(2)])), stored: stored.n, in_nft_set: inSet },
    propagation_phase_s: +((propDone - benchStart) / 1000).toFixed(1),
    total_s: +((Date.now() - benchStart) / 1000).toFixed(1),
  });
} finally {
  for (const p of procs.reverse()) await p.stop().catch(() => {});
  lab.dispose();
  rmSync(dir, { recursive: true, force: true });
}
