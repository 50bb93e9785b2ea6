// The impush admin console: plain JavaScript, no framework, no build step. Every piece of
// data goes into the page as text (textContent), never as HTML.
//
// The session cookie is HttpOnly, so this script never sees it; it keeps the session's CSRF
// token (from the login answer, or GET /admin/api/session after a reload) and sends it in
// X-CSRF-Token with every action.
"use strict";

const API = "/admin/api";
const REFRESH_MS = 2000;
const MAX_EVENTS = 200;

let csrf = null;
let timer = null;
let feed = null;

const $ = (sel, root = document) => root.querySelector(sel);

/** An element with text and attributes; children may be elements or strings. */
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null) continue;
    if (k === "text") e.textContent = String(v);
    else e.setAttribute(k, String(v));
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function badge(state) {
  return el("span", { class: "badge", "data-state": state, text: state });
}

function clientLink(id) {
  return el("a", { href: `#/client/${encodeURIComponent(id)}`, "data-client": id, text: id });
}

function banner(text) {
  const b = $("#banner");
  b.textContent = text || "";
  b.hidden = !text;
}

class Unauthorized extends Error {}

/** Calls the admin API; a 401 means the session is gone. */
async function api(path, { method = "GET", body } = {}) {
  const headers = {};
  if (method !== "GET") headers["X-CSRF-Token"] = csrf || "";
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(API + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
    cache: "no-store",
  });
  let data = null;
  try {
    data = await r.json();
  } catch {
    data = null;
  }
  if (r.status === 401 && path !== "/login") throw new Unauthorized();
  if (!r.ok) {
    const err = new Error((data && data.message) || `HTTP ${r.status}`);
    err.status = r.status;
    err.code = data && data.error;
    err.retryAfter = r.headers.get("Retry-After");
    throw err;
  }
  return data;
}

// ---- login ----------------------------------------------------------------------------------

function showLogin(message) {
  stopPage();
  stopFeed();
  csrf = null;
  $("#console-view").hidden = true;
  $("#nav").hidden = true;
  $("#logout").hidden = true;
  $("#whoami").hidden = true;
  $("#login-view").hidden = false;
  const err = $("#login-error");
  err.textContent = message || "";
  err.hidden = !message;
  $("#login-secret").focus();
}

function showConsole(session) {
  csrf = session.csrf_token;
  $("#login-view").hidden = true;
  $("#console-view").hidden = false;
  $("#nav").hidden = false;
  $("#logout").hidden = false;
  const who = $("#whoami");
  who.textContent = `node ${session.node}`;
  who.hidden = false;
  startFeed();
  route();
}

async function login(ev) {
  ev.preventDefault();
  const secret = $("#login-secret").value;
  try {
    const session = await api("/login", { method: "POST", body: { secret } });
    $("#login-secret").value = "";
    showConsole(session);
  } catch (e) {
    if (e.status === 429) showLogin(`Too many attempts: wait ${e.retryAfter || "a few"} s and try again.`);
    else if (e.status === 401) showLogin("Wrong admin secret.");
    else showLogin(e.message);
  }
}

async function logout() {
  try {
    await api("/logout", { method: "POST" });
  } catch {
    // The session may be gone already; the login form is what follows either way.
  }
  showLogin("Logged out.");
}

// ---- pages ----------------------------------------------------------------------------------

function stopPage() {
  if (timer) clearTimeout(timer);
  timer = null;
}

/** Renders a page from its template and refreshes it every REFRESH_MS while it is shown. */
function mount(name, refresh) {
  stopPage();
  const page = $("#page");
  page.replaceChildren($(`#tpl-${name}`).content.cloneNode(true));
  page.dataset.page = name;
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.page === name || (name === "client" && a.dataset.page === "cluster") || (name === "channel" && a.dataset.page === "channels")) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const mine = page.firstElementChild;
  const tick = async () => {
    if (!mine.isConnected) return;
    try {
      await refresh(page);
      banner("");
      page.dataset.loaded = "true";
    } catch (e) {
      if (e instanceof Unauthorized) return showLogin("Your session ended; log in again.");
      banner(e.message);
    }
    if (mine.isConnected) timer = setTimeout(tick, REFRESH_MS);
  };
  tick();
}

