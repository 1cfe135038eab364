import { IgnoreList } from '../detect/cidr-trie.ts';
import { isLoopback, ProtectedAddresses, WHY_LOCAL, WHY_LOOPBACK, WHY_SSH_CLIENT, WHY_SSH_SESSION, WHY_SSH_UNVERIFIED } from '../detect/protected-addresses.ts';
import type { Logger } from '../util/logger.ts';
import { canonicalTarget, targetContains, type Target } from '../firewall/target.ts';

/** Prefix bans wider than these are refused: a typo like /2 would cut the server off from most of the Internet. */
export const MIN_PREFIX = { 4: 8, 6: 16 } as const;

/** What never-ban checks need from ProtectedAddresses (tests substitute fixtures). */
export interface Protector {
  why(ip: string): string | null;
  list(): { ip: string; why: string }[];
  sshStatus(): { source: 'proc' | 'fallback'; ports: number[] };
  start?(): void;
  stop?(): void;
}

const PHRASES: Record<string, string> = {
  [WHY_LOOPBACK]: 'a loopback address',
  [WHY_LOCAL]: "one of this host's own addresses",
  [WHY_SSH_SESSION]: 'the address of a current SSH session',
  [WHY_SSH_CLIENT]: 'the SSH client address of the user who started tsfilter (SSH_CLIENT)',
};

/**
 * The addresses that are never banned, whatever asks: settings.ignored_ips, loopback, the host's own addresses, and
 * (protect_sessions) the peers of authenticated SSH sessions and the starter's SSH_CLIENT.
 *
 * When ProtectedAddresses cannot verify sshd's sessions (not root, hidepid: its 'fallback' mode), it lists every
 * peer connected to the SSH port, attackers mid-guessing included. Protecting those would make every attacker that
 * keeps its connection open immune, so they are NOT protected here; a warning is logged once instead.
 */
export class NeverBan {
  private ignore: IgnoreList;
  private entries: string[];
  private warnedFallback = false;

  constructor(
    ignoredIps: readonly string[],
    private protector: Protector,
    private readonly logger: Logger,
  ) {
    this.entries = [...ignoredIps];
    this.ignore = IgnoreList.parse(ignoredIps);
  }

  static create(ignoredIps: readonly string[], protectSessions: boolean, logger: Logger): NeverBan {
    return new NeverBan(ignoredIps, new ProtectedAddresses({ protectSessions }), logger);
  }

  /** The ignore list alone (the detector's: ignored addresses are not even counted). */
  get ignoreList(): IgnoreList {
    return this.ignore;
  }

  /** SIGHUP: new ignored_ips and/or protector. Throws (and changes nothing) on a bad entry. */
  reconfigure(ignoredIps: readonly string[], protector?: Protector): void {
    const list = IgnoreList.parse(ignoredIps);
    this.ignore = list;
    this.entries = [...ignoredIps];
    if (protector && protector !== this.protector) {
      this.protector.stop?.();
      this.protector = protector;
      protector.start?.();
    }
  }

  start(): void {
    this.protector.start?.();
    this.checkFallback();
  }

  stop(): void {
    this.protector.stop?.();
  }

  has(ip: string): boolean {
    return this.ignore.has(ip) || this.why(ip) !== null;
  }

  /** Why `ip` (normalised) must never be banned, as a phrase for messages, or null. */
  why(ip: string): string | null {
    if (this.ignore.has(ip)) {
      const entry = this.entries.find((e) => {
        try {
          return IgnoreList.parse([e]).has(ip);
        } catch {
          return false;
        }
      });
      return entry === undefined || entry.trim() === ip ? 'in ignored_ips' : `in ignored_ips (${entry.trim()})`;
    }
    if (isLoopback(ip)) return PHRASES[WHY_LOOPBACK]!;
    let why = this.protector.why(ip);
    if (why === WHY_SSH_UNVERIFIED) {
      this.checkFallback();
      // The starter's SSH_CLIENT stays protected even when an unverified connection shadows it.
      why = this.protector.list().some((p) => p.ip === ip && p.why === WHY_SSH_CLIENT) ? WHY_SSH_CLIENT : null;
    }
    return why === null ? null : (PHRASES[why] ?? why);
  }

  /**
   * Why a source must not be banned, or null. An address: why(). A prefix is refused when it is wider than
   * MIN_PREFIX, lies wholly inside an ignored_ips entry, or holds a loopback, a host's own or a current SSH session's
   * address (banning it would lock the owner out). An ignored address merely inside the prefix is fine: the enforcers let ignored_ips through
   * ahead of every ban.
   */
  whyRange(t: Target): string | null {
    if (!t.isPrefix) return this.why(t.text);
    if (t.prefixLength < MIN_PREFIX[t.family]) return `wider than /${MIN_PREFIX[t.family]} (too wide to ban)`;
    for (const e of this.entries) {
      const et = canonicalTarget(e.trim());
      if (et !== null && et.family === t.family && et.prefixLength <= t.prefixLength && targetContains(et, t.address)) {
        return `inside ignored_ips (${e.trim()})`;
      }
    }
    for (const lo of ['127.0.0.1', '::1']) if (targetContains(t, lo)) return `a range holding ${lo} (${PHRASES[WHY_LOOPBACK]})`;
    for (const p of this.protector.list()) {
      if (p.why === WHY_SSH_UNVERIFIED || !targetContains(t, p.ip)) continue;
      return `a range holding ${p.ip} (${PHRASES[p.why] ?? p.why})`;
    }
    return null;
  }

  /** For `tsfilter status`. */
  status(): Record<string, unknown> {
    const ssh = this.protector.sshStatus();
    return {
      ignored_ips: this.entries.length,
      ssh_sessions: ssh.source === 'proc' ? 'verified' : 'unverified (not protected)',
      ssh_ports: ssh.ports,
      protected: this.protector.list().filter((p) => p.why !== WHY_SSH_UNVERIFIED).length,
    };
  }

  private checkFallback(): void {
    if (this.warnedFallback || this.protector.sshStatus().source !== 'fallback') return;
    const unverified = this.protector.list().some((p) => p.why === WHY_SSH_UNVERIFIED);
    const ports = this.protector.sshStatus().ports;
    if (!unverified && ports.length === 0) return; // sessions not protected at all (protect_sessions off)
    this.warnedFallback = true;
    this.logger.warn(
      process.getuid?.() === 0
        ? "protect_sessions: no sshd process is visible (sshd not running here, or /proc mounted with hidepid), so SSH sessions cannot be told from attackers and are NOT protected; add your address to ignored_ips"
        : "protect_sessions: sshd's processes cannot be inspected (not running as root), so SSH sessions cannot be told from attackers and are NOT protected; add your address to ignored_ips",
      { ports: ports.join(',') },
    );
  }
}
