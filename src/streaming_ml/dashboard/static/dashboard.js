// The dashboard page: one server-sent event stream ("snapshot" once, then a "tick" per
// collection round) drives every panel; the listing lookup is the only other request.
// Everything is built with DOM nodes and textContent: reasons and listings are data.
"use strict";

const COLORS = ["#2563eb", "#e8590c", "#2f9e44", "#ae3ec9", "#0c8599", "#c92a2a", "#5c940d", "#862e9c"];
const THROUGHPUT = {
  captured: "captured (change events)",
  consumed: "consumed by bridges",
  priced: "priced (predictions)",
  written: "rows written",
  dlq: "dead-lettered",
};
// Short names of the bench's stages (their full meaning is each row's tooltip).
const STAGE_NAMES = {
  commit_to_kafka: "commit → Kafka",
  kafka_to_bridge: "Kafka → bridge",
  bridge_batching: "bridge batching",
  model_call: "model call",
  bridge_to_topic: "bridge → topic",
  topic_to_table: "topic → table (sink)",
  end_to_end: "end to end",
};
const STATE_CLASS = {
  RUNNING: "ok", UP: "ok", READY: "ok", DONE: "ok",
  PAUSED: "warn", UNASSIGNED: "warn", RESTARTING: "warn", PARTIAL: "warn",
  SERVING: "ok",
  FAILED: "bad", MISSING: "bad", DOWN: "bad", "NO REPLICA": "bad", OPEN: "bad",
};

const view = { points: [], markers: [], state: null, charts: {} };

// --- small helpers ----------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else el.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

function bar(fraction, extraClass) {
  const el = h("div", { class: "barline" + (extraClass ? " " + extraClass : "") });
  el.style.width = `${Math.max(0, Math.min(1, fraction || 0)) * 100}%`;
  return el;
}

const isNum = (v) => typeof v === "number" && Number.isFinite(v);
const fmtRate = (v) => (!isNum(v) ? "–" : v < 10 ? v.toFixed(1) : Math.round(v).toLocaleString("en-GB"));
const fmtInt = (v) => (!isNum(v) ? "–" : Math.round(v).toLocaleString("en-GB"));
const fmtMoney = (v) => (!isNum(v) ? "–" : (v < 0 ? "-£" : "£") + Math.abs(Math.round(v)).toLocaleString("en-GB"));
const fmtSigned = (v) => (!isNum(v) ? "–" : (v < 0 ? "-£" : "+£") + Math.abs(Math.round(v)).toLocaleString("en-GB"));
const fmtPct = (v) => (!isNum(v) ? "–" : `${(v * 100).toFixed(1)}%`);
function fmtMs(v) {
  if (!isNum(v)) return "–";
  if (Math.abs(v) >= 1000) return `${(v / 1000).toFixed(Math.abs(v) >= 10000 ? 0 : 1)} s`;
  return Math.abs(v) < 10 ? `${v.toFixed(1)} ms` : `${Math.round(v)} ms`;
}
const fmtClock = (seconds) => new Date(seconds * 1000).toLocaleTimeString("en-GB");
function fmtClockMs(ms) {
  const d = new Date(ms);
  return `${d.toLocaleTimeString("en-GB")}.${String(d.getMilliseconds()).padStart(3, "0")}`;
}
function ago(seconds) {
  const s = Math.max(0, (view.state ? view.state.now : Date.now() / 1000) - seconds);
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  return `${(s / 3600).toFixed(1)} h ago`;
}
function fmtDuration(seconds) {
  if (!isNum(seconds)) return "?";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}
function badge(state) {
  const text = state || "UNKNOWN";
  return h("span", { class: `badge ${STATE_CLASS[text] || "unknown"}` }, text);
}
function shortTag(tag) {
  return tag ? String(tag) : "–";
}

// --- charts -----------------------------------------------------------------------------

function keysWithPrefix(prefix) {
  const keys = new Set();
  for (const point of view.points) {
    for (const key of Object.keys(point)) if (key.startsWith(prefix)) keys.add(key);
  }
  return [...keys].sort();
}

// Models worth a line: those the registry knows, or every one while it knows none (a
// service pinned with --model publishes nothing). The predictions topic outlives
// registries, so an evaluator reading it from the start meets models nobody serves.
function knownTag(tag) {
  const reg = view.state ? view.state.registry : null;
  const served = view.state && view.state.model_info ? Object.values(view.state.model_info.arms) : [];
  if (!reg || !reg.tags.length || served.some((a) => a.tag === tag)) return true;
  return reg.tags.includes(tag);
}