function fmtUptime(s) {
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : `${m}m ${s % 60}s`;
}

async function clusterPage(page) {
  const [cluster, clients] = await Promise.all([api("/cluster"), api("/clients")]);
  const rows = cluster.nodes.map((n) => {
    const s = n.stats;
    const cells = s
      ? [s.version, s.connections, s.clients, s.messages_per_second ?? "…", fmtUptime(s.uptime_s)]
      : [n.error ? el("span", { class: "error", text: n.error }) : "—", "", "", "", ""];
    const tr = el("tr", { "data-node": n.id, "data-status": n.status },
      el("td", {}, el("strong", { text: n.id }), n.id === cluster.node ? el("span", { class: "muted", text: " (this node)" }) : ""),
      el("td", {}, badge(n.status)));
    cells.forEach((c, i) => tr.append(el("td", { class: i > 0 && s ? "num" : undefined }, c)));
    tr.append(el("td", { class: "muted", text: n.url }));
    return tr;
  });
  $("#nodes tbody", page).replaceChildren(...rows);
  const live = cluster.nodes.filter((n) => n.status === "live").length;
  $("#nodes-note", page).textContent = `${live} of ${cluster.nodes.length} nodes live`;
  $("#clients-total", page).textContent = `(${clients.total}${clients.total > clients.clients.length ? `, first ${clients.clients.length} shown` : ""})`;
  $("#clients", page).replaceChildren(...clients.clients.map((c) => el("li", {}, clientLink(c))));
}

function clientPage(id) {
  return async (page) => {
    const c = await api(`/clients/${encodeURIComponent(id)}`);
    $("#client-id", page).textContent = c.client_id;
    const on = $("#client-online", page);
    on.dataset.state = c.online ? "online" : "offline";
    on.textContent = c.online ? "online" : "offline";
    $("#client-connections", page).textContent = String(c.connections);
    $("#client-node", page).replaceChildren(el("span", { text: `${c.node} ` }), badge(c.node_status));
    $("#client-channels", page).replaceChildren(
      ...(c.channels.length
        ? c.channels.map((ch) => el("li", {}, el("a", { href: `#/channel/${encodeURIComponent(ch)}`, text: ch })))
        : [el("li", { class: "muted", text: "none" })]));
    const inbox = c.inbox;
    $("#client-inbox", page).textContent = !inbox.enabled
      ? "off ([offline] enabled = false)"
      : inbox.kept_by
        ? `kept by node ${inbox.kept_by}: open its console`
        : `${inbox.count} waiting, ${inbox.bytes} bytes${inbox.oldest_ts ? `, oldest ${new Date(inbox.oldest_ts).toLocaleString()}` : ""}`;
    if (c.partial) banner(`Partial answer: nodes ${c.partial.join(", ")} did not answer.`);
  };
}

function wireKick(page, id) {
  const confirmBox = $("#kick-confirm", page);
  $("#kick", page).addEventListener("click", () => (confirmBox.hidden = false));
  $("#kick-no", page).addEventListener("click", () => (confirmBox.hidden = true));
  $("#kick-yes", page).addEventListener("click", async () => {
    confirmBox.hidden = true;
    const result = $("#kick-result", page);
    try {
      const r = await api(`/clients/${encodeURIComponent(id)}/kick`, { method: "POST" });
      result.textContent = `Kicked ${r.kicked} connection${r.kicked === 1 ? "" : "s"}.`;
      result.dataset.kicked = String(r.kicked);
    } catch (e) {
      if (e instanceof Unauthorized) return showLogin("Your session ended; log in again.");
      result.textContent = `Kick failed: ${e.message}`;
    }
  });
}

async function channelsPage(page) {
  const r = await api("/channels");
  $("#channels-total", page).textContent = `(${r.total})`;
  const rows = r.channels.map((c) =>
    el("tr", { "data-channel": c.name },
      el("td", {}, el("a", { href: `#/channel/${encodeURIComponent(c.name)}`, text: c.name })),
      el("td", { class: "num", text: c.members }),
      el("td", { class: "num", text: c.online })));
  $("#channels tbody", page).replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { class: "muted", colspan: 3, text: "no channels" }))]));
}

