import type { ThresholdOverride } from '../detect/detector.ts';
import type { Logger } from '../util/logger.ts';
import type { Country } from './geoip.ts';

/** What a rule's country policy does with an address's failures. A number replaces the rule's failed_attempts. */
export type CountryAction = 'instant' | 'never' | 'default' | number;

/**
 * A rule's `countries` option: ISO 3166-1 alpha-2 codes, plus "*" for every other country and "unknown" for
 * addresses the database has no country for (private ranges, new allocations).
 */
export type CountryPolicy = Readonly<Record<string, CountryAction>>;

export const OTHER_COUNTRIES = '*';
export const UNKNOWN_COUNTRY = 'unknown';

/** What the policy says for one lookup result; null is an address without a country. */
export function countryAction(policy: CountryPolicy, country: Country | null): CountryAction {
  const key = country === null ? UNKNOWN_COUNTRY : country.iso;
  return policy[key] ?? (country === null ? undefined : policy[OTHER_COUNTRIES]) ?? 'default';
}

/**
 * The detector's threshold override for a rule with a country policy. Without a usable GeoIP database (`lookup`
 * answers undefined) the rule counts as if it had no policy: a policy is a refinement, and a missing database must
 * not stop every ban (nor ban every address at its first failure).
 */
export function countryOverride(
  policy: CountryPolicy,
  lookup: (ip: string) => Country | null | undefined,
): ThresholdOverride {
  let maxLimit = 0;
  for (const a of Object.values(policy)) if (typeof a === 'number' && a > maxLimit) maxLimit = a;
  return {
    maxLimit,
    limitFor(ip) {
      const c = lookup(ip);
      if (c === undefined) return undefined;
      const a = countryAction(policy, c);
      return a === 'default' ? undefined : a;
    },
  };
}

/** "CN instant, RU 2, * never" for logs and `config check`. */
export function describeCountryPolicy(policy: CountryPolicy): string {
  return Object.entries(policy)
    .map(([k, v]) => `${k} ${v}`)
    .join(', ');
}

/** The detector's overrides for every rule that has a country policy; none without a lookup. */
export function countryOverrides(
  rules: readonly { name: string; countries: CountryPolicy | null }[],
  lookup: ((ip: string) => Country | null | undefined) | undefined,
): Map<string, ThresholdOverride> {
  const out = new Map<string, ThresholdOverride>();
  if (lookup === undefined) return out;
  for (const r of rules) if (r.countries !== null) out.set(r.name, countryOverride(r.countries, lookup));
  return out;
}

/** Says once per start or reload that a country policy is configured but cannot apply yet. */
export function warnCountryPolicies(
  b: { rules: readonly { name: string; countries: CountryPolicy | null }[] },
  geo: { databaseType: string | null; path: string } | undefined,
  logger: Logger,
): void {
  const withPolicy = b.rules.filter((r) => r.countries !== null).map((r) => r.name);
  if (withPolicy.length === 0 || (geo !== undefined && geo.databaseType !== null)) return;
  logger.warn('country policy not applied: no usable GeoIP database; these rules count as if they had none until one loads', {
    rules: withPolicy.join(','),
    database: geo?.path ?? 'none (set settings.geoip_database)',
  });
}
