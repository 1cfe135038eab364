/*
 * The HTTP API (hono on @hono/node-server): JSON endpoints over the store, live events, writes through the same
 * control handler as the root-only socket (so `tsfilter ban` and POST /api/bans are one code path), and /metrics.
 * Writes need the bearer token; reads need it too whenever one is configured, unless read_requires_token is false
 * (explain shows raw lines of root-only logs).
 *
 *   GET    /api                          what is enabled, and whether the presented token is valid
 *   GET    /api/status                   `tsfilter status --json`
 *   GET    /api/bans                     bans, newest first: filters, pagination, total
 *   GET    /api/bans/:ip/explain         `tsfilter explain --json` (a prefix as 198.51.100.0%2F24 or 198.51.100.0/24)
 *   GET    /api/stats                    per hour / day, per rule / country / origin, top offenders
 *   GET    /api/events                   Server-Sent Events: ban, unban
 *   POST   /api/bans                     {"ip", "duration"?, "reason"?}           bearer token
 *   DELETE /api/bans/:ip                                                          bearer token
 *   GET    /metrics                      Prometheus text format
 *   GET    /, /app.js, /style.css, ...   the web dashboard (with api.dashboard; dashboard.ts)
 *
 * Errors are JSON {"error": "...", "field"?: "..."}: 400 bad request, 401 missing or wrong token, 403 writes disabled
 * (no token configured) or Host not allowed, 404, 405, 413 body too large, 415 not JSON, 422 refused ban, 503 too
 * many event streams.
 */
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import { serve, type HttpBindings } from '@hono/node-server';
import { Hono, type Context } from 'hono';
import { HTTPException } from 'hono/http-exception';
import type { Handler } from '../control-server.ts';
import { parseIp, parseRequest, type Request as ControlRequest } from '../protocol.ts';
import type { Logger } from '../../util/logger.ts';
import type { Metrics } from '../metrics.ts';
import { loadToken, type ApiSettings } from './config.ts';
import { createGuard } from './guard.ts';
import { openReadDb } from './read-db.ts';
import { explainIp, listBans, TotalCache } from './queries.ts';
import { statsCache } from './stats.ts';
import { BanFeed } from './ban-feed.ts';
import { eventStreams } from './sse.ts';
import { mountDashboard } from './dashboard.ts';
import { ApiError, banBody, bansQuery, check, emptyQuery, readJsonBody, singleQuery } from './validate.ts';

export interface HttpApiDeps {
  /** The daemon's control handler: the function its control socket calls (ban, unban, status). */
  control: Handler;
  /** The SQLite store; the API reads it over its own read-only connection. */
  storePath: string;
  logger: Logger;
  /** Served at GET /metrics (with settings.metrics). */
  metrics?: Metrics;
  /** How often the store is polled for live events (ms); tests shorten it. */
  pollMs?: number;
  /** The connection limits of SERVER_LIMITS; tests shorten them. */
  limits?: Partial<ServerLimits>;
}

/**
 * How long a client may take, and how many may be connected at once. Each connection holds a file descriptor, and a
 * client that opens connections and sends nothing (or dribbles its headers) must not exhaust them or the listen
 * queue: node's own defaults check timeouts only every 30 s, and 140 idle sockets made the API unreachable.
 * requestTimeout bounds receiving the request only: a response, such as an event stream, may last.
 */
export interface ServerLimits {
  /** The request line and headers must arrive within this (ms). */
  headersMs: number;
  /** The whole request, body included (ms). */
  requestMs: number;
  /** An idle keep-alive connection is closed after this (ms). */
  keepAliveMs: number;
  /** How often the timeouts above are checked (ms). */
  checkMs: number;
  /** Connections open at once, event streams included; more are closed on arrival. */
  maxConnections: number;
}

export const SERVER_LIMITS: Omit<ServerLimits, 'maxConnections'> = { headersMs: 10_000, requestMs: 30_000, keepAliveMs: 5_000, checkMs: 1_000 };
/** At least this many connections besides the event streams (api.max_event_clients). */
const SPARE_CONNECTIONS = 192;

export interface HttpApi {
  /** http://host:port, with the port actually bound (listen port 0 picks one). */
  readonly url: string;
  close(): Promise<void>;
}

type Env = { Bindings: HttpBindings };


function isLoopback(host: string): boolean {
  return host === '::1' || host.startsWith('127.');
}

/** The address or prefix in a URL path; a 400 naming the field when it is neither. */
function pathIp(text: string): string {
  try {
    return parseIp(text);
  } catch (e) {
    throw new ApiError(400, (e as Error).message, 'ip');
  }
}

