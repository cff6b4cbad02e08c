// prescale dashboard: reads the JSON API and draws with uPlot (vendored). No build step.
"use strict";

const REFRESH_MS = 5000;
const state = { selected: new URLSearchParams(location.search).get("target"), charts: {} };

const $ = (sel) => document.querySelector(sel);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const fmtTime = (ts) => new Date(ts * 1000).toLocaleString();
const fmtNum = (x, d = 2) => (x == null || !isFinite(x) ? "—" : Number(x).toFixed(d));

// The API token, when reads need it (`[server] auth_reads`): kept in this tab's
// sessionStorage only. It is given in the form the page shows when a read answers 401 or
// 403, or in the address as `#token=…`, which the page moves to sessionStorage and removes
// from the address bar and the history at once.
const TOKEN_KEY = "prescale.token";

function takeTokenFromAddress() {
  const m = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (!m) return;
  try { sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1])); } catch (_) { /* storage off */ }
  history.replaceState(null, "", location.pathname + location.search);
}

function token() {
  try { return sessionStorage.getItem(TOKEN_KEY); } catch (_) { return null; }
}

// Shows the token form: `wrong` when the token given was refused; `what` needs it.
function askForToken(wrong, what = "Reading this API") {
  $("#auth").hidden = false;
  $("#auth-why").textContent = wrong
    ? "The API refused this token; enter the right one."
    : `${what} needs its token.`;
}

$("#auth").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const given = $("#auth-token").value.trim();
  if (!given) return;
  try { sessionStorage.setItem(TOKEN_KEY, given); } catch (_) { /* storage off */ }
  $("#auth-token").value = "";
  $("#auth").hidden = true;
  refresh();
});

async function getJson(url) {
  const headers = { accept: "application/json" };
  const t = token();
  if (t) headers.authorization = `Bearer ${t}`;
  const res = await fetch(url, { headers });
  if (res.status === 401 || res.status === 403) askForToken(res.status === 403 && t);
  if (!res.ok) {
    let msg = `${res.status}`;
    try { msg = (await res.json()).error.message; } catch (_) { /* not JSON */ }
    const err = new Error(`${url}: ${msg}`);
    err.status = res.status;
    throw err;
  }
  return res.json();
}

// A value or null from an optional request: the page shows what it can.
async function maybe(url) {
  try { return await getJson(url); } catch (e) { return { error: e }; }
}

function renderTargets(targets) {
  const rows = targets.map((t) => {
    const status = t.paused ? "paused" : t.status;
    const want = t.desired_replicas == null ? "" : ` → ${t.desired_replicas}`;
    return `<tr data-name="${esc(t.name)}" class="${t.name === state.selected ? "selected" : ""}">
      <td>${esc(t.name)}</td><td><span class="badge ${esc(status)}">${esc(status)}</span></td>
      <td>${t.replicas}${want}</td></tr>`;
  });
  $("#targets").innerHTML = rows.join("");
  for (const tr of document.querySelectorAll("#targets tr")) {
    tr.addEventListener("click", () => { state.selected = tr.dataset.name; refresh(); });
  }
}

function renderFacts(d) {
  const facts = [
    ["state", `<span class="badge ${esc(d.status)}">${esc(d.status)}</span>`],
    ["mode", esc(d.mode)],
    ["replicas now", d.replicas],
    ["asked for", d.desired_replicas ?? "—"],
    ["demand", `${fmtNum(d.demand_rps)} rps`],
    ["capacity / replica", `${fmtNum(d.capacity_rps)} rps${d.capacity && d.capacity.source ? ` (${esc(d.capacity.source)})` : ""}`],
    ["bounds", `${d.min_replicas}–${d.max_replicas}`],
    ["risk dial", riskText(d.risk)],
  ];
  $("#facts").innerHTML = facts.map(([k, v]) => `<div><span class="label">${k}</span><b>${v}</b></div>`).join("");
  const reasons = d.degraded_reasons || [];
  const b = d.bottleneck;
  let text = b && b.breach
    ? `<span class="warn">${breachText(b.breach)}</span>`
    : "No bottleneck predicted within the forecast horizon.";
  if (b && b.headroom_now_rps != null) text += ` Headroom now: ${fmtNum(b.headroom_now_rps)} rps.`;
  if (d.forecast_model) text += ` Model: ${esc(d.forecast_model.model)}.`;
  if (reasons.length) text += `<br><span class="warn">Degraded: ${reasons.map(esc).join("; ")}</span>`;
  $("#bottleneck").innerHTML = text;
}

