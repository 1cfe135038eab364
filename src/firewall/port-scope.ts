import type { PortScope } from './types.ts';

/** "tcp:22,443" <-> { protocol: 'tcp', ports: [22, 443] }; null (NULL in the store) is all traffic;
 * text that is not this form reads as all traffic. */
export function formatScope(scope: PortScope | null | undefined): string | null {
  if (!scope || scope.ports.length === 0) return null;
  return `${scope.protocol}:${scope.ports.join(',')}`;
}

export function parseScope(text: string | null): PortScope | null {
  if (text === null) return null;
  const m = /^(tcp|udp):(\d{1,5}(?:,\d{1,5})*)$/.exec(text);
  if (!m) return null;
  const ports = m[2]!.split(',').map(Number);
  if (ports.some((p) => p < 1 || p > 65535)) return null;
  return { protocol: m[1] as 'tcp' | 'udp', ports };
}
