// Every way TSFilter reaches Redis, against real redis-server processes on loopback (never the machine's own 6379):
// a redis:// url with an ACL user and a database, TLS with a self-signed CA (tls + tls_ca_file, and rediss://),
// Sentinel, Cluster, and a Redis that is down at start. In each, one connection publishes through the tsfilter
// wire schema and another pulls it (full resync, then incremental) and is woken by pub/sub; then two whole
// FleetSyncs with real SQLite stores exchange a ban; redis-cli checks where the keys really are. The last tests are
// about Redis coming up after the node: a key-less ACL user, a Sentinel outage past node-redis's own retries, and a
// subscription made while Sentinel or Cluster was down.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connectRedis, type RedisConn, type RedisSettings } from '../src/store/redis-connect.ts';
import { TsfilterWire } from '../src/store/wire-tsfilter.ts';
import { FleetSync } from '../src/store/fleet-sync.ts';
import type { FleetEvent } from '../src/store/fleet-event.ts';
import { openSqliteStore } from '../src/store/sqlite-store.ts';
import { createLogger, type Logger } from '../src/util/logger.ts';
import { haveCommand, requirePrereq } from './helpers/prereq.ts';
import { makeTlsCerts, RedisLab, redisHasTls } from './helpers/redis-topologies.ts';

const HAVE_REDIS = haveCommand('redis-server') && haveCommand('redis-cli');
const HOW = 'apt-get install redis-server redis-tools';
/** Per test: a hang in the code under test fails its test instead of stalling the suite. */
const LIMIT = 60_000;

const BASE: RedisSettings = {
  url: null,
  host: '127.0.0.1',
  port: 0,
  username: null,
  password: null,
  database: 0,
  tls: false,
  tlsCaFile: null,
  sentinel: null,
  cluster: null,
  schema: 'tsfilter',
  prefix: 'tsfilter',
  streamMaxLen: 1000,
  streamMaxAge: 86400,
  maxEventBytes: 65536,
  sync: { active: true, name: 'node-a', checkTime: 600, minServers: 1 },
};
const WIRE = { prefix: 'tsfilter', maxLen: 1000, maxAgeS: 86400, maxEventBytes: 65536 };
const EVENTS = '{tsfilter}:events';
const BANS = '{tsfilter}:bans';
const WAKE = '{tsfilter}:wake';
const NODES = '{tsfilter}:nodes';

/**
 * node-redis's Sentinel client console.logs a stack trace for every failed discovery: counted and kept off the TAP
 * stream while a sentinel is down. Returns the restore function, which reports the count.
 */
function quietConsole(t: { diagnostic(m: string): void }): () => void {
  const orig = console.log;
  let printed = 0;
  console.log = () => void printed++;
  return () => {
    console.log = orig;
    if (printed > 0) t.diagnostic(`node-redis printed to stdout ${printed} times`);
  };
}

/** Log lines, kept to show in a failure message (a connection problem is only ever reported there). */
function logs(): Logger & { lines: string[] } {
  const lines: string[] = [];
  return Object.assign(createLogger({ level: 'debug', write: (l) => lines.push(l) }), { lines });
}

function ban(ip: string, node: string): FleetEvent {
  const at = Date.now();
  return { v: 1, kind: 'ban', ip, node, at, rule: 'ssh', reason: 'test', createdAt: at, expiresAt: at + 3600_000, scope: null, country: null, countryCode: null };
}

async function waitFor(cond: () => boolean | Promise<boolean>, ms: number, what: string | (() => string)): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${typeof what === 'string' ? what : what()}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

function connected(c: RedisConn, ms: number, log: { lines: string[] }): Promise<void> {
  if (c.connected) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`not connected after ${ms} ms: ${c.lastError}\n${log.lines.join('\n')}`)), ms);
    c.onChange((up) => {
      if (!up) return;
      clearTimeout(t);
      resolve();
    });
  });
}

function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout;
  return Promise.race([p, new Promise<never>((_, reject) => (t = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms)))]).finally(() =>
    clearTimeout(t),
  );
}

interface Where {
  lab: RedisLab;
  /** redis-cli arguments for key commands (with -c in a cluster, to follow MOVED to the slot's node). */
  keys: string[];
  /** redis-cli arguments for each server a subscriber may be connected to (one, or every cluster master). */
  servers: string[][];
}

