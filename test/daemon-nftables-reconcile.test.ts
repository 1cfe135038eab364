import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { NetnsLab, requireNetns } from './helpers/netns.ts';
import { sshConfig, until, editConfig } from './helpers/daemon.ts';
import { CLI, REPO, runCli } from './helpers/cli.ts';

test('nftables: manual bans reach the sets, a flushed ruleset or set is restored, an offline unban is applied at start, foreign elements stay', { timeout: 120_000 }, async (t) => {
  if (!requireNetns(t)) return;
  const lab = new NetnsLab('ctl-nft');
  const dir = mkdtempSync(path.join(tmpdir(), 'tsf-nftctl-'));
  try {
    const ns = lab.ns('s');
    const log = path.join(dir, 'auth.log');
    writeFileSync(log, '');
    const cfg = sshConfig(dir, log, { firewall: 'nftables' });
    editConfig(cfg, (c) => {
      c.settings.nftables = { check_interval: 1, verify_interval: 1 };
    });
    const cli = (...a: string[]) => runCli([...a, '--config', cfg]);
    const set = async (name: string) => (await lab.run(ns, ['nft', 'list', 'set', 'inet', 'tsfilter', name])).stdout;
    const start = () => {
      const p = lab.spawn(ns, [process.execPath, '--import', 'tsx', CLI, 'run', '--config', cfg]);
      let out = '';
      p.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
      return { p, out: () => out };
    };
    void REPO;

    let d = start();
    await until(() => /control socket listening/.test(d.out()), 20_000, 'daemon start');
    assert.equal(cli('ban', '198.51.100.7', '-d', '1h').code, 0);
    assert.equal(cli('ban', '2001:db8::7', '-d', 'permanent').code, 0);
    await lab.run(ns, ['nft', 'add', 'element', 'inet', 'tsfilter', 'banned4', '{ 203.0.113.99 }']);
    assert.match(await set('banned4'), /198\.51\.100\.7 timeout/);
    assert.match(await set('banned6'), /2001:db8::7/);

    // Flushed behind our back: back within seconds, every active ban included.
    await lab.run(ns, ['nft', 'flush', 'ruleset']);
    await until(() => /bans re-applied.*count=2/.test(d.out()), 15_000, 're-applied');
    assert.match(await set('banned4'), /198\.51\.100\.7/);
    assert.match(await set('banned6'), /2001:db8::7/);
    // Only the set's contents flushed (the table's structure is intact): put back by the periodic verification.
    const mark = d.out().length;
    await lab.run(ns, ['nft', 'flush', 'set', 'inet', 'tsfilter', 'banned4']);
    await until(() => /bans were missing from the firewall; put back/.test(d.out().slice(mark)), 15_000, 'verified');
    assert.match(await set('banned4'), /198\.51\.100\.7/);
    const st = JSON.parse(cli('status', '--json').stdout);
    assert.equal(st.enforcers[0].name, 'nftables');
    assert.equal(st.enforcers[0].ok, true);
    assert.ok(st.enforcers[0].repairs >= 1);

    // Stop (kernel bans stay), unban offline, add a foreign element, start: reconciled with the store.
    d.p.kill('SIGTERM');
    await new Promise((r) => d.p.once('exit', r));
    assert.match(await set('banned4'), /198\.51\.100\.7/, 'SIGTERM keeps the kernel bans');
    await lab.run(ns, ['nft', 'add', 'element', 'inet', 'tsfilter', 'banned4', '{ 203.0.113.99 }']);
    const r = cli('unban', '198.51.100.7');
    assert.match(r.stdout, /daemon not running.*when the daemon starts/);
    d = start();
    await until(() => /msg=started/.test(d.out()), 20_000, 'second start');
    assert.match(d.out(), /active_bans=1 removed_elements=1 foreign_elements=1/);
    const v4 = await set('banned4');
    assert.doesNotMatch(v4, /198\.51\.100\.7/);
    assert.match(v4, /203\.0\.113\.99/, 'a foreign element stays');
    assert.match(await set('banned6'), /2001:db8::7/);
  } finally {
    lab.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
});
