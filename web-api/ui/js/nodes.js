// The nodes page: every worker with its state, load and machine metrics, refreshed every few seconds (nodes
// report by heartbeat, so there is nothing to stream), with enable/disable and runner slots editable in place,
// load limits (CPU and memory thresholds) set per node, and an offline node removable.

import { del, get, patch } from "./api.js";
import { badge, busy, bytes, clear, h, notify, table, time } from "./dom.js";

const REFRESH_MS = 5000;

export async function nodesPage(main) {
  const holder = h("div");
  const stamp = h("span", { class: "live", role: "status" });
  main.append(h("div", { class: "bar" }, h("h1", {}, "Nodes"), stamp), holder);
  // Rows being edited are not replaced under the user's cursor.
  let editing = false;
  async function load() {
    if (editing) return;
    const nodes = await get("/nodes");
    // Editing may have begun while the answer was on its way: the input being typed in stays.
    if (editing) return;
    clear(
      holder,
      nodes.length
        ? table(["Name", "State", "Runners", "CPU", "Memory", "Disk", "Labels", "Version", "Last seen", "Enabled", "Max runners", "Load limits", ""], nodes.map(row), { "aria-label": "Nodes" })
        : h("p", {}, "No worker has registered yet. Start one with `arachne-worker --master URL`."),
    );
    stamp.textContent = `updated ${new Date().toLocaleTimeString()}`;
  }

  function row(node) {
    const path = `/nodes/${encodeURIComponent(node.name)}`;
    const m = node.metrics;
    const slots = h("input", { type: "number", min: 0, max: 1024, value: node.max_runners, name: "max_runners", "aria-label": `Max runners of ${node.name}`, class: "narrow" });
    return h(
      "tr",
      { dataset: { node: node.name } },
      h("th", { scope: "row" }, node.name),
      h("td", {}, badge(node.status)),
      h("td", {}, `${node.running} / ${node.max_runners}`),
      h("td", {}, m ? `${m.cpu_percent.toFixed(0)}%` : ""),
      h("td", {}, m ? `${bytes(m.memory_used_bytes)} / ${bytes(m.memory_total_bytes)}` : ""),
      h("td", {}, m ? `${bytes(m.disk_used_bytes)} / ${bytes(m.disk_total_bytes)}` : ""),
      h("td", {}, Object.entries(node.labels || {}).map(([k, v]) => h("code", { class: "label" }, `${k}=${v}`))),
      h("td", {}, node.version),
      h("td", {}, time(node.last_seen)),
      h(
        "td",
        {},
        h("button", {
          type: "button",
          class: "secondary",
          "aria-pressed": String(node.enabled),
          onclick: (e) => busy(e.target, async () => {
            await patch(path, { enabled: !node.enabled });
            await load();
          }),
        }, node.enabled ? "Enabled · disable" : "Disabled · enable"),
      ),
      h("td", {}, inlineForm(path, [slots], "Set", () => ({ max_runners: Number(slots.value) }))),
      h("td", {}, limitsForm(node, path)),
      // Only an offline node can be forgotten; the server says why when something still needs it.
      h(
        "td",
        {},
        node.status === "offline" &&
          h("button", {
            type: "button",
            class: "danger",
            "aria-label": `Remove ${node.name}`,
            onclick: (e) => busy(e.target, async () => {
              if (!confirm(`Forget the offline node ${node.name}? If it registers again, it comes back.`)) return;
              await del(path);
              notify(`${node.name} removed.`);
              await load();
            }),
          }, "Remove"),
      ),
    );
  }

  /**
   * A form in a row that PATCHes `body()` to the node: while one of its inputs has focus, refreshes leave the
   * rows alone. `inputs` may be interleaved with text.
   */
  function inlineForm(path, inputs, button, body) {
    for (const input of inputs.filter((i) => i instanceof HTMLElement)) {
      input.addEventListener("focus", () => (editing = true));
      input.addEventListener("blur", () => (editing = false));
    }
    const send = (e) => {
      e.preventDefault();
      editing = false;
      busy(e.submitter, async () => {
        await patch(path, body());
        await load();
      });
    };
    return h("form", { class: "inline", onsubmit: send }, inputs, h("button", { type: "submit", class: "secondary" }, button));
  }

  /** The node's own CPU and memory thresholds: over one, it takes no new task (empty: the cluster's). */
  function limitsForm(node, path) {
    const percent = (name, label, value) =>
      h("input", { type: "number", name, min: 0, max: 100, step: "any", value: value ?? "", placeholder: "–", "aria-label": `${label} of ${node.name}`, class: "narrow" });
    const cpu = percent("max_cpu_percent", "Max CPU %", node.max_cpu_percent);
    const memory = percent("max_memory_percent", "Max memory %", node.max_memory_percent);
    // Empty clears the node's own threshold (0 to the server): the cluster-wide one applies.
    return inlineForm(path, ["CPU ", cpu, " % mem ", memory, " % "], "Set limits", () => ({
      max_cpu_percent: Number(cpu.value || 0),
      max_memory_percent: Number(memory.value || 0),
    }));
  }

  await load();
  const timer = setInterval(() => load().catch(() => {}), REFRESH_MS);
  return () => clearInterval(timer);
}
