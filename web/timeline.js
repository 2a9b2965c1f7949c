// The timeline, /timeline: the newest spans the caller may see, with filters (kept in the URL),
// and new spans arriving live over GET /api/timeline/stream. The stream is opened before the
// first page is read, so a span appended in between is not missed (duplicates are dropped).

import { api, sse, el, sentence, time, spanLink, shortId, initChrome, Problem } from "./common.js";
import { statusBadge } from "./render.js";

initChrome();

const FILTERS = ["entity_type", "who", "did", "status", "trace_id"];
const PAGE = 50;
const form = document.getElementById("filters");
const list = document.getElementById("timeline");
const more = document.getElementById("more");
const summary = document.getElementById("timeline-summary");
const errBox = document.getElementById("timeline-error");
const liveText = document.getElementById("live-text");
const live = document.getElementById("live");

let generation = 0;
let controller = null;
let seen = new Set();
let cursor = null;
let lastEventId = null;

function filterQuery() {
  const p = new URLSearchParams();
  for (const k of FILTERS) {
    const v = form.elements[k].value.trim();
    if (v) p.set(k, v);
  }
  return p;
}

function setLive(state, text) {
  live.dataset.state = state;
  liveText.textContent = text;
}

function item(s, fresh) {
  const key = `${s.id}:${s.seq}`;
  if (seen.has(key)) return null;
  seen.add(key);
  const title = s.name || (s.content && typeof s.content === "object" && s.content.name) || s.this || shortId(s.id);
  return el(
    "li",
    { class: `span-item${fresh ? " fresh" : ""}`, "data-id": s.id },
    el("div", { class: "span-item-head" }, el("span", { class: "etype" }, s.entity_type), " ", statusBadge(s.status), " ", time(s.at)),
    el("p", { class: "span-item-title" }, spanLink(s.id, title, s.seq ? s.seq : null), s.seq ? el("span", { class: "muted" }, ` · version ${s.seq}`) : ""),
    el("p", { class: "span-item-body" }, s.who ? el("strong", {}, s.who) : "", s.did ? ` ${s.did}` : "", s.this && s.this !== title ? el("span", { class: "muted" }, ` — ${s.this}`) : ""),
  );
}

function count() {
  const n = list.children.length;
  summary.textContent = n ? `${n} span${n === 1 ? "" : "s"} shown, newest first.` : "No spans match these filters yet. New ones will appear here as they are written.";
}

async function loadPage(gen, params) {
  const p = new URLSearchParams(params);
  p.set("order", "desc");
  p.set("limit", String(PAGE));
  if (cursor) p.set("cursor", cursor);
  const page = await api(`/api/timeline?${p}`);
  if (gen !== generation) return;
  for (const s of page.spans || []) {
    const li = item(s, false);
    if (li) list.append(li);
  }
  cursor = page.next_cursor || null;
  more.hidden = !cursor;
  count();
}

async function stream(gen, params, onOpen) {
  let delay = 1000;
  while (gen === generation) {
    controller = new AbortController();
    const headers = lastEventId ? { "Last-Event-ID": lastEventId } : {};
    try {
      await sse(`/api/timeline/stream?${params}`, {
        headers,
        signal: controller.signal,
        onOpen: () => {
          delay = 1000;
          setLive("live", "Live: new spans appear as they are written");
          onOpen();
        },
        onEvent: (name, data, id) => {
          if (gen !== generation) return;
          if (id) lastEventId = id;
          if (name === "span" && data && typeof data === "object") {
            const li = item(data, true);
            if (li) {
              list.prepend(li);
              count();
            }
          } else if (name === "shutdown") {
            setLive("off", "The server is restarting; reconnecting…");
          }
        },
      });
    } catch (e) {
      if (gen !== generation || (e && e.name === "AbortError")) return;
      if (e instanceof Problem && (e.status === 401 || e.status === 400 || e.status === 403)) {
        setLive("off", "Not live");
        onOpen();
        errBox.replaceChildren(el("p", { class: "notice bad" }, sentence(e)));
        return;
      }
    }
    if (gen !== generation) return;
    setLive("off", "Connection lost; reconnecting…");
    onOpen();
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 15000);
  }
}

async function start() {
  generation += 1;
  const gen = generation;
  if (controller) controller.abort();
  seen = new Set();
  cursor = null;
  lastEventId = null;
  list.replaceChildren();
  errBox.replaceChildren();
  summary.textContent = "Loading…";
  setLive("connecting", "Connecting…");
  const params = filterQuery();
  // Read the first page once the stream is open (or has failed), so nothing falls in between.
  const opened = new Promise((resolve) => stream(gen, params, resolve));
  await Promise.race([opened, new Promise((r) => setTimeout(r, 3000))]);
  try {
    await loadPage(gen, params);
  } catch (e) {
    if (gen === generation) {
      summary.textContent = "";
      errBox.replaceChildren(el("p", { class: "notice bad" }, sentence(e)));
    }
  }
}

// Filters come from the URL and go back into it, so a filtered timeline can be linked.
const initial = new URLSearchParams(location.search);
for (const k of FILTERS) if (initial.get(k)) form.elements[k].value = initial.get(k);

form.addEventListener("submit", (e) => {
  e.preventDefault();
  const p = filterQuery();
  history.replaceState(null, "", `/timeline${p.toString() ? `?${p}` : ""}`);
  start();
});
document.getElementById("clear-filters").addEventListener("click", () => {
  for (const k of FILTERS) form.elements[k].value = "";
  form.requestSubmit();
});
more.addEventListener("click", async () => {
  more.disabled = true;
  try {
    await loadPage(generation, filterQuery());
  } catch (e) {
    errBox.replaceChildren(el("p", { class: "notice bad" }, sentence(e)));
  } finally {
    more.disabled = false;
  }
});
window.addEventListener("logline:signed-in", start);

start();
