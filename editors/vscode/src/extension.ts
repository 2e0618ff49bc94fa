/**
 * The codefill extension: starts `codefill-lsp`, lets vscode-languageclient 11 serve its
 * textDocument/inlineCompletion as ghost text, and adds Fill Selection, Enable/Disable, Show Log,
 * Restart Server and a status bar item (loading from $/progress, ready, last latency).
 */

import * as fs from "fs";
import * as os from "os";
import * as vscode from "vscode";
import {
  DidChangeConfigurationNotification,
  ExecuteCommandRequest,
  LanguageClient,
  LanguageClientOptions,
  RevealOutputChannelOn,
  ServerOptions,
  State,
} from "vscode-languageclient/node";

import { interpreterFromPythonApi, isResolved, resolveServerCommand } from "./serverPath";
import { configurationPayload, needsRestart, ServerSettings, toServerSettings } from "./settings";
import { describeFillResult, phaseFromProgress, StatusState, statusView } from "./status";

/** The languageIds the server has grammars for (lsp_server/languages.py LANGUAGE_IDS). */
export const LANGUAGES = [
  "python", "javascript", "javascriptreact", "typescript", "typescriptreact",
  "go", "rust", "java", "c", "cpp", "cuda-cpp",
];
export const FILL_COMMAND = "codefill.fill"; // the server's workspace command: (uri, range)
export const PROGRESS_TOKEN = "codefill/load-model"; // the token (or prefix) of the server's model-load $/progress

/** What activate() returns: for other extensions and for tests. */
export interface CodefillApi {
  client(): LanguageClient | undefined;
  state(): StatusState;
  settings(): ServerSettings;
  fillSelection(editor?: vscode.TextEditor): Promise<unknown>;
  restart(): Promise<void>;
}

let client: LanguageClient | undefined;
let output: vscode.LogOutputChannel;
let statusItem: vscode.StatusBarItem;
let state: StatusState = { phase: "starting" };
let settings: ServerSettings;
let starting: Promise<void> | undefined;

function readSettings(): ServerSettings {
  const cfg = vscode.workspace.getConfiguration("codefill");
  return toServerSettings((key) => cfg.get(key), os.homedir());
}

function setState(next: Partial<StatusState>): void {
  state = { ...state, ...next, disabled: !settings.enabled };
  const view = statusView(state);
  statusItem.text = view.text;
  statusItem.tooltip = view.tooltip;
  statusItem.backgroundColor = view.background ? new vscode.ThemeColor(view.background) : undefined;
}

function noteLatency(ms: number): void {
  if (state.phase === "ready" || state.phase === "loading") setState({ phase: "ready", latencyMs: ms });
  else setState({ latencyMs: ms });
}

