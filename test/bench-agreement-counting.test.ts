process.env.TZ = 'UTC';
/**
 * The agreement bench's pure parts: fail2ban's ban decision (FailManager's maxretry/findtime counting) re-done over
 * fail2ban-regex's output, checked against hand-worked cases and against fail2ban's own FailManager code on the real
 * corpus; and the difference listing (both directions, reason and sample line) on small files of real log lines.
 * No timings are asserted: speed is the bench's business.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { countFail2banBans, diffBans, groupDiffs, lineShape, parseMsgRows, parseRows, pyRound, type Failure } from '../bench/lib/fail2ban-count.ts';
import { agreementReport, fail2banSide, tsfilterSide } from '../bench/agreement.ts';
import { FAIL2BAN_REGEX, FAIL2BAN_SSHD_FILTER } from '../bench/peers.ts';
import { requirePrereq } from './helpers/prereq.ts';

const CORPUS = fileURLToPath(new URL('../../shared/corpus/ssh/', import.meta.url));
const HOW = 'install the peers with `BENCH_INSTALL_PEERS=1 node --import tsx bench/peers.ts --install` (Debian fail2ban, services not started)';
const haveFail2ban = existsSync(FAIL2BAN_REGEX) && existsSync(FAIL2BAN_SSHD_FILTER);
const opts = { maxretry: 5, findtime: 600 };
const fails = (ip: string, times: number[]): Failure[] => times.map((time) => ({ ip, time }));

test('fail2ban counting bans at the maxretry-th failure within findtime, and starts over after the ban', () => {
  const bans = countFail2banBans([...fails('198.51.100.7', [0, 10, 20, 30, 40, 50, 60, 70, 80, 90])], opts);
  assert.deepEqual(bans, [
    { ip: '198.51.100.7', time: 40, retry: 5 },
    { ip: '198.51.100.7', time: 90, retry: 5 },
  ]);
  // Four is not enough, and other addresses do not add to it.
  assert.deepEqual(countFail2banBans([...fails('198.51.100.7', [0, 1, 2, 3]), ...fails('203.0.113.9', [4])], opts), []);
});

test('fail2ban counting forgets an address whose last failure is findtime old (FailManager.cleanup)', () => {
  // 600 s after the 4th failure the ticket is gone: the 5th starts a new count.
  assert.deepEqual(countFail2banBans(fails('198.51.100.7', [0, 1, 2, 3, 603]), opts), []);
  // 599 s after it, the ticket is kept (and no rate scaling: the first failure is within findtime of the 5th).
  assert.deepEqual(countFail2banBans(fails('198.51.100.7', [0, 1, 2, 3, 599]), opts), [{ ip: '198.51.100.7', time: 599, retry: 5 }]);
});

test('fail2ban counting scales the count by rate once the first failure is older than findtime (FailTicket.adjustTime)', () => {
  // 500: 2. 1000: round(2/1000*600) = 1, +1 = 2. 1050: round(2/650*600) = 2, +1 = 3. 1100: round(3/650*600) = 3, +1 = 4.
  // 1150: round(4/650*600) = 4, +1 = 5 -> ban, although an exact window (550, 1150] holds only 4 failures.
  assert.deepEqual(countFail2banBans(fails('2001:db8::5', [0, 500, 1000, 1050, 1100, 1150]), opts), [{ ip: '2001:db8::5', time: 1150, retry: 5 }]);
  const exact = [0, 500, 1000, 1050, 1100, 1150].filter((t) => t > 1150 - 600).length;
  assert.equal(exact, 4);
});

test("pyRound rounds halves to even, as Python 3's round() in FailTicket.adjustTime does", () => {
  assert.deepEqual([0.5, 1.5, 2.5, 2.4999, 2.5001, 3.7].map(pyRound), [0, 2, 2, 2, 3, 4]);
});

test('fail2ban-regex -o output is read: one failure per row, the counted lines per address', () => {
  const rows = [
    "['122.176.37.221',\t1774620099.0,\t{'mlfid': ' ip-10-77-20-248 sshd[2938]: ', 'user': 'root', 'ip4': '122.176.37.221', 'ip6': None, 'dns': None, 'users': {'root'}}],",
    "['122.176.37.221',\t1774620099.0,\t{'mlfid': ' ip-10-77-20-248 sshd[2938]: ', 'user': 'root', 'ip4': '122.176.37.221'}],",
    "['2001:DB8:0:0::7',\t1774623297.5,\t{'user': 'x'}],",
    'Lines: 7121 lines, 4216 ignored, 1120 matched',
  ].join('\n');
  assert.deepEqual(parseRows(rows), [
    { ip: '122.176.37.221', time: 1774620099 },
    { ip: '122.176.37.221', time: 1774620099 },
    { ip: '2001:db8::7', time: 1774623297.5 },
  ]);
  const msg = [
    '122.176.37.221\t1774620099.0\tMar 27 14:01:39 ip-10-77-20-248 sshd[2938]: error: maximum authentication attempts exceeded for root from 122.176.37.221 port 37107 ssh2 [preauth]',
    '122.176.37.221\t1774620099.0\tMar 27 14:01:39 ip-10-77-20-248 sshd[2938]: Disconnecting: Too many authentication failures [preauth]',
    '122.176.37.221\t1774620099.0\tMar 27 14:01:39 ip-10-77-20-248 sshd[2938]: error: maximum authentication attempts exceeded for root from 122.176.37.221 port 37107 ssh2 [preauth]',
  ].join('\n');
  const lines = parseMsgRows(msg);
  assert.equal(lines.get('122.176.37.221')?.length, 2);
});

test('line shapes group differences of one kind whatever the address, port, pid or user', () => {
  assert.equal(
    lineShape('Mar 27 14:01:39 ip-10-77-20-248 sshd[2938]: error: maximum authentication attempts exceeded for root from 122.176.37.221 port 37107 ssh2 [preauth]'),
    'sshd: error: maximum authentication attempts exceeded for <USER> from <IP> port <N> ssh2 [preauth]',
  );
  assert.equal(
    lineShape('Nov 30 10:57:06 ip-172-31-27-153 sshd[22286]: Connection closed by 122.225.109.208 [preauth]'),
    lineShape('Dec  1 02:32:33 ip-172-31-27-153 sshd[24263]: Connection closed by 2001:db8::1 [preauth]'),
  );
});

/** The python fail2ban-regex runs with, so fail2ban's own modules import. */
function fail2banPython(): string {
  const shebang = readFileSync(FAIL2BAN_REGEX, 'utf8').split('\n')[0] ?? '';
  return shebang.startsWith('#!') ? shebang.slice(2).trim().split(/\s+/)[0]! : '/usr/bin/python3';
}