/** Subscribers to `channel`, over every server (a cluster client subscribes on any one node). */
function subscribers(w: Where, channel: string): number {
  let n = 0;
  for (const c of w.servers) n += Number(w.lab.cliOk(c, ['PUBSUB', 'NUMSUB', channel]).split('\n')[1]);
  return n;
}

/**
 * Two connections: A publishes through the wire schema, B (listening for wake-ups) pulls it with a full resync,
 * then a second event incrementally from its cursor, which must end on the stream's last id.
 */
async function roundTrip(s: RedisSettings, w: Where): Promise<void> {
  const log = logs();
  const a = await connectRedis(s, log);
  const b = await connectRedis(s, log);
  const sa = openSqliteStore(':memory:');
  const sb = openSqliteStore(':memory:');
  try {
    await connected(a, 10_000, log);
    await connected(b, 10_000, log);
    const wa = new TsfilterWire(a, sa.fleet, WIRE);
    const wb = new TsfilterWire(b, sb.fleet, WIRE);
    let wakes = 0;
    await within(wb.listen(() => wakes++), 10_000, 'subscribe');
    // The subscription is real only once the server counts it; before that a wake-up could be missed.
    await waitFor(() => subscribers(w, WAKE) >= 1, 10_000, `a subscriber on ${WAKE}`);

    const first = ban('192.0.2.7', 'node-a');
    await within(wa.publish(first), 5000, 'publish');
    const full = await within(wb.pull(false), 5000, 'full pull');
    assert.deepEqual(full.events, [first], 'a node with no cursor resyncs from the ban table');
    full.commit();
    await waitFor(() => wakes >= 1, 5000, 'the pub/sub wake-up');

    const second: FleetEvent = { v: 1, kind: 'unban', ip: '198.51.100.0/24', node: 'node-a', at: Date.now() };
    await within(wa.publish(second), 5000, 'publish');
    const inc = await within(wb.pull(false), 5000, 'incremental pull');
    assert.deepEqual(inc.events, [second], 'from the cursor on, only the new entry');
    inc.commit();
    await waitFor(() => wakes >= 2, 5000, 'the second wake-up');

    assert.equal(w.lab.cliOk(w.keys, ['XLEN', EVENTS]), '2', 'both events are in the stream');
    assert.equal(w.lab.cliOk(w.keys, ['HLEN', BANS]), '2', 'both addresses are in the ban table');
    const last = w.lab.cliOk(w.keys, ['XREVRANGE', EVENTS, '+', '-', 'COUNT', '1']).split('\n')[0];
    assert.match(last ?? '', /^\d+-\d+$/);
    assert.equal(sb.fleet.kvGet('tsfilter.cursor'), last, "B's cursor is the stream's last id");
  } finally {
    await a.close();
    await b.close();
    sa.close();
    sb.close();
  }
}

/** Two whole FleetSyncs on real SQLite stores: a ban queued on node-a reaches node-b's apply(). */
async function fleetPair(s: RedisSettings, w: Where): Promise<void> {
  const log = logs();
  const stores = [openSqliteStore(':memory:'), openSqliteStore(':memory:')] as const;
  const got: FleetEvent[] = [];
  const mk = (name: string, i: 0 | 1) =>
    new FleetSync({
      settings: { ...s, sync: { ...s.sync, name } },
      fleet: stores[i].fleet,
      logger: log,
      apply: async (events, commit) => {
        if (i === 1) got.push(...events);
        commit();
        return events.length;
      },
    });
  const na = mk('node-a', 0);
  const nb = mk('node-b', 1);
  try {
    await within(na.start(5000), 10_000, 'node-a start');
    await within(nb.start(5000), 10_000, 'node-b start');
    assert.equal(na.status().connected, true, log.lines.join('\n'));
    const ev = ban('203.0.113.9', 'node-a');
    stores[0].fleet.recordLocal(ev, JSON.stringify(ev), Date.now());
    na.flush();
    await waitFor(() => got.some((e) => e.ip === ev.ip), 10_000, () => `node-b applying node-a's ban\n${log.lines.join('\n')}`);
    assert.deepEqual(
      got.find((e) => e.ip === ev.ip),
      ev,
    );
    assert.equal(stores[0].fleet.outboxCount(), 0, "node-a's outbox drained");
    const nodes = w.lab.cliOk(w.keys, ['HKEYS', NODES]);
    assert.match(nodes, /node-a/);
    assert.match(nodes, /node-b/);
  } finally {
    await na.stop();
    await nb.stop();
    for (const st of stores) st.close();
  }
}

