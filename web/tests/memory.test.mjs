// Memory in the web UI (issue 13), as a user meets it: the Memory toggle keeps its choice across
// a reload, "remember that …" is answered and listed under "What is remembered", a new
// conversation recalls it with a citation, and Forget (per item, for the conversation) removes it
// from the panel and from GET /api/memory. With memory off nothing is written. Real headless
// Chromium against the real `logline serve` on demo data, offline provider (the default).
// Run with scripts/ui-test.sh.

import { test, before, after, describe } from "node:test";
import assert from "node:assert/strict";
import { startServer, launchBrowser, watchedPage, shot, apiCall } from "./harness.mjs";

const T = { timeout: 120_000 };
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

/** The caller's live memory items, as the API lists them. */
async function remembered() {
  const r = await apiCall(demo.base, "/api/memory");
  assert.equal(r.status, 200, r.text);
  return r.json.items;
}

/** Opens "What is remembered" (a <details>) and waits for its first listing. */
async function openPanel(page) {
  const panel = page.locator("#memory-panel");
  const listed = page.waitForResponse((r) => new URL(r.url()).pathname === "/api/memory" && r.request().method() === "GET");
  await page.getByText("What is remembered", { exact: true }).click();
  await listed;
  assert.equal(await panel.evaluate((d) => d.open), true);
  return panel;
}

/** The panel's row for the item whose text is `text`. */
const row = (page, text) => page.locator("#memory-items li.memory-item").filter({ has: page.getByText(text, { exact: true }) });

