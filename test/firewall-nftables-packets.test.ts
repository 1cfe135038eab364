// Real packets: a client namespace connects to a TCP listener in a server namespace (veth pair, IPv4 and IPv6) while
// the nftables enforcer, running on the server side, bans and unbans the client. DROP makes the connection time out,
// REJECT refuses it at once; unban and kernel-side expiry let it through again.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { NftablesEnforcer, type NftLogger } from '../src/firewall/nftables.ts';
import { NetnsLab, netnsSupport, requireNetns } from './helpers/netns.ts';

const quiet: NftLogger = { info() {}, warn() {}, error() {} };
const PORT = 2222;
const SERVER = { 4: '192.0.2.1', 6: '2001:db8:1::1' } as const;
const CLIENT = { 4: '192.0.2.2', 6: '2001:db8:1::2' } as const;
const lab = new NetnsLab('nft-packets');
let S = '';
let C = '';

before(async () => {
  if (!netnsSupport().ok) return;
  S = lab.ns('s');
  C = lab.ns('c');
  lab.link(S, C, [`${SERVER[4]}/24`, `${SERVER[6]}/64`], [`${CLIENT[4]}/24`, `${CLIENT[6]}/64`]);
  const srv = lab.spawn(S, [process.execPath, '-e', `require('net').createServer((s) => s.end('hi\\n')).listen(${PORT}, '::', () => console.log('listening'))`]);
  srv.stdout!.setEncoding('utf8');
  const [line] = (await Promise.race([once(srv.stdout!, 'data'), once(srv, 'exit')])) as [string];
  assert.match(String(line), /listening/, 'test server started');
});
after(() => lab.dispose());

/** From the client namespace: 'ok' (got the greeting), 'timeout', or the error code (ECONNREFUSED...). */
async function probe(family: 4 | 6, timeoutMs = 800): Promise<{ result: string; ms: number }> {
  const js = `const s = require('net').connect({ host: '${SERVER[family]}', port: ${PORT}, localAddress: '${CLIENT[family]}' });
    const done = (r) => { console.log(r); process.exit(0); };
    setTimeout(() => done('timeout'), ${timeoutMs});
    s.on('data', () => done('ok'));
    s.on('error', (e) => done(e.code));`;
  const t0 = Date.now();
  const r = await lab.run(C, [process.execPath, '-e', js], { timeoutMs: 10_000 });
  const ms = Date.now() - t0;
  return { result: r.stdout.trim() || `exit ${r.code}: ${r.stderr.trim()}`, ms };
}

async function expectAll(want: RegExp, what: string): Promise<void> {
  for (const f of [4, 6] as const) {
    const r = await probe(f);
    assert.match(r.result, want, `IPv${f} ${what}`);
  }
}

for (const denyType of ['DROP', 'REJECT'] as const) {
  test(`${denyType}: a banned client cannot connect over IPv4 and IPv6; unban and expiry let it back`, async (t) => {
    if (!requireNetns(t)) return;
    const e = new NftablesEnforcer({ denyType, netns: S, logger: quiet, checkIntervalMs: 0 });
    await e.start();
    try {
      await expectAll(/^ok$/, 'connects before the ban');

      await e.ban([
        { ip: CLIENT[4], expiresAt: Date.now() + 3600_000, rule: 'test' },
        { ip: CLIENT[6], expiresAt: null, rule: 'test' },
      ]);
      for (const f of [4, 6] as const) {
        const r = await probe(f);
        if (denyType === 'DROP') assert.equal(r.result, 'timeout', `IPv${f} dropped`);
        else {
          // A reset, not a timeout: the error code says so, no clock needed.
          assert.equal(r.result, 'ECONNREFUSED', `IPv${f} refused with a TCP reset`);
        }
      }

      await e.unban([CLIENT[4], CLIENT[6]]);
      await expectAll(/^ok$/, 'connects after unban');

      // Kernel-side expiry: no unban call, the element's own 2 s timeout lifts the ban.
      await e.ban([
        { ip: CLIENT[4], expiresAt: Date.now() + 2000, rule: 'test' },
        { ip: CLIENT[6], expiresAt: Date.now() + 2000, rule: 'test' },
      ]);
      await expectAll(denyType === 'DROP' ? /^timeout$/ : /^ECONNREFUSED$/, 'blocked by a 2 s ban');
      await new Promise((r) => setTimeout(r, 2300));
      await expectAll(/^ok$/, 'connects once the kernel expired the element');
    } finally {
      await e.stop();
    }
  });
}