test('url redis://user:pass@host:port/3 with an ACL user: publish, pull, wake-up and a FleetSync pair in database 3', { timeout: LIMIT }, async (t) => {
  if (!requirePrereq(t, HAVE_REDIS, 'redis-server', HOW)) return;
  const lab = new RedisLab();
  try {
    const port = await lab.freePort();
    await lab.server(port, ['--port', String(port)]);
    const admin = ['-p', String(port)];
    lab.cliOk(admin, ['ACL', 'SETUSER', 'tsf', 'on', '>s3cret pass', '~*', '&*', '+@all']);
    lab.cliOk(admin, ['ACL', 'SETUSER', 'nokeys', 'on', '>pw', '~other:*', '&*', '+@all']);
    // The default user off: only the url's credentials get in.
    lab.cliOk(admin, ['ACL', 'SETUSER', 'default', 'off']);
    const cli = ['-p', String(port), '--user', 'tsf', '--pass', 's3cret pass', '-n', '3'];
    const s: RedisSettings = { ...BASE, url: `redis://tsf:${encodeURIComponent('s3cret pass')}@127.0.0.1:${port}/3` };
    const w = { lab, keys: cli, servers: [cli] };

    await roundTrip(s, w);
    await fleetPair(s, w);
    assert.equal(lab.cliOk(['-p', String(port), '--user', 'tsf', '--pass', 's3cret pass', '-n', '0'], ['DBSIZE']), '0', 'nothing in database 0');
    assert.equal(lab.cliOk(cli, ['EXISTS', EVENTS, BANS, NODES]), '3', 'the keys are in database 3');

    // A user the server accepts but who may not touch the keys: a clear NOPERM at once, not a hang.
    const log = logs();
    const c = await connectRedis({ ...BASE, url: `redis://nokeys:pw@127.0.0.1:${port}/3` }, log);
    const st = openSqliteStore(':memory:');
    try {
      await connected(c, 5000, log);
      const wire = new TsfilterWire(c, st.fleet, WIRE);
      const t0 = Date.now();
      await assert.rejects(within(wire.publish(ban('192.0.2.8', 'x')), 3000, 'publish as nokeys'), /NOPERM.*keys/);
      await assert.rejects(within(wire.pull(true), 3000, 'pull as nokeys'), /NOPERM.*keys/);
      assert.ok(Date.now() - t0 < 1000, `refused in ${Date.now() - t0} ms`);
    } finally {
      await c.close();
      st.close();
    }

    // A wrong password: never connected, the reason is in lastError, and commands fail at once.
    const log2 = logs();
    const bad = await connectRedis({ ...BASE, url: `redis://tsf:wrong@127.0.0.1:${port}/3` }, log2);
    try {
      await waitFor(() => bad.lastError !== null, 5000, 'the auth error');
      assert.equal(bad.connected, false);
      assert.match(bad.lastError!, /WRONGPASS/);
      assert.match(log2.lines.join('\n'), /redis connection problem.*WRONGPASS/);
      const t0 = Date.now();
      await assert.rejects(bad.cmd(['PING']));
      assert.ok(Date.now() - t0 < 1000, `failed in ${Date.now() - t0} ms`);
    } finally {
      await bad.close();
    }
  } finally {
    await lab.dispose();
  }
});

