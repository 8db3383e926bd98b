// The web UI in headless Chromium, as a user would drive it. Started by web-api/tests/browser.rs, which runs
// the master and the worker and passes where everything is in the environment. Every step is bounded by a
// timeout and waits on what the page shows, never on the clock; a failing step leaves a screenshot.

import { createHmac } from "node:crypto";
import { createServer } from "node:http";
import { createRequire } from "node:module";
import { readFile, unlink, writeFile } from "node:fs/promises";
import path from "node:path";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run this through \`cargo test --test browser\``);
  return value;
};
const URL = env("ARACHNE_URL");
const TOKEN = env("ARACHNE_TOKEN");
const SHOTS = env("ARACHNE_SCREENSHOTS");
const BIG_TASK = env("BIG_TASK");
const BIG_LINES = Number(env("BIG_LINES"));
const NEEDLE_LINE = Number(env("NEEDLE_LINE"));
const SEEDED_TASKS = Number(env("SEEDED_TASKS"));
const TIMEOUT = 30_000;

const require = createRequire(path.join(env("ARACHNE_BROWSER_DEPS"), "package.json"));
const { chromium } = require("playwright-core");

const browser = await chromium.launch({
  executablePath: env("ARACHNE_CHROMIUM"),
  headless: true,
  // The machine has no route out: without these Chromium keeps dialling Google's services.
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"],
});
const context = await browser.newContext({ viewport: { width: 1366, height: 820 }, acceptDownloads: true });
context.setDefaultTimeout(TIMEOUT);
const page = await context.newPage();
const pageErrors = [];
page.on("pageerror", (error) => pageErrors.push(error.message));
page.on("console", (message) => {
  // Failed requests are the API answering (a bad cron expression is a 400 by design); the steps check what
  // the page makes of them. Anything else logged as an error is a defect.
  if (message.type() === "error" && !message.text().startsWith("Failed to load resource")) pageErrors.push(message.text());
});

