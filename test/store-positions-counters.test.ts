import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { openSqliteStore } from '../src/store/sqlite-store.ts';

function inTmp(fn: (file: string) => void): void {
  const dir = mkdtempSync(join(tmpdir(), 'tsfilter-pos-'));
  try {
    fn(join(dir, 'state.db'));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('positions round-trip, overwrite, and survive a reopen', () => {
  inTmp((file) => {
    let store = openSqliteStore(file);
    assert.equal(store.getPosition('/var/log/auth.log'), undefined);
    store.setPosition('/var/log/auth.log', { inode: 1234, offset: 10, fingerprint: 'abc' });
    store.setPosition('/var/log/auth.log', { inode: 1234, offset: 2 ** 40, fingerprint: 'abc' });
    store.setPosition('journal:sshd', { inode: 0, offset: 0, fingerprint: '', cursor: 's=1;i=2;b=3' });
    assert.deepEqual(store.getPosition('/var/log/auth.log'), { inode: 1234, offset: 2 ** 40, fingerprint: 'abc' });
    store.close();
    store = openSqliteStore(file);
    assert.deepEqual(store.getPosition('/var/log/auth.log'), { inode: 1234, offset: 2 ** 40, fingerprint: 'abc' });
    assert.deepEqual(store.getPosition('journal:sshd'), { inode: 0, offset: 0, fingerprint: '', cursor: 's=1;i=2;b=3' });
    store.setPosition('journal:sshd', { inode: 0, offset: 0, fingerprint: '' });
    assert.deepEqual(store.getPosition('journal:sshd'), { inode: 0, offset: 0, fingerprint: '' }, 'cursor cleared');
    store.close();
  });
});

test('saveCounters upserts and removes in one go; loadCounters returns what survives a reopen', () => {
  inTmp((file) => {
    let store = openSqliteStore(file);
    assert.deepEqual(store.loadCounters(), []);
    store.saveCounters(
      [
        { rule: 'sshd', ip: '192.0.2.1', state: '{"n":1}', updatedAt: 1000 },
        { rule: 'sshd', ip: '192.0.2.2', state: '{"n":2}', updatedAt: 2000 },
        { rule: 'nginx', ip: '192.0.2.1', state: '{"n":3}', updatedAt: 3000 },
      ],
      [],
    );
    store.saveCounters([{ rule: 'sshd', ip: '192.0.2.1', state: '{"n":4}', updatedAt: 4000 }], [{ rule: 'sshd', ip: '192.0.2.2' }]);
    store.saveCounters([], [{ rule: 'nope', ip: '192.0.2.9' }]);
    store.close();
    store = openSqliteStore(file);
    assert.deepEqual(store.loadCounters(), [
      { rule: 'nginx', ip: '192.0.2.1', state: '{"n":3}', updatedAt: 3000 },
      { rule: 'sshd', ip: '192.0.2.1', state: '{"n":4}', updatedAt: 4000 },
    ]);
    store.close();
  });
});

test('saveCounters is atomic: a failure part-way writes nothing, and bad input is refused before any write', () => {
  inTmp((file) => {
    const store = openSqliteStore(file);
    store.saveCounters([{ rule: 'sshd', ip: '192.0.2.1', state: 'a', updatedAt: 1 }], []);
    const raw = new Database(file);
    raw.exec("CREATE TRIGGER inject BEFORE INSERT ON counters WHEN NEW.ip = '192.0.2.66' BEGIN SELECT RAISE(ABORT, 'injected'); END");
    raw.close();
    assert.throws(() =>
      store.saveCounters(
        [{ rule: 'sshd', ip: '192.0.2.3', state: 'c', updatedAt: 3 }, { rule: 'sshd', ip: '192.0.2.66', state: 'x', updatedAt: 2 }],
        [{ rule: 'sshd', ip: '192.0.2.1' }],
      ), /injected/);
    assert.deepEqual(store.loadCounters().map((c) => c.ip), ['192.0.2.1']);
    const bad = { rule: 'sshd', ip: '192.0.2.2', state: null as unknown as string, updatedAt: 2 };
    assert.throws(() => store.saveCounters([bad], [{ rule: 'sshd', ip: '192.0.2.1' }]), TypeError);
    assert.deepEqual(store.loadCounters().map((c) => c.ip), ['192.0.2.1']);
    store.close();
  });
});

test('a batch of positions, counters and a ban commits together in one transaction', () => {
  inTmp((file) => {
    let store = openSqliteStore(file);
    store.transaction(() => {
      for (let i = 0; i < 1000; i++) store.setPosition(`/var/log/f${i % 10}.log`, { inode: i, offset: i * 100, fingerprint: 'x' });
      store.saveCounters([{ rule: 'sshd', ip: '192.0.2.1', state: '{}', updatedAt: 5 }], []);
      store.addBan({ ip: '192.0.2.1', rule: 'sshd', reason: 'r', createdAt: 1, expiresAt: null, failures: 6, origin: 'local', server: 's' });
    });
    store.close();
    store = openSqliteStore(file);
    assert.deepEqual(store.getPosition('/var/log/f9.log'), { inode: 999, offset: 99_900, fingerprint: 'x' });
    assert.equal(store.loadCounters().length, 1);
    assert.ok(store.activeBan('192.0.2.1', 2));
    store.close();
  });
});