const FAILMANAGER_PY = `
import json, sys
from fail2ban.server.failmanager import FailManager, FailManagerEmpty
from fail2ban.server.ticket import FailTicket
o = json.load(sys.stdin)
fm = FailManager()
fm.setMaxRetry(o['maxretry'])
fm.setMaxTime(o['findtime'])
bans = []
for ip, t in o['failures']:
    fm.cleanup(t)
    if fm.addFailure(FailTicket(ip, t)) >= o['maxretry']:
        try:
            bans.append([ip, t, fm.toBan(ip).getRetry()])
        except FailManagerEmpty:
            pass
print(json.dumps(bans))
`;

test("the counting decides exactly what fail2ban's own FailManager decides, on every failure of the corpus logs", (t) => {
  if (!requirePrereq(t, haveFail2ban, 'fail2ban (fail2ban-regex and its sshd filter)', HOW)) return;
  for (const file of ['elastic-auth.log', 'secrepo-auth-part.log']) {
    for (const [maxretry, findtime] of [[5, 600], [3, 3600], [2, 60]] as const) {
      const r = spawnSync(FAIL2BAN_REGEX, ['-o', 'row', '--usedns=no', CORPUS + file, `${FAIL2BAN_SSHD_FILTER}[mode=aggressive]`], { encoding: 'utf8', maxBuffer: 1 << 28 });
      assert.equal(r.status, 0, r.stderr);
      const failures = parseRows(r.stdout);
      assert.ok(failures.length > 100, `${file}: ${failures.length} failures`);
      const py = spawnSync(fail2banPython(), ['-c', FAILMANAGER_PY], {
        input: JSON.stringify({ maxretry, findtime, failures: failures.map((f) => [f.ip, f.time]) }),
        encoding: 'utf8',
        maxBuffer: 1 << 28,
      });
      assert.equal(py.status, 0, py.stderr);
      const theirs = JSON.parse(py.stdout) as [string, number, number][];
      const ours = countFail2banBans(failures, { maxretry, findtime }).map((b) => [b.ip, b.time, b.retry]);
      assert.ok(theirs.length > 0, `${file} maxretry ${maxretry}: fail2ban bans nobody`);
      assert.deepEqual(ours, theirs, `${file}, maxretry ${maxretry}, findtime ${findtime}`);
    }
  }
});

