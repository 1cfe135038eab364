import { test } from 'node:test';
import assert from 'node:assert/strict';
import ipaddr from 'ipaddr.js';
import { IgnoreList } from '../src/detect/cidr-trie.ts';
import { createDetector } from '../src/detect/detector.ts';
import { normalizeIp } from '../src/detect/ip.ts';
import type { Match, MatchKind } from '../src/rules/types.ts';

test('IPv4 CIDR ranges include their edges and nothing beyond', () => {
  const l = IgnoreList.parse(['10.0.0.0/8', '192.168.1.0/24', '172.16.0.0/12']);
  for (const ip of ['10.0.0.0', '10.255.255.255', '192.168.1.0', '192.168.1.255', '172.16.0.1', '172.31.255.255']) {
    assert.equal(l.has(ip), true, ip);
  }
  for (const ip of ['9.255.255.255', '11.0.0.0', '192.168.0.255', '192.168.2.0', '172.32.0.0', '172.15.255.255']) {
    assert.equal(l.has(ip), false, ip);
  }
  assert.equal(l.size, 3);
});

test('exact addresses match only themselves', () => {
  const l = IgnoreList.parse(['127.0.0.1', '2001:db8::1']);
  assert.equal(l.has('127.0.0.1'), true);
  assert.equal(l.has('127.0.0.2'), false);
  assert.equal(l.has('2001:db8::1'), true);
  assert.equal(l.has('2001:db8::2'), false);
  assert.equal(l.has('2001:db8::1:0'), false);
});

test('IPv6 CIDR ranges, whatever the written form of the entry', () => {
  const l = IgnoreList.parse(['2001:DB8:0:0::/32', 'fe80::/10', '::1']);
  for (const ip of ['2001:db8::', '2001:db8:ffff:ffff:ffff:ffff:ffff:ffff', 'fe80::1', 'febf::1', '::1']) {
    assert.equal(l.has(ip), true, ip);
  }
  for (const ip of ['2001:db9::', '2001:db7:ffff::1', 'fec0::1', '::2', '::', '1.2.3.4']) assert.equal(l.has(ip), false, ip);
});

test('host bits below the prefix are ignored, /0 covers a whole family only', () => {
  const l = IgnoreList.parse(['10.1.2.3/8', '0.0.0.0/0']);
  assert.equal(l.has('10.200.0.1'), true);
  assert.equal(l.has('8.8.8.8'), true);
  assert.equal(l.has('2001:db8::1'), false);
});

test('an IPv4-mapped IPv6 entry is the IPv4 address or range', () => {
  const l = IgnoreList.parse(['::ffff:192.0.2.7', '::ffff:10.0.0.0/104', '::ffff:c633:6400/120']);
  assert.equal(l.has('192.0.2.7'), true);
  assert.equal(l.has('192.0.2.8'), false);
  assert.equal(l.has('10.9.9.9'), true);
  assert.equal(l.has('11.0.0.0'), false);
  assert.equal(l.has('198.51.100.200'), true); // c633:6400 = 198.51.100.0
  assert.equal(l.has('198.51.101.0'), false);
  // Addresses as the rules hand them over: normalizeIp turns the mapped form into IPv4.
  assert.equal(l.has(normalizeIp('::ffff:192.0.2.7')!), true);
  // A shorter IPv6 prefix that spans the mapped range covers every IPv4 address.
  assert.equal(IgnoreList.parse(['::/64']).has('203.0.113.1'), true);
  assert.equal(IgnoreList.parse(['2001:db8::/32']).has('203.0.113.1'), false);
});

test('invalid entries are rejected, naming the entry and its index', () => {
  const bad = ['300.1.1.1', '10.0.0.0/33', '::1/129', 'example.com', '', '1.2.3', '10.0.0.1/x', '10.0.0.1/', '01.2.3.4', 'fe80::1%eth0', '1::2::3', '10.0.0.0/-1', '::ffff:1.2.3.4.5'];
  for (const entry of bad) {
    assert.throws(
      () => IgnoreList.parse(['127.0.0.1', entry]),
      (e: Error) => e.message.includes('[1]') && e.message.includes(JSON.stringify(entry)),
      entry,
    );
  }
});

test('lookups agree with ipaddr.js on random prefixes and addresses', () => {
  let seed = 12345;
  const rnd = (n: number) => {
    seed = (Math.imul(seed, 1103515245) + 12345) & 0x7fffffff;
    return seed % n;
  };
  const v4 = () => [rnd(2), rnd(8), rnd(256), rnd(256)].join('.'); // narrow space: both hits and misses
  const v6 = () => normalizeIp(['2001', 'db8', rnd(3).toString(16), rnd(8).toString(16), '0', rnd(2).toString(16), rnd(65536).toString(16), rnd(65536).toString(16)].join(':'))!;
  const entries: string[] = [];
  for (let i = 0; i < 60; i++) entries.push(i % 2 ? `${v4()}/${20 + rnd(13)}` : `${v6()}/${60 + rnd(69)}`);
  const list = IgnoreList.parse(entries);
  const ranges = entries.map((e) => ipaddr.parseCIDR(e));
  let hits = 0;
  for (let i = 0; i < 5000; i++) {
    const ip = i % 2 ? v4() : v6();
    const a = ipaddr.parse(ip);
    const expected = ranges.some(([net, len]) => net.kind() === a.kind() && a.match(net, len));
    assert.equal(list.has(ip), expected, ip);
    if (expected) hits++;
  }
  assert.ok(hits > 100 && hits < 4900, `the sample exercises both outcomes (${hits} hits)`);
});

test('the detector never counts or bans an ignored address', () => {
  const d = createDetector({
    policies: new Map([['ssh', { mode: 'gap', failedAttempts: 1, requestTime: 5, findTime: 600 }]]),
    ignore: IgnoreList.parse(['203.0.113.0/24', '2001:db8::/48']),
    maxTracked: 10,
    forgetAfter: 60,
  });
  const ev = (ip: string, sec: number, kind: MatchKind = 'failure'): Match => ({ ip, time: sec * 1000, rule: 'ssh', kind, line: 'x', pattern: 0 });
  for (const ip of ['203.0.113.9', '2001:db8:0:1::5']) {
    for (let s = 0; s < 10; s++) assert.equal(d.observe(ev(ip, s)), null);
    assert.equal(d.observe(ev(ip, 10, 'instant')), null);
  }
  assert.equal(d.size(), 0);
  // The same sequence bans an address outside the list.
  d.observe(ev('203.0.114.9', 0));
  assert.ok(d.observe(ev('203.0.114.9', 1)));
  assert.ok(d.observe(ev('2001:db8:1::5', 1, 'instant')));
});