function pairKeys(prefix) {
  return keysWithPrefix(prefix).filter((key) => {
    const pair = key.slice(prefix.length);
    return knownTag(pair.slice(0, pair.lastIndexOf("|")));
  });
}

function pairLabel(key) {
  const pair = key.slice(key.indexOf("|") + 1);
  const cut = pair.lastIndexOf("|");
  return `${pair.slice(cut + 1)} ${pair.slice(0, cut)}`;
}

const CHARTS = {
  latency: {
    el: "latency-chart", height: 220, unit: fmtMs,
    keys: () => ["latency_p50", "latency_p95", "latency_p99"],
    label: (k) => k.replace("latency_", "") + " commit → row",
  },
  throughput: {
    el: "throughput-chart", height: 220, unit: fmtRate,
    keys: () => Object.keys(THROUGHPUT), label: (k) => THROUGHPUT[k] + " /s",
  },
  lag: {
    el: "lag-chart", height: 170, unit: fmtInt,
    keys: () => [...keysWithPrefix("lag_p"), "sink_lag"],
    label: (k) => (k === "sink_lag" ? "sink lag (predictions topic)" : `bridge lag, partition ${k.slice(5)}`),
  },
  mae: {
    el: "mae-chart", height: 170, unit: fmtMoney, markers: true,
    keys: () => pairKeys("mae|"), label: pairLabel,
  },
  mape: {
    el: "mape-chart", height: 170, unit: (v) => (isNum(v) ? `${v.toFixed(1)}%` : "–"), scale: 100, markers: true,
    keys: () => pairKeys("mape|"), label: pairLabel,
  },
};

// Vertical lines where the registry changed the models (promotions green, rollbacks red).
function markersPlugin() {
  const colour = { promoted: "#2f9e44", rolled_back: "#c92a2a" };
  return {
    hooks: {
      draw: [
        (u) => {
          const { left, top, width, height } = u.bbox;
          const ctx = u.ctx;
          ctx.save();
          ctx.font = `${11 * devicePixelRatio}px system-ui, sans-serif`;
          let shown = 0;
          for (const marker of view.markers) {
            if (marker.at < u.scales.x.min || marker.at > u.scales.x.max) continue;
            const x = u.valToPos(marker.at, "x", true);
            if (x < left || x > left + width) continue;
            ctx.strokeStyle = colour[marker.kind] || "#868e96";
            ctx.fillStyle = ctx.strokeStyle;
            ctx.setLineDash([5 * devicePixelRatio, 4 * devicePixelRatio]);
            ctx.lineWidth = 1.5 * devicePixelRatio;
            ctx.beginPath();
            ctx.moveTo(x, top);
            ctx.lineTo(x, top + height);
            ctx.stroke();
            // Labels of nearby markers take turns on three lines instead of overprinting.
            const line = 1 + (shown++ % 3);
            ctx.fillText(`${marker.kind.replace("_", " ")} ${marker.tag || ""}`, x + 4, top + 12 * line * devicePixelRatio);
          }
          ctx.restore();
        },
      ],
    },
  };
}

function chartData(spec, keys) {
  const scale = spec.scale || 1;
  return [
    view.points.map((p) => p.t),
    ...keys.map((k) => view.points.map((p) => (isNum(p[k]) ? p[k] * scale : null))),
  ];
}

function buildChart(spec, keys) {
  const el = document.getElementById(spec.el);
  el.replaceChildren();
  const options = {
    width: Math.max(300, el.clientWidth),
    height: spec.height,
    cursor: { drag: { x: false, y: false } },
    // Labels only: values under the cursor would make the legend jump on every round.
    legend: { live: false },
    scales: { x: { time: true }, y: { range: (_u, _min, max) => [0, isNum(max) && max > 0 ? max * 1.1 : 1] } },
    series: [
      {},
      ...keys.map((key, i) => ({
        label: spec.label(key),
        stroke: COLORS[i % COLORS.length],
        width: 1.5,
        value: (_u, v) => spec.unit(v),
      })),
    ],
    // Clock times on the x axis: uPlot's default stacks the date under the first tick,
    // which runs into the next one on a chart this narrow.
    axes: [{ space: 70, values: (_u, ticks) => ticks.map((t) => fmtClock(t)) }, { size: 66, values: (_u, ticks) => ticks.map((v) => spec.unit(v)) }],
    plugins: spec.markers ? [markersPlugin()] : [],
  };
  return new uPlot(options, chartData(spec, keys), el);
}

