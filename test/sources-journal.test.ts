import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { createJournalSource, journalctlArgs } from '../src/sources/journal-source.ts';
import { MAX_LINE_BYTES } from '../src/sources/types.ts';
import { Collector, MemoryPositions, running, sleep, waitFor, warn, warnings, withTmpDir } from './sources-helpers.ts';

const REMOTE = ['/lib/systemd/systemd-journal-remote', '/usr/lib/systemd/systemd-journal-remote'].find((p) => existsSync(p));
const HAVE_JOURNALCTL = spawnSync('journalctl', ['--version']).status === 0;
const missing = [!HAVE_JOURNALCTL && 'journalctl', !REMOTE && 'systemd-journal-remote'].filter(Boolean).join(' and ');
const skip = missing
  ? `${missing} not found; install with \`apt-get install -y systemd-journal-remote\` to run the journal tests`
  : false;
if (skip && process.env.CI === 'true') {
  // In CI a missing prerequisite must not silently turn into a green run.
  it('journal test prerequisites', () => assert.fail(`CI=true but ${skip}`));
}

type Entry = Record<string, string | Buffer>;
let clock = 1_700_000_000_000_000;

/** Appends entries to a journal file with systemd-journal-remote (Journal Export Format on stdin). */
function appendJournal(file: string, entries: Entry[]): void {
  const parts: Buffer[] = [];
  for (const e of entries) {
    clock += 1_000_000;
    const fields: Entry = { __REALTIME_TIMESTAMP: String(clock), _BOOT_ID: '6b4c6a2b1b6d4a7c9a3e0f1d2c3b4a59', ...e };
    for (const [k, v] of Object.entries(fields)) {
      if (typeof v === 'string' && !v.includes('\n')) {
        parts.push(Buffer.from(`${k}=${v}\n`));
      } else {
        const data = typeof v === 'string' ? Buffer.from(v) : v;
        const len = Buffer.alloc(8);
        len.writeBigUInt64LE(BigInt(data.length));
        parts.push(Buffer.from(`${k}\n`), len, data, Buffer.from('\n'));
      }
    }
    parts.push(Buffer.from('\n'));
  }
  const r = spawnSync(REMOTE!, ['-o', file, '-'], { input: Buffer.concat(parts) });
  if (r.status !== 0) throw new Error(`systemd-journal-remote failed: ${r.stderr.toString()}`);
}

const ssh = (msg: string, unit = 'ssh.service'): Entry => ({ _SYSTEMD_UNIT: unit, SYSLOG_IDENTIFIER: 'sshd', MESSAGE: msg });
const MATCHES = ['_SYSTEMD_UNIT=ssh.service', '+', '_SYSTEMD_UNIT=sshd.service'];

