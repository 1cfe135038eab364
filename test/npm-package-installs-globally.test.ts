import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { REPO, runCli, SHARED } from './helpers/cli.ts';
import { haveCommand, requirePrereq } from './helpers/prereq.ts';

/*
 * What the README tells a new user to do with a checkout: `npm pack`, then `sudo npm install -g ./tsfilter-*.tgz`.
 * Done for real here (into a temporary prefix instead of /usr): the registry serves the dependencies and
 * better-sqlite3 compiles from source, which takes about a minute.
 */

const LOGS = ['elastic-auth.log', 'secrepo-auth-part.log'].map((f) => path.join(SHARED, 'corpus/ssh', f));
const VERSION = (JSON.parse(readFileSync(path.join(REPO, 'package.json'), 'utf8')) as { version: string }).version;

/** The caller's environment without what `npm test` exports about this checkout (npm_package_*, npm_lifecycle_*). */
function npmEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!/^npm_(package|lifecycle)_/.test(k)) env[k] = v;
  // better-sqlite3 builds against the installed Node headers when prebuilt binaries cannot be downloaded (as .ci/run).
  if (!env.npm_config_nodedir && existsSync('/usr/include/node/node.h')) env.npm_config_nodedir = '/usr';
  env.npm_config_audit = 'false';
  env.npm_config_fund = 'false';
  env.npm_config_update_notifier = 'false';
  return env;
}

function run(cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = npmEnv()): SpawnSyncReturns<string> {
  return spawnSync(cmd, args, { cwd, env, encoding: 'utf8', timeout: 900_000, maxBuffer: 64 * 1024 * 1024 });
}

/** Waits for a condition the daemon brings about; the deadline only bounds a hang, it is not a speed check. */
async function until(ok: () => boolean, why: () => string, deadlineMs = 60_000): Promise<void> {
  const end = Date.now() + deadlineMs;
  while (!ok()) {
    if (Date.now() > end) assert.fail(why());
    await new Promise((r) => setTimeout(r, 50));
  }
}

const show = (r: SpawnSyncReturns<string>) => `exit ${r.status}${r.error ? ` (${r.error.message})` : ''}\n${r.stdout}\n${r.stderr}`;

