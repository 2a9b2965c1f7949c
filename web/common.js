// Shared by every page: the API client (bearer token from sessionStorage, problem documents as
// plain sentences), a Server-Sent Events reader over fetch (EventSource can neither POST nor send
// an Authorization header), the sign-in panel shown on a 401, and a tiny DOM helper. Text is
// always inserted as text, never as HTML.

const TOKEN_KEY = "logline.token";

export function getToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

export function setToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
}

export function clearToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

/** Creates an element: `el("a", {href: "/"}, "text", child)`. Attributes starting with "on"
 * are listeners; `class`, `text`, boolean and null values are handled. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") {
      node.addEventListener(k.slice(2).toLowerCase(), v);
    } else if (k === "class") {
      node.className = v;
    } else if (k === "text") {
      node.textContent = v;
    } else if (v === true) {
      node.setAttribute(k, "");
    } else {
      node.setAttribute(k, String(v));
    }
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(node, c);
    else node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** An error answered by the server (a problem document) or by the network. */
export class Problem extends Error {
  constructor(status, title, detail, extra = {}) {
    super(detail || title);
    this.status = status;
    this.title = title;
    this.detail = detail;
    Object.assign(this, extra);
  }
}

/** A failure as a sentence a person can read: no stack traces, no JSON. */
export function sentence(err) {
  if (err instanceof Problem) {
    if (err.status === 0) {
      return "The server could not be reached. Check that LogLine is running, then try again.";
    }
    if (err.status === 401) return "You need to sign in with an access token.";
    if (err.status === 403) {
      return `You are not allowed to do this${err.detail ? `: ${err.detail}` : "."}`;
    }
    if (err.status === 429) return "Too many requests right now. Wait a few seconds and try again.";
    if (err.status === 502) return "The language model failed to answer. Try again; if it keeps failing, ask an administrator to check the model provider.";
    if (err.status === 503) return "The language model is unavailable right now. Try again in a moment; if it keeps failing, ask an administrator to check the model provider.";
    if (err.status === 504) return "The language model took too long to answer. Try again in a moment.";
    if (err.status >= 500) return "Something went wrong on the server. Try again; if it keeps happening, tell an administrator.";
    return capitalise(err.detail || err.title || "The request failed.");
  }
  return "Something went wrong in this page. Reload it and try again.";
}

/** What the server said, for a "Details" disclosure under a failure (provider errors). */
export function technical(err) {
  if (!(err instanceof Problem) || err.status < 500) return "";
  return (err.detail || "").trim();
}

function capitalise(s) {
  const t = String(s).trim();
  return t ? t[0].toUpperCase() + t.slice(1) : t;
}

function authHeaders(headers = {}) {
  const h = { ...headers };
  const token = getToken();
  if (token) h.Authorization = `Bearer ${token}`;
  return h;
}

async function problemFrom(resp) {
  let body = null;
  try {
    body = await resp.json();
  } catch {
    body = null;
  }
  const title = (body && body.title) || resp.statusText || `HTTP ${resp.status}`;
  const detail = (body && body.detail) || "";
  const p = new Problem(resp.status, title, detail, { runId: body && body.run_id });
  if (resp.status === 401) showSignIn(detail);
  return p;
}

async function send(path, { method = "GET", body, headers = {}, signal } = {}) {
  const init = { method, headers: authHeaders(headers), signal };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (e) {
    if (e && e.name === "AbortError") throw e;
    throw new Problem(0, "Network error", "");
  }
  if (!resp.ok) throw await problemFrom(resp);
  return resp;
}

/** Calls the API and returns its JSON; throws a Problem on any failure. */
export async function api(path, opts = {}) {
  const resp = await send(path, { ...opts, headers: { Accept: "application/json", ...(opts.headers || {}) } });
  return resp.json();
}

/** Reads a Server-Sent Events response (GET or POST) and calls `onEvent(name, data, id)` for
 * each event; `data` is parsed JSON when it is JSON. Resolves when the stream ends. */
