// Usher dashboard: plain JavaScript over the /v1 API, no build step.
// The token lives in sessionStorage and goes in the Authorization header of every call,
// including the event stream (read with fetch, so it never appears in a URL).
"use strict";

const $ = (sel) => document.querySelector(sel);
const TOKEN_KEY = "usher.token";
const SESSION_KEY = "usher.session"; // "1": the token came from a password login
const VM_STATES = ["pending", "starting", "running", "paused", "stopping", "stopped", "migrating", "error", "lost"];
const MAX_EVENTS = 200;
const BACKLOG_SECONDS = 600; // recorded events shown at login
const MB = 1024 * 1024;

const ui = {
  me: null,
  nodes: [],
  vms: [],            // the page shown
  total: 0,
  cursors: [null],    // cursor of each page visited; the last is the page shown
  next: null,
  selected: new Set(),
  sort: { key: null, dir: 1 },
  chart: null,        // {kind: "node"|"vm", key, label}
  detail: null,       // the VM shown in the detail panel, as last read
  wanted: null,       // the id of the VM the detail panel is for (answers for others are dropped)
  console: { vm: null, next: 0, text: "", busy: false },
  terminal: null,     // the attached console: {vm, socket, term, ended}
  stream: null,       // AbortController of the event stream
  timers: {},
  session: 0,         // bumped at each login and logout: answers to an older one are dropped
};

// --- API --------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const session = ui.session;
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = r.status === 204 ? null : await r.json().catch(() => null);
  if (session !== ui.session) return new Promise(() => {}); // asked for a session now over
  if (!r.ok) {
    if (r.status === 401 && ui.me) loggedOut("your session ended: log in again");
    throw new ApiError(r.status, (data && data.error) || `${method} ${path}: HTTP ${r.status}`);
  }
  return data;
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (Array.isArray(v)) for (const item of v) q.append(k, item);
    else if (v !== null && v !== undefined && v !== "") q.set(k, v);
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

// --- messages ---------------------------------------------------------------------------

function say(text, error = false) {
  const div = document.createElement("div");
  div.className = error ? "msg error" : "msg";
  div.textContent = text;
  div.title = "click to dismiss";
  div.addEventListener("click", () => div.remove());
  $("#messages").append(div);
  setTimeout(() => div.remove(), error ? 15000 : 5000);
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  for (const c of children) node.append(c);
  return node;
}

// --- login ------------------------------------------------------------------------------

async function login(ev) {
  ev.preventDefault();
  $("#login-error").textContent = "";
  const token = $("#login-token").value.trim();
  const user = $("#login-user").value.trim();
  try {
    if (token) {
      sessionStorage.setItem(TOKEN_KEY, token);
      sessionStorage.removeItem(SESSION_KEY);
    } else if (user) {
      const issued = await api("POST", "/v1/login", { username: user, password: $("#login-password").value });
      sessionStorage.setItem(TOKEN_KEY, issued.token);
      sessionStorage.setItem(SESSION_KEY, "1");
    } else {
      throw new Error("give an API token, or a user and password");
    }
    await enter();
  } catch (err) {
    sessionStorage.removeItem(TOKEN_KEY);
    $("#login-error").textContent = err.message;
  }
}

async function enter() {
  ui.session += 1;
  ui.me = await api("GET", "/v1/whoami");
  $("#login-form").reset();
  $("#login").hidden = true;
  $("#app").hidden = false;
  $("#logout").hidden = false;
  $("#whoami").textContent = `${ui.me.name} (${ui.me.roles.join(", ") || "no roles"})`;
  $("#events").replaceChildren();
  startStream();
  closeDetail();
  await Promise.all([loadNodes(), loadVMs(), loadBacklog(), loadImages()]);
}

async function loadBacklog() {
  const since = Date.now() / 1000 - BACKLOG_SECONDS;
  try {
    // the newest of the backlog, not its oldest: the feed shows newest first
    const page = await api("GET", `/v1/events${query({ since, limit: MAX_EVENTS, newest: true })}`);
    for (const ev of page.items) feed(ev);
  } catch (err) {
    say(`cannot read recent events: ${err.message}`, true);
  }
}

async function logout() {
  if (sessionStorage.getItem(SESSION_KEY)) {
    await api("POST", "/v1/logout").catch(() => null); // a session token is revoked
  }
  loggedOut("");
}

