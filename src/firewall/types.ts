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
export interface Enforcer {
  readonly name: string;
  start(): Promise<void>;
  ban(bans: Enforcement[]): Promise<void>;
  unban(ips: string[]): Promise<void>;
  stop(): Promise<void>;
}
