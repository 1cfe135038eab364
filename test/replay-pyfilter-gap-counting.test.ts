import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { jsonLines, REPO, runCli, SHARED } from './helpers/cli.ts';
import { failed, sshLine } from './helpers/syslog.ts';

const PYFILTER_CONFIG = path.join(SHARED, 'reference/pyfilter/config.default.json');

test("PyFilter's config counts as PyFilter does: six failures each within 5 s ban; slower ones never add up", () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'tsf-gap-'));
  try {
    const t = Date.now() - 3600_000;
    let log = '';
    for (let i = 0; i < 6; i++) log += failed(t + i * 2000, '192.0.2.1'); // bans on the 6th
    for (let i = 0; i < 5; i++) log += failed(t + i * 2000, '192.0.2.2'); // 5: no ban
    for (let i = 0; i < 12; i++) log += failed(t + i * 10_000, '192.0.2.3'); // 10 s apart: count stays 0
    // A slow start then a quick burst: the count never resets, so 1 quick + ... PyFilter bans on the 5th increment.
    log += failed(t, '192.0.2.4') + failed(t + 60_000, '192.0.2.4');
    for (let i = 1; i <= 5; i++) log += failed(t + 60_000 + i * 1000, '192.0.2.4');
    log += sshLine(t + 100, 'error: maximum authentication attempts exceeded for root from 192.0.2.5 port 22 ssh2 [preauth]');
    const f = path.join(dir, 'auth.log');
    writeFileSync(f, log);
    const r = runCli(['replay', '--json', '--config', PYFILTER_CONFIG, f]);
    assert.equal(r.code, 0, r.stderr);
    const out = jsonLines(r.stdout);
    const bans = new Map(out.slice(0, -1).map((b) => [b.ip as string, b]));
    assert.deepEqual([...bans.keys()].sort(), ['192.0.2.1', '192.0.2.4', '192.0.2.5']);
    assert.equal(bans.get('192.0.2.1')!.failures, 6);
    assert.equal(Date.parse(bans.get('192.0.2.1')!.time as string), Math.floor((t + 5 * 2000) / 1000) * 1000, 'banned at the 6th failure');
    assert.equal(bans.get('192.0.2.5')!.failures, 1, 'an instant ban');
    assert.deepEqual(out.at(-1), { summary: { lines: 6 + 5 + 12 + 7 + 1, matched: 6 + 5 + 12 + 7 + 1, bans: 3 } });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('per-rule failed_attempts / find_time / ban_time override the global settings', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'tsf-rule-'));
  try {
    const cfg = JSON.parse(readFileSync(path.join(REPO, 'config/config.default.json'), 'utf8'));
    // Globally: 5 failures within 600 s. The ssh rule: 2 failures within 10 s, banned for 60 s.
    cfg.settings.rules.ssh = { ...cfg.settings.rules.ssh, failed_attempts: 2, find_time: 10, ban_time: 60 };
    const file = path.join(dir, 'config.json');
    writeFileSync(file, JSON.stringify(cfg));
    const t = Date.now() - 3600_000;
    // 192.0.2.1: two failures 5 s apart (ban); 192.0.2.2: two failures 20 s apart (outside the rule's 10 s).
    // 192.0.2.1 again 120 s later: its 60 s ban is over, so two more failures ban it again.
    const log =
      failed(t, '192.0.2.1') + failed(t + 5000, '192.0.2.1') +
      failed(t, '192.0.2.2') + failed(t + 20_000, '192.0.2.2') +
      failed(t + 120_000, '192.0.2.1') + failed(t + 121_000, '192.0.2.1');
    writeFileSync(path.join(dir, 'auth.log'), log);
    const r = runCli(['replay', '--json', '--config', file, path.join(dir, 'auth.log')]);
    assert.equal(r.code, 0, r.stderr);
    const bans = jsonLines(r.stdout).slice(0, -1);
    assert.deepEqual(bans.map((b) => [b.ip, b.failures]), [['192.0.2.1', 2], ['192.0.2.1', 2]]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
