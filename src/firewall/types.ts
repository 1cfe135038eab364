/** A ban limited to some ports: only traffic to these ports of this protocol is blocked. */
export interface PortScope {
  protocol: 'tcp' | 'udp';
  /** 1..65535, sorted, no duplicates. */
  ports: number[];
}

/** What an enforcer needs to know about a ban. */
export interface Enforcement {
  /**
   * The banned source: an address ("192.0.2.7", "2001:db8::7") or a prefix in canonical form ("198.51.100.0/24",
   * "2001:db8:1::/64": host bits zero, never /32 or /128, which are plain addresses). See canonicalTarget().
   */
  ip: string;
  /** ms since the epoch, or null for a permanent ban. */
  expiresAt: number | null;
  rule: string;
  /** Block only these ports (the rule's `ports`); absent or null: all traffic from the source. */
  scope?: PortScope | null;
}

/**
 * A firewall backend. Every method takes a batch, so backends can apply many bans in one transaction.
 * Adding a backend means one file in src/firewall/ implementing this, plus its test.
 */
export interface Enforcer extends EnforcerExtras {
  readonly name: string;
  start(): Promise<void>;
  /** Adds or replaces the ban of each source (a new scope or expiry replaces the old one). */
  ban(bans: Enforcement[]): Promise<void>;
  /** Removes every element of these sources (whatever their scope); a source that is not banned is not an error. */
  unban(ips: string[]): Promise<void>;
  stop(): Promise<void>;
}

/** What `tsfilter status` shows about an enforcer; backends add their own fields. */
export interface EnforcerHealth {
  ok: boolean;
  [key: string]: unknown;
}

/** Logging the backends need (src/util/logger.ts's Logger fits). */
export interface FirewallLogger {
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
}

/** Options every kernel backend takes (nftables, iptables, ipset), from settings. */
export interface EnforcerOptions {
  denyType: 'DROP' | 'REJECT';
  /**
   * settings.forward: also filter forwarded traffic, so containers published by Docker are protected (nftables: a
   * forward hook; iptables/ipset: a jump from DOCKER-USER when that chain exists, else from FORWARD).
   */
  forward?: boolean;
  /** Sources that always pass, ahead of every ban (settings.ignored_ips): an ignored address inside a banned range. */
  allow?: string[];
  logger: FirewallLogger;
  /** Seconds between checks that the backend's rules and sets are intact; 0 disables the watcher. */
  checkInterval?: number;
  /** Called after the watcher recreated state that vanished: the daemon re-applies every active ban. */
  onLost?: () => void;
  /** Run the commands via `ip netns exec <netns>`: tests and benches only; the daemon runs inside the namespace. */
  netns?: string;
  /** Kill a command after this long. Default 30 s. */
  timeoutMs?: number;
  /** Clock for timeouts (ms since the epoch). Default Date.now. */
  now?: () => number;
}

/**
 * Optional capabilities a backend may offer; the daemon uses them when present.
 *  - elements(): the sources (addresses and prefixes, canonical) currently in the backend's own sets or chain, for
 *    reconciliation at start (elements of sources whose bans ended in the store are removed; sources the store
 *    never banned are foreign and stay).
 *  - onLost(cb): the backend calls cb when its state vanished behind its back (ruleset flushed, nftables
 *    reloaded) and has been recreated empty; the daemon then re-applies every active ban.
 *  - reconcile(active): at start, make the sets hold exactly these bans' elements cheaply (only missing or mistimed
 *    ones are written); elements of other sources are left to the caller. Without it, ban(active) is used.
 *  - setAllowed(cidrs): replaces the always-pass list (ignored_ips changed on reload).
 *  - health(): for `tsfilter status`.
 */
export interface EnforcerExtras {
  elements?(): Promise<string[]>;
  reconcile?(active: Enforcement[]): Promise<unknown>;
  onLost?(cb: () => void): void;
  setAllowed?(cidrs: string[]): Promise<void>;
  health?(): EnforcerHealth;
}
