#!/usr/bin/env bash
# Write the gzipped image tarball for upload (Grand-Challenge, air-gapped sites).
#   ./export.sh [--cpu] [--offline]   same flags as build.sh
set -euo pipefail
cd "$(dirname "$0")"
./build.sh "$@"
tag=mixmicrobleednet:latest
for arg in "$@"; do [ "$arg" = --cpu ] && tag=mixmicrobleednet:cpu; done
out="mixmicrobleednet-${tag#*:}.tar.gz"
docker save "$tag" | gzip -c > "$out.partial"
mv "$out.partial" "$out"
echo "wrote $out ($(du -h "$out" | cut -f1))"
