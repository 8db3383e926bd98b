// Task pages: the paginated list kept live by the events stream, and one task's page (status, progress,
// errors, stats, children, the live log and the items with their export).

import { del, download, follow, get, post, query, saveBlob } from "./api.js";
import { badge, busy, bytes, clear, count, duration, ENDED, field, h, notify, select, shortHash, shortId, table, time } from "./dom.js";
import { LogView } from "./logview.js";

const PAGE = 50;
const STATUSES = ["created", "pending", "running", "finished", "error", "cancelled", "abnormal"];

/** STATUS progress is a fraction, 0 to 1. */
const percent = (fraction) => `${Math.round(fraction * 100)}%`;

function taskRow(task) {
  const progress = task.progress?.progress;
  return h(
    "tr",
    { dataset: { task: task.id } },
    h("td", {}, h("a", { href: `#/tasks/${task.id}`, title: task.id }, h("code", {}, shortId(task.id)))),
    h("td", {}, h("a", { href: `#/spiders/${encodeURIComponent(task.spider_name)}` }, task.spider_name)),
    h("td", {}, badge(task.status), task.pending_reason && task.status === "pending" ? h("small", { class: "reason" }, ` ${task.pending_reason}`) : ""),
    h("td", {}, progress !== undefined ? percent(progress) : ""),
    h("td", {}, task.node || ""),
    h("td", {}, time(task.created_at)),
    h("td", {}, duration(task.run_ms)),
    h("td", {}, count(task.items)),
    h("td", {}, task.children ? `${task.children} children` : task.parent_id ? h("a", { href: `#/tasks/${task.parent_id}` }, "parent") : ""),
  );
}

export async function tasksPage(main, q) {
  const filters = {
    spider: q.get("spider") || "",
    status: q.get("status") || "",
    node: q.get("node") || "",
    schedule: q.get("schedule") || "",
  };
  const page = Math.max(1, Number(q.get("page")) || 1);
  const spiders = await get("/spiders").catch(() => []);
  const spider = select("spider", [["", "All spiders"], ...spiders.map((s) => [s.name, s.name])], filters.spider);
  const status = select("status", [["", "Any status"], ...STATUSES.map((s) => [s, s])], filters.status);
  const node = h("input", { name: "node", value: filters.node, placeholder: "any", autocomplete: "off" });
  const go = (changes) => {
    const next = { ...filters, page, ...changes };
    if (next.page === 1) delete next.page;
    location.hash = `#/tasks${query(next)}`;
  };
  const body = h("tbody");
  const summary = h("p", { class: "summary", role: "status" });
  const pager = h("nav", { class: "pager", "aria-label": "Pages" });
  const live = h("span", { class: "live", role: "status" }, "connecting…");
  main.append(
    h("div", { class: "bar" }, h("h1", {}, "Tasks"), live),
    h(
      "form",
      {
        class: "filters",
        role: "search",
        onsubmit: (e) => {
          e.preventDefault();
          go({ spider: spider.value, status: status.value, node: node.value.trim(), page: 1 });
        },
      },
      field("Spider", spider),
      field("Status", status),
      field("Node", node),
      h("button", { type: "submit" }, "Filter"),
    ),
    summary,
    h(
      "table",
      { "aria-label": "Tasks" },
      h("thead", {}, h("tr", {}, ["Task", "Spider", "Status", "Progress", "Node", "Created", "Run time", "Items", ""].map((t) => h("th", { scope: "col" }, t)))),
      body,
    ),
    pager,
  );
  spider.addEventListener("change", () => go({ spider: spider.value, page: 1 }));
  status.addEventListener("change", () => go({ status: status.value, page: 1 }));

  const shown = new Map();
  let reloading = null;
  async function load() {
    const result = await get("/tasks", { ...filters, limit: PAGE, offset: (page - 1) * PAGE });
    shown.clear();
    clear(body, result.items.length ? null : h("tr", {}, h("td", { colspan: 9 }, "No tasks match.")));
    for (const task of result.items) {
      const row = taskRow(task);
      shown.set(task.id, row);
      body.append(row);
    }
    const pages = Math.max(1, Math.ceil(result.total / PAGE));
    summary.textContent = `${count(result.total)} tasks · page ${count(page)} of ${count(pages)}`;
    clear(
      pager,
      h("button", { type: "button", disabled: page <= 1, onclick: () => go({ page: 1 }) }, "« First"),
      h("button", { type: "button", disabled: page <= 1, onclick: () => go({ page: page - 1 }) }, "‹ Previous"),
      h("span", {}, ` ${count(page)} / ${count(pages)} `),
      h("button", { type: "button", disabled: page >= pages, onclick: () => go({ page: page + 1 }) }, "Next ›"),
      h("button", { type: "button", disabled: page >= pages, onclick: () => go({ page: pages }) }, "Last »"),
    );
  }
  // New tasks shift every page: re-read the page, at most once a second however many arrive.
  const reload = () => {
    reloading ??= setTimeout(async () => {
      reloading = null;
      await load().catch((e) => notify(e.message, "error"));
    }, 1000);
  };
  await load();

  const stop = new AbortController();
  follow(`/events${query({ spider: filters.spider })}`, {
    signal: stop.signal,
    onState: (state, detail) => (live.textContent = state === "open" ? "● live" : `${state}${detail ? `: ${detail}` : ""}`),
    onEvent: ({ event, data }) => {
      if (event === "task") {
        const task = JSON.parse(data);
        const row = shown.get(task.id);
        if (row) {
          const fresh = taskRow(task);
          row.replaceWith(fresh);
          shown.set(task.id, fresh);
        } else if (page === 1 && matches(task, filters)) {
          reload();
        }
      } else if (event === "deleted" || event === "lagged") {
        reload();
      }
    },
  });
  return () => {
    stop.abort();
    clearTimeout(reloading);
  };
}

