// meshd admin dashboard: polls /admin/endpoints, /admin/routes and /metrics every POLL_MS and
// draws, per router, each service's request rate, success rate and latency, and each client's
// endpoints with their failure-accrual state, requests in flight and Peak EWMA latency.
//
// Rates and window percentiles come from the difference between two scrapes, as Prometheus's
// rate() would compute them; until a second scrape exists (or when a window saw no requests)
// the totals since meshd started are shown instead, marked "since start". Every path is
// relative, so the page also works behind a proxy that mounts the admin server under a prefix.

import { buckets, parseMetrics, quantile, select, sum } from "./prometheus.js";

const POLL_MS = 2000;
const HISTORY_POINTS = 30;
const PENALTY_SECONDS = 1e5; // Peak EWMA's cost for an endpoint whose first request is in flight

const history = new Map(); // "router service" -> recent request rates, oldest first
let previous = null; // { samples, at }

// ---- polling -------------------------------------------------------------------------------

async function fetchText(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.text();
}

async function poll() {
  try {
    const [endpoints, routes, metrics] = await Promise.all([
      fetchText("admin/endpoints").then((text) => normalizeEndpoints(JSON.parse(text))),
      fetchText("admin/routes").then(JSON.parse),
      fetchText("metrics").then(parseMetrics),
    ]);
    const at = performance.now();
    const view = buildView(endpoints, routes, metrics, previous, (at - (previous ? previous.at : at)) / 1000);
    previous = { samples: metrics, at };
    render(view);
    setStatus("ok", `updated ${new Date().toLocaleTimeString()}`);
  } catch (error) {
    setStatus("error", `cannot reach meshd: ${error.message}`);
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

async function showVersion() {
  try {
    const { version } = JSON.parse(await fetchText("admin/version"));
    document.getElementById("version").textContent = `v${version}`;
  } catch {
    // the version is decoration; the dashboard works without it
  }
}

// ---- view model ----------------------------------------------------------------------------

/**
 * `/admin/endpoints` as a list of {router, clients}. Under `meshd run --workers N` the supervisor
 * answers [{worker, routers}] instead: each worker has its own balancers, so every client is kept
 * once per worker, tagged with the worker's number.
 */
export function normalizeEndpoints(data) {
  if (!Array.isArray(data) || data.length === 0 || !("worker" in data[0])) return data;
  const byRouter = new Map();
  for (const { worker, routers } of data) {
    if (!Array.isArray(routers)) continue; // that worker did not answer
    for (const r of routers) {
      if (!byRouter.has(r.router)) byRouter.set(r.router, { router: r.router, clients: [] });
      byRouter.get(r.router).clients.push(...r.clients.map((c) => ({ ...c, worker })));
    }
  }
  return [...byRouter.values()];
}

function buildView(endpoints, routes, samples, before, seconds) {
  const windowed = before !== null && seconds > 0;
  const routerNames = new Set([...routes.map((r) => r.router), ...endpoints.map((r) => r.router)]);
  return [...routerNames].map((router) => {
    const route = routes.find((r) => r.router === router) || {};
    const clients = (endpoints.find((r) => r.router === router) || { clients: [] }).clients;
    const services = serviceNames(samples, router).map((service) =>
      serviceView(samples, before ? before.samples : null, router, service, windowed ? seconds : 0),
    );
    const totals = routerTotals(services);
    return {
      router,
      dtab: route.effectiveDtab || route.dtab || "",
      reloads: route.reloads,
      lastError: route.lastError,
      openConnections: sum(samples, "meshd_connections_open", { router }),
      services,
      totals,
      clients: [...clients].sort((a, b) => a.client.localeCompare(b.client) || (a.worker || 0) - (b.worker || 0)),
    };
  });
}

function serviceNames(samples, router) {
  const names = new Set(select(samples, "meshd_requests_total", { router }).map((s) => s.labels.service));
  return [...names].sort();
}

function serviceView(samples, before, router, service, seconds) {
  const match = { router, service };
  const total = sum(samples, "meshd_requests_total", match);
  const failed = sum(samples, "meshd_requests_total", { ...match, status_class: "5xx" });
  const retries = sum(samples, "meshd_retries_total", match);
  let requests = total;
  let failures = failed;
  let retried = retries;
  let rate = null;
  let sinceStart = true;
  if (before !== null && seconds > 0) {
    const delta = total - sum(before, "meshd_requests_total", match);
    rate = Math.max(delta, 0) / seconds;
    if (delta > 0) {
      requests = delta;
      failures = failed - sum(before, "meshd_requests_total", { ...match, status_class: "5xx" });
      retried = retries - sum(before, "meshd_retries_total", match);
      sinceStart = false;
    }
  }
  const latency = buckets(samples, "meshd_request_duration_seconds", match, sinceStart ? null : before);
  const key = `${router} ${service}`;
  const points = history.get(key) || [];
  if (rate !== null) points.push(rate);
  history.set(key, points.slice(-HISTORY_POINTS));
  return {
    service,
    rate,
    history: history.get(key),
    requests,
    total,
    successRate: requests > 0 ? 1 - failures / requests : null,
    retryRatio: requests > 0 ? retried / requests : 0,
    p50: quantile(0.5, latency),
    p99: quantile(0.99, latency),
    sinceStart,
    budgetExhausted: sum(samples, "meshd_retry_budget_exhausted_total", match),
    timeouts: sum(samples, "meshd_timeouts_total", match),
  };
}

function routerTotals(services) {
  const rate = services.reduce((acc, s) => (s.rate === null ? acc : (acc || 0) + s.rate), null);
  const requests = services.reduce((acc, s) => acc + s.requests, 0);
  const good = services.reduce((acc, s) => acc + (s.successRate === null ? 0 : s.successRate * s.requests), 0);
  return { rate, successRate: requests > 0 ? good / requests : null };
}

// ---- rendering -----------------------------------------------------------------------------

function render(view) {
  const main = document.getElementById("routers");
  const scroll = window.scrollY;
  main.replaceChildren(
    ...(view.length ? view.map(renderRouter) : [h("p", { class: "empty" }, "meshd has no routers configured.")]),
  );
  window.scrollTo(0, scroll);
}

function renderRouter(r) {
  return h(
    "section",
    { class: "router", "data-router": r.router },
    h(
      "header",
      { class: "router-head" },
      h("h2", {}, h("span", { class: "muted" }, "router "), r.router),
      h("code", { class: "dtab", title: "effective dtab (router dtab + routes file)" }, r.dtab || "(empty dtab)"),
    ),
    h(
      "div",
      { class: "tiles" },
      tile("requests", r.totals.rate === null ? "—" : fmtRate(r.totals.rate), "per second, all services"),
      tile("success", fmtPercent(r.totals.successRate), "non-5xx answers", healthClass(r.totals.successRate)),
      tile("connections", String(r.openConnections), "downstream, open now"),
      r.reloads
        ? tile(
            "routes file",
            `${r.reloads.success} / ${r.reloads.error}`,
            r.lastError ? `last refused: ${r.lastError}` : "reloads applied / refused",
            r.reloads.error ? "warn" : "",
          )
        : tile("routes file", "none", "no routes file configured"),
    ),
    h("h3", {}, "Services"),
    renderServices(r.services),
    h("h3", {}, "Clients ", h("span", { class: "muted" }, "(one per bound name, with its endpoints)")),
    r.clients.length
      ? h("div", { class: "clients" }, ...r.clients.map(renderClient))
      : h("p", { class: "empty" }, "No clients yet: a client appears with the first request bound to it."),
  );
}

function renderServices(services) {
  if (!services.length) return h("p", { class: "empty" }, "No requests yet.");
  return h(
    "table",
    { class: "services" },
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        h("th", {}, "service"),
        h("th", { class: "num" }, "req/s"),
        h("th", {}, "trend"),
        h("th", { class: "num", title: "share of answers that were not 5xx" }, "success"),
        h("th", { class: "num" }, "p50"),
        h("th", { class: "num" }, "p99"),
        h("th", { class: "num", title: "retries per request" }, "retries"),
        h("th", { class: "num", title: "total timeouts / retries refused by the budget, since start" }, "timeouts · budget"),
        h("th", { class: "num" }, "total"),
      ),
    ),
    h(
      "tbody",
      {},
      ...services.map((s) =>
        h(
          "tr",
          { "data-service": s.service, title: s.sinceStart ? "no requests in the last interval: figures since start" : "" },
          h("td", { class: "name" }, s.service),
          h("td", { class: "num" }, s.rate === null ? "—" : fmtRate(s.rate)),
          h("td", { class: "spark" }, sparkline(s.history)),
          h("td", { class: `num ${healthClass(s.successRate)}` }, fmtPercent(s.successRate)),
          h("td", { class: "num" }, fmtSeconds(s.p50)),
          h("td", { class: "num" }, fmtSeconds(s.p99)),
          h("td", { class: "num" }, fmtPercent(s.retryRatio, 1)),
          h("td", { class: "num" }, `${s.timeouts} · ${s.budgetExhausted}`),
          h("td", { class: "num" }, String(s.total), s.sinceStart ? h("span", { class: "muted small" }, " since start") : ""),
        ),
      ),
    ),
  );
}

