// meshd admin dashboard, the panels under the routers:
//   - Replicas: each endpoint's attempts, success and p50/p99 latency per 10 s over the last
//     5 minutes (/admin/replicas, sampled by the admin server, so the history is there when the
//     page opens), polled every REPLICAS_MS;
//   - Recent requests: the last requests each router answered (/admin/requests), every RECENT_MS;
//   - Dtab playground: a path and a dtab explained by /admin/dtab/playground (what
//     `meshd dtab explain` does): the delegation tree and the outcome, or the parser's line and
//     column for a dtab that does not parse.
// Every path is relative, like dashboard.js's.

const REPLICAS_MS = 5000;
const RECENT_MS = 2000;
const RECENT_ROWS = 50;

// ---- replicas --------------------------------------------------------------------------------

async function pollReplicas() {
  try {
    const data = await getJson("admin/replicas");
    renderReplicas(data);
  } catch (error) {
    // dashboard.js's status line already says when meshd cannot be reached
  } finally {
    setTimeout(pollReplicas, REPLICAS_MS);
  }
}

function renderReplicas(data) {
  const body = document.getElementById("replicas-body");
  const entries = perWorker(data.endpoints);
  if (!entries.length) {
    body.replaceChildren(h("p", { class: "empty" }, "No attempts yet: replicas appear with their client's first request."));
    return;
  }
  const byClient = new Map();
  for (const e of entries) {
    const key = `${e.router} ${e.client}`;
    if (!byClient.has(key)) byClient.set(key, []);
    byClient.get(key).push(e);
  }
  const blocks = [];
  for (const [key, endpoints] of byClient) {
    const [router, client] = [key.slice(0, key.indexOf(" ")), key.slice(key.indexOf(" ") + 1)];
    blocks.push(
      h("h4", { "data-replica-client": client }, client, h("span", { class: "muted small" }, `  router ${router}`)),
      h(
        "table",
        { class: "replicas" },
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            h("th", {}, "endpoint"),
            h("th", { class: "num", title: "attempts over the points shown" }, "attempts"),
            h("th", { class: "num", title: "share of attempts that did not fail" }, "success"),
            h("th", {}, "success trend"),
            h("th", { class: "num", title: "p99 of the attempts of the latest interval with any" }, "p99"),
            h("th", {}, "p99 trend"),
            h("th", { class: "num" }, "p50"),
          ),
        ),
        h("tbody", {}, ...endpoints.map(replicaRow)),
      ),
    );
  }
  body.replaceChildren(...blocks);
}

function replicaRow(e) {
  const points = e.points;
  const attempts = points.reduce((acc, p) => acc + p.requests, 0);
  const failures = points.reduce((acc, p) => acc + p.failures, 0);
  const latest = [...points].reverse().find((p) => p.requests > 0) || null;
  const success = attempts ? 1 - failures / attempts : null;
  return h(
    "tr",
    { "data-replica": e.endpoint, "data-client": e.client },
    h("td", { class: "name" }, e.endpoint),
    h("td", { class: "num" }, String(attempts)),
    h("td", { class: `num ${health(success)}` }, percent(success)),
    h("td", { class: "spark" }, spark(points.map((p) => p.success), 1)),
    h("td", { class: "num" }, seconds(latest && latest.p99)),
    h("td", { class: "spark" }, spark(points.map((p) => p.p99), null)),
    h("td", { class: "num" }, seconds(latest && latest.p50)),
  );
}

/** Under `--workers N` the supervisor lists every worker's endpoints, each tagged with its worker. */
function perWorker(endpoints) {
  return endpoints.map((e) => (e.worker === undefined ? e : { ...e, client: `${e.client} (worker ${e.worker})` }));
}

// ---- recent requests -------------------------------------------------------------------------

async function pollRecent() {
  try {
    renderRecent(await getJson("admin/requests"));
  } catch (error) {
    // as above
  } finally {
    setTimeout(pollRecent, RECENT_MS);
  }
}

