// Podium dashboard: builds the page from JSON and follows the daemon's server-sent events.
// Every value from a run document is put in the DOM as text (textContent), never as markup.
"use strict";

(() => {
  const BASE = "/dashboard";
  const SIDE_STATES = new Set(["failed", "cancelled"]);
  const $ = (id) => document.getElementById(id);
  const SVG_NS = "http://www.w3.org/2000/svg";

  let graphDef = null;      // GET /api/graph
  let graphNodes = new Map(); // state -> the elements that draw it (one per view)
  let shownState = null;
  let lastRun = null;
  let lastEvents = [];

  // ---- small DOM helpers --------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") node.textContent = String(value);
      else if (key === "className") node.className = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svgEl(tag, attrs) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    return node;
  }

  function when(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return isNaN(d) ? String(iso) : d.toLocaleString();
  }

  function timeOnly(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    if (isNaN(d)) return String(iso);
    const pad = (n, w = 2) => String(n).padStart(w, "0");
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  }

  function targetText(target) {
    if (!target || (!target.name && !target.project_id)) return "";
    return target.project_id ? `${target.name || "?"} · ${target.project_id}` : target.name;
  }

  function badge(status) {
    return el("span", { className: `badge status-${status || "unknown"}`, text: status || "unknown" });
  }

  function isSafeUrl(value) {
    try {
      const url = new URL(String(value));
      return url.protocol === "http:" || url.protocol === "https:";
    } catch (_e) {
      return false;
    }
  }

  function showProblem(text) {
    const p = $("problem");
    p.hidden = !text;
    p.textContent = text || "";
  }

  // ---- live streams -------------------------------------------------------------------------

  function setLive(state, text) {
    const live = $("live");
    live.dataset.state = state;
    live.textContent = text || state;
  }

  // EventSource reconnects by itself after a dropped stream; a refused one (503: too many
  // streams) is closed for good, so it is opened again once, later. Nothing here polls.
  function follow(url, handlers) {
    const source = new EventSource(url);
    source.onopen = () => setLive("live");
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {
        setLive("closed", "disconnected");
        setTimeout(() => follow(url, handlers), 10000);
      } else {
        setLive("reconnecting");
      }
    };
    for (const [name, handle] of Object.entries(handlers)) {
      source.addEventListener(name, (event) => handle(JSON.parse(event.data)));
    }
    source.addEventListener("problem", (event) => {
      const problem = JSON.parse(event.data);
      showProblem(problem ? problem.message : "");
    });
    return source;
  }

  // ---- the runs list ------------------------------------------------------------------------

  function renderRuns(runs) {
    const body = $("runs").tBodies[0];
    body.replaceChildren(...runs.map((run) => {
      const href = `${BASE}/runs/${encodeURIComponent(run.run_id)}`;
      const row = el("tr", { "data-run-id": run.run_id },
        el("td", {}, el("a", { href, className: "run-link", text: run.run_id })),
        el("td", {}, badge(run.status)),
        el("td", { className: "state-name" }, run.state || "",
          run.error_reason ? el("span", { className: "muted", text: ` · ${run.error_reason}` }) : null),
        el("td", { text: targetText(run.target) }),
        el("td", { title: run.updated_at || "", text: when(run.updated_at) }),
      );
      return row;
    }));
    $("runs-empty").hidden = runs.length > 0;
  }

  function showRuns() {
    document.title = "Podium: runs";
    $("runs-view").hidden = false;
    $("crumbs").replaceChildren(el("span", { text: "runs" }));
    follow(`${BASE}/api/runs/stream`, { runs: renderRuns });
  }

  // ---- the machine's graph ------------------------------------------------------------------

  // A retry edge is guarded by `failed_in_<state>`: only the one back to the run's
  // `failed_state` can be taken.
  function applicable(edge, run) {
    const guard = edge.conditions.map((c) => c.match(/^failed_in_(.+)$/)).find(Boolean);
    return !guard || !run || !run.failed_state || guard[1] === run.failed_state;
  }

  function outgoing(state, run) {
    return graphDef ? graphDef.edges.filter((e) => e.source === state && applicable(e, run)) : [];
  }

  function canSend(run, trigger) {
    return outgoing(run.state, run).some((e) => e.trigger === trigger);
  }

  function edgeLabel(e) {
    return e.trigger + (e.conditions.length ? ` [${e.conditions.join(", ")}]` : "");
  }

  function addNode(state, node) {
    if (!graphNodes.has(state)) graphNodes.set(state, []);
    graphNodes.get(state).push(node);
  }

  // The Graphviz SVG `podium graph` lays out: each state is <g class="node"><title>name</title>.
  // It is big (every failure, timer and retry edge, with its conditions): shown at its own
  // scale in a scrolling box that keeps the current state in view.
  function mountSvg(container, text) {
    const doc = new DOMParser().parseFromString(text, "image/svg+xml");
    const svg = document.importNode(doc.documentElement, true);
    for (const script of svg.querySelectorAll("script, foreignObject")) script.remove();
    container.classList.add("scroll");
    container.replaceChildren(svg);
    for (const node of svg.querySelectorAll("g.node")) {
      const title = node.querySelector("title");
      if (title) addNode(title.textContent.trim(), node);
    }
  }

  function scrollToNode(container, node) {
    if (container.hidden || !container.classList.contains("scroll")) return;
    const n = node.getBoundingClientRect(), c = container.getBoundingClientRect();
    container.scrollLeft += n.left + n.width / 2 - (c.left + c.width / 2);
    container.scrollTop += n.top + n.height / 2 - (c.top + c.height / 2);
  }

  // Without Graphviz: the states of the main line in a snake of rows, ranked by the longest
  // path of forward edges from the initial state; failed and cancelled apart, since every
  // active state leads to them (listed under the picture for the current state instead).
  function drawGraph(container, def) {
    const forward = def.edges.filter((e) => !e.internal && e.source !== e.dest
      && !SIDE_STATES.has(e.source) && !SIDE_STATES.has(e.dest));
    const rank = new Map([[def.initial, 0]]);
    for (let round = 0; round < def.states.length; round++) {
      let changed = false;
      for (const e of forward) {
        const r = rank.get(e.source);
        if (r !== undefined && r + 1 < def.states.length && (rank.get(e.dest) ?? -1) < r + 1) {
          rank.set(e.dest, r + 1);
          changed = true;
        }
      }
      if (!changed) break;
    }
    const order = def.states.filter((s) => rank.has(s) && !SIDE_STATES.has(s))
      .sort((a, b) => rank.get(a) - rank.get(b) || def.states.indexOf(a) - def.states.indexOf(b));
    const side = def.states.filter((s) => !order.includes(s));
    const cols = 6, w = 168, h = 40, gx = 34, gy = 46, pad = 12, top = 34;
    const pos = new Map();
    order.forEach((state, i) => {
      const row = Math.floor(i / cols);
      const col = row % 2 === 0 ? i % cols : cols - 1 - (i % cols);
      pos.set(state, { x: pad + col * (w + gx), y: top + row * (h + gy), row });
    });
    const rows = Math.ceil(order.length / cols);
    side.forEach((state, i) => {
      pos.set(state, { x: pad + (cols - side.length) / 2 * (w + gx) + i * (w + gx), y: top + rows * (h + gy), row: rows });
    });
    const width = pad * 2 + cols * w + (cols - 1) * gx;
    const height = top + pad + (rows + (side.length ? 1 : 0)) * (h + gy) - gy;
    const svg = svgEl("svg", { viewBox: `0 0 ${width} ${height}`, class: "drawn", role: "img",
      "aria-label": def.title });
    const defs = svgEl("defs");
    const marker = svgEl("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7,
      markerHeight: 7, orient: "auto-start-reverse" });
    marker.append(svgEl("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrowhead" }));
    defs.append(marker);
    svg.append(defs);
    const seen = new Set();
    for (const e of forward) {
      const a = pos.get(e.source), b = pos.get(e.dest);
      const key = `${e.source}>${e.dest}`;
      if (!a || !b || seen.has(key)) continue;
      seen.add(key);
      let d;
      if (a.row === b.row) {
        const leftToRight = b.x > a.x;
        const x1 = leftToRight ? a.x + w : a.x, x2 = leftToRight ? b.x : b.x + w;
        if (Math.abs(b.x - a.x) <= w + gx) d = `M ${x1} ${a.y + h / 2} L ${x2} ${b.y + h / 2}`;
        else d = `M ${a.x + w / 2} ${a.y} C ${a.x + w / 2} ${a.y - top + 4}, ${b.x + w / 2} ${b.y - top + 4}, ${b.x + w / 2} ${b.y}`;
      } else if (Math.abs(a.x - b.x) < 1) {
        d = `M ${a.x + w / 2} ${a.y + h} L ${b.x + w / 2} ${b.y}`;
      } else {
        d = `M ${a.x + w / 2} ${a.y + h} C ${a.x + w / 2} ${a.y + h + gy}, ${b.x + w / 2} ${b.y - gy}, ${b.x + w / 2} ${b.y}`;
      }
      const path = svgEl("path", { d, class: "edge", "marker-end": "url(#arrow)" });
      path.append(svgEl("title"));
      path.lastChild.textContent = `${e.source} → ${e.dest}: ${forward.filter((f) => f.source === e.source
        && f.dest === e.dest).map(edgeLabel).join(" | ")}`;
      svg.append(path);
    }
    for (const state of def.states) {
      const p = pos.get(state);
      const g = svgEl("g", { class: `node${SIDE_STATES.has(state) ? " side" : ""}${def.terminal.includes(state) ? " terminal" : ""}`,
        "data-state": state });
      const title = svgEl("title");
      title.textContent = state;
      g.append(title, svgEl("rect", { x: p.x, y: p.y, width: w, height: h, rx: 8 }));
      const label = svgEl("text", { x: p.x + w / 2, y: p.y + h / 2 + 4, "text-anchor": "middle" });
      label.textContent = state;
      g.append(label);
      svg.append(g);
      addNode(state, g);
    }
    container.replaceChildren(svg,
      el("p", { className: "muted legend", text: "Not drawn: every active state → failed (a failure or an expired "
        + "deadline) and → cancelled (cancel); retry leads back to the state the run stopped in. The moves out "
        + "of the current state are listed below." }));
  }

  function highlight(state, visited) {
    for (const [name, nodes] of graphNodes) {
      for (const node of nodes) {
        node.classList.toggle("current", name === state);
        node.classList.toggle("visited", name !== state && visited.has(name));
      }
    }
    if (state !== shownState) {
      shownState = state;
      for (const node of graphNodes.get(state) || []) scrollToNode(node.closest(".graph-view"), node);
    }
    const moves = outgoing(state, lastRun).filter((e) => !e.internal);
    const box = $("next-moves");
    if (!state || !moves.length) {
      box.replaceChildren(state ? el("p", { className: "muted", text: `${state}: no move out of this state.` }) : "");
      return;
    }
    box.replaceChildren(el("p", { className: "muted", text: `Moves out of ${state}:` }),
      el("ul", {}, ...moves.map((e) => el("li", {}, el("code", { text: edgeLabel(e) }), " → ",
        el("span", { className: "state-name", text: e.dest })))));
  }

  async function loadGraph() {
    const reply = await fetch(`${BASE}/api/graph`, { headers: { Accept: "application/json" } });
    if (!reply.ok) throw new Error(`graph: HTTP ${reply.status}`);
    graphDef = await reply.json();
    graphNodes = new Map();
    // The overview first: Graphviz's picture of every edge is several screens wide.
    const views = [["drawn", "overview", (box) => drawGraph(box, graphDef)]];
    if (graphDef.svg) views.push(["graphviz", "podium graph (Graphviz)", (box) => mountSvg(box, graphDef.svg)]);
    const boxes = views.map(([name, , draw]) => {
      const box = el("div", { className: "graph-view", "data-view": name });
      draw(box);
      return box;
    });
    const tabs = views.map(([name, label], i) => el("button", { type: "button", className: "tab",
      "data-view": name, text: label }));
    const choose = (i) => {
      boxes.forEach((box, j) => { box.hidden = i !== j; });
      tabs.forEach((tab, j) => tab.classList.toggle("chosen", i === j));
      for (const node of (graphNodes.get(shownState) || [])) scrollToNode(node.closest(".graph-view"), node);
    };
    tabs.forEach((tab, i) => tab.addEventListener("click", () => choose(i)));
    $("graph").replaceChildren(...boxes);
    $("graph-tabs").replaceChildren(...(tabs.length > 1 ? tabs : []));
    $("graph-kind").textContent = graphDef.svg ? "" : "(drawn from the machine's definition; with Graphviz's "
      + "dot installed the daemon also serves podium graph's own picture)";
    choose(0);
  }

  // ---- one run ------------------------------------------------------------------------------

  function visitedStates() {
    const seen = new Set();
    for (const e of lastEvents) {
      if (e.outcome !== "applied") continue;
      if (e.from_state) seen.add(e.from_state);
      if (e.to_state) seen.add(e.to_state);
    }
    return seen;
  }

  function renderMeta(run) {
    const rows = [
      ["target", targetText(run.target)],
      ["version", run.version],
      ["attempt", run.attempt],
      ["created", when(run.created_at)],
      ["updated", when(run.updated_at)],
      ["failed in", run.failed_state],
      ["next deadline", run.status === "running" ? when(run.wake_at) : ""],
      ["trace", run.trace_id],
    ].filter(([, value]) => value !== null && value !== undefined && value !== "");
    $("run-meta").replaceChildren(...rows.flatMap(([key, value]) => [el("dt", { text: key }),
      el("dd", { id: `meta-${key.replace(/\s+/g, "-")}`, text: value })]));
  }

  function renderError(error) {
    $("error").hidden = !error;
    if (!error) return;
    $("error-summary").replaceChildren(el("strong", { text: error.reason || "error" }),
      error.state ? ` in ${error.state}` : "");
    $("error-message").textContent = error.message || "";
  }

  function renderProgress(progress) {
    const box = $("progress");
    const keys = Object.keys(progress || {});
    if (!keys.length) {
      box.replaceChildren(el("p", { className: "muted", text: "Nothing yet." }));
      return;
    }
    const known = (graphDef && graphDef.progress_keys) || [];
    keys.sort((a, b) => {
      const ia = known.indexOf(a), ib = known.indexOf(b);
      return (ia < 0 ? 1e6 : ia) - (ib < 0 ? 1e6 : ib) || a.localeCompare(b);
    });
    box.replaceChildren(...keys.map((phase) => {
      const items = progress[phase] || {};
      const names = Object.keys(items).sort();
      const done = names.filter((n) => items[n] === "succeeded" || items[n] === "skipped").length;
      return el("div", { className: "phase", "data-phase": phase },
        el("div", { className: "phase-head" }, el("span", { className: "phase-name", text: phase }),
          el("span", { className: "muted", text: `${done}/${names.length}` })),
        el("div", { className: "items" }, ...names.map((name) => {
          const status = typeof items[name] === "string" ? items[name] : JSON.stringify(items[name]);
          return el("span", { className: `item status-${status}`, "data-item": name, title: `${name}: ${status}` },
            el("span", { className: "item-name", text: name }), el("span", { className: "item-status", text: status }));
        })));
    }));
  }

  function valueNode(value) {
    if (value === null || value === undefined) return el("span", { className: "muted", text: "—" });
    if (typeof value === "string") {
      return isSafeUrl(value) ? el("a", { href: value, target: "_blank", rel: "noopener noreferrer", text: value })
        : el("code", { text: value });
    }
    if (typeof value !== "object") return el("code", { text: String(value) });
    return el("pre", { className: "json", text: JSON.stringify(value, null, 2) });
  }

  function table(headers, rows) {
    return el("table", { className: "grid compact" },
      el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", { text: h })))),
      el("tbody", {}, ...rows.map((r) => el("tr", {}, ...r.map((c) => el("td", {}, c instanceof Node ? c : valueNode(c)))))));
  }

  function renderOutputs(outputs) {
    const box = $("outputs");
    const keys = Object.keys(outputs || {}).filter((k) => {
      const v = outputs[k];
      return v !== null && v !== undefined && !(Array.isArray(v) && !v.length)
        && !(typeof v === "object" && !Array.isArray(v) && !Object.keys(v).length);
    });
    if (!keys.length) {
      box.replaceChildren(el("p", { className: "muted", text: "Nothing yet." }));
      return;
    }
    const first = ["urls", "resources"];
    keys.sort((a, b) => (first.indexOf(b) - first.indexOf(a)) || a.localeCompare(b));
    box.replaceChildren(...keys.map((key) => {
      const value = outputs[key];
      let body;
      const records = Array.isArray(value) && value.every((v) => v && typeof v === "object" && !Array.isArray(v));
      if (records) {
        const cols = [...new Set(value.flatMap((v) => Object.keys(v)))];
        const order = ["kind", "name", "dataflow", "location", "why"];
        cols.sort((a, b) => ((order.indexOf(a) + 1 || 99) - (order.indexOf(b) + 1 || 99)) || a.localeCompare(b));
        body = table(cols, value.map((v) => cols.map((c) => v[c])));
      } else if (Array.isArray(value)) {
        body = el("ul", {}, ...value.map((v) => el("li", {}, valueNode(v))));
      } else if (typeof value === "object") {
        body = table(["name", key === "urls" ? "url" : "value"],
          Object.keys(value).sort().map((k) => [el("span", { text: k }), value[k]]));
      } else {
        body = valueNode(value);
      }
      return el("div", { className: "output", id: `output-${key}` }, el("h3", { text: key }), body);
    }));
  }

  function renderAudit(events) {
    lastEvents = events || [];
    $("audit-count").textContent = `(${lastEvents.length}${lastEvents.length >= 300 ? "+, the latest" : ""}, newest first)`;
    $("audit").tBodies[0].replaceChildren(...lastEvents.map((e) => el("tr", { className: `outcome-${e.outcome}` },
      el("td", { title: e.received_at || "", text: timeOnly(e.received_at) }),
      el("td", {}, el("code", { text: e.type || "" })),
      el("td", { text: e.item || "" }),
      el("td", { text: e.outcome || "" }),
      el("td", { className: "state-name", text: e.to_state && e.to_state !== e.from_state
        ? `${e.from_state || "∅"} → ${e.to_state}` : (e.from_state || "") }),
      el("td", { className: "detail", text: e.detail || "" }))));
    if (lastRun) highlight(lastRun.state, visitedStates());
  }

  function renderRun(runId, run) {
    lastRun = run;
    $("run-missing").hidden = !!run;
    if (!run) {
      $("run-status").replaceWith(Object.assign(badge("unknown"), { id: "run-status", textContent: "waiting" }));
      return;
    }
    document.title = `Podium: ${runId} ${run.status}`;
    const status = badge(run.status);
    status.id = "run-status";
    $("run-status").replaceWith(status);
    $("run-state").textContent = run.state || "";
    renderMeta(run);
    renderError(run.error);
    renderProgress(run.progress);
    renderOutputs(run.outputs);
    highlight(run.state, visitedStates());
    $("cancel").disabled = !canSend(run, "command_cancel");
    $("retry").disabled = !canSend(run, "command_retry");
  }

  async function send(runId, command) {
    if (command === "cancel" && !window.confirm(`Cancel run ${runId}?`)) return;
    const result = $("action-result");
    const button = $(command);
    button.disabled = true;
    result.hidden = false;
    result.className = "action-result";
    result.textContent = `${command}: sending…`;
    try {
      const reply = await fetch(`${BASE}/api/runs/${encodeURIComponent(runId)}/${command}`, {
        method: "POST", headers: { "X-Podium-Dashboard": "1", Accept: "application/json" },
      });
      const body = await reply.json().catch(() => ({}));
      if (!reply.ok) throw new Error(body.error || `HTTP ${reply.status}`);
      result.textContent = `${command} published (message ${body.message_id}); the audit log shows what the machine did with it.`;
    } catch (error) {
      result.className = "action-result failed";
      result.textContent = `${command} not sent: ${error.message}`;
      if (lastRun) renderRun(runId, lastRun);
    }
  }

  async function showRun(runId) {
    document.title = `Podium: ${runId}`;
    $("run-view").hidden = false;
    $("run-id").textContent = runId;
    $("crumbs").replaceChildren(el("a", { href: `${BASE}/`, text: "runs" }), " / ", el("span", { text: runId }));
    $("cancel").addEventListener("click", () => send(runId, "cancel"));
    $("retry").addEventListener("click", () => send(runId, "retry"));
    try {
      await loadGraph();
    } catch (error) {
      showProblem(`The machine's graph could not be loaded: ${error.message}`);
    }
    follow(`${BASE}/api/runs/${encodeURIComponent(runId)}/stream`, {
      run: (run) => renderRun(runId, run),
      events: renderAudit,
    });
  }

  const match = location.pathname.match(/^\/dashboard\/runs\/([^/]+)\/?$/);
  if (match) showRun(decodeURIComponent(match[1]));
  else showRuns();
})();