function renderClient(c) {
  const st = c.statistics;
  const ewma = c.balancer === "ewma";
  return h(
    "article",
    { class: "client", "data-client": c.client },
    h(
      "header",
      {},
      h("h4", {}, c.client),
      h("span", { class: "pill" }, c.balancer),
      c.worker !== undefined ? h("span", { class: "pill" }, `worker ${c.worker}`) : "",
      c.addr !== "bound" ? h("span", { class: "pill warn", title: "the namer's answer for this name" }, c.addr) : "",
      h(
        "span",
        { class: "counts" },
        badge("live", st.live),
        badge("probing", st.probing),
        badge("ejected", st.ejected),
        h("span", { class: "muted small", title: "ejections since start" }, ` ${plural(st.ejections, "ejection")}`),
        st.allEjectedPicks
          ? h(
              "span",
              { class: "warn small", title: "picks made while every endpoint was ejected" },
              ` · ${plural(st.allEjectedPicks, "all-ejected pick")}`,
            )
          : "",
      ),
    ),
    c.endpoints.length
      ? h(
          "table",
          { class: "endpoints" },
          h(
            "thead",
            {},
            h(
              "tr",
              {},
              h("th", {}, "endpoint"),
              h("th", {}, "state"),
              h("th", { class: "num" }, "weight"),
              h("th", { class: "num", title: "requests in flight" }, "pending"),
              h("th", { class: "num", title: "Peak EWMA latency" }, "EWMA"),
              h("th", { class: "num", title: "load ÷ weight: what the balancer compares" }, "cost"),
              h("th", { class: "num", title: "pooled connections: idle / busy" }, "conns"),
            ),
          ),
          h(
            "tbody",
            {},
            ...[...c.endpoints]
              .sort((a, b) => a.address.localeCompare(b.address))
              .map((e) =>
                h(
                  "tr",
                  { "data-endpoint": e.address, "data-state": e.state },
                  h("td", { class: "name" }, e.address),
                  h("td", {}, h("span", { class: `state ${e.state}` }, e.state)),
                  h("td", { class: "num" }, fmtNumber(e.weight)),
                  h("td", { class: "num" }, String(e.pending)),
                  h("td", { class: "num" }, ewma ? fmtSeconds(e.ewmaSeconds) : "—"),
                  h("td", { class: "num" }, fmtCost(e.cost, ewma)),
                  h("td", { class: "num" }, `${e.pool.idle} / ${e.pool.busy}`),
                ),
              ),
          ),
        )
      : h("p", { class: "empty" }, "No endpoints: the namer knows no replica for this name."),
  );
}