export async function sse(path, { method = "GET", body, headers = {}, signal, onEvent, onOpen } = {}) {
  const resp = await send(path, { method, body, signal, headers: { Accept: "text/event-stream", ...headers } });
  if (onOpen) onOpen(resp);
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  let ev = { name: "message", data: [], id: null };
  const dispatch = () => {
    if (ev.data.length) {
      const raw = ev.data.join("\n");
      let data = raw;
      try {
        data = JSON.parse(raw);
      } catch {
        /* plain text data */
      }
      onEvent(ev.name, data, ev.id);
    }
    ev = { name: "message", data: [], id: null };
  };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += value;
    let nl;
    while ((nl = buf.search(/\r\n|\r|\n/)) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + (buf[nl] === "\r" && buf[nl + 1] === "\n" ? 2 : 1));
      if (line === "") {
        dispatch();
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let val = colon < 0 ? "" : line.slice(colon + 1);
      if (val.startsWith(" ")) val = val.slice(1);
      if (field === "event") ev.name = val;
      else if (field === "data") ev.data.push(val);
      else if (field === "id") ev.id = val;
    }
  }
  dispatch();
}

// ---- formatting -------------------------------------------------------------------------------

export function shortId(id) {
  return String(id || "").slice(0, 8) + "…" + String(id || "").slice(-4);
}

const timeFmt = new Intl.DateTimeFormat("en-GB", {
  timeZone: "UTC",
  year: "numeric",
  month: "short",
  day: "numeric",
  hour: "2-digit",
  minute: "2-digit",
});

/** An RFC 3339 instant as "27 Nov 2026, 23:00 UTC" in a <time> element. */
export function time(iso) {
  if (!iso) return el("span", { class: "muted" }, "—");
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return el("span", {}, String(iso));
  return el("time", { datetime: iso, title: iso }, `${timeFmt.format(d)} UTC`);
}

export function spanLink(id, label, seq) {
  const href = `/spans/${encodeURIComponent(id)}${seq !== undefined && seq !== null ? `?seq=${seq}` : ""}`;
  return el("a", { href, class: "span-link" }, label || shortId(id));
}

export const isUuid = (s) => /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(String(s || ""));

// ---- page chrome: account and sign-in ---------------------------------------------------------

function claims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part));
  } catch {
    return null;
  }
}

function renderAccount() {
  const box = document.getElementById("account");
  if (!box) return;
  box.replaceChildren();
  const token = getToken();
  if (!token) return;
  const c = claims(token);
  box.append(
    el("span", { class: "who" }, c && c.sub ? `${c.sub}${c.tenant ? ` · ${c.tenant}` : ""}` : "Signed in"),
    el("button", {
      type: "button",
      class: "link-button",
      onclick: () => {
        clearToken();
        location.reload();
      },
    }, "Sign out"),
  );
}

/** Shows the sign-in panel (after a 401). Saving a token fires `logline:signed-in`. */
export function showSignIn(detail) {
  let panel = document.getElementById("signin");
  if (!panel) return;
  if (!panel.hidden && panel.dataset.ready) {
    panel.querySelector("input").focus();
    return;
  }
  const input = el("input", {
    id: "signin-token",
    name: "token",
    type: "password",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
  });
  const msg = el("p", { class: "muted", id: "signin-why" });
  if (detail && !/^missing bearer token/i.test(detail)) {
    msg.textContent = `The token was refused: ${detail.replace(/\.$/, "")}.`;
  }
  const form = el(
    "form",
    {
      class: "signin-form",
      onsubmit: (e) => {
        e.preventDefault();
        const t = input.value.trim();
        if (!t) return;
        setToken(t);
        panel.hidden = true;
        renderAccount();
        window.dispatchEvent(new Event("logline:signed-in"));
      },
    },
    el("label", { for: "signin-token" }, "Access token"),
    el("div", { class: "row" }, input, el("button", { type: "submit", class: "primary" }, "Sign in")),
  );
  panel.replaceChildren(
    el("h2", { id: "signin-title" }, "Sign in"),
    el("p", {}, "This server needs an access token. An administrator can issue one with ",
      el("code", {}, "logline token issue"), "; it is kept in this browser tab only."),
    msg,
    form,
  );
  panel.dataset.ready = "1";
  panel.hidden = false;
  input.focus();
}

/** Marks the current page in the navigation and fills the account area. */
export function initChrome() {
  for (const a of document.querySelectorAll("nav.main-nav a")) {
    const here = a.getAttribute("href") === "/" ? location.pathname === "/" : location.pathname.startsWith(a.getAttribute("href"));
    if (here) a.setAttribute("aria-current", "page");
  }
  renderAccount();
}

/** A status line (role=status) that screen readers announce. */
export function notice(target, text, kind = "info") {
  target.replaceChildren(text ? el("p", { class: `notice ${kind}` }, text) : "");
}
