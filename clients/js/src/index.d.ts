// Types for impush-client (hand-written; src/index.js is the implementation).

/** Close codes of the impush client protocol. */
export declare const CloseCodes: Readonly<{
  NORMAL: 1000;
  GOING_AWAY: 1001;
  ABNORMAL: 1006;
  INVALID_DATA: 1007;
  RATE_LIMITED: 1008;
  TOO_LARGE: 1009;
  /** Service restart (a drain or a return home): the client reconnects at once. */
  MOVED: 1012;
  KICKED: 4001;
  TOO_SLOW: 4008;
  REPLACED: 4009;
}>;

/** A direct message. `receipt: true` means the sender wants receipts: call `ack(id)` (or use `autoAck`). */
export interface MessageFrame<D = unknown> {
  type: "message";
  id: string;
  from: string;
  data: D;
  /** Unix milliseconds. */
  ts: number;
  receipt?: boolean;
  /** Pushed from the offline inbox. */
  stored?: boolean;
  /** Pushed again from the offline inbox: it reached a socket that closed before the ack. Same id and `ts`. */
  redelivered?: boolean;
  /** The node keeps the message pending until it is acked (offline inbox with `require_ack`): ack it. */
  ack?: boolean;
}

export interface ChannelFrame<D = unknown> {
  type: "channel";
  id: string;
  channel: string;
  from: string;
  data: D;
  ts: number;
  /** Position in the channel's stream within `epoch` (grows by one per message); absent when the node keeps no history. */
  offset?: number;
  /** The stream's epoch: changes when its sequencer changes (a node restart, a failover). */
  epoch?: string;
}

export interface BroadcastFrame<D = unknown> {
  type: "broadcast";
  id: string;
  data: D;
  ts: number;
  /** Position in the broadcast stream within `epoch`; absent when the node keeps no history. */
  offset?: number;
  epoch?: string;
}

/**
 * Why a stream could not be resumed: `window` (older than the node's history), `epoch` (the
 * history was lost, e.g. a restart), `future` (a position the node never gave), `not_member`,
 * `too_many` (more streams than the node reads from one request), `malformed` (the request
 * could not be read).
 * A newer node may add reasons: treat every `recovered: false` alike.
 */
export type ResumeReason = "window" | "epoch" | "future" | "not_member" | "too_many" | "malformed";

/**
 * The node's answer for one stream after a reconnect, sent after that stream's replayed frames.
 * `channel` names the channel; it is null for the broadcast stream (`broadcast: true`) and for
 * a request the node could not read at all (`broadcast: false`, reason `malformed` or
 * `too_many`). When not recovered, the client forgot that stream's positions (all of them for
 * an unreadable request): reload it from your backend.
 */
export type ResumeFrame = {
  type: "resume";
  channel: string | null;
  broadcast: boolean;
} & (
  | {
      recovered: true;
      /** How many frames were pushed again, before this one. */
      replayed: number;
    }
  | {
      recovered: false;
      reason: ResumeReason | (string & {});
    }
);

/** What a connection asked the node to resume: the "connected" event carries it. */
export interface Resuming {
  /** Channels asked for, most recently active first. A channel not listed gets no `resume` event. */
  channels: string[];
  broadcast: boolean;
}

export type ReceiptStatus = "delivered" | "offline" | "stored" | "acked";

export interface ReceiptFrame {
  type: "receipt";
  /** The id of the message this receipt is about. */
  id: string;
  /** The receivers this status covers (always a list, even from servers that send one id). */
  to: string[];
  status: ReceiptStatus;
}

export type ConnectionState = "connecting" | "connected" | "disconnected";

export type StateEvent =
  | {
      state: "connecting";
      /** Consecutive failed attempts before this one (0 on the first try). */
      attempt: number;
    }
  | {
      state: "connected";
      attempt: number;
      /** Present when this connection asked to resume streams (a reconnect with positions). */
      resuming?: Resuming;
    }
  | {
      state: "disconnected";
      /** WebSocket close code; 1006 for a connect or pong timeout; undefined when getUrl failed. */
      code: number | undefined;
      reason: string;
      willReconnect: boolean;
      /** Milliseconds until the next attempt, when willReconnect (0 after a 1012). */
      delay?: number;
      /** Seconds the backend asked to wait (Retry-After), when getUrl was refused with one. */
      retryAfter?: number;
      /** The `attempt` the next "connecting" will carry. */
      attempt: number;
    };