function channelPage(name) {
  return async (page) => {
    const c = await api(`/channels/${encodeURIComponent(name)}`);
    $("#channel-name", page).textContent = c.name;
    const shown = c.members.length < c.total_members ? `, first ${c.members.length} shown` : "";
    $("#channel-counts", page).textContent = `${c.total_members} members, ${c.online} online${shown}`;
    $("#members", page).replaceChildren(...c.members.map((m) => el("li", { "data-online": m.online }, clientLink(m.client_id))));
  };
}

function route() {
  if (csrf === null) return;
  const [, page, arg] = /^#\/([a-z]+)(?:\/(.*))?$/.exec(location.hash) || [];
  const value = arg === undefined ? undefined : decodeURIComponent(arg);
  if (page === "client" && value) {
    mount("client", clientPage(value));
    wireKick($("#page"), value);
  } else if (page === "channels") mount("channels", channelsPage);
  else if (page === "channel" && value) mount("channel", channelPage(value));
  else {
    mount("cluster", clusterPage);
    $("#open-client").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const id = $("#open-client-id").value.trim();
      if (id) location.hash = `#/client/${encodeURIComponent(id)}`;
    });
  }
}

// ---- the live event feed ----------------------------------------------------------------

function feedState(state) {
  const s = $("#feed-state");
  s.dataset.state = state;
  s.textContent = state;
}

function addEvent(type, data) {
  const list = $("#events");
  const now = new Date();
  const time = el("time", { datetime: now.toISOString(), text: now.toLocaleTimeString([], { hour12: false }) });
  const li = el("li", { "data-type": type }, time, el("span", { class: "type", text: type }));
  if (type === "online" || type === "offline") {
    li.dataset.client = data.client_id;
    li.append(el("span", {}, clientLink(data.client_id), ` on ${data.node}`));
    const flags = [];
    if (data.first) flags.push("first connection");
    if (data.last) flags.push("last connection");
    if (data.moved) flags.push("moved to another node");
    if (flags.length) li.append(el("span", { class: "flags", text: flags.join(", ") }));
  } else if (type === "lagged") {
    li.append(el("span", { text: `${data.dropped} events dropped (the console read too slowly)` }));
  } else {
    li.append(el("span", { text: data.message || "" }));
  }
  list.prepend(li);
  while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
}

function stopFeed() {
  if (feed) feed.close();
  feed = null;
}

function startFeed() {
  stopFeed();
  feedState("connecting");
  const es = new EventSource(`${API}/events`);
  feed = es;
  es.addEventListener("open", () => feedState("connected"));
  for (const type of ["online", "offline", "lagged", "error"]) {
    es.addEventListener(type, (ev) => {
      // `error` is also the EventSource's own event for a lost connection (no data).
      if (!ev.data) return;
      try {
        addEvent(type, JSON.parse(ev.data));
      } catch {
        addEvent("error", { message: "an unreadable event" });
      }
    });
  }
  es.addEventListener("error", async () => {
    if (feed !== es) return;
    feedState("disconnected");
    if (es.readyState === EventSource.CLOSED) {
      // A refused stream (the session ended, the node restarted): check the session, then
      // start again or ask for the login.
      try {
        await api("/session");
        setTimeout(() => feed === es && startFeed(), REFRESH_MS);
      } catch (e) {
        if (e instanceof Unauthorized) showLogin("Your session ended; log in again.");
        else setTimeout(() => feed === es && startFeed(), REFRESH_MS);
      }
    }
  });
}

// ---- start ----------------------------------------------------------------------------------

window.addEventListener("hashchange", route);
document.addEventListener("DOMContentLoaded", async () => {
  $("#login-form").addEventListener("submit", login);
  $("#logout").addEventListener("click", logout);
  try {
    showConsole(await api("/session"));
  } catch (e) {
    showLogin(e instanceof Unauthorized ? "" : e.message);
  }
});
