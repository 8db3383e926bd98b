// Admin pages: users (create with a role and a password, change the role, reset the password, delete) and
// tokens (make one with a role, a user and an expiry — its secret shown once — and revoke), and the audit log
// of who changed what.

import { del, get, patch, post } from "./api.js";
import { busy, clear, field, h, notify, select, submitting, table, time } from "./dom.js";

const ROLES = [["viewer", "viewer: reads everything"], ["developer", "developer: also spiders, runs, schedules, notifications"], ["admin", "admin: everything, users and tokens too"]];

export async function accessPage(main) {
  const users = h("div");
  const tokens = h("div");
  main.append(h("h1", {}, "Access"), h("h2", {}, "Users"), users, h("h2", {}, "Tokens"), tokens);
  // A user made or deleted changes who a token can be for, so both parts are read again.
  const refresh = () => Promise.all([loadUsers(users, refresh), loadTokens(tokens)]);
  await refresh();
}

async function loadUsers(holder, refresh) {
  const list = await get("/users");
  const rows = list.map((u) => {
    const path = `/users/${encodeURIComponent(u.name)}`;
    const role = select("role", ROLES.map(([r]) => [r, r]), u.role);
    role.setAttribute("aria-label", `Role of ${u.name}`);
    role.addEventListener("change", () => busy(role, async () => {
      await patch(path, { role: role.value });
      notify(`${u.name} is now a ${role.value}; their tokens follow within seconds.`);
    }));
    return h(
      "tr",
      { dataset: { user: u.name } },
      h("th", { scope: "row" }, u.name),
      h("td", {}, role),
      h("td", {}, time(u.created_at)),
      h(
        "td",
        { class: "actions" },
        h("button", {
          type: "button",
          class: "secondary",
          onclick: (e) => busy(e.target, async () => {
            const password = prompt(`New password for ${u.name} (at least 10 characters):`);
            if (!password) return;
            await patch(path, { password });
            notify(`Password of ${u.name} changed.`);
          }),
        }, "Reset password"),
        h("button", {
          type: "button",
          class: "danger",
          onclick: (e) => busy(e.target, async () => {
            if (!confirm(`Delete user ${u.name}? Every token of theirs is revoked.`)) return;
            await del(path);
            notify(`User ${u.name} deleted.`);
            await refresh();
          }),
        }, "Delete"),
      ),
    );
  });
  const name = h("input", { name: "name", required: true, autocomplete: "off" });
  const role = select("role", ROLES, "viewer");
  const password = h("input", { type: "password", name: "password", required: true, minlength: 10, autocomplete: "new-password" });
  const error = h("p", { class: "error", role: "alert" });
  const form = h(
    "form",
    {
      class: "card",
      onsubmit: submitting(error, async () => {
        await post("/users", { name: name.value.trim(), role: role.value, password: password.value });
        notify(`User ${name.value.trim()} created.`);
        await refresh();
      }),
    },
    h("h3", {}, "New user"),
    field("User name", name),
    field("Role", role),
    field("Password", password, "At least 10 characters; stored only as an argon2id hash."),
    error,
    h("button", { type: "submit" }, "Create user"),
  );
  clear(holder, list.length ? table(["Name", "Role", "Created", ""], rows, { "aria-label": "Users" }) : h("p", {}, "No users yet: people sign in with the tokens they are given."), form);
}

async function loadTokens(holder) {
  const [list, users] = await Promise.all([get("/tokens"), get("/users")]);
  const rows = list.map((t) =>
    h(
      "tr",
      { dataset: { token: t.name } },
      h("th", { scope: "row" }, t.name),
      h("td", {}, t.kind),
      h("td", {}, t.kind === "api" ? t.role : "—"),
      h("td", {}, t.user || "—"),
      h("td", {}, time(t.created_at)),
      h("td", {}, t.expires_at ? time(t.expires_at) : "never"),
      h(
        "td",
        {},
        h("button", {
          type: "button",
          class: "danger",
          onclick: (e) => busy(e.target, async () => {
            if (!confirm(`Revoke token ${t.name}? Whatever uses it stops working at once.`)) return;
            await del(`/tokens/${encodeURIComponent(t.name)}`);
            notify(`Token ${t.name} revoked.`);
            await loadTokens(holder);
          }),
        }, "Revoke"),
      ),
    ),
  );
  const name = h("input", { name: "token-name", required: true, autocomplete: "off" });
  const role = select("token-role", ROLES, "viewer");
  const user = select("token-user", [["", "you (the token you signed in with)"], ...users.map((u) => [u.name, u.name])], "");
  const days = h("input", { type: "number", name: "expires_in_days", min: 1, max: 3650, placeholder: "never" });
  const error = h("p", { class: "error", role: "alert" });
  const form = h(
    "form",
    {
      class: "card",
      onsubmit: submitting(error, async () => {
        const request = { name: name.value.trim(), role: role.value };
        if (user.value) request.user = user.value;
        if (days.value) request.expires_in_days = Number(days.value);
        const made = await post("/tokens", request);
        await loadTokens(holder);
        holder.append(
          h("div", { class: "card secret" },
            h("p", {}, `Token ${made.name} — copy its secret now; it is not shown again:`),
            h("code", { class: "secret-value" }, made.secret)),
        );
      }),
    },
    h("h3", {}, "New token"),
    field("Token name", name),
    field("Token role", role, "At most its user's role."),
    field("For user", user),
    field("Expires after (days)", days, "Empty: never."),
    error,
    h("button", { type: "submit" }, "Create token"),
  );
  clear(holder, table(["Name", "Kind", "Role", "User", "Created", "Expires", ""], rows, { "aria-label": "Tokens" }), form);
}

export async function auditPage(main, query) {
  const actor = h("input", { name: "actor", value: query.get("actor") || "", placeholder: "anyone" });
  const holder = h("div");
  const more = h("button", { type: "button", class: "secondary" }, "Older");
  let before = null;
  async function load(reset) {
    if (reset) {
      before = null;
      clear(holder);
    }
    const page = await get("/audit", { actor: actor.value.trim(), before, limit: 100 });
    before = page.length ? page[page.length - 1].id : before;
    more.hidden = page.length < 100;
    const rows = page.map((e) =>
      h("tr", { dataset: { status: e.status } },
        h("td", {}, time(e.at)),
        h("td", {}, e.actor),
        h("td", {}, h("code", {}, e.action)),
        h("td", {}, e.target),
        h("td", { class: e.status >= 400 ? "error" : "" }, e.status)));
    let body = holder.querySelector("tbody");
    if (!body) {
      holder.append(table(["When", "Who", "Action", "Target", "Status"], [], { "aria-label": "Audit log" }));
      body = holder.querySelector("tbody");
    }
    body.append(...rows);
  }
  more.addEventListener("click", () => busy(more, () => load(false)));
  const filter = h(
    "form",
    { class: "filters", onsubmit: (e) => { e.preventDefault(); busy(e.submitter, () => load(true)); } },
    field("Who", actor),
    h("button", { type: "submit" }, "Filter"),
  );
  main.append(h("h1", {}, "Audit"), h("p", {}, "Every change made through the API, newest first: who, what, to what, and whether it was done."), filter, holder, more);
  await load(true);
}
