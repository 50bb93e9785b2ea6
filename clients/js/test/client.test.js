// Unit tests: a fake WebSocket and a manual clock, so every timing is exact.
import { test, describe, afterEach } from "node:test";
import assert from "node:assert/strict";

import { ImpushClient, ImpushClientError, CloseCodes } from "../src/index.js";
import { fakeTimers, fakeWebSocket, flush } from "./support.js";

const BASE = 100;
const MAX = 1000;

/** A client on a fake socket and clock, with every event recorded. */
function setup(extra = {}) {
  const clock = fakeTimers();
  const WS = fakeWebSocket();
  const urls = [];
  const getUrl = () => {
    const url = `ws://node.test/ws?token=t${urls.length + 1}`;
    urls.push(url);
    return url;
  };
  const client = new ImpushClient({
    getUrl,
    WebSocket: WS,
    timers: clock,
    random: () => 0.5,
    backoffBase: BASE,
    backoffMax: MAX,
    stableAfter: 5000,
    pingInterval: 1000,
    pongTimeout: 500,
    connectTimeout: 3000,
    ...extra,
  });
  const events = { state: [], message: [], channel: [], broadcast: [], receipt: [], error: [] };
  for (const name of Object.keys(events)) client.on(name, (e) => events[name].push(e));
  const t = {
    clock,
    WS,
    client,
    events,
    urls,
    last: () => WS.sockets.at(-1),
    states: () => events.state.map((s) => s.state),
    /** Lets the pending attempt reach `new WebSocket` and opens that socket. */
    async connectNow() {
      await clock.advance(0);
      t.last().open();
      return t.last();
    },
  };
  return t;
}

let clients = [];
afterEach(() => {
  for (const c of clients) c.close();
  clients = [];
});
function track(t) {
  clients.push(t.client);
  return t;
}

