// The chat page: sends a message to POST /api/chat as a Server-Sent Events stream, shows the
// answer as it streams in, then the final answer with its confidence, cited spans, tool results
// (tables, decision timelines) and any amendment proposal to confirm or cancel.

import { api, sse, el, sentence, technical, time, spanLink, shortId, isUuid, initChrome, Problem } from "./common.js";
import { toolResult, diffTable, statusBadge, prose, partialText } from "./render.js";

initChrome();

const form = document.getElementById("composer");
const box = document.getElementById("message");
const sendBtn = document.getElementById("send");
const log = document.getElementById("conversation");
const intro = document.getElementById("intro");
const MEMORY_KEY = "logline.memory";

let conversationId = null;
let busy = false;
let lastMessage = "";

// ---- memory toggle ----------------------------------------------------------------------------

const saved = localStorage.getItem(MEMORY_KEY);
for (const r of form.querySelectorAll('input[name="memory"]')) {
  if (saved && r.value === saved) r.checked = true;
  r.addEventListener("change", () => localStorage.setItem(MEMORY_KEY, r.value));
}
const memory = () => form.querySelector('input[name="memory"]:checked')?.value || "off";

// ---- composer ---------------------------------------------------------------------------------

box.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    form.requestSubmit();
  }
});

form.addEventListener("submit", (e) => {
  e.preventDefault();
  const text = box.value.trim();
  if (!text || busy) return;
  ask(text);
});

for (const b of document.querySelectorAll(".suggestion")) {
  b.addEventListener("click", () => ask(b.textContent.trim()));
}

document.getElementById("new-conversation").addEventListener("click", () => {
  conversationId = null;
  for (const n of [...log.children]) if (n !== intro) n.remove();
  intro.hidden = false;
  box.focus();
});

window.addEventListener("logline:signed-in", () => {
  if (!box.value && lastMessage) box.value = lastMessage;
  box.focus();
});

// ---- one turn ---------------------------------------------------------------------------------

async function ask(text) {
  if (busy) return;
  busy = true;
  lastMessage = text;
  sendBtn.disabled = true;
  intro.hidden = true;
  box.value = "";
  log.append(el("div", { class: "msg user" }, el("p", { class: "who-label visually-hidden" }, "You said:"), el("p", {}, text)));

  const turn = new Turn();
  log.append(turn.node);
  turn.node.scrollIntoView({ block: "nearest" });

  const body = { message: text };
  if (conversationId) body.conversation_id = conversationId;
  try {
    await sse("/api/chat", {
      method: "POST",
      body,
      headers: { "X-LogLine-Memory": memory() },
      onEvent: (name, data) => turn.event(name, data),
    });
    if (!turn.done) turn.fail("The answer was cut off before it finished. Try again.");
  } catch (err) {
    if (err instanceof Problem && err.status === 401) {
      box.value = text;
      turn.fail("Sign in with an access token (above), then send your message again.");
    } else {
      turn.fail(sentence(err), err);
    }
  } finally {
    busy = false;
    sendBtn.disabled = false;
    refreshMemoryPanel();
    if (document.activeElement === document.body || document.activeElement === sendBtn) box.focus();
  }
}

class Turn {
  constructor() {
    this.raw = "";
    this.done = false;
    this.rendered = new Set();
    this.results = [];
    this.steps = el("ul", { class: "steps", "aria-label": "Steps" });
    this.status = el("p", { class: "thinking" }, "Thinking…");
    this.text = el("div", { class: "answer-text" });
    this.tools = el("div", { class: "tools" });
    this.extra = el("div", { class: "answer-extra" });
    this.node = el("article", { class: "msg assistant", "aria-busy": "true", "aria-label": "Answer" }, this.status, this.steps, this.text, this.tools, this.extra);
  }

  event(name, data) {
    switch (name) {
      case "tool_call":
        this.raw = "";
        this.steps.append(el("li", { "data-id": data.id }, `Using ${data.name}${argSummary(data.arguments)}…`));
        this.status.textContent = "Looking in the ledger…";
        break;
      case "tool_result": {
        const li = this.steps.querySelector(`li[data-id="${CSS.escape(data.id)}"]`);
        if (li) {
          li.textContent = li.textContent.replace(/…$/, data.ok ? " — done" : " — failed");
          li.classList.add(data.ok ? "ok" : "failed");
        }
        this.addResult(data);
        break;
      }
      case "delta":
        this.raw += data.text || "";
        {
          const t = partialText(this.raw);
          if (t) {
            this.status.hidden = true;
            this.text.replaceChildren(...prose(t));
            // How many pieces of text were shown before the final answer (tests read it).
            this.node.dataset.streamed = String(Number(this.node.dataset.streamed || 0) + 1);
          }
        }
        break;
      case "breaker":
        this.steps.append(el("li", { class: "note" }, "Tool call limit reached: answering with what was found."));
        break;
      case "repair":
        this.raw = "";
        this.steps.append(el("li", { class: "note" }, "The answer was not in the expected form; asking for a corrected one…"));
        break;
      case "answer":
        this.finish(data);
        break;
      case "error": {
        const p = new Problem(data.status || 500, data.title, data.detail, { runId: data.run_id });
        this.fail(sentence(p), p);
        break;
      }
      default:
        break;
    }
  }

