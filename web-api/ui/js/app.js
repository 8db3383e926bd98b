// The app shell: sign-in, navigation and the hash router. Each page is a function that fills `main` and
// returns an optional cleanup, called when the user leaves it (to close its event streams).

import { get, session, whenUnauthorized } from "./api.js";
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

function nav() {
  const here = location.hash.slice(1).split("?")[0] || "/tasks";
  const link = (path, text) =>
    h("a", { href: `#${path}`, "aria-current": here.startsWith(path) ? "page" : null }, text);
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
    h("button", { type: "button", class: "link", onclick: signOut }, "Sign out"),
  );
}

function signOut() {
  session.signOut();
  render();
}

function loginPage(reason) {
  atLogin = true;
  const input = h("input", { type: "password", name: "token", autocomplete: "current-password", required: true });
  const error = h("p", { class: "error", role: "alert" }, reason || "");
  const form = h(
    "form",
    {
      class: "login card",
      onsubmit: async (event) => {
        event.preventDefault();
        session.signIn(input.value.trim());
        try {
          await get("/nodes");
          render();
        } catch (e) {
          session.signOut();
          error.textContent = e.status === 401 ? `Sign-in failed: ${e.message}` : e.message;
          input.focus();
        }
      },
    },
    h("h1", {}, "Sign in to Arachne"),
    field("API token", input, "Make one with `arachne-master token create NAME`. It is kept for this browser tab only."),
    error,
    h("button", { type: "submit" }, "Sign in"),
  );
  clear(document.getElementById("top"));
  clear(main, form);
  input.focus();
}

async function render() {
  if (leave) {
    leave();
    leave = null;
  }
  if (!session.token()) return loginPage();
  atLogin = false;
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