function renderCharts() {
  for (const [name, spec] of Object.entries(CHARTS)) {
    const keys = spec.keys();
    let chart = view.charts[name];
    // uPlot's series are fixed at creation: a new partition or model tag rebuilds the chart.
    if (!chart || chart.keys.join() !== keys.join()) {
      if (chart) chart.plot.destroy();
      chart = view.charts[name] = { keys, plot: buildChart(spec, keys) };
    } else {
      chart.plot.setData(chartData(spec, keys));
    }
    const el = document.getElementById(spec.el);
    const filled = view.points.filter((p) => keys.some((k) => isNum(p[k]) && p[k] > 0)).length;
    el.dataset.filled = String(filled);
  }
}

function resizeCharts() {
  for (const [name, spec] of Object.entries(CHARTS)) {
    const chart = view.charts[name];
    const el = document.getElementById(spec.el);
    if (chart) chart.plot.setSize({ width: Math.max(300, el.clientWidth), height: spec.height });
  }
}

// --- panel 1: the pipeline ------------------------------------------------------------

function connectorState(name) {
  const connect = view.state.connect;
  if (!connect) return { state: null, detail: "Connect not answering" };
  const entry = connect[name] || { state: "MISSING", tasks: [] };
  const tasks = entry.tasks.length ? `tasks ${entry.tasks.join(", ")}` : "no task";
  // A recognised cause has a plain reason; otherwise the trace's outer error.
  const failed = (entry.failed || []).map((f) => `${f.part} failed: ${f.reason || f.trace.split("\n")[0]}`);
  let state = entry.state;
  if (state === "RUNNING" && entry.tasks.some((t) => t !== "RUNNING")) state = "PARTIAL";
  return { state, detail: [tasks, ...failed].join(" · ") };
}

function hop(name, what, state, ...details) {
  return h(
    "div",
    { class: `hop ${STATE_CLASS[state] || ""}`, "data-hop": name, "data-state": state || "UNKNOWN" },
    h("div", { class: "name" }, name, " ", badge(state)),
    h("div", { class: "what" }, what),
    details.filter(Boolean).map((d) => h("div", { class: "detail" }, d)),
  );
}

function arrow(rate, label) {
  return h("div", { class: "arrow" }, h("span", { class: "rate" }, rate), h("div", { class: "line" }), h("span", {}, label));
}

function renderDiagram() {
  const s = view.state;
  const n = s.names;
  const last = view.points[view.points.length - 1] || {};
  const kafka = s.kafka;
  const members = s.members ? s.members.bridge : null;
  const bridges = s.bridges || [];
  const paused = bridges.filter((b) => b.up && b.paused).length;
  let bridgeState = null;
  if (members) bridgeState = members.length === 0 ? "NO REPLICA" : paused ? "PAUSED" : "RUNNING";
  const replicas = members
    ? members.map((m) => `${m.name}: partitions ${m.partitions.join(", ") || "none"}`)
    : ["group not described yet"];
  const lagTotal = kafka ? Object.values(kafka.lag).reduce((a, b) => a + b, 0) : null;
  const service = s.service;
  const arms = s.model_info ? Object.entries(s.model_info.arms).map(([arm, a]) => `${arm} ${shortTag(a.tag)}`) : [];
  const source = connectorState(n.source_connector);
  const sink = connectorState(n.sink_connector);
  const evaluators = s.members ? s.members.evaluator.length : null;

  document.getElementById("diagram").replaceChildren(
    hop("Postgres", n.listings_table, s.postgres ? "UP" : s.errors.postgres ? "DOWN" : null),
    arrow("WAL", "pgoutput"),
    hop("Debezium", n.source_connector, source.state, source.detail),
    arrow(fmtRate(last.captured) + "/s", "captured"),
    hop("Change topic", n.listings_topic, kafka ? "UP" : s.errors.kafka ? "DOWN" : null,
      kafka ? `${kafka.partitions.length} partitions` : null),
    arrow(fmtRate(last.consumed) + "/s", `lag ${fmtInt(lagTotal)}`),
    hop(`Bridge ×${members ? members.length : "?"}`, n.consumer_group, bridgeState,
      ...replicas, paused ? `${paused} paused (service or registry down): backpressure` : null),
    arrow(fmtRate(last.service_rows) + "/s", "model calls (rows)"),
    hop("Service", n.service_url, service ? (service.ready ? "READY" : "DOWN") : s.errors.service ? "DOWN" : null,
      ...arms),
    arrow(fmtRate(last.priced) + "/s", "priced"),
    hop("Predictions topic", n.predictions_topic, kafka ? "UP" : null,
      evaluators !== null ? `evaluator ×${evaluators}` : null),
    arrow(`lag ${fmtInt(kafka ? kafka.sink_lag : null)}`, "sink"),
    hop("JDBC sink", n.sink_connector, sink.state, sink.detail),
    arrow(fmtRate(last.written) + "/s", "written"),
    hop("Postgres", n.predictions_table, s.postgres ? "UP" : s.errors.postgres ? "DOWN" : null,
      s.postgres && isNum(s.postgres.rows) ? `${fmtInt(s.postgres.rows)} rows` : null),
  );

  const items = [];
  if (s.connect) {
    for (const [name, entry] of Object.entries(s.connect)) {
      items.push(h("span", { class: "item", "data-connector": name }, name, " ", badge(entry.state)));
    }
  }
  for (const b of bridges) {
    const restarts = Object.values(b.connector_restarts || {}).reduce((a, c) => a + c, 0);
    items.push(
      h("span", { class: "item" }, `bridge metrics ${b.url.replace(/^https?:\/\//, "")} `,
        badge(b.up ? (b.paused ? "PAUSED" : "UP") : "DOWN"),
        b.up ? ` · connector restarts ${fmtInt(restarts)} · aborted ${fmtInt(b.aborted)}` : ""),
    );
  }
  document.getElementById("connectors").replaceChildren(...items);
}

