#!/usr/bin/env node
import '../rules/regex-guard.ts';
import { readFileSync } from 'node:fs';
import { Command, CommanderError } from 'commander';
import { ConfigError, loadConfigFile, type Config } from '../config/load.ts';
import { resolveConfigPath } from './config-path.ts';
import { replay, UsageError, type ReplayBan } from './replay.ts';
import { testCommand, type TestCommandOptions } from './test-rule.ts';
import { banCommand, listCommand, NotRunningError, statusCommand, unbanCommand } from './control.ts';
import { explainCommand } from './explain.ts';
import { importPyfilterCommand, type ImportOptions } from './import-pyfilter.ts';
import { installServiceCommand, uninstallServiceCommand, type InstallOptions } from './install-service.ts';
import { createLogger } from '../util/logger.ts';
import { findDatabase, GeoIp } from '../geo/geoip.ts';
import { describeCountryPolicy } from '../geo/country-policy.ts';
import { loadToken } from '../api/http/config.ts';

/** Exit codes: 0 ok, 1 runtime failure, 2 bad configuration or usage. */
const EXIT_RUNTIME = 1;
const EXIT_CONFIG = 2;

const iso = (ms: number) => new Date(ms).toISOString();

function load(file?: string): Config {
  return loadConfigFile(resolveConfigPath(file));
}

/** The installed package's version: the same file npm reads, one level above src/ and dist/. */
function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version?: unknown };
  return typeof pkg.version === 'string' ? pkg.version : 'unknown';
}

