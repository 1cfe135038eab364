import { spawn } from 'node:child_process';
import ipaddr from 'ipaddr.js';

/*
 * Runs nft. Hand-written rather than a library (or `execFile`), because what we need is narrow and specific:
 *  - one process per batch: a whole transaction goes to `nft -f -` as a script on stdin, so 100,000 elements cost one
 *    fork/exec and one netlink transaction, and nft applies the script atomically (all or nothing);
 *  - an argv array, never a shell: nothing in a script or an option is ever interpreted by /bin/sh;
 *  - error parsing: nft echoes the offending script line under its error, and with a 100,000-element statement that
 *    line is megabytes long; errors are cut to their first lines, each line shortened, so a failure is readable in a
 *    log and still names the command and nft's own message;
 *  - a deadline: a hung nft (e.g. a netlink lock) is killed, by its PID, and reported instead of blocking every ban.
 */

export interface NftRunnerOptions {
  /** The nft binary (settings.nftables.nft). */
  nft?: string;
  /** Run as `ip netns exec <netns> nft ...`: for tests and benches only (the daemon itself runs inside its namespace). */
  netns?: string;
  /** Kill nft after this long. Default 30 s. */
  timeoutMs?: number;
}

const ERROR_LINES = 6;
const ERROR_LINE_CHARS = 240;

/** A failed nft command: names the command and carries nft's stderr (first lines, shortened). */
export class NftError extends Error {
  constructor(
    readonly command: string,
    readonly stderr: string,
    readonly exitCode: number | null,
  ) {
    super(`${command} failed (${exitCode === null ? 'killed' : `exit ${exitCode}`}): ${stderr || '(no output)'}`);
    this.name = 'NftError';
  }
}

/** First lines of nft's stderr, each cut short: readable even when nft echoes a megabyte-long statement. */
export function summarizeStderr(stderr: string): string {
  const lines = stderr
    .split('\n')
    .map((l) => l.trimEnd())
    .filter((l) => l !== '');
  const out = lines
    .slice(0, ERROR_LINES)
    .map((l) => (l.length > ERROR_LINE_CHARS ? `${l.slice(0, ERROR_LINE_CHARS)}…` : l));
  if (lines.length > ERROR_LINES) out.push(`(${lines.length - ERROR_LINES} more lines)`);
  return out.join('\n');
}

/** The program and argv that run `nft <args>`, inside `netns` when given. */
export function nftArgv(opts: NftRunnerOptions, args: string[]): [string, string[]] {
  const nft = opts.nft ?? 'nft';
  if (opts.netns !== undefined) return ['ip', ['netns', 'exec', opts.netns, nft, ...args]];
  return [nft, args];
}

/**
 * Runs `nft <args>` with `input` on stdin; resolves with stdout, rejects with an NftError naming the command.
 * For a batch: runNft(opts, ['-f', '-'], script).
 */
export function runNft(opts: NftRunnerOptions, args: string[], input?: string): Promise<string> {
  const [cmd, argv] = nftArgv(opts, args);
  const label = [cmd, ...argv].join(' ');
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, argv, { stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let err = '';
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, opts.timeoutMs ?? 30_000);
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (d: string) => {
      // Keep the head only: the first lines are what we report.
      if (err.length < 64 * 1024) err += d;
    });
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(new NftError(label, e.message, null));
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      if (code === 0 && !timedOut) resolve(Buffer.concat(out).toString('utf8'));
      else reject(new NftError(label, timedOut ? `timed out after ${opts.timeoutMs ?? 30_000} ms` : summarizeStderr(err), code));
    });
    // EPIPE when nft exits early (bad option) is reported through 'close' with nft's stderr.
    child.stdin.on('error', () => {});
    child.stdin.end(input ?? '');
  });
}

const V4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;
const SAFE = /^[0-9a-f.:]+$/;

/**
 * The canonical text of an IP address, the only form that ever goes into an nft script: strict dotted-quad IPv4, or
 * IPv6 regenerated from its parsed bytes (RFC 5952, lower case; an IPv4-mapped address becomes IPv4). Anything else
 * (CIDR, zone index, brackets, spaces, braces, quotes, newlines...) gives null, so a crafted value can never inject
 * nft syntax.
 */
export function canonicalAddress(s: unknown): { family: 4 | 6; text: string } | null {
  if (typeof s !== 'string' || s.length === 0 || s.length > 45) return null;
  let out: { family: 4 | 6; text: string } | null = null;
  if (V4.test(s)) out = { family: 4, text: s };
  else if (/^[0-9A-Fa-f:.]+$/.test(s) && s.includes(':') && ipaddr.IPv6.isValid(s)) {
    const a = ipaddr.IPv6.parse(s);
    out = a.isIPv4MappedAddress()
      ? { family: 4, text: a.toIPv4Address().toString() }
      : { family: 6, text: a.toRFC5952String() };
  }
  // Belt and braces: whatever the parser did, only these characters can reach a script.
  if (out === null || !SAFE.test(out.text)) return null;
  return out;
}
