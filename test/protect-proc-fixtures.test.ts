import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import ipaddr from 'ipaddr.js';
import { parseProcNetAddress, parseProcNetTcp } from '../src/detect/proc-net.ts';
import {
  ProtectedAddresses,
  WHY_LOCAL,
  WHY_LOOPBACK,
  WHY_SSH_CLIENT,
  WHY_SSH_SESSION,
  WHY_SSH_UNVERIFIED,
} from '../src/detect/protected-addresses.ts';

const LE = os.endianness() === 'LE';

/** How the kernel prints one 4-byte group of an address: the network-order word as a host-order %08X. */
function word(bytes: number[]): string {
  const b = LE ? [...bytes].reverse() : bytes;
  return b.map((x) => x.toString(16).padStart(2, '0')).join('').toUpperCase();
}
function hexAddr(ip: string, port: number): string {
  const bytes = ipaddr.parse(ip).toByteArray();
  let h = '';
  for (let i = 0; i < bytes.length; i += 4) h += word(bytes.slice(i, i + 4));
  return `${h}:${port.toString(16).toUpperCase().padStart(4, '0')}`;
}
/** A /proc/net/tcp{,6} line as the kernel writes it. */
function line(sl: number, local: [string, number], remote: [string, number], st: number, inode: number): string {
  const s = st.toString(16).toUpperCase().padStart(2, '0');
  return `  ${sl}: ${hexAddr(...local)} ${hexAddr(...remote)} ${s} 00000000:00000000 02:000AFBC9 00000000     0        0 ${inode} 2 00000000dceff34b 20 4 14 21 -1`;
}
const HEAD4 = '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode';
const HEAD6 = '  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode';
const EST = 0x01;
const LISTEN = 0x0a;
const TIME_WAIT = 0x06;

function proc(root: string, pid: number, comm: string, title: string, inodes: number[]): void {
  const dir = path.join(root, String(pid));
  mkdirSync(path.join(dir, 'fd'), { recursive: true });
  writeFileSync(path.join(dir, 'comm'), `${comm}\n`);
  // sshd's setproctitle leaves the rest of the old argv area NUL-padded.
  writeFileSync(path.join(dir, 'cmdline'), `${title}\0\0\0\0`);
  let fd = 3;
  for (const i of inodes) symlinkSync(`socket:[${i}]`, path.join(dir, 'fd', String(fd++)));
  symlinkSync('/dev/null', path.join(dir, 'fd', '0'));
  symlinkSync('pipe:[999]', path.join(dir, 'fd', '1'));
}

const NO_IFACES = () => ({});

function fixture(): string {
  const root = mkdtempSync(path.join(os.tmpdir(), 'tsf-protect-'));
  mkdirSync(path.join(root, 'net'));
  const tcp = [
    HEAD4,
    line(0, ['0.0.0.0', 22], ['0.0.0.0', 0], LISTEN, 1001), // sshd listener
    line(1, ['127.0.0.1', 5432], ['0.0.0.0', 0], LISTEN, 1002), // postgres
    line(2, ['10.0.0.5', 22], ['203.0.113.7', 51000], EST, 1003), // alice, logged in
    line(3, ['10.0.0.5', 22], ['198.51.100.9', 40000], EST, 1004), // connected, no kex yet
    line(4, ['10.0.0.5', 22], ['198.51.100.10', 40001], EST, 1005), // guessing passwords
    line(5, ['10.0.0.5', 5432], ['203.0.113.50', 40002], EST, 1006), // database client
    line(6, ['10.0.0.5', 22], ['203.0.113.51', 40003], TIME_WAIT, 0), // closed session
    line(7, ['10.0.0.5', 43210], ['192.0.2.80', 80], EST, 1009), // alice's ssh -L forward, outbound
    line(8, ['0.0.0.0', 8022], ['0.0.0.0', 0], LISTEN, 1007), // alice's ssh -R forward
    line(9, ['10.0.0.5', 8022], ['203.0.113.60', 40004], EST, 1008), // a client of that forward
    'garbage line that is not a socket',
    '',
  ].join('\n');
  const tcp6 = [
    HEAD6,
    line(0, ['::', 2222], ['::', 0], LISTEN, 2001), // sshd's second listener
    line(1, ['::ffff:10.0.0.5', 2222], ['::ffff:203.0.113.8', 52000], EST, 2002), // bob, IPv4 on a v6 socket
    line(2, ['2001:db8::1', 2222], ['2001:db8::bad:1', 52001], EST, 2003), // carol over IPv6
    line(3, ['2001:db8::1', 2222], ['2001:db8::dead', 52002], EST, 2004), // IPv6 password guesser
    line(4, ['2001:db8::1', 22], ['2001:db8::beef', 52003], EST, 2005), // someone's ssh -N session
    '',
  ].join('\n');
  writeFileSync(path.join(root, 'net', 'tcp'), tcp);
  writeFileSync(path.join(root, 'net', 'tcp6'), tcp6);
  proc(root, 100, 'sshd', 'sshd: /usr/sbin/sshd -D [listener] 1 of 10-100 startups', [1001, 2001]);
  proc(root, 101, 'sshd', 'sshd: alice@pts/0,pts/1', [1003, 1009, 1007, 1008]);
  proc(root, 111, 'sshd', 'sshd: alice [priv]', [1003]);
  proc(root, 102, 'sshd', 'sshd: [accepted]', [1004]);
  proc(root, 103, 'sshd', 'sshd: root [priv]', [1005]);
  proc(root, 104, 'sshd', 'sshd: root [net]', [1005]);
  proc(root, 105, 'sshd-session', 'sshd-session: bob@notty', [2002]);
  proc(root, 106, 'sshd', 'sshd: carol', [2003]);
  proc(root, 107, 'sshd-auth', 'sshd-auth: unknown [preauth]', [2004]);
  proc(root, 108, 'sshd', 'sshd: dave', [2005]);
  proc(root, 200, 'postgres', 'sshd: mallory@pts/9', [1002, 1006]); // a title alone does not make an sshd
  // A process that exited between readdir and reading its fds: comm still there, fd directory gone.
  mkdirSync(path.join(root, '300'));
  writeFileSync(path.join(root, '300', 'comm'), 'sshd\n');
  // Non-process entries of /proc.
  writeFileSync(path.join(root, 'uptime'), '1.0 1.0\n');
  mkdirSync(path.join(root, 'self'));
  return root;
}