test('TLS with a self-signed CA: tls + tls_ca_file and a rediss:// url; without the CA the certificate is refused', { timeout: LIMIT }, async (t) => {
  if (!requirePrereq(t, HAVE_REDIS, 'redis-server', HOW)) return;
  if (!requirePrereq(t, redisHasTls(), 'redis-server built with TLS', 'install a redis-server built with BUILD_TLS=yes (Debian 12 ships one)')) return;
  const lab = new RedisLab();
  try {
    const { ca, cert, key } = makeTlsCerts(lab.dir);
    const port = await lab.freePort();
    await lab.server(port, ['--port', '0', '--tls-port', String(port), '--tls-cert-file', cert, '--tls-key-file', key, '--tls-ca-cert-file', ca, '--tls-auth-clients', 'no']);
    const cli = ['-p', String(port), '--tls', '--cacert', ca];
    assert.doesNotMatch(lab.cli(['-p', String(port)], ['PING']).stdout, /PONG/, 'plain text is not served');

    await roundTrip({ ...BASE, port, tls: true, tlsCaFile: ca }, { lab, keys: cli, servers: [cli] });
    lab.cliOk(cli, ['FLUSHALL']);
    const viaUrl: RedisSettings = { ...BASE, url: `rediss://127.0.0.1:${port}/2`, tlsCaFile: ca };
    await fleetPair(viaUrl, { lab, keys: [...cli, '-n', '2'], servers: [cli] });
    assert.equal(lab.cliOk(cli, ['DBSIZE']), '0', 'the url database (2) was used, not 0');

    // Certificates are verified: without the CA the self-signed chain is refused.
    const log = logs();
    const c = await connectRedis({ ...BASE, port, tls: true }, log);
    try {
      await waitFor(() => c.lastError !== null, 5000, 'the certificate error');
      assert.equal(c.connected, false);
      assert.match(c.lastError!, /self[- ]signed|certificate/i);
    } finally {
      await c.close();
    }
  } finally {
    await lab.dispose();
  }
});

test('Sentinel: the master is found through a sentinel (quorum 1); publish, pull, wake-up and a FleetSync pair', { timeout: LIMIT }, async (t) => {
  if (!requirePrereq(t, HAVE_REDIS, 'redis-server', HOW)) return;
  const lab = new RedisLab();
  try {
    const master = await lab.freePort();
    await lab.server(master, ['--port', String(master)]);
    const sport = await lab.freePort();
    await lab.sentinel(sport, master, 'tsfmaster');
    assert.equal(lab.cliOk(['-p', String(sport)], ['SENTINEL', 'get-master-addr-by-name', 'tsfmaster']), `127.0.0.1\n${master}`);

    const s: RedisSettings = { ...BASE, database: 1, sentinel: { name: 'tsfmaster', nodes: [`127.0.0.1:${sport}`] } };
    const w = { lab, keys: ['-p', String(master), '-n', '1'], servers: [['-p', String(master)]] };
    await roundTrip(s, w);
    await fleetPair(s, w);
    assert.equal(lab.cliOk(['-p', String(master), '-n', '0'], ['DBSIZE']), '0', 'database 1 was used through Sentinel too');
  } finally {
    await lab.dispose();
  }
});

test('Cluster of three masters: the hash-tagged keys and scripts stay on one slot; publish, pull, wake-up and a FleetSync pair', { timeout: LIMIT }, async (t) => {
  if (!requirePrereq(t, HAVE_REDIS, 'redis-server', HOW)) return;
  const lab = new RedisLab();
  try {
    const ports: number[] = [];
    for (let i = 0; i < 3; i++) ports.push(await lab.freePort(true));
    await lab.cluster(ports);
    const cli = ports.map((p) => ['-p', String(p)]);
    // The cluster really refuses a script whose keys span slots: the hash tags are what make ours legal.
    assert.match(lab.cli(['-c', ...cli[0]!], ['EVAL', 'return 1', '2', 'tsfilter:events', 'tsfilter:bans']).stdout, /CROSSSLOT/);
    const slots = [EVENTS, BANS, NODES, '{tsfilter}:node:node-a'].map((k) => lab.cliOk(cli[0]!, ['CLUSTER', 'KEYSLOT', k]));
    assert.equal(new Set(slots).size, 1, `one slot for every key: ${slots.join(',')}`);

    const s: RedisSettings = { ...BASE, cluster: { nodes: ports.map((p) => `127.0.0.1:${p}`) } };
    const w = { lab, keys: ['-c', ...cli[0]!], servers: cli };
    await roundTrip(s, w);
    await fleetPair(s, w);
    // events, bans, nodes and the two node leases: all on the node that owns the slot, none elsewhere.
    const counts = cli.map((c) => Number(lab.cliOk(c, ['CLUSTER', 'COUNTKEYSINSLOT', slots[0]!])));
    assert.deepEqual([...counts].sort(), [0, 0, 5], `keys per node in slot ${slots[0]}: ${counts.join(',')}`);
  } finally {
    await lab.dispose();
  }
});

