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
  const events = { state: [], message: [], channel: [], broadcast: [], receipt: [], resume: [], error: [] };
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

/** `url` without the socket names the client appends last (`link=`, `replaces=`). */
function bare(url) {
  return url.replace(/[?&]link=[^&]*(&replaces=[^&]*)?$/, "");
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
    assert.equal(bare(t.last().url), "ws://node.test/ws?token=t1");
  });

  test("each socket is named; a reconnect names the last socket that opened as the one it replaces", async () => {
    const t = track(setup());
    const s1 = await t.connectNow();
    const q1 = new URL(s1.url).searchParams;
    assert.match(q1.get("link"), /^[A-Za-z0-9]{16}-1$/);
    assert.equal(q1.get("replaces"), null);
    // An attempt that never opens is not what the next one replaces.
    t.last().serverClose(1006);
    await t.clock.advance(MAX);
    t.last().serverClose(1006);
    await t.clock.advance(MAX);
    t.last().open();
    const q3 = new URL(t.last().url).searchParams;
    assert.equal(t.WS.sockets.length, 3);
    assert.equal(q3.get("replaces"), q1.get("link"));
    assert.notEqual(q3.get("link"), q1.get("link"));
    assert.equal(q3.get("link").split("-")[0], q1.get("link").split("-")[0]);
    const s4 = await reconnect(t);
    assert.equal(new URL(s4.url).searchParams.get("replaces"), q3.get("link"));
    // Another client has names of its own.
    const other = track(setup());
    const o1 = await other.connectNow();
    assert.notEqual(new URL(o1.url).searchParams.get("link"), q1.get("link"));
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
      assert.equal(bare(t.last().url), `ws://node.test/ws?token=p${i}`);
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

  test("autoAck acks redelivered messages: the inbox keeps them until acked", async () => {
    const t = track(setup({ autoAck: true }));
    const s = await t.connectNow();
    s.receive({ type: "message", id: "r", from: "bob", data: 1, ts: 1, receipt: false, redelivered: true });
    assert.deepEqual(s.sent, [{ type: "ack", id: "r" }]);
  });

  test("autoAck acks messages the node keeps pending until acked (ack: true)", async () => {
    const t = track(setup({ autoAck: true }));
    const s = await t.connectNow();
    s.receive({ type: "message", id: "k", from: "bob", data: 1, ts: 1, receipt: false, ack: true });
    assert.deepEqual(s.sent, [{ type: "ack", id: "k" }]);
  });

  test("a redelivered message already shown and acked is acked again, not shown again", async () => {
    const t = track(setup());
    let s = await t.connectNow();
    t.client.on("message", (m) => t.client.ack(m.id));
    s.receive({ type: "message", id: "p", from: "bob", data: 1, ts: 1, receipt: false });
    s.serverClose(1006); // the ack was lost with the socket
    await t.clock.advance(MAX);
    s = t.last();
    s.open();
    s.receive({ type: "message", id: "p", from: "bob", data: 1, ts: 1, receipt: false, redelivered: true });
    assert.equal(t.events.message.length, 1);
    assert.deepEqual(s.sent, [{ type: "ack", id: "p" }]);
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

// ---- resume ---------------------------------------------------------------------------------

/** The resume request in a URL, parsed; null when it has none. */
function resumeOf(url) {
  const q = new URL(url).searchParams.get("resume");
  return q === null ? null : JSON.parse(q);
}

const chf = (id, channel, offset, epoch = "e1") => ({ type: "channel", id, channel, from: "bob", data: id, ts: 1, offset, epoch });
const bcf = (id, offset, epoch = "e1") => ({ type: "broadcast", id, data: id, ts: 1, offset, epoch });

/** Drops the current socket with `code` and opens the next one (a normal backoff fits in MAX). */
async function reconnect(t, code = 1006) {
  t.last().serverClose(code);
  await t.clock.advance(MAX);
  t.last().open();
  return t.last();
}

describe("resume", () => {
  test("a fresh client asks for nothing; a reconnect names the last offset per channel and epoch", async () => {
    const t = track(setup());
    const s = await t.connectNow();
    assert.equal(resumeOf(s.url), null);
    s.receive(chf("c1", "room", 1));
    s.receive(chf("c2", "room", 2));
    s.receive(bcf("b1", 5));
    s.receive(chf("c3", "other", 7, "e9"));
    s.receive({ type: "channel", id: "c4", channel: "plain", from: "bob", data: 0, ts: 1 }); // history off
    s.receive({ type: "message", id: "m1", from: "bob", data: 0, ts: 1, offset: 3, epoch: "e1" });
    const s2 = await reconnect(t);
    assert.match(bare(s2.url), /^ws:\/\/node\.test\/ws\?token=t2&resume=[^&]+$/);
    assert.deepEqual(resumeOf(s2.url), { channels: { room: { e1: 2 }, other: { e9: 7 } }, broadcast: { e1: 5 } });
    const connected = t.events.state.filter((e) => e.state === "connected");
    assert.deepEqual(connected, [
      { state: "connected", attempt: 0 },
      { state: "connected", attempt: 1, resuming: { channels: ["other", "room"], broadcast: true } },
    ]);
  });

  test("`?` when the URL has no query; only the parts it has", async () => {
    const t = track(setup({ getUrl: () => "ws://node.test/ws" }));
    let s = await t.connectNow();
    s.receive(bcf("b1", 1));
    s = await reconnect(t);
    assert.match(s.url, /^ws:\/\/node\.test\/ws\?resume=/);
    assert.deepEqual(resumeOf(s.url), { broadcast: { e1: 1 } });
    assert.deepEqual(t.events.state.at(-1).resuming, { channels: [], broadcast: true });

    const t2 = track(setup());
    s = await t2.connectNow();
    s.receive(chf("c1", "room", 4));
    s = await reconnect(t2);
    assert.deepEqual(resumeOf(s.url), { channels: { room: { e1: 4 } } });
    assert.deepEqual(t2.events.state.at(-1).resuming, { channels: ["room"], broadcast: false });
  });

  test("per stream: the 4 most recently seen epochs, and an offset never goes back", async () => {
    const t = track(setup());
    let s = await t.connectNow();
    let n = 0;
    const id = () => `x${++n}`;
    s.receive(chf(id(), "room", 3, "e1"));
    s.receive(chf(id(), "room", 2, "e1")); // older: kept at 3
    assert.equal(t.events.channel.length, 2, "both delivered: positions never filter frames");
    s.receive(chf(id(), "room", 1, "e2"));
    s = await reconnect(t);
    assert.deepEqual(resumeOf(s.url).channels.room, { e1: 3, e2: 1 });

    for (const e of ["e3", "e4", "e5"]) s.receive(chf(id(), "room", 1, e)); // e1 falls out
    s.receive(chf(id(), "room", 2, "e2")); // e2 seen again: the most recent
    s.receive(chf(id(), "room", 1, "e6")); // e3 falls out
    for (const e of ["b1", "b2", "b3", "b4", "b5"]) s.receive(bcf(id(), 1, e));
    s = await reconnect(t);
    assert.deepEqual(resumeOf(s.url), {
      channels: { room: { e4: 1, e5: 1, e2: 2, e6: 1 } },
      broadcast: { b2: 1, b3: 1, b4: 1, b5: 1 },
    });
  });

  test("frames without a usable position are delivered and leave none", async () => {
    const t = track(setup());
    let s = await t.connectNow();
    const bad = [
      [0, "e1"],
      [-1, "e1"],
      [1.5, "e1"],
      ["3", "e1"],
      [null, "e1"],
      [2 ** 53, "e1"],
      [1, ""],
      [1, 5],
      [1, "x".repeat(129)],
      [1, undefined],
    ];
    bad.forEach(([offset, epoch], i) => {
      s.receive({ type: "channel", id: `c${i}`, channel: "room", from: "b", data: 0, ts: 1, offset, epoch });
      s.receive({ type: "broadcast", id: `b${i}`, data: 0, ts: 1, offset, epoch });
    });
    s.receive({ type: "channel", id: "nochan", from: "b", data: 0, ts: 1, offset: 1, epoch: "e1" });
    assert.equal(t.events.channel.length, bad.length + 1);
    assert.equal(t.events.broadcast.length, bad.length);
    s = await reconnect(t);
    assert.equal(resumeOf(s.url), null);
    assert.equal(t.events.state.at(-1).resuming, undefined);
    // The longest epoch accepted is 128 characters.
    s.receive(chf("ok", "room", 1, "y".repeat(128)));
    s = await reconnect(t);
    assert.deepEqual(resumeOf(s.url), { channels: { room: { ["y".repeat(128)]: 1 } } });
  });

  test("a duplicate is dropped, but its position still counts", async () => {
    const t = track(setup());
    let s = await t.connectNow();
    s.receive(chf("a", "room", 1, "e1"));
    s.receive(chf("a", "room", 7, "e2")); // the same message, sequenced again after a failover
    s.receive(bcf("b", 2));
    s.receive(bcf("b", 3));
    assert.equal(t.events.channel.length, 1);
    assert.equal(t.events.broadcast.length, 1);
    s = await reconnect(t);
    assert.deepEqual(resumeOf(s.url), { channels: { room: { e1: 1, e2: 7 } }, broadcast: { e1: 3 } });
  });

  test("remembers the resumeChannels most recently active channels", async () => {
    const t = track(setup({ resumeChannels: 3 }));
    let s = await t.connectNow();
    for (const [i, c] of ["a", "b", "c", "d", "b", "e"].entries()) s.receive(chf(`m${i}`, c, i + 1));
    s = await reconnect(t);
    assert.deepEqual(resumeOf(s.url), { channels: { d: { e1: 4 }, b: { e1: 5 }, e: { e1: 6 } } });
    assert.deepEqual(t.events.state.at(-1).resuming.channels, ["e", "b", "d"]);

    const off = track(setup({ resumeChannels: 0 }));
    s = await off.connectNow();
    s.receive(chf("c", "room", 1));
    s.receive(bcf("b", 1));
    s = await reconnect(off);
    assert.deepEqual(resumeOf(s.url), { broadcast: { e1: 1 } });
  });

  test("the resume parameter stays within 6000 characters: most recently active channels first", async () => {
    const t = track(setup());
    let s = await t.connectNow();
    const name = (i) => `room-${String(i).padStart(3, "0")}-${"é".repeat(20)}`;
    for (let i = 0; i < 300; i++) s.receive(chf(`m${i}`, name(i), i + 1, "n1-k2x9-1"));
    s.receive(bcf("b", 1, "n1-k2x9-1"));
    s = await reconnect(t);
    const encoded = bare(s.url).split("resume=")[1];
    assert.ok(encoded.length <= 6000, `${encoded.length} characters`);
    assert.ok(encoded.length > 5000, `the budget is used: ${encoded.length} characters`);
    const asked = Object.keys(resumeOf(s.url).channels);
    assert.ok(asked.length > 10 && asked.length < 256, `${asked.length} channels fit`);
    const newestFirst = Array.from({ length: asked.length }, (_, k) => name(299 - k));
    assert.deepEqual(new Set(asked), new Set(newestFirst));
    assert.deepEqual(t.events.state.at(-1).resuming, { channels: newestFirst, broadcast: true });
    assert.deepEqual(resumeOf(s.url).broadcast, { "n1-k2x9-1": 1 });

    // What did not fit was forgotten: once the asked ones are answered "not recovered", nothing
    // is left to ask for but the broadcast stream.
    for (const c of asked) s.receive({ type: "resume", channel: c, recovered: false, reason: "window" });
    s = await reconnect(t);
    assert.deepEqual(resumeOf(s.url), { broadcast: { "n1-k2x9-1": 1 } });
  });

  test("even the smallest entries name fewer streams than the 256 a node reads from one request", async () => {
    const t = track(setup());
    let s = await t.connectNow();
    const names = [];
    for (const a of "abcdefghijklmnopqrstuvwxyz") for (const b of "0123456789") names.push(a + b);
    names.forEach((name, i) => s.receive(chf(`m${i}`, name, 1, "e")));
    s.receive(bcf("b", 1, "e"));
    s = await reconnect(t);
    const asked = resumeOf(s.url);
    assert.ok(Object.keys(asked.channels).length + 1 < 256, `${Object.keys(asked.channels).length} channels`);
  });

  test("resume frames reach the app; recovered: false forgets that stream only", async () => {
    const t = track(setup());
    const order = [];
    for (const ev of ["channel", "broadcast", "resume"]) t.client.on(ev, (f) => order.push(`${ev}:${f.id ?? f.channel}`));
    let s = await t.connectNow();
    s.receive(chf("a3", "a", 3));
    s.receive(chf("b4", "b", 4));
    s.receive(bcf("z9", 9));
    s = await reconnect(t);
    assert.deepEqual(resumeOf(s.url), { channels: { a: { e1: 3 }, b: { e1: 4 } }, broadcast: { e1: 9 } });
    s.receive(chf("a4", "a", 4)); // replayed
    s.receive({ type: "resume", channel: "a", recovered: true, replayed: 1 });
    s.receive({ type: "resume", channel: "b", recovered: false, reason: "window" });
    s.receive({ type: "resume", channel: null, broadcast: true, recovered: false, reason: "epoch" });
    assert.deepEqual(t.events.resume, [
      { type: "resume", channel: "a", broadcast: false, recovered: true, replayed: 1 },
      { type: "resume", channel: "b", broadcast: false, recovered: false, reason: "window" },
      { type: "resume", channel: null, broadcast: true, recovered: false, reason: "epoch" },
    ]);
    assert.deepEqual(order.slice(-4), ["channel:a4", "resume:a", "resume:b", "resume:null"]);
    s = await reconnect(t);
    assert.deepEqual(resumeOf(s.url), { channels: { a: { e1: 4 } } });
    // A forgotten stream starts again from its next frame.
    s.receive(chf("b9", "b", 9, "e2"));
    s.receive(bcf("z1", 1, "e2"));
    s = await reconnect(t);
    assert.deepEqual(resumeOf(s.url), { channels: { a: { e1: 4 }, b: { e2: 9 } }, broadcast: { e2: 1 } });
  });

  test("a malformed-request answer forgets every position", async () => {
    const t = track(setup());
    let s = await t.connectNow();
    s.receive(chf("a", "a", 1));
    s.receive(bcf("b", 1));
    s = await reconnect(t);
    s.receive({ type: "resume", recovered: false, reason: "malformed" });
    assert.deepEqual(t.events.resume, [{ type: "resume", channel: null, broadcast: false, recovered: false, reason: "malformed" }]);
    s = await reconnect(t);
    assert.equal(resumeOf(s.url), null);
  });

  test("a resume frame without `recovered` is an error event and changes nothing", async () => {
    const t = track(setup());
    let s = await t.connectNow();
    s.receive(chf("a", "a", 1));
    s.receive({ type: "resume", channel: "a", reason: "window" });
    assert.equal(t.events.resume.length, 0);
    assert.equal(t.events.error.length, 1);
    assert.equal(t.events.error[0].kind, "frame");
    s = await reconnect(t);
    assert.deepEqual(resumeOf(s.url), { channels: { a: { e1: 1 } } });
  });

  test("positions survive close() and connect(), and a getUrl failure", async () => {
    let fail = false;
    let n = 0;
    const t = track(
      setup({
        getUrl: () => {
          if (fail) throw new Error("backend down");
          return `ws://node.test/ws?token=t${++n}`;
        },
      }),
    );
    const s = await t.connectNow();
    s.receive(chf("a", "a", 1));
    t.client.close();
    fail = true;
    t.client.connect();
    await t.clock.advance(0);
    fail = false;
    await t.clock.advance(MAX);
    assert.deepEqual(resumeOf(t.last().url), { channels: { a: { e1: 1 } } });
  });

  test("resume: false neither tracks nor asks", async () => {
    const t = track(setup({ resume: false }));
    let s = await t.connectNow();
    s.receive(chf("a", "a", 1));
    s.receive(bcf("b", 1));
    s = await reconnect(t);
    assert.equal(resumeOf(s.url), null);
    assert.equal(t.events.state.at(-1).resuming, undefined);
  });
});

describe("1012: moved to another node", () => {
  test("CloseCodes.MOVED is 1012", () => {
    assert.equal(CloseCodes.MOVED, 1012);
  });

  test("reconnects at once with a fresh URL and counts no failure", async () => {
    const t = track(setup());
    await t.clock.advance(0);
    t.last().serverClose(1006); // one failure before
    await t.clock.advance(MAX);
    const s = t.last();
    s.open();
    s.serverClose(1012, "node draining");
    assert.deepEqual(t.events.state.at(-1), {
      state: "disconnected",
      code: 1012,
      reason: "node draining",
      willReconnect: true,
      delay: 0,
      attempt: 1,
    });
    await t.clock.advance(0);
    assert.equal(t.WS.sockets.length, 3);
    assert.equal(t.urls.length, 3);
    t.last().open();
    assert.deepEqual(t.events.state.at(-1), { state: "connected", attempt: 1 });
  });

  test("a second 1012 on a short connection backs off; after a stable one it is immediate again", async () => {
    const t = track(setup({ pingInterval: 0 }));
    let s = await t.connectNow();
    s.serverClose(1012);
    assert.equal(t.events.state.at(-1).delay, 0);
    await t.clock.advance(0);
    s = t.last();
    s.open();
    await t.clock.advance(100);
    s.serverClose(1012); // a node closing every newcomer with 1012 must not get a tight loop
    assert.equal(t.events.state.at(-1).delay, 50);
    assert.equal(t.events.state.at(-1).attempt, 1);
    await t.clock.advance(50);
    s = t.last();
    s.open();
    await t.clock.advance(5000); // stableAfter
    s.serverClose(1012);
    assert.equal(t.events.state.at(-1).delay, 0);
    assert.equal(t.events.state.at(-1).attempt, 0);
  });
});

describe("Retry-After from getUrl", () => {
  /** A client whose first getUrl call does `first()`, then succeeds. */
  function failingOnce(first, extra = {}) {
    let calls = 0;
    const t = track(
      setup({
        getUrl: () => {
          calls++;
          return calls === 1 ? first() : `ws://node.test/ws?token=ok${calls}`;
        },
        ...extra,
      }),
    );
    t.calls = () => calls;
    return t;
  }

  const cases = [
    ["an error's retryAfter", () => Promise.reject(Object.assign(new Error("busy"), { retryAfter: 5 })), 5],
    ["a returned 503 Response", () => new Response(null, { status: 503, headers: { "Retry-After": "7" } }), 7],
    ["a rejected 429 Response", () => Promise.reject(new Response(null, { status: 429, headers: { "Retry-After": "2" } })), 2],
    [
      "an error's 429 response",
      () => {
        throw Object.assign(new Error("HTTP 429"), { response: new Response("{}", { status: 429, headers: { "retry-after": " 3 " } }) });
      },
      3,
    ],
  ];
  for (const [what, first, seconds] of cases) {
    test(`${what}: waits that long plus jitter, instead of the backoff`, async () => {
      const t = failingOnce(first);
      await t.clock.advance(0);
      const ev = t.events.state.at(-1);
      // random() is 0.5 and the spread is min(backoffMax, max(backoffBase, wait)) = 1000 ms.
      assert.deepEqual(ev, {
        state: "disconnected",
        code: undefined,
        reason: "getUrl failed",
        willReconnect: true,
        retryAfter: seconds,
        delay: seconds * 1000 + 500,
        attempt: 1,
      });
      assert.equal(t.events.error[0].kind, "getUrl");
      await t.clock.advance(seconds * 1000 + 499);
      assert.equal(t.calls(), 1, "not asked again before Retry-After plus jitter");
      await t.clock.advance(1);
      assert.equal(t.calls(), 2);
      t.last().open();
      assert.equal(t.client.state, "connected");
    });
  }

  test("an HTTP-date Retry-After counts from now", async () => {
    const at = new Date(Date.now() + 30_000).toUTCString(); // whole seconds: 29-30 s from now
    const t = failingOnce(() => new Response(null, { status: 503, headers: { "Retry-After": at } }));
    await t.clock.advance(0);
    const { retryAfter, delay } = t.events.state.at(-1);
    assert.ok(retryAfter > 28 && retryAfter <= 30, `retryAfter ${retryAfter}`);
    assert.ok(delay >= retryAfter * 1000, `delay ${delay}`);
  });

  test("a Retry-After of 0 still gets the jitter; a huge one is capped at an hour", async () => {
    let t = failingOnce(() => Promise.reject({ retryAfter: 0 }));
    await t.clock.advance(0);
    assert.equal(t.events.state.at(-1).retryAfter, 0);
    assert.equal(t.events.state.at(-1).delay, 50);
    t = failingOnce(() => Promise.reject({ retryAfter: 1e9 }));
    await t.clock.advance(0);
    assert.equal(t.events.state.at(-1).retryAfter, 3600);
    assert.equal(t.events.state.at(-1).delay, 3_600_500);
  });

  const useless = [
    ["a 500 with Retry-After", () => new Response(null, { status: 500, headers: { "Retry-After": "9" } })],
    ["a 503 without Retry-After", () => Promise.reject(new Response(null, { status: 503 }))],
    ["a Retry-After that is not a time", () => new Response(null, { status: 429, headers: { "Retry-After": "soon" } })],
    ["retryAfter NaN", () => Promise.reject({ retryAfter: NaN })],
    ["retryAfter -1", () => Promise.reject({ retryAfter: -1 })],
    ["retryAfter as a string", () => Promise.reject({ retryAfter: "5" })],
  ];
  for (const [what, first] of useless) {
    test(`${what}: the normal backoff`, async () => {
      const t = failingOnce(first);
      await t.clock.advance(0);
      const ev = t.events.state.at(-1);
      assert.equal(ev.retryAfter, undefined);
      assert.equal(ev.delay, 50);
    });
  }

  test("it counts as a failed attempt: the next backoff is doubled", async () => {
    const t = failingOnce(() => Promise.reject({ retryAfter: 1 }));
    await t.clock.advance(0);
    await t.clock.advance(t.events.state.at(-1).delay);
    t.last().onerror({}); // the WebSocket step fails too: no status visible, jittered backoff
    assert.deepEqual(t.events.state.at(-1), {
      state: "disconnected",
      code: 1006,
      reason: "connection failed",
      willReconnect: true,
      delay: 100,
      attempt: 2,
    });
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