function tile(label, value, hint, cls = "") {
  return h(
    "div",
    { class: `tile ${cls}` },
    h("div", { class: "label" }, label),
    h("div", { class: "value" }, value),
    h("div", { class: "hint", title: hint }, hint),
  );
}

function badge(state, count) {
  return h("span", { class: `state ${state}${count ? "" : " zero"}` }, `${count} ${state}`);
}

function sparkline(points) {
  const width = 90;
  const height = 22;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("width", String(width));
  svg.setAttribute("height", String(height));
  svg.setAttribute("aria-hidden", "true");
  if (points && points.length === 1) {
    const dot = document.createElementNS("http://www.w3.org/2000/svg", "circle");
    dot.setAttribute("cx", String(width - 2));
    dot.setAttribute("cy", String(height / 2));
    dot.setAttribute("r", "1.5");
    svg.appendChild(dot);
  } else if (points && points.length > 1) {
    const max = Math.max(...points, 1e-9);
    const step = width / (HISTORY_POINTS - 1);
    const offset = (HISTORY_POINTS - points.length) * step;
    const coords = points.map((p, i) => `${(offset + i * step).toFixed(1)},${(height - 2 - (p / max) * (height - 4)).toFixed(1)}`);
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("points", coords.join(" "));
    svg.appendChild(line);
  }
  return svg;
}

function setStatus(kind, text) {
  const el = document.getElementById("status");
  el.className = `status ${kind}`;
  el.textContent = text;
}

// ---- formatting ----------------------------------------------------------------------------

function fmtRate(perSecond) {
  return perSecond >= 100 ? perSecond.toFixed(0) : perSecond.toFixed(1);
}

function fmtPercent(ratio, digits = 2) {
  if (ratio === null || ratio === undefined) return "—";
  const pct = ratio * 100;
  return `${pct >= 99.995 || pct === 0 ? pct.toFixed(0) : pct.toFixed(digits)}%`;
}

function fmtSeconds(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  if (seconds === 0) return "0";
  if (seconds < 0.001) return `${(seconds * 1e6).toFixed(0)} µs`;
  if (seconds < 1) return `${(seconds * 1000).toPrecision(3)} ms`;
  return `${seconds.toPrecision(3)} s`;
}

function fmtCost(cost, isLatency) {
  if (isLatency && cost >= PENALTY_SECONDS) return "∞ (first request)";
  return isLatency ? fmtSeconds(cost) : fmtNumber(cost);
}

function plural(count, noun) {
  return `${count} ${noun}${count === 1 ? "" : "s"}`;
}

function fmtNumber(n) {
  return Number.isInteger(n) ? String(n) : n.toPrecision(3);
}

function healthClass(ratio) {
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

showVersion();
poll();