test('the agreement on small files of real lines lists each difference, both directions, with its reason and a sample line', (t) => {
  if (!requirePrereq(t, haveFail2ban, 'fail2ban (fail2ban-regex and its sshd filter)', HOW)) return;
  const dir = mkdtempSync(path.join(tmpdir(), 'tsf-bench-agree-'));
  try {
    // The first 600 lines of a real server's log (read from the corpus, written to a temporary file).
    const a = path.join(dir, 'elastic-600.log');
    writeFileSync(a, readFileSync(CORPUS + 'elastic-auth.log', 'utf8').split('\n').slice(0, 600).join('\n') + '\n');
    const tsA = tsfilterSide(a, opts);
    const normal = diffBans(tsA, fail2banSide(FAIL2BAN_REGEX, a, 'normal', opts));
    // Five `Invalid user` within seconds: both ban.
    assert.ok(normal.both.includes('91.197.232.109'), `both: ${normal.both.join(' ')}`);
    // One `maximum authentication attempts exceeded` line: TSFilter bans at once, fail2ban counts two failures.
    const instant = normal.tsfilterOnly.find((d) => d.ip === '122.176.37.221');
    assert.ok(instant, `TSFilter only: ${normal.tsfilterOnly.map((d) => d.ip).join(' ')}`);
    assert.equal(instant.reason, 'tsfilter-instant-ban');
    assert.match(instant.sample, /sshd\[2938\]: error: maximum authentication attempts exceeded for root from 122\.176\.37\.221 /);
    assert.equal(instant.fail2banFailures, 2);
    assert.deepEqual(normal.fail2banOnly, []);
    for (const d of normal.tsfilterOnly) {
      assert.ok(d.sample.includes(d.ip), `${d.ip}: its sample line names it: ${d.sample}`);
      assert.ok(!normal.both.includes(d.ip));
    }

    // One scanner's five lines from another server: fail2ban's aggressive mode counts each, TSFilter counts two.
    const b = path.join(dir, 'secrepo-one-ip.log');
    writeFileSync(b, readFileSync(CORPUS + 'secrepo-auth-part.log', 'utf8').split('\n').filter((l) => l.includes(' 122.225.109.208')).join('\n') + '\n');
    const tsB = tsfilterSide(b, opts);
    assert.equal(tsB.bans.size, 0);
    const aggressive = diffBans(tsB, fail2banSide(FAIL2BAN_REGEX, b, 'aggressive', opts));
    assert.deepEqual(aggressive.both, []);
    assert.deepEqual(aggressive.tsfilterOnly, []);
    assert.equal(aggressive.fail2banOnly.length, 1);
    const f = aggressive.fail2banOnly[0]!;
    assert.equal(f.ip, '122.225.109.208');
    assert.equal(f.reason, 'only-fail2ban-counts-line');
    assert.equal(f.sample, 'Nov 30 10:57:06 ip-172-31-27-153 sshd[22286]: Connection closed by 122.225.109.208 [preauth]');
    assert.equal(f.fail2banFailures, 5);
    assert.equal(f.tsfilterLines, 2);
    // In the jail's default mode neither bans it.
    const normalB = diffBans(tsB, fail2banSide(FAIL2BAN_REGEX, b, 'normal', opts));
    assert.deepEqual([normalB.both, normalB.tsfilterOnly, normalB.fail2banOnly], [[], [], []]);

    // The listing groups by who banned, why and the kind of line, with one sample each.
    const groups = groupDiffs([...normal.tsfilterOnly, ...aggressive.fail2banOnly]);
    assert.deepEqual(
      groups.map((g) => [g.bannedBy, g.reason]).sort(),
      [['fail2ban', 'only-fail2ban-counts-line'], ...groups.filter((g) => g.bannedBy === 'tsfilter').map(() => ['tsfilter', 'tsfilter-instant-ban'])].sort(),
    );
    assert.equal(groups.reduce((n, g) => n + g.count, 0), normal.tsfilterOnly.length + 1);
    const report = agreementReport('test', aggressive);
    assert.match(report, /banned only by fail2ban: 1 address — fail2ban's sshd filter counts this line; TSFilter's ssh rule does not match it/);
    assert.match(report, /line kind: sshd: Connection closed by <IP> \[preauth\]/);
    assert.match(report, /sample: +Nov 30 10:57:06 .*Connection closed by 122\.225\.109\.208 \[preauth\]/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
