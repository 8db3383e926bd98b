// Spider pages: the list (with each spider's last run and any broken or removed watched folder), creating one
// and uploading its files (a folder or an archive), a spider's versions and files, deleting a version or the
// spider, and the run dialog.

import { api, del, get, post, session } from "./api.js";
import { badge, busy, bytes, clear, count, field, h, nodeChoice, notify, shortHash, table, time } from "./dom.js";
import { runOverrideFields, spiderSettingsFields } from "./settings.js";

/** Folders of the watched spiders folder that are broken or gone, above the list: the master's log is not the
 * only place that says so. */
async function folderProblems(main) {
  const report = await get("/spider-folders").catch(() => null);
  const problems = (report?.folders || []).filter((f) => f.status !== "synced");
  if (!problems.length) return;
  const item = (f) =>
    h(
      "li",
      {},
      h("code", {}, f.folder),
      f.status === "broken"
        ? [" is not synced", f.spider ? ` (spider ${f.spider} keeps its last good version)` : "", ": ", h("code", {}, f.problem)]
        : [" was removed; ", f.spider ? [h("a", { href: `#/spiders/${encodeURIComponent(f.spider)}` }, f.spider), " stays until you delete it"] : "its spider stays"],
    );
  const heading = main.querySelector(".bar");
  heading.after(
    h(
      "section",
      { class: "card errors", role: "alert", "aria-label": "Spider folders" },
      h("h2", {}, `Spider folders in ${report.dir}`),
      h("ul", {}, problems.map(item)),
    ),
  );
}

export async function spidersPage(main) {
  const body = h("tbody");
  main.append(
    h("div", { class: "bar" }, h("h1", {}, "Spiders"), h("button", { type: "button", onclick: () => createDialog() }, "New spider")),
    h(
      "table",
      { "aria-label": "Spiders" },
      h("thead", {}, h("tr", {}, ["Name", "Command", "Version", "Files", "Last run", "Status", ""].map((t) => h("th", { scope: "col" }, t)))),
      body,
    ),
  );
  folderProblems(main);
  const spiders = await get("/spiders");
  if (!spiders.length) {
    body.append(h("tr", {}, h("td", { colspan: 7 }, "No spiders yet: create one and upload its files.")));
    return;
  }
  for (const spider of spiders) {
    const last = h("td", {}, "…");
    const status = h("td");
    body.append(
      h(
        "tr",
        {},
        h("td", {}, h("a", { href: `#/spiders/${encodeURIComponent(spider.name)}` }, spider.name)),
        h("td", {}, h("code", {}, spider.cmd)),
        h("td", {}, h("code", { title: spider.version }, shortHash(spider.version) || "no files")),
        h("td", {}, count(spider.file_count)),
        last,
        status,
        h("td", {}, h("button", { type: "button", onclick: () => runDialog(spider) }, "Run")),
      ),
    );
    // One small request per spider: the newest task is the first of its page.
    get("/tasks", { spider: spider.name, limit: 1 }).then(
      (page) => {
        const task = page.items[0];
        if (!task) return clear(last, "never");
        clear(last, h("a", { href: `#/tasks/${task.id}` }, time(task.created_at)));
        clear(status, badge(task.status));
      },
      (error) => clear(last, error.message),
    );
  }
}

/** The "new spider" dialog: name, command, then a folder or an archive to upload. */
function createDialog() {
  const name = h("input", { name: "name", required: true, pattern: "[A-Za-z0-9_][A-Za-z0-9_.\\-]{0,63}", maxlength: 64, autocomplete: "off" });
  const cmd = h("input", { name: "cmd", required: true, placeholder: "python3 main.py", autocomplete: "off" });
  const files = uploadControls();
  const settings = spiderSettingsFields();
  const dialog = modal(
    "New spider",
    [field("Name", name, "Up to 64 letters, digits, '.', '_' and '-', not starting with '.'."), field("Command", cmd, "Run in the spider's folder."), files.controls, settings.element],
    "Create",
    async () => {
      await post("/spiders", { name: name.value.trim(), cmd: cmd.value.trim(), ...settings.value() });
      if (files.chosen()) await files.upload(name.value.trim());
      location.hash = `#/spiders/${encodeURIComponent(name.value.trim())}`;
    },
  );
  dialog.showModal();
}

