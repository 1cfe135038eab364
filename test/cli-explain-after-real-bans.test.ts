import { test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFileSync } from 'node:fs';
import path from 'node:path';
import { sshConfig, withDaemonDir, editConfig } from './helpers/daemon.ts';
import { failed } from './helpers/syslog.ts';
import { runCli, SHARED } from './helpers/cli.ts';

// 81.2.69.142 is in the MaxMind test database (GB); it is only written into a log file, never contacted.
test('explain tells the story of an address: each ban, the lines that counted, escalation, country, origin and node', () =>
  withDaemonDir('tsf-explain-', async ({ dir, log, start }) => {
    const cfg = sshConfig(dir, log, { geoip_database: path.join(SHARED, 'corpus/geoip/GeoLite2-Country-Test.mmdb'), ban_time: 600, ban_time_factor: 2 });
    editConfig(cfg, (c) => {
      c.redis = { sync_bans: { name: 'web-1' } };
    });
    const d = start(cfg);
    await d.waitFor(/msg=started/);
    const ip = '81.2.69.142';
    const t = Date.now();
    for (let i = 0; i < 5; i++) appendFileSync(log, failed(t + i, ip, `user${i}`));
    await d.waitFor(/msg=banned ip=81\.2\.69\.142 /);
    assert.equal(runCli(['unban', ip, '--config', cfg]).code, 0);
    for (let i = 0; i < 5; i++) appendFileSync(log, failed(t + 100 + i, ip, `again${i}`));
    await d.waitFor(/msg=banned ip=81\.2\.69\.142 .*ban_count=2/);

    const j = runCli(['explain', ip, '--json', '--config', cfg]);
    assert.equal(j.code, 0, j.stderr);
    const r = JSON.parse(j.stdout);
    assert.equal(r.bans.length, 2);
    const [first, second] = r.bans;
    assert.equal(first.active, false);
    assert.match(first.end_reason, /unban/);
    assert.equal(first.duration_s, 600);
    assert.equal(second.active, true);
    assert.equal(second.duration_s, 1200, 'ban_time_factor 2 doubled the second ban');
    assert.equal(second.ban_count, 2);
    assert.equal(second.rule, 'ssh');
    assert.equal(second.origin, 'local');
    assert.equal(second.node, 'web-1');
    assert.equal(second.country, 'United Kingdom');
    assert.equal(second.lines.length, 5);
    assert.ok(second.lines.every((l: string) => l.includes(ip) && /again\d/.test(l)), 'the lines that earned the second ban');

    const text = runCli(['explain', ip, '--config', cfg]);
    assert.match(text.stdout, /ban 2 of 81\.2\.69\.142: ACTIVE/);
    assert.match(text.stdout, /escalation: 600 s -> 1200 s/);
    assert.match(text.stdout, /\| .*Failed password for again0 from 81\.2\.69\.142/);

    const never = runCli(['explain', '192.0.2.99', '--config', cfg]);
    assert.equal(never.code, 0);
    assert.match(never.stdout, /192\.0\.2\.99 has never been banned/);
    const bad = runCli(['explain', 'not-an-ip', '--config', cfg]);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /not an IP address/);
  }));
