// remus dashboard: follows GET api/stream (server-sent events) and draws each snapshot.
// Plain DOM, no library, no build step. Text from the broker is only ever set as textContent.
"use strict";

const COLORS = ["#2f6fde", "#d64545", "#1f9d55", "#c98a00", "#8a4fd1", "#0f9aa8", "#e0629a", "#6b7385"];
const DONE = new Set(["FINISHED", "FAILED", "EXPIRED", "TERMINATED"]);

const state = {
  points: [],       // [[t, {io: depth}]], oldest first
  every: 1,
  window: 300,
  colors: new Map(), // io type -> color, stable while the page lives
  selected: null,    // the job shown in the detail panel
  detailBusy: false,
  last: null,        // the latest good snapshot
};

const $ = (id) => document.getElementById(id);

/** An element with attributes (class, data-*, title, ...) and children (nodes or text). */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "onclick") node.addEventListener("click", v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

// ------------------------------------------------------------------ formatting

function secs(x) {
  if (x === null || x === undefined) return "–";
  if (x < 0.001) return "<1 ms";
  if (x < 1) return `${(x * 1000).toFixed(x < 0.01 ? 1 : 0)} ms`;
  if (x < 60) return `${x.toFixed(x < 10 ? 2 : 1)} s`;
  if (x < 3600) return `${Math.floor(x / 60)} m ${Math.round(x % 60)} s`;
  return `${Math.floor(x / 3600)} h ${Math.round((x % 3600) / 60)} m`;
}

function rate(x) {
  if (x === null || x === undefined) return "–";
  return x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2);
}

