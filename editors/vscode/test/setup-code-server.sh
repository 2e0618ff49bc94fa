#!/usr/bin/env bash
# Install code-server 4.99.4 and playwright-core from the npm registry into DIR with no other network access:
# the post-install steps that download (ripgrep, argon2's and kerberos' prebuilt binaries) are done by hand or
# skipped. Needs Node 20, g++, make, Node's headers in /usr/include/node, and Debian's ripgrep and chromium
# (apt-get install ripgrep chromium).
# usage: bash editors/vscode/test/setup-code-server.sh DIR
set -euo pipefail
dir=${1:?usage: setup-code-server.sh DIR}
mkdir -p "$dir" && cd "$dir"
[[ -f package.json ]] || echo '{"name": "codefill-code-server", "private": true}' > package.json
export npm_config_nodedir=/usr   # build native modules against the local headers (node-gyp would download them)
npm install --no-audit --no-fund --ignore-scripts code-server@4.99.4 playwright-core
npm rebuild argon2 --build-from-source   # code-server's own native dependency
cd node_modules/code-server/lib/vscode
# code-server's postinstall.sh, by hand:
npm install --omit=dev --ignore-scripts --no-audit --no-fund
# node-pty's post-install fails after building pty.node (it wants `npx node-gyp` for compile_commands.json): fine
npm rebuild @vscode/spdlog native-watchdog node-pty @vscode/deviceid || test -f node_modules/node-pty/build/Release/pty.node
mkdir -p node_modules/@vscode/ripgrep/bin && ln -sf "$(command -v rg)" node_modules/@vscode/ripgrep/bin/rg
rm -rf node_modules.asar && ln -s node_modules node_modules.asar
(cd bin/remote-cli && ln -sf code-linux.sh code-server)
(cd bin/helpers && ln -sf browser-linux.sh browser.sh)
(cd extensions && npm install --omit=dev --ignore-scripts --no-audit --no-fund)
echo "code-server: $dir/node_modules/code-server/out/node/entry.js"
