import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** The config shipped with the package: config/config.default.json. */
export const BUNDLED_CONFIG = fileURLToPath(new URL('../../config/config.default.json', import.meta.url));
export const SYSTEM_CONFIG = '/etc/tsfilter/config.json';

/**
 * Where the system config lives: /etc/tsfilter/config.json. For tests only (not in --help), TSFILTER_SYSTEM_CONFIG
 * moves it, so install-service's "write the defaults when it is missing" can be exercised without touching /etc.
 */
export function systemConfigPath(): string {
  return process.env.TSFILTER_SYSTEM_CONFIG || SYSTEM_CONFIG;
}

/** --config, else $TSFILTER_CONFIG, else /etc/tsfilter/config.json when it exists, else the bundled defaults. */
export function resolveConfigPath(explicit?: string): string {
  if (explicit) return explicit;
  if (process.env.TSFILTER_CONFIG) return process.env.TSFILTER_CONFIG;
  const system = systemConfigPath();
  if (existsSync(system)) return system;
  return BUNDLED_CONFIG;
}
