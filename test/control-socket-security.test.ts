import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { DaemonProcess, sshConfig } from './helpers/daemon.ts';
import { runCli } from './helpers/cli.ts';

/** Sends raw bytes and collects every response line until the daemon closes the connection (or `ms`). */
function exchange(sock: string, payload: string | Buffer, ms = 5000): Promise<Record<string, unknown>[]> {
  return new Promise((resolve, reject) => {
    const c = net.createConnection(sock);
    let buf = '';
    const t = setTimeout(() => {
      c.destroy();
      reject(new Error(`no close within ${ms} ms; got ${JSON.stringify(buf)}`));
    }, ms);
    c.on('connect', () => c.end(payload));
    c.setEncoding('utf8');
    c.on('data', (d: string) => (buf += d));
    c.on('error', () => {});
    c.on('close', () => {
      clearTimeout(t);
      resolve(buf.split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as Record<string, unknown>));
    });
  });
}

test('control socket: 0600 in a 0700 directory, every malformed request answered with an error, one daemon per socket', { timeout: 120_000 }, async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'tsf-sock-'));
  const log = path.join(dir, 'auth.log');
  writeFileSync(log, '');
  const sock = path.join(dir, 'run', 'tsfilter', 'tsfilter.sock');
  const cfg = sshConfig(dir, log, { control_socket: sock });
  const d = new DaemonProcess(cfg);
  let second: DaemonProcess | null = null;
  try {
    await d.waitFor(/msg="control socket listening"/);
    const st = statSync(sock);
    assert.ok(st.isSocket());
    assert.equal(st.mode & 0o777, 0o600, `socket mode ${(st.mode & 0o777).toString(8)}`);
    assert.equal(statSync(path.dirname(sock)).mode & 0o777, 0o700);
    assert.equal(st.uid, process.getuid!(), 'owned by the user running the daemon (root in production)');

    // Malformed requests, each answered with a clear error; several per connection, in order.
    const replies = await exchange(
      sock,
      [
        'not json',
        '[1,2]',
        '{"cmd":"selfdestruct"}',
        '{"cmd":"ban"}',
        '{"cmd":"ban","ip":"999.1.1.1"}',
        '{"cmd":"ban","ip":"192.0.2.0/33"}',
        '{"cmd":"ban","ip":"198.51.100.5","duration":-3}',
        '{"cmd":"ban","ip":"198.51.100.5","extra":1}',
        '{"cmd":"unban","ip":"198.51.100.5","all":true}',
        '{"cmd":"list"}',
      ].join('\n') + '\n',
    );
    assert.equal(replies.length, 10, JSON.stringify(replies));
    const errors = replies.slice(0, 9);
    for (const r of errors) {
      assert.equal(r.ok, false, JSON.stringify(r));
      assert.equal(r.kind, 'usage');
    }
    assert.match(errors[0]!.error as string, /not JSON/);
    assert.match(errors[1]!.error as string, /expected a JSON object/);
    assert.match(errors[2]!.error as string, /unknown command "selfdestruct"/);
    assert.match(errors[3]!.error as string, /must be an IP address/);
    assert.match(errors[4]!.error as string, /not an IP address/);
    assert.match(errors[5]!.error as string, /not an IP address or CIDR prefix/);
    assert.match(errors[6]!.error as string, /duration/);
    assert.match(errors[7]!.error as string, /unknown field "extra"/);
    assert.deepEqual(replies[9], { ok: true, bans: [] });

    // An oversized request (1 MiB without a newline) is refused and the connection closed.
    const big = await exchange(sock, Buffer.alloc(1024 * 1024, 'a'));
    assert.equal(big.length, 1);
    assert.equal(big[0]!.ok, false);
    assert.match(big[0]!.error as string, /too large/);
    // Binary junk.
    const junk = await exchange(sock, Buffer.from([0, 255, 254, 10, 1, 2, 3, 10]));
    assert.ok(junk.every((r) => r.ok === false));

    // Still running and answering.
    const r = runCli(['status', '--json', '--config', cfg]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(JSON.parse(r.stdout).pid, d.child.pid);

    // A second daemon with the same socket refuses to start, and leaves the first one's socket alone.
    second = new DaemonProcess(cfg);
    assert.equal(await second.exited, 1, second.out + second.err);
    assert.match(second.err, /another tsfilter daemon (is already running: its control socket .*tsfilter\.sock answers|\(pid \d+\) is already using this data directory)/);
    assert.doesNotMatch(second.out, /msg=started/);
    assert.equal(d.child.exitCode, null);
    assert.ok(statSync(sock).isSocket());
    assert.equal(runCli(['status', '--config', cfg]).code, 0, 'the first daemon still answers');

    // After SIGKILL the socket file is stale: the next daemon removes it and starts.
    await d.stop('SIGKILL');
    assert.ok(statSync(sock).isSocket());
    second = new DaemonProcess(cfg);
    await second.waitFor(/msg="control socket listening"/);
    assert.equal(runCli(['status', '--config', cfg]).code, 0);
  } finally {
    await d.stop('SIGKILL');
    await second?.stop('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a regular file at the socket path is refused, not deleted', { timeout: 60_000 }, async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'tsf-sock-'));
  const log = path.join(dir, 'auth.log');
  writeFileSync(log, '');
  const sock = path.join(dir, 'precious.txt');
  writeFileSync(sock, 'keep me');
  const d = new DaemonProcess(sshConfig(dir, log, { control_socket: sock }));
  try {
    assert.equal(await d.exited, 1);
    assert.match(d.err, /exists and is not a socket/);
    assert.ok(statSync(sock).isFile());
  } finally {
    await d.stop('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
});
