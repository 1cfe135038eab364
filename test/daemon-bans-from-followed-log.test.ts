import { test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFileSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { sshConfig, withDaemonDir, editConfig } from './helpers/daemon.ts';
import { accepted, failed } from './helpers/syslog.ts';
import { openSqliteStore } from '../src/store/sqlite-store.ts';

test('the daemon follows a log, bans the attacker, and never the ignored range or the user who got in', () =>
  withDaemonDir('tsf-daemon-', async ({ dir, log, start }) => {
    const cfg = sshConfig(dir, log, { ignored_ips: ['127.0.0.1', '198.51.100.0/24', '2001:db8:ffff::/48'] });
    const d = start(cfg);
    await d.waitFor(/msg=started/);
    const t = Date.now() - 60_000;
    // Attacker: four failures are not enough with failed_attempts 5 in a window...
    for (let i = 0; i < 4; i++) appendFileSync(log, failed(t + i * 1000, '192.0.2.10'));
    // ...an ignored IPv4 range and IPv6 range fail many times...
    for (let i = 0; i < 12; i++) appendFileSync(log, failed(t + i * 500, '198.51.100.77') + failed(t + i * 500, '2001:db8:ffff::5'));
    // ...and a user mistypes four times, gets in, then mistypes twice more.
    for (let i = 0; i < 4; i++) appendFileSync(log, failed(t + i * 1000, '203.0.113.5', 'alice'));
    appendFileSync(log, accepted(t + 5000, '203.0.113.5'));
    for (let i = 0; i < 2; i++) appendFileSync(log, failed(t + 6000 + i * 1000, '203.0.113.5', 'alice'));
    appendFileSync(log, failed(t + 9000, '192.0.2.10'));
    await d.waitFor(/msg=banned ip=192\.0\.2\.10 /);
    // Give the daemon time to process everything else that was written before the fifth failure.
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(d.count(/msg=banned /), 1, d.out);
    assert.equal(await d.stop('SIGTERM'), 0, d.err);
    const store = openSqliteStore(path.join(dir, 'tsfilter.db'));
    try {
      assert.deepEqual(store.activeBans(Date.now()).map((b) => b.ip), ['192.0.2.10']);
      const [ban] = store.activeBans(Date.now());
      assert.equal(ban!.rule, 'ssh');
      assert.equal(ban!.failures, 5);
      assert.ok(ban!.expiresAt! > Date.now(), 'the default config bans for a limited time');
    } finally {
      store.close();
    }
  }));

test("with logging.active the ban goes into PyFilter's Logs/<YYYY-Mon>/<YYYY-MM-DD>/<YYYY-MM-DD HH>.log layout", () =>
  withDaemonDir('tsf-daemon-', async ({ dir, log, start }) => {
    const cfg = sshConfig(dir, log, {}, {});
    editConfig(cfg, (c) => {
      c.logging = { active: true, directory: 'Logs' };
    });
    const d = start(cfg);
    await d.waitFor(/msg=started/);
    const t = Date.now();
    for (let i = 0; i < 5; i++) appendFileSync(log, failed(t + i, '192.0.2.44'));
    await d.waitFor(/msg=banned ip=192\.0\.2\.44 /);
    await d.stop();
    const now = new Date();
    const months = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
    const ymd = `${now.getUTCFullYear()}-${String(now.getUTCMonth() + 1).padStart(2, '0')}-${String(now.getUTCDate()).padStart(2, '0')}`;
    const monthDir = path.join(dir, 'Logs', `${now.getUTCFullYear()}-${months[now.getUTCMonth()]}`, ymd);
    const files = readdirSync(monthDir);
    assert.equal(files.length, 1);
    assert.match(files[0]!, new RegExp(`^${ymd} \\d\\d\\.log$`));
    const text = readFileSync(path.join(monthDir, files[0]!), 'utf8');
    assert.match(
      text,
      /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d IP: 192\.0\.2\.44 has been blacklisted and the firewall rules have been updated\. Acquired 5 bad connections via ssh\.\n$/,
    );
  }));