// The cost/risk dial with its name where it has one.
function riskText(risk) {
  if (risk === undefined || risk === null) return "—";
  const names = { 0.25: "lean", 0.5: "balanced", 0.75: "safe" };
  return names[risk] ? `${risk} (${names[risk]})` : String(risk);
}

// A shortfall too small to show at two decimals is none.
const SHORTFALL_SHOWN = 0.005;

// What a predicted breach means, in words that are true for every kind of breach: the
// expected demand above capacity, or only the upper forecast, or (latency) neither.
function breachText(breach) {
  let text = `Predicted bottleneck: ${esc(breach.signal)} at ${fmtTime(breach.at)}` +
    ` (in ${Math.round(breach.seconds_to_breach / 60)} min)`;
  const expected = breach.expected_shortfall_rps ?? 0;
  const upper = breach.upper_shortfall_rps ?? 0;
  if (expected >= SHORTFALL_SHOWN) {
    text += `, short by ${fmtNum(expected)} rps`;
    if (upper - expected >= SHORTFALL_SHOWN) text += ` (${fmtNum(upper)} rps at the upper forecast)`;
  } else if (upper >= SHORTFALL_SHOWN) {
    text += `: the upper forecast exceeds capacity by up to ${fmtNum(upper)} rps; the expected demand stays within it`;
  }
  if (breach.predicted_latency_seconds != null) {
    text += `; predicted latency ${fmtNum(breach.predicted_latency_seconds, 3)} s`;
  }
  return text + ".";
}

// A gridded series as [[ts, value], …] with an explicit null where a step has no sample,
// so that a real gap in the data stays a gap in the line.
function withGaps(points, step) {
  const out = [];
  let prev = null;
  for (const p of points) {
    if (prev != null && step > 0 && p.timestamp - prev > step) out.push([prev + step, null]);
    out.push([p.timestamp, p.value]);
    prev = p.timestamp;
  }
  return out;
}

// Aligns several [[ts, value], …] series on one sorted time axis. Where a series has no
// point at a time of another it holds `undefined`, which uPlot draws across; only an
// explicit null (a gap in that series' own data) breaks its line. Filling those with null
// broke the demand line at every decision time, that is everywhere after start.
function align(seriesList) {
  const xs = [...new Set(seriesList.flatMap((s) => s.map((p) => p[0])))].sort((a, b) => a - b);
  const index = new Map(xs.map((x, i) => [x, i]));
  const cols = seriesList.map((s) => {
    const col = new Array(xs.length).fill(undefined);
    for (const [x, v] of s) col[index.get(x)] = v;
    return col;
  });
  return [xs, ...cols];
}

function draw(id, opts, data) {
  const el = document.getElementById(id);
  if (state.charts[id]) state.charts[id].destroy();
  el.innerHTML = "";
  const width = Math.max(320, el.clientWidth || 800);
  state.charts[id] = new uPlot({ width, height: 260, ...opts }, data, el);
  // For tests and people: how many values each chart shows.
  el.dataset.points = String(data.slice(1).reduce((n, col) => n + col.filter((v) => v != null).length, 0));
}

// The time of the last value of series `k` in aligned data, or "" when it has none.
function lastTime(data, k) {
  for (let i = data[0].length - 1; i >= 0; i--) if (data[k][i] != null) return String(data[0][i]);
  return "";
}

