// Browser end-to-end test of the admin console, as a new user meets it: the real `impush`
// binary on the embedded default (no configuration), the admin secret it prints, the system
// Chromium. A test client connects with a URL from POST /api/v1/connect (the printed API key);
// the console shows it, kicks it, and its live feed shows the client going offline.
//
// Run with `npm ci && npm test` in this directory after `cargo build -p impush-server --bin impush`.
// Env: IMPUSH_BIN (default <repo>/target/debug/impush), E2E_OUT (default ./out: screenshots and
// logs), CHROMIUM (default /usr/bin/chromium).
//
// Every wait is a condition with a deadline (Playwright's waitForSelector / waitForFunction).

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, "../..");
const IMPUSH_BIN = process.env.IMPUSH_BIN || path.join(repo, "target/debug/impush");
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

let node; // { proc, base, apiKey, adminSecret, logs }
let browser;
let admin; // { context, page, console: [] }
let device; // the test client's page: { context, page, console: [] }
let broken = null; // the first failed step: later steps depend on it and are skipped

// ---- helpers --------------------------------------------------------------------------------

/** Starts the binary with no configuration at all and reads what it prints. */
function startNode() {
  return new Promise((resolve, reject) => {
    const proc = spawn(IMPUSH_BIN, [], {
      env: {
        ...process.env,
        RUST_LOG: process.env.RUST_LOG || "info",
        // The one thing changed from the embedded default: a free port.
        IMPUSH_NODE__LISTEN: "127.0.0.1:0",
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const logs = [];
    let out = "";
    let done = false;
    const timer = setTimeout(() => finish(new Error(`impush printed no console line within 20 s:\n${logs.join("")}`)), 20_000);
    function finish(err, value) {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (err) {
        proc.kill("SIGKILL");
        reject(err);
      } else resolve(value);
    }
    proc.on("error", (e) => finish(new Error(`cannot start ${IMPUSH_BIN} (build it: cargo build -p impush-server --bin impush): ${e.message}`)));
    proc.on("exit", (code, signal) => {
      logs.push(`[exit ${code ?? signal}]\n`);
      finish(new Error(`impush exited (${code ?? signal}) early:\n${logs.join("")}`));
    });
    proc.stderr.on("data", (d) => logs.push(d.toString()));
    proc.stdout.on("data", (d) => {
      logs.push(d.toString());
      out += d.toString();
      const console = /^admin console at (http:\/\/\S+)\/admin$/m.exec(out);
      if (!console) return;
      const apiKey = /^generated auth\.api_key = (\S+)/m.exec(out);
      const adminSecret = /^generated admin\.secret = (\S+)/m.exec(out);
      if (!apiKey || !adminSecret) return finish(new Error(`the embedded default printed no generated credentials:\n${out}`));
      finish(null, { proc, base: console[1], apiKey: apiKey[1], adminSecret: adminSecret[1], logs });
    });
  });
}

// Last resort if the test runner itself is interrupted: never leave the node running.
process.on("exit", () => node?.proc.kill("SIGKILL"));

async function stopNode() {
  if (!node || node.proc.exitCode !== null || node.proc.signalCode !== null) return;
  const exited = new Promise((r) => node.proc.once("exit", r));
  node.proc.kill("SIGTERM");
  const t = setTimeout(() => node.proc.kill("SIGKILL"), 10_000);
  await exited;
  clearTimeout(t);
}

/** The node's HTTP API with the printed key. */
async function api(method, route, body) {
  const r = await fetch(`${node.base}${route}`, {
    method,
    headers: { Authorization: `Bearer ${node.apiKey}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await r.json();
  assert.equal(r.status, 200, `${method} ${route}: ${JSON.stringify(data)}`);
  return data;
}

async function newPage(who) {
  const context = await browser.newContext({ viewport: { width: 1200, height: 470 } });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT);
  const log = [];
  page.on("console", (m) => log.push(`[${m.type()}] ${m.text()}`));
  page.on("pageerror", (e) => log.push(`[pageerror] ${e.message}`));
  return { who, context, page, console: log };
}

async function shot(name) {
  mkdirSync(OUT, { recursive: true });
  if (admin?.page && !admin.page.isClosed()) await admin.page.screenshot({ path: path.join(OUT, `${name}.png`) });
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
      await shot("failed").catch(() => {});
      throw e;
    }
  });
}

// ---- the scenario ---------------------------------------------------------------------------

describe("admin console in Chromium", { timeout: 120_000 }, () => {
  before(async () => {
    node = await startNode();
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true });
    admin = await newPage("admin");
    device = await newPage("device");
  });

  after(async () => {
    try {
      await browser?.close();
    } finally {
      await stopNode();
      mkdirSync(OUT, { recursive: true });
      writeFileSync(path.join(OUT, "impush.log"), node?.logs.join("") ?? "");
      for (const p of [admin, device]) if (p) writeFileSync(path.join(OUT, `console-${p.who}.log`), p.console.join("\n"));
    }
  });

  step("the console asks for the admin secret and refuses a wrong one", async () => {
    const p = admin.page;
    await p.goto(`${node.base}/admin`);
    await p.waitForSelector("#login-view:not([hidden])");
    assert.equal(await p.isHidden("#console-view"), true);
    // The API key is not the admin secret.
    await p.fill("#login-secret", node.apiKey);
    await p.click("#login-btn");
    const err = await p.waitForSelector("#login-error:not([hidden])");
    assert.match(await err.textContent(), /Wrong admin secret/);
    await shot("01-login-refused");
  });

  step("logging in with the printed admin secret opens the cluster view", async () => {
    const p = admin.page;
    await p.fill("#login-secret", node.adminSecret);
    await p.click("#login-btn");
    await p.waitForSelector("#console-view:not([hidden])");
    await p.waitForSelector('#nodes tr[data-node="n1"][data-status="live"]');
    assert.equal(await p.textContent("#whoami"), "node n1");
    await p.waitForSelector('#feed-state[data-state="connected"]');
    // The session cookie is out of the page's reach and never goes to another site.
    assert.equal(await p.evaluate(() => document.cookie.includes("impush_admin")), false);
    const [cookie] = (await admin.context.cookies()).filter((c) => c.name === "impush_admin");
    assert.ok(cookie, "the session cookie is set");
    assert.equal(cookie.httpOnly, true);
    assert.equal(cookie.sameSite, "Strict");
    assert.equal(cookie.path, "/admin");
  });

  step("a test client connects: the console shows it, its node's sockets and the online event", async () => {
    const { url } = await api("POST", "/api/v1/connect", { client_id: "alice", metadata: { device: "e2e" } });
    const d = device.page;
    await d.goto(`${node.base}/healthz`);
    await d.evaluate(
      (u) =>
        new Promise((resolve, reject) => {
          const ws = new WebSocket(u);
          window.closeCode = null;
          ws.onopen = () => resolve();
          ws.onerror = () => reject(new Error("the WebSocket did not open"));
          ws.onclose = (ev) => (window.closeCode = ev.code);
        }),
      url,
    );
    const p = admin.page;
    await p.waitForSelector('#clients a[data-client="alice"]');
    await p.waitForSelector('#events li[data-type="online"][data-client="alice"]');
    await p.waitForFunction(() => document.querySelector('#nodes tr[data-node="n1"] td:nth-child(4)')?.textContent === "1");
    // Some traffic for the messages-per-second column.
    for (let i = 0; i < 25; i++) await api("POST", "/api/v1/messages", { from: "backend", to: ["alice"], data: { n: i } });
    await p.waitForFunction(() => Number(document.querySelector('#nodes tr[data-node="n1"] td:nth-child(6)')?.textContent) > 0);
    await shot("02-cluster");
  });

  step("the channels page lists channels with member and online counts, and a channel's members", async () => {
    await api("POST", "/api/v1/channels/lobby/members", { client_ids: ["alice", "bob"] });
    await api("POST", "/api/v1/channels/support/members", { client_ids: ["alice"] });
    const p = admin.page;
    await p.click('#nav a[data-page="channels"]');
    const lobby = await p.waitForSelector('#channels tr[data-channel="lobby"]');
    assert.deepEqual(await lobby.$$eval("td", (tds) => tds.map((td) => td.textContent)), ["lobby", "2", "1"]);
    await p.waitForSelector('#channels tr[data-channel="support"]');
    await p.click('#channels tr[data-channel="lobby"] a');
    await p.waitForSelector('#members li[data-online="true"] a[data-client="alice"]');
    await p.waitForSelector('#members li[data-online="false"] a[data-client="bob"]');
    assert.equal(await p.textContent("#channel-counts"), "2 members, 1 online");
    await shot("03-channel");
  });

  step("the client page shows its connections, node and channels", async () => {
    const p = admin.page;
    await p.click('#members a[data-client="alice"]');
    await p.waitForSelector('#page[data-page="client"][data-loaded="true"]');
    await p.waitForSelector('#client-online[data-state="online"]');
    assert.equal(await p.textContent("#client-id"), "alice");
    assert.equal(await p.textContent("#client-connections"), "1");
    assert.match(await p.textContent("#client-node"), /^n1 live$/);
    assert.match(await p.textContent("#client-inbox"), /^off/);
    assert.deepEqual(await p.$$eval("#client-channels li", (lis) => lis.map((li) => li.textContent)), ["lobby", "support"]);
    await shot("04-client");
  });

  step("kicking it closes its socket with 4001 and the feed shows it going offline", async () => {
    const p = admin.page;
    await p.click("#kick");
    await p.click("#kick-yes");
    await p.waitForSelector('#kick-result[data-kicked="1"]');
    await device.page.waitForFunction(() => window.closeCode === 4001);
    const offline = await p.waitForSelector('#events li[data-type="offline"][data-client="alice"]');
    assert.match(await offline.textContent(), /last connection/);
    await p.waitForSelector('#client-online[data-state="offline"]');
    assert.equal(await p.textContent("#client-connections"), "0");
    await shot("05-kicked");
    const online = await api("GET", "/api/v1/clients/alice");
    assert.equal(online.online, false);
  });

  step("the page ran without script errors or blocked resources, and logging out ends the session", async () => {
    const bad = admin.console.filter((l) => l.startsWith("[pageerror]") || /Content Security Policy|Refused to/.test(l));
    assert.deepEqual(bad, []);
    const p = admin.page;
    await p.click("#logout");
    await p.waitForSelector("#login-view:not([hidden])");
    const status = await p.evaluate(async () => (await fetch("/admin/api/session")).status);
    assert.equal(status, 401);
  });
});