function isExecutable(file: string): boolean {
  try {
    if (!fs.statSync(file).isFile()) return false;
    fs.accessSync(file, fs.constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** The interpreter the Python extension has selected, if it is installed; undefined otherwise. */
async function pythonInterpreter(): Promise<string | undefined> {
  const ext = vscode.extensions.getExtension("ms-python.python");
  if (!ext) return undefined;
  try {
    const api = ext.isActive ? ext.exports : await ext.activate();
    const resource = vscode.window.activeTextEditor?.document.uri ?? vscode.workspace.workspaceFolders?.[0]?.uri;
    return interpreterFromPythonApi(api, resource);
  } catch (error) {
    output.warn(`the Python extension gave no interpreter: ${error}`);
    return undefined;
  }
}

function hasItems(result: unknown): boolean {
  if (!result) return false;
  if (Array.isArray(result)) return result.length > 0;
  const items = (result as { items?: unknown[] }).items;
  return Array.isArray(items) && items.length > 0;
}

async function startClient(): Promise<void> {
  const cfg = vscode.workspace.getConfiguration("codefill");
  settings = readSettings();
  setState({ phase: "starting", message: undefined, latencyMs: undefined });
  const interpreter = (cfg.get<string>("serverPath") ?? "").trim() ? undefined : await pythonInterpreter();
  const resolved = resolveServerCommand({
    configured: cfg.get<string>("serverPath"),
    args: cfg.get<string[]>("serverArgs") ?? [],
    interpreter,
    workspaceFolder: vscode.workspace.workspaceFolders?.[0]?.uri.fsPath,
    pathEnv: process.env.PATH,
    pathExt: process.env.PATHEXT,
    platform: process.platform,
    home: os.homedir(),
    isExecutable,
  });
  if (!isResolved(resolved)) {
    output.error(resolved.error);
    output.info(`looked for: ${resolved.tried.join(", ")}`);
    setState({ phase: "error", message: resolved.error });
    void vscode.window.showErrorMessage(`codefill: ${resolved.error}`, "Open Settings", "Show Log").then((pick) => {
      if (pick === "Open Settings") void vscode.commands.executeCommand("workbench.action.openSettings", "codefill.serverPath");
      if (pick === "Show Log") output.show();
    });
    return;
  }
  output.info(`starting ${resolved.command} ${resolved.args.join(" ")} (found from the ${resolved.source})`);

  // No `transport`: stdio all the same, without the `--stdio` flag vscode-languageclient would add (codefill-lsp
  // builds before 8e68aff rejected it).
  const run = { command: resolved.command, args: resolved.args };
  const serverOptions: ServerOptions = { run, debug: run };
  const clientOptions: LanguageClientOptions = {
    documentSelector: LANGUAGES.flatMap((language) => [
      { scheme: "file", language },
      { scheme: "untitled", language },
      { scheme: "vscode-notebook-cell", language }, // Jupyter cells: each fills from its own text
    ]),
    initializationOptions: settings,
    outputChannel: output,
    revealOutputChannelOn: RevealOutputChannelOn.Never,
    middleware: {
      provideInlineCompletionItems: async (document, position, context, token, next) => {
        if (!settings.enabled) return null;
        const started = performance.now();
        const result = await next(document, position, context, token);
        if (hasItems(result) && !token.isCancellationRequested) noteLatency(performance.now() - started);
        return result;
      },
      // VS Code shows the fill as ghost text (inline completion); the server's textDocument/completion
      // fallback would run the model again for every suggest widget, so it is not asked here.
      provideCompletionItem: () => undefined,
      handleWorkDoneProgress: (token, params, next) => {
        if (typeof token === "string" && token.startsWith(PROGRESS_TOKEN)) { // also "codefill/load-model-2", ...
          const next_ = phaseFromProgress(params);
          if (next_) setState(next_);
        }
        next(token, params);
      },
    },
  };
  const c = new LanguageClient("codefill", "codefill", serverOptions, clientOptions);
  client = c;
  c.onDidChangeState((e) => {
    if (client !== c) return;
    if (e.newState === State.Starting) setState({ phase: "starting" });
    else if (e.newState === State.Stopped && state.phase !== "error") setState({ phase: "stopped" });
  });
  try {
    await c.start();
    // The server loads its model in the background from initialize on; $/progress says when it is done.
    if (state.phase === "starting") setState({ phase: "loading" });
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    output.error(`the server did not start: ${message}`);
    setState({ phase: "error", message: `the server did not start: ${message}` });
  }
}

async function stopClient(): Promise<void> {
  const c = client;
  client = undefined;
  if (!c) return;
  try {
    await c.stop(5000);
  } catch (error) {
    output.warn(`stopping the server: ${error}`);
  }
  try {
    await c.dispose();
  } catch {
    // already gone
  }
}

async function restart(): Promise<void> {
  if (starting) await starting;
  starting = (async () => {
    await stopClient();
    await startClient();
  })();
  try {
    await starting;
  } finally {
    starting = undefined;
  }
}

async function fillSelection(editor?: vscode.TextEditor): Promise<unknown> {
  const e = editor ?? vscode.window.activeTextEditor;
  if (!e) {
    void vscode.window.showInformationMessage("codefill: open a file and select the code to replace");
    return undefined;
  }
  const c = client;
  if (!c || !c.isRunning()) {
    void vscode.window.showWarningMessage("codefill: the server is not running (codefill: Restart Server)");
    return undefined;
  }
  const args = [c.code2ProtocolConverter.asUri(e.document.uri), c.code2ProtocolConverter.asRange(e.selection)];
  const started = performance.now();
  let result: unknown;
  try {
    result = await vscode.window.withProgress(
      { location: vscode.ProgressLocation.Window, title: "codefill: filling" },
      () => c.sendRequest(ExecuteCommandRequest.type, { command: FILL_COMMAND, arguments: args }),
    );
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    output.error(`${FILL_COMMAND} failed: ${message}`);
    void vscode.window.showErrorMessage(`codefill: the fill failed: ${message}`);
    return undefined;
  }
  const note = describeFillResult(result);
  if (note) void vscode.window.showInformationMessage(note);
  else noteLatency(performance.now() - started);
  return result;
}

async function setEnabled(enabled: boolean): Promise<void> {
  const cfg = vscode.workspace.getConfiguration("codefill");
  const inspect = cfg.inspect<boolean>("enabled");
  // Write where the effective value comes from, so that the change is not shadowed by a narrower scope.
  const target = inspect?.workspaceFolderValue !== undefined
    ? vscode.ConfigurationTarget.WorkspaceFolder
    : inspect?.workspaceValue !== undefined
      ? vscode.ConfigurationTarget.Workspace
      : vscode.ConfigurationTarget.Global;
  await cfg.update("enabled", enabled, target);
}

async function showMenu(): Promise<void> {
  const items = [
    settings.enabled ? { label: "Disable", command: "codefill.disable" } : { label: "Enable", command: "codefill.enable" },
    { label: "Show Log", command: "codefill.showLog" },
    { label: "Restart Server", command: "codefill.restartServer" },
    { label: "Open Settings", command: "codefill.openSettings" },
  ];
  const pick = await vscode.window.showQuickPick(items, { title: statusView(state).tooltip });
  if (pick) await vscode.commands.executeCommand(pick.command);
}

export async function activate(context: vscode.ExtensionContext): Promise<CodefillApi> {
  output = vscode.window.createOutputChannel("codefill", { log: true });
  statusItem = vscode.window.createStatusBarItem("codefill.status", vscode.StatusBarAlignment.Right, 100);
  statusItem.name = "codefill";
  statusItem.command = "codefill.showMenu";
  settings = readSettings();
  setState({ phase: "starting" });
  statusItem.show();

  context.subscriptions.push(
    output,
    statusItem,
    vscode.commands.registerCommand("codefill.fillSelection", (editor?: vscode.TextEditor) =>
      fillSelection(editor && (editor as vscode.TextEditor).document ? editor : undefined)),
    vscode.commands.registerCommand("codefill.enable", () => setEnabled(true)),
    vscode.commands.registerCommand("codefill.disable", () => setEnabled(false)),
    vscode.commands.registerCommand("codefill.showLog", () => output.show(true)),
    vscode.commands.registerCommand("codefill.restartServer", () => restart()),
    vscode.commands.registerCommand("codefill.showMenu", () => showMenu()),
    vscode.commands.registerCommand("codefill.openSettings", () =>
      vscode.commands.executeCommand("workbench.action.openSettings", "@ext:codefill.codefill")),
    vscode.workspace.onDidChangeConfiguration(async (event) => {
      if (!event.affectsConfiguration("codefill")) return;
      if (needsRestart((section) => event.affectsConfiguration(section))) {
        await restart();
        return;
      }
      settings = readSettings();
      setState({});
      const c = client;
      if (c && c.isRunning()) {
        await c.sendNotification(DidChangeConfigurationNotification.type, { settings: configurationPayload(settings) });
      }
    }),
    { dispose: () => void stopClient() },
  );

  starting = startClient();
  try {
    await starting;
  } finally {
    starting = undefined;
  }
  return {
    client: () => client,
    state: () => ({ ...state }),
    settings: () => ({ ...settings }),
    fillSelection,
    restart,
  };
}

export async function deactivate(): Promise<void> {
  await stopClient();
}
