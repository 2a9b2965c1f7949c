// /evals: recent evaluation runs, pass rates per variant and per case, every prompt version
// with its state (active, candidate, rejected…), and the prompt bandit's current
// probabilities per variant as a bar chart (GET /api/variants; an empty state when the
// server has none).

import { api, el, sentence, time, spanLink, shortId, initChrome } from "./common.js";

initChrome();

const statusBox = document.getElementById("evals-status");
const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  for (const c of children) node.append(c);
  return node;
}

const pct = (x) => (typeof x === "number" && Number.isFinite(x) ? `${Math.round(x * 100)}%` : "–");

function table(columns, rows, empty) {
  if (!rows.length) return el("p", { class: "muted empty" }, empty);
  return el(
    "table",
    {},
    el("thead", {}, el("tr", {}, columns.map((c) => el("th", { scope: "col" }, c.title)))),
    el("tbody", {}, rows.map((r) => el("tr", {}, columns.map((c) => el("td", {}, c.cell(r)))))),
  );
}

const STATE_CLASS = { active: "good", rejected: "bad", candidate: "warn" };

function badge(text, kind) {
  return el("span", { class: `badge ${kind || ""}`.trim() }, text);
}

/** Bars of the bandit's probability per variant, as inline SVG (no chart library). */
export function chart(variants) {
  const rowH = 28;
  const labelW = 120;
  const barW = 360;
  const width = labelW + barW + 60;
  const height = variants.length * rowH + 8;
  const root = svg("svg", {
    viewBox: `0 0 ${width} ${height}`,
    width: "100%",
    role: "img",
    "aria-label": `Probability of each variant: ${variants.map((v) => `${v.name} ${pct(v.probability)}`).join(", ")}`,
    class: "bandit-chart",
  });
  variants.forEach((v, i) => {
    const y = i * rowH + 4;
    const p = Math.max(0, Math.min(1, Number(v.probability) || 0));
    const label = svg("text", { x: 0, y: y + 17, class: "bar-label" });
    label.textContent = v.name + (v.dropped ? " (dropped)" : v.eligible === false ? " (not eligible)" : "");
    const track = svg("rect", { x: labelW, y, width: barW, height: rowH - 8, rx: 3, class: "bar-track" });
    const bar = svg("rect", { x: labelW, y, width: Math.max(1, p * barW), height: rowH - 8, rx: 3, class: v.dropped ? "bar bar-dropped" : "bar" });
    bar.append(svg("title", {}, `${v.name}: ${pct(p)} (${v.samples ?? 0} samples, mean reward ${typeof v.mean_reward === "number" ? v.mean_reward.toFixed(2) : "–"})`));
    const value = svg("text", { x: labelW + barW + 8, y: y + 17, class: "bar-value" });
    value.textContent = pct(p);
    root.append(label, track, bar, value);
  });
  return root;
}

async function loadBandit() {
  const box = document.getElementById("bandit");
  try {
    const data = await api("/api/variants");
    const variants = Array.isArray(data && data.variants) ? data.variants : [];
    if (!variants.length) {
      box.replaceChildren(el("p", { class: "muted empty" }, "The prompt bandit has no variants to choose between yet."));
      return;
    }
    box.replaceChildren(
      chart(variants),
      data.promoted ? el("p", { class: "muted small" }, "Promoted: ", typeof data.promoted === "string" ? data.promoted : (data.promoted.name || data.promoted.variant || JSON.stringify(data.promoted))) : "",
      table(
        [
          { title: "Variant", cell: (v) => v.name },
          { title: "Probability", cell: (v) => pct(v.probability) },
          { title: "Samples", cell: (v) => String(v.samples ?? 0) },
          { title: "Mean reward", cell: (v) => (typeof v.mean_reward === "number" ? v.mean_reward.toFixed(2) : "–") },
          { title: "Beta(α, β)", cell: (v) => `${Number(v.alpha ?? 0).toFixed(1)}, ${Number(v.beta ?? 0).toFixed(1)}` },
          { title: "State", cell: (v) => (v.dropped ? badge("dropped", "bad") : v.eligible === false ? badge("not eligible", "warn") : badge("eligible", "good")) },
        ],
        variants,
        "",
      ),
    );
  } catch (e) {
    if (e && e.status === 404) {
      box.replaceChildren(el("p", { class: "muted empty" }, "No variant probabilities: this server does not run the prompt bandit."));
    } else {
      box.replaceChildren(el("p", { class: "notice bad" }, `Variant probabilities could not be loaded: ${sentence(e)}`));
    }
  }
}

