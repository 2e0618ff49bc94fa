#!/usr/bin/env node
// Real VS Code (code-server) with the packaged extension, driven by Chromium through playwright-core: open a Python
// file, ask for an inline suggestion, wait for VS Code to draw the ghost text, save a screenshot. Set-up (what it
// took) is in editors/README.md, "VS Code itself, headless: code-server".
//
// usage: NODE_PATH=<dir with playwright-core> node test/code-server-screenshot.js \
//          --code-server <code-server/out/node/entry.js> --vsix codefill.vsix --server <codefill-lsp> \
//          [--server-arg ARG]... [--model DIR] [--chromium /usr/bin/chromium] [--out screenshot.png] [--timeout S]
// Without --model the server runs the scripted fake engine of tests/lsp_fixtures (the file names the fill).
// Prints one JSON line: the ghost text VS Code rendered, timings, the screenshot path; exits 1 on failure.
"use strict";

const { execFileSync, spawn } = require("child_process");
const fs = require("fs");
const net = require("net");
const os = require("os");
const path = require("path");

const HERE = path.resolve(__dirname, "..");
const REPO = path.resolve(HERE, "..", "..");

function parseArgs(argv) {
  const out = { chromium: "/usr/bin/chromium", out: path.join(HERE, "screenshot.png"), timeout: 240, serverArgs: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const v = () => argv[++i];
    if (a === "--code-server") out.codeServer = v();
    else if (a === "--vsix") out.vsix = v();
    else if (a === "--server") out.server = v();
    else if (a === "--server-arg") out.serverArgs.push(v());
    else if (a === "--model") out.model = v();
    else if (a === "--chromium") out.chromium = v();
    else if (a === "--out") out.out = v();
    else if (a === "--timeout") out.timeout = Number(v());
    else throw new Error(`unknown argument ${a}`);
  }
  for (const k of ["codeServer", "vsix", "server"]) if (!out[k]) throw new Error(`--${k.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase())} is required`);
  if (!out.model) {
    out.serverArgs.push("--engine-factory", path.join(REPO, "tests", "lsp_fixtures", "fake_engine.py") + ":make_engine");
  }
  return out;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
    srv.on("error", reject);
  });
}

