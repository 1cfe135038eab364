import { test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { DaemonProcess, sshConfig, until } from './helpers/daemon.ts';
import { failed } from './helpers/syslog.ts';
import { runCli } from './helpers/cli.ts';

test('tsfilter status: uptime, sources and positions, lines per rule, tracked addresses, bans, enforcer health', { timeout: 120_000 }, async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'tsf-status-'));
  const log = path.join(dir, 'auth.log');
  writeFileSync(log, 'an unrelated line\n');
  const cfg = sshConfig(dir, log);
  const d = new DaemonProcess(cfg);
  try {
    await d.waitFor(/msg="control socket listening"/);
    const t = Date.now() - 10_000;
    for (let i = 0; i < 5; i++) appendFileSync(log, failed(t + i * 1000, '192.0.2.10'));
    appendFileSync(log, failed(t + 6000, '192.0.2.20'));
    await d.waitFor(/msg=banned ip=192\.0\.2\.10 /);
    let s: Record<string, any> = {};
    await until(() => {
      const r = runCli(['status', '--json', '--config', cfg]);
      assert.equal(r.code, 0, r.stderr);
      s = JSON.parse(r.stdout);
      return s.rules[0].lines === 7;
    }, 20_000, 'all 7 lines read');
    assert.equal(s.pid, d.child.pid);
    assert.ok(s.uptime_s >= 0 && Date.parse(s.started) <= Date.now());
    assert.deepEqual(s.rules, [{ name: 'ssh', lines: 7, matched: 6, successes: 0, repeats: 0, bans: 1 }]);
    assert.equal(s.active_bans, 1);
    assert.equal(s.tracked_ips, 1, 'the banned address is forgotten, the other one tracked');
    assert.equal(s.sources.length, 1);
    const src = s.sources[0];
    assert.equal(src.name, 'ssh:files');
    assert.equal(src.linesRead, 7);
    const size = (await import('node:fs')).statSync(log).size;
    assert.deepEqual(src.files.map((f: { path: string; offset: number }) => [f.path, f.offset]), [[log, size]]);
    assert.deepEqual(s.enforcers, [{ name: 'dry-run', ok: true, blocked: 1 }]);
    assert.equal(s.enforcement.pending_retries, 0);

    const text = runCli(['status', '--config', cfg]);
    assert.equal(text.code, 0);
    assert.match(text.stdout, new RegExp(`tsfilter running \\(pid ${d.child.pid}\\), up `));
    assert.match(text.stdout, /active bans: 1; tracked addresses: 1/);
    assert.match(text.stdout, /rule ssh: lines=7 matched=6 successes=0 bans=1/);
    assert.match(text.stdout, new RegExp(`source ssh:files: 7 lines read; ${log.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}@${size}`));
    assert.match(text.stdout, /enforcer dry-run: ok/);

    assert.equal(await d.stop(), 0);
    const off = runCli(['status', '--config', cfg]);
    assert.equal(off.code, 1);
    assert.match(off.stderr, /not running/);
    assert.equal(off.stdout, '');
  } finally {
    await d.stop('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
});
