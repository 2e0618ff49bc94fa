import assert from "node:assert/strict";
import { test } from "node:test";

import {
  executableNames, findOnPath, interpreterFromPythonApi, isResolved, resolveServerCommand, ResolveInput, scriptFolders,
} from "../serverPath";

function fs(files: string[]) {
  const set = new Set(files);
  return (file: string) => set.has(file);
}

const posix = (files: string[], extra: Partial<ResolveInput> = {}): ResolveInput => ({
  platform: "linux", pathEnv: "/usr/local/bin:/usr/bin", home: "/home/u", isExecutable: fs(files), ...extra,
});

test("the setting wins, with its arguments", () => {
  const r = resolveServerCommand(posix(["/opt/cf/codefill-lsp", "/usr/bin/codefill-lsp"],
    { configured: "/opt/cf/codefill-lsp", args: ["-v"], interpreter: "/venv/bin/python" }));
  assert.deepEqual(r, { command: "/opt/cf/codefill-lsp", args: ["-v"], source: "setting" });
});

test("a configured path that does not exist is an error, not a silent fallback", () => {
  const r = resolveServerCommand(posix(["/usr/bin/codefill-lsp"], { configured: "/nope/codefill-lsp" }));
  assert.ok(!isResolved(r));
  assert.match(r.error, /codefill.serverPath/);
  assert.deepEqual(r.tried, ["/nope/codefill-lsp"]);
});

test("a configured bare name is looked up on PATH; ~ and relative paths resolve", () => {
  assert.deepEqual(resolveServerCommand(posix(["/usr/bin/my-lsp"], { configured: "my-lsp" })),
    { command: "/usr/bin/my-lsp", args: [], source: "setting" });
  assert.deepEqual(resolveServerCommand(posix(["/home/u/bin/codefill-lsp"], { configured: "~/bin/codefill-lsp" })),
    { command: "/home/u/bin/codefill-lsp", args: [], source: "setting" });
  assert.deepEqual(resolveServerCommand(posix(["/ws/.venv/bin/codefill-lsp"],
    { configured: ".venv/bin/codefill-lsp", workspaceFolder: "/ws" })),
  { command: "/ws/.venv/bin/codefill-lsp", args: [], source: "setting" });
});

test("beside the selected interpreter before PATH", () => {
  const files = ["/proj/.venv/bin/codefill-lsp", "/usr/bin/codefill-lsp"];
  assert.deepEqual(resolveServerCommand(posix(files, { interpreter: "/proj/.venv/bin/python" })),
    { command: "/proj/.venv/bin/codefill-lsp", args: [], source: "interpreter" });
});

test("PATH when the interpreter's environment has none, in PATH order", () => {
  const files = ["/usr/local/bin/codefill-lsp", "/usr/bin/codefill-lsp"];
  assert.deepEqual(resolveServerCommand(posix(files, { interpreter: "/proj/.venv/bin/python" })),
    { command: "/usr/local/bin/codefill-lsp", args: [], source: "path" });
});

test("not found anywhere: says where it looked", () => {
  const r = resolveServerCommand(posix([], { interpreter: "/proj/.venv/bin/python3" }));
  assert.ok(!isResolved(r));
  assert.match(r.error, /beside the Python interpreter \/proj\/.venv\/bin\/python3 or on PATH/);
  assert.deepEqual(r.tried, ["/proj/.venv/bin/codefill-lsp", "/usr/local/bin/codefill-lsp", "/usr/bin/codefill-lsp"]);
});

test("Windows: Scripts folders and PATHEXT", () => {
  assert.deepEqual(scriptFolders("C:\\envs\\p\\python.exe", "win32"), ["C:\\envs\\p", "C:\\envs\\p\\Scripts"]);
  assert.deepEqual(scriptFolders("C:\\proj\\.venv\\Scripts\\python.exe", "win32"), ["C:\\proj\\.venv\\Scripts"]);
  assert.deepEqual(executableNames("codefill-lsp", "win32", ".EXE;.CMD"), ["codefill-lsp.exe", "codefill-lsp.cmd", "codefill-lsp"]);
  assert.deepEqual(executableNames("x.exe", "win32"), ["x.exe"]);
  const r = resolveServerCommand({
    platform: "win32", pathEnv: "C:\\bin", pathExt: ".EXE", interpreter: "C:\\envs\\p\\python.exe",
    isExecutable: fs(["C:\\envs\\p\\Scripts\\codefill-lsp.exe"]),
  });
  assert.deepEqual(r, { command: "C:\\envs\\p\\Scripts\\codefill-lsp.exe", args: [], source: "interpreter" });
  assert.equal(findOnPath("codefill-lsp", { platform: "win32", pathEnv: "C:\\a;C:\\b", pathExt: ".EXE",
    isExecutable: fs(["C:\\b\\codefill-lsp.exe"]) }), "C:\\b\\codefill-lsp.exe");
});

test("the Python extension's API, new and old", () => {
  assert.equal(interpreterFromPythonApi({ environments: { getActiveEnvironmentPath: () => ({ id: "x", path: "/e/bin/python3.12" }) } }),
    "/e/bin/python3.12");
  // a folder (an environment with no interpreter yet) is not an interpreter: fall back to the old API
  assert.equal(interpreterFromPythonApi({
    environments: { getActiveEnvironmentPath: () => ({ id: "x", path: "/conda/envs/e" }) },
    settings: { getExecutionDetails: () => ({ execCommand: ["/conda/envs/e/bin/python"] }) },
  }), "/conda/envs/e/bin/python");
  assert.equal(interpreterFromPythonApi({ settings: { getExecutionDetails: () => ({ execCommand: ["conda", "run", "python"] }) } }),
    undefined);
  assert.equal(interpreterFromPythonApi({ environments: { getActiveEnvironmentPath: () => { throw new Error("x"); } } }), undefined);
  assert.equal(interpreterFromPythonApi(undefined), undefined);
  assert.equal(interpreterFromPythonApi({ environments: { getActiveEnvironmentPath: () => ({ path: "C:\\e\\python.exe" }) } }),
    "C:\\e\\python.exe");
});
