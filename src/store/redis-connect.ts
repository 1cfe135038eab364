import { readFileSync } from 'node:fs';
import type { Logger } from '../util/logger.ts';

/** The redis block of the config, normalised (src/config/load.ts). */
export interface RedisSettings {
  url: string | null;
  host: string;
  port: number;
  username: string | null;
  password: string | null;
  database: number;
  tls: boolean;
  tlsCaFile: string | null;
  sentinel: { name: string; nodes: string[] } | null;
  cluster: { nodes: string[] } | null;
  schema: 'tsfilter' | 'pyfilter';
  prefix: string;
  streamMaxLen: number;
  streamMaxAge: number;
  maxEventBytes: number;
  sync: { active: boolean; name: string; checkTime: number; minServers: number };
}

/**
 * What fleet sync needs from Redis, the same for a single server, Sentinel and Cluster: raw commands (so both wire
 * schemas are written once, as the Redis commands they are) and one subscription.
 */
export interface RedisConn {
  /** One command. `key` is its first key, which routes it to its slot in Cluster mode. */
  cmd(args: string[], key?: string): Promise<unknown>;
  /** Subscribes (on a connection of its own); messages arrive as strings. Resubscribed after a reconnect. */
  subscribe(channel: string, onMessage: (message: string) => void): Promise<void>;
  readonly connected: boolean;
  /** ms since the epoch of the last change of `connected`. */
  readonly since: number;
  readonly lastError: string | null;
  /** Called on every connect and disconnect. */
  onChange(cb: (connected: boolean) => void): void;
  close(): Promise<void>;
}

/** An HGETALL reply as an object, whichever shape the connection returned it in (flat array in RESP2, map in RESP3). */
export function hashReply(reply: unknown): Record<string, string> {
  if (!Array.isArray(reply)) return (reply ?? {}) as Record<string, string>;
  // No prototype: a field another node named "constructor" or "__proto__" is just a field.
  const h: Record<string, string> = Object.create(null) as Record<string, string>;
  for (let i = 0; i + 1 < reply.length; i += 2) h[String(reply[i])] = String(reply[i + 1]);
  return h;
}

/** Reconnection: 100 ms doubling up to 10 s, for ever (Redis may be down for hours; detection goes on meanwhile). */
export function reconnectDelay(retries: number): number {
  return Math.min(100 * 2 ** Math.min(retries, 10), 10_000);
}

function hostPort(s: string): { host: string; port: number } {
  const i = s.lastIndexOf(':');
  return { host: s.slice(0, i).replace(/^\[|\]$/g, ''), port: Number(s.slice(i + 1)) };
}

/** Only the password's presence, for logs and status. */
export function describeTarget(s: RedisSettings): string {
  if (s.cluster) return `cluster ${s.cluster.nodes.join(',')}`;
  if (s.sentinel) return `sentinel ${s.sentinel.name}@${s.sentinel.nodes.join(',')}`;
  if (s.url) return s.url.replace(/\/\/[^@/]*@/, '//***@');
  return `${s.tls ? 'rediss' : 'redis'}://${s.host}:${s.port}/${s.database}`;
}

/**
 * Creates the client (the official `redis` package, loaded only here, so a server without Redis configured never
 * loads it) and starts connecting in the background: the daemon does not wait for Redis, and a Redis that is down at
 * start is retried like one that goes down later. Commands fail at once while disconnected (no offline queue): the
 * caller keeps its own durable queue.
 */
