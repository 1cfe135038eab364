import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { jsonLines, REPO, runCli, SHARED } from './helpers/cli.ts';
import { failed, sshLine } from './helpers/syslog.ts';
import { countryAction, countryOverride } from '../src/geo/country-policy.ts';

// Addresses and their countries come from MaxMind's test database (../shared/corpus/geoip): 81.2.69.142 and
// 2.125.160.216 are GB, 89.160.20.112 SE, 216.160.83.56 US, 2001:218::1 JP; 1.2.3.4 is not in it. They are only
// written into log files and replayed (dry-run): nothing is contacted.
const GEO_DB = path.join(SHARED, 'corpus/geoip/GeoLite2-Country-Test.mmdb');

interface Case {
  countries: unknown;
  /** Settings on top of config.default.json (window counting, 5 failures in 600 s). */
  settings?: Record<string, unknown>;
  failures: Record<string, number>;
}

/** Replays `failures[ip]` failures 1 s apart per address through `tsfilter replay`; returns ip -> failures at ban. */
function replayWith(c: Case, extraLines = ''): Map<string, { failures: number; time: string }> {
  const dir = mkdtempSync(path.join(tmpdir(), 'tsf-country-'));
  try {
    const cfg = JSON.parse(readFileSync(path.join(REPO, 'config/config.default.json'), 'utf8'));
    Object.assign(cfg.settings, { geoip_database: GEO_DB, ...c.settings });
    cfg.settings.rules.ssh.countries = c.countries;
    const file = path.join(dir, 'config.json');
    writeFileSync(file, JSON.stringify(cfg));
    const t = Date.now() - 3600_000;
    let log = extraLines;
    for (const [ip, n] of Object.entries(c.failures)) for (let i = 0; i < n; i++) log += failed(t + i * 1000, ip);
    const logFile = path.join(dir, 'auth.log');
    writeFileSync(logFile, log);
    const r = runCli(['replay', '--json', '--config', file, logFile]);
    assert.equal(r.code, 0, r.stderr);
    const out = jsonLines(r.stdout).slice(0, -1);
    return new Map(out.map((b) => [b.ip as string, { failures: b.failures as number, time: b.time as string }]));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('an "instant" country is banned at its first failure; other countries need the rule\'s failed_attempts', () => {
  const bans = replayWith({ countries: { GB: 'instant' }, failures: { '81.2.69.142': 1, '89.160.20.112': 4, '216.160.83.56': 5 } });
  assert.deepEqual([...bans.keys()].sort(), ['216.160.83.56', '81.2.69.142']);
  assert.equal(bans.get('81.2.69.142')!.failures, 1);
  assert.equal(bans.get('216.160.83.56')!.failures, 5, 'US is not listed: the rule\'s 5 failures');
});

test('a number replaces failed_attempts for that country (lower or higher), IPv4 and IPv6 alike', () => {
  const bans = replayWith({
    countries: { JP: 2, SE: 8 },
    failures: { '2001:218::1': 2, '89.160.20.112': 7, '2.125.160.216': 5 },
  });
  assert.equal(bans.get('2001:218::1')?.failures, 2, 'JP bans at 2');
  assert.equal(bans.has('89.160.20.112'), false, 'SE needs 8: 7 failures do not ban');
  assert.equal(bans.get('2.125.160.216')?.failures, 5, 'GB unlisted: 5');
  const more = replayWith({ countries: { SE: 8 }, failures: { '89.160.20.112': 8 } });
  assert.equal(more.get('89.160.20.112')?.failures, 8, 'SE bans at its 8th failure within find_time');
});

test('numbers count the rule\'s way: PyFilter\'s gap counting bans at the count + 1', () => {
  // Gap counting (find_time null): each failure 1 s after the previous (< request_time 5 s) adds one.
  const bans = replayWith({ countries: { GB: 2 }, settings: { find_time: null }, failures: { '81.2.69.142': 3, '2.125.160.216': 2 } });
  assert.equal(bans.get('81.2.69.142')?.failures, 3);
  assert.equal(bans.has('2.125.160.216'), false);
});

test('"never" countries are never banned by the rule, not even by an instant pattern', () => {
  // The default ssh rule bans "maximum authentication attempts exceeded" instantly.
  const t = Date.now() - 3600_000;
  const instant = (ip: string) => sshLine(t, `error: maximum authentication attempts exceeded for root from ${ip} port 22 ssh2 [preauth]`);
  const bans = replayWith(
    { countries: { GB: 'never' }, failures: { '81.2.69.142': 50, '216.160.83.56': 5 } },
    instant('2.125.160.216') + instant('89.160.20.112'),
  );
  assert.deepEqual([...bans.keys()].sort(), ['216.160.83.56', '89.160.20.112']);
});

test('"*" is every other country and "unknown" an address the database has no country for', () => {
  // Ban only SE (at 2) and addresses of no country (instantly); everybody else never.
  const bans = replayWith({
    countries: { SE: 2, unknown: 'instant', '*': 'never' },
    failures: { '89.160.20.112': 2, '1.2.3.4': 1, '81.2.69.142': 20, '2001:218::1': 20 },
  });
  assert.deepEqual([...bans.keys()].sort(), ['1.2.3.4', '89.160.20.112']);
  // "*" does not cover addresses without a country: those follow the rule's own threshold.
  const star = replayWith({ countries: { '*': 'never' }, failures: { '1.2.3.4': 5, '81.2.69.142': 20 } });
  assert.deepEqual([...star.keys()], ['1.2.3.4']);
});

test('"default" keeps the rule\'s threshold for a country that "*" would otherwise change', () => {
  const bans = replayWith({ countries: { US: 'default', '*': 'instant' }, failures: { '216.160.83.56': 1, '81.2.69.142': 1 } });
  assert.deepEqual([...bans.keys()], ['81.2.69.142']);
});

test('without a usable GeoIP database a country policy changes nothing, and says why', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'tsf-country-'));
  try {
    const cfg = JSON.parse(readFileSync(path.join(REPO, 'config/config.default.json'), 'utf8'));
    cfg.settings.geoip_database = path.join(dir, 'missing.mmdb');
    cfg.settings.rules.ssh.countries = { GB: 'never', '*': 'instant' };
    const file = path.join(dir, 'config.json');
    writeFileSync(file, JSON.stringify(cfg));
    const t = Date.now() - 3600_000;
    let log = '';
    for (let i = 0; i < 5; i++) log += failed(t + i * 1000, '81.2.69.142');
    log += failed(t, '216.160.83.56');
    writeFileSync(path.join(dir, 'auth.log'), log);
    const r = runCli(['replay', '--json', '--config', file, path.join(dir, 'auth.log')]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /GeoIP database unusable; running without countries/);
    const ips = jsonLines(r.stdout).slice(0, -1).map((b) => b.ip);
    assert.deepEqual(ips, ['81.2.69.142'], 'GB banned at 5 as without a policy; US not instantly');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('countryAction: listed code, then "*" for known countries, "unknown" for none, else default', () => {
  const p = { GB: 3, '*': 'never', unknown: 'instant' } as const;
  assert.equal(countryAction(p, { iso: 'GB', name: 'United Kingdom' }), 3);
  assert.equal(countryAction(p, { iso: 'FR', name: 'France' }), 'never');
  assert.equal(countryAction(p, null), 'instant');
  assert.equal(countryAction({ GB: 3 }, { iso: 'FR', name: 'France' }), 'default');
  assert.equal(countryAction({ '*': 'never' }, null), 'default');
  const o = countryOverride({ GB: 3, SE: 9 }, (ip) => (ip === 'x' ? undefined : { iso: ip, name: ip }));
  assert.equal(o.maxLimit, 9);
  assert.equal(o.limitFor('GB'), 3);
  assert.equal(o.limitFor('FR'), undefined);
  assert.equal(o.limitFor('x'), undefined, 'no database: the rule\'s own threshold');
});

test('a bad country policy is a config error naming the rule, the key and what was expected', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'tsf-country-'));
  try {
    for (const [countries, want] of [
      [{ Britain: 'instant' }, /settings\.rules\.ssh\.countries\.Britain: expected an ISO 3166-1 alpha-2 country code/],
      [{ GB: 'ban' }, /settings\.rules\.ssh\.countries\.GB: expected "instant", "never", "default" or a number of failed attempts/],
      [{ GB: 0 }, /settings\.rules\.ssh\.countries\.GB: expected a number of failed attempts of at least 1/],
      [['GB'], /settings\.rules\.ssh\.countries: /],
      [{ gb: 2, GB: 'never' }, /settings\.rules\.ssh\.countries\.GB: "GB" is the same country as "gb"/],
    ] as const) {
      const cfg = JSON.parse(readFileSync(path.join(REPO, 'config/config.default.json'), 'utf8'));
      cfg.settings.rules.ssh.countries = countries;
      const file = path.join(dir, 'config.json');
      writeFileSync(file, JSON.stringify(cfg));
      const r = runCli(['config', 'check', '--config', file]);
      assert.equal(r.code, 2, `${JSON.stringify(countries)}: ${r.stdout}`);
      assert.match(r.stderr, want);
    }
    const cfg = JSON.parse(readFileSync(path.join(REPO, 'config/config.default.json'), 'utf8'));
    cfg.settings.rules.ssh.countries = { cn: 'instant', ru: 2, '*': 'never' };
    writeFileSync(path.join(dir, 'config.json'), JSON.stringify(cfg));
    const ok = runCli(['config', 'check', '--config', path.join(dir, 'config.json')]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, /countries CN instant, RU 2, \* never/, 'codes are upper-cased');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
