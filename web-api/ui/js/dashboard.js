// The dashboard: the overview of `GET /api/v1/stats` over the last 1, 7 or 30 days — figures at the top, runs
// by status and items per day (per hour over one day) as SVG charts drawn here, the spiders that are slowest
// and fail most, every spider's figures, and the nodes' load now.

import { get } from "./api.js";
import { clear, count, duration, h, select, table } from "./dom.js";

const SVG = "http://www.w3.org/2000/svg";
const STATUSES = [
  ["finished", "var(--ok)"],
  ["error", "var(--bad)"],
  ["abnormal", "#e07b00"],
  ["cancelled", "#9aa3ad"],
];
const REFRESH_MS = 30_000;

/** An SVG element; text children become text nodes. */
function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value !== undefined && value !== null) el.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child !== undefined && child !== null && child !== false) el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

const percent = (rate) => (rate === undefined || rate === null ? "—" : `${(rate * 100).toFixed(1)}%`);

/** A period's label on the x axis: the day, or the hour over one day. */
function label(start, hourly) {
  const d = new Date(start);
  return hourly ? `${String(d.getHours()).padStart(2, "0")}:00` : d.toLocaleDateString(undefined, { month: "short", day: "numeric" });
}

/** A round top for an axis: 1, 2 or 5 times a power of ten, at least `max`. */
function niceMax(max) {
  if (max <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(max));
  return [1, 2, 5, 10].map((m) => m * power).find((m) => m >= max);
}

/**
 * A bar chart of `series`, each bar the stack of `parts` ([name, colour, value(period)]); labelled axes, a
 * tooltip per bar, and an accessible summary.
 */
function barChart(title, series, parts, hourly, summary) {
  const width = 640, height = 220, left = 44, bottom = 28, top = 10;
  const plotW = width - left - 8, plotH = height - top - bottom;
  const totals = series.map((p) => parts.reduce((sum, [, , value]) => sum + value(p), 0));
  const max = niceMax(Math.max(...totals, 0));
  const step = plotW / series.length;
  const barW = Math.max(2, step * 0.7);
  const y = (v) => top + plotH - (v / max) * plotH;
  const grid = [0, 0.5, 1].map((f) =>
    svg("g", {},
      svg("line", { x1: left, x2: width - 8, y1: y(max * f), y2: y(max * f), stroke: "#d5dae1", "stroke-dasharray": f ? "3 3" : null }),
      svg("text", { x: left - 6, y: y(max * f) + 4, "text-anchor": "end", "font-size": 11, fill: "#5b6470" }, count(max * f)),
    ),
  );
  const every = Math.ceil(series.length / 8);
  const bars = series.map((p, i) => {
    let base = 0;
    const x = left + i * step + (step - barW) / 2;
    const tip = [label(p.start, hourly), ...parts.map(([name, , value]) => `${name}: ${count(value(p))}`)].join("\n");
    const stack = parts.map(([name, colour, value]) => {
      const v = value(p);
      if (!v) return null;
      const rect = svg("rect", { x, y: y(base + v), width: barW, height: y(base) - y(base + v), "data-part": name });
      // Through the CSSOM: the page's policy refuses style attributes, and an attribute cannot read var().
      rect.style.fill = colour;
      base += v;
      return rect;
    });
    return svg("g", { class: "bar" },
      svg("title", {}, tip),
      // The whole column takes the pointer, so thin bars show their tooltip too.
      svg("rect", { x: left + i * step, y: top, width: step, height: plotH, fill: "transparent" }),
      stack,
      i % every === 0 ? svg("text", { x: x + barW / 2, y: height - 8, "text-anchor": "middle", "font-size": 11, fill: "#5b6470" }, label(p.start, hourly)) : null,
    );
  });
  const legend = parts.length > 1
    ? h("div", { class: "legend" }, parts.map(([name, colour]) => {
        const dot = h("i");
        dot.style.background = colour;
        return h("span", {}, dot, name);
      }))
    : null;
  return h(
    "figure",
    { class: "chart card" },
    h("figcaption", {}, title),
    svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `${title}: ${summary}`, preserveAspectRatio: "xMidYMid meet" }, grid, bars),
    legend,
  );
}

/** A horizontal meter for a node's CPU or memory use. */
function meter(value, name) {
  if (value === undefined || value === null) return "—";
  const v = Math.max(0, Math.min(100, value));
  const fill = h("span", { class: "fill" });
  fill.style.width = `${v}%`;
  return h("span", { class: "meter", role: "meter", "aria-valuenow": v.toFixed(0), "aria-valuemin": 0, "aria-valuemax": 100, "aria-label": name },
    fill, h("span", { class: "value" }, `${v.toFixed(0)}%`));
}

function card(title, value, hint) {
  return h("div", { class: "figure card" }, h("small", {}, title), h("strong", {}, value), hint && h("small", {}, hint));
}

