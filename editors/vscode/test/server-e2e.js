#!/usr/bin/env node
// The extension's activation code, from the packaged .vsix (or from out/), against the REAL codefill-lsp, with a
// stubbed `vscode` module (test/vscode-stub.js) instead of VS Code. It checks, through the extension and
// vscode-languageclient 11 exactly as shipped:
//   - the server is found the default way (beside the Python extension's interpreter) and completes initialize,
//     advertising inline completion and the codefill.fill command;
//   - the status bar goes starting -> loading -> ready from the server's $/progress;
//   - a document is synced (didOpen), the inline completion provider returns the server's fill, and the status bar
//     shows its latency;
//   - codefill: Fill Selection sends codefill.fill with the selection, the server's workspace/applyEdit is applied
//     and the document is synced back (didChange);
//   - a settings change (codefill.enabled=false) reaches the server (didChangeConfiguration) and the extension;
//   - codefill: Restart Server starts a new server process; deactivate stops it.
// What it cannot check: VS Code's rendering of the ghost text (see the code-server screenshot in editors/README.md).
//
// usage: node test/server-e2e.js [--vsix FILE | --extension-dir DIR] [--python PY] [--repo DIR]
//                                [--engine-factory MODULE:NAME | --real-model | --model DIR] [--timeout S] [--verbose]
// Prints one JSON line with the results; exits 1 on failure.
"use strict";

const assert = require("assert/strict");
const { execFileSync } = require("child_process");
const fs = require("fs");
const os = require("os");
const path = require("path");

const { createStub, installStub } = require("./vscode-stub");

const HERE = path.resolve(__dirname, "..");
const REPO_DEFAULT = path.resolve(HERE, "..", "..");