function loggedOut(reason) {
  ui.session += 1;
  ui.me = null;
  $("#messages").replaceChildren();
  if (ui.stream) ui.stream.abort();
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(SESSION_KEY);
  $("#app").hidden = true;
  $("#logout").hidden = true;
  $("#whoami").textContent = "";
  $("#login").hidden = false;
  $("#login-error").textContent = reason;
  closeDetail();
  streamStatus(false);
}

// --- nodes ------------------------------------------------------------------------------

function bar(used, total, text) {
  const ratio = total > 0 ? Math.min(1, used / total) : 0;
  const fill = el("div", { className: "fill" });
  fill.style.width = `${(ratio * 100).toFixed(1)}%`;
  const b = el("div", { className: ratio > 0.85 ? "bar high" : "bar", title: text }, fill, el("span", { textContent: text }));
  return b;
}

async function loadNodes() {
  ui.nodes = await api("GET", "/v1/nodes");
  const body = $("#nodes tbody");
  body.replaceChildren(...ui.nodes.map((n) => {
    const c = n.capacity, u = n.usage;
    const row = el("tr", { className: "clickable" },
      el("td", { textContent: n.name }),
      el("td", { className: `state state-${n.state}`, textContent: n.state }),
      el("td", { textContent: String(u.vms) }),
      el("td", {}, bar(u.vcpus, c.vcpus, `${u.vcpus} / ${c.vcpus}`)),
      el("td", {}, bar(u.cpu_percent / 100, c.vcpus, `${(u.cpu_percent / 100).toFixed(2)} CPUs`)),
      el("td", {}, bar(u.memory_mb, c.memory_mb, `${u.memory_mb} / ${c.memory_mb} MiB`)),
      el("td", {}, bar(u.memory_used_mb, c.memory_mb, `${u.memory_used_mb} MiB`)),
      el("td", { className: "node-actions" }, ...nodeActions(n)),
    );
    row.dataset.node = n.name;
    if (ui.chart && ui.chart.kind === "node" && ui.chart.key === n.name) row.classList.add("chosen");
    row.addEventListener("click", () => showChart("node", n.name, `node ${n.name}`));
    return row;
  }));
  for (const id of ["#f-node", "#migrate-target", "#c-node"]) {
    const select = $(id), keep = select.value;
    select.replaceChildren(select.options[0], ...ui.nodes.map((n) => el("option", { value: n.name, textContent: n.name })));
    select.value = keep;
  }
}

function nodeActions(n) {
  // what an administrator does to a node: keep new VMs off it, empty it, service it
  const actions = [n.drained ? ["undrain", "Undrain"] : ["drain", "Drain"], ["evacuate", "Evacuate"]];
  actions.push(n.maintenance ? ["activate", "Activate"] : ["maintenance", "Maintenance"]);
  return actions.map(([action, text]) => {
    const button = el("button", { type: "button", textContent: text });
    button.setAttribute("aria-label", `${text} node ${n.name}`);
    button.dataset.nodeAction = action;
    button.addEventListener("click", (ev) => { ev.stopPropagation(); nodeAct(n.name, action); });
    return button;
  });
}

async function nodeAct(name, action) {
  if ((action === "evacuate" || action === "maintenance") &&
      !(await confirmDialog(`${action === "evacuate" ? "Evacuate" : "Put in maintenance"} node ${name}? Its running VMs migrate live, its stopped VMs move.`, "Go"))) return;
  const label = `${action} of node ${name}`;
  try {
    const answer = await api("POST", `/v1/nodes/${encodeURIComponent(name)}/${action}`);
    if (answer && answer.kind) { say(`${label}: operation ${answer.id} ${answer.status}`); follow(answer, label); }
    else say(`${label}: done`);
    await loadNodes();
  } catch (err) {
    say(`${label} refused: ${err.message}`, true);
  }
}

// --- creating VMs -----------------------------------------------------------------------

function words(text) {
  return text.split(",").map((w) => w.trim()).filter(Boolean);
}

async function loadImages() {
  try {
    const images = await api("GET", "/v1/images");
    const select = $("#c-image"), keep = select.value;
    select.replaceChildren(...images.map((i) => el("option", { value: i.name, textContent: `${i.name} (${i.kind})` })));
    if (keep) select.value = keep;
  } catch (err) {
    say(`cannot list images: ${err.message}`, true);
  }
}