  addResult(tr) {
    if (this.rendered.has(tr.id)) return;
    this.rendered.add(tr.id);
    this.results.push(tr);
    if (tr.name !== "propose_amendment") this.tools.append(toolResult(tr));
  }

  fail(message, err) {
    this.done = true;
    this.status.hidden = true;
    this.node.setAttribute("aria-busy", "false");
    this.node.classList.add("failed");
    const detail = technical(err);
    const runId = err && isUuid(err.runId) ? err.runId : null;
    this.text.replaceChildren(
      el("p", { class: "notice bad", role: "alert" }, message),
      detail || runId
        ? el("details", { class: "tech" }, el("summary", {}, "Details for an administrator"),
          detail ? el("p", {}, detail) : null,
          runId ? el("p", {}, "The failed turn is recorded as ", spanLink(runId, `run ${shortId(runId)}`), ".") : null)
        : null,
    );
  }

  finish(r) {
    this.done = true;
    this.status.hidden = true;
    this.node.setAttribute("aria-busy", "false");
    if (r.conversation_id) conversationId = r.conversation_id;
    for (const tr of r.tool_results || []) this.addResult(tr);
    const a = r.answer || {};
    if (a.error || r.outcome === "insufficient_evidence") {
      this.text.replaceChildren(el("p", { class: "notice warn" }, "There is not enough evidence in the ledger to answer that. Try naming the contract or span, or ask in another way."));
    } else {
      this.text.replaceChildren(...prose(a.text || ""));
    }
    const extra = [];
    if (typeof a.confidence === "number") extra.push(confidence(a.confidence));
    if (r.outcome === "unsupported") {
      extra.push(el("p", { class: "notice warn" }, "The model answered without looking anything up in the ledger, so its answer is not shown and the question was sent to a reviewer",
        r.escalation_id ? [" (", spanLink(r.escalation_id, "escalation request"), ")"] : "", "."));
    }
    if (r.outcome === "escalated") {
      extra.push(el("p", { class: "notice warn" }, "Confidence is low, so this answer was sent to a reviewer",
        r.escalation_id ? [" (", spanLink(r.escalation_id, "escalation request"), ")"] : "",
        ". Nothing it proposes can be applied until a reviewer approves it. ", el("a", { href: "/reviews" }, "Open reviews")));
    }
    const cites = (a.citations || []).filter(isUuid);
    if (cites.length) extra.push(citations(cites));
    const proposals = (a.actions || []).filter((x) => x && x.type === "propose_amendment" && x.proposal_id);
    for (const id of r.proposals || []) {
      if (!proposals.some((p) => p.proposal_id === id)) proposals.push({ proposal_id: id, summary: "" });
    }
    const cards = proposals.map((p) => new Proposal(p, this.results.find((t) => t.name === "propose_amendment" && t.result && t.result.proposal_id === p.proposal_id), r.outcome === "escalated" || r.outcome === "unsupported"));
    extra.push(...cards.map((c) => c.node));
    if (a.follow_up_question) extra.push(followUp(a.follow_up_question));
    if (isUuid(r.run_id)) extra.push(feedback(r.run_id));
    extra.push(el("p", { class: "run-meta" }, "Recorded as ", spanLink(r.run_id, `run ${shortId(r.run_id)}`)));
    this.extra.replaceChildren(...extra);
    const open = cards.find((c) => c.pending);
    if (open) open.review();
  }
}

/** Thumbs up / down on an answer (POST /api/chat/feedback). The pressed button stays pressed
 * (aria-pressed) once the server has recorded the vote; pressing the other one changes it (the
 * server keeps one vote per user and answer, the later superseding the earlier). */
function feedback(runId) {
  const status = el("span", { class: "feedback-status", role: "status", "aria-live": "polite" });
  const buttons = [];
  const vote = async (score, pressed) => {
    if (pressed.getAttribute("aria-pressed") === "true") return;
    for (const b of buttons) b.disabled = true;
    status.textContent = "Saving…";
    try {
      await api("/api/chat/feedback", { method: "POST", body: { run_id: runId, score } });
      for (const b of buttons) b.setAttribute("aria-pressed", String(b === pressed));
      status.textContent = score === "up" ? "Recorded: helpful. Thank you." : "Recorded: not helpful. Thank you.";
    } catch (err) {
      status.textContent = `Not recorded: ${sentence(err)}`;
    } finally {
      for (const b of buttons) b.disabled = false;
    }
  };
  for (const [score, label] of [["up", "Helpful"], ["down", "Not helpful"]]) {
    const b = el("button", { type: "button", class: `vote ${score}`, "aria-pressed": "false", "aria-label": label, title: label }, thumb(score));
    b.addEventListener("click", () => vote(score, b));
    buttons.push(b);
  }
  return el("div", { class: "feedback", role: "group", "aria-label": "Rate this answer" },
    el("span", { class: "feedback-label" }, "Was this helpful?"), ...buttons, status);
}

