// A minimal stand-in for the `vscode` module, enough for the extension and vscode-languageclient 11 to start a
// real language server, sync a document, ask for inline completions and apply a workspace edit, with no VS Code.
// What it does not implement is a "deep stub": any property, call or `new` gives another stub, so code paths that
// only register things (hover providers, file watchers, ...) run without effect. It records what the extension
// shows (status bar items, messages) and what the server asks for (applyEdit), for the test to check.
"use strict";

const { EventEmitter: NodeEmitter } = require("events");
const { fileURLToPath, pathToFileURL } = require("url");

function deepStub(name) {
  const fn = function () {};
  return new Proxy(fn, {
    get(target, prop) {
      if (prop === "then") return undefined; // not a thenable
      if (prop === Symbol.toPrimitive) return () => `[stub ${name}]`;
      if (prop === "dispose") return () => {};
      if (prop === "prototype") return target.prototype;
      if (!(prop in target)) target[prop] = deepStub(`${name}.${String(prop)}`);
      return target[prop];
    },
    apply() {
      return deepStub(`${name}()`);
    },
    construct() {
      return deepStub(`new ${name}`);
    },
  });
}

class Disposable {
  constructor(fn) { this._fn = fn; }
  static from(...items) { return new Disposable(() => items.forEach((d) => d && d.dispose && d.dispose())); }
  dispose() { if (this._fn) { this._fn(); this._fn = undefined; } }
}

class EventEmitter {
  constructor() {
    this._e = new NodeEmitter();
    this._e.setMaxListeners(0);
    this.event = (listener, thisArg, disposables) => {
      const l = (v) => listener.call(thisArg, v);
      this._e.on("e", l);
      const d = new Disposable(() => this._e.off("e", l));
      if (Array.isArray(disposables)) disposables.push(d);
      return d;
    };
  }
  fire(value) { this._e.emit("e", value); }
  dispose() { this._e.removeAllListeners(); }
}

class CancellationTokenSource {
  constructor() {
    const emitter = new EventEmitter();
    this._emitter = emitter;
    this.token = { isCancellationRequested: false, onCancellationRequested: emitter.event };
  }
  cancel() { if (!this.token.isCancellationRequested) { this.token.isCancellationRequested = true; this._emitter.fire(); } }
  dispose() {}
}
class CancellationError extends Error {}