function renderRecent(routers) {
  const rows = [];
  for (const r of routers) for (const q of r.requests) rows.push({ ...q, router: r.router });
  rows.sort((a, b) => (a.time < b.time ? 1 : a.time > b.time ? -1 : 0));
  const body = document.getElementById("recent-body");
  if (!rows.length) {
    body.replaceChildren(h("p", { class: "empty" }, "No requests yet."));
    return;
  }
  body.replaceChildren(
    h(
      "table",
      { class: "recent" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          h("th", {}, "time"),
          h("th", {}, "router"),
          h("th", {}, "service"),
          h("th", {}, "endpoint"),
          h("th", { class: "num" }, "status"),
          h("th", { class: "num" }, "latency"),
          h("th", { class: "num" }, "attempts"),
          h("th", {}, "trace id"),
        ),
      ),
      h(
        "tbody",
        {},
        ...rows.slice(0, RECENT_ROWS).map((q) =>
          h(
            "tr",
            { "data-request": q.reqid || "", "data-status": String(q.status) },
            h("td", { class: "mono" }, q.time ? q.time.slice(11, 23) : "—"),
            h("td", {}, q.worker === undefined ? q.router : `${q.router} · worker ${q.worker}`),
            h("td", { class: "name" }, q.service),
            h("td", { class: "name" }, q.endpoint || "—"),
            h("td", { class: `num ${q.status >= 500 ? "bad" : q.status >= 400 ? "warn" : "good"}` }, String(q.status)),
            h("td", { class: "num" }, seconds(q.latencyMs / 1000)),
            h("td", { class: "num" }, String(q.attempts)),
            h("td", { class: "mono", title: "look it up in your tracing system" }, q.traceId || "—"),
          ),
        ),
      ),
    ),
  );
}

// ---- dtab playground -------------------------------------------------------------------------

async function setUpPlayground() {
  const form = document.getElementById("playground-form");
  const routerSelect = document.getElementById("pg-router");
  const dtab = document.getElementById("pg-dtab");
  const start = await getJson("admin/dtab/playground");
  routerSelect.replaceChildren(...start.routers.map((r) => h("option", { value: r }, r)));
  dtab.value = formatDtab(start.dtab);
  const loadRouterDtab = async () => {
    const data = await getJson(`admin/dtab/playground?${new URLSearchParams({ router: routerSelect.value })}`);
    dtab.value = formatDtab(data.dtab);
  };
  routerSelect.addEventListener("change", loadRouterDtab);
  document.getElementById("pg-reset").addEventListener("click", loadRouterDtab);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    explain();
  });
}

/** One dentry a line: `/a=>/b;/c=>/d` as the router shows it becomes two lines. */
function formatDtab(text) {
  return (text || "").split(";").map((d) => d.trim()).filter(Boolean).map((d) => `${d};`).join("\n");
}

export async function explain() {
  const params = new URLSearchParams({
    router: document.getElementById("pg-router").value,
    path: document.getElementById("pg-path").value,
    dtab: document.getElementById("pg-dtab").value,
  });
  const response = await fetch(`admin/dtab/playground?${params}`, { cache: "no-store" });
  const result = await response.json();
  const out = document.getElementById("pg-result");
  if (result.line !== undefined) {
    markError(result.line, result.column);
    out.replaceChildren(
      h(
        "div",
        { class: "pg-error", "data-line": String(result.line), "data-column": String(result.column) },
        `The dtab does not parse: line ${result.line}, column ${result.column}: ${result.reason}`,
        h("pre", {}, result.errorContext),
      ),
    );
    return result;
  }
  if (result.error && !result.trace) {
    out.replaceChildren(h("div", { class: "pg-error" }, result.error));
    return result;
  }
  out.replaceChildren(
    result.error ? h("div", { class: "pg-error" }, result.error) : "",
    h("h4", {}, "Outcome"),
    renderOutcomes(result.outcomes || []),
    h("h4", {}, "Delegation tree"),
    h("ul", { class: "tree" }, renderTraceNode(result.trace.root)),
    h("details", {}, h("summary", { class: "muted small" }, "as text"), h("pre", { class: "pg-explanation" }, result.explanation)),
  );
  return result;
}

function markError(line, column) {
  const area = document.getElementById("pg-dtab");
  const lines = area.value.split("\n");
  let offset = 0;
  for (let i = 0; i < line - 1 && i < lines.length; i++) offset += lines[i].length + 1;
  offset += Math.max(column - 1, 0);
  area.focus();
  area.setSelectionRange(offset, Math.min(offset + 1, area.value.length));
}

