// The form fields of a spider's settings (what `arachne spider create` sets), used by the New spider dialog and
// the spider page, and the per-run overrides of the run dialog. Secret environment values come back from the
// server as ******** and are sent back as such to keep them; typing a new value replaces the secret.

import { field, h } from "./dom.js";

/** `KEY=VALUE` lines as an object; a line without `=` is an error naming it. */
export function parseEnv(text) {
  const env = {};
  for (const [i, raw] of text.split("\n").entries()) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    const at = line.indexOf("=");
    if (at <= 0) throw new Error(`Environment line ${i + 1} is not KEY=VALUE: ${line}`);
    env[line.slice(0, at).trim()] = line.slice(at + 1);
  }
  return env;
}

const envText = (env) => Object.entries(env || {}).map(([k, v]) => `${k}=${v}`).join("\n");

/** A whole number from an input, or undefined when it is empty. */
function number(input) {
  const text = input.value.trim();
  if (!text) return undefined;
  const n = Number(text);
  if (!Number.isInteger(n) || n < 0) throw new Error(`${input.dataset.label} must be a whole number`);
  return n;
}

function numberInput(name, label, value) {
  return h("input", { type: "number", name, min: 0, value: value ?? "", class: "narrow", dataset: { label } });
}

/** The fields of every setting of a spider (`spider` is the current one, or undefined for a new spider). */
export function spiderSettingsFields(spider) {
  const s = spider?.settings || {};
  const env = h("textarea", { name: "env", rows: 3, cols: 40, placeholder: "GREETING=hi\nAPI_TOKEN=…" }, envText(s.env));
  const timeout = numberInput("timeout_secs", "Timeout", s.timeout_secs);
  const memory = numberInput("memory_limit_mib", "Memory limit", s.memory_limit_mib);
  const grace = numberInput("cancel_grace_secs", "Cancel grace", s.cancel_grace_secs);
  const retries = numberInput("retries", "Retries", s.retries);
  const backoff = numberInput("retry_backoff_secs", "Retry backoff", s.retry_backoff_secs);
  const maxInstances = numberInput("max_instances", "Max instances", spider?.max_instances);
  const collection = h("input", { name: "results_collection", value: spider?.results_collection || "", placeholder: spider ? `results_${spider.name}` : "results_<name>", autocomplete: "off" });
  const dedupKeys = h("input", { name: "dedup_keys", value: (spider?.dedup?.keys || []).join(", "), placeholder: "url", autocomplete: "off" });
  const dedupMode = h(
    "select",
    { name: "dedup_mode" },
    ["ignore", "overwrite"].map((m) => h("option", { value: m, selected: (spider?.dedup?.mode || "ignore") === m }, m)),
  );
  const element = h(
    "fieldset",
    { class: "settings" },
    h("legend", {}, "Settings"),
    field("Environment", env, "KEY=VALUE per line. Values of secret names (…_KEY, …_TOKEN, …_PASSWORD, …_SECRET) show as ********; leave them so to keep them."),
    h(
      "div",
      { class: "filters" },
      field("Timeout (s)", timeout),
      field("Memory limit (MiB)", memory),
      field("Cancel grace (s)", grace),
      field("Retries", retries),
      field("Retry backoff (s)", backoff),
      field("Max instances", maxInstances, "Empty: no limit."),
    ),
    h(
      "div",
      { class: "filters" },
      field("Results collection", collection, "Empty: the default."),
      field("De-duplication keys", dedupKeys, "Comma-separated fields; empty: none."),
      field("On a duplicate", dedupMode),
    ),
  );
  return {
    element,
    /** The settings part of a `POST /spiders` body: every field given, so clearing one resets it. */
    value() {
      const settings = { env: parseEnv(env.value) };
      for (const [key, input] of [["timeout_secs", timeout], ["memory_limit_mib", memory], ["cancel_grace_secs", grace], ["retries", retries], ["retry_backoff_secs", backoff]]) {
        const n = number(input);
        if (n !== undefined) settings[key] = n;
      }
      const keys = dedupKeys.value.split(",").map((k) => k.trim()).filter(Boolean);
      return {
        settings,
        max_instances: number(maxInstances) ?? 0,
        results_collection: collection.value.trim(),
        dedup: { keys, mode: dedupMode.value },
      };
    },
  };
}

/** A run's overrides of its spider's settings: environment (merged), timeout, retries. */
export function runOverrideFields() {
  const env = h("textarea", { name: "run_env", rows: 2, cols: 36, placeholder: "KEY=VALUE per line" });
  const timeout = numberInput("run_timeout_secs", "Timeout", undefined);
  const retries = numberInput("run_retries", "Retries", undefined);
  return {
    element: h(
      "details",
      {},
      h("summary", {}, "Overrides for this run"),
      field("Environment", env, "Added to the spider's, replacing a variable of the same name."),
      h("div", { class: "filters" }, field("Timeout (s)", timeout), field("Retries", retries)),
    ),
    /** The run's `settings`, or undefined when nothing is overridden. */
    value() {
      const settings = {};
      const vars = parseEnv(env.value);
      if (Object.keys(vars).length) settings.env = vars;
      const t = number(timeout);
      if (t !== undefined) settings.timeout_secs = t;
      const r = number(retries);
      if (r !== undefined) settings.retries = r;
      return Object.keys(settings).length ? settings : undefined;
    },
  };
}