/** The spider's command and settings, editable: saved as a whole, so a cleared field goes back to its default. */
function settingsForm(spider) {
  const cmd = h("input", { name: "cmd", value: spider.cmd, required: true, autocomplete: "off", size: 48 });
  const settings = spiderSettingsFields(spider);
  return h(
    "form",
    {
      class: "card",
      "aria-label": "Spider settings",
      onsubmit: async (event) => {
        event.preventDefault();
        await busy(event.submitter, async () => {
          await post("/spiders", { name: spider.name, cmd: cmd.value.trim(), ...settings.value() });
          notify("Settings saved: the next runs use them.");
          location.hash = `#/spiders/${encodeURIComponent(spider.name)}?v=${Date.now()}`;
        });
      },
    },
    h("h2", {}, "Command and settings"),
    field("Command", cmd, "Run in the spider's folder."),
    settings.element,
    h("button", { type: "submit" }, "Save settings"),
  );
}

/** Deleting a spider: its versions, files and schedules always; its tasks, logs and items when ticked. The
 * server refuses while a task of it has not ended, and the dialog shows why. */
function deleteDialog(spider) {
  const tasks = h("input", { type: "checkbox", name: "tasks" });
  const dialog = modal(
    `Delete ${spider.name}`,
    [
      h("p", {}, "Its versions, files and schedules are deleted. Its tasks, logs and items stay unless you tick:"),
      h("label", { class: "check" }, tasks, "Also delete its tasks, logs and items"),
    ],
    "Delete",
    async () => {
      const deleted = await del(`/spiders/${encodeURIComponent(spider.name)}${tasks.checked ? "?tasks=true" : ""}`);
      notify(`${spider.name} deleted: ${deleted.versions} versions, ${deleted.schedules} schedules, ${deleted.tasks} tasks.`);
      location.hash = "#/spiders";
    },
  );
  dialog.showModal();
}

/** A folder picker and an archive picker; `upload(name)` sends whichever was chosen as a new version. */
function uploadControls() {
  const folder = h("input", { type: "file", name: "folder", webkitdirectory: true, multiple: true });
  const archive = h("input", { type: "file", name: "archive", accept: ".zip,.tar.gz,.tgz,application/zip,application/gzip" });
  const progress = h("progress", { max: 100, value: 0, hidden: true, "aria-label": "Upload progress" });
  return {
    controls: h(
      "fieldset",
      {},
      h("legend", {}, "Files"),
      field("Folder", folder, "Every file under it; .git, node_modules, __pycache__ and .arachneignore entries are left out."),
      field("or archive", archive, ".zip or .tar.gz"),
      progress,
    ),
    chosen: () => folder.files.length > 0 || archive.files.length > 0,
    async upload(spider) {
      let body;
      if (archive.files.length) {
        body = archive.files[0];
      } else {
        body = new FormData();
        for (const file of folder.files) {
          // The picked folder itself is not part of the spider: strip its name from every path.
          const path = (file.webkitRelativePath || file.name).split("/").slice(1).join("/") || file.name;
          if (/(^|\/)(\.git|node_modules|__pycache__)(\/|$)/.test(path)) continue;
          body.append("file", file, path);
        }
      }
      progress.value = 0;
      progress.hidden = false;
      try {
        const uploaded = await sendWithProgress(`/api/v1/spiders/${encodeURIComponent(spider)}/files`, body, progress);
        if (uploaded.unwrapped) {
          notify(`Every file was in the folder ${uploaded.unwrapped}/, so its contents became the spider's files.`);
        }
      } finally {
        progress.hidden = true;
      }
    },
  };
}

/** PUT with upload progress (fetch reports none); the server's error message on failure. */
function sendWithProgress(url, body, progress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("PUT", url);
    xhr.setRequestHeader("Authorization", `Bearer ${session.token()}`);
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) progress.value = (100 * e.loaded) / e.total;
    };
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) return resolve(JSON.parse(xhr.responseText));
      let message = `${xhr.status} ${xhr.statusText}`;
      try {
        message = JSON.parse(xhr.responseText).error.message;
      } catch {
        // Not a JSON error body.
      }
      reject(new Error(`upload failed: ${message}`));
    };
    xhr.onerror = () => reject(new Error("upload failed: the connection was lost"));
    xhr.send(body);
  });
}

