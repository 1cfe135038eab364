/*
 * Real packets for the firewall backend tests, inside a NetnsLab: a TCP greeter in a server namespace, veth links
 * with pinned neighbours, a client - router - server chain for forwarded traffic, Docker's DOCKER-USER chain, and TCP
 * connects from a client namespace, all at once from one process so their timeouts overlap.
 *
 *   const { ifA, ifB } = linkPinned(lab, s, c, ['192.0.2.1/24', '2001:db8:1::1/64'], ['192.0.2.2/24', '2001:db8:1::2/64']);
 *   await listen(lab, s, [22, 2222]);
 *   await expectConnects(lab, c, [{ from: '192.0.2.2', to: '192.0.2.1', port: 22, want: 'timeout' }], 'banned');
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { NetnsLab } from './netns.ts';

/** Runs fn with namespaces of its own, removed afterwards whatever happens. */
export async function inLab(purpose: string, fn: (lab: NetnsLab) => Promise<void>): Promise<void> {
  const lab = new NetnsLab(purpose);
  try {
    await fn(lab);
  } finally {
    lab.dispose();
  }
}

/** A TCP greeter ("hi") listening on `ports` (dual-stack) inside ns; resolves once every port listens. */
export async function listen(lab: NetnsLab, ns: string, ports: number[]): Promise<void> {
  const js = `const net = require('net'); let n = 0;
    for (const p of ${JSON.stringify(ports)}) net.createServer((s) => s.end('hi\\n')).listen(p, '::', () => { if (++n === ${ports.length}) console.log('listening'); });`;
  const srv = lab.spawn(ns, [process.execPath, '-e', js]);
  srv.stdout!.setEncoding('utf8');
  const [line] = (await Promise.race([once(srv.stdout!, 'data'), once(srv, 'exit')])) as [string];
  assert.match(String(line), /listening/, 'test server started');
}

/**
 * Static neighbour entries in ns for the peer's addresses. A banned on-link IPv6 address cannot do neighbour
 * discovery either (its solicitations come from the banned address and are dropped like any other packet), which a
 * real attacker behind a router never notices; and a fresh entry can cost a SYN its first transmission (answered
 * after TCP's 1 s retransmit). Pinned entries keep the tests about the firewall rules, with 1 s connect timeouts
 * that mean what they say.
 */
function pin(lab: NetnsLab, ns: string, ifname: string, peerNs: string, peerIf: string, peerAddrs: string[]): void {
  const [link] = JSON.parse(lab.runSync(peerNs, ['ip', '-j', 'link', 'show', 'dev', peerIf])) as { address: string }[];
  for (const a of peerAddrs) lab.runSync(ns, ['ip', 'neigh', 'replace', a.replace(/\/\d+$/, ''), 'lladdr', link!.address, 'dev', ifname, 'nud', 'permanent']);
}

/** lab.link() with the neighbours pinned on both sides. */
export function linkPinned(lab: NetnsLab, a: string, b: string, addrsA: string[], addrsB: string[]): { ifA: string; ifB: string } {
  const ends = lab.link(a, b, addrsA, addrsB);
  pin(lab, a, ends.ifA, b, ends.ifB, addrsB);
  pin(lab, b, ends.ifB, a, ends.ifA, addrsA);
  return ends;
}

export interface RoutedAddrs {
  /** CIDR addresses (one IPv4, one IPv6 each) on the client - router link, client side then router side. */
  client: [string, string];
  routerToClient: [string, string];
  /** The same on the router - server link. */
  routerToServer: [string, string];
  server: [string, string];
}

/** Client c, router r (forwarding on) and server s on two pinned links, client and server routed via r. */
export function routed(lab: NetnsLab, addrs: RoutedAddrs): { c: string; r: string; s: string } {
  const c = lab.ns('c');
  const r = lab.ns('r');
  const s = lab.ns('s');
  linkPinned(lab, c, r, addrs.client, addrs.routerToClient);
  linkPinned(lab, r, s, addrs.routerToServer, addrs.server);
  const bare = (a: string) => a.replace(/\/\d+$/, '');
  for (const [ns, via] of [
    [c, addrs.routerToClient],
    [s, addrs.routerToServer],
  ] as const) {
    lab.runSync(ns, ['ip', 'route', 'add', 'default', 'via', bare(via[0])]);
    lab.runSync(ns, ['ip', '-6', 'route', 'add', 'default', 'via', bare(via[1])]);
  }
  lab.runSync(r, ['sysctl', '-qw', 'net.ipv4.ip_forward=1']);
  lab.runSync(r, ['sysctl', '-qw', 'net.ipv6.conf.all.forwarding=1']);
  return { c, r, s };
}

/** What Docker makes, in both families: DOCKER-USER ending in RETURN, jumped to from the top of FORWARD. */
export function dockerUserChain(lab: NetnsLab, ns: string, bins: readonly string[] = ['iptables', 'ip6tables']): void {
  for (const bin of bins) {
    lab.runSync(ns, [bin, '-N', 'DOCKER-USER']);
    lab.runSync(ns, [bin, '-A', 'DOCKER-USER', '-j', 'RETURN']);
    lab.runSync(ns, [bin, '-I', 'FORWARD', '1', '-j', 'DOCKER-USER']);
  }
}

export interface Connect {
  from: string;
  to: string;
  port: number;
}

export interface Connected {
  /** 'ok' (got the greeting), 'timeout', or the error code (ECONNREFUSED for a reset). */
  result: string;
  ms: number;
}

/** Connects for every job at once from one node process in ns. */
export async function connectAll(lab: NetnsLab, ns: string, jobs: Connect[], timeoutMs = 1000): Promise<Connected[]> {
  const js = `const net = require('net'); const jobs = JSON.parse(process.argv[1]); const out = []; let left = jobs.length;
    jobs.forEach((j, i) => {
      const t0 = Date.now(); let done = false;
      const s = net.connect({ host: j.to, port: j.port, localAddress: j.from });
      const fin = (r) => { if (done) return; done = true; clearTimeout(timer); s.destroy(); out[i] = { result: r, ms: Date.now() - t0 };
        if (--left === 0) { console.log(JSON.stringify(out)); process.exit(0); } };
      const timer = setTimeout(() => fin('timeout'), ${timeoutMs});
      s.on('data', () => fin('ok'));
      s.on('error', (e) => fin(e.code || e.message));
    });`;
  const r = await lab.run(ns, [process.execPath, '-e', js, JSON.stringify(jobs)], { timeoutMs: 15_000 });
  assert.equal(r.code, 0, `connect process: ${r.stderr}`);
  return JSON.parse(r.stdout) as Connected[];
}

export interface Expected extends Connect {
  want: string;
  /** Names the case in a failure. */
  what?: string;
}

/** connectAll(), asserting every outcome at once (a failure lists each case, expected against got). */
export async function expectConnects(lab: NetnsLab, ns: string, jobs: Expected[], what: string, timeoutMs?: number): Promise<Connected[]> {
  const got = await connectAll(lab, ns, jobs, timeoutMs);
  const line = (j: Expected, result: string) => `${j.what === undefined ? '' : `${j.what}: `}${j.from} -> [${j.to}]:${j.port} ${result}`;
  assert.deepEqual(
    jobs.map((j, i) => line(j, got[i]!.result)),
    jobs.map((j) => line(j, j.want)),
    what,
  );
  return got;
}
