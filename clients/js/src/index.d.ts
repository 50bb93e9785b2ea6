// Types for impush-client (hand-written; src/index.js is the implementation).

/** Close codes of the impush client protocol. */
export declare const CloseCodes: Readonly<{
  NORMAL: 1000;
  GOING_AWAY: 1001;
  ABNORMAL: 1006;
  INVALID_DATA: 1007;
  RATE_LIMITED: 1008;
  TOO_LARGE: 1009;
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
}

export interface ChannelFrame<D = unknown> {
  type: "channel";
  id: string;
  channel: string;
  from: string;
  data: D;
  ts: number;
}

export interface BroadcastFrame<D = unknown> {
  type: "broadcast";
  id: string;
  data: D;
  ts: number;
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
    }
  | {
      state: "disconnected";
      /** WebSocket close code; 1006 for a connect or pong timeout; undefined when getUrl failed. */
      code: number | undefined;
      reason: string;
      willReconnect: boolean;
      /** Milliseconds until the next attempt, when willReconnect. */
      delay?: number;
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

export interface ImpushClientOptions {
  /** Returns a fresh single-use `ws(s)://.../ws?token=...` URL. Called on every connect attempt. */
  getUrl: () => string | Promise<string>;
  /** WebSocket constructor; defaults to `globalThis.WebSocket`. */
  WebSocket?: WebSocketConstructor;
  /** Send `{"type":"ack"}` for every message with `receipt: true` or `stored: true`, after the handlers ran. Default false. */
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
