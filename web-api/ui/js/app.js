// The app shell: sign-in, navigation and the hash router. Each page is a function that fills `main` and
// returns an optional cleanup, called when the user leaves it (to close its event streams).

import { get, post, session, whenUnauthorized } from "./api.js";
import { accessPage, auditPage } from "./access.js";
import { clear, field, h } from "./dom.js";
import { dashboardPage } from "./dashboard.js";
import { nodesPage } from "./nodes.js";
import { notificationForm, notificationsPage } from "./notifications.js";
import { resultsPage } from "./results.js";
import { schedulesPage, scheduleForm } from "./schedules.js";
import { spiderPage, spidersPage } from "./spiders.js";
import { taskPage, tasksPage } from "./tasks.js";

const routes = [
  [/^\/dashboard\/?$/, () => dashboardPage],
  [/^\/access\/?$/, () => accessPage],
  [/^\/audit\/?$/, () => auditPage],
  [/^\/spiders\/?$/, () => spidersPage],
  [/^\/spiders\/([^/]+)$/, (m) => (main, q) => spiderPage(main, decodeURIComponent(m[1]), q)],
  [/^\/tasks\/?$/, () => tasksPage],
  [/^\/results\/?$/, () => resultsPage],
  [/^\/tasks\/([0-9a-f-]{36})$/, (m) => (main, q) => taskPage(main, m[1], q)],
  [/^\/schedules\/?$/, () => schedulesPage],
  [/^\/schedules\/new$/, () => (main) => scheduleForm(main, null)],
  [/^\/schedules\/([^/]+)\/edit$/, (m) => (main) => scheduleForm(main, decodeURIComponent(m[1]))],
  [/^\/nodes\/?$/, () => nodesPage],
  [/^\/notifications\/?$/, () => notificationsPage],
  [/^\/notifications\/new$/, () => (main) => notificationForm(main, null)],
  [/^\/notifications\/([^/]+)\/edit$/, (m) => (main) => notificationForm(main, decodeURIComponent(m[1]))],
];

const main = document.getElementById("main");
let leave = null;
// The login form reports its own failures; a 401 there is not a session that ended.
let atLogin = false;

/** Who the session's token speaks for (from `/me`), read once per sign-in. */
let me = null;

function nav() {
  const here = location.hash.slice(1).split("?")[0] || "/tasks";
  const link = (path, text) =>
    h("a", { href: `#${path}`, "aria-current": here.startsWith(path) ? "page" : null }, text);
  const admin = me?.role === "admin";
  return h(
    "nav",
    { "aria-label": "Main" },
    h("span", { class: "brand" }, "Arachne"),
    link("/dashboard", "Dashboard"),
    link("/spiders", "Spiders"),
    link("/tasks", "Tasks"),
    link("/results", "Results"),
    link("/schedules", "Schedules"),
    link("/nodes", "Nodes"),
    link("/notifications", "Notifications"),
    admin && link("/access", "Access"),
    admin && link("/audit", "Audit"),
    me && h("span", { class: "who", title: `token ${me.token}` }, `${me.actor} · ${me.role}`),
    h("button", { type: "button", class: "link", onclick: signOut }, "Sign out"),
  );
}

async function signOut() {
  // A session made by signing in is ended on the server too; a pasted API token stays valid.
  if (me?.token.startsWith("session-")) await post("/sign-out").catch(() => {});
  session.signOut();
  me = null;
  render();
}

function loginPage(reason) {
  atLogin = true;
  me = null;
  const error = h("p", { class: "error", role: "alert" }, reason || "");
  const name = h("input", { name: "username", autocomplete: "username", required: true });
  const password = h("input", { type: "password", name: "password", autocomplete: "current-password", required: true });
  const token = h("input", { type: "password", name: "token", autocomplete: "off", required: true });
  /** Keeps `secret` for this tab once the server has accepted it. */
  const enter = async (secret, control) => {
    session.signIn(secret);
    try {
      me = await get("/me");
      render();
    } catch (e) {
      session.signOut();
      error.textContent = e.status === 401 ? `Sign-in failed: ${e.message}` : e.message;
      control.focus();
    }
  };
  const userForm = h(
    "form",
    {
      onsubmit: async (event) => {
        event.preventDefault();
        error.textContent = "";
        try {
          const made = await post("/sign-in", { name: name.value.trim(), password: password.value });
          await enter(made.secret, password);
        } catch (e) {
          error.textContent = `Sign-in failed: ${e.message}`;
          password.focus();
        }
      },
    },
    field("Name", name),
    field("Password", password),
    h("button", { type: "submit" }, "Sign in"),
  );
  const tokenForm = h(
    "form",
    {
      onsubmit: (event) => {
        event.preventDefault();
        error.textContent = "";
        enter(token.value.trim(), token);
      },
    },
    field("API token", token, "Or sign in with a token (`arachne-master token create NAME` makes one). It is kept for this browser tab only."),
    h("button", { type: "submit", class: "secondary" }, "Use token"),
  );
  const card = h("div", { class: "login card" }, h("h1", {}, "Sign in to Arachne"), error, userForm, h("hr"), tokenForm);
  clear(document.getElementById("top"));
  clear(main, card);
  name.focus();
}

async function render() {
  if (leave) {
    leave();
    leave = null;
  }
  if (!session.token()) return loginPage();
  atLogin = false;
  if (!me) {
    try {
      me = await get("/me");
    } catch (e) {
      if (e.status !== 401) clear(main, h("p", { class: "error", role: "alert" }, e.message));
      return;
    }
  }
  const [path, search] = location.hash.slice(1).split("?");
  const q = new URLSearchParams(search || "");
  if (!path || path === "/") {
    location.replace("#/tasks");
    return;
  }
  clear(document.getElementById("top"), nav());
  for (const [pattern, page] of routes) {
    const m = path.match(pattern);
    if (m) {
      clear(main);
      try {
        leave = (await page(m)(main, q)) || null;
      } catch (error) {
        if (error.status !== 401) clear(main, h("p", { class: "error", role: "alert" }, error.message));
      }
      const heading = main.querySelector("h1");
      if (heading) {
        document.title = `${heading.textContent} · Arachne`;
        heading.tabIndex = -1;
        heading.focus({ preventScroll: true });
      }
      return;
    }
  }
  clear(main, h("h1", {}, "Not found"), h("p", {}, `No page at ${path}.`));
}

whenUnauthorized((message) => {
  if (atLogin) return;
  session.signOut();
  if (leave) {
    leave();
    leave = null;
  }
  loginPage(`Signed out: ${message}`);
});

window.addEventListener("hashchange", render);
render();