test('parses the kernel hex format of /proc/net/tcp and tcp6', () => {
  if (LE) {
    assert.deepEqual(parseProcNetAddress('0100007F:1538'), ['127.0.0.1', 0x1538]);
    assert.deepEqual(parseProcNetAddress('010200C0:08AE'), ['192.0.2.1', 2222]);
    assert.deepEqual(parseProcNetAddress('00000000000000000000000001000000:18EB'), ['::1', 0x18eb]);
    assert.deepEqual(parseProcNetAddress('0000000000000000FFFF00000100007F:0016'), ['127.0.0.1', 22]);
    assert.deepEqual(parseProcNetAddress('B80D0120000000000000000001000000:0016'), ['2001:db8::1', 22]);
  }
  assert.equal(parseProcNetAddress('zz:0016'), null);
  assert.equal(parseProcNetAddress('0100007F'), null);
  assert.equal(parseProcNetAddress('0100007F:XYZW'), null);
  const real = [
    HEAD4,
    '   1: 010200C0:08AE 030200C0:A815 01 00000000:00000000 02:000AFBC9 00000000     0        0 97293 2 00000000dceff34b 20 0 0 11 -1',
  ].join('\n');
  if (LE) {
    assert.deepEqual(parseProcNetTcp(real), [
      { localIp: '192.0.2.1', localPort: 2222, remoteIp: '192.0.2.3', remotePort: 0xa815, state: 1, inode: 97293 },
    ]);
  }
  assert.deepEqual(parseProcNetTcp('junk\n  0: 1:2 3:4 0A\n'), []);
});