describe('journal source', { skip }, () => {
  it('builds argv without a shell: -m with files, cursor or -n all, matches as separate items', () => {
    assert.deepEqual(journalctlArgs({ matches: MATCHES, files: ['/a.journal'] }, undefined), [
      '-f', '-o', 'json', '--all', '--no-pager', '-m', '--file=/a.journal', '-n', 'all', ...MATCHES,
    ]);
    assert.deepEqual(journalctlArgs({ matches: ['_SYSTEMD_UNIT=x'] }, 's=1;i=2'), [
      '-f', '-o', 'json', '--all', '--no-pager', '--after-cursor=s=1;i=2', '_SYSTEMD_UNIT=x',
    ]);
    assert.deepEqual(journalctlArgs({ matches: [], directory: '/j' }, undefined), ['-f', '-o', 'json', '--all', '--no-pager', '-m', '--directory=/j', '-n', 'all']);
  });

  it('delivers matching entries, filters others, follows appends, resumes after the cursor', async () => {
    await withTmpDir(async (dir) => {
      const jf = path.join(dir, 'remote.journal');
      const t0 = clock + 1_000_000;
      appendJournal(jf, [
        ssh('Failed password for root from 203.0.113.1 port 22 ssh2'),
        ssh('cron did something', 'cron.service'),
        ssh('Invalid user admin from 203.0.113.2', 'sshd.service'),
      ]);
      const positions = new MemoryPositions();
      const key = 'journal:sshd';
      const c1 = new Collector(positions);
      const src = createJournalSource({ name: 'sshd', matches: MATCHES, files: [jf], positions, warn });
      await running(src, c1, async () => {
        await waitFor(() => c1.lines.length === 2, 'two matching entries');
        assert.deepEqual(c1.texts(), ['Failed password for root from 203.0.113.1 port 22 ssh2', 'Invalid user admin from 203.0.113.2']);
        assert.equal(c1.lines[0]!.source, key);
        assert.equal(c1.lines[0]!.time, t0 / 1000);
        const pos = positions.getPosition(key);
        assert.ok(pos?.cursor, 'cursor stored');
        assert.deepEqual({ ...pos, cursor: '' }, { inode: 0, offset: 0, fingerprint: '', cursor: '' });

        // Appended while following.
        appendJournal(jf, [ssh('cron again', 'cron.service'), ssh('Failed password for bob from 198.51.100.7 port 2222 ssh2')]);
        await waitFor(() => c1.lines.length === 3, 'appended entry');
        assert.equal(c1.lines[2]!.text, 'Failed password for bob from 198.51.100.7 port 2222 ssh2');
        assert.equal(src.status().cursor, positions.getPosition(key)!.cursor);
        assert.equal(src.status().linesRead, 3);
      });

      // Appended while stopped; a new source with the same store only delivers these.
      appendJournal(jf, [ssh('Failed password for carol from 192.0.2.9 port 22 ssh2'), ssh('noise', 'cron.service')]);
      const c2 = new Collector(positions);
      await running(createJournalSource({ name: 'sshd', matches: MATCHES, files: [jf], positions, warn }), c2, async () => {
        await waitFor(() => c2.lines.length >= 1, 'entry appended while stopped');
        await sleep(500);
        assert.deepEqual(c2.texts(), ['Failed password for carol from 192.0.2.9 port 22 ssh2']);
      });
    });
  });

  it('binary, multi-line and overlong MESSAGE values are decoded leniently, escaped into one line, and cut', async () => {
    await withTmpDir(async (dir) => {
      const jf = path.join(dir, 'bin.journal');
      appendJournal(jf, [
        { _SYSTEMD_UNIT: 'ssh.service', MESSAGE: Buffer.from([0x62, 0x61, 0x64, 0x20, 0xff, 0xfe, 0x00, 0x21]) },
        { _SYSTEMD_UNIT: 'ssh.service', MESSAGE: 'pam: user=x\nFailed password for root from 198.51.100.9 port 22 ssh2\n' },
        { _SYSTEMD_UNIT: 'ssh.service', MESSAGE: 'é'.repeat(5000) }, // 10000 bytes: over journalctl's 4096 and our cap
        { _SYSTEMD_UNIT: 'ssh.service', MESSAGE: 'after' },
      ]);
      const positions = new MemoryPositions();
      const c = new Collector(positions);
      await running(createJournalSource({ name: 'bin', matches: ['_SYSTEMD_UNIT=ssh.service'], files: [jf], positions, warn }), c, async () => {
        await waitFor(() => c.texts().includes('after'), 'all entries');
        const texts = c.texts();
        assert.equal(texts[0], 'bad \uFFFD\uFFFD#000!', 'control characters are escaped as rsyslog does');
        // An embedded newline must not forge a second, header-less line naming another address.
        assert.equal(texts[1], 'pam: user=x#012Failed password for root from 198.51.100.9 port 22 ssh2');
        assert.equal(texts[2], 'é'.repeat(MAX_LINE_BYTES / 2), 'cut at the cap on a character boundary');
        for (const t of texts) assert.ok(Buffer.byteLength(t) <= MAX_LINE_BYTES);
      });
    });
  });

  it('restarts journalctl from the last cursor when it dies, without repeats', async () => {
    await withTmpDir(async (dir) => {
      const jf = path.join(dir, 'restart.journal');
      appendJournal(jf, [ssh('one')]);
      const positions = new MemoryPositions();
      const c = new Collector(positions);
      const src = createJournalSource({ name: 'rs', matches: MATCHES, files: [jf], positions, warn });
      await running(src, c, async () => {
        await waitFor(() => c.lines.length === 1, 'first entry');
        const pids = readdirSync('/proc').filter((p) => /^\d+$/.test(p)).filter((p) => {
          try {
            return readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(jf);
          } catch {
            return false;
          }
        });
        assert.equal(pids.length, 1, 'our journalctl process');
        process.kill(Number(pids[0]), 'SIGKILL');
        await waitFor(() => src.status().error !== undefined, 'exit reported in status');
        assert.match(src.status().error!, /journalctl exited/);
        appendJournal(jf, [ssh('two')]);
        await waitFor(() => c.lines.length >= 2, 'entry after restart');
        await sleep(300);
        assert.deepEqual(c.texts(), ['one', 'two']);
        await waitFor(() => src.status().error === undefined, 'error cleared after output resumed');
      });
    });
  });

  it('a malformed JSON line is skipped with a warning', async () => {
    await withTmpDir(async (dir) => {
      // Stand-in binary for this one case only: real journalctl never prints malformed JSON on purpose.
      const fake = path.join(dir, 'fake-journalctl');
      writeFileSync(
        fake,
        '#!/bin/sh\nprintf \'%s\\n\' \'{"MESSAGE":"good 1","__CURSOR":"c1","__REALTIME_TIMESTAMP":"1700000000000000"}\' \'{not json\' \'{"MESSAGE":"good 2","__CURSOR":"c2"}\'\nexec sleep 30\n',
      );
      chmodSync(fake, 0o755);
      const positions = new MemoryPositions();
      const c = new Collector(positions);
      const before = warnings.length;
      await running(createJournalSource({ name: 'fake', matches: [], positions, journalctl: fake, warn }), c, async () => {
        await waitFor(() => c.lines.length === 2, 'valid lines');
        assert.deepEqual(c.texts(), ['good 1', 'good 2']);
        assert.equal(positions.getPosition('journal:fake')!.cursor, 'c2');
        assert.ok(warnings.slice(before).some((w) => w.msg.includes('malformed')));
      });
    });
  });

  it('start() rejects when journalctl cannot be run', async () => {
    const src = createJournalSource({ name: 'none', matches: [], positions: new MemoryPositions(), journalctl: '/nonexistent/journalctl', warn });
    await assert.rejects(src.start(() => {}), /cannot run/);
    await src.stop();
  });
});
