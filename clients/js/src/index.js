// impush-client: one WebSocket to an impush node, reconnected for as long as the app wants it.
// No dependencies and no build step: this file is what ships.

/** Close codes of the impush client protocol (`docs/design.md` section 4). */
export const CloseCodes = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  ABNORMAL: 1006,
  INVALID_DATA: 1007,
  RATE_LIMITED: 1008,
  TOO_LARGE: 1009,
  MOVED: 1012,
  KICKED: 4001,
  TOO_SLOW: 4008,
  REPLACED: 4009,
});

// The server closed us on purpose and reconnecting would undo it (force_offline, or a newer
// connection of the same client took our place): stay down until the app calls connect().
const FINAL_CODES = new Set([CloseCodes.KICKED, CloseCodes.REPLACED]);

const EVENTS = new Set(["message", "channel", "broadcast", "receipt", "resume", "state", "error"]);

// What the client remembers to resume channels and broadcasts after a reconnect
// (`docs/design.md` section 15): the `resumeChannels` most recently active channels, and per
// stream the most recently seen epochs. Memory stays bounded whatever the server sends.
const RESUME_EPOCHS = 4;
const MAX_EPOCH_CHARS = 128;
// The `resume` query parameter, URL-encoded, stays under this many characters, so the whole URL
// fits the 8 KiB request line common reverse proxies accept. The most recently active channels
// go first; the others are left out (and forgotten: the app reloads them, see `resuming`).
// The node refuses a whole request naming more than 256 streams; each stream costs at least 27
// encoded characters, so this budget keeps a request well below that.
const RESUME_MAX_CHARS = 6000;
// A Retry-After longer than this (seconds) is taken as this: a misconfigured backend must not
// keep a client away for days.
const RETRY_AFTER_MAX = 3600;

// WebSocket.OPEN, spelled out because an injected WebSocket class need not carry the constants.
const OPEN = 1;

const DEFAULTS = {
  backoffBase: 1000,
  backoffMax: 30000,
  stableAfter: 10000,
  pingInterval: 20000,
  pongTimeout: 10000,
  connectTimeout: 15000,
  dedupeSize: 1000,
  autoAck: false,
  autoConnect: true,
  resume: true,
  resumeChannels: 256,
};

/** 16 random letters and digits naming this client's sockets (crypto when the runtime has it). */
function linkPrefix() {
  const abc = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  const bytes = new Uint8Array(16);
  if (globalThis.crypto?.getRandomValues) globalThis.crypto.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  return Array.from(bytes, (b) => abc[b % abc.length]).join("");
}

/** What the `error` event carries. `kind` says where it came from. */
export class ImpushClientError extends Error {
  constructor(kind, message, { cause, frame } = {}) {
    super(message);
    this.name = "ImpushClientError";
    this.kind = kind;
    // Set by hand: the `cause` constructor option is missing in some mini-program runtimes.
    if (cause !== undefined) this.cause = cause;
    if (frame !== undefined) this.frame = frame;
  }
}

export class ImpushClient {
  #getUrl;
  #WebSocket;
  #opts;
  #timers;
  #random;
  #listeners = new Map();

  #state = "disconnected";
  #active = false; // the app wants a connection (between connect() and close() or a final code)
  #touched = false; // connect() or close() was called, so the deferred auto-connect stands down
  #run = 0; // bumped whenever an attempt ends: late callbacks of an older attempt see a mismatch
  #ws = null;
  #failures = 0; // consecutive failed attempts: the backoff exponent
  #openedAt = null; // when the current socket opened; null while not open
  #moved = false; // the last loss was a 1012 answered at once, and no connection was stable since
  #retryAfter = undefined; // seconds, from the getUrl failure that ends the current attempt
  #resuming = null; // what the current attempt asked to resume: { channels, broadcast }
  // Socket names (`link=`): a random prefix per client and a count. A reconnect names the last
  // socket that opened (`replaces=`): if the node still holds it (a reset it has not read, a
  // frozen path), it closes it and hands back what it held first, in order.
  #linkPrefix = linkPrefix();
  #links = 0;
  #attemptLink = null; // the name of the socket being opened
  #openLink = null; // the name of the last socket that opened

  // Pending timer ids by purpose; at most one of each.
  #pending = { retry: undefined, connect: undefined, ping: undefined, pong: undefined };
  #visibilityHandler = null;