// --- panel 2: latency -------------------------------------------------------------------

function renderStages() {
  const pg = view.state.postgres;
  const table = document.getElementById("stages");
  if (!pg) {
    table.replaceChildren();
    return;
  }
  const stages = pg.latency_stages;
  const top = Math.max(1, ...stages.map((st) => (isNum(st.p95) ? st.p95 : 0)));
  table.replaceChildren(
    h("tr", {}, h("th", {}, "stage"), h("th", { class: "num" }, "p50"), h("th", { class: "num" }, "p95"),
      h("th", { class: "num" }, "p99"), h("th", { class: "num" }, "rows"), h("th", {}, "")),
    ...stages.map((st) =>
      h("tr", { "data-stage": st.stage, title: st.meaning },
        h("td", {}, STAGE_NAMES[st.stage] || st.stage),
        h("td", { class: "num" }, fmtMs(st.p50)),
        h("td", { class: "num" }, fmtMs(st.p95)),
        h("td", { class: "num" }, fmtMs(st.p99)),
        h("td", { class: "num" }, fmtInt(st.count)),
        h("td", { class: "bar" }, bar(isNum(st.p50) ? st.p50 / top : 0), bar(isNum(st.p95) ? st.p95 / top : 0, "p95"))),
    ),
  );
  document.getElementById("latency-note").textContent =
    `${fmtInt(pg.latency_pending)} sampled predictions waiting for their row` +
    (pg.latency_given_up ? ` · ${fmtInt(pg.latency_given_up)} never written (or overwritten first)` : "");
}

// --- panel 3: throughput, lag, DLQ -------------------------------------------------------

function renderDlq() {
  const s = view.state;
  const stages = {};
  for (const b of s.bridges || []) {
    for (const [stage, n] of Object.entries(b.dlq_by_stage || {})) stages[stage] = (stages[stage] || 0) + n;
  }
  const byStage = Object.entries(stages).map(([k, v]) => `${k} ${fmtInt(v)}`).join(", ");
  document.getElementById("dlq-summary").textContent =
    `${fmtInt(s.dlq.total_seen)} since the page's server started` + (byStage ? ` · per stage (bridge): ${byStage}` : "");
  document.getElementById("dlq-topic").textContent = `DLQ topic ${s.names.dlq_topic}: each record has the original bytes and a reason header`;
  const list = document.getElementById("dlq-list");
  if (!s.dlq.recent.length) {
    list.replaceChildren(h("li", { class: "muted" }, "no dead letters"));
    return;
  }
  list.replaceChildren(
    ...s.dlq.recent.map((d) =>
      h("li", { "data-listing": d.listing_id },
        h("span", { class: "muted" }, `${fmtClock(d.at)} · listing ${d.listing_id ?? "?"} · ${d.source} `),
        h("span", { class: "reason" }, d.reason)),
    ),
  );
}

// --- panel 4: models ----------------------------------------------------------------------

