import { test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFileSync } from 'node:fs';
import net from 'node:net';
import { sshConfig, withDaemonDir, editConfig } from './helpers/daemon.ts';
import { failed } from './helpers/syslog.ts';
import { runCli } from './helpers/cli.ts';

function listen(server: net.Server, port = 0): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve((server.address() as net.AddressInfo).port));
  });
}

test('a taken API port does not stop the protection: the daemon bans without the API, says why, and starts it once the port is free', () =>
  withDaemonDir('tsf-apiport-', async ({ dir, log, start }) => {
    // Anyone on the host may hold the port first (it is unprivileged).
    const squatter = net.createServer((s) => s.destroy());
    const port = await listen(squatter);
    let squatting = true;
    try {
      const cfg = sshConfig(dir, log);
      editConfig(cfg, (c) => {
        c.api = { listen: `127.0.0.1:${port}` };
      });
      const d = start(cfg);
      await d.waitFor(/msg="api: cannot start; protection goes on without it, retrying" .*already in use/);
      await d.waitFor(/msg=started/);
      const t = Date.now();
      for (let i = 0; i < 5; i++) appendFileSync(log, failed(t + i, '192.0.2.61'));
      await d.waitFor(/msg=banned ip=192\.0\.2\.61 /);
      const st = JSON.parse(runCli(['status', '--json', '--config', cfg]).stdout) as { api: { url: string | null; error: string | null } };
      assert.equal(st.api.url, null);
      assert.match(st.api.error ?? '', /already in use/);

      await new Promise<void>((r) => squatter.close(() => r()));
      squatting = false;
      await d.waitFor(/msg="api: listening"/, 30_000);
      const r = await fetch(`http://127.0.0.1:${port}/api/status`);
      assert.equal(r.status, 200);
      assert.equal(((await r.json()) as { api: { error: string | null } }).api.error, null);
    } finally {
      if (squatting) squatter.close();
    }
  }));