test('Redis down at start: connectRedis returns at once, commands fail fast, and it connects when a server appears', { timeout: LIMIT }, async (t) => {
  if (!requirePrereq(t, HAVE_REDIS, 'redis-server', HOW)) return;
  await import('redis'); // loaded once before timing, so the timings below are connectRedis's own
  const lab = new RedisLab();
  const log = logs();
  const st = openSqliteStore(':memory:');
  let c: RedisConn | undefined;
  let sync: FleetSync | undefined;
  try {
    const port = await lab.freePort();
    const s: RedisSettings = { ...BASE, port };
    let t0 = Date.now();
    c = await connectRedis(s, log);
    assert.ok(Date.now() - t0 < 500, `connectRedis took ${Date.now() - t0} ms`);
    assert.equal(c.connected, false);
    t0 = Date.now();
    await assert.rejects(c.cmd(['PING']));
    assert.ok(Date.now() - t0 < 500, `a command while down failed after ${Date.now() - t0} ms`);

    // A whole node: start() gives up waiting, the ban goes to the outbox and leaves it once Redis is there.
    sync = new FleetSync({ settings: s, fleet: st.fleet, logger: log, apply: async (ev, commit) => (commit(), ev.length) });
    t0 = Date.now();
    await within(sync.start(300), 3000, 'FleetSync.start with Redis down');
    assert.ok(Date.now() - t0 < 1500, `start took ${Date.now() - t0} ms`);
    const ev = ban('192.0.2.99', 'node-a');
    st.fleet.recordLocal(ev, JSON.stringify(ev), Date.now());
    sync.flush();
    assert.equal(st.fleet.outboxCount(), 1);
    assert.equal(sync.status().connected, false);

    await lab.server(port, ['--port', String(port)]);
    await connected(c, 15_000, log);
    assert.equal(await within(c.cmd(['PING']), 2000, 'PING after reconnect'), 'PONG');
    await waitFor(() => st.fleet.outboxCount() === 0, 15_000, () => `the outbox to drain\n${log.lines.join('\n')}`);
    assert.deepEqual(JSON.parse(lab.cliOk(['-p', String(port)], ['HGET', BANS, ev.ip])), ev);
    assert.equal(sync.status().connected, true);
  } finally {
    await sync?.stop();
    await c?.close();
    st.close();
    await lab.dispose();
  }
});

test('a user who may not touch the keys, on a Redis that comes up after start: NOPERM is logged, the node keeps running', { timeout: LIMIT }, async (t) => {
  if (!requirePrereq(t, HAVE_REDIS, 'redis-server', HOW)) return;
  const lab = new RedisLab();
  const log = logs();
  const st = openSqliteStore(':memory:');
  // In the daemon an unhandled rejection ends the process; here it is caught, to be reported as what it is.
  const unhandled: unknown[] = [];
  const onUnhandled = (e: unknown) => void unhandled.push(e);
  process.on('unhandledRejection', onUnhandled);
  let sync: FleetSync | undefined;
  try {
    const port = await lab.freePort();
    sync = new FleetSync({
      settings: { ...BASE, url: `redis://nokeys:pw@127.0.0.1:${port}/0` },
      fleet: st.fleet,
      logger: log,
      apply: async (ev, commit) => (commit(), ev.length),
    });
    await sync.start(0);
    const ev = ban('192.0.2.50', 'node-a');
    st.fleet.recordLocal(ev, JSON.stringify(ev), Date.now());
    sync.flush();
    await lab.server(port, ['--port', String(port), '--user', 'nokeys', 'on', '>pw', '~other:*', '&*', '+@all']);
    await waitFor(() => log.lines.some((l) => /redis connected/.test(l)), 15_000, () => `the connection\n${log.lines.join('\n')}`);
    await waitFor(() => unhandled.length > 0 || log.lines.some((l) => /NOPERM/.test(l)), 10_000, () => `NOPERM in the log\n${log.lines.join('\n')}`);
    assert.deepEqual(
      unhandled.map(String),
      [],
      'the first lease after (re)connecting failed as an unhandled rejection (FleetSync: onChange -> void this.onConnected())',
    );
    assert.ok(log.lines.some((l) => /level=(warn|error).*NOPERM/.test(l)));
    assert.equal(st.fleet.outboxCount(), 1, 'the ban stays queued');
  } finally {
    await sync?.stop();
    process.removeListener('unhandledRejection', onUnhandled);
    st.close();
    await lab.dispose();
  }
});

