import { test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { DaemonProcess, sshConfig, until } from './helpers/daemon.ts';
import { failed } from './helpers/syslog.ts';
import { runCli } from './helpers/cli.ts';

function status(cfg: string): Record<string, any> {
  const r = runCli(['status', '--json', '--config', cfg]);
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout);
}

test('SIGHUP reloads the config: a new ignored range takes effect, counters and bans survive, a broken config is refused', { timeout: 120_000 }, async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'tsf-hup-'));
  const log = path.join(dir, 'auth.log');
  writeFileSync(log, '');
  const cfg = sshConfig(dir, log, { ignored_ips: ['127.0.0.1'] });
  const original = readFileSync(cfg, 'utf8');
  const d = new DaemonProcess(cfg);
  try {
    await d.waitFor(/msg="control socket listening"/);
    assert.equal(runCli(['ban', '198.51.100.99', '--config', cfg]).code, 0);
    const t = Date.now() - 30_000;
    // Three failures of the attacker and four of an address that is about to be ignored (5 in 600 s ban).
    for (let i = 0; i < 3; i++) appendFileSync(log, failed(t + i * 1000, '192.0.2.10'));
    for (let i = 0; i < 4; i++) appendFileSync(log, failed(t + i * 1000, '203.0.113.5'));
    await until(() => status(cfg).rules[0].matched === 7, 20_000, '7 matched lines');
    assert.equal(status(cfg).tracked_ips, 2);

    // New config: 203.0.113.0/24 is ignored.
    const c = JSON.parse(original);
    c.settings.ignored_ips = ['127.0.0.1', '203.0.113.0/24'];
    writeFileSync(cfg, JSON.stringify(c));
    d.child.kill('SIGHUP');
    await d.waitFor(/msg=reloaded /);
    const s = status(cfg);
    assert.equal(s.reloads, 1);
    assert.equal(s.tracked_ips, 2, 'counters survive the reload');
    assert.equal(s.rules[0].matched, 7, 'statistics survive the reload');

    // Two more failures each: the attacker reaches 5 and is banned; the newly ignored address is not.
    for (let i = 3; i < 5; i++) appendFileSync(log, failed(t + i * 1000, '203.0.113.5') + failed(t + i * 1000, '192.0.2.10'));
    await d.waitFor(/msg=banned ip=192\.0\.2\.10 rule=ssh failures=5/);
    await new Promise((r) => setTimeout(r, 300));
    assert.doesNotMatch(d.out, /msg=banned ip=203\.0\.113\.5/);
    const after = status(cfg);
    assert.equal(after.active_bans, 2, 'the manual ban and the new one');

    // A broken config: the error names the JSON path; the daemon keeps running on the previous config.
    const broken = JSON.parse(original);
    broken.settings.failed_attempts = 'many';
    writeFileSync(cfg, JSON.stringify(broken));
    d.child.kill('SIGHUP');
    await d.waitFor(/level=error msg="reload failed: invalid configuration; still running with the previous one" config=\S+config\.json problems=.*settings\.failed_attempts/);
    // Not JSON at all.
    writeFileSync(cfg, '{ "settings": ');
    d.child.kill('SIGHUP');
    await d.waitFor(/reload failed: invalid configuration.*problems="\(file\): .*JSON/);
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(d.child.exitCode, null, 'still running');
    // The CLI reads the config too (to find the socket): give it back the one the daemon runs on, without a SIGHUP.
    writeFileSync(cfg, JSON.stringify(c));
    const still = status(cfg);
    assert.equal(still.reloads, 1);
    // ...and still detecting, with the previous config's ignored range still in force.
    for (let i = 0; i < 5; i++) appendFileSync(log, failed(t + 10_000 + i * 1000, '192.0.2.11') + failed(t + 10_000 + i * 1000, '203.0.113.6'));
    await d.waitFor(/msg=banned ip=192\.0\.2\.11 /);
    await new Promise((r) => setTimeout(r, 300));
    assert.doesNotMatch(d.out, /msg=banned ip=203\.0\.113\.6/);
    assert.equal(await d.stop('SIGTERM'), 0, d.err);
  } finally {
    await d.stop('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
});