/** Saves a screenshot of the page, and fails on text a page should never show (a value that was missing). */
async function shot(name) {
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
  const text = await page.evaluate(() => document.body.innerText);
  const junk = text.match(/\b(null|undefined|NaN)\b|\[object Object\]|Invalid Date/);
  check(!junk, `page ${name} shows "${junk?.[0]}"`);
}
let failed = false;
async function step(name, action) {
  const started = Date.now();
  try {
    await action();
    console.log(`ok   ${name} (${Date.now() - started} ms)`);
  } catch (error) {
    failed = true;
    console.error(`FAIL ${name}: ${error.stack || error}`);
    await shot(`FAILED-${name.replace(/\W+/g, "-")}`).catch(() => {});
    throw error;
  }
}
function check(condition, message) {
  if (!condition) throw new Error(message);
}
/** The API from the test's side, to act behind the page's back (a run the page must notice by itself). */
/** Polls `condition` (an API read, say) until it holds, failing after TIMEOUT. */
async function until(what, condition) {
  const deadline = Date.now() + TIMEOUT;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

async function call(method, route, body) {
  const response = await fetch(`${URL}/api/v1${route}`, {
    method,
    headers: { Authorization: `Bearer ${TOKEN}`, "Content-Type": "application/json" },
    body: body && JSON.stringify(body),
  });
  if (!response.ok) throw new Error(`${method} ${route}: ${response.status} ${await response.text()}`);
  return response.status === 204 ? null : response.json();
}
const heading = (name) => page.getByRole("heading", { level: 1, name });
const logLine = (seq) => page.locator(`.log-viewport .line[data-seq="${seq}"] .t`);

try {
  await step("sign-in refuses a wrong token and accepts the right one", async () => {
    await page.goto(URL);
    await page.getByLabel("API token").fill("arachne_api_wrong");
    await page.getByRole("button", { name: "Use token" }).click();
    await page.getByRole("alert").filter({ hasText: "Sign-in failed" }).waitFor();
    await shot("login");
    await page.getByLabel("API token").fill(TOKEN);
    await page.getByRole("button", { name: "Use token" }).click();
    await heading("Tasks").waitFor();
    check((await page.evaluate(() => sessionStorage.getItem("arachne.token"))) === TOKEN, "token kept in session storage");
  });

  await step("the task list pages through 100,000 tasks", async () => {
    await page.locator(".summary", { hasText: "page 1 of" }).waitFor();
    const summary = await page.locator(".summary").textContent();
    const total = Number(summary.split(" tasks")[0].replace(/\D/g, ""));
    check(total >= SEEDED_TASKS, `summary counts every task: ${summary}`);
    check((await page.locator('table[aria-label="Tasks"] tbody tr').count()) === 50, "a page of 50 rows");
    await shot("tasks");
    await page.getByRole("button", { name: "Last »" }).click();
    const pages = Math.ceil(total / 50);
    await page.locator(".summary", { hasText: `page ${pages.toLocaleString("en-US")} of` }).waitFor();
    await page.locator('table[aria-label="Tasks"] tbody tr').first().waitFor();
    await page.getByLabel("Status").selectOption("error");
    await page.locator(".summary", { hasText: "page 1 of" }).waitFor();
    const rows = page.locator('table[aria-label="Tasks"] tbody tr [data-status]');
    await rows.first().waitFor();
    const statuses = await rows.evaluateAll((els) => els.map((e) => e.dataset.status));
    check(statuses.every((s) => s === "error"), `filtered by status: ${statuses}`);
  });

  await step("the Spiders page points out a broken folder of the watched spiders folder", async () => {
    await page.goto(`${URL}/#/spiders`);
    await heading("Spiders").waitFor();
    const alert = page.getByRole("alert", { name: "Spider folders" });
    await alert.getByText("is not synced").waitFor();
    await alert.getByText("arachne.toml").first().waitFor();
  });

  await step("a spider is created from a folder upload and its files can be read", async () => {
    await page.goto(`${URL}/#/spiders`);
    await heading("Spiders").waitFor();
    await page.getByRole("button", { name: "New spider" }).click();
    const dialog = page.getByRole("dialog", { name: "New spider" });
    await dialog.getByLabel("Name").fill("ui-demo");
    await dialog.getByLabel("Command").fill("python3 main.py");
    await dialog.getByLabel("Folder").setInputFiles(env("SPIDER_DIR"));
    await dialog.getByRole("button", { name: "Create" }).click();
    await heading("ui-demo").waitFor();
    await page.getByRole("button", { name: "main.py" }).click();
    await page.locator("pre.file", { hasText: "tick" }).waitFor();
    await shot("spider");
  });

  let taskUrl;
  await step("a run from the dialog shows its log lines live, with progress, stats, errors and items", async () => {
    await page.locator(".bar").getByRole("button", { name: "Run", exact: true }).click();
    const dialog = page.getByRole("dialog", { name: "Run ui-demo" });
    await dialog.getByLabel("Priority").fill("3");
    await dialog.getByRole("button", { name: "Run", exact: true }).click();
    await page.locator(".badge", { hasText: "running" }).first().waitFor();
    taskUrl = page.url();
    await page.locator(".log-viewport .line .t", { hasText: /^tick 3$/ }).waitFor();
    // Later lines arrive on the open page, with no reload.
    await page.locator(".log-viewport .line .t", { hasText: /^tick 45$/ }).waitFor();
    check(await page.getByLabel("Follow new lines").isChecked(), "the view follows new lines");
    await page.locator(".progress-area progress").waitFor();
    await page.locator(".progress-area dl.stats", { hasText: "retries" }).waitFor();
    await page.getByRole("region", { name: "Errors" }).getByText("page 7 answered 503").waitFor();
    await page.getByRole("table", { name: "Items" }).getByText("second").waitFor();
    await shot("task-running");
  });

  await step("scrolling up pauses following; the end resumes it", async () => {
    await page.locator(".log-viewport").hover();
    await page.mouse.wheel(0, -400);
    await page.waitForFunction(() => !document.getElementById("log-follow").checked);
    const shownBefore = await page.locator(".log-viewport .line").first().getAttribute("data-seq");
    await page.locator(".log-state", { hasText: "new below" }).waitFor();
    const shownAfter = await page.locator(".log-viewport .line").first().getAttribute("data-seq");
    check(shownBefore === shownAfter, `the view stays put while paused (${shownBefore} then ${shownAfter})`);
    // End resumes following by itself; ticking the box too would race with it.
    await page.getByRole("button", { name: "End" }).click();
    await page.waitForFunction(() => document.getElementById("log-follow").checked);
  });

  await step("Export CSV and Export JSON download the task's items", async () => {
    const [download] = await Promise.all([page.waitForEvent("download"), page.getByRole("button", { name: "Export CSV" }).click()]);
    const csv = await readFile(await download.path(), "utf8");
    check(csv.split("\r\n")[0] === "title,n" || csv.split("\n")[0] === "title,n", `CSV header: ${csv.slice(0, 80)}`);
    check(csv.includes("second"), "CSV rows");
    const [json] = await Promise.all([page.waitForEvent("download"), page.getByRole("button", { name: "Export JSON" }).click()]);
    const items = JSON.parse(await readFile(await json.path(), "utf8"));
    check(JSON.stringify(items) === JSON.stringify([{ title: "first", n: 1 }, { title: "second", n: 2 }]), `JSON export: ${JSON.stringify(items)}`);
  });

  await step("Cancel ends the running task as cancelled, and Restart runs it again as attempt 2", async () => {
    // Focus stays on the button while STATUS reports redraw the page around it; Enter presses it.
    await page.getByRole("button", { name: "Cancel" }).focus();
    const progress = await page.locator(".progress-area span").textContent();
    await page.waitForFunction((before) => document.querySelector(".progress-area span")?.textContent !== before, progress);
    check((await page.evaluate(() => document.activeElement?.textContent)) === "Cancel", "focus kept on Cancel");
    await page.keyboard.press("Enter");
    await page.locator(".bar .badge", { hasText: "cancelled" }).waitFor();
    await page.locator(".log-state", { hasText: "task ended" }).waitFor();
    const follow = page.getByLabel("Follow new lines");
    check(!(await follow.isChecked()) && (await follow.isDisabled()), "an ended task's log no longer offers to follow");
    await shot("task-cancelled");
    const cancelled = page.url();
    await page.getByRole("button", { name: "Restart" }).click();
    await page.waitForURL((url) => url.href !== cancelled);
    await page.locator(".bar .badge", { hasText: "running" }).waitFor();
    await page.locator("dl.facts", { hasText: "Attempt" }).getByText("2 (first:").waitFor();
    await page.getByRole("button", { name: "Cancel" }).click();
    await page.locator(".bar .badge", { hasText: "cancelled" }).waitFor();
  });

  await step("the task list updates live from the events stream", async () => {
    await page.goto(`${URL}/#/tasks?spider=ui-demo`);
    await page.locator(".live", { hasText: "live" }).waitFor();
    const before = await page.locator('table[aria-label="Tasks"] tbody tr[data-task]').count();
    const task = await call("POST", "/tasks", { spider: "ui-demo" });
    const row = page.locator(`tr[data-task="${task.id}"]`);
    await row.locator('[data-status="running"]').waitFor();
    check((await page.locator('table[aria-label="Tasks"] tbody tr[data-task]').count()) === before + 1, "the new run was added");
    await call("POST", `/tasks/${task.id}/cancel`);
    await row.locator('[data-status="cancelled"]').waitFor();
    await shot("tasks-live");
  });

  await step("a parent task shows its children, and cancelling it cancels them", async () => {
    const parent = await call("POST", "/tasks", { spider: "ui-demo", mode: "all" });
    await page.goto(`${URL}/#/tasks/${parent.id}`);
    const children = page.getByRole("table", { name: "Child tasks" });
    await children.locator('[data-status="running"]').waitFor();
    check((await children.locator("tbody tr").count()) === 1, "one child per online node");
    await shot("task-parent");
    await page.getByRole("button", { name: "Cancel" }).click();
    await page.locator(".bar .badge", { hasText: "cancelled" }).waitFor();
    await children.locator('[data-status="cancelled"]').waitFor();
  });

  await step("a 1,000,000-line log is virtualised, jumps to its end and finds a line", async () => {
    await page.goto(`${URL}/#/tasks/${BIG_TASK}`);
    await page.locator(".log-state", { hasText: `${BIG_LINES.toLocaleString("en-US")} lines` }).waitFor();
    await logLine(1).filter({ hasText: "line 1 of a long crawl" }).waitFor();
    const rendered = await page.locator(".log-viewport .line").count();
    check(rendered > 0 && rendered < 200, `only the rows in view are in the page: ${rendered}`);
    await page.getByRole("button", { name: "End" }).click();
    await logLine(BIG_LINES).filter({ hasText: `line ${BIG_LINES} of a long crawl` }).waitFor();
    await page.getByLabel("Search log").fill("NEEDLE-in-a");
    await page.getByRole("button", { name: "Find" }).click();
    const hit = page.getByRole("button", { name: `line ${NEEDLE_LINE.toLocaleString("en-US")}` });
    await hit.waitFor();
    await page.locator(".search-results", { hasText: "1 match" }).waitFor();
    await hit.click();
    await page.locator(`.log-viewport .line.selected[data-seq="${NEEDLE_LINE}"] mark`, { hasText: "needle-in-a" }).waitFor();
    await page.locator(".line-detail", { hasText: "holds the needle" }).waitFor();
    check((await page.locator(".log-viewport .line").count()) < 200, "still only the rows in view");
    await shot("big-log");
  });

  await step("a schedule is checked as it is typed, created, disabled, edited and run now", async () => {
    await page.goto(`${URL}/#/schedules/new`);
    await heading("New schedule").waitFor();
    await page.getByLabel("Name").fill("ui-every-10s");
    await page.getByLabel("Spider").selectOption("ui-demo");
    const cron = page.getByLabel("Cron expression");
    await cron.fill("61 * * * *");
    await page.locator(".cron-check .error", { hasText: "minute" }).waitFor();
    check((await cron.getAttribute("aria-invalid")) === "true", "the bad expression is marked invalid");
    await cron.fill("*/10 * * * * *");
    await page.locator(".cron-check .fire-times li").nth(4).waitFor();
    check((await page.locator(".cron-check .fire-times li").count()) === 5, "five fire times");
    await shot("schedule-form");
    await page.getByRole("button", { name: "Create" }).click();
    await heading("Schedules").waitFor();
    const row = page.locator('tr[data-schedule="ui-every-10s"]');
    await row.getByText("enabled").waitFor();
    await row.getByRole("button", { name: "Disable" }).click();
    await page.locator('tr[data-schedule="ui-every-10s"]').getByText("disabled").waitFor();
    await shot("schedules");
    // Edit: the form comes back filled in; the saved expression is what the list shows.
    await page.locator('tr[data-schedule="ui-every-10s"]').getByRole("link", { name: "ui-every-10s" }).click();
    await heading("Edit schedule ui-every-10s").waitFor();
    check((await page.getByLabel("Cron expression").inputValue()) === "*/10 * * * * *", "the form holds the schedule");
    await page.getByLabel("Cron expression").fill("*/20 * * * * *");
    await page.locator(".cron-check .fire-times li").nth(4).waitFor();
    await page.getByRole("button", { name: "Save" }).click();
    await heading("Schedules").waitFor();
    await page.locator('tr[data-schedule="ui-every-10s"]').getByText("*/20 * * * * *").waitFor();
    // Run now starts its spider at once and shows the task.
    await page.locator('tr[data-schedule="ui-every-10s"]').getByRole("button", { name: "Run now" }).click();
    await page.locator(".bar .badge", { hasText: /pending|running/ }).waitFor();
    const run = await call("GET", `/tasks/${page.url().split("/tasks/")[1]}`);
    check(run.schedule_id, `the run records its schedule: ${JSON.stringify(run.schedule_id)}`);
    await page.getByRole("button", { name: "Cancel" }).click();
    await page.locator(".bar .badge", { hasText: "cancelled" }).waitFor();
  });

  await step("nodes show their state and take a new runner count", async () => {
    await page.goto(`${URL}/#/nodes`);
    const row = page.locator('tr[data-node="w1"]');
    await row.locator('[data-status="online"]').waitFor();
    await row.getByLabel("Max runners of w1").fill("3");
    await row.getByRole("button", { name: "Set", exact: true }).click();
    await page.locator('tr[data-node="w1"]').getByText("/ 3").first().waitFor();
    // A load limit set in place reaches the node, and clearing it gives the cluster's back.
    await page.locator('tr[data-node="w1"]').getByLabel("Max memory % of w1").fill("95");
    await page.locator('tr[data-node="w1"]').getByRole("button", { name: "Set limits" }).click();
    await until("the node's memory limit is 95%", async () => (await call("GET", "/nodes"))[0].max_memory_percent === 95);
    const memory = page.locator('tr[data-node="w1"]').getByLabel("Max memory % of w1");
    await until("the row shows the memory limit", async () => (await memory.inputValue()) === "95");
    await memory.fill("");
    await page.locator('tr[data-node="w1"]').getByRole("button", { name: "Set limits" }).click();
    await until("the node's memory limit is cleared", async () => (await call("GET", "/nodes"))[0].max_memory_percent === undefined);
    await page.locator('tr[data-node="w1"]').getByRole("button", { name: "Enabled · disable" }).click();
    await page.locator('tr[data-node="w1"]').getByRole("button", { name: "Disabled · enable" }).waitFor();
    const [node] = await call("GET", "/nodes");
    check(node.enabled === false && node.max_runners === 3 && node.max_memory_percent === undefined, `the node changed for real: ${JSON.stringify(node)}`);
    await page.locator('tr[data-node="w1"]').getByRole("button", { name: "Disabled · enable" }).click();
    await page.locator('tr[data-node="w1"]').getByRole("button", { name: "Enabled · disable" }).waitFor();
    await shot("nodes");
  });

  await step("a corrupt archive is refused; an archive upload makes a new version, and an older one can be made current again", async () => {
    await page.goto(`${URL}/#/spiders/ui-demo`);
    await heading("ui-demo").waitFor();
    // A file that is no archive is refused with the server's reason, and changes nothing.
    const before = await call("GET", "/spiders/ui-demo/versions");
    const junk = path.join(SHOTS, "not-an-archive.tar.gz");
    await writeFile(junk, "this is not an archive");
    await page.getByLabel("or archive").setInputFiles(junk);
    await page.getByRole("button", { name: "Upload", exact: true }).click();
    await page.getByRole("alert").filter({ hasText: /upload failed: .*not a \.tar\.gz or \.zip archive/ }).waitFor();
    await unlink(junk);
    const after = await call("GET", "/spiders/ui-demo/versions");
    check(after.length === before.length, "a refused upload makes no version");
    await page.getByLabel("or archive").setInputFiles(env("SPIDER_ARCHIVE"));
    await page.getByRole("button", { name: "Upload", exact: true }).click();
    const versions = page.getByRole("table", { name: "Versions" });
    await versions.locator("tbody tr").nth(1).waitFor();
    await page.getByRole("table", { name: "Files" }).getByRole("button", { name: "VERSION" }).waitFor();
    const spider = await call("GET", "/spiders/ui-demo");
    check(spider.file_count === 2, `the archive's files are the current version: ${spider.file_count}`);
    await shot("spider-versions");
    await versions.getByRole("button", { name: "Make current" }).click();
    await page.getByRole("table", { name: "Files" }).getByRole("button", { name: "README.md" }).waitFor();
    const back = await call("GET", "/spiders/ui-demo");
    check(back.version !== spider.version, "the first version is current again");
  });

  await step("a Scrapy project's run dialog offers its spiders and crawls the one picked", async () => {
    await page.goto(`${URL}/#/spiders/scrapy-demo`);
    await heading("scrapy-demo").waitFor();
    await page.locator(".bar").getByRole("button", { name: "Run", exact: true }).click();
    const dialog = page.getByRole("dialog", { name: "Run scrapy-demo" });
    const choice = dialog.getByLabel("Scrapy spider");
    await dialog.locator('select[name="scrapy-spider"] option[value="words"]').waitFor({ state: "attached" });
    await choice.selectOption("words");
    await dialog.getByLabel("Parameters").fill("-a 'words=alpha beta'");
    await dialog.getByRole("button", { name: "Run", exact: true }).click();
    await page.locator(".badge", { hasText: "finished" }).first().waitFor();
    await page.getByRole("table", { name: "Items" }).getByText("beta").waitFor();
    await page.locator("code", { hasText: "crawl words -a 'words=alpha beta'" }).waitFor();
    await shot("scrapy-run");
  });

  await step("the Results page searches a spider's items across its runs and exports what it found", async () => {
    await page.getByRole("link", { name: "Results" }).click();
    await heading("Results").waitFor();
    await page.getByLabel("Spider").selectOption("ui-demo");
    const table = page.getByRole("table", { name: "Results" });
    await table.getByText("second").first().waitFor();
    // ui-demo runs again on a schedule meanwhile: the dialog's run is the one whose items are known.
    const first = taskUrl.split("/").pop();
    await page.getByLabel("Task").fill(first);
    await page.getByRole("button", { name: "Filter" }).click();
    await page.locator(".summary", { hasText: "2 items match." }).waitFor();
    const both = await table.locator("tbody tr").allInnerTexts();
    check(both.length === 2 && both[0].includes("second") && both[1].includes("first"), `newest first: ${both}`);
    await page.getByLabel("Conditions").fill("title=second");
    await page.getByRole("button", { name: "Filter" }).click();
    await page.locator(".summary", { hasText: "1 item matches." }).waitFor();
    await shot("results");
    const [file] = await Promise.all([page.waitForEvent("download"), page.getByRole("button", { name: "Export JSON lines" }).click()]);
    const lines = (await readFile(await file.path(), "utf8")).trim().split("\n").map((l) => JSON.parse(l));
    check(JSON.stringify(lines) === JSON.stringify([{ title: "second", n: 2 }]), `export: ${JSON.stringify(lines)}`);
    // A condition the server refuses says why, on the page.
    await page.getByLabel("Conditions").fill("$x=1");
    await page.getByRole("button", { name: "Filter" }).click();
    await page.getByRole("alert").getByText("may not start with $").waitFor();
  });

  await step("settings set in the New spider dialog are edited on its page, and a run uses them with its overrides", async () => {
    await page.goto(`${URL}/#/spiders`);
    await heading("Spiders").waitFor();
    await page.getByRole("button", { name: "New spider" }).click();
    const dialog = page.getByRole("dialog", { name: "New spider" });
    await dialog.getByLabel("Name").fill("envy");
    await dialog.getByLabel("Command").fill('echo "greeting=$GREETING token=$API_TOKEN extra=$EXTRA"');
    await dialog.getByLabel("or archive").setInputFiles(env("SPIDER_ARCHIVE"));
    await dialog.getByLabel("Environment").fill("GREETING=hi\nAPI_TOKEN=s3cret");
    await dialog.getByLabel("Timeout (s)").fill("30");
    await dialog.getByRole("button", { name: "Create" }).click();
    await heading("envy").waitFor();
    const form = page.getByRole("form", { name: "Spider settings" });
    // The secret comes back masked; the rest as set.
    const shown = await form.getByLabel("Environment").inputValue();
    check(shown === "API_TOKEN=********\nGREETING=hi", `environment shown: ${JSON.stringify(shown)}`);
    check((await form.getByLabel("Timeout (s)").inputValue()) === "30", "the timeout is shown");
    await form.getByLabel("Environment").fill("API_TOKEN=********\nGREETING=hello");
    await form.getByLabel("Retries").fill("1");
    await form.getByRole("button", { name: "Save settings" }).click();
    await page.locator(".notice", { hasText: "Settings saved" }).waitFor();
    // The page is drawn again from the server: what it shows now was stored.
    await page.waitForFunction(() => document.querySelector('form[aria-label="Spider settings"] input[name="retries"]')?.value === "1");
    await page.locator(".bar").getByRole("button", { name: "Run", exact: true }).click();
    const run = page.getByRole("dialog", { name: "Run envy" });
    await run.getByText("Overrides for this run").click();
    await run.getByLabel("Environment").fill("EXTRA=1");
    await run.getByRole("button", { name: "Run", exact: true }).click();
    await page.locator(".bar .badge", { hasText: "finished" }).waitFor();
    // The edited value, the secret kept through the masked form, and the run's own variable.
    await page.locator(".log-viewport .line .t", { hasText: "greeting=hello token=s3cret extra=1" }).waitFor();
    await shot("spider-settings-run");
  });

  await step("a run that requires node labels no node has waits and says why", async () => {
    await page.goto(`${URL}/#/spiders/envy`);
    await heading("envy").waitFor();
    await page.locator(".bar").getByRole("button", { name: "Run", exact: true }).click();
    const dialog = page.getByRole("dialog", { name: "Run envy" });
    await dialog.getByLabel("Node labels").fill("region=mars");
    await dialog.getByRole("button", { name: "Run", exact: true }).click();
    await page.locator("dl.facts", { hasText: "no online, enabled node has the labels region=mars" }).waitFor();
    await page.getByRole("button", { name: "Cancel" }).click();
    await page.locator(".bar .badge", { hasText: "cancelled" }).waitFor();
  });

  await step("a spider is deleted from its page, with its tasks when ticked", async () => {
    await call("POST", "/spiders", { name: "doomed", cmd: "true" });
    await page.goto(`${URL}/#/spiders/doomed`);
    await heading("doomed").waitFor();
    await page.locator(".bar").getByRole("button", { name: "Delete" }).click();
    const dialog = page.getByRole("dialog", { name: "Delete doomed" });
    await dialog.getByLabel("Also delete its tasks, logs and items").check();
    await dialog.getByRole("button", { name: "Delete" }).click();
    await heading("Spiders").waitFor();
    await page.locator(".notice", { hasText: "doomed deleted" }).waitFor();
    check((await page.getByRole("link", { name: "doomed", exact: true }).count()) === 0, "doomed is gone from the list");
  });

  await step("a notification is made in its form, sends a signed test message, keeps its secret when edited, and shows its deliveries", async () => {
    // A local receiver for the webhook, checking each body's signature.
    const received = [];
    const receiver = createServer((request, response) => {
      const chunks = [];
      request.on("data", (chunk) => chunks.push(chunk));
      request.on("end", () => {
        const body = Buffer.concat(chunks);
        const expected = "sha256=" + createHmac("sha256", "ui-secret").update(body).digest("hex");
        received.push({ signed: request.headers["x-arachne-signature"] === expected, body: JSON.parse(body) });
        response.writeHead(204).end();
      });
    });
    await new Promise((resolve) => receiver.listen(0, "127.0.0.1", resolve));
    const hookUrl = `http://127.0.0.1:${receiver.address().port}/hook`;
    try {
      await page.goto(`${URL}/#/notifications`);
      await heading("Notifications").waitFor();
      await page.getByRole("link", { name: "New notification" }).click();
      await heading("New notification").waitFor();
      await page.getByLabel("Name").fill("ui-hook");
      await page.getByLabel("URL").fill(hookUrl);
      await page.getByLabel("Signing secret").fill("ui-secret");
      await page.getByLabel("Task cancelled").check();
      await page.getByLabel("Only tasks of spider").selectOption("ui-demo");
      await page.getByRole("button", { name: "Create" }).click();
      const row = page.locator('tr[data-notification="ui-hook"]');
      await row.getByText("spider ui-demo").waitFor();
      const stored = await call("GET", "/notifications/ui-hook");
      check(stored.channel.secret === "********" && [...stored.triggers].sort().join() === "abnormal,cancelled,error", `stored as filled in: ${JSON.stringify(stored)}`);
      // Edited without touching the secret: the mask goes back and the stored secret stays.
      await row.getByRole("link", { name: "ui-hook" }).click();
      await heading("Edit notification ui-hook").waitFor();
      await page.getByLabel("Node went offline").check();
      await page.getByRole("button", { name: "Save" }).click();
      await page.locator('tr[data-notification="ui-hook"]').getByText("node_offline").waitFor();
      await page.locator('tr[data-notification="ui-hook"]').getByRole("button", { name: "Send test" }).click();
      await page.getByRole("table", { name: "Deliveries" }).locator("tr", { hasText: "ui-hook" }).locator('[data-status="delivered"]').waitFor();
      check(received.length === 1 && received[0].signed && received[0].body.trigger === "test", `the receiver got one signed test message: ${JSON.stringify(received)}`);
      await shot("notifications");
      await page.locator('tr[data-notification="ui-hook"]').getByRole("button", { name: "Disable" }).click();
      await page.locator('tr[data-notification="ui-hook"]').getByText("disabled").waitFor();
      check((await call("GET", "/notifications/ui-hook")).enabled === false, "disabled for real");
    } finally {
      receiver.close();
    }
  });

  await step("the dashboard charts the runs that ended by status and day, and narrows to 24 hours and one spider", async () => {
    const stats = await call("GET", "/stats?days=7");
    check(stats.totals.runs > 0 && stats.totals.finished > 0, `runs ended in this test: ${JSON.stringify(stats.totals)}`);
    await page.getByRole("link", { name: "Dashboard" }).click();
    await heading("Dashboard").waitFor();
    await page.locator(".figure", { hasText: "Runs" }).getByText(stats.totals.runs.toLocaleString()).first().waitFor();
    const chart = page.getByRole("img", { name: /^Runs per day, by status/ });
    await chart.waitFor();
    check((await chart.locator("g.bar").count()) === 7, "a bar per day");
    // Today's bar is stacked from the statuses that ended, each part as tall as its share.
    const today = chart.locator("g.bar").last();
    check((await today.locator('rect[data-part="finished"]').count()) === 1, "today has finished runs");
    check((await today.locator("title").textContent()).includes(`finished: ${stats.series[6].finished}`), "its tooltip has the figures");
    await page.getByRole("table", { name: "Spiders", exact: true }).locator('tr[data-spider="ui-demo"]').waitFor();
    await page.getByRole("table", { name: "Node load" }).getByRole("meter", { name: "CPU of w1" }).waitFor();
    await shot("dashboard");
    await page.getByRole("link", { name: "24 hours" }).click();
    await page.getByRole("img", { name: /^Runs per hour, by status/ }).waitFor();
    check((await page.getByRole("img", { name: /^Runs per hour/ }).locator("g.bar").count()) === 24, "a bar per hour");
    await page.getByLabel("Spider", { exact: true }).selectOption("ui-demo");
    await page.waitForURL(/spider=ui-demo/);
    const one = await call("GET", "/stats?days=1&spider=ui-demo");
    await page.locator(".figure", { hasText: "Runs" }).locator("strong").filter({ hasText: new RegExp(`^${one.totals.runs.toLocaleString()}$`) }).waitFor();
  });

  await step("an admin makes a user and a token on the Access page; the user signs in with a password, sees what a developer may do, and the audit log shows who did what", async () => {
    await page.getByRole("link", { name: "Access" }).click();
    await heading("Access").waitFor();
    await page.getByLabel("User name").fill("ui-dev");
    await page.getByLabel("Role", { exact: true }).selectOption("developer");
    await page.getByLabel("Password").fill("ui-dev-password");
    await page.getByRole("button", { name: "Create user" }).click();
    await page.getByRole("table", { name: "Users" }).locator('tr[data-user="ui-dev"]').waitFor();
    await page.getByLabel("Token name").fill("ui-dev-ci");
    await page.getByLabel("Token role").selectOption("viewer");
    await page.getByLabel("For user").selectOption("ui-dev");
    await page.getByLabel("Expires after (days)").fill("7");
    await page.getByRole("button", { name: "Create token" }).click();
    const secret = await page.locator(".secret-value").textContent();
    check(secret.startsWith("arachne_api_"), `the secret is shown once: ${secret}`);
    await page.getByRole("table", { name: "Tokens" }).locator('tr[data-token="ui-dev-ci"]').getByText("ui-dev", { exact: true }).waitFor();
    await shot("access");
    // Signed out, the user signs in with the password and works as a developer.
    await page.getByRole("button", { name: "Sign out" }).click();
    await heading("Sign in to Arachne").waitFor();
    await page.getByLabel("Name", { exact: true }).fill("ui-dev");
    await page.getByLabel("Password").fill("wrong-password-here");
    await page.getByRole("button", { name: "Sign in", exact: true }).click();
    await page.getByRole("alert").filter({ hasText: "the name or the password is wrong" }).waitFor();
    await page.getByLabel("Password").fill("ui-dev-password");
    await page.getByRole("button", { name: "Sign in", exact: true }).click();
    // Signed in on the page that was open, which is an admin's: it says why it shows nothing.
    await page.getByText("ui-dev · developer").waitFor();
    await page.getByRole("alert").filter({ hasText: "needs the admin role; ui-dev has developer" }).waitFor();
    check((await page.getByRole("link", { name: "Access" }).count()) === 0, "no Access link for a developer");
    await page.getByRole("link", { name: "Tasks" }).click();
    await heading("Tasks").waitFor();
    // Signing out ends the session on the server.
    const session = await page.evaluate(() => sessionStorage.getItem("arachne.token"));
    await page.getByRole("button", { name: "Sign out" }).click();
    await heading("Sign in to Arachne").waitFor();
    const after = await fetch(`${URL}/api/v1/me`, { headers: { Authorization: `Bearer ${session}` } });
    check(after.status === 401, `the session token is revoked: ${after.status}`);
    // Back as the admin: the audit log says who did what.
    await page.getByLabel("API token").fill(TOKEN);
    await page.getByRole("button", { name: "Use token" }).click();
    await heading("Tasks").waitFor();
    await page.getByRole("link", { name: "Audit" }).click();
    await heading("Audit").waitFor();
    const log = page.getByRole("table", { name: "Audit log" });
    await log.locator("tr", { hasText: "POST /api/v1/users" }).first().waitFor();
    await log.locator("tr", { hasText: "ui-dev" }).filter({ hasText: "POST /api/v1/sign-in" }).locator("td", { hasText: "401" }).first().waitFor();
    await shot("audit");
  });

  await step("the pages are keyboard reachable", async () => {
    await page.goto(`${URL}/#/tasks`);
    await heading("Tasks").waitFor();
    // A page change moves focus to its heading; Tab goes on to the page's controls, Shift+Tab back to the menu.
    const stop = () => page.evaluate(() => {
      const el = document.activeElement;
      return `${el.tagName.toLowerCase()}:${el.getAttribute("name") || el.textContent.trim()}`;
    });
    await page.waitForFunction(() => document.activeElement?.tagName === "H1");
    check((await stop()) === "h1:Tasks", `focus on the heading: ${await stop()}`);
    const forward = [];
    for (let i = 0; i < 4; i++) {
      await page.keyboard.press("Tab");
      forward.push(await stop());
    }
    check(forward.join("|") === "select:spider|select:status|input:node|button:Filter", `tab stops: ${forward}`);
    for (let i = 0; i < 4; i++) await page.keyboard.press("Shift+Tab");
    check((await stop()) === "button:Sign out", `back to the menu: ${await stop()}`);
    // Back past Audit, Access and Notifications to Nodes.
    for (let i = 0; i < 4; i++) await page.keyboard.press("Shift+Tab");
    await page.keyboard.press("Enter");
    await heading("Nodes").waitFor();
    const unlabeled = await page.evaluate(() =>
      [...document.querySelectorAll("input, select")]
        .filter((el) => !el.labels?.length && !el.getAttribute("aria-label"))
        .map((el) => el.outerHTML),
    );
    check(unlabeled.length === 0, `every control has a label: ${unlabeled}`);
  });

  check(pageErrors.length === 0, `the pages raised errors: ${pageErrors.join(" | ")}`);
} catch (error) {
  failed = true;
  if (!String(error.message).includes("FAIL")) console.error(error.message);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
