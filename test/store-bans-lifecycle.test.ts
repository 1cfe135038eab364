import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path, { join } from 'node:path';
import { openSqliteStore, SCHEMA_VERSION, type SqliteStore } from '../src/store/sqlite-store.ts';
import type { BanRecord } from '../src/store/types.ts';
import Database from 'better-sqlite3';

const T0 = 1_700_000_000_000;
const HOUR = 3_600_000;

function withStore(fn: (store: SqliteStore, file: string) => void): void {
  const dir = mkdtempSync(join(tmpdir(), 'tsfilter-store-'));
  const file = join(dir, 'state.db');
  const store = openSqliteStore(file);
  try {
    fn(store, file);
  } finally {
    store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

function ban(ip: string, createdAt: number, expiresAt: number | null, extra: Partial<BanRecord> = {}): Omit<BanRecord, 'banCount'> {
  return {
    ip, rule: 'sshd', reason: `failed logins from ${ip}`, createdAt, expiresAt, failures: 6, origin: 'local',
    server: 'node-a', ...extra,
  };
}

test('addBan stores a ban that is active until it expires, with all its fields', () => {
  withStore((store) => {
    const r = store.addBan(ban('192.0.2.1', T0, T0 + HOUR, { country: 'France', lines: ['a "quoted" line', 'line 2'] }));
    assert.equal(r.added, true);
    assert.deepEqual(r.record, {
      ip: '192.0.2.1', rule: 'sshd', reason: 'failed logins from 192.0.2.1', createdAt: T0, expiresAt: T0 + HOUR,
      failures: 6, banCount: 1, origin: 'local', server: 'node-a', country: 'France', lines: ['a "quoted" line', 'line 2'],
    });
    assert.deepEqual(store.activeBan('192.0.2.1', T0 + 1), r.record);
    assert.equal(store.activeBan('192.0.2.1', T0 + HOUR), undefined, 'not active at its expiry instant');
    assert.equal(store.activeBan('192.0.2.2', T0), undefined);
    assert.deepEqual(store.activeBans(T0 + 1), [r.record]);
    assert.deepEqual(store.activeBans(T0 + HOUR), []);
  });
});

test('a second ban of an address is refused while the first is active and the existing one is returned', () => {
  withStore((store) => {
    const first = store.addBan(ban('192.0.2.1', T0, T0 + HOUR));
    const second = store.addBan(ban('192.0.2.1', T0 + 1000, T0 + 2 * HOUR, { rule: 'nginx', reason: 'other' }));
    assert.equal(second.added, false);
    assert.deepEqual(second.record, first.record);
    assert.equal(store.history('192.0.2.1').length, 1);
    assert.equal(store.activeBans(T0 + 1000).length, 1);
  });
});

test('expireBans marks due bans once, returns them, and leaves unexpired and permanent bans alone', () => {
  withStore((store) => {
    store.addBan(ban('192.0.2.1', T0, T0 + HOUR));
    store.addBan(ban('192.0.2.2', T0, T0 + 2 * HOUR));
    store.addBan(ban('192.0.2.3', T0, null));
    assert.deepEqual(store.expireBans(T0 + HOUR - 1), []);
    const expired = store.expireBans(T0 + HOUR);
    assert.deepEqual(expired.map((b) => b.ip), ['192.0.2.1']);
    assert.deepEqual(store.expireBans(T0 + HOUR), [], 'already marked');
    const h = store.history('192.0.2.1');
    assert.equal(h[0]!.endReason, 'expired');
    assert.equal(h[0]!.endedAt, T0 + HOUR);
    assert.deepEqual(store.activeBans(T0 + HOUR).map((b) => b.ip).sort(), ['192.0.2.2', '192.0.2.3']);
    assert.deepEqual(store.expireBans(T0 + 1000 * HOUR).map((b) => b.ip), ['192.0.2.2']);
    assert.deepEqual(store.activeBans(T0 + 1000 * HOUR).map((b) => b.ip), ['192.0.2.3']);
  });
});

test('re-banning after expiry is allowed and increments ban_count', () => {
  withStore((store) => {
    assert.equal(store.addBan(ban('192.0.2.1', T0, T0 + HOUR)).record.banCount, 1);
    store.expireBans(T0 + HOUR);
    const again = store.addBan(ban('192.0.2.1', T0 + 2 * HOUR, T0 + 4 * HOUR));
    assert.equal(again.added, true);
    assert.equal(again.record.banCount, 2);
    assert.equal(store.activeBan('192.0.2.1', T0 + 2 * HOUR)!.banCount, 2);
    assert.equal(store.addBan(ban('192.0.2.9', T0, null)).record.banCount, 1, 'counted per address');
  });
});

test('re-banning an expired ban that expireBans has not marked yet ends the old one, so expireBans never returns it', () => {
  withStore((store) => {
    store.addBan(ban('192.0.2.1', T0, T0 + HOUR));
    const again = store.addBan(ban('192.0.2.1', T0 + 2 * HOUR, T0 + 10 * HOUR));
    assert.equal(again.added, true);
    assert.equal(again.record.banCount, 2);
    assert.deepEqual(store.expireBans(T0 + 3 * HOUR), []);
    assert.equal(store.history('192.0.2.1')[0]!.endReason, 'expired');
    assert.ok(store.activeBan('192.0.2.1', T0 + 3 * HOUR));
  });
});

test('removeBan ends the active ban early with its reason and reports whether there was one', () => {
  withStore((store) => {
    store.addBan(ban('192.0.2.1', T0, T0 + HOUR));
    assert.equal(store.removeBan('192.0.2.1', T0 + 10, 'unbanned by admin'), true);
    assert.equal(store.activeBan('192.0.2.1', T0 + 20), undefined);
    assert.equal(store.removeBan('192.0.2.1', T0 + 30, 'again'), false);
    assert.equal(store.removeBan('198.51.100.7', T0, 'never banned'), false);
    assert.deepEqual(store.expireBans(T0 + 2 * HOUR), [], 'a removed ban does not expire later');
    const [h] = store.history('192.0.2.1');
    assert.equal(h!.endReason, 'unbanned by admin');
    assert.equal(h!.endedAt, T0 + 10);
    assert.equal(store.addBan(ban('192.0.2.1', T0 + 40, null)).added, true, 'can be banned again at once');
  });
});

test('history keeps every ban of an address, oldest first, across expiry, removal and reopen', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsfilter-store-'));
  const file = join(dir, 'state.db');
  try {
    let store = openSqliteStore(file);
    store.addBan(ban('2001:db8::1', T0, T0 + HOUR, { rule: 'r1' }));
    store.expireBans(T0 + HOUR);
    store.addBan(ban('2001:db8::1', T0 + 2 * HOUR, null, { rule: 'r2', origin: 'manual' }));
    store.removeBan('2001:db8::1', T0 + 3 * HOUR, 'manual');
    store.addBan(ban('2001:db8::1', T0 + 4 * HOUR, null, { rule: 'r3', origin: 'remote', server: 'node-b' }));
    store.close();
    store = openSqliteStore(file);
    const h = store.history('2001:db8::1');
    assert.deepEqual(h.map((b) => [b.rule, b.banCount, b.origin, b.endReason]), [
      ['r1', 1, 'local', 'expired'],
      ['r2', 2, 'manual', 'manual'],
      ['r3', 3, 'remote', null],
    ]);
    assert.equal(store.activeBan('2001:db8::1', T0 + 100 * HOUR)!.server, 'node-b');
    store.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('permanent bans (expiresAt null) stay active at any time and are never expired', () => {
  withStore((store) => {
    const r = store.addBan(ban('192.0.2.5', T0, null));
    assert.equal(r.record.expiresAt, null);
    const far = T0 + 100 * 365 * 24 * HOUR;
    assert.deepEqual(store.expireBans(far), []);
    assert.deepEqual(store.activeBan('192.0.2.5', far), r.record);
    assert.equal(store.addBan(ban('192.0.2.5', far, far + HOUR)).added, false);
  });
});

test('transaction() commits bans, positions and counters together, nests, and rolls back on throw', () => {
  withStore((store) => {
    assert.throws(() =>
      store.transaction(() => {
        store.addBan(ban('192.0.2.1', T0, null));
        store.setPosition('/var/log/auth.log', { inode: 1, offset: 10, fingerprint: 'f' });
        throw new Error('boom');
      }), /boom/);
    assert.equal(store.activeBan('192.0.2.1', T0), undefined);
    assert.equal(store.getPosition('/var/log/auth.log'), undefined);

    const n = store.transaction(() => {
      store.addBan(ban('192.0.2.2', T0, null));
      try {
        store.transaction(() => {
          store.addBan(ban('192.0.2.3', T0, null));
          throw new Error('inner');
        });
      } catch { /* inner savepoint rolled back only */ }
      store.saveCounters([{ rule: 'sshd', ip: '192.0.2.4', state: '{"n":1}', updatedAt: T0 }], []);
      return 42;
    });
    assert.equal(n, 42);
    assert.ok(store.activeBan('192.0.2.2', T0));
    assert.equal(store.activeBan('192.0.2.3', T0), undefined);
    assert.equal(store.loadCounters().length, 1);
  });
});

test('the store works in memory for replay', () => {
  const store = openSqliteStore(':memory:');
  store.addBan(ban('192.0.2.1', T0, null));
  assert.equal(store.activeBans(T0).length, 1);
  store.close();
  store.close();
  assert.throws(() => store.activeBans(T0), /closed/);
});

test('bad arguments are rejected without writing', () => {
  withStore((store) => {
    assert.throws(() => store.addBan(ban('', T0, null)), TypeError);
    assert.throws(() => store.addBan(ban('192.0.2.1', Number.NaN, null)), TypeError);
    assert.equal(store.activeBans(T0).length, 0);
  });
});

test('a ban whose second write fails leaves nothing behind, alone or inside a transaction whose caller swallowed the error', () => {
  withStore((store, file) => {
    // Make the bans insert fail after the banned_ip mirror row has been written.
    const raw = new Database(file);
    raw.exec("CREATE TRIGGER inject BEFORE INSERT ON bans WHEN NEW.ip = '192.0.2.66' BEGIN SELECT RAISE(ABORT, 'injected'); END");
    raw.close();
    const mirrorRows = (): number => {
      const db = new Database(file, { readonly: true });
      const n = (db.prepare('SELECT count(*) AS n FROM banned_ip').get() as { n: number }).n;
      db.close();
      return n;
    };

    assert.throws(() => store.addBan(ban('192.0.2.66', T0, null)), /injected/);
    assert.equal(mirrorRows(), 0);

    assert.throws(
      () =>
        store.transaction(() => {
          store.addBan(ban('192.0.2.1', T0, null));
          try {
            store.addBan(ban('192.0.2.66', T0, null));
          } catch { /* the caller carries on */ }
          store.addBan(ban('192.0.2.2', T0, null));
        }),
      /failed part-way inside this transaction; all of it was rolled back/,
    );
    assert.deepEqual(store.activeBans(T0), []);
    assert.equal(mirrorRows(), 0);

    // A failure inside a nested transaction() is undone by its savepoint, so the outer one may commit.
    store.transaction(() => {
      store.addBan(ban('192.0.2.1', T0, null));
      try {
        store.transaction(() => store.addBan(ban('192.0.2.66', T0, null)));
      } catch { /* rolled back to the savepoint */ }
    });
    assert.deepEqual(store.activeBans(T0).map((b) => b.ip), ['192.0.2.1']);
    assert.equal(mirrorRows(), 1);
  });
});

test('a store from before country codes (schema 3) upgrades in place: old bans keep their name, new ones store the ISO code', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'tsf-store-v3-'));
  const file = path.join(dir, 'PyFilter.db');
  try {
    const s1 = openSqliteStore(file);
    s1.addBan({ ip: '192.0.2.5', rule: 'ssh', reason: 'r', createdAt: 1000, expiresAt: null, failures: 5, origin: 'local', server: 's', country: 'France' });
    s1.close();
    const raw = new Database(file);
    raw.exec('ALTER TABLE bans DROP COLUMN country_code; DROP INDEX bans_created; DROP INDEX bans_ended');
    raw.pragma('user_version = 3');
    raw.close();
    const s2 = openSqliteStore(file);
    const old = s2.activeBan('192.0.2.5', 2000)!;
    assert.equal(old.country, 'France');
    assert.equal(old.countryCode, undefined);
    s2.addBan({ ip: '192.0.2.6', rule: 'ssh', reason: 'r', createdAt: 1000, expiresAt: null, failures: 5, origin: 'local', server: 's', country: 'United Kingdom', countryCode: 'GB' });
    assert.throws(
      () => s2.addBan({ ip: '192.0.2.7', rule: 'ssh', reason: 'r', createdAt: 1000, expiresAt: null, failures: 5, origin: 'local', server: 's', countryCode: 'gbr' }),
      /countryCode must be an ISO 3166-1 alpha-2 code/,
    );
    s2.close();
    const s3 = openSqliteStore(file, { readonly: true });
    assert.equal(s3.activeBan('192.0.2.6', 2000)?.countryCode, 'GB');
    assert.equal(s3.activeBans(2000).find((b) => b.ip === '192.0.2.6')?.countryCode, 'GB');
    assert.equal(s3.history('192.0.2.6')[0]?.countryCode, 'GB');
    s3.close();
    const check = new Database(file, { readonly: true });
    assert.equal(check.pragma('user_version', { simple: true }), SCHEMA_VERSION);
    check.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('times outside 1970 to the year 9999 are refused without writing: every view can render what the store holds', async () => {
  const { MAX_TIME_MS } = await import('../src/store/sqlite-store.ts');
  assert.equal(new Date(MAX_TIME_MS).toISOString(), '9999-12-31T23:59:59.999Z');
  withStore((store, file) => {
    for (const [createdAt, expiresAt] of [[1e16, null], [T0, 1e16], [-1, null], [T0, MAX_TIME_MS + 1], [T0, Number.POSITIVE_INFINITY]] as [number, number | null][]) {
      assert.throws(() => store.addBan(ban('192.0.2.9', createdAt, expiresAt)), (e: Error) => e instanceof TypeError && /store: ban (createdAt|expiresAt) must be/.test(e.message), `${createdAt} ${expiresAt}`);
    }
    assert.throws(() => store.saveCounters([{ rule: 'sshd', ip: '192.0.2.9', state: '{}', updatedAt: 1e17 }], []), /counter updatedAt must be from 0 to/);
    assert.equal(store.history('192.0.2.9').length, 0);
    const raw = new Database(file, { readonly: true });
    try {
      assert.equal(raw.prepare('SELECT count(*) FROM banned_ip').pluck().get(), 0, 'no mirror row either');
    } finally {
      raw.close();
    }
    // The edges themselves are times.
    assert.equal(store.addBan(ban('192.0.2.10', T0, MAX_TIME_MS)).added, true);
  });
});
