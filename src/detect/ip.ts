import ipaddr from 'ipaddr.js';

const V4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$/;

/**
 * Returns the canonical text of an IP address, or null if `s` is not one. IPv4 in dotted-quad form only (no
 * "1.2.3" or octal forms, which sshd never writes and which would let a crafted string alias another address);
 * IPv4-mapped IPv6 becomes plain IPv4; IPv6 becomes lower-case RFC 5952 form; a zone suffix is dropped.
 */
export function normalizeIp(s: string): string | null {
  if (s.length <= 15 && V4.test(s)) return s;
  if (s.indexOf(':') < 0 || s.length > 64) return null;
  let t = s;
  if (t.charCodeAt(0) === 91 /* [ */ && t.charCodeAt(t.length - 1) === 93) t = t.slice(1, -1);
  const pct = t.indexOf('%');
  if (pct >= 0) t = t.slice(0, pct);
  if (!ipaddr.IPv6.isValid(t)) return null;
  const a = ipaddr.IPv6.parse(t);
  if (a.isIPv4MappedAddress()) return a.toIPv4Address().toString();
  return a.toRFC5952String();
}

/** Whether `s` is IPv4 in strict dotted-quad form (four decimal octets 0-255, no leading zeros). */
export function isStrictIPv4(s: string): boolean {
  return s.length <= 15 && V4.test(s);
}

export function ipFamily(ip: string): 4 | 6 {
  return ip.indexOf(':') >= 0 ? 6 : 4;
}
