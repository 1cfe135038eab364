import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { runCli } from './helpers/cli.ts';
import { sshConfig } from './helpers/daemon.ts';
import { loadConfigFile } from '../src/config/load.ts';
import { openSqliteStore } from '../src/store/sqlite-store.ts';

// What a terminal would act on: ESC (colours, titles, clearing the screen), C1 CSI, BEL, bidi overrides.
const HOSTILE = '\u001b]0;PWNED\u0007\u001b[2J\u009b31m\u202e';
const RAW = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/;

test('tsfilter test, explain and list never print log text that could drive the terminal', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'tsf-escape-'));
  try {
    // tsfilter test: an unreadable time capture ends up in the "arrival time" reason.
    const log = path.join(dir, 'auth.log');
    writeFileSync(log, `t${HOSTILE} login failure from 192.0.2.9\n`);
    const t = runCli(['test', '--pattern', '^(?<time>\\S+) login failure from (?<host>\\S+)$', log]);
    assert.equal(t.code, 0, t.stderr);
    assert.match(t.stdout, /arrival time: /);
    assert.doesNotMatch(t.stdout, RAW, 'tsfilter test output');
    assert.match(t.stdout, /\\u001b\]0;PWNED/);

    // explain and list (offline, from the store): a ban whose reason and evidence lines hold the same text.
    const cfg = sshConfig(dir, log);
    const config = loadConfigFile(cfg);
    const store = openSqliteStore(config.sqlitePath, { server: 'a' });
    store.addBan({
      ip: '192.0.2.9', rule: 'ssh', reason: `from another node ${HOSTILE}`, createdAt: Date.now(), expiresAt: null,
      failures: 1, origin: 'remote', server: 'a', lines: [`Failed password for ${HOSTILE} from 192.0.2.9`],
    });
    store.close();
    const ex = runCli(['explain', '192.0.2.9', '--config', cfg]);
    assert.equal(ex.code, 0, ex.stderr);
    assert.match(ex.stdout, /Failed password for \\u001b/);
    assert.doesNotMatch(ex.stdout, RAW, 'explain output');
    const list = runCli(['list', '--config', cfg]);
    assert.equal(list.code, 0, list.stderr);
    assert.match(list.stdout, /from another node \\u001b/);
    assert.doesNotMatch(list.stdout, RAW, 'list output');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
