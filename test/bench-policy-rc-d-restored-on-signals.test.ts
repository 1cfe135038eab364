/**
 * The bench installs sshguard and fail2ban under a policy-rc.d that exits 101. A Ctrl-C, SIGTERM or SIGHUP during
 * the install must not leave that file behind (no later apt upgrade would restart a service): the command running
 * is stopped, the file is put back as it was (or removed), and the process still ends by the signal it got.
 * Real processes: a node child runs withPolicyRcD on a policy-rc.d path in a temporary directory, with a long
 * `sleep` standing in for apt-get.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { until } from './helpers/daemon.ts';
import { processGone } from './helpers/process.ts';

const HOLD = fileURLToPath(new URL('../bench/lib/hold-services.ts', import.meta.url));

const CHILD = `
import { writeFileSync } from 'node:fs';
import { withPolicyRcD } from ${JSON.stringify(HOLD)};
const [policy, pidFile, afterFile, seconds] = process.argv.slice(2);
await withPolicyRcD(
  async (held) => {
    await held.run('sh', ['-c', 'echo $$ > "$0"; exec sleep "$1"', pidFile, seconds]);
    // What installPeers does: no further apt-get run once interrupted (this one would take a minute).
    if (!held.interrupted()) await held.run('sh', ['-c', 'exec sleep "$0"', seconds]);
  },
  { path: policy, log: () => {}, after: (sig) => writeFileSync(afterFile, String(sig)) },
);
process.stdout.write('finished\\n');
`;



async function scenario(opts: { signal: NodeJS.Signals | null; before: { text: string; mode: number } | null }) {
  const dir = mkdtempSync(path.join(tmpdir(), 'tsf-policy-rc-'));
  try {
    // .mts: an ES module (top-level await) outside the project's package.json.
    const script = path.join(dir, 'child.mts');
    writeFileSync(script, CHILD);
    const policy = path.join(dir, 'policy-rc.d');
    const pidFile = path.join(dir, 'pid');
    const afterFile = path.join(dir, 'after');
    if (opts.before) {
      writeFileSync(policy, opts.before.text);
      chmodSync(policy, opts.before.mode);
    }
    const seconds = opts.signal ? '60' : '0';
    const child = spawn(process.execPath, ['--import', 'tsx', script, policy, pidFile, afterFile, seconds], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (out += d));
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
    await until(() => {
      if (existsSync(pidFile) && readFileSync(pidFile, 'utf8').trim() !== '') return true;
      if (child.exitCode !== null || child.signalCode !== null) assert.fail(`the child ended before its stand-in for apt-get started: ${out}`);
      return false;
    }, 30_000, 'the stand-in for apt-get to start');
    const pid = Number(readFileSync(pidFile, 'utf8'));
    if (opts.signal) {
      assert.match(readFileSync(policy, 'utf8'), /\nexit 101\n$/, 'the policy-rc.d in force while the install runs');
      child.kill(opts.signal);
    }
    const end = await exited;
    const policyLeft = existsSync(policy) ? { text: readFileSync(policy, 'utf8'), mode: statSync(policy).mode & 0o7777 } : null;
    return { end, out, pid, policyLeft, after: existsSync(afterFile) ? readFileSync(afterFile, 'utf8') : null };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) {
  test(`${signal} during the install: apt-get's stand-in stopped, a policy-rc.d that was not there removed, and the process ends by ${signal}`, async () => {
    const r = await scenario({ signal, before: null });
    assert.equal(r.end.signal, signal, `ended by the signal, not exit ${r.end.code}: ${r.out}`);
    assert.doesNotMatch(r.out, /finished/);
    assert.equal(r.policyLeft, null, 'no policy-rc.d left behind');
    assert.equal(r.after, signal, 'the after-install steps (disabling boot links, stopping daemons) still ran');
    await until(() => processGone(r.pid), 30_000, `pid ${r.pid} (the stand-in for apt-get) to end`);
  });
}

test("SIGINT during the install: a policy-rc.d that was there (Docker's) is put back byte for byte, mode included", async () => {
  const before = { text: '#!/bin/sh\n# the admin\'s own\nexit 0\n', mode: 0o750 };
  const r = await scenario({ signal: 'SIGINT', before });
  assert.equal(r.end.signal, 'SIGINT', r.out);
  assert.deepEqual(r.policyLeft, before);
  await until(() => processGone(r.pid), 30_000, `pid ${r.pid} to end`);
});

test('an install that is not interrupted runs every step, puts policy-rc.d back, and exits normally', async () => {
  const before = { text: '#!/bin/sh\nexit 101\n', mode: 0o755 };
  const r = await scenario({ signal: null, before });
  assert.equal(r.end.code, 0, r.out);
  assert.match(r.out, /finished/);
  assert.equal(r.after, 'null');
  assert.deepEqual(r.policyLeft, before);
});
