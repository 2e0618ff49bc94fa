import assert from "node:assert/strict";
import { test } from "node:test";

import { configurationPayload, needsRestart, optionalPath, SERVER_DEFAULTS, SERVER_KEYS, toServerSettings } from "../settings";

const from = (values: Record<string, unknown>) => (key: string) => values[key];

test("defaults: nothing set gives the server's own defaults, every key present", () => {
  const s = toServerSettings(from({}));
  assert.deepEqual(s, { ...SERVER_DEFAULTS });
  assert.deepEqual(Object.keys(s).sort(), [...SERVER_KEYS].sort());
});

test("the VS Code defaults from package.json map onto the server defaults", () => {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const pkg = require("../../package.json");
  const props = pkg.contributes.configuration.properties;
  const values: Record<string, unknown> = {};
  for (const [key, spec] of Object.entries(props)) values[key.replace(/^codefill\./, "")] = (spec as { default: unknown }).default;
  assert.deepEqual(toServerSettings(from(values)), { ...SERVER_DEFAULTS });
  for (const key of SERVER_KEYS) assert.ok(`codefill.${key}` in props, `package.json lacks codefill.${key}`);
});

test("values pass through in camelCase", () => {
  const s = toServerSettings(from({
    enabled: false, modelPath: "/models/x", device: "cuda:1", steps: 8, maxTokens: 64, debounceMs: 0,
    languages: ["Python", "rust", "python"], logFile: "/tmp/codefill.log", candidates: 5, prefetch: false,
  }));
  assert.deepEqual(s, {
    enabled: false, modelPath: "/models/x", device: "cuda:1", steps: 8, maxTokens: 64, debounceMs: 0,
    languages: ["python", "rust"], logFile: "/tmp/codefill.log", candidates: 5, prefetch: false,
  });
});

test("empty strings and lists mean 'none' / 'all'", () => {
  const s = toServerSettings(from({ modelPath: "  ", logFile: "", languages: [] }));
  assert.equal(s.modelPath, null);
  assert.equal(s.logFile, null);
  assert.equal(s.languages, null);
});

test("bad values fall back, numbers are clamped and rounded", () => {
  const s = toServerSettings(from({
    enabled: "yes", device: "tpu", steps: -3, maxTokens: 5000, debounceMs: 12.6, languages: [1, "", "go"],
  }));
  assert.equal(s.enabled, true);
  assert.equal(s.device, "auto");
  assert.equal(s.steps, 0);
  assert.equal(s.maxTokens, 1024);
  assert.equal(s.debounceMs, 13);
  assert.deepEqual(s.languages, ["go"]);
  assert.equal(toServerSettings(from({ steps: Number.NaN })).steps, 0);
  assert.equal(toServerSettings(from({ maxTokens: 0 })).maxTokens, 1);
});

test("candidates: 1 to 10 (the server's range), default 3", () => {
  assert.equal(SERVER_DEFAULTS.candidates, 3);
  assert.equal(toServerSettings(from({})).candidates, 3);
  assert.equal(toServerSettings(from({ candidates: 1 })).candidates, 1);
  assert.equal(toServerSettings(from({ candidates: 10 })).candidates, 10);
  assert.equal(toServerSettings(from({ candidates: 0 })).candidates, 1);
  assert.equal(toServerSettings(from({ candidates: 99 })).candidates, 10);
  assert.equal(toServerSettings(from({ candidates: 2.4 })).candidates, 2);
  assert.equal(toServerSettings(from({ candidates: "4" })).candidates, 3);
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const spec = require("../../package.json").contributes.configuration.properties["codefill.candidates"];
  assert.deepEqual([spec.type, spec.default, spec.minimum, spec.maximum], ["integer", 3, 1, 10]);
});

test("~ expands in paths when a home is given", () => {
  assert.equal(optionalPath("~/m", "/home/u"), "/home/u/m");
  assert.equal(optionalPath("~", "/home/u"), "/home/u");
  assert.equal(optionalPath("~/m"), "~/m");
  assert.equal(optionalPath("a~/m", "/home/u"), "a~/m");
  assert.equal(optionalPath(3), null);
  assert.equal(toServerSettings(from({ modelPath: "~/models" }), "/h").modelPath, "/h/models");
});

test("didChangeConfiguration payload wraps the section", () => {
  const s = toServerSettings(from({}));
  assert.deepEqual(configurationPayload(s), { codefill: s });
});

test("serverPath and serverArgs restart; the rest is sent", () => {
  assert.equal(needsRestart((section) => section === "codefill.serverPath"), true);
  assert.equal(needsRestart((section) => section === "codefill.serverArgs"), true);
  assert.equal(needsRestart((section) => section === "codefill.steps"), false);
});

test("prefetch: a boolean, default on (the server's default)", () => {
  assert.equal(SERVER_DEFAULTS.prefetch, true);
  assert.equal(toServerSettings(from({ prefetch: "no" })).prefetch, true);
  assert.equal(toServerSettings(from({ prefetch: false })).prefetch, false);
});