function renderArms() {
  const s = view.state;
  const served = s.model_info ? s.model_info.arms : {};
  const reg = s.registry;
  const pairs = s.evaluation ? s.evaluation.pairs : [];
  const rates = s.service ? s.service.rows_rate : {};
  const servedTotal = ["champion", "challenger"].reduce((a, arm) => a + (isNum(rates[arm]) ? rates[arm] : 0), 0);
  const rows = [];
  const seen = new Set();
  for (const [arm, info] of Object.entries(served)) {
    seen.add(`${info.tag}|${arm}`);
    rows.push({ arm, tag: info.tag, serving: true, split: info.split_percent });
  }
  for (const p of pairs) {
    if (!seen.has(`${p.model_tag}|${p.arm}`) && knownTag(p.model_tag)) {
      rows.push({ arm: p.arm, tag: p.model_tag, serving: false });
    }
  }
  const byPair = Object.fromEntries(pairs.map((p) => [`${p.model_tag}|${p.arm}`, p]));
  const configured = (row) => {
    if (!row.serving) return "–";
    if (row.arm === "shadow") return "all (not served)";
    const challenger = served.challenger ? served.challenger.split_percent || 0 : 0;
    return row.arm === "challenger" ? `${challenger}%` : `${100 - challenger}%`;
  };
  const observed = (row) => {
    if (!row.serving || !isNum(rates[row.arm])) return "–";
    if (row.arm === "shadow" || servedTotal === 0) return `${fmtRate(rates[row.arm])} rows/s`;
    return `${fmtPct(rates[row.arm] / servedTotal)} · ${fmtRate(rates[row.arm])} rows/s`;
  };
  const table = document.getElementById("arms");
  table.replaceChildren(
    h("tr", {}, ...["arm", "model tag", "", "share set", "share now", "MAE last N", "MAPE last N", "labelled", "coverage"]
      .map((c, i) => h("th", { class: i >= 5 ? "num" : "" }, c))),
    ...rows.map((row) => {
      const p = byPair[`${row.tag}|${row.arm}`];
      return h("tr", { "data-arm": row.arm, "data-tag": row.tag, "data-serving": String(row.serving) },
        h("td", {}, h("b", {}, row.arm)),
        h("td", {}, h("code", {}, shortTag(row.tag))),
        h("td", {}, row.serving ? badge("SERVING") : h("span", { class: "muted" }, "earlier")),
        h("td", {}, configured(row)),
        h("td", {}, observed(row)),
        h("td", { class: "num" }, p ? fmtMoney(p.last_n.mae) : "–"),
        h("td", { class: "num" }, p ? fmtPct(p.last_n.mape) : "–"),
        h("td", { class: "num" }, p ? fmtInt(p.cumulative.n) : "–"),
        h("td", { class: "num" }, p ? fmtPct(p.label_coverage) : "–"));
    }),
  );
  if (reg) {
    const exp = reg.experiment;
    const parts = [`registry: champion ${shortTag(reg.champion)}`, `previous ${shortTag(reg.previous)}`];
    if (exp) parts.push(`experiment: challenger ${shortTag(exp.challenger)} (${exp.split_percent}%), shadow ${shortTag(exp.shadow)}`);
    else parts.push("no experiment");
    table.append(h("caption", { id: "registry-line", "data-champion": reg.champion || "" }, parts.join(" · ")));
    document.getElementById("rollback-command").textContent = reg.previous
      ? `streaming-ml model rollback   # back to ${reg.previous}`
      : "streaming-ml model rollback";
  }
}

function renderDrift() {
  const ev = view.state.evaluation;
  const threshold = view.state.thresholds.drift_psi;
  document.getElementById("drift-threshold").textContent = `PSI per feature and partition; alert at ${threshold}`;
  const el = document.getElementById("drift");
  if (!ev) {
    el.replaceChildren(h("p", { class: "muted" }, "no evaluation yet: start `streaming-ml evaluator` (the demo does)"));
    return;
  }
  const partitions = Object.keys(ev.drift).sort((a, b) => a - b);
  const names = [];
  for (const p of partitions) {
    for (const name of [...Object.keys(ev.drift[p].features), ...Object.keys(ev.drift[p].prediction)]) {
      if (!names.includes(name)) names.push(name);
    }
  }
  if (!names.length) {
    el.replaceChildren(h("p", { class: "muted" }, "no drift window closed yet (a window is a few hundred rows per partition)"));
    return;
  }
  const cell = (p, name) => {
    const scores = { ...ev.drift[p].features, ...ev.drift[p].prediction }[name];
    if (!scores || !isNum(scores.psi)) return h("td", { class: "cell" }, "–");
    const level = scores.psi >= threshold ? "bad" : scores.psi >= threshold / 2 ? "warn" : "ok";
    return h("td", { class: `cell ${level}`, "data-feature": name, "data-partition": p, title: `PSI ${scores.psi}` }, scores.psi.toFixed(2));
  };
  el.replaceChildren(
    h("table", {},
      h("tr", {}, h("th", {}, "partition (windows)"), ...names.map((name) => h("th", {}, name))),
      ...partitions.map((p) => h("tr", {}, h("td", {}, `${p} (${ev.drift[p].windows})`), ...names.map((name) => cell(p, name))))),
  );
}

