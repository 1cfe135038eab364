process.env.TZ = 'UTC';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { compileRule } from '../src/rules/compile.ts';
import { ruleConfigFromJson } from '../src/config/load.ts';
import type { Match } from '../src/rules/types.ts';

const config = JSON.parse(readFileSync(new URL('../config/config.default.json', import.meta.url), 'utf8'));
const NOW = Date.parse('2026-12-01T00:00:00Z');
const warnings: string[] = [];
const ssh = compileRule(ruleConfigFromJson('ssh', config.settings.rules.ssh), { warn: (m) => warnings.push(m) });
const match = (text: string, time?: number): Match | null =>
  ssh.match(time === undefined ? { text, source: '/var/log/auth.log' } : { text, source: 'journal:ssh', time }, NOW);

// [message (as sshd writes it after "sshd[pid]: "), kind, ip, user]
const FAILURES: [string, 'failure' | 'instant', string, string | undefined][] = [
  ['Invalid user pascal from 35.188.49.176 port 53502', 'failure', '35.188.49.176', 'pascal'],
  ['Invalid user test from 203.0.113.8', 'failure', '203.0.113.8', 'test'], // OpenSSH < 7.5: no port
  ['Invalid user  from 203.0.113.8 port 22', 'failure', '203.0.113.8', ''],
  ['Invalid user admin  from 203.0.113.8 port 22', 'failure', '203.0.113.8', 'admin '],
  ['Failed password for root from 192.0.2.10 port 4242 ssh2', 'failure', '192.0.2.10', 'root'],
  ['Failed password for invalid user admin from 192.0.2.11 port 4242 ssh2', 'failure', '192.0.2.11', 'admin'],
  ['Failed publickey for git from 192.0.2.12 port 4242 ssh2: RSA SHA256:1M4RzhMyWuFS/86uPY/ce2prh/dVTHW7iD2RhpquOZA', 'failure', '192.0.2.12', 'git'],
  ['Failed keyboard-interactive/pam for invalid user ubnt from 192.0.2.13 port 4242 ssh2', 'failure', '192.0.2.13', 'ubnt'],
  ['Failed none for invalid user x from 2001:db8::13 port 4242 ssh2', 'failure', '2001:db8::13', 'x'],
  ['message repeated 5 times: [ Failed password for root from 192.0.2.14 port 4242 ssh2]', 'failure', '192.0.2.14', 'root'],
  ['Connection closed by invalid user root 206.81.24.125 port 45362 [preauth]', 'failure', '206.81.24.125', 'root'],
  ['Connection closed by authenticating user root 206.81.24.126 port 45362 [preauth]', 'failure', '206.81.24.126', 'root'],
  ['Connection reset by authenticating user root 80.94.92.63 port 49115 [preauth]', 'failure', '80.94.92.63', 'root'],
  ['Disconnected from invalid user ftp 92.255.85.135 port 26138 [preauth]', 'failure', '92.255.85.135', 'ftp'],
  ['Disconnected from authenticating user ftp 92.255.85.136 port 26138 [preauth]', 'failure', '92.255.85.136', 'ftp'],
  ['banner exchange: Connection from 59.91.122.57 port 34388: invalid format', 'failure', '59.91.122.57', undefined],
  ['banner exchange: Connection from 59.91.122.58 port 34388: could not read protocol version', 'failure', '59.91.122.58', undefined],
  ['Unable to negotiate with 123.57.135.134 port 45626: no matching key exchange method found. Their offer: diffie-hellman-group1-sha1 [preauth]', 'failure', '123.57.135.134', undefined],
  ['Unable to negotiate with 206.189.59.169 port 34386: no matching host key type found. Their offer: ssh-rsa,ssh-dss [preauth]', 'failure', '206.189.59.169', undefined],
  ['fatal: Unable to negotiate with 198.51.100.70 port 34386: no matching cipher found. Their offer: aes128-cbc [preauth]', 'failure', '198.51.100.70', undefined],
  ['Did not receive identification string from 198.51.100.71', 'failure', '198.51.100.71', undefined],
  ['Did not receive identification string from 198.51.100.72 port 51234', 'failure', '198.51.100.72', undefined],
  ["Bad protocol version identification '\\026\\003\\001' from 198.51.100.73 port 51234", 'failure', '198.51.100.73', undefined],
  ['User root from 192.168.1.1 not allowed because not listed in AllowUsers', 'failure', '192.168.1.1', 'root'],
  ['Magic value check failed (4289475479) on obfuscated handshake from 94.232.46.213 port 62730', 'failure', '94.232.46.213', undefined],
  ['error: maximum authentication attempts exceeded for root from 198.51.100.74 port 40000 ssh2 [preauth]', 'instant', '198.51.100.74', 'root'],
  ['error: maximum authentication attempts exceeded for invalid user oracle from 198.51.100.75 port 40000 ssh2 [preauth]', 'instant', '198.51.100.75', 'oracle'],
];

