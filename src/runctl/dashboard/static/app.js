// runctl dashboard: fills the page from the JSON API and keeps it live with server-sent events.
// Plain JS, no library. Every value from a run is set as text (never as HTML), except the chart's
// SVG, which the server renders with every value escaped (runctl.report_html.chart).
"use strict";

const TOKEN = document.querySelector("meta[name=runctl-token]").content;
const PAGE = document.body.dataset.page;
const RUN_ID = document.body.dataset.runId;

// The token came in the URL once: the server set a cookie, so drop it from the address bar.
if (new URLSearchParams(location.search).has("token")) {
  const url = new URL(location.href);
  url.searchParams.delete("token");
  history.replaceState(null, "", url.pathname + url.search + url.hash);
}

function api(path, options) {
  const opts = Object.assign({ credentials: "same-origin" }, options || {});
  opts.headers = Object.assign({ "X-Runctl-Token": TOKEN }, opts.headers || {});
  return fetch(path, opts);
}

async function getJSON(path) {
  const response = await api(path);
  if (!response.ok) throw new Error(path + ": HTTP " + response.status);
  return response.json();
}

function $(id) {
  return document.getElementById(id);
}

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function duration(seconds) {
  seconds = Math.max(0, Number(seconds));
  if (!isFinite(seconds)) return "-";
  if (seconds < 60) return seconds < 10 ? seconds.toFixed(1) + "s" : Math.floor(seconds) + "s";
  let minutes = Math.floor(Math.round(seconds) / 60);
  const secs = Math.round(seconds) % 60;
  if (minutes < 60) return minutes + "m" + String(secs).padStart(2, "0") + "s";
  const hours = Math.floor(minutes / 60);
  minutes %= 60;
  return hours + "h" + String(minutes).padStart(2, "0") + "m";
}

function money(value, digits) {
  return value === null || value === undefined ? "-" : "$" + Number(value).toFixed(digits === undefined ? 2 : digits);
}

function when(t) {
  if (!t) return "-";
  return new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19);
}

function live(text) {
  $("live").textContent = text;
}

function badgeNode(run) {
  const b = run.badge || { tone: "active", icon: "", label: run.status };
  const node = el("span", null, "badge " + b.tone);
  node.dataset.tone = b.tone;
  node.appendChild(el("span", b.icon, "icon"));
  node.appendChild(el("span", b.label, "label"));
  return node;
}

function eta(run) {
  return run.status === "running" && run.eta_seconds !== null && run.eta_seconds !== undefined
    ? duration(run.eta_seconds)
    : "-";
}

// ---- runs page ---------------------------------------------------------------------------------

function runsPage() {
  let runs = [];
  const status = $("filter-status");
  const provider = $("filter-provider");
  const params = new URLSearchParams(location.search);
  if (params.get("status")) status.value = params.get("status");

  function render() {
    const known = new Set(runs.map((r) => r.provider));
    for (const name of known) {
      if (![...provider.options].some((o) => o.value === name)) provider.appendChild(el("option", name));
    }
    if (params.get("provider") && !provider.dataset.set) {
      provider.value = params.get("provider");
      provider.dataset.set = "1";
    }
    const shown = runs.filter(
      (r) =>
        (!status.value || r.status === status.value || (status.value === "active" && r.active)) &&
        (!provider.value || r.provider === provider.value)
    );
    const body = $("runs").tBodies[0];
    const rows = shown.map((run) => {
      const tr = el("tr");
      tr.dataset.runId = run.run_id;
      tr.dataset.status = run.status;
      const name = el("td");
      const link = el("a", run.name);
      link.href = "/runs/" + encodeURIComponent(run.run_id);
      name.appendChild(link);
      name.appendChild(el("div", run.run_id, "sub mono"));
      tr.appendChild(name);
      const state = el("td", null, "state");
      state.appendChild(badgeNode(run));
      if (run.badge && run.badge.message && run.badge.tone === "bad") {
        state.appendChild(el("div", run.badge.message, "message bad"));
      }
      tr.appendChild(state);
      tr.appendChild(el("td", run.provider));
      tr.appendChild(el("td", run.host, "mono"));
      tr.appendChild(el("td", run.progress, "progress"));
      tr.appendChild(el("td", eta(run)));
      tr.appendChild(el("td", run.hourly_price ? money(run.hourly_price, 3) : "-"));
      tr.appendChild(el("td", run.cost_so_far !== undefined ? money(run.cost_so_far, 4) : "-"));
      tr.appendChild(el("td", when(run.started_at || run.created_at), "when"));
      return tr;
    });
    body.replaceChildren(...rows);
    $("runs-count").textContent = shown.length + " of " + runs.length + " runs";
    $("runs-empty").hidden = runs.length > 0;
  }

  function filtered() {
    const url = new URL(location.href);
    for (const [key, select] of [["status", status], ["provider", provider]]) {
      if (select.value) url.searchParams.set(key, select.value);
      else url.searchParams.delete(key);
    }
    history.replaceState(null, "", url.pathname + url.search);
    render();
  }
  status.addEventListener("change", filtered);
  provider.addEventListener("change", filtered);

  getJSON("/api/runs").then((list) => {
    runs = list;
    render();
  });
  const events = new EventSource("/api/events");
  events.addEventListener("runs", (e) => {
    runs = JSON.parse(e.data);
    render();
    live("live");
  });
  events.onerror = () => live("reconnecting...");
}