describe("connecting", () => {
  test("connects on construction; handlers registered after `new` see connecting, then connected", async () => {
    const t = track(setup());
    assert.equal(t.client.state, "disconnected");
    await t.connectNow();
    assert.deepEqual(t.events.state, [
      { state: "connecting", attempt: 0 },
      { state: "connected", attempt: 0 },
    ]);
    assert.equal(t.client.state, "connected");
    assert.equal(t.last().url, "ws://node.test/ws?token=t1");
  });

  test("autoConnect: false waits for connect()", async () => {
    const t = track(setup({ autoConnect: false }));
    await t.clock.advance(10);
    assert.equal(t.WS.sockets.length, 0);
    t.client.connect();
    await t.connectNow();
    assert.equal(t.client.state, "connected");
  });

  test("getUrl may return a Promise and is called afresh on every attempt", async () => {
    const t = track(setup({ autoConnect: false }));
    let calls = 0;
    const clock = t.clock;
    const client = new ImpushClient({
      getUrl: async () => `ws://node.test/ws?token=p${++calls}`,
      WebSocket: t.WS,
      timers: clock,
      random: () => 0.5,
      backoffBase: BASE,
    });
    clients.push(client);
    await clock.advance(0);
    for (let i = 1; i <= 4; i++) {
      assert.equal(calls, i);
      assert.equal(t.last().url, `ws://node.test/ws?token=p${i}`);
      t.last().open();
      t.last().serverClose(1001, "shutting down");
      await clock.advance(MAX);
    }
    const urls = t.WS.sockets.map((s) => s.url);
    assert.equal(new Set(urls).size, urls.length, "no URL is used twice");
  });

  test("a failing getUrl is an error event and a failed attempt, then it tries again", async () => {
    let calls = 0;
    const failures = [
      () => {
        throw new Error("sync failure");
      },
      () => Promise.reject(new Error("rejected")),
      () => 42,
      () => "",
    ];
    const t = track(
      setup({
        getUrl: () => {
          calls++;
          return calls <= failures.length ? failures[calls - 1]() : "ws://node.test/ws?token=ok";
        },
      }),
    );
    await t.clock.advance(0);
    const delays = [];
    for (let i = 0; i < failures.length; i++) {
      const last = t.events.state.at(-1);
      assert.equal(last.state, "disconnected");
      assert.equal(last.code, undefined);
      assert.equal(last.willReconnect, true);
      delays.push(last.delay);
      await t.clock.advance(last.delay);
    }
    assert.deepEqual(delays, [50, 100, 200, 400], "each failure doubles the cap (random fixed at 0.5)");
    assert.equal(t.events.error.length, failures.length);
    for (const e of t.events.error) {
      assert.ok(e instanceof ImpushClientError);
      assert.equal(e.kind, "getUrl");
    }
    assert.equal(calls, 5);
    t.last().open();
    assert.equal(t.client.state, "connected");
  });

  test("a WebSocket constructor that throws is an error event and a failed attempt", async () => {
    let n = 0;
    const WS = fakeWebSocket();
    class Picky extends WS {
      constructor(url) {
        if (++n === 1) throw new SyntaxError("bad url");
        super(url);
      }
    }
    const t = track(setup({ WebSocket: Picky }));
    await t.clock.advance(0);
    assert.equal(t.events.error[0].kind, "connect");
    assert.equal(t.events.state.at(-1).willReconnect, true);
    await t.clock.advance(t.events.state.at(-1).delay);
    assert.equal(WS.sockets.length, 1);
  });

  test("a handshake that fails with only an error event (Node 20 on 401/refused) is retried", async () => {
    const t = track(setup());
    await t.clock.advance(0);
    const first = t.last();
    first.onerror({}); // no close event follows
    assert.ok(first.closedWith, "the failed socket was closed");
    assert.deepEqual(t.events.state.at(-1), {
      state: "disconnected",
      code: 1006,
      reason: "connection failed",
      willReconnect: true,
      delay: 50,
      attempt: 1,
    });
    first.onclose?.({ code: 1006, reason: "" }); // a browser's late close event changes nothing
    assert.equal(t.events.state.filter((e) => e.state === "disconnected").length, 1);
    await t.clock.advance(50);
    t.last().open();
    assert.equal(t.client.state, "connected");
    assert.equal(t.urls.length, 2);
  });

  test("an error after open waits for the close event and its code", async () => {
    const t = track(setup());
    const s = await t.connectNow();
    s.onerror({});
    assert.equal(t.client.state, "connected");
    s.onclose({ code: 1009, reason: "too big" });
    assert.equal(t.events.state.at(-1).code, 1009);
  });

  test("a handshake that never completes times out and is retried", async () => {
    const t = track(setup());
    await t.clock.advance(0);
    const first = t.last();
    await t.clock.advance(3000);
    assert.ok(first.closedWith, "the stuck socket was closed");
    assert.deepEqual(t.events.state.at(-1), {
      state: "disconnected",
      code: 1006,
      reason: "connect timeout",
      willReconnect: true,
      delay: 50,
      attempt: 1,
    });
    await t.clock.advance(50);
    assert.notEqual(t.last(), first);
    first.open(); // a late open of the abandoned socket changes nothing
    assert.equal(t.client.state, "connecting");
  });

  test("constructor checks its options", () => {
    assert.throws(() => new ImpushClient({}), TypeError);
    assert.throws(() => new ImpushClient({ getUrl: () => "x", WebSocket: 5 }), TypeError);
    assert.throws(() => new ImpushClient({ getUrl: () => "x", WebSocket: fakeWebSocket(), backoffBase: -1 }), RangeError);
    assert.throws(() => new ImpushClient({ getUrl: () => "x", WebSocket: fakeWebSocket(), pongTimeout: NaN }), RangeError);
    assert.throws(() => new ImpushClient({ getUrl: () => "x", WebSocket: fakeWebSocket(), random: 0.5 }), TypeError);
  });
});