test('protects authenticated SSH sessions only, found through sshd listeners and socket owners', () => {
  const root = fixture();
  try {
    const p = new ProtectedAddresses({ protectSessions: true, procRoot: root, env: {}, networkInterfaces: NO_IFACES });
    p.refresh();
    assert.deepEqual(p.sshStatus(), { source: 'proc', ports: [22, 2222] });
    assert.equal(p.why('203.0.113.7'), WHY_SSH_SESSION, 'alice (IPv4, port 22)');
    assert.equal(p.why('203.0.113.8'), WHY_SSH_SESSION, 'bob (IPv4-mapped on a tcp6 socket, sshd-session)');
    assert.equal(p.why('2001:db8::bad:1'), WHY_SSH_SESSION, 'carol (IPv6, port 2222)');
    assert.equal(p.why('2001:db8::beef'), WHY_SSH_SESSION, 'dave (ssh -N: title without @tty)');
    for (const ip of ['198.51.100.9', '198.51.100.10', '2001:db8::dead']) {
      assert.equal(p.has(ip), false, `${ip} is connected to sshd but not logged in: an attacker must not be immune`);
    }
    assert.equal(p.has('203.0.113.50'), false, 'a client of another service');
    assert.equal(p.has('203.0.113.51'), false, 'a closed (TIME_WAIT) SSH connection');
    assert.equal(p.has('192.0.2.80'), false, "the target of a session's outbound forward");
    assert.equal(p.has('203.0.113.60'), false, "a client of a session's remote-forward listener");
    assert.equal(p.has('::ffff:203.0.113.8'), false, 'callers pass normalised text');
    const listed = p.list();
    assert.deepEqual(
      listed.filter((e) => e.why === WHY_SSH_SESSION).map((e) => e.ip).sort(),
      ['2001:db8::bad:1', '2001:db8::beef', '203.0.113.7', '203.0.113.8'],
    );
    assert.ok(listed.some((e) => e.ip === '127.0.0.0/8' && e.why === WHY_LOOPBACK));
    assert.ok(listed.some((e) => e.ip === '::1' && e.why === WHY_LOOPBACK));

    const off = new ProtectedAddresses({
      protectSessions: false,
      procRoot: root,
      env: { SSH_CLIENT: '203.0.113.99 5000 22' },
      networkInterfaces: NO_IFACES,
    });
    assert.equal(off.has('203.0.113.7'), false, 'protect_sessions off');
    assert.equal(off.has('203.0.113.99'), false, 'protect_sessions off ignores SSH_CLIENT too');
    assert.equal(off.has('127.0.0.1'), true, 'loopback is always protected');
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('falls back to port 22 and extra ports, unverified, when no sshd process can be inspected', () => {
  const root = fixture();
  try {
    for (const pid of ['100', '101', '111', '102', '103', '104', '105', '106', '107', '108', '300']) {
      rmSync(path.join(root, pid), { recursive: true });
    }
    const p = new ProtectedAddresses({ protectSessions: true, procRoot: root, env: {}, extraSshPorts: [2222], networkInterfaces: NO_IFACES });
    p.refresh();
    assert.deepEqual(p.sshStatus(), { source: 'fallback', ports: [22, 2222] });
    for (const ip of ['203.0.113.7', '198.51.100.9', '203.0.113.8', '2001:db8::dead']) assert.equal(p.why(ip), WHY_SSH_UNVERIFIED, ip);
    assert.equal(p.has('203.0.113.50'), false);
    assert.equal(p.has('203.0.113.60'), false);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('loopback, interface addresses and the SSH client of the starter; never throws on a missing /proc', () => {
  const missing = path.join(os.tmpdir(), `tsf-protect-missing-${process.pid}`);
  let ifaces: NodeJS.Dict<os.NetworkInterfaceInfo[]> = {
    eth0: [
      { address: '10.1.2.3', netmask: '255.0.0.0', family: 'IPv4', mac: '00:00:00:00:00:00', internal: false, cidr: '10.1.2.3/8' },
      { address: 'fe80::1', netmask: 'ffff:ffff:ffff:ffff::', family: 'IPv6', mac: '00:00:00:00:00:00', internal: false, cidr: 'fe80::1/64', scopeid: 2 },
    ],
    lo: [{ address: '127.0.0.1', netmask: '255.0.0.0', family: 'IPv4', mac: '00:00:00:00:00:00', internal: true, cidr: '127.0.0.1/8' }],
  };
  const p = new ProtectedAddresses({
    protectSessions: true,
    procRoot: missing,
    env: { SSH_CLIENT: '203.0.113.5 50123 22', SSH_CONNECTION: '::ffff:203.0.113.6 50124 10.1.2.3 22' },
    networkInterfaces: () => ifaces,
    maxAgeMs: 20,
  });
  assert.equal(p.why('127.0.0.1'), WHY_LOOPBACK);
  assert.equal(p.why('127.255.0.9'), WHY_LOOPBACK);
  assert.equal(p.why('::1'), WHY_LOOPBACK);
  assert.equal(p.why('10.1.2.3'), WHY_LOCAL);
  assert.equal(p.why('fe80::1'), WHY_LOCAL);
  assert.equal(p.why('203.0.113.5'), WHY_SSH_CLIENT);
  assert.equal(p.why('203.0.113.6'), WHY_SSH_CLIENT, 'SSH_CONNECTION, IPv4-mapped, normalised');
  assert.equal(p.has('203.0.113.7'), false);
  // Addresses change: has() sees a new one once the last refresh is older than maxAgeMs.
  ifaces = { eth0: [{ ...ifaces.eth0![0]!, address: '10.9.9.9', cidr: '10.9.9.9/8' }] };
  const deadline = Date.now() + 60;
  while (Date.now() < deadline) {
    /* let maxAgeMs pass */
  }
  assert.equal(p.has('10.9.9.9'), true);
  assert.equal(p.has('10.1.2.3'), false, 'an address the host no longer has');
  const bad = new ProtectedAddresses({ protectSessions: true, procRoot: missing, env: { SSH_CLIENT: 'not-an-ip 1 22' }, networkInterfaces: () => { throw new Error('boom'); } });
  assert.doesNotThrow(() => bad.refresh());
  assert.equal(bad.has('127.0.0.1'), true);
  assert.deepEqual(bad.list().map((e) => e.ip), ['127.0.0.0/8', '::1']);
});

test('has() refreshes on demand, so a session opened just now is seen; start/stop', async () => {
  const root = fixture();
  try {
    const p = new ProtectedAddresses({ protectSessions: true, procRoot: root, env: {}, networkInterfaces: NO_IFACES, refreshMs: 10, maxAgeMs: 50 });
    p.start();
    assert.equal(p.has('198.51.100.10'), false);
    // The guesser's password finally works: the pre-auth processes become a logged-in session.
    rmSync(path.join(root, '104'), { recursive: true });
    proc(root, 104, 'sshd', 'sshd: root@pts/2', [1005]);
    await new Promise((r) => setTimeout(r, 80));
    assert.equal(p.why('198.51.100.10'), WHY_SSH_SESSION);
    p.stop();
    p.stop();
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
