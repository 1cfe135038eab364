import { existsSync } from 'node:fs';
import { escapeControls } from '../util/terminal-text.ts';
import type { Config } from '../config/load.ts';
import { parseIp } from '../api/protocol.ts';
import { openReadDb } from '../api/http/read-db.ts';
import { explainIp } from '../api/http/queries.ts';
import { UsageError } from './replay.ts';

/*
 * `tsfilter explain IP`: why an address is (or was) banned, from the store alone (read-only, so it works beside a
 * running daemon and without one): every ban of the address, oldest first, with the rule, the log lines that counted,
 * the times, the ban count and how long each lasted (escalation), the country, the origin and the node; and any
 * active prefix ban that covers it.
 */

type Out = (line: string) => void;

function countryText(code: string | null, name: string | null): string {
  if (code && name && name !== code) return `, country ${code} (${name})`;
  return code || name ? `, country ${code ?? name}` : '';
}

export function explainCommand(config: Config, ipText: string, o: { json?: boolean }, out: Out): void {
  let ip: string;
  try {
    ip = parseIp(ipText);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  if (!existsSync(config.sqlitePath)) {
    out(o.json ? JSON.stringify({ ip, bans: [], covered_by: [] }) : `${ip} has never been banned (no store at ${config.sqlitePath})`);
    return;
  }
  // The same reader as GET /api/bans/IP/explain: one story, whichever way it is asked for.
  const rdb = openReadDb(config.sqlitePath);
  try {
    const story = explainIp(rdb, ip, Date.now());
    if (o.json) {
      out(JSON.stringify(story));
      return;
    }
    const { bans, covered_by: coveredBy } = story;
    if (bans.length === 0) out(`${ip} has never been banned${coveredBy.length ? '' : '.'}`);
    for (const b of bans) {
      const state = b.active ? 'ACTIVE' : b.ended ? `ended ${b.ended} (${b.end_reason ?? 'expired'})` : 'expired';
      out(`ban ${b.ban_count} of ${ip}: ${state}`);
      out(`  rule ${b.rule}, origin ${b.origin}, node ${b.node}${countryText(b.country_code, b.country)}, blocks ${b.blocks}`);
      out(`  since ${b.since}, ${b.expires === null ? 'permanent' : `until ${b.expires} (${b.duration_s} s)`}`);
      out(`  ${b.failures} failure(s): ${escapeControls(b.reason)}`);
      for (const l of b.lines) out(`    | ${escapeControls(l)}`);
    }
    if (bans.length > 1) {
      const durations = bans.map((b) => (b.duration_s === null ? 'permanent' : `${b.duration_s} s`));
      out(`escalation: ${durations.join(' -> ')}`);
    }
    for (const p of coveredBy) out(`${ip} is inside the active prefix ban ${p} (tsfilter explain ${p})`);
  } finally {
    rdb.close();
  }
}
