import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { openSqliteStore, StoreError, SCHEMA_VERSION } from '../src/store/sqlite-store.ts';

function inTmp(fn: (dir: string) => void): void {
  const dir = mkdtempSync(join(tmpdir(), 'tsfilter-bad-'));
  try {
    fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function assertStoreError(fn: () => unknown, path: string, what: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof StoreError, `expected a StoreError, got ${String(e)}`);
    assert.ok(e.message.includes(path), `message names the path: ${e.message}`);
    assert.match(e.message, what);
    assert.equal(e.path, path);
    return true;
  });
}

test('a text file given as the database is refused with an error naming the path, and left untouched', () => {
  inTmp((dir) => {
    const file = join(dir, 'config.json');
    const text = '{"settings": {"database": "sqlite"}}\n'.repeat(200);
    writeFileSync(file, text);
    assertStoreError(() => openSqliteStore(file), file, /not a SQLite database/);
    assertStoreError(() => openSqliteStore(file, { readonly: true }), file, /not a SQLite database/);
    assert.equal(readFileSync(file, 'utf8'), text);
  });
});

test('a SQLite file whose pages are damaged is reported as corrupt', () => {
  inTmp((dir) => {
    const file = join(dir, 'state.db');
    const store = openSqliteStore(file);
    store.transaction(() => {
      for (let i = 0; i < 2000; i++) {
        store.addBan({ ip: `10.0.${i >> 8}.${i & 255}`, rule: 'r', reason: 'x'.repeat(100), createdAt: 1, expiresAt: null, failures: 1, origin: 'local', server: 's' });
      }
    });
    store.close();
    const size = statSync(file).size;
    const fd = openSync(file, 'r+');
    const garbage = Buffer.alloc(8192, 0xa5);
    writeSync(fd, garbage, 0, garbage.length, Math.floor(size / 2 / 4096) * 4096); // page-aligned, mid-file
    closeSync(fd);
    assertStoreError(() => openSqliteStore(file), file, /corrupt/);
  });
});

test('a database from a newer TSFilter schema is refused with a clear message', () => {
  inTmp((dir) => {
    const file = join(dir, 'state.db');
    openSqliteStore(file).close();
    const db = new Database(file);
    db.pragma(`user_version = ${SCHEMA_VERSION + 1}`);
    db.close();
    assertStoreError(() => openSqliteStore(file), file, new RegExp(`schema version ${SCHEMA_VERSION + 1} is newer`));
  });
});

test("another application's SQLite file is refused", () => {
  inTmp((dir) => {
    const file = join(dir, 'other.db');
    const db = new Database(file);
    db.pragma('application_id = 1234');
    db.exec('CREATE TABLE t (x)');
    db.close();
    assertStoreError(() => openSqliteStore(file), file, /not a TSFilter or PyFilter database/);

    const file2 = join(dir, 'other2.db');
    const db2 = new Database(file2);
    db2.exec('CREATE TABLE bans (who TEXT)');
    db2.close();
    assertStoreError(() => openSqliteStore(file2), file2, /cannot upgrade schema from version 0 to 1: table bans already exists/);
  });
});

test('a missing directory or a missing file in read-only mode names the path', () => {
  inTmp((dir) => {
    const file = join(dir, 'no', 'such', 'dir', 'state.db');
    assertStoreError(() => openSqliteStore(file), file, /directory does not exist/);
    const file2 = join(dir, 'absent.db');
    assertStoreError(() => openSqliteStore(file2, { readonly: true }), file2, /cannot open/);
  });
});