test('npm pack gives a package whose global install is a working tsfilter command', { timeout: 1_200_000 }, async (t) => {
  if (!requirePrereq(t, haveCommand('npm'), 'npm', 'install Node.js 20 with npm')) return;
  const toolchain = ['make', 'g++', 'python3'].every((c) => spawnSync(c, ['--version'], { stdio: 'ignore' }).status === 0);
  if (!requirePrereq(t, toolchain, 'make, g++ or python3 (better-sqlite3 compiles from source)', 'apt-get install build-essential python3')) return;
  const ping = run('npm', ['ping'], tmpdir());
  if (!requirePrereq(t, ping.status === 0, 'the npm registry', `make the registry reachable (npm ping: ${ping.stderr.trim().split('\n').at(-1)})`)) return;

  const work = mkdtempSync(path.join(tmpdir(), 'tsfilter-npm-'));
  try {
    const packDir = path.join(work, 'pack');
    const prefix = path.join(work, 'prefix');
    mkdirSync(packDir);
    // `prepare` builds dist/ on the way, as it does for anyone packing a checkout.
    const pack = run('npm', ['pack', '--pack-destination', packDir], REPO);
    assert.equal(pack.status, 0, show(pack));
    const tarballs = readdirSync(packDir).filter((f) => f.endsWith('.tgz'));
    assert.deepEqual(tarballs, [`tsfilter-${VERSION}.tgz`]);
    const tgz = path.join(packDir, tarballs[0]!);

    // Only what runs: the built CLI, the bundled config, the dashboard's static files, the README and package.json;
    // no sources, tests or benchmarks.
    const list = run('tar', ['-tzf', tgz], work);
    assert.equal(list.status, 0, show(list));
    const entries = list.stdout.split('\n').filter(Boolean);
    for (const needed of ['package/package.json', 'package/README.md', 'package/config/config.default.json', 'package/dist/cli/main.js', 'package/dist/daemon.js', 'package/dist/api/http/dashboard.js', 'package/web/index.html', 'package/web/app.js', 'package/web/style.css']) {
      assert.ok(entries.includes(needed), `${needed} missing from the package:\n${entries.join('\n')}`);
    }
    const stray = entries.filter((e) => !/^package\/(dist\/.*\.js|config\/[^/]+\.json|web\/[a-z0-9-]+\.(html|js|css|svg)|README\.md|package\.json|LICENSE)$/.test(e));
    assert.deepEqual(stray, [], 'files in the package that the installed command does not need');

    const install = run('npm', ['install', '-g', '--prefix', prefix, tgz], work);
    assert.equal(install.status, 0, show(install));
    const bin = path.join(prefix, 'bin/tsfilter');
    const pkgDir = path.join(prefix, 'lib/node_modules/tsfilter');
    assert.equal(realpathSync(bin), path.join(pkgDir, 'dist/cli/main.js'));

    // From a directory that is neither the checkout nor the package, with no system config: the installed command
    // must find everything it needs inside the package.
    const env: NodeJS.ProcessEnv = { ...process.env, TZ: 'UTC', TSFILTER_SYSTEM_CONFIG: path.join(work, 'no-such-config.json') };
    delete env.TSFILTER_CONFIG;
    const tsfilter = (...args: string[]) => run(bin, args, work, env);

    const version = tsfilter('--version');
    assert.equal(version.status, 0, show(version));
    assert.equal(version.stdout.trim(), VERSION);

    const check = tsfilter('config', 'check');
    assert.equal(check.status, 0, show(check));
    assert.match(check.stdout, new RegExp(`^${path.join(pkgDir, 'config/config.default.json')}: OK \\(4 rules: ssh `));

    // The native SQLite addon and the whole pipeline: the same bans as the checkout finds on the same logs.
    const replay = tsfilter('replay', '--json', ...LOGS);
    assert.equal(replay.status, 0, show(replay));
    const summary = JSON.parse(replay.stdout.trim().split('\n').at(-1)!) as { summary: { bans: number } };
    assert.ok(summary.summary.bans > 0, replay.stdout.slice(-500));
    const fromSource = runCli(['replay', '--json', ...LOGS], { env: { TSFILTER_SYSTEM_CONFIG: env.TSFILTER_SYSTEM_CONFIG! } });
    assert.equal(fromSource.code, 0, fromSource.stderr);
    assert.equal(replay.stdout, fromSource.stdout);

    // The unit that `sudo tsfilter install-service` would write runs this installation, not the checkout.
    const unit = tsfilter('install-service', '--print');
    assert.equal(unit.status, 0, show(unit));
    assert.match(unit.stdout, new RegExp(`^ExecStart=\\S+ ${path.join(pkgDir, 'dist/cli/main.js')} run --config /`, 'm'));

    // The daemon itself (loaded lazily by `run`): it follows a log, bans, and answers on its control socket.
    const state = path.join(work, 'state');
    const log = path.join(work, 'app.log');
    writeFileSync(log, '');
    const cfg = path.join(work, 'daemon.json');
    writeFileSync(cfg, JSON.stringify({
      settings: {
        data_dir: state, control_socket: path.join(state, 'run/tsfilter.sock'), firewall: 'dry-run', protect_sessions: false,
        failed_attempts: 3, find_time: 600, ban_time: 600,
        rules: { app: { log_files: log, regex_patterns: ['^login failed from (?<host>\\S+)$'] } },
      },
      api: { listen: '127.0.0.1:0', metrics: false },
    }));
    const daemon = spawn(bin, ['run', '--config', cfg], { cwd: work, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let daemonOut = '';
    daemon.stdout.on('data', (d: Buffer) => (daemonOut += d));
    daemon.stderr.on('data', (d: Buffer) => (daemonOut += d));
    const exited = new Promise<number | null>((resolve) => daemon.on('exit', (code) => resolve(code)));
    try {
      await until(() => /msg=started/.test(daemonOut) || daemon.exitCode !== null, () => `the daemon did not start:\n${daemonOut}`);
      assert.equal(daemon.exitCode, null, daemonOut);
      for (let i = 0; i < 3; i++) appendFileSync(log, 'login failed from 203.0.113.77\n');
      await until(() => /msg=banned ip=203\.0\.113\.77 /.test(daemonOut), () => `no ban:\n${daemonOut}`);
      const list = tsfilter('list', '--json', '--config', cfg);
      assert.equal(list.status, 0, show(list));
      assert.equal((JSON.parse(list.stdout.trim()) as { ip: string }).ip, '203.0.113.77');
      // The dashboard, served from the installed package's web/ (dist/api/http/ is three levels below it too).
      const api = /msg="api: listening" url=(\S+)/.exec(daemonOut);
      assert.ok(api, `the API did not start:\n${daemonOut}`);
      for (const [p, file] of [['/', 'index.html'], ['/app.js', 'app.js'], ['/style.css', 'style.css']] as const) {
        const r: Response = await fetch(api[1] + p);
        assert.equal(r.status, 200, `${p}: ${daemonOut}`);
        assert.equal(await r.text(), readFileSync(path.join(pkgDir, 'web', file), 'utf8'), p);
      }
      assert.equal(((await (await fetch(`${api[1]}/api/bans`)).json()) as { total: number }).total, 1);
    } finally {
      daemon.kill('SIGTERM');
      await exited;
    }
    assert.equal(daemon.exitCode, 0, `SIGTERM: a clean stop\n${daemonOut}`);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
});