  // id -> whether the app acked it. A Map iterates in insertion order, so evicting the first
  // key forgets the oldest id and memory stays at dedupeSize entries.
  #seen = new Map();

  // Resume positions: channel -> (epoch -> last offset seen), and the same for the broadcast
  // stream. Maps iterate in insertion order, and an entry is re-inserted whenever it is used,
  // so the first key is always the one to evict.
  #channelPos = new Map();
  #broadcastPos = new Map();

  constructor(options) {
    const o = options ?? {};
    if (typeof o.getUrl !== "function") {
      throw new TypeError("ImpushClient: options.getUrl must be a function returning a URL or a Promise of one");
    }
    const WS = o.WebSocket ?? globalThis.WebSocket;
    if (typeof WS !== "function") {
      throw new TypeError(
        "ImpushClient: no WebSocket available; pass options.WebSocket (Node 20 needs --experimental-websocket)",
      );
    }
    this.#getUrl = o.getUrl;
    this.#WebSocket = WS;
    this.#opts = { ...DEFAULTS };
    for (const key of Object.keys(DEFAULTS)) {
      if (o[key] === undefined) continue;
      if (typeof DEFAULTS[key] === "boolean") {
        this.#opts[key] = Boolean(o[key]);
      } else if (typeof o[key] !== "number" || !(o[key] >= 0) || !Number.isFinite(o[key])) {
        throw new RangeError(`ImpushClient: options.${key} must be a finite number >= 0`);
      } else {
        this.#opts[key] = o[key];
      }
    }
    if (o.random !== undefined && typeof o.random !== "function") {
      throw new TypeError("ImpushClient: options.random must be a function returning [0, 1)");
    }
    this.#random = o.random ?? Math.random;
    // Wrapped, not stored bare: browsers throw "Illegal invocation" when setTimeout is called
    // with a `this` other than the window.
    const t = o.timers ?? {};
    this.#timers = {
      setTimeout: t.setTimeout ?? ((fn, ms) => setTimeout(fn, ms)),
      clearTimeout: t.clearTimeout ?? ((id) => clearTimeout(id)),
      now: t.now ?? (() => Date.now()),
    };
    if (this.#opts.autoConnect) {
      // Deferred so that handlers registered right after `new` see the first "connecting".
      Promise.resolve().then(() => {
        if (!this.#touched) this.connect();
      });
    }
  }

  /** "connecting" | "connected" | "disconnected". */
  get state() {
    return this.#state;
  }

  /** Subscribes to an event; returns a function that unsubscribes. */
  on(event, handler) {
    if (!EVENTS.has(event)) throw new TypeError(`ImpushClient: unknown event "${event}"`);
    if (typeof handler !== "function") throw new TypeError("ImpushClient: handler must be a function");
    let set = this.#listeners.get(event);
    if (!set) this.#listeners.set(event, (set = new Set()));
    set.add(handler);
    return () => this.off(event, handler);
  }

  off(event, handler) {
    this.#listeners.get(event)?.delete(handler);
  }

