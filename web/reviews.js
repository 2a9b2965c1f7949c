// Escalations, /reviews: answers given with low confidence wait for a reviewer, who approves
// (their held proposals may then be confirmed) or rejects them (held proposals are rejected).

import { api, el, sentence, time, spanLink, shortId, initChrome, Problem } from "./common.js";
import { statusBadge, prose } from "./render.js";

initChrome();

const box = document.getElementById("reviews");
const statusBox = document.getElementById("reviews-status");
const select = document.getElementById("review-status");

const wanted = new URLSearchParams(location.search).get("status");
if (wanted && [...select.options].some((o) => o.value === wanted)) select.value = wanted;

function card(r) {
  const c = r.content || {};
  const answer = c.answer || {};
  const result = el("div", { class: "review-result", role: "status" });
  const section = el(
    "article",
    { class: "card review", "aria-labelledby": `q-${r.id}` },
    el("div", { class: "span-item-head" }, statusBadge(r.status), " ", time(r.at), " ", el("span", { class: "muted" }, `asked by ${r.who || r.owner_id || "?"}`)),
    el("h2", { id: `q-${r.id}`, class: "review-question" }, c.question ? `“${c.question}”` : `Escalation ${shortId(r.id)}`),
    answer.text || answer.error ? el("blockquote", {}, prose(answer.text || answer.error)) : null,
    el(
      "p",
      { class: "muted small" },
      typeof c.confidence === "number" ? `Confidence ${Math.round(c.confidence * 100)}% (below ${Math.round((c.threshold ?? 0.6) * 100)}%). ` : "",
      (c.proposals || []).length ? `${c.proposals.length} proposal${c.proposals.length === 1 ? "" : "s"} held. ` : "",
      spanLink(r.id, "Escalation span"),
      c.run_id ? [" · ", spanLink(c.run_id, "the turn")] : "",
    ),
    result,
  );
  if (r.status === "open") {
    const noteId = `note-${r.id}`;
    const note = el("textarea", { id: noteId, rows: "2", maxlength: "2000" });
    const buttons = [];
    const decide = async (decision) => {
      for (const b of buttons) b.disabled = true;
      try {
        const out = await api(`/api/reviews/${r.id}`, { method: "POST", body: { decision, ...(note.value.trim() ? { note: note.value.trim() } : {}) } });
        form.remove();
        result.replaceChildren(
          el("p", { class: `notice ${out.status === "approved" ? "good" : "bad"}`, tabindex: "-1" }, `${out.status === "approved" ? "Approved" : "Rejected"}. `,
            out.proposals && out.proposals.length ? `${out.proposals.length} proposal${out.proposals.length === 1 ? "" : "s"} ${out.status === "approved" ? "may now be confirmed" : "rejected"}. ` : "",
            spanLink(out.review_id, "Review record")),
        );
        result.querySelector(".notice").focus();
      } catch (e) {
        for (const b of buttons) b.disabled = false;
        result.replaceChildren(el("p", { class: "notice bad" }, sentence(e)));
      }
    };
    buttons.push(
      el("button", { type: "button", class: "secondary danger", onclick: () => decide("reject") }, "Reject"),
      el("button", { type: "button", class: "primary", onclick: () => decide("approve") }, "Approve"),
    );
    const form = el("div", { class: "review-form" }, el("label", { for: noteId }, "Note (optional)"), note, el("div", { class: "dialog-actions" }, buttons));
    section.append(form);
  }
  return section;
}

async function load() {
  statusBox.replaceChildren(el("p", { class: "muted" }, "Loading…"));
  try {
    const r = await api(`/api/reviews?status=${encodeURIComponent(select.value)}`);
    const reviews = r.reviews || [];
    statusBox.replaceChildren(el("p", { class: "muted" }, reviews.length ? `${reviews.length} escalation${reviews.length === 1 ? "" : "s"}.` : "Nothing to review here."));
    box.replaceChildren(...reviews.map(card));
  } catch (e) {
    box.replaceChildren();
    const text = e instanceof Problem && e.status === 403 ? "Only reviewers and administrators can see escalations." : sentence(e);
    statusBox.replaceChildren(el("p", { class: "notice bad" }, text));
  }
}

select.addEventListener("change", () => {
  history.replaceState(null, "", `/reviews?status=${select.value}`);
  load();
});
window.addEventListener("logline:signed-in", load);
load();
