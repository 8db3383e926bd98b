// Small DOM and formatting helpers shared by the pages. Text always goes in as text nodes, never as HTML, so
// whatever a spider prints or a user names cannot inject markup.

/** h("a", {href: "#/x", class: "y", onclick: f}, "text", child, [more]) */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key in el && typeof value !== "string") el[key] = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

let nextId = 0;
/** A labelled form control: the label's `for` points at the control. */
export function field(label, control, hint) {
  if (!control.id) control.id = `f${++nextId}`;
  return h("div", { class: "field" }, h("label", { for: control.id }, label), control, hint && h("small", {}, hint));
}

export function select(name, options, value) {
  return h(
    "select",
    { name },
    options.map(([v, text]) => h("option", { value: v, selected: v === value }, text)),
  );
}

const number = new Intl.NumberFormat();
export const count = (n) => number.format(n ?? 0);

export function time(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return h("time", { datetime: iso, title: d.toISOString() }, d.toLocaleString());
}

export function duration(ms) {
  if (ms === undefined || ms === null) return "";
  if (ms < 1000) return `${ms} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.round(s % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function bytes(n) {
  if (n === undefined || n === null) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

/** A task id's last 8 digits: its first ones are a timestamp (UUIDv7), shared by tasks made together. */
export const shortId = (id) => (id ? id.slice(-8) : "");
/** A version's first 8 digits, as git shows commits. */
export const shortHash = (hash) => (hash ? hash.slice(0, 8) : "");

/** A status badge; the word is always there, colour only repeats it. */
export function badge(status) {
  return h("span", { class: `badge ${status}`, dataset: { status } }, status);
}

export const ENDED = ["finished", "error", "cancelled", "abnormal"];

/** Shows `message` in the page's live region (role=status, or role=alert for errors). */
export function notify(message, kind = "info") {
  const area = document.getElementById("notices");
  const note = h("div", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, message);
  area.append(note);
  setTimeout(() => note.remove(), kind === "error" ? 10_000 : 4_000);
}

/** Runs `action` from a button: disables it meanwhile and reports a failure instead of losing it. */
export async function busy(button, action) {
  button.disabled = true;
  try {
    return await action();
  } catch (error) {
    notify(error.message, "error");
  } finally {
    button.disabled = false;
  }
}

/** A form's submit handler: runs `action` from the submit button (as `busy` does), a failure shown in `error`. */
export function submitting(error, action) {
  return (event) => {
    event.preventDefault();
    error.textContent = "";
    return busy(event.submitter, async () => {
      try {
        await action();
      } catch (e) {
        error.textContent = e.message;
      }
    });
  };
}

export function table(headers, rows, attrs = {}) {
  return h(
    "table",
    attrs,
    h("thead", {}, h("tr", {}, headers.map((text) => h("th", { scope: "col" }, text)))),
    h("tbody", {}, rows),
  );
}

export function debounce(fn, ms) {
  let timer;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

/**
 * How a run picks its nodes, as the run dialog and the schedule form both ask it: a mode select and, for
 * mode `nodes`, a checkbox per known node. `value()` is `{mode, nodes}` as the API takes them.
 */
export function nodeChoice(nodes, mode = "random", chosen = [], labels = {}) {
  const select_ = select("mode", [["random", "Random node (least loaded)"], ["nodes", "Selected nodes"], ["all", "All nodes"]], mode);
  const boxes = nodes.map((node) =>
    h("input", { type: "checkbox", name: "node", value: node.name, checked: chosen.includes(node.name) }),
  );
  const set = h(
    "fieldset",
    { hidden: mode !== "nodes" },
    h("legend", {}, "Nodes"),
    boxes.length
      ? boxes.map((box, i) => h("label", { class: "check" }, box, ` ${nodes[i].name} (${nodes[i].status})`))
      : h("p", {}, "No nodes registered."),
  );
  select_.addEventListener("change", () => (set.hidden = select_.value !== "nodes"));
  const required = h("input", {
    name: "node_labels",
    value: Object.entries(labels || {}).map(([k, v]) => `${k}=${v}`).join(", "),
    placeholder: "region=eu, gpu=1",
    autocomplete: "off",
  });
  return {
    controls: [field("Mode", select_), set, field("Node labels", required, "A node must have all of them to take the run.")],
    value: () => ({
      mode: select_.value,
      nodes: select_.value === "nodes" ? boxes.filter((b) => b.checked).map((b) => b.value) : [],
      node_labels: parseLabels(required.value),
    }),
  };
}

/** `region=eu, gpu=1` as an object; a part without `=` is an error naming it. */
function parseLabels(text) {
  const labels = {};
  for (const part of text.split(",").map((p) => p.trim()).filter(Boolean)) {
    const at = part.indexOf("=");
    if (at <= 0 || at === part.length - 1) throw new Error(`Node label "${part}" is not NAME=VALUE`);
    labels[part.slice(0, at).trim()] = part.slice(at + 1).trim();
  }
  return labels;
}