describe("reconnect policy", () => {
  test("backoff doubles up to the maximum and resets after a connection that stayed up", async () => {
    const t = track(setup({ random: () => 0.999, pingInterval: 0 }));
    await t.clock.advance(0);
    const delays = [];
    for (let i = 0; i < 7; i++) {
      t.last().serverClose(1006);
      const ev = t.events.state.at(-1);
      delays.push(ev.delay);
      assert.equal(ev.attempt, i + 1);
      await t.clock.advance(ev.delay);
      assert.deepEqual(t.events.state.at(-1), { state: "connecting", attempt: i + 1 });
    }
    assert.deepEqual(delays, [99, 199, 399, 799, 999, 999, 999]);

    // Up, but briefly: a server that accepts and drops at once must not reset the backoff.
    t.last().open();
    await t.clock.advance(4999);
    t.last().serverClose(1008);
    assert.equal(t.events.state.at(-1).delay, 999);
    await t.clock.advance(999);

    // Up for stableAfter: the next failure starts from the base again.
    t.last().open();
    await t.clock.advance(5000);
    t.last().serverClose(1001);
    assert.equal(t.events.state.at(-1).delay, 99);
    assert.equal(t.events.state.at(-1).attempt, 1);
  });

  test("full jitter: delays are spread over [0, cap)", async () => {
    const t = track(setup({ random: Math.random, backoffBase: 1000, backoffMax: 8000 }));
    await t.clock.advance(0);
    const samples = [];
    for (let i = 0; i < 200; i++) {
      const failures = Math.min(i, 10);
      t.last().serverClose(1006);
      const { delay } = t.events.state.at(-1);
      const cap = Math.min(8000, 1000 * 2 ** failures);
      assert.ok(delay >= 0 && delay < cap, `delay ${delay} within [0, ${cap})`);
      if (cap === 8000) samples.push(delay);
      await t.clock.advance(delay);
    }
    // Full jitter, not "cap plus a little": the capped delays cover the whole range.
    assert.ok(Math.min(...samples) < 2000, "some delays are short");
    assert.ok(Math.max(...samples) > 6000, "some delays are long");
  });

  for (const code of [1001, 1006, 1008, 1009, 4008]) {
    test(`reconnects after close code ${code}`, async () => {
      const t = track(setup());
      const s = await t.connectNow();
      s.serverClose(code, "bye");
      const ev = t.events.state.at(-1);
      assert.equal(ev.state, "disconnected");
      assert.equal(ev.code, code);
      assert.equal(ev.reason, "bye");
      assert.equal(ev.willReconnect, true);
      await t.clock.advance(ev.delay);
      assert.equal(t.WS.sockets.length, 2);
      assert.equal(t.urls.length, 2);
      t.last().open();
      assert.equal(t.client.state, "connected");
    });
  }

  for (const code of [CloseCodes.KICKED, CloseCodes.REPLACED]) {
    test(`stops after close code ${code}; connect() starts again`, async () => {
      const t = track(setup());
      const s = await t.connectNow();
      s.serverClose(code, "go away");
      assert.deepEqual(t.events.state.at(-1), {
        state: "disconnected",
        code,
        reason: "go away",
        willReconnect: false,
        attempt: 0,
      });
      assert.deepEqual(t.clock.pending(), [], "no timer left");
      await t.clock.advance(60_000);
      assert.equal(t.WS.sockets.length, 1);
      assert.equal(t.urls.length, 1);
      t.client.connect();
      await t.connectNow();
      assert.equal(t.client.state, "connected");
      assert.equal(t.urls.length, 2);
    });
  }

  test("state events: a full cycle", async () => {
    const t = track(setup());
    const s = await t.connectNow();
    s.serverClose(1001, "node shutting down");
    await t.clock.advance(50);
    t.last().open();
    t.client.close();
    assert.deepEqual(t.events.state, [
      { state: "connecting", attempt: 0 },
      { state: "connected", attempt: 0 },
      { state: "disconnected", code: 1001, reason: "node shutting down", willReconnect: true, delay: 50, attempt: 1 },
      { state: "connecting", attempt: 1 },
      { state: "connected", attempt: 1 },
      { state: "disconnected", code: 1000, reason: "client closed", willReconnect: false, attempt: 1 },
    ]);
  });
});

