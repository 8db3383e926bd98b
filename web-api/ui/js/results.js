// The Results page: one spider's items across all its runs, newest first, filtered by task, time and field
// conditions, paged by the server's cursor, and exported (CSV, JSON, JSON lines) with the same filters.

import { api, download, get } from "./api.js";
import { busy, clear, count, field, h, notify, select, shortId, time } from "./dom.js";

const PAGE = 50;

/** The query string of a search: `where` repeats, once per condition. */
function searchQuery(filters, extra = {}) {
  const q = new URLSearchParams();
  for (const key of ["task", "since", "until"]) if (filters[key]) q.set(key, filters[key]);
  for (const condition of filters.where) q.append("where", condition);
  for (const [key, value] of Object.entries(extra)) if (value !== undefined && value !== null) q.set(key, String(value));
  const s = q.toString();
  return s ? `?${s}` : "";
}

/** A `datetime-local` value (the browser's clock) as RFC 3339 UTC, and back. */
const toUtc = (local) => (local ? new Date(local).toISOString() : "");
function toLocal(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

function cell(value) {
  if (value === undefined || value === null) return "";
  if (typeof value === "object") return h("code", {}, JSON.stringify(value));
  return String(value);
}

export async function resultsPage(main, q) {
  const spiders = await get("/spiders");
  if (!spiders.length) {
    main.append(h("h1", {}, "Results"), h("p", {}, "No spiders yet: results are the items their runs produce."));
    return;
  }
  const filters = {
    spider: q.get("spider") || spiders[0].name,
    task: q.get("task") || "",
    since: q.get("since") || "",
    until: q.get("until") || "",
    where: q.getAll("where").filter((c) => c.trim()),
  };
  const spider = select("spider", spiders.map((s) => [s.name, s.name]), filters.spider);
  const task = h("input", { name: "task", value: filters.task, placeholder: "any", autocomplete: "off", size: 36 });
  const since = h("input", { name: "since", type: "datetime-local", value: toLocal(filters.since) });
  const until = h("input", { name: "until", type: "datetime-local", value: toLocal(filters.until) });
  const where = h("textarea", { name: "where", rows: 2, cols: 32, placeholder: "price=10\ntitle~book\nauthor" }, filters.where.join("\n"));
  const go = () => {
    const next = new URLSearchParams();
    next.set("spider", spider.value);
    if (task.value.trim()) next.set("task", task.value.trim());
    if (since.value) next.set("since", toUtc(since.value));
    if (until.value) next.set("until", toUtc(until.value));
    for (const line of where.value.split("\n")) if (line.trim()) next.append("where", line.trim());
    location.hash = `#/results?${next}`;
  };
  const summary = h("p", { class: "summary", role: "status" });
  // A query the server refuses (a condition it cannot read, say) is said here, and the form stays.
  const problem = h("p", { class: "error", role: "alert" });
  const head = h("thead");
  const body = h("tbody");
  const pager = h("nav", { class: "pager", "aria-label": "Result pages" });
  const path = `/spiders/${encodeURIComponent(filters.spider)}/items`;
  const exportButton = (format, label) =>
    h(
      "button",
      {
        type: "button",
        class: "secondary",
        onclick: (e) => busy(e.target, () => download(path + searchQuery(filters, { format }), `${filters.spider}-items.${format}`)),
      },
      label,
    );
  main.append(
    h("div", { class: "bar" }, h("h1", {}, "Results"), exportButton("csv", "Export CSV"), exportButton("json", "Export JSON"), exportButton("jsonl", "Export JSON lines")),
    h(
      "form",
      {
        class: "filters",
        role: "search",
        onsubmit: (e) => {
          e.preventDefault();
          go();
        },
      },
      field("Spider", spider),
      field("Task", task),
      field("Stored from", since),
      field("Stored before", until),
      field("Conditions", where, "One per line: FIELD=VALUE, FIELD~TEXT (contains), FIELD (present)"),
      h("button", { type: "submit" }, "Filter"),
    ),
    problem,
    summary,
    h("div", { class: "scroll-x" }, h("table", { "aria-label": "Results" }, head, body)),
    pager,
  );
  spider.addEventListener("change", () => {
    task.value = "";
    go();
  });

  // The cursors of the pages seen so far: going back needs no cursor of the server's.
  const cursors = [null];
  async function load(index) {
    const response = await api("GET", path + searchQuery(filters, { after: cursors[index], limit: PAGE }));
    if (response.next) cursors[index + 1] = response.next;
    const rows = response.items;
    const data = rows.map((row) => row.data);
    const columns = [];
    for (const item of data) for (const key of Object.keys(item)) if (!columns.includes(key)) columns.push(key);
    summary.textContent = `${count(response.total)} ${response.total === 1 ? "item matches" : "items match"}.`;
    clear(
      head,
      h("tr", {}, ["Task", "#", "Stored"].map((t) => h("th", { scope: "col" }, t)), columns.map((c) => h("th", { scope: "col" }, c))),
    );
    clear(
      body,
      rows.length
        ? rows.map((row, i) =>
            h(
              "tr",
              {},
              h("td", {}, h("a", { href: `#/tasks/${row.task_id}`, title: row.task_id }, h("code", {}, shortId(row.task_id)))),
              h("td", {}, row.seq),
              h("td", {}, time(row.at)),
              columns.map((c) => h("td", {}, cell(data[i][c]))),
            ),
          )
        : h("tr", {}, h("td", { colspan: 3 }, "No items match.")),
    );
    const first = index * PAGE;
    clear(
      pager,
      h("button", { type: "button", disabled: index === 0, onclick: () => load(index - 1).catch((e) => notify(e.message, "error")) }, "‹ Newer"),
      h("span", {}, rows.length ? ` ${count(first + 1)}–${count(first + rows.length)} of ${count(response.total)} ` : " "),
      h("button", { type: "button", disabled: !response.next, onclick: () => load(index + 1).catch((e) => notify(e.message, "error")) }, "Older ›"),
    );
  }
  try {
    await load(0);
  } catch (error) {
    if (error.status === 401) throw error;
    problem.textContent = error.message;
  }
}
