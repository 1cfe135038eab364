/*
 * GET /api/events: Server-Sent Events. `event: ban` and `event: unban` carry the ban as GET /api/bans shows it
 * (unban adds "cause": expired, manual, remote, replaced or other); a comment line every heartbeat keeps proxies
 * from closing the stream. A burst too large to be worth streaming (an import, `unban --all`) is sent as one
 * `event: resync`: the client should fetch the list again, as it should after reconnecting.
 *
 * A client that stops reading is dropped once MAX_QUEUED_BYTES are waiting for it, so a stalled connection cannot
 * make the daemon buffer without bound.
 */
import type { BanFeed, FeedEvent } from './ban-feed.ts';

const MAX_QUEUED_BYTES = 1 << 20;
/** More events than this in one batch become a single resync event. */
export const MAX_EVENTS_PER_BATCH = 500;
const RETRY_MS = 3000;

export interface EventStreams {
  readonly open: number;
  /** A response streaming the feed to one client; null when max clients are connected. */
  respond(): Response | null;
  closeAll(): void;
}

function frame(ev: FeedEvent): string {
  const data = ev.type === 'unban' ? { ...ev.ban, cause: ev.cause } : ev.ban;
  // JSON.stringify never emits a raw newline, so the payload is one data: line.
  return `event: ${ev.type}\ndata: ${JSON.stringify(data)}\n\n`;
}

export function eventStreams(feed: BanFeed, o: { maxClients: number; heartbeatMs: number }): EventStreams {
  const closers = new Set<() => void>();
  const enc = new TextEncoder();
  return {
    get open() {
      return closers.size;
    },
    respond() {
      if (closers.size >= o.maxClients) return null;
      let stop = () => {};
      const body = new ReadableStream<Uint8Array>(
        {
          start(controller) {
            let done = false;
            const send = (text: string) => {
              if (done) return;
              if ((controller.desiredSize ?? 0) < -MAX_QUEUED_BYTES) {
                stop();
                controller.error(new Error('client too slow'));
                return;
              }
              controller.enqueue(enc.encode(text));
            };
            const unsubscribe = feed.subscribe((events) => {
              if (events.length > MAX_EVENTS_PER_BATCH) send(`event: resync\ndata: ${JSON.stringify({ changes: events.length })}\n\n`);
              else for (const ev of events) send(frame(ev));
            });
            const heartbeat = setInterval(() => send(': heartbeat\n\n'), o.heartbeatMs);
            heartbeat.unref();
            stop = () => {
              if (done) return;
              done = true;
              clearInterval(heartbeat);
              unsubscribe();
              closers.delete(close);
            };
            const close = () => {
              const was = done;
              stop();
              if (!was) controller.close();
            };
            closers.add(close);
            send(`retry: ${RETRY_MS}\n: connected\n\n`);
          },
          cancel() {
            stop();
          },
        },
        { highWaterMark: 64 * 1024, size: (chunk) => chunk.byteLength },
      );
      return new Response(body, {
        status: 200,
        headers: {
          'content-type': 'text/event-stream; charset=utf-8',
          'cache-control': 'no-store',
          // nginx and similar proxies buffer responses unless told not to.
          'x-accel-buffering': 'no',
        },
      });
    },
    closeAll() {
      for (const c of [...closers]) c();
    },
  };
}
