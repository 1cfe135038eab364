import { readFileSync, readdirSync, readlinkSync } from 'node:fs';
import os from 'node:os';
import { normalizeIp } from './ip.ts';

/*
 * Readers for the Linux /proc files that tell which TCP connections exist and which processes hold them. Nothing
 * here throws: /proc entries vanish while they are read (processes exit, connections close), and an unreadable file
 * is reported as "nothing there" (or, for the process scan, counted so the caller can tell a permission problem
 * from an absent sshd).
 */

/** The two TCP states we care about, as the kernel writes them in the `st` column. */
export const TCP_ESTABLISHED = 0x01;
export const TCP_LISTEN = 0x0a;

export interface TcpSocket {
  /** Normalised local address (IPv4-mapped IPv6 becomes plain IPv4). */
  localIp: string;
  localPort: number;
  remoteIp: string;
  remotePort: number;
  /** Kernel TCP state (TCP_ESTABLISHED, TCP_LISTEN, ...). */
  state: number;
  /** Socket inode: what /proc/<pid>/fd/N links to as `socket:[inode]`. 0 for sockets no process holds (TIME_WAIT). */
  inode: number;
}

const LITTLE_ENDIAN = os.endianness() === 'LE';

/**
 * One 32-bit word of /proc/net/tcp{,6} hex to its 4 bytes in network order. The kernel prints the in-memory
 * (network-order) word with %08X as a host-order integer, so on little-endian hosts the bytes come out reversed.
 */
function wordBytes(hex: string, out: number[]): boolean {
  const v = Number.parseInt(hex, 16);
  if (hex.length !== 8 || !Number.isFinite(v)) return false;
  if (LITTLE_ENDIAN) out.push(v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff);
  else out.push((v >>> 24) & 0xff, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff);
  return true;
}

/** `0100007F:1538` / `000080FE...:0016` to [normalised ip, port], or null if malformed. */
export function parseProcNetAddress(field: string): [string, number] | null {
  const colon = field.indexOf(':');
  if (colon < 0) return null;
  const hexAddr = field.slice(0, colon);
  const hexPort = field.slice(colon + 1);
  if (!/^[0-9A-Fa-f]{1,4}$/.test(hexPort)) return null;
  const port = Number.parseInt(hexPort, 16);
  const bytes: number[] = [];
  if (hexAddr.length === 8) {
    if (!wordBytes(hexAddr, bytes)) return null;
    return [bytes.join('.'), port];
  }
  if (hexAddr.length !== 32) return null;
  for (let i = 0; i < 32; i += 8) if (!wordBytes(hexAddr.slice(i, i + 8), bytes)) return null;
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((bytes[i]! << 8) | bytes[i + 1]!).toString(16));
  const ip = normalizeIp(groups.join(':'));
  return ip === null ? null : [ip, port];
}

/** Parses the text of /proc/net/tcp or /proc/net/tcp6 (header line and malformed lines are skipped). */
export function parseProcNetTcp(text: string): TcpSocket[] {
  const out: TcpSocket[] = [];
  for (const line of text.split('\n')) {
    const f = line.trim().split(/\s+/);
    // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
    if (f.length < 10 || !f[0]!.endsWith(':')) continue;
    const local = parseProcNetAddress(f[1]!);
    const remote = parseProcNetAddress(f[2]!);
    const state = Number.parseInt(f[3]!, 16);
    const inode = Number(f[9]);
    if (!local || !remote || !Number.isInteger(state) || !Number.isInteger(inode)) continue;
    out.push({ localIp: local[0], localPort: local[1], remoteIp: remote[0], remotePort: remote[1], state, inode });
  }
  return out;
}

function readText(file: string): string | null {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return null;
  }
}

/** Sockets of /proc/net/tcp and /proc/net/tcp6 under `procRoot` (the network namespace of the calling process). */
export function readTcpSockets(procRoot: string): TcpSocket[] {
  const out: TcpSocket[] = [];
  for (const name of ['tcp', 'tcp6']) {
    const text = readText(`${procRoot}/net/${name}`);
    if (text !== null) for (const s of parseProcNetTcp(text)) out.push(s);
  }
  return out;
}

export interface ProcInfo {
  pid: number;
  /** /proc/<pid>/comm without the newline (the executable's name, at most 15 characters). */
  comm: string;
  /** The process title: /proc/<pid>/cmdline up to its first NUL, trimmed (sshd rewrites it with setproctitle). */
  title: string;
  /** Inodes of the sockets the process holds open. */
  sockets: number[];
}

export interface ProcScan {
  procs: ProcInfo[];
  /** Matching processes whose fd directory could not be read (permission denied: not root). */
  unreadable: number;
}

/**
 * Processes whose comm is in `comms`, with the socket inodes they hold. Processes that exit mid-scan are skipped;
 * those whose fd directory cannot be read are counted in `unreadable`.
 */
export function scanProcesses(procRoot: string, comms: ReadonlySet<string>): ProcScan {
  const procs: ProcInfo[] = [];
  let unreadable = 0;
  let entries: string[];
  try {
    entries = readdirSync(procRoot);
  } catch {
    return { procs, unreadable: 1 };
  }
  for (const e of entries) {
    const c0 = e.charCodeAt(0);
    if (c0 < 48 || c0 > 57 || !/^\d+$/.test(e)) continue;
    const dir = `${procRoot}/${e}`;
    const comm = readText(`${dir}/comm`);
    if (comm === null) continue;
    const name = comm.trim();
    if (!comms.has(name)) continue;
    let fds: string[];
    try {
      fds = readdirSync(`${dir}/fd`);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EACCES' || code === 'EPERM') unreadable++;
      continue;
    }
    const sockets: number[] = [];
    for (const fd of fds) {
      let target: string;
      try {
        target = readlinkSync(`${dir}/fd/${fd}`);
      } catch {
        continue;
      }
      const m = /^socket:\[(\d+)\]$/.exec(target);
      if (m) sockets.push(Number(m[1]));
    }
    const cmdline = readText(`${dir}/cmdline`) ?? '';
    const nul = cmdline.indexOf('\0');
    const title = (nul >= 0 ? cmdline.slice(0, nul) : cmdline).trim();
    procs.push({ pid: Number(e), comm: name, title, sockets });
  }
  return { procs, unreadable };
}