function renderDemandChart(detail, history, forecast, replicas) {
  const observed = withGaps(history.points || [], detail.step_seconds);
  const pts = forecast.points || [];
  const value = pts.map((p) => [p.timestamp, p.value]);
  const lower = pts.map((p) => [p.timestamp, p.lower]);
  const upper = pts.map((p) => [p.timestamp, p.upper]);
  const cap = (replicas.points || []).map((p) => [p.timestamp, p.value * detail.capacity_rps]);
  const data = align([observed, value, lower, upper, cap]);
  const stepped = uPlot.paths.stepped({ align: 1 });
  draw("demand-chart", {
    series: [
      {},
      { label: "demand", stroke: "#2b6cb0", width: 1.5 },
      { label: "forecast", stroke: "#805ad5", width: 1.5, dash: [6, 4] },
      { label: "lower", stroke: "rgba(128,90,213,.35)", width: 1 },
      { label: "upper", stroke: "rgba(128,90,213,.35)", width: 1 },
      { label: "capacity", stroke: "#1f8a4c", width: 2, paths: stepped, spanGaps: true },
    ],
    bands: [{ series: [4, 3], fill: "rgba(128,90,213,.15)" }],
    axes: [{}, { label: "requests/s" }],
  }, data);
  // For tests and people: the newest observed demand drawn.
  document.getElementById("demand-chart").dataset.lastDemand = lastTime(data, 1);
}

function renderReplicasChart(replicas) {
  const pts = (replicas.points || []).map((p) => [p.timestamp, p.value]);
  draw("replicas-chart", {
    series: [{}, { label: "replicas", stroke: "#dd6b20", width: 2, paths: uPlot.paths.stepped({ align: 1 }) }],
    axes: [{}, { label: "replicas" }],
  }, align([pts]));
}

function renderDecisions(list) {
  $("#decisions").innerHTML = list.slice(0, 15).map((d) => {
    const reasons = (d.reasons || []).map((r) => `<code title="${esc(r.message)}">${esc(r.code)}</code>`).join("");
    return `<tr><td>${fmtTime(d.at)}</td><td>${d.from} → ${d.to}</td><td class="reasons">${reasons}</td></tr>`;
  }).join("") || `<tr><td colspan="3" class="muted">no decision yet</td></tr>`;
}

const num = (v, digits = 1) => (v === null || v === undefined ? "—" : Number(v).toFixed(digits));

// The latest decision's explanation: its inputs, every policy's count, then each clamp.
function renderExplain(e) {
  const box = $("#explain");
  if (!e || !e.inputs) {
    box.className = "muted";
    box.textContent = "no decision yet";
    return;
  }
  const i = e.inputs;
  const peak = i.peak ? `${num(i.peak.value)} rps, upper ${num(i.peak.upper)} at ${fmtTime(i.peak.timestamp)}` : "—";
  const windows = [i.bounds.min_window, i.bounds.max_window].filter(Boolean).map(esc).join("; ") || "none";
  const budget = i.budget ? `${i.budget.granted} of ${i.budget.wanted} wanted (budget ${i.budget.total})` : "—";
  const facts = [
    ["observed", i.demand_rps === null ? "—" : `${num(i.demand_rps)} rps`],
    ["forecast peak", peak],
    ["capacity", i.capacity_rps === null ? "unknown" : `${num(i.capacity_rps)} rps/replica (${esc(i.capacity_source || "?")})`],
    ["bounds", `${i.bounds.min}–${i.bounds.max}; windows: ${windows}`],
    ["budget", budget],
  ].map(([k, v]) => `<tr><th>${k}</th><td>${v}</td></tr>`).join("");
  const policies = e.policies.map((p) =>
    `<tr class="${p.chosen ? "chosen" : ""}" data-policy="${esc(p.policy)}"><td>${esc(p.policy)}${p.chosen ? " ✔" : ""}</td>` +
    `<td>${p.replicas === null ? "—" : p.replicas}</td><td>${esc(p.message)}</td></tr>`).join("");
  const clamps = e.clamps.map((c) =>
    `<tr data-clamp="${esc(c.code)}"><td><code>${esc(c.code)}</code></td><td>${c.from} → ${c.to}</td><td>${esc(c.message)}</td></tr>`).join("")
    || `<tr><td colspan="3" class="muted">no clamp</td></tr>`;
  box.className = "";
  box.innerHTML = `<p>${fmtTime(e.at)}: ${e.from} → <b>${e.to}</b></p>` +
    `<table class="facts">${facts}</table>` +
    `<table><thead><tr><th>policy</th><th>replicas</th><th>how</th></tr></thead><tbody id="explain-policies">${policies}</tbody></table>` +
    `<table><thead><tr><th>then</th><th>count</th><th>why</th></tr></thead><tbody id="explain-clamps">${clamps}</tbody></table>`;
}