// ---- run page ----------------------------------------------------------------------------------

function runPage() {
  const records = [];
  let run = null;
  let logOffset = 0;
  let chartBusy = false;
  let chartDirty = false;
  let detailsKey = "";
  let frame = null;
  const metricSelect = $("metric");
  const smoothing = $("smoothing");
  const logBox = $("log");

  function metricNames() {
    const names = new Set();
    for (const r of records) {
      for (const [key, value] of Object.entries(r)) {
        if (typeof value === "number" && !["t", "step", "epoch", "epoch_progress", "total_epochs", "total_steps"].includes(key)) {
          names.add(key);
        }
      }
    }
    return [...names].sort((a, b) => (a === "loss" ? -1 : b === "loss" ? 1 : a.localeCompare(b)));
  }

  function updateMetricChoices() {
    const have = [...metricSelect.options].map((o) => o.value);
    for (const name of metricNames()) {
      if (!have.includes(name)) metricSelect.appendChild(el("option", name));
    }
    if (!metricSelect.value && metricSelect.options.length) metricSelect.value = metricSelect.options[0].value;
  }

  async function drawChart() {
    if (!metricSelect.value) return;
    if (chartBusy) {
      chartDirty = true;
      return;
    }
    chartBusy = true;
    try {
      const width = Math.max(320, Math.floor($("chart").clientWidth || 760));
      const query = new URLSearchParams({ metric: metricSelect.value, smoothing: smoothing.value, width: width });
      const response = await api("/api/runs/" + encodeURIComponent(RUN_ID) + "/chart?" + query);
      if (response.ok) {
        const svg = await response.text();
        $("chart").innerHTML = svg; // rendered by the server, every value escaped
        const raw = $("chart").querySelector("path.raw");
        const count = raw ? Number(raw.dataset.points) : 0;
        $("chart").dataset.points = String(count);
        $("points").textContent = count + " points";
        frame = chartFrame();
      }
    } finally {
      chartBusy = false;
      if (chartDirty) {
        chartDirty = false;
        setTimeout(drawChart, 50);
      }
    }
  }

  // The plotted series in the chart's pixel space, for the value under the mouse (TensorBoard-style).
  function chartFrame() {
    const svg = $("chart").querySelector("svg");
    const raw = svg && svg.querySelector("path.raw");
    if (!raw) return null;
    const name = metricSelect.value;
    const points = records
      .filter((r) => typeof r[name] === "number" && isFinite(r[name]))
      .map((r, n) => [typeof r.step === "number" ? r.step : n + 1, r[name]]);
    const d = raw.getAttribute("d").match(/-?[\d.]+,-?[\d.]+/g) || [];
    const px = d.map((pair) => pair.split(",").map(Number));
    if (!px.length || !points.length) return null;
    const x0 = points[0][0];
    const x1 = points[points.length - 1][0];
    return { svg, points, left: px[0][0], right: px[px.length - 1][0], x0, x1 };
  }

  $("chart").addEventListener("mousemove", (event) => {
    if (!frame) return;
    const box = frame.svg.getBoundingClientRect();
    const scale = frame.svg.viewBox.baseVal.width / box.width || 1;
    const x = (event.clientX - box.left) * scale;
    const share = frame.right > frame.left ? (x - frame.left) / (frame.right - frame.left) : 0;
    const target = frame.x0 + Math.min(1, Math.max(0, share)) * (frame.x1 - frame.x0);
    let best = frame.points[0];
    for (const p of frame.points) if (Math.abs(p[0] - target) < Math.abs(best[0] - target)) best = p;
    $("hover").textContent = "step " + best[0] + ": " + metricSelect.value + " " + Number(best[1]).toPrecision(5);
  });

  metricSelect.addEventListener("change", drawChart);
  smoothing.addEventListener("input", () => {
    $("smoothing-value").textContent = Number(smoothing.value).toFixed(2);
    drawChart();
  });

  function addRecords(list) {
    if (!list.length) return;
    records.push(...list);
    updateMetricChoices();
    drawChart();
  }

  function appendLog(text) {
    if (!text) return;
    const atBottom = logBox.scrollTop + logBox.clientHeight >= logBox.scrollHeight - 8;
    logBox.textContent += text;
    if (logBox.textContent.length > 400000) logBox.textContent = logBox.textContent.slice(-300000);
    if ($("log-follow").checked || atBottom) logBox.scrollTop = logBox.scrollHeight;
  }

  function showRun(next) {
    run = next;
    document.title = "runctl · " + run.name + " (" + run.run_id + ")";
    $("run-name").textContent = run.name;
    const badge = $("badge");
    const b = run.badge;
    badge.className = "badge " + b.tone;
    badge.dataset.tone = b.tone;
    badge.querySelector(".icon").textContent = b.icon;
    badge.querySelector(".label").textContent = b.label;
    const message = $("termination-message");
    message.textContent = b.message || "";
    message.className = "message " + b.tone;
    $("progress").textContent = run.progress;
    $("eta").textContent = run.status === "running" && run.eta_seconds != null ? "ETA " + duration(run.eta_seconds) : "";
    const cost = [];
    if (run.hourly_price) cost.push(money(run.hourly_price, 3) + "/hr");
    if (run.cost_so_far !== undefined) cost.push(money(run.cost_so_far, 4) + " so far");
    $("cost").textContent = cost.join(" · ");
    $("where").textContent = run.provider + " · " + run.host;
    $("stop").hidden = !run.active;
    const key = [run.status, run.termination_status, run.last_checkpoint, run.ended_at].join("|");
    if (key !== detailsKey) {
      detailsKey = key;
      loadDetails();
    }
  }

  async function loadDetails() {
    const data = await getJSON("/api/runs/" + encodeURIComponent(RUN_ID));
    showRun.called = true;
    if (!run) showRun(data.run);
    $("end-title").textContent = data.run.active ? "Where it stands" : "How it ended";
    $("end-reason").replaceChildren(...data.end_reason.map((line) => el("li", line.text, "end-" + line.kind)));
    showCheckpoints(data);
    const first = data.timeline.length ? data.timeline[0].t : 0;
    $("timeline").tBodies[0].replaceChildren(
      ...data.timeline.map((event) => {
        const tr = el("tr");
        tr.appendChild(el("td", when(event.t).slice(11) + "  +" + duration((event.t || first) - first), "when"));
        tr.appendChild(el("td", event.source));
        tr.appendChild(el("td", event.kind));
        const rest = Object.entries(event)
          .filter(([k, v]) => !["t", "kind", "source"].includes(k) && v !== null)
          .map(([k, v]) => k + "=" + (typeof v === "string" ? v : JSON.stringify(v)))
          .join(" ");
        tr.appendChild(el("td", rest.length > 300 ? rest.slice(0, 297) + "..." : rest, "mono"));
        return tr;
      })
    );
    $("problems-section").hidden = !data.problems.length;
    $("problems").replaceChildren(...data.problems.map((p) => el("li", p, "problem")));
  }

  function showCheckpoints(data) {
    const box = $("checkpoints");
    const parts = [];
    const listing = data.checkpoints;
    if (listing) {
      parts.push(el("p", "On the host, in " + listing.checkpoint_dir + ":"));
      const files = listing.files || [];
      if (files.length) {
        const table = el("table");
        table.id = "checkpoint-files";
        for (const f of files) {
          const tr = el("tr");
          tr.appendChild(el("td", f.path, "mono"));
          tr.appendChild(el("td", f.size + " B"));
          tr.appendChild(el("td", when(f.mtime), "when"));
          tr.appendChild(el("td", f.this_run ? "this run" : "earlier"));
          table.appendChild(tr);
        }
        parts.push(table);
      } else parts.push(el("p", "none", "sub"));
    }
    for (const event of data.downloaded || []) {
      parts.push(el("p", "Downloaded " + event.files + " file(s) to " + event.dest));
    }
    if (data.s3) {
      const s3 = data.s3;
      const said = s3.error || s3.message;
      parts.push(
        el(
          "p",
          "S3 " + s3.uri + ": " + (s3.uploaded || 0) + " verified, " + (s3.pending || 0) + " pending (" + s3.phase + ")" + (said ? " — " + said : ""),
          s3.error ? "problem" : ""
        )
      );
      if ((data.s3_uploads || []).length) {
        const table = el("table");
        table.id = "s3-files";
        for (const u of data.s3_uploads) {
          const tr = el("tr");
          tr.appendChild(el("td", u.key || u.name, "mono"));
          tr.appendChild(el("td", u.size + " B"));
          tr.appendChild(el("td", u.checksum || "-", "mono"));
          tr.appendChild(el("td", u.verified ? "✔ verified" : "not verified"));
          table.appendChild(tr);
        }
        parts.push(table);
      }
    }
    if (!parts.length) parts.push(el("p", "Not known yet.", "sub"));
    box.replaceChildren(...parts);
  }

  $("stop").addEventListener("click", async () => {
    if (!run || !window.confirm("Stop run " + run.name + " (" + run.run_id + ")?\n\nThe script is asked to save a checkpoint and stop (STOP_TRAINING), then SIGTERM, then SIGKILL, as `runctl runs stop` does.")) {
      return;
    }
    $("stop").disabled = true;
    $("stop-said").textContent = "stopping...";
    const response = await api("/api/runs/" + encodeURIComponent(RUN_ID) + "/stop", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: "{}",
    });
    const body = await response.json().catch(() => ({}));
    $("stop-said").textContent = response.ok
      ? "stop requested: STOP_TRAINING, then SIGTERM, then SIGKILL"
      : "stop refused: " + (body.error || response.status);
    if (!response.ok) $("stop").disabled = false;
  });

  async function start() {
    const base = "/api/runs/" + encodeURIComponent(RUN_ID);
    const [metrics, log] = await Promise.all([getJSON(base + "/metrics?since=0"), getJSON(base + "/log")]);
    addRecords(metrics.records);
    appendLog(log.text);
    logOffset = log.next_offset;
    $("log-size").textContent = "";
    const events = new EventSource(base + "/events?" + new URLSearchParams({ metrics: records.length, log: logOffset }));
    events.addEventListener("run", (e) => {
      const data = JSON.parse(e.data);
      showRun(data.run);
      live(data.problem ? "host: " + data.problem : "live");
    });
    events.addEventListener("metrics", (e) => addRecords(JSON.parse(e.data).records));
    events.addEventListener("log", (e) => {
      const data = JSON.parse(e.data);
      appendLog(data.text);
      logOffset = data.next_offset;
    });
    events.onerror = () => live("reconnecting...");
  }
  loadDetails()
    .then(start)
    .catch(async (error) => {
      const response = await api("/api/runs/" + encodeURIComponent(RUN_ID)).catch(() => null);
      const body = response ? await response.json().catch(() => ({})) : {};
      $("problems-section").hidden = false;
      $("problems").replaceChildren(el("li", body.error || String(error), "problem"));
      $("badge").querySelector(".label").textContent = "unknown run";
      live("");
    });
}

