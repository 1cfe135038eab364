import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GeoIp, countryOf, findDatabase, PYFILTER_DATABASE, type Country } from '../src/geo/geoip.ts';
import type { Logger } from '../src/util/logger.ts';
import { SHARED } from './helpers/cli.ts';

const GEO = join(SHARED, 'corpus/geoip');
const db = (name: string) => join(GEO, name);

interface Entry {
  level: string;
  msg: string;
  fields: Record<string, unknown>;
}

function recorder(): Logger & { entries: Entry[]; warnings: () => Entry[] } {
  const entries: Entry[] = [];
  const rec = (level: string) => (msg: string, fields: Record<string, unknown> = {}) => void entries.push({ level, msg, fields });
  return {
    entries,
    warnings: () => entries.filter((e) => e.level === 'warn' || e.level === 'error'),
    debug: rec('debug'),
    info: rec('info'),
    warn: rec('warn'),
    error: rec('error'),
  };
}

/** The expected answer for an IP, read from the JSON source the MaxMind test databases were built from. */
function fromSource(jsonFile: string, key: string): Country {
  const entries = JSON.parse(readFileSync(db(jsonFile), 'utf8')) as Record<string, { country?: { iso_code: string; names: { en: string } } }>[];
  for (const e of entries) {
    const rec = e[key];
    if (rec?.country) return { iso: rec.country.iso_code, name: rec.country.names.en };
  }
  throw new Error(`${key} not in ${jsonFile}`);
}

const GB = fromSource('GeoLite2-Country-Test.json', '81.2.69.142/31');
const JP = fromSource('GeoLite2-Country-Test.json', '2001:218::/32');

test('the expected answers really are GB and JP in the source data', () => {
  assert.deepEqual(GB, { iso: 'GB', name: 'United Kingdom' });
  assert.deepEqual(JP, { iso: 'JP', name: 'Japan' });
  assert.deepEqual(fromSource('GeoIP2-Country-Test.json', '2001:218::/32'), JP);
});

for (const file of ['GeoLite2-Country-Test.mmdb', 'GeoIP2-Country-Test.mmdb', 'GeoIP2-City-Test.mmdb', 'GeoLite2-City-Test.mmdb']) {
  test(`country lookups through ${file}`, async () => {
    const log = recorder();
    const g = await GeoIp.open(db(file), log);
    try {
      assert.equal(g.databaseType, file.replace('-Test.mmdb', ''));
      assert.deepEqual(g.lookup('81.2.69.142'), GB);
      assert.deepEqual(g.lookup('2001:218::1'), JP);
      assert.deepEqual(g.lookup('2001:0218:0000::0001'), JP, 'non-canonical IPv6 text');
      assert.deepEqual(g.lookup('::ffff:81.2.69.142'), GB, 'IPv4-mapped IPv6 is the IPv4 address');
      assert.equal(g.lookup('1.2.3.4'), null);
      assert.equal(g.lookup('2a02:d500::1'), null, 'a record with a continent but no country');
      for (const junk of ['81.2.69.142/31', '2001:218::/32', 'not-an-ip', '', '81.2.69', '081.2.69.142', '1.2.3.4 ']) {
        assert.equal(g.lookup(junk), null, JSON.stringify(junk));
      }
      assert.deepEqual(log.warnings(), []);
    } finally {
      g.close();
    }
  });
}

test('registered_country is the fallback when a record has no country', () => {
  const reg = { iso_code: 'US', names: { en: 'United States', de: 'USA' } };
  assert.deepEqual(countryOf({ registered_country: reg }), { iso: 'US', name: 'United States' });
  assert.deepEqual(countryOf({ country: { iso_code: 'GB', names: { en: 'United Kingdom' } }, registered_country: reg }), GB);
  assert.deepEqual(countryOf({ country: { iso_code: 'FR', names: {} } }), { iso: 'FR', name: 'FR' }, 'no English name');
  assert.equal(countryOf({ continent: { code: 'EU' } }), null);
  assert.equal(countryOf({ country: { iso_code: 'gb\n' } }), null, 'a malformed code from the file is not trusted');
  assert.equal(countryOf(null), null);
  assert.equal(countryOf('GB'), null);
});

function scratch(): string {
  return mkdtempSync(join(tmpdir(), 'tsfilter-geoip-'));
}

