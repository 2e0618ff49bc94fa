/**
 * VS Code settings (`codefill.*`) -> the object the server reads from initializationOptions and
 * workspace/didChangeConfiguration (lsp_server/options.py: camelCase keys). Pure: no `vscode` import.
 */

/** The settings the server understands, with the types it checks for. */
export interface ServerSettings {
  enabled: boolean;
  modelPath: string | null;
  device: string;
  steps: number;
  maxTokens: number;
  debounceMs: number;
  languages: string[] | null;
  logFile: string | null;
  candidates: number;
  prefetch: boolean;
}

/** The server's own defaults (lsp_server/options.py Settings). */
export const SERVER_DEFAULTS: Readonly<ServerSettings> = Object.freeze({
  enabled: true,
  modelPath: null,
  device: "auto",
  steps: 0,
  maxTokens: 128,
  debounceMs: 75,
  languages: null,
  logFile: null,
  candidates: 3,
  prefetch: true,
});

/** Settings that change how the server process is started, not what it is sent: a change restarts it. */
export const RESTART_KEYS = ["serverPath", "serverArgs"] as const;

/** Keys sent to the server, in the order of the package.json contribution. */
export const SERVER_KEYS = Object.keys(SERVER_DEFAULTS) as (keyof ServerSettings)[];

const DEVICE = /^(auto|cpu|cuda|mps|cuda:\d+)$/;

/** Reads one `codefill.<key>` value; undefined when unset. `vscode.WorkspaceConfiguration.get` fits. */
export type Getter = (key: string) => unknown;

function int(value: unknown, lo: number, hi: number, fallback: number): number {
  if (typeof value !== "number" || !Number.isFinite(value)) return fallback;
  return Math.min(hi, Math.max(lo, Math.round(value)));
}

/** A path setting: empty or blank means "none"; `~/` expands to the home directory when one is given. */
export function optionalPath(value: unknown, home?: string): string | null {
  if (typeof value !== "string") return null;
  const trimmed = value.trim();
  if (trimmed === "") return null;
  if (home && (trimmed === "~" || trimmed.startsWith("~/"))) return home + trimmed.slice(1);
  return trimmed;
}

/**
 * The object to send to the server. Every key is always present so that resetting a setting in VS Code
 * resets it in the server too (the server keeps its previous value for a key that is left out).
 * Out-of-range numbers are clamped, bad types fall back to the server default, an empty language list
 * means every language (null), and language ids are lower-cased and de-duplicated.
 */
export function toServerSettings(get: Getter, home?: string): ServerSettings {
  const d = SERVER_DEFAULTS;
  const enabled = get("enabled");
  const prefetch = get("prefetch");
  const device = get("device");
  const langs = get("languages");
  let languages: string[] | null = null;
  if (Array.isArray(langs)) {
    const ids = langs.filter((v): v is string => typeof v === "string" && v.trim() !== "").map((v) => v.trim().toLowerCase());
    languages = ids.length ? [...new Set(ids)] : null;
  }
  return {
    enabled: typeof enabled === "boolean" ? enabled : d.enabled,
    modelPath: optionalPath(get("modelPath"), home),
    device: typeof device === "string" && DEVICE.test(device.trim()) ? device.trim() : d.device,
    steps: int(get("steps"), 0, 1024, d.steps),
    maxTokens: int(get("maxTokens"), 1, 1024, d.maxTokens),
    debounceMs: int(get("debounceMs"), 0, 5000, d.debounceMs),
    languages,
    logFile: optionalPath(get("logFile"), home),
    candidates: int(get("candidates"), 1, 10, d.candidates),
    prefetch: typeof prefetch === "boolean" ? prefetch : d.prefetch,
  };
}

/** The didChangeConfiguration payload: the server accepts the section wrapped as {"codefill": {...}}. */
export function configurationPayload(settings: ServerSettings): { codefill: ServerSettings } {
  return { codefill: settings };
}

/** Whether a configuration change needs the server restarted rather than re-configured. */
export function needsRestart(affects: (section: string) => boolean): boolean {
  return RESTART_KEYS.some((key) => affects(`codefill.${key}`));
}
