import assert from "node:assert/strict";
import { test } from "node:test";

import { describeFillResult, formatLatency, phaseFromProgress, statusView } from "../status";

test("latency formatting", () => {
  assert.equal(formatLatency(87.4), "87 ms");
  assert.equal(formatLatency(999.4), "999 ms");
  assert.equal(formatLatency(1234), "1.2 s");
  assert.equal(formatLatency(12_345), "12 s");
  assert.equal(formatLatency(-1), "");
});

test("status text per phase", () => {
  assert.equal(statusView({ phase: "starting" }).text, "$(sync~spin) codefill");
  assert.equal(statusView({ phase: "loading", message: "loading the model" }).text, "$(loading~spin) codefill: loading");
  assert.match(statusView({ phase: "loading", message: "loading the model" }).tooltip, /loading the model/);
  assert.equal(statusView({ phase: "ready" }).text, "$(check) codefill");
  assert.equal(statusView({ phase: "ready", latencyMs: 212 }).text, "$(check) codefill 212 ms");
  assert.match(statusView({ phase: "ready", latencyMs: 212 }).tooltip, /last fill took 212 ms/);
  assert.equal(statusView({ phase: "ready", disabled: true, latencyMs: 5 }).text, "$(circle-slash) codefill");
  const err = statusView({ phase: "error", message: "model failed to load" });
  assert.equal(err.text, "$(error) codefill");
  assert.match(err.tooltip, /model failed to load/);
  assert.equal(err.background, "statusBarItem.errorBackground");
  assert.equal(statusView({ phase: "stopped" }).text, "$(debug-stop) codefill");
});

test("$/progress values from the server's model load", () => {
  assert.deepEqual(phaseFromProgress({ kind: "begin", message: "loading the model" }), { phase: "loading", message: "loading the model" });
  assert.deepEqual(phaseFromProgress({ kind: "report", message: "50%" }), { phase: "loading", message: "50%" });
  assert.deepEqual(phaseFromProgress({ kind: "end", message: "model ready" }), { phase: "ready" });
  assert.deepEqual(phaseFromProgress({ kind: "end", message: "model failed to load" }), { phase: "error", message: "model failed to load" });
  assert.deepEqual(phaseFromProgress({ kind: "end" }), { phase: "ready" });
  assert.equal(phaseFromProgress({}), undefined);
});

test("what Fill Selection says afterwards", () => {
  assert.equal(describeFillResult({ applied: true, text: "x" }), undefined);
  assert.equal(describeFillResult({ applied: false, reason: "no fill" }), "codefill: no fill");
  assert.equal(describeFillResult({ applied: false }), "codefill: the fill was not applied");
  assert.match(describeFillResult(null) ?? "", /no fill/);
});
