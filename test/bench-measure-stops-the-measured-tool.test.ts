/**
 * bench/lib/measure.ts runs each tool under GNU time (or alone, sampling /proc). When a run times out, or the bench
 * itself is told to stop, the measured tool must end too, not only GNU time, its parent: a peer left running would
 * load the machine for the benches after it. Real processes: `sh` that writes its PID and execs `sleep 60`.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { GNU_TIME, measure } from '../bench/lib/measure.ts';
import { requirePrereq } from './helpers/prereq.ts';
import { until } from './helpers/daemon.ts';
import { processGone } from './helpers/process.ts';

const MEASURE = fileURLToPath(new URL('../bench/lib/measure.ts', import.meta.url));
const SLEEPER = ['sh', '-c', 'echo $$ > "$0"; exec sleep 60'];



const readPid = (f: string) => (existsSync(f) ? Number(readFileSync(f, 'utf8').trim()) || null : null);

/** When the check failed, the sleep this test started is still there: stopped by its PID. */
function cleanUp(pidFile: string): void {
  const pid = readPid(pidFile);
  if (pid !== null && !processGone(pid)) process.kill(pid, 'SIGKILL');
}

for (const method of ['rusage', 'proc-sampling'] as const) {
  test(`a run that times out (${method === 'rusage' ? 'under GNU time' : 'the /proc fallback'}) ends the measured tool itself`, async (t) => {
    if (method === 'rusage' && !requirePrereq(t, existsSync(GNU_TIME), GNU_TIME, 'apt-get install time')) return;
    const dir = mkdtempSync(path.join(tmpdir(), 'tsf-measure-timeout-'));
    const prev = process.env.BENCH_NO_GNU_TIME;
    if (method === 'proc-sampling') process.env.BENCH_NO_GNU_TIME = '1';
    try {
      const pidFile = path.join(dir, 'pid');
      // Long enough for sh to start and write its PID on a busy machine; the figure itself is not checked.
      const m = await measure([...SLEEPER, pidFile], { timeoutMs: 3000 });
      assert.equal(m.method, method);
      assert.notEqual(m.code, 0);
      assert.match(m.stderr, /timed out after 3000 ms/);
      const pid = readPid(pidFile);
      assert.ok(pid, 'the tool had started');
      await until(() => processGone(pid), 30_000, `the measured sleep (pid ${pid}) to end`);
    } finally {
      cleanUp(path.join(dir, 'pid'));
      if (prev === undefined) delete process.env.BENCH_NO_GNU_TIME;
      else process.env.BENCH_NO_GNU_TIME = prev;
      rmSync(dir, { recursive: true, force: true });
    }
  });
}

test('a bench told to stop (SIGTERM) ends the tool it is measuring, and ends by SIGTERM itself', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'tsf-measure-signal-'));
  try {
    const pidFile = path.join(dir, 'pid');
    const script = path.join(dir, 'bench.mts');
    writeFileSync(script, `import { measure } from ${JSON.stringify(MEASURE)};\nawait measure(${JSON.stringify([...SLEEPER, pidFile])});\nprocess.stdout.write('finished\\n');\n`);
    const child = spawn(process.execPath, ['--import', 'tsx', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (out += d));
    const exited = new Promise<NodeJS.Signals | null>((resolve) => child.on('exit', (_code, signal) => resolve(signal)));
    await until(() => {
      if (child.exitCode !== null) assert.fail(`the bench ended early: ${out}`);
      return readPid(pidFile) !== null;
    }, 30_000, 'the measured tool to start');
    const pid = readPid(pidFile)!;
    child.kill('SIGTERM');
    assert.equal(await exited, 'SIGTERM', out);
    await until(() => processGone(pid), 30_000, `the measured sleep (pid ${pid}) to end`);
  } finally {
    cleanUp(path.join(dir, 'pid'));
    rmSync(dir, { recursive: true, force: true });
  }
});
