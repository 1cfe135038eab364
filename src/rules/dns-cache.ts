import { lookup } from 'node:dns/promises';

export interface DnsCacheOptions {
  /** Seconds a successful answer is reused. */
  ttl?: number;
  /** Seconds a failed lookup is remembered, so a flood of junk names does not become a flood of queries. */
  negativeTtl?: number;
  maxEntries?: number;
  maxInFlight?: number;
  lookup?: (host: string) => Promise<string>;
  now?: () => number;
}

const HOSTNAME = /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$/;

/**
 * DNS for `use_dns`, which is off by default because attackers write the names. The pipeline never waits for DNS
 * (PyFilter does, so a slow resolver stalls it): `resolve` answers from the cache only, and on a miss starts one
 * lookup in the background and returns null, so the first line naming a new host is skipped. The cache, the number
 * of lookups in flight and the names tried are all bounded; only syntactically valid host names are looked up.
 */
export class DnsCache {
  private readonly cache = new Map<string, { ip: string | null; until: number }>();
  private inFlight = 0;
  private readonly o: Required<DnsCacheOptions>;

  constructor(opts: DnsCacheOptions = {}) {
    this.o = {
      ttl: opts.ttl ?? 3600,
      negativeTtl: opts.negativeTtl ?? 300,
      maxEntries: opts.maxEntries ?? 10_000,
      maxInFlight: opts.maxInFlight ?? 8,
      lookup: opts.lookup ?? (async (h) => (await lookup(h)).address),
      now: opts.now ?? Date.now,
    };
  }

  /** The cached address of `host`, or null (and a background lookup when there is room for one). */
  resolve = (host: string): string | null => {
    const key = host.toLowerCase();
    const hit = this.cache.get(key);
    const now = this.o.now();
    if (hit && hit.until > now) return hit.ip;
    if (!HOSTNAME.test(key) || this.inFlight >= this.o.maxInFlight) return null;
    this.remember(key, null, this.o.negativeTtl); // until the answer arrives: no second query for the same name
    this.inFlight++;
    this.o
      .lookup(key)
      .then(
        (ip) => this.remember(key, ip, this.o.ttl),
        () => this.remember(key, null, this.o.negativeTtl),
      )
      .finally(() => this.inFlight--);
    return null;
  };

  private remember(key: string, ip: string | null, ttl: number): void {
    this.cache.delete(key);
    if (this.cache.size >= this.o.maxEntries) this.cache.delete(this.cache.keys().next().value as string);
    this.cache.set(key, { ip, until: this.o.now() + ttl * 1000 });
  }

  get size(): number {
    return this.cache.size;
  }
}
