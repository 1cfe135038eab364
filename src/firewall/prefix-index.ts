import { canonicalTarget, prefixOf, targetContains, type Target } from './target.ts';

/**
 * Prefix elements by group, prefix length and network address: nesting is found with one lookup per prefix length
 * in use (usually one or two), not a scan of every element.
 */
export class PrefixIndex {
  private readonly groups = new Map<string, Map<number, Set<string>>>();

  add(group: string, t: Target): void {
    let lens = this.groups.get(group);
    if (!lens) this.groups.set(group, (lens = new Map()));
    let addrs = lens.get(t.prefixLength);
    if (!addrs) lens.set(t.prefixLength, (addrs = new Set()));
    addrs.add(t.address);
  }

  delete(group: string, t: Target): void {
    const lens = this.groups.get(group);
    const addrs = lens?.get(t.prefixLength);
    if (!lens || !addrs) return;
    addrs.delete(t.address);
    if (addrs.size === 0) lens.delete(t.prefixLength);
    if (lens.size === 0) this.groups.delete(group);
  }

  has(group: string, t: Target): boolean {
    return this.groups.get(group)?.get(t.prefixLength)?.has(t.address) ?? false;
  }

  /** Whether an element of the group strictly contains t. */
  covers(group: string, t: Target): boolean {
    for (const [len, addrs] of this.groups.get(group) ?? []) {
      if (len >= t.prefixLength) continue;
      const p = prefixOf(t.address, len);
      if (p !== null && addrs.has(p.address)) return true;
    }
    return false;
  }

  /** The group's elements strictly inside t, outermost first. */
  inside(group: string, t: Target): Target[] {
    const out: Target[] = [];
    for (const [len, addrs] of this.groups.get(group) ?? []) {
      if (len <= t.prefixLength) continue;
      for (const a of addrs) if (targetContains(t, a)) out.push(canonicalTarget(`${a}/${len}`)!);
    }
    return out.sort((a, b) => a.prefixLength - b.prefixLength);
  }

  clear(): void {
    this.groups.clear();
  }
}
