// The operator console: polls /console/data and draws every series with uPlot.
"use strict";

const token = new URLSearchParams(location.search).get("token");
const headers = token ? { Authorization: "Bearer " + token } : {};
const charts = {};  // id -> {plot, names}
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563"];
window.consoleUpdates = 0;  // read by the browser test: the page keeps updating

function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

// Align several series (each [[t, v], ...]) on the union of their timestamps.
function align(series) {
  const ts = [...new Set(series.flatMap(s => s.map(p => p[0])))].sort((a, b) => a - b);
  const cols = series.map(s => {
    const at = new Map(s.map(p => [p[0], p[1]]));
    return ts.map(t => (at.has(t) ? at.get(t) : null));
  });
  return [ts, ...cols];
}

function draw(id, data, names, el, extra) {
  const container = el || document.getElementById(id);
  const key = id + "|" + names.join(",");
  const aligned = align(names.map(n => data.series[n] || []));
  const points = aligned.slice(1).reduce((n, col) => n + col.filter(v => v !== null).length, 0);
  container.dataset.points = String(points);
  if (!aligned[0].length) {
    if (!container.querySelector(".empty")) container.innerHTML = '<p class="empty">no data yet</p>';
    return;
  }
  if (!charts[key]) {
    container.innerHTML = "";
    const opts = {
      width: Math.max(container.clientWidth || 480, 300), height: 200,
      series: [{}, ...names.map((n, i) => ({
        label: n, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: true,
        ...(extra && extra[n] ? extra[n] : {}),
      }))],
      axes: [{}, { size: 60 }],
    };
    charts[key] = new uPlot(opts, aligned, container);
  } else {
    charts[key].setData(aligned);
  }
}

function names(data, prefix, suffix) {
  return Object.keys(data.series).filter(n => n.startsWith(prefix) && (!suffix || n.endsWith(suffix))).sort();
}

function table(rows, cols) {
  if (!rows.length) return '<p class="empty">none yet</p>';
  return "<table><tr>" + cols.map(c => `<th>${esc(c[0])}</th>`).join("") + "</tr>" +
    rows.map(r => "<tr>" + cols.map(c => `<td>${c[1](r)}</td>`).join("") + "</tr>").join("") + "</table>";
}

function fmt(x) { return x === null || x === undefined ? "-" : typeof x === "number" ? x.toFixed(3) : esc(x); }