export async function startHttpApi(deps: HttpApiDeps, s: ApiSettings): Promise<HttpApi> {
  const { logger, control, metrics } = deps;
  // A token file with loose permissions stops the start, like ssh with a private key.
  const token = loadToken(s);
  const rdb = openReadDb(deps.storePath);
  let feed: BanFeed;
  try {
    feed = new BanFeed(rdb, { intervalMs: deps.pollMs, logger, onStart: s.metrics && metrics ? (r) => metrics.countStore(r) : undefined });
  } catch (e) {
    rdb.close();
    throw e;
  }
  if (s.metrics && metrics) {
    feed.subscribe(metrics.countEvents);
    metrics.attach({
      status: async () => ((await control({ cmd: 'status' })).status ?? {}) as Record<string, unknown>,
    });
  }
  const stats = statsCache(rdb, () => feed.changes);
  const totals = new TotalCache(() => feed.changes);
  const streams = eventStreams(feed, { maxClients: s.maxEventClients, heartbeatMs: s.heartbeatMs });

  const app = new Hono<Env>();

  const remote = (c: Context<Env>) => c.env?.incoming?.socket?.remoteAddress ?? 'unknown';
  const guard = createGuard({ token, readRequiresToken: s.readRequiresToken, allowedHosts: s.allowedHosts, logger });
  const authorize = (c: Context<Env>, kind: 'read' | 'write') => guard.authorize(kind, c.req.header('authorization'), { remote: remote(c), method: c.req.method, path: c.req.path });

  app.use('*', async (c, next) => {
    guard.checkHost(c.req.header('host'));
    await next();
    c.header('x-content-type-options', 'nosniff');
    c.header('referrer-policy', 'no-referrer');
    c.header('x-frame-options', 'DENY');
    if (!c.res.headers.has('cache-control')) c.header('cache-control', 'no-store');
  });

  const noQuery = (c: Context<Env>) => check(emptyQuery, singleQuery(new URL(c.req.url)), 'query parameter');

  app.get('/api', (c) => {
    noQuery(c);
    return c.json({
      writes_enabled: token !== null,
      read_requires_token: s.readRequiresToken,
      metrics: s.metrics && metrics !== undefined,
      token_valid: guard.tokenValid(c.req.header('authorization')),
    });
  });

  app.get('/api/status', async (c) => {
    authorize(c, 'read');
    noQuery(c);
    const r = await control({ cmd: 'status' });
    return c.json(r.status as Record<string, unknown>);
  });

  app.get('/api/bans', (c) => {
    authorize(c, 'read');
    const q = check(bansQuery, singleQuery(new URL(c.req.url)), 'query parameter');
    const { limit, cursor, offset, ...filter } = q;
    // Bring the feed up to date first: the cached totals are keyed by its change count.
    feed.poll();
    const page = listBans(rdb, filter, { limit, cursor, offset }, Date.now(), totals);
    return c.json({ ...page, limit });
  });

  const explain = (c: Context<Env>, text: string) => {
    authorize(c, 'read');
    noQuery(c);
    const ip = pathIp(text);
    return c.json(explainIp(rdb, ip, Date.now()));
  };
  app.get('/api/bans/:ip/explain', (c) => explain(c, c.req.param('ip')));
  app.get('/api/bans/:ip/:len{[0-9]{1,3}}/explain', (c) => explain(c, `${c.req.param('ip')}/${c.req.param('len')}`));

  app.get('/api/stats', (c) => {
    authorize(c, 'read');
    noQuery(c);
    feed.poll();
    return c.json(stats());
  });

  app.get('/api/events', (c) => {
    authorize(c, 'read');
    noQuery(c);
    // HEAD runs this handler too: answer with the headers alone rather than open a stream nobody will read.
    if (c.req.method === 'HEAD') return new Response(null, { status: 200, headers: { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store' } });
    const r = streams.respond();
    if (r === null) throw new ApiError(503, `too many event streams open (api.max_event_clients = ${s.maxEventClients})`);
    return r;
  });

  /** Runs a write through the control handler, exactly as the control socket would. */
  const write = async (c: Context<Env>, req: ControlRequest) => {
    let parsed: ControlRequest;
    try {
      // The socket's own parser, so the API accepts exactly what `tsfilter ban`/`unban` may send.
      parsed = parseRequest(JSON.stringify(req));
    } catch (e) {
      throw new ApiError(400, (e as Error).message);
    }
    let r: Record<string, unknown>;
    try {
      r = await control(parsed);
    } catch (e) {
      // The daemon refused it (an ignored or protected address, a prefix too wide): the caller's doing, not ours.
      if (e instanceof Error && (e as { kind?: unknown }).kind === 'usage') throw new ApiError(422, e.message, 'ip');
      throw e;
    }
    logger.info(`api: ${req.cmd}`, { ip: 'ip' in req ? req.ip : undefined, remote: remote(c) });
    // The change is committed: let the live feed report it now rather than at its next poll.
    feed.poll();
    return r;
  };

  app.post('/api/bans', async (c) => {
    authorize(c, 'write');
    noQuery(c);
    const json = await readJsonBody(c.req.raw, s.maxBodyBytes);
    const body = check(banBody, json, 'field');
    const req: ControlRequest = { cmd: 'ban', ip: body.ip };
    if (body.duration !== undefined) req.duration = body.duration;
    if (body.reason !== undefined) req.reason = body.reason;
    const r = await write(c, req);
    return c.json(r, r.replaced === true ? 200 : 201);
  });

  const unban = async (c: Context<Env>, text: string) => {
    authorize(c, 'write');
    noQuery(c);
    const ip = pathIp(text);
    return c.json(await write(c, { cmd: 'unban', ip }));
  };
  app.delete('/api/bans/:ip', (c) => unban(c, c.req.param('ip')));
  app.delete('/api/bans/:ip/:len{[0-9]{1,3}}', (c) => unban(c, `${c.req.param('ip')}/${c.req.param('len')}`));

  if (s.metrics && metrics) {
    app.get('/metrics', async (c) => {
      authorize(c, 'read');
      const text = await metrics.render();
      return c.body(text, 200, { 'content-type': metrics.contentType });
    });
  }

  if (s.dashboard) mountDashboard(app, { logger });

  // A known path with another method: 405 with the methods it has.
  const allow: [string, string][] = [
    ['/api', 'GET, HEAD'],
    ['/api/status', 'GET, HEAD'],
    ['/api/bans', 'GET, HEAD, POST'],
    ['/api/bans/:ip/explain', 'GET, HEAD'],
    ['/api/bans/:ip/:len{[0-9]{1,3}}/explain', 'GET, HEAD'],
    ['/api/bans/:ip', 'DELETE'],
    ['/api/bans/:ip/:len{[0-9]{1,3}}', 'DELETE'],
    ['/api/stats', 'GET, HEAD'],
    ['/api/events', 'GET, HEAD'],
    ...(s.metrics && metrics ? ([['/metrics', 'GET, HEAD']] as [string, string][]) : []),
  ];
  for (const [p, methods] of allow) {
    app.all(p, (c) => c.json({ error: `method ${c.req.method.slice(0, 20)} not allowed on ${c.req.path.slice(0, 200)}; allowed: ${methods}` }, 405, { allow: methods }));
  }

  app.notFound((c) => c.json({ error: `not found: ${c.req.method.slice(0, 20)} ${c.req.path.slice(0, 200)}` }, 404));

  app.onError((err, c) => {
    if (err instanceof ApiError) {
      const headers: Record<string, string> = err.status === 401 ? { 'www-authenticate': 'Bearer realm="tsfilter"' } : {};
      return c.json(err.field === undefined ? { error: err.message } : { error: err.message, field: err.field }, err.status, headers);
    }
    if (err instanceof HTTPException) return c.json({ error: err.message || 'bad request' }, err.status);
    logger.error('api: request failed', { method: c.req.method, path: c.req.path.slice(0, 200), error: err });
    return c.json({ error: `internal error: ${err.message}` }, 500);
  });

  const limits: ServerLimits = { ...SERVER_LIMITS, maxConnections: s.maxEventClients + SPARE_CONNECTIONS, ...deps.limits };
  let server: Server;
  try {
    server = await new Promise<Server>((resolve, reject) => {
      const srv = serve(
        // Node's own Request/Response stay in place: the daemon is not a web app, and nothing else should change.
        {
          fetch: app.fetch,
          hostname: s.listen.host,
          port: s.listen.port,
          overrideGlobalObjects: false,
          // connectionsCheckingInterval can only be given when the server is created.
          serverOptions: {
            headersTimeout: limits.headersMs,
            requestTimeout: limits.requestMs,
            keepAliveTimeout: limits.keepAliveMs,
            connectionsCheckingInterval: limits.checkMs,
          },
        },
        () => {
          srv.off('error', reject);
          resolve(srv as Server);
        },
      );
      srv.once('error', reject);
    });
  } catch (e) {
    streams.closeAll();
    feed.close();
    rdb.close();
    const err = e as NodeJS.ErrnoException;
    const where = `${s.listen.host.includes(':') ? `[${s.listen.host}]` : s.listen.host}:${s.listen.port}`;
    const why = err.code === 'EADDRINUSE' ? 'the address is already in use' : err.code === 'EADDRNOTAVAIL' ? 'no such local address' : err.code === 'EACCES' ? 'permission denied' : err.message;
    throw new Error(`api.listen ${where}: cannot listen: ${why}`);
  }
  server.maxConnections = limits.maxConnections;
  server.on('error', (e) => logger.error('api: server error', { error: e }));

  const addr = server.address() as AddressInfo;
  const url = `http://${addr.family === 'IPv6' ? `[${addr.address}]` : addr.address}:${addr.port}`;
  if (!isLoopback(s.listen.host) && !s.readRequiresToken) {
    logger.warn('api: listening beyond loopback without read_requires_token: anyone who can reach it can read the bans and status', { url });
  } else if (token === null) {
    logger.warn('api: no token configured: every local user can read the bans and the log lines behind them; set api.token_file', { url });
  }
  logger.info('api: listening', { url, writes: token !== null, metrics: s.metrics && metrics !== undefined });

  let closed = false;
  return {
    url,
    async close() {
      if (closed) return;
      closed = true;
      streams.closeAll();
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      feed.close();
      rdb.close();
    },
  };
}
