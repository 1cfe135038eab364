import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { openSqliteStore } from '../src/store/sqlite-store.ts';

// Exactly what PyFilter executes (Python's sqlite3 module, default rollback journal).
const PYFILTER_CREATE =
  'CREATE TABLE IF NOT EXISTS banned_ip(id INTEGER PRIMARY KEY, ip text, time_banned integer, server_name text, log_msg text, country text)';
const PYFILTER_INSERT = 'INSERT INTO banned_ip(ip, time_banned, server_name, log_msg, country) VALUES (?, ?, ?, ?, ?)';

interface Row { id: number; ip: string; time_banned: number; server_name: string; log_msg: string; country: string | null }

const T0 = 1_700_000_000_000;

function makePyFilterDb(dir: string, rows: [string, number, string, string | null][]): string {
  const file = join(dir, 'PyFilter.db');
  const db = new Database(file);
  db.exec(PYFILTER_CREATE);
  const ins = db.prepare(PYFILTER_INSERT);
  for (const [ip, t, msg, country] of rows) ins.run(ip, t, 'Server-1', msg, country);
  db.close();
  return file;
}

function rawRows(file: string): Row[] {
  const db = new Database(file, { readonly: true });
  try {
    return db.prepare('SELECT * FROM banned_ip ORDER BY id').all() as Row[];
  } finally {
    db.close();
  }
}

function rawInsert(file: string, ip: string, msg: string): void {
  const db = new Database(file);
  db.prepare(PYFILTER_INSERT).run(ip, 1_700_000_500, 'Server-1', msg, null);
  db.close();
}

