// Browser end-to-end test of the chat demo: the real `chat` binary, the system Chromium, two
// browser contexts (alice and bob). Run with `npm test` in this directory after
// `cargo build -p impush-examples --bin chat`.
//
// Env: CHAT_BIN (default <repo>/target/debug/chat), E2E_OUT (default ./out: screenshots and
// logs), CHROMIUM (default /usr/bin/chromium).
//
// Every wait is a condition with a deadline (Playwright's waitForSelector / waitForFunction);
// the only timed window is the check that a kicked page stays down, which is a hold period by
// nature.

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { startProxy } from "./proxy.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, "../../..");
const CHAT_BIN = process.env.CHAT_BIN || path.join(repo, "target/debug/chat");
const OUT = path.resolve(process.env.E2E_OUT || path.join(here, "out"));
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
const STEP_TIMEOUT = 20_000; // ms, for any single condition
// The page's impush client pings every PING ms and gives up on a socket silent for as long
// again (defaults 20 s / 10 s); the node does the same with the IMPUSH_LIMITS__* below.
const PING = 2000;
// The node keeps this many messages per channel for clients that resume.
const HISTORY = 3;

let chat; // { proc, url, logs }
let proxy; // the TCP proxy the pages' WebSockets go through (proxy.js)
let browser;
const users = {}; // name -> { context, page, console: [] }
let broken = null; // the first failed step: later steps depend on it and are skipped

// ---- helpers --------------------------------------------------------------------------------