async function create(ev) {
  ev.preventDefault();
  const names = words($("#c-names").value);
  const body = {
    image: $("#c-image").value,
    vcpus: Number($("#c-vcpus").value),
    memory_mb: Number($("#c-memory").value),
    tags: words($("#c-tags").value),
  };
  if (names.length) body.names = names; else body.count = Number($("#c-count").value);
  if ($("#c-cluster").value.trim()) body.cluster = $("#c-cluster").value.trim();
  if ($("#c-node").value) body.node = $("#c-node").value;
  const label = `create of ${names.length ? names.join(", ") : `${body.count} VM(s)`}`;
  $("#c-submit").disabled = true; // a second click must not make the VMs twice
  try {
    const op = await api("POST", "/v1/vms", body);
    say(`${label}: operation ${op.id} ${op.status}`);
    follow(op, label);
    refreshSoon("vms");
  } catch (err) {
    say(`${label} refused: ${err.message}`, true);
  } finally {
    $("#c-submit").disabled = false;
  }
}

// --- VMs --------------------------------------------------------------------------------

function filters() {
  return {
    state: $("#f-state").value, node: $("#f-node").value,
    owner: $("#f-owner").value.trim(), cluster: $("#f-cluster").value.trim(),
    tag: words($("#f-tag").value),
  };
}

async function loadVMs() {
  const limit = Number($("#page-size").value);
  const cursor = ui.cursors[ui.cursors.length - 1];
  const { key, dir } = ui.sort;
  const params = { ...filters(), q: $("#f-search").value.trim(), limit, cursor };
  if (key) Object.assign(params, { sort: key, desc: dir < 0 ? "true" : "" });
  try {
    const page = await api("GET", `/v1/search/vms${query(params)}`);
    ui.vms = page.items;
    ui.total = page.total;
    ui.next = page.next;
  } catch (err) {
    say(`cannot list VMs: ${err.message}`, true);
    return;
  }
  renderVMs();
}

function vmRow(vm) {
  const pick = el("input", { type: "checkbox", className: "pick", checked: ui.selected.has(vm.id) });
  pick.setAttribute("aria-label", `select ${vm.name}`);
  pick.addEventListener("change", () => {
    if (pick.checked) ui.selected.add(vm.id); else ui.selected.delete(vm.id);
    renderSelection();
  });
  const name = el("td", { className: "clickable", textContent: vm.name, title: `${vm.id}: show its details`, tabIndex: 0 });
  name.setAttribute("role", "button");
  name.addEventListener("click", () => openDetail(vm.id));
  name.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); openDetail(vm.id); } });
  const row = el("tr", {},
    el("td", {}, pick), name,
    el("td", { className: `state state-${vm.state}`, textContent: vm.state, title: vm.state_reason || "" }),
    el("td", { textContent: vm.node || "—" }),
    el("td", { textContent: vm.owner }),
    el("td", { textContent: vm.cluster || "—" }),
    el("td", { textContent: String(vm.spec.vcpus) }),
    el("td", { textContent: `${vm.spec.memory_mb} MiB` }),
    el("td", { className: "tags", textContent: (vm.tags || []).join(", ") }),
  );
  row.dataset.vm = vm.id;
  row.dataset.name = vm.name;
  if (ui.chart && ui.chart.kind === "vm" && ui.chart.key === vm.id) row.classList.add("chosen");
  return row;
}

function renderVMs() {
  // the selection is what the user sees: VMs that left the table (filtered out, another page,
  // destroyed) are no longer selected, so no action reaches a VM that is not on screen
  const shown = new Set(ui.vms.map((vm) => vm.id));
  for (const id of [...ui.selected]) if (!shown.has(id)) ui.selected.delete(id);
  $("#vms tbody").replaceChildren(...ui.vms.map(vmRow));
  const first = (ui.cursors.length - 1) * Number($("#page-size").value);
  $("#page-info").textContent = ui.vms.length
    ? `${first + 1}-${first + ui.vms.length} of ${ui.total}` : `none of ${ui.total}`;
  $("#vm-total").textContent = `(${ui.total})`;
  $("#prev").disabled = ui.cursors.length < 2;
  $("#next").disabled = !ui.next;
  for (const th of document.querySelectorAll("#vms th[data-sort]")) {
    th.classList.toggle("sorted-asc", th.dataset.sort === ui.sort.key && ui.sort.dir > 0);
    th.classList.toggle("sorted-desc", th.dataset.sort === ui.sort.key && ui.sort.dir < 0);
  }
  renderSelection();
}