function inTmp(fn: (dir: string) => void): void {
  const dir = mkdtempSync(join(tmpdir(), 'tsfilter-pyf-'));
  try {
    fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const MSG1 = 'IP: 203.0.113.5 has been blacklisted and the firewall rules have been updated. Acquired 5 bad connections via ssh.';
const MSG2 = 'IP: 2001:db8::7 has been blacklisted and the firewall rules have been updated. Acquired an instant ban via nginx.';

test("a PyFilter.db's rows open as active permanent bans of origin 'pyfilter'", () => {
  inTmp((dir) => {
    const file = makePyFilterDb(dir, [
      ['203.0.113.5', 1_600_000_000, MSG1, 'China'],
      ['2001:db8::7', 1_600_000_100, MSG2, null],
    ]);
    const store = openSqliteStore(file);
    const far = T0 + 10 * 365 * 86_400_000;
    assert.deepEqual(store.activeBan('203.0.113.5', far), {
      ip: '203.0.113.5', rule: 'pyfilter', reason: MSG1, createdAt: 1_600_000_000_000, expiresAt: null, failures: 0,
      banCount: 1, origin: 'pyfilter', server: 'Server-1', country: 'China',
    });
    assert.deepEqual(store.activeBans(far).map((b) => b.ip), ['203.0.113.5', '2001:db8::7']);
    assert.deepEqual(store.expireBans(far), []);
    assert.equal(store.addBan({
      ip: '203.0.113.5', rule: 'sshd', reason: 'x', createdAt: T0, expiresAt: null, failures: 6, origin: 'local', server: 'n',
    }).added, false, 'PyFilter checks the table before banning; so do we');
    store.close();
    // PyFilter's table is left exactly as it was defined.
    const db = new Database(file, { readonly: true });
    const sql = (db.prepare("SELECT sql FROM sqlite_master WHERE name = 'banned_ip'").get() as { sql: string }).sql;
    db.close();
    assert.equal(`${sql}`.replace(/^CREATE TABLE banned_ip/, 'CREATE TABLE IF NOT EXISTS banned_ip'), PYFILTER_CREATE);
    assert.equal(rawRows(file).length, 2);
  });
});

test('our new bans appear in banned_ip the way PyFilter writes them, and leave it on unban and on expiry', () => {
  inTmp((dir) => {
    const file = makePyFilterDb(dir, [['203.0.113.5', 1_600_000_000, MSG1, null]]);
    const store = openSqliteStore(file);
    store.addBan({
      ip: '198.51.100.9', rule: 'sshd', reason: 'Acquired 5 bad connections via sshd.', createdAt: T0 + 999, expiresAt: T0 + 3_600_000,
      failures: 6, origin: 'local', server: 'Server-1', country: 'Germany',
    });
    store.addBan({
      ip: '198.51.100.10', rule: 'sshd', reason: 'r', createdAt: T0, expiresAt: null, failures: 6, origin: 'local', server: '',
    });
    // Visible to another connection (PyFilter-Admin) while the store is open: it is committed.
    assert.deepEqual(rawRows(file).map((r) => [r.ip, r.time_banned, r.server_name, r.log_msg, r.country]), [
      ['203.0.113.5', 1_600_000_000, 'Server-1', MSG1, null],
      ['198.51.100.9', 1_700_000_000, 'Server-1', 'Acquired 5 bad connections via sshd.', 'Germany'],
      ['198.51.100.10', 1_700_000_000, 'Server-1', 'r', null],
    ]);
    assert.equal(store.removeBan('198.51.100.10', T0 + 5, 'manual'), true);
    assert.deepEqual(rawRows(file).map((r) => r.ip), ['203.0.113.5', '198.51.100.9']);
    assert.deepEqual(store.expireBans(T0 + 3_600_000).map((b) => b.ip), ['198.51.100.9']);
    assert.deepEqual(rawRows(file).map((r) => r.ip), ['203.0.113.5']);
    store.close();
  });
});

test('unbanning a legacy ban deletes its row, and reopening neither resurrects nor duplicates it', () => {
  inTmp((dir) => {
    const file = makePyFilterDb(dir, [
      ['203.0.113.5', 1_600_000_000, MSG1, null],
      ['203.0.113.6', 1_600_000_001, MSG1, null],
    ]);
    let store = openSqliteStore(file);
    assert.equal(store.removeBan('203.0.113.5', T0, 'manual'), true);
    assert.deepEqual(rawRows(file).map((r) => r.ip), ['203.0.113.6']);
    store.close();
    for (let i = 0; i < 2; i++) {
      store = openSqliteStore(file);
      assert.equal(store.activeBan('203.0.113.5', T0 + 1), undefined);
      assert.ok(store.activeBan('203.0.113.6', T0 + 1));
      assert.equal(store.history('203.0.113.5').length, 1, 'history kept, not re-imported');
      assert.equal(store.history('203.0.113.6').length, 1, 'imported once');
      store.close();
    }
  });
});

test('rows another PyFilter tool adds or deletes while we are stopped are picked up at the next open', () => {
  inTmp((dir) => {
    const file = makePyFilterDb(dir, [['203.0.113.5', 1_600_000_000, MSG1, null]]);
    let store = openSqliteStore(file);
    store.addBan({ ip: '198.51.100.1', rule: 'sshd', reason: 'r', createdAt: T0, expiresAt: null, failures: 6, origin: 'local', server: 'S' });
    store.close();

    rawInsert(file, '192.0.2.77', 'added by PyFilter');
    const db = new Database(file);
    db.prepare('DELETE FROM banned_ip WHERE ip = ?').run('198.51.100.1'); // PyFilter-Admin unban
    db.close();

    store = openSqliteStore(file);
    assert.equal(store.activeBan('192.0.2.77', T0)!.reason, 'added by PyFilter');
    assert.equal(store.activeBan('198.51.100.1', T0), undefined);
    assert.equal(store.history('198.51.100.1')[0]!.endReason, 'removed from banned_ip');
    store.close();
  });
});

test('a banned_ip id reused after our delete is still recognised as a new legacy row', () => {
  inTmp((dir) => {
    const file = makePyFilterDb(dir, []);
    let store = openSqliteStore(file);
    store.addBan({ ip: '198.51.100.1', rule: 'sshd', reason: 'r', createdAt: T0, expiresAt: null, failures: 6, origin: 'local', server: 'S' });
    const ourId = rawRows(file)[0]!.id;
    store.removeBan('198.51.100.1', T0 + 1, 'manual');
    store.close();
    rawInsert(file, '192.0.2.88', 'external');
    assert.equal(rawRows(file)[0]!.id, ourId, 'SQLite reused the id');
    store = openSqliteStore(file);
    assert.ok(store.activeBan('192.0.2.88', T0));
    assert.equal(store.activeBan('198.51.100.1', T0), undefined);
    store.close();
  });
});

test('duplicate PyFilter rows for one address give one active ban, and one unban clears them all', () => {
  inTmp((dir) => {
    const file = makePyFilterDb(dir, [
      ['203.0.113.5', 1_600_000_000, 'first', null],
      ['203.0.113.5', 1_600_000_500, 'second', null],
    ]);
    const store = openSqliteStore(file);
    assert.equal(store.activeBans(T0).length, 1);
    assert.equal(store.activeBan('203.0.113.5', T0)!.reason, 'first');
    assert.deepEqual(store.history('203.0.113.5').map((b) => b.banCount), [1, 2]);
    assert.equal(store.removeBan('203.0.113.5', T0, 'manual'), true);
    assert.equal(store.activeBan('203.0.113.5', T0), undefined);
    assert.deepEqual(rawRows(file), []);
    store.close();
  });
});

test('a read-only open of a PyFilter.db that was never upgraded explains itself; after an upgrade it works', () => {
  inTmp((dir) => {
    const file = makePyFilterDb(dir, [['203.0.113.5', 1_600_000_000, MSG1, null]]);
    assert.throws(() => openSqliteStore(file, { readonly: true }), (e: Error) =>
      e.message.includes(file) && /schema version 0 needs upgrading/.test(e.message));
    openSqliteStore(file).close();
    const ro = openSqliteStore(file, { readonly: true });
    assert.ok(ro.activeBan('203.0.113.5', T0));
    assert.throws(() => ro.removeBan('203.0.113.5', T0, 'x'), (e: Error) => e.message.includes(file) && /read-only/.test(e.message));
    ro.close();
  });
});