export async function connectRedis(s: RedisSettings, logger: Logger): Promise<RedisConn> {
  const redis = await import('redis');
  const socketTls = s.tls || (s.url?.startsWith('rediss://') ?? false);
  const ca = s.tlsCaFile ? readFileSync(s.tlsCaFile, 'utf8') : undefined;
  const socket = {
    reconnectStrategy: reconnectDelay,
    connectTimeout: 5000,
    ...(socketTls ? { tls: true as const, ...(ca ? { ca } : {}) } : {}),
  };
  const auth = { ...(s.username ? { username: s.username } : {}), ...(s.password ? { password: s.password } : {}) };
  let connected = false;
  let since = Date.now();
  let lastError: string | null = null;
  const listeners: ((c: boolean) => void)[] = [];
  const set = (c: boolean) => {
    if (c === connected) return;
    connected = c;
    since = Date.now();
    for (const l of listeners) l(c);
  };
  const onError = (e: unknown) => {
    const msg = e instanceof Error ? e.message : String(e);
    if (msg !== lastError) logger.warn('redis connection problem', { error: msg });
    lastError = msg;
  };

  let cmd: RedisConn['cmd'];
  let subscribe: RedisConn['subscribe'];
  let close: () => Promise<void>;

  // Subscriptions wanted so far: (re)applied whenever a (new) connection is up; subscribing on a cluster or sentinel
  // client that has no node yet fails, so it is retried until it holds.
  const subs: [string, (message: string) => void][] = [];
  let closed = false;
  const retrying = async (what: () => Promise<unknown>): Promise<void> => {
    while (!closed) {
      try {
        await what();
        return;
      } catch (e) {
        onError(e);
        await new Promise((r) => setTimeout(r, 500).unref());
      }
    }
  };
  /** Counts a failure as a lost connection only when it is about the connection, not the command. */
  const track = async <T>(p: Promise<T>): Promise<T> => {
    try {
      const r = await p;
      set(true);
      return r;
    } catch (e) {
      if (!/^(ERR|WRONGTYPE|NOSCRIPT|NOPERM|BUSY|NOAUTH|WRONGPASS)/.test(e instanceof Error ? e.message : String(e))) set(false);
      throw e;
    }
  };

  if (s.cluster) {
    const cluster = redis.createCluster({
      rootNodes: s.cluster.nodes.map((n) => ({ socket: { ...hostPort(n), ...socket } })),
      defaults: { ...auth, socket, disableOfflineQueue: true },
    });
    cluster.on('error', onError);
    // A cluster client has no ready/end events of its own: connected means the last command got through.
    let up = false;
    const probe = async () => {
      while (!closed && !up) {
        try {
          await cluster.connect();
          up = true;
          set(true);
          for (const [ch, cb] of subs) void retrying(() => cluster.subscribe(ch, (m: string) => cb(m)));
        } catch (e) {
          onError(e);
          if (/already/i.test(String(e))) return;
          await new Promise((r) => setTimeout(r, 1000).unref());
        }
      }
    };
    void probe();
    cmd = (args, key) => (up ? track(cluster.sendCommand(key, false, args)) : Promise.reject(new Error('redis cluster not connected yet')));
    subscribe = async (channel, cb) => {
      subs.push([channel, cb]);
      if (up) await retrying(() => cluster.subscribe(channel, (m: string) => cb(m)));
    };
    close = async () => {
      closed = true;
      await cluster.close().catch(() => {});
    };
  } else if (s.sentinel) {
    const sentinelOpts = s.sentinel;
    // A RedisSentinel whose first connect() failed stays "already attempting to open" for ever: each attempt gets a
    // fresh one, and the failed one is destroyed.
    let current: ReturnType<typeof redis.createSentinel> | null = null;
    const probe = async () => {
      while (!closed) {
        const sn = redis.createSentinel({
          name: sentinelOpts.name,
          sentinelRootNodes: sentinelOpts.nodes.map(hostPort),
          nodeClientOptions: { ...auth, database: s.database, socket, disableOfflineQueue: true },
        });
        sn.on('error', onError);
        try {
          await sn.connect();
          if (closed) {
            await sn.destroy().catch(() => {});
            return;
          }
          current = sn;
          set(true);
          for (const [ch, cb] of subs) void retrying(() => sn.subscribe(ch, (m: string) => cb(m)));
          return;
        } catch (e) {
          onError(e);
          await sn.destroy().catch(() => {});
          await new Promise((r) => setTimeout(r, 1000).unref());
        }
      }
    };
    void probe();
    cmd = (args) => (current ? track(current.sendCommand(false, args)) : Promise.reject(new Error('redis (sentinel) not connected yet')));
    subscribe = async (channel, cb) => {
      subs.push([channel, cb]);
      const sn = current;
      if (sn) await retrying(() => sn.subscribe(channel, (m: string) => cb(m)));
    };
    close = async () => {
      closed = true;
      await current?.close().catch(() => {});
    };
  } else {
    const client = redis.createClient({
      ...(s.url ? { url: s.url } : { socket: { host: s.host, port: s.port }, database: s.database, ...auth }),
      socket: { ...(s.url ? {} : { host: s.host, port: s.port }), ...socket },
      disableOfflineQueue: true,
    });
    const sub = client.duplicate();
    client.on('error', onError);
    sub.on('error', () => {});
    client.on('ready', () => set(true));
    client.on('end', () => set(false));
    client.on('reconnecting', () => set(false));
    const start = (c: typeof client) => c.connect().catch((e: unknown) => onError(e));
    void start(client);
    let subStarted = false;
    cmd = (args) => client.sendCommand(args);
    subscribe = async (channel, cb) => {
      if (!subStarted) {
        subStarted = true;
        void start(sub);
      }
      // node-redis resubscribes by itself after a reconnect; subscribe() is queued until the connection is up.
      await new Promise<void>((resolve) => {
        const tryIt = () =>
          sub.subscribe(channel, (m: string) => cb(m)).then(resolve, () => setTimeout(tryIt, 500).unref());
        tryIt();
      });
    };
    close = async () => {
      await sub.close().catch(() => {});
      await client.close().catch(() => {});
    };
  }
  return {
    cmd: (args, key) => cmd(args, key),
    subscribe: (c, cb) => subscribe(c, cb),
    get connected() {
      return connected;
    },
    get since() {
      return since;
    },
    get lastError() {
      return lastError;
    },
    onChange: (cb) => listeners.push(cb),
    close: () => close(),
  };
}
