/*
 * End-to-end proof (issue 3, section 5): a real sshd in a server namespace, attacked with sshpass from an attacker
 * namespace over IPv4 and IPv6, `tsfilter run` in the server namespace banning it in nftables; the admin (in
 * ignored_ips), failing just as often, still connects; `tsfilter unban` and the expiry of a short ban_time restore
 * access; SIGKILL + restart keeps every ban; `nft flush ruleset` behind the daemon's back brings the bans back.
 * Two variants: sshd logging to a file (sshd -E, lines without a header) and through a private rsyslogd (RFC 3339).
 * The lab (test/helpers/e2e-lab.ts) removes its namespaces and processes even when a step fails.
 * Needs root, sshd, sshpass, nft, rsyslogd, iproute2: skipped with a message off CI, failed on CI (CI=true).
 */
import { describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { ADDR, HOW_TO_ENABLE, Lab, missingPrerequisites, type Family, type TsfilterDaemon } from './helpers/e2e-lab.ts';
import { requirePrereq } from './helpers/prereq.ts';

const missing = missingPrerequisites();
const ready = (t: TestContext) => requirePrereq(t, missing.length === 0, `for the end-to-end lab: ${missing.join('; ')}`, HOW_TO_ENABLE);

const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
const bannedRe = (ip: string) => new RegExp(`msg=banned ip=${esc(ip)} rule=ssh`);
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Runs one named step and reports its duration, so a failure says which step and the timings show up in the log. */
async function step<T>(t: TestContext, name: string, fn: () => Promise<T>): Promise<T> {
  const t0 = Date.now();
  try {
    const r = await fn();
    t.diagnostic(`${name}: ${Date.now() - t0} ms`);
    return r;
  } catch (e) {
    t.diagnostic(`${name}: FAILED after ${Date.now() - t0} ms`);
    if (e instanceof Error) e.message = `[step: ${name}] ${e.message}`;
    throw e;
  }
}

/**
 * The attacker fails password logins over `family` (alternating a nonexistent user and root with a wrong password)
 * until the daemon logs the ban; before each attempt the admin fails the same way. Returns the number of attempts.
 */
async function attackUntilBanned(lab: Lab, d: TsfilterDaemon, family: Family, maxAttempts = 6): Promise<number> {
  const ip = ADDR.attacker[family];
  const since = d.mark();
  for (let n = 1; n <= maxAttempts; n++) {
    const user = n % 2 === 1 ? 'nosuchuser' : 'root';
    const admin = await lab.failLogin('admin', family, user, 'wrong-password');
    assert.match(admin.stderr, /Permission denied/, `the admin's attempt ${n} over IPv${family} must reach sshd and fail: ${admin.stderr}`);
    const r = await lab.failLogin('attacker', family, user, 'wrong-password');
    if (!/Permission denied/.test(r.stderr)) {
      // The ban, earned by the earlier attempts' lines, can land while this attempt is still talking to sshd: then
      // its packets are dropped mid-way. That is a ban, not a failure of the lab; anything else is.
      await d.waitFor(bannedRe(ip), 3000, since).catch(() => {
        assert.fail(`the attacker's attempt ${n} over IPv${family} must reach sshd and fail: ${r.stderr}`);
      });
      return n;
    }
    try {
      await d.waitFor(bannedRe(ip), 1500, since);
      return n;
    } catch {
      /* not yet */
    }
  }
  await d.waitFor(bannedRe(ip), 3000, since);
  return maxAttempts;
}

/** Every `ip` field anywhere in `tsfilter list --json` output (one JSON document, or one object per line). */
function listedIps(stdout: string): string[] {
  const docs: unknown[] = [];
  try {
    docs.push(JSON.parse(stdout));
  } catch {
    for (const l of stdout.split('\n')) if (l.trim()) docs.push(JSON.parse(l));
  }
  const ips: string[] = [];
  const walk = (v: unknown) => {
    if (Array.isArray(v)) v.forEach(walk);
    else if (v && typeof v === 'object') {
      for (const [k, x] of Object.entries(v)) {
        if (k === 'ip' && typeof x === 'string') ips.push(x);
        else walk(x);
      }
    }
  };
  docs.forEach(walk);
  return ips;
}

const FOREIGN_TABLE = `table inet lab_admin {
  set trusted { type ipv4_addr; elements = { 192.0.2.200 } }
  chain input { type filter hook input priority 0; policy accept; ip saddr @trusted accept; }
}
`;

/** The daemon started with the nftables enforcer (not the dry-run fallback). */
function assertEnforcing(d: TsfilterDaemon): void {
  const m = d.out.match(/msg=started .*$/m);
  assert.ok(m, d.out);
  assert.match(m[0], /enforcer=\S*nftables/, `the daemon must enforce with nftables:\n${d.out}`);
}

async function assertBanned(lab: Lab, family: Family, why: string): Promise<void> {
  const ip = ADDR.attacker[family];
  const p = await lab.waitConnect('attacker', family, false, 5000);
  assert.equal(p.ok, false, `${why}: the attacker (${ip}) still connects over IPv${family}`);
  assert.ok(await lab.nftHasElement(ip), `${why}: ${ip} is not in the inet tsfilter sets:\n${await lab.nftTable()}`);
}

async function assertAdminConnects(lab: Lab, family: Family): Promise<void> {
  const p = await lab.probe('admin', family);
  assert.ok(p.ok, `the admin (${ADDR.admin[family]}, ignored) cannot connect over IPv${family}: ${JSON.stringify(p)}`);
  assert.equal(await lab.nftHasElement(ADDR.admin[family]), false, 'the admin is in the ban sets');
}

// Every test has its own lab (namespaces, sshd, daemon), so they run side by side.
describe('end to end against a real sshd, attacked from another network namespace', { concurrency: true }, () => {
  for (const logging of ['file', 'syslog'] as const) {
    const variant = logging === 'file' ? 'sshd -E log file' : 'rsyslog, RFC 3339';
    test(`${variant}: bans the attacker over IPv4 and IPv6, never the admin; unban restores access; bans survive SIGKILL + restart and a flushed ruleset`, { timeout: 240_000 }, async (t) => {
      if (!ready(t)) return;
      const t0 = Date.now();
      const lab = await Lab.create();
      try {
        const sshd = await step(t, 'start sshd', () => lab.startSshd(logging));
        // An admin's own table, which TSFilter must never touch (it owns only inet tsfilter).
        const foreign = await lab.nft(['-f', '-'], { input: FOREIGN_TABLE });
        assert.equal(foreign.code, 0, foreign.stderr);
        const foreignBefore = (await lab.nft(['list', 'table', 'inet', 'lab_admin'])).stdout;
        const d = await step(t, 'start tsfilter run (nftables)', () => lab.startTsfilter(sshd));
        assertEnforcing(d);

        // --- IPv4, then IPv6: failures -> ban -> the attacker's next TCP connection fails; the admin still connects.
        for (const f of [4, 6] as const) {
          const n = await step(t, `IPv${f}: fail logins until banned`, () => attackUntilBanned(lab, d, f));
          t.diagnostic(`IPv${f}: banned after ${n} attempts`);
          await step(t, `IPv${f}: attacker's next connection fails`, () => assertBanned(lab, f, 'after the ban'));
          await step(t, `IPv${f}: admin, failing as often, still connects`, async () => {
            assert.equal(d.process.count(bannedRe(ADDR.admin[f])), 0, `the admin was banned:\n${d.out}`);
            await assertAdminConnects(lab, f);
          });
          if (f === 4) {
            // The ban is per address: the same attacker over IPv6 is not banned yet.
            assert.ok(await lab.canConnect('attacker', 6), 'an IPv4 ban must not block the IPv6 address');
          }
        }

        // --- tsfilter unban (control socket CLI) restores access at once.
        await step(t, 'tsfilter unban restores access', async () => {
          for (const f of [4, 6] as const) {
            const r = await d.cli(['unban', ADDR.attacker[f]]);
            assert.equal(r.code, 0, `tsfilter unban ${ADDR.attacker[f]}: ${r.stdout}${r.stderr}`);
          }
          for (const f of [4, 6] as const) {
            const p = await lab.waitConnect('attacker', f, true, 5000);
            assert.ok(p.ok, `after unban the attacker still cannot connect over IPv${f}: ${JSON.stringify(p)}`);
            assert.equal(await lab.nftHasElement(ADDR.attacker[f]), false, `after unban ${ADDR.attacker[f]} is still in the sets`);
          }
        });

        // --- Banned again; SIGKILL: the kernel keeps dropping; the restarted daemon lists and keeps every ban.
        for (const f of [4, 6] as const) {
          await step(t, `IPv${f}: banned again`, () => attackUntilBanned(lab, d, f));
          await assertBanned(lab, f, 'second ban');
        }
        await step(t, 'SIGKILL the daemon: the bans stay in the kernel', async () => {
          await d.stop('SIGKILL');
          for (const f of [4, 6] as const) await assertBanned(lab, f, 'with the daemon killed');
        });
        await step(t, 'restart: tsfilter list --json shows every ban, still enforced', async () => {
          await d.restart();
          const r = await d.cli(['list', '--json']);
          assert.equal(r.code, 0, `tsfilter list --json: ${r.stdout}${r.stderr}`);
          const ips = listedIps(r.stdout);
          t.diagnostic(`tsfilter list --json: ${r.stdout.trim().split('\n')[0]}`);
          for (const f of [4, 6] as const) assert.ok(ips.includes(ADDR.attacker[f]), `list --json lacks ${ADDR.attacker[f]}:\n${r.stdout}`);
          assert.ok(!ips.includes(ADDR.admin[4]) && !ips.includes(ADDR.admin[6]), r.stdout);
          // Banned, unbanned, banned again: the second ban of each address (escalation counts it).
          for (const l of r.stdout.split('\n').filter((x) => x.includes('"ip"'))) {
            const b = JSON.parse(l) as { ip: string; ban_count?: number };
            if (b.ip === ADDR.attacker[4] || b.ip === ADDR.attacker[6]) assert.equal(b.ban_count, 2, l);
          }
          for (const f of [4, 6] as const) await assertBanned(lab, f, 'after the restart');
          await assertAdminConnects(lab, 4);
        });

        const foreignAfter = await lab.nft(['list', 'table', 'inet', 'lab_admin']);
        assert.equal(foreignAfter.stdout, foreignBefore, 'TSFilter changed a table that is not its own');

        // --- An admin flushes the whole ruleset behind the daemon's back: the bans come back within seconds.
        await step(t, 'nft flush ruleset: bans restored within seconds', async () => {
          const fl = await lab.nft(['flush', 'ruleset']);
          assert.equal(fl.code, 0, fl.stderr);
          const flushedAt = Date.now();
          // (No check that the table is gone first: a daemon watching `nft monitor` may restore it at once.)
          const deadline = flushedAt + 8000;
          while (!((await lab.nftHasElement(ADDR.attacker[4])) && (await lab.nftHasElement(ADDR.attacker[6])))) {
            if (Date.now() > deadline) assert.fail(`bans not restored 8 s after nft flush ruleset:\n${await lab.nftTable()}\n--- daemon\n${d.out}`);
            await sleep(100);
          }
          t.diagnostic(`bans restored ${Date.now() - flushedAt} ms after the flush`);
          for (const f of [4, 6] as const) await assertBanned(lab, f, 'after the flush');
          await assertAdminConnects(lab, 6);
        });

        await step(t, 'SIGTERM: clean exit, bans stay', async () => {
          const r = await d.stop('SIGTERM');
          assert.equal(r.code, 0, d.process.err);
          for (const f of [4, 6] as const) await assertBanned(lab, f, 'after SIGTERM');
        });
      } finally {
        await lab.dispose();
        assert.ok(lab.namespacesGone(), 'namespaces deleted');
      }
      t.diagnostic(`total ${Date.now() - t0} ms`);
    });

    test(`${variant}: a short ban_time expires by itself and the attacker connects again (deny_type REJECT: refused at once, not a timeout)`, { timeout: 120_000 }, async (t) => {
      if (!ready(t)) return;
      const t0 = Date.now();
      const lab = await Lab.create();
      try {
        const sshd = await step(t, 'start sshd', () => lab.startSshd(logging));
        const d = await step(t, 'start tsfilter run (ban_time 3 s)', () =>
          lab.startTsfilter(sshd, { settings: { ban_time: 3, ban_time_factor: 1, deny_type: 'REJECT' } }),
        );
        assertEnforcing(d);
        const bannedAt: Record<Family, number> = { 4: 0, 6: 0 };
        for (const f of [4, 6] as const) {
          await step(t, `IPv${f}: banned`, () => attackUntilBanned(lab, d, f));
          bannedAt[f] = Date.now();
          await assertBanned(lab, f, 'short ban');
          // REJECT answers with a TCP reset or an ICMP unreachable: the connection fails fast.
          const p = await lab.probe('attacker', f, 22, 3000);
          assert.equal(p.ok, false);
          t.diagnostic(`IPv${f} REJECT: ${p.error} after ${p.ms} ms`);
          // Refused (a reset or an ICMP error), not a timeout: the error code tells REJECT from DROP.
          assert.ok(['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'EACCES', 'EPERM'].includes(p.error), `REJECT must refuse: ${JSON.stringify(p)}`);
        }
        await step(t, 'both bans expire', async () => {
          for (const f of [4, 6] as const) {
            const p = await lab.waitConnect('attacker', f, true, 10_000);
            assert.ok(p.ok, `IPv${f} ban did not expire within ~13 s: ${JSON.stringify(p)}\n${await lab.nftTable()}\n${d.out}`);
            t.diagnostic(`IPv${f}: access back ${Date.now() - bannedAt[f]} ms after the ban`);
            assert.equal(await lab.nftHasElement(ADDR.attacker[f]), false, 'expired element still in the set');
          }
          await d.waitFor(new RegExp(`msg="?ban expired"? ip=${esc(ADDR.attacker[4])}`), 5000);
        });
      } finally {
        await lab.dispose();
        assert.ok(lab.namespacesGone(), 'namespaces deleted');
      }
      t.diagnostic(`total ${Date.now() - t0} ms`);
    });
  }
});
