#!/usr/bin/env bash
# Build the CPU image offline and run it on the shipped test case the way Grand-Challenge runs
# algorithms: no network, read-only root filesystem and input, non-root. Exit non-zero on any
# difference from test/expected/.
#   ./test.sh            build (scripts/: Docker engine, base image, wheelhouse) and test
#   ./test.sh --no-build test the image already built
set -euo pipefail
cd "$(dirname "$0")"
scripts/docker-engine.sh
scripts/setup-venv.sh  # so .venv/bin/mixmicrobleednet works after the main job too
[ "${1:-}" = --no-build ] || ./build.sh --cpu --offline
image=mixmicrobleednet:cpu
out=$(mktemp -d /tmp/mixmicrobleednet-test.XXXXXX)
trap 'rm -rf "$out"' EXIT
chmod 777 "$out"  # the image's non-root user writes here
locked=(--rm --network none --read-only --tmpfs /tmp --security-opt no-new-privileges)
echo "== running $image on test/input"
# --fast (no mirroring): on 2 CPU cores the 8 mirrored passes take several minutes per case.
docker run "${locked[@]}" -v "$PWD/test/input:/input:ro" -v "$out:/output" "$image" --fast
echo "== comparing with test/expected"
docker run "${locked[@]}" -v "$PWD/test/expected:/expected:ro" -v "$out:/output:ro" \
  --entrypoint python "$image" -m mixmicrobleednet.regression /expected /output
echo "test.sh: passed"
