// dlms-bridge console: plain JavaScript, no external assets. Data from /api/v1, live from /events.
"use strict";

const API = "/api/v1";
const TOKEN_KEY = "dlms-bridge-token";
const state = { meters: new Map(), units: new Map(), chartMeter: null, history: {}, editing: null };

const $ = (id) => document.getElementById(id);
const el = (tag, attrs, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
};

class ApiError extends Error {
  constructor(status, body) {
    const errors = (body && body.errors) || [];
    const text = errors.length
      ? errors.map((e) => (e.path ? `${e.path}: ${e.message}` : e.message)).join("\n")
      : (body && body.error) || `HTTP ${status}`;
    super(text);
    this.status = status;
  }
}

// -- the token: asked once, kept in the browser session ----------------------------------------
let tokenWaiters = [];
function askToken() {
  return new Promise((resolve, reject) => {
    tokenWaiters.push({ resolve, reject });
    const dialog = $("token-dialog");
    if (!dialog.open) { $("token-input").value = ""; dialog.showModal(); }
  });
}
$("token-form").addEventListener("submit", () => {
  const token = $("token-input").value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  tokenWaiters.splice(0).forEach((w) => w.resolve(token));
});
$("token-cancel").addEventListener("click", () => {
  $("token-dialog").close();
  tokenWaiters.splice(0).forEach((w) => w.reject(new Error("no admin token given")));
});