  /**
   * Acknowledges a message (the sender gets an "acked" receipt). Returns whether the ack was
   * written; acks are not queued, because the server only accepts them on the socket that
   * delivered the message.
   */
  ack(id) {
    if (typeof id !== "string" || id === "") throw new TypeError("ImpushClient: ack(id) needs a message id");
    // Remembered even when the socket is down: a redelivery of this id is then acked again
    // instead of being dropped as a duplicate and left unacked forever.
    if (this.#seen.has(id)) this.#seen.set(id, true);
    return this.#send({ type: "ack", id });
  }

  /** Starts connecting (done automatically unless autoConnect is false); also restarts after close(). */
  connect() {
    this.#touched = true;
    if (this.#active) return;
    this.#active = true;
    this.#failures = 0;
    this.#watchVisibility();
    this.#attempt();
  }

  /** Closes the socket with 1000 and stops reconnecting. */
  close() {
    this.#touched = true;
    if (!this.#active) return;
    this.#active = false;
    this.#run++;
    this.#clearTimers();
    this.#unwatchVisibility();
    const ws = this.#ws;
    this.#ws = null;
    this.#openedAt = null;
    if (ws) {
      try {
        ws.close(CloseCodes.NORMAL, "client closed");
      } catch {
        // Already closing; nothing left to do.
      }
    }
    this.#setState({
      state: "disconnected",
      code: CloseCodes.NORMAL,
      reason: "client closed",
      willReconnect: false,
      attempt: this.#failures,
    });
  }

  // ---- connecting -------------------------------------------------------------------------

  #attempt() {
    const run = ++this.#run;
    this.#pending.connect = this.#timers.setTimeout(() => {
      this.#pending.connect = undefined;
      if (run === this.#run) this.#abandon(CloseCodes.ABNORMAL, "connect timeout");
    }, this.#opts.connectTimeout);
    this.#setState({ state: "connecting", attempt: this.#failures });
    if (run !== this.#run) return; // a state handler called close()

    let url;
    try {
      url = this.#getUrl();
    } catch (err) {
      this.#urlFailed(run, err);
      return;
    }
    Promise.resolve(url).then(
      (u) => {
        if (run !== this.#run) return;
        if (typeof u === "string" && u !== "") {
          this.#open(run, this.#withLink(this.#withResume(u)));
        } else if (isResponse(u)) {
          // e.g. `getUrl: () => fetch(...)` answered 429/503: its Retry-After is honoured.
          this.#urlFailed(run, u);
        } else {
          this.#urlFailed(run, new TypeError(`getUrl returned ${u === "" ? "an empty string" : typeof u}`));
        }
      },
      (err) => this.#urlFailed(run, err),
    );
  }

  #urlFailed(run, err) {
    if (run !== this.#run) return;
    this.#emitError(new ImpushClientError("getUrl", "getUrl failed", { cause: err }));
    if (run !== this.#run) return; // an error handler called close()
    this.#retryAfter = retryAfterOf(err);
    this.#lost(undefined, "getUrl failed");
  }

  #open(run, url) {
    let ws;
    try {
      ws = new this.#WebSocket(url);
    } catch (err) {
      // The message may quote the URL, and so the token: it stays in `cause`, never in our text.
      this.#emitError(new ImpushClientError("connect", "could not create the WebSocket", { cause: err }));
      if (run === this.#run) this.#lost(CloseCodes.ABNORMAL, "could not create the WebSocket");
      return;
    }
    this.#ws = ws;
    // Handlers compare against this.#ws, so a socket we gave up on can no longer act.
    ws.onopen = () => {
      if (ws !== this.#ws) return;
      this.#openLink = this.#attemptLink;
      this.#clear("connect");
      this.#openedAt = this.#timers.now();
      this.#schedulePing();
      const ev = { state: "connected", attempt: this.#failures };
      if (this.#resuming) ev.resuming = this.#resuming;
      this.#setState(ev);
    };
    ws.onmessage = (ev) => {
      if (ws === this.#ws) this.#onFrame(ev.data);
    };
    // After open, an error is followed by a close event that has the code. Before open, Node 20's
    // WebSocket fires only the error (a refused connection or an HTTP 401 never gets a close
    // event), so a failed handshake ends here rather than at the connect timeout.
    ws.onerror = () => {
      if (ws === this.#ws && this.#openedAt === null) this.#abandon(CloseCodes.ABNORMAL, "connection failed");
    };
    ws.onclose = (ev) => {
      if (ws === this.#ws) this.#lost(ev?.code ?? CloseCodes.ABNORMAL, ev?.reason ?? "");
    };
  }

  /** Gives up on the current socket without waiting for a close handshake that may never come. */
  #abandon(code, reason) {
    const ws = this.#ws;
    this.#ws = null;
    if (ws) {
      try {
        ws.close();
      } catch {
        // Nothing to clean up beyond what the runtime does itself.
      }
    }
    this.#lost(code, reason);
  }

  /** The attempt or connection ended: decide whether and when to try again, then tell the app. */
  #lost(code, reason) {
    this.#run++;
    this.#ws = null;
    this.#clearTimers();
    this.#resuming = null;
    const retryAfter = this.#retryAfter;
    this.#retryAfter = undefined;
    const openedAt = this.#openedAt;
    this.#openedAt = null;
    // Only a connection that stayed up resets the backoff: a server that accepts and then closes
    // at once (rate limit, bad frame, restart loop) must still see us back off.
    if (openedAt !== null && this.#timers.now() - openedAt >= this.#opts.stableAfter) {
      this.#failures = 0;
      this.#moved = false;
    }

    const ev = { state: "disconnected", code, reason, willReconnect: !FINAL_CODES.has(code) };
    if (ev.willReconnect) {
      if (code === CloseCodes.MOVED && !this.#moved) {
        // A drain or a return home (`docs/design.md` section 16): the node spreads these closes
        // over time itself and getUrl names a node that is ready, so go now and count nothing.
        // Only once in a row: a server closing every new connection with 1012 gets the backoff.
        this.#moved = true;
        ev.delay = 0;
      } else {
        if (retryAfter !== undefined) {
          ev.retryAfter = retryAfter;
          ev.delay = this.#afterRetryAfter(retryAfter);
        } else {
          ev.delay = this.#backoff();
        }
        this.#failures++;
      }
      this.#pending.retry = this.#timers.setTimeout(() => {
        this.#pending.retry = undefined;
        this.#attempt();
      }, ev.delay);
    } else {
      this.#active = false;
      this.#unwatchVisibility();
    }
    ev.attempt = this.#failures;
    // Last, so that a handler calling close() or connect() sees a settled client.
    this.#setState(ev);
  }

  /** Full jitter: uniform in [0, min(max, base * 2^failures)), so a crowd of clients spreads out. */
  #backoff() {
    const { backoffBase, backoffMax } = this.#opts;
    const cap = Math.min(backoffMax, backoffBase * 2 ** Math.min(this.#failures, 30));
    const r = this.#random();
    return Math.floor((r >= 0 && r < 1 ? r : 0) * cap);
  }

  /**
   * The server said when to come back: not before, and spread over as long again (at least
   * backoffBase, at most backoffMax) so that clients told the same time do not return together.
   */
  #afterRetryAfter(seconds) {
    const { backoffBase, backoffMax } = this.#opts;
    const ms = seconds * 1000;
    const spread = Math.min(backoffMax, Math.max(backoffBase, ms));
    const r = this.#random();
    return Math.ceil(ms + (r >= 0 && r < 1 ? r : 0) * spread);
  }

  // ---- frames -----------------------------------------------------------------------------

  #onFrame(data) {
    if (typeof data !== "string") {
      this.#emitError(new ImpushClientError("frame", "unexpected binary frame"));
      return;
    }
    let f;
    try {
      f = JSON.parse(data);
    } catch (err) {
      this.#emitError(new ImpushClientError("frame", "frame is not JSON", { cause: err, frame: data }));
      return;
    }
    if (f === null || typeof f !== "object" || Array.isArray(f) || typeof f.type !== "string") {
      this.#emitError(new ImpushClientError("frame", "frame has no type", { frame: data }));
      return;
    }
    // Any frame proves the connection is alive: a pong may sit behind a burst of messages.
    this.#clear("pong");

    switch (f.type) {
      case "pong":
        return;
      case "message":
      case "channel":
      case "broadcast":
        this.#onPush(f, data);
        return;
      case "receipt":
        // Older servers sent `to` as one id; the contract is a list.
        if (typeof f.to === "string") f.to = [f.to];
        else if (!Array.isArray(f.to)) f.to = [];
        this.#emit("receipt", f);
        return;
      case "resume":
        this.#onResume(f, data);
        return;
      default:
        // A frame type from a newer server: ignored, so old clients keep working.
        return;
    }
  }

  #onPush(f, data) {
    if (typeof f.id !== "string" || f.id === "") {
      this.#emitError(new ImpushClientError("frame", `${f.type} frame has no id`, { frame: data }));
      return;
    }
    // Before the duplicate check: a replay that repeats what we saw still moves us forward.
    if (f.type !== "message") this.#track(f);
    // A message from the offline inbox (stored while we were away, or redelivered because a
    // socket closed before its ack) leaves the inbox only when acked, receipt or not; with the
    // inbox requiring acks, every message says so (`ack: true`) and stays pending until acked.
    const wantsAck =
      f.type === "message" &&
      (f.receipt === true || f.stored === true || f.redelivered === true || f.ack === true);
    if (this.#seen.has(f.id)) {
      // A redelivery (e.g. from the offline inbox after a lost ack): the app saw it already,
      // but the server still waits for the ack the app gave.
      if (wantsAck && this.#seen.get(f.id)) this.#send({ type: "ack", id: f.id });
      return;
    }
    if (this.#opts.dedupeSize > 0) {
      this.#seen.set(f.id, false);
      if (this.#seen.size > this.#opts.dedupeSize) this.#seen.delete(this.#seen.keys().next().value);
    }
    this.#emit(f.type, f);
    if (wantsAck && this.#opts.autoAck) this.ack(f.id);
  }

  // ---- resume ------------------------------------------------------------------------------

  /** Remembers the position of a channel or broadcast frame, when it carries one. */
  #track(f) {
    if (!this.#opts.resume) return;
    const { offset, epoch } = f;
    if (!Number.isSafeInteger(offset) || offset < 1) return;
    if (typeof epoch !== "string" || epoch === "" || epoch.length > MAX_EPOCH_CHARS) return;
    let epochs = this.#broadcastPos;
    if (f.type === "channel") {
      if (typeof f.channel !== "string" || f.channel === "" || this.#opts.resumeChannels < 1) return;
      epochs = this.#channelPos.get(f.channel) ?? new Map();
      this.#channelPos.delete(f.channel);
      this.#channelPos.set(f.channel, epochs);
      while (this.#channelPos.size > this.#opts.resumeChannels) this.#channelPos.delete(this.#channelPos.keys().next().value);
    }
    const before = epochs.get(epoch);
    epochs.delete(epoch);
    epochs.set(epoch, before === undefined ? offset : Math.max(before, offset));
    if (epochs.size > RESUME_EPOCHS) epochs.delete(epochs.keys().next().value);
  }

  /** `url` plus this socket's name and the one it replaces (see #linkPrefix). */
  #withLink(url) {
    this.#attemptLink = `${this.#linkPrefix}-${++this.#links}`;
    const replaces = this.#openLink === null ? "" : `&replaces=${this.#openLink}`;
    return `${url}${url.includes("?") ? "&" : "?"}link=${this.#attemptLink}${replaces}`;
  }

  /**
   * `url` plus `resume=<JSON>` naming the positions we hold, most recently active channels
   * first, within RESUME_MAX_CHARS. Also sets #resuming, which the "connected" event reports.
   */
  #withResume(url) {
    this.#resuming = null;
    if (!this.#opts.resume || (this.#channelPos.size === 0 && this.#broadcastPos.size === 0)) return url;
    // encodeURIComponent works code point by code point and JSON.stringify never leaves a lone
    // surrogate, so the encoded length of the whole is the sum of its pieces' lengths.
    const enc = encodeURIComponent;
    let budget = RESUME_MAX_CHARS - enc('{"channels":{},"broadcast":}').length;
    let broadcast = "";
    if (this.#broadcastPos.size > 0) {
      broadcast = epochsJson(this.#broadcastPos);
      budget -= enc(broadcast).length;
    }
    const parts = [];
    const channels = [];
    for (const name of [...this.#channelPos.keys()].reverse()) {
      const part = `${JSON.stringify(name)}:${epochsJson(this.#channelPos.get(name))}`;
      const cost = enc(part).length + (parts.length > 0 ? enc(",").length : 0);
      if (cost > budget) {
        // Not asked, so not resumed: forgotten, and absent from `resuming` for the app to see.
        this.#channelPos.delete(name);
        continue;
      }
      budget -= cost;
      parts.push(part);
      channels.push(name);
    }
    const fields = [];
    if (parts.length > 0) fields.push(`"channels":{${parts.join(",")}}`);
    if (broadcast) fields.push(`"broadcast":${broadcast}`);
    if (fields.length === 0) return url;
    this.#resuming = { channels, broadcast: broadcast !== "" };
    return `${url}${url.includes("?") ? "&" : "?"}resume=${enc(`{${fields.join(",")}}`)}`;
  }

  /** The node's answer for one stream (or for a request it could not read). */
  #onResume(f, data) {
    if (typeof f.recovered !== "boolean") {
      this.#emitError(new ImpushClientError("frame", "resume frame has no recovered flag", { frame: data }));
      return;
    }
    f.channel = typeof f.channel === "string" ? f.channel : null;
    f.broadcast = f.broadcast === true;
    if (!f.recovered) {
      // What was missed is gone: start that stream afresh from its next frame.
      if (f.channel !== null) this.#channelPos.delete(f.channel);
      else if (f.broadcast) this.#broadcastPos.clear();
      else {
        // The whole request was refused ("malformed", "too_many"): none of it was resumed.
        this.#channelPos.clear();
        this.#broadcastPos.clear();
      }
    }
    this.#emit("resume", f);
  }

  #send(frame) {
    const ws = this.#ws;
    if (!ws || ws.readyState !== OPEN) return false;
    try {
      ws.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  // ---- liveness ---------------------------------------------------------------------------

  #schedulePing() {
    if (this.#opts.pingInterval <= 0) return;
    this.#pending.ping = this.#timers.setTimeout(() => {
      this.#pending.ping = undefined;
      this.#ping();
      this.#schedulePing();
    }, this.#opts.pingInterval);
  }

  #ping() {
    // A hidden tab stays quiet (the server's own pings keep the socket open); one ping at a time.
    if (!isVisible() || this.#pending.pong !== undefined) return;
    if (!this.#send({ type: "ping" })) return;
    const run = this.#run;
    this.#pending.pong = this.#timers.setTimeout(() => {
      this.#pending.pong = undefined;
      if (run === this.#run) this.#abandon(CloseCodes.ABNORMAL, "pong timeout");
    }, this.#opts.pongTimeout);
  }

  #watchVisibility() {
    const doc = globalThis.document;
    if (this.#visibilityHandler || typeof doc?.addEventListener !== "function") return;
    // Timers are throttled in background tabs: check the connection as soon as the user is back.
    this.#visibilityHandler = () => {
      if (isVisible() && this.#state === "connected") this.#ping();
    };
    doc.addEventListener("visibilitychange", this.#visibilityHandler);
  }

  #unwatchVisibility() {
    if (!this.#visibilityHandler) return;
    globalThis.document?.removeEventListener?.("visibilitychange", this.#visibilityHandler);
    this.#visibilityHandler = null;
  }

  // ---- plumbing ---------------------------------------------------------------------------

  #clear(name) {
    if (this.#pending[name] !== undefined) this.#timers.clearTimeout(this.#pending[name]);
    this.#pending[name] = undefined;
  }

  #clearTimers() {
    for (const name of Object.keys(this.#pending)) this.#clear(name);
  }

  #setState(ev) {
    this.#state = ev.state;
    this.#emit("state", ev);
  }

  #emitError(err) {
    this.#emit("error", err);
  }

  #emit(event, payload) {
    const set = this.#listeners.get(event);
    if (!set) return;
    // A copy: handlers may unsubscribe while we iterate.
    for (const handler of [...set]) {
      try {
        handler(payload);
      } catch (err) {
        // Never let an app's handler throw into the socket callbacks. A throwing error handler
        // has nowhere left to report to.
        if (event !== "error") {
          this.#emitError(new ImpushClientError("handler", `a "${event}" handler threw`, { cause: err }));
        }
      }
    }
  }
}

/** `{"<epoch>":<offset>,...}` */
function epochsJson(epochs) {
  return `{${[...epochs].map(([epoch, offset]) => `${JSON.stringify(epoch)}:${offset}`).join(",")}}`;
}

/** Something shaped like a fetch `Response`: a status and headers with `get`. */
function isResponse(x) {
  return x !== null && typeof x === "object" && typeof x.status === "number" && typeof x.headers?.get === "function";
}

/**
 * Seconds to wait before asking getUrl again, from what getUrl threw or returned: an error's
 * `retryAfter`, or the `Retry-After` header of a 429 or 503 response (itself, or an error's
 * `response`). Undefined when it says nothing usable.
 */
function retryAfterOf(x) {
  if (x === null || typeof x !== "object") return undefined;
  let seconds;
  if (typeof x.retryAfter === "number") {
    seconds = x.retryAfter;
  } else {
    const res = isResponse(x) ? x : isResponse(x.response) ? x.response : null;
    if (!res || (res.status !== 429 && res.status !== 503)) return undefined;
    seconds = parseRetryAfter(res.headers.get("retry-after"));
  }
  if (!Number.isFinite(seconds) || seconds < 0) return undefined;
  return Math.min(seconds, RETRY_AFTER_MAX);
}

/** A Retry-After value: delay-seconds or an HTTP-date. */
function parseRetryAfter(value) {
  if (typeof value !== "string") return undefined;
  const v = value.trim();
  if (/^\d+$/.test(v)) return Number(v);
  const at = Date.parse(v);
  // Date.now(), not timers.now(): an HTTP-date is a wall-clock instant.
  return Number.isFinite(at) ? Math.max(0, (at - Date.now()) / 1000) : undefined;
}

function isVisible() {
  return globalThis.document?.visibilityState !== "hidden";
}