function renderAlerts() {
  const ev = view.state.evaluation;
  const list = document.getElementById("alerts");
  if (!ev) {
    document.getElementById("alerts-summary").textContent = "";
    list.replaceChildren();
    return;
  }
  const open = ev.alerts.filter((a) => a.open);
  document.getElementById("alerts-summary").textContent =
    `${open.length} open (raised in the last ${view.state.thresholds.open_alert_minutes} min) · ${fmtInt(ev.alerts_raised)} raised`;
  list.replaceChildren(
    ...(ev.alerts.length ? ev.alerts : [null]).map((a) =>
      a === null
        ? h("li", { class: "muted" }, "no alert raised")
        : h("li", { "data-kind": a.kind },
            badge(a.open ? "OPEN" : "EARLIER"), " ",
            // A missing feature has no statistic: the record lacked it, or it did not.
            h("b", {}, a.kind), ` ${a.feature || a.model_tag || ""} · `
              + (a.kind === "missing_feature" ? "" : `${a.score.toFixed(3)} > ${a.threshold} · `)
              + `${ago(a.raised_ts_ms / 1000)} · `,
            h("span", { class: "muted" }, a.message)),
    ),
  );
}

function renderEvents() {
  const reg = view.state.registry;
  const list = document.getElementById("events");
  if (!reg || !reg.events.length) {
    list.replaceChildren(h("li", { class: "muted" }, reg ? "no registry event yet" : "registry not read yet"));
    return;
  }
  list.replaceChildren(
    ...reg.events.map((e) =>
      h("li", { "data-kind": e.kind },
        `${fmtClock(e.at)} `, h("b", {}, e.kind.replace("_", " ")), " ",
        h("code", {}, e.tag || e.challenger || e.shadow || ""),
        e.note ? h("span", { class: "muted" }, ` · ${e.note}`) : null),
    ),
  );
}

function renderReprice() {
  const part = view.state.reprice;
  const table = document.getElementById("reprice");
  const summary = document.getElementById("reprice-summary");
  const jobs = part ? part.jobs : [];
  summary.textContent = part ? `table ${part.table}` : "";
  if (!jobs.length) {
    table.replaceChildren(h("tr", {}, h("td", { class: "muted" }, part ? "no re-pricing job yet" : "jobs not read yet")));
    return;
  }
  const head = h("tr", {}, ...["job", "model", "state", "done", "left", "rate", "ETA"].map((t) => h("th", {}, t)));
  table.replaceChildren(
    head,
    ...jobs.map((j) =>
      h("tr", { "data-state": j.state, "data-job": j.job_id },
        h("td", {}, `${j.job_id}`),
        h("td", {}, h("code", {}, shortTag(j.model_tag)), j.where_sql ? h("span", { class: "muted" }, ` where ${j.where_sql}`) : null),
        h("td", {}, badge(j.state === "running" ? "RUNNING" : j.state === "done" ? "DONE" : "STOPPED")),
        h("td", {}, bar(j.total ? j.done / j.total : 1), ` ${fmtInt(j.done)} / ${fmtInt(j.total)}`),
        h("td", {}, fmtInt(j.left)),
        h("td", {}, isNum(j.average_rate) ? `${fmtInt(j.average_rate)} rows/s` : "–"),
        h("td", {}, j.state !== "running" ? "–" : fmtDuration(j.eta_s))),
    ),
  );
}

// --- panel 5: a listing's journey -------------------------------------------------------