// Feather's thumbs-up and thumbs-down outlines (MIT): drawn, so no emoji font is needed.
const THUMBS = {
  up: "M14 9V5a3 3 0 0 0-3-3l-4 9v11h11.28a2 2 0 0 0 2-1.7l1.38-9a2 2 0 0 0-2-2.3zM7 22H4a2 2 0 0 1-2-2v-7a2 2 0 0 1 2-2h3",
  down: "M10 15v4a3 3 0 0 0 3 3l4-9V2H5.72a2 2 0 0 0-2 1.7l-1.38 9a2 2 0 0 0 2 2.3zm7-13h2.67A2.31 2.31 0 0 1 22 4v7a2.31 2.31 0 0 1-2.33 2H17",
};

function thumb(which) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  for (const [k, v] of Object.entries({ viewBox: "0 0 24 24", width: "18", height: "18", fill: "none", stroke: "currentColor", "stroke-width": "2", "stroke-linecap": "round", "stroke-linejoin": "round", "aria-hidden": "true", focusable: "false" })) {
    svg.setAttribute(k, v);
  }
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", THUMBS[which]);
  svg.append(path);
  return svg;
}

function argSummary(args) {
  if (!args || typeof args !== "object") return "";
  const v = args.contract || args.id || args.name;
  return typeof v === "string" ? ` (${v})` : "";
}

function confidence(c) {
  const pct = Math.round(c * 100);
  return el(
    "p",
    { class: `confidence ${c < 0.6 ? "low" : ""}` },
    el("span", {}, "Confidence"),
    " ",
    el("meter", { min: "0", max: "1", low: "0.6", high: "0.8", optimum: "1", value: String(c), "aria-label": "Confidence" }),
    ` ${pct}%`,
  );
}

function citations(ids) {
  const list = el("ol", { class: "citations" });
  for (const id of ids) {
    const a = spanLink(id, shortId(id));
    list.append(el("li", {}, a));
    api(`/api/spans/${id}`)
      .then((s) => {
        const what = s.name || s.content?.name || s.did || "";
        a.replaceChildren(el("span", { class: "etype" }, s.entity_type), " ", what ? `${what} · ` : "", el("code", {}, shortId(id)));
      })
      .catch(() => {});
  }
  return el("div", { class: "sources" }, el("h3", {}, "Sources"), list);
}

function followUp(q) {
  const quoted = /"([^"]{3,})"/.exec(q);
  const message = quoted ? quoted[1] : q;
  return el("p", { class: "follow-up" }, el("button", { type: "button", class: "link-button", onclick: () => ask(message) }, el("span", { "aria-hidden": "true" }, "↪ "), q));
}

// ---- amendment proposals ----------------------------------------------------------------------

const dialog = document.getElementById("confirm-dialog");
let current = null;

class Proposal {
  constructor(action, tool, held) {
    this.id = action.proposal_id;
    this.result = (tool && tool.result) || {};
    this.summary = action.summary || this.result.summary || "";
    this.pending = !held && (this.result.status || "pending") === "pending";
    this.state = el("div", { class: "proposal-state", role: "status" });
    const target = action.target || this.result.contract?.name || "the contract";
    this.node = el(
      "section",
      { class: "proposal", "aria-label": `Proposed amendment to ${target}` },
      el("h3", {}, `Proposed amendment to ${target}`),
      this.result.before || this.result.after ? diffTable(this.result.before, this.result.after) : el("p", {}, this.summary),
      (this.line = el("p", { class: "muted" }, "Proposal ", spanLink(this.id, shortId(this.id)), held ? " is held until a reviewer approves it." : " awaits your confirmation.")),
      this.state,
    );
    if (this.pending) {
      this.reviewBtn = el("button", { type: "button", class: "secondary", onclick: () => this.review() }, "Review proposal…");
      this.state.replaceChildren(this.reviewBtn);
    }
  }

  review() {
    current = this;
    document.getElementById("confirm-summary").textContent = this.summary;
    document.getElementById("confirm-diff").replaceChildren(this.result.before || this.result.after ? diffTable(this.result.before, this.result.after) : "");
    document.getElementById("confirm-error").replaceChildren();
    for (const b of dialog.querySelectorAll("button")) b.disabled = false;
    dialog.showModal();
    document.getElementById("confirm-apply").focus();
  }