function renderSelection() {
  $("#selected-count").textContent = `${ui.selected.size} selected`;
  const onPage = ui.vms.filter((vm) => ui.selected.has(vm.id)).length;
  $("#pick-all").checked = ui.vms.length > 0 && onPage === ui.vms.length;
}

function firstPage() {
  ui.cursors = [null];
  loadVMs();
}

// --- actions ----------------------------------------------------------------------------

function selectedNames() {
  return ui.vms.filter((vm) => ui.selected.has(vm.id)).map((vm) => vm.name);
}

function confirmDestroy(names) {
  return confirmDialog(`Destroy ${names.length === 1 ? "VM" : `${names.length} VMs`} ${names.join(", ")}? Their disks are deleted; this cannot be undone.`, "Destroy");
}

function confirmDialog(text, yes) {
  const dialog = $("#confirm");
  $("#confirm-text").textContent = text;
  $("#confirm-yes").textContent = yes;
  return new Promise((resolve) => {
    const done = (yes) => { dialog.close(); resolve(yes); };
    $("#confirm-yes").onclick = () => done(true);
    $("#confirm-no").onclick = () => done(false);
    dialog.showModal();
  });
}

async function act(kind) {
  const vms = [...ui.selected];
  if (!vms.length) { say("select VMs first", true); return; }
  if (kind === "destroy" && !(await confirmDestroy(selectedNames()))) return;
  const body = { vms };
  if (kind === "migrate" && $("#migrate-target").value) body.target_node = $("#migrate-target").value;
  const label = `${kind} of ${selectedNames().join(", ")}`;
  try {
    const op = await api("POST", `/v1/vms/actions/${kind}`, body);
    say(`${label}: operation ${op.id} ${op.status}`);
    follow(op, label);
  } catch (err) {
    say(`${kind} refused: ${err.message}`, true);
  }
}

const FINAL = new Set(["succeeded", "failed", "cancelled", "vetoed"]);

async function follow(op, label) {
  // wait for the operation's end (the API holds each ask up to 30 s) and say how it went
  let now = op;
  while (!FINAL.has(now.status)) {
    try {
      now = await api("GET", `/v1/operations/${encodeURIComponent(op.id)}/wait${query({ timeout: 30 })}`);
    } catch (err) {
      say(`${label}: cannot follow ${op.id}: ${err.message}`, true);
      return;
    }
  }
  const skipped = Object.keys((now.result && now.result.skipped) || {}).length;
  const note = skipped ? ` (${skipped} already there)` : "";
  say(`${label}: ${now.status}${note}${now.error ? ` — ${now.error}` : ""}`, now.status !== "succeeded");
}

// --- one VM -----------------------------------------------------------------------------

const CONSOLE_KEEP = 64 * 1024; // characters of console output the panel keeps

async function openDetail(id) {
  if (ui.wanted !== id) clearDetail();
  ui.wanted = id;
  $("#detail-panel").hidden = false;
  if (ui.console.vm !== id) ui.console = { vm: id, next: 0, text: "", busy: false };
  await Promise.all([loadDetail(id), loadHistory(id), loadConsole()]);
  if (ui.wanted === id && ui.detail) showChart("vm", id, `VM ${ui.detail.name}`);
}

function clearDetail() {
  detachConsole(false);
  ui.detail = null;
  for (const id of ["#d-name", "#d-definition", "#d-history", "#d-events", "#d-console"]) $(id).replaceChildren();
  $("#d-tag-list").value = "";
}

function closeDetail() {
  ui.wanted = null;
  ui.console = { vm: null, next: 0, text: "", busy: false };
  clearDetail();
  $("#detail-panel").hidden = true;
}

