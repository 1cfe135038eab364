import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { TestContext } from 'node:test';
import { sshConfig } from './daemon.ts';
import { haveCommand, requirePrereq } from './prereq.ts';

/*
 * A real redis-server for fleet tests: loopback only, on a free port (never 6379, so the machine's own Redis is
 * never touched), its files in a temporary directory, tracked by PID and killed by that PID alone.
 */

export interface RedisOptions {
  /** Keep data across restart(): appendonly with an fsync per write, so a SIGKILL loses nothing acknowledged. */
  persistent?: boolean;
}

/** Whether redis-server and redis-cli are installed; skips the test off CI, fails it on CI. */
export function requireRedis(t: TestContext): boolean {
  return requirePrereq(t, haveCommand('redis-server') && haveCommand('redis-cli'), 'redis-server/redis-cli', 'install them (apt-get install redis-server)');
}

async function freePort(): Promise<number> {
  for (;;) {
    const port = await new Promise<number>((resolve, reject) => {
      const s = net.createServer();
      s.once('error', reject);
      s.listen(0, '127.0.0.1', () => {
        const p = (s.address() as net.AddressInfo).port;
        s.close(() => resolve(p));
      });
    });
    if (port !== 6379) return port;
  }
}

export class RedisServer {
  private child: ChildProcess | null = null;
  private readonly subs: ChildProcess[] = [];
  log = '';

  private constructor(
    readonly port: number,
    readonly dir: string,
    private o: RedisOptions,
  ) {}

  static async start(o: RedisOptions = {}): Promise<RedisServer> {
    const dir = mkdtempSync(path.join(tmpdir(), 'tsf-redis-'));
    // The port can be taken between the probe and redis-server's bind (other tests run at once): try a few.
    for (let attempt = 0; ; attempt++) {
      const r = new RedisServer(await freePort(), dir, o);
      try {
        await r.launch();
        return r;
      } catch (e) {
        r.kill();
        if (attempt >= 4) {
          rmSync(dir, { recursive: true, force: true });
          throw e;
        }
      }
    }
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  private async launch(): Promise<void> {
    const persist = this.o.persistent ? ['--appendonly', 'yes', '--appendfsync', 'always'] : ['--appendonly', 'no'];
    const args = ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', ...persist, '--dir', this.dir, '--daemonize', 'no', '--logfile', ''];
    const child = spawn('redis-server', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (this.log += d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (this.log += d));
    child.on('error', (e) => (this.log += `spawn failed: ${e.message}\n`));
    const deadline = Date.now() + 10_000;
    for (;;) {
      if (child.exitCode !== null || child.signalCode !== null || /spawn failed/.test(this.log)) throw new Error(`redis-server exited at start:\n${this.log}`);
      if (/Ready to accept connections/.test(this.log)) return;
      if (Date.now() > deadline) throw new Error(`redis-server did not start within 10 s:\n${this.log}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** SIGKILLs the server (a crash: no shutdown save) and waits until it is gone. */
  async crash(): Promise<void> {
    const c = this.child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const gone = new Promise((r) => c.once('exit', r));
    c.kill('SIGKILL');
    await gone;
  }

  /** Starts it again on the same port and directory (with its data when persistent); `o` replaces the options. */
  async restart(o?: RedisOptions): Promise<void> {
    await this.crash();
    if (o) this.o = o;
    this.log = '';
    await this.launch();
  }

  /** Runs `redis-cli -p <port>` with these arguments (argv, no shell); throws on a non-zero exit or an error reply. */
  cli(args: string[], input?: string): string {
    const r = spawnSync('redis-cli', ['-h', '127.0.0.1', '-p', String(this.port), ...args], { encoding: 'utf8', input, timeout: 10_000 });
    // redis-cli exits 0 on an error reply when not on a tty; it prints "(error) ..." or "ERR ..." instead.
    if (r.status !== 0 || /^(\(error\) )?(ERR|WRONGTYPE|NOSCRIPT) /m.test(r.stdout)) {
      throw new Error(`redis-cli ${args.join(' ').slice(0, 200)} failed (${r.status ?? r.signal}): ${r.stdout}${r.stderr}`);
    }
    return r.stdout.replace(/\n$/, '');
  }

  /** How many clients are subscribed to `channel` (a daemon's subscription completes in the background). */
  subscribers(channel: string): number {
    return Number(this.cli(['PUBSUB', 'NUMSUB', channel]).split('\n')[1]);
  }

  /**
   * Turns on appendonly with an fsync per write at runtime and waits until the AOF holds the whole dataset, so a
   * crash from then on loses nothing acknowledged; restart({ persistent: true }) then loads it.
   */
  async persistFromNow(): Promise<void> {
    this.cli(['CONFIG', 'SET', 'appendfsync', 'always']);
    this.cli(['CONFIG', 'SET', 'appendonly', 'yes']);
    const deadline = Date.now() + 10_000;
    for (;;) {
      const info = this.cli(['INFO', 'persistence']);
      if (/aof_enabled:1/.test(info) && /aof_rewrite_in_progress:0/.test(info) && /aof_rewrite_scheduled:0/.test(info) && /aof_last_bgrewrite_status:ok/.test(info) && /aof_rewrites:[1-9]/.test(info)) return;
      if (Date.now() > deadline) throw new Error(`the AOF rewrite did not finish within 10 s:\n${info}`);
      await new Promise((r) => setTimeout(r, 25));
    }
  }

  /** A long-running redis-cli (SUBSCRIBE); its output accumulates in `out`; killed in dispose(). */
  spawnCli(args: string[]): { child: ChildProcess; out: () => string } {
    const child = spawn('redis-cli', ['-h', '127.0.0.1', '-p', String(this.port), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (out += d));
    this.subs.push(child);
    return { child, out: () => out };
  }

  private kill(): void {
    for (const c of [...this.subs, this.child]) if (c && c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  }

  async dispose(): Promise<void> {
    const alive = [...this.subs, this.child].filter((c): c is ChildProcess => c !== null && c.exitCode === null && c.signalCode === null);
    const gone = Promise.all(alive.map((c) => new Promise((r) => c.once('exit', r))));
    this.kill();
    await gone;
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * A fleet node's config in `dir` (its own store, control socket and auth.log): our default SSH config with
 * settings.database "redis", the dry-run enforcer, and `redis` merged over { port, sync_bans: { active, name } }.
 */
export function fleetNodeConfig(
  dir: string,
  port: number,
  name: string,
  o: { settings?: Record<string, unknown>; redis?: Record<string, unknown>; sync?: Record<string, unknown> } = {},
): { cfg: string; log: string; db: string } {
  mkdirSync(dir, { recursive: true });
  const log = path.join(dir, 'auth.log');
  if (!existsSync(log)) writeFileSync(log, '');
  const cfg = sshConfig(dir, log, { database: 'redis', ...o.settings });
  const c = JSON.parse(readFileSync(cfg, 'utf8'));
  c.redis = { port, ...o.redis, sync_bans: { active: true, name, check_time: 600, ...o.sync } };
  writeFileSync(cfg, JSON.stringify(c, null, 2));
  return { cfg, log, db: path.join(dir, 'tsfilter.db') };
}
