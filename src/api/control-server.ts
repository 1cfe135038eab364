/*
 * The running daemon's control socket: a Unix socket only root can use (its directory is created 0700, the socket
 * is 0600 and owned by the daemon's user, root in production). One JSON request per line, one JSON response per
 * line (src/api/protocol.ts). Requests on one connection are answered in order.
 */
import { chmodSync, lstatSync, mkdirSync, unlinkSync, type Stats } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { Logger } from '../util/logger.ts';
import { errorResponse, MAX_REQUEST_BYTES, parseRequest, type Request, type Response } from './protocol.ts';

/** Connections open at once; more are refused (a local root-only socket never needs many). */
const MAX_CONNECTIONS = 32;
/** A connection idle this long is closed. */
const IDLE_TIMEOUT_MS = 60_000;

export type Handler = (req: Request) => Promise<Record<string, unknown>> | Record<string, unknown>;

export interface ControlServer {
  readonly path: string;
  close(): Promise<void>;
}

/** Another daemon answers on the socket: this one must not start. */
export class SocketInUseError extends Error {}

/** Whether something accepts connections on the Unix socket at `p`. */
export function probeSocket(p: string, timeoutMs = 1000): Promise<'answers' | 'refused' | 'absent'> {
  return new Promise((resolve) => {
    const c = net.createConnection(p);
    const t = setTimeout(() => {
      c.destroy();
      // Accepting nothing for a second is still a live listener (a busy daemon): do not remove it.
      resolve('answers');
    }, timeoutMs);
    c.once('connect', () => {
      clearTimeout(t);
      c.destroy();
      resolve('answers');
    });
    c.once('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(t);
      // Only ECONNREFUSED proves nobody listens; EAGAIN (a full backlog) and the like mean a live, busy daemon.
      resolve(e.code === 'ENOENT' ? 'absent' : e.code === 'ECONNREFUSED' ? 'refused' : 'answers');
    });
  });
}

/**
 * Refuses when a daemon answers at `p`; removes a stale socket file (no listener). Anything else at the path (a
 * regular file, a directory) is refused rather than deleted.
 */
export async function claimSocketPath(p: string): Promise<void> {
  let st: Stats;
  try {
    st = lstatSync(p);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw new Error(`control socket ${p}: ${(e as Error).message}`);
  }
  if (!st.isSocket()) {
    throw new Error(`control socket ${p} exists and is not a socket; remove it or set settings.control_socket elsewhere`);
  }
  const state = await probeSocket(p);
  if (state === 'answers') {
    throw new SocketInUseError(`another tsfilter daemon is already running: its control socket ${p} answers`);
  }
  if (state === 'refused') {
    try {
      unlinkSync(p);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw new Error(`cannot remove the stale control socket ${p}: ${(e as Error).message}`);
    }
  }
}

export async function startControlServer(socketPath: string, handle: Handler, logger: Logger): Promise<ControlServer> {
  const dir = path.dirname(socketPath);
  try {
    // Only a directory we create gets 0700 here: an existing one (e.g. /tmp) is not ours to change.
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (e) {
    throw new Error(`cannot create the control socket's directory ${dir} (settings.control_socket): ${(e as Error).message}`);
  }
  await claimSocketPath(socketPath);

  const sockets = new Set<net.Socket>();
  const server = net.createServer({ allowHalfOpen: true }, (conn) => serve(conn, handle, logger, sockets));
  server.maxConnections = MAX_CONNECTIONS;
  // The socket file must never exist with looser permissions, not even between bind and chmod: bind under a
  // umask that leaves 0600 (bind happens synchronously inside listen() for a path).
  const oldMask = process.umask(0o177);
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(socketPath, () => {
        server.off('error', reject);
        resolve();
      });
    });
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'EADDRINUSE') throw new SocketInUseError(`another tsfilter daemon is already running: control socket ${socketPath} is in use`);
    throw new Error(`cannot listen on the control socket ${socketPath}: ${err.message}`);
  } finally {
    process.umask(oldMask);
  }
  chmodSync(socketPath, 0o600);
  const ours = lstatSync(socketPath);
  server.on('error', (e) => logger.error('control socket error', { socket: socketPath, error: e }));
  logger.info('control socket listening', { socket: socketPath });

  return {
    path: socketPath,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
        // Remove the file only if it is still ours (not a successor's).
        try {
          const st = lstatSync(socketPath);
          if (st.ino === ours.ino && st.dev === ours.dev) unlinkSync(socketPath);
        } catch {
          /* already gone */
        }
      }),
  };
}

function serve(conn: net.Socket, handle: Handler, logger: Logger, sockets: Set<net.Socket>): void {
  sockets.add(conn);
  conn.setTimeout(IDLE_TIMEOUT_MS, () => conn.destroy());
  conn.on('close', () => sockets.delete(conn));
  conn.on('error', () => {});
  let buf = '';
  let chain: Promise<void> = Promise.resolve();
  let closed = false;
  const reply = (r: Response) => {
    if (!conn.destroyed) conn.write(JSON.stringify(r) + '\n');
  };
  conn.setEncoding('utf8');
  conn.on('data', (chunk: string) => {
    if (closed) return;
    buf += chunk;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (Buffer.byteLength(line) > MAX_REQUEST_BYTES) {
        tooLarge();
        return;
      }
      if (line.trim() === '') continue;
      chain = chain.then(() => answer(line));
    }
    if (Buffer.byteLength(buf) > MAX_REQUEST_BYTES) tooLarge();
  });
  conn.on('end', () => {
    // A last request without a newline still counts.
    if (!closed && buf.trim() !== '') {
      const line = buf;
      buf = '';
      chain = chain.then(() => answer(line));
    }
    chain.then(() => conn.end());
  });

  function tooLarge(): void {
    closed = true;
    buf = '';
    logger.warn('control socket: request too large; connection closed', { limit: MAX_REQUEST_BYTES });
    chain.then(() => {
      reply({ ok: false, error: `request too large (more than ${MAX_REQUEST_BYTES} bytes)`, kind: 'usage' });
      conn.end();
    });
  }

  async function answer(line: string): Promise<void> {
    let req: Request;
    try {
      req = parseRequest(line);
    } catch (e) {
      reply(errorResponse(e));
      return;
    }
    try {
      const r = await handle(req);
      reply({ ok: true, ...r });
    } catch (e) {
      reply(errorResponse(e));
      if (!(e instanceof Error && 'kind' in e)) logger.error('control request failed', { cmd: req.cmd, error: e });
    }
  }
}