function bytes(n) {
  if (!n) return "–";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function shortId(id) { return id.length > 12 ? id.slice(0, 12) + "…" : id; }

/** name@host:pid with only the host's name (a host id is "machine-id/hostname"). */
function shortWorker(name) {
  if (!name) return "";
  const at = name.indexOf("@");
  if (at < 0) return name;
  const host = name.slice(at + 1);
  return name.slice(0, at + 1) + host.slice(host.lastIndexOf("/") + 1);
}

function colorOf(io) {
  if (!state.colors.has(io)) state.colors.set(io, COLORS[state.colors.size % COLORS.length]);
  return state.colors.get(io);
}

/** A job's progress bar, or a word when it has said no percentage yet. */
function progressBar(job) {
  const p = job.progress;
  if (!p || p.value === null || p.value === undefined) {
    return el("span", { class: "muted no-progress", "data-job": job.id }, p ? "…" : "no progress yet");
  }
  const bar = el("progress", { class: "job-progress", max: 100, "data-job": job.id });
  bar.value = p.value;
  bar.title = `${p.value}% ${p.message || ""}`;
  return bar;
}

function badge(text) { return el("span", { class: `state ${text}` }, text); }

// ------------------------------------------------------------------ panels

function drawCards(s) {
  const r = s.rates || {}, t = s.totals || {}, j = s.jobs || {}, w = s.worker_counts || {};
  $("rate-submitted").textContent = rate(r.submitted);
  $("rate-finished").textContent = rate(r.finished);
  $("rate-failed").textContent = rate(r.failed);
  $("rate-failed").closest(".card").classList.toggle("bad", r.failed > 0 || (t.failed ?? 0) > 0);
  $("total-submitted").textContent = `${t.submitted ?? 0} since start`;
  $("total-finished").textContent = `${t.finished ?? 0} since start`;
  $("total-failed").textContent = `${t.failed ?? 0} since start`;
  $("count-queued").textContent = j.QUEUED ?? 0;
  $("count-waiting").textContent = j.WAITING ? `${j.WAITING} waiting on others` : "";
  $("count-running").textContent = j.IN_PROGRESS ?? 0;
  $("count-over").textContent = `${(j.FINISHED ?? 0) + (j.FAILED ?? 0) + (j.EXPIRED ?? 0) + (j.TERMINATED ?? 0)} ended, still kept`;
  $("count-workers").textContent = s.workers.length;
  $("worker-states").textContent = `${w.busy ?? 0} busy · ${w.idle ?? 0} idle` + (w.leaving ? ` · ${w.leaving} leaving` : "");
  const b = s.broker;
  $("broker").textContent = `${b.endpoint} · remus ${b.version} · up ${secs(b.uptime)}` +
    (b.journal ? " · journal" : "") + (b.security === "curve" ? " · CURVE" : "");
}

function drawWorkers(s) {
  const rows = s.workers.map((w) => el("tr", { class: "worker", "data-name": w.name },
    el("td", { class: "nowrap", title: w.name }, shortWorker(w.name)),
    el("td", { class: "nowrap" }, w.io),
    el("td", {}, badge(w.state), w.slots > 1 ? el("span", { class: "muted" }, ` ${w.slots} slots`) : null),
    el("td", {}, el("div", { class: "running" }, ...w.jobs.map((job) =>
      el("div", { class: "run clickable", onclick: () => select(job.id) },
        el("span", { class: "id", title: job.id }, shortId(job.id)),
        progressBar(job),
        el("span", { class: "msg" }, job.progress ? `${job.progress.value ?? "–"}% ${job.progress.message || ""}` : ""))))),
    el("td", {}, w.jobs_finished),
    el("td", {}, `${secs(w.last_heard)} ago`),
    el("td", {}, bytes(w.resources && w.resources.rss))));
  $("workers").tBodies[0].replaceChildren(...rows);
  $("no-workers").hidden = s.workers.length > 0;
}

function drawLatency(s) {
  const cells = (h) => ["p50", "p90", "p99"].map((k) =>
    el("td", {}, (h.capped.includes(k) ? "≥ " : "") + secs(h[k])));
  const rows = s.latency.map((row) => el("tr", {},
    el("td", { class: "nowrap" }, row.io), el("td", {}, row.queue_wait.count),
    ...cells(row.queue_wait), ...cells(row.run)));
  $("latency").tBodies[0].replaceChildren(...rows);
}

function drawFailures(s) {
  const rows = s.failures.map((j) => el("li", {
      class: "failure clickable" + (j.id === state.selected ? " selected" : ""),
      "data-job": j.id, onclick: () => select(j.id) },
    el("div", { class: "head" },
      el("span", { class: "id", title: j.id }, shortId(j.id)),
      el("span", { class: "nowrap" }, j.io),
      el("span", { class: "muted" }, `attempt ${j.attempt}`),
      el("span", { class: "muted nowrap", title: j.worker }, shortWorker(j.worker))),
    el("div", { class: "reason", title: j.reason }, j.reason || "(no reason given)")));
  $("failures").replaceChildren(...rows);
  $("no-failures").hidden = s.failures.length > 0;
}

function drawJobs(s) {
  const rows = s.recent.map((j) => el("tr", {
      class: "job clickable" + (j.id === state.selected ? " selected" : ""),
      "data-job": j.id, onclick: () => select(j.id) },
    el("td", { class: "id", title: j.id }, shortId(j.id)),
    el("td", { class: "nowrap" }, j.io),
    el("td", {}, badge(j.status)),
    el("td", {}, j.status === "IN_PROGRESS" ? progressBar(j) : j.progress ? `${j.progress.value ?? "–"}%` : ""),
    el("td", { class: "nowrap", title: j.worker }, shortWorker(j.worker)),
    el("td", {}, secs(j.queued_for)),
    el("td", {}, secs(j.running_for))));
  $("jobs").tBodies[0].replaceChildren(...rows);
}

// ------------------------------------------------------------------ the chart

function drawChart() {
  const canvas = $("queue-chart");
  const dpr = window.devicePixelRatio || 1;
  const cssW = canvas.clientWidth, cssH = canvas.clientHeight;
  if (!cssW) return;
  canvas.width = Math.round(cssW * dpr);
  canvas.height = Math.round(cssH * dpr);
  const g = canvas.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, cssW, cssH);

  const pts = state.points;
  const now = pts.length ? pts[pts.length - 1][0] : 0;
  const span = Math.min(state.window, Math.max(60, now - (pts.length ? pts[0][0] : now)));
  const ios = [...new Set(pts.flatMap(([, d]) => Object.keys(d)))].sort();
  let top = 1;
  for (const [t, d] of pts) if (now - t <= span) for (const v of Object.values(d)) top = Math.max(top, v);
  top = niceCeil(top);

  const L = 40, R = 10, T = 8, B = 22, w = cssW - L - R, h = cssH - T - B;
  const x = (t) => L + w * (1 - (now - t) / span);
  const y = (v) => T + h * (1 - v / top);

  g.font = "11px system-ui, sans-serif";
  g.fillStyle = "#6b7385";
  g.strokeStyle = "#e2e5eb";
  g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {            // horizontal grid and the depth axis
    const v = (top * i) / 4, yy = Math.round(y(v)) + 0.5;
    g.beginPath(); g.moveTo(L, yy); g.lineTo(L + w, yy); g.stroke();
    g.textAlign = "right"; g.textBaseline = "middle";
    g.fillText(Number.isInteger(v) ? v : v.toFixed(1), L - 6, yy);
  }
  const step = span > 120 ? 60 : 15;        // the time axis, in seconds before now
  g.textAlign = "center"; g.textBaseline = "top";
  for (let ago = 0; ago <= span; ago += step) {
    g.fillText(ago ? `-${ago >= 60 ? ago / 60 + " m" : ago + " s"}` : "now", x(now - ago), T + h + 6);
  }

  g.lineWidth = 2;
  for (const io of ios) {                   // one line per io type, broken where data is missing
    g.strokeStyle = colorOf(io);
    g.beginPath();
    let prev = null;
    for (const [t, d] of pts) {
      if (now - t > span || !(io in d)) { prev = null; continue; }
      const gap = prev === null || t - prev > 3 * state.every;
      if (gap) g.moveTo(x(t), y(d[io])); else g.lineTo(x(t), y(d[io]));
      prev = t;
    }
    g.stroke();
  }

  const latest = pts.length ? pts[pts.length - 1][1] : {};
  $("legend").replaceChildren(...ios.map((io) => el("span", { "data-io": io },
    el("span", { class: "swatch", style: `background:${colorOf(io)}` }), `${io}: ${latest[io] ?? 0}`)));
  $("chart-span").textContent = `last ${span >= 120 ? Math.round(span / 60) + " minutes" : Math.round(span) + " s"}`;
}