const HEADERS: [string, string, number | undefined][] = [
  ['traditional syslog', 'Feb 12 14:10:21 sd-126005 sshd[16378]: ', Date.parse('2026-02-12T14:10:21Z')],
  ['traditional syslog, space-padded day', 'Feb  2 14:10:21 sd-126005 sshd[16378]: ', Date.parse('2026-02-02T14:10:21Z')],
  ['RFC 3339 (Debian 12 rsyslog)', '2026-11-21T05:04:00.123456+01:00 host sshd[123]: ', Date.parse('2026-11-21T04:04:00.123Z')],
  ['OpenSSH 9.8+ sshd-session', 'Feb 12 14:10:24 sd-126005 sshd-session[16379]: ', Date.parse('2026-02-12T14:10:24Z')],
  ['no header (journal MESSAGE, sshd -E)', '', undefined],
];

test('every failure message sshd writes is recognised under every header, with the right address, user and time', () => {
  for (const [hname, header, htime] of HEADERS) {
    for (const [msg, kind, ip, user] of FAILURES) {
      const m = match(header + msg);
      assert.ok(m, `${hname}: no match for ${msg}`);
      assert.equal(m.kind, kind, msg);
      assert.equal(m.ip, ip, msg);
      assert.equal(m.user, user, msg);
      assert.equal(m.time, htime ?? NOW, `${hname}: ${msg}`);
      assert.equal(m.rule, 'ssh');
    }
  }
});

test('a header-less journal line takes the journal time', () => {
  const t = Date.parse('2026-11-30T10:00:00Z');
  assert.equal(match('Invalid user x from 192.0.2.1 port 22', t)?.time, t);
});

test('successful logins are success matches', () => {
  const cases: [string, string, string][] = [
    ['Accepted password for test from 192.168.121.1 port 43124 ssh2', '192.168.121.1', 'test'],
    ['Accepted publickey for vagrant from 192.168.121.1 port 56296 ssh2: RSA SHA256:1M4RzhMyWuFS/86uPY/ce2prh/dVTHW7iD2RhpquOZA', '192.168.121.1', 'vagrant'],
    ['Accepted keyboard-interactive/pam for bob from 2001:db8::5 port 2222 ssh2', '2001:db8::5', 'bob'],
  ];
  for (const [, header] of HEADERS) {
    for (const [msg, ip, user] of cases) {
      const m = match(header + msg);
      assert.deepEqual([m?.kind, m?.ip, m?.user], ['success', ip, user], header + msg);
    }
  }
});

test('ordinary and ambiguous sshd lines do not count as failures', () => {
  const neutral = [
    // A normal logout. PyFilter counts it ("Received disconnect ... port (.*):\d{0,4}: .*") and bans innocent users.
    'Received disconnect from 192.0.2.20 port 51000:11: disconnected by user',
    'Received disconnect from 192.0.2.20 port 51000:11: Bye Bye [preauth]',
    'Disconnected from user alice 192.0.2.20 port 51000',
    'Disconnected from 192.0.2.20 port 51000',
    'Close session: user ansible from 192.168.1.1 port 34928 id 0',
    'pam_unix(sshd:session): session opened for user ubuntu by (uid=0)',
    // Every PAM auth failure is also logged by sshd as "Failed password"; counting both would double count.
    'pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost=5.33.63.160 user=workshop',
    'Connection closed by 118.27.24.104 port 33594 [preauth]',
    'Connection from 192.0.2.21 port 51000 on 192.0.2.1 port 22 rdomain ""',
    'Disconnected from totobad user ftp 92.255.85.135 port 26138 [preauth]',
    'Server listening on 0.0.0.0 port 22.',
    'fatal: Timeout before authentication for 192.168.9.212 port 47056',
    'error: kex_exchange_identification: banner line too long',
  ];
  for (const [, header] of HEADERS) for (const msg of neutral) assert.equal(match(header + msg), null, header + msg);
});

test('the header must name sshd: other programs writing the same text do not count', () => {
  for (const prog of ['sudo[1]', 'sshd', 'sshdx[1]', 'mysshd[1]', 'CRON[12]', 'sshd[x]', 'sshd-session']) {
    assert.equal(match(`Feb 12 14:10:21 host ${prog}: Invalid user x from 192.0.2.30 port 22`), null, prog);
    assert.equal(match(`2026-11-21T05:04:00+01:00 host ${prog}: Failed password for x from 192.0.2.30 port 22 ssh2`), null, prog);
  }
  assert.equal(match('Feb 12 14:10:21 host kernel: [UFW BLOCK] Invalid user x from 192.0.2.30 port 22'), null);
  assert.equal(match('Invalid user x from 192.0.2.30 port 22 extra'), null);
});

test('a host that is not an address is skipped (DNS is off by default)', () => {
  const before = warnings.length;
  assert.equal(match('Did not receive identification string from scanner.example.net'), null);
  assert.ok(warnings.length > before);
});