function renderJourney(answer) {
  const el = document.getElementById("journey-result");
  if (!answer.found) {
    el.replaceChildren(h("p", { class: "message muted" }, answer.error || answer.message || "not found"));
    return;
  }
  const features = h("div", {},
    h("h3", { class: "sub-head" }, `Listing ${answer.listing_id}`),
    h("table", {},
      ...Object.entries(answer.features).map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v === null ? "NULL" : String(v)))),
      h("tr", {}, h("th", {}, "price (label)"), h("td", {}, answer.label === null ? "not known yet" : fmtMoney(answer.label)))),
    Object.keys(answer.problems).length
      ? h("p", { class: "badge bad" }, "not priceable, dead-lettered: " + Object.entries(answer.problems).map(([k, v]) => `${k} ${v}`).join("; "))
      : null);

  const timelines = Object.entries(answer.stages).map(([arm, stages]) => {
    const first = stages[0].ts_ms;
    const span = Math.max(1, ...stages.map((st) => (isNum(st.ts_ms) ? st.ts_ms - first : 0)));
    return h("div", { class: "timeline", "data-arm": arm },
      h("h3", { class: "sub-head" }, `Stages (${arm} row)`),
      h("table", {},
        ...stages.map((st) =>
          h("tr", { "data-stage": st.stage },
            h("td", {}, st.meaning),
            h("td", { class: "num" }, isNum(st.ts_ms) ? fmtClockMs(st.ts_ms) : "–"),
            h("td", { class: "num" }, isNum(st.delta_ms) ? `+${fmtMs(st.delta_ms)}` : ""),
            h("td", { class: "bar" }, bar(isNum(st.ts_ms) ? (st.ts_ms - first) / span : 0)))),
        h("tr", {}, h("th", {}, "commit → row written"), h("th", { class: "num" }, ""),
          h("th", { class: "num" }, isNum(stages[stages.length - 1].ts_ms) ? fmtMs(stages[stages.length - 1].ts_ms - first) : "–"), h("th", {}, ""))));
  });

  const prices = h("div", {},
    h("h3", { class: "sub-head" }, "Price per arm"),
    answer.prices.length
      ? h("table", { id: "journey-prices" },
          h("tr", {}, ...["arm", "model", "price", "label", "error", "APE"].map((c, i) => h("th", { class: i >= 2 ? "num" : "" }, c))),
          ...answer.prices.map((p) =>
            h("tr", { "data-arm": p.arm },
              h("td", {}, p.arm), h("td", {}, h("code", {}, p.model_tag)),
              h("td", { class: "num" }, fmtMoney(p.predicted_price)),
              h("td", { class: "num" }, fmtMoney(p.label)),
              h("td", { class: "num" }, fmtMoney(p.error)),
              h("td", { class: "num" }, fmtPct(p.abs_pct_error)))))
      : h("p", { class: "muted" }, "no price written (yet): still in the pipeline, or dead-lettered"),
    answer.prices.some((p) => p.error_from === "listing")
      ? h("p", { class: "muted" }, "error computed from the listing's price (the evaluator has no outcome for it)")
      : null);
  el.replaceChildren(features, h("div", {}, ...timelines), prices, renderWhy(answer.explanation));
}

// As `streaming-ml explain` draws it: per arm, the base price, each feature's amount as a
// bar left (lowers the price) or right (raises it) of the axis, scaled to the largest,
// and the price. The amounts shown are whole pounds chosen by the server to add up.
function featureValue(name, value) {
  if (value === null || value === undefined) return "unknown";
  return name === "mileage" && isNum(value) ? value.toLocaleString("en-GB") : String(value);
}

function contributionBar(amount, largest) {
  const length = largest > 0 ? Math.abs(amount) / largest : 0;
  const side = (show) => h("div", { class: "side" }, show ? bar(length, amount ? "nonzero" : "") : null);
  return h("div", { class: "axis" }, side(amount < 0), side(amount >= 0));
}

