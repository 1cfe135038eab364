// The nftables enforcer against real nft, inside a namespace of its own: the table it builds, idempotent start,
// other tables untouched, element timeouts, idempotent ban/unban, and addresses validated before nft ever runs.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { NftablesEnforcer, type NftLogger } from '../src/firewall/nftables.ts';
import { rulesetScript } from '../src/firewall/nft-ruleset.ts';
import { canonicalAddress, summarizeStderr } from '../src/firewall/nft-runner.ts';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NetnsLab, requireNetns } from './helpers/netns.ts';

const quiet: NftLogger = { info() {}, warn() {}, error() {} };
const lab = new NetnsLab('nft-ruleset');
after(() => lab.dispose());

/** A started enforcer whose nft is a wrapper that appends each call's arguments to `log` (emptied after start). */
async function recordingEnforcer(ns: string): Promise<{ e: NftablesEnforcer; log: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'tsf-nft-'));
  after(() => rmSync(dir, { recursive: true, force: true }));
  const log = join(dir, 'calls');
  const wrapper = join(dir, 'nft');
  writeFileSync(wrapper, `#!/bin/sh\necho "$*" >> '${log}'\nexec nft "$@"\n`, { mode: 0o755 });
  const e = new NftablesEnforcer({ denyType: 'DROP', nft: wrapper, netns: ns, logger: quiet, checkIntervalMs: 0 });
  await e.start();
  writeFileSync(log, '');
  return { e, log };
}

type Obj = Record<string, any>;
function listTable(ns: string): Obj[] {
  return JSON.parse(lab.runSync(ns, ['nft', '-j', 'list', 'table', 'inet', 'tsfilter'])).nftables;
}
function setElems(objs: Obj[], name: string): Map<string, number | null> {
  const s = objs.find((o) => o.set?.name === name)?.set;
  const m = new Map<string, number | null>();
  for (const e of s?.elem ?? []) {
    if (typeof e === 'string') m.set(e, null);
    else m.set(e.elem.val, e.elem.timeout);
  }
  return m;
}

test('pure parts: canonical addresses only, short error text', () => {
  assert.deepEqual(canonicalAddress('192.0.2.7'), { family: 4, text: '192.0.2.7' });
  assert.deepEqual(canonicalAddress('2001:DB8:0:0:0:0:0:1'), { family: 6, text: '2001:db8::1' });
  assert.deepEqual(canonicalAddress('::ffff:192.0.2.9'), { family: 4, text: '192.0.2.9' });
  for (const bad of ['192.0.2.07', '192.0.2.0/24', 'fe80::1%eth0', '[2001:db8::1]', '192.0.2.1 }', '1.2.3.4, 5.6.7.8', '192.0.2.1\nflush ruleset', '', ' 192.0.2.1', 'x'.repeat(100)]) {
    assert.equal(canonicalAddress(bad), null, JSON.stringify(bad));
  }
  assert.equal(canonicalAddress(42 as unknown as string), null);
  const long = `/dev/stdin:1:1-9: Error: x\n${'a'.repeat(5000)}\n^^^\n4\n5\n6\n7\n8`;
  const s = summarizeStderr(long);
  assert.ok(s.length < 2000, 'error text is cut');
  assert.match(s, /more lines/);
  assert.throws(() => rulesetScript('DROP', 1.5));
});

