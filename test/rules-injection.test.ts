process.env.TZ = 'UTC';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { compileRule } from '../src/rules/compile.ts';
import { ruleConfigFromJson } from '../src/config/load.ts';

const config = JSON.parse(readFileSync(new URL('../config/config.default.json', import.meta.url), 'utf8'));
const rules = Object.fromEntries(Object.entries<Record<string, unknown>>(config.settings.rules)
  .map(([name, raw]) => [name, compileRule(ruleConfigFromJson(name, raw), { warn: () => {} })]));
const NOW = Date.parse('2026-12-01T00:00:00Z');
const REAL = '192.0.2.99';
const FAKES = ['198.51.100.7', '203.0.113.9', '6.6.6.6', '2001:db8::666'];

// User names an attacker can choose (sshd logs them verbatim, spaces included).
const PAYLOADS = [
  'root from 198.51.100.7 port 22',
  'x 203.0.113.9 port 22 [preauth]',
  'x from 6.6.6.6 port 22 ssh2',
  'x from 6.6.6.6 port 22 ssh2: RSA SHA256:abc',
  'x from 6.6.6.6',
  'x 6.6.6.6 port 22',
  'root from 2001:db8::666 port 22 ssh2',
  'a from 6.6.6.6 port 1 ssh2 [preauth]',
  "x' from 6.6.6.6 port 22",
  'from 6.6.6.6 port 22',
  ' from 6.6.6.6 port 22 ',
  'invalid user x from 6.6.6.6 port 22 ssh2',
];
// sshd messages that embed an attacker-chosen user name; {u} = the name, the real peer is REAL.
const TEMPLATES = [
  'Invalid user {u} from ' + REAL + ' port 4000',
  'Invalid user {u} from ' + REAL,
  'Failed password for invalid user {u} from ' + REAL + ' port 4000 ssh2',
  'Failed password for {u} from ' + REAL + ' port 4000 ssh2',
  'Failed none for invalid user {u} from ' + REAL + ' port 4000 ssh2',
  'Connection closed by invalid user {u} ' + REAL + ' port 4000 [preauth]',
  'Connection closed by authenticating user {u} ' + REAL + ' port 4000 [preauth]',
  'Disconnected from invalid user {u} ' + REAL + ' port 4000 [preauth]',
  'error: maximum authentication attempts exceeded for invalid user {u} from ' + REAL + ' port 4000 ssh2 [preauth]',
  'Accepted password for {u} from ' + REAL + ' port 4000 ssh2',
];

test('crafted user names cannot frame another address: the captured IP is always the real peer', () => {
  let n = 0;
  for (const header of ['', 'Feb 12 14:10:21 host sshd[1]: ', '2026-11-21T05:04:00+01:00 host sshd-session[2]: ']) {
    for (const t of TEMPLATES) {
      for (const u of PAYLOADS) {
        const text = header + t.replace('{u}', u);
        const m = rules['ssh']!.match({ text, source: 'f' }, NOW);
        assert.ok(m, `should still count: ${text}`);
        assert.equal(m.ip, REAL, text);
        assert.ok(!FAKES.includes(m.ip));
        n++;
      }
    }
  }
  assert.equal(n, 3 * TEMPLATES.length * PAYLOADS.length);
});

test('attacker-controlled free text (disconnect reasons, version strings, key offers) cannot frame another address', () => {
  const cases: [string, string | null][] = [
    // A client chooses its disconnect reason: not a failure message at all, even if it looks like one.
    [`Received disconnect from ${REAL} port 5000:11: Bye from 6.6.6.6 port 22 ssh2 [preauth]`, null],
    [`Received disconnect from ${REAL} port 5000:11: Failed password for root from 6.6.6.6 port 22 ssh2`, null],
    [`Received disconnect from ${REAL} port 5000:3: com.jcraft.jsch.JSchException: Invalid user x from 6.6.6.6 port 22 [preauth]`, null],
    [`Disconnected from user x from 6.6.6.6 port 22 ssh2 ${REAL} port 5000`, null],
    [`Bad protocol version identification 'SSH-2.0 from 6.6.6.6 port 22' from ${REAL} port 4000`, REAL],
    [`Bad protocol version identification 'x' from 6.6.6.6 port 22' from ${REAL}`, REAL],
    [`Unable to negotiate with ${REAL} port 4000: no matching cipher found. Their offer: from 6.6.6.6 port 22 [preauth]`, REAL],
    [`banner exchange: Connection from ${REAL} port 4000: invalid format from 6.6.6.6 port 22`, null],
    // The version string or reason cannot start a new "line".
    [`Did not receive identification string from 6.6.6.6 port 22 from ${REAL}`, null],
  ];
  for (const header of ['', 'Feb 12 14:10:21 host sshd[1]: ']) {
    for (const [msg, want] of cases) {
      const m = rules['ssh']!.match({ text: header + msg, source: 'f' }, NOW);
      assert.equal(m === null ? null : m.ip, want, header + msg);
    }
  }
});