async function waitHttp(url, ms) {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      const r = await fetch(url);
      if (r.status < 500) return;
    } catch {
      // not up yet
    }
    if (Date.now() > deadline) throw new Error(`${url} did not come up`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

const DEMO_FAKE = `# codefill-fake: "total = 0\\n    for x in xs:\\n        total += x\\n    return total"
def mean(xs):
    """The arithmetic mean of xs."""
    if not xs:
        raise ValueError("mean of nothing")
    return total_of(xs) / len(xs)


def total_of(xs):
    

`;

const DEMO_MODEL = `import os


def read_lines(path):
    """The lines of a text file, without their line ends."""
    with open(path) as f:
        return [line.rstrip("\\n") for line in f]


def count_words(path):
    

`;

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const { chromium } = require("playwright-core");
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "codefill-code-server-"));
  const dirs = { data: path.join(tmp, "data"), ext: path.join(tmp, "extensions"), ws: path.join(tmp, "ws") };
  Object.values(dirs).forEach((d) => fs.mkdirSync(d, { recursive: true }));
  const result = { tmp };
  const started = Date.now();

  // 1. the packaged extension, installed the way a user does
  execFileSync(process.execPath, [opts.codeServer, "--install-extension", path.resolve(opts.vsix),
    "--extensions-dir", dirs.ext, "--user-data-dir", dirs.data], { stdio: "pipe" });
  result.installed = fs.readdirSync(dirs.ext).filter((n) => n.startsWith("codefill"));

  // 2. user settings: where the server is, and a quiet workbench
  fs.mkdirSync(path.join(dirs.data, "User"), { recursive: true });
  fs.writeFileSync(path.join(dirs.data, "User", "settings.json"), JSON.stringify({
    "codefill.serverPath": opts.server,
    "codefill.serverArgs": opts.serverArgs,
    "codefill.modelPath": opts.model ? path.resolve(opts.model) : "",
    "codefill.debounceMs": 0,
    "codefill.logFile": path.join(tmp, "server.log"),
    "editor.inlineSuggest.enabled": true,
    "editor.fontSize": 15,
    "editor.minimap.enabled": false,
    "workbench.startupEditor": "none",
    "workbench.tips.enabled": false,
    "workbench.colorTheme": "Default Dark Modern",
    "security.workspace.trust.enabled": false,
    "telemetry.telemetryLevel": "off",
    "extensions.ignoreRecommendations": true,
    "update.mode": "none",
    "chat.commandCenter.enabled": false,
  }, null, 2));
  const demo = opts.model ? DEMO_MODEL : DEMO_FAKE;
  fs.writeFileSync(path.join(dirs.ws, "stats.py"), demo);
  const line = demo.split("\n").findIndex((l, i, all) => l === "    " && all[i - 1].startsWith("def ")) + 1;

  // 3. code-server
  const port = await freePort();
  const cs = spawn(process.execPath, [opts.codeServer, "--auth", "none", "--bind-addr", `127.0.0.1:${port}`,
    "--disable-telemetry", "--disable-update-check", "--disable-workspace-trust", "--disable-getting-started-override",
    "--user-data-dir", dirs.data, "--extensions-dir", dirs.ext, dirs.ws], { stdio: ["ignore", "pipe", "pipe"] });
  let csLog = "";
  cs.stdout.on("data", (d) => { csLog += d; });
  cs.stderr.on("data", (d) => { csLog += d; });
  let browser;
  let page;
  try {
    await waitHttp(`http://127.0.0.1:${port}/healthz`, 60000);
    result.codeServerUpSeconds = (Date.now() - started) / 1000;

    // 4. Chromium
    browser = await chromium.launch({
      executablePath: opts.chromium,
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"],
    });
    page = await browser.newPage({ viewport: { width: 1100, height: 560 } });
    await page.goto(`http://127.0.0.1:${port}/?folder=${encodeURIComponent(dirs.ws)}`);
    await page.waitForSelector(".monaco-workbench", { timeout: 120000 });
    // open the file from the explorer
    const entry = page.locator(".explorer-folders-view .monaco-list-row", { hasText: "stats.py" });
    await entry.waitFor({ timeout: 120000 });
    await entry.dblclick();
    await page.waitForSelector(".monaco-editor .view-lines", { timeout: 60000 });
    await page.locator(".monaco-editor .view-lines").first().click();
    // wait for the extension's status bar item to say the model is ready
    const status = page.locator("#codefill\\.codefill\\.status, [id$='codefill.status']");
    await page.waitForFunction(() => [...document.querySelectorAll(".statusbar-item")]
      .some((e) => /codefill/.test(e.getAttribute("aria-label") || e.textContent || "") &&
        !/loading|starting/.test(e.getAttribute("aria-label") || "")), null, { timeout: opts.timeout * 1000 });
    result.readySeconds = (Date.now() - started) / 1000;
    result.statusBefore = await status.first().getAttribute("aria-label").catch(() => null);
    // go to the blank line in the body, end of line, ask for a suggestion
    await page.keyboard.press("Control+G");
    await page.keyboard.type(String(line));
    await page.keyboard.press("Enter");
    await page.keyboard.press("End");
    await page.waitForTimeout(300);
    const asked = Date.now();
    // editor.action.inlineSuggest.trigger (Alt+\ does not reach it through headless Chromium): the command palette
    await page.keyboard.press("F1");
    await page.keyboard.type("Trigger Inline Suggestion");
    await page.waitForSelector(".quick-input-list .monaco-list-row", { timeout: 10000 });
    await page.keyboard.press("Enter");
    const ghost = page.locator(".monaco-editor .ghost-text-decoration, .monaco-editor .ghost-text");
    await ghost.first().waitFor({ timeout: opts.model ? 90000 : 30000 });
    await page.waitForTimeout(500); // let the status bar show the latency
    result.ghostSeconds = (Date.now() - asked) / 1000;
    result.ghostText = (await ghost.allInnerTexts()).join("\n");
    result.statusAfter = await page.evaluate(() => [...document.querySelectorAll(".statusbar-item")]
      .map((e) => e.getAttribute("aria-label") || "").find((t) => /codefill/.test(t)) || null);
    await page.screenshot({ path: opts.out });
    result.screenshot = opts.out;
    // accept it, to check the text lands in the document
    await page.keyboard.press("Tab");
    await page.waitForTimeout(500);
    result.lineAfter = await page.evaluate((n) => {
      const lines = [...document.querySelectorAll(".monaco-editor .view-line")];
      return lines.map((l) => l.textContent.replace(/\u00a0/g, " ")).slice(0, 40);
    }, line);
    if (!opts.model) {
      const at = result.lineAfter.indexOf("def total_of(xs):");
      const body = result.lineAfter.slice(at + 1, at + 5);
      const want = ["    total = 0", "    for x in xs:", "        total += x", "    return total"];
      if (JSON.stringify(body) !== JSON.stringify(want)) throw new Error(`Tab did not insert the fill: ${JSON.stringify(body)}`);
      result.accepted = true;
    }
    process.stdout.write(JSON.stringify({ ok: true, seconds: (Date.now() - started) / 1000, ...result }) + "\n");
  } catch (error) {
    if (page) await page.screenshot({ path: opts.out.replace(/\.png$/, "") + ".failed.png" }).catch(() => {});
    process.stdout.write(JSON.stringify({ ok: false, error: String(error && error.stack || error), ...result,
      codeServerLog: csLog.slice(-2000) }) + "\n");
    process.exitCode = 1;
  } finally {
    if (browser) await browser.close().catch(() => {});
    cs.kill("SIGTERM");
  }
}

main();
