import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseConfig } from '../src/config/load.ts';
import { replay } from '../src/cli/replay.ts';
import { compileRule } from '../src/rules/compile.ts';
import { readLines } from '../src/sources/read-lines.ts';
import {
  countFail2banBans,
  diffBans,
  groupDiffs,
  parseMsgRows,
  parseRows,
  type Agreement,
  type Fail2banSide,
  type TsfilterSide,
} from './lib/fail2ban-count.ts';
import { emitResult } from './lib/result.ts';
import { ensurePeers, FAIL2BAN_SSHD_FILTER } from './peers.ts';

/*
 * Agreement: on the same real log, the addresses TSFilter would ban (the ssh rule of config/config.default.json in
 * window counting: failed_attempts failures within find_time) against the addresses fail2ban's sshd filter would
 * ban at the same maxretry/findtime. fail2ban-regex says which lines are failures; the ban decision is fail2ban's
 * FailManager, re-done in bench/lib/fail2ban-count.ts. Each address banned by one and not the other is listed with
 * the reason and a sample line. Inputs: the two logs in ../shared/corpus/ssh/ (read in place), each on its own (they
 * are two servers' logs); fail2ban's jail default mode (normal) is compared in full, and its aggressive mode (which
 * adds the pre-authentication noise TSFilter also counts) as counts.
 *
 * Usage: node --import tsx bench/agreement.ts [--maxretry 5] [--findtime 600] [FILE...]
 */
const REPO = fileURLToPath(new URL('../', import.meta.url));
const CORPUS = fileURLToPath(new URL('../../shared/corpus/ssh/', import.meta.url));

export interface AgreementOptions {
  maxretry: number;
  findtime: number;
}

/** TSFilter's decisions for one file, from the real replay pipeline, and the lines its ssh rule matched. */
export function tsfilterSide(file: string, o: AgreementOptions): TsfilterSide {
  const json = JSON.parse(readFileSync(path.join(REPO, 'config/config.default.json'), 'utf8'));
  json.settings.failed_attempts = o.maxretry;
  json.settings.find_time = o.findtime;
  const config = parseConfig(json, 'config/config.default.json (bench agreement)');
  const now = Date.now();
  const r = replay(config, [file], { rule: 'ssh', now });
  const bans: TsfilterSide['bans'] = new Map();
  for (const b of r.bans) if (!bans.has(b.ip)) bans.set(b.ip, { time: b.time / 1000, failures: b.failures, instant: b.instant, lines: b.lines });
  const rule = config.rules.find((x) => x.name === 'ssh')!;
  const matcher = compileRule(rule.match, { warn: () => {} });
  const failureLines = new Map<string, string[]>();
  const successLines = new Map<string, string[]>();
  for (const batch of readLines(file)) {
    for (const l of batch) {
      const m = matcher.match(l, now);
      if (!m) continue;
      const into = m.kind === 'success' ? successLines : failureLines;
      let xs = into.get(m.ip);
      if (!xs) into.set(m.ip, (xs = []));
      xs.push(l.text);
    }
  }
  return { bans, failureLines, successLines };
}

function fail2banRegex(args: string[]): string {
  const r = spawnSync(args[0]!, args.slice(1), { encoding: 'utf8', maxBuffer: 1 << 30 });
  if (r.status !== 0) throw new Error(`${args.join(' ')} exited ${r.status}: ${r.stderr.slice(0, 400)}`);
  return r.stdout;
}

/** fail2ban's decisions for one file: its sshd filter (in `mode`) through fail2ban-regex, then FailManager. */
export function fail2banSide(fail2banRegexPath: string, file: string, mode: string, o: AgreementOptions): Fail2banSide {
  const filter = `${FAIL2BAN_SSHD_FILTER}[mode=${mode}]`;
  const failures = parseRows(fail2banRegex([fail2banRegexPath, '-o', 'row', '--usedns=no', file, filter]));
  const lines = parseMsgRows(fail2banRegex([fail2banRegexPath, '-o', '<fid>\t<time>\t<msg>', '--usedns=no', file, filter]));
  const bans = new Map<string, ReturnType<typeof countFail2banBans>[number]>();
  for (const b of countFail2banBans(failures, o)) if (!bans.has(b.ip)) bans.set(b.ip, b);
  const counts = new Map<string, number>();
  for (const f of failures) counts.set(f.ip, (counts.get(f.ip) ?? 0) + 1);
  return { bans, lines, failures: counts };
}

