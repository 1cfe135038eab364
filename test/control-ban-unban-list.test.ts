import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { DaemonProcess, sshConfig } from './helpers/daemon.ts';
import { jsonLines, runCli } from './helpers/cli.ts';
import { openSqliteStore } from '../src/store/sqlite-store.ts';
import { parseDuration } from '../src/api/protocol.ts';

test('--duration parsing: seconds, units, permanent; zero, negative and junk are refused', () => {
  assert.equal(parseDuration('3600'), 3600);
  assert.equal(parseDuration('30s'), 30);
  assert.equal(parseDuration('10m'), 600);
  assert.equal(parseDuration('12h'), 43_200);
  assert.equal(parseDuration('7d'), 604_800);
  assert.equal(parseDuration('2w'), 1_209_600);
  assert.equal(parseDuration('permanent'), null);
  for (const bad of ['0', '0s', '-5', '1.5h', '10x', '', 'h', '99999999999d']) assert.throws(() => parseDuration(bad), /invalid duration/, bad);
});

test('ban, list and unban act on the running daemon; ignored and loopback addresses are refused with exit code 2', { timeout: 120_000 }, async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'tsf-control-'));
  const log = path.join(dir, 'auth.log');
  writeFileSync(log, '');
  const cfg = sshConfig(dir, log, { ignored_ips: ['192.0.2.0/24'] });
  const cli = (...args: string[]) => runCli([...args, '--config', cfg]);
  const d = new DaemonProcess(cfg);
  try {
    await d.waitFor(/msg="control socket listening"/);

    // A ban with a duration: enforced at once (the dry-run enforcer logs it) and stored with origin manual.
    const before = Date.now();
    let r = cli('ban', '198.51.100.7', '--duration', '10m', '--reason', 'port scan');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^banned 198\.51\.100\.7 until /);
    await d.waitFor(/msg="dry-run: would block" ip=198\.51\.100\.7 rule=manual/);

    // Default duration: ban_time (3600 s) for a first ban; permanent; IPv6 in non-canonical form is normalised.
    assert.equal(cli('ban', '198.51.100.8').code, 0);
    assert.equal(cli('ban', '2001:DB8:0:0::9', '-d', 'permanent').code, 0);
    await d.waitFor(/would block" ip=2001:db8::9 /);

    r = cli('list', '--json');
    assert.equal(r.code, 0, r.stderr);
    const bans = jsonLines(r.stdout);
    assert.deepEqual(bans.map((b) => b.ip).sort(), ['198.51.100.7', '198.51.100.8', '2001:db8::9']);
    const b7 = bans.find((b) => b.ip === '198.51.100.7')!;
    assert.equal(b7.origin, 'manual');
    assert.equal(b7.reason, 'port scan');
    assert.equal(b7.ban_count, 1);
    const exp = Date.parse(b7.expires as string) - Date.parse(b7.since as string);
    assert.equal(exp, 600_000, 'a 10m ban lasts 600 s');
    assert.ok(Date.parse(b7.since as string) >= before - 1000);
    const b8 = bans.find((b) => b.ip === '198.51.100.8')!;
    assert.equal(Date.parse(b8.expires as string) - Date.parse(b8.since as string), 3_600_000, 'default: ban_time');
    assert.equal(bans.find((b) => b.ip === '2001:db8::9')!.expires, null);

    r = cli('list');
    assert.equal(r.code, 0);
    assert.match(r.stdout, /198\.51\.100\.7\s+manual\s+all\s+manual\s+\S+\s+\S+\s+\S+\s+1\s+-\s+port scan/);
    assert.match(r.stdout, /2001:db8::9 .* permanent /);

    // Refusals: an ignored range (named), loopback, not an IP, a bad duration — all exit 2, nothing stored.
    r = cli('ban', '192.0.2.10');
    assert.equal(r.code, 2, r.stdout + r.stderr);
    assert.match(r.stderr, /192\.0\.2\.10 is in ignored_ips \(192\.0\.2\.0\/24\)/);
    r = cli('ban', '127.0.0.1');
    assert.equal(r.code, 2);
    assert.match(r.stderr, /127\.0\.0\.1 is a loopback address/);
    r = cli('ban', '::1');
    assert.equal(r.code, 2);
    r = cli('ban', '10.0.0.300');
    assert.equal(r.code, 2);
    assert.match(r.stderr, /not an IP address/);
    r = cli('ban', '198.51.100.50', '--duration', '5 parsecs');
    assert.equal(r.code, 2);
    assert.match(r.stderr, /invalid duration/);
    r = cli('unban', 'nonsense');
    assert.equal(r.code, 2);

    // Unban one: gone from the firewall and the list.
    r = cli('unban', '198.51.100.7');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /unbanned 198\.51\.100\.7/);
    await d.waitFor(/would unblock" ip=198\.51\.100\.7/);
    r = cli('unban', '198.51.100.7');
    assert.equal(r.code, 0);
    assert.match(r.stdout, /was not banned/);

    // A second ban of the same address escalates (ban_time_factor 2 in the default config).
    r = cli('ban', '198.51.100.7');
    assert.equal(r.code, 0);
    const again = jsonLines(cli('list', '--json').stdout).find((b) => b.ip === '198.51.100.7')!;
    assert.equal(again.ban_count, 2);
    assert.equal(Date.parse(again.expires as string) - Date.parse(again.since as string), 7_200_000);

    // unban --all
    r = cli('unban', '--all');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /unbanned 3 address/);
    assert.equal(cli('list', '--json').stdout.trim(), '');
    await d.waitFor(/would unblock" ip=2001:db8::9/);
    assert.equal(cli('unban').code, 2, 'unban needs an address or --all');

    assert.equal(await d.stop('SIGTERM'), 0, d.err);
    const store = openSqliteStore(path.join(dir, 'tsfilter.db'));
    try {
      assert.equal(store.activeBans(Date.now()).length, 0);
      assert.equal(store.history('192.0.2.10').length, 0, 'a refused ban is not stored');
      assert.deepEqual(store.history('198.51.100.7').map((h) => h.endReason), ['unbanned with tsfilter unban', 'unbanned with tsfilter unban --all']);
    } finally {
      store.close();
    }
  } finally {
    await d.stop('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
});

test('every control command has --help with an example', () => {
  for (const cmd of ['ban', 'unban', 'list', 'status']) {
    const r = runCli([cmd, '--help']);
    assert.equal(r.code, 0, cmd);
    assert.match(r.stdout, /Example/, cmd);
    assert.match(r.stdout, /--config/, cmd);
  }
});
