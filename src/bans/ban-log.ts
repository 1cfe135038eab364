import { appendFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';

const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
const p2 = (n: number) => String(n).padStart(2, '0');

/**
 * PyFilter's ban log, byte for byte: `<dir>/<YYYY-Mon>/<YYYY-MM-DD>/<YYYY-MM-DD HH>.log`, each event appended as
 * `YYYY-MM-DD HH:MM:SS <message>\n`, in local time, so tools that read PyFilter's Logs/ keep working.
 */
export class BanLog {
  constructor(private readonly directory: string) {}

  write(message: string, at: Date = new Date()): void {
    const y = at.getFullYear();
    const ymd = `${y}-${p2(at.getMonth() + 1)}-${p2(at.getDate())}`;
    const dir = path.join(this.directory, `${y}-${MONTHS[at.getMonth()]}`, ymd);
    mkdirSync(dir, { recursive: true, mode: 0o750 });
    const file = path.join(dir, `${ymd} ${p2(at.getHours())}.log`);
    const stamp = `${ymd} ${p2(at.getHours())}:${p2(at.getMinutes())}:${p2(at.getSeconds())}`;
    appendFileSync(file, `${stamp} ${message}\n`, { mode: 0o640 });
  }
}

/** PyFilter's sentence for a ban earned by counting (it names failed_attempts, as PyFilter's count does). */
export function banMessage(ip: string, rule: string, failedAttempts: number, instant: boolean, country?: string | null): string {
  const how = instant ? 'an instant ban' : `${failedAttempts} bad connections`;
  return `IP: ${ip} has been blacklisted and the firewall rules have been updated. Acquired ${how} via ${rule}.${countrySentence(country)}`;
}

/**
 * PyFilter's country sentence: only when a GeoIP database is in use (`country` is then a name or null for an address
 * it does not know); without one (`undefined`) the sentence is left out, as PyFilter does.
 */
export function countrySentence(country: string | null | undefined): string {
  return country === undefined ? '' : ` The IP was from ${country ?? 'unknown!'}.`;
}