function matches(task, filters) {
  return (!filters.status || task.status === filters.status) && (!filters.node || task.node === filters.node);
}

export async function taskPage(main, id) {
  const task = await get(`/tasks/${id}`);
  const stop = new AbortController();
  const header = h("div", { class: "bar" });
  const facts = h("dl", { class: "facts" });
  const progress = h("div", { class: "progress-area" });
  const errors = h("section", { "aria-label": "Errors" });
  const children = h("section", { "aria-label": "Child tasks" });
  const logs = new LogView(id);
  const items = h("section", { class: "items", "aria-labelledby": "items-title" });
  main.append(header, progress, facts, errors, children, h("h2", {}, "Log"), logs.element, items);

  let shownStatus = null;
  function show(t) {
    if (t.status !== shownStatus) showHeader(t);
    shownStatus = t.status;
    showRecord(t);
  }

  // Rebuilt only when the status changes: a STATUS report every second must not take the focus off a button.
  function showHeader(t) {
    const ended = ENDED.includes(t.status);
    clear(
      header,
      h("h1", {}, `${t.spider_name} `, h("code", { title: t.id }, shortId(t.id))),
      badge(t.status),
      !ended &&
        h("button", { type: "button", class: "danger", onclick: (e) => busy(e.target, async () => show(await post(`/tasks/${id}/cancel`))) }, "Cancel"),
      ended &&
        h("button", {
          type: "button",
          onclick: (e) =>
            busy(e.target, async () => {
              const next = await post(`/tasks/${id}/restart`);
              location.hash = `#/tasks/${next.id}`;
            }),
        }, "Restart"),
      ended &&
        h("button", {
          type: "button",
          class: "secondary",
          onclick: (e) =>
            busy(e.target, async () => {
              if (!confirm("Delete this task with its logs and items?")) return;
              await del(`/tasks/${id}`);
              location.hash = `#/tasks?spider=${encodeURIComponent(t.spider_name)}`;
            }),
        }, "Delete"),
    );
  }

  function showRecord(t) {
    const p = t.progress;
    clear(
      progress,
      p &&
        h(
          "div",
          {},
          p.progress !== undefined &&
            h("progress", { max: 1, value: p.progress, "aria-label": "Progress" }, percent(p.progress)),
          h("span", {}, p.progress !== undefined ? ` ${percent(p.progress)} ` : "", p.message || ""),
          p.stats && h("dl", { class: "stats" }, Object.entries(p.stats).flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, typeof v === "object" ? JSON.stringify(v) : String(v))])),
        ),
    );
    const fact = (label, value) => value !== "" && value !== undefined && value !== null && [h("dt", {}, label), h("dd", {}, value)];
    clear(
      facts,
      fact("Task", h("code", {}, t.id)),
      fact("Spider", h("a", { href: `#/spiders/${encodeURIComponent(t.spider_name)}` }, t.spider_name)),
      fact("Version", h("code", { title: t.version }, shortHash(t.version))),
      fact("Command", h("code", {}, t.param ? `${t.cmd} ${t.param}` : t.cmd)),
      fact("Node", t.node || t.pinned_node || ""),
      fact("Mode", t.mode),
      fact("Priority", t.priority),
      fact("Created", time(t.created_at)),
      fact("Waited", duration(t.wait_ms)),
      fact("Ran", duration(t.run_ms)),
      fact("Peak memory", bytes(t.peak_rss_bytes)),
      fact("Log lines", count(t.log_lines)),
      fact("Items", count(t.items)),
      fact("Exit", t.exit_code ?? (t.signal ? `signal ${t.signal}` : "")),
      fact("Attempt", t.attempt > 1 ? h("span", {}, `${t.attempt} (first: `, h("a", { href: `#/tasks/${t.first_attempt}` }, shortId(t.first_attempt)), ")") : ""),
      fact("Parent", t.parent_id && h("a", { href: `#/tasks/${t.parent_id}` }, shortId(t.parent_id))),
      fact("Pending because", t.status === "pending" ? t.pending_reason : ""),
      fact("Outcome", t.error || ""),
    );
    clear(
      errors,
      t.errors?.length &&
        h(
          "div",
          { class: "card errors" },
          h("h2", {}, `Errors the spider reported (${count(t.error_count)})`),
          h("ul", {}, t.errors.map((e) => h("li", {}, time(e.at), " ", e.fatal ? h("strong", {}, "fatal: ") : "", e.message))),
        ),
    );
    logs.setTotal(t.log_lines);
    if (t.children) showChildren();
  }

  async function showChildren() {
    const tree = await get(`/tasks/${id}/tree`);
    clear(
      children,
      h("h2", {}, `Children (${tree.children_tasks.length})`),
      table(["Task", "Spider", "Status", "Progress", "Node", "Created", "Run time", "Items", ""], tree.children_tasks.map(taskRow), { "aria-label": "Child tasks" }),
    );
  }

  show(task);
  logs.start(task);
  const itemsChanged = await itemsSection(items, id, task);
  follow(`/events${query({ task: id })}`, {
    signal: stop.signal,
    // The task may have changed (a short run may even have ended) between reading it above and the stream
    // opening, or while the link was down: read it again once the stream is on, and changes come as events.
    onState: (state) => {
      if (state !== "open") return;
      get(`/tasks/${id}`).then(
        (fresh) => {
          show(fresh);
          itemsChanged(fresh);
        },
        () => {},
      );
    },
    onEvent: ({ event, data }) => {
      if (event !== "task") return;
      const changed = JSON.parse(data);
      if (changed.id === id) {
        show(changed);
        itemsChanged(changed);
      }
      else if (changed.parent_id === id) showChildren();
    },
  });
  return () => {
    stop.abort();
    logs.stop();
  };
}