describe("close()", () => {
  test("closes with 1000 and leaves nothing running", async () => {
    const t = track(setup());
    const s = await t.connectNow();
    await t.clock.advance(1000); // a ping is in flight
    assert.ok(t.clock.pending().length > 0);
    t.client.close();
    assert.deepEqual(s.closedWith, { code: 1000, reason: "client closed" });
    assert.deepEqual(t.clock.pending(), []);
    assert.equal(t.client.state, "disconnected");
    s.serverClose(1000); // the close handshake completing is not news
    await t.clock.advance(60_000);
    assert.equal(t.WS.sockets.length, 1);
    assert.equal(t.events.state.filter((e) => e.state === "disconnected").length, 1);
    assert.equal(t.client.ack("x"), false);
  });

  test("during backoff: the retry is cancelled", async () => {
    const t = track(setup());
    (await t.connectNow()).serverClose(1006);
    t.client.close();
    assert.deepEqual(t.events.state.at(-1).willReconnect, false);
    await t.clock.advance(60_000);
    assert.equal(t.WS.sockets.length, 1);
  });

  test("while getUrl is pending: its URL is never used", async () => {
    let release;
    const t = track(setup({ getUrl: () => new Promise((r) => (release = r)) }));
    await t.clock.advance(0);
    t.client.close();
    release("ws://node.test/ws?token=late");
    await t.clock.advance(60_000);
    assert.equal(t.WS.sockets.length, 0);
  });

  test("before the deferred auto-connect: never connects", async () => {
    const t = track(setup());
    t.client.close();
    await t.clock.advance(60_000);
    assert.equal(t.WS.sockets.length, 0);
    assert.deepEqual(t.events.state, []);
  });

  test("from inside a state handler", async () => {
    const t = track(setup());
    t.client.on("state", (s) => {
      if (s.state === "disconnected" && s.willReconnect) t.client.close();
    });
    (await t.connectNow()).serverClose(1001);
    await t.clock.advance(60_000);
    assert.equal(t.WS.sockets.length, 1);
    assert.deepEqual(t.clock.pending(), []);
  });
});

