import { test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { NetnsLab, requireNetns } from './helpers/netns.ts';
import { sshConfig, until, editConfig } from './helpers/daemon.ts';
import { failed } from './helpers/syslog.ts';
import { CLI, runCli } from './helpers/cli.ts';

test('daemon: a rule with ports bans only those ports, and three banned addresses of one /64 ban the /64 (nftables, in a namespace)', { timeout: 120_000 }, async (t) => {
  if (!requireNetns(t)) return;
  const lab = new NetnsLab('ports-subnet');
  const dir = mkdtempSync(path.join(tmpdir(), 'tsf-ports-subnet-'));
  try {
    const ns = lab.ns('s');
    const log = path.join(dir, 'auth.log');
    writeFileSync(log, '');
    const cfg = sshConfig(dir, log, {
      firewall: 'nftables',
      ignored_ips: ['127.0.0.1', '2001:db8:7::99'],
      subnet_bans: { enabled: true, ipv6_prefix: 64, threshold: 3, find_time: 600 },
    }, { ports: [22] });
    editConfig(cfg, (c) => {
      c.settings.nftables = { check_interval: 30 };
    });
    const p = lab.spawn(ns, [process.execPath, '--import', 'tsx', CLI, 'run', '--config', cfg]);
    let out = '';
    p.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
    await until(() => /msg=started/.test(out), 20_000, 'daemon start');
    const set = async (name: string) => (await lab.run(ns, ['nft', 'list', 'set', 'inet', 'tsfilter', name])).stdout;

    const now = Date.now();
    for (let i = 0; i < 5; i++) appendFileSync(log, failed(now + i, '192.0.2.70'));
    await until(() => /msg=banned ip=192\.0\.2\.70 /.test(out), 15_000, 'port-scoped ban');
    assert.match(await set('ports4'), /192\.0\.2\.70 \. tcp \. 22/, 'only tcp/22 is blocked for it');
    assert.doesNotMatch(await set('banned4'), /192\.0\.2\.70/, 'not a whole-address ban');
    const listed = runCli(['list', '--json', '--config', cfg]);
    assert.equal(JSON.parse(listed.stdout.trim().split('\n')[0]!).blocks, 'tcp:22');

    // Three addresses of 2001:db8:7::/64 banned: the /64 goes in, port-scoped like the rule.
    for (const host of ['2001:db8:7::1', '2001:db8:7::2', '2001:db8:7::3']) {
      for (let i = 0; i < 5; i++) appendFileSync(log, failed(now + i, host));
    }
    await until(() => /msg=banned ip=2001:db8:7::\/64 /.test(out), 15_000, 'subnet ban');
    assert.match(await set('netports6'), /2001:db8:7::\/64 \. tcp \. 22/);
    // The ignored address inside it passes ahead of every ban.
    assert.match(await set('allow6'), /2001:db8:7::99/);
    // A fourth address of the prefix is covered: no ban of its own.
    for (let i = 0; i < 5; i++) appendFileSync(log, failed(now + i, '2001:db8:7::4'));
    for (let i = 0; i < 5; i++) appendFileSync(log, failed(now + i, '192.0.2.71'));
    await until(() => /msg=banned ip=192\.0\.2\.71 /.test(out), 15_000, 'a later ban (everything before it was read)');
    assert.doesNotMatch(out, /msg=banned ip=2001:db8:7::4 /);

    // Manual prefix ban and unban through the control socket.
    const b = runCli(['ban', '198.51.100.0/24', '-d', '1h', '--config', cfg]);
    assert.equal(b.code, 0, b.stderr);
    assert.match(await set('net4'), /198\.51\.100\.0\/24/);
    const u = runCli(['unban', '198.51.100.0/24', '--config', cfg]);
    assert.equal(u.code, 0, u.stderr);
    assert.doesNotMatch(await set('net4'), /198\.51\.100\.0\/24/);
    p.kill('SIGTERM');
    await new Promise((r) => p.once('exit', r));
  } finally {
    lab.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
});
