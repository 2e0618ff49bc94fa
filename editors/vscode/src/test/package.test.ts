import assert from "node:assert/strict";
import { test } from "node:test";

// eslint-disable-next-line @typescript-eslint/no-require-imports
const pkg = require("../../package.json");

test("Fill Selection's key works with an empty selection (it fills at the cursor) and not in read-only editors", () => {
  const bindings = pkg.contributes.keybindings.filter((b: { command: string }) => b.command === "codefill.fillSelection");
  assert.equal(bindings.length, 1);
  const [b] = bindings;
  assert.equal(b.key, "ctrl+alt+f");
  assert.doesNotMatch(b.when, /editorHasSelection/);
  assert.match(b.when, /editorTextFocus/);
  assert.match(b.when, /!editorReadonly/);
});

test("Fill Selection's macOS key is not VS Code's Find/Replace (cmd+alt+f)", () => {
  const [b] = pkg.contributes.keybindings.filter((k: { command: string }) => k.command === "codefill.fillSelection");
  const mac = (b.mac ?? b.key).toLowerCase().split("+").sort().join("+");
  assert.notEqual(mac, ["alt", "cmd", "f"].sort().join("+"));
  assert.equal(b.mac, "ctrl+alt+f");
});
