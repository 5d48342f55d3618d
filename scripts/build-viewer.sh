#!/usr/bin/env bash
# Bundle NiiVue (npm: @niivue/niivue) into one ES module for the review app, with esbuild (npm), in a
# scratch folder: src/mixmicrobleednet/review/static/niivue.js and the bundled packages' licences
# beside it. The bundle is committed (about 0.9 MB), so neither an install nor a run needs npm or a
# network; run this only to move to another NiiVue release (change the pins below).
#   scripts/build-viewer.sh
set -euo pipefail
cd "$(dirname "$0")/.."
niivue=0.69.0 esbuild=0.28.2
static=src/mixmicrobleednet/review/static
work=$(mktemp -d) && trap 'rm -rf "$work"' EXIT
(cd "$work" && npm init -y >/dev/null && npm install --silent --no-audit --no-fund \
    "@niivue/niivue@$niivue" "esbuild@$esbuild")
echo 'export { Niivue, SLICE_TYPE } from "@niivue/niivue";' > "$work/entry.js"
# numcodecs (zarr's compression codecs, ~1.4 MB of WebAssembly) stays out: the app loads NIfTI only,
# and zarrita imports the codecs only when a zarr image asks for one.
"$work/node_modules/.bin/esbuild" "$work/entry.js" --bundle --minify --format=esm --target=es2020 \
    '--external:numcodecs/*' --legal-comments=none --log-level=warning --outfile="$static/niivue.js"
{
  echo "niivue.js bundles @niivue/niivue $niivue (https://github.com/niivue/niivue) and its dependencies,"
  echo "built by scripts/build-viewer.sh. Their licences:"
  for package in $(cd "$work/node_modules" && ls -d @niivue/niivue @lukeed/uuid @ungap/structured-clone \
      array-equal fflate gl-matrix nifti-reader-js zarrita); do
    node -e 'const p=require(process.argv[1]); console.log(`\n== ${p.name} ${p.version}: ${p.license}`)' \
        "$work/node_modules/$package/package.json"
    found=0
    for licence in "$work/node_modules/$package"/{LICENSE,LICENSE.md,license}; do
      if [ -f "$licence" ]; then cat "$licence"; found=1; fi
    done
    if [ "$found" = 0 ]; then echo "(no licence file in the npm package; its text: the project's repository)"; fi
  done
} > "$static/niivue.LICENSE.txt"
echo "$static/niivue.js: $(du -h "$static/niivue.js" | cut -f1)"