// The frontier of a replay of this target's history: lost % against replica-hours for
// prescale across the dial (a line, leanest first), the HPA's utilisations (squares), the
// clairvoyant cost (a dashed line) and the target as configured (a ringed dot).
function renderFrontier(f) {
  const box = $("#frontier");
  if (!f || f.error) {
    box.dataset.state = "none";
    box.className = "muted";
    box.textContent = f && f.error && f.error.status !== 404 ? f.error.message : "no replay yet";
    return;
  }
  box.dataset.state = f.state;
  if (f.state !== "done") {
    box.className = f.state === "failed" ? "warn" : "muted";
    box.textContent = f.state === "failed" ? f.error : `replaying the history since ${fmtTime(f.started_at)}…`;
    return;
  }
  const pts = [...f.frontier, ...f.hpa, f.current].filter(Boolean);
  const xs = pts.map((p) => p.replica_hours).concat(f.clairvoyant ? [f.clairvoyant.replica_hours] : []);
  const ys = pts.map((p) => p.lost_pct);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  const y1 = Math.max(...ys, 1e-9);
  const W = 640, H = 300, L = 56, B = 36, T = 10, R = 10;
  const sx = (x) => L + (x - x0) / Math.max(x1 - x0, 1e-9) * (W - L - R);
  const sy = (y) => H - B - y / y1 * (H - B - T);
  const line = f.frontier.map((p) => `${sx(p.replica_hours).toFixed(1)},${sy(p.lost_pct).toFixed(1)}`).join(" ");
  const dots = f.frontier.map((p) =>
    `<circle class="dial" cx="${sx(p.replica_hours).toFixed(1)}" cy="${sy(p.lost_pct).toFixed(1)}" r="3" fill="#805ad5"><title>risk ${p.setting}: ${fmtNum(p.lost_pct, 3)} % lost, ${fmtNum(p.replica_hours, 1)} replica-h</title></circle>`).join("");
  const hpa = f.hpa.map((p) =>
    `<rect class="hpa" x="${(sx(p.replica_hours) - 3).toFixed(1)}" y="${(sy(p.lost_pct) - 3).toFixed(1)}" width="6" height="6" fill="#dd6b20"><title>HPA at ${p.setting}: ${fmtNum(p.lost_pct, 3)} % lost, ${fmtNum(p.replica_hours, 1)} replica-h</title></rect>`).join("");
  const oracle = f.clairvoyant
    ? `<line x1="${sx(f.clairvoyant.replica_hours).toFixed(1)}" x2="${sx(f.clairvoyant.replica_hours).toFixed(1)}" y1="${T}" y2="${H - B}" stroke="#1f8a4c" stroke-dasharray="4 3"><title>clairvoyant: ${fmtNum(f.clairvoyant.replica_hours, 1)} replica-h</title></line>`
    : "";
  const c = f.current;
  const here = c
    ? `<circle id="frontier-current" cx="${sx(c.replica_hours).toFixed(1)}" cy="${sy(c.lost_pct).toFixed(1)}" r="7" fill="none" stroke="#1a202c" stroke-width="2"><title>this target now (risk ${riskText(f.current_risk)}): ${fmtNum(c.lost_pct, 3)} % lost, ${fmtNum(c.replica_hours, 1)} replica-h</title></circle>`
    : "";
  const axes = `<line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" stroke="#999"/><line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" stroke="#999"/>` +
    `<text x="${L}" y="${H - 8}">${fmtNum(x0, 0)}</text><text x="${W - R}" y="${H - 8}" text-anchor="end">${fmtNum(x1, 0)} replica-hours</text>` +
    `<text x="${L - 4}" y="${T + 8}" text-anchor="end">${fmtNum(y1, 2)} %</text><text x="${L - 4}" y="${H - B}" text-anchor="end">0 %</text>`;
  const rec = f.recommended_risk == null ? "no dial meets cost=hpa on this history"
    : `risk ${f.recommended_risk} loses the fewest requests at no more replica-hours than the HPA at 70 %`;
  box.className = "";
  box.innerHTML = `<svg viewBox="0 0 ${W} ${H}" role="img" aria-label="lost requests against replica-hours">${axes}${oracle}` +
    `<polyline points="${line}" fill="none" stroke="#805ad5" stroke-width="1.5"/>${dots}${hpa}${here}</svg>` +
    `<p>${fmtTime(f.history_from)} to ${fmtTime(f.history_to)} (first ${Math.round(f.skip_seconds / 3600)} h left out): ` +
    `this target now (ringed) ${fmtNum(c && c.lost_pct, 3)} % lost at ${fmtNum(c && c.replica_hours, 1)} replica-h; ${esc(rec)}.</p>` +
    `<p class="muted">Purple: prescale from risk 0 (left) to 1; orange squares: the HPA at 0.3 (right) to 0.9; dashed green: the clairvoyant scaler's cost.</p>`;
}

