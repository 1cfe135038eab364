import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';

/*
 * Real redis-server processes (single, TLS, Sentinel, Cluster) on loopback ports in a temp dir, each tracked by its
 * PID and killed by dispose(). Ports are drawn from 20000-29999 so that a cluster node's bus port (port + 10000) is
 * still a valid port, and never 6379: the machine's own Redis is left alone.
 */

const READY = /Ready to accept connections/;

export interface RedisProc {
  port: number;
  pid: number;
  /** SIGKILL, and waits for the exit. */
  kill(): Promise<void>;
}

function bindable(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

export class RedisLab {
  readonly dir = mkdtempSync(path.join(tmpdir(), 'tsf-redistopo-'));
  private readonly procs = new Map<number, ChildProcess>();
  private readonly taken = new Set<number>();
  // A test process that dies (an uncaught error) never reaches its finally: its servers die with it all the same.
  private readonly onExit = () => {
    for (const pid of this.procs.keys()) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  };

  constructor() {
    process.once('exit', this.onExit);
  }

  /** A loopback port nobody listens on, and (for cluster nodes) whose bus port is free too. */
  async freePort(withBus = false): Promise<number> {
    for (let i = 0; i < 200; i++) {
      const p = 20000 + Math.floor(Math.random() * 10000);
      if (this.taken.has(p) || (withBus && this.taken.has(p + 10000))) continue;
      if (!(await bindable(p)) || (withBus && !(await bindable(p + 10000)))) continue;
      this.taken.add(p);
      if (withBus) this.taken.add(p + 10000);
      return p;
    }
    throw new Error('no free loopback port in 20000-29999');
  }

  /**
   * Starts redis-server with `args` after a config that keeps it in the temp dir, off disk and on loopback, and
   * resolves once its log says `ready` (it exits early: rejects with its output).
   */
  server(port: number, args: string[], ready: RegExp = READY, timeoutMs = 10_000): Promise<RedisProc> {
    const base = ['--bind', '127.0.0.1', '--dir', this.dir, '--save', '', '--appendonly', 'no', '--daemonize', 'no', '--logfile', ''];
    const p = spawn('redis-server', [...args, ...base], { stdio: ['ignore', 'pipe', 'pipe'] });
    const pid = p.pid;
    if (pid === undefined) return Promise.reject(new Error('redis-server did not start'));
    this.procs.set(pid, p);
    const proc: RedisProc = {
      port,
      pid,
      kill: () => this.killOne(pid),
    };
    return new Promise((resolve, reject) => {
      let out = '';
      const timer = setTimeout(() => done(new Error(`redis-server on ${port} not ready after ${timeoutMs} ms:\n${out}`)), timeoutMs);
      const done = (e?: Error) => {
        clearTimeout(timer);
        p.stdout.removeListener('data', onData);
        p.removeListener('exit', onExit);
        // Keep draining the pipes so a chatty server never blocks on a full one.
        p.stdout.resume();
        p.stderr.resume();
        if (e) reject(e);
        else resolve(proc);
      };
      const onData = (b: Buffer) => {
        out += b.toString();
        if (ready.test(out)) done();
      };
      const onExit = (code: number | null) => done(new Error(`redis-server on ${port} exited (${code}):\n${out}`));
      p.stdout.on('data', onData);
      p.stderr.on('data', (b: Buffer) => (out += b.toString()));
      p.once('exit', onExit);
    });
  }

  /** A Sentinel on `port` monitoring the master at `master` as `name`, quorum 1 (one sentinel decides alone). */
  sentinel(port: number, master: number, name: string): Promise<RedisProc> {
    // Sentinel rewrites its config file, so each gets a writable one of its own.
    const conf = this.file(`sentinel-${port}.conf`, `port ${port}\nbind 127.0.0.1\nsentinel monitor ${name} 127.0.0.1 ${master} 1\n`);
    return this.server(port, [conf, '--sentinel'], new RegExp(`\\+monitor master ${name} `));
  }

  /** Cluster masters on `ports` (their bus ports, port + 10000, free too), joined, and once every node says ok. */
  async cluster(ports: number[]): Promise<RedisProc[]> {
    const procs = await this.clusterNodes(ports);
    const create = this.cli([], ['--cluster', 'create', ...ports.map((p) => `127.0.0.1:${p}`), '--cluster-replicas', '0', '--cluster-yes']);
    if (create.status !== 0) throw new Error(`redis-cli --cluster create: ${create.stdout}\n${create.stderr}`);
    await this.clusterOk(ports);
    return procs;
  }

  /**
   * The cluster's nodes, with their nodes-<port>.conf in the temp dir: after cluster() (and the nodes killed), this
   * brings back the same cluster, slots and all, without `--cluster create`.
   */
  clusterNodes(ports: number[]): Promise<RedisProc[]> {
    return Promise.all(
      ports.map((p) =>
        this.server(p, ['--port', String(p), '--cluster-enabled', 'yes', '--cluster-config-file', path.join(this.dir, `nodes-${p}.conf`), '--cluster-node-timeout', '5000']),
      ),
    );
  }

  async clusterOk(ports: number[]): Promise<void> {
    const end = Date.now() + 20_000;
    while (!ports.every((p) => /cluster_state:ok/.test(this.cliOk(['-p', String(p)], ['CLUSTER', 'INFO'])))) {
      if (Date.now() > end) throw new Error('cluster_state not ok on every node after 20 s');
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** A file in the temp dir (sentinel configs: Sentinel rewrites its own, so it must be writable). */
  file(name: string, text: string): string {
    const f = path.join(this.dir, name);
    writeFileSync(f, text);
    return f;
  }

  /** redis-cli with argv (never a shell); `conn` is what goes before the command (-p, --tls, --user ...). */
  cli(conn: string[], args: string[], stdin?: string): { status: number | null; stdout: string; stderr: string } {
    const r = spawnSync('redis-cli', ['--no-auth-warning', ...conn, ...args], { input: stdin, encoding: 'utf8', timeout: 30_000 });
    return { status: r.status, stdout: r.stdout.trim(), stderr: r.stderr.trim() };
  }

  /** redis-cli that must succeed and not answer with an error reply (redis-cli exits 0 on those). */
  cliOk(conn: string[], args: string[]): string {
    const r = this.cli(conn, args);
    if (r.status !== 0 || /^(ERR|WRONGPASS|NOPERM|NOAUTH|MOVED|ASK|CROSSSLOT|CLUSTERDOWN)\b/.test(r.stdout)) {
      throw new Error(`redis-cli ${[...conn, ...args].join(' ')}: ${r.status} ${r.stdout} ${r.stderr}`);
    }
    return r.stdout;
  }

  private killOne(pid: number): Promise<void> {
    const p = this.procs.get(pid);
    this.procs.delete(pid);
    if (!p || p.exitCode !== null || p.signalCode !== null) return Promise.resolve();
    return new Promise((resolve) => {
      p.once('exit', () => resolve());
      p.kill('SIGKILL');
    });
  }

  async dispose(): Promise<void> {
    await Promise.all([...this.procs.keys()].map((pid) => this.killOne(pid)));
    process.removeListener('exit', this.onExit);
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * Whether this redis-server was built with TLS (BUILD_TLS=yes links it against libssl; Debian 12's 7.0.15 is): a
 * build without it cannot serve a TLS port, and a test would then fail for the build, not for TSFilter.
 */
export function redisHasTls(): boolean {
  const bin = (process.env.PATH ?? '').split(':').map((d) => path.join(d, 'redis-server')).find((f) => existsSync(f));
  if (bin === undefined) return false;
  return /libssl/.test(spawnSync('ldd', [bin], { encoding: 'utf8' }).stdout ?? '');
}

/** A CA and a server certificate for 127.0.0.1, made with openssl in `dir`. */
export function makeTlsCerts(dir: string): { ca: string; cert: string; key: string } {
  const f = (n: string) => path.join(dir, n);
  const run = (args: string[]) => {
    const r = spawnSync('openssl', args, { encoding: 'utf8', timeout: 30_000 });
    if (r.status !== 0) throw new Error(`openssl ${args.join(' ')}: ${r.stderr}`);
  };
  run(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', f('ca.key'), '-out', f('ca.crt'), '-days', '2', '-subj', '/CN=tsfilter test CA']);
  run(['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', f('server.key'), '-out', f('server.csr'), '-subj', '/CN=127.0.0.1']);
  writeFileSync(f('san.ext'), 'subjectAltName = IP:127.0.0.1, DNS:localhost\n');
  run(['x509', '-req', '-in', f('server.csr'), '-CA', f('ca.crt'), '-CAkey', f('ca.key'), '-CAcreateserial', '-out', f('server.crt'), '-days', '2', '-extfile', f('san.ext')]);
  return { ca: f('ca.crt'), cert: f('server.crt'), key: f('server.key') };
}
