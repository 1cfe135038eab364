import ipaddr from 'ipaddr.js';
import { isStrictIPv4 } from './ip.ts';

/*
 * Why a hand-written trie: `IgnoreList.has` runs for every matched log line, and the pipeline targets a million
 * lines a second. ipaddr.js's `subnetMatch` walks the whole list and needs a parsed address object per call; here a
 * membership test is one pass over the address text (no allocation: IPv6 groups go into a module-level scratch
 * buffer) and one walk of at most 32 / 128 trie nodes, whatever the list's length. Nodes live in typed arrays, so a
 * list of many thousands of prefixes costs a few bytes per node and nothing for the garbage collector to trace.
 */

/** A binary trie of prefixes of one address family, frozen into typed arrays after building. */
class PrefixTrie {
  /** children[2n] / children[2n+1]: the node's 0 / 1 child, 0 when absent (node 0 is the root, never a child). */
  private children: Int32Array;
  /** terminal[n] = 1 when a prefix ends at node n (every address under it is in the set). */
  private terminal: Uint8Array;
  readonly empty: boolean;

  constructor(children: number[], terminal: number[]) {
    this.children = Int32Array.from(children);
    this.terminal = Uint8Array.from(terminal);
    this.empty = terminal.length === 1 && terminal[0] === 0;
  }

  /** Membership of a 32-bit IPv4 address. */
  has32(addr: number): boolean {
    const ch = this.children;
    const term = this.terminal;
    let node = 0;
    for (let i = 31; i >= 0; i--) {
      if (term[node] === 1) return true;
      node = ch[2 * node + ((addr >>> i) & 1)]!;
      if (node === 0) return false;
    }
    return term[node] === 1;
  }

  /** Membership of a 128-bit IPv6 address given as 8 groups of 16 bits. */
  has128(groups: Uint16Array): boolean {
    const ch = this.children;
    const term = this.terminal;
    let node = 0;
    for (let g = 0; g < 8; g++) {
      const v = groups[g]!;
      for (let i = 15; i >= 0; i--) {
        if (term[node] === 1) return true;
        node = ch[2 * node + ((v >>> i) & 1)]!;
        if (node === 0) return false;
      }
    }
    return term[node] === 1;
  }
}

/** Mutable builder for a PrefixTrie. */
class TrieBuilder {
  children: number[] = [0, 0];
  terminal: number[] = [0];
  prefixes = 0;

  /** Inserts the first `len` bits of `bits` (an array of 0/1). Returns false if the prefix was already present. */
  insert(bits: number[], len: number): boolean {
    let node = 0;
    for (let i = 0; i < len; i++) {
      const slot = 2 * node + bits[i]!;
      let next = this.children[slot]!;
      if (next === 0) {
        next = this.terminal.length;
        this.terminal.push(0);
        this.children.push(0, 0);
        this.children[slot] = next;
      }
      node = next;
    }
    if (this.terminal[node] === 1) return false;
    this.terminal[node] = 1;
    this.prefixes++;
    return true;
  }

  build(): PrefixTrie {
    return new PrefixTrie(this.children, this.terminal);
  }
}

/** Scratch buffer for `has` on IPv6 text: reused, so a lookup allocates nothing. Single-threaded JS makes it safe. */
const scratch = new Uint16Array(8);

/** Parses dotted-quad IPv4 text (no validation beyond what is needed to be safe) into an unsigned 32-bit number. */
function parseV4(s: string, from: number): number {
  let addr = 0;
  let octet = 0;
  let digits = 0;
  let dots = 0;
  for (let i = from; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 48 && c <= 57) {
      octet = octet * 10 + (c - 48);
      if (++digits > 3 || octet > 255) return -1;
    } else if (c === 46 /* . */) {
      if (digits === 0 || ++dots > 3) return -1;
      addr = addr * 256 + octet;
      octet = 0;
      digits = 0;
    } else {
      return -1;
    }
  }
  if (dots !== 3 || digits === 0) return -1;
  return addr * 256 + octet;
}

/**
 * Parses IPv6 text (any valid form, including `::` and a dotted-quad tail; no zone) into `out`. Returns false when
 * the text is not an IPv6 address.
 */
function parseV6(s: string, out: Uint16Array): boolean {
  const n = s.length;
  if (n < 2) return false;
  let g = 0; // groups written
  let dc = -1; // group index where '::' stands
  let i = 0;
  if (s.charCodeAt(0) === 58 /* : */) {
    if (s.charCodeAt(1) !== 58) return false;
    dc = 0;
    i = 2;
    if (i === n) {
      out.fill(0);
      return true;
    }
  }
  while (i < n) {
    if (g >= 8) return false;
    let v = 0;
    let digits = 0;
    const start = i;
    for (; i < n; i++) {
      const c = s.charCodeAt(i);
      let d: number;
      if (c >= 48 && c <= 57) d = c - 48;
      else if (c >= 97 && c <= 102) d = c - 87;
      else if (c >= 65 && c <= 70) d = c - 55;
      else break;
      v = v * 16 + d;
      digits++;
    }
    if (i < n && s.charCodeAt(i) === 46 /* . */) {
      // Dotted-quad tail: the last 32 bits.
      if (g > 6) return false;
      const v4 = parseV4(s, start);
      if (v4 < 0) return false;
      out[g++] = v4 >>> 16;
      out[g++] = v4 & 0xffff;
      i = n;
      break;
    }
    if (digits === 0 || digits > 4) return false;
    out[g++] = v;
    if (i === n) break;
    if (s.charCodeAt(i) !== 58) return false;
    i++;
    if (i < n && s.charCodeAt(i) === 58) {
      if (dc >= 0) return false;
      dc = g;
      i++;
    } else if (i === n) {
      return false; // trailing single ':'
    }
  }
  if (dc < 0) return g === 8;
  if (g >= 8) return false; // '::' must stand for at least one group
  const tail = g - dc;
  for (let k = 1; k <= tail; k++) out[8 - k] = out[g - k]!;
  for (let k = dc; k < 8 - tail; k++) out[k] = 0;
  return true;
}