class Uri {
  constructor(scheme, authority, path, query, fragment) {
    Object.assign(this, { scheme, authority: authority || "", path: path || "", query: query || "", fragment: fragment || "" });
  }
  static parse(value) {
    const u = new URL(value);
    return new Uri(u.protocol.replace(/:$/, ""), u.host, decodeURIComponent(u.pathname), u.search.replace(/^\?/, ""), u.hash.replace(/^#/, ""));
  }
  static file(path) { return Uri.parse(pathToFileURL(path).href); }
  static joinPath(base, ...parts) { return Uri.file(require("path").join(base.fsPath, ...parts)); }
  get fsPath() { return this.scheme === "file" ? fileURLToPath(this.toString()) : this.path; }
  with(change) { return new Uri(change.scheme ?? this.scheme, change.authority ?? this.authority, change.path ?? this.path, change.query ?? this.query, change.fragment ?? this.fragment); }
  toString() {
    if (this.scheme === "file") return pathToFileURL(this.path).href;
    return `${this.scheme}:${this.authority ? "//" + this.authority : ""}${this.path}${this.query ? "?" + this.query : ""}`;
  }
  toJSON() { return this.toString(); }
}

class Position {
  constructor(line, character) { this.line = line; this.character = character; }
  isEqual(o) { return this.line === o.line && this.character === o.character; }
  isBefore(o) { return this.line < o.line || (this.line === o.line && this.character < o.character); }
  isAfter(o) { return o.isBefore(this); }
  compareTo(o) { return this.isBefore(o) ? -1 : this.isEqual(o) ? 0 : 1; }
  translate(dl = 0, dc = 0) { return new Position(this.line + dl, this.character + dc); }
  with(l, c) { return new Position(l ?? this.line, c ?? this.character); }
}
class Range {
  constructor(a, b, c, d) {
    if (typeof a === "number") { a = new Position(a, b); b = new Position(c, d); }
    [this.start, this.end] = a.isBefore(b) || a.isEqual(b) ? [a, b] : [b, a];
  }
  get isEmpty() { return this.start.isEqual(this.end); }
  get isSingleLine() { return this.start.line === this.end.line; }
  contains(p) { return !p.isBefore(this.start) && !this.end.isBefore(p); }
}
class Selection extends Range {
  constructor(anchor, active) { super(anchor, active); this.anchor = anchor; this.active = active; }
  get isReversed() { return this.active.isBefore(this.anchor); }
}
class TextEdit {
  constructor(range, newText) { this.range = range; this.newText = newText; }
  static replace(range, newText) { return new TextEdit(range, newText); }
  static insert(pos, newText) { return new TextEdit(new Range(pos, pos), newText); }
  static delete(range) { return new TextEdit(range, ""); }
}
class WorkspaceEdit {
  constructor() { this._edits = new Map(); }
  _list(uri) { const k = uri.toString(); if (!this._edits.has(k)) this._edits.set(k, { uri, edits: [] }); return this._edits.get(k).edits; }
  replace(uri, range, newText) { this._list(uri).push(new TextEdit(range, newText)); }
  insert(uri, pos, newText) { this._list(uri).push(TextEdit.insert(pos, newText)); }
  delete(uri, range) { this._list(uri).push(TextEdit.delete(range)); }
  set(uri, edits) { const l = this._list(uri); l.length = 0; for (const e of edits) l.push(Array.isArray(e) ? e[0] : e); }
  get(uri) { return this._list(uri); }
  has(uri) { return this._edits.has(uri.toString()); }
  entries() { return [...this._edits.values()].map((v) => [v.uri, v.edits]); }
  get size() { return this._edits.size; }
  createFile() { throw new Error("stub: createFile"); }
  renameFile() { throw new Error("stub: renameFile"); }
  deleteFile() { throw new Error("stub: deleteFile"); }
}
class SnippetString { constructor(value) { this.value = value; } }
class InlineCompletionItem { constructor(insertText, range, command) { Object.assign(this, { insertText, range, command }); } }
class InlineCompletionList { constructor(items) { this.items = items; } }
class CompletionItem { constructor(label, kind) { this.label = label; this.kind = kind; } }
class CompletionList { constructor(items = [], isIncomplete = false) { this.items = items; this.isIncomplete = isIncomplete; } }
class ThemeColor { constructor(id) { this.id = id; } }
class MarkdownString { constructor(value = "") { this.value = value; } appendMarkdown(v) { this.value += v; return this; } }
class CodeActionKind {
  constructor(value) { this.value = value; }
  append(part) { return new CodeActionKind(this.value ? `${this.value}.${part}` : part); }
  contains(other) { return this.value === other.value || other.value.startsWith(this.value + "."); }
  intersects(other) { return this.contains(other) || other.contains(this); }
}
for (const [k, v] of Object.entries({ Empty: "", QuickFix: "quickfix", Refactor: "refactor", RefactorExtract: "refactor.extract",
  RefactorInline: "refactor.inline", RefactorRewrite: "refactor.rewrite", RefactorMove: "refactor.move", Source: "source",
  SourceOrganizeImports: "source.organizeImports", SourceFixAll: "source.fixAll", Notebook: "notebook" })) {
  CodeActionKind[k] = new CodeActionKind(v);
}

/** A text document held in memory: offsets, lines, and edits that bump the version and fire change events. */
class StubDocument {
  constructor(uri, languageId, text) {
    this.uri = uri; this.languageId = languageId; this._text = text; this.version = 1;
    this.isDirty = false; this.isClosed = false; this.isUntitled = uri.scheme === "untitled"; this.eol = 1; this.encoding = "utf8";
  }
  get fileName() { return this.uri.fsPath; }
  get lineCount() { return this._text.split("\n").length; }
  getText(range) { return range ? this._text.slice(this.offsetAt(range.start), this.offsetAt(range.end)) : this._text; }
  offsetAt(pos) {
    const lines = this._text.split("\n");
    let off = 0;
    for (let i = 0; i < pos.line && i < lines.length; i++) off += lines[i].length + 1;
    return off + Math.min(pos.character, (lines[pos.line] ?? "").length);
  }
  positionAt(offset) {
    const before = this._text.slice(0, offset).split("\n");
    return new Position(before.length - 1, before[before.length - 1].length);
  }
  lineAt(line) {
    const l = typeof line === "number" ? line : line.line;
    const text = this._text.split("\n")[l] ?? "";
    return { lineNumber: l, text, range: new Range(l, 0, l, text.length), isEmptyOrWhitespace: text.trim() === "" };
  }
  validateRange(r) { return r; }
  validatePosition(p) { return p; }
  save() { return Promise.resolve(true); }
  /** Apply edits (end to start), returning the change events VS Code would send. */
  _apply(edits) {
    const sorted = [...edits].sort((a, b) => this.offsetAt(b.range.start) - this.offsetAt(a.range.start));
    const contentChanges = [];
    for (const e of sorted) {
      const s = this.offsetAt(e.range.start), t = this.offsetAt(e.range.end);
      contentChanges.push({ range: e.range, rangeOffset: s, rangeLength: t - s, text: e.newText });
      this._text = this._text.slice(0, s) + e.newText + this._text.slice(t);
    }
    this.version += 1;
    return contentChanges;
  }
}

function createStub(options = {}) {
  const config = options.config || {};
  const recorded = { statusItems: [], messages: [], appliedEdits: [], inlineProviders: [], commands: new Map(), output: [] };
  const emitters = {
    open: new EventEmitter(), close: new EventEmitter(), change: new EventEmitter(), save: new EventEmitter(),
    willSave: new EventEmitter(), config: new EventEmitter(), folders: new EventEmitter(),
    visible: new EventEmitter(), active: new EventEmitter(),
  };
  const textDocuments = [];
  const LogLevel = { Off: 0, Trace: 1, Debug: 2, Info: 3, Warning: 4, Error: 5 };

  function message(kind) {
    return (text, ...items) => {
      recorded.messages.push({ kind, text: String(text) });
      if (options.verbose) process.stderr.write(`[vscode ${kind}] ${text}\n`);
      return Promise.resolve(undefined);
    };
  }

  function outputChannel(name) {
    const line = (level) => (msg, ...rest) => {
      const text = `[${level}] ${msg instanceof Error ? msg.message : msg}${rest.length ? " " + rest.map(String).join(" ") : ""}`;
      recorded.output.push(text);
      if (options.verbose) process.stderr.write(`[${name}] ${text}\n`);
    };
    return {
      name, logLevel: LogLevel.Info, onDidChangeLogLevel: new EventEmitter().event,
      append: line("raw"), appendLine: line("raw"), replace() {}, clear() {}, show() {}, hide() {}, dispose() {},
      trace: line("trace"), debug: line("debug"), info: line("info"), warn: line("warn"), error: line("error"),
    };
  }

  function getConfiguration(section) {
    const prefix = section ? section + "." : "";
    return {
      get(key, dflt) { const v = config[prefix + key]; return v === undefined ? dflt : v; },
      has(key) { return config[prefix + key] !== undefined; },
      inspect(key) { return { key: prefix + key, globalValue: config[prefix + key] }; },
      update(key, value) {
        config[prefix + key] = value;
        const changed = prefix + key;
        emitters.config.fire({ affectsConfiguration: (s) => changed === s || changed.startsWith(s + ".") });
        return Promise.resolve();
      },
    };
  }

  function matchOne(selector, doc) {
    if (typeof selector === "string") return selector === doc.languageId || selector === "*" ? 10 : 0;
    if (selector.language && selector.language !== doc.languageId && selector.language !== "*") return 0;
    if (selector.scheme && selector.scheme !== doc.uri.scheme && selector.scheme !== "*") return 0;
    if (selector.notebookType) return 0;
    return selector.language ? 10 : 5;
  }

  const languages = new Proxy({
    match(selector, doc) {
      const list = Array.isArray(selector) ? selector : [selector];
      return Math.max(0, ...list.map((s) => matchOne(s, doc)));
    },
    registerInlineCompletionItemProvider(selector, provider) {
      const entry = { selector, provider };
      recorded.inlineProviders.push(entry);
      return new Disposable(() => recorded.inlineProviders.splice(recorded.inlineProviders.indexOf(entry), 1));
    },
    createDiagnosticCollection() {
      return { set() {}, delete() {}, clear() {}, forEach() {}, get() { return []; }, has() { return false; }, dispose() {} };
    },
    getDiagnostics() { return []; },
    onDidChangeDiagnostics: new EventEmitter().event,
  }, {
    get(target, prop) {
      if (prop in target) return target[prop];
      if (typeof prop === "string" && prop.startsWith("register")) return () => new Disposable();
      return deepStub(`languages.${String(prop)}`);
    },
  });

  const window = {
    activeTextEditor: undefined,
    visibleTextEditors: [],
    onDidChangeActiveTextEditor: emitters.active.event,
    onDidChangeVisibleTextEditors: emitters.visible.event,
    tabGroups: { all: [], onDidChangeTabs: new EventEmitter().event, onDidChangeTabGroups: new EventEmitter().event },
    createOutputChannel: (name) => outputChannel(name),
    createStatusBarItem(id, alignment, priority) {
      const item = { id, alignment, priority, text: "", tooltip: "", command: undefined, name: "", visible: false, history: [] };
      let text = "";
      Object.defineProperty(item, "text", { get: () => text, set: (v) => { text = v; item.history.push(v); }, enumerable: true });
      item.show = () => { item.visible = true; };
      item.hide = () => { item.visible = false; };
      item.dispose = () => {};
      recorded.statusItems.push(item);
      return item;
    },
    showErrorMessage: message("error"),
    showWarningMessage: message("warning"),
    showInformationMessage: message("info"),
    showQuickPick: () => Promise.resolve(undefined),
    showTextDocument: () => Promise.resolve(undefined),
    withProgress: (opts, task) => task({ report() {} }, new CancellationTokenSource().token),
  };

  const workspace = {
    textDocuments,
    notebookDocuments: [],
    workspaceFolders: options.workspaceFolder ? [{ uri: Uri.file(options.workspaceFolder), name: "ws", index: 0 }] : undefined,
    getConfiguration,
    getWorkspaceFolder: () => undefined,
    onDidChangeConfiguration: emitters.config.event,
    onDidOpenTextDocument: emitters.open.event,
    onDidCloseTextDocument: emitters.close.event,
    onDidChangeTextDocument: emitters.change.event,
    onDidSaveTextDocument: emitters.save.event,
    onWillSaveTextDocument: emitters.willSave.event,
    onDidChangeWorkspaceFolders: emitters.folders.event,
    onDidOpenNotebookDocument: new EventEmitter().event,
    onDidChangeNotebookDocument: new EventEmitter().event,
    onDidSaveNotebookDocument: new EventEmitter().event,
    onDidCloseNotebookDocument: new EventEmitter().event,
    onDidCreateFiles: new EventEmitter().event,
    onDidRenameFiles: new EventEmitter().event,
    onDidDeleteFiles: new EventEmitter().event,
    onWillCreateFiles: new EventEmitter().event,
    onWillRenameFiles: new EventEmitter().event,
    onWillDeleteFiles: new EventEmitter().event,
    createFileSystemWatcher: () => ({ onDidCreate: new EventEmitter().event, onDidChange: new EventEmitter().event, onDidDelete: new EventEmitter().event, dispose() {} }),
    async applyEdit(edit) {
      const entries = edit.entries();
      recorded.appliedEdits.push(entries.map(([uri, edits]) => ({ uri: uri.toString(), edits: edits.map((e) => ({
        range: { start: { line: e.range.start.line, character: e.range.start.character }, end: { line: e.range.end.line, character: e.range.end.character } },
        newText: e.newText,
      })) })));
      for (const [uri, edits] of entries) {
        const doc = textDocuments.find((d) => d.uri.toString() === uri.toString());
        if (!doc) return false;
        const contentChanges = doc._apply(edits);
        emitters.change.fire({ document: doc, contentChanges, reason: undefined });
      }
      return true;
    },
  };

  const commands = {
    registerCommand(id, fn) {
      recorded.commands.set(id, fn);
      return new Disposable(() => recorded.commands.delete(id));
    },
    executeCommand(id, ...args) {
      const fn = recorded.commands.get(id);
      return fn ? Promise.resolve(fn(...args)) : Promise.resolve(undefined);
    },
    getCommands: () => Promise.resolve([...recorded.commands.keys()]),
  };

  const extensions = {
    getExtension(id) {
      if (id === "ms-python.python" && options.pythonInterpreter) {
        return {
          id, isActive: true,
          exports: { environments: { getActiveEnvironmentPath: () => ({ id: "stub", path: options.pythonInterpreter }) } },
          activate: () => Promise.resolve(undefined),
        };
      }
      return undefined;
    },
    all: [],
  };

  const api = {
    version: "1.91.0",
    env: { language: "en", appName: "vscode-stub", machineId: "stub", sessionId: "stub", uriScheme: "vscode", openExternal: () => Promise.resolve(false) },
    window, workspace, languages, commands, extensions,
    Uri, Position, Range, Selection, TextEdit, WorkspaceEdit, SnippetString, InlineCompletionItem, InlineCompletionList,
    CompletionItem, CompletionList, ThemeColor, MarkdownString, CodeActionKind, Disposable, EventEmitter,
    CancellationTokenSource, CancellationError,
    LogLevel,
    StatusBarAlignment: { Left: 1, Right: 2 },
    ProgressLocation: { SourceControl: 1, Window: 10, Notification: 15 },
    ConfigurationTarget: { Global: 1, Workspace: 2, WorkspaceFolder: 3 },
    InlineCompletionTriggerKind: { Invoke: 0, Automatic: 1 },
    CompletionTriggerKind: { Invoke: 0, TriggerCharacter: 1, TriggerForIncompleteCompletions: 2 },
    TextDocumentSaveReason: { Manual: 1, AfterDelay: 2, FocusOut: 3 },
    DiagnosticSeverity: { Error: 0, Warning: 1, Information: 2, Hint: 3 },
    EndOfLine: { LF: 1, CRLF: 2 },
    ViewColumn: { Active: -1, Beside: -2, One: 1 },
  };

  /** Test helpers, not part of the VS Code API. */
  const harness = {
    recorded,
    emitters,
    openDocument(path, languageId, text) {
      const doc = new StubDocument(Uri.file(path), languageId, text);
      textDocuments.push(doc);
      emitters.open.fire(doc);
      return doc;
    },
    setActiveEditor(doc, selection) {
      window.activeTextEditor = { document: doc, selection, selections: [selection], options: {}, viewColumn: 1 };
      window.visibleTextEditors = [window.activeTextEditor];
      emitters.active.fire(window.activeTextEditor);
      emitters.visible.fire(window.visibleTextEditors);
    },
    setConfig(key, value) { return getConfiguration("").update(key, value); },
  };

  const module = new Proxy(api, {
    get(target, prop) {
      if (prop in target) return target[prop];
      if (prop === "__esModule") return false;
      if (prop === "then") return undefined;
      return (target[prop] = deepStub(String(prop)));
    },
  });
  return { module, harness };
}

/**
 * Make `require("vscode")` return the stub for everything loaded after this call. TypeScript's `import * as` copies
 * only own properties, so every `vscode.X` the code under `roots` names is made an own property first.
 */
function installStub(stub, roots = []) {
  const fs = require("fs");
  const path = require("path");
  const names = new Set();
  const scan = (dir) => {
    let entries = [];
    try { entries = fs.readdirSync(dir, { withFileTypes: true }); } catch { return; }
    for (const e of entries) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) scan(p);
      else if (e.name.endsWith(".js")) {
        for (const m of fs.readFileSync(p, "utf8").matchAll(/\b(?:code|vscode_1|vscode|vscode_\d+)\.([A-Za-z_]\w*)/g)) names.add(m[1]);
      }
    }
  };
  roots.forEach(scan);
  for (const name of names) void stub.module[name]; // the Proxy makes it an own property
  const Module = require("module");
  const original = Module._load;
  Module._load = function (request, parent, isMain) {
    if (request === "vscode") return stub.module;
    return original.call(this, request, parent, isMain);
  };
}

module.exports = { createStub, installStub, StubDocument };
