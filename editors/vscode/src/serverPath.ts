/**
 * Where the `codefill-lsp` executable is: the `codefill.serverPath` setting, else beside the Python
 * extension's selected interpreter, else on PATH. Pure: the file system is passed in.
 */

import * as path from "path";

export const SERVER_NAME = "codefill-lsp";

export interface ResolveInput {
  /** `codefill.serverPath`: an absolute path, a `~/` path, or a bare name looked up on PATH. */
  configured?: string;
  /** `codefill.serverArgs`. */
  args?: readonly string[];
  /** The Python interpreter the Python extension has selected, if it is installed and has one. */
  interpreter?: string;
  /** Folders of the workspace, to resolve a relative `codefill.serverPath` against the first. */
  workspaceFolder?: string;
  /** process.env.PATH */
  pathEnv?: string;
  /** process.env.PATHEXT on Windows */
  pathExt?: string;
  platform: NodeJS.Platform;
  home?: string;
  /** Whether a file exists and may be executed. */
  isExecutable: (file: string) => boolean;
}

export type Source = "setting" | "interpreter" | "path";

export interface Resolved {
  command: string;
  args: string[];
  source: Source;
}

export interface NotFound {
  error: string;
  /** Where it looked, for the message. */
  tried: string[];
}

function pathApi(platform: NodeJS.Platform): path.PlatformPath {
  return platform === "win32" ? path.win32 : path.posix;
}

/** The executable names to try for a base name: on Windows with each PATHEXT extension. */
export function executableNames(base: string, platform: NodeJS.Platform, pathExt?: string): string[] {
  if (platform !== "win32") return [base];
  if (/\.[A-Za-z0-9]+$/.test(base)) return [base];
  const exts = (pathExt || ".COM;.EXE;.BAT;.CMD").split(";").filter(Boolean).map((e) => e.toLowerCase());
  return [...exts.map((e) => base + e), base];
}

/** The first executable named `name` in the PATH folders, or undefined. */
export function findOnPath(name: string, input: Pick<ResolveInput, "pathEnv" | "pathExt" | "platform" | "isExecutable">,
                           tried: string[] = []): string | undefined {
  const p = pathApi(input.platform);
  const sep = input.platform === "win32" ? ";" : ":";
  for (const dir of (input.pathEnv || "").split(sep)) {
    if (!dir) continue;
    for (const candidate of executableNames(name, input.platform, input.pathExt)) {
      const file = p.join(dir, candidate);
      tried.push(file);
      if (input.isExecutable(file)) return file;
    }
  }
  return undefined;
}

/** Folders where a Python environment keeps its console scripts, given its interpreter. */
export function scriptFolders(interpreter: string, platform: NodeJS.Platform): string[] {
  const p = pathApi(platform);
  const dir = p.dirname(interpreter);
  if (platform === "win32") {
    // venv: <env>\Scripts\python.exe; conda and the python.org installer: <env>\python.exe + <env>\Scripts
    return p.basename(dir).toLowerCase() === "scripts" ? [dir] : [dir, p.join(dir, "Scripts")];
  }
  return [dir];
}

function expandHome(value: string, home?: string): string {
  return home && (value === "~" || value.startsWith("~/")) ? home + value.slice(1) : value;
}

/** The command that starts the server, or why there is none. */
export function resolveServerCommand(input: ResolveInput): Resolved | NotFound {
  const p = pathApi(input.platform);
  const args = [...(input.args ?? [])];
  const tried: string[] = [];
  const configured = (input.configured ?? "").trim();
  if (configured) {
    const expanded = expandHome(configured, input.home);
    const hasSeparator = expanded.includes("/") || (input.platform === "win32" && expanded.includes("\\"));
    if (!hasSeparator) {
      const found = findOnPath(expanded, input, tried);
      if (found) return { command: found, args, source: "setting" };
    } else {
      const absolute = p.isAbsolute(expanded) ? expanded : p.resolve(input.workspaceFolder ?? "", expanded);
      for (const candidate of executableNames(absolute, input.platform, input.pathExt)) {
        tried.push(candidate);
        if (input.isExecutable(candidate)) return { command: candidate, args, source: "setting" };
      }
    }
    return { error: `codefill.serverPath is set to "${configured}", but no such executable was found`, tried };
  }
  if (input.interpreter) {
    for (const dir of scriptFolders(input.interpreter, input.platform)) {
      for (const candidate of executableNames(p.join(dir, SERVER_NAME), input.platform, input.pathExt)) {
        tried.push(candidate);
        if (input.isExecutable(candidate)) return { command: candidate, args, source: "interpreter" };
      }
    }
  }
  const found = findOnPath(SERVER_NAME, input, tried);
  if (found) return { command: found, args, source: "path" };
  const where = input.interpreter ? `beside the Python interpreter ${input.interpreter} or on PATH` : "on PATH";
  return {
    error: `${SERVER_NAME} was not found ${where}. Install it (pip install codefill) in the selected Python ` +
      `environment, or set codefill.serverPath.`,
    tried,
  };
}

export function isResolved(r: Resolved | NotFound): r is Resolved {
  return (r as Resolved).command !== undefined;
}

/**
 * The interpreter path from the Python extension's API object, whichever generation it is:
 * `environments.getActiveEnvironmentPath()` (2022+) or `settings.getExecutionDetails().execCommand` (older).
 * Only plain interpreter paths are used; a multi-word execCommand (e.g. `conda run ...`) is ignored.
 */
export function interpreterFromPythonApi(api: unknown, resource?: unknown): string | undefined {
  const a = api as {
    environments?: { getActiveEnvironmentPath?: (r?: unknown) => { path?: unknown } | undefined };
    settings?: { getExecutionDetails?: (r?: unknown) => { execCommand?: unknown } | undefined };
  } | undefined;
  try {
    const env = a?.environments?.getActiveEnvironmentPath?.(resource);
    if (env && typeof env.path === "string" && env.path && /python[0-9.]*(\.exe)?$/i.test(env.path)) return env.path;
  } catch {
    // an older or broken Python extension: try the older API
  }
  try {
    const exec = a?.settings?.getExecutionDetails?.(resource)?.execCommand;
    if (Array.isArray(exec) && exec.length === 1 && typeof exec[0] === "string" && exec[0]) return exec[0];
  } catch {
    // nothing usable
  }
  return undefined;
}