describe("frames", () => {
  test("message, channel, broadcast and receipt reach their handlers", async () => {
    const t = track(setup());
    const s = await t.connectNow();
    const msg = { type: "message", id: "m1", from: "bob", data: { text: "hi" }, ts: 1, receipt: true };
    const ch = { type: "channel", id: "c1", channel: "room", from: "bob", data: [1, 2], ts: 2 };
    const bc = { type: "broadcast", id: "b1", data: "hello", ts: 3 };
    const rc = { type: "receipt", id: "m0", to: ["alice", "carol"], status: "delivered" };
    for (const f of [msg, ch, bc, rc]) s.receive(f);
    assert.deepEqual(t.events.message, [msg]);
    assert.deepEqual(t.events.channel, [ch]);
    assert.deepEqual(t.events.broadcast, [bc]);
    assert.deepEqual(t.events.receipt, [rc]);
    assert.deepEqual(t.events.error, []);
  });

  test("a receipt with `to` as a single id is normalised to a list", async () => {
    const t = track(setup());
    const s = await t.connectNow();
    s.receive({ type: "receipt", id: "m1", to: "alice", status: "acked" });
    assert.deepEqual(t.events.receipt[0].to, ["alice"]);
  });

  test("duplicate ids are dropped, also across reconnects", async () => {
    const t = track(setup());
    let s = await t.connectNow();
    s.receive({ type: "message", id: "a", from: "bob", data: 1, ts: 1 });
    s.receive({ type: "message", id: "a", from: "bob", data: 1, ts: 1 });
    s.receive({ type: "channel", id: "b", channel: "r", from: "bob", data: 1, ts: 1 });
    s.receive({ type: "channel", id: "b", channel: "r", from: "bob", data: 1, ts: 1 });
    s.receive({ type: "broadcast", id: "c", data: 1, ts: 1 });
    s.serverClose(1006);
    await t.clock.advance(MAX);
    s = t.last();
    s.open();
    s.receive({ type: "broadcast", id: "c", data: 1, ts: 1 });
    s.receive({ type: "message", id: "a", from: "bob", data: 1, ts: 1, stored: true });
    assert.equal(t.events.message.length, 1);
    assert.equal(t.events.channel.length, 1);
    assert.equal(t.events.broadcast.length, 1);
  });

  test("the dedupe memory is bounded to dedupeSize ids", async () => {
    const t = track(setup({ dedupeSize: 3 }));
    const s = await t.connectNow();
    for (const id of ["1", "2", "3", "4"]) s.receive({ type: "broadcast", id, data: null, ts: 0 });
    s.receive({ type: "broadcast", id: "4", data: null, ts: 0 }); // remembered
    s.receive({ type: "broadcast", id: "1", data: null, ts: 0 }); // forgotten: delivered again
    assert.deepEqual(
      t.events.broadcast.map((b) => b.id),
      ["1", "2", "3", "4", "1"],
    );
  });

  test("malformed frames become error events; the connection carries on", async () => {
    const t = track(setup());
    const s = await t.connectNow();
    const bad = ["not json", "null", "[1,2]", '{"no":"type"}', '{"type":"message","from":"x"}', '{"type":"channel","id":""}'];
    for (const b of bad) assert.doesNotThrow(() => s.receive(b));
    assert.doesNotThrow(() => s.receiveRaw(new ArrayBuffer(4)));
    assert.equal(t.events.error.length, bad.length + 1);
    for (const e of t.events.error) assert.equal(e.kind, "frame");
    assert.equal(t.events.error[0].frame, "not json");
    s.receive({ type: "something-new", x: 1 }); // unknown types are ignored silently
    s.receive({ type: "message", id: "ok", from: "bob", data: 1, ts: 1 });
    assert.equal(t.events.message.length, 1);
    assert.equal(t.events.error.length, bad.length + 1);
    assert.equal(t.client.state, "connected");
  });

  test("a throwing handler becomes an error event, other handlers still run", async () => {
    const t = track(setup());
    const s = await t.connectNow();
    t.client.on("message", () => {
      throw new Error("app bug");
    });
    const after = [];
    t.client.on("message", (m) => after.push(m.id));
    t.client.on("error", () => {
      throw new Error("error handler bug");
    });
    assert.doesNotThrow(() => s.receive({ type: "message", id: "m", from: "b", data: 1, ts: 1 }));
    assert.deepEqual(after, ["m"]);
    assert.equal(t.events.error.length, 1);
    assert.equal(t.events.error[0].kind, "handler");
    assert.equal(t.events.error[0].cause.message, "app bug");
  });

  test("on() returns an unsubscribe function; off() removes; unknown events are refused", async () => {
    const t = track(setup());
    const s = await t.connectNow();
    const seen = [];
    const h = (m) => seen.push(m.id);
    const unsubscribe = t.client.on("broadcast", h);
    s.receive({ type: "broadcast", id: "1", data: 0, ts: 0 });
    unsubscribe();
    s.receive({ type: "broadcast", id: "2", data: 0, ts: 0 });
    t.client.on("broadcast", h);
    t.client.off("broadcast", h);
    s.receive({ type: "broadcast", id: "3", data: 0, ts: 0 });
    assert.deepEqual(seen, ["1"]);
    assert.throws(() => t.client.on("messages", () => {}), TypeError);
  });
});

describe("acks", () => {
  test("ack(id) sends an ack frame; returns false without an open socket", async () => {
    const t = track(setup());
    assert.equal(t.client.ack("early"), false);
    const s = await t.connectNow();
    assert.equal(t.client.ack("m1"), true);
    assert.deepEqual(s.sent, [{ type: "ack", id: "m1" }]);
    assert.throws(() => t.client.ack(""), TypeError);
  });

  test("autoAck acks messages with receipt: true after the handlers ran, and nothing else", async () => {
    const t = track(setup({ autoAck: true }));
    const s = await t.connectNow();
    const sentDuringHandler = [];
    t.client.on("message", () => sentDuringHandler.push(s.sent.length));
    s.receive({ type: "message", id: "r", from: "bob", data: 1, ts: 1, receipt: true });
    s.receive({ type: "message", id: "n", from: "bob", data: 1, ts: 1 });
    s.receive({ type: "channel", id: "c", channel: "x", from: "bob", data: 1, ts: 1, receipt: true });
    assert.deepEqual(sentDuringHandler, [0, 1]);
    assert.deepEqual(s.sent, [{ type: "ack", id: "r" }]);
  });

  test("autoAck acks stored messages too: the offline inbox keeps them until acked", async () => {
    const t = track(setup({ autoAck: true }));
    const s = await t.connectNow();
    s.receive({ type: "message", id: "s", from: "bob", data: 1, ts: 1, receipt: false, stored: true });
    assert.deepEqual(s.sent, [{ type: "ack", id: "s" }]);
  });

  test("without autoAck nothing is acked by itself", async () => {
    const t = track(setup());
    const s = await t.connectNow();
    s.receive({ type: "message", id: "r", from: "bob", data: 1, ts: 1, receipt: true });
    assert.deepEqual(s.sent, []);
  });

  test("a redelivered message the app already acked is acked again, not shown again", async () => {
    const t = track(setup());
    let s = await t.connectNow();
    t.client.on("message", (m) => t.client.ack(m.id));
    s.serverClose(1006); // the ack of the next message will be lost
    s = t.last();
    await t.clock.advance(MAX);
    s = t.last();
    s.open();
    const m = { type: "message", id: "x", from: "bob", data: 1, ts: 1, receipt: true };
    s.receive(m);
    s.receive({ ...m, stored: true });
    assert.equal(t.events.message.length, 1);
    assert.deepEqual(s.sent, [
      { type: "ack", id: "x" },
      { type: "ack", id: "x" },
    ]);
  });
});

