const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
const p2 = (n: number) => String(n).padStart(2, '0');

/** A traditional syslog timestamp (`Nov 21 05:04:00`, UTC, space-padded day) for `ms`. */
export function syslogTime(ms: number): string {
  const d = new Date(ms);
  return `${MONTHS[d.getUTCMonth()]} ${String(d.getUTCDate()).padStart(2, ' ')} ${p2(d.getUTCHours())}:${p2(d.getUTCMinutes())}:${p2(d.getUTCSeconds())}`;
}

let pid = 4000;
/** A real-looking sshd line, e.g. sshLine(t, 'Failed password for root from 192.0.2.1 port 4242 ssh2'). */
export function sshLine(ms: number, message: string, host = 'server'): string {
  return `${syslogTime(ms)} ${host} sshd[${pid++}]: ${message}\n`;
}

export const failed = (ms: number, ip: string, user = 'root') => sshLine(ms, `Failed password for ${user} from ${ip} port ${40000 + (pid % 20000)} ssh2`);
export const accepted = (ms: number, ip: string, user = 'alice') => sshLine(ms, `Accepted password for ${user} from ${ip} port ${40000 + (pid % 20000)} ssh2`);