function parseArgs(argv) {
  const out = { timeout: 60, verbose: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => argv[++i];
    if (a === "--vsix") out.vsix = value();
    else if (a === "--extension-dir") out.extensionDir = value();
    else if (a === "--python") out.python = value();
    else if (a === "--repo") out.repo = value();
    else if (a === "--engine-factory") out.engineFactory = value();
    else if (a === "--real-model") out.realModel = true;
    else if (a === "--model") { out.model = value(); out.realModel = true; }
    else if (a === "--timeout") out.timeout = Number(value());
    else if (a === "--verbose") out.verbose = true;
    else throw new Error(`unknown argument ${a}`);
  }
  out.repo = path.resolve(out.repo || REPO_DEFAULT);
  if (!out.python) {
    const venv = path.join(out.repo, ".venv", "bin", "python");
    out.python = fs.existsSync(venv) ? venv : "python3";
  }
  if (!out.engineFactory && !out.realModel) {
    out.engineFactory = `${path.join(out.repo, "tests", "lsp_fixtures", "fake_engine.py")}:make_engine`;
  }
  return out;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(what, fn, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

function extensionDir(opts, tmp) {
  if (opts.extensionDir) return path.resolve(opts.extensionDir);
  if (opts.vsix) {
    const dest = path.join(tmp, "vsix");
    fs.mkdirSync(dest);
    execFileSync("unzip", ["-q", path.resolve(opts.vsix), "-d", dest]);
    return path.join(dest, "extension");
  }
  return HERE;
}

/**
 * A Python environment as the Python extension would report it: an interpreter path with `codefill-lsp` beside it.
 * When the real environment has the console script (pip install), use it as is; otherwise make a folder with a
 * `codefill-lsp` that runs `python -m lsp_server` from the repository, and report an interpreter in that folder.
 */
function pythonEnvironment(opts, tmp) {
  const script = path.join(path.dirname(opts.python), "codefill-lsp");
  if (path.isAbsolute(opts.python) && fs.existsSync(script)) return { interpreter: opts.python, server: script, shim: false };
  const bin = path.join(tmp, "env", "bin");
  fs.mkdirSync(bin, { recursive: true });
  const shim = path.join(bin, "codefill-lsp");
  fs.writeFileSync(shim, [
    "#!/bin/sh",
    `PYTHONPATH=${JSON.stringify(opts.repo)}\${PYTHONPATH:+:$PYTHONPATH}`,
    "export PYTHONPATH",
    `exec ${JSON.stringify(opts.python)} -m lsp_server "$@"`,
    "",
  ].join("\n"));
  fs.chmodSync(shim, 0o755);
  const interpreter = path.join(bin, "python");
  fs.symlinkSync(opts.python, interpreter);
  return { interpreter, server: shim, shim: true };
}

/** The live processes that inherited this run's marker variable: the servers the extension started. */
function serverPids(marker) {
  const pids = [];
  for (const pid of fs.readdirSync("/proc").filter((p) => /^\d+$/.test(p))) {
    try {
      if (fs.readFileSync(`/proc/${pid}/environ`, "utf8").split("\0").includes(marker) &&
          /lsp_server|codefill-lsp/.test(fs.readFileSync(`/proc/${pid}/cmdline`, "utf8"))) pids.push(pid);
    } catch {
      // gone, or not ours to read
    }
  }
  return pids;
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "codefill-vscode-e2e-"));
  const results = { checks: [] };
  const check = (name, extra) => { results.checks.push(name); if (opts.verbose) process.stderr.write(`ok ${name}${extra ? " " + JSON.stringify(extra) : ""}\n`); };
  const timeoutMs = opts.timeout * 1000;
  const killer = setTimeout(() => {
    process.stdout.write(JSON.stringify({ ok: false, error: `timed out after ${opts.timeout} s`, ...results }) + "\n");
    process.exit(1);
  }, timeoutMs + 5000);
  killer.unref();

  const dir = extensionDir(opts, tmp);
  const env = pythonEnvironment(opts, tmp);
  results.extension = dir;
  results.server = env.server;
  const logFile = path.join(tmp, "server.log");
  const marker = `CODEFILL_E2E_MARK=${tmp}`;
  process.env.CODEFILL_E2E_MARK = tmp; // inherited by the server processes, to find them
  const fakeLog = path.join(tmp, "fake-engine.jsonl");
  process.env.CODEFILL_FAKE_LOG = fakeLog; // the fake engine logs each fill's prefix and suffix here
  const config = {
    "codefill.serverPath": "",
    "codefill.serverArgs": opts.engineFactory ? ["--engine-factory", opts.engineFactory] : [],
    "codefill.modelPath": opts.model ? path.resolve(opts.model) : "",
    "codefill.debounceMs": 0,
    "codefill.logFile": logFile,
    "codefill.enabled": true,
  };
  const stub = createStub({ config, pythonInterpreter: env.interpreter, workspaceFolder: tmp, verbose: opts.verbose });
  installStub(stub, [path.join(dir, "out"), path.join(dir, "node_modules", "vscode-languageclient", "lib")]);
  const { harness } = stub;
  const vscode = stub.module;

  const ext = require(path.join(dir, "out", "extension.js"));
  const context = { subscriptions: [], extensionPath: dir, extensionUri: vscode.Uri.file(dir), globalState: { get() {}, update() {} } };
  const started = Date.now();
  const api = await ext.activate(context);

  // 1. found the default way, initialized
  const client = api.client();
  assert.ok(client, `no client; messages: ${JSON.stringify(harness.recorded.messages)} output: ${harness.recorded.output.join(" | ")}`);
  assert.ok(harness.recorded.output.some((l) => l.includes(env.server) && l.includes("interpreter")),
    `the server was not resolved beside the interpreter: ${harness.recorded.output.join(" | ")}`);
  const caps = client.initializeResult && client.initializeResult.capabilities;
  assert.ok(caps, "initialize did not complete");
  assert.ok(caps.inlineCompletionProvider, "no inlineCompletionProvider in the server's capabilities");
  assert.ok(caps.executeCommandProvider.commands.includes("codefill.fill"), "codefill.fill not advertised");
  results.serverInfo = client.initializeResult.serverInfo;
  check("initialize");

  // 2. status bar: starting -> loading -> ready from $/progress
  const item = harness.recorded.statusItems[0];
  await waitFor("the status bar to say ready", () => {
    const st = api.state();
    if (st.phase === "error") throw new Error(`the status bar says error: ${st.message}; ${harness.recorded.messages.map((m) => m.text).join(" | ")}`);
    return st.phase === "ready";
  }, timeoutMs);
  results.loadSeconds = (Date.now() - started) / 1000;
  results.statusHistory = [...new Set(item.history)];
  assert.ok(item.history.some((t) => t.includes("loading")), `never showed loading: ${item.history}`);
  assert.equal(item.text, "$(check) codefill");
  check("status ready", results.statusHistory);

  // 3. didOpen + inline completion through the registered provider (and the extension's middleware)
  const fill = "return a + b";
  const text = `# codefill-fake: ${JSON.stringify(fill)}\ndef add(a, b):\n    \n\nprint(add(1, 2))\n`;
  const doc = harness.openDocument(path.join(tmp, "add.py"), "python", text);
  const entry = harness.recorded.inlineProviders.find((p) => vscode.languages.match(p.selector, doc) > 0);
  assert.ok(entry, "no inline completion provider registered for python");
  const cts = new vscode.CancellationTokenSource();
  const pos = new vscode.Position(2, 4);
  const inline = await waitFor("an inline completion", async () => {
    const r = await entry.provider.provideInlineCompletionItems(doc, pos, { triggerKind: 1, selectedCompletionInfo: undefined }, cts.token);
    const items = r ? (Array.isArray(r) ? r : r.items) : [];
    return items.length ? items : (opts.realModel ? [] : null);
  }, 20000);
  results.inline = inline.map((i) => ({ insertText: i.insertText, range: i.range && [i.range.start.line, i.range.start.character, i.range.end.line, i.range.end.character] }));
  if (!opts.realModel) {
    assert.equal(inline[0].insertText.trim(), fill);
    assert.equal(inline[0].range.start.line, 2);
    assert.match(item.text, /^\$\(check\) codefill \d+ ms$/);
  }
  check("inline completion", results.inline);

  // 4. Fill Selection: codefill.fill -> workspace/applyEdit -> document changed -> didChange
  const sel = "a - b";
  const text2 = `# codefill-fake: "a * b + 0"\ndef mul(a, b):\n    return ${sel}\n`;
  const doc2 = harness.openDocument(path.join(tmp, "mul.py"), "python", text2);
  harness.setActiveEditor(doc2, new vscode.Selection(new vscode.Position(2, 11), new vscode.Position(2, 11 + sel.length)));
  const fillResult = await vscode.commands.executeCommand("codefill.fillSelection");
  results.fillSelection = { result: fillResult, text: doc2.getText(), edits: harness.recorded.appliedEdits };
  if (!opts.realModel) {
    assert.deepEqual(fillResult, { applied: true, text: "a * b + 0" });
    assert.equal(doc2.getText(), '# codefill-fake: "a * b + 0"\ndef mul(a, b):\n    return a * b + 0\n');
    assert.equal(doc2.version, 2);
    // The server saw the edit (didChange): the engine's next prefix is the edited line.
    await entry.provider.provideInlineCompletionItems(doc2, new vscode.Position(2, 20), { triggerKind: 1 }, cts.token);
    const calls = fs.readFileSync(fakeLog, "utf8").trim().split("\n").map((l) => JSON.parse(l));
    assert.ok(calls[calls.length - 1].prefix_tail.endsWith("return a * b + 0"), `the server's copy: ${JSON.stringify(calls[calls.length - 1])}`);
  } else {
    assert.ok(fillResult && typeof fillResult === "object", `codefill.fill answered ${JSON.stringify(fillResult)}`);
    if (fillResult.applied) assert.equal(doc2.getText(), text2.replace(sel, fillResult.text));
  }
  check("fill selection", results.fillSelection.result);

  // 5. settings: codefill.enabled=false reaches both sides
  await harness.setConfig("codefill.enabled", false);
  await sleep(100);
  assert.equal(item.text, "$(circle-slash) codefill");
  const off = await entry.provider.provideInlineCompletionItems(doc, pos, { triggerKind: 1 }, cts.token);
  assert.ok(!off, "inline completion while disabled");
  harness.setActiveEditor(doc2, new vscode.Selection(new vscode.Position(2, 11), new vscode.Position(2, 16)));
  const disabledFill = await vscode.commands.executeCommand("codefill.fillSelection");
  assert.deepEqual(disabledFill, { applied: false, reason: "codefill is disabled (codefill.enabled is false)" }, "the server still filled with enabled=false");
  await harness.setConfig("codefill.enabled", true);
  await sleep(100);
  check("didChangeConfiguration");

  // 5b. codefill.candidates: how many fills a manual trigger offers (the fake writes one list entry per call)
  const doc3 = harness.openDocument(path.join(tmp, "cands.py"), "python", '# codefill-fake: ["one", "two", "three"]\ndef f():\n    \n');
  const counts = [];
  for (const n of [2, 1]) {
    await harness.setConfig("codefill.candidates", n);
    await sleep(100);
    // vscode.InlineCompletionTriggerKind.Invoke is 0 (1 is Automatic: one fill)
    const r = await entry.provider.provideInlineCompletionItems(doc3, new vscode.Position(2, 4), { triggerKind: 0 }, cts.token);
    counts.push(r ? (Array.isArray(r) ? r : r.items).length : 0);
  }
  results.candidates = counts;
  if (!opts.realModel) assert.deepEqual(counts, [2, 1], `items per manual trigger with candidates 2, then 1: ${counts}`);
  check("candidates", counts);

  // 6. Restart Server: a new process; 7. deactivate stops it
  const before = serverPids(marker);
  await vscode.commands.executeCommand("codefill.restartServer");
  assert.notEqual(api.client(), client, "restart kept the old client");
  await waitFor("ready after restart", () => api.state().phase === "ready", timeoutMs);
  const after = serverPids(marker);
  results.pids = { before, after };
  assert.ok(before.length === 1 && after.length === 1, `one server process before and after: ${before} -> ${after}`);
  assert.ok(!after.includes(before[0]), `the old server process lives on: ${before} -> ${after}`);
  check("restart");
  await ext.deactivate();
  await waitFor("the server to exit", () => serverPids(marker).length === 0, 10000);
  check("deactivate");

  results.serverLog = fs.existsSync(logFile) ? fs.readFileSync(logFile, "utf8").split("\n").slice(-5) : [];
  process.stdout.write(JSON.stringify({ ok: true, seconds: (Date.now() - started) / 1000, ...results }) + "\n");
  fs.rmSync(tmp, { recursive: true, force: true });
  process.exit(0);
}

main().catch((error) => {
  process.stdout.write(JSON.stringify({ ok: false, error: String(error && error.stack || error) }) + "\n");
  process.exit(1);
});
