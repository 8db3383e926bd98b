// The HTTP API as the pages use it: JSON calls with the session's API token, and Server-Sent Events read
// over fetch (EventSource cannot send an Authorization header), reconnecting with Last-Event-ID.

const TOKEN_KEY = "arachne.token";

export const session = {
  token: () => sessionStorage.getItem(TOKEN_KEY),
  signIn: (token) => sessionStorage.setItem(TOKEN_KEY, token),
  signOut: () => sessionStorage.removeItem(TOKEN_KEY),
};

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Called when the server rejects the token, so the app can show the login page. */
let onUnauthorized = () => {};
export function whenUnauthorized(handler) {
  onUnauthorized = handler;
}

function headers(extra) {
  const h = new Headers(extra || {});
  // Proves to a master without tokens that this is not another site's page (see loopback_only).
  h.set("X-Arachne-Client", "ui");
  const token = session.token();
  if (token) h.set("Authorization", `Bearer ${token}`);
  return h;
}

async function fail(response) {
  let code = "http_" + response.status;
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch {
    // Not a JSON error body (a proxy's page, say): the status line says enough.
  }
  if (response.status === 401) onUnauthorized(message);
  return new ApiError(response.status, code, message);
}

export function query(params) {
  const q = new URLSearchParams();
  for (const [key, value] of Object.entries(params || {})) {
    if (value === undefined || value === null || value === "") continue;
    q.set(key, String(value));
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

/** A call to `/api/v1{path}`; the parsed JSON answer, or null for 204. Throws ApiError with the server's message. */
export async function api(method, path, body, options = {}) {
  const init = { method, headers: headers(options.headers), signal: options.signal };
  if (body instanceof FormData || body instanceof Blob || body instanceof ArrayBuffer) {
    init.body = body;
  } else if (body !== undefined) {
    init.headers.set("Content-Type", "application/json");
    init.body = JSON.stringify(body);
  }
  const response = await fetch(`/api/v1${path}`, init);
  if (!response.ok) throw await fail(response);
  if (response.status === 204) return null;
  if (options.raw) return response;
  return response.json();
}

export const get = (path, params, options) => api("GET", path + query(params), undefined, options);
export const post = (path, body) => api("POST", path, body);
export const put = (path, body) => api("PUT", path, body);
export const patch = (path, body) => api("PATCH", path, body);
export const del = (path) => api("DELETE", path);

/**
 * Follows a Server-Sent Events stream under `/api/v1{path}` until `signal` aborts or the server sends an event
 * named in `finalEvents`. A dropped connection is retried with backoff, resuming after the last event id seen.
 * `onEvent({event, id, data})` gets every event; `onState("open" | "retrying" | "closed", detail)` the link's state.
 */
export async function follow(path, { onEvent, onState = () => {}, signal, finalEvents = [] }) {
  let lastId = null;
  let delay = 500;
  while (!signal.aborted) {
    try {
      const extra = { Accept: "text/event-stream" };
      if (lastId !== null) extra["Last-Event-ID"] = lastId;
      const response = await fetch(`/api/v1${path}`, { headers: headers(extra), signal });
      if (!response.ok) {
        const error = await fail(response);
        // A client error will not go away by asking again.
        if (response.status >= 400 && response.status < 500) {
          onState("closed", error.message);
          return;
        }
        throw error;
      }
      onState("open");
      delay = 500;
      for await (const event of events(response.body, signal)) {
        if (event.id !== null) lastId = event.id;
        onEvent(event);
        if (finalEvents.includes(event.event)) {
          onState("closed");
          return;
        }
      }
    } catch (error) {
      if (signal.aborted) return;
      onState("retrying", error.message);
    }
    if (signal.aborted) return;
    onState("retrying", "connection lost");
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, 10_000);
  }
}

/** Parses an SSE body into {event, id, data} records. */
async function* events(body, signal) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = { event: "message", id: null, data: [] };
  try {
    while (!signal.aborted) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let newline;
      while ((newline = buffer.search(/\r\n|\n|\r/)) >= 0) {
        const line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + (buffer.startsWith("\r\n", newline) ? 2 : 1));
        if (line === "") {
          if (event.data.length) yield { event: event.event, id: event.id, data: event.data.join("\n") };
          event = { event: "message", id: null, data: [] };
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") event.event = value;
        else if (field === "data") event.data.push(value);
        else if (field === "id") event.id = value;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

/** Downloads `/api/v1{path}` with the token, as a file named `name`. */
export async function download(path, name) {
  const response = await api("GET", path, undefined, { raw: true });
  saveBlob(await response.blob(), name);
}

export function saveBlob(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
