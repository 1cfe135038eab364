import ipaddr from 'ipaddr.js';
import { normalizeIp } from '../detect/ip.ts';
import { canonicalAddress } from './nft-runner.ts';

/** A ban's source, validated: what may reach a firewall command or script. */
export interface Target {
  family: 4 | 6;
  /** Canonical text: "192.0.2.7", "2001:db8::7", "198.51.100.0/24", "2001:db8:1::/64". */
  text: string;
  /** The address, or the prefix's network address (host bits zero). */
  address: string;
  /** 32/128 for an address. */
  prefixLength: number;
  isPrefix: boolean;
}

const LEN = /^(?:0|[1-9]\d{0,2})$/;

/**
 * Canonical form of an address or CIDR prefix, or null. Host bits are cleared ("2001:db8:1::5/64" becomes
 * "2001:db8:1::/64"), a /32 or /128 becomes the plain address, IPv4-mapped IPv6 becomes IPv4 (its prefix length
 * minus 96). Only digits, a-f, '.', ':' and one '/' can be in the result, so it is safe in nft and iptables input.
 */
export function canonicalTarget(s: unknown): Target | null {
  if (typeof s !== 'string' || s.length === 0 || s.length > 50) return null;
  const slash = s.indexOf('/');
  if (slash < 0) {
    const a = canonicalAddress(s);
    return a === null ? null : { family: a.family, text: a.text, address: a.text, prefixLength: a.family === 4 ? 32 : 128, isPrefix: false };
  }
  const lenText = s.slice(slash + 1);
  if (!LEN.test(lenText)) return null;
  let len = Number(lenText);
  let a = canonicalAddress(s.slice(0, slash));
  if (a === null) return null;
  const raw = s.slice(0, slash);
  // An IPv4-mapped prefix (::ffff:192.0.2.0/120) names IPv4 addresses.
  if (a.family === 4 && raw.includes(':')) {
    if (len < 96) return null;
    len -= 96;
  }
  const bits = a.family === 4 ? 32 : 128;
  if (len > bits) return null;
  if (len === bits) return { family: a.family, text: a.text, address: a.text, prefixLength: bits, isPrefix: false };

  const network = a.family === 4 ? ipaddr.IPv4.networkAddressFromCIDR(`${a.text}/${len}`).toString() : (ipaddr.IPv6.networkAddressFromCIDR(`${a.text}/${len}`) as ipaddr.IPv6).toRFC5952String();

  a = canonicalAddress(network);
  if (a === null) return null;
  return { family: a.family, text: `${a.text}/${len}`, address: a.text, prefixLength: len, isPrefix: true };
}

/** Whether address `ip` (canonical) lies inside target `t` (an address matches only itself). */
export function targetContains(t: Target, ip: string): boolean {
  const a = canonicalAddress(ip);
  if (a === null || a.family !== t.family) return false;
  if (!t.isPrefix) return a.text === t.text;
  return ipaddr.parse(a.text).match(ipaddr.parse(t.address), t.prefixLength);
}

/** The prefix of length `len` that holds address `ip` (canonical), e.g. prefixOf("2001:db8:1::5", 64). */
export function prefixOf(ip: string, len: number): Target | null {
  return canonicalTarget(`${ip}/${len}`);
}

/** Canonical text of an address (lenient: brackets, zone, mapped IPv4) or a CIDR prefix; null if neither. */
export function normalizeSource(s: string): string | null {
  if (typeof s !== 'string') return null;
  if (!s.includes('/')) return normalizeIp(s);
  return canonicalTarget(s)?.text ?? null;
}
