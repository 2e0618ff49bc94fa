#!/usr/bin/env bash
# Build, test and package the VS Code extension. Needs Node 20+ and npm; no network once the npm cache has the
# packages in package-lock.json (vsce packages offline).
# Set CODEFILL_VSCODE_E2E=1 to also run the packaged extension against the real server (test/server-e2e.js).
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund
npm run compile
npm test
npx vsce package --allow-missing-repository --out codefill.vsix
if [[ "${CODEFILL_VSCODE_E2E:-0}" == 1 ]]; then
  node test/server-e2e.js --vsix codefill.vsix
fi
