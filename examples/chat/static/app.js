// The chat page. Every action is an HTTP call to the business backend; the impush WebSocket
// (impush-client) only brings pushes: messages, receipts, room messages, presence broadcasts.
import { ImpushClient, CloseCodes } from "/impush-client.js";

const $ = (id) => document.getElementById(id);

let session = null; // { token, user }: in memory only, so two tabs can be two users
let im = null;
let connectedBefore = false; // this client was connected once: the next "connected" is a reconnect
let presenceSeq = -1;
const sent = new Map(); // my private messages: id -> <li>
const earlyReceipts = new Map(); // receipts that came before the POST /api/send answer
const shown = new Set(); // ids of messages on screen (history and pushes may overlap)
const RANK = { sent: 0, offline: 1, stored: 2, delivered: 3, acked: 4 };

// Optional knob for slow networks and tests: ?ping=MS sets the client's ping interval and pong
// timeout (defaults 20 s / 10 s).
const params = new URLSearchParams(location.search);
const pingMs = Number(params.get("ping")) || undefined;

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const headers = {};
  if (session) headers.Authorization = `Bearer ${session.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  let json = null;
  try {
    json = await res.json();
  } catch {
    // not JSON: reported below by status
  }
  if (!res.ok) throw new ApiError(res.status, json?.error ?? "http", json?.message ?? res.statusText);
  return json;
}

function banner(kind, text) {
  const b = $("banner");
  b.hidden = !text;
  b.dataset.kind = kind ?? "";
  b.textContent = text ?? "";
}

function showError(e) {
  banner("error", e instanceof ApiError ? `${e.message} (${e.status})` : String(e?.message ?? e));
}

// ---- login / logout -------------------------------------------------------------------------

$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    const res = await api("POST", "/api/login", { name: $("login-name").value });
    start(res);
  } catch (e) {
    showError(e);
  }
});

$("logout").addEventListener("click", async () => {
  try {
    await api("POST", "/api/logout");
  } catch {
    // the session may already be gone; log out locally anyway
  }
  stop();
  banner();
});

function start({ token, user }) {
  session = { token, user };
  presenceSeq = -1;
  banner();
  $("me").textContent = user;
  $("whoami").hidden = false;
  $("login-view").hidden = true;
  $("chat-view").hidden = false;
  $("chat-view").classList.remove("inert");
  for (const id of ["dm-log", "room-log", "users", "rooms"]) $(id).replaceChildren();
  sent.clear();
  earlyReceipts.clear();
  shown.clear();
  connectedBefore = false;

  im = new ImpushClient({
    getUrl,
    ...(pingMs ? { pingInterval: pingMs, pongTimeout: pingMs } : {}),
  });
  im.on("state", onState);
  im.on("message", onMessage);
  im.on("receipt", (r) => applyReceipt(r.id, r.status));
  im.on("channel", (m) => addRoomMessage({ id: m.id, room: m.channel, from: m.from, text: m.data?.text, ts: m.ts }));
  im.on("broadcast", onBroadcast);
  im.on("resume", onResume);
  im.on("error", (e) => console.warn("impush:", e.kind, e.message));
}

// The browser says the network is back: try now instead of waiting out the client's backoff
// (which grows to 30 s after a longer outage). close() + connect() restarts it with no delay.
window.addEventListener("online", () => {
  if (im && session && im.state !== "connected") {
    im.close();
    im.connect();
  }
});

function stop() {
  im?.close();
  im = null;
  session = null;
  $("whoami").hidden = true;
  $("chat-view").hidden = true;
  $("login-view").hidden = false;
  setConnState({ state: "disconnected" });
}

// A fresh single-use URL for every (re)connect attempt.
async function getUrl() {
  try {
    return (await api("GET", "/im/connect")).url;
  } catch (e) {
    if (e.status === 401 && im) {
      // The backend ended the session: stop retrying. Deferred: we are inside the client.
      const dead = im;
      setTimeout(() => {
        if (im === dead && $("banner").dataset.kind !== "kicked") {
          dead.close();
          banner("session", "Your session ended. Log in again.");
        }
      });
    }
    throw e;
  }
}

// ---- connection state -----------------------------------------------------------------------

function setConnState(s) {
  const el = $("conn-state");
  el.dataset.state = s.state;
  if (s.code !== undefined) el.dataset.code = String(s.code);
  else delete el.dataset.code;
  if (s.willReconnect !== undefined) el.dataset.willReconnect = String(s.willReconnect);
  else delete el.dataset.willReconnect;
  let text = s.state;
  if (s.state === "disconnected" && s.code !== undefined) text += ` (${s.code}${s.reason ? `: ${s.reason}` : ""})`;
  if (s.state === "disconnected" && s.willReconnect) text += ", retrying";
  el.textContent = text;
}

function onState(s) {
  setConnState(s);
  // What the page shows is only live while connected.
  $("people").classList.toggle("stale", s.state !== "connected");
  if (s.state === "connected") {
    // Catch up on whatever changed while the socket was down. Room messages come back by
    // themselves for the rooms the client resumes (its `resume` events say how that went); the
    // others, and every room on a first connect, are loaded from the backend.
    const resumed = connectedBefore ? new Set(s.resuming?.channels ?? []) : new Set();
    connectedBefore = true;
    refreshUsers();
    refreshRooms().then(() => catchUpRooms(resumed));
  } else if (s.state === "disconnected" && s.code === CloseCodes.KICKED) {
    session = null; // the backend revoked it
    $("chat-view").classList.add("inert");
    banner("kicked", "You were kicked by an admin. Log in again to come back.");
    const again = document.createElement("button");
    again.id = "login-again";
    again.dataset.testid = "login-again";
    again.textContent = "Log in again";
    again.addEventListener("click", () => {
      stop();
      banner();
    });
    $("banner").append(" ", again);
  } else if (s.state === "disconnected" && s.code === CloseCodes.REPLACED) {
    banner("replaced", "This connection was replaced by a newer one.");
  }
}

// ---- presence -------------------------------------------------------------------------------

async function refreshUsers() {
  try {
    applyPresence(await api("GET", "/api/users"));
  } catch (e) {
    if (e.status !== 401) showError(e);
  }
}

function applyPresence({ seq, users }) {
  if (seq <= presenceSeq) return; // an older view than the one shown
  presenceSeq = seq;
  $("online-count").textContent = String(users.length);
  const list = $("users");
  list.replaceChildren(
    ...users.map((u) => {
      const li = document.createElement("li");
      li.dataset.user = u;
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = u === session?.user ? `${u} (you)` : u;
      li.append(name);
      if (u !== session?.user) {
        li.append(button("Message", "dm", () => {
          $("dm-to").value = u;
          $("dm-text").focus();
        }));
        li.append(button("Kick", "kick", () => kick(u)));
      }
      return li;
    }),
  );
  $("dm-to-list").replaceChildren(
    ...users.filter((u) => u !== session?.user).map((u) => Object.assign(document.createElement("option"), { value: u })),
  );
}

function button(label, action, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.dataset.action = action;
  b.addEventListener("click", onClick);
  return b;
}

async function kick(user) {
  try {
    await api("POST", "/api/kick", { user });
  } catch (e) {
    showError(e);
  }
}

function onBroadcast(b) {
  const d = b.data ?? {};
  if (d.kind === "presence") {
    applyPresence(d);
    refreshRooms(); // online counts
  } else if (d.kind === "rooms") {
    refreshRooms();
  }
}

// ---- private messages -----------------------------------------------------------------------

$("dm-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const to = $("dm-to").value.trim();
  const text = $("dm-text").value;
  try {
    const res = await api("POST", "/api/send", { to, text });
    $("dm-text").value = "";
    const li = addDm({ id: res.id, from: session.user, to: res.to, text: res.text, ts: res.ts, out: true });
    sent.set(res.id, li);
    for (const status of earlyReceipts.get(res.id) ?? []) applyReceipt(res.id, status);
    earlyReceipts.delete(res.id);
  } catch (e) {
    showError(e);
  }
});

function onMessage(m) {
  const d = m.data ?? {};
  if (d.kind !== "chat") return;
  const li = addDm({ id: m.id, from: m.from, to: session?.user, text: d.text, ts: m.ts, out: false });
  // Acked once it is on screen: the sender's page turns the message to "acked".
  if (m.receipt && im?.ack(m.id)) li.dataset.acked = "true";
}

function addDm({ id, from, to, text, ts, out }) {
  const li = document.createElement("li");
  li.dataset.id = id;
  li.dataset.from = from;
  li.dataset.to = to;
  li.dataset.dir = out ? "out" : "in";
  li.append(meta(ts, out ? `me → ${to}` : `${from} → me`), textSpan(text));
  if (out) {
    li.dataset.status = "sent";
    li.dataset.receipts = "";
    const st = document.createElement("span");
    st.className = "status";
    st.textContent = "sent";
    li.append(st);
  }
  $("dm-log").append(li);
  li.scrollIntoView({ block: "nearest" });
  return li;
}

function applyReceipt(id, status) {
  const li = sent.get(id);
  if (!li) {
    // The push overtook the HTTP answer: keep it for when the id is known.
    if (!earlyReceipts.has(id)) earlyReceipts.set(id, []);
    earlyReceipts.get(id).push(status);
    return;
  }
  li.dataset.receipts = `${li.dataset.receipts} ${status}`.trim();
  // Receipts can settle in any order across nodes; show the furthest one.
  if ((RANK[status] ?? 0) >= (RANK[li.dataset.status] ?? 0)) {
    li.dataset.status = status;
    li.querySelector(".status").textContent = status === "acked" ? "acked ✓✓" : status === "delivered" ? "delivered ✓" : status;
  }
}

// ---- rooms ----------------------------------------------------------------------------------

$("room-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  await joinRoom($("room-name").value.trim());
  $("room-name").value = "";
});

$("room-send-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    await api("POST", "/api/rooms/send", { room: $("room-select").value, text: $("room-text").value });
    $("room-text").value = ""; // shown when the push arrives: channel messages reach the sender too
  } catch (e) {
    showError(e);
  }
});

async function joinRoom(room) {
  try {
    const res = await api("POST", "/api/rooms/join", { room });
    for (const m of res.history) addRoomMessage(m);
    await refreshRooms();
    $("room-select").value = res.room;
  } catch (e) {
    showError(e);
  }
}

async function leaveRoom(room) {
  try {
    await api("POST", "/api/rooms/leave", { room });
    await refreshRooms();
  } catch (e) {
    showError(e);
  }
}

let roomsShown = [];
let roomsRequest = 0;

async function refreshRooms() {
  if (!session) return;
  const mine = ++roomsRequest;
  let rooms;
  try {
    ({ rooms } = await api("GET", "/api/rooms"));
  } catch (e) {
    if (e.status !== 401) showError(e);
    return;
  }
  if (mine !== roomsRequest) return; // a newer answer is on its way (or shown)
  roomsShown = rooms;
  $("rooms").replaceChildren(
    ...rooms.map((r) => {
      const li = document.createElement("li");
      li.dataset.room = r.name;
      li.dataset.joined = String(r.joined);
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = `#${r.name}`;
      const counts = document.createElement("span");
      counts.className = "counts";
      counts.textContent = `${r.members} members, ${r.online} online`;
      li.append(name, counts, r.joined ? button("Leave", "leave", () => leaveRoom(r.name)) : button("Join", "join", () => joinRoom(r.name)));
      return li;
    }),
  );
  const select = $("room-select");
  const current = select.value;
  const joined = rooms.filter((r) => r.joined).map((r) => r.name);
  select.replaceChildren(...joined.map((n) => Object.assign(document.createElement("option"), { value: n, textContent: `#${n}` })));
  if (joined.includes(current)) select.value = current;
}

