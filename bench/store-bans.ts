// Store benchmark: 100,000 bans added in one transaction, read back as active bans, file size; plus the cost of a
// committed (fsynced) ban outside a transaction, and of reopening a big store (migration check, banned_ip sync,
// quick_check). Run: node --import tsx bench/store-bans.ts [dir]   (dir: where to put the file; default: tmpdir;
// use a real disk, tmpfs makes fsync free).
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { openSqliteStore } from '../src/store/sqlite-store.ts';
import { emitResult } from './lib/result.ts';

export interface StoreBansBenchResult {
  bans: number;
  addMs: number;
  readActiveMs: number;
  activeCount: number;
  fileBytes: number;
  reopenMs: number;
  committedBanMs: number;
}

function ms(t0: bigint): number {
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

function size(file: string): number {
  let n = 0;
  for (const f of [file, `${file}-wal`, `${file}-shm`]) {
    try {
      n += statSync(f).size;
    } catch {
      /* absent */
    }
  }
  return n;
}

export function runStoreBansBench(n = 100_000, baseDir = tmpdir()): StoreBansBenchResult {
  const dir = mkdtempSync(join(baseDir, 'tsfilter-bench-'));
  const file = join(dir, 'PyFilter.db');
  try {
    let store = openSqliteStore(file);
    const now = Date.now();
    const lines = ['Jan  1 00:00:00 host sshd[123]: Failed password for root from 10.0.0.1 port 22 ssh2'];
    let t = process.hrtime.bigint();
    store.transaction(() => {
      for (let i = 0; i < n; i++) {
        const ip = `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`;
        store.addBan({
          ip, rule: 'sshd', reason: `Acquired 5 bad connections via sshd.`, createdAt: now, expiresAt: i % 4 ? now + 86_400_000 : null,
          failures: 6, origin: 'local', server: 'Server-1', country: null, lines,
        });
      }
    });
    const addMs = ms(t);

    t = process.hrtime.bigint();
    const active = store.activeBans(now + 1);
    const readActiveMs = ms(t);

    // Committed one by one, each an fsynced transaction (what a ban outside a batch costs).
    const k = 200;
    t = process.hrtime.bigint();
    for (let i = 0; i < k; i++) {
      store.addBan({ ip: `172.16.${i >> 8}.${i & 255}`, rule: 'sshd', reason: 'r', createdAt: now, expiresAt: null, failures: 6, origin: 'local', server: 'Server-1' });
    }
    const committedBanMs = ms(t) / k;
    store.close();
    const fileBytes = size(file);

    t = process.hrtime.bigint();
    store = openSqliteStore(file);
    const reopenMs = ms(t);
    store.close();
    return { bans: n, addMs, readActiveMs, activeCount: active.length, fileBytes, reopenMs, committedBanMs };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const r = runStoreBansBench(100_000, process.argv[2] ?? tmpdir());
  console.log(`store: add ${r.bans} bans in one transaction: ${r.addMs.toFixed(0)} ms (${((r.bans / r.addMs) * 1000).toFixed(0)} bans/s)`);
  console.log(`store: read them back with activeBans(): ${r.readActiveMs.toFixed(0)} ms (${r.activeCount} active)`);
  console.log(`store: file size after close: ${(r.fileBytes / 1024 / 1024).toFixed(1)} MiB (${r.fileBytes} bytes)`);
  console.log(`store: reopen (schema check, banned_ip sync, quick_check): ${r.reopenMs.toFixed(0)} ms`);
  console.log(`store: one committed addBan outside a transaction: ${r.committedBanMs.toFixed(2)} ms`);
  emitResult('store-bans', {
    bans: r.bans,
    add_ms: +r.addMs.toFixed(1),
    read_active_ms: +r.readActiveMs.toFixed(1),
    active: r.activeCount,
    file_bytes: r.fileBytes,
    reopen_ms: +r.reopenMs.toFixed(1),
    committed_ban_ms: +r.committedBanMs.toFixed(3),
  });
}