async function loadDetail(id) {
  let vm;
  try {
    vm = await api("GET", `/v1/vms/${encodeURIComponent(id)}`);
  } catch (err) {
    if (ui.wanted !== id) return;
    say(`cannot show VM: ${err.message}`, true);
    if (err.status === 404) closeDetail();
    return;
  }
  if (ui.wanted !== id) return; // another VM was asked for meanwhile
  ui.detail = vm;
  $("#d-name").textContent = vm.name;
  const rows = [
    ["id", vm.id], ["state", vm.state + (vm.state_reason ? ` (${vm.state_reason})` : "")],
    ["desired", vm.desired_state], ["node", vm.node || "—"], ["owner", vm.owner],
    ["cluster", vm.cluster || "—"], ["vCPUs", String(vm.spec.vcpus)],
    ["memory", `${vm.spec.memory_mb} MiB`], ["image", vm.spec.image],
    ["addresses", vm.addresses.join(", ") || "—"], ["tags", vm.tags.join(", ") || "—"],
    ["kwargs", Object.keys(vm.spec.kwargs).length ? JSON.stringify(vm.spec.kwargs) : "—"],
    ["created", new Date(vm.created_at * 1000).toLocaleString()],
  ];
  $("#d-definition").replaceChildren(...rows.flatMap(([k, v]) => {
    const dd = el("dd", { textContent: v });
    dd.dataset.field = k;
    return [el("dt", { textContent: k }), dd];
  }));
  if (document.activeElement !== $("#d-tag-list")) $("#d-tag-list").value = vm.tags.join(", ");
}

async function loadHistory(id) {
  try {
    const page = await api("GET", `/v1/events${query({ vm: id, limit: 100, newest: true })}`);
    if (ui.wanted !== id) return;
    const mine = page.items;
    const item = (ev) => el("li", {}, el("time", { textContent: new Date(ev.time * 1000).toLocaleTimeString() }),
      el("span", { className: "ev-name", textContent: ev.name }), el("span", { textContent: summary(ev) }));
    $("#d-history").replaceChildren(...mine.filter((ev) => ev.name === "state_change").map(item));
    $("#d-events").replaceChildren(...mine.filter((ev) => ev.name !== "state_change").map(item));
  } catch (err) {
    if (ui.wanted === id) say(`cannot read the VM's events: ${err.message}`, true);
  }
}

async function loadConsole() {
  const c = ui.console;
  if (!c.vm || c.busy) return; // (one read at a time: two would append a chunk twice)
  c.busy = true;
  try {
    for (let i = 0; i < 16; i++) { // up to 16 chunks now; the rest on the next refresh
      const chunk = await api("GET", `/v1/vms/${encodeURIComponent(c.vm)}/console${query({ offset: c.next })}`);
      if (ui.console !== c) return;
      c.text = (c.text + chunk.data).slice(-CONSOLE_KEEP);
      const done = chunk.next === c.next || !chunk.data;
      c.next = chunk.next;
      if (done) break;
    }
    $("#d-console").textContent = c.text || "(no console output yet)";
    $("#d-console").scrollTop = $("#d-console").scrollHeight;
  } catch (err) {
    if (ui.console === c) $("#d-console").textContent = `no console: ${err.message}`;
  } finally {
    c.busy = false;
  }
}

// --- the attached console: xterm.js over /v1/vms/{vm}/console/attach ---------------------
// A browser cannot set headers on a WebSocket: the token goes as a subprotocol
// ("usher.auth.<base64url>"), never in the URL. xterm.js (shipped beside this file) loads on
// the first attach; its <style> elements carry the page's nonce (the policy wants it).

const CONSOLE_PROTOCOL = "usher.console.v1";
const CONSOLE_FRAME = 4096; // bytes of input per frame, the most the controller takes
let xtermLoading = null;

function loadXterm() {
  if (!xtermLoading) {
    xtermLoading = new Promise((resolve, reject) => {
      const nonce = document.querySelector('meta[name="usher-style-nonce"]').content;
      const make = Document.prototype.createElement;
      Document.prototype.createElement = function (tag, options) {
        const made = make.call(this, tag, options);
        if (String(tag).toLowerCase() === "style") made.nonce = nonce;
        return made;
      };
      document.head.append(el("link", { rel: "stylesheet", href: "xterm.css" }));
      const script = el("script", { src: "xterm.js" });
      script.addEventListener("load", () => resolve(window.Terminal));
      script.addEventListener("error", () => { xtermLoading = null; reject(new Error("cannot load xterm.js")); });
      document.head.append(script);
    });
  }
  return xtermLoading;
}

