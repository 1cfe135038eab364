import type { PortScope } from './types.ts';
import { canonicalTarget, type Target } from './target.ts';
import { validTargets } from './ban-input.ts';
import type { Family } from './xtables.ts';

/*
 * The ipset backend's sets (see ipset.ts): their names and types, the `ipset restore` lines that change their
 * elements, and the parsers of what `ipset list` prints.
 */

/** The largest element timeout ipset 7.17 takes, in seconds. */
export const MAX_TIMEOUT_S = 2_147_483;
/** restore lines per ipset process: 100,000 bans take ~0.5 s in one process; this bounds one run's time and memory. */
export const CHUNK_LINES = 200_000;
export const SETS = {
  4: { ban: 'tsfilter4', ports: 'tsfilter4-ports', allow: 'tsfilter4-allow' },
  6: { ban: 'tsfilter6', ports: 'tsfilter6-ports', allow: 'tsfilter6-allow' },
} as const;

export interface SetSpec {
  name: string;
  type: 'hash:net' | 'hash:net,port';
  family: 'inet' | 'inet6';
  timeout: boolean;
  fam: Family;
  role: 'ban' | 'ports' | 'allow';
}

export const SPECS: SetSpec[] = ([4, 6] as const).flatMap((fam) => {
  const family = fam === 4 ? 'inet' : 'inet6';
  return [
    { name: SETS[fam].ban, type: 'hash:net', family, timeout: true, fam, role: 'ban' },
    { name: SETS[fam].ports, type: 'hash:net,port', family, timeout: true, fam, role: 'ports' },
    { name: SETS[fam].allow, type: 'hash:net', family, timeout: false, fam, role: 'allow' },
  ] as SetSpec[];
});

/** One set's header from `ipset list -t`. */
export interface SetInfo {
  name: string;
  type: string;
  family: string;
  timeout: boolean;
  maxelem: number;
  entries: number;
}

export function parseSetHeaders(out: string): Map<string, SetInfo> {
  const sets = new Map<string, SetInfo>();
  let cur: SetInfo | null = null;
  for (const line of out.split('\n')) {
    const m = /^([A-Za-z ]+):\s*(.*)$/.exec(line.trim());
    if (!m) continue;
    const [, key, value] = m as unknown as [string, string, string];
    if (key === 'Name') {
      cur = { name: value, type: '', family: '', timeout: false, maxelem: 0, entries: 0 };
      sets.set(value, cur);
    } else if (cur && key === 'Type') cur.type = value;
    else if (cur && key === 'Number of entries') cur.entries = Number(value) || 0;
    else if (cur && key === 'Header') {
      const t = value.split(/\s+/);
      for (let i = 0; i < t.length; i++) {
        if (t[i] === 'family') cur.family = t[i + 1] ?? '';
        else if (t[i] === 'maxelem') cur.maxelem = Number(t[i + 1]) || 0;
        else if (t[i] === 'timeout') cur.timeout = true;
      }
    }
  }
  return sets;
}

/** Parses `ipset list -o save <set>`: element -> seconds left (null: permanent). */
export function parseSetElements(out: string): Map<string, number | null> {
  const els = new Map<string, number | null>();
  for (const line of out.split('\n')) {
    const m = /^add \S+ (\S+)(.*)$/.exec(line);
    if (!m || / nomatch\b/.test(m[2]!)) continue;
    const t = / timeout (\d+)/.exec(m[2]!);
    const left = t ? Number(t[1]) : null;
    els.set(m[1]!, left === 0 ? null : left);
  }
  return els;
}

const PORT_KEY = /^[a-z0-9]{1,10}:[0-9]{1,5}$/;

/** "192.0.2.7" or "192.0.2.7,tcp:22" -> canonical source and scope key ('' for a whole-source element). */
export function splitElement(el: string, memo?: Map<string, Target | null>): { source: Target; key: string } | null {
  const comma = el.indexOf(',');
  const raw = comma < 0 ? el : el.slice(0, comma);
  let source = memo?.get(raw);
  if (source === undefined) {
    source = canonicalTarget(raw);
    memo?.set(raw, source);
  }
  const key = comma < 0 ? '' : el.slice(comma + 1).toLowerCase();
  if (source === null || (key !== '' && !PORT_KEY.test(key))) return null;
  return { source, key };
}

/** The element keys of a scope: [''] (the whole source) or ['tcp:22', 'tcp:2222']. Throws on a malformed scope. */
export function scopeKeys(scope: PortScope | null | undefined): string[] {
  if (scope === null || scope === undefined) return [''];
  if (scope.protocol !== 'tcp' && scope.protocol !== 'udp') throw new TypeError(`port scope protocol must be tcp or udp, got ${JSON.stringify(scope.protocol)}`);
  if (!Array.isArray(scope.ports) || scope.ports.length === 0) throw new TypeError('port scope without ports');
  const ports = [...new Set(scope.ports)];
  for (const p of ports) if (!Number.isInteger(p) || p < 1 || p > 65535) throw new TypeError(`port out of range: ${String(p)}`);
  return ports.sort((a, b) => a - b).map((p) => `${scope.protocol}:${p}`);
}

function familyOf(source: string): Family {
  return source.includes(':') ? 6 : 4;
}

export function setFor(source: string, key: string): string {
  const s = SETS[familyOf(source)];
  return key === '' ? s.ban : s.ports;
}

function elementText(source: string, key: string): string {
  return key === '' ? source : `${source},${key}`;
}

export function addLine(source: string, key: string, timeout: number | null): string {
  return `add ${setFor(source, key)} ${elementText(source, key)} timeout ${timeout ?? 0} -exist`;
}

export function delLine(source: string, key: string): string {
  return `del ${setFor(source, key)} ${elementText(source, key)} -exist`;
}

/** The allow list, validated and deduplicated; a /0 (which hash:net cannot hold) becomes its two /1 halves. */
export function allowEntries(cidrs: readonly string[]): Target[] {
  const out = new Map<string, Target>();
  for (const t of validTargets(cidrs, 'ipset', 'allow list')) {
    const halves = t.prefixLength > 0 ? [t.text] : t.family === 4 ? ['0.0.0.0/1', '128.0.0.0/1'] : ['::/1', '8000::/1'];
    for (const h of halves) out.set(canonicalTarget(h)!.text, canonicalTarget(h)!);
  }
  return [...out.values()];
}

/** Rewrites both allow sets (settings.ignored_ips). */
export function allowLines(entries: Target[]): string[] {
  return [`flush ${SETS[4].allow}`, `flush ${SETS[6].allow}`, ...entries.map((t) => `add ${SETS[t.family].allow} ${t.text} -exist`)];
}