async function startReplay() {
  const name = state.selected;
  if (!name) return;
  const headers = { accept: "application/json" };
  const t = token();
  if (t) headers.authorization = `Bearer ${t}`;
  const res = await fetch(`/api/v1/targets/${encodeURIComponent(name)}/frontier`, { method: "POST", headers });
  if (res.status === 401 || res.status === 403) askForToken(res.status === 403 && t, "Replaying a target's history");
  if (!res.ok) {
    let msg = `${res.status}`;
    try { msg = (await res.json()).error.message; } catch (_) { /* not JSON */ }
    $("#frontier").textContent = msg;
    return;
  }
  refresh();
}

function renderDelivery(d) {
  const last = d.last_delivery;
  $("#delivery").innerHTML = last
    ? `${esc(last.kind)}: <b>${esc(last.outcome)}</b> after ${last.attempts} attempt(s) at ${fmtTime(last.at)}` +
      (last.error ? ` — <span class="warn">${esc(last.error)}</span>` : "")
    : "nothing sent yet";
}

// The header's word on the loops' schedule, from /readyz (which needs no token and
// answers 503 while not ready, with the same body).
async function renderCycles() {
  let cycles;
  try {
    cycles = (await (await fetch("/readyz", { headers: { accept: "application/json" } })).json()).cycles;
  } catch (_) { return; }
  if (!cycles) return;
  const el = $("#cycles");
  if (cycles.behind === 0) {
    el.className = "muted";
    el.textContent = "cycles on schedule";
  } else {
    el.className = "warn";
    el.textContent = `${cycles.behind} target(s) behind schedule, up to ${cycles.max_lag_seconds.toFixed(1)} s late (${cycles.slowest})`;
  }
}

async function refresh() {
  renderCycles();
  try {
    const { targets } = await getJson("/api/v1/targets");
    $("#auth").hidden = true;
    if (!state.selected && targets.length) state.selected = targets[0].name;
    renderTargets(targets);
    const name = state.selected;
    if (!name) return;
    const q = encodeURIComponent(name);
    const since = $("#window").value;
    const [detail, history, forecast, replicas, decisions, explain, frontier] = await Promise.all([
      getJson(`/api/v1/targets/${q}`),
      maybe(`/api/v1/targets/${q}/history?signal=rate&since=${since}`),
      maybe(`/api/v1/targets/${q}/forecast?horizon=1h`),
      maybe(`/api/v1/targets/${q}/history?signal=replicas&since=${since}`),
      maybe(`/api/v1/decisions?target=${q}&limit=50`),
      maybe(`/api/v1/targets/${q}/decisions/latest/explain`),
      maybe(`/api/v1/targets/${q}/frontier`),
    ]);
    $("#title").textContent = name;
    renderFacts(detail);
    renderDemandChart(detail, history, forecast, replicas);
    renderReplicasChart(replicas);
    renderDecisions(decisions.decisions || []);
    renderExplain(explain);
    renderFrontier(frontier);
    renderDelivery(detail);
    $("#error").textContent = "";
    $("#updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    document.body.dataset.rendered = String(Date.now());
  } catch (e) {
    $("#error").textContent = e.message;
  }
}

$("#window").addEventListener("change", refresh);
$("#frontier-run").addEventListener("click", startReplay);
takeTokenFromAddress();
refresh();
setInterval(refresh, REFRESH_MS);