function base64url(text) {
  return btoa(text).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}

async function attachConsole() {
  const vm = ui.detail;
  if (!vm) return;
  if (ui.terminal && !ui.terminal.ended) { detachConsole(); return; }
  detachConsole(false); // (a session that ended: its terminal goes)
  let Terminal;
  try {
    Terminal = await loadXterm();
  } catch (err) {
    say(err.message, true);
    return;
  }
  if (!ui.detail || ui.detail.id !== vm.id || ui.terminal) return;
  const box = $("#d-terminal");
  box.replaceChildren();
  box.hidden = false;
  $("#d-console").hidden = true;
  const term = new Terminal({ convertEol: true, cursorBlink: true, fontSize: 13, rows: 20, scrollback: 2000 });
  term.open(box);
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const url = `${scheme}//${location.host}/v1/vms/${encodeURIComponent(vm.id)}/console/attach`;
  const token = sessionStorage.getItem(TOKEN_KEY) || "";
  const socket = new WebSocket(url, [CONSOLE_PROTOCOL, `usher.auth.${base64url(token)}`]);
  const attached = { vm: vm.id, socket, term, ended: false };
  ui.terminal = attached;
  $("#d-console-attach").textContent = "Detach";
  box.dataset.state = "connecting";
  const encoder = new TextEncoder();
  socket.addEventListener("open", () => { box.dataset.state = "attached"; term.focus(); });
  socket.addEventListener("message", (ev) => term.write(ev.data));
  socket.addEventListener("close", (ev) => {
    if (attached.ended) return;
    attached.ended = true;
    box.dataset.state = "ended";
    term.write(`\r\n[console ended: ${ev.reason || `code ${ev.code}`}]\r\n`);
    $("#d-console-attach").textContent = "Attach";
  });
  term.onData((typed) => {
    if (socket.readyState !== WebSocket.OPEN) return;
    const bytes = encoder.encode(typed);
    for (let at = 0; at < bytes.length; at += CONSOLE_FRAME) socket.send(bytes.slice(at, at + CONSOLE_FRAME));
  });
}

// Detach (or drop a session that ended), and show the read-only console again.
function detachConsole(refresh = true) {
  const attached = ui.terminal;
  if (!attached) return;
  ui.terminal = null;
  if (!attached.ended) {
    attached.ended = true;
    attached.socket.close(1000, "detached");
  }
  attached.term.dispose();
  $("#d-terminal").replaceChildren();
  $("#d-terminal").hidden = true;
  $("#d-console").hidden = false;
  $("#d-console-attach").textContent = "Attach";
  if (refresh) loadConsole();
}

async function changeVM(body, what) {
  const vm = ui.detail;
  if (!vm) return;
  try {
    await api("PATCH", `/v1/vms/${encodeURIComponent(vm.id)}`, body);
    say(`${what} of ${vm.name}: done`);
    if (ui.wanted === vm.id) await loadDetail(vm.id);
    refreshSoon("vms");
  } catch (err) {
    say(`${what} of ${vm.name} refused: ${err.message}`, true);
  }
}

// --- charts -----------------------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";

function lineChart(title, points, value, unit) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 300 100");
  svg.setAttribute("preserveAspectRatio", "none");
  const known = points.filter((p) => value(p) !== null && value(p) !== undefined);
  const max = Math.max(1e-9, ...known.map(value));
  if (known.length) {
    const t0 = known[0].time, span = Math.max(1, known[known.length - 1].time - t0);
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", known.map((p) =>
      `${(((p.time - t0) / span) * 300).toFixed(1)},${(98 - (value(p) / max) * 94).toFixed(1)}`).join(" "));
    svg.append(line);
  }
  const last = known.length ? value(known[known.length - 1]) : null;
  const label = el("div", { className: "label" },
    el("span", { textContent: `${title}: ${last === null ? "no data" : `${last.toFixed(1)} ${unit}`}` }),
    el("span", { textContent: `max ${known.length ? max.toFixed(1) : "—"} ${unit}, ${known.length} samples` }));
  const box = el("div", { className: "chart" }, label);
  box.append(svg);
  return box;
}