export function buildProgram(): Command {
  const program = new Command();
  program
    .name('tsfilter')
    .description('Log-driven intrusion prevention: reads service logs, counts failed logins per IP, bans attackers.')
    .version(packageVersion())
    .showHelpAfterError()
    .exitOverride();

  program
    .command('run')
    .description('Run the daemon in the foreground (structured log lines on stdout, for journald).')
    .option('-c, --config <file>', 'config file (default: $TSFILTER_CONFIG, /etc/tsfilter/config.json, or the bundled defaults)')
    .addHelpText('after', '\nExample:\n  sudo tsfilter run --config /etc/tsfilter/config.json\n')
    .action(async (o: { config?: string }) => {
      daemonRunning = true;
      const file = resolveConfigPath(o.config);
      const config = loadConfigFile(file);
      const logger = createLogger();
      // SIGHUP before the daemon is up would kill the process: queue it until it can be applied.
      let daemon: import('../daemon.ts').DaemonHandle | null = null;
      let hupPending = false;
      const reload = () => {
        if (daemon === null) {
          hupPending = true;
          return;
        }
        logger.info('SIGHUP: reloading the configuration', { config: file });
        let next: Config;
        try {
          next = loadConfigFile(file);
        } catch (e) {
          const problems = e instanceof ConfigError ? e.problems.map((p) => `${p.path || '(file)'}: ${p.message}`).join('; ') : (e as Error).message;
          logger.error('reload failed: invalid configuration; still running with the previous one', { config: file, problems });
          return;
        }
        daemon.reload(next).catch((e) =>
          logger.error('reload failed; still running with the previous configuration', { config: file, error: e }),
        );
      };
      process.on('SIGHUP', reload);
      const { startDaemon } = await import('../daemon.ts');
      const d = await startDaemon(config, logger);
      daemon = d;
      if (hupPending) reload();
      await new Promise<void>((resolve) => {
        const stop = (sig: string) => {
          logger.info('signal received, stopping', { signal: sig });
          d.stop().then(resolve, (e) => {
            logger.error('error while stopping', { error: e });
            resolve();
          });
        };
        process.once('SIGTERM', () => stop('SIGTERM'));
        process.once('SIGINT', () => stop('SIGINT'));
      });
      process.off('SIGHUP', reload);
    });

  const out = (s: string) => process.stdout.write(s + '\n');
  const note = (s: string) => process.stderr.write(s + '\n');
  const configOpt = '-c, --config <file>';
  const configHelp = 'config file (finds the control socket and the store)';

  program
    .command('ban')
    .description('Ban an address now, in the firewall and the store (works on the store alone when the daemon is not running).')
    .argument('<ip>', 'IPv4 or IPv6 address')
    .option('-d, --duration <d>', 'seconds, or 30s / 10m / 12h / 7d / 2w, or "permanent" (default: ban_time with escalation)')
    .option('-r, --reason <text>', 'why (shown by tsfilter list)')
    .option(configOpt, configHelp)
    .addHelpText('after', '\nExamples:\n  sudo tsfilter ban 192.0.2.7 --duration 12h --reason "scanning"\n  sudo tsfilter ban 2001:db8::7 --duration permanent\n')
    .action((ip: string, o: { duration?: string; reason?: string; config?: string }) => banCommand(load(o.config), ip, o, out));

  program
    .command('unban')
    .description('Lift the ban of an address, or of every address with --all (firewall and store).')
    .argument('[ip]', 'IPv4 or IPv6 address')
    .option('-a, --all', 'lift every active ban')
    .option(configOpt, configHelp)
    .addHelpText('after', '\nExamples:\n  sudo tsfilter unban 192.0.2.7\n  sudo tsfilter unban --all\n')
    .action((ip: string | undefined, o: { all?: boolean; config?: string }) => unbanCommand(load(o.config), ip, o, out));

  program
    .command('list')
    .description('Show the active bans: ip, rule, origin, since, expiry, ban count, country, reason.')
    .option('--json', 'one JSON object per ban per line')
    .option(configOpt, configHelp)
    .addHelpText('after', '\nExamples:\n  sudo tsfilter list\n  sudo tsfilter list --json | jq -r .ip\n')
    .action((o: { json?: boolean; config?: string }) => listCommand(load(o.config), o, out, note));

  program
    .command('explain')
    .argument('<ip>', 'an address or CIDR prefix')
    .description('Why an address is (or was) banned: every ban with its rule, the log lines that counted, times, ban count and escalation, country, origin and node.')
    .option('--json', 'one JSON object {ip, bans, covered_by}')
    .option(configOpt, configHelp)
    .addHelpText('after', '\nExamples:\n  sudo tsfilter explain 203.0.113.7\n  sudo tsfilter explain 2001:db8::7 --json | jq .bans\n')
    .action((ip: string, o: { json?: boolean; config?: string }) => explainCommand(load(o.config), ip, o, out));

  program
    .command('status')
    .description("Show the running daemon's uptime, sources and positions, lines per rule, tracked addresses, bans and enforcer health; exit 1 when it is not running.")
    .option('--json', 'one JSON object')
    .option(configOpt, configHelp)
    .addHelpText('after', '\nExample:\n  sudo tsfilter status\n')
    .action((o: { json?: boolean; config?: string }) => statusCommand(load(o.config), o, out));

  program
    .command('replay')
    .description('Replay log files through the real pipeline (dry-run enforcer, in-memory store) and print the bans it would make.')
    .argument('<files...>', 'log files to replay')
    .option('-c, --config <file>', 'config file')
    .option('-r, --rule <name>', 'only this rule (default: every enabled rule sees every line)')
    .option('--json', 'one JSON object per line: each ban, then {"summary": ...}')
    .addHelpText(
      'after',
      '\nExamples:\n  tsfilter replay /var/log/auth.log\n  tsfilter replay --rule ssh --json /var/log/auth.log.1 /var/log/auth.log\n',
    )
    .action(async (files: string[], o: { config?: string; rule?: string; json?: boolean }) => {
      const config = load(o.config);
      const out = (s: string) => process.stdout.write(s + '\n');
      const warn = createLogger({ write: (l) => process.stderr.write(l + '\n'), level: 'warn' });
      const onBan = o.json
        ? (b: ReplayBan) => out(JSON.stringify({ ip: b.ip, rule: b.rule, time: iso(b.time), failures: b.failures }))
        : (b: ReplayBan) => {
            out(`ban ${b.ip} rule=${b.rule} time=${iso(b.time)} failures=${b.failures}${b.instant ? ' instant' : ''}`);
            for (const l of b.lines) out(`    ${JSON.stringify(l).slice(1, -1)}`);
          };
      // Countries and country policies as the daemon would apply them, when a GeoIP database is configured.
      const dbFile = findDatabase(config.geoipDatabase, process.cwd());
      const geo = dbFile === null ? undefined : await GeoIp.open(dbFile, warn);
      let r;
      try {
        r = replay(config, files, { rule: o.rule, warn, onBan, country: geo && ((ip) => geo.country(ip)) });
      } finally {
        geo?.close();
      }
      if (o.json) {
        out(JSON.stringify({ summary: { lines: r.lines, matched: r.matched, bans: r.bans.length } }));
      } else {
        for (const [name, s] of r.perRule) {
          out(`rule ${name}: matched=${s.matched} successes=${s.successes} bans=${s.bans}`);
        }
        out(`summary: lines=${r.lines} matched=${r.matched} bans=${r.bans.length}`);
      }
    });

  program
    .command('test')
    .usage('[options] [RULE] FILE')
    .description(
      'Try rules on a log file (like fail2ban-regex): per line the rule and pattern that matched, its captures and the ' +
      'parsed time, matches that were refused and why; per pattern how many lines it matched, flagging patterns that ' +
      'never matched. Without RULE every enabled rule runs; --pattern tries one ad-hoc pattern.',
    )
    .argument('[rule]', 'rule name from the config (default: every enabled rule)')
    .argument('[file]', 'log file')
    .option('-c, --config <file>', 'config file')
    .option('-p, --pattern <regex>', 'try this pattern instead of the config\'s (named groups (?<host>...), (?<time>...), ...); with RULE, in that rule\'s context')
    .option('-t, --time-format <fmt>', 'strptime format for the (?<time>) capture (default: the rule\'s time_format, else ISO 8601)')
    .option('-u, --unmatched', 'also list the lines nothing matched, with their line numbers')
    .option('--json', 'one JSON object per line event, then {"summary": ...}')
    .addHelpText(
      'after',
      '\nExamples:\n  tsfilter test /var/log/auth.log\n  tsfilter test ssh /var/log/auth.log --unmatched\n' +
        "  tsfilter test --pattern 'Failed password for (?<user>\\S+) from (?<host>\\S+)' /var/log/auth.log\n" +
        "  tsfilter test --pattern '^(?<time>\\S+ +\\d+ [\\d:]+) .*Invalid user \\S+ from (?<host>\\S+)' --time-format '%b %d %H:%M:%S' /var/log/auth.log\n",
    )
    .action((a: string | undefined, b: string | undefined, o: TestCommandOptions) => testCommand([a, b], o, load, out));

  const cfg = program.command('config').description('Configuration tools.');
  cfg
    .command('check')
    .description('Validate a config file without starting anything; exit code 2 when it is invalid.')
    .option('-c, --config <file>', 'config file')
    .addHelpText('after', '\nExample:\n  tsfilter config check --config /etc/tsfilter/config.json\n')
    .action((o: { config?: string }) => {
      const config = load(o.config);
      // What `run` would refuse at start beyond the schema: a token file that is missing or readable by others.
      if (config.api) {
        try {
          loadToken(config.api);
        } catch (e) {
          throw new ConfigError(config.file, [{ path: 'api.token_file', message: (e as Error).message.replace(/^api\.token_file /, '') }]);
        }
      }
      const enabled = config.rules.filter((r) => r.enabled);
      process.stdout.write(
        `${config.file}: OK (${enabled.length} rule${enabled.length === 1 ? '' : 's'}: ${enabled
          .map((r) => `${r.name} [${r.policy.mode === 'gap' ? `gap ${r.policy.failedAttempts}/${r.policy.requestTime}s` : `window ${r.policy.failedAttempts}/${r.policy.findTime}s`}${r.countries ? `; countries ${describeCountryPolicy(r.countries)}` : ''}]`)
          .join(', ')}; store ${config.sqlitePath})\n`,
      );
    });

  const imp = program.command('import').description('Migrate from another tool.');
  imp
    .command('pyfilter')
    .description("One-shot migration from a PyFilter install directory: its Config/config.json (data_dir moved out of the working directory), PyFilter.db's bans and Config/blacklist.v4/.v6 into TSFilter's config and store.")
    .option('--from <dir>', 'the PyFilter install directory (default: the current directory)')
    .option('-c, --config <file>', 'the TSFilter config to write (default: $TSFILTER_CONFIG, else /etc/tsfilter/config.json)')
    .option('--data-dir <dir>', 'settings.data_dir of the written config (default: /var/lib/tsfilter)')
    .option('--force', 'replace an existing TSFilter config')
    .option('--dry-run', 'report what would be imported and skipped; write nothing')
    .option('--json', 'the report as one JSON object')
    .addHelpText('after', '\nExamples:\n  sudo tsfilter import pyfilter --from /opt/PyFilter --dry-run\n  sudo tsfilter import pyfilter --from /opt/PyFilter\n')
    .action((o: ImportOptions) => importPyfilterCommand(o, out));

  program
    .command('install-service')
    .description('Write, enable and start the systemd unit tsfilter.service (root); running it again only applies changes.')
    .option('-c, --config <file>', 'config file the service runs with (default: /etc/tsfilter/config.json, written from the bundled defaults when missing)')
    .option('--print', 'print the unit and change nothing')
    .addHelpText('after', '\nExamples:\n  sudo tsfilter install-service\n  tsfilter install-service --config /etc/tsfilter/config.json --print\n')
    .action((o: InstallOptions) => installServiceCommand(o, out, note));

  program
    .command('uninstall-service')
    .description('Stop and disable tsfilter.service and remove its unit (root); the config and /var/lib/tsfilter stay.')
    .addHelpText('after', '\nExample:\n  sudo tsfilter uninstall-service\n')
    .action(() => uninstallServiceCommand(out));

  return program;
}

/** Set by `run`: the daemon keeps going when its stdout breaks. */
let daemonRunning = false;

export async function main(argv: string[]): Promise<number> {
  // `tsfilter replay ... | head` closes our stdout early: that is the reader's choice, not an error. The daemon is
  // different: a broken log pipe (a dead log shipper) must not stop the protection, so it only loses those lines.
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code !== 'EPIPE') throw e;
    if (!daemonRunning) process.exit(0);
  });
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
    return 0;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : EXIT_CONFIG;
    if (e instanceof ConfigError) {
      process.stderr.write(`tsfilter: invalid configuration in ${e.file}:\n`);
      for (const p of e.problems) process.stderr.write(`  ${p.path || '(file)'}: ${p.message}\n`);
      return EXIT_CONFIG;
    }
    if (e instanceof NotRunningError) {
      process.stderr.write(`tsfilter: ${e.message}\n`);
      return EXIT_RUNTIME;
    }
    if (e instanceof UsageError) {
      process.stderr.write(`tsfilter: ${e.message}\n`);
      return EXIT_CONFIG;
    }
    process.stderr.write(`tsfilter: ${(e as Error).message}\n`);
    return EXIT_RUNTIME;
  }
}

const code = await main(process.argv);
process.exitCode = code;