function spiderTable(name, spiders, columns) {
  if (!spiders.length) return h("p", {}, "None in this window.");
  return table(
    ["Spider", ...columns.map(([title]) => title)],
    spiders.map((s) => h("tr", { dataset: { spider: s.spider } }, h("td", {}, h("a", { href: `#/spiders/${encodeURIComponent(s.spider)}` }, s.spider)), columns.map(([, value]) => h("td", {}, value(s))))),
    { "aria-label": name },
  );
}

export async function dashboardPage(main, query) {
  const days = ["1", "7", "30"].includes(query.get("days")) ? query.get("days") : "7";
  const spider = query.get("spider") || "";
  const spiders = await get("/spiders");
  const holder = h("div", { class: "dashboard" });
  const range = h("div", { class: "segmented", role: "group", "aria-label": "Window" },
    [["1", "24 hours"], ["7", "7 days"], ["30", "30 days"]].map(([d, text]) =>
      h("a", { class: "button secondary", href: `#/dashboard?days=${d}${spider ? `&spider=${encodeURIComponent(spider)}` : ""}`, "aria-current": d === days ? "true" : null }, text)));
  const choice = select("spider", [["", "all spiders"], ...spiders.map((s) => [s.name, s.name])], spider);
  choice.setAttribute("aria-label", "Spider");
  choice.addEventListener("change", () => {
    location.hash = `#/dashboard?days=${days}${choice.value ? `&spider=${encodeURIComponent(choice.value)}` : ""}`;
  });
  main.append(h("div", { class: "bar" }, h("h1", {}, "Dashboard"), range, choice), holder);

  async function load() {
    const stats = await get("/stats", { days, spider });
    const t = stats.totals;
    const hourly = Number(days) === 1;
    const per = hourly ? "hour" : "day";
    const summary = `${count(t.runs)} runs: ${STATUSES.map(([s]) => `${count(t[s])} ${s}`).join(", ")}`;
    clear(
      holder,
      h("div", { class: "figures" },
        card("Runs", count(t.runs), `${count(t.finished)} finished · ${count(t.error + t.abnormal)} failed`),
        card("Success rate", percent(t.success_rate), "finished of runs not cancelled"),
        card("Items", count(t.items)),
        card("Run time", t.run_time_p50_ms === undefined ? "—" : duration(t.run_time_p50_ms), t.run_time_p95_ms === undefined ? "median" : `median · p95 ${duration(t.run_time_p95_ms)}`),
        card("Now", `${count(stats.running)} running`, `${count(stats.pending)} waiting`),
      ),
      h("div", { class: "charts" },
        barChart(`Runs per ${per}, by status`, stats.series, STATUSES.map(([s, colour]) => [s, colour, (p) => p[s]]), hourly, summary),
        barChart(`Items per ${per}`, stats.series, [["items", "var(--run)", (p) => p.items]], hourly, `${count(t.items)} items`),
      ),
      h("div", { class: "columns" },
        h("section", {}, h("h2", {}, "Slowest spiders"), spiderTable("Slowest spiders", stats.slowest, [["p95 run time", (s) => duration(s.run_time_p95_ms)], ["Median", (s) => duration(s.run_time_p50_ms)], ["Runs", (s) => count(s.runs)]])),
        h("section", {}, h("h2", {}, "Most failing spiders"), spiderTable("Most failing spiders", stats.most_failing, [["Failed", (s) => count(s.error + s.abnormal)], ["Runs", (s) => count(s.runs)], ["Success", (s) => percent(s.success_rate)]])),
      ),
      h("h2", {}, "Spiders"),
      spiderTable("Spiders", stats.spiders, [
        ["Runs", (s) => count(s.runs)],
        ["Failed", (s) => count(s.error + s.abnormal)],
        ["Success", (s) => percent(s.success_rate)],
        ["Items", (s) => count(s.items)],
        ["Median", (s) => duration(s.run_time_p50_ms)],
        ["p95", (s) => duration(s.run_time_p95_ms)],
      ]),
      h("h2", {}, "Nodes"),
      stats.nodes.length
        ? table(["Node", "State", "Runners", "CPU", "Memory"], stats.nodes.map((n) =>
            h("tr", { dataset: { node: n.name } },
              h("td", {}, n.name),
              h("td", {}, n.online ? "online" : "offline"),
              h("td", {}, `${n.running} / ${n.max_runners}`),
              h("td", {}, meter(n.cpu_percent, `CPU of ${n.name}`)),
              h("td", {}, meter(n.memory_percent, `Memory of ${n.name}`)))), { "aria-label": "Node load" })
        : h("p", {}, "No worker has registered yet."),
    );
  }
  await load();
  const timer = setInterval(() => load().catch(() => {}), REFRESH_MS);
  return () => clearInterval(timer);
}
