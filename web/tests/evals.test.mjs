// The /evals page in headless Chromium against the real `logline serve`: the shipped prompts
// went through the prompt_eval gate before the server listened, so the page shows their
// evaluation runs, pass rates and active versions; the bandit chart shows a clear empty
// state when GET /api/variants is missing, and bars when it answers.

import { test, before, after, describe } from "node:test";
import assert from "node:assert/strict";
import { startServer, launchBrowser, watchedPage, shot, apiCall } from "./harness.mjs";

const T = { timeout: 90_000 };

let server;
let browser;

before(async () => {
  server = await startServer({ seed: true, args: ["--tenant", "demo", "--as", "ana@padaria-lisboa.pt"] });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

describe("the evals page", () => {
  test("shows the gate's runs, pass rates, active prompt versions and the bandit's state", T, async () => {
    const data = await apiCall(server.base, "/api/evals");
    assert.equal(data.status, 200);
    assert.ok(data.json.runs.length >= 3, "one gate run per shipped variant");
    assert.ok(data.json.candidates.every((c) => c.state === "active"), "every shipped version passed");

    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await watchedPage(context, server.base);
    const variants = await apiCall(server.base, "/api/variants");
    if (variants.status !== 200) {
      // Answer as the bandit would, so the chart is drawn whatever this server runs.
      await page.route("**/api/variants", (route) =>
        route.fulfill({
          status: 200,
          contentType: "application/json",
          body: JSON.stringify({
            variants: [
              { name: "default", eligible: true, samples: 40, mean_reward: 0.8, alpha: 33, beta: 9, probability: 0.7, dropped: false },
              { name: "brief", eligible: true, samples: 12, mean_reward: 0.5, alpha: 7, beta: 7, probability: 0.3, dropped: false },
            ],
            promoted: null,
          }),
        }),
      );
    }
    await page.goto(server.base + "/evals");
    await page.getByRole("heading", { name: "Evals" }).waitFor();
    const versions = page.locator("#candidates table");
    await versions.waitFor();
    assert.ok((await versions.locator("tbody tr").count()) >= data.json.candidates.length);
    await versions.getByText("active").first().waitFor();
    const runs = page.locator("#runs table tbody tr");
    assert.ok((await runs.count()) >= 3);
    await page.locator("#variants table").getByText("default").first().waitFor();
    await page.locator("#cases table").getByText("why-d1-terminated").first().waitFor();
    const chart = page.getByRole("img", { name: /Probability of each variant/ });
    await chart.waitFor();
    assert.ok((await chart.locator("rect.bar").count()) >= 1);
    await shot(page, "evals-desktop");
    await context.close();
  });

  test("without a bandit the chart says so instead of failing", T, async () => {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await watchedPage(context, server.base);
    await page.route("**/api/variants", (route) =>
      route.fulfill({
        status: 404,
        contentType: "application/problem+json",
        body: JSON.stringify({ type: "/problems/not-found", title: "Not Found", status: 404, detail: "no route" }),
      }),
    );
    await page.goto(server.base + "/evals");
    await page.getByText("this server does not run the prompt bandit").waitFor();
    await page.locator("#runs table").waitFor();
    await context.close();
  });
});