/** Starts the chat binary on free ports and resolves with the page URL it prints. */
function startChat(proxyPort) {
  return new Promise((resolve, reject) => {
    const proc = spawn(CHAT_BIN, ["--port", "0", "--impush-port", "0"], {
      env: {
        ...process.env,
        RUST_LOG: process.env.RUST_LOG || "warn,chat=info",
        // Clients are told to connect through the proxy.
        IMPUSH_NODE__ID: "n1",
        IMPUSH_CLUSTER__NODES: `[{id="n1",url="ws://127.0.0.1:${proxyPort}"}]`,
        IMPUSH_LIMITS__PING_INTERVAL: "2s",
        IMPUSH_LIMITS__PONG_TIMEOUT: "3s",
        // A small channel history, so the test can miss more than the node keeps.
        IMPUSH_HISTORY__SIZE: String(HISTORY),
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const logs = [];
    let buffered = "";
    let done = false;
    const timer = setTimeout(() => finish(new Error(`no URL from ${CHAT_BIN} within 20 s:\n${logs.join("")}`)), 20_000);
    function finish(err, url, nodePort) {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (err) {
        proc.kill("SIGKILL");
        reject(err);
      } else resolve({ proc, url, nodePort, logs });
    }
    proc.on("error", (e) => finish(new Error(`cannot start ${CHAT_BIN} (build it: cargo build -p impush-examples --bin chat): ${e.message}`)));
    proc.on("exit", (code, signal) => {
      logs.push(`[exit ${code ?? signal}]\n`);
      finish(new Error(`chat exited (${code ?? signal}) before printing its URL:\n${logs.join("")}`));
    });
    proc.stderr.on("data", (d) => logs.push(d.toString()));
    proc.stdout.on("data", (d) => {
      logs.push(d.toString());
      buffered += d.toString();
      const node = /impush node on ws:\/\/127\.0\.0\.1:(\d+)/.exec(buffered);
      const m = /chat demo on (http:\/\/\S+)/.exec(buffered);
      if (node && m) finish(null, m[1], Number(node[1]));
    });
  });
}

// Last resort if the test runner itself is interrupted: never leave the program running.
process.on("exit", () => chat?.proc.kill("SIGKILL"));

async function stopChat() {
  if (!chat || chat.proc.exitCode !== null || chat.proc.signalCode !== null) return;
  const exited = new Promise((r) => chat.proc.once("exit", r));
  chat.proc.kill("SIGTERM");
  const t = setTimeout(() => chat.proc.kill("SIGKILL"), 5000);
  await exited;
  clearTimeout(t);
}

async function openPage(name) {
  const u = users[name];
  if (u.page) await u.page.close();
  const page = await u.context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT);
  page.on("console", (m) => u.console.push(`[${m.type()}] ${m.text()}`));
  page.on("pageerror", (e) => u.console.push(`[pageerror] ${e.message}`));
  u.page = page;
  await page.goto(`${chat.url}/?ping=${PING}`);
  return page;
}

async function login(name) {
  const page = users[name].page;
  await page.fill("#login-name", name);
  await page.click("#login-btn");
  await page.waitForSelector("#conn-state[data-state=connected]");
  await page.waitForSelector(`#users li[data-user="${name}"]`);
}

const page = (name) => users[name].page;

/** Polls `cond` until it holds; fails after `timeout` ms saying what it waited for. */
async function waitFor(what, cond, timeout = STEP_TIMEOUT) {
  const deadline = Date.now() + timeout;
  for (;;) {
    if (await cond()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function shot(step) {
  mkdirSync(OUT, { recursive: true });
  for (const [name, u] of Object.entries(users)) {
    if (u.page && !u.page.isClosed()) await u.page.screenshot({ path: path.join(OUT, `${step}-${name}.png`), fullPage: true });
  }
}

/** A step of the scenario: skipped once an earlier one failed (it would fail for that reason). */
function step(title, fn) {
  it(title, async (t) => {
    if (broken) {
      t.skip(`after the failed step "${broken}"`);
      return;
    }
    try {
      await fn(t);
    } catch (e) {
      broken = title;
      await shot(`failed`).catch(() => {});
      throw e;
    }
  });
}

async function sendDm(from, to, text) {
  const p = page(from);
  await p.fill("#dm-to", to);
  await p.fill("#dm-text", text);
  await p.click("#dm-send");
}

async function sendRoom(from, room, text) {
  const p = page(from);
  await p.selectOption("#room-select", room);
  await p.fill("#room-text", text);
  await p.click("#room-send");
  // Cleared once the backend accepted it: the next send cannot overtake this one.
  await p.waitForFunction(() => document.querySelector("#room-text").value === "");
}

/** Takes `name` off the network: the page goes offline and its WebSocket is reset both ways. */
async function goOffline(name) {
  await users[name].context.setOffline(true);
  proxy.block(name);
  await page(name).waitForSelector("#conn-state[data-state=disconnected]");
  // The node has seen the connection end (so later messages are really missed).
  for (const other of Object.keys(users).filter((n) => n !== name)) {
    await page(other).waitForSelector(`#users li[data-user="${name}"]`, { state: "detached" });
  }
}

async function comeBack(name) {
  proxy.unblock(name);
  await users[name].context.setOffline(false);
  await page(name).waitForSelector("#conn-state[data-state=connected]");
  await waitFor(`${name} to have exactly one connection through the proxy`, () => proxy.count(name) === 1);
}

/** How many entries of `selector` in `log` have exactly the text `text`. */
function countText(p, log, text) {
  return p.$$eval(`${log} li .text`, (els, t) => els.filter((e) => e.textContent === t).length, text);
}

/** The page's `resume` events so far (the page logs each one to the console). */
function resumeEvents(name) {
  return users[name].console
    .map((line) => /^\[info\] impush resume (.*)$/.exec(line))
    .filter(Boolean)
    .map((m) => JSON.parse(m[1]));
}

/** Requests for a room's history from the backend, counted from now on. */
function watchRoomReloads(name) {
  const seen = [];
  const onRequest = (r) => {
    const m = /^\/api\/rooms\/([^/]+)\/messages$/.exec(new URL(r.url()).pathname);
    if (m) seen.push(decodeURIComponent(m[1]));
  };
  page(name).on("request", onRequest);
  return { seen, stop: () => page(name).off("request", onRequest) };
}

// ---- the scenario ---------------------------------------------------------------------------

describe("chat demo in Chromium", { timeout: 180_000 }, () => {
  before(async () => {
    proxy = await startProxy();
    chat = await startChat(proxy.port);
    proxy.setTarget(chat.nodePort);
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true });
    for (const name of ["alice", "bob"]) {
      users[name] = { context: await browser.newContext({ viewport: { width: 1280, height: 800 } }), page: null, console: [] };
      await openPage(name);
    }
  });

  after(async () => {
    try {
      await browser?.close();
    } finally {
      await stopChat();
      await proxy?.close();
      mkdirSync(OUT, { recursive: true });
      writeFileSync(path.join(OUT, "chat.log"), chat?.logs.join("") ?? "");
      for (const [name, u] of Object.entries(users)) writeFileSync(path.join(OUT, `console-${name}.log`), u.console.join("\n"));
    }
  });

  step("a bad name is refused with a JSON error", async () => {
    const p = page("alice");
    await p.fill("#login-name", "not a name!");
    await p.click("#login-btn");
    const banner = await p.waitForSelector("#banner[data-kind=error]:not([hidden])");
    assert.match(await banner.textContent(), /1-32 letters/);
    const res = await p.evaluate(async () => {
      const r = await fetch("/api/login", { method: "POST", headers: { "Content-Type": "application/json" }, body: "{" });
      return { status: r.status, body: await r.json() };
    });
    assert.equal(res.status, 400);
    assert.equal(res.body.error, "bad_request");
  });

  step("alice and bob log in and see each other online", async () => {
    await login("alice");
    await login("bob");
    await page("alice").waitForSelector('#users li[data-user="bob"]');
    await page("bob").waitForSelector('#users li[data-user="alice"]');
    await shot("01-online");
  });

  step("a private message: bob sees it, alice sees delivered then acked", async () => {
    await sendDm("alice", "bob", "hello bob");
    const got = await page("bob").waitForSelector('#dm-log li[data-dir=in][data-from=alice][data-acked=true]');
    assert.equal(await got.$eval(".text", (e) => e.textContent), "hello bob");
    const id = await got.getAttribute("data-id");
    const mine = await page("alice").waitForSelector(`#dm-log li[data-dir=out][data-id="${id}"][data-status=acked]`);
    assert.equal(await mine.getAttribute("data-receipts"), "delivered acked");
    await shot("02-private-message");
  });

  step("a room: alice creates it, bob joins, bob's message reaches both", async () => {
    const alice = page("alice");
    const bob = page("bob");
    await alice.fill("#room-name", "lobby");
    await alice.click("#room-join");
    await alice.waitForSelector('#rooms li[data-room=lobby][data-joined=true]');
    // bob learns about the room from the rooms broadcast, and joins it from the list.
    await bob.click('#rooms li[data-room=lobby][data-joined=false] button[data-action=join]');
    await bob.waitForSelector('#rooms li[data-room=lobby][data-joined=true]');
    await alice.waitForSelector('#rooms li[data-room=lobby] .counts:text("2 members, 2 online")');
    await bob.selectOption("#room-select", "lobby");
    await bob.fill("#room-text", "hi everyone");
    await bob.click("#room-send");
    for (const p of [alice, bob]) {
      const li = await p.waitForSelector('#room-log li[data-room=lobby][data-from=bob]');
      assert.equal(await li.$eval(".text", (e) => e.textContent), "hi everyone");
    }
    await shot("03-room");
  });

  step("bob drops off the network and comes back: reconnects, rooms and messages work", async (t) => {
    const alice = page("alice");
    const bob = page("bob");
    // The network goes: bob's page cannot reach anything, his WebSocket is reset on both ends.
    await users.bob.context.setOffline(true);
    proxy.block("bob");
    await bob.waitForSelector("#conn-state[data-state=disconnected]");
    await alice.waitForSelector('#users li[data-user="bob"]', { state: "detached" });
    await shot("04-bob-offline");
    // A message to bob while he is away waits in impush's offline inbox: alice's page says
    // "stored".
    await sendDm("alice", "bob", "are you there?");
    const away = await alice.waitForSelector('#dm-log li[data-dir=out][data-status=stored]');
    const awayId = await away.getAttribute("data-id");

    proxy.unblock("bob");
    await users.bob.context.setOffline(false);
    await bob.waitForSelector("#conn-state[data-state=connected]");
    await waitFor("bob to have exactly one connection through the proxy", () => proxy.count("bob") === 1);
    await alice.waitForSelector('#users li[data-user="bob"]');
    t.diagnostic("bob reconnected");
    // The stored message is pushed when bob's page connects; his page acks it on display.
    await bob.waitForSelector(`#dm-log li[data-dir=in][data-id="${awayId}"]:has(.text:text-is("are you there?"))`);
    await alice.waitForSelector(`#dm-log li[data-id="${awayId}"][data-status=acked]`);

    await sendDm("alice", "bob", "welcome back");
    const got = await bob.waitForSelector('#dm-log li[data-dir=in][data-from=alice][data-acked=true]:has(.text:text-is("welcome back"))');
    const id = await got.getAttribute("data-id");
    await alice.waitForSelector(`#dm-log li[data-id="${id}"][data-status=acked]`);
    // Room membership survived the drop (impush ends it with the last connection; the backend
    // restores it from its own record).
    await alice.selectOption("#room-select", "lobby");
    await alice.fill("#room-text", "bob is back");
    await alice.click("#room-send");
    await bob.waitForSelector('#room-log li[data-from=alice]:has(.text:text-is("bob is back"))');
    await shot("05-bob-back");
  });

  step("bob misses private and room messages while offline: each shows up once when he is back, the room resumed by the client", async () => {
    const alice = page("alice");
    const bob = page("bob");
    await goOffline("bob");
    await sendDm("alice", "bob", "missed dm 1");
    await sendDm("alice", "bob", "missed dm 2");
    const missedRoom = ["missed room 1", "missed room 2"]; // fewer than HISTORY
    for (const text of missedRoom) await sendRoom("alice", "lobby", text);
    for (const text of missedRoom) await alice.waitForSelector(`#room-log li[data-from=alice]:has(.text:text-is("${text}"))`);
    await alice.waitForSelector('#dm-log li[data-dir=out][data-status=stored]:has(.text:text-is("missed dm 2"))');
    await shot("06-bob-misses-messages");

    const reloads = watchRoomReloads("bob");
    const resumesBefore = resumeEvents("bob").length;
    await comeBack("bob");
    for (const text of ["missed dm 1", "missed dm 2"]) {
      await bob.waitForSelector(`#dm-log li[data-dir=in]:has(.text:text-is("${text}"))`);
    }
    for (const text of missedRoom) await bob.waitForSelector(`#room-log li[data-from=alice]:has(.text:text-is("${text}"))`);
    // The node answered the client's resume request for the room: both missed messages came back
    // through the WebSocket, not from the backend.
    await waitFor("bob's resume event for #lobby", () => resumeEvents("bob").slice(resumesBefore).some((r) => r.channel === "lobby"));
    const lobby = resumeEvents("bob").slice(resumesBefore).filter((r) => r.channel === "lobby");
    assert.deepEqual(lobby, [{ type: "resume", channel: "lobby", broadcast: false, recovered: true, replayed: missedRoom.length }]);
    await alice.waitForSelector('#dm-log li[data-dir=out][data-status=acked]:has(.text:text-is("missed dm 2"))');
    // Settled: a late duplicate would have had the time to arrive.
    await sendRoom("alice", "lobby", "after the drop");
    await bob.waitForSelector('#room-log li[data-from=alice]:has(.text:text-is("after the drop"))');
    reloads.stop();
    assert.deepEqual(reloads.seen, [], "the resumed room was not reloaded from the backend");
    for (const text of ["missed dm 1", "missed dm 2"]) assert.equal(await countText(bob, "#dm-log", text), 1, text);
    for (const text of [...missedRoom, "after the drop"]) assert.equal(await countText(bob, "#room-log", text), 1, text);
    const order = await bob.$$eval("#room-log li .text", (els) => els.map((e) => e.textContent));
    assert.deepEqual(order.slice(-3), [...missedRoom, "after the drop"]);
    assert.equal(await bob.locator("#room-log li.note").count(), 0, "no note: nothing was lost");
    await shot("07-bob-resumed");
  });

  step("more room messages than the node keeps: bob's page says so and reloads the room from the backend", async () => {
    const alice = page("alice");
    const bob = page("bob");
    await goOffline("bob");
    const missed = Array.from({ length: HISTORY + 2 }, (_, i) => `burst ${i + 1}`);
    for (const text of missed) await sendRoom("alice", "lobby", text);
    await alice.waitForSelector(`#room-log li[data-from=alice]:has(.text:text-is("${missed.at(-1)}"))`);

    const reloads = watchRoomReloads("bob");
    const resumesBefore = resumeEvents("bob").length;
    await comeBack("bob");
    const note = await bob.waitForSelector("#room-log li.note[data-room=lobby]");
    assert.match(await note.textContent(), /could not be recovered/);
    for (const text of missed) await bob.waitForSelector(`#room-log li[data-from=alice]:has(.text:text-is("${text}"))`);
    const lobby = resumeEvents("bob").slice(resumesBefore).filter((r) => r.channel === "lobby");
    assert.equal(lobby.length, 1);
    assert.equal(lobby[0].recovered, false);
    assert.equal(await note.getAttribute("data-reason"), lobby[0].reason);
    await sendRoom("alice", "lobby", "after the burst");
    await bob.waitForSelector('#room-log li[data-from=alice]:has(.text:text-is("after the burst"))');
    reloads.stop();
    assert.ok(reloads.seen.includes("lobby"), "the room was reloaded from the backend");
    for (const text of [...missed, "after the burst"]) assert.equal(await countText(bob, "#room-log", text), 1, text);
    await shot("08-bob-room-not-recovered");
  });

  step("alice kicks bob: bob's page says so and stays disconnected", async () => {
    const alice = page("alice");
    const bob = page("bob");
    const connects = [];
    bob.on("request", (r) => {
      if (new URL(r.url()).pathname === "/im/connect") connects.push(r.url());
    });
    await alice.click('#users li[data-user="bob"] button[data-action=kick]');
    await bob.waitForSelector("#banner[data-kind=kicked]:not([hidden])");
    await bob.waitForSelector('#conn-state[data-state=disconnected][data-code="4001"][data-will-reconnect=false]');
    await alice.waitForSelector('#users li[data-user="bob"]', { state: "detached" });
    await shot("09-kicked");
    // Hold: the client's first retry would come within backoffBase (1 s); give it 3 s.
    await new Promise((r) => setTimeout(r, 3000));
    assert.equal(await bob.getAttribute("#conn-state", "data-state"), "disconnected");
    assert.deepEqual(connects, [], "a kicked page must not ask for a new connect URL");
  });
});