test('start builds table inet tsfilter; idempotent; other tables untouched; timeouts; idempotent ban/unban', async (t) => {
  if (!requireNetns(t)) return;
  const ns = lab.ns('a');
  // Someone else's table, with a rule and a set element: must survive everything we do.
  lab.runSync(ns, ['nft', '-f', '-'], 'table inet other {\n set keep { type ipv4_addr; elements = { 198.51.100.1 } }\n chain c { type filter hook input priority 0; policy accept; ip saddr @keep counter accept; }\n}\n');
  const otherBefore = lab.runSync(ns, ['nft', 'list', 'table', 'inet', 'other']);

  const e = new NftablesEnforcer({ denyType: 'DROP', priority: -10, netns: ns, logger: quiet, checkIntervalMs: 0 });
  await e.start();
  let objs = listTable(ns);
  const s4 = objs.find((o) => o.set?.name === 'banned4')?.set;
  const s6 = objs.find((o) => o.set?.name === 'banned6')?.set;
  assert.equal(s4?.type, 'ipv4_addr');
  assert.deepEqual(s4?.flags, ['timeout']);
  assert.equal(s6?.type, 'ipv6_addr');
  assert.deepEqual(s6?.flags, ['timeout']);
  // The scoped, prefix and allow sets (test/firewall-nftables-scopes.test.ts proves what they do to packets).
  const def = (name: string) => {
    const x = objs.find((o) => o.set?.name === name)?.set;
    return { type: x?.type, flags: x?.flags };
  };
  assert.deepEqual(def('net4'), { type: 'ipv4_addr', flags: ['interval', 'timeout'] });
  assert.deepEqual(def('net6'), { type: 'ipv6_addr', flags: ['interval', 'timeout'] });
  assert.deepEqual(def('ports4'), { type: ['ipv4_addr', 'inet_proto', 'inet_service'], flags: ['timeout'] });
  assert.deepEqual(def('netports6'), { type: ['ipv6_addr', 'inet_proto', 'inet_service'], flags: ['interval', 'timeout'] });
  assert.deepEqual(def('allow4'), { type: 'ipv4_addr', flags: ['interval'] });
  assert.equal(objs.filter((o) => o.chain).length, 1, 'no forward chain unless asked for');
  const chain = objs.find((o) => o.chain)?.chain;
  assert.deepEqual(
    { name: chain.name, type: chain.type, hook: chain.hook, prio: chain.prio, policy: chain.policy },
    { name: 'input', type: 'filter', hook: 'input', prio: -10, policy: 'accept' },
  );
  const rules = objs.filter((o) => o.rule).map((o) => o.rule);
  // allow4, allow6 (accept) first, then per family: banned, net, ports, netports (drop).
  assert.deepEqual(
    rules.map((r) => r.comment),
    ['allow4', 'allow6', 'banned4', 'net4', 'ports4', 'netports4', 'banned6', 'net6', 'ports6', 'netports6'].map((n) => `tsfilter:${n}`),
  );
  assert.deepEqual(rules[0].expr[0], { match: { op: '==', left: { payload: { protocol: 'ip', field: 'saddr' } }, right: '@allow4' } });
  assert.deepEqual(rules[0].expr.at(-1), { accept: null });
  assert.deepEqual(rules[2].expr[0], { match: { op: '==', left: { payload: { protocol: 'ip', field: 'saddr' } }, right: '@banned4' } });
  assert.deepEqual(rules[2].expr.at(-1), { drop: null });
  assert.deepEqual(rules[6].expr[0], { match: { op: '==', left: { payload: { protocol: 'ip6', field: 'saddr' } }, right: '@banned6' } });
  assert.equal(e.health().ok, true);

  const now = Date.now();
  await e.ban([
    { ip: '192.0.2.10', expiresAt: now + 3600_000, rule: 'ssh' },
    { ip: '192.0.2.11', expiresAt: null, rule: 'ssh' },
    { ip: '2001:db8::10', expiresAt: now + 600_000, rule: 'ssh' },
    { ip: '2001:db8::11', expiresAt: null, rule: 'ssh' },
    { ip: '192.0.2.12', expiresAt: now - 1000, rule: 'ssh' }, // already over: skipped
  ]);
  objs = listTable(ns);
  let v4 = setElems(objs, 'banned4');
  let v6 = setElems(objs, 'banned6');
  assert.equal(v4.get('192.0.2.10'), 3600);
  assert.equal(v4.get('192.0.2.11'), null);
  assert.equal(v4.has('192.0.2.12'), false);
  assert.equal(v6.get('2001:db8::10'), 600);
  assert.equal(v6.get('2001:db8::11'), null);

  // start() again (a restart, or a repair): elements stay, nothing fails.
  await e.start();
  const e2 = new NftablesEnforcer({ denyType: 'DROP', priority: -10, netns: ns, logger: quiet, checkIntervalMs: 0 });
  await e2.start();
  v4 = setElems(listTable(ns), 'banned4');
  assert.equal(v4.size, 2);

  // Ban of an existing element: no failure, and the new timeout is the one in force (also permanent -> timed).
  await e.ban([
    { ip: '192.0.2.10', expiresAt: now + 60_000, rule: 'ssh' },
    { ip: '192.0.2.11', expiresAt: now + 120_000, rule: 'ssh' },
  ]);
  v4 = setElems(listTable(ns), 'banned4');
  assert.equal(v4.get('192.0.2.10'), 60);
  assert.equal(v4.get('192.0.2.11'), 120);

  // Unban removes; unban of a missing element is fine, also mixed with a present one.
  await e.unban(['192.0.2.10', '192.0.2.99', '2001:db8::10']);
  await e.unban(['192.0.2.10']);
  objs = listTable(ns);
  v4 = setElems(objs, 'banned4');
  v6 = setElems(objs, 'banned6');
  assert.deepEqual([...v4.keys()], ['192.0.2.11']);
  assert.deepEqual([...v6.keys()], ['2001:db8::11']);
  assert.deepEqual((await e.elements()).sort(), ['192.0.2.11', '2001:db8::11']);
  assert.equal(e.health().elements, 2);

  // reconcile adds what is missing, leaves foreign elements alone.
  lab.runSync(ns, ['nft', 'add element inet tsfilter banned4 { 203.0.113.5 }']);
  const r = await e.reconcile([
    { ip: '192.0.2.20', expiresAt: null, rule: 'ssh' }, // missing: added
    { ip: '192.0.2.11', expiresAt: null, rule: 'ssh' }, // present with 120 s left, store says permanent: re-timed
    { ip: '2001:db8::11', expiresAt: null, rule: 'ssh' }, // already right
  ]);
  assert.deepEqual(r, { added: 1, retimed: 1, unchanged: 1 });
  v4 = setElems(listTable(ns), 'banned4');
  assert.deepEqual([...v4.keys()].sort(), ['192.0.2.11', '192.0.2.20', '203.0.113.5']);
  assert.equal(v4.get('192.0.2.11'), null);

  // A changed priority or deny_type is applied at start without losing elements.
  const e3 = new NftablesEnforcer({ denyType: 'REJECT', priority: 5, netns: ns, logger: quiet, checkIntervalMs: 0 });
  await e3.start();
  objs = listTable(ns);
  assert.equal(objs.find((o) => o.chain)?.chain.prio, 5);
  assert.equal(objs.filter((o) => o.rule).length, 18, 'allow x2, then two REJECT rules per ban set');
  assert.equal(setElems(objs, 'banned4').size, 3);

  await e.stop();
  await e2.stop();
  await e3.stop();
  // stop() leaves the table and its elements in place.
  assert.equal(setElems(listTable(ns), 'banned4').size, 3);
  assert.equal(lab.runSync(ns, ['nft', 'list', 'table', 'inet', 'other']), otherBefore);
});

