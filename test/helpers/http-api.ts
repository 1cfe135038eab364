/*
 * A real daemon (in this process: real SQLite store, BanManager, pipeline following a log file, control socket,
 * dry-run enforcer) with the HTTP API in front of it, on 127.0.0.1 and a free port. The API's writes go to the
 * daemon over its real control socket, as `tsfilter ban` does.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startDaemon, type DaemonHandle } from '../../src/daemon.ts';
import { loadConfigFile, type Config } from '../../src/config/load.ts';
import { openSqliteStore, type SqliteStore } from '../../src/store/sqlite-store.ts';
import { request } from '../../src/api/control-client.ts';
import type { Handler } from '../../src/api/control-server.ts';
import { createLogger } from '../../src/util/logger.ts';
import { editConfig, sshConfig } from './daemon.ts';
import { CLI, REPO } from './cli.ts';

export const TOKEN = 'test-token-0123456789abcdef';
/**
 * The header that reads need: the harness configures TOKEN, and with a token configured reads need it too unless
 * the test sets api.read_requires_token to false.
 */
export const AUTH: Record<string, string> = { authorization: `Bearer ${TOKEN}` };

export interface Harness {
  dir: string;
  logFile: string;
  configFile: string;
  config: Config;
  daemon: DaemonHandle;
  url: string;
  /** The daemon's and the API's log records. */
  logs: string[];
  close(): Promise<void>;
}

/** The control socket as a Handler: errors come back as thrown errors with their kind, as the daemon's handler throws. */
export function socketHandler(socket: string): Handler {
  return async (req) => {
    const r = await request(socket, req);
    if (!r.ok) throw Object.assign(new Error(r.error), { kind: r.kind });
    const { ok: _ok, ...rest } = r;
    return rest;
  };
}

export type HarnessOptions = Parameters<typeof startHarness>[0];

export async function startHarness(
  o: {
    api?: Record<string, unknown>;
    /** Writes bans into the store before the daemon starts. */
    seed?: (store: SqliteStore, dbPath: string) => void;
    metrics?: boolean;
    configOverrides?: Record<string, unknown>;
    /** Edits the config's JSON (e.g. a redis block) before it is loaded. */
    editConfig?: (cfg: Record<string, unknown>) => void;
  } = {},
): Promise<Harness> {
  const dir = mkdtempSync(path.join(tmpdir(), 'tsf-http-'));
  const logFile = path.join(dir, 'auth.log');
  writeFileSync(logFile, '');
  const logs: string[] = [];
  const logger = createLogger({ write: (l) => logs.push(l) });
  let daemon: DaemonHandle | undefined;
  try {
    const configFile = sshConfig(dir, logFile, { protect_sessions: false, ...o.configOverrides });
    // The daemon starts the API itself from its config's api block, as in production.
    editConfig(configFile, (cfg: Record<string, unknown>) => {
      cfg.api = { listen: '127.0.0.1:0', token: TOKEN, heartbeat_interval: 1, metrics: o.metrics ?? false, ...o.api };
      o.editConfig?.(cfg);
    });
    const config = loadConfigFile(configFile);
    if (o.seed) {
      const store = openSqliteStore(config.sqlitePath, { server: config.serverName });
      try {
        o.seed(store, config.sqlitePath);
      } finally {
        store.close();
      }
    }
    daemon = await startDaemon(config, logger);
    const d = daemon;
    if (d.apiUrl === null) throw new Error('the daemon did not start its HTTP API');
    return {
      dir, logFile, configFile, config, daemon: d, url: d.apiUrl, logs,
      async close() {
        await d.stop();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (e) {
    await daemon?.stop();
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}

/** A harness for the length of `fn`, closed afterwards whatever happens. */
export async function withHarness<T>(o: HarnessOptions, fn: (h: Harness) => Promise<T>): Promise<T> {
  const h = await startHarness(o);
  try {
    return await fn(h);
  } finally {
    await h.close();
  }
}

export interface Reply {
  status: number;
  headers: Headers;
  text: string;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  json: any;
}

/** One real HTTP request to the API. */
export async function call(
  base: string,
  method: string,
  p: string,
  o: { token?: string; body?: unknown; raw?: string; headers?: Record<string, string> } = {},
): Promise<Reply> {
  const headers: Record<string, string> = { ...o.headers };
  if (o.token !== undefined) headers.authorization = `Bearer ${o.token}`;
  let body: string | undefined = o.raw;
  if (o.body !== undefined) {
    body = JSON.stringify(o.body);
    headers['content-type'] ??= 'application/json';
  }
  const r = await fetch(base + p, { method, headers, body });
  const text = await r.text();
  let json: unknown = undefined;
  try {
    json = JSON.parse(text);
  } catch {
    /* not JSON */
  }
  return { status: r.status, headers: r.headers, text, json };
}

/**
 * The real `tsfilter` CLI, run without blocking this process (the daemon it talks to runs in this process, so a
 * synchronous spawn would leave its control socket unanswered).
 */
export function runCliAsync(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', CLI, ...args], { cwd: REPO, env: { ...process.env, TZ: 'UTC' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** Reads Server-Sent Events from a streaming response. */
export class SseReader {
  private buf = '';
  private readonly reader: ReadableStreamDefaultReader<Uint8Array>;
  private readonly dec = new TextDecoder();
  /** Every frame received so far: comments as { comment }, events as { event, data }. */
  readonly frames: ({ comment: string } | { event: string; data: string })[] = [];

  constructor(res: Response) {
    this.reader = res.body!.getReader();
  }

  /** Reads until a frame satisfies `pred`; fails after `ms` (a bound against hanging, not a speed check). */
  async waitFor(pred: (f: SseReader['frames'][number]) => boolean, ms = 15_000): Promise<SseReader['frames'][number]> {
    const deadline = Date.now() + ms;
    let seen = 0;
    for (;;) {
      for (; seen < this.frames.length; seen++) if (pred(this.frames[seen]!)) return this.frames[seen]!;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no matching event within ${ms} ms; got ${JSON.stringify(this.frames).slice(0, 2000)}`);
      let timer: NodeJS.Timeout | undefined;
      const r = await Promise.race([
        this.reader.read(),
        new Promise<'timeout'>((res) => (timer = setTimeout(() => res('timeout'), left))),
      ]);
      clearTimeout(timer);
      if (r === 'timeout') continue;
      if (r.done) throw new Error(`stream ended; got ${JSON.stringify(this.frames).slice(0, 2000)}`);
      this.buf += this.dec.decode(r.value, { stream: true });
      let i: number;
      while ((i = this.buf.indexOf('\n\n')) >= 0) {
        const block = this.buf.slice(0, i);
        this.buf = this.buf.slice(i + 2);
        let event = 'message';
        const data: string[] = [];
        for (const line of block.split('\n')) {
          if (line.startsWith(':')) this.frames.push({ comment: line.slice(1).trim() });
          else if (line.startsWith('event: ')) event = line.slice(7);
          else if (line.startsWith('data: ')) data.push(line.slice(6));
        }
        if (data.length > 0) this.frames.push({ event, data: data.join('\n') });
      }
    }
  }

  async cancel(): Promise<void> {
    await this.reader.cancel().catch(() => {});
  }
}
