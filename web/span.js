// The span page, /spans/{id}[?seq=N]: every field of one span version, its seal (chain position,
// previous and current hash, signature) and whether it verifies, and all of its versions.

import { api, el, sentence, time, spanLink, shortId, isUuid, initChrome } from "./common.js";
import { jsonBlock, statusBadge, tableWrap } from "./render.js";
import { checkInclusion, toBase64 } from "./merkle.js";

initChrome();

const view = document.getElementById("span-view");
const id = decodeURIComponent(location.pathname.replace(/^\/spans\//, "").replace(/\/$/, ""));
const seqParam = new URLSearchParams(location.search).get("seq");

const LOGLINE = ["who", "did", "this", "at", "when", "confirmed_by", "if_ok", "if_doubt", "if_not", "status"];
const ENVELOPE = ["id", "seq", "entity_type", "tenant_id", "owner_id", "visibility", "recorded_at", "trace_id", "parent_id", "related_to", "idempotency_key", "duration_ms", "declared_status", "ghost_reason", "redacted_by"];
const SEAL = ["chain_pos", "prev_hash", "curr_hash", "body_digest", "public_key", "signature", "client_public_key", "client_signature", "client_digest"];
const LABELS = {
  who: "Who", did: "Did", this: "This", at: "When", when: "When (as written)", confirmed_by: "Confirmed by",
  if_ok: "If ok", if_doubt: "If doubt", if_not: "If not", status: "Status",
  id: "Id", seq: "Version (seq)", entity_type: "Type", tenant_id: "Tenant", owner_id: "Owner", visibility: "Visibility",
  recorded_at: "Recorded", trace_id: "Trace", parent_id: "Parent", related_to: "Related to", idempotency_key: "Idempotency key",
  duration_ms: "Duration (ms)", declared_status: "Declared status", ghost_reason: "Ghost because", redacted_by: "Redacted by", chain_pos: "Chain position", prev_hash: "Previous hash", curr_hash: "Current hash",
  body_digest: "Body digest", public_key: "Signing key", signature: "Signature", client_public_key: "Client key",
  client_signature: "Client signature", client_digest: "Client digest",
};

function value(k, v) {
  if (v === null || v === undefined || v === "") return el("span", { class: "muted" }, "—");
  if ((k === "at" || k === "recorded_at") && typeof v === "string") return el("span", {}, time(v), el("br"), el("code", { class: "small" }, v));
  if (k === "status") return statusBadge(v);
  if ((k === "parent_id" || k === "redacted_by") && isUuid(v)) return spanLink(v, v);
  if (k === "related_to" && Array.isArray(v)) return v.length ? el("ul", { class: "plain" }, v.map((x) => el("li", {}, spanLink(x, x)))) : el("span", { class: "muted" }, "none");
  if (SEAL.includes(k) || k === "id" || k === "trace_id") return el("code", { class: "hash" }, String(v));
  if (typeof v === "object") return jsonBlock(v);
  return String(v);
}

function fields(title, keys, span, idAttr) {
  const present = keys.filter((k) => k in span);
  if (!present.length) return null;
  return el(
    "section",
    { class: "card", "aria-labelledby": idAttr },
    el("h2", { id: idAttr }, title),
    el("dl", { class: "fields" }, present.map((k) => [el("dt", { "data-field": k }, LABELS[k] || k), el("dd", { "data-field": k }, value(k, span[k]))])),
  );
}

function verifyPanel(seal) {
  if (!seal) return el("p", { class: "verify unknown", id: "verify" }, "Could not check the seal of this span.");
  if (seal.verified) {
    return el("p", { class: "verify good", id: "verify" }, el("span", { "aria-hidden": "true" }, "✓ "),
      el("strong", {}, "Hash and signature verify."), " The stored envelope hashes to its current hash, and a key the manifest trusts signed it.");
  }
  return el("div", { class: "verify bad", id: "verify" },
    el("p", {}, el("span", { "aria-hidden": "true" }, "✗ "), el("strong", {}, "This span does not verify."),
      ` Hash: ${seal.hash_ok ? "verifies" : "does not verify"}. Signature: ${seal.signature_ok ? "verifies" : "does not verify"}.`),
    seal.detail ? el("p", { class: "small" }, seal.detail) : null);
}

/** Which checkpoint includes the span, and whether its proof verifies — checked here, in the
 * browser (SHA-256 and, where supported, Ed25519 via Web Crypto), not taken from the server. */
async function proofPanel(doc, currHash) {
  const panel = (cls, ...kids) => el("section", { class: "card", id: "proof", "aria-labelledby": "h-proof" },
    el("h2", { id: "h-proof" }, "Checkpoint"), el("p", { class: `verify ${cls}` }, ...kids));
  if (!doc) return panel("unknown", "No signed checkpoint could be fetched for this span.");
  let r;
  try {
    r = await checkInclusion(doc, currHash);
  } catch (e) {
    return panel("bad", el("strong", {}, "The inclusion proof could not be read. "), String(e.message || e));
  }
  const cp = r.checkpoint;
  const where = [" Leaf ", el("strong", {}, String(doc.leaf_index)), " of checkpoint ", el("code", {}, cp.origin),
    ` (${cp.size} spans, root `, el("code", { class: "hash" }, toBase64(cp.root)), ")."];
  if (!r.ok) return panel("bad", el("span", { "aria-hidden": "true" }, "✗ "), el("strong", {}, "The inclusion proof does not verify: "), r.reason, ...where);
  return panel("good", el("span", { "aria-hidden": "true" }, "✓ "),
    el("strong", {}, "Included in a signed checkpoint."), ...where,
    r.signed === true ? " Proof and Ed25519 signature checked in this browser." : " Proof checked in this browser; this browser cannot check Ed25519 signatures (run `logline proof verify`).");
}

function versionsTable(versions, current) {
  return tableWrap(
    "Versions",
    el(
      "table",
      {},
      el("caption", {}, `${versions.length} version${versions.length === 1 ? "" : "s"}, oldest first`),
      el("thead", {}, el("tr", {}, ["Seq", "Chain position", "When", "Status", "Did", "Hash"].map((h) => el("th", { scope: "col" }, h)))),
      el(
        "tbody",
        {},
        versions.map((v) =>
          el(
            "tr",
            { "aria-current": v.seq === current ? "true" : null, class: v.seq === current ? "current" : null },
            el("td", {}, v.seq === current ? el("strong", {}, `${v.seq} (shown)`) : spanLink(v.id, `version ${v.seq}`, v.seq)),
            el("td", {}, String(v.chain_pos)),
            el("td", {}, time(v.at)),
            el("td", {}, statusBadge(v.status)),
            el("td", {}, v.did || ""),
            el("td", {}, el("code", { class: "hash", title: v.curr_hash }, `${String(v.curr_hash).slice(0, 19)}…`)),
          ),
        ),
      ),
    ),
  );
}

async function load() {
  if (!isUuid(id)) {
    view.replaceChildren(el("h1", {}, "Not a span id"), el("p", { class: "notice bad" }, `“${id}” is not a span id. Span ids look like 01a23243-5684-7134-9c06-10aa0a295017.`));
    return;
  }
  const q = seqParam !== null ? `?seq=${encodeURIComponent(seqParam)}` : "";
  let span;
  try {
    span = await api(`/api/spans/${id}${q}`);
  } catch (e) {
    view.replaceChildren(el("h1", {}, "Span not shown"), el("p", { class: "notice bad", role: "alert" }, sentence(e)));
    return;
  }
  const [versions, seal, proof] = await Promise.all([
    api(`/api/spans/${id}/versions`).then((v) => v.versions).catch(() => null),
    api(`/api/spans/${id}/verify${q}`).catch(() => null),
    api(`/api/spans/${id}/proof${q}`).catch(() => null),
  ]);
  const checkpoint = await proofPanel(proof, span.curr_hash);
  const redacted = span.redacted === true || isUuid(span.redacted_by) || (span.content && span.content.redacted === true && Object.keys(span.content).length === 1);
  const latest = versions && versions.length ? versions[versions.length - 1].seq : span.seq;
  const title = span.name || (span.content && span.content.name) || span.this || shortId(span.id);
  const known = new Set([...LOGLINE, ...ENVELOPE, ...SEAL, "redacted", "integrity_warning"]);
  const other = Object.fromEntries(Object.entries(span).filter(([k]) => !known.has(k)));
  document.title = `${span.entity_type} ${title} · LogLine`;

  const parts = [
    el("p", { class: "eyebrow" }, "Span ", el("code", {}, span.id)),
    el("h1", {}, el("span", { class: "h-type" }, span.entity_type), " ", title),
    el("p", { class: "muted" }, `Version ${span.seq}${span.seq === latest ? " (latest)" : ` of ${latest + 1}: `}`,
      span.seq === latest ? "" : spanLink(span.id, "see the latest"), " · chain position ", el("strong", {}, String(span.chain_pos)), " · ", statusBadge(span.status)),
    redacted
      ? el("p", { class: "notice warn", id: "redacted" }, el("strong", {}, "This span was redacted. "),
        "Its content is withheld; its envelope, hash and signature remain, so the chain still verifies.")
      : null,
    typeof span.integrity_warning === "string"
      ? el("p", { class: "notice warn", id: "integrity" }, el("strong", {}, "Integrity warning. "), span.integrity_warning)
      : null,
    verifyPanel(seal),
    checkpoint,
    fields("What happened", LOGLINE, span, "h-logline"),
    fields("Seal", SEAL, span, "h-seal"),
    fields("Envelope", ENVELOPE, span, "h-envelope"),
    Object.keys(other).length
      ? el("section", { class: "card", "aria-labelledby": "h-content" }, el("h2", { id: "h-content" }, redacted ? "Content (withheld)" : "Content"),
        el("dl", { class: "fields" }, Object.entries(other).map(([k, v]) => [el("dt", { "data-field": k }, k), el("dd", { "data-field": k }, typeof v === "object" && v !== null ? jsonBlock(v) : String(v))])))
      : null,
    el("section", { class: "card", "aria-labelledby": "h-versions" }, el("h2", { id: "h-versions" }, "Versions"),
      versions ? versionsTable(versions, span.seq) : el("p", { class: "muted" }, "The versions could not be read.")),
  ];
  view.replaceChildren(...parts.filter(Boolean));
}

window.addEventListener("logline:signed-in", load);
load();
