/** What the status bar item says. Pure: no `vscode` import. */

export type Phase = "starting" | "loading" | "ready" | "disabled" | "error" | "stopped";

export interface StatusState {
  phase: Phase;
  /** The server's progress message while loading, or the error. */
  message?: string;
  /** Milliseconds of the last fill that came back with something (inline completion or Fill Selection). */
  latencyMs?: number;
  /** Whether codefill.enabled is false (shown over "ready"). */
  disabled?: boolean;
}

export interface StatusView {
  text: string;
  tooltip: string;
  /** A ThemeColor id for the item's background, for errors. */
  background?: string;
}

/** "87 ms", "1.2 s" */
export function formatLatency(ms: number): string {
  if (!Number.isFinite(ms) || ms < 0) return "";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  return `${(ms / 1000).toFixed(ms < 10_000 ? 1 : 0)} s`;
}

/** The status bar text ($(icon) codicons included) and tooltip for a state. */
export function statusView(state: StatusState): StatusView {
  const latency = state.latencyMs !== undefined ? formatLatency(state.latencyMs) : "";
  switch (state.phase) {
    case "starting":
      return { text: "$(sync~spin) codefill", tooltip: "codefill: starting the language server" };
    case "loading":
      return {
        text: "$(loading~spin) codefill: loading",
        tooltip: `codefill: ${state.message || "loading the model"}; fills start when it is ready`,
      };
    case "ready":
      if (state.disabled) {
        return { text: "$(circle-slash) codefill", tooltip: "codefill: disabled (codefill: Enable turns it back on)" };
      }
      return {
        text: latency ? `$(check) codefill ${latency}` : "$(check) codefill",
        tooltip: latency ? `codefill: ready; last fill took ${latency}` : "codefill: ready",
      };
    case "disabled":
      return { text: "$(circle-slash) codefill", tooltip: "codefill: disabled (codefill: Enable turns it back on)" };
    case "error":
      return {
        text: "$(error) codefill",
        tooltip: `codefill: ${state.message || "the server failed"} (codefill: Show Log for details)`,
        background: "statusBarItem.errorBackground",
      };
    case "stopped":
      return { text: "$(debug-stop) codefill", tooltip: "codefill: the server is not running (codefill: Restart Server)" };
  }
}

/** The next phase after a $/progress value from the server's model load. */
export function phaseFromProgress(
  value: { kind?: string; message?: string },
): { phase: Phase; message?: string } | undefined {
  switch (value.kind) {
    case "begin":
    case "report":
      return { phase: "loading", message: value.message };
    case "end":
      if (value.message && /fail|error/i.test(value.message)) return { phase: "error", message: value.message };
      return { phase: "ready" };
    default:
      return undefined;
  }
}

/** What to tell the user after `codefill.fill`: undefined when the edit was applied (nothing to say). */
export function describeFillResult(result: unknown): string | undefined {
  if (result && typeof result === "object") {
    const r = result as { applied?: unknown; reason?: unknown };
    if (r.applied === true) return undefined;
    if (typeof r.reason === "string" && r.reason) return `codefill: ${r.reason}`;
    return "codefill: the fill was not applied";
  }
  return "codefill: no fill (is the model still loading?)";
}
