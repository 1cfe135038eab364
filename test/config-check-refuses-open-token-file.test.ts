import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { REPO, runCli } from './helpers/cli.ts';

test('config check refuses an api token file others can read, as the daemon would at start, and accepts it at 0600', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'tsf-token-'));
  try {
    const tok = path.join(dir, 'api.token');
    writeFileSync(tok, 'an-example-token-0123456789\n');
    chmodSync(tok, 0o644);
    const cfg = JSON.parse(readFileSync(path.join(REPO, 'config/config.default.json'), 'utf8'));
    cfg.api = { token_file: tok };
    const file = path.join(dir, 'config.json');
    writeFileSync(file, JSON.stringify(cfg));
    const bad = runCli(['config', 'check', '--config', file]);
    assert.equal(bad.code, 2, bad.stdout);
    assert.match(bad.stderr, /api\.token_file: .*api\.token: permissions 0644 are too open; .*chmod 600/);
    chmodSync(tok, 0o600);
    const ok = runCli(['config', 'check', '--config', file]);
    assert.equal(ok.code, 0, ok.stderr);
    rmSync(tok);
    const missing = runCli(['config', 'check', '--config', file]);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /api\.token_file: /);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