function renderOutcomes(outcomes) {
  if (!outcomes.length) return h("p", { class: "empty" }, "No outcome: the name does not bind.");
  return h(
    "table",
    { class: "outcomes" },
    h(
      "thead",
      {},
      h("tr", {}, h("th", { class: "num" }, "share"), h("th", {}, "client (bound name)"), h("th", {}, "replicas")),
    ),
    h(
      "tbody",
      {},
      ...outcomes.map((o) =>
        h(
          "tr",
          { "data-outcome": o.client || o.result },
          h("td", { class: "num" }, percent(o.probability)),
          h("td", { class: "name" }, o.client || o.result, o.residual && o.residual !== "/" ? ` residual ${o.residual}` : ""),
          h("td", { class: "name" }, o.addr ? addrText(o.addr) : "—"),
        ),
      ),
    ),
  );
}

function addrText(addr) {
  if (addr.state !== "bound") return addr.reason ? `${addr.state}: ${addr.reason}` : addr.state;
  return addr.endpoints.length ? addr.endpoints.map((e) => e.address).join(", ") : "bound, no replicas";
}

function renderTraceNode(node) {
  const weights = node.weights || [];
  return h(
    "li",
    { "data-kind": node.kind },
    h("span", { class: "kind" }, node.kind),
    h("code", {}, node.text),
    h("span", { class: `outcome ${node.outcome}` }, node.result ? `${node.outcome} ${node.result}` : node.outcome),
    ...(node.dentries || []).map((d) => h("span", { class: "dentry", title: `dentry #${d.index}` }, `#${d.index} ${d.dentry} ⇒ ${d.rewrite}`)),
    ...(node.namers || []).map((n) => h("span", { class: "dentry" }, `namer ${n.prefix}: ${n.answer}`)),
    node.note ? h("span", { class: "muted small" }, ` ${node.note}`) : "",
    node.children && node.children.length
      ? h(
          "ul",
          {},
          ...node.children.map((c, i) => {
            const li = renderTraceNode(c);
            if (weights[i] !== undefined) li.prepend(h("span", { class: "kind" }, `${weights[i]} ×`));
            return li;
          }),
        )
      : "",
  );
}

// ---- helpers ---------------------------------------------------------------------------------

async function getJson(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

function spark(values, max) {
  const width = 120;
  const height = 22;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("width", String(width));
  svg.setAttribute("height", String(height));
  svg.setAttribute("aria-hidden", "true");
  const known = values.map((v, i) => [i, v]).filter(([, v]) => v !== null && v !== undefined);
  if (!known.length) return svg;
  const top = max || Math.max(...known.map(([, v]) => v), 1e-9);
  const step = values.length > 1 ? width / (values.length - 1) : 0;
  const coords = known.map(([i, v]) => `${(i * step).toFixed(1)},${(height - 2 - (v / top) * (height - 4)).toFixed(1)}`);
  if (coords.length === 1) coords.push(coords[0].replace(/^[^,]+/, String(width)));
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", coords.join(" "));
  svg.appendChild(line);
  return svg;
}

function percent(ratio) {
  if (ratio === null || ratio === undefined) return "—";
  const pct = ratio * 100;
  return `${pct >= 99.995 || pct === 0 ? pct.toFixed(0) : pct.toFixed(2)}%`;
}

function seconds(s) {
  if (s === null || s === undefined) return "—";
  if (s === 0) return "0";
  if (s < 0.001) return `${(s * 1e6).toFixed(0)} µs`;
  if (s < 1) return `${(s * 1000).toPrecision(3)} ms`;
  return `${s.toPrecision(3)} s`;
}

function health(ratio) {
  if (ratio === null || ratio === undefined) return "";
  if (ratio >= 0.99) return "good";
  return ratio >= 0.9 ? "warn" : "bad";
}

/** createElement with attributes and children (strings become text: nothing is parsed as HTML). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== "" && v !== null && v !== undefined) el.setAttribute(k, v);
  for (const child of children) if (child !== "" && child !== null && child !== undefined) el.append(child);
  return el;
}

if (document.getElementById("playground-form")) {
  setUpPlayground().catch(() => {});
  pollReplicas();
  pollRecent();
}
