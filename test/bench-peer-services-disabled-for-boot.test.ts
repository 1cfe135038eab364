/**
 * policy-rc.d keeps sshguard and fail2ban from starting during the bench's install, but their postinst still enables
 * them for boot (`deb-systemd-helper enable`), and the next boot would start them on the host firewall. The bench
 * disables what it installed: the boot links go, the unit is not masked (`systemctl enable` brings it back), and the
 * package's next upgrade (its postinst again) leaves it disabled. Run in a fake root directory (DPKG_ROOT, and
 * systemctl --root) with a unit of its own, so the host's systemd configuration is not touched.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { bootLinks, DEB_SYSTEMD_HELPER, disableAtBoot } from '../bench/lib/hold-services.ts';
import { requirePrereq } from './helpers/prereq.ts';

const PKG = 'tsf-bench-probe';
const UNIT = `${PKG}.service`;

function fakeRoot(): string {
  const root = mkdtempSync(path.join(tmpdir(), 'tsf-boot-root-'));
  mkdirSync(path.join(root, 'lib/systemd/system'), { recursive: true });
  writeFileSync(path.join(root, 'lib/systemd/system', UNIT), '[Unit]\nDescription=probe\n[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n');
  return root;
}

/** What a package's postinst (dh_installsystemd) runs on install and on every upgrade. */
function postinst(root: string): void {
  const env = { ...process.env, DPKG_ROOT: root, DPKG_MAINTSCRIPT_PACKAGE: PKG };
  const dsh = (...args: string[]) => spawnSync(DEB_SYSTEMD_HELPER, args, { env, encoding: 'utf8' });
  if (dsh('--quiet', 'was-enabled', UNIT).status === 0) assert.equal(dsh('enable', UNIT).status, 0);
  else assert.equal(dsh('update-state', UNIT).status, 0);
}

function haveHelper(t: TestContext): boolean {
  return requirePrereq(t, existsSync(DEB_SYSTEMD_HELPER), DEB_SYSTEMD_HELPER, 'install the init-system-helpers package');
}

test('an installed package enabled for boot by its postinst is disabled, not masked, and its next upgrade leaves it disabled', (t) => {
  if (!haveHelper(t)) return;
  const root = fakeRoot();
  try {
    postinst(root);
    assert.equal(bootLinks(UNIT, root).length, 1, 'the postinst enabled it, as on a real install');

    const notes = disableAtBoot([PKG], { root });
    assert.deepEqual(bootLinks(UNIT, root), []);
    assert.match(notes.join('\n'), new RegExp(`${UNIT} disabled for boot \\(deb-systemd-helper disable; not masked`));
    assert.equal(existsSync(path.join(root, 'etc/systemd/system', UNIT)), false, 'no mask (a link to /dev/null) was made');

    postinst(root);
    assert.deepEqual(bootLinks(UNIT, root), [], 'an upgrade does not enable it again');

    const systemctl = spawnSync('systemctl', ['--version'], { stdio: 'ignore' }).status === 0;
    if (systemctl) {
      const r = spawnSync('systemctl', [`--root=${root}`, 'enable', UNIT], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      assert.equal(bootLinks(UNIT, root).length, 1, 'systemctl enable is all it takes to have it back');
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('without deb-systemd-helper the boot links are removed by hand', (t) => {
  if (!haveHelper(t)) return;
  const root = fakeRoot();
  try {
    postinst(root);
    const [link] = bootLinks(UNIT, root);
    assert.ok(link && lstatSync(link).isSymbolicLink());
    const notes = disableAtBoot([PKG], { root, helper: null });
    assert.deepEqual(bootLinks(UNIT, root), []);
    assert.match(notes.join('\n'), /disabled for boot \(boot links removed; not masked/);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('a package with no unit (an install that failed before unpacking it) gives no note', () => {
  const root = fakeRoot();
  try {
    assert.deepEqual(disableAtBoot(['tsf-bench-absent'], { root, helper: null }), []);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