test('a crafted address is refused before nft runs', async (t) => {
  if (!requireNetns(t)) return;
  const ns = lab.ns('b');
  // An nft that records each call: proves nothing ran.
  const { e, log } = await recordingEnforcer(ns);
  const before = lab.runSync(ns, ['nft', 'list', 'ruleset']);
  const crafted = ['192.0.2.1 } ; flush ruleset ; add element inet tsfilter banned4 { 192.0.2.2', '192.0.2.1\ndelete table inet tsfilter', '2001:db8::1 timeout 1s', '192.0.2.0/33', '192.0.2.0/24 timeout 1s'];
  for (const ip of crafted) {
    await assert.rejects(e.ban([{ ip, expiresAt: null, rule: 'x' }, { ip: '192.0.2.50', expiresAt: null, rule: 'x' }]), /not an IP address/);
    await assert.rejects(e.unban([ip]), /not an IP address/);
  }
  // A malformed port scope is refused the same way.
  for (const scope of [{ protocol: 'tcp', ports: [0] }, { protocol: 'tcp', ports: [22.5] }, { protocol: 'sctp', ports: [22] }, { protocol: 'tcp', ports: ['22 } ; flush ruleset'] }]) {
    await assert.rejects(e.ban([{ ip: '192.0.2.50', expiresAt: null, rule: 'x', scope: scope as never }]), /invalid port scope/);
  }
  await assert.rejects(e.setAllowed(['192.0.2.0/24', '192.0.2.1 } ; flush ruleset']), /not an IP address/);
  assert.equal(lab.runSync(ns, ['nft', 'list', 'ruleset']), before, 'nothing changed: the whole batch was refused');
  assert.equal(readFileSync(log, 'utf8'), '', 'nft was never run');
  await e.stop();
});

