"""The dashboard's three HTML pages: shells that static/app.js fills from the JSON API and keeps live.

The token goes into a meta tag of pages only the token's holder gets (every request is checked,
see access.py), so the page's script can send it as X-Runctl-Token; no other site can read it.
"""

from __future__ import annotations

from typing import Any

from ..report_html import esc

_RUNS = """
<section><h1>Runs</h1>
<div class="filters">
  <label>status <select id="filter-status"><option value="">all</option><option value="active">active</option>
  <option>running</option><option>completed</option><option>stopped</option><option>failed</option>
  <option>interrupted</option><option>lost</option></select></label>
  <label>provider <select id="filter-provider"><option value="">all</option></select></label>
  <span class="sub" id="runs-count"></span>
</div>
<table id="runs"><thead><tr><th>run</th><th>status</th><th>provider</th><th>host</th><th>progress</th>
<th>ETA</th><th>$/hr</th><th>cost so far</th><th>started (UTC)</th></tr></thead><tbody></tbody></table>
<p class="sub" id="runs-empty" hidden>No runs yet. Start one: <code>runctl local train train.py</code></p>
</section>
"""

_RUN = """
<section id="head"><h1><span id="run-name"></span>
<span class="sub mono">run <span id="run-id">%(run_id)s</span></span></h1>
<div id="badge" class="badge active"><span class="icon"></span><span class="label">loading</span></div>
<p id="termination-message" class="message"></p>
<div class="facts"><span id="progress"></span><span id="eta"></span><span id="cost"></span>
<span id="where"></span></div>
<div class="actions"><button id="stop" type="button" hidden>Stop</button><span id="stop-said" class="sub"></span></div>
</section>
<section id="metrics"><h2>Metrics</h2>
<div class="chart-controls">
  <label>metric <select id="metric"></select></label>
  <label>smoothing <input id="smoothing" type="range" min="0" max="0.99" step="0.01" value="0.6">
  <span id="smoothing-value" class="mono">0.60</span></label>
  <span class="sub" id="points"></span><span class="mono sub" id="hover"></span>
</div>
<div id="chart" class="chart"><p class="sub">No metrics yet.</p></div>
</section>
<section id="log-section"><h2>Log <span class="sub" id="log-size"></span></h2>
<label class="sub"><input type="checkbox" id="log-follow" checked> follow</label>
<pre id="log"></pre></section>
<section id="end-section"><h2 id="end-title">Where it stands</h2><ul id="end-reason"></ul></section>
<section id="checkpoints-section"><h2>Checkpoints</h2><div id="checkpoints"><p class="sub">loading</p></div></section>
<section id="timeline-section"><h2>Timeline</h2><table id="timeline"><thead><tr><th>time (UTC)</th><th>by</th>
<th>event</th><th>details</th></tr></thead><tbody></tbody></table></section>
<section id="problems-section" hidden><h2>Notes</h2><ul id="problems"></ul></section>
"""

_HOSTS = """
<section><h1>Hosts</h1>
<table id="hosts"><thead><tr><th>host</th><th>provider</th><th>type</th><th>state</th><th>$/hr</th>
<th>cost so far</th><th>active runs</th><th>idle</th><th></th></tr></thead><tbody></tbody></table>
<p class="sub" id="hosts-empty" hidden>No hosts recorded: runctl records the cloud hosts (EC2, Lambda) it runs on.</p>
</section>
"""

BODIES = {"runs": _RUNS, "run": _RUN, "hosts": _HOSTS}
TITLES = {"runs": "Runs", "run": "Run %(run_id)s", "hosts": "Hosts"}


def page(name: str, token: str, **values: Any) -> str:
    """The page `name` (runs, run, hosts); `values` (a run id) are escaped into it."""
    safe = {key: esc(value) for key, value in values.items()}
    nav = "".join(
        '<a href="%s"%s>%s</a>' % (href, ' class="here"' if name == key else "", label)
        for key, href, label in (("runs", "/", "Runs"), ("hosts", "/hosts", "Hosts"))
    )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        "<meta name='runctl-token' content='%s'><title>runctl · %s</title>"
        "<link rel='stylesheet' href='/static/style.css'></head>"
        "<body data-page='%s' data-run-id='%s'><nav><b>runctl</b>%s<span id='live' class='sub'></span></nav>"
        "<main>%s</main><script src='/static/app.js'></script></body></html>"
        % (
            esc(token),
            TITLES[name] % safe,
            esc(name),
            safe.get("run_id", ""),
            nav,
            BODIES[name] % safe if safe else BODIES[name],
        )
    )
