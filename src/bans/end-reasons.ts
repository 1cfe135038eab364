import type { PortScope } from '../firewall/types.ts';

/*
 * Why a ban ended: the text stored in bans.end_reason (shown by explain and the dashboard), written here and read
 * back by endCause() for the metrics and the live feed, so the two cannot drift apart.
 */

export const EXPIRED = 'expired';
/** PyFilter-Admin (or another tool) deleted the banned_ip row. */
export const REMOVED_FROM_BANNED_IP = 'removed from banned_ip';
export const BLACKLIST_LINE_DELETED = 'line deleted from the blacklist file';
const UNBANNED_WITH = 'unbanned with ';
export const UNBANNED = `${UNBANNED_WITH}tsfilter unban`;
export const UNBANNED_ALL = `${UNBANNED_WITH}tsfilter unban --all`;
const UNBANNED_ON = 'unbanned on ';
const REPLACED_BY = 'replaced by ';
const WIDENED_TO = 'widened to ';
export const REPLACED_BY_MANUAL = `${REPLACED_BY}a manual ban`;

export const unbannedOn = (node: string) => `${UNBANNED_ON}${node}`;
export const replacedByRemote = (node: string) => `${REPLACED_BY}a ban from ${node}`;
export const widenedTo = (scope: PortScope | null | undefined, rule: string) =>
  `${WIDENED_TO}${scope ? `${scope.protocol} ports ${scope.ports.join(',')}` : 'all traffic'} by rule ${rule}`;

/** Why a ban ended, as a small fixed set (metrics labels, the dashboard). */
export type EndCause = 'expired' | 'manual' | 'remote' | 'replaced' | 'other';

export function endCause(reason: unknown): EndCause {
  // A row another tool wrote may hold anything in end_reason.
  const r = typeof reason === 'string' ? reason : '';
  if (r === EXPIRED) return 'expired';
  if (r.startsWith(UNBANNED_ON)) return 'remote';
  if (r.startsWith(REPLACED_BY) || r.startsWith(WIDENED_TO)) return 'replaced';
  if (r.startsWith(UNBANNED_WITH) || r === REMOVED_FROM_BANNED_IP || r === BLACKLIST_LINE_DELETED) return 'manual';
  return 'other';
}