function bitsOf32(addr: number): number[] {
  const bits = new Array<number>(32);
  for (let i = 0; i < 32; i++) bits[i] = (addr >>> (31 - i)) & 1;
  return bits;
}

function bitsOf128(groups: ArrayLike<number>): number[] {
  const bits = new Array<number>(128);
  for (let i = 0; i < 128; i++) bits[i] = (groups[i >> 4]! >>> (15 - (i & 15))) & 1;
  return bits;
}

const PREFIX_LEN = /^\d{1,3}$/;

/**
 * The `ignored_ips` set: exact addresses and CIDR ranges of both families. Host bits below the prefix length are
 * ignored (`10.1.2.3/8` means `10.0.0.0/8`). An IPv4-mapped IPv6 entry (`::ffff:10.0.0.0/104`) is stored as the IPv4
 * range it denotes, since the detector sees mapped addresses as plain IPv4.
 */
export class IgnoreList {
  private constructor(
    private readonly v4: PrefixTrie,
    private readonly v6: PrefixTrie,
    /** Number of distinct prefixes (exact addresses count as /32 or /128 prefixes). */
    readonly size: number,
  ) {}

  static readonly EMPTY: IgnoreList = IgnoreList.parse([]);

  /** Throws an Error naming the first bad entry and its index. */
  static parse(entries: readonly string[]): IgnoreList {
    const b4 = new TrieBuilder();
    const b6 = new TrieBuilder();
    entries.forEach((raw, index) => {
      const fail = (why: string): never => {
        throw new Error(`ignored_ips[${index}] ${JSON.stringify(raw)}: ${why}`);
      };
      if (typeof raw !== 'string') fail('not a string');
      const entry = raw.trim();
      if (entry === '') fail('empty entry');
      const slash = entry.indexOf('/');
      const addrText = slash < 0 ? entry : entry.slice(0, slash);
      let len = -1;
      if (slash >= 0) {
        const lenText = entry.slice(slash + 1);
        if (!PREFIX_LEN.test(lenText)) fail('prefix length must be a decimal number');
        len = Number(lenText);
      }
      if (isStrictIPv4(addrText)) {
        if (len > 32) fail('IPv4 prefix length must be 0 to 32');
        b4.insert(bitsOf32(parseV4(addrText, 0)), len < 0 ? 32 : len);
        return;
      }
      if (addrText.indexOf(':') < 0 || addrText.indexOf('%') >= 0 || !ipaddr.IPv6.isValid(addrText)) {
        fail('not an IPv4 or IPv6 address or CIDR range');
      }
      if (len > 128) fail('IPv6 prefix length must be 0 to 128');
      if (len < 0) len = 128;
      const groups = ipaddr.IPv6.parse(addrText).parts;
      const bits = bitsOf128(groups);
      // ::ffff:0:0/96 as bits: 80 zeros then 16 ones.
      const mappedBits = bitsOf128([0, 0, 0, 0, 0, 0xffff, 0, 0]);
      let inMapped = true; // the entry's first min(len, 96) bits equal the mapped prefix's
      for (let i = 0; i < Math.min(len, 96); i++) {
        if (bits[i] !== mappedBits[i]) {
          inMapped = false;
          break;
        }
      }
      if (inMapped && len >= 96) {
        // Entirely inside ::ffff:0:0/96: the IPv4 range it denotes, and nothing else (normalised text never
        // carries the mapped form, so an IPv6 copy could never match).
        b4.insert(bits.slice(96), len - 96);
        return;
      }
      b6.insert(bits, len);
      // A shorter prefix that covers the whole mapped range (e.g. ::/80) covers every IPv4 address too.
      if (inMapped) b4.insert([], 0);
    });
    return new IgnoreList(b4.build(), b6.build(), b4.prefixes + b6.prefixes);
  }

  /** Whether a normalised address (as `normalizeIp` returns it) is in the set. Text that is no address: false. */
  has(ip: string): boolean {
    if (ip.indexOf(':') < 0) {
      if (this.v4.empty) return false;
      const a = parseV4(ip, 0);
      return a >= 0 && this.v4.has32(a);
    }
    if (this.v6.empty || !parseV6(ip, scratch)) return false;
    return this.v6.has128(scratch);
  }
}
