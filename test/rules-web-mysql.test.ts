process.env.TZ = 'UTC';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { compileRule } from '../src/rules/compile.ts';
import { ruleConfigFromJson } from '../src/config/load.ts';

const config = JSON.parse(readFileSync(new URL('../config/config.default.json', import.meta.url), 'utf8'));
const NOW = Date.parse('2026-12-01T00:00:00Z');
const rule = (name: string) => compileRule(ruleConfigFromJson(name, config.settings.rules[name]), { warn: () => {} });

test('default apache/nginx rules: combined format, any timezone offset, POST to the urls list, status in http_status_blocks', () => {
  for (const name of ['apache', 'nginx']) {
    const r = rule(name);
    const blocks: number[] = config.settings.rules[name].http_status_blocks;
    const at = (status: number, url = '/login/', tz = '+0100', proto = 'HTTP/1.1') => r.match({
      text: `2001:db8::7 - alice [21/Nov/2026:05:04:00 ${tz}] "POST ${url} ${proto}" ${status} 512 "https://example.com/login/" "Mozilla/5.0"`,
      source: 'f',
    }, NOW);
    const m = at(401);
    assert.deepEqual([m?.ip, m?.time, m?.status, m?.kind], ['2001:db8::7', Date.parse('2026-11-21T04:04:00Z'), 401, 'failure']);
    assert.equal(at(401, '/login/', '-0700')?.time, Date.parse('2026-11-21T12:04:00Z'));
    assert.equal(at(403, '/admin/?next=/', '+0000', 'HTTP/2.0')?.status, 403);
    assert.equal(at(200, '/wp-login.php')?.ip, '2001:db8::7');
    for (const s of [200, 302, 303, 404, 500]) assert.equal(at(s) !== null, blocks.includes(s), `${name} status ${s}`);
    assert.equal(at(401, '/login/extra'), null);
    assert.equal(at(401, '/wp-loginXphp'), null); // the list entries are regexes: the dot is escaped
    assert.equal(r.match({ text: '203.0.113.1 - - [21/Nov/2026:05:04:00 +0000] "GET /login/ HTTP/1.1" 401 5 "-" "-"', source: 'f' }, NOW), null);
  }
});

test('default mysql rule: MySQL 8 (ISO) and MariaDB (space-padded) error logs', () => {
  const r = rule('mysql');
  const cases: [string, string, number, string][] = [
    ["2026-11-21T05:04:00.123456Z 8 [Note] [MY-010926] [Server] Access denied for user 'root'@'192.0.2.50' (using password: YES)", '192.0.2.50', Date.parse('2026-11-21T05:04:00.123Z'), 'root'],
    ["2026-11-21T05:04:00.123456+02:00 12 [Warning] [MY-010055] [Server] Access denied for user 'app'@'192.0.2.51' (using password: NO)", '192.0.2.51', Date.parse('2026-11-21T03:04:00.123Z'), 'app'],
    ["2026-11-21  5:04:00 8 [Warning] Access denied for user 'root'@'192.0.2.52' (using password: YES)", '192.0.2.52', Date.parse('2026-11-21T05:04:00Z'), 'root'],
    ["2026-11-21 15:04:00 8 [Warning] Access denied for user ''@'::ffff:192.0.2.53' (using password: NO)", '192.0.2.53', Date.parse('2026-11-21T15:04:00Z'), ''],
  ];
  for (const [text, ip, time, user] of cases) {
    const m = r.match({ text, source: 'f' }, NOW);
    assert.deepEqual([m?.ip, m?.time, m?.user], [ip, time, user], text);
  }
  assert.equal(r.match({ text: "2026-11-21  5:04:00 8 [Warning] Access denied for user 'root'@'localhost' (using password: YES)", source: 'f' }, NOW), null);
  assert.equal(r.match({ text: '2026-11-21  5:04:00 8 [Note] Aborted connection 8 to db: x user: y host: 192.0.2.54', source: 'f' }, NOW), null);
});
