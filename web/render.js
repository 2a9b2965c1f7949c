// Renderers shared by the chat and the span page: tool results as tables and small timelines,
// JSON values as readable blocks.

import { el, time, spanLink, shortId, isUuid } from "./common.js";

/** A horizontally scrollable, keyboard-focusable wrapper for wide tables. */
export function tableWrap(label, table) {
  return el("div", { class: "table-wrap", role: "region", "aria-label": label, tabindex: "0" }, table);
}

function table(caption, head, rows) {
  return el(
    "table",
    {},
    caption ? el("caption", {}, caption) : null,
    el("thead", {}, el("tr", {}, head.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, rows.map((r) => el("tr", {}, r.map((c) => el("td", {}, c))))),
  );
}

export function jsonBlock(value) {
  return el("pre", { class: "json" }, JSON.stringify(value, null, 2));
}

export function statusBadge(status) {
  const s = String(status || "—");
  const tone = {
    ok: "good", valid: "good", active: "good", accepted: "good", approved: "good", applied: "good", answered: "good",
    not: "bad", terminated: "bad", void: "bad", rejected: "bad", invalid: "bad", cancelled: "bad",
    doubt: "warn", held: "warn", under_review: "warn", open: "warn", pending: "warn", escalated: "warn", ghost: "warn",
  }[s] || "neutral";
  return el("span", { class: `badge ${tone}` }, s);
}

/** A list of spans (query_ledger rows or timeline spans) as a table. */
export function spansTable(spans, caption) {
  const rows = spans.map((s) => [
    spanLink(s.id, s.name || shortId(s.id), null),
    el("code", {}, s.entity_type || ""),
    s.who || "",
    s.did || "",
    statusBadge(s.status),
    time(s.at),
  ]);
  return tableWrap(caption || "Spans", table(caption, ["Span", "Type", "Who", "Did", "Status", "When"], rows));
}

function queryResult(r) {
  if (typeof r.count === "number") {
    return el("p", { class: "result-count" }, `${r.count} matching span${r.count === 1 ? "" : "s"}.`);
  }
  if (Array.isArray(r.groups)) {
    return tableWrap(
      "Groups",
      table("Groups", ["Value", "Spans"], r.groups.map((g) => [g.key === null ? el("span", { class: "muted" }, "(none)") : String(g.key), String(g.count)])),
    );
  }
  const spans = Array.isArray(r.spans) ? r.spans : [];
  const caption = `Query results: ${spans.length} span${spans.length === 1 ? "" : "s"}${r.truncated ? " (more matched)" : ""}`;
  if (!spans.length) return el("p", { class: "muted" }, "The query matched no spans.");
  return spansTable(spans, caption);
}

function actionText(a) {
  if (!a || typeof a !== "object") return String(a);
  const { action, ...args } = a;
  const list = Object.entries(args).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`);
  return `${action}${list.length ? `(${list.join(", ")})` : ""}`;
}

/** explain_decision: the contract's versions and the law decisions on it, oldest first. */
export function decisionTimeline(r) {
  const items = [];
  for (const h of r.history || []) {
    items.push({
      at: h.at,
      order: 1,
      tone: h.state,
      node: el(
        "div",
        {},
        el("div", { class: "tl-head" }, time(h.at), " ", statusBadge(h.state)),
        el("p", {}, `${h.did || "changed"}`, h.who ? el("span", { class: "muted" }, ` — ${h.who}`) : null),
        el("p", { class: "tl-meta" }, spanLink(h.id, `contract version ${h.seq}`, h.seq), h.reason ? ` · reason: ${h.reason}` : ""),
      ),
    });
  }
  for (const d of r.decisions || []) {
    const law = d.law || {};
    items.push({
      at: d.at || d.scheduled_at,
      order: 0,
      tone: d.triage,
      node: el(
        "div",
        {},
        el("div", { class: "tl-head" }, time(d.at || d.scheduled_at), " ", statusBadge(d.triage), " ", el("strong", {}, "law decision")),
        el("p", {}, `Law ${law.name || "?"}${law.version ? ` ${law.version}` : ""} ruled `, el("strong", {}, d.triage || "?"),
          (d.actions || []).length ? `: ${(d.actions || []).map(actionText).join(", ")}` : ""),
        el("p", { class: "tl-meta" }, spanLink(d.id, "decision span"), " · ", law.id ? spanLink(law.id, `law span (seq ${law.seq})`, law.seq) : null,
          law.hash ? el("code", { class: "hash", title: law.hash }, ` ${law.hash.slice(0, 19)}…`) : null),
      ),
    });
  }
  items.sort((a, b) => String(a.at).localeCompare(String(b.at)) || a.order - b.order);
  const c = r.contract || {};
  return el(
    "div",
    { class: "decision" },
    el("p", {}, el("strong", {}, c.name || "Contract"), c.title ? ` — ${c.title}` : "", " ", c.state ? statusBadge(c.state) : null),
    el("ol", { class: "timeline", "aria-label": `History of ${c.name || "the contract"}` }, items.map((i) => el("li", { class: `tone-${i.tone || "neutral"}` }, i.node))),
  );
}

function simulateResult(r) {
  const changes = r.changes || [];
  const law = r.law || {};
  return el(
    "div",
    {},
    el("p", {}, `Simulated law ${law.name || "?"} with ${Object.entries(r.set || {}).map(([k, v]) => `${k} = ${v}`).join(", ") || "no changes"} over ${r.evaluated ?? "?"} contracts. Nothing was written.`),
    changes.length
      ? tableWrap("Triage changes", table("Contracts whose triage would change", ["Contract", "From", "To"], changes.map((ch) => [spanLink(ch.id || ch.contract_id, ch.name), statusBadge(ch.from), statusBadge(ch.to)])))
      : el("p", { class: "muted" }, "No contract would change."),
  );
}

/** A before → after table for an amendment proposal. */
export function diffTable(before = {}, after = {}) {
  const keys = [...new Set([...Object.keys(before || {}), ...Object.keys(after || {})])];
  return tableWrap(
    "Proposed change",
    table("Proposed change", ["Field", "Now", "Proposed"], keys.map((k) => [el("code", {}, k), fmtValue(before[k]), fmtValue(after[k])])),
  );
}

function fmtValue(v) {
  if (v === null || v === undefined) return el("span", { class: "muted" }, "—");
  if (typeof v === "string" && /^\d{4}-\d\d-\d\dT/.test(v)) return time(v);
  if (typeof v === "object") return el("code", {}, JSON.stringify(v));
  return String(v);
}

const TITLES = {
  query_ledger: "Query results",
  explain_decision: "Decision history",
  simulate_law: "Simulation",
  get_span: "Span",
  propose_amendment: "Proposed amendment",
};

/** One tool result of a chat turn. `propose_amendment` is drawn by the chat itself. */
export function toolResult(tr) {
  const title = TITLES[tr.name] || `Tool ${tr.name}`;
  let body;
  if (!tr.ok) {
    const why = (tr.result && (tr.result.error || tr.result.detail || tr.result.message)) || "it returned an error";
    body = el("p", { class: "notice warn" }, `The ${tr.name} step failed: ${typeof why === "string" ? why : JSON.stringify(why)}`);
  } else if (tr.name === "query_ledger") {
    body = queryResult(tr.result || {});
  } else if (tr.name === "explain_decision") {
    body = decisionTimeline(tr.result || {});
  } else if (tr.name === "simulate_law") {
    body = simulateResult(tr.result || {});
  } else if (tr.name === "get_span" && tr.result && isUuid(tr.result.id)) {
    const s = tr.result;
    body = el("p", {}, spanLink(s.id, `${s.entity_type || "span"} ${s.name || shortId(s.id)}`), s.did ? ` — ${s.who || ""} ${s.did}` : "");
  } else {
    body = el("details", {}, el("summary", {}, "Raw result"), jsonBlock(tr.result));
  }
  return el("section", { class: `tool tool-${tr.name}`, "aria-label": title }, el("h3", { class: "tool-title" }, title), body);
}

/** Answer text as paragraphs and bullet lists, with `code` spans. */
export function prose(text) {
  const out = [];
  let list = null;
  for (const line of String(text).split("\n")) {
    const item = /^\s*[-*•]\s+(.*)$/.exec(line);
    if (item) {
      if (!list) out.push((list = el("ul")));
      list.append(el("li", {}, inline(item[1])));
      continue;
    }
    list = null;
    if (line.trim()) out.push(el("p", {}, inline(line)));
  }
  return out;
}

function inline(s) {
  return s.split(/(`[^`]+`)/).map((part) => (part.length > 2 && part.startsWith("`") && part.endsWith("`") ? el("code", {}, part.slice(1, -1)) : part));
}

/** The `text` field of a JSON answer that is still arriving, decoded as far as it goes. */
export function partialText(raw) {
  const m = /"text"\s*:\s*"/.exec(raw);
  if (!m) return "";
  let out = "";
  for (let i = m.index + m[0].length; i < raw.length; i++) {
    const c = raw[i];
    if (c === '"') break;
    if (c !== "\\") {
      out += c;
      continue;
    }
    const n = raw[i + 1];
    if (n === undefined) break;
    if (n === "u") {
      const hex = raw.slice(i + 2, i + 6);
      if (hex.length < 4) break;
      out += String.fromCharCode(parseInt(hex, 16));
      i += 5;
      continue;
    }
    out += { n: "\n", t: "\t", r: "", b: "", f: "" }[n] ?? n;
    i += 1;
  }
  return out;
}