function renderWhy(why) {
  const head = h("h3", { class: "sub-head" }, "Why this price");
  if (!why || !why.arms.length) {
    const reason = why ? why.reason : "this dashboard's server does not explain prices";
    return h("div", { id: "journey-why", class: "why" }, head,
      h("p", { id: "journey-why-reason", class: "muted" }, `No explanation: ${reason}`));
  }
  const charts = why.arms.map((a) => {
    const largest = Math.max(0, ...a.contributions.map((c) => Math.abs(c.amount)));
    const other = a.written_tag && a.written_tag !== a.model_tag;
    return h("div", { class: "why-arm", "data-arm": a.arm, "data-tag": a.model_tag },
      h("h4", {}, `Why ${fmtMoney(a.shown_price)}: ${a.arm}, `, h("code", {}, a.model_tag)),
      h("table", { class: "contributions" },
        h("tr", { class: "base" }, h("td", {}, "base price"), h("td", {}),
          h("td", { class: "num amount" }, fmtMoney(a.shown_base)), h("td", {})),
        ...a.contributions.map((c) =>
          h("tr", { "data-feature": c.feature, "data-amount": c.amount },
            h("td", {}, c.feature), h("td", { class: "num" }, featureValue(c.feature, c.value)),
            h("td", { class: "num amount" }, fmtSigned(c.shown)),
            h("td", { class: "bar" }, contributionBar(c.amount, largest)))),
        h("tr", { class: "total" }, h("th", {}, "= price"), h("th", {}),
          h("th", { class: "num amount" }, fmtMoney(a.shown_price)), h("th", {}))),
      other
        ? h("p", { class: "muted" }, `the ${a.arm} price above was written by `, h("code", {}, a.written_tag),
            "; this is the model that prices the arm now (a change of the listing re-prices it)")
        : null);
  });
  return h("div", { id: "journey-why", class: "why" }, head, h("div", { class: "why-arms" }, ...charts));
}

async function lookUp(listingId) {
  document.getElementById("explain-command").textContent = `streaming-ml explain ${listingId}`;
  const response = await fetch(`/api/listing/${encodeURIComponent(listingId)}`);
  renderJourney(await response.json());
}

// --- wiring --------------------------------------------------------------------------------

function renderErrors() {
  const errors = Object.entries(view.state.errors);
  const el = document.getElementById("errors");
  el.hidden = errors.length === 0;
  el.replaceChildren(
    h("b", {}, "Some sources do not answer (their panels stay empty):"),
    h("ul", {}, ...errors.map(([source, message]) => h("li", {}, h("b", {}, source), `: ${message}`))),
  );
}

function render() {
  if (!view.state || !view.state.names) return;
  document.getElementById("updated").textContent = `updated ${fmtClock(view.state.now)}`;
  for (const part of [renderErrors, renderDiagram, renderCharts, renderStages, renderDlq, renderArms, renderDrift, renderAlerts, renderEvents, renderReprice]) {
    try {
      part();
    } catch (error) {
      // One panel's surprise must not blank the others; the console says which.
      console.warn(`dashboard: ${part.name} failed`, error);
    }
  }
  const hint = document.getElementById("journey-hint");
  const latest = view.state.postgres ? view.state.postgres.latest_listing_id : null;
  hint.textContent = isNum(latest) ? `latest priced: ${latest}` : "";
}

function setLive(live) {
  const el = document.getElementById("live");
  el.className = `badge ${live ? "ok" : "warn"}`;
  el.textContent = live ? "live" : "reconnecting…";
}

function connect() {
  const events = new EventSource("/api/events");
  events.addEventListener("open", () => setLive(true));
  events.addEventListener("error", () => {
    setLive(false);
    // Refused (the server's cap on open pages, or it restarted): the browser gives up on a
    // non-200 answer, so try again a little later.
    if (events.readyState === EventSource.CLOSED) setTimeout(connect, 5000);
  });
  events.addEventListener("snapshot", (e) => {
    const snapshot = JSON.parse(e.data);
    view.points = snapshot.history;
    view.markers = snapshot.markers;
    view.state = snapshot.state;
    render();
  });
  events.addEventListener("tick", (e) => {
    const tick = JSON.parse(e.data);
    for (const point of tick.points) {
      const last = view.points[view.points.length - 1];
      if (!last || point.t > last.t) view.points.push(point);
    }
    const keep = Math.round((view.state ? view.state.history_points : 900) || 900);
    if (view.points.length > keep) view.points.splice(0, view.points.length - keep);
    view.markers = tick.markers;
    view.state = tick.state;
    render();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("journey-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const id = document.getElementById("journey-id").value.trim();
    if (id) lookUp(id).catch((error) => renderJourney({ found: false, error: `lookup failed: ${error}` }));
  });
  document.getElementById("journey-hint").addEventListener("click", () => {
    const latest = view.state && view.state.postgres ? view.state.postgres.latest_listing_id : null;
    if (isNum(latest)) {
      document.getElementById("journey-id").value = String(latest);
      lookUp(latest).catch((error) => renderJourney({ found: false, error: `lookup failed: ${error}` }));
    }
  });
  window.addEventListener("resize", resizeCharts);
  connect();
});

// Read-only handle for tests and the curious: the points and state the page draws.
window.dashboard = view;
