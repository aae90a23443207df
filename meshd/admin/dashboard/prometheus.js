// Prometheus text exposition (format 0.0.4) -> plain objects, and the two calculations the
// dashboard needs on them: a counter's rate between two scrapes and a histogram quantile.
// No dependencies: the admin page must work with no build step and no network beyond meshd.

/**
 * Parse a scrape into a Map from sample name (e.g. "meshd_requests_total") to a list of
 * {labels, value}. Comment lines (# HELP / # TYPE) are skipped: the dashboard knows its metrics.
 */
export function parseMetrics(text) {
  const samples = new Map();
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) continue;
    const parsed = parseSampleLine(line);
    if (parsed === null) continue;
    let list = samples.get(parsed.name);
    if (list === undefined) {
      list = [];
      samples.set(parsed.name, list);
    }
    list.push({ labels: parsed.labels, value: parsed.value });
  }
  return samples;
}

function parseSampleLine(line) {
  const brace = line.indexOf("{");
  const space = line.indexOf(" ");
  let name;
  let labels = {};
  let rest;
  if (brace !== -1 && (space === -1 || brace < space)) {
    name = line.slice(0, brace);
    const end = parseLabels(line, brace + 1, labels);
    if (end === -1) return null;
    rest = line.slice(end + 1).trim();
  } else {
    if (space === -1) return null;
    name = line.slice(0, space);
    rest = line.slice(space + 1).trim();
  }
  const value = parseValue(rest.split(/\s+/)[0]);
  return Number.isNaN(value) ? null : { name, labels, value };
}

// Reads `a="x",b="y"}` starting at `i`; fills `out`; returns the index of the closing brace.
function parseLabels(line, i, out) {
  while (i < line.length) {
    while (line[i] === " " || line[i] === ",") i++;
    if (line[i] === "}") return i;
    const eq = line.indexOf("=", i);
    if (eq === -1 || line[eq + 1] !== '"') return -1;
    const key = line.slice(i, eq).trim();
    let j = eq + 2;
    let value = "";
    while (j < line.length && line[j] !== '"') {
      if (line[j] === "\\" && j + 1 < line.length) {
        const next = line[j + 1];
        value += next === "n" ? "\n" : next;
        j += 2;
      } else {
        value += line[j];
        j += 1;
      }
    }
    out[key] = value;
    i = j + 1;
  }
  return -1;
}

function parseValue(text) {
  if (text === "+Inf") return Infinity;
  if (text === "-Inf") return -Infinity;
  return Number(text);
}

/** Samples of `name` whose labels include every pair in `match`. */
export function select(samples, name, match = {}) {
  const list = samples.get(name) || [];
  return list.filter((s) => Object.entries(match).every(([k, v]) => s.labels[k] === v));
}

/** Sum of the values of `name` matching `match` (0 when there are none). */
export function sum(samples, name, match = {}) {
  return select(samples, name, match).reduce((total, s) => total + s.value, 0);
}

/**
 * Cumulative histogram buckets of `name` (without the `_bucket` suffix) matching `match`,
 * as a sorted list of [upperBound, count]; with `previous`, the increase since that scrape.
 */
export function buckets(samples, name, match, previous) {
  const now = bucketMap(samples, name, match);
  const before = previous ? bucketMap(previous, name, match) : new Map(); // empty: the totals
  const out = [];
  for (const [le, count] of now) {
    const delta = count - (before.get(le) || 0);
    out.push([le, delta < 0 ? count : delta]); // a negative delta means meshd restarted: count afresh
  }
  return out.sort((a, b) => a[0] - b[0]);
}

function bucketMap(samples, name, match) {
  const map = new Map();
  for (const s of select(samples, `${name}_bucket`, match)) {
    const le = parseValue(s.labels.le);
    map.set(le, (map.get(le) || 0) + s.value);
  }
  return map;
}

/**
 * The q-quantile of cumulative buckets, interpolated linearly inside the bucket, as PromQL's
 * histogram_quantile does. Returns null when the histogram is empty; the highest finite bound
 * when the quantile falls in the +Inf bucket.
 */
export function quantile(q, cumulative) {
  if (cumulative.length === 0) return null;
  const total = cumulative[cumulative.length - 1][1];
  if (!(total > 0)) return null;
  const rank = q * total;
  let lowerBound = 0;
  let lowerCount = 0;
  for (const [le, count] of cumulative) {
    if (count >= rank) {
      if (le === Infinity) return lowerBound;
      const inBucket = count - lowerCount;
      return inBucket > 0 ? lowerBound + ((le - lowerBound) * (rank - lowerCount)) / inBucket : le;
    }
    lowerBound = le;
    lowerCount = count;
  }
  return lowerBound;
}
