// Test doubles shared by the test files: a manual clock and a scriptable WebSocket.

/** Lets queued promise callbacks run (one macrotask turn drains every microtask). */
export const flush = () => new Promise((resolve) => setImmediate(resolve));

/** A clock that only moves when told to, with the `timers` shape ImpushClient accepts. */
export function fakeTimers() {
  let now = 0;
  let seq = 0;
  const timers = new Map();
  return {
    now: () => now,
    setTimeout(fn, ms) {
      const id = ++seq;
      timers.set(id, { at: now + Math.max(0, ms), fn });
      return id;
    },
    clearTimeout(id) {
      timers.delete(id);
    },
    /** Delays of the timers still pending, relative to now, soonest first. */
    pending() {
      return [...timers.values()].map((t) => t.at - now).sort((a, b) => a - b);
    },
    /** Moves time forward, firing due timers in order and settling promises between them. */
    async advance(ms) {
      const end = now + ms;
      for (;;) {
        await flush();
        let nextId;
        let next;
        for (const [id, t] of timers) {
          if (t.at <= end && (!next || t.at < next.at)) {
            nextId = id;
            next = t;
          }
        }
        if (!next) break;
        timers.delete(nextId);
        now = next.at;
        next.fn();
      }
      now = end;
      await flush();
    },
  };
}

/** A WebSocket class whose instances the test drives; each call returns a fresh class. */
export function fakeWebSocket() {
  const sockets = [];
  class FakeSocket {
    static sockets = sockets;
    readyState = 0;
    sent = [];
    closedWith = null;
    onopen = null;
    onmessage = null;
    onerror = null;
    onclose = null;
    constructor(url) {
      this.url = url;
      sockets.push(this);
    }
    send(text) {
      if (this.readyState !== 1) throw new Error("not open");
      this.sent.push(JSON.parse(text));
    }
    close(code, reason) {
      this.closedWith = { code, reason };
      this.readyState = 3;
    }
    // ---- what the server side does ----
    open() {
      this.readyState = 1;
      this.onopen?.({});
    }
    receive(frame) {
      this.onmessage?.({ data: typeof frame === "string" ? frame : JSON.stringify(frame) });
    }
    receiveRaw(data) {
      this.onmessage?.({ data });
    }
    serverClose(code, reason = "") {
      this.readyState = 3;
      this.onerror?.({});
      this.onclose?.({ code, reason, wasClean: code !== 1006 });
    }
  }
  return FakeSocket;
}

/** Polls `pred` until it is truthy or `timeoutMs` passes; the deadline is the assertion. */
export async function waitFor(pred, timeoutMs, what = "condition") {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
