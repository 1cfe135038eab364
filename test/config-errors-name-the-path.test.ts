import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { ConfigError, parseConfig, loadConfigFile } from '../src/config/load.ts';
import { runCli, SHARED } from './helpers/cli.ts';

const pyfilter = () =>
  JSON.parse(readFileSync(path.join(SHARED, 'reference/pyfilter/config.default.json'), 'utf8')) as {
    settings: Record<string, unknown> & { rules: Record<string, Record<string, unknown>> };
  } & Record<string, unknown>;

function problems(json: unknown): { path: string; message: string }[] {
  try {
    parseConfig(json, 'test.json');
  } catch (e) {
    assert.ok(e instanceof ConfigError, `expected a ConfigError, got ${String(e)}`);
    return e.problems;
  }
  assert.fail('the config was accepted');
}

test('a value of the wrong type names its JSON path and what was expected', () => {
  const c = pyfilter();
  c.settings.failed_attempts = 'five';
  const p = problems(c);
  assert.equal(p[0]?.path, 'settings.failed_attempts');
  assert.match(p[0]!.message, /whole number/);
  assert.match(p[0]!.message, /"five"/);
});

test('an unknown option (a typo) is refused by name', () => {
  const c = pyfilter();
  c.settings.failed_attemps = 3;
  assert.deepEqual(problems(c), [{ path: 'settings.failed_attemps', message: 'unknown option' }]);
});

test('a bad ignored_ips entry names its index', () => {
  const c = pyfilter();
  c.settings.ignored_ips = ['127.0.0.1', '10.0.0.0/33', '2001:db8::/64'];
  const p = problems(c);
  assert.equal(p.length, 1);
  assert.equal(p[0]?.path, 'settings.ignored_ips[1]');
  assert.match(p[0]!.message, /10\.0\.0\.0\/33/);
});

test('a database other than sqlite or redis is fatal, as in PyFilter', () => {
  const c = pyfilter();
  c.settings.database = 'mongo';
  assert.equal(problems(c)[0]?.path, 'settings.database');
});

test('an invalid regex names the rule and the pattern index', () => {
  const c = pyfilter();
  (c.settings.rules.ssh!.regex_patterns as unknown[])[2] = '(unclosed';
  const p = problems(c);
  assert.equal(p[0]?.path, 'settings.rules.ssh.regex_patterns[2]');
});

test('invalid JSON is reported with its line and column', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'tsf-cfg-'));
  try {
    const f = path.join(dir, 'config.json');
    writeFileSync(f, '{\n  "settings": {\n    "failed_attempts": 5,\n  }\n}\n');
    assert.throws(() => loadConfigFile(f), (e: unknown) => {
      assert.ok(e instanceof ConfigError);
      assert.match(e.problems[0]!.message, /line 4, column/);
      return true;
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('`tsfilter config check` exits 2 on a bad file, naming the path, and 0 on a good one', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'tsf-cfg-'));
  try {
    const bad = pyfilter();
    bad.settings.request_time = -1;
    const f = path.join(dir, 'bad.json');
    writeFileSync(f, JSON.stringify(bad));
    const r = runCli(['config', 'check', '--config', f]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /settings\.request_time/);
    const good = runCli(['config', 'check', '--config', path.join(SHARED, 'reference/pyfilter/config.default.json')]);
    assert.equal(good.code, 0, good.stderr);
    assert.match(good.stdout, /OK/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('config check accepts exactly the ignored_ips that the daemon accepts', () => {
  const c = pyfilter();
  c.settings.ignored_ips = ['127.0.0.1', '10.1', '0x7f.1', 'fe80::1%eth0', '2001:db8::/48'];
  assert.deepEqual(
    problems(c).map((p) => p.path),
    ['settings.ignored_ips[1]', 'settings.ignored_ips[2]', 'settings.ignored_ips[3]'],
  );
});

test('a ban_time too large for a timestamp is refused at load time, not at the first ban', () => {
  const c = pyfilter();
  c.settings.ban_time = 1e13;
  const p = problems(c);
  assert.equal(p[0]?.path, 'settings.ban_time');
  assert.match(p[0]!.message, /at most/);
});

test('a bad rule name says what rule names may contain', () => {
  const c = pyfilter();
  c.settings.rules['my rule'] = { log_files: '', regex_patterns: [] };
  const p = problems(c);
  assert.equal(p[0]?.path, 'settings.rules.my rule');
  assert.match(p[0]!.message, /letters, digits/);
});