const REASON_TEXT: Record<string, string> = {
  'tsfilter-instant-ban': "TSFilter bans at once on sshd's own `maximum authentication attempts exceeded`; fail2ban counts it as failures toward maxretry",
  'only-tsfilter-counts-line': "TSFilter's ssh rule counts this line; fail2ban's sshd filter does not (in this mode)",
  'only-fail2ban-counts-line': "fail2ban's sshd filter counts this line; TSFilter's ssh rule does not match it",
  'tsfilter-success-cleared': 'a successful login from the address cleared its failures in TSFilter (fail2ban keeps counting)',
  counting:
    'both saw the same lines; the counts differ (TSFilter counts one attempt per sshd connection where fail2ban counts several lines, and fail2ban scales its count by rate once the first failure is older than findtime)',
};

export function describeReason(r: string): string {
  return REASON_TEXT[r] ?? r;
}

export function agreementReport(name: string, a: Agreement): string {
  const out = [
    `${name}: both ban ${a.both.length}; TSFilter only ${a.tsfilterOnly.length}; fail2ban only ${a.fail2banOnly.length}`,
  ];
  for (const g of groupDiffs([...a.tsfilterOnly, ...a.fail2banOnly])) {
    out.push(`  banned only by ${g.bannedBy}: ${g.count} address${g.count === 1 ? '' : 'es'} — ${describeReason(g.reason)}`);
    out.push(`    line kind: ${g.shape}`);
    out.push(`    sample:    ${g.sample}`);
    out.push(`    addresses: ${g.ips.slice(0, 8).join(', ')}${g.ips.length > 8 ? `, … (${g.ips.length - 8} more)` : ''}`);
  }
  return out.join('\n');
}

export function runAgreement(files: string[], o: AgreementOptions, fail2banRegexPath: string) {
  const perFile = [];
  for (const file of files) {
    const ts = tsfilterSide(file, o);
    const modes: Record<string, Agreement> = {};
    for (const mode of ['normal', 'aggressive']) modes[mode] = diffBans(ts, fail2banSide(fail2banRegexPath, file, mode, o));
    perFile.push({ file, tsfilterBans: ts.bans.size, modes });
  }
  return perFile;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const argv = process.argv.slice(2);
  const opt = (name: string, d: number) => {
    const i = argv.indexOf(name);
    if (i < 0) return d;
    const v = Number(argv[i + 1]);
    argv.splice(i, 2);
    return v;
  };
  const o = { maxretry: opt('--maxretry', 5), findtime: opt('--findtime', 600) };
  const files = argv.length > 0 ? argv : ['elastic-auth.log', 'secrepo-auth-part.log'].map((f) => CORPUS + f);
  const peers = await ensurePeers((s) => process.stdout.write(s + '\n'));
  if (!peers.fail2ban) {
    process.stdout.write(`agreement: skipped, fail2ban-regex missing (${peers.notes.join('; ')})\n`);
    emitResult('agreement', { skipped: 'fail2ban-regex not installed', notes: peers.notes });
    process.exit(0);
  }
  process.stdout.write(
    `TSFilter: ssh rule of config/config.default.json, ${o.maxretry} failures within ${o.findtime} s; ` +
      `fail2ban ${peers.fail2ban.version}: sshd filter, maxretry ${o.maxretry}, findtime ${o.findtime} s (FailManager re-done in bench/lib/fail2ban-count.ts)\n`,
  );
  const res = runAgreement(files, o, peers.fail2ban.path);
  const totals: Record<string, { both: number; tsfilterOnly: number; fail2banOnly: number }> = {};
  for (const f of res) {
    for (const [mode, a] of Object.entries(f.modes)) {
      const t = (totals[mode] ??= { both: 0, tsfilterOnly: 0, fail2banOnly: 0 });
      t.both += a.both.length;
      t.tsfilterOnly += a.tsfilterOnly.length;
      t.fail2banOnly += a.fail2banOnly.length;
    }
    process.stdout.write(`\n### ${path.basename(f.file)}\n${agreementReport('fail2ban sshd mode=normal (jail default)', f.modes.normal!)}\n`);
    const ag = f.modes.aggressive!;
    process.stdout.write(`fail2ban sshd mode=aggressive: both ban ${ag.both.length}; TSFilter only ${ag.tsfilterOnly.length}; fail2ban only ${ag.fail2banOnly.length}\n`);
  }
  emitResult('agreement', {
    maxretry: o.maxretry,
    findtime: o.findtime,
    fail2ban_version: peers.fail2ban.version,
    totals,
    files: res.map((f) => ({
      file: f.file,
      tsfilter_bans: f.tsfilterBans,
      modes: Object.fromEntries(
        Object.entries(f.modes).map(([mode, a]) => [
          mode,
          { both: a.both.length, tsfilter_only: a.tsfilterOnly, fail2ban_only: a.fail2banOnly, groups: groupDiffs([...a.tsfilterOnly, ...a.fail2banOnly]).map((g) => ({ ...g, why: describeReason(g.reason) })) },
        ]),
      ),
    })),
  });
}