function niceCeil(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

// ------------------------------------------------------------------ a job's detail

async function select(id) {
  state.selected = id;
  $("detail").hidden = false;
  $("detail-id").textContent = id;
  await refreshDetail(true);
  if (state.last) { drawFailures(state.last); drawJobs(state.last); }
  $("detail").scrollIntoView({ block: "nearest" });
}

async function refreshDetail(force) {
  const id = state.selected;
  if (!id || (state.detailBusy && !force)) return;
  state.detailBusy = true;
  try {
    const r = await fetch(`api/jobs/${encodeURIComponent(id)}`, { cache: "no-store" });
    const doc = await r.json();
    if (id !== state.selected) return;
    if (!r.ok) { drawDetailError(doc.message || `HTTP ${r.status}`); return; }
    drawDetail(doc);
  } catch (e) {
    drawDetailError(String(e));
  } finally {
    state.detailBusy = false;
  }
}

function drawDetail(d) {
  const fields = [
    ["status", badge(d.status)],
    ["progress", d.progress ? `${d.progress.value ?? "?"}% ${d.progress.message || ""}` : "none yet"],
    ["attempt", d.attempt],
    ["worker", d.worker ? el("span", { title: d.worker }, shortWorker(d.worker)) : "–"],
    ["reason", d.reason || "–"],
  ];
  if (d.parent) fields.push(["assistant of", d.parent]);
  if (d.assistants.length) fields.push(["assistants", d.assistants.join(", ")]);
  $("detail-fields").replaceChildren(...fields.flatMap(([k, v]) =>
    [el("dt", {}, k), el("dd", { "data-field": k }, v)]));
  const history = d.history.length ? d.history : [`attempt ${d.attempt}, no requeue or preemption`];
  $("detail-history").replaceChildren(...history.map((line) => el("li", {}, line)));
  $("detail-trace-box").hidden = !d.traceback;
  $("detail-trace").textContent = d.traceback || "";
  $("detail-count").textContent = d.updates_total > d.updates.length
    ? `the latest ${d.updates.length} of ${d.updates_total}` : `${d.updates.length} updates`;
  $("detail-progress").tBodies[0].replaceChildren(...d.updates.map((u) => el("tr", {},
    el("td", {}, u.seq), el("td", {}, u.value ?? "–"),
    el("td", {}, u.value !== null ? el("progress", { max: 100, value: u.value }) : ""),
    el("td", {}, u.message))));
  $("detail").dataset.status = d.status;
}

function drawDetailError(message) {
  $("detail-fields").replaceChildren(el("dt", {}, "error"), el("dd", {}, message));
  $("detail-history").replaceChildren();
  $("detail-progress").tBodies[0].replaceChildren();
  $("detail-trace-box").hidden = true;
}

$("detail-close").addEventListener("click", () => {
  state.selected = null;
  $("detail").hidden = true;
  if (state.last) { drawFailures(state.last); drawJobs(state.last); }
});

// ------------------------------------------------------------------ the stream

function setConn(s, text) { const c = $("conn"); c.dataset.state = s; c.textContent = text; }

function onSnapshot(s) {
  if (s.error) {
    $("banner").textContent = `${s.error} — showing the last answer`;
    $("banner").hidden = false;
    setConn("stale", "broker silent");
    return;
  }
  $("banner").hidden = true;
  setConn("live", "live");
  state.last = s;
  state.points.push([s.t, s.queued]);
  while (state.points.length && state.points[0][0] < s.t - state.window) state.points.shift();
  drawCards(s); drawWorkers(s); drawLatency(s); drawFailures(s); drawJobs(s); drawChart();
  if (state.selected && $("detail").dataset.status && !DONE.has($("detail").dataset.status)) refreshDetail(false);
  document.body.dataset.snapshots = String(Number(document.body.dataset.snapshots || 0) + 1);
}

const source = new EventSource("api/stream");
source.addEventListener("history", (e) => {
  const h = JSON.parse(e.data);
  state.every = h.every; state.window = h.window; state.points = h.points;
  drawChart();
});
source.addEventListener("snapshot", (e) => onSnapshot(JSON.parse(e.data)));
source.addEventListener("open", () => setConn("live", "live"));
source.addEventListener("error", () => setConn("reconnecting", "reconnecting…"));
window.addEventListener("resize", drawChart);
