import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { REPO } from './helpers/cli.ts';
import { requirePrereq } from './helpers/prereq.ts';
import { until } from './helpers/daemon.ts';

/*
 * Against the real kernel and a real OpenSSH server: two network namespaces joined by a veth pair (192.0.2.1 server,
 * 192.0.2.2-4 client). A logged-in SSH session from .2, a TCP connection to sshd that never authenticates from .3
 * (what a password guesser looks like), and a connection to another service from .4. ProtectedAddresses, evaluated
 * inside the server namespace, must report .2 as an SSH session and neither .3 nor .4. Nothing outside the two
 * namespaces is touched except creating the veth pair, which moves into them at once.
 */

const SSHD = '/usr/sbin/sshd';
const MODULE = path.join(REPO, 'src/detect/protected-addresses.ts');

function ok(cmd: string, args: string[]): boolean {
  return spawnSync(cmd, args, { stdio: 'ignore' }).status === 0;
}

function run(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 20_000 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
  return r.stdout;
}

test('reports a real logged-in sshd session peer, not a pre-auth connection nor another service', { timeout: 60_000 }, async (t) => {
  const root = process.getuid?.() === 0;
  const haveNetns = root && ok('ip', ['netns', 'list']);
  const haveSsh = existsSync(SSHD) && ok('ssh', ['-V']) && ok('sh', ['-c', 'command -v ssh-keygen']);
  const how = 'run the tests as root with: apt-get install -y openssh-server openssh-client iproute2';
  if (!requirePrereq(t, haveNetns, 'root with `ip netns`', how)) return;
  if (!requirePrereq(t, haveSsh, 'sshd / ssh / ssh-keygen', how)) return;

  const tag = `${process.pid % 10000}${Math.floor(Math.random() * 1000)}`;
  const S = `tsf-protect-s-${tag}`;
  const C = `tsf-protect-c-${tag}`;
  const dir = mkdtempSync(path.join(os.tmpdir(), 'tsf-protect-sshd-'));
  const children: ChildProcess[] = [];
  const spawnIn = (ns: string, cmd: string[], opts: { env?: NodeJS.ProcessEnv } = {}): ChildProcess & { out: string } => {
    const c = spawn('ip', ['netns', 'exec', ns, ...cmd], { stdio: ['ignore', 'pipe', 'pipe'], env: opts.env ?? process.env }) as ChildProcess & { out: string };
    c.out = '';
    c.stdout!.setEncoding('utf8').on('data', (d: string) => (c.out += d));
    c.stderr!.setEncoding('utf8').on('data', (d: string) => (c.out += d));
    children.push(c);
    return c;
  };
  let created = false;
  try {
    run('ip', ['netns', 'add', S]);
    run('ip', ['netns', 'add', C]);
    created = true;
    const vs = `tsfps${tag}`.slice(0, 15);
    const vc = `tsfpc${tag}`.slice(0, 15);
    run('ip', ['link', 'add', vs, 'netns', S, 'type', 'veth', 'peer', 'name', vc, 'netns', C]);
    run('ip', ['-n', S, 'addr', 'add', '192.0.2.1/24', 'dev', vs]);
    for (const a of ['192.0.2.2/24', '192.0.2.3/24', '192.0.2.4/24']) run('ip', ['-n', C, 'addr', 'add', a, 'dev', vc]);
    for (const [ns, dev] of [[S, vs], [S, 'lo'], [C, vc], [C, 'lo']] as const) run('ip', ['-n', ns, 'link', 'set', dev, 'up']);

    run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', path.join(dir, 'hostkey')]);
    run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', path.join(dir, 'userkey')]);
    writeFileSync(path.join(dir, 'authorized_keys'), readFileSync(path.join(dir, 'userkey.pub')));
    writeFileSync(
      path.join(dir, 'sshd_config'),
      [
        `HostKey ${path.join(dir, 'hostkey')}`,
        `AuthorizedKeysFile ${path.join(dir, 'authorized_keys')}`,
        'UsePAM no',
        'PidFile none',
        'StrictModes no',
        'PermitRootLogin prohibit-password',
        'PasswordAuthentication no',
        'LoginGraceTime 60',
        '',
      ].join('\n'),
    );
    if (!existsSync('/run/sshd')) mkdirSync('/run/sshd', { mode: 0o755 }); // sshd's privilege-separation directory
    const sshd = spawnIn(S, [SSHD, '-D', '-e', '-f', path.join(dir, 'sshd_config'), '-p', '2222']);
    await until(() => /Server listening on/.test(sshd.out) || sshd.exitCode !== null, 10_000, 'sshd listening');
    assert.equal(sshd.exitCode, null, `sshd exited: ${sshd.out}`);

    // A service that is not sshd, in the server namespace.
    const other = spawnIn(S, [process.execPath, '-e', `require('net').createServer(()=>{}).listen(8080,()=>console.log('listening'))`]);
    await until(() => other.out.includes('listening'), 10_000, 'other service listening');

    // A logged-in session from 192.0.2.2, kept open.
    const session = spawnIn(C, [
      'ssh', '-i', path.join(dir, 'userkey'), '-p', '2222', '-b', '192.0.2.2',
      '-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null', '-o', 'LogLevel=ERROR',
      'root@192.0.2.1', 'echo logged-in; sleep 120',
    ]);
    // Raw TCP connections kept open: to sshd without ever authenticating (.3), and to the other service (.4).
    const hold = (local: string, port: number) =>
      spawnIn(C, [process.execPath, '-e', `require('net').connect({host:'192.0.2.1',port:${port},localAddress:'${local}'},()=>console.log('connected'));setTimeout(()=>{},120000)`]);
    const guesser = hold('192.0.2.3', 2222);
    const client = hold('192.0.2.4', 8080);
    await until(() => session.out.includes('logged-in') || session.exitCode !== null, 15_000, 'ssh login');
    assert.ok(session.out.includes('logged-in'), `ssh login failed: ${session.out}\nsshd: ${sshd.out}`);
    await until(() => guesser.out.includes('connected') && client.out.includes('connected'), 10_000, 'raw connections');

    // Evaluate inside the server namespace, as the daemon would run there; without any SSH_CLIENT of ours.
    const script = path.join(dir, 'list.ts');
    writeFileSync(
      script,
      `import { ProtectedAddresses } from ${JSON.stringify(MODULE)};\n` +
        `const p = new ProtectedAddresses({ protectSessions: true });\n` +
        `p.refresh();\n` +
        `console.log(JSON.stringify({ list: p.list(), ssh: p.sshStatus(), has: ['192.0.2.2','192.0.2.3','192.0.2.4'].map((ip) => p.why(ip)) }));\n`,
    );
    const env = { ...process.env };
    delete env.SSH_CLIENT;
    delete env.SSH_CONNECTION;
    const r = spawnSync('ip', ['netns', 'exec', S, process.execPath, '--import', 'tsx', script], { cwd: REPO, env, encoding: 'utf8', timeout: 30_000 });
    assert.equal(r.status, 0, r.stderr);
    const res = JSON.parse(r.stdout) as { list: { ip: string; why: string }[]; ssh: { source: string; ports: number[] }; has: (string | null)[] };
    const why = new Map(res.list.map((e) => [e.ip, e.why]));
    assert.deepEqual(res.ssh, { source: 'proc', ports: [2222] }, "only this namespace's sshd counts, not the host's");
    assert.equal(why.get('192.0.2.2'), 'ssh session', JSON.stringify(res.list));
    assert.equal(why.has('192.0.2.3'), false, 'a connection to sshd that never logged in is not protected');
    assert.equal(why.has('192.0.2.4'), false, 'a connection to another service is not protected');
    assert.equal(why.get('192.0.2.1'), 'local address');
    assert.deepEqual(res.has, ['ssh session', null, null]);
  } finally {
    for (const c of children.reverse()) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    if (created) {
      // Session processes sshd forked live in the server namespace: end them (they are ours) before deleting it.
      for (const ns of [S, C]) {
        const pids = spawnSync('ip', ['netns', 'pids', ns], { encoding: 'utf8' }).stdout ?? '';
        for (const pid of pids.split('\n').map(Number).filter((n) => n > 0)) {
          try {
            process.kill(pid, 'SIGKILL');
          } catch {
            /* already gone */
          }
        }
      }
    }
    spawnSync('ip', ['netns', 'del', S], { stdio: 'ignore' });
    spawnSync('ip', ['netns', 'del', C], { stdio: 'ignore' });
    rmSync(dir, { recursive: true, force: true });
  }
});