test('a failing nft command names the command and nft\'s error', async (t) => {
  if (!requireNetns(t)) return;
  const e = new NftablesEnforcer({ denyType: 'DROP', nft: '/nonexistent/nft', netns: lab.ns('c'), logger: quiet, checkIntervalMs: 0 });
  await assert.rejects(e.start(), (err: Error) => /\/nonexistent\/nft/.test(err.message));
  assert.equal(e.health().ok, false);
  const ns = lab.ns('d');
  const ok = new NftablesEnforcer({ denyType: 'DROP', netns: ns, logger: quiet, checkIntervalMs: 0 });
  await ok.start();
  // A set that exists with another type cannot be added to: the error carries nft's message.
  lab.runSync(ns, ['nft', '-f', '-'], 'delete table inet tsfilter\ntable inet tsfilter {\n set banned4 { type ipv6_addr; }\n}\n');
  await assert.rejects(ok.ban([{ ip: '192.0.2.1', expiresAt: null, rule: 'x' }]), (err: Error) => /nft -f - failed \(exit 1\)[\s\S]*Error/.test(err.message));
  assert.match(String(ok.health().lastError), /nft -f -/);
  await ok.stop();
});

test('a batch of 1,000 bans is one nft process and one transaction, never one process per address', async (t) => {
  if (!requireNetns(t)) return;
  const ns = lab.ns('e');
  const { e, log } = await recordingEnforcer(ns);
  // Documentation addresses only: 500 IPv4 from 192.0.2.0/24 and 198.51.100.0/24, 500 IPv6 from 2001:db8:7::/64.
  const bans = Array.from({ length: 1000 }, (_, i) => ({
    ip: i % 2 ? `2001:db8:7::${i.toString(16)}` : `${i < 512 ? '192.0.2' : '198.51.100'}.${(i >> 1) % 256}`,
    expiresAt: Date.now() + 3600_000,
    rule: 'x',
  }));
  await e.ban(bans);
  assert.deepEqual(readFileSync(log, 'utf8').trim().split('\n'), ['-f -'], 'exactly one nft invocation, reading its script from stdin');
  const listed = lab.runSync(ns, ['nft', 'list', 'table', 'inet', 'tsfilter']);
  assert.equal((listed.match(/(192\.0\.2|198\.51\.100)\.\d+/g) ?? []).length + (listed.match(/2001:db8:7::/g) ?? []).length, 1000);
  writeFileSync(log, '');
  await e.unban(bans.map((b) => b.ip));
  assert.deepEqual(readFileSync(log, 'utf8').trim().split('\n'), ['-f -'], 'and one for the unban');
  await e.stop();
});

test('unban removes a port-scoped source\'s elements even when a listing missed them', async (t) => {
  if (!requireNetns(t)) return;
  const ns = lab.ns('f');
  const e = new NftablesEnforcer({ denyType: 'DROP', netns: ns, logger: quiet, checkIntervalMs: 0 });
  await e.start();
  await e.ban([{ ip: '192.0.2.30', expiresAt: null, rule: 'x', scope: { protocol: 'udp', ports: [53, 123] } }]);
  // A dump of a big set can come back short: simulate one listing without the elements, then them back.
  const els = '{ 192.0.2.30 . udp . 53, 192.0.2.30 . udp . 123 }';
  lab.runSync(ns, ['nft', 'delete', 'element', 'inet', 'tsfilter', 'ports4', els]);
  assert.deepEqual(await e.elements(), []);
  lab.runSync(ns, ['nft', 'add', 'element', 'inet', 'tsfilter', 'ports4', els]);
  await e.unban(['192.0.2.30']);
  assert.doesNotMatch(lab.runSync(ns, ['nft', 'list', 'set', 'inet', 'tsfilter', 'ports4']), /192\.0\.2\.30/);
  await e.stop();
});
