// Notification pages: the rules (enable/disable, test, delete) with the latest deliveries below, and the
// create/edit form: a channel (webhook, Slack, email), the events it announces, and the spider or schedule
// it is limited to. Secrets come back masked; leaving the mask in place keeps the stored one.

import { del, get, post, put } from "./api.js";
import { badge, busy, clear, field, h, notify, select, submitting, table, time } from "./dom.js";

const TRIGGERS = [
  ["finished", "Task finished"],
  ["error", "Task ended in error"],
  ["cancelled", "Task cancelled"],
  ["abnormal", "Task abnormal (its node was lost)"],
  ["no_items", "Finished with no items"],
  ["fatal_error", "Reported a fatal ERROR"],
  ["node_offline", "Node went offline"],
  ["node_online", "Node came back online"],
];
const MASK = "********";
const REFRESH_MS = 5000;

function where(channel) {
  if (channel.kind === "email") return `${channel.host}:${channel.port} → ${channel.to.join(", ")}`;
  return channel.url;
}

export async function notificationsPage(main) {
  const rules = await get("/notifications");
  const rows = rules.map((n) => {
    const path = `/notifications/${encodeURIComponent(n.name)}`;
    const on = [...(n.triggers || [])];
    if (n.longer_than_minutes) on.push(`longer than ${n.longer_than_minutes} min`);
    const scope = [n.spider && `spider ${n.spider}`, n.schedule && `schedule ${n.schedule}`].filter(Boolean).join(", ") || "all";
    return h(
      "tr",
      { dataset: { notification: n.name } },
      h("td", {}, h("a", { href: `#${path}/edit` }, n.name)),
      h("td", {}, n.channel.kind, " ", h("small", {}, where(n.channel))),
      h("td", {}, on.join(", ")),
      h("td", {}, scope),
      h("td", {}, n.enabled ? "enabled" : "disabled"),
      h(
        "td",
        { class: "actions" },
        h("button", {
          type: "button",
          class: "secondary",
          onclick: (e) => busy(e.target, async () => {
            await put(path, { ...n, enabled: !n.enabled });
            location.hash = `#/notifications?v=${Date.now()}`;
          }),
        }, n.enabled ? "Disable" : "Enable"),
        h("button", {
          type: "button",
          class: "secondary",
          onclick: (e) => busy(e.target, async () => {
            await post(`${path}/test`);
            notify(`Test message of ${n.name} on its way; its delivery shows below.`);
            await deliveries.load();
          }),
        }, "Send test"),
        h("button", {
          type: "button",
          class: "secondary",
          onclick: (e) => busy(e.target, async () => {
            if (!confirm(`Delete notification ${n.name}? Its deliveries stay listed.`)) return;
            await del(path);
            notify(`Notification ${n.name} deleted.`);
            location.hash = `#/notifications?v=${Date.now()}`;
          }),
        }, "Delete"),
      ),
    );
  });
  const deliveries = deliveryList();
  main.append(
    h("div", { class: "bar" }, h("h1", {}, "Notifications"), h("a", { class: "button", href: "#/notifications/new" }, "New notification")),
    rules.length
      ? table(["Name", "Channel", "On", "For", "State", ""], rows, { "aria-label": "Notifications" })
      : h("p", {}, "No notifications yet: add one to hear of failed runs and lost nodes on a webhook, Slack or by email."),
    h("h2", {}, "Deliveries"),
    deliveries.holder,
  );
  await deliveries.load();
  const timer = setInterval(() => deliveries.load().catch(() => {}), REFRESH_MS);
  return () => clearInterval(timer);
}

/** The latest deliveries, refreshed while the page is open. */
function deliveryList() {
  const holder = h("div");
  async function load() {
    const list = await get("/notification-deliveries", { limit: 100 });
    clear(
      holder,
      list.length
        ? table(
            ["Time", "Notification", "Channel", "Trigger", "Status", "Response", "Attempts", "Message", "Error"],
            list.map((d) =>
              h(
                "tr",
                { dataset: { delivery: d.id } },
                h("td", {}, time(d.created_at)),
                h("td", {}, d.notification),
                h("td", {}, d.channel),
                h("td", {}, d.trigger),
                h("td", {}, badge(d.status)),
                h("td", {}, d.response_status ?? "—"),
                h("td", {}, d.attempts),
                h("td", {}, d.message.task ? h("a", { href: `#/tasks/${d.message.task.id}` }, d.message.title) : d.message.title),
                h("td", { class: "error" }, d.error || ""),
              ),
            ),
            { "aria-label": "Deliveries" },
          )
        : h("p", {}, "Nothing sent yet."),
    );
  }
  return { holder, load };
}

