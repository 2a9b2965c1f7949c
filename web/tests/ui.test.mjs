// The web UI in a real headless Chromium against the real `logline serve` on demo data.
// Run with scripts/ui-test.sh (which installs Chromium and playwright-core first).

import { test, before, after, describe } from "node:test";
import assert from "node:assert/strict";
import { startServer, launchBrowser, watchedPage, shot, apiCall, logline } from "./harness.mjs";

const T = { timeout: 90_000 };
const ANSWER = 'article.msg.assistant[aria-busy="false"]';

let demo;
let browser;

before(async () => {
  demo = await startServer({ seed: true, args: ["--tenant", "demo", "--as", "ana@padaria-lisboa.pt"] });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await demo?.stop();
});

async function desktop() {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await watchedPage(context, demo.base);
  return { context, page };
}

/** Types a question into the chat and waits for the nth finished answer. */
async function ask(page, question, nth = 0) {
  await page.getByRole("textbox", { name: "Message" }).fill(question);
  await page.getByRole("button", { name: "Send" }).click();
  const answer = page.locator(ANSWER).nth(nth);
  await answer.waitFor({ timeout: 30_000 });
  return answer;
}

describe("the web UI", () => {
  test("pages are served from the binary with a strict Content-Security-Policy", T, async () => {
    for (const p of ["/", "/timeline", "/reviews", "/spans/01a23243-5684-7134-9c06-10aa0a295017"]) {
      const r = await apiCall(demo.base, p);
      assert.equal(r.status, 200, p);
      assert.match(r.headers.get("content-type"), /^text\/html; charset=utf-8/, p);
      const csp = r.headers.get("content-security-policy");
      assert.match(csp, /default-src 'none'/, p);
      assert.match(csp, /script-src 'self'/, p);
      assert.match(csp, /connect-src 'self'/, p);
      assert.equal(r.headers.get("x-content-type-options"), "nosniff");
    }
    const css = await apiCall(demo.base, "/assets/app.css");
    assert.match(css.headers.get("content-type"), /^text\/css/);
    const js = await apiCall(demo.base, "/assets/chat.js");
    assert.match(js.headers.get("content-type"), /^text\/javascript/);
    const missing = await apiCall(demo.base, "/assets/nothing.js");
    assert.equal(missing.status, 404);
    assert.match(missing.headers.get("content-type"), /^application\/problem\+json/);
    const api404 = await apiCall(demo.base, "/api/nothing");
    assert.equal(api404.status, 404, "unknown API routes still answer with a problem document");
  });

  test("a question is answered with a citation that leads to the law.decision span and its hash", T, async () => {
    const { context, page } = await desktop();
    await page.goto(demo.base + "/");
    const answer = await ask(page, "why was D1 terminated?");
    await assert.doesNotReject(answer.getByText(/was terminated/).first().waitFor());
    // The text was shown piece by piece from `delta` events before the final `answer` event.
    assert.ok(Number(await answer.getAttribute("data-streamed")) >= 2, "the answer streamed in");
    await answer.locator(".confidence").getByText("90%").waitFor();
    // The decision history renders as a small timeline: three contract versions and the decision.
    assert.equal(await answer.locator("ol.timeline > li").count(), 4);
    const citation = answer.locator(".sources a", { hasText: "law.decision" });
    await citation.waitFor();
    await page.keyboard.press("End");
    await shot(page, "chat-answer-desktop");

    const href = await citation.getAttribute("href");
    const id = href.replace("/spans/", "");
    const api = await apiCall(demo.base, `/api/spans/${id}`);
    assert.equal(api.json.entity_type, "law.decision");

    await citation.click();
    await page.waitForURL(`**/spans/${id}`);
    await page.getByRole("heading", { level: 1, name: /law\.decision/ }).waitFor();
    await page.getByText("Hash and signature verify.").waitFor();
    // The checkpoint that includes it, with the inclusion proof checked in the browser.
    await page.locator("#proof").getByText("Included in a signed checkpoint.").waitFor();
    assert.match(await page.locator("#proof").textContent(), /of checkpoint logline\/[0-9a-f]{16}\//);
    const hash = await page.locator('dd[data-field="curr_hash"]').textContent();
    assert.equal(hash, api.json.curr_hash);
    assert.equal(await page.locator('dd[data-field="prev_hash"]').textContent(), api.json.prev_hash);
    assert.equal(await page.locator('dd[data-field="chain_pos"]').textContent(), String(api.json.chain_pos));
    await page.getByRole("table", { name: /1 version/ }).waitFor();
    await shot(page, "span-law-decision", { fullPage: true });
    page.checkClean();
    await context.close();
  });

  test("a query result renders as a table, a simulation as a list of changes, and a follow-up question can be asked with one click", T, async () => {
    const { context, page } = await desktop();
    await page.goto(demo.base + "/");
    const answer = await ask(page, "show me contracts where the guarantor didn't respond in 24h");
    const table = answer.getByRole("table", { name: /Query results: 1 span/ });
    await table.waitFor();
    await table.getByRole("link", { name: "D3" }).waitFor();
    const sim = await ask(page, "what if the quorum were 3?", 1);
    await sim.getByRole("table", { name: /triage would change/ }).getByRole("link", { name: "D5" }).waitFor();
    await answer.evaluate((n) => n.scrollIntoView());
    await shot(page, "chat-table");
    // A follow-up question is a button that asks it.
    const help = await ask(page, "hello", 2);
    await help.getByRole("button", { name: /Why was D1 terminated/ }).click();
    const followed = page.locator(ANSWER).nth(3);
    await followed.waitFor({ timeout: 30_000 });
    await followed.locator(".sources a", { hasText: "law.decision" }).waitFor();
    assert.equal(await page.locator(".msg.user").nth(3).locator("p").last().textContent(), "Why was D1 terminated?");
    page.checkClean();
    await context.close();
  });

  test("an amendment is proposed, confirmed, and the new contract state is shown with its span", T, async () => {
    const { context, page } = await desktop();
    await page.goto(demo.base + "/");
    await ask(page, "extend the deadline for D1 by 3 days");
    const dialog = page.getByRole("dialog", { name: "Confirm amendment" });
    await dialog.waitFor();
    await dialog.getByRole("table", { name: "Proposed change" }).waitFor();
    await shot(page, "amendment-confirm");
    await dialog.getByRole("button", { name: "Confirm" }).click();
    await dialog.waitFor({ state: "hidden" });
    const applied = page.locator(".proposal-state");
    await applied.getByText("Applied.").waitFor();
    assert.match(await applied.textContent(), /D1 is now\s*active/);
    const link = applied.getByRole("link", { name: /Contract D1 version 3/ });
    const href = await link.getAttribute("href");
    const [, cid] = /\/spans\/([^?]+)\?seq=3/.exec(href);
    const contract = await apiCall(demo.base, `/api/spans/${cid}`);
    assert.equal(contract.json.seq, 3);
    assert.equal(contract.json.content.state, "active");
    await shot(page, "amendment-applied");
    await link.click();
    await page.waitForURL(`**/spans/${cid}?seq=3`);
    await page.getByText("Version 3 (latest)").waitFor();
    await page.getByRole("table", { name: /4 versions/ }).waitFor();
    await shot(page, "span-contract-amended", { fullPage: true });
    page.checkClean();
    await context.close();
  });

  test("a new span appears live on the timeline, and filters apply to the stream", T, async () => {
    const { context, page } = await desktop();
    await page.goto(demo.base + "/timeline");
    await page.locator('#live[data-state="live"]').waitFor();
    await page.locator("li.span-item").first().waitFor();
    const stamp = `ui-test ${Date.now()}`;
    const posted = await apiCall(demo.base, "/api/spans", {
      method: "POST",
      body: { entity_type: "ui_note", who: "ana@padaria-lisboa.pt", did: "wrote a note", this: stamp, when: new Date().toISOString(), confirmed_by: "ana", if_ok: "keep", if_doubt: "ask", if_not: "drop", status: "valid", visibility: "tenant" },
    });
    assert.equal(posted.status, 201, posted.text);
    const fresh = page.locator("li.span-item.fresh", { hasText: stamp });
    await fresh.waitFor({ timeout: 10_000 });
    assert.equal(await page.locator("li.span-item").first().getAttribute("data-id"), posted.json.id, "the new span is on top");
    await shot(page, "timeline-live");

    // Filter to one type: the list and the stream both follow it.
    await page.getByLabel("Type").fill("ui_note");
    await page.getByRole("button", { name: "Apply filters" }).click();
    await page.waitForURL("**/timeline?entity_type=ui_note");
    await page.locator('#live[data-state="live"]').waitFor();
    await page.locator("li.span-item", { hasText: stamp }).waitFor();
    assert.equal(await page.locator("li.span-item").count(), 1);
    const other = await apiCall(demo.base, "/api/spans", { method: "POST", body: { entity_type: "other_note", who: "ana", did: "noted", this: "not shown", status: "valid" } });
    assert.equal(other.status, 201);
    const second = await apiCall(demo.base, "/api/spans", { method: "POST", body: { entity_type: "ui_note", who: "ana", did: "noted again", this: `${stamp} second`, status: "valid" } });
    assert.equal(second.status, 201);
    await page.locator("li.span-item", { hasText: `${stamp} second` }).waitFor({ timeout: 10_000 });
    assert.equal(await page.locator("li.span-item", { hasText: "not shown" }).count(), 0);
    assert.equal(await page.locator("li.span-item").count(), 2);
    page.checkClean();
    await context.close();
  });

  test("the chat works from the keyboard alone, and the memory toggle is sent with the message", T, async () => {
    const { context, page } = await desktop();
    const memory = [];
    page.on("request", (r) => {
      if (r.url().endsWith("/api/chat") && r.method() === "POST") memory.push(r.headers()["x-logline-memory"]);
    });
    await page.goto(demo.base + "/");
    // The message box has focus on arrival; the memory toggle is reached with Tab.
    assert.equal(await page.evaluate(() => document.activeElement.id), "message");
    await page.keyboard.press("Tab");
    assert.equal(await page.evaluate(() => document.activeElement.name), "memory");
    await page.keyboard.press("ArrowRight");
    assert.equal(await page.evaluate(() => document.activeElement.value), "session-only");
    await page.keyboard.press("Shift+Tab");
    assert.equal(await page.evaluate(() => document.activeElement.id), "message");
    await page.keyboard.type("why was D1 terminated?");
    await page.keyboard.press("Enter");
    const answer = page.locator(ANSWER).first();
    await answer.waitFor({ timeout: 30_000 });
    assert.deepEqual(memory, ["session-only"]);
    await answer.locator(".sources a", { hasText: "law.decision" }).waitFor();
    // Walk back from the message box to the law.decision citation and follow it with Enter.
    let found = false;
    for (let i = 0; i < 40 && !found; i++) {
      await page.keyboard.press("Shift+Tab");
      found = await page.evaluate(() => document.activeElement.matches(".sources a") && document.activeElement.textContent.includes("law.decision"));
    }
    assert.ok(found, "the citation is reachable with the keyboard");
    await shot(page, "keyboard-focus-citation");
    await page.keyboard.press("Enter");
    await page.waitForURL("**/spans/*");
    await page.getByText("Hash and signature verify.").waitFor();
    page.checkClean();
    await context.close();
  });

  test("an answer is rated with thumbs from the keyboard, shows it was recorded, and the vote can be changed", T, async () => {
    const { context, page } = await desktop();
    await page.goto(demo.base + "/");
    const answer = await ask(page, "why was D1 terminated?");
    const up = answer.getByRole("button", { name: "Helpful", exact: true });
    const down = answer.getByRole("button", { name: "Not helpful", exact: true });
    assert.equal(await up.getAttribute("aria-pressed"), "false");
    await up.focus();
    await page.keyboard.press("Enter");
    await answer.getByText("Recorded: helpful.").waitFor();
    assert.equal(await up.getAttribute("aria-pressed"), "true");
    await shot(page, "chat-feedback-up");
    // Tab from the thumbs up to the thumbs down and change the vote with Space.
    await page.keyboard.press("Tab");
    assert.equal(await page.evaluate(() => document.activeElement.getAttribute("aria-label")), "Not helpful");
    await page.keyboard.press(" ");
    await answer.getByText("Recorded: not helpful.").waitFor();
    assert.equal(await up.getAttribute("aria-pressed"), "false");
    assert.equal(await down.getAttribute("aria-pressed"), "true");
    // The server holds one vote per answer, the later one: two versions of one feedback span.
    const votes = await apiCall(demo.base, "/api/timeline?entity_type=feedback&order=desc&limit=100");
    assert.equal(votes.status, 200);
    const runLink = await answer.locator(".run-meta a").getAttribute("href");
    const mine = votes.json.spans.filter((v) => runLink.endsWith(v.content.run_id));
    assert.equal(mine.length, 2);
    assert.equal(new Set(mine.map((v) => v.id)).size, 1);
    assert.equal(mine[0].content.score, "down");
    page.checkClean();
    await context.close();
  });

  test("a low-confidence answer is escalated and a reviewer approves it on /reviews", T, async () => {
    const { context, page } = await desktop();
    await page.goto(demo.base + "/");
    const answer = await ask(page, "why was D9 terminated?");
    await answer.getByText(/sent to a reviewer/).waitFor();
    await answer.locator(".confidence.low").waitFor();
    await answer.getByRole("button", { name: /check the contract name/ }).waitFor();
    await page.getByRole("link", { name: "Open reviews" }).click();
    await page.waitForURL("**/reviews");
    const card = page.getByRole("article", { name: /why was D9 terminated/ });
    await card.waitFor();
    await card.getByLabel("Note (optional)").fill("No such contract; nothing to do.");
    await shot(page, "reviews-open", { fullPage: true });
    await card.getByRole("button", { name: "Approve" }).click();
    await card.getByText("Approved.").waitFor();
    const open = await apiCall(demo.base, "/api/reviews?status=open");
    assert.equal(open.json.reviews.length, 0);
    await page.getByLabel("Show").selectOption("approved");
    await page.getByRole("article", { name: /why was D9 terminated/ }).getByText("approved").waitFor();
    page.checkClean();
    await context.close();
  });

  test("the pages are readable at 375 px: nothing overflows sideways", T, async () => {
    const context = await browser.newContext({ viewport: { width: 375, height: 812 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true });
    const page = await watchedPage(context, demo.base);
    const noOverflow = async (what) => {
      const w = await page.evaluate(() => document.documentElement.scrollWidth);
      assert.ok(w <= 375, `${what} is ${w}px wide at a 375px viewport`);
    };
    await page.goto(demo.base + "/");
    await noOverflow("the empty chat");
    await shot(page, "phone-chat-empty");
    const answer = await ask(page, "why was D1 terminated?");
    await answer.locator(".sources a", { hasText: "law.decision" }).waitFor();
    await noOverflow("the chat with an answer");
    await answer.evaluate((n) => n.scrollIntoView());
    await shot(page, "phone-chat-answer");
    await page.keyboard.press("End");
    await answer.locator(".sources").evaluate((n) => n.scrollIntoView({ block: "center" }));
    await shot(page, "phone-chat-sources");
    await answer.locator(".sources a", { hasText: "law.decision" }).click();
    await page.getByText("Hash and signature verify.").waitFor();
    await noOverflow("the span page");
    await shot(page, "phone-span");
    await page.getByRole("heading", { name: "Versions" }).evaluate((n) => n.scrollIntoView());
    await shot(page, "phone-span-versions");
    await page.goto(demo.base + "/timeline");
    await page.locator("li.span-item").first().waitFor();
    await noOverflow("the timeline");
    await shot(page, "phone-timeline");
    page.checkClean();
    await context.close();
  });

  test("a redacted or unknown span says so in plain words", T, async () => {
    const { context, page } = await desktop();
    const posted = await apiCall(demo.base, "/api/spans", {
      method: "POST",
      body: { entity_type: "ui_note", who: "ana@padaria-lisboa.pt", did: "wrote something private", this: "a secret recipe", status: "valid" },
    });
    assert.equal(posted.status, 201);
    logline(["--data-dir", demo.dir, "--tenant", "demo", "--as", "ana@padaria-lisboa.pt", "redact", posted.json.id, "--reason", "the user asked"]);
    await page.goto(`${demo.base}/spans/${posted.json.id}`);
    await page.getByText("This span was redacted.").waitFor();
    // The envelope still verifies; the withheld content is not shown.
    await page.getByText("Hash and signature verify.").waitFor();
    assert.equal(await page.getByText("a secret recipe").count(), 0);
    await shot(page, "span-redacted", { fullPage: true });

    await page.goto(demo.base + "/spans/not-a-span");
    await page.getByText(/is not a span id/).waitFor();
    await page.goto(demo.base + "/spans/01a23243-0000-7000-8000-000000000000");
    await page.getByText(/not found or not visible to you/).waitFor();
    page.checkClean([/status of 404/]);
    await context.close();
  });
});

describe("with authentication on", () => {
  const secret = "ui-test-secret-not-for-production";
  let srv;

  before(async () => {
    // A provider that cannot be reached (a closed loopback port): chat failures are real ones.
    srv = await startServer({
      // The configured provider is down: the prompts are evaluated offline, or the gate could
      // activate none and every question would be refused before the provider is called.
      before: [["kernels", "set", "prompt_eval", "config.provider=offline"]],
      env: {
        LOGLINE_JWT_SECRET: secret,
        LOGLINE_PROVIDER: "openai",
        OPENAI_BASE_URL: "http://127.0.0.1:9/v1",
        OPENAI_API_KEY: "unused",
        LOGLINE_MODEL: "unreachable",
        LOGLINE_PROVIDER_MAX_ATTEMPTS: "1",
        LOGLINE_PROVIDER_TIMEOUT_SECS: "5",
      },
    });
  });

  after(async () => {
    await srv?.stop();
  });

  test("a 401 asks for a token, which is kept for the tab; provider failures read as sentences", T, async () => {
    const out = logline(["token", "issue", "--user", "ana@padaria-lisboa.pt", "--tenant", "demo", "--role", "admin"], { LOGLINE_JWT_SECRET: secret });
    const token = out.trim().split("\n").pop().trim();
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await watchedPage(context, srv.base);
    await page.goto(srv.base + "/timeline");
    const field = page.getByLabel("Access token");
    await field.waitFor();
    await shot(page, "signin");
    await field.fill(token);
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.locator('#live[data-state="live"]').waitFor();
    await page.getByText("ana@padaria-lisboa.pt · demo").waitFor();
    assert.equal(await page.evaluate(() => sessionStorage.getItem("logline.token")), token);

    // The token carries over to the other pages of the tab.
    await page.goto(srv.base + "/");
    await page.getByRole("textbox", { name: "Message" }).fill("why was D1 terminated?");
    await page.getByRole("button", { name: "Send" }).click();
    const failed = page.locator("article.msg.assistant.failed");
    await failed.waitFor({ timeout: 30_000 });
    const text = await failed.getByRole("alert").textContent();
    assert.match(text, /language model is unavailable|language model failed|took too long/);
    assert.doesNotMatch(text, /[{}]|\bat \w+ \(|Error:|127\.0\.0\.1/, "no JSON, stack traces or addresses in the sentence");
    await failed.getByText("Details for an administrator").click();
    await failed.getByText(/unreachable/).waitFor();
    await shot(page, "chat-provider-failure");
    page.checkClean([/status of 401/, /status of 50\d/]);
    await context.close();
  });
});