function render(data) {
  document.getElementById("variants").replaceChildren(
    table(
      [
        { title: "Variant", cell: (v) => v.variant },
        { title: "Pass rate", cell: (v) => pct(v.pass_rate) },
        { title: "Cases passed", cell: (v) => `${v.passed} / ${v.cases}` },
        { title: "Runs", cell: (v) => String(v.runs) },
      ],
      data.variants || [],
      "No finished evaluation runs yet.",
    ),
  );
  document.getElementById("candidates").replaceChildren(
    table(
      [
        { title: "Kind", cell: (c) => c.kind },
        { title: "Name", cell: (c) => c.name },
        { title: "Version", cell: (c) => spanLink(c.id, `seq ${c.seq}`, c.seq) },
        { title: "State", cell: (c) => badge(c.state, STATE_CLASS[c.state]) },
        {
          title: "Evaluation",
          cell: (c) => [
            (Array.isArray(c.pass_rates) ? c.pass_rates : []).map((r) => `${r.suite}/${r.variant} ${pct(r.pass_rate)}`).join(", "),
            typeof c.problem === "string" ? ` ${c.problem}` : "",
            Array.isArray(c.failing_cases) && c.failing_cases.length ? el("div", { class: "muted small" }, `failing: ${c.failing_cases.map((f) => f.case).join(", ")}`) : "",
          ],
        },
        { title: "Decision", cell: (c) => (c.decision ? [spanLink(c.decision, shortId(c.decision)), " ", time(c.decided_at)] : el("span", { class: "muted" }, "awaiting evaluation")) },
      ],
      data.candidates || [],
      "No prompt versions in this ledger.",
    ),
  );
  document.getElementById("runs").replaceChildren(
    table(
      [
        { title: "When", cell: (r) => time(r.at) },
        { title: "Suite", cell: (r) => r.suite || "?" },
        { title: "Variant", cell: (r) => r.variant || "?" },
        { title: "Provider / model", cell: (r) => `${r.provider || "?"} / ${r.model || "?"}` },
        { title: "Pass rate", cell: (r) => (r.status === "running" ? badge("running") : [badge(pct(r.pass_rate), r.status === "passed" ? "good" : "bad"), ` ${r.passed ?? 0}/${r.cases ?? 0}`]) },
        { title: "By", cell: (r) => r.by || "?" },
        { title: "Run", cell: (r) => spanLink(r.eval_run, shortId(r.eval_run)) },
      ],
      data.runs || [],
      "No evaluation runs you can see yet. Run `logline eval evals/suites/happy.yaml` or propose a prompt.",
    ),
  );
  document.getElementById("cases").replaceChildren(
    table(
      [
        { title: "Suite", cell: (c) => c.suite },
        { title: "Case", cell: (c) => c.case },
        { title: "Variant", cell: (c) => c.variant },
        { title: "Pass rate", cell: (c) => badge(pct(c.pass_rate), c.pass_rate === 1 ? "good" : c.pass_rate === 0 ? "bad" : "warn") },
        { title: "Attempts", cell: (c) => `${c.passed} / ${c.attempts}` },
      ],
      data.cases || [],
      "No evaluated cases yet.",
    ),
  );
}

async function load() {
  statusBox.replaceChildren(el("p", { class: "muted" }, "Loading…"));
  try {
    const [data] = await Promise.all([api("/api/evals"), loadBandit()]);
    render(data);
    statusBox.replaceChildren();
  } catch (e) {
    statusBox.replaceChildren(el("p", { class: "notice bad" }, sentence(e)));
  }
}

document.getElementById("evals-refresh").addEventListener("click", load);
load();