  async decide(action) {
    const err = document.getElementById("confirm-error");
    for (const b of dialog.querySelectorAll("button")) b.disabled = true;
    try {
      const r = await api("/api/chat/confirm", { method: "POST", body: { proposal_id: this.id, action } });
      dialog.close();
      this.pending = false;
      this.showOutcome(r);
    } catch (e) {
      for (const b of dialog.querySelectorAll("button")) b.disabled = false;
      err.replaceChildren(el("p", { class: "notice bad" }, sentence(e)));
      if (e instanceof Problem && e.status === 409) {
        this.pending = false;
        this.state.replaceChildren(el("p", { class: "notice warn" }, sentence(e)));
      }
    }
  }

  showOutcome(r) {
    const c = r.contract || {};
    this.line.lastChild.textContent = r.status === "applied" ? " was applied." : " was cancelled.";
    if (r.status === "applied") {
      this.state.replaceChildren(
        el("p", { class: "notice good" }, el("strong", {}, "Applied. "), `${c.name || "The contract"} is now `, statusBadge(c.state),
          c.deadline_at ? [" with its deadline at ", time(c.deadline_at)] : "", ` (version ${c.seq}).`),
        el("p", {}, spanLink(c.id, `Contract ${c.name || ""} version ${c.seq}`.replace("  ", " "), c.seq),
          r.amendment_id ? [" · ", spanLink(r.amendment_id, "amendment record")] : ""),
      );
    } else {
      this.state.replaceChildren(el("p", { class: "notice" }, `Cancelled: nothing changed. ${c.name || "The contract"} stays `, statusBadge(c.state), "."));
    }
    const n = this.state.querySelector(".notice");
    if (n) {
      n.tabIndex = -1;
      n.focus();
    }
  }
}

document.getElementById("confirm-apply").addEventListener("click", () => current?.decide("apply"));
document.getElementById("confirm-cancel").addEventListener("click", () => current?.decide("cancel"));
document.getElementById("confirm-later").addEventListener("click", () => dialog.close());
dialog.addEventListener("close", () => {
  if (current && current.pending) current.reviewBtn?.focus();
});

box.focus();

// ---- memory panel (issue 13) ------------------------------------------------------------------
// What the server remembers for the signed-in user (GET /api/memory), with Forget per item
// (DELETE /api/memory/{id}), for this conversation and for everything (POST /api/memory/forget).

const memoryPanel = document.getElementById("memory-panel");
const memoryItems = document.getElementById("memory-items");
const memoryStatus = document.getElementById("memory-status");

/** Lists the items again; `note` (what a Forget just did) stays in the status line. */
async function refreshMemoryPanel(note = "") {
  if (!memoryPanel) return;
  memoryStatus.textContent = note;
  if (!memoryPanel.open) return;
  try {
    const r = await api("/api/memory");
    memoryItems.replaceChildren(...r.items.map(memoryRow));
    memoryStatus.textContent = r.items.length ? note : `${note} Nothing is remembered.`.trim();
  } catch (err) {
    memoryStatus.textContent = sentence(err);
  }
}

function memoryRow(item) {
  // Every row has a Forget button: the accessible name says which item it forgets.
  const what = item.text.length > 80 ? `${item.text.slice(0, 79)}…` : item.text;
  const forget = el("button", { type: "button", class: "link-button", "aria-label": `Forget: ${what}` }, "Forget");
  forget.addEventListener("click", () =>
    forgetMemory(() => api(`/api/memory/${encodeURIComponent(item.id)}`, { method: "DELETE" })));
  const layer = item.layer === "session" ? "this conversation" : item.layer;
  return el("li", { class: "memory-item" },
    el("span", {}, item.text), " ",
    el("span", { class: "muted" }, `(${layer}, `, spanLink(item.id, shortId(item.id)), ") "),
    forget);
}

async function forgetMemory(call) {
  let note;
  try {
    const n = (await call()).forgotten.length;
    note = n === 1 ? "Forgot 1 item." : `Forgot ${n} items.`;
  } catch (err) {
    note = sentence(err);
  }
  await refreshMemoryPanel(note);
}

memoryPanel?.addEventListener("toggle", () => refreshMemoryPanel());
document.getElementById("memory-forget-session")?.addEventListener("click", () => {
  if (!conversationId) {
    memoryStatus.textContent = "This conversation has not started yet.";
    return;
  }
  forgetMemory(() => api("/api/memory/forget", { method: "POST", body: { target: "session", session_id: conversationId } }));
});
document.getElementById("memory-forget-all")?.addEventListener("click", () => {
  if (!window.confirm("Forget everything remembered for you? This cannot be undone.")) return;
  forgetMemory(() => api("/api/memory/forget", { method: "POST", body: { target: "all" } }));
});
