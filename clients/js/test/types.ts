// Type-level test of src/index.d.ts: `npm test` runs `tsc -p tsconfig.json` over this file and
// never executes it. It imports the package by its own name, as an app would, so the `exports`
// and `types` entries of package.json are resolved too.
//
// Lines marked `@ts-expect-error` must stay errors: if a declaration grows too loose (an event
// name or a payload field typed `any`), tsc reports the unused directive and the test fails.

import {
  CloseCodes,
  ImpushClient,
  ImpushClientError,
  type ChannelFrame,
  type ConnectionState,
  type ErrorKind,
  type ImpushClientEvents,
  type ImpushClientOptions,
  type MessageFrame,
  type ReceiptStatus,
  type ResponseLike,
  type ResumeFrame,
  type ResumeReason,
  type Resuming,
  type StateEvent,
  type WebSocketLike,
} from "impush-client";

/** Fails to compile when a switch misses a case. */
function unreachable(x: never): never {
  throw new Error(`unexpected ${String(x)}`);
}

// ---- construction -----------------------------------------------------------------------------

// The smallest client: getUrl may return a string or a promise of one.
const minimal = new ImpushClient({ getUrl: () => "ws://127.0.0.1:6001/ws?token=t" });

// Every option, with the browser's own WebSocket class.
const options: ImpushClientOptions = {
  getUrl: async () => {
    const r = await fetch("/im/connect", { method: "POST" });
    const j = (await r.json()) as { url: string };
    return j.url;
  },
  WebSocket: globalThis.WebSocket,
  autoAck: true,
  autoConnect: false,
  backoffBase: 500,
  backoffMax: 60_000,
  stableAfter: 5_000,
  pingInterval: 0,
  pongTimeout: 5_000,
  connectTimeout: 10_000,
  dedupeSize: 0,
  resume: true,
  resumeChannels: 64,
  random: Math.random,
  timers: { setTimeout, clearTimeout, now: Date.now },
};
const im = new ImpushClient(options);

// Any constructor of something WebSocket-shaped is accepted, e.g. a test double.
class FakeSocket implements WebSocketLike {
  readyState = 0;
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  constructor(readonly url: string) {}
  send(_data: string): void {}
  close(_code?: number, _reason?: string): void {}
}
new ImpushClient({ getUrl: () => "ws://x/ws", WebSocket: FakeSocket, timers: { now: () => 0 } });

// @ts-expect-error getUrl is required
new ImpushClient({});
// @ts-expect-error getUrl returns a URL, not an object
new ImpushClient({ getUrl: () => ({ url: "ws://x" }) });
// @ts-expect-error durations are milliseconds, not strings
new ImpushClient({ getUrl: () => "ws://x", backoffBase: "1s" });
// @ts-expect-error autoAck is a boolean
new ImpushClient({ getUrl: () => "ws://x", autoAck: "yes" });
// @ts-expect-error unknown options are typos
new ImpushClient({ getUrl: () => "ws://x", pingIntervall: 1 });
// @ts-expect-error resume is a boolean
new ImpushClient({ getUrl: () => "ws://x", resume: "yes" });
// @ts-expect-error resumeChannels is a count
new ImpushClient({ getUrl: () => "ws://x", resumeChannels: true });

// getUrl may hand back a refused fetch Response (429/503 with Retry-After), or throw one, or an
// error with `retryAfter` in seconds.
new ImpushClient({
  getUrl: async () => {
    const r = await fetch("/im/connect", { method: "POST" });
    if (r.status === 429 || r.status === 503) return r;
    if (!r.ok) throw Object.assign(new Error(`HTTP ${r.status}`), { retryAfter: 5 });
    return ((await r.json()) as { url: string }).url;
  },
});
const refused: ResponseLike = new Response(null, { status: 503, headers: { "Retry-After": "3" } });
new ImpushClient({ getUrl: () => refused });
// @ts-expect-error a response needs headers with get()
new ImpushClient({ getUrl: () => ({ status: 503 }) });

// ---- events -----------------------------------------------------------------------------------

const offMessage: () => void = im.on("message", (m) => {
  const id: string = m.id;
  const from: string = m.from;
  const ts: number = m.ts;
  const receipt: boolean | undefined = m.receipt;
  const stored: boolean | undefined = m.stored;
  const redelivered: boolean | undefined = m.redelivered;
  // Application data is not trusted to have a shape: it must be narrowed before use.
  // @ts-expect-error data is unknown
  m.data.text;
  if (typeof m.data === "object" && m.data !== null && "text" in m.data) void m.data.text;
  // @ts-expect-error no such field
  void m.channel;
  if (receipt || stored || redelivered) im.ack(id);
  void [from, ts];
});
offMessage();

im.on("channel", (m: ChannelFrame) => {
  const channel: string = m.channel;
  const t: "channel" = m.type;
  // Positions are there only when the node keeps history.
  const offset: number | undefined = m.offset;
  const epoch: string | undefined = m.epoch;
  // @ts-expect-error the offset may be missing
  const sure: number = m.offset;
  void [channel, t, m.id, m.from, m.ts, m.data, offset, epoch, sure];
});