describe("memory in the web UI", () => {
  test("the Memory choice survives a reload; remember, see it listed, recall it in a new conversation with a citation, then Forget it from the keyboard", T, async () => {
    const { context, page } = await desktop();
    await page.goto(demo.base + "/");
    const on = page.getByRole("radio", { name: "On", exact: true });
    assert.equal(await page.getByRole("radio", { name: "Off", exact: true }).isChecked(), true, "memory is off until the user chooses");
    await on.check();
    await page.reload();
    assert.equal(await on.isChecked(), true, "the choice is kept across a reload");
    assert.equal(await page.getByRole("radio", { name: "Off", exact: true }).isChecked(), false);

    const before = await remembered();
    assert.ok(!before.some((i) => /Padaria Central/.test(i.text)), "nothing about the bakery is remembered yet");
    const panel = await openPanel(page);

    const sent = [];
    page.on("request", (r) => {
      if (r.url().endsWith("/api/chat") && r.method() === "POST") sent.push(r.headers()["x-logline-memory"]);
    });
    const told = await ask(page, "remember that my favourite bakery is Padaria Central");
    await told.getByText("I will remember that my favourite bakery is Padaria Central").waitFor();
    assert.deepEqual(sent, ["on"]);

    // The API has exactly one item with the fact; the panel lists it (refreshed after the turn).
    const items = (await remembered()).filter((i) => i.text === "my favourite bakery is Padaria Central");
    assert.equal(items.length, 1, JSON.stringify(await remembered()));
    const item = items[0];
    assert.equal(item.layer, "temporary", "an explicit remember with memory on outlives the conversation");
    // The answer cites the memory span it wrote.
    await told.locator(`.sources a[href="/spans/${item.id}"]`).waitFor();
    const listed = row(page, "my favourite bakery is Padaria Central");
    await listed.waitFor();
    assert.equal(await listed.count(), 1);
    await listed.locator(`a[href="/spans/${item.id}"]`).waitFor();
    await panel.scrollIntoViewIfNeeded();
    await shot(page, "memory-remembered");

    // A new conversation recalls it, citing the memory span.
    await page.getByRole("button", { name: "New conversation" }).click();
    assert.equal(await page.locator("article.msg.assistant").count(), 0, "the new conversation starts empty");
    const recalled = await ask(page, "recall what I remember about my favourite bakery");
    await recalled.getByText(/I remember:/).waitFor();
    await recalled.getByText(/my favourite bakery is Padaria Central/).first().waitFor();
    await recalled.locator(`.sources a[href="/spans/${item.id}"]`).waitFor();
    await shot(page, "memory-recalled");

    // Forget is a real button with a name, reached with Tab and pressed with Enter.
    // Its accessible name says which item it forgets (every row has one).
    const forget = page.getByRole("button", { name: "Forget: my favourite bakery is Padaria Central", exact: true });
    assert.equal(await forget.count(), 1);
    assert.equal(await forget.evaluate((b) => b.tagName), "BUTTON");
    assert.equal(await listed.getByRole("button").count(), 1, "the row's one button is its Forget");
    assert.equal(await forget.innerText(), "Forget");
    await listed.locator(`a[href="/spans/${item.id}"]`).focus();
    await page.keyboard.press("Tab");
    assert.equal(await forget.evaluate((b) => b === document.activeElement), true, "Tab from the item's link reaches its Forget button");
    await shot(page, "memory-forget-focus");
    const deleted = page.waitForResponse((r) => r.url().endsWith(`/api/memory/${item.id}`) && r.request().method() === "DELETE");
    await page.keyboard.press("Enter");
    assert.equal((await deleted).status(), 200);
    await page.locator("#memory-status").getByText(/^Forgot 1 item\.( Nothing is remembered\.)?$/).waitFor();
    await listed.waitFor({ state: "detached" });
    assert.ok(!(await remembered()).some((i) => i.id === item.id), "GET /api/memory no longer lists the forgotten item");
    await shot(page, "memory-forgotten");

    // Recall now finds nothing about the bakery.
    await page.getByRole("button", { name: "New conversation" }).click();
    const again = await ask(page, "recall what I remember about my favourite bakery");
    const said = await again.innerText();
    assert.match(said, /I have nothing remembered for you that fits|I remember:/, "recall answered");
    assert.doesNotMatch(said, /Padaria Central/);
    page.checkClean();
    await context.close();
  });

  test("Forget this conversation removes what the conversation remembered, from the panel and the API", T, async () => {
    const { context, page } = await desktop();
    await page.goto(demo.base + "/");
    await page.getByRole("radio", { name: "Session only" }).check();
    await openPanel(page);
    // Before the conversation starts there is nothing to forget, and the panel says so.
    await page.getByRole("button", { name: "Forget this conversation" }).click();
    await page.locator("#memory-status").getByText("This conversation has not started yet.").waitFor();

    const chats = [];
    page.on("response", async (r) => {
      if (r.url().endsWith("/api/chat") && r.request().method() === "POST") chats.push(r);
    });
    const told = await ask(page, "remember that invoices go out on Fridays");
    await told.getByText("I will remember that invoices go out on Fridays").waitFor();
    const fact = (await remembered()).find((i) => i.text === "invoices go out on Fridays");
    assert.ok(fact, "the fact is remembered");
    assert.equal(fact.layer, "session", "with session-only memory the fact lives in the conversation's session layer");
    const listed = row(page, "invoices go out on Fridays");
    await listed.waitFor();
    await listed.getByText("this conversation", { exact: false }).waitFor();
    const session = (await remembered()).filter((i) => i.session_id === fact.session_id);
    assert.ok(session.length >= 1);

    const forgot = page.waitForResponse((r) => r.url().endsWith("/api/memory/forget") && r.request().method() === "POST");
    await page.getByRole("button", { name: "Forget this conversation" }).focus();
    await page.keyboard.press("Enter");
    const res = await forgot;
    assert.equal(res.status(), 200);
    const body = JSON.parse(res.request().postData());
    assert.equal(body.target, "session");
    assert.equal(body.session_id, fact.session_id, "the panel forgets the conversation it is showing");
    const forgotten = (await res.json()).forgotten;
    assert.ok(forgotten.includes(fact.id), "the fact is among the forgotten items");
    assert.ok(forgotten.length >= 2, "the fact and the conversation's turn record are forgotten");
    await page.locator("#memory-status").getByText(new RegExp(`^Forgot ${forgotten.length} items\\.( Nothing is remembered\\.)?$`)).waitFor();
    await listed.waitFor({ state: "detached" });
    const left = await remembered();
    assert.ok(!left.some((i) => i.session_id === fact.session_id), `nothing of the conversation is left: ${JSON.stringify(left)}`);
    await shot(page, "memory-forget-session");

    // Forget everything asks first: dismissing keeps everything, accepting forgets it all.
    await ask(page, "remember that the oven is serviced in March", 1);
    await row(page, "the oven is serviced in March").waitFor();
    const all = page.getByRole("button", { name: "Forget everything" });
    page.once("dialog", (d) => d.dismiss());
    await all.click();
    assert.ok((await remembered()).some((i) => i.text === "the oven is serviced in March"), "a dismissed confirmation forgets nothing");
    const everything = page.waitForResponse((r) => r.url().endsWith("/api/memory/forget") && r.request().method() === "POST");
    page.once("dialog", (d) => {
      assert.match(d.message(), /Forget everything remembered for you\?/);
      d.accept();
    });
    await all.click();
    assert.equal(JSON.parse((await everything).request().postData()).target, "all");
    await page.locator("#memory-status").getByText(/^Forgot \d+ items?\. Nothing is remembered\.$/).waitFor();
    assert.equal(await page.locator("#memory-items li.memory-item").count(), 0);
    assert.deepEqual(await remembered(), [], "GET /api/memory lists nothing after Forget everything");
    page.checkClean();
    await context.close();
  });

  test("with Memory off, \"remember that …\" writes nothing: the panel and GET /api/memory stay as they were", T, async () => {
    const { context, page } = await desktop();
    await page.goto(demo.base + "/");
    await page.getByRole("radio", { name: "Off", exact: true }).check();
    await page.reload();
    assert.equal(await page.getByRole("radio", { name: "Off", exact: true }).isChecked(), true);
    const beforeItems = await remembered();
    await openPanel(page);
    const rowsBefore = await page.locator("#memory-items li.memory-item").count();
    assert.equal(rowsBefore, beforeItems.length, "the panel lists what the API lists");

    const relisted = page.waitForResponse((r) => new URL(r.url()).pathname === "/api/memory" && r.request().method() === "GET");
    const answer = await ask(page, "remember that my dog is called Bolacha");
    const text = await answer.innerText();
    assert.doesNotMatch(text, /I will remember/);
    assert.match(text, /remember tool, which is not available|memory is off/i, "the answer says it cannot remember");
    // The panel lists again after the turn; count its rows once that listing is shown.
    await relisted;
    await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => r())));
    if (beforeItems.length === 0) {
      await page.locator("#memory-status").getByText("Nothing is remembered.", { exact: true }).waitFor();
    }
    assert.equal(await page.locator("#memory-items li.memory-item", { hasText: "Bolacha" }).count(), 0, "the panel shows nothing new");
    assert.equal(await page.locator("#memory-items li.memory-item").count(), rowsBefore);
    const after = await remembered();
    assert.deepEqual(after.map((i) => i.id).sort(), beforeItems.map((i) => i.id).sort(), "GET /api/memory lists no new item");
    assert.ok(!after.some((i) => /Bolacha/.test(i.text)));
    await shot(page, "memory-off");
    page.checkClean();
    await context.close();
  });
});