describe("liveness", () => {
  test("pings every pingInterval; a pong keeps the connection", async () => {
    const t = track(setup());
    const s = await t.connectNow();
    await t.clock.advance(1000);
    assert.deepEqual(s.sent, [{ type: "ping" }]);
    s.receive({ type: "pong" });
    await t.clock.advance(1000);
    s.receive({ type: "pong" });
    await t.clock.advance(1000);
    assert.deepEqual(s.sent, [{ type: "ping" }, { type: "ping" }, { type: "ping" }]);
    assert.equal(t.client.state, "connected");
    assert.equal(t.WS.sockets.length, 1);
  });

  test("any frame counts as a sign of life", async () => {
    const t = track(setup());
    const s = await t.connectNow();
    await t.clock.advance(1000);
    s.receive({ type: "broadcast", id: "b", data: 0, ts: 0 });
    await t.clock.advance(900);
    assert.equal(t.client.state, "connected");
  });

  test("a missing pong closes the socket and reconnects", async () => {
    const t = track(setup());
    const s = await t.connectNow();
    await t.clock.advance(1000 + 500);
    assert.ok(s.closedWith, "the dead socket was closed");
    assert.deepEqual(t.events.state.at(-1), {
      state: "disconnected",
      code: 1006,
      reason: "pong timeout",
      willReconnect: true,
      delay: 50,
      attempt: 1,
    });
    s.serverClose(1006); // its late close event is ignored
    assert.equal(t.events.state.filter((e) => e.state === "disconnected").length, 1);
    await t.clock.advance(50);
    assert.equal(t.WS.sockets.length, 2);
    assert.equal(t.urls.length, 2);
  });

  test("no pings while the page is hidden; one as soon as it is visible again", async (ctx) => {
    const listeners = new Set();
    const doc = {
      visibilityState: "hidden",
      addEventListener: (name, fn) => name === "visibilitychange" && listeners.add(fn),
      removeEventListener: (name, fn) => listeners.delete(fn),
    };
    globalThis.document = doc;
    ctx.after(() => delete globalThis.document);
    const t = track(setup());
    const s = await t.connectNow();
    await t.clock.advance(5000);
    assert.deepEqual(s.sent, []);
    assert.equal(t.client.state, "connected");
    doc.visibilityState = "visible";
    for (const fn of listeners) fn();
    assert.deepEqual(s.sent, [{ type: "ping" }]);
    t.client.close();
    assert.equal(listeners.size, 0, "the visibility listener is removed on close");
  });
});

test("many clients: nothing is left behind after close (no stray timers)", async () => {
  const t = setup({ autoConnect: false });
  const all = [];
  for (let i = 0; i < 50; i++) {
    const c = new ImpushClient({ getUrl: () => "ws://x/ws", WebSocket: t.WS, timers: t.clock, pingInterval: 100 });
    c.connect();
    all.push(c);
  }
  await flush();
  for (const s of t.WS.sockets) s.open();
  await t.clock.advance(100);
  for (const c of all) c.close();
  assert.deepEqual(t.clock.pending(), []);
});