im.on("broadcast", (m) => {
  const t: "broadcast" = m.type;
  // @ts-expect-error broadcasts have no sender
  void m.from;
  const offset: number | undefined = m.offset;
  const epoch: string | undefined = m.epoch;
  void [t, m.id, m.ts, m.data, offset, epoch];
});

// Not annotated: the payload type comes from the event map, so a loose map fails below.
im.on("resume", (r) => {
  const frame: ResumeFrame = r;
  const t: "resume" = r.type;
  const channel: string | null = r.channel;
  const broadcast: boolean = r.broadcast;
  // @ts-expect-error replayed exists only when recovered
  void r.replayed;
  if (r.recovered) {
    const replayed: number = r.replayed;
    // @ts-expect-error replayed is a count
    const asText: string = r.replayed;
    // @ts-expect-error a recovered stream has no reason
    void r.reason;
    void [replayed, asText];
  } else {
    // Known reasons narrow; a newer node's reason is still a string.
    const reason: string = r.reason;
    if (r.reason === "window" || r.reason === "not_member") void reason;
    const known: ResumeReason[] = ["window", "epoch", "future", "not_member", "too_many", "malformed"];
    void known;
  }
  // @ts-expect-error the channel may be null (the broadcast stream)
  const name: string = r.channel;
  void [frame, t, channel, broadcast, name];
});

im.on("receipt", (r) => {
  const to: string[] = r.to;
  const status: ReceiptStatus = r.status;
  switch (status) {
    case "delivered":
    case "offline":
    case "stored":
    case "acked":
      break;
    default:
      unreachable(status);
  }
  // @ts-expect-error not a receipt status
  if (r.status === "read") void to;
});

im.on("state", (s: StateEvent) => {
  const attempt: number = s.attempt;
  switch (s.state) {
    case "connecting":
      // @ts-expect-error only a connected event says what it resumes
      void s.resuming;
      break;
    case "connected": {
      // @ts-expect-error only a disconnect has a close code
      void s.code;
      const resuming: Resuming | undefined = s.resuming;
      // @ts-expect-error absent on a fresh connect
      const always: Resuming = s.resuming;
      void always;
      if (resuming) {
        const channels: string[] = resuming.channels;
        // @ts-expect-error channel names are strings
        const numbers: number[] = resuming.channels;
        void numbers;
        const broadcast: boolean = resuming.broadcast;
        void [channels, broadcast];
      }
      break;
    }
    case "disconnected": {
      const code: number | undefined = s.code;
      const reason: string = s.reason;
      const delay: number | undefined = s.delay;
      const retryAfter: number | undefined = s.retryAfter;
      // @ts-expect-error absent unless getUrl was refused with a wait
      const wait: number = s.retryAfter;
      void wait;
      if (code === CloseCodes.MOVED && s.willReconnect) void retryAfter;
      if (!s.willReconnect && (code === CloseCodes.KICKED || code === CloseCodes.REPLACED)) {
        void reason;
      }
      void delay;
      break;
    }
    default:
      unreachable(s);
  }
  void attempt;
});

im.on("error", (e) => {
  const err: Error = e;
  const asImpush: ImpushClientError = e;
  const kind: ErrorKind = e.kind;
  switch (kind) {
    case "getUrl":
    case "connect":
    case "frame":
    case "handler":
      break;
    default:
      unreachable(kind);
  }
  const frame: string | undefined = e.frame;
  const cause: unknown = e.cause;
  void [err, asImpush, frame, cause];
});

// A handler for one event cannot be registered for another.
const onMessage = (m: MessageFrame) => void m.id;
im.on("message", onMessage);
im.off("message", onMessage);
// @ts-expect-error a message handler does not take receipts
im.on("receipt", onMessage);
// @ts-expect-error no such event
im.on("mesage", () => {});

// The event map is public, so apps can write their own typed helpers over it.
function once<K extends keyof ImpushClientEvents>(c: ImpushClient, event: K): Promise<ImpushClientEvents[K]> {
  return new Promise((resolve) => {
    const off = c.on(event, (ev) => {
      off();
      resolve(ev);
    });
  });
}
void once(im, "state").then((s) => s.state);

// ---- methods and exports ----------------------------------------------------------------------

const sent: boolean = im.ack("01a2");
// @ts-expect-error ids are strings
im.ack(42);
im.connect();
im.close();
const state: ConnectionState = minimal.state;
// @ts-expect-error state is read-only
minimal.state = "connected";

const kicked: 4001 = CloseCodes.KICKED;
const moved: 1012 = CloseCodes.MOVED;
// @ts-expect-error CloseCodes is frozen
CloseCodes.KICKED = 4002;

const made = new ImpushClientError("frame", "frame is not JSON", { frame: "{", cause: new SyntaxError() });
const name: "ImpushClientError" = made.name;
void [sent, state, kicked, moved, name];
