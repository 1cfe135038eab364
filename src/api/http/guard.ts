/*
 * Who may do what: the bearer token (writes always; reads with read_requires_token) and the Host header check that
 * keeps a web page elsewhere from reaching a loopback API through DNS rebinding.
 */
import net from 'node:net';
import type { Logger } from '../../util/logger.ts';
import { tokenMatches } from './config.ts';
import { ApiError } from './validate.ts';

/** At most one log line about refused tokens per this many ms: a client guessing tokens must not flood the log. */
const REFUSAL_LOG_MS = 10_000;

const BEARER = /^Bearer[ \t]+(\S+)[ \t]*$/i;

/** The host name of a Host header: "[::1]:9707" -> "::1", "Example.org:80" -> "example.org". */
export function hostName(header: string): string {
  const h = header.trim().toLowerCase();
  if (h.startsWith('[')) {
    const end = h.indexOf(']');
    return h.slice(1, end < 0 ? undefined : end);
  }
  const colon = h.lastIndexOf(':');
  return colon < 0 ? h : h.slice(0, colon);
}

export interface Guard {
  /** Throws a 403 unless the Host header names an IP address, localhost or one of allowed_hosts. */
  checkHost(header: string | undefined): void;
  /** Throws 403 (no token configured: writes disabled) or 401 (missing or wrong token) unless allowed. */
  authorize(kind: 'read' | 'write', authorization: string | undefined, who: { remote: string; method: string; path: string }): void;
  /** Whether a presented token is the configured one; null when none was presented or none is configured. */
  tokenValid(authorization: string | undefined): boolean | null;
}

export function createGuard(o: { token: string | null; readRequiresToken: boolean; allowedHosts: string[]; logger: Logger }): Guard {
  const hosts = new Set(['localhost', ...o.allowedHosts.map((h) => h.toLowerCase())]);
  let lastLogged = 0;
  let quiet = 0;
  const refused = (who: { remote: string; method: string; path: string }) => {
    const now = Date.now();
    if (now - lastLogged < REFUSAL_LOG_MS) {
      quiet++;
      return;
    }
    o.logger.warn('api: request refused: missing or wrong token', {
      remote: who.remote,
      method: who.method.slice(0, 20),
      path: who.path.slice(0, 200),
      ...(quiet > 0 ? { also_refused: quiet } : {}),
    });
    lastLogged = now;
    quiet = 0;
  };
  return {
    checkHost(header) {
      // HTTP/1.0 clients may send none; browsers, which rebinding needs, always do.
      if (header === undefined) return;
      const name = hostName(header);
      if (!net.isIP(name) && !hosts.has(name)) throw new ApiError(403, `host ${JSON.stringify(name.slice(0, 100))} is not allowed; add it to api.allowed_hosts`);
    },
    authorize(kind, authorization, who) {
      if (kind === 'read' && !o.readRequiresToken) return;
      if (o.token === null) throw new ApiError(403, 'writes are disabled: set api.token_file (or api.token) in the config to enable them');
      const m = BEARER.exec(authorization ?? '');
      if (m === null || !tokenMatches(m[1]!, o.token)) {
        refused(who);
        throw new ApiError(401, m === null ? 'a bearer token is required (Authorization: Bearer <token>)' : 'wrong token');
      }
    },
    tokenValid(authorization) {
      const m = BEARER.exec(authorization ?? '');
      return m === null || o.token === null ? null : tokenMatches(m[1]!, o.token);
    },
  };
}