/** A modal form; `submit` runs on confirm and the dialog stays open, with the error, when it fails. */
export function modal(title, content, confirm, submit) {
  const error = h("p", { class: "error", role: "alert" });
  const ok = h("button", { type: "submit" }, confirm);
  const dialog = h(
    "dialog",
    { "aria-labelledby": "dialog-title", onclose: () => dialog.remove() },
    h(
      "form",
      {
        method: "dialog",
        onsubmit: async (event) => {
          event.preventDefault();
          ok.disabled = true;
          error.textContent = "";
          try {
            await submit();
            dialog.close();
          } catch (e) {
            error.textContent = e.message;
          } finally {
            ok.disabled = false;
          }
        },
      },
      h("h2", { id: "dialog-title" }, title),
      content,
      error,
      h("div", { class: "actions" }, h("button", { type: "button", class: "secondary", onclick: () => dialog.close() }, "Cancel"), ok),
    ),
  );
  document.body.append(dialog);
  return dialog;
}

/** Whether a spider's command is Scrapy's tool alone, so each run names the Scrapy spider it crawls. */
function isScrapyProject(cmd) {
  const words = cmd.trim().split(/\s+/);
  const name = (word) => word.split("/").pop();
  if (words.length === 1) return name(words[0]) === "scrapy";
  return words.length === 3 && name(words[0]).startsWith("python") && words[1] === "-m" && words[2] === "scrapy";
}

/** A word for the shell that runs the command. */
const shellWord = (word) => (/^[\w.,:@%+=\/-]+$/.test(word) ? word : `'${word.replaceAll("'", "'\\''")}'`);

/**
 * The Scrapy spider choice of a project's run: a select filled from `scrapy list` (the first ask of a version
 * runs it on a worker, so the dialog opens at once and the list arrives after).
 */
function scrapyChoice(spider, version) {
  const choice = h("select", { name: "scrapy-spider", required: true, disabled: true }, h("option", { value: "" }, "listing…"));
  const status = h("small", { class: "error", role: "status" });
  const query = version ? `?version=${encodeURIComponent(version)}` : "";
  get(`/spiders/${encodeURIComponent(spider.name)}/scrapy-spiders${query}`)
    .then(({ spiders }) => {
      clear(choice, ...spiders.map((name) => h("option", { value: name }, name)));
      choice.disabled = !spiders.length;
      if (!spiders.length) status.textContent = "The project lists no spiders.";
    })
    .catch((e) => {
      clear(choice, h("option", { value: "" }, "unavailable"));
      status.textContent = `Cannot list its spiders: ${e.message}`;
    });
  return {
    controls: [field("Scrapy spider", choice, "Runs `crawl` with this spider; Parameters follow it (-a k=v, -s K=V)."), status],
    value: () => choice.value,
  };
}

/** Mode, nodes, param, priority (and version) for one run of `spider`. */
export async function runDialog(spider, version) {
  const nodes = await get("/nodes");
  const where = nodeChoice(nodes);
  const scrapy = isScrapyProject(spider.cmd) ? scrapyChoice(spider, version) : null;
  const param = h("input", { name: "param", autocomplete: "off", placeholder: "-a category=books" });
  const priority = h("input", { type: "number", name: "priority", min: 1, max: 10, value: 5, required: true });
  const overrides = runOverrideFields();
  const dialog = modal(
    `Run ${spider.name}`,
    [
      version && h("p", {}, "Version ", h("code", {}, shortHash(version))),
      ...(scrapy ? scrapy.controls : []),
      where.controls,
      field("Parameters", param, "Appended to the spider's command."),
      field("Priority", priority, "1 is the highest, 10 the lowest."),
      overrides.element,
    ],
    "Run",
    async () => {
      const run = { spider: spider.name, ...where.value(), priority: Number(priority.value) };
      const settings = overrides.value();
      if (settings) run.settings = settings;
      const words = [];
      if (scrapy) {
        if (!scrapy.value()) throw new Error("Pick the Scrapy spider to crawl.");
        words.push("crawl", shellWord(scrapy.value()));
      }
      if (param.value.trim()) words.push(param.value.trim());
      if (words.length) run.param = words.join(" ");
      if (version) run.version = version;
      if (run.mode === "nodes" && !run.nodes.length) throw new Error("Pick at least one node.");
      const task = await post("/tasks", run);
      location.hash = `#/tasks/${task.id}`;
    },
  );
  dialog.showModal();
}