test('Sentinel down at start for longer than the client retries on its own: it connects once the sentinel appears', { timeout: LIMIT }, async (t) => {
  if (!requirePrereq(t, HAVE_REDIS, 'redis-server', HOW)) return;
  const lab = new RedisLab();
  const log = logs();
  const restoreConsole = quietConsole(t);
  let c: RedisConn | undefined;
  try {
    const sport = await lab.freePort();
    c = await connectRedis({ ...BASE, sentinel: { name: 'tsfmaster', nodes: [`127.0.0.1:${sport}`] } }, log);
    const t0 = Date.now();
    const early = c.cmd(['PING']).then(
      () => Date.now() - t0,
      () => Date.now() - t0,
    );
    // node-redis gives up its own connect loop after 16 discoveries, one a second, and says so.
    await waitFor(() => /None of the sentinels are available/.test(c!.lastError ?? ''), 40_000, 'node-redis to give up its first connect');
    const master = await lab.freePort();
    await lab.server(master, ['--port', String(master)]);
    await lab.sentinel(sport, master, 'tsfmaster');
    await waitFor(() => c!.connected, 10_000, () => `the connection once the sentinel is up (last error: ${c!.lastError}; src/store/redis-connect.ts sentinel probe)`);
    assert.equal(await within(c.cmd(['PING']), 2000, 'PING'), 'PONG');
    const ms = await early;
    assert.ok(ms < 1000, `a command sent while no sentinel answered took ${ms} ms to fail (connectRedis promises at once)`);
  } finally {
    restoreConsole();
    await c?.close();
    await lab.dispose();
  }
});

for (const topology of ['sentinel', 'cluster'] as const) {
  test(`${topology} down when the node subscribes: wake-ups reach it once Redis is up`, { timeout: LIMIT }, async (t) => {
    if (!requirePrereq(t, HAVE_REDIS, 'redis-server', HOW)) return;
    const lab = new RedisLab();
    const log = logs();
    const restoreConsole = quietConsole(t);
    let sub: RedisConn | undefined;
    let pub: RedisConn | undefined;
    try {
      const ports = [await lab.freePort(true), await lab.freePort(true), await lab.freePort(true)];
      if (topology === 'cluster') {
        // A formed cluster whose nodes are all down (a restart), not one still being formed when the client comes.
        for (const node of await lab.cluster(ports)) await node.kill();
      }
      const s: RedisSettings =
        topology === 'sentinel'
          ? { ...BASE, sentinel: { name: 'tsfmaster', nodes: [`127.0.0.1:${ports[0]}`] } }
          : { ...BASE, cluster: { nodes: ports.map((p) => `127.0.0.1:${p}`) } };
      sub = await connectRedis(s, log);
      // As FleetSync.start() does with Redis down: it waited (waitMs) and saw the first attempt fail, then subscribes
      // and relies on the subscription once Redis is there.
      await waitFor(() => sub!.lastError !== null, 10_000, 'the first connection attempt to fail');
      const woke: string[] = [];
      let subscribed = 'still pending';
      sub.subscribe(WAKE, (m) => void woke.push(m)).then(
        () => (subscribed = 'resolved'),
        (e: unknown) => (subscribed = `rejected: ${String(e)}`),
      );
      if (topology === 'sentinel') {
        await lab.server(ports[1]!, ['--port', String(ports[1])]);
        await lab.sentinel(ports[0]!, ports[1]!, 'tsfmaster');
      } else {
        await lab.clusterNodes(ports);
        await lab.clusterOk(ports);
      }
      await connected(sub, 15_000, log);
      pub = await connectRedis(s, log);
      await connected(pub, 15_000, log);
      await within(pub.cmd(['PUBLISH', WAKE, 'hello'], WAKE), 5000, 'PUBLISH');
      // pub/sub has no memory: publish until the subscription, however late, hears one (bounded).
      const end = Date.now() + 5000;
      while (woke.length === 0 && Date.now() < end) {
        await new Promise((r) => setTimeout(r, 200));
        await pub.cmd(['PUBLISH', WAKE, 'hello'], WAKE);
      }
      assert.ok(woke.length > 0, `no wake-up reached the subscriber; its subscribe() ${subscribed} (src/store/redis-connect.ts ${topology} subscribe)`);
    } finally {
      await sub?.close();
      await pub?.close();
      restoreConsole();
      await lab.dispose();
    }
  });
}