// After a (re)connect: load the recent messages of the joined rooms the client is not resuming.
async function catchUpRooms(resumed) {
  for (const r of roomsShown.filter((r) => r.joined && !resumed.has(r.name))) await reloadRoom(r.name);
}

// The backend keeps each room's last messages; shown ones are skipped by id.
async function reloadRoom(room) {
  try {
    const { history } = await api("GET", `/api/rooms/${encodeURIComponent(room)}/messages`);
    for (const m of history) addRoomMessage(m);
  } catch {
    // left meanwhile
  }
}

// The node's answer for each stream the client asked to resume after a reconnect. Recovered:
// the missed messages were pushed just before, nothing to do. Not recovered (too old for the
// node's history, or the history was lost): say so and reload the room from the backend.
function onResume(r) {
  console.info("impush resume", JSON.stringify(r));
  if (r.recovered || r.broadcast) return; // presence and the room list are fetched on connect anyway
  const rooms = r.channel !== null ? [r.channel] : roomsShown.filter((x) => x.joined).map((x) => x.name);
  for (const room of rooms) {
    addRoomNote(room, r.reason, `#${room}: some messages sent while you were away could not be recovered; showing the room's recent messages instead.`);
    reloadRoom(room);
  }
}

function addRoomNote(room, reason, text) {
  const li = document.createElement("li");
  li.className = "note";
  li.dataset.room = room;
  li.dataset.reason = String(reason ?? "");
  li.dataset.ts = String(Date.now());
  li.textContent = text;
  $("room-log").append(li);
  li.scrollIntoView({ block: "nearest" });
}

function addRoomMessage({ id, room, from, text, ts }) {
  if (shown.has(id)) return;
  shown.add(id);
  const li = document.createElement("li");
  li.dataset.id = id;
  li.dataset.room = room;
  li.dataset.from = from;
  li.dataset.ts = String(ts);
  li.append(meta(ts, `#${room} ${from}`), textSpan(text));
  // In time order: history fetched after a reconnect may be older than pushes already shown.
  const log = $("room-log");
  const later = [...log.children].find((c) => Number(c.dataset.ts) > ts);
  log.insertBefore(li, later ?? null);
  li.scrollIntoView({ block: "nearest" });
}

// ---- bits -----------------------------------------------------------------------------------

function meta(ts, who) {
  const s = document.createElement("span");
  s.className = "meta";
  const t = new Date(ts).toLocaleTimeString();
  s.textContent = `${t} ${who}:`;
  return s;
}

function textSpan(text) {
  const s = document.createElement("span");
  s.className = "text";
  s.textContent = String(text ?? "");
  return s;
}
