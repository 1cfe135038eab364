/*
 * Proves the end-to-end lab itself (test/helpers/e2e-lab.ts): namespaces and bridge, a real sshd reachable from the
 * attacker and the admin over IPv4 and IPv6, the failure lines a failed password login writes with both logging
 * variants (sshd -E, and syslog through a private rsyslogd in RFC 3339 format), TSFilter's ssh rule and a dry-run
 * daemon in the server namespace reading them, and the cleanup (namespaces and processes gone, even after a throw).
 * Needs root; see HOW_TO_ENABLE.
 */
import { describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { ADDR, HOW_TO_ENABLE, Lab, missingPrerequisites, type Family, type SshdLogging } from './helpers/e2e-lab.ts';
import { requirePrereq } from './helpers/prereq.ts';

const missing = missingPrerequisites({ nft: false });
const ready = (t: TestContext) => requirePrereq(t, missing.length === 0, `for the end-to-end lab: ${missing.join('; ')}`, HOW_TO_ENABLE);

const RFC3339 = String.raw`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d \S+ sshd\[\d+\]: `;
const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** The lines one failed login writes, as regexes anchored on whole lines (with or without the syslog header). */
function expectedLines(logging: SshdLogging, user: string, ip: string): RegExp[] {
  const h = logging === 'syslog' ? RFC3339 : '';
  const u = esc(user);
  const i = esc(ip);
  if (user === 'root') {
    return [
      new RegExp(`^${h}Failed password for root from ${i} port \\d+ ssh2$`, 'm'),
      new RegExp(`^${h}Connection closed by authenticating user root ${i} port \\d+ \\[preauth\\]$`, 'm'),
    ];
  }
  return [
    new RegExp(`^${h}Invalid user ${u} from ${i} port \\d+$`, 'm'),
    new RegExp(`^${h}Failed password for invalid user ${u} from ${i} port \\d+ ssh2$`, 'm'),
    new RegExp(`^${h}Connection closed by invalid user ${u} ${i} port \\d+ \\[preauth\\]$`, 'm'),
  ];
}

async function waitForLines(read: () => string, res: RegExp[], ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    const text = read();
    const missingRe = res.filter((re) => !re.test(text));
    if (missingRe.length === 0) return;
    if (Date.now() > deadline) assert.fail(`log lacks ${missingRe.join(', ')}; log:\n${text}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

for (const logging of ['file', 'syslog'] as const) {
  describe(`e2e lab, sshd logging to ${logging === 'file' ? 'a file (sshd -E)' : 'a private rsyslogd (RFC 3339)'}`, () => {
    test('sshd in the server namespace is reachable from the attacker and the admin over IPv4 and IPv6; failed logins write the expected lines, which the ssh rule and a dry-run daemon read', async (t) => {
      if (!ready(t)) return;
      const t0 = Date.now();
      const lab = await Lab.create();
      try {
        const sshd = await lab.startSshd(logging);
        t.diagnostic(`lab + sshd ready in ${Date.now() - t0} ms`);

        for (const role of ['attacker', 'admin'] as const) {
          for (const f of [4, 6] as const) {
            const p = await lab.probe(role, f);
            assert.ok(p.ok, `${role} cannot reach sshd over IPv${f}: ${JSON.stringify(p)}`);
            assert.match(p.banner, /^SSH-2\.0-OpenSSH_/, `${role} over IPv${f}`);
          }
        }
        // Nothing else listens: a closed port is refused, not silently dropped (the lab has no firewall of its own).
        const closed = await lab.probe('attacker', 4, 2222);
        assert.equal(closed.ok, false);
        assert.equal(closed.error, 'ECONNREFUSED');

        // A daemon in dry-run mode proves startTsfilter and that the real lines are read, before any nftables code.
        const d = await lab.startTsfilter(sshd, { settings: { firewall: 'dry-run' } });

        const attempts: [Family, string, string][] = [
          [4, 'nosuchuser', ADDR.attacker[4]],
          [4, 'root', ADDR.attacker[4]],
          [6, 'nosuchuser', ADDR.attacker[6]],
          [6, 'root', ADDR.attacker[6]],
        ];
        for (const [f, user, ip] of attempts) {
          const before = sshd.read().length;
          const r = await lab.failLogin('attacker', f, user, 'wrong-password');
          assert.notEqual(r.code, 0, `login as ${user} over IPv${f} must fail: ${r.stderr}`);
          assert.match(r.stderr, /Permission denied/, `IPv${f} ${user}`);
          await waitForLines(() => sshd.read().slice(before), expectedLines(logging, user, ip));
          // One attempt with NumberOfPasswordPrompts=1 is exactly one "Failed password" line.
          await new Promise((res) => setTimeout(res, 100));
          assert.equal((sshd.read().slice(before).match(/Failed password for/g) ?? []).length, 1, sshd.read().slice(before));
        }
        // The admin fails too; its lines are there with its own address.
        for (const f of [4, 6] as const) {
          const before = sshd.read().length;
          await lab.failLogin('admin', f, 'nosuchuser', 'wrong-password');
          await waitForLines(() => sshd.read().slice(before), expectedLines(logging, 'nosuchuser', ADDR.admin[f]));
        }
        const log = sshd.read();
        // sshd -E writes its stderr log format: no header, and every line ends in CR LF; rsyslog writes plain LF.
        if (logging === 'file') assert.match(log, /^Failed password for root from 192\.0\.2\.66 port \d+ ssh2\r\n/m);
        else assert.doesNotMatch(log, /\r/);
        for (const l of log.split('\n').filter((x) => x.includes(ADDR.attacker[4]) && !/Connection closed by [\d.]+ port/.test(x))) {
          t.diagnostic(`sample (${logging}): ${JSON.stringify(l)}`);
        }

        // `tsfilter test ssh` (inside the server namespace) matches the failure lines with the right addresses.
        const tr = await lab.tsfilterCli(['test', 'ssh', sshd.logFile, '--json', '--config', d.configFile]);
        assert.equal(tr.code, 0, tr.stderr);
        const ips = tr.stdout
          .trim()
          .split('\n')
          .map((l) => JSON.parse(l) as { ip?: string; kind?: string })
          .filter((o) => o.kind === 'failure' || o.kind === 'instant')
          .map((o) => o.ip);
        // Per address: 3 lines for the invalid user + 2 for root; the admin: 3 per family.
        assert.equal(ips.filter((ip) => ip === ADDR.attacker[4]).length, 5, tr.stdout);
        assert.equal(ips.filter((ip) => ip === ADDR.attacker[6]).length, 5, tr.stdout);
        assert.equal(ips.filter((ip) => ip === ADDR.admin[4]).length, 3, tr.stdout);
        assert.equal(ips.filter((ip) => ip === ADDR.admin[6]).length, 3, tr.stdout);

        // The dry-run daemon followed the live log. From a file without a process id (sshd -E), the 5 matching lines
        // per address count 5; through syslog each line names its sshd process, so the 2 attempts count 2 (one per
        // login attempt, not per line) and 3 more attempts are needed. The admin is ignored either way.
        if (logging === 'syslog') {
          await new Promise((res) => setTimeout(res, 500));
          assert.equal(d.process.count(/msg=banned /), 0, `two attempts must not ban:\n${d.out}`);
          for (let i = 0; i < 3; i++) for (const f of [4, 6] as const) await lab.failLogin('attacker', f, 'root', 'wrong-password');
        }
        await d.waitFor(new RegExp(`msg=banned ip=${esc(ADDR.attacker[4])} rule=ssh`), 10_000);
        await d.waitFor(new RegExp(`msg=banned ip=${esc(ADDR.attacker[6])} rule=ssh`), 10_000);
        await new Promise((res) => setTimeout(res, 300));
        assert.equal(d.process.count(/msg=banned ip=192\.0\.2\.10 /), 0, d.out);
        assert.equal(d.process.count(/msg=banned ip=2001:db8::10 /), 0, d.out);
        assert.equal((await d.stop('SIGTERM')).code, 0, d.process.err);
      } finally {
        await lab.dispose();
      }
      assert.ok(lab.namespacesGone(), 'namespaces deleted');
      assert.equal(existsSync(lab.dir), process.env.TSF_E2E_KEEP === '1', 'temp directory removed');
      t.diagnostic(`total ${Date.now() - t0} ms`);
    });
  });
}

test('the lab never touches the host: no /dev/log or firewall change, and dispose removes namespaces and processes even after a failure', async (t) => {
  if (!ready(t)) return;
  const hostDevLog = existsSync('/dev/log');
  const hostRuleset = () => spawnSync('nft', ['list', 'ruleset'], { encoding: 'utf8' }).stdout ?? '';
  const rulesetBefore = hostRuleset();
  let lab: Lab | undefined;
  const pids: number[] = [];
  await assert.rejects(
    Lab.with(async (l) => {
      lab = l;
      const sshd = await l.startSshd('syslog');
      pids.push(sshd.process.pid!, sshd.syslog!.pid!);
      // A connection left hanging: sshd forks a per-connection child the lab did not start directly.
      const hanging = l.spawn('attacker', [process.execPath, '-e', `require('node:net').connect(22, '${ADDR.server[4]}'); setInterval(() => {}, 1000)`]);
      pids.push(hanging.pid!);
      await new Promise((r) => setTimeout(r, 300));
      throw new Error('the test failed');
    }),
    /the test failed/,
  );
  assert.ok(lab);
  assert.ok(lab.namespacesGone(), 'namespaces deleted after a failure');
  for (const pid of pids) {
    assert.throws(() => process.kill(pid, 0), { code: 'ESRCH' }, `process ${pid} still alive`);
  }
  assert.equal(existsSync('/dev/log'), hostDevLog, "the host's /dev/log is untouched");
  assert.equal(hostRuleset(), rulesetBefore, "the host's nftables ruleset is untouched");
});