test('a missing, unreadable or corrupt database is one clear warning and null lookups', async () => {
  const dir = scratch();
  try {
    const truncated = join(dir, 'truncated.mmdb');
    const full = readFileSync(db('GeoLite2-Country-Test.mmdb'));
    writeFileSync(truncated, full.subarray(0, full.length >> 1));
    const random = join(dir, 'random.mmdb');
    writeFileSync(random, randomBytes(64 * 1024));
    const directory = join(dir, 'a-directory.mmdb');
    mkdirSync(directory);
    const cases: [string, RegExp][] = [
      [join(dir, 'missing.mmdb'), /file not found/],
      [directory, /is a directory/],
      [random, /not a valid MaxMind database/],
      [truncated, /not a valid MaxMind database/],
    ];
    for (const [path, why] of cases) {
      const log = recorder();
      const g = await GeoIp.open(path, log, { pollMs: 20 });
      try {
        assert.equal(g.lookup('81.2.69.142'), null);
        assert.equal(g.lookup('2001:218::1'), null);
        assert.equal(g.databaseType, null);
        // Let the poller run a few times: an unchanged bad file must not repeat the warning.
        await new Promise((r) => setTimeout(r, 120));
        const w = log.warnings();
        assert.equal(w.length, 1, `${path}: ${JSON.stringify(w)}`);
        assert.match(w[0]!.msg, /GeoIP.*without countries/);
        assert.equal(w[0]!.fields.path, path);
        assert.match(String(w[0]!.fields.reason), why);
      } finally {
        g.close();
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

/** Resolves on the next (re)load attempt; a reload that never comes fails the test instead of hanging it. */
function loadWaiter() {
  const waiting: ((r: { ok: boolean }) => void)[] = [];
  return {
    onLoad: (r: { ok: boolean }) => waiting.shift()?.(r),
    next: () =>
      new Promise<{ ok: boolean }>((resolve, reject) => {
        const t = setTimeout(() => reject(new Error('no reload within 5 s')), 5000);
        waiting.push((r) => {
          clearTimeout(t);
          resolve(r);
        });
      }),
  };
}

/** How geoipupdate replaces a database: write beside it, then rename over it. */
function replaceByRename(target: string, source: string | Buffer): void {
  const tmp = `${target}.tmp`;
  if (typeof source === 'string') copyFileSync(source, tmp);
  else writeFileSync(tmp, source);
  renameSync(tmp, target);
}

test('a replaced database is reloaded without a restart; a corrupt replacement keeps the old one', async () => {
  const dir = scratch();
  const path = join(dir, 'GeoLite2-Country.mmdb');
  copyFileSync(db('GeoLite2-ASN-Test.mmdb'), path);
  const log = recorder();
  const w = loadWaiter();
  const g = await GeoIp.open(path, log, { pollMs: 25, onLoad: w.onLoad });
  try {
    assert.equal(g.databaseType, 'GeoLite2-ASN');
    assert.equal(g.lookup('81.2.69.142'), null, 'an ASN database has no countries');

    let next = w.next();
    replaceByRename(path, db('GeoLite2-Country-Test.mmdb'));
    assert.equal((await next).ok, true);
    assert.equal(g.databaseType, 'GeoLite2-Country');
    assert.deepEqual(g.lookup('81.2.69.142'), GB);

    // Rewritten in place (same inode), as `cp new.mmdb GeoLite2-Country.mmdb` does.
    next = w.next();
    copyFileSync(db('GeoIP2-City-Test.mmdb'), path);
    assert.equal((await next).ok, true);
    assert.equal(g.databaseType, 'GeoIP2-City');
    assert.deepEqual(g.lookup('2001:218::1'), JP);

    next = w.next();
    replaceByRename(path, randomBytes(32 * 1024));
    assert.equal((await next).ok, false);
    assert.equal(g.databaseType, 'GeoIP2-City', 'the previous database stays loaded');
    assert.deepEqual(g.lookup('81.2.69.142'), GB);
    assert.deepEqual(g.lookup('2001:218::1'), JP);
    const warnings = log.warnings();
    assert.equal(warnings.length, 1, JSON.stringify(warnings));
    assert.match(warnings[0]!.msg, /keeping the previous one/);
    assert.equal(warnings[0]!.fields.path, path);

    // A good file after the corrupt one is picked up again.
    next = w.next();
    replaceByRename(path, db('GeoLite2-ASN-Test.mmdb'));
    assert.equal((await next).ok, true);
    assert.equal(g.lookup('81.2.69.142'), null);
    assert.equal(log.warnings().length, 1);
  } finally {
    g.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a database that appears after start is loaded', async () => {
  const dir = scratch();
  const path = join(dir, 'GeoLite2-Country.mmdb');
  const log = recorder();
  const w = loadWaiter();
  const g = await GeoIp.open(path, log, { pollMs: 25, onLoad: w.onLoad });
  try {
    assert.equal(g.lookup('81.2.69.142'), null);
    const next = w.next();
    replaceByRename(path, db('GeoLite2-Country-Test.mmdb'));
    assert.equal((await next).ok, true);
    assert.deepEqual(g.lookup('81.2.69.142'), GB);
    assert.equal(log.warnings().length, 1, 'only the initial "missing" warning');
  } finally {
    g.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('findDatabase: the configured path, else PyFilter\'s file in the working directory, else none', () => {
  const dir = scratch();
  try {
    assert.equal(findDatabase(null, dir), null);
    assert.equal(findDatabase('', dir), null);
    assert.equal(findDatabase('/etc/tsfilter/geo.mmdb', dir), '/etc/tsfilter/geo.mmdb', 'reported even when missing');
    assert.equal(findDatabase('geo/x.mmdb', dir), join(dir, 'geo/x.mmdb'));
    mkdirSync(join(dir, 'sub', PYFILTER_DATABASE), { recursive: true });
    assert.equal(findDatabase(null, join(dir, 'sub')), null, 'a directory with that name is not a database');
    copyFileSync(db('GeoLite2-Country-Test.mmdb'), join(dir, PYFILTER_DATABASE));
    assert.equal(findDatabase(null, dir), join(dir, PYFILTER_DATABASE));
    assert.equal(findDatabase('/other.mmdb', dir), '/other.mmdb', 'the configured path wins');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