export async function spiderPage(main, name, q) {
  const path = `/spiders/${encodeURIComponent(name)}`;
  const [spider, versions] = await Promise.all([get(path), get(`${path}/versions`)]);
  const version = q.get("version") || spider.version;
  const files = h("section", { "aria-labelledby": "files-title" });
  const upload = uploadControls();
  main.append(
    h(
      "div",
      { class: "bar" },
      h("h1", {}, spider.name),
      h("button", { type: "button", onclick: () => runDialog(spider) }, "Run"),
      h("a", { class: "button secondary", href: `#/tasks?spider=${encodeURIComponent(spider.name)}` }, "Tasks"),
      h("a", { class: "button secondary", href: `#/results?spider=${encodeURIComponent(spider.name)}` }, "Results"),
      h("button", { type: "button", class: "danger", onclick: () => deleteDialog(spider) }, "Delete"),
    ),
    h(
      "dl",
      { class: "facts" },
      h("dt", {}, "Command"), h("dd", {}, h("code", {}, spider.cmd)),
      h("dt", {}, "Current version"), h("dd", {}, h("code", {}, spider.version || "none")),
      h("dt", {}, "Files"), h("dd", {}, `${count(spider.file_count)} (${bytes(spider.total_bytes)})`),
      h("dt", {}, "Max instances"), h("dd", {}, spider.max_instances ?? "no limit"),
      h("dt", {}, "Timeout"), h("dd", {}, spider.settings.timeout_secs ? `${spider.settings.timeout_secs} s` : "none"),
    ),
    settingsForm(spider),
    h(
      "form",
      {
        class: "card",
        onsubmit: async (event) => {
          event.preventDefault();
          if (!upload.chosen()) return notify("Choose a folder or an archive first.", "error");
          await busy(event.submitter, async () => {
            await upload.upload(spider.name);
            notify("Uploaded: a new version is current.");
            location.hash = `#/spiders/${encodeURIComponent(spider.name)}?v=${Date.now()}`;
          });
        },
      },
      h("h2", {}, "Upload a new version"),
      upload.controls,
      h("button", { type: "submit" }, "Upload"),
    ),
    h("h2", {}, "Versions"),
    table(
      ["Version", "Files", "Size", "Uploaded", ""],
      versions.map((v) =>
        h(
          "tr",
          { class: v.hash === version ? "selected" : "" },
          h("td", {}, h("a", { href: `#${path}?version=${v.hash}`, title: v.hash }, h("code", {}, shortHash(v.hash))), v.current ? " (current)" : ""),
          h("td", {}, count(v.file_count)),
          h("td", {}, bytes(v.total_bytes)),
          h("td", {}, time(v.created_at)),
          h(
            "td",
            {},
            !v.current &&
              h("button", {
                type: "button",
                class: "secondary",
                onclick: (e) =>
                  busy(e.target, async () => {
                    await post(`${path}/versions/${v.hash}/current`);
                    location.hash = `#${path}?v=${Date.now()}`;
                  }),
              }, "Make current"),
            " ",
            h("button", { type: "button", class: "secondary", onclick: () => runDialog(spider, v.hash) }, "Run this version"),
            " ",
            !v.current &&
              h("button", {
                type: "button",
                class: "danger",
                "aria-label": `Delete version ${shortHash(v.hash)}`,
                onclick: (e) =>
                  busy(e.target, async () => {
                    if (!confirm(`Delete version ${shortHash(v.hash)} and the files no other version uses?`)) return;
                    await del(`${path}/versions/${v.hash}`);
                    notify(`Version ${shortHash(v.hash)} deleted.`);
                    location.hash = `#${path}?v=${Date.now()}`;
                  }),
              }, "Delete"),
          ),
        ),
      ),
      { "aria-label": "Versions" },
    ),
    files,
  );
  if (version) await showFiles(files, path, version);
}

async function showFiles(section, path, version) {
  const listing = await get(`${path}/files`, { version });
  const viewer = h("pre", { class: "file", tabindex: 0, "aria-label": "File content" });
  section.append(
    h("h2", { id: "files-title" }, "Files of ", h("code", {}, shortHash(version))),
    table(
      ["Path", "Size", "Mode"],
      listing.files.map((f) =>
        h(
          "tr",
          {},
          h(
            "td",
            {},
            h("button", {
              type: "button",
              class: "link",
              onclick: async () => {
                const response = await api("GET", `${path}/files/${f.path.split("/").map(encodeURIComponent).join("/")}?version=${version}`, undefined, { raw: true });
                const text = await response.text();
                clear(viewer, f.size > 1 << 20 ? text.slice(0, 1 << 20) + "\n… (shown up to 1 MiB)" : text);
                viewer.focus();
              },
            }, f.path),
          ),
          h("td", {}, bytes(f.size)),
          h("td", {}, h("code", {}, (f.mode & 0o777).toString(8))),
        ),
      ),
      { "aria-label": "Files" },
    ),
    viewer,
  );
}
