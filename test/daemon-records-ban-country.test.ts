import { test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFileSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { sshConfig, withDaemonDir, editConfig } from './helpers/daemon.ts';
import { failed } from './helpers/syslog.ts';
import { runCli, SHARED } from './helpers/cli.ts';

function walk(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? walk(path.join(dir, e.name)) : [path.join(dir, e.name)]));
}

// Addresses from the MaxMind test database: only written into a log file, never contacted (dry-run enforcer).
test('with a GeoIP database, each ban records its country in the store, in list and in PyFilter\'s log sentence', () =>
  withDaemonDir('tsf-geo-', async ({ dir, log, start }) => {
    const cfg = sshConfig(dir, log, { geoip_database: path.join(SHARED, 'corpus/geoip/GeoLite2-Country-Test.mmdb') });
    editConfig(cfg, (c) => {
      c.logging = { active: true, directory: 'Logs' };
    });
    const d = start(cfg);
    await d.waitFor(/msg=started/);
    const t = Date.now();
    for (let i = 0; i < 5; i++) appendFileSync(log, failed(t + i, '81.2.69.142') + failed(t + i, '1.2.3.4'));
    await d.waitFor(/msg=banned ip=81\.2\.69\.142 /);
    await d.waitFor(/msg=banned ip=1\.2\.3\.4 /);
    const listed = runCli(['list', '--json', '--config', cfg]).stdout.trim().split('\n').map((l) => JSON.parse(l));
    assert.equal(listed.find((b) => b.ip === '81.2.69.142')?.country, 'United Kingdom');
    assert.equal(listed.find((b) => b.ip === '81.2.69.142')?.country_code, 'GB', 'the ISO code beside the name');
    assert.equal(listed.find((b) => b.ip === '1.2.3.4')?.country_code, null);
    assert.equal(listed.find((b) => b.ip === '1.2.3.4')?.country, null, 'an address the database does not know');
    await d.stop();
    const text = walk(path.join(dir, 'Logs')).map((f) => readFileSync(f, 'utf8')).join('');
    assert.match(text, /IP: 81\.2\.69\.142 has been blacklisted .* via ssh\. The IP was from United Kingdom\./);
    assert.match(text, /IP: 1\.2\.3\.4 has been blacklisted .* via ssh\. The IP was from unknown!/);
  }));

test('without a GeoIP database the country stays empty and the sentence is left out, as PyFilter does', () =>
  withDaemonDir('tsf-geo-', async ({ dir, log, start }) => {
    const cfg = sshConfig(dir, log, { geoip_database: path.join(dir, 'missing.mmdb') });
    const d = start(cfg);
    await d.waitFor(/msg=started/);
    assert.match(d.out, /GeoIP database unusable; running without countries/);
    const t = Date.now();
    for (let i = 0; i < 5; i++) appendFileSync(log, failed(t + i, '81.2.69.142'));
    await d.waitFor(/msg=banned ip=81\.2\.69\.142 /);
    const listed = runCli(['list', '--json', '--config', cfg]).stdout.trim().split('\n').map((l) => JSON.parse(l));
    assert.equal(listed[0].country, null);
    assert.doesNotMatch(listed[0].reason, /The IP was from/);
  }));

test('the daemon applies a rule\'s country policy: GB instantly, addresses without a country never; explain shows the code', () =>
  withDaemonDir('tsf-geo-', async ({ dir, log, start }) => {
    const cfg = sshConfig(dir, log, { geoip_database: path.join(SHARED, 'corpus/geoip/GeoLite2-Country-Test.mmdb') });
    editConfig(cfg, (c) => {
      c.settings.rules.ssh.countries = { GB: 'instant', SE: 2, unknown: 'never' };
    });
    const d = start(cfg);
    await d.waitFor(/msg=started/);
    const t = Date.now();
    let lines = '';
    for (let i = 0; i < 10; i++) lines += failed(t + i, '1.2.3.4');
    // 1.2.3.4 first: by the time GB's single failure is banned, all ten of its failures have been judged.
    appendFileSync(log, lines + failed(t + 20, '81.2.69.142') + failed(t + 21, '89.160.20.112') + failed(t + 22, '89.160.20.112'));
    await d.waitFor(/msg=banned ip=81\.2\.69\.142 /);
    await d.waitFor(/msg=banned ip=89\.160\.20\.112 /);
    const listed = runCli(['list', '--json', '--config', cfg]).stdout.trim().split('\n').map((l) => JSON.parse(l));
    assert.deepEqual(listed.map((b) => [b.ip, b.country_code, b.failures]).sort(), [['81.2.69.142', 'GB', 1], ['89.160.20.112', 'SE', 2]]);
    assert.match(listed.find((b) => b.ip === '89.160.20.112').reason, /Acquired 2 bad connections via ssh\. The IP was from Sweden\./, 'the threshold SE had');
    const ex = runCli(['explain', '81.2.69.142', '--config', cfg]);
    assert.equal(ex.code, 0, ex.stderr);
    assert.match(ex.stdout, /country GB \(United Kingdom\)/);
    assert.equal(JSON.parse(runCli(['explain', '81.2.69.142', '--json', '--config', cfg]).stdout).bans[0].country_code, 'GB');
  }));