async function call(method, path, body, retried) {
  const write = method !== "GET";
  let token = sessionStorage.getItem(TOKEN_KEY);
  if (write && !token) token = await askToken();
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(API + path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if ((response.status === 401 || response.status === 403) && !retried) {
    sessionStorage.removeItem(TOKEN_KEY);
    await askToken();
    return call(method, path, body, true);
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

// -- formatting --------------------------------------------------------------------------------
function fmtValue(v) {
  if (typeof v !== "number") return v === null || v === undefined ? "-" : String(v);
  const a = Math.abs(v);
  const digits = a >= 1000 ? 0 : a >= 100 ? 1 : a >= 1 ? 2 : 3;
  return v.toFixed(digits);
}
function fmtAge(tsMs) {
  if (!tsMs) return "-";
  const s = Math.max(0, (Date.now() - tsMs) / 1000);
  if (s < 90) return `${s.toFixed(0)} s`;
  if (s < 5400) return `${(s / 60).toFixed(0)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}
const pct = (r) => (r === null || r === undefined ? "-" : `${(r * 100).toFixed(1)} %`);
const ms = (s) => (s === null || s === undefined ? "-" : `${(s * 1000).toFixed(0)} ms`);

// -- the meters table --------------------------------------------------------------------------
function valuesCell(name, values) {
  const cell = el("td", { class: "values" });
  for (const [key, v] of Object.entries(values || {})) {
    const unit = (state.units.get(name) || {})[key] || "";
    cell.append(el("span", { "data-key": key }, `${key} `, el("b", {}, fmtValue(v)), unit ? ` ${unit}` : ""));
  }
  return cell;
}

function renderMeter(m) {
  const tbody = document.querySelector("#meters tbody");
  const values = {};
  const units = {};
  for (const [k, v] of Object.entries(m.values || {})) { values[k] = v.value; units[k] = v.unit; }
  state.units.set(m.name, { ...(state.units.get(m.name) || {}), ...units });
  const row = el("tr", { id: `meter-${m.name}`, "data-meter": m.name },
    el("td", {}, el("b", {}, m.name), el("br"), el("span", { class: "source" }, `${m.address} · ${m.source}`)),
    el("td", { class: `state ${m.state}` }, m.state),
    valuesCell(m.name, values),
    el("td", { class: "age", "data-ts": m.ts_ms || "" }, fmtAge(m.ts_ms)),
    el("td", {}, pct(m.success_rate)),
    el("td", {}, `${ms(m.latency_p50_s)} / ${ms(m.latency_p95_s)}`),
    el("td", {},
      el("button", { onclick: () => showChart(m.name), title: "charts" }, "Chart"),
      el("button", { onclick: () => editMeter(m.name) }, "Edit"),
      el("button", { onclick: () => setEnabled(m.name, !m.enabled) }, m.enabled ? "Disable" : "Enable"),
      el("button", { class: "danger", onclick: () => removeMeter(m.name) }, "Remove")));
  const old = document.getElementById(`meter-${m.name}`);
  if (old) old.replaceWith(row); else tbody.append(row);
  state.meters.set(m.name, m);
}

async function loadMeters() {
  const data = await call("GET", "/meters");
  const names = new Set(data.meters.map((m) => m.name));
  for (const name of [...state.meters.keys()]) {
    if (!names.has(name)) { state.meters.delete(name); document.getElementById(`meter-${name}`)?.remove(); }
  }
  data.meters.forEach(renderMeter);
}

async function loadStatus() {
  const s = await call("GET", "/status");
  $("bridge-name").textContent = `· ${s.name}`;
  $("mqtt-state").textContent = s.mqtt.connected ? "connected" : "disconnected";
  $("mqtt-state").className = s.mqtt.connected ? "state ok" : "state failing";
  $("mqtt-broker").textContent = `${s.mqtt.broker} (${s.mqtt.mode})`;
  $("outbox-rows").textContent = `${s.outbox.rows} waiting`;
  $("outbox-oldest").textContent = s.outbox.oldest_unsent_age_s === null || s.outbox.rows === 0
    ? `empty · ${s.outbox.dropped} dropped` : `oldest ${s.outbox.oldest_unsent_age_s.toFixed(0)} s · ${s.outbox.dropped} dropped`;
  $("meters-online").textContent = `${s.meters.online} / ${s.meters.enabled} online`;
  $("meters-total").textContent = `${s.meters.total} configured, ${s.meters.from_api} from the API`;
  $("delivered").textContent = `${s.counters.readings_published}`;
  $("taken").textContent = `of ${s.counters.readings_taken} readings taken`;
}

// -- alarms ------------------------------------------------------------------------------------
async function loadAlarms() {
  const data = await call("GET", "/alarms");
  const list = $("alarms");
  list.replaceChildren();
  const count = $("alarm-count");
  count.textContent = data.active.length;
  count.className = data.active.length ? "count" : "count zero";
  const shown = [...data.active, ...data.recent.slice(0, 5)];
  if (!shown.length) list.append(el("li", { class: "none" }, "No alarms."));
  for (const a of shown) {
    const cls = a.active ? (a.acked ? "acked" : "active") : "cleared";
    const li = el("li", { class: cls, "data-alarm": a.id },
      el("div", {}, el("code", {}, a.name), " ", a.message, el("br"),
        el("small", {}, `since ${new Date(a.raised_ms).toLocaleString()}` +
          (a.cleared_ms ? ` · cleared ${new Date(a.cleared_ms).toLocaleTimeString()}` : "") +
          (a.acked ? " · acknowledged" : ""))));
    if (a.active && !a.acked) {
      li.append(el("button", { class: "ack", onclick: () => ackAlarm(a.id) }, "Acknowledge"));
    }
    list.append(li);
  }
}
async function ackAlarm(id) {
  try { await call("POST", `/alarms/${id}/ack`); } catch (e) { alert(e.message); }
  loadAlarms();
}

// -- charts ------------------------------------------------------------------------------------
function drawChart(key, points) {
  const unit = (state.units.get(state.chartMeter) || {})[key] || "";
  const box = el("div", { class: "chart", "data-key": key });
  box.append(el("b", {}, `${key}${unit ? ` (${unit})` : ""}`));
  const svgNS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(svgNS, "svg");
  svg.setAttribute("viewBox", "0 0 300 120");
  svg.setAttribute("preserveAspectRatio", "none");
  if (points.length) {
    const ts = points.map((p) => p[0]);
    const vs = points.map((p) => p[1]);
    const t0 = Math.min(...ts), t1 = Math.max(...ts), v0 = Math.min(...vs), v1 = Math.max(...vs);
    const x = (t) => 30 + (t1 > t0 ? ((t - t0) / (t1 - t0)) * 265 : 265);
    const y = (v) => 110 - (v1 > v0 ? ((v - v0) / (v1 - v0)) * 100 : 50);
    const line = document.createElementNS(svgNS, "polyline");
    line.setAttribute("points", points.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" "));
    svg.append(line);
    for (const [v, yy] of [[v1, 12], [v0, 112]]) {
      const t = document.createElementNS(svgNS, "text");
      t.setAttribute("x", "0"); t.setAttribute("y", String(yy)); t.textContent = fmtValue(v);
      svg.append(t);
    }
  }
  box.append(svg);
  return box;
}
function renderCharts() {
  const charts = $("charts");
  charts.replaceChildren();
  for (const [key, points] of Object.entries(state.history)) charts.append(drawChart(key, points));
}
async function showChart(name) {
  state.chartMeter = name;
  $("chart-section").hidden = false;
  $("chart-meter").textContent = name;
  const data = await call("GET", `/meters/${encodeURIComponent(name)}/history`);
  state.history = data.series;
  renderCharts();
}

// -- add / edit / disable / remove -------------------------------------------------------------
function resetForm() {
  state.editing = null;
  $("meter-form").reset();
  $("f-name").disabled = false;
  $("form-title").textContent = "Add a meter";
  $("f-submit").textContent = "Add meter";
  $("f-cancel").hidden = true;
  $("form-error").textContent = "";
}
async function editMeter(name) {
  const m = await call("GET", `/meters/${encodeURIComponent(name)}`);
  state.editing = name;
  $("f-name").value = name; $("f-name").disabled = true;
  $("f-host").value = m.config.host; $("f-port").value = m.config.port;
  $("f-password").value = ""; $("f-interval").value = m.config.interval_s;
  $("f-registers").value = "";
  $("form-title").textContent = `Edit ${name}`;
  $("f-submit").textContent = "Save";
  $("f-cancel").hidden = false;
  $("meter-form").scrollIntoView();
}
$("f-cancel").addEventListener("click", resetForm);
$("meter-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = {};
  if (!state.editing) body.name = $("f-name").value.trim();
  body.host = $("f-host").value.trim();
  body.port = Number($("f-port").value);
  if ($("f-password").value) body.password = $("f-password").value;
  if ($("f-interval").value) body.interval_s = Number($("f-interval").value);
  if ($("f-registers").value.trim()) body.registers = $("f-registers").value.trim();
  try {
    if (state.editing) await call("PATCH", `/meters/${encodeURIComponent(state.editing)}`, body);
    else await call("POST", "/meters", body);
    resetForm();
    await refresh();
  } catch (e) {
    $("form-error").textContent = e.message;
  }
});
async function setEnabled(name, enabled) {
  try { await call("POST", `/meters/${encodeURIComponent(name)}/${enabled ? "enable" : "disable"}`); }
  catch (e) { alert(e.message); }
  refresh();
}
async function removeMeter(name) {
  if (!confirm(`Remove meter ${name}?`)) return;
  try { await call("DELETE", `/meters/${encodeURIComponent(name)}`); } catch (e) { alert(e.message); }
  refresh();
}

// -- live updates ------------------------------------------------------------------------------
function onReading(r) {
  const row = document.getElementById(`meter-${r.meter}`);
  if (!row) { loadMeters(); return; }
  state.units.set(r.meter, { ...(state.units.get(r.meter) || {}), ...(r.units || {}) });
  row.children[2].replaceWith(valuesCell(r.meter, r.values));
  const age = row.querySelector(".age");
  age.dataset.ts = r.ts; age.textContent = fmtAge(r.ts);
  if (state.chartMeter === r.meter) {
    for (const [k, v] of Object.entries(r.values)) {
      if (typeof v !== "number") continue;
      (state.history[k] = state.history[k] || []).push([r.ts, v]);
    }
    renderCharts();
  }
}
function connectEvents() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const url = `${API}/events${token ? `?access_token=${encodeURIComponent(token)}` : ""}`;
  const source = new EventSource(url);
  source.addEventListener("open", () => { $("live").textContent = "live"; $("live").className = "pill on"; });
  source.addEventListener("error", () => { $("live").textContent = "reconnecting"; $("live").className = "pill off"; });
  source.addEventListener("reading", (e) => onReading(JSON.parse(e.data)));
  source.addEventListener("state", (e) => {
    const s = JSON.parse(e.data);
    const cell = document.querySelector(`#meter-${CSS.escape(s.meter)} td.state`);
    if (cell) { cell.textContent = s.state; cell.className = `state ${s.state}`; }
    else loadMeters();
  });
  source.addEventListener("alarm", () => { loadAlarms(); loadStatus(); });
}

function tickAges() {
  document.querySelectorAll("td.age").forEach((td) => {
    if (td.dataset.ts) td.textContent = fmtAge(Number(td.dataset.ts));
  });
}

async function refresh() {
  try { await Promise.all([loadStatus(), loadMeters(), loadAlarms()]); }
  catch (e) { console.warn("refresh failed:", e.message); }
}

refresh().then(connectEvents);
setInterval(refresh, 10000);
setInterval(tickAges, 1000);
