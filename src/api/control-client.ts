/** The CLI's side of the control socket: one request, one response. */
import net from 'node:net';
import type { Request, Response } from './protocol.ts';

/** Nothing listens on the socket (absent, or a stale file): the daemon is not running. */
export class DaemonNotRunning extends Error {
  constructor(readonly socketPath: string, readonly reason: string) {
    super(`daemon not running (no answer on ${socketPath}: ${reason})`);
  }
}

/** Sends one request and resolves with the daemon's response. */
export function request(socketPath: string, req: Request, timeoutMs = 30_000): Promise<Response> {
  return new Promise((resolve, reject) => {
    const c = net.createConnection(socketPath);
    let buf = '';
    let done = false;
    const finish = (fn: () => void) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      c.destroy();
      fn();
    };
    const timer = setTimeout(
      () => finish(() => reject(new Error(`the daemon did not answer on ${socketPath} within ${timeoutMs / 1000} s`))),
      timeoutMs,
    );
    c.setEncoding('utf8');
    c.once('connect', () => c.write(JSON.stringify(req) + '\n'));
    c.on('data', (d: string) => {
      buf += d;
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      const line = buf.slice(0, nl);
      finish(() => {
        try {
          resolve(JSON.parse(line) as Response);
        } catch {
          reject(new Error(`malformed answer from the daemon on ${socketPath}`));
        }
      });
    });
    c.on('end', () => finish(() => reject(new Error(`the daemon closed the connection on ${socketPath} without answering`))));
    c.on('error', (e: NodeJS.ErrnoException) =>
      finish(() => {
        if (e.code === 'ENOENT' || e.code === 'ECONNREFUSED' || e.code === 'ENOTDIR') reject(new DaemonNotRunning(socketPath, e.code));
        else if (e.code === 'EACCES' || e.code === 'EPERM') reject(new Error(`permission denied on the control socket ${socketPath}: run as root`));
        else reject(new Error(`control socket ${socketPath}: ${e.message}`));
      }),
    );
  });
}