/** Creates a rule (`name` null) or edits the one named. */
export async function notificationForm(main, name) {
  const [existing, spiders, schedules] = await Promise.all([
    name ? get(`/notifications/${encodeURIComponent(name)}`) : null,
    get("/spiders"),
    get("/schedules"),
  ]);
  const n = existing || { channel: { kind: "webhook", url: "" }, triggers: ["error", "abnormal"], enabled: true };
  const c = n.channel;
  const input = (attrs) => h("input", { autocomplete: "off", ...attrs });
  const nameInput = input({ name: "name", required: true, value: n.name || "", readonly: !!existing });
  const kind = select("kind", [["webhook", "Webhook (JSON POST, signed)"], ["slack", "Slack-compatible webhook"], ["email", "Email (SMTP)"]], c.kind);
  const url = input({ name: "url", type: "url", value: c.url || "", placeholder: "https://..." });
  const secret = input({ name: "secret", type: "password", value: c.secret || "", autocomplete: "new-password" });
  const host = input({ name: "host", value: c.host || "" });
  const port = input({ name: "port", type: "number", min: 1, max: 65535, value: c.port || 587 });
  const security = select("security", [["starttls", "STARTTLS"], ["tls", "TLS"], ["none", "none (local relay only)"]], c.security || "starttls");
  const username = input({ name: "username", value: c.username || "" });
  const password = input({ name: "password", type: "password", value: c.password || "", autocomplete: "new-password" });
  const from = input({ name: "from", type: "email", value: c.from || "" });
  const to = input({ name: "to", value: (c.to || []).join(", "), placeholder: "ops@example.com, dev@example.com" });
  const triggers = TRIGGERS.map(([value, label]) => {
    const box = h("input", { type: "checkbox", name: "trigger", value, checked: (n.triggers || []).includes(value), id: `trigger-${value}` });
    return [box, h("label", { class: "check", for: box.id }, box, ` ${label}`)];
  });
  const longer = input({ name: "longer_than_minutes", type: "number", min: 1, value: n.longer_than_minutes || "" });
  const spider = select("spider", [["", "every spider"], ...spiders.map((s) => [s.name, s.name])], n.spider || "");
  const schedule = select("schedule", [["", "any task"], ...schedules.map((s) => [s.name, s.name])], n.schedule || "");
  const enabled = h("input", { type: "checkbox", name: "enabled", checked: n.enabled, id: "notification-enabled" });
  const error = h("p", { class: "error", role: "alert" });

  const hookFields = h("div", {}, field("URL", url), field("Signing secret", secret, "Optional for a webhook: bodies are signed with HMAC-SHA256 in X-Arachne-Signature. Left as shown, the stored one is kept."));
  const mailFields = h(
    "div",
    {},
    field("SMTP server", host),
    field("Port", port),
    field("Security", security),
    field("User", username, "Empty: no sign-in."),
    field("Password", password, "Left as shown, the stored one is kept."),
    field("From", from),
    field("To", to, "Comma-separated addresses."),
  );
  const show = () => {
    hookFields.hidden = kind.value === "email";
    secret.closest(".field").hidden = kind.value !== "webhook";
    mailFields.hidden = kind.value !== "email";
  };
  kind.addEventListener("change", show);

  const channel = () => {
    if (kind.value === "email") {
      const mail = {
        kind: "email",
        host: host.value.trim(),
        port: Number(port.value),
        security: security.value,
        from: from.value.trim(),
        to: to.value.split(",").map((a) => a.trim()).filter(Boolean),
      };
      if (username.value.trim()) mail.username = username.value.trim();
      if (password.value) mail.password = password.value;
      return mail;
    }
    const hook = { kind: kind.value, url: url.value.trim() };
    if (kind.value === "webhook" && secret.value) hook.secret = secret.value;
    return hook;
  };

  const form = h(
    "form",
    {
      class: "card wide",
      onsubmit: submitting(error, async () => {
        const rule = {
          name: nameInput.value.trim(),
          channel: channel(),
          triggers: triggers.filter(([box]) => box.checked).map(([box]) => box.value),
          enabled: enabled.checked,
        };
        if (longer.value) rule.longer_than_minutes = Number(longer.value);
        if (spider.value) rule.spider = spider.value;
        if (schedule.value) rule.schedule = schedule.value;
        if (existing) await put(`/notifications/${encodeURIComponent(existing.name)}`, rule);
        else await post("/notifications", rule);
        notify(`Notification ${rule.name} saved.`);
        location.hash = "#/notifications";
      }),
    },
    field("Name", nameInput),
    field("Channel", kind),
    hookFields,
    mailFields,
    h("fieldset", {}, h("legend", {}, "Announce"), triggers.map(([, label]) => label)),
    field("Also when a run goes on longer than (minutes)", longer),
    field("Only tasks of spider", spider),
    field("Only tasks of schedule", schedule),
    h("label", { class: "check", for: "notification-enabled" }, enabled, " Enabled"),
    error,
    h("div", { class: "actions" }, h("a", { class: "button secondary", href: "#/notifications" }, "Back"), h("button", { type: "submit" }, existing ? "Save" : "Create")),
  );
  main.append(h("h1", {}, existing ? `Edit notification ${existing.name}` : "New notification"), form);
  show();
  if (existing && (c.secret === MASK || c.password === MASK)) {
    form.prepend(h("p", { class: "hint" }, "The secret is stored; it is not shown."));
  }
}