async function showChart(kind, key, label) {
  ui.chart = { kind, key, label };
  $("#chart-title").textContent = `— ${label}, last hour`;
  for (const row of document.querySelectorAll("tr.chosen")) row.classList.remove("chosen");
  const row = document.querySelector(kind === "node" ? `#nodes tr[data-node="${CSS.escape(key)}"]` : `#vms tr[data-vm="${CSS.escape(key)}"]`);
  if (row) row.classList.add("chosen");
  await drawChart();
}

async function drawChart() {
  const target = ui.chart;
  if (!target) return;
  let series;
  try {
    series = await api("GET", `/v1/usage${query({ [target.kind]: target.key })}`);
  } catch (err) {
    say(`cannot read the usage of ${target.label}: ${err.message}`, true);
    return;
  }
  if (ui.chart !== target) return;
  const charts = [
    lineChart("CPU", series.points, (p) => p.cpu_percent, "%"),
    lineChart("memory used", series.points, (p) => p.memory_used_mb, "MiB"),
  ];
  if (target.kind === "node") charts.push(lineChart("VMs", series.points, (p) => p.vms, ""));
  $("#charts").replaceChildren(...charts);
  $("#charts").dataset.points = String(series.points.length);
}

// --- the event stream -------------------------------------------------------------------

function streamStatus(on) {
  const s = $("#stream-status");
  s.textContent = on ? "live" : "offline";
  s.className = on ? "status on" : "status off";
}

