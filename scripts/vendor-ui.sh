#!/bin/sh
# Refreshes ui/public/vendor from the exact versions pinned in ui/package.json + package-lock.json:
# installs them into a scratch directory (npm ci when the lock exists) and copies the ESM builds
# and their licences. The UI needs no build step; run this only when a pin changes.
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cp "$repo/ui/package.json" "$scratch/"
if [ -f "$repo/ui/package-lock.json" ]; then
    cp "$repo/ui/package-lock.json" "$scratch/"
    (cd "$scratch" && npm ci --ignore-scripts --no-audit --no-fund --silent)
else
    (cd "$scratch" && npm install --ignore-scripts --no-audit --no-fund --silent --save-exact)
    cp "$scratch/package-lock.json" "$repo/ui/package-lock.json"
fi
vendor="$repo/ui/public/vendor"
mkdir -p "$vendor"
modules="$scratch/node_modules"
cp "$modules/preact/dist/preact.module.js" "$vendor/preact.module.js"
cp "$modules/preact/hooks/dist/hooks.module.js" "$vendor/hooks.module.js"
cp "$modules/htm/dist/htm.module.js" "$vendor/htm.module.js"
cp "$modules/preact/LICENSE" "$vendor/LICENSE.preact"
cp "$modules/htm/LICENSE" "$vendor/LICENSE.htm"
echo "vendored: preact $(node -p "require('$modules/preact/package.json').version"), htm $(node -p "require('$modules/htm/package.json').version")"