// ---- hosts page --------------------------------------------------------------------------------

function hostsPage() {
  function show(hosts) {
    $("hosts").tBodies[0].replaceChildren(
      ...hosts.map((h) => {
        const tr = el("tr");
        tr.dataset.hostKey = h.host_key;
        const name = el("td");
        name.appendChild(el("div", h.host_id, "mono"));
        if (h.address) name.appendChild(el("div", h.address, "sub mono"));
        tr.appendChild(name);
        tr.appendChild(el("td", h.provider));
        tr.appendChild(el("td", h.instance_type || "-"));
        tr.appendChild(el("td", h.state, h.billing ? "billing" : ""));
        tr.appendChild(el("td", h.hourly_price != null ? money(h.hourly_price, 3) : "-"));
        tr.appendChild(el("td", money(h.cost_so_far, 4)));
        tr.appendChild(el("td", h.active_runs.length ? h.active_runs.join(", ") : "none", "mono"));
        tr.appendChild(el("td", h.idle_seconds != null ? duration(h.idle_seconds) : "-"));
        tr.appendChild(el("td", h.warning || "", h.warning ? "warning" : ""));
        return tr;
      })
    );
    $("hosts-empty").hidden = hosts.length > 0;
  }
  getJSON("/api/hosts").then(show);
  const events = new EventSource("/api/events");
  events.addEventListener("hosts", (e) => {
    show(JSON.parse(e.data));
    live("live");
  });
  events.onerror = () => live("reconnecting...");
}

if (PAGE === "runs") runsPage();
else if (PAGE === "run") runPage();
else if (PAGE === "hosts") hostsPage();