test('lines from other programs carrying sshd-like text do not match', () => {
  const lines = [
    'Feb 12 14:10:21 host nginx[5]: sshd[1]: Invalid user x from 6.6.6.6 port 22',
    'Feb 12 14:10:21 host app[5]: Feb 12 14:10:21 host sshd[1]: Invalid user x from 6.6.6.6 port 22',
    'Feb 12 14:10:21 host app[5]: Failed password for root from 6.6.6.6 port 22 ssh2',
    'Feb 12 14:10:21 host su[5]: error: maximum authentication attempts exceeded for root from 6.6.6.6 port 22 ssh2',
    'Feb 12 14:10:21 host logger: sshd[1]: Accepted password for root from 6.6.6.6 port 22 ssh2',
    '2026-11-21T05:04:00+01:00 host python3[9]: Invalid user x from 6.6.6.6 port 22',
    ' Invalid user x from 6.6.6.6 port 22',
    'x Invalid user x from 6.6.6.6 port 22',
  ];
  for (const text of lines) assert.equal(rules['ssh']!.match({ text, source: 'f' }, NOW), null, text);
});

test('mysql: a crafted user name cannot frame another address', () => {
  const users = ["x'@'6.6.6.6' (using password: YES)", "x'@'6.6.6.6", "'@'6.6.6.6' (using password: NO)'"];
  for (const u of users) {
    for (const prefix of ['2026-11-21T05:04:00.123456Z 8 [Note] [MY-010926] [Server] ', '2026-11-21  5:04:00 8 [Warning] ']) {
      const text = `${prefix}Access denied for user '${u}'@'${REAL}' (using password: YES)`;
      assert.equal(rules['mysql']!.match({ text, source: 'f' }, NOW)?.ip, REAL, text);
    }
  }
});

test('web: the client address is the first field whatever the request, referrer or user agent contain', () => {
  const lines = [
    `${REAL} - - [21/Nov/2026:05:04:00 +0000] "POST /login/ HTTP/1.1" 401 12 "http://6.6.6.6/" "6.6.6.6 - - [21/Nov/2026:05:04:00 +0000] \\"POST /login/ HTTP/1.1\\" 401"`,
    `${REAL} - 6.6.6.6 [21/Nov/2026:05:04:00 +0000] "POST /login/ HTTP/1.1" 403 12 "-" "-"`,
  ];
  for (const name of ['apache', 'nginx']) {
    for (const text of lines) assert.equal(rules[name]!.match({ text, source: 'f' }, NOW)?.ip, REAL, text);
    const get = `${REAL} - - [21/Nov/2026:05:04:00 +0000] "GET /?a=\\"POST /login/ HTTP/1.1\\" 401 HTTP/1.1" 200 12 "-" "-"`;
    assert.equal(rules[name]!.match({ text: get, source: 'f' }, NOW), null);
  }
});

test('a certificate key ID holding "from X port N ssh2" cannot frame X (the key ID is the attacker\'s own text)', () => {
  const m = rules.ssh!;
  const now = Date.parse('2026-01-10T12:00:00Z');
  const cert = (user: string, keyId: string) =>
    `Jan 10 10:00:01 host sshd[123]: Failed publickey for ${user} from 192.0.2.4 port 50000 ssh2: ED25519-CERT SHA256:AAAA ID ${keyId} (serial 0) CA ED25519 SHA256:EEEE`;
  for (const line of [
    cert('root', 'x from 198.51.100.6 port 22 ssh2: ED25519 SHA256:AAAA'),
    cert('root', 'x from 198.51.100.6 port 22 ssh2: ED25519-CERT SHA256:A ID y'),
    cert('root', 'x from 198.51.100.6 port 22 ssh2:'),
    cert('invalid user admin', 'from 198.51.100.6 port 1 ssh2: RSA SHA256:Z (serial 1) CA RSA SHA256:Q'),
  ]) {
    const r = m.match({ text: line, source: 't' }, now);
    assert.ok(r === null || r.ip === '192.0.2.4', `framed ${r?.ip}: ${line}`);
  }
  // When both the user name and the key ID are the attacker's, no pattern can tell sshd's " from " from theirs, so
  // certificate failures are not counted at all (they cannot be a password brute force). Never a wrong address:
  const plain = m.match({ text: cert('root', 'build-bot'), source: 't' }, now);
  assert.ok(plain === null || plain.ip === '192.0.2.4');
  const spaced = `Jan 10 10:00:01 host sshd[123]: Failed publickey for a from 198.51.100.6 port 22 ssh2: RSA-CERT SHA256:A ID b from 192.0.2.4 port 5 ssh2: ED25519-CERT SHA256:R ID c (serial 0) CA ED25519 SHA256:E (serial 7) CA ED25519 SHA256:Q`;
  const r = m.match({ text: spaced, source: 't' }, now);
  assert.ok(r === null || r.ip === '192.0.2.4', `framed ${r?.ip}`);
});
