import type { PortScope } from '../firewall/types.ts';
import type { PositionStore } from '../sources/types.ts';

export type BanOrigin = 'local' | 'manual' | 'remote' | 'pyfilter';

/** A ban as the store keeps it. Times are ms since the epoch. */
export interface BanRecord {
  ip: string;
  rule: string;
  reason: string;
  createdAt: number;
  /** null: permanent (PyFilter's bans are all permanent). */
  expiresAt: number | null;
  failures: number;
  /** How many times this address has been banned, this ban included. */
  banCount: number;
  origin: BanOrigin;
  server: string;
  /** The country's English name (as PyFilter records it), from GeoIP. */
  country?: string | null;
  /** The country's ISO 3166-1 alpha-2 code, e.g. "GB". */
  countryCode?: string | null;
  /** The log lines that earned it. */
  lines?: string[];
  /** Only these ports are blocked (the rule's `ports`); absent or null: all traffic. */
  scope?: PortScope | null;
}

/** Per-(rule, ip) counting state that must survive a restart. */
export interface CounterState {
  rule: string;
  ip: string;
  /** Opaque JSON owned by the detector. */
  state: string;
  /** ms since the epoch of the last failure, for forgetting idle entries. */
  updatedAt: number;
}

/**
 * The daemon's durable state. Every write is committed before the call returns (SQLite WAL, synchronous=FULL for
 * bans), so a kill -9 at any moment loses no decided ban.
 */
export interface Store extends PositionStore {
  /** Records a ban unless the address already has an active one; returns the stored record either way. */
  addBan(ban: Omit<BanRecord, 'banCount'>): { added: boolean; record: BanRecord };
  /** The active ban of an address at `now`, including PyFilter's `banned_ip` rows (permanent). */
  activeBan(ip: string, now: number): BanRecord | undefined;
  activeBans(now: number): BanRecord[];
  /** How many addresses activeBans(now) would return, without reading them (status, metrics). */
  countActiveBans(now: number): number;
  /** Ends a ban early; returns whether there was one. */
  removeBan(ip: string, now: number, reason: string): boolean;
  /** Bans whose expiry is at or before `now` and that are not yet marked expired; marks them. */
  expireBans(now: number): BanRecord[];
  /** How many bans were ever recorded for an address (the next ban's escalation step). */
  banCount(ip: string): number;
  /** All bans ever recorded for an address, oldest first. */
  history(ip: string): BanRecord[];
  saveCounters(states: CounterState[], removed: { rule: string; ip: string }[]): void;
  loadCounters(): CounterState[];
  /** Runs `fn` in one transaction (positions, counters and bans of a batch commit together). */
  transaction<T>(fn: () => T): T;
  close(): void;
}