export type ErrorKind = "getUrl" | "connect" | "frame" | "handler";

export declare class ImpushClientError extends Error {
  constructor(kind: ErrorKind, message: string, options?: { cause?: unknown; frame?: string });
  readonly name: "ImpushClientError";
  readonly kind: ErrorKind;
  readonly cause?: unknown;
  /** The raw text of a frame that could not be understood. */
  readonly frame?: string;
}

export interface ImpushClientEvents {
  message: MessageFrame;
  channel: ChannelFrame;
  broadcast: BroadcastFrame;
  receipt: ReceiptFrame;
  resume: ResumeFrame;
  state: StateEvent;
  error: ImpushClientError;
}

/**
 * A handler property the client assigns and the socket calls, with the fields of the event the
 * client reads. Checked bivariantly (method syntax), so a socket whose own property takes a
 * richer event (the DOM's `MessageEvent`, `CloseEvent`) still fits `WebSocketLike`.
 */
export type SocketHandler<E> = { bivarianceHack(ev: E): unknown }["bivarianceHack"] | null;

/** The subset of the WebSocket API the client uses; `globalThis.WebSocket` instances fit. */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: SocketHandler<unknown>;
  onmessage: SocketHandler<{ data: unknown }>;
  onerror: SocketHandler<unknown>;
  onclose: SocketHandler<{ code: number; reason: string }>;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface Timers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(id: any): void;
  now(): number;
}

/** The part of a fetch `Response` the client reads to honour `Retry-After`. */
export interface ResponseLike {
  readonly status: number;
  readonly headers: { get(name: string): string | null };
}

export interface ImpushClientOptions {
  /**
   * Returns a fresh single-use `ws(s)://.../ws?token=...` URL. Called on every connect attempt.
   * A refusal with a wait: throw an error with `retryAfter` (seconds), or return or throw a 429
   * or 503 response with a `Retry-After` header (also as an error's `response`).
   */
  getUrl: () => string | ResponseLike | Promise<string | ResponseLike>;
  /** WebSocket constructor; defaults to `globalThis.WebSocket`. */
  WebSocket?: WebSocketConstructor;
  /** Send `{"type":"ack"}` for every message with `receipt`, `stored`, `redelivered` or `ack` true, after the handlers ran. Default false. */
  autoAck?: boolean;
  /** Connect on construction (in a microtask). Default true; otherwise call `connect()`. */
  autoConnect?: boolean;
  /** Backoff cap after the first failure, ms. Default 1000. */
  backoffBase?: number;
  /** Largest backoff cap, ms. Default 30000. */
  backoffMax?: number;
  /** A connection that stayed up this long resets the backoff, ms. Default 10000. */
  stableAfter?: number;
  /** Ping period while visible, ms; 0 disables. Default 20000. */
  pingInterval?: number;
  /** No frame this long after a ping means the connection is dead, ms. Default 10000. */
  pongTimeout?: number;
  /** Limit for getUrl plus the WebSocket handshake, ms. Default 15000. */
  connectTimeout?: number;
  /** How many message ids to remember for dropping duplicates; 0 disables. Default 1000. */
  dedupeSize?: number;
  /** Remember channel and broadcast positions and resume them on reconnect. Default true. */
  resume?: boolean;
  /** How many channels (the most recently active) to remember positions for; 0 disables channel resume. Default 256. */
  resumeChannels?: number;
  /** Source of randomness for the jitter, returning [0, 1). Default Math.random. */
  random?: () => number;
  /** Timer functions, for tests or unusual runtimes. */
  timers?: Partial<Timers>;
}

export declare class ImpushClient {
  constructor(options: ImpushClientOptions);
  readonly state: ConnectionState;
  on<K extends keyof ImpushClientEvents>(event: K, handler: (ev: ImpushClientEvents[K]) => void): () => void;
  off<K extends keyof ImpushClientEvents>(event: K, handler: (ev: ImpushClientEvents[K]) => void): void;
  /** Sends an ack; returns false when there is no open socket (acks are not queued). */
  ack(id: string): boolean;
  /** Starts connecting; after close() or a final close code, starts again. */
  connect(): void;
  /** Closes with 1000 and stops reconnecting. */
  close(): void;
}
