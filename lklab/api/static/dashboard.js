// lklab dashboard: polls the JSON API every POLL_MS and renders Lambda and Kappa side by side.
// The answers come from the same endpoints readers use (/views/{view}, /kappa/views/{view});
// each panel keeps the exact URL it read in data-url, so what it shows can be checked against it.
"use strict";
const POLL_MS = 1000;
const $ = (selector, root = document) => root.querySelector(selector);
const esc = (value) => String(value ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const num = (value) => (value === null || value === undefined ? "—" : Number(value).toLocaleString("en-US"));
const secs = (value) => (value === null || value === undefined ? "—" : `${Number(value).toFixed(1)} s`);
const clock = (iso) => (iso ? iso.replace("T", " ").slice(0, 19) : "—");  // UTC, to the second
let specs = {};
let timer = null;

async function getJSON(url) {
  try {
    const response = await fetch(url, {cache: "no-store"});
    let body = {};
    try { body = await response.json(); } catch (e) { /* not JSON */ }
    return {status: response.status, body};
  } catch (e) {
    return {status: 0, body: {detail: `the API did not answer (${e})`}};
  }
}

function query() {
  const view = $("#view").value;
  const q = new URLSearchParams();
  const key = $("#key").value.trim();
  if (key) q.set("key", key);
  const minutes = $("#range").value;
  if (minutes) {  // floored to the minute: the same URL for a whole minute
    const from = new Date(Math.floor((Date.now() - Number(minutes) * 60000) / 60000) * 60000);
    q.set("from", from.toISOString().slice(0, 16) + "Z");
  }
  q.set("limit", "100000");
  return {view, q: q.toString()};
}

function totals(spec, rows) {
  const sums = {};
  for (const column of spec.values) sums[column] = 0;
  for (const row of rows) for (const column of spec.values) sums[column] += Number(row[column] ?? 0);
  return sums;
}

function renderAnswer(panel, spec, url, answer) {
  panel.dataset.url = url;
  const badge = $("[data-field=status]", panel);
  const rows = answer.body.rows || [];
  if (answer.status !== 200) {
    badge.className = "badge error";
    badge.textContent = `error ${answer.status}: ${answer.body.detail || "no answer"}`;
    panel.dataset.state = "error";
  } else if (answer.body.stale) {
    badge.className = "badge stale";
    badge.textContent = `stale: ${answer.body.stale_reason}`;
    panel.dataset.state = "stale";
  } else {
    badge.className = "badge";
    badge.textContent = "fresh";
    panel.dataset.state = "fresh";
  }
  const sums = totals(spec, rows);
  const cell = $("[data-field=totals]", panel);
  cell.innerHTML = spec.values.map((c) => `${esc(c)} <b data-total="${esc(c)}" data-value="${sums[c]}">${num(sums[c])}</b>`).join(" · ");
  $("[data-field=rows]", panel).textContent = `${rows.length} window(s)${answer.body.truncated ? " (truncated)" : ""}`;
  panel.dataset.rows = String(rows.length);
  const columns = [spec.entity, "window_start", ...spec.values, ...(panel.dataset.arch === "lambda" ? ["source"] : [])];
  $("table.rows thead", panel).innerHTML = `<tr>${columns.map((c) => `<th>${esc(c)}</th>`).join("")}</tr>`;
  const newest = [...rows].sort((a, b) => (a.window_start < b.window_start ? 1 : -1)).slice(0, 10);
  $("table.rows tbody", panel).innerHTML = newest.map((r) => `<tr>${columns.map((c) => `<td>${esc(r[c])}</td>`).join("")}</tr>`).join("");
}

function renderLambda(panel, answer, state) {
  const l = state.lambda || {};
  const body = answer.body;
  $("[data-field=mode]", panel).textContent = body.mode ? `${body.mode}${l.speed_layer ? "" : " (this view is batch-only)"}` : "—";
  $("[data-field=T]", panel).textContent = body.T || "no promoted batch build yet";
  $("[data-field=build]", panel).textContent = l.build_id ? `${l.build_id}, ${secs(l.build_age_s)} old` : "none yet";
  $("[data-field=watermark]", panel).textContent = body.watermark || "—";
  $("[data-field=freshness]", panel).textContent = `${num(l.speed_lag)} records · ${secs(l.speed_heartbeat_age_s)}`;
  const blocked = body.batch_blocked;
  $("[data-field=blocked]", panel).textContent = blocked ? `blocked since ${blocked.since} by ${blocked.gate || "a failure"}: ${blocked.reason}` : "not blocked";
}

function renderKappa(panel, answer, state) {
  const body = answer.body;
  $("[data-field=version]", panel).textContent = body.version || "nothing published";
  panel.dataset.version = body.version || "";
  $("[data-field=job]", panel).textContent = body.version ? (body.running ? "running" : "not running") : "—";
  $("[data-field=watermark]", panel).textContent = body.watermark || "—";
  $("[data-field=freshness]", panel).textContent = `${num(body.lag)} records · ${secs(body.heartbeat_age_s)}`;
  const others = ((state.kappa || {}).jobs || []).filter((j) => j.output !== body.version);
  $("[data-field=jobs]", panel).textContent = others.length
    ? others.map((j) => `${j.output} ${j.running ? "running" : "stopped"}, lag ${num(j.lag)}`).join("; ") : "none";
}

function renderCharts(state) {
  const history = state.history || [];
  const t = history.map((s) => s.t);
  const view = state.view;
  const line = (name, y) => ({x: t, y, name, mode: "lines", type: "scatter"});
  const layout = (title, unit) => ({title: {text: title, font: {size: 14}}, margin: {l: 50, r: 10, t: 36, b: 36},
    yaxis: {title: {text: unit}, rangemode: "tozero"}, legend: {orientation: "h"}});
  const config = {displayModeBar: false, responsive: true};
  Plotly.react("chart-lag", [
    line("Lambda speed layer", history.map((s) => s.lambda_lag)),
    line(`Kappa ${view}`, history.map((s) => (s.kappa_lag || {})[view] ?? null)),
  ], layout("lag behind the log", "records"), config);
  Plotly.react("chart-latency", [
    line("Lambda speed layer", history.map((s) => s.lambda_visible_age_s)),
    line(`Kappa ${view}`, history.map((s) => (s.kappa_visible_age_s || {})[view] ?? null)),
  ], layout("event → visible: age of the newest visible event", "seconds"), config);
}

function renderTables(state) {
  $("#gates tbody").innerHTML = (state.gates || []).map((g) => {
    const links = [g.data_docs ? `<a class="docs-link" href="${esc(g.data_docs)}" target="_blank">Data Docs</a>` : "",
                   g.dagster_run ? `<a href="${esc(g.dagster_run)}" target="_blank">Dagster run</a>` : ""].filter(Boolean).join(" · ");
    return `<tr><td title="${esc(g.at)}">${esc(clock(g.at))}</td><td>${esc(g.arch)}</td><td>${esc(g.subject)}</td><td>${esc(g.gate)}</td>`
      + `<td class="${esc(g.status)}">${esc(g.status)}</td><td>${esc(g.summary)}</td><td>${links}</td></tr>`;
  }).join("");
  $("#publishes tbody").innerHTML = (state.publishes || []).map((p) =>
    `<tr><td title="${esc(p.at)}">${esc(clock(p.at))}</td><td>${esc(p.arch)}</td><td>${esc(p.view)}</td><td>${esc(p.action)}</td><td>${esc(p.target)}</td>`
    + `<td>${esc(p.from_target || "—")}</td><td>${esc(p.who)} · ${esc(p.why)}</td></tr>`).join("");
  $("#dagster-link").href = (state.links || {}).dagster || "#";
}

async function refresh() {
  clearTimeout(timer);
  const {view, q} = query();
  const spec = specs[view];
  if (spec) {
    const lambdaUrl = `/views/${encodeURIComponent(view)}?${q}`;
    const kappaUrl = `/kappa/views/${encodeURIComponent(view)}?${q}`;
    const [lambda, kappa, state] = await Promise.all([getJSON(lambdaUrl), getJSON(kappaUrl), getJSON(`/dashboard/state?view=${encodeURIComponent(view)}`)]);
    const lambdaPanel = $("[data-arch=lambda]");
    const kappaPanel = $("[data-arch=kappa]");
    renderAnswer(lambdaPanel, spec, lambdaUrl, lambda);
    renderAnswer(kappaPanel, spec, kappaUrl, kappa);
    const st = state.status === 200 ? state.body : {};
    renderLambda(lambdaPanel, lambda, st);
    renderKappa(kappaPanel, kappa, st);
    if (state.status === 200) { renderCharts(st); renderTables(st); }
    $("#updated").textContent = `updated ${new Date().toISOString()}`;
    document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
  }
  timer = setTimeout(refresh, POLL_MS);
}

async function start() {
  const listed = await getJSON("/views");
  for (const v of listed.body.views || []) specs[v.name] = v;
  const wanted = new URLSearchParams(location.search).get("view");
  $("#view").innerHTML = Object.keys(specs).map((name) => `<option${name === wanted ? " selected" : ""}>${esc(name)}</option>`).join("");
  for (const id of ["view", "range"]) $(`#${id}`).addEventListener("change", refresh);
  $("#key").addEventListener("change", refresh);
  refresh();
}
start();