async function startStream() {
  if (ui.stream) ui.stream.abort();
  const control = new AbortController();
  ui.stream = control;
  while (ui.me && !control.signal.aborted) {
    try {
      const r = await fetch("/v1/events/stream", {
        headers: { Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY)}`, Accept: "text/event-stream" },
        signal: control.signal,
      });
      if (r.status === 401) { loggedOut("your session ended: log in again"); return; }
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      streamStatus(true);
      await readStream(r.body.getReader());
    } catch (err) {
      if (control.signal.aborted) return;
    }
    streamStatus(false);
    await new Promise((resolve) => setTimeout(resolve, 2000));
    refreshSoon("vms"); refreshSoon("nodes"); // catch up on what the gap missed
  }
}

async function readStream(reader) {
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (data) onEvent(JSON.parse(data));
    }
  }
}

function refreshSoon(what) {
  if (ui.timers[what]) return;
  ui.timers[what] = setTimeout(() => {
    ui.timers[what] = null;
    if (!ui.me) return;
    if (what === "vms") loadVMs();
    else if (what === "detail") { if (ui.wanted) { loadDetail(ui.wanted); loadHistory(ui.wanted); } }
    else if (what === "nodes") loadNodes().catch((err) => say(`cannot list nodes: ${err.message}`, true));
    else drawChart();
  }, 700);
}

function onEvent(ev) {
  feed(ev);
  if (ev.name === "state_change" && ev.vm_id) {
    const vm = ui.vms.find((v) => v.id === ev.vm_id);
    if (vm) {
      vm.state = ev.data.to;
      if (ev.data.node) vm.node = ev.data.node;
      const row = document.querySelector(`#vms tr[data-vm="${CSS.escape(vm.id)}"]`);
      if (row) row.replaceWith(vmRow(vm));
    }
  }
  if (ev.name === "unregister" && ui.selected.delete(ev.vm_id)) renderSelection();
  if (ui.wanted && ev.vm_id === ui.wanted) {
    if (ev.name === "unregister") { say(`VM ${ev.data.name || ev.vm_id} was destroyed`); closeDetail(); }
    else refreshSoon("detail");
  }
  if (ev.vm_id || ev.name.startsWith("node_")) refreshSoon("vms");
  if (ev.name.startsWith("node_") || ev.name === "usage" || ev.name === "state_change") refreshSoon("nodes");
  if (ev.name === "usage" && ui.chart) refreshSoon("chart");
  if (ev.name.endsWith("_failure") && ui.me && ev.principal === ui.me.name && ev.data.error) {
    say(`${ev.name.replace(/_failure$/, "")} failed${ev.vm_id ? ` on ${vmName(ev.vm_id)}` : ""}: ${ev.data.error}`, true);
  }
}

function vmName(id) {
  const vm = ui.vms.find((v) => v.id === id);
  return vm ? vm.name : id;
}

function summary(ev) {
  const d = ev.data || {};
  if (ev.name === "state_change") return `${d.from} → ${d.to}${d.reason ? ` (${d.reason})` : ""}`;
  if (d.error) return d.error;
  if (ev.name === "usage") return `${d.vms} VMs, ${d.cpu_percent}% CPU`;
  return "";
}

function feed(ev) {
  if (ev.name === "usage" && !$("#show-usage").checked) return;
  const list = $("#events");
  if (list.querySelector(`li[data-id="${CSS.escape(ev.id)}"]`)) return; // from both backlog and stream
  const time = new Date(ev.time * 1000);
  const li = el("li", { className: ev.name.endsWith("_failure") ? "ev-failure" : "" },
    el("time", { dateTime: time.toISOString(), textContent: time.toLocaleTimeString() }),
    el("span", { className: "ev-name", textContent: ev.name }),
    el("span", { textContent: [ev.vm_id && (ev.data.name || vmName(ev.vm_id)), ev.node, ev.principal && `by ${ev.principal}`, summary(ev)].filter(Boolean).join(" · ") }));
  li.dataset.event = ev.name;
  li.dataset.id = ev.id;
  if (ev.vm_id) li.dataset.vm = ev.vm_id;
  const older = [...list.children].find((other) => Number(other.dataset.time) <= ev.time);
  li.dataset.time = String(ev.time);
  list.insertBefore(li, older || null); // newest first
  while (list.children.length > MAX_EVENTS) list.lastChild.remove();
}

// --- wiring -----------------------------------------------------------------------------

function wire() {
  $("#f-state").append(...VM_STATES.map((s) => el("option", { value: s, textContent: s })));
  $("#login-form").addEventListener("submit", login);
  $("#logout").addEventListener("click", logout);
  $("#filters").addEventListener("submit", (ev) => { ev.preventDefault(); firstPage(); });
  $("#f-clear").addEventListener("click", () => { $("#filters").reset(); firstPage(); });
  $("#page-size").addEventListener("change", firstPage);
  $("#prev").addEventListener("click", () => { if (ui.cursors.length > 1) { ui.cursors.pop(); loadVMs(); } });
  $("#next").addEventListener("click", () => { if (ui.next) { ui.cursors.push(ui.next); loadVMs(); } });
  $("#pick-all").addEventListener("change", (ev) => {
    for (const vm of ui.vms) if (ev.target.checked) ui.selected.add(vm.id); else ui.selected.delete(vm.id);
    renderVMs();
  });
  for (const th of document.querySelectorAll("#vms th[data-sort]")) {
    th.addEventListener("click", () => {
      const key = th.dataset.sort;
      ui.sort = { key, dir: ui.sort.key === key ? -ui.sort.dir : 1 };
      firstPage();
    });
  }
  $("#create-form").addEventListener("submit", create);
  $("#d-close").addEventListener("click", closeDetail);
  $("#d-console-refresh").addEventListener("click", loadConsole);
  $("#d-console-attach").addEventListener("click", attachConsole);
  $("#d-rename").addEventListener("submit", (ev) => {
    ev.preventDefault();
    changeVM({ name: $("#d-new-name").value.trim() }, "rename");
    $("#d-new-name").value = "";
  });
  $("#d-tags").addEventListener("submit", (ev) => {
    ev.preventDefault();
    // the difference from the tags shown: a change someone else made meanwhile stays
    const shown = new Set(ui.detail ? ui.detail.tags : []), wanted = new Set(words($("#d-tag-list").value));
    changeVM({ add_tags: [...wanted].filter((t) => !shown.has(t)), remove_tags: [...shown].filter((t) => !wanted.has(t)) }, "tags");
  });
  for (const button of document.querySelectorAll("#actions button[data-action]")) {
    button.addEventListener("click", () => act(button.dataset.action));
  }
  setInterval(() => { if (ui.me && ui.chart) drawChart(); }, 15000);
  if (sessionStorage.getItem(TOKEN_KEY)) {
    enter().catch((err) => loggedOut(err.message));
  } else {
    loggedOut("");
  }
}

document.addEventListener("DOMContentLoaded", wire);
