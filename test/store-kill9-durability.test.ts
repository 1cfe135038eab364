import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { openSqliteStore } from '../src/store/sqlite-store.ts';

const CHILD = fileURLToPath(new URL('./fixtures/store-kill9-child.ts', import.meta.url));

/** Runs the child until it has printed `after` addresses (plus a random delay), SIGKILLs it, returns what it printed. */
function runAndKill(file: string, prefix: string, after: number, delayMs: number): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', CHILD, file, prefix], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    let count = 0;
    let killing = false;
    child.stdout.setEncoding('utf8');
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (d: string) => (err += d));
    child.stdout.on('data', (d: string) => {
      out += d;
      for (const ch of d) if (ch === '\n') count++;
      // `count` includes the child's "ready" line: kill only once more than `after` addresses were printed.
      if (!killing && count > after + 1) {
        killing = true;
        setTimeout(() => child.kill('SIGKILL'), delayMs);
      }
    });
    child.on('error', reject);
    child.on('close', (code, signal) => {
      if (signal !== 'SIGKILL') return reject(new Error(`child ended with code ${code} signal ${signal}: ${err}`));
      // Only complete lines count: a line cut by the kill was not fully printed.
      const lines = out.split('\n').slice(0, -1).filter((l) => l !== 'ready');
      resolve(lines);
    });
  });
}

test('every ban the child reported as added survives SIGKILL, and the file stays intact', { timeout: 120_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsfilter-kill9-'));
  const file = join(dir, 'PyFilter.db');
  try {
    const all: string[] = [];
    for (let round = 0; round < 5; round++) {
      const after = 20 + Math.floor(Math.random() * 300);
      const delay = Math.floor(Math.random() * 40);
      const printed = await runAndKill(file, `10.${round}`, after, delay);
      assert.ok(printed.length > after, `round ${round}: child printed ${printed.length}`);
      all.push(...printed);

      const raw = new Database(file);
      assert.equal(raw.pragma('integrity_check', { simple: true }), 'ok');
      raw.close();

      const store = openSqliteStore(file);
      const now = Date.now();
      const active = new Set(store.activeBans(now).map((b) => b.ip));
      const missing = all.filter((ip) => !active.has(ip));
      assert.deepEqual(missing, [], `round ${round}: bans lost after kill -9`);
      for (const ip of printed.slice(-3)) assert.equal(store.history(ip).length, 1);
      store.close();

      const check = new Database(file, { readonly: true });
      const mirrored = (check.prepare("SELECT count(*) AS n FROM banned_ip WHERE server_name = 'kill9'").get() as { n: number }).n;
      assert.ok(mirrored >= all.length, 'every reported ban is mirrored into banned_ip');
      assert.equal(check.pragma('integrity_check', { simple: true }), 'ok');
      check.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
