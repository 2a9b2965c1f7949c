// Test harness: starts the real `logline` binary on a fresh data directory on 127.0.0.1:0 (the
// port is read from its "logline listening on http://ADDR" line) and launches Debian's Chromium
// headless through playwright-core. Nothing is downloaded: a missing binary or browser fails.

import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, existsSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const BIN = process.env.LOGLINE_BIN || path.join(ROOT, "target/debug/logline");
export const CHROMIUM = process.env.LOGLINE_CHROMIUM || "/usr/bin/chromium";
export const SHOTS = path.join(ROOT, "target/ui-screenshots");

/** The environment for a server under test: nothing inherited that changes auth or provider. */
function cleanEnv(extra) {
  const env = { ...process.env };
  for (const k of Object.keys(env)) {
    if (k.startsWith("LOGLINE_") || k.startsWith("OPENAI_") || k.startsWith("OLLAMA_")) delete env[k];
  }
  return { ...env, RUST_LOG: "warn", ...extra };
}

/** Runs `logline ARGS` to completion; returns its stdout. */
export function logline(args, env = {}) {
  return execFileSync(BIN, args, { env: cleanEnv(env), encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
}

/** Starts `logline serve` on a fresh data directory, optionally seeded with the demo. */
export async function startServer({ seed = false, args = [], env = {}, before = [] } = {}) {
  if (!existsSync(BIN)) {
    throw new Error(`the logline binary is missing at ${BIN}: run \`cargo build --bin logline\` first`);
  }
  const dir = mkdtempSync(path.join(tmpdir(), "logline-ui-"));
  if (seed) {
    logline(["--data-dir", dir, "--tenant", "demo", "demo", "seed"], env);
    // The tests read the demo as seeded. A server would otherwise rule every midnight since the
    // demo's anchor as soon as it starts (D4 held again, D5 accepted) while a test reads them:
    // the Midnight Ruler is taken off the boot allow-list (every other kernel stays, prompt_eval
    // (…0007) included: without it no prompt is ever activated and the chat answers 503).
    const others = [1, 2, 3, 4, 5, 7].map((n) => `00000000-0000-4000-8000-00000000000${n}`);
    logline(["--data-dir", dir, "manifest", "set", `allowed_boot_ids=${JSON.stringify(others)}`], env);
  }
  // Commands run on the ledger before it is served (e.g. a kernel setting).
  for (const cmd of before) logline(["--data-dir", dir, ...cmd], env);
  const proc = spawn(BIN, ["--data-dir", dir, ...args, "serve", "--bind", "127.0.0.1:0"], {
    env: cleanEnv(env),
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  proc.stderr.on("data", (d) => {
    stderr = (stderr + d).slice(-8000);
  });
  const base = await new Promise((resolve, reject) => {
    let out = "";
    const timer = setTimeout(() => reject(new Error(`logline serve did not say where it listens within 30 s; stderr:\n${stderr}`)), 30000);
    proc.stdout.on("data", (d) => {
      out += d;
      const m = /logline listening on (http:\/\/[^\s]+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    proc.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`logline serve exited with ${code} before listening; stderr:\n${stderr}`));
    });
  });
  return {
    base,
    dir,
    stderr: () => stderr,
    async stop() {
      if (proc.exitCode === null) {
        const exited = new Promise((r) => proc.once("exit", r));
        proc.kill("SIGTERM");
        await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
        if (proc.exitCode === null) proc.kill("SIGKILL");
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export async function launchBrowser() {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`Chromium is missing at ${CHROMIUM}: run scripts/browser.sh (installs Debian's chromium)`);
  }
  mkdirSync(SHOTS, { recursive: true });
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // Root in a container has no user namespace sandbox to offer Chromium.
    args: ["--no-sandbox", "--disable-dev-shm-usage"],
  });
}

/** A page that records console errors, CSP violations and every request it makes. */
export async function watchedPage(context, base) {
  const page = await context.newPage();
  const problems = [];
  const foreign = [];
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(`console: ${m.text()}`);
  });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("request", (r) => {
    const u = r.url();
    if (!u.startsWith(base) && !u.startsWith("data:") && !u.startsWith("about:")) foreign.push(u);
  });
  page.checkClean = (allow = []) => {
    const bad = problems.filter((p) => !allow.some((a) => a.test(p)));
    if (bad.length) throw new Error(`the page logged errors:\n${bad.join("\n")}`);
    if (foreign.length) throw new Error(`the page made requests beyond the server:\n${foreign.join("\n")}`);
  };
  return page;
}

export function shot(page, name, opts = {}) {
  return page.screenshot({ path: path.join(SHOTS, `${name}.png`), ...opts });
}

/** Calls the API directly (as the test's own client). */
export async function apiCall(base, pathname, { method = "GET", body, token } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers.Authorization = `Bearer ${token}`;
  const r = await fetch(base + pathname, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {
    json = null;
  }
  return { status: r.status, headers: r.headers, json, text };
}
