/** What an enforcer needs to know about a ban. */
export interface Enforcement {
  ip: string;
  /** ms since the epoch, or null for a permanent ban. */
  expiresAt: number | null;
  rule: string;
}

/**
 * A firewall backend. Every method takes a batch, so backends can apply many bans in one transaction.
 * Adding a backend means one file in src/firewall/ implementing this, plus its test.
 */
export interface Enforcer extends EnforcerExtras {
  readonly name: string;
  start(): Promise<void>;
  ban(bans: Enforcement[]): Promise<void>;
  unban(ips: string[]): Promise<void>;
  stop(): Promise<void>;
}

/** What `tsfilter status` shows about an enforcer; backends add their own fields. */
export interface EnforcerHealth {
  ok: boolean;
  [key: string]: unknown;
}

/**
 * Optional capabilities a backend may offer; the daemon uses them when present.
 *  - elements(): the addresses currently in the backend's own sets, for reconciliation at start (elements of
 *    addresses whose bans ended in the store are removed; addresses the store never banned are foreign and stay).
 *  - onLost(cb): the backend calls cb when its state vanished behind its back (ruleset flushed, nftables
 *    reloaded) and has been recreated empty; the daemon then re-applies every active ban.
 *  - reconcile(active): at start, make the sets hold exactly these bans' elements cheaply (only missing or mistimed
 *    ones are written); elements of other addresses are left to the caller. Without it, ban(active) is used.
 *  - health(): for `tsfilter status`.
 */
export interface EnforcerExtras {
  elements?(): Promise<string[]>;
  reconcile?(active: Enforcement[]): Promise<unknown>;
  onLost?(cb: () => void): void;
  health?(): EnforcerHealth;
}