const ITEM_PAGE = 50;

async function itemsSection(section, id, task) {
  const head = h("thead");
  const body = h("tbody");
  const pager = h("nav", { class: "pager", "aria-label": "Item pages" });
  const cursors = [0];
  section.append(
    h(
      "div",
      { class: "bar" },
      h("h2", { id: "items-title" }, "Items"),
      h("button", { type: "button", class: "secondary", onclick: (e) => busy(e.target, () => download(`/tasks/${id}/items?format=csv`, `${task.spider_name}-${shortId(id)}.csv`)) }, "Export CSV"),
      h("button", { type: "button", class: "secondary", onclick: (e) => busy(e.target, () => exportJson(id, task)) }, "Export JSON"),
    ),
    h("div", { class: "scroll-x" }, h("table", { "aria-label": "Items" }, head, body)),
    pager,
  );
  let at = 0;
  let shown = 0;
  let pending = null;
  async function load(index) {
    const rows = await get(`/tasks/${id}/items`, { after: cursors[index], limit: ITEM_PAGE });
    at = index;
    shown = rows.length;
    if (rows.length) cursors[index + 1] = rows[rows.length - 1].seq;
    const columns = [];
    for (const row of rows) for (const key of Object.keys(row.data)) if (!columns.includes(key)) columns.push(key);
    clear(head, h("tr", {}, h("th", { scope: "col" }, "#"), columns.map((c) => h("th", { scope: "col" }, c))));
    clear(
      body,
      rows.length
        ? rows.map((row) => h("tr", {}, h("td", {}, row.seq), columns.map((c) => h("td", {}, cell(row.data[c])))))
        : h("tr", {}, h("td", {}, "No items yet.")),
    );
    clear(
      pager,
      h("button", { type: "button", disabled: index === 0, onclick: () => load(index - 1) }, "‹ Previous"),
      h("span", {}, ` items ${count(cursors[index] + 1)}–${count(cursors[index] + rows.length)} `),
      h("button", { type: "button", disabled: rows.length < ITEM_PAGE, onclick: () => load(index + 1) }, "Next ›"),
    );
  }
  await load(0);
  // New items show up while the page they fall on is open (the last one, not yet full); at most once a second.
  return (latest) => {
    if (latest.items > cursors[at] + shown && shown < ITEM_PAGE) {
      pending ??= setTimeout(() => {
        pending = null;
        load(at).catch((e) => notify(e.message, "error"));
      }, 1000);
    }
  };
}

function cell(value) {
  if (value === undefined || value === null) return "";
  if (typeof value === "object") return h("code", {}, JSON.stringify(value));
  return String(value);
}

/** Every item of the task as one JSON array, read in pages. */
async function exportJson(id, task) {
  const parts = [];
  let after = 0;
  for (;;) {
    const rows = await get(`/tasks/${id}/items`, { after, limit: 10_000 });
    for (const row of rows) parts.push(JSON.stringify(row.data));
    if (rows.length < 10_000) break;
    after = rows[rows.length - 1].seq;
  }
  saveBlob(new Blob(["[", parts.join(",\n"), "]\n"], { type: "application/json" }), `${task.spider_name}-${shortId(id)}.json`);
}
