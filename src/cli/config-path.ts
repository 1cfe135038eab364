import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** The config shipped with the package: config/config.default.json. */
export const BUNDLED_CONFIG = fileURLToPath(new URL('../../config/config.default.json', import.meta.url));
export const SYSTEM_CONFIG = '/etc/tsfilter/config.json';

/** --config, else $TSFILTER_CONFIG, else /etc/tsfilter/config.json when it exists, else the bundled defaults. */
export function resolveConfigPath(explicit?: string): string {
  if (explicit) return explicit;
  if (process.env.TSFILTER_CONFIG) return process.env.TSFILTER_CONFIG;
  if (existsSync(SYSTEM_CONFIG)) return SYSTEM_CONFIG;
  return BUNDLED_CONFIG;
}