function render(data) {
  draw("chart-events", data, [...names(data, "rate.events."), ...names(data, "rate.dead_letters")]);
  draw("chart-lag", data, names(data, "lag."));
  const noLag = Object.entries(data.tables.lag_reasons || {}).filter(([, why]) => why);
  document.getElementById("lag-reasons").innerHTML = noLag.map(([who, why]) =>
    `<p class="empty">${esc(who)}: no lag figure (${esc(why)})</p>`).join("");
  draw("chart-items", data, ["index.items"]);
  draw("chart-freshness", data, ["index.freshness_p50_s", "index.freshness_p99_s"]);
  draw("chart-latency", data, names(data, "latency."));
  draw("chart-buffer", data, ["trainer.buffer_recent", "trainer.buffer_reservoir"]);

  // one chart per drift detector: statistic, threshold, and the alerts as points
  const drift = document.getElementById("drift-charts");
  const detectors = [...new Set(names(data, "drift.").map(n => n.split(".")[1]))];
  if (!detectors.length && !drift.querySelector(".empty")) drift.innerHTML = '<p class="empty">no detector has a window yet</p>';
  for (const det of detectors) {
    let el = document.getElementById("drift-" + det);
    if (!el) {
      drift.querySelector(".empty")?.remove();
      el = document.createElement("div");
      el.id = "drift-" + det;
      el.className = "chart drift-chart";
      el.innerHTML = `<h3 style="font-size:13px;margin:6px 0">${esc(det)}</h3><div></div>`;
      drift.appendChild(el);
    }
    const stat = data.series[`drift.${det}.statistic`] || [];
    const raised = data.alerts.filter(a => a.detector === det);
    // an alert marked where the statistic was when it was raised
    // each alert on the first sample of the statistic at or after the console first saw it
    const alertPoints = raised.map(a => stat.find(p => p[1] !== null && p[0] >= a.seen_at - data.interval_s))
      .filter(p => p !== undefined);
    const withAlerts = { series: { ...data.series, [`drift.${det}.alert`]: alertPoints } };
    draw("drift-" + det, withAlerts, [`drift.${det}.statistic`, `drift.${det}.threshold`, `drift.${det}.alert`],
      el.querySelector("div"), { [`drift.${det}.alert`]: { stroke: "#dc2626", width: 0, points: { show: true, size: 10, fill: "#dc2626" } },
        [`drift.${det}.threshold`]: { dash: [6, 4] } });
    el.dataset.alerts = String(raised.length);
    el.dataset.marked = String(alertPoints.length);
  }

  const trainer = data.tables.trainer || {};
  const retrains = trainer.retrains || [];
  document.getElementById("alerts").innerHTML = data.alerts.length ? data.alerts.slice().reverse().map(a => {
    const did = retrains.filter(r => (r.trigger || "").includes(a.alert_id));
    const evidence = Object.entries(a).filter(([k]) => !["alert_id", "detector", "raised_at", "seen_at"].includes(k))
      .map(([k, v]) => `${esc(k)}: <code>${esc(typeof v === "object" ? JSON.stringify(v) : v)}</code>`).join("<br>");
    return `<div class="alert"><b>${esc(a.detector)}</b> ${esc(a.raised_at)} <code>${esc(a.alert_id)}</code><br>${evidence}<br>` +
      `trainer: ${did.length ? did.map(r => esc(r.verdict)).join(", ") : "no retrain for it yet"}</div>`;
  }).join("") : '<p class="empty">no alert raised</p>';

  document.getElementById("retrains").innerHTML = table(retrains.slice().reverse(), [
    ["trigger", r => esc(r.trigger)], ["verdict", r => esc(r.verdict)],
    ["nDCG@10 serving → candidate", r => Object.keys({ ...r.serving, ...r.candidate }).map(s => `${esc(s)}: ${fmt(r.serving[s])} → ${fmt(r.candidate[s])}`).join("<br>")],
    ["reasons", r => (r.reasons || []).map(esc).join("<br>")],
  ]);
  document.getElementById("models").innerHTML = table(data.tables.models || [], [
    ["version", m => `<code>${esc(m.version)}</code>${m.serving ? " <b>serving</b>" : ""}`],
    ["artifact", m => esc(m.artifact)], ["created", m => esc(m.created_at)],
    ["roll back to it", m => `<code>${esc(m.rollback)}</code>`],
  ]);
  const rep = data.tables.replica || {};
  const rebuild = rep.rebuild ? `${rep.rebuild.version}: ${rep.rebuild.done}/${rep.rebuild.total} (${rep.rebuild.seconds} s)` : "none";
  document.getElementById("serving").innerHTML = table([rep], [
    ["model (replica)", r => `<code>${esc(r.model_version)}</code>`], ["trainer's serving", () => `<code>${esc(trainer.serving_version)}</code>`],
    ["index", r => esc(r.backend)], ["fusion", r => esc(r.fusion)], ["re-embedding / rebuild", () => esc(rebuild)],
  ]);
  const lfs = data.tables.label_functions || {};
  const lfRows = Object.entries(lfs).flatMap(([task, acc]) => Object.entries(acc || {}).map(([fn, a]) => ({ task, fn, a })));
  document.getElementById("lfs").innerHTML = table(lfRows, [["task", r => esc(r.task)], ["function", r => esc(r.fn)], ["accuracy", r => fmt(r.a)]]);
  const dead = data.tables.dead_letter_reasons || {};
  const deadRows = Object.entries(dead).flatMap(([w, reasons]) => Object.entries(reasons).map(([reason, n]) => ({ w, reason, n })));
  document.getElementById("dead").innerHTML = table(deadRows, [["worker", r => esc(r.w)], ["reason", r => esc(r.reason)], ["count", r => esc(r.n)]]);
  document.getElementById("sources").innerHTML = table(Object.entries(data.sources).map(([s, st]) => ({ s, st })), [
    ["source", r => esc(r.s)], ["state", r => r.st === "ok" ? "ok" : `<span class="bad">${esc(r.st)}</span>`]]);
  document.getElementById("status").textContent =
    `${data.samples} samples every ${data.interval_s} s · updated ${new Date(data.now * 1000).toLocaleTimeString()}`;
}

async function poll() {
  try {
    const answer = await fetch("console/data", { headers });
    if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
    render(await answer.json());
    window.consoleUpdates += 1;
  } catch (err) {
    document.getElementById("status").textContent = "cannot read console/data: " + err;
  }
  setTimeout(poll, 2000);
}
poll();
