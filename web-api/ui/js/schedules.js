// Schedule pages: the list (next fire time, enable/disable, run now, delete) and the create/edit form, which
// checks the cron expression on the server as it is typed and shows the next fire times.

import { del, get, post, put } from "./api.js";
import { badge, busy, clear, debounce, field, h, nodeChoice, notify, select, submitting, table, time } from "./dom.js";

export async function schedulesPage(main) {
  const schedules = await get("/schedules");
  const rows = schedules.map((s) => {
    const path = `/schedules/${encodeURIComponent(s.name)}`;
    return h(
      "tr",
      { dataset: { schedule: s.name } },
      h("td", {}, h("a", { href: `#${path}/edit` }, s.name)),
      h("td", {}, h("a", { href: `#/spiders/${encodeURIComponent(s.spider)}` }, s.spider)),
      h("td", {}, h("code", {}, s.cron), " ", h("small", {}, s.timezone)),
      h("td", {}, s.mode, s.nodes?.length ? ` (${s.nodes.join(", ")})` : ""),
      h("td", {}, s.enabled ? "enabled" : "disabled"),
      h("td", {}, s.next?.length ? time(s.next[0]) : "—"),
      h("td", {}, s.last_fire ? time(s.last_fire) : "never"),
      h(
        "td",
        { class: "actions" },
        h("button", {
          type: "button",
          class: "secondary",
          onclick: (e) =>
            busy(e.target, async () => {
              await post(`${path}/${s.enabled ? "disable" : "enable"}`);
              location.hash = `#/schedules?v=${Date.now()}`;
            }),
        }, s.enabled ? "Disable" : "Enable"),
        h("button", {
          type: "button",
          class: "secondary",
          onclick: (e) =>
            busy(e.target, async () => {
              const task = await post(`${path}/run`);
              location.hash = `#/tasks/${task.id}`;
            }),
        }, "Run now"),
        h("a", { class: "button secondary", href: `#/tasks?schedule=${s.id}` }, "Tasks"),
        h("button", {
          type: "button",
          class: "secondary",
          onclick: (e) =>
            busy(e.target, async () => {
              if (!confirm(`Delete schedule ${s.name}? Its tasks stay.`)) return;
              await del(path);
              notify(`Schedule ${s.name} deleted.`);
              location.hash = `#/schedules?v=${Date.now()}`;
            }),
        }, "Delete"),
      ),
    );
  });
  main.append(
    h("div", { class: "bar" }, h("h1", {}, "Schedules"), h("a", { class: "button", href: "#/schedules/new" }, "New schedule")),
    schedules.length
      ? table(["Name", "Spider", "Cron", "Mode", "State", "Next run", "Last fire", ""], rows, { "aria-label": "Schedules" })
      : h("p", {}, "No schedules yet."),
  );
}

/** Creates a schedule (`name` null) or edits the one named. */
export async function scheduleForm(main, name) {
  const [existing, spiders, nodes] = await Promise.all([
    name ? get(`/schedules/${encodeURIComponent(name)}`) : null,
    get("/spiders"),
    get("/nodes"),
  ]);
  // The API leaves empty lists out of its JSON.
  const s = { nodes: [], ...(existing || { cron: "*/5 * * * *", timezone: "UTC", mode: "random", priority: 5, enabled: true, overlap: "allow", misfire: "once", nodes: [] }) };
  const input = (attrs) => h("input", { autocomplete: "off", ...attrs });
  const nameInput = input({ name: "name", required: true, value: s.name || "" });
  const spider = select("spider", spiders.map((sp) => [sp.name, sp.name]), s.spider);
  const cron = input({ name: "cron", required: true, value: s.cron, "aria-describedby": "cron-check", spellcheck: false });
  const tz = input({ name: "timezone", value: s.timezone, list: "zones" });
  const zones = h("datalist", { id: "zones" }, (Intl.supportedValuesOf?.("timeZone") || ["UTC"]).map((z) => h("option", { value: z })));
  const check = h("div", { id: "cron-check", class: "cron-check", "aria-live": "polite" });
  const where = nodeChoice(nodes, s.mode, s.nodes, s.node_labels);
  const param = input({ name: "param", value: s.param || "" });
  const priority = input({ type: "number", name: "priority", min: 1, max: 10, value: s.priority, required: true });
  const overlap = select("overlap", [["allow", "allow: start anyway"], ["skip", "skip: not while the previous run is active"], ["queue", "queue: wait for the previous run"]], s.overlap);
  const misfire = select("misfire", [["once", "run once"], ["skip", "skip"]], s.misfire);
  const enabled = h("input", { type: "checkbox", name: "enabled", checked: s.enabled, id: "schedule-enabled" });
  const error = h("p", { class: "error", role: "alert" });

  let asked = 0;
  const preview = debounce(async () => {
    const mine = ++asked;
    try {
      const result = await get("/cron", { cron: cron.value, tz: tz.value.trim() });
      if (mine !== asked) return;
      cron.setAttribute("aria-invalid", "false");
      clear(check, h("p", {}, "Next fire times:"), h("ol", { class: "fire-times" }, result.next.map((t) => h("li", {}, time(t)))));
    } catch (e) {
      if (mine !== asked) return;
      cron.setAttribute("aria-invalid", "true");
      clear(check, h("p", { class: "error" }, e.message));
    }
  }, 250);
  cron.addEventListener("input", preview);
  tz.addEventListener("input", preview);
  preview();

  const form = h(
    "form",
    {
      class: "card wide",
      onsubmit: submitting(error, async () => {
        const spec = {
          name: nameInput.value.trim(),
          spider: spider.value,
          cron: cron.value.trim(),
          timezone: tz.value.trim() || "UTC",
          ...where.value(),
          priority: Number(priority.value),
          enabled: enabled.checked,
          overlap: overlap.value,
          misfire: misfire.value,
        };
        if (param.value.trim()) spec.param = param.value.trim();
        if (existing) await put(`/schedules/${encodeURIComponent(existing.name)}`, spec);
        else await post("/schedules", spec);
        notify(`Schedule ${spec.name} saved.`);
        location.hash = "#/schedules";
      }),
    },
    field("Name", nameInput),
    field("Spider", spider),
    field("Cron expression", cron, "5 fields (minute hour day-of-month month day-of-week), 6 with seconds first, or @hourly/@daily/@weekly/@monthly."),
    check,
    field("Time zone", tz, "An IANA name such as Europe/Berlin."),
    zones,
    where.controls,
    field("Parameters", param),
    field("Priority", priority, "1 is the highest, 10 the lowest."),
    field("Overlap", overlap),
    field("After downtime", misfire, "What a schedule that missed fire times does: one run, or none."),
    h("label", { class: "check", for: "schedule-enabled" }, enabled, " Enabled"),
    error,
    h("div", { class: "actions" }, h("a", { class: "button secondary", href: "#/schedules" }, "Back"), h("button", { type: "submit" }, existing ? "Save" : "Create")),
  );
  main.append(h("h1", {}, existing ? `Edit schedule ${existing.name}` : "New schedule"));
  if (existing) main.append(badgeLine(existing));
  main.append(form);
}

function badgeLine(s) {
  return h("p", {}, s.enabled ? badge("enabled") : badge("disabled"), " last fire: ", s.last_fire ? time(s.last_fire) : "never");
}
